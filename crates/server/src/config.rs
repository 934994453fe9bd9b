//! Server settings: defaults, then a TOML file, then `FLOATZIP_*` environment variables,
//! then command-line flags (applied by the caller), each overriding the one before.
//!
//! `config/floatzip.toml` in the repository documents every key with its default. Unknown
//! keys are an error, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use floatzip_codec::{EncodeOptions, FrameOptions};
use serde::{Deserialize, Serialize};

use crate::StartError;

/// Every server setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where models are stored.
    pub storage: StorageConfig,
    /// Compression settings for uploads.
    pub codec: CodecConfig,
    /// Limits on what clients may send and how much work runs at once.
    pub limits: LimitsConfig,
    /// Bearer tokens.
    pub auth: AuthConfig,
}

/// Storage backend settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// A local directory, or `s3://bucket/optional/prefix` for any S3-compatible store.
    pub url: String,
    /// S3 endpoint (e.g. `http://minio:9000`); empty: AWS, or `AWS_ENDPOINT` if set.
    pub endpoint: String,
    /// S3 region; empty: `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// S3 access key id; empty: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// S3 secret access key; empty: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Allow plain-HTTP endpoints (local MinIO and similar); also `AWS_ALLOW_HTTP=true`.
    pub allow_http: bool,
    /// Address buckets as `bucket.endpoint` instead of `endpoint/bucket`.
    pub virtual_hosted_style: bool,
    /// Directory for uploads being compressed before they are stored; empty: the system's.
    pub temp_dir: String,
}

/// Codec settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodecConfig {
    /// Original bytes per independently coded chunk (frame): the random-access granule.
    pub chunk_bytes: usize,
    /// Threads for encoding and decoding; 0: one per core.
    pub threads: usize,
    /// How much smaller than raw storage a plane's coding must be to be used (a fraction):
    /// raw planes decode at copy speed (see `floatzip compress --min-gain`).
    pub min_gain: f64,
}

impl CodecConfig {
    /// The encoder settings uploads are compressed with.
    pub fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            chunk_bytes: self.chunk_bytes,
            frame: FrameOptions {
                min_gain: self.min_gain,
                ..FrameOptions::default()
            },
            ..EncodeOptions::default()
        }
    }
}

/// Limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest upload body accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Largest safetensors JSON header accepted, in bytes.
    pub max_header_bytes: u64,
    /// Uploads compressed at the same time; more wait their turn.
    pub max_concurrent_uploads: usize,
    /// Upper bound on tokio's blocking-thread pool (decode and encode run there).
    pub max_blocking_threads: usize,
}

/// Bearer tokens. Tokens are compared in constant time and never logged.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens allowed to upload and delete (and read). None: writes are refused.
    pub write_tokens: Vec<String>,
    /// Tokens allowed to read. None: reads are open to everyone.
    pub read_tokens: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    // Tokens are secrets: a debug print shows how many there are, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("write_tokens", &self.write_tokens.len())
            .field("read_tokens", &self.read_tokens.len())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            storage: StorageConfig::default(),
            codec: CodecConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "./floatzip-data".into(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: false,
            virtual_hosted_style: false,
            temp_dir: String::new(),
        }
    }
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            chunk_bytes: 256 << 10,
            threads: 0,
            min_gain: FrameOptions::default().min_gain,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_upload_bytes: 1 << 40,
            max_header_bytes: 100 << 20,
            max_concurrent_uploads: 4,
            max_blocking_threads: 64,
        }
    }
}

impl Config {
    /// Defaults, overridden by the TOML file at `path` (if given), then by the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, StartError> {
        let mut c = match path {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        c.apply_env(|k| std::env::var(k).ok())?;
        c.check()?;
        Ok(c)
    }

    /// Parses a TOML file; unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Config, StartError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Config(format!("reading {}: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|e| match e {
            StartError::Config(m) => StartError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text; unknown keys are an error.
    pub fn from_toml(text: &str) -> Result<Config, StartError> {
        toml::from_str(text).map_err(|e| StartError::Config(e.to_string()))
    }

