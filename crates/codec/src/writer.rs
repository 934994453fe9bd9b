//! Streaming compression: original bytes in, a `.fz` container out, in bounded memory.
//!
//! Input is buffered until a batch of chunks is complete; the batch is encoded on the
//! rayon pool while the same bytes are hashed, and the frames are written in order. Memory
//! is about `batch_bytes` (chunk size × threads × a small factor), whatever the file size.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use rayon::prelude::*;

use crate::container::{container_header, manifest_and_trailer, CONTAINER_HEADER_LEN, END_TAG};
use crate::digests::{Batch, DigestWorker};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::frame::{encode_frame, frame_capacity, FrameOptions, FrameStats, MAX_CHUNK_BYTES};
use crate::kv::KvLayout;
use crate::manifest::{Entry, Manifest, FORMAT_VERSION};
use crate::safetensors::{self, Header};

/// Settings for compression.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Original bytes per chunk (rounded down to whole elements). Chunks are coded
    /// independently: smaller adapts tables faster and gives finer random access, larger
    /// amortises tables and per-frame work.
    pub chunk_bytes: usize,
    /// Per-frame coder settings.
    pub frame: FrameOptions,
    /// Chunks encoded per parallel batch, per worker thread.
    pub chunks_per_thread: usize,
    /// For K/V cache dumps: tensors of this layout's rank are cut into chunks of whole
    /// heads, so every head is coded with its own tables (see [`kv_head_chunk`]), where
    /// that codes smaller than plain chunks: the first heads of each tensor (up to 1 MiB)
    /// are coded both ways to choose.
    pub kv_layout: Option<KvLayout>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            chunk_bytes: 256 << 10,
            frame: FrameOptions::default(),
            chunks_per_thread: 4,
            kv_layout: None,
        }
    }
}

/// A byte range of the original to be coded as one entry.
#[derive(Debug, Clone)]
struct Segment {
    name: Option<String>,
    dtype_name: String,
    coded_as: DType,
    shape: Vec<u64>,
    begin: u64,
    /// `None`: runs to the end of the input.
    end: Option<u64>,
    heads: HeadChunks,
}

/// Whether a K/V tensor (`--kv-layout`) is coded one head per chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadChunks {
    /// Not a K/V tensor of the layout: plain chunks.
    NotKv,
    /// A K/V tensor with heads of this many bytes, not decided yet: it waits, uncut, until
    /// enough of it is in to try both (see `FzWriter::decide_head_chunks`).
    Undecided(u64),
    /// One chunk per head of this many bytes: it coded smaller than plain chunks.
    PerHead(u64),
    /// Plain chunks coded smaller (values, whose heads differ less than the tables cost).
    Plain,
}

/// Bytes of a K/V tensor (whole heads, at least one) coded both ways to choose its chunking.
const HEAD_TRIAL_BYTES: u64 = 1 << 20;

/// Smallest head worth a chunk of its own: below it the coding tables cost more than
/// per-head statistics save, and the plain chunking is kept (on the dev caches, 16 KiB
/// FP8 heads lost 0.06 % coded one per chunk; 32 KiB BF16/F16 heads gained 0.1-0.2 %).
const MIN_HEAD_CHUNK: u64 = 32 << 10;
/// Largest head coded as one chunk; larger heads keep the plain chunking.
const MAX_HEAD_CHUNK: u64 = 4 << 20;

/// The chunk length that makes every chunk of a K/V tensor one head, if `layout` applies:
/// the tensor has the layout's rank, a float dtype, and a head (`tokens × head_dim`
/// elements, contiguous in `[layers, heads, tokens, head_dim]` and `[heads, tokens,
/// head_dim]`) of [`MIN_HEAD_CHUNK`]..=[`MAX_HEAD_CHUNK`] bytes. Keys of different heads
/// have different scales (outlier channels), so one table per head beats one per
/// 256 KiB that mixes heads; `[tokens, heads, head_dim]` interleaves heads and is left
/// to [`crate::kv`], which transposes.
pub fn kv_head_chunk(layout: KvLayout, dtype: DType, shape: &[u64]) -> Option<u64> {
    if !matches!(layout, KvLayout::Lhtd | KvLayout::Htd) || layout.rank() != Some(shape.len()) {
        return None;
    }
    let elem = match dtype {
        DType::F32 => 4,
        DType::BF16 | DType::F16 => 2,
        DType::F8_E4M3 | DType::F8_E5M2 => 1,
        _ => return None,
    };
    let r = shape.len();
    let head = shape[r - 2].checked_mul(shape[r - 1])?.checked_mul(elem)?;
    (MIN_HEAD_CHUNK..=MAX_HEAD_CHUNK)
        .contains(&head)
        .then_some(head)
}

