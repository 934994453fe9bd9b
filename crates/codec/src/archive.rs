//! Random access to a `.fz` container: one tensor, or any byte range of the original,
//! decoding only the frames it needs.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::container::{
    parse_container_header, parse_manifest, parse_trailer, CONTAINER_HEADER_LEN, END_TAG,
    TRAILER_LEN,
};
use crate::error::{Error, Result};
use crate::manifest::{Entry, Manifest};
use crate::reader::decode_frames;
use crate::safetensors::{self, Header};
use crate::writer::hex;

/// Something that can be read at any offset: a file, a byte buffer.
pub trait ReadAt: Sync {
    /// Total size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`, or fails.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The whole source, where it is already in memory: frames are then decoded where they
    /// lie instead of being copied out first.
    fn as_bytes(&self) -> Option<&[u8]> {
        None
    }
}

impl ReadAt for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl ReadAt for &[u8] {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn as_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// An opened container: its manifest and verbatim header, read and checked up front.
pub struct FzArchive<S: ReadAt> {
    src: S,
    manifest: Manifest,
    prefix: Vec<u8>,
}

fn read_at<S: ReadAt + ?Sized>(src: &S, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Error::Truncated(what.into()))?];
    src.read_exact_at(&mut buf, offset)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                Error::Truncated(format!("the container ends inside {what}"))
            }
            _ => Error::Io(e),
        })?;
    Ok(buf)
}

