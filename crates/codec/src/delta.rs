//! Delta coding: a checkpoint coded against an earlier one (its *base*).
//!
//! A tensor whose name, dtype and shape match a tensor of the base is XORed with it, bit
//! pattern against bit pattern, and the XOR goes through the usual plane split and
//! per-plane coder choice ([`crate::frame`]). Between nearby training steps most BF16
//! elements do not change, so XOR planes are mostly zeros, which the constant and rANS
//! coders take far below one bit per symbol.
//!
//! The choice is **per tensor**: every tensor is coded both standalone and (if the base
//! has a counterpart) as a delta, and the smaller is kept. Tensors without a counterpart
//! (new, renamed, reshaped, retyped) are standalone.
//!
//! The container is an ordinary `.fz` container whose manifest records the base file's
//! SHA-256 ([`crate::manifest::BaseRef`]) and, per delta entry, `delta: true` and the base
//! tensor's BLAKE3 (`base_blake3`). Entry digests are always those of the *original*
//! tensor. Decoding needs the original base file: with none, readers stop with
//! [`Error::BaseRequired`]; with a different one, [`Error::BaseMismatch`] — never wrong bytes.
//! Encoding and decoding hold both files in memory.

use sha2::{Digest, Sha256};

use crate::archive::{check_entry_digest, FzArchive, ReadAt};
use crate::container::{container_header, manifest_and_trailer, CONTAINER_HEADER_LEN, END_TAG};
use crate::error::{Error, Result};
use crate::manifest::{BaseRef, Manifest};
use crate::safetensors::{self, Header, TensorInfo};
use crate::writer::{compress_bytes, hex, EncodeOptions};

/// A base file, parsed once: its bytes, safetensors header and SHA-256.
pub struct Base<'a> {
    bytes: &'a [u8],
    header: Header,
    sha256: String,
}

fn parse_safetensors(bytes: &[u8], what: &str) -> Result<Header> {
    let json_len = safetensors::sniff(bytes)
        .ok_or_else(|| Error::InvalidArgument(format!("{what} is not a safetensors file")))?;
    let end = usize::try_from(json_len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| Error::Truncated(format!("{what}: header past the end of the file")))?;
    let header = safetensors::parse_header(&bytes[8..end])?;
    if header.prefix_len + header.data_len() > bytes.len() as u64 {
        return Err(Error::Truncated(format!(
            "{what}: tensors past the end of the file"
        )));
    }
    Ok(header)
}

impl<'a> Base<'a> {
    /// Parses `bytes`, the original base safetensors file.
    pub fn new(bytes: &'a [u8]) -> Result<Self> {
        let header = parse_safetensors(bytes, "the base")?;
        Ok(Base {
            bytes,
            header,
            sha256: hex(&Sha256::digest(bytes)),
        })
    }

    /// SHA-256 of the base file, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The base tensor `name` with its bytes.
    pub fn tensor(&self, name: &str) -> Option<(&TensorInfo, &'a [u8])> {
        let t = self.header.tensors.iter().find(|t| t.name == name)?;
        let p = self.header.prefix_len as usize;
        let bytes = self.bytes.get(p + t.begin as usize..p + t.end as usize)?;
        Some((t, bytes))
    }

