//! The manifest as the server sends it, and the checks made before anything is fetched
//! or allocated by its numbers.

use std::collections::HashSet;

use floatzip_codec::container::{CONTAINER_HEADER_LEN, MAX_PREFIX_BYTES};
use floatzip_codec::frame::{MAX_BODY_BYTES, MAX_CHUNK_BYTES};
use floatzip_codec::safetensors::Header;
use floatzip_codec::{DType, Manifest};
use serde::Deserialize;

/// Bytes a frame's tag, length varint, layout and checksum may add to its body.
const FRAME_OVERHEAD: u64 = 32;

/// Where the container is stored.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerInfo {
    /// SHA-256 of the container, hex.
    pub sha256: String,
    /// Size of the container in bytes.
    pub size: u64,
    /// Content-addressed URL of the container (path relative to the server), if given.
    #[serde(default)]
    pub url: Option<String>,
}

/// The answer of `GET …/{file}/manifest`: the container's manifest and where it lives.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteManifest {
    /// `org/name/file` on the server.
    #[serde(default)]
    pub path: String,
    /// Size of the original file in bytes.
    pub original_size: u64,
    /// SHA-256 of the original file, hex.
    pub sha256: String,
    /// The container.
    pub container: ContainerInfo,
    /// Stored size over original size, as the server computed it.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// The codec's manifest: every byte range of the original and its frames.
    pub manifest: Manifest,
}

impl RemoteManifest {
    /// Checks everything later code indexes or allocates by: the codec's own consistency
    /// checks, frames inside the container, frame and chunk sizes under the codec's limits,
    /// unique tensor names, and shapes that agree with byte lengths.
    pub fn validate(&self) -> Result<(), String> {
        let m = &self.manifest;
        if m.original_size != self.original_size || !m.sha256.eq_ignore_ascii_case(&self.sha256) {
            return Err("the summary and the manifest disagree on the original".into());
        }
        if m.prefix_len > MAX_PREFIX_BYTES {
            return Err(format!(
                "header of {} bytes is over the limit of {MAX_PREFIX_BYTES}",
                m.prefix_len
            ));
        }
        if m.frames_offset != CONTAINER_HEADER_LEN + m.prefix_len {
            return Err("frames do not start right after the header".into());
        }
        let frames_end = m
            .entries
            .last()
            .map_or(m.frames_offset, |e| e.compressed[1]);
        m.validate(frames_end).map_err(|e| e.to_string())?;
        // The container also holds an end tag, the manifest and a trailer after the frames.
        if frames_end >= self.container.size {
            return Err(format!(
                "frames end at {frames_end}, past the container's {} bytes",
                self.container.size
            ));
        }
        let mut names = HashSet::new();
        for e in &m.entries {
            let label = e.label();
            if e.chunk_bytes > MAX_CHUNK_BYTES as u64 {
                return Err(format!(
                    "{label}: chunk size {} is too large",
                    e.chunk_bytes
                ));
            }
            if let Some(&f) = e
                .frames
                .iter()
                .find(|&&f| f == 0 || f > MAX_BODY_BYTES as u64 + FRAME_OVERHEAD)
            {
                return Err(format!("{label}: frame of {f} bytes is impossible"));
            }
            if let Some(n) = &e.name {
                if !names.insert(n.as_str()) {
                    return Err(format!("{label} is listed twice"));
                }
                if let Some(d) = DType::from_safetensors(&e.dtype) {
                    let bytes = e
                        .shape
                        .iter()
                        .try_fold(1u64, |a, &s| a.checked_mul(s))
                        .and_then(|n| d.byte_len(n));
                    if bytes != Some(e.original_len()) {
                        return Err(format!(
                            "{label}: shape {:?} of {} does not fill {} bytes",
                            e.shape,
                            e.dtype,
                            e.original_len()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the safetensors header fetched from the container against the manifest:
    /// the same tensors at the same places with the same dtypes and shapes.
    pub(crate) fn check_header(&self, h: &Header) -> Result<(), String> {
        let m = &self.manifest;
        if h.prefix_len != m.prefix_len {
            return Err("header length disagrees with the manifest".into());
        }
        let tensors = m.entries.iter().filter(|e| e.name.is_some()).count();
        if tensors != h.tensors.len() {
            return Err(format!(
                "the header lists {} tensors, the manifest {tensors}",
                h.tensors.len()
            ));
        }
        for t in &h.tensors {
            let e = m
                .find_tensor(&t.name)
                .map(|i| &m.entries[i])
                .ok_or_else(|| format!("tensor {:?} is not in the manifest", t.name))?;
            if e.original != [m.prefix_len + t.begin, m.prefix_len + t.end]
                || e.dtype != t.dtype_name
                || e.shape != t.shape
            {
                return Err(format!("tensor {:?}: header and manifest disagree", t.name));
            }
        }
        Ok(())
    }
}
