//! K/V cache blocks: per-channel coding of attention keys and values.
//!
//! A K/V cache is channels-last: `[layers, heads, tokens, head_dim]` ([`KvLayout::Lhtd`]) or
//! `[tokens, heads, head_dim]` ([`KvLayout::Thd`]). The elements at one `head_dim` index of
//! one head (of one layer) — a *channel*, holding that head's tokens — share a scale, and
//! heads differ (keys especially have outlier channels whose exponents sit far from the
//! rest), so coding channel groups with their own statistics can beat one table for the
//! whole block. The encoder transposes the block so every channel's elements are
//! contiguous (each head's `[tokens, head_dim]` matrix becomes `[head_dim, tokens]`; for
//! `Thd` the one `[tokens, heads × head_dim]` matrix), cuts it into groups of `group`
//! channels, and codes each group as one frame ([`crate::frame`]: plane split, per-plane
//! coder choice). On the MiniLM caches the best group is one head (`group` = `head_dim`). It also codes the block flat
//! (original order) and keeps whichever is smaller, so a block where per-channel tables do
//! not pay (few tokens) costs at most the flat size plus the header.
//!
//! ```text
//! block  := "FK" version:u8(=1) mode:u8 dtype_len:u8 dtype_name layout:u8 ndim:u8
//!           varint(dim)*ndim varint(group) frames...
//! mode   := 0 flat (frames of the block in original order, FLAT_CHUNK_BYTES each)
//!         | 1 per-channel (every [tokens, channels] matrix transposed to [channels, tokens],
//!           matrices in order; one frame per `group` consecutive channels)
//! ```
//! Every frame carries its checksum, so a corrupt block is an error, never wrong bytes.
//!
//! **FP8 with scales.** An FP8 tensor (`F8_E4M3`, `F8_E5M2`) is a block like any other: its
//! frames use the FP8 plane layouts (exponent | sign+mantissa) or raw bytes, whichever is
//! smaller. Its scales (one F32 per layer, per head or per block) are a separate, tiny
//! tensor: code them as their own block with [`KvLayout::Flat`] (or store them raw — a few
//! bytes); they are never folded into the FP8 values, so decoding stays bit-exact.
//!
//! **Paged caches.** [`KvBlockCodec`] keeps its transpose and trial buffers between calls,
//! so coding a stream of 16–256-token pages reuses the same memory; `decode_block` writes
//! into the caller's page. The frame coder underneath keeps its buffers per thread and its
//! per-plane bookkeeping inline, so once a codec has coded pages of a size, encoding and
//! decoding more of them makes no heap allocation (`tests/kv_no_alloc.rs` checks it). A
//! chunk that looks repetitive still allocates zstd's output when zstd is tried.

use crate::coders::rans::SmallPlanes;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fixed::FixedVec;
use crate::frame::{decode_frame, encode_frame, parse_frame, FrameError, FrameOptions};
use crate::wire::{put_varint, Cursor};

/// Magic at the start of every encoded K/V block.
pub const KV_MAGIC: &[u8; 2] = b"FK";
/// Version of the K/V block format this code writes.
pub const KV_VERSION: u8 = 1;
/// Largest block accepted (decoded bytes): bounds the one allocation [`decode`] makes.
pub const MAX_KV_BYTES: u64 = 1 << 31;
/// Bytes per frame in flat mode.
pub const FLAT_CHUNK_BYTES: usize = 256 << 10;
/// Most dimensions a block may have.
pub const MAX_DIMS: usize = 8;
/// A channel group is never cut into frames larger than this.
const MAX_GROUP_BYTES: usize = 4 << 20;

/// How a K/V block's dimensions are ordered. It fixes which elements form a channel (one
/// `head_dim` index of one head, of one layer) and is recorded in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvLayout {
    /// `[layers, heads, tokens, head_dim]`.
    Lhtd,
    /// `[tokens, heads, head_dim]` (one layer's page, as paged-attention caches hold it).
    Thd,
    /// `[heads, tokens, head_dim]`.
    Htd,
    /// Any shape, coded flat only (scales, anything without channels).
    Flat,
}

