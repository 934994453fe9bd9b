//! The container's footer: what every byte range of the original is and where its frames are.
//!
//! Stored as JSON: it is small next to the data (a few bytes per 256 KiB frame), the
//! server hands it to clients as is, and a person can read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::frame::MAX_CHUNK_BYTES;

/// Version of the container format this code writes.
pub const FORMAT_VERSION: u8 = 1;

/// The manifest of one `.fz` container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Container format version.
    pub format_version: u8,
    /// Size of the original file in bytes.
    pub original_size: u64,
    /// SHA-256 of the original file, hex: its identity (the server's ETag).
    pub sha256: String,
    /// xxh3-128 of the original file, hex: the fast whole-file check of every decode.
    pub xxh3: String,
    /// Length of the original's verbatim prefix (the safetensors header; 0 for other files).
    pub prefix_len: u64,
    /// Offset in the container where the first frame starts.
    pub frames_offset: u64,
    /// Every byte range of the original after the prefix, in order, without gaps.
    pub entries: Vec<Entry>,
    /// The base file that delta-coded entries were XORed against ([`crate::delta`]);
    /// `None` for a standalone container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
}

/// Identity of the base file of a delta container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    /// SHA-256 of the whole base file, hex.
    pub sha256: String,
    /// Size of the base file in bytes.
    pub size: u64,
}

/// One byte range of the original: a tensor, or bytes that are not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Tensor name; `None` for bytes outside any tensor (gaps, trailing data, non-safetensors files).
    pub name: Option<String>,
    /// Dtype as the safetensors header names it (`"BYTES"` for non-tensor ranges).
    pub dtype: String,
    /// What the bytes were coded as (see [`crate::safetensors::TensorInfo::coded_as`]).
    pub coded_as: DType,
    /// Tensor shape (empty for non-tensor ranges).
    #[serde(default)]
    pub shape: Vec<u64>,
    /// `[begin, end)` in the original file.
    pub original: [u64; 2],
    /// `[begin, end)` of this entry's frames in the container: one contiguous range.
    pub compressed: [u64; 2],
    /// Original bytes per frame (the last frame may hold fewer).
    pub chunk_bytes: u64,
    /// Size in the container of each frame.
    pub frames: Vec<u64>,
    /// BLAKE3 of the entry's original bytes, hex: identifies a tensor's content.
    pub blake3: String,
    /// Order-0 entropy of the coded planes, summed over chunks: the floor for this layout
    /// (of a sample's histogram for planes planned from one: see
    /// [`crate::frame::FrameStats::floor_bytes`]).
    pub floor_bytes: f64,
    /// How many frames used each layout.
    #[serde(default)]
    pub layouts: BTreeMap<String, u64>,
    /// How many planes used each coder.
    #[serde(default)]
    pub coders: BTreeMap<String, u64>,
    /// Whether the frames hold the XOR of this tensor with the base's tensor of the same
    /// name, dtype and shape (see [`crate::delta`]) rather than the tensor itself.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delta: bool,
    /// BLAKE3 of the base tensor a delta entry was XORed against, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_blake3: Option<String>,
    /// For tensors of a delta container that had a counterpart in the base: the sizes of
    /// both codings tried, `[delta, standalone]` (the smaller one is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_vs_standalone: Option<[u64; 2]>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Entry {
    /// Original length in bytes.
    pub fn original_len(&self) -> u64 {
        self.original[1] - self.original[0]
    }

    /// Compressed length in bytes.
    pub fn compressed_len(&self) -> u64 {
        self.compressed[1] - self.compressed[0]
    }

    /// A label for messages: the tensor name, or the byte range.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("tensor {n:?}"),
            None => format!("bytes {}..{}", self.original[0], self.original[1]),
        }
    }

    /// Original `[begin, end)` of frame `i` (absolute in the original file).
    pub fn frame_original_range(&self, i: usize) -> (u64, u64) {
        let begin = self.original[0] + i as u64 * self.chunk_bytes;
        (begin, (begin + self.chunk_bytes).min(self.original[1]))
    }

    /// Container offsets `[begin, end)` of frame `i`.
    pub fn frame_compressed_range(&self, i: usize) -> (u64, u64) {
        let begin = self.compressed[0] + self.frames[..i].iter().sum::<u64>();
        (begin, begin + self.frames[i])
    }
}

impl Manifest {
    /// Checks that the manifest describes a consistent container of `container_len` bytes
    /// whose frames end at `frames_end`. Everything a reader later indexes or allocates by
    /// is bounded here.
    pub fn validate(&self, frames_end: u64) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidManifest(m));
        if self.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(self.format_version));
        }
        if !is_hex(&self.sha256, 64) || !is_hex(&self.xxh3, 32) {
            return bad("file digests are not hex of the right length".into());
        }
        if self.base.as_ref().is_some_and(|b| !is_hex(&b.sha256, 64)) {
            return bad("base digest is not 64 hex digits".into());
        }
        let (mut orig, mut comp) = (self.prefix_len, self.frames_offset);
        for e in &self.entries {
            let label = e.label();
            if e.original[0] != orig || e.original[1] < e.original[0] {
                return bad(format!(
                    "{label}: original range does not follow the previous one"
                ));
            }
            if e.compressed[0] != comp || e.compressed[1] < e.compressed[0] {
                return bad(format!(
                    "{label}: compressed range does not follow the previous one"
                ));
            }
            if !is_hex(&e.blake3, 64) {
                return bad(format!("{label}: blake3 is not 64 hex digits"));
            }
            match (&e.base_blake3, e.delta) {
                (None, false) => {}
                (Some(b), true) if is_hex(b, 64) && self.base.is_some() && e.name.is_some() => {}
                _ => return bad(format!("{label}: inconsistent delta fields")),
            }
            let len = e.original_len();
            if len > 0 && (e.chunk_bytes == 0 || e.chunk_bytes > MAX_CHUNK_BYTES as u64) {
                return bad(format!(
                    "{label}: chunk size {} is out of range",
                    e.chunk_bytes
                ));
            }
            let want_frames = if len == 0 {
                0
            } else {
                len.div_ceil(e.chunk_bytes)
            };
            if e.frames.len() as u64 != want_frames {
                return bad(format!(
                    "{label}: {} frames listed, {want_frames} expected",
                    e.frames.len()
                ));
            }
            let sum = e.frames.iter().try_fold(0u64, |a, &f| a.checked_add(f));
            if sum != Some(e.compressed_len()) {
                return bad(format!(
                    "{label}: frame sizes do not add up to the compressed range"
                ));
            }
            (orig, comp) = (e.original[1], e.compressed[1]);
        }
        if orig != self.original_size {
            return bad(format!(
                "entries end at {orig}, the original has {} bytes",
                self.original_size
            ));
        }
        if comp != frames_end {
            return bad(format!(
                "frames end at {comp}, the container's at {frames_end}"
            ));
        }
        Ok(())
    }

    /// Index of the entry holding the tensor `name`.
    pub fn find_tensor(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.name.as_deref() == Some(name))
    }

    /// Sum of the compressed sizes of all frames.
    pub fn compressed_data_len(&self) -> u64 {
        self.entries.iter().map(|e| e.compressed_len()).sum()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}
