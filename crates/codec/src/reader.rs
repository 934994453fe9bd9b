//! Streaming decompression: a `.fz` byte stream in, the original bytes out, in bounded memory.
//!
//! Frames are read until a batch is full, decoded on the rayon pool, hashed and handed
//! out. The manifest at the end is read last and used only to check the result, so a
//! stream decodes as it arrives, without seeking.

use std::io::{self, Read, Write};

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use twox_hash::XxHash3_128 as Xxh3;

use crate::container::{
    parse_container_header, parse_manifest, parse_trailer, CONTAINER_HEADER_LEN, END_TAG,
    MAX_MANIFEST_BYTES, TRAILER_LEN,
};
use crate::error::{Error, Result};
use crate::frame::{decode_frame, parse_frame, FrameError, FrameHeader, FRAME_TAG, MAX_BODY_BYTES};
use crate::manifest::Manifest;
use crate::wire::put_varint;
use crate::writer::hex;

/// Original bytes decoded per parallel batch, per worker thread.
const BATCH_BYTES_PER_THREAD: usize = 1 << 20;

/// Original bytes appended per parallel batch, per worker thread, by random-access decodes:
/// about one frame, so that a batch stays in the core's cache (see `decode_frames_into`).
const APPEND_BATCH_BYTES_PER_THREAD: usize = 256 << 10;

/// Decodes frames (each a complete frame, tag included) into one buffer, in parallel.
/// `first_index` numbers the frames in error messages; `label` says where they are.
pub(crate) fn decode_frames(
    frames: &[&[u8]],
    label: &(dyn Fn(usize) -> (String, usize) + Sync),
    out: &mut Vec<u8>,
) -> Result<()> {
    decode_frames_into(frames, label, out, Fill::Append)
}

/// Whether decoded bytes go after what `out` holds, or replace it.
#[derive(Clone, Copy)]
enum Fill {
    Append,
    Replace,
}

fn decode_frames_into(
    frames: &[&[u8]],
    label: &(dyn Fn(usize) -> (String, usize) + Sync),
    out: &mut Vec<u8>,
    fill: Fill,
) -> Result<()> {
    let corrupt = |i: usize, e: FrameError| {
        let (entry, frame) = label(i);
        match e {
            FrameError::Corrupt(reason) => Error::CorruptFrame {
                entry,
                frame,
                reason,
            },
            FrameError::Checksum => Error::ChecksumMismatch { entry, frame },
        }
    };
    let mut headers = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let (h, len) = parse_frame(f).map_err(|e| corrupt(i, e))?;
        if len != f.len() {
            return Err(corrupt(
                i,
                FrameError::Corrupt("frame size disagrees with the manifest".into()),
            ));
        }
        headers.push(h);
    }
    match fill {
        Fill::Replace => {
            // Reuse the bytes already there instead of zeroing them again: a streaming
            // reader's batches are the same size, so after the first this costs nothing.
            let total: usize = headers.iter().map(|h| h.original_len).sum();
            if out.len() > total {
                out.truncate(total);
            } else {
                out.resize(total, 0);
            }
            decode_in_place(&headers, 0, out, &corrupt)
        }
        Fill::Append => {
            // Grow `out` a few frames at a time: zeroing a whole tensor and then decoding
            // over it passes over memory twice, while a small batch's zeroed bytes are
            // still in cache when the decoder writes them.
            let batch = APPEND_BATCH_BYTES_PER_THREAD * rayon::current_num_threads();
            let mut first = 0;
            while first < headers.len() {
                let (mut end, mut bytes) = (first + 1, headers[first].original_len);
                while end < headers.len() && bytes + headers[end].original_len <= batch {
                    bytes += headers[end].original_len;
                    end += 1;
                }
                let start = out.len();
                out.resize(start + bytes, 0);
                decode_in_place(&headers[first..end], first, &mut out[start..], &corrupt)?;
                first = end;
            }
            Ok(())
        }
    }
}