    /// Applies `FLOATZIP_*` variables read through `var` (a parameter so tests need not
    /// touch the process environment).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), StartError> {
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, StartError> {
            v.trim()
                .parse()
                .map_err(|_| StartError::Config(format!("{key}={v:?} is not a valid number")))
        }
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        if let Some(v) = get("FLOATZIP_LISTEN") {
            self.listen = v.parse().map_err(|_| {
                StartError::Config(format!(
                    "FLOATZIP_LISTEN={v:?} is not an address like 127.0.0.1:8080"
                ))
            })?;
        }
        if let Some(v) = get("FLOATZIP_STORAGE") {
            self.storage.url = v;
        }
        if let Some(v) = get("FLOATZIP_S3_ENDPOINT") {
            self.storage.endpoint = v;
        }
        if let Some(v) = get("FLOATZIP_TEMP_DIR") {
            self.storage.temp_dir = v;
        }
        if let Some(v) = get("FLOATZIP_CHUNK_BYTES") {
            self.codec.chunk_bytes = num("FLOATZIP_CHUNK_BYTES", &v)?;
        }
        if let Some(v) = get("FLOATZIP_THREADS") {
            self.codec.threads = num("FLOATZIP_THREADS", &v)?;
        }
        if let Some(v) = get("FLOATZIP_MIN_GAIN") {
            self.codec.min_gain = num("FLOATZIP_MIN_GAIN", &v)?;
        }
        if let Some(v) = get("FLOATZIP_MAX_UPLOAD_BYTES") {
            self.limits.max_upload_bytes = num("FLOATZIP_MAX_UPLOAD_BYTES", &v)?;
        }
        if let Some(v) = get("FLOATZIP_MAX_HEADER_BYTES") {
            self.limits.max_header_bytes = num("FLOATZIP_MAX_HEADER_BYTES", &v)?;
        }
        if let Some(v) = get("FLOATZIP_WRITE_TOKEN") {
            self.auth.write_tokens = vec![v];
        }
        if let Some(v) = get("FLOATZIP_READ_TOKEN") {
            self.auth.read_tokens = vec![v];
        }
        Ok(())
    }

    /// Rejects settings that cannot work, before anything starts.
    pub fn check(&self) -> Result<(), StartError> {
        let bad = |m: String| Err(StartError::Config(m));
        let max_chunk = floatzip_codec::frame::MAX_CHUNK_BYTES;
        if self.codec.chunk_bytes == 0 || self.codec.chunk_bytes > max_chunk {
            return bad(format!("codec.chunk_bytes must be 1..={max_chunk}"));
        }
        if !(0.0..1.0).contains(&self.codec.min_gain) {
            return bad("codec.min_gain must be a fraction from 0 up to (not including) 1".into());
        }
        let max_header = floatzip_codec::safetensors::MAX_HEADER_BYTES;
        if self.limits.max_header_bytes == 0 || self.limits.max_header_bytes > max_header {
            return bad(format!("limits.max_header_bytes must be 1..={max_header}"));
        }
        if self.limits.max_concurrent_uploads == 0 || self.limits.max_blocking_threads == 0 {
            return bad(
                "limits.max_concurrent_uploads and max_blocking_threads must be at least 1".into(),
            );
        }
        if self.storage.url.is_empty() {
            return bad("storage.url is empty".into());
        }
        if self
            .auth
            .write_tokens
            .iter()
            .chain(&self.auth.read_tokens)
            .any(|t| t.trim().is_empty())
        {
            return bad("auth tokens must not be empty".into());
        }
        Ok(())
    }

    /// The directory uploads are staged in.
    pub fn temp_dir(&self) -> PathBuf {
        if self.storage.temp_dir.is_empty() {
            std::env::temp_dir()
        } else {
            PathBuf::from(&self.storage.temp_dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_matches_defaults() {
        let text = include_str!("../../../config/floatzip.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("listen = \"127.0.0.1:1\"\nlisen = 1\n").is_err());
        assert!(Config::from_toml("[storage]\nurll = \"x\"\n").is_err());
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::from_toml("[storage]\nurl = \"/a\"\n").unwrap();
        c.apply_env(|k| match k {
            "FLOATZIP_STORAGE" => Some("/b".into()),
            "FLOATZIP_WRITE_TOKEN" => Some("t".into()),
            "FLOATZIP_LISTEN" => Some("0.0.0.0:9".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.storage.url, "/b");
        assert_eq!(c.auth.write_tokens, vec!["t".to_string()]);
        assert_eq!(c.listen.port(), 9);
        assert!(c
            .apply_env(|k| (k == "FLOATZIP_THREADS").then(|| "x".into()))
            .is_err());
    }

    #[test]
    fn min_gain_reaches_the_encoder_and_must_be_a_fraction() {
        let mut c = Config::from_toml("[codec]\nmin_gain = 0.02\n").unwrap();
        c.check().unwrap();
        assert_eq!(c.codec.encode_options().frame.min_gain, 0.02);
        assert_eq!(c.codec.encode_options().chunk_bytes, c.codec.chunk_bytes);
        c.apply_env(|k| (k == "FLOATZIP_MIN_GAIN").then(|| "0.05".into()))
            .unwrap();
        assert_eq!(c.codec.encode_options().frame.min_gain, 0.05);
        for bad in ["1.0", "-0.1", "nan", "inf"] {
            let mut c = Config::default();
            c.apply_env(|k| (k == "FLOATZIP_MIN_GAIN").then(|| bad.into()))
                .unwrap();
            assert!(c.check().is_err(), "{bad}");
        }
    }
}