    /// The base tensor a tensor of the new file can be coded against: same name, dtype
    /// and shape.
    fn counterpart(&self, t: &TensorInfo) -> Option<&'a [u8]> {
        let (b, bytes) = self.tensor(&t.name)?;
        (b.dtype_name == t.dtype_name && b.shape == t.shape && b.end - b.begin == t.end - t.begin)
            .then_some(bytes)
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Compresses the safetensors file `new` against the base file `base`: per tensor, the
/// smaller of its XOR with the base tensor and its standalone coding.
pub fn compress_delta(new: &[u8], base: &[u8], opts: EncodeOptions) -> Result<(Vec<u8>, Manifest)> {
    let base = Base::new(base)?;
    let header = parse_safetensors(new, "the new file")?;
    let p = header.prefix_len as usize;
    let mut xored = new.to_vec();
    let mut base_digest = std::collections::HashMap::new();
    for t in &header.tensors {
        if let Some(b) = base.counterpart(t) {
            xor_into(&mut xored[p + t.begin as usize..p + t.end as usize], b);
            base_digest.insert(t.name.clone(), blake3::hash(b).to_hex().to_string());
        }
    }
    let (plain_fz, plain) = compress_bytes(new, opts)?;
    let (xor_fz, xor) = compress_bytes(&xored, opts)?;
    if plain.entries.len() != xor.entries.len() {
        // Both codings cut the same header into the same segments.
        return Err(Error::InvalidArgument(
            "delta and standalone codings disagree on the tensors".into(),
        ));
    }
    let mut out = Vec::with_capacity(plain_fz.len());
    out.extend_from_slice(&container_header(plain.prefix_len));
    out.extend_from_slice(&new[..p]);
    let mut entries = Vec::with_capacity(plain.entries.len());
    for (pe, xe) in plain.entries.iter().zip(&xor.entries) {
        let digest = pe.name.as_ref().and_then(|n| base_digest.get(n));
        let use_delta = digest.is_some() && xe.compressed_len() < pe.compressed_len();
        let (src, e) = if use_delta {
            (&xor_fz, xe)
        } else {
            (&plain_fz, pe)
        };
        let begin = out.len() as u64;
        out.extend_from_slice(&src[e.compressed[0] as usize..e.compressed[1] as usize]);
        let mut e = e.clone();
        e.compressed = [begin, out.len() as u64];
        e.blake3 = pe.blake3.clone();
        if digest.is_some() {
            e.delta_vs_standalone = Some([xe.compressed_len(), pe.compressed_len()]);
        }
        if use_delta {
            e.delta = true;
            e.base_blake3 = digest.cloned();
        }
        entries.push(e);
    }
    let frames_end = out.len() as u64;
    out.push(END_TAG);
    let manifest = Manifest {
        entries,
        base: Some(BaseRef {
            sha256: base.sha256.clone(),
            size: base.bytes.len() as u64,
        }),
        frames_offset: CONTAINER_HEADER_LEN + plain.prefix_len,
        ..plain
    };
    manifest.validate(frames_end)?;
    let tail = manifest_and_trailer(&manifest, out.len() as u64);
    out.extend_from_slice(&tail);
    Ok((out, manifest))
}

/// Checks that `base` is the base `archive` was coded against.
pub fn check_base<S: ReadAt>(archive: &FzArchive<S>, base: &Base<'_>) -> Result<()> {
    if let Some(b) = &archive.manifest().base {
        if b.sha256 != base.sha256 {
            return Err(Error::BaseMismatch {
                what: "the base file (SHA-256)".into(),
                expected: b.sha256.clone(),
                actual: base.sha256.clone(),
            });
        }
    }
    Ok(())
}

/// The original bytes of entry `idx` of a (possibly delta) container, checked against its
/// digest. Call [`check_base`] once first; this checks the base tensor's digest too.
pub fn read_entry_with_base<S: ReadAt>(
    archive: &FzArchive<S>,
    idx: usize,
    base: &Base<'_>,
) -> Result<Vec<u8>> {
    let e = archive
        .manifest()
        .entries
        .get(idx)
        .ok_or_else(|| Error::InvalidArgument(format!("no entry {idx}")))?;
    let mut out = Vec::with_capacity(e.original_len() as usize);
    archive.decode_entry_stored(idx, &mut out)?;
    if e.delta {
        undo_delta(e, &mut out, base)?;
    }
    check_entry_digest(e, &out)?;
    Ok(out)
}

/// Decompresses a container made by [`compress_delta`] (or an ordinary one) given the
/// original base file; checks the base, every entry's digest and the file's SHA-256.
pub fn decompress_delta(fz: &[u8], base: &[u8]) -> Result<Vec<u8>> {
    let archive = FzArchive::open(fz)?;
    let base = Base::new(base)?;
    check_base(&archive, &base)?;
    let m = archive.manifest();
    let size = usize::try_from(m.original_size)
        .map_err(|_| Error::InvalidManifest("original size overflows".into()))?;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(archive.prefix());
    for idx in 0..m.entries.len() {
        out.extend_from_slice(&read_entry_with_base(&archive, idx, &base)?);
    }
    let actual = hex(&Sha256::digest(&out));
    if actual != m.sha256 {
        return Err(Error::DigestMismatch {
            what: "the whole file (SHA-256)".into(),
            expected: m.sha256.clone(),
            actual,
        });
    }
    Ok(out)
}

/// Original tensors of a base file, by name: what delta coding and decoding need of it.
/// In memory ([`Base`]) or decoded from a container on demand ([`ArchiveBase`]).
pub trait BaseTensors: Sync {
    /// The base file's identity.
    fn base_ref(&self) -> BaseRef;
    /// The bytes of base tensor `name` if it has this dtype (as the header names it) and
    /// shape; `None` if the base has no such tensor.
    fn tensor_like(&self, name: &str, dtype: &str, shape: &[u64]) -> Result<Option<Vec<u8>>>;
}

impl BaseTensors for Base<'_> {
    fn base_ref(&self) -> BaseRef {
        BaseRef {
            sha256: self.sha256.clone(),
            size: self.bytes.len() as u64,
        }
    }