/// Decodes frames whose headers are `headers` (numbered from `first` in errors) into `out`,
/// exactly their decoded size, in parallel.
fn decode_in_place(
    headers: &[FrameHeader<'_>],
    first: usize,
    out: &mut [u8],
    corrupt: &(dyn Fn(usize, FrameError) -> Error + Sync),
) -> Result<()> {
    let mut slices = Vec::with_capacity(headers.len());
    let mut rest = out;
    for h in headers {
        let (a, b) = rest.split_at_mut(h.original_len);
        slices.push(a);
        rest = b;
    }
    slices
        .into_par_iter()
        .zip(headers.par_iter())
        .enumerate()
        .try_for_each(|(i, (dst, h))| decode_frame(h, dst).map_err(|e| corrupt(first + i, e)))
}

/// Counts the bytes read, so the footer's offsets can be checked on a stream.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

enum Phase {
    Start,
    Frames,
    Done,
    /// An error was returned; nothing more is read or handed out.
    Failed,
}

/// A `Read` that yields the original bytes of a `.fz` stream.
///
/// Reading to the end also verifies the stream: the original's size and xxh3-128 (and,
/// if asked, SHA-256) against the manifest. A reader that stops early gets unverified (but checksummed) bytes.
pub struct FzReader<R: Read> {
    src: Counting<R>,
    phase: Phase,
    buf: Vec<u8>,
    buf_pos: usize,
    xxh3: Xxh3,
    sha256: Option<Sha256>,
    emitted: u64,
    frames_read: usize,
    manifest: Option<Manifest>,
}

impl<R: Read> FzReader<R> {
    /// Starts decoding the container that `src` yields.
    pub fn new(src: R) -> Self {
        FzReader {
            src: Counting {
                inner: src,
                count: 0,
            },
            phase: Phase::Start,
            buf: Vec::new(),
            buf_pos: 0,
            xxh3: Xxh3::new(),
            sha256: None,
            emitted: 0,
            frames_read: 0,
            manifest: None,
        }
    }

    /// Also checks the SHA-256 of the whole original at the end (it is always checked by
    /// xxh3-128, which is twenty times faster; SHA-256 is the file's public identity).
    pub fn verify_sha256(mut self, on: bool) -> Self {
        self.sha256 = on.then(Sha256::new);
        self
    }

    /// The manifest, once the whole stream has been read and verified.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    fn read_exact_or(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.src.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                Error::Truncated(format!("the stream ends inside {what}"))
            }
            _ => Error::Io(e),
        })
    }

    fn start(&mut self) -> Result<()> {
        let mut h = [0u8; CONTAINER_HEADER_LEN as usize];
        self.read_exact_or(&mut h, "the container header")?;
        let prefix_len = parse_container_header(&h)?;
        let mut prefix = Vec::new();
        (&mut self.src).take(prefix_len).read_to_end(&mut prefix)?;
        if prefix.len() as u64 != prefix_len {
            return Err(Error::Truncated(
                "the stream ends inside the safetensors header".into(),
            ));
        }
        self.buf = prefix;
        self.phase = Phase::Frames;
        Ok(())
    }

    /// Reads one frame (after its tag) into a buffer holding the whole frame.
    fn read_frame(&mut self) -> Result<Vec<u8>> {
        let mut len = 0u64;
        let mut frame = vec![FRAME_TAG];
        for shift in (0..64).step_by(7) {
            let mut b = [0u8];
            self.read_exact_or(&mut b, "a frame length")?;
            len |= ((b[0] & 0x7f) as u64) << shift;
            if b[0] < 0x80 {
                break;
            }
        }
        if len > MAX_BODY_BYTES as u64 {
            return Err(Error::CorruptFrame {
                entry: format!("stream frame {}", self.frames_read),
                frame: self.frames_read,
                reason: format!("frame body of {len} bytes is over the limit"),
            });
        }
        put_varint(&mut frame, len);
        let at = frame.len();
        frame.resize(at + len as usize, 0);
        let what = format!("frame {}", self.frames_read);
        self.read_exact_or(&mut frame[at..], &what)?;
        Ok(frame)
    }

    /// Reads and decodes the next batch of frames into `self.buf`.
    fn next_batch(&mut self) -> Result<()> {
        let budget = BATCH_BYTES_PER_THREAD * rayon::current_num_threads().max(1);
        let mut frames = Vec::new();
        let mut body_bytes = 0;
        let mut ended = false;
        while body_bytes < budget {
            let mut tag = [0u8];
            self.read_exact_or(&mut tag, "the frame sequence")?;
            match tag[0] {
                FRAME_TAG => {
                    let f = self.read_frame()?;
                    body_bytes += f.len();
                    frames.push(f);
                }
                END_TAG => {
                    ended = true;
                    break;
                }
                t => {
                    return Err(Error::CorruptFrame {
                        entry: "stream".into(),
                        frame: self.frames_read + frames.len(),
                        reason: format!("unexpected byte {t:#04x} where a frame should start"),
                    })
                }
            }
        }
        let first = self.frames_read;
        let emitted = self.emitted;
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        self.buf_pos = 0;
        let label = |i: usize| {
            (
                format!(
                    "the stream (frame {} after original byte {emitted})",
                    first + i
                ),
                first + i,
            )
        };
        decode_frames_into(&refs, &label, &mut self.buf, Fill::Replace)?;
        self.frames_read += frames.len();
        if ended {
            self.phase = Phase::Done;
        }
        Ok(())
    }

    /// After the last frame: reads the manifest and checks size and SHA-256.
    fn verify_end(&mut self) -> Result<()> {
        let mut tail = Vec::new();
        (&mut self.src)
            .take(MAX_MANIFEST_BYTES + TRAILER_LEN + 1)
            .read_to_end(&mut tail)?;
        if tail.len() < TRAILER_LEN as usize {
            return Err(Error::Truncated(
                "the stream ends before the manifest".into(),
            ));
        }
        let (json, trailer) = tail.split_at(tail.len() - TRAILER_LEN as usize);
        let t = parse_trailer(trailer, self.src.count)?;
        if t.manifest_len != json.len() as u64 {
            return Err(Error::InvalidManifest(
                "the footer does not point at the manifest".into(),
            ));
        }
        let m = parse_manifest(json, &t)?;
        if m.base.is_some() {
            return Err(Error::BaseRequired("this container".into()));
        }
        if m.original_size != self.emitted {
            return Err(Error::InvalidManifest(format!(
                "manifest says {} original bytes, the frames gave {}",
                m.original_size, self.emitted
            )));
        }
        let actual = hex(&self.xxh3.finish_128().to_be_bytes());
        if actual != m.xxh3 {
            let (what, expected) = ("the whole file (xxh3)".into(), m.xxh3);
            return Err(Error::DigestMismatch {
                what,
                expected,
                actual,
            });
        }
        if let Some(sha) = self.sha256.take() {
            let actual = hex(&sha.finalize());
            if actual != m.sha256 {
                let (what, expected) = ("the whole file (SHA-256)".into(), m.sha256);
                return Err(Error::DigestMismatch {
                    what,
                    expected,
                    actual,
                });
            }
        }
        self.manifest = Some(m);
        Ok(())
    }

    /// Fills the buffer if it is used up; `Ok(false)` at the verified end. After an error
    /// the reader stays failed: it never hands out the bytes of a batch that did not decode.
    fn refill(&mut self) -> Result<bool> {
        if let Phase::Failed = self.phase {
            return Err(Error::InvalidArgument(
                "the stream already failed to decode".into(),
            ));
        }
        let r = self.refill_inner();
        if r.is_err() {
            self.phase = Phase::Failed;
            self.buf.clear();
            self.buf_pos = 0;
        }
        r
    }

    fn refill_inner(&mut self) -> Result<bool> {
        while self.buf_pos == self.buf.len() {
            match self.phase {
                Phase::Start => self.start()?,
                Phase::Frames => self.next_batch()?,
                Phase::Done if self.manifest.is_none() => {
                    self.verify_end()?;
                    return Ok(false);
                }
                Phase::Done => return Ok(false),
                Phase::Failed => {
                    return Err(Error::InvalidArgument(
                        "the stream already failed to decode".into(),
                    ))
                }
            }
            self.xxh3.write(&self.buf);
            if let Some(sha) = &mut self.sha256 {
                sha.update(&self.buf);
            }
            self.emitted += self.buf.len() as u64;
        }
        Ok(true)
    }
}

impl<R: Read> Read for FzReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}

/// Decompresses a whole `.fz` stream from `input` to `output`, verifying it.
pub fn decompress<R: Read, W: Write>(input: R, output: W) -> Result<(W, Manifest)> {
    decompress_with(input, output, false)
}

/// [`decompress`], also checking the original's SHA-256 if `verify_sha256`.
pub fn decompress_with<R: Read, W: Write>(
    input: R,
    mut output: W,
    verify_sha256: bool,
) -> Result<(W, Manifest)> {
    let mut r = FzReader::new(input).verify_sha256(verify_sha256);
    while r.refill()? {
        output.write_all(&r.buf[r.buf_pos..])?;
        r.buf_pos = r.buf.len();
    }
    output.flush()?;
    let m = r
        .manifest
        .take()
        .ok_or_else(|| Error::Truncated("the stream has no manifest".into()))?;
    Ok((output, m))
}

/// Decompresses a container held in memory.
pub fn decompress_bytes(fz: &[u8]) -> Result<Vec<u8>> {
    Ok(decompress(fz, Vec::with_capacity(fz.len() * 2))?.0)
}
