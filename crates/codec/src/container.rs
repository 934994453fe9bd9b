//! The `.fz` container's fixed parts: leading header and trailing footer pointer.
//!
//! ```text
//! "FLOATZIP" version:u8 reserved:[u8;7] prefix_len:u64le   (CONTAINER_HEADER_LEN bytes)
//! prefix                      the original's safetensors header, verbatim
//! frames...                   every entry's frames, in original order
//! END_TAG:u8
//! manifest                    JSON (see [`crate::manifest`])
//! manifest_offset:u64le manifest_len:u64le xxh3(manifest):u64le "FZFOOTER"
//! ```
//! The prefix up front lets a reader see the tensors before any frame arrives; the
//! manifest at the end lets a writer stream frames out as they are made.

use crate::error::{Error, Result};
use crate::manifest::{Manifest, FORMAT_VERSION};
use crate::safetensors::MAX_HEADER_BYTES;

/// Magic at the start of every container.
pub const MAGIC: &[u8; 8] = b"FLOATZIP";
/// Magic at the very end of every container.
pub const FOOTER_MAGIC: &[u8; 8] = b"FZFOOTER";
/// Bytes before the prefix.
pub const CONTAINER_HEADER_LEN: u64 = 24;
/// Bytes of the footer pointer at the end.
pub const TRAILER_LEN: u64 = 32;
/// Byte that ends the frame sequence.
pub const END_TAG: u8 = 0xE0;
/// Largest manifest accepted; bounds the one allocation sized by the footer.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;
/// Largest verbatim prefix (a safetensors length field plus its header).
pub const MAX_PREFIX_BYTES: u64 = MAX_HEADER_BYTES + 8;

/// The container header for an original whose verbatim prefix is `prefix_len` bytes.
pub fn container_header(prefix_len: u64) -> [u8; CONTAINER_HEADER_LEN as usize] {
    let mut h = [0u8; CONTAINER_HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = FORMAT_VERSION;
    h[16..].copy_from_slice(&prefix_len.to_le_bytes());
    h
}

/// Checks a container header; returns the prefix length.
pub fn parse_container_header(h: &[u8; CONTAINER_HEADER_LEN as usize]) -> Result<u64> {
    if &h[..8] != MAGIC {
        return Err(Error::NotFloatzip);
    }
    if h[8] != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(h[8]));
    }
    if h[9..16].iter().any(|&b| b != 0) {
        return Err(Error::InvalidManifest(
            "reserved header bytes are not zero".into(),
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&h[16..]);
    let prefix_len = u64::from_le_bytes(len);
    if prefix_len > MAX_PREFIX_BYTES {
        return Err(Error::TooLarge {
            what: "verbatim header",
            size: prefix_len,
            limit: MAX_PREFIX_BYTES,
        });
    }
    Ok(prefix_len)
}

/// Serialises the manifest and footer pointer; `manifest_offset` is where the JSON starts.
pub fn manifest_and_trailer(manifest: &Manifest, manifest_offset: u64) -> Vec<u8> {
    // Serialising a struct of strings and numbers cannot fail.
    let mut out = serde_json::to_vec(manifest).unwrap_or_default();
    let len = out.len() as u64;
    let sum = twox_hash::XxHash3_64::oneshot(&out);
    out.extend_from_slice(&manifest_offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(FOOTER_MAGIC);
    out
}

/// Where the manifest is, read from the trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Container offset of the manifest JSON.
    pub manifest_offset: u64,
    /// Length of the manifest JSON.
    pub manifest_len: u64,
    /// xxh3-64 of the manifest JSON.
    pub manifest_sum: u64,
}

/// Parses the last [`TRAILER_LEN`] bytes of a container of `container_len` bytes.
pub fn parse_trailer(t: &[u8], container_len: u64) -> Result<Trailer> {
    let word = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&t[i * 8..i * 8 + 8]);
        u64::from_le_bytes(a)
    };
    if t.len() != TRAILER_LEN as usize || &t[24..32] != FOOTER_MAGIC {
        return Err(Error::Truncated("the container's footer is missing".into()));
    }
    let tr = Trailer {
        manifest_offset: word(0),
        manifest_len: word(1),
        manifest_sum: word(2),
    };
    if tr.manifest_len > MAX_MANIFEST_BYTES {
        return Err(Error::TooLarge {
            what: "manifest",
            size: tr.manifest_len,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let end = tr
        .manifest_offset
        .checked_add(tr.manifest_len)
        .and_then(|e| e.checked_add(TRAILER_LEN));
    if end != Some(container_len) || tr.manifest_offset < CONTAINER_HEADER_LEN + 1 {
        return Err(Error::InvalidManifest(
            "footer points outside the container".into(),
        ));
    }
    Ok(tr)
}

/// Checks the manifest bytes against the trailer and parses them.
pub fn parse_manifest(json: &[u8], trailer: &Trailer) -> Result<Manifest> {
    if twox_hash::XxHash3_64::oneshot(json) != trailer.manifest_sum {
        return Err(Error::InvalidManifest("manifest checksum mismatch".into()));
    }
    serde_json::from_slice(json).map_err(|e| Error::InvalidManifest(e.to_string()))
}