    fn tensor_like(&self, name: &str, dtype: &str, shape: &[u64]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tensor(name)
            .filter(|(t, _)| t.dtype_name == dtype && t.shape == shape)
            .map(|(_, b)| b.to_vec()))
    }
}

/// A base stored as a container: tensors are decoded (and checked) when asked for. If the
/// container is itself a delta, `parent` is its base, and so on down the chain.
pub struct ArchiveBase<'a, S: ReadAt> {
    archive: &'a FzArchive<S>,
    parent: Option<&'a dyn BaseTensors>,
}

impl<'a, S: ReadAt> ArchiveBase<'a, S> {
    /// A base read from `archive`; `parent` must be given if it is a delta container.
    pub fn new(archive: &'a FzArchive<S>, parent: Option<&'a dyn BaseTensors>) -> Result<Self> {
        let m = archive.manifest();
        match (&m.base, parent) {
            (Some(b), None) => Err(Error::BaseRequired(b.sha256.clone())),
            (Some(b), Some(p)) if p.base_ref().sha256 != b.sha256 => Err(Error::BaseMismatch {
                what: "the base's base (SHA-256)".into(),
                expected: b.sha256.clone(),
                actual: p.base_ref().sha256,
            }),
            _ => Ok(ArchiveBase { archive, parent }),
        }
    }
}

impl<S: ReadAt> BaseTensors for ArchiveBase<'_, S> {
    fn base_ref(&self) -> BaseRef {
        let m = self.archive.manifest();
        BaseRef {
            sha256: m.sha256.clone(),
            size: m.original_size,
        }
    }

    fn tensor_like(&self, name: &str, dtype: &str, shape: &[u64]) -> Result<Option<Vec<u8>>> {
        let m = self.archive.manifest();
        let Some(idx) = m.find_tensor(name) else {
            return Ok(None);
        };
        let e = &m.entries[idx];
        if e.dtype != dtype || e.shape != shape {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(e.original_len() as usize);
        self.archive.decode_entry_stored(idx, &mut out)?;
        if e.delta {
            let parent = self.parent.ok_or_else(|| {
                Error::BaseRequired(
                    m.base
                        .as_ref()
                        .map_or_else(String::new, |b| b.sha256.clone()),
                )
            })?;
            undo_delta(e, &mut out, parent)?;
        }
        check_entry_digest(e, &out)?;
        Ok(Some(out))
    }
}

/// Turns the stored bytes of delta entry `e` back into the original: XOR with the base
/// tensor of the same name, dtype and shape, after checking it is the one the delta was
/// coded against (its BLAKE3).
fn undo_delta(e: &crate::manifest::Entry, stored: &mut [u8], base: &dyn BaseTensors) -> Result<()> {
    let name = e.name.as_deref().unwrap_or_default();
    let mismatch = |actual: String| Error::BaseMismatch {
        what: e.label(),
        expected: e.base_blake3.clone().unwrap_or_default(),
        actual,
    };
    let b = base
        .tensor_like(name, &e.dtype, &e.shape)?
        .ok_or_else(|| mismatch("no such tensor in the base".into()))?;
    let actual = blake3::hash(&b).to_hex().to_string();
    if Some(&actual) != e.base_blake3.as_ref() || b.len() != stored.len() {
        return Err(mismatch(actual));
    }
    xor_into(stored, &b);
    Ok(())
}