/// Turns a parsed header (or none) into the segments that cover every byte after the prefix.
fn plan_segments(header: Option<&Header>) -> Vec<Segment> {
    let bytes = |begin, end| Segment {
        name: None,
        dtype_name: DType::Bytes.name().into(),
        coded_as: DType::Bytes,
        shape: Vec::new(),
        begin,
        end,
        heads: HeadChunks::NotKv,
    };
    let Some(h) = header else {
        return vec![bytes(0, None)];
    };
    let mut segs = Vec::with_capacity(h.tensors.len() + 1);
    let mut cursor = h.prefix_len;
    for t in &h.tensors {
        let (b, e) = (h.prefix_len + t.begin, h.prefix_len + t.end);
        if b > cursor {
            segs.push(bytes(cursor, Some(b)));
        }
        segs.push(Segment {
            name: Some(t.name.clone()),
            dtype_name: t.dtype_name.clone(),
            coded_as: t.coded_as,
            shape: t.shape.clone(),
            begin: b,
            end: Some(e),
            heads: HeadChunks::NotKv,
        });
        cursor = e;
    }
    segs.push(bytes(cursor, None));
    segs
}

/// An entry being built while its frames are written.
struct EntryBuilder {
    seg: Segment,
    chunk_bytes: u64,
    compressed_begin: u64,
    frames: Vec<u64>,
    floor_bytes: f64,
    layouts: BTreeMap<String, u64>,
    coders: BTreeMap<String, u64>,
}

impl EntryBuilder {
    fn record(&mut self, frame_len: u64, stats: &FrameStats) {
        self.frames.push(frame_len);
        self.floor_bytes += stats.floor_bytes;
        *self.layouts.entry(stats.layout.name().into()).or_default() += 1;
        for c in &stats.coders {
            *self.coders.entry(c.name().into()).or_default() += 1;
        }
    }

    fn finish(self, end: u64, blake3: String) -> Entry {
        let compressed_end = self.compressed_begin + self.frames.iter().sum::<u64>();
        Entry {
            name: self.seg.name,
            dtype: self.seg.dtype_name,
            coded_as: self.seg.coded_as,
            shape: self.seg.shape,
            original: [self.seg.begin, end],
            compressed: [self.compressed_begin, compressed_end],
            chunk_bytes: self.chunk_bytes,
            frames: self.frames,
            blake3,
            floor_bytes: self.floor_bytes,
            layouts: self.layouts,
            coders: self.coders,
            delta: false,
            base_blake3: None,
            delta_vs_standalone: None,
        }
    }
}