impl<S: ReadAt> FzArchive<S> {
    /// Opens a container: reads its header, footer and manifest and checks them against
    /// each other and the container's size, before anything is allocated by their numbers.
    pub fn open(src: S) -> Result<Self> {
        let size = src.size()?;
        if size < CONTAINER_HEADER_LEN + 1 + TRAILER_LEN {
            let head = read_at(&src, 0, size.min(8), "the container header")?;
            if head.len() < 8 || head[..] != crate::container::MAGIC[..] {
                return Err(Error::NotFloatzip);
            }
            return Err(Error::Truncated(
                "the container is shorter than its fixed parts".into(),
            ));
        }
        let head = read_at(&src, 0, CONTAINER_HEADER_LEN, "the container header")?;
        let mut h = [0u8; CONTAINER_HEADER_LEN as usize];
        h.copy_from_slice(&head);
        let prefix_len = parse_container_header(&h)?;
        let trailer = read_at(&src, size - TRAILER_LEN, TRAILER_LEN, "the footer")?;
        let t = parse_trailer(&trailer, size)?;
        if CONTAINER_HEADER_LEN + prefix_len >= t.manifest_offset {
            return Err(Error::InvalidManifest(
                "the header runs into the manifest".into(),
            ));
        }
        let end_tag = read_at(&src, t.manifest_offset - 1, 1, "the end tag")?;
        if end_tag[0] != END_TAG {
            return Err(Error::InvalidManifest(
                "no end tag before the manifest".into(),
            ));
        }
        let json = read_at(&src, t.manifest_offset, t.manifest_len, "the manifest")?;
        let manifest = parse_manifest(&json, &t)?;
        if manifest.prefix_len != prefix_len
            || manifest.frames_offset != CONTAINER_HEADER_LEN + prefix_len
        {
            return Err(Error::InvalidManifest(
                "header and manifest disagree on the prefix".into(),
            ));
        }
        manifest.validate(t.manifest_offset - 1)?;
        let prefix = read_at(
            &src,
            CONTAINER_HEADER_LEN,
            prefix_len,
            "the safetensors header",
        )?;
        Ok(FzArchive {
            src,
            manifest,
            prefix,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The original file's leading bytes kept verbatim (the safetensors header, if any).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The parsed safetensors header, or `None` if the original was not safetensors.
    pub fn safetensors_header(&self) -> Result<Option<Header>> {
        if self.prefix.len() < 8 {
            return Ok(None);
        }
        safetensors::parse_header(&self.prefix[8..]).map(Some)
    }

    /// Reads the raw (compressed) frames of entry `idx`, numbers `first..last`.
    /// Borrowed when the container is in memory, read into a buffer otherwise.
    pub fn read_frames(&self, idx: usize, first: usize, last: usize) -> Result<Cow<'_, [u8]>> {
        let e = &self.manifest.entries[idx];
        let (begin, _) = e.frame_compressed_range(first);
        let (_, end) = e.frame_compressed_range(last - 1);
        let what = || format!("the frames of {}", e.label());
        if let Some(all) = self.src.as_bytes() {
            let range = usize::try_from(begin).ok().zip(usize::try_from(end).ok());
            return range
                .and_then(|(b, e)| all.get(b..e))
                .map(Cow::Borrowed)
                .ok_or_else(|| Error::Truncated(format!("the container ends inside {}", what())));
        }
        read_at(&self.src, begin, end - begin, &what()).map(Cow::Owned)
    }

    /// Decodes frames `first..last` of entry `idx`, appending to `out`.
    fn decode_entry_frames(
        &self,
        idx: usize,
        first: usize,
        last: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if first >= last {
            return Ok(());
        }
        let raw = self.read_frames(idx, first, last)?;
        decode_entry_frames(&self.manifest.entries[idx], first, &raw, out)
    }

    /// Appends the stored bytes of entry `idx` to `out` (for a delta entry, the XOR with
    /// its base tensor), checked by the frames' checksums only.
    pub(crate) fn decode_entry_stored(&self, idx: usize, out: &mut Vec<u8>) -> Result<()> {
        let e = &self.manifest.entries[idx];
        if e.frames.is_empty() {
            return Ok(());
        }
        let raw = self.read_frames(idx, 0, e.frames.len())?;
        decode_entry_frames_raw(e, 0, &raw, out)
    }

    /// Appends the original bytes of entry `idx` to `out`, checked by the frames'
    /// checksums only (not the entry's BLAKE3 digest): the fastest full decode.
    pub fn decode_entry_into(&self, idx: usize, out: &mut Vec<u8>) -> Result<()> {
        let frames = self.manifest.entries[idx].frames.len();
        self.decode_entry_frames(idx, 0, frames, out)
    }

    /// The original bytes of tensor `name`, checked against its BLAKE3 digest.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>> {
        let idx = self
            .manifest
            .find_tensor(name)
            .ok_or_else(|| Error::UnknownTensor(name.into()))?;
        self.read_entry(idx)
    }

    /// The original bytes of entry `idx`, checked against its BLAKE3 digest.
    pub fn read_entry(&self, idx: usize) -> Result<Vec<u8>> {
        let e = &self.manifest.entries[idx];
        let mut out = Vec::with_capacity(e.original_len() as usize);
        self.decode_entry_frames(idx, 0, e.frames.len(), &mut out)?;
        check_entry_digest(e, &out)?;
        Ok(out)
    }

    /// The original bytes `start..end`, decoding only the frames that overlap them.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        let size = self.manifest.original_size;
        if start > end || end > size {
            return Err(Error::RangeOutOfBounds { start, end, size });
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let p = self.manifest.prefix_len;
        if start < p {
            out.extend_from_slice(&self.prefix[start as usize..end.min(p) as usize]);
        }
        for (idx, e) in self.manifest.entries.iter().enumerate() {
            let (b, en) = (e.original[0], e.original[1]);
            if en <= start || b >= end || e.frames.is_empty() {
                continue;
            }
            let first = ((start.max(b) - b) / e.chunk_bytes) as usize;
            let last = ((end.min(en) - b).div_ceil(e.chunk_bytes)) as usize;
            let mut buf = Vec::new();
            self.decode_entry_frames(idx, first, last, &mut buf)?;
            let buf_start = e.frame_original_range(first).0;
            let from = (start.max(b) - buf_start) as usize;
            let to = (end.min(en) - buf_start) as usize;
            out.extend_from_slice(&buf[from..to]);
        }
        Ok(out)
    }

    /// Writes the whole original to `w`, entry by entry, verifying every entry's digest
    /// and the file's xxh3. Memory: one entry at a time.
    pub fn write_original<W: Write>(&self, mut w: W) -> Result<W> {
        let mut file_hash = twox_hash::XxHash3_128::new();
        file_hash.write(&self.prefix);
        w.write_all(&self.prefix)?;
        for idx in 0..self.manifest.entries.len() {
            let bytes = self.read_entry(idx)?;
            file_hash.write(&bytes);
            w.write_all(&bytes)?;
        }
        let actual = hex(&file_hash.finish_128().to_be_bytes());
        if actual != self.manifest.xxh3 {
            return Err(Error::DigestMismatch {
                what: "the whole file (xxh3)".into(),
                expected: self.manifest.xxh3.clone(),
                actual,
            });
        }
        Ok(w)
    }
}

/// Decodes consecutive frames of `entry`, starting at frame `first`, from their compressed
/// bytes `raw` (exactly frames `first..first + k` as stored), appending to `out`.
///
/// This is what a server or client that fetched a compressed range itself calls; the
/// frame sizes come from the (validated) manifest, so `raw` must match them exactly.
///
/// A delta entry ([`Entry::delta`]) is an [`Error::BaseRequired`]: its frames hold an XOR
/// with a base tensor; [`crate::delta`] decodes those.
pub fn decode_entry_frames(
    entry: &Entry,
    first: usize,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    if entry.delta {
        return Err(Error::BaseRequired(entry.label()));
    }
    decode_entry_frames_raw(entry, first, raw, out)
}

/// [`decode_entry_frames`] without the delta check: the frames' bytes as stored.
pub(crate) fn decode_entry_frames_raw(
    entry: &Entry,
    first: usize,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    for &len in entry.frames.get(first..).unwrap_or(&[]) {
        if at == raw.len() {
            break;
        }
        let frame = usize::try_from(len)
            .ok()
            .and_then(|len| raw.get(at..at.checked_add(len)?))
            .ok_or_else(|| {
                Error::Truncated(format!("the frames of {} are cut short", entry.label()))
            })?;
        frames.push(frame);
        at += frame.len();
    }
    if at != raw.len() {
        return Err(Error::InvalidArgument(format!(
            "bytes given for {} do not end on a frame",
            entry.label()
        )));
    }
    let label = |i: usize| (entry.label(), first + i);
    decode_frames(&frames, &label, out)
}

/// Checks decoded entry bytes against the entry's recorded BLAKE3 digest.
pub fn check_entry_digest(e: &Entry, bytes: &[u8]) -> Result<()> {
    let actual = blake3::hash(bytes).to_hex().to_string();
    if actual != e.blake3 {
        return Err(Error::DigestMismatch {
            what: e.label(),
            expected: e.blake3.clone(),
            actual,
        });
    }
    Ok(())
}