impl KvLayout {
    fn id(self) -> u8 {
        match self {
            KvLayout::Lhtd => 0,
            KvLayout::Thd => 1,
            KvLayout::Htd => 2,
            KvLayout::Flat => 3,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => KvLayout::Lhtd,
            1 => KvLayout::Thd,
            2 => KvLayout::Htd,
            3 => KvLayout::Flat,
            _ => return None,
        })
    }

    /// Parses a name as the CLI spells it (`lhtd`, `thd`, `htd`, `flat`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "lhtd" => KvLayout::Lhtd,
            "thd" => KvLayout::Thd,
            "htd" => KvLayout::Htd,
            "flat" => KvLayout::Flat,
            _ => return None,
        })
    }

    /// The rank this layout requires (`None`: any).
    pub fn rank(self) -> Option<usize> {
        match self {
            KvLayout::Lhtd => Some(4),
            KvLayout::Thd | KvLayout::Htd => Some(3),
            KvLayout::Flat => None,
        }
    }
}

/// How a block was coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvMode {
    /// Frames of the block in original order.
    Flat,
    /// Channel-major transpose, `group` channels per frame.
    PerChannel {
        /// Channels per frame.
        group: u32,
    },
}

/// What a block holds, read from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvInfo {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, in `layout` order (at most 8; inline, so decoding a block allocates
    /// nothing).
    pub shape: FixedVec<u64, MAX_DIMS>,
    /// The layout recorded by the encoder.
    pub layout: KvLayout,
    /// How it was coded.
    pub mode: KvMode,
    /// Decoded size in bytes.
    pub byte_len: usize,
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::CorruptKvBlock(reason.into())
}

fn frame_err(frame: usize, e: FrameError) -> Error {
    match e {
        FrameError::Corrupt(reason) => Error::CorruptFrame {
            entry: "K/V block".into(),
            frame,
            reason,
        },
        FrameError::Checksum => Error::ChecksumMismatch {
            entry: "K/V block".into(),
            frame,
        },
    }
}

/// Element width in bytes for per-channel coding (`None`: sub-byte types, flat only).
fn elem_width(dtype: DType) -> Option<usize> {
    (dtype.bits().is_multiple_of(8) && dtype != DType::Bytes).then(|| dtype.bits() as usize / 8)
}

/// Checks `shape` against `layout` and `dtype`; returns the block's byte length.
fn check_shape(dtype: DType, shape: &[u64], layout: KvLayout) -> Result<usize> {
    if let Some(r) = layout.rank() {
        if shape.len() != r {
            return Err(Error::InvalidArgument(format!(
                "layout {layout:?} needs {r} dimensions, the shape has {}",
                shape.len()
            )));
        }
    }
    if shape.len() > MAX_DIMS {
        return Err(Error::InvalidArgument("more than 8 dimensions".into()));
    }
    let elems = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument("shape overflows".into()))?;
    let bytes = dtype
        .byte_len(elems)
        .ok_or_else(|| Error::InvalidArgument("shape is not whole bytes of the dtype".into()))?;
    if bytes > MAX_KV_BYTES {
        return Err(Error::TooLarge {
            what: "K/V block",
            size: bytes,
            limit: MAX_KV_BYTES,
        });
    }
    Ok(bytes as usize)
}

/// Reusable state for coding a stream of K/V blocks (e.g. the pages of a paged cache).
#[derive(Debug)]
pub struct KvBlockCodec {
    /// Frame settings (default: the product's defaults, but eight rANS lanes on small
    /// planes: a page's planes are all small, and two or four lanes halve their speed).
    pub frame: FrameOptions,
    transposed: Vec<u8>,
    trial: Vec<u8>,
    best: Vec<u8>,
}

impl Default for KvBlockCodec {
    fn default() -> Self {
        KvBlockCodec {
            frame: FrameOptions {
                small_planes: SmallPlanes::Fast,
                ..FrameOptions::default()
            },
            transposed: Vec::new(),
            trial: Vec::new(),
            best: Vec::new(),
        }
    }
}

