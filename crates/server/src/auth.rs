//! Bearer-token checks. Tokens are compared as SHA-256 digests in constant time, every
//! configured token is tried (no early exit), and tokens never reach a log line.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::error::ApiError;

/// The configured tokens, kept only as digests.
#[derive(Clone)]
pub struct Auth {
    write: Vec<[u8; 32]>,
    read: Vec<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `candidate` equals any of `set`, in time independent of where or whether it matches.
fn any_eq(set: &[[u8; 32]], candidate: &[u8; 32]) -> bool {
    let mut hit = subtle::Choice::from(0u8);
    for t in set {
        hit |= t.ct_eq(candidate);
    }
    hit.into()
}

impl Auth {
    /// Digests the configured tokens.
    pub fn new(c: &AuthConfig) -> Self {
        Auth {
            write: c.write_tokens.iter().map(|t| digest(t)).collect(),
            read: c.read_tokens.iter().map(|t| digest(t)).collect(),
        }
    }

    /// Whether any write token is configured (uploads are refused otherwise).
    pub fn writes_enabled(&self) -> bool {
        !self.write.is_empty()
    }

    /// Whether reads need a token.
    pub fn reads_protected(&self) -> bool {
        !self.read.is_empty()
    }

    /// Allows uploads and deletes: 401 without a token, 403 with a wrong one.
    pub fn require_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = bearer(headers)?.ok_or(ApiError::Unauthorized("write"))?;
        if !self.writes_enabled() {
            return Err(ApiError::Forbidden(
                "writes are disabled: no write token is configured (auth.write_tokens or FLOATZIP_WRITE_TOKEN)".into(),
            ));
        }
        if any_eq(&self.write, &digest(token)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this token may not write".into()))
        }
    }

    /// Allows reads: open unless read tokens are configured; a write token also reads.
    pub fn require_read(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.reads_protected() {
            return Ok(());
        }
        let token = bearer(headers)?.ok_or(ApiError::Unauthorized("read"))?;
        let d = digest(token);
        // `|` rather than `||`: try both sets whatever the first says.
        if any_eq(&self.read, &d) | any_eq(&self.write, &d) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this token may not read".into()))
        }
    }
}

/// The bearer token of the request, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Authorization header is not ASCII".into()))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::BadRequest(
            "Authorization must be 'Bearer <token>'".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn write_and_read_tokens() {
        let a = Auth::new(&AuthConfig {
            write_tokens: vec!["w1".into(), "w2".into()],
            read_tokens: vec![],
        });
        assert!(a.require_write(&h("Bearer w2")).is_ok());
        assert!(matches!(
            a.require_write(&HeaderMap::new()),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.require_write(&h("Bearer w")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(a.require_read(&HeaderMap::new()).is_ok());
        let a = Auth::new(&AuthConfig {
            write_tokens: vec!["w".into()],
            read_tokens: vec!["r".into()],
        });
        assert!(a.require_read(&h("Bearer r")).is_ok());
        assert!(a.require_read(&h("bearer w")).is_ok());
        assert!(matches!(
            a.require_write(&h("Bearer r")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            a.require_read(&HeaderMap::new()),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
