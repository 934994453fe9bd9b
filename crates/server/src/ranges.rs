//! Conditional and range requests (RFC 9110 §13–14) for any representation of known
//! length and strong ETag.
//!
//! Multi-range requests (`bytes=0-1,5-9`) are answered with **200 and the whole
//! representation**: the RFC allows ignoring Range, and no download tool needs
//! `multipart/byteranges`. A syntactically invalid Range is ignored the same way; a single
//! range that starts past the end is **416**.

use axum::http::{header, HeaderMap, Method};

use crate::error::ApiError;

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 304: the client's copy is current.
    NotModified,
    /// 200 with all `len` bytes.
    Full,
    /// 206 with bytes `start..end` (end exclusive).
    Partial(u64, u64),
}

/// Decides how to answer a GET/HEAD for a representation of `len` bytes and strong
/// `etag` (with quotes).
pub fn plan(method: &Method, headers: &HeaderMap, etag: &str, len: u64) -> Result<Plan, ApiError> {
    if let Some(v) = header_str(headers, header::IF_MATCH)? {
        if !etag_list_matches(v, etag, false) {
            return Err(ApiError::PreconditionFailed(etag.to_string()));
        }
    }
    if let Some(v) = header_str(headers, header::IF_NONE_MATCH)? {
        if etag_list_matches(v, etag, true) {
            return Ok(Plan::NotModified);
        }
    }
    if method != Method::GET && method != Method::HEAD {
        return Ok(Plan::Full);
    }
    let Some(range) = header_str(headers, header::RANGE)? else {
        return Ok(Plan::Full);
    };
    if let Some(v) = header_str(headers, header::IF_RANGE)? {
        // A date, a weak tag or another tag: the client's partial copy is stale, send all.
        if v.trim() != etag {
            return Ok(Plan::Full);
        }
    }
    Ok(match parse_range(range, len) {
        RangeSpec::Ignore => Plan::Full,
        RangeSpec::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size: len }),
        RangeSpec::Bytes(s, e) => Plan::Partial(s, e),
    })
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Result<Option<&str>, ApiError> {
    match h.get(&name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII"))),
    }
}

/// Whether an `If-Match`/`If-None-Match` list names `etag` (`weak`: W/ prefixes ignored).
fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || (weak && t.strip_prefix("W/") == Some(etag)))
}

/// A parsed Range header against a representation length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Not a single valid byte range: answer with the whole representation.
    Ignore,
    /// A valid range that selects nothing.
    Unsatisfiable,
    /// Bytes `start..end`, end exclusive, clamped to the length.
    Bytes(u64, u64),
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` for a representation of `len` bytes.
pub fn parse_range(v: &str, len: u64) -> RangeSpec {
    let Some(set) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if set.contains(',') {
        return RangeSpec::Ignore; // multi-range: the whole representation (see module docs)
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (a.is_empty(), num(a), num(b)) {
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Bytes(len - n.min(len), len)
            }
        }
        (false, Some(start), end) if b.is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return RangeSpec::Ignore;
            }
            if start >= len {
                return RangeSpec::Unsatisfiable;
            }
            let end = end.map_or(len, |e| e.saturating_add(1).min(len));
            RangeSpec::Bytes(start, end)
        }
        _ => RangeSpec::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes(0, 10));
        assert_eq!(parse_range("bytes=90-200", 100), Bytes(90, 100));
        assert_eq!(parse_range("bytes=10-", 100), Bytes(10, 100));
        assert_eq!(parse_range("bytes=-10", 100), Bytes(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), Bytes(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-4", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-9", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
        assert_eq!(parse_range("bytes=-", 100), Ignore);
        assert_eq!(parse_range("bytes=+1-2", 100), Ignore);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), Ignore);
    }

    #[test]
    fn conditionals() {
        let e = "\"abc\"";
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert_eq!(plan(&Method::GET, &h, e, 10).unwrap(), Plan::NotModified);
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-3"));
        assert_eq!(plan(&Method::GET, &h, e, 10).unwrap(), Plan::Partial(2, 4));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(plan(&Method::GET, &h, e, 10).unwrap(), Plan::Full);
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"abc\""));
        assert_eq!(plan(&Method::GET, &h, e, 10).unwrap(), Plan::Partial(2, 4));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"old\""));
        assert!(matches!(
            plan(&Method::GET, &h, e, 10),
            Err(ApiError::PreconditionFailed(_))
        ));
    }
}