impl KvBlockCodec {
    /// A codec with the default settings for K/V blocks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes one block, replacing the contents of `out`. Tries flat coding and
    /// per-channel coding with a few group sizes and keeps the smallest.
    pub fn encode_block(
        &mut self,
        bytes: &[u8],
        dtype: DType,
        shape: &[u64],
        layout: KvLayout,
        out: &mut Vec<u8>,
    ) -> Result<KvMode> {
        let len = check_shape(dtype, shape, layout)?;
        if len != bytes.len() {
            return Err(Error::InvalidArgument(format!(
                "shape and dtype give {len} bytes, the block has {}",
                bytes.len()
            )));
        }
        // Flat first: always possible.
        out.clear();
        write_header(out, dtype, shape, layout, KvMode::Flat);
        let hdr_flat = out.len();
        let unit = dtype.unit_bytes().max(1);
        let chunk = (FLAT_CHUNK_BYTES / unit).max(1) * unit;
        for c in bytes.chunks(chunk) {
            encode_frame(c, dtype, &self.frame, out);
        }
        let mut best_mode = KvMode::Flat;
        let mut best_len = out.len() - hdr_flat;
        let width = elem_width(dtype);
        if let (Some(w), Some(m)) = (width, matrices(shape, layout)) {
            let ch_bytes = m.rows * w;
            let total_channels = m.batch * m.cols;
            // Small pages (a few tokens) have no group worth a frame: skip the transpose.
            let any_group = GROUPS.iter().any(|&g| {
                let g = g.min(total_channels);
                g * ch_bytes >= MIN_GROUP_BYTES || g == total_channels
            });
            if len > 0 && m.cols > 1 && any_group {
                transpose(bytes, w, m, &mut self.transposed);
                let mut tried_all = false;
                for g in GROUPS {
                    let g = g.min(total_channels);
                    if tried_all || (g > 1 && g * ch_bytes > MAX_GROUP_BYTES) {
                        break;
                    }
                    if g * ch_bytes < MIN_GROUP_BYTES && g < total_channels {
                        continue;
                    }
                    tried_all = g == total_channels;
                    self.trial.clear();
                    for grp in self.transposed.chunks(g * ch_bytes) {
                        // A channel over MAX_GROUP_BYTES is cut into several frames.
                        for c in grp.chunks(MAX_GROUP_BYTES) {
                            encode_frame(c, dtype, &self.frame, &mut self.trial);
                        }
                    }
                    if self.trial.len() < best_len {
                        best_len = self.trial.len();
                        best_mode = KvMode::PerChannel { group: g as u32 };
                        std::mem::swap(&mut self.trial, &mut self.best);
                    }
                }
            }
        }
        if best_mode != KvMode::Flat {
            out.clear();
            write_header(out, dtype, shape, layout, best_mode);
            out.extend_from_slice(&self.best);
        }
        Ok(best_mode)
    }

    /// Decodes a block into `out`, which must be exactly the block's size
    /// ([`read_info`] gives it). Never panics on malformed input.
    pub fn decode_block(&mut self, encoded: &[u8], out: &mut [u8]) -> Result<KvInfo> {
        let (info, frames) = parse_header(encoded)?;
        if out.len() != info.byte_len {
            return Err(Error::InvalidArgument(format!(
                "output holds {} bytes, the block decodes to {}",
                out.len(),
                info.byte_len
            )));
        }
        match info.mode {
            KvMode::Flat => decode_frames(frames, out)?,
            KvMode::PerChannel { .. } => {
                self.transposed.clear();
                self.transposed.resize(info.byte_len, 0);
                decode_frames(frames, &mut self.transposed)?;
                let w = elem_width(info.dtype).ok_or_else(|| corrupt("per-channel sub-byte"))?;
                let m = matrices(&info.shape, info.layout)
                    .ok_or_else(|| corrupt("per-channel mode for a block without channels"))?;
                untranspose(&self.transposed, w, m, out);
            }
        }
        Ok(info)
    }
}

