//! The compressor's digests (the file's SHA-256 and xxh3-128, BLAKE3 per entry), computed on
//! a thread of their own while the encoder goes on with the next batch.
//!
//! SHA-256 alone costs about as much time per byte as encoding on one core. Hashing batch
//! `n` while batch `n + 1` is encoded, instead of waiting for both at every batch, keeps a
//! slow moment of either side from stalling the other. At most [`IN_FLIGHT`] batches wait,
//! so memory stays bounded; their buffers come back to the writer for reuse.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};
use twox_hash::XxHash3_128;

use crate::error::{Error, Result};
use crate::writer::hex;

/// Batches handed over but not yet hashed, at most.
const IN_FLIGHT: usize = 2;

/// Bytes to hash: `bytes[..file_len]` is the next stretch of the file, and each
/// `(entry, offset, len)` names the part of it that belongs to an entry.
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    pub file_len: usize,
    pub entries: Vec<(usize, usize, usize)>,
}

/// The finished digests: hex strings as the manifest records them.
pub(crate) struct Digests {
    pub sha256: String,
    pub xxh3: String,
    /// BLAKE3 of each entry, by entry index (entries never fed hash the empty input).
    pub blake3: Vec<String>,
}

/// Feeds batches to the hashing thread and collects the result.
pub(crate) struct DigestWorker {
    to_worker: Option<SyncSender<Batch>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Digests>>,
}

impl DigestWorker {
    /// Starts the hashing thread.
    pub fn start() -> Result<Self> {
        let (to_worker, batches) = sync_channel::<Batch>(IN_FLIGHT);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        let thread = std::thread::Builder::new()
            .name("floatzip-digests".into())
            .spawn(move || hash_batches(batches, give_back))
            .map_err(Error::Io)?;
        Ok(DigestWorker {
            to_worker: Some(to_worker),
            recycled,
            thread: Some(thread),
        })
    }

    /// Queues a batch (blocks while [`IN_FLIGHT`] are waiting).
    pub fn send(&mut self, batch: Batch) {
        if let Some(tx) = &self.to_worker {
            if tx.send(batch).is_err() {
                // The thread is gone, which only a panic in a hash crate does; `finish`
                // re-raises it.
                self.to_worker = None;
            }
        }
    }

    /// A hashed batch's buffer to reuse, if one came back.
    pub fn spare_buffer(&self) -> Option<Vec<u8>> {
        self.recycled.try_recv().ok()
    }

    /// Waits for every queued batch to be hashed and returns the digests.
    pub fn finish(mut self) -> Digests {
        self.to_worker = None;
        let thread = self.thread.take();
        match thread.map(JoinHandle::join) {
            Some(Ok(d)) => d,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("finish takes the worker by value, once"),
        }
    }
}

impl Drop for DigestWorker {
    /// A writer dropped without `finish` (its input was bad) still ends its thread here:
    /// closing the queue stops it after at most [`IN_FLIGHT`] batches, and nothing it holds
    /// outlives the writer.
    fn drop(&mut self) {
        self.to_worker = None;
        if let Some(thread) = self.thread.take() {
            // The digests of an abandoned container are not wanted, nor a panic's payload:
            // `finish` is where a hashing panic surfaces.
            let _ = thread.join();
        }
    }
}

fn hash_batches(batches: Receiver<Batch>, give_back: SyncSender<Vec<u8>>) -> Digests {
    let mut sha256 = Sha256::new();
    let mut xxh3 = XxHash3_128::new();
    let mut entries: Vec<blake3::Hasher> = Vec::new();
    for b in batches {
        sha256.update(&b.bytes[..b.file_len]);
        xxh3.write(&b.bytes[..b.file_len]);
        for &(e, off, len) in &b.entries {
            if entries.len() <= e {
                entries.resize_with(e + 1, blake3::Hasher::new);
            }
            entries[e].update(&b.bytes[off..off + len]);
        }
        // The writer may have finished, or have buffers enough: then drop this one.
        let _ = give_back.try_send(b.bytes);
    }
    Digests {
        sha256: hex(&sha256.finalize()),
        xxh3: hex(&xxh3.finish_128().to_be_bytes()),
        blake3: entries
            .iter()
            .map(|h| h.finalize().to_hex().to_string())
            .collect(),
    }
}