/// Bytes `data` codes to in chunks of `chunk` bytes (the last one may be shorter).
fn coded_size(data: &[u8], chunk: u64, dtype: DType, opts: &FrameOptions) -> usize {
    data.par_chunks(chunk.max(1) as usize)
        .map(|c| {
            let mut out = Vec::with_capacity(c.len() / 2 + 64);
            encode_frame(c, dtype, opts, &mut out);
            out.len()
        })
        .sum()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum State {
    /// Collecting the first bytes to tell a safetensors header from other data.
    Sniffing,
    /// Writing frames; `seg` is the index of the segment that `pending_start` is in.
    Frames { seg: usize },
}

/// A `Write` that compresses everything written to it into a `.fz` container.
///
/// Call [`FzWriter::finish`] at the end: it checks the input was complete and writes the
/// manifest. Dropping the writer without it leaves an unusable, truncated container.
pub struct FzWriter<W: Write> {
    out: W,
    written: u64,
    opts: EncodeOptions,
    state: State,
    pending: Vec<u8>,
    pending_start: u64,
    /// `None` only once `finish` has taken it.
    digests: Option<DigestWorker>,
    /// One output buffer per chunk of a batch, kept from batch to batch: fresh buffers of a
    /// chunk's size faulted in new pages for every batch.
    frame_bufs: Vec<Vec<u8>>,
    prefix_len: u64,
    segments: Vec<Segment>,
    entries: Vec<EntryBuilder>,
    /// The entry whose frames were written last.
    emitted_seg: usize,
}

impl<W: Write> FzWriter<W> {
    /// Starts a container on `out`.
    pub fn new(out: W, opts: EncodeOptions) -> Result<Self> {
        if opts.chunk_bytes == 0 || opts.chunk_bytes > MAX_CHUNK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "chunk size must be 1..={MAX_CHUNK_BYTES} bytes, not {}",
                opts.chunk_bytes
            )));
        }
        Ok(FzWriter {
            out,
            written: 0,
            opts,
            state: State::Sniffing,
            pending: Vec::new(),
            pending_start: 0,
            digests: Some(DigestWorker::start()?),
            frame_bufs: Vec::new(),
            prefix_len: 0,
            segments: Vec::new(),
            entries: Vec::new(),
            emitted_seg: 0,
        })
    }

    fn batch_bytes(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        self.opts.chunk_bytes * threads * self.opts.chunks_per_thread.max(1)
    }

    fn hash(&mut self, batch: Batch) {
        if let Some(d) = &mut self.digests {
            d.send(batch);
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Decides, once enough bytes are in, whether this is a safetensors file; at the end of
    /// input (`eof`) decides with what there is.
    fn try_start(&mut self, eof: bool) -> Result<()> {
        if self.pending.len() < 9 && !eof {
            return Ok(());
        }
        let header = match safetensors::sniff(&self.pending) {
            None => None,
            Some(json_len) => {
                let prefix = 8 + json_len as usize;
                if self.pending.len() < prefix {
                    if !eof {
                        return Ok(());
                    }
                    return Err(Error::Truncated(format!(
                        "safetensors header declares {json_len} bytes but the file has {}",
                        self.pending.len().saturating_sub(8)
                    )));
                }
                Some(safetensors::parse_header(&self.pending[8..prefix])?)
            }
        };
        self.prefix_len = header.as_ref().map_or(0, |h| h.prefix_len);
        self.segments = plan_segments(header.as_ref());
        if let Some(layout) = self.opts.kv_layout {
            for s in &mut self.segments {
                if let Some(head) = kv_head_chunk(layout, s.coded_as, &s.shape) {
                    s.heads = HeadChunks::Undecided(head);
                }
            }
        }
        let prefix_len = self.prefix_len as usize;
        self.emit(&container_header(self.prefix_len))?;
        let prefix: Vec<u8> = self.pending.drain(..prefix_len).collect();
        self.emit(&prefix)?;
        self.hash(Batch {
            file_len: prefix.len(),
            bytes: prefix,
            entries: Vec::new(),
        });
        self.pending_start = self.prefix_len;
        self.state = State::Frames { seg: 0 };
        self.open_entry(0);
        Ok(())
    }

    fn open_entry(&mut self, seg: usize) {
        if let Some(s) = self.segments.get(seg) {
            self.entries.push(EntryBuilder {
                seg: s.clone(),
                chunk_bytes: self.chunk_len(s),
                compressed_begin: self.written,
                frames: Vec::new(),
                floor_bytes: 0.0,
                layouts: BTreeMap::new(),
                coders: BTreeMap::new(),
            });
        }
    }

    /// Marks every entry up to `seg` as started at the current output position: entries
    /// are opened ahead (to hash them) but their frames begin only where they are written.
    fn enter_segment(&mut self, seg: usize) {
        while self.emitted_seg < seg {
            self.emitted_seg += 1;
            self.entries[self.emitted_seg].compressed_begin = self.written;
        }
    }

    /// Original bytes per chunk in `seg`: whole elements, so every chunk splits into planes.
    fn chunk_len(&self, seg: &Segment) -> u64 {
        match seg.heads {
            HeadChunks::PerHead(head) => head,
            _ => self.plain_chunk_len(seg.coded_as),
        }
    }

    fn plain_chunk_len(&self, dtype: DType) -> u64 {
        let unit = dtype.unit_bytes();
        ((self.opts.chunk_bytes / unit).max(1) * unit) as u64
    }

    /// The most bytes one chunk can need: `push` takes at least this much at a time, so a
    /// pending buffer over its batch size always grows to a cuttable chunk.
    fn max_chunk_len(&self) -> usize {
        match self.opts.kv_layout {
            Some(_) => self.opts.chunk_bytes.max(MAX_HEAD_CHUNK as usize),
            None => self.opts.chunk_bytes,
        }
    }

    /// Chooses the chunking of each undecided K/V tensor from `first` on whose first bytes
    /// (up to [`HEAD_TRIAL_BYTES`], whole heads) are pending: one chunk per head, or plain
    /// chunks, whichever codes those bytes smaller. Stops at the first one still short of
    /// them, unless `eof`.
    fn decide_head_chunks(&mut self, first: usize, eof: bool) {
        let pending_end = self.pending_start + self.pending.len() as u64;
        for i in first..self.segments.len() {
            let s = &self.segments[i];
            if s.begin >= pending_end {
                break;
            }
            let HeadChunks::Undecided(head) = s.heads else {
                continue;
            };
            let end = s.end.unwrap_or(pending_end);
            let want = (end - s.begin).min((HEAD_TRIAL_BYTES / head).max(1) * head);
            let have = pending_end.min(end) - s.begin;
            if have < want && !eof {
                break;
            }
            // An undecided tensor is never cut, so it starts inside the pending bytes.
            let from = (s.begin - self.pending_start) as usize;
            let trial = &self.pending[from..from + have.min(want) as usize];
            let plain = self.plain_chunk_len(s.coded_as);
            let per_head = coded_size(trial, head, s.coded_as, &self.opts.frame);
            let plain_size = coded_size(trial, plain, s.coded_as, &self.opts.frame);
            let heads = match per_head < plain_size {
                true => HeadChunks::PerHead(head),
                false => HeadChunks::Plain,
            };
            self.segments[i].heads = heads;
            let chunk = self.chunk_len(&self.segments[i]);
            if let Some(e) = self.entries.get_mut(i) {
                e.seg.heads = heads;
                e.chunk_bytes = chunk;
            }
        }
    }

    /// Cuts the pending bytes into chunks: `(segment, offset in pending, len)`. Only whole
    /// chunks are cut unless `eof`, when the open-ended last segment takes what remains.
    fn cut_chunks(&self, mut seg: usize, eof: bool) -> Vec<(usize, usize, usize)> {
        let mut jobs = Vec::new();
        let pending_end = self.pending_start + self.pending.len() as u64;
        let mut pos = self.pending_start;
        while let Some(s) = self.segments.get(seg) {
            if let HeadChunks::Undecided(_) = s.heads {
                break;
            }
            let chunk = self.chunk_len(s);
            let seg_end = s.end.unwrap_or(u64::MAX);
            let take = chunk.min(seg_end - pos);
            if take == 0 {
                seg += 1;
                continue;
            }
            let have = pending_end - pos;
            let take = if take <= have {
                take
            } else if eof && s.end.is_none() && have > 0 {
                have
            } else {
                break;
            };
            jobs.push((seg, (pos - self.pending_start) as usize, take as usize));
            pos += take;
        }
        jobs
    }

    /// Encodes and writes every complete chunk pending (all of them at `eof`).
    fn flush_chunks(&mut self, eof: bool) -> Result<()> {
        let State::Frames { seg } = self.state else {
            return Ok(());
        };
        self.decide_head_chunks(seg, eof);
        let jobs = self.cut_chunks(seg, eof);
        let Some(&(last_seg, last_off, last_len)) = jobs.last() else {
            return Ok(());
        };
        let consumed = last_off + last_len;
        while self.entries.len() <= last_seg {
            self.open_entry(self.entries.len());
        }
        let pending = &self.pending;
        let opts = self.opts.frame;
        let segments = &self.segments;
        let mut frames = std::mem::take(&mut self.frame_bufs);
        frames.resize_with(jobs.len().max(frames.len()), Vec::new);
        let stats = jobs
            .par_iter()
            .zip(frames.par_iter_mut())
            .map(|(&(s, off, len), out)| {
                out.clear();
                out.reserve(frame_capacity(len));
                encode_frame(&pending[off..off + len], segments[s].coded_as, &opts, out)
            })
            .collect::<Vec<_>>();
        for ((&(s, _, _), frame), stats) in jobs.iter().zip(&frames).zip(stats) {
            self.enter_segment(s);
            self.emit(frame)?;
            self.entries[s].record(frame.len() as u64, &stats);
        }
        self.frame_bufs = frames;
        // The batch's original bytes go to the digest thread; what is left over (part of
        // a chunk) starts the next buffer.
        let mut next = self
            .digests
            .as_ref()
            .and_then(DigestWorker::spare_buffer)
            .unwrap_or_else(|| Vec::with_capacity(self.batch_bytes()));
        next.clear();
        next.extend_from_slice(&self.pending[consumed..]);
        let bytes = std::mem::replace(&mut self.pending, next);
        self.hash(Batch {
            bytes,
            file_len: consumed,
            entries: jobs,
        });
        self.pending_start += consumed as u64;
        let at_seg_end = self.segments[last_seg].end == Some(self.pending_start);
        self.state = State::Frames {
            seg: if at_seg_end { last_seg + 1 } else { last_seg },
        };
        Ok(())
    }

    /// Takes more original bytes (the `Write` impl calls this).
    pub fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = self
                .batch_bytes()
                .saturating_sub(self.pending.len())
                .max(self.max_chunk_len());
            let take = room.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if let State::Sniffing = self.state {
                self.try_start(false)?;
            }
            if self.pending.len() >= self.batch_bytes() {
                self.flush_chunks(false)?;
            }
        }
        Ok(())
    }

    /// Ends the input: codes what is left, checks every declared tensor was complete,
    /// writes the manifest, and returns the output and the manifest.
    pub fn finish(mut self) -> Result<(W, Manifest)> {
        if let State::Sniffing = self.state {
            self.try_start(true)?;
        }
        self.flush_chunks(true)?;
        let end = self.pending_start;
        while self.entries.len() < self.segments.len() {
            self.open_entry(self.entries.len());
        }
        self.enter_segment(self.segments.len().saturating_sub(1));
        let digests = match self.digests.take() {
            Some(d) => d.finish(),
            None => unreachable!("only finish takes the digest worker"),
        };
        let empty = || blake3::hash(b"").to_hex().to_string();
        let mut entries = Vec::with_capacity(self.entries.len());
        for (i, (b, s)) in std::mem::take(&mut self.entries)
            .into_iter()
            .zip(&self.segments)
            .enumerate()
        {
            let blake3 = digests.blake3.get(i).cloned().unwrap_or_else(empty);
            match s.end {
                Some(e) if e > end => {
                    return Err(Error::Truncated(format!(
                        "{} declares bytes {}..{} but the file ends at {end}",
                        s.name
                            .as_deref()
                            .map_or("a range".into(), |n| format!("tensor {n:?}")),
                        s.begin,
                        e
                    )))
                }
                Some(e) => entries.push(b.finish(e, blake3)),
                None if end > s.begin => entries.push(b.finish(end, blake3)),
                None => {}
            }
        }
        let frames_end = self.written;
        self.emit(&[END_TAG])?;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            original_size: end,
            sha256: digests.sha256,
            xxh3: digests.xxh3,
            prefix_len: self.prefix_len,
            frames_offset: CONTAINER_HEADER_LEN + self.prefix_len,
            entries,
            base: None,
        };
        debug_assert!(manifest.validate(frames_end).is_ok());
        let tail = manifest_and_trailer(&manifest, self.written);
        self.emit(&tail)?;
        self.out.flush()?;
        Ok((self.out, manifest))
    }
}

impl<W: Write> Write for FzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Frames are only cut at chunk boundaries; flushing the sink is all we can do.
        self.out.flush()
    }
}

/// Compresses everything from `input` into a container written to `output`.
pub fn compress<R: Read, W: Write>(
    mut input: R,
    output: W,
    opts: EncodeOptions,
) -> Result<(W, Manifest)> {
    let mut w = FzWriter::new(output, opts)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        w.push(&buf[..n])?;
    }
    w.finish()
}

/// Compresses a byte slice held in memory.
pub fn compress_bytes(data: &[u8], opts: EncodeOptions) -> Result<(Vec<u8>, Manifest)> {
    // Room for the whole container up front: growing a Vec copies it and faults in fresh
    // pages (a ratio over 1/2, i.e. most files, grew it at least once).
    let room = frame_capacity(data.len()) + data.len() / 256;
    let mut w = FzWriter::new(Vec::with_capacity(room), opts)?;
    w.push(data)?;
    w.finish()
}
