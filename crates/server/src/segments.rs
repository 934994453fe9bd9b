//! Tensor-level deduplication: a stored container is a list of content-addressed segments.
//!
//! ```text
//! segments/{sha256 of the bytes}          immutable piece of one or more containers
//! blobs/{container sha256}.segments.json  the container's segment list (an [`Index`])
//! ```
//! An upload's container is cut so that every entry (tensor) whose frames take at least
//! [`OWN_SEGMENT_BYTES`] is a segment of its own, and the bytes between (container header,
//! safetensors header, small tensors, manifest) form the segments in between. The codec
//! codes each entry from its own start, so a tensor with the same bytes, dtype and shape
//! has the same frames in any file: two files sharing tensors share those segments, and
//! storage grows by the new tensors only. Segments are keyed by the SHA-256 of their bytes,
//! so sharing never depends on the encoder being deterministic — at worst nothing is shared.
//!
//! The index is the source of truth for which segments a container uses; a segment is
//! deleted when the last index that lists it is (see `Storage::collect_blob`). Pointers
//! carry a copy of the list so that reads need no extra request.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use floatzip_codec::Manifest;

/// Entries whose frames take at least this many bytes get a segment of their own: below
/// it the per-object cost of the store outweighs what sharing saves.
pub const OWN_SEGMENT_BYTES: u64 = 64 << 10;

/// Largest index object read (a container with a million segments).
pub const MAX_INDEX_BYTES: u64 = 128 << 20;

/// One piece of a stored container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// SHA-256 of the segment's bytes, hex (also its name).
    pub sha256: String,
    /// Its length in bytes.
    pub len: u64,
}

/// The segment list of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Layout version of this object.
    pub version: u32,
    /// SHA-256 of the whole container, hex.
    pub container_sha256: String,
    /// The segments, in container order; their lengths add up to the container's size.
    pub segments: Vec<Segment>,
}

/// Storage key of a segment.
pub fn segment_key(sha256: &str) -> String {
    format!("segments/{sha256}")
}

/// Storage key of a container's segment list.
pub fn index_key(container_sha256: &str) -> String {
    format!("blobs/{container_sha256}.segments.json")
}

/// Where a container of `container_size` bytes with this manifest is cut: the byte ranges
/// of its segments, in order, covering it without gaps.
pub fn plan(m: &Manifest, container_size: u64) -> Vec<Range<u64>> {
    let mut cuts = Vec::new();
    let mut at = 0u64;
    for e in &m.entries {
        let [b, en] = e.compressed;
        if en - b < OWN_SEGMENT_BYTES || b < at || en > container_size {
            continue;
        }
        if b > at {
            cuts.push(at..b);
        }
        cuts.push(b..en);
        at = en;
    }
    if container_size > at {
        cuts.push(at..container_size);
    }
    cuts
}

/// The segments overlapping container bytes `range`: `(segment index, range within it)`.
pub fn locate(segments: &[Segment], range: Range<u64>) -> Vec<(usize, Range<u64>)> {
    let mut out = Vec::new();
    let mut seg_start = 0u64;
    for (i, s) in segments.iter().enumerate() {
        let seg_end = seg_start + s.len;
        let (a, b) = (range.start.max(seg_start), range.end.min(seg_end));
        if a < b {
            out.push((i, a - seg_start..b - seg_start));
        }
        if seg_end >= range.end {
            break;
        }
        seg_start = seg_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(lens: &[u64]) -> Vec<Segment> {
        lens.iter()
            .map(|&len| Segment {
                sha256: String::new(),
                len,
            })
            .collect()
    }

    #[test]
    fn locate_splits_a_range_across_segments() {
        let s = segs(&[10, 5, 20]);
        assert_eq!(locate(&s, 0..10), vec![(0, 0..10)]);
        assert_eq!(locate(&s, 8..12), vec![(0, 8..10), (1, 0..2)]);
        assert_eq!(locate(&s, 12..35), vec![(1, 2..5), (2, 0..20)]);
        assert_eq!(locate(&s, 15..16), vec![(2, 0..1)]);
        assert!(locate(&s, 35..40).is_empty());
    }
}
