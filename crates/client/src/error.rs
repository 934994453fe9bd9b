//! The client's one error type.

use std::path::PathBuf;

/// Everything that can go wrong talking to a floatzip server.
///
/// Variants say what failed precisely enough to act on: which URL, which tensor, which
/// limit. Transient network failures are retried before they surface here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A URL that cannot be used (not http(s), or not a model file URL).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server asked for a token, or refused the one sent (401).
    #[error("{url}: unauthorized (401): {message}")]
    Unauthorized {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The token sent does not grant this access (403).
    #[error("{url}: forbidden (403): {message}")]
    Forbidden {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// No such model file or tensor on the server (404).
    #[error("{url}: not found (404): {message}")]
    NotFound {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The server refused a byte range the manifest says exists (416): the manifest and
    /// the container disagree.
    #[error("{url}: range {start}..{end} not satisfiable (416): {message}")]
    RangeNotSatisfiable {
        /// The URL requested.
        url: String,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The server's message.
        message: String,
    },
    /// Any other error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's message (or the start of the body).
        message: String,
    },
    /// The connection failed and retries did not help.
    #[error("{url}: request failed after {attempts} attempts: {source}")]
    Network {
        /// The URL requested.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: reqwest::Error,
    },
    /// No bytes arrived for the stall timeout, on every attempt.
    #[error("{url}: no data for {seconds:.1} s, {attempts} attempts")]
    Stalled {
        /// The URL requested.
        url: String,
        /// The stall timeout in seconds.
        seconds: f64,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The response ended before the bytes it should hold, on every attempt.
    #[error("{url}: response cut short after {attempts} attempts: {detail}")]
    Truncated {
        /// The URL requested.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// What was missing.
        detail: String,
    },
    /// A response that breaks the protocol (wrong Content-Range, unparsable JSON, …).
    #[error("{url}: bad response: {detail}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The manifest is inconsistent with itself or the container; nothing was fetched by it.
    #[error("invalid manifest from {url}: {detail}")]
    InvalidManifest {
        /// The manifest URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A response body over the size the client accepts for it.
    #[error("{url}: {what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// What was too large.
        what: &'static str,
        /// The size declared or reached.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A tensor name the file does not hold.
    #[error("no tensor named {0:?} in this file")]
    UnknownTensor(String),
    /// A filter that is malformed or selects nothing.
    #[error("filter: {0}")]
    Filter(String),
    /// A tensor (or non-tensor byte range) whose data failed verification twice: once as
    /// first fetched and once more after fetching it again.
    #[error("{what} failed verification twice (fetched again once): {reason}")]
    Integrity {
        /// The tensor (`tensor "name"`) or byte range.
        what: String,
        /// The last failure (frame checksum, digest, size).
        reason: String,
    },
    /// The assembled file's SHA-256 is not the manifest's.
    #[error("{path}: SHA-256 of the downloaded file is {actual}, expected {expected}; not renamed into place")]
    FileDigest {
        /// The partial file that failed.
        path: PathBuf,
        /// The SHA-256 the manifest records.
        expected: String,
        /// The SHA-256 of the assembled bytes.
        actual: String,
    },
    /// The remote file is not a safetensors file, so it has no tensors to select.
    #[error("the remote file is not a safetensors file")]
    NotSafetensors,
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The local path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The codec refused data (only for data that is not retried, e.g. the header).
    #[error(transparent)]
    Codec(#[from] floatzip_codec::Error),
    /// An internal task failed (a panic in a decode task, a runtime that could not start).
    #[error("internal: {0}")]
    Internal(String),
}

/// Result with the client's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
