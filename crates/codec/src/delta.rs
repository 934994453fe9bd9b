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
        let name = e.name.as_deref().unwrap_or_default();
        let (_, b) = base.tensor(name).ok_or_else(|| Error::BaseMismatch {
            what: e.label(),
            expected: e.base_blake3.clone().unwrap_or_default(),
            actual: "no such tensor in the base".into(),
        })?;
        let actual = blake3::hash(b).to_hex().to_string();
        if Some(&actual) != e.base_blake3.as_ref() || b.len() != out.len() {
            return Err(Error::BaseMismatch {
                what: e.label(),
                expected: e.base_blake3.clone().unwrap_or_default(),
                actual,
            });
        }
        xor_into(&mut out, b);
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
