//! Resuming an interrupted download: a sidecar log beside the `.part` file lists the
//! entries already verified and written.
//!
//! The log is append-only text: a first line naming the original (SHA-256 and size), then
//! one entry index per line, appended after that entry's digest matched. A torn last line
//! is ignored. On resume each listed entry is hashed again from the `.part` file, so a
//! write lost in a crash is fetched again rather than trusted.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::RemoteManifest;

/// The sidecar log of a download in progress.
pub(crate) struct ProgressLog {
    file: File,
    path: PathBuf,
}

fn first_line(rm: &RemoteManifest) -> String {
    serde_json::json!({
        "floatzip_partial": 1,
        "sha256": rm.sha256.to_ascii_lowercase(),
        "original_size": rm.original_size,
    })
    .to_string()
}

impl ProgressLog {
    /// Starts a new log for `rm`, replacing any old one.
    pub(crate) fn create(path: &Path, rm: &RemoteManifest) -> Result<ProgressLog> {
        let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
        writeln!(file, "{}", first_line(rm)).map_err(|e| Error::io(path, e))?;
        Ok(ProgressLog {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Continues an existing log.
    pub(crate) fn append(path: &Path) -> Result<ProgressLog> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(ProgressLog {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Records that entry `idx` is verified and written.
    pub(crate) fn record(&mut self, idx: usize) -> Result<()> {
        writeln!(self.file, "{idx}").map_err(|e| Error::io(&self.path, e))
    }
}

/// The entries of `rm` already verified in `part`, according to the log at `log` and
/// re-hashed from `part`; `None` if there is nothing to resume from (no files, another
/// file's log, a `.part` of the wrong size).
pub(crate) fn load(part: &Path, log: &Path, rm: &RemoteManifest) -> Option<Vec<bool>> {
    let f = File::open(log).ok()?;
    let mut lines = BufReader::new(f).lines();
    if lines.next()?.ok()? != first_line(rm) {
        return None;
    }
    let mut part_file = File::open(part).ok()?;
    if part_file.metadata().ok()?.len() != rm.original_size {
        return None;
    }
    let entries = &rm.manifest.entries;
    let mut verified = vec![false; entries.len()];
    for line in lines {
        let Some(idx) = line.ok().and_then(|l| l.trim().parse::<usize>().ok()) else {
            continue;
        };
        let Some(e) = entries.get(idx) else {
            continue;
        };
        if verified[idx] {
            continue;
        }
        verified[idx] = hash_region(&mut part_file, e.original[0], e.original_len())
            .is_some_and(|h| h.eq_ignore_ascii_case(&e.blake3));
    }
    Some(verified)
}

/// BLAKE3 of `len` bytes of `f` from `offset`, read in bounded pieces.
fn hash_region(f: &mut File, offset: u64, len: u64) -> Option<String> {
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).ok()?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Some(hasher.finalize().to_hex().to_string())
}

/// SHA-256 of a whole file, hex, read in bounded pieces.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