fn write_header(out: &mut Vec<u8>, dtype: DType, shape: &[u64], layout: KvLayout, mode: KvMode) {
    out.extend_from_slice(KV_MAGIC);
    out.push(KV_VERSION);
    let (m, group) = match mode {
        KvMode::Flat => (0u8, 0u32),
        KvMode::PerChannel { group } => (1, group),
    };
    out.push(m);
    let name = dtype.name().as_bytes();
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(layout.id());
    out.push(shape.len() as u8);
    for &d in shape {
        put_varint(out, d);
    }
    put_varint(out, group as u64);
}

fn parse_header(encoded: &[u8]) -> Result<(KvInfo, &[u8])> {
    let mut c = Cursor::new(encoded);
    if c.take(2) != Some(&KV_MAGIC[..]) {
        return Err(corrupt("missing K/V block magic"));
    }
    let version = c.u8().ok_or_else(|| corrupt("truncated header"))?;
    if version != KV_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let mode = c.u8().ok_or_else(|| corrupt("truncated header"))?;
    let name_len = c.u8().ok_or_else(|| corrupt("truncated header"))?;
    let name = c
        .take(name_len as usize)
        .ok_or_else(|| corrupt("truncated dtype"))?;
    let dtype = std::str::from_utf8(name)
        .ok()
        .and_then(DType::from_safetensors)
        .ok_or_else(|| corrupt("unknown dtype"))?;
    let layout = c
        .u8()
        .and_then(KvLayout::from_id)
        .ok_or_else(|| corrupt("unknown layout"))?;
    let ndim = c.u8().ok_or_else(|| corrupt("truncated header"))? as usize;
    if ndim > MAX_DIMS {
        return Err(corrupt("more than 8 dimensions"));
    }
    let mut shape = FixedVec::new();
    for _ in 0..ndim {
        shape.push(c.varint().ok_or_else(|| corrupt("truncated shape"))?);
    }
    let group = c.varint().ok_or_else(|| corrupt("truncated group"))?;
    let byte_len = check_shape(dtype, &shape, layout).map_err(|e| corrupt(e.to_string()))?;
    let mode = match (mode, group) {
        (0, 0) => KvMode::Flat,
        (1, g) if g >= 1 && g <= u32::MAX as u64 => {
            let cols = matrices(&shape, layout).map_or(0, |m| m.cols);
            if elem_width(dtype).is_none() || cols < 2 {
                return Err(corrupt("per-channel mode for a block without channels"));
            }
            KvMode::PerChannel { group: g as u32 }
        }
        _ => return Err(corrupt("unknown mode")),
    };
    let frames = &encoded[c.position()..];
    Ok((
        KvInfo {
            dtype,
            shape,
            layout,
            mode,
            byte_len,
        },
        frames,
    ))
}

/// Decodes consecutive frames that must fill `out` exactly.
fn decode_frames(mut frames: &[u8], out: &mut [u8]) -> Result<()> {
    let mut pos = 0usize;
    let mut i = 0usize;
    while pos < out.len() {
        let (h, len) = parse_frame(frames).map_err(|e| frame_err(i, e))?;
        let end = pos
            .checked_add(h.original_len)
            .filter(|&e| e <= out.len())
            .ok_or_else(|| corrupt("frames decode past the block's end"))?;
        if h.original_len == 0 {
            return Err(corrupt("empty frame"));
        }
        decode_frame(&h, &mut out[pos..end]).map_err(|e| frame_err(i, e))?;
        pos = end;
        frames = &frames[len..];
        i += 1;
    }
    if !frames.is_empty() {
        return Err(corrupt("bytes after the last frame"));
    }
    Ok(())
}

/// Smallest channel group tried: a frame's tables cost ~100-300 bytes, so smaller groups
/// never win, and trying them made 16-token pages ~1000× slower to encode (hundreds of
/// frames per trial).
const MIN_GROUP_BYTES: usize = 4 << 10;

