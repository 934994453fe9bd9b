//! The codec's one error type.

use std::io;

/// Everything that can go wrong reading or writing floatzip data.
///
/// Variants name what was wrong precisely enough to act on: which tensor, which frame,
/// which limit. The CLI prefixes the file name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing failed underneath us.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The data does not start with the `.fz` magic.
    #[error("not a floatzip container (bad magic)")]
    NotFloatzip,
    /// A container written by a newer, unknown format version.
    #[error("unsupported container format version {0}")]
    UnsupportedVersion(u8),
    /// The data ended before a structure it declares was complete.
    #[error("truncated: {0}")]
    Truncated(String),
    /// A frame could not be decoded (bad header, corrupt coder stream, wrong sizes).
    #[error("corrupt frame {frame} of {entry}: {reason}")]
    CorruptFrame {
        /// Tensor name, or a description of the byte range.
        entry: String,
        /// Index of the frame within the entry.
        frame: usize,
        /// What was wrong.
        reason: String,
    },
    /// A frame decoded, but not to the bytes it was made from.
    #[error("checksum mismatch in frame {frame} of {entry}: the container is corrupt")]
    ChecksumMismatch {
        /// Tensor name, or a description of the byte range.
        entry: String,
        /// Index of the frame within the entry.
        frame: usize,
    },
    /// A safetensors header that is malformed or inconsistent with the file.
    #[error("invalid safetensors file: {0}")]
    InvalidSafetensors(String),
    /// A container manifest that is malformed or inconsistent with the container.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// Decoded bytes whose digest is not the one recorded.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was hashed (a tensor name or "the whole file").
        what: String,
        /// The digest recorded in the manifest.
        expected: String,
        /// The digest of the decoded bytes.
        actual: String,
    },
    /// A tensor name that the container does not hold.
    #[error("no tensor named {0:?}")]
    UnknownTensor(String),
    /// A byte range outside the original file.
    #[error("range {start}..{end} is outside the original file of {size} bytes")]
    RangeOutOfBounds {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// Size of the original file.
        size: u64,
    },
    /// A declared size beyond what the codec accepts.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A K/V block ([`crate::kv`]) whose header is malformed or inconsistent.
    #[error("corrupt K/V block: {0}")]
    CorruptKvBlock(String),
    /// Delta-coded data ([`crate::delta`]) read without the base file it was coded against.
    #[error("{0} is delta-coded against a base file: pass the base (--base)")]
    BaseRequired(String),
    /// The base file given is not the one the delta was coded against.
    #[error("wrong base for {what}: expected digest {expected}, got {actual}")]
    BaseMismatch {
        /// What was checked (the base file, or a tensor of it).
        what: String,
        /// The digest recorded when encoding.
        expected: String,
        /// The digest of the base given.
        actual: String,
    },
    /// Bad options or arguments from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result with the codec's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