/// Re-codes the standalone container `new` against `base`, one tensor at a time: each
/// tensor with a counterpart (same name, dtype, shape) is decoded, XORed with the base
/// tensor and coded again; the smaller of that and its standalone frames (copied as they
/// are) is kept. Writes the delta container to `out`. Memory: a few times the largest
/// tensor, never the whole file.
pub fn recode_as_delta<S: ReadAt, W: std::io::Write>(
    new: &FzArchive<S>,
    base: &dyn BaseTensors,
    opts: &crate::writer::EncodeOptions,
    mut out: W,
) -> Result<(W, Manifest)> {
    let m = new.manifest();
    if m.base.is_some() {
        return Err(Error::InvalidArgument(
            "the container to re-code is already a delta".into(),
        ));
    }
    let mut written = 0u64;
    let put = |out: &mut W, b: &[u8], written: &mut u64| -> Result<()> {
        out.write_all(b)?;
        *written += b.len() as u64;
        Ok(())
    };
    put(&mut out, &container_header(m.prefix_len), &mut written)?;
    put(&mut out, new.prefix(), &mut written)?;
    let mut entries = Vec::with_capacity(m.entries.len());
    for (idx, e) in m.entries.iter().enumerate() {
        let stored = new.read_frames(idx, 0, e.frames.len())?;
        let base_bytes = match &e.name {
            Some(name) if !e.frames.is_empty() => base.tensor_like(name, &e.dtype, &e.shape)?,
            _ => None,
        };
        let mut entry = e.clone();
        let mut frames = stored;
        if let Some(b) = base_bytes.filter(|b| b.len() as u64 == e.original_len()) {
            let mut xored = Vec::with_capacity(b.len());
            new.decode_entry_stored(idx, &mut xored)?;
            check_entry_digest(e, &xored)?;
            xor_into(&mut xored, &b);
            let coded = encode_entry(&xored, e, &opts.frame);
            entry.delta_vs_standalone = Some([coded.bytes.len() as u64, frames.len() as u64]);
            if coded.bytes.len() < frames.len() {
                entry.frames = coded.frames;
                entry.floor_bytes = coded.floor_bytes;
                entry.layouts = coded.layouts;
                entry.coders = coded.coders;
                entry.delta = true;
                entry.base_blake3 = Some(blake3::hash(&b).to_hex().to_string());
                frames = coded.bytes.into();
            }
        }
        entry.compressed = [written, written + frames.len() as u64];
        put(&mut out, &frames, &mut written)?;
        entries.push(entry);
    }
    let frames_end = written;
    put(&mut out, &[END_TAG], &mut written)?;
    let manifest = Manifest {
        entries,
        base: Some(base.base_ref()),
        ..m.clone()
    };
    manifest.validate(frames_end)?;
    let tail = manifest_and_trailer(&manifest, written);
    put(&mut out, &tail, &mut written)?;
    Ok((out, manifest))
}

/// One entry's bytes coded as frames of the entry's chunk size.
struct CodedEntry {
    bytes: Vec<u8>,
    frames: Vec<u64>,
    floor_bytes: f64,
    layouts: std::collections::BTreeMap<String, u64>,
    coders: std::collections::BTreeMap<String, u64>,
}

fn encode_entry(
    bytes: &[u8],
    e: &crate::manifest::Entry,
    opts: &crate::frame::FrameOptions,
) -> CodedEntry {
    let mut c = CodedEntry {
        bytes: Vec::new(),
        frames: Vec::new(),
        floor_bytes: 0.0,
        layouts: Default::default(),
        coders: Default::default(),
    };
    for chunk in bytes.chunks(e.chunk_bytes.max(1) as usize) {
        let before = c.bytes.len();
        let stats = crate::frame::encode_frame(chunk, e.coded_as, opts, &mut c.bytes);
        c.frames.push((c.bytes.len() - before) as u64);
        c.floor_bytes += stats.floor_bytes;
        *c.layouts.entry(stats.layout.name().into()).or_default() += 1;
        for k in &stats.coders {
            *c.coders.entry(k.name().into()).or_default() += 1;
        }
    }
    c
}

/// Decodes frames `first..` of a delta entry from `raw` (as [`decode_entry_frames`] does
/// for standalone entries) and XORs them with `base`: the base tensor's bytes over the
/// same range of the tensor. Appends the original bytes to `out`.
///
/// [`decode_entry_frames`]: crate::archive::decode_entry_frames
pub fn decode_delta_frames(
    entry: &crate::manifest::Entry,
    first: usize,
    raw: &[u8],
    base: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    crate::archive::decode_entry_frames_raw(entry, first, raw, out)?;
    let decoded = out.len() - start;
    if decoded != base.len() {
        out.truncate(start);
        return Err(Error::BaseMismatch {
            what: entry.label(),
            expected: format!("{decoded} base bytes"),
            actual: format!("{} bytes given", base.len()),
        });
    }
    xor_into(&mut out[start..], base);
    Ok(())
}