/// Channel-group sizes tried by the encoder (channels per frame).
const GROUPS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// A block seen as `batch` matrices of `[rows = tokens, cols = channels]`.
#[derive(Debug, Clone, Copy)]
struct Matrices {
    batch: usize,
    rows: usize,
    cols: usize,
}

/// The per-channel view of a block: a channel is one `head_dim` index of one head (of one
/// layer), its elements are that head's tokens. `None` for layouts without channels.
fn matrices(shape: &[u64], layout: KvLayout) -> Option<Matrices> {
    let d = |i: usize| shape.get(i).map(|&v| v as usize);
    match layout {
        KvLayout::Lhtd => Some(Matrices {
            batch: d(0)? * d(1)?,
            rows: d(2)?,
            cols: d(3)?,
        }),
        KvLayout::Htd => Some(Matrices {
            batch: d(0)?,
            rows: d(1)?,
            cols: d(2)?,
        }),
        KvLayout::Thd => Some(Matrices {
            batch: 1,
            rows: d(0)?,
            cols: d(1)? * d(2)?,
        }),
        KvLayout::Flat => None,
    }
}

/// Each `[rows, cols]` matrix of `w`-byte elements → `[cols, rows]`.
fn transpose(src: &[u8], w: usize, m: Matrices, dst: &mut Vec<u8>) {
    dst.clear();
    dst.resize(src.len(), 0);
    let mat = m.rows * m.cols * w;
    if mat == 0 {
        return;
    }
    for (s, d) in src.chunks_exact(mat).zip(dst.chunks_exact_mut(mat)) {
        for (r, row) in s.chunks_exact(m.cols * w).enumerate() {
            for (c, e) in row.chunks_exact(w).enumerate() {
                let at = (c * m.rows + r) * w;
                d[at..at + w].copy_from_slice(e);
            }
        }
    }
}

/// Inverse of [`transpose`].
fn untranspose(src: &[u8], w: usize, m: Matrices, dst: &mut [u8]) {
    let mat = m.rows * m.cols * w;
    if mat == 0 {
        return;
    }
    for (s, d) in src.chunks_exact(mat).zip(dst.chunks_exact_mut(mat)) {
        for (r, row) in d.chunks_exact_mut(m.cols * w).enumerate() {
            for (c, e) in row.chunks_exact_mut(w).enumerate() {
                let at = (c * m.rows + r) * w;
                e.copy_from_slice(&s[at..at + w]);
            }
        }
    }
}

/// Encodes one K/V block (`bytes` of `dtype`, dimensions `shape` in `layout` order).
pub fn encode(bytes: &[u8], dtype: DType, shape: &[u64], layout: KvLayout) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() / 2 + 64);
    KvBlockCodec::new().encode_block(bytes, dtype, shape, layout, &mut out)?;
    Ok(out)
}

/// Reads a block's header: what it holds and how large it decodes.
pub fn read_info(encoded: &[u8]) -> Result<KvInfo> {
    parse_header(encoded).map(|(i, _)| i)
}

/// Decodes a block made by [`encode`] into `out` (replaced), returning what it holds.
/// The decoded size is validated ([`MAX_KV_BYTES`]) before `out` is sized.
pub fn decode(encoded: &[u8], out: &mut Vec<u8>) -> Result<KvInfo> {
    let info = read_info(encoded)?;
    out.clear();
    out.resize(info.byte_len, 0);
    KvBlockCodec::new().decode_block(encoded, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_round_trips() {
        let src: Vec<u8> = (0..96u8).collect();
        let m = Matrices {
            batch: 2,
            rows: 6,
            cols: 4,
        };
        let mut t = Vec::new();
        transpose(&src, 2, m, &mut t);
        assert_eq!(&t[..4], &[0, 1, 8, 9]);
        assert_eq!(&t[48..52], &[48, 49, 56, 57]);
        let mut back = vec![0; 96];
        untranspose(&t, 2, m, &mut back);
        assert_eq!(back, src);
    }
}