/// Calls `f` with the base made of a chain of stored containers, `root_first[0]` being
/// a standalone container and each next one a delta against the one before it.
pub fn with_base_chain<S: ReadAt, R>(
    root_first: &[FzArchive<S>],
    f: impl FnOnce(&dyn BaseTensors) -> Result<R>,
) -> Result<R> {
    fn level<S: ReadAt, R, F: FnOnce(&dyn BaseTensors) -> Result<R>>(
        rest: &[FzArchive<S>],
        parent: Option<&dyn BaseTensors>,
        f: F,
    ) -> Result<R> {
        match (rest.split_first(), parent) {
            (Some((a, rest)), parent) => {
                let base = ArchiveBase::new(a, parent)?;
                level(rest, Some(&base), f)
            }
            (None, Some(p)) => f(p),
            (None, None) => Err(Error::InvalidArgument("an empty base chain".into())),
        }
    }
    level(root_first, None, f)
}

/// Largest safetensors header of a base file read by [`FileBase`].
const MAX_BASE_HEADER: u64 = 256 << 20;

/// A base safetensors file on disk: tensors are read when asked for, so memory stays at
/// the largest tensor whatever the file's size.
pub struct FileBase {
    file: std::fs::File,
    header: Header,
    sha256: String,
    size: u64,
}

impl FileBase {
    /// Opens and checks `path` (hashing it once for its SHA-256).
    pub fn open(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        let mut len = [0u8; 8];
        ReadAt::read_exact_at(&file, &mut len, 0)
            .map_err(|_| Error::InvalidArgument("the base is not a safetensors file".into()))?;
        let json_len = u64::from_le_bytes(len);
        if json_len > MAX_BASE_HEADER || json_len + 8 > size {
            return Err(Error::Truncated(
                "the base's safetensors header runs past the end of the file".into(),
            ));
        }
        let mut json = vec![0u8; json_len as usize];
        ReadAt::read_exact_at(&file, &mut json, 8)?;
        let header = safetensors::parse_header(&json)?;
        if header.prefix_len + header.data_len() > size {
            return Err(Error::Truncated(
                "the base: tensors past the end of the file".into(),
            ));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(FileBase {
            file,
            header,
            sha256: hex(&hasher.finalize()),
            size,
        })
    }
}

impl BaseTensors for FileBase {
    fn base_ref(&self) -> BaseRef {
        BaseRef {
            sha256: self.sha256.clone(),
            size: self.size,
        }
    }

    fn tensor_like(&self, name: &str, dtype: &str, shape: &[u64]) -> Result<Option<Vec<u8>>> {
        let Some(t) = self
            .header
            .tensors
            .iter()
            .find(|t| t.name == name && t.dtype_name == dtype && t.shape == shape)
        else {
            return Ok(None);
        };
        // Within the file: checked when the header was parsed.
        let mut out = vec![0u8; (t.end - t.begin) as usize];
        ReadAt::read_exact_at(&self.file, &mut out, self.header.prefix_len + t.begin)?;
        Ok(Some(out))
    }
}

/// Decodes a (possibly delta) container to `out` one entry at a time, given its base:
/// checks the base's identity, every entry's BLAKE3 and the whole file's SHA-256 (an
/// error after some bytes were written means the output must be discarded).
pub fn decompress_delta_to<S: ReadAt, W: std::io::Write>(
    archive: &FzArchive<S>,
    base: &dyn BaseTensors,
    mut out: W,
) -> Result<W> {
    let m = archive.manifest();
    if let Some(b) = &m.base {
        let actual = base.base_ref().sha256;
        if b.sha256 != actual {
            return Err(Error::BaseMismatch {
                what: "the base file (SHA-256)".into(),
                expected: b.sha256.clone(),
                actual,
            });
        }
    }
    let mut hasher = Sha256::new();
    out.write_all(archive.prefix())?;
    hasher.update(archive.prefix());
    let mut bytes = Vec::new();
    for (idx, e) in m.entries.iter().enumerate() {
        bytes.clear();
        archive.decode_entry_stored(idx, &mut bytes)?;
        if e.delta {
            undo_delta(e, &mut bytes, base)?;
        }
        check_entry_digest(e, &bytes)?;
        out.write_all(&bytes)?;
        hasher.update(&bytes);
    }
    let actual = hex(&hasher.finalize());
    if actual != m.sha256 {
        return Err(Error::DigestMismatch {
            what: "the whole file (SHA-256)".into(),
            expected: m.sha256.clone(),
            actual,
        });
    }
    Ok(out)
}
