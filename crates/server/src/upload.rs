//! The upload pipeline: body → bounded channel → encoder on the blocking pool → staged
//! temp file → blob in the store → pointer (published last).
//!
//! The body is never held whole: it flows through a channel of a few pieces into
//! [`FzWriter`], which compresses in bounded memory while the rest still arrives. The
//! safetensors header is checked as soon as it is complete, so a bad file is refused
//! after its first bytes. Any failure before the pointer is written drops the temp file
//! and leaves the store exactly as it was.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use floatzip_codec::delta::{recode_as_delta, with_base_chain};
use floatzip_codec::safetensors::{parse_header, sniff};
use floatzip_codec::{EncodeOptions, FzArchive, FzWriter, Manifest, ReadAt};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::names::ModelFile;
use crate::segments::{self, segment_key, Index, Segment};
use crate::storage::{blob_key, ratio, Pointer, Storage, MAX_BASE_CHAIN};
use crate::AppState;

/// Pieces of body buffered between the network and the encoder.
const CHANNEL_PIECES: usize = 16;
/// After refusing an upload early, how much of the rest of the body is read and thrown
/// away so the client (still sending) gets to read the error instead of a reset.
const DRAIN_BYTES: u64 = 16 << 20;
/// How long that draining may take.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// What a successful upload answers.
#[derive(Debug, Serialize)]
pub struct UploadSummary {
    /// `org/name/file`.
    pub path: String,
    /// Original bytes received.
    pub bytes_in: u64,
    /// Bytes stored (the container).
    pub bytes_stored: u64,
    /// Of those, bytes already in the store (tensors shared with other files, or the
    /// same container uploaded before): the store grew by `bytes_stored - shared_bytes`.
    pub shared_bytes: u64,
    /// `bytes_stored / bytes_in`.
    pub ratio: f64,
    /// Tensors in the file (0 for non-safetensors files).
    pub tensors: usize,
    /// SHA-256 of the original, hex (also the download's ETag).
    pub sha256: String,
    /// SHA-256 of the container, hex.
    pub container_sha256: String,
    /// Immutable URL of the container.
    pub blob_url: String,
    /// Whether an earlier version of the file was replaced.
    pub replaced: bool,
    /// Seconds spent compressing.
    pub encode_seconds: f64,
    /// `org/name/file` of the base this file was stored as a delta against (uploads with
    /// `?base=` where the delta was smaller and the base chain below its cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_base: Option<String>,
}

/// A message to the encoder. The channel closing without [`Msg::End`] means the upload
/// was abandoned: the encoder drops everything.
enum Msg {
    Data(Bytes),
    End,
}

/// The compressed upload, staged in a temp file that is deleted when this is dropped.
struct Staged {
    file: NamedTempFile,
    manifest: Manifest,
    container_sha256: String,
    container_size: u64,
    encode_time: Duration,
}

/// Runs an upload to completion. Runs as a tracked task, so a client that goes away
/// does not leave it half-done, and shutdown waits for it.
pub async fn run(
    state: AppState,
    target: ModelFile,
    declared_sha256: Option<String>,
    content_length: Option<u64>,
    base: Option<ModelFile>,
    body: Body,
) -> Result<UploadSummary, ApiError> {
    let limits = &state.config.limits;
    // A delta upload's base must exist before a byte is read.
    let base = match base {
        None => None,
        Some(b) => match state.storage.read_pointer(&b).await {
            Ok(Some(p)) => Some(Arc::new(p)),
            Ok(None) => {
                drain(body.into_data_stream()).await;
                return Err(ApiError::NotFound(format!("base {}", b.display())));
            }
            Err(e) => {
                drain(body.into_data_stream()).await;
                return Err(e);
            }
        },
    };
    if let Some(len) = content_length {
        if len > limits.max_upload_bytes {
            let err = ApiError::TooLarge(format!(
                "Content-Length {len} exceeds the upload limit of {} bytes",
                limits.max_upload_bytes
            ));
            drain(body.into_data_stream()).await;
            return Err(err);
        }
    }
    // Refused before a byte is read: a file beside a folder of the same name (and the
    // check is repeated when the pointer is published, in case one raced in meanwhile).
    if let Err(e) = check_no_conflict(&state, &target).await {
        drain(body.into_data_stream()).await;
        return Err(e);
    }
    // Bounded concurrency: later uploads wait here, holding only their connection.
    let _slot = state
        .upload_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::ShuttingDown)?;

    let (tx, rx) = mpsc::channel::<Msg>(CHANNEL_PIECES);
    let gate = HeaderGate::new(
        limits.max_header_bytes,
        limits.max_upload_bytes,
        content_length,
    );
    let opts = state.config.codec.encode_options();
    let temp_dir = state.config.temp_dir();
    let encoder = tokio::task::spawn_blocking(move || encode(rx, gate, opts, temp_dir));

    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let mut failure: Option<ApiError> = None;
    let mut encoder_stopped = false;
    while let Some(piece) = stream.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                failure = Some(ApiError::BodyAborted(e.to_string()));
                break;
            }
        };
        received += piece.len() as u64;
        state
            .metrics
            .bytes_in
            .fetch_add(piece.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if received > limits.max_upload_bytes {
            failure = Some(ApiError::TooLarge(format!(
                "the body exceeds the upload limit of {} bytes",
                limits.max_upload_bytes
            )));
            break;
        }
        if tx.send(Msg::Data(piece)).await.is_err() {
            // The encoder stopped early: its result says why.
            encoder_stopped = true;
            break;
        }
    }
    if let Some(l) =
        content_length.filter(|&l| failure.is_none() && !encoder_stopped && l > received)
    {
        // hyper reports a short body as an error already; this only guards the contract.
        failure = Some(ApiError::BodyAborted(format!(
            "received {received} of {l} bytes"
        )));
    }
    let staged = match failure {
        Some(e) => {
            drop(tx); // no End: the encoder discards its work
            let _ = encoder.await;
            drain(stream).await;
            return Err(e);
        }
        None => {
            // A closed channel here means the encoder already failed; its error is below.
            let _ = tx.send(Msg::End).await;
            drop(tx);
            let r = encoder
                .await
                .map_err(|e| ApiError::Internal(format!("encoder task: {e}")))?;
            if r.is_err() {
                drain(stream).await;
            }
            r?
        }
    };
    state.metrics.add_encode(staged.encode_time);

    let sha256 = staged.manifest.sha256.clone();
    if let Some(declared) = declared_sha256 {
        if declared != sha256 {
            return Err(ApiError::DigestMismatch {
                declared,
                actual: sha256,
            });
        }
    }
    let (staged, base) = match base {
        Some(b) if b.chain_len() < MAX_BASE_CHAIN => recode_against(&state, staged, b).await?,
        Some(b) => {
            tracing::info!(base = %b.blob, "base chain at its cap: stored standalone (re-based)");
            (staged, None)
        }
        None => (staged, None),
    };
    publish(&state, target, staged, base).await
}

/// Re-codes a staged standalone container as a delta against `base` (tensor by tensor,
/// on the blocking pool), keeping whichever is smaller; returns the container to store
/// and the base it needs (`None`: stored standalone).
async fn recode_against(
    state: &AppState,
    staged: Staged,
    base: Arc<Pointer>,
) -> Result<(Staged, Option<Box<Pointer>>), ApiError> {
    let handle = tokio::runtime::Handle::current();
    let storage = state.storage.clone();
    let temp_dir = state.config.temp_dir();
    let opts = state.config.codec.encode_options();
    let base2 = base.clone();
    let recoded = tokio::task::spawn_blocking(move || -> Result<(Staged, bool), ApiError> {
        let t = Instant::now();
        let new_file = std::fs::File::open(staged.file.path())
            .map_err(|e| ApiError::Internal(format!("reopening the staged upload: {e}")))?;
        let new = FzArchive::open(new_file).map_err(ApiError::stored)?;
        // The chain from the standalone root up to the base itself.
        let mut chain = Vec::new();
        let mut p: Option<&Pointer> = Some(&base2);
        while let Some(ptr) = p {
            chain.push(
                FzArchive::open(StoreReader::new(&storage, ptr, handle.clone()))
                    .map_err(ApiError::stored)?,
            );
            p = ptr.base.as_deref();
        }
        chain.reverse();
        let out_file = tempfile::Builder::new()
            .prefix(".floatzip-delta-")
            .tempfile_in(&temp_dir)
            .map_err(|e| ApiError::Internal(format!("creating a temp file: {e}")))?;
        let out = out_file
            .reopen()
            .map_err(|e| ApiError::Internal(format!("opening the temp file: {e}")))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, out),
            hasher: Sha256::new(),
            len: 0,
        };
        let (sink, manifest) = with_base_chain(&chain, |b| recode_as_delta(&new, b, &opts, sink))
            .map_err(ApiError::stored)?;
        let HashingWriter { inner, hasher, len } = sink;
        inner
            .into_inner()
            .map_err(|e| ApiError::Internal(format!("writing the temp file: {}", e.error())))?;
        if len >= staged.container_size {
            return Ok((staged, false));
        }
        let delta = Staged {
            file: out_file,
            manifest,
            container_sha256: hex::encode(hasher.finalize()),
            container_size: len,
            encode_time: staged.encode_time + t.elapsed(),
        };
        Ok((delta, true))
    });
    let (staged, is_delta) = recoded
        .await
        .map_err(|e| ApiError::Internal(format!("delta task: {e}")))??;
    Ok((staged, is_delta.then(|| Box::new((*base).clone()))))
}

/// A stored container read through [`ReadAt`] from a blocking thread: each read waits on
/// the store (the codec's random access is synchronous; reads are of whole entries).
struct StoreReader {
    storage: Storage,
    blob: String,
    segments: Vec<crate::segments::Segment>,
    size: u64,
    handle: tokio::runtime::Handle,
}

impl StoreReader {
    fn new(storage: &Storage, p: &Pointer, handle: tokio::runtime::Handle) -> Self {
        StoreReader {
            storage: storage.clone(),
            blob: p.blob.clone(),
            segments: p.segments.clone(),
            size: p.container_size,
            handle,
        }
    }
}

impl ReadAt for StoreReader {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let got = self
            .handle
            .block_on(
                self.storage
                    .get_range(&self.blob, &self.segments, offset..end),
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        buf.copy_from_slice(&got);
        Ok(())
    }
}

/// Fails with [`ApiError::Conflict`] if `target` would be a file beside a folder of the
/// same name (see [`crate::storage::Storage::path_conflict`]).
async fn check_no_conflict(state: &AppState, target: &ModelFile) -> Result<(), ApiError> {
    match state.storage.path_conflict(target).await? {
        None => Ok(()),
        Some(other) => Err(ApiError::Conflict(format!(
            "{} cannot be stored beside {}/{}/{other}: one would be a folder of the other",
            target.display(),
            target.org,
            target.name
        ))),
    }
}

/// Serialises "check for a path conflict, then write the pointer" within this process,
/// so two uploads of `a` and `a/b` cannot both pass the check. (Replicas sharing a store
/// are not coordinated; the check before the body is read narrows that window.)
fn publish_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// Stores a staged container as content-addressed segments, skipping those already in
/// the store, then its segment list; returns the segments and the bytes shared. A
/// container stored before (as segments or as one blob) is not stored again.
async fn store_container(
    state: &AppState,
    staged: &Staged,
) -> Result<(Vec<Segment>, u64), ApiError> {
    let storage = &state.storage;
    if let Some(index) = storage.read_index(&staged.container_sha256).await? {
        return Ok((index.segments, staged.container_size));
    }
    if storage
        .blob_size(&blob_key(&staged.container_sha256))
        .await?
        == Some(staged.container_size)
    {
        return Ok((Vec::new(), staged.container_size));
    }
    let cuts = segments::plan(&staged.manifest, staged.container_size);
    let (path, ranges) = (staged.file.path().to_path_buf(), cuts.clone());
    let digests = tokio::task::spawn_blocking(move || sha256_of_ranges(&path, &ranges))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing segments: {e}")))?
        .map_err(|e| ApiError::Internal(format!("reading the staged upload: {e}")))?;
    let mut segments = Vec::with_capacity(cuts.len());
    let mut shared = 0u64;
    for (range, sha256) in cuts.into_iter().zip(digests) {
        let len = range.end - range.start;
        let key = segment_key(&sha256);
        if storage.blob_size(&key).await? == Some(len) {
            shared += len;
        } else {
            storage
                .put_object_from_file(&key, staged.file.path(), range)
                .await?;
        }
        segments.push(Segment { sha256, len });
    }
    storage
        .write_index(&Index {
            version: 1,
            container_sha256: staged.container_sha256.clone(),
            segments: segments.clone(),
        })
        .await?;
    Ok((segments, shared))
}

/// SHA-256 (hex) of each byte range of a file.
fn sha256_of_ranges(
    path: &std::path::Path,
    ranges: &[std::ops::Range<u64>],
) -> std::io::Result<Vec<String>> {
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    ranges
        .iter()
        .map(|r| {
            let mut h = Sha256::new();
            let mut at = r.start;
            while at < r.end {
                let n = ((r.end - at) as usize).min(buf.len());
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf[..n], at)?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            Ok(hex::encode(h.finalize()))
        })
        .collect()
}

/// Stores the blob (unless an identical one is there), then the pointer; then removes the
/// replaced version's blob if nothing else uses it.
async fn publish(
    state: &AppState,
    target: ModelFile,
    staged: Staged,
    base: Option<Box<Pointer>>,
) -> Result<UploadSummary, ApiError> {
    let key = blob_key(&staged.container_sha256);
    let (segments, shared_bytes) = store_container(state, &staged).await?;
    let previous = state.storage.read_pointer(&target).await.unwrap_or(None);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pointer = Pointer {
        version: 1,
        org: target.org.clone(),
        name: target.name.clone(),
        file: target.file.clone(),
        blob: key.clone(),
        container_sha256: staged.container_sha256.clone(),
        container_size: staged.container_size,
        uploaded_at: now,
        manifest: staged.manifest,
        segments,
        shared_bytes,
        base,
    };
    let checked = {
        let _guard = publish_lock().lock().await;
        let checked = check_no_conflict(state, &target).await;
        if checked.is_ok() {
            state.storage.write_pointer(&pointer).await?;
        }
        checked
    };
    if let Err(e) = checked {
        // The blob just stored may be used by nothing now.
        if let Err(ce) = state.storage.collect_blob(&key).await {
            tracing::warn!(blob = %key, error = %ce, "could not remove an unused blob");
        }
        return Err(e);
    }
    drop(staged.file);
    if let Some(old) = &previous {
        if old.blob != key {
            if let Err(e) = state.storage.collect_blob(&old.blob).await {
                tracing::warn!(blob = %old.blob, error = %e, "could not remove the replaced blob");
            }
        }
    }
    let m = &pointer.manifest;
    let metrics = &state.metrics;
    use std::sync::atomic::Ordering::Relaxed;
    metrics
        .uploaded_original
        .fetch_add(m.original_size, Relaxed);
    metrics
        .uploaded_stored
        .fetch_add(pointer.container_size, Relaxed);
    tracing::info!(
        path = %target.display(),
        original = m.original_size,
        stored = pointer.container_size,
        "published"
    );
    Ok(UploadSummary {
        path: target.display(),
        bytes_in: m.original_size,
        bytes_stored: pointer.container_size,
        shared_bytes: pointer.shared_bytes,
        ratio: ratio(pointer.container_size, m.original_size),
        tensors: m.entries.iter().filter(|e| e.name.is_some()).count(),
        sha256: m.sha256.clone(),
        container_sha256: pointer.container_sha256.clone(),
        blob_url: format!("/v1/blobs/{}.fz", pointer.container_sha256),
        replaced: previous.is_some(),
        encode_seconds: staged.encode_time.as_secs_f64(),
        delta_base: pointer
            .base
            .as_ref()
            .map(|b| format!("{}/{}/{}", b.org, b.name, b.file)),
    })
}

/// Reads and discards a bounded amount of what the client is still sending.
pub(crate) async fn drain<S>(mut stream: S)
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut n = 0u64;
        while let Some(Ok(p)) = stream.next().await {
            n += p.len() as u64;
            if n > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// The encoder, on the blocking pool: checks the header, compresses into a temp file,
/// hashes the container as it is written.
fn encode(
    mut rx: mpsc::Receiver<Msg>,
    mut gate: HeaderGate,
    opts: EncodeOptions,
    temp_dir: PathBuf,
) -> Result<Staged, ApiError> {
    let file = tempfile::Builder::new()
        .prefix(".floatzip-upload-")
        .tempfile_in(&temp_dir)
        .map_err(|e| {
            ApiError::Internal(format!(
                "creating a temp file in {}: {e}",
                temp_dir.display()
            ))
        })?;
    let out = file
        .reopen()
        .map_err(|e| ApiError::Internal(format!("opening the temp file: {e}")))?;
    let sink = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        len: 0,
    };
    let mut w = FzWriter::new(sink, opts)?;
    let mut busy = Duration::ZERO;
    loop {
        match rx.blocking_recv() {
            Some(Msg::Data(piece)) => {
                gate.feed(&piece)?;
                let t = Instant::now();
                w.push(&piece)?;
                busy += t.elapsed();
            }
            Some(Msg::End) => break,
            // Abandoned: dropping `file` deletes it.
            None => return Err(ApiError::BodyAborted("the upload was abandoned".into())),
        }
    }
    gate.finish()?;
    let t = Instant::now();
    let (sink, manifest) = w.finish()?;
    busy += t.elapsed();
    let HashingWriter { inner, hasher, len } = sink;
    inner
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("writing the temp file: {}", e.error())))?;
    Ok(Staged {
        file,
        manifest,
        container_sha256: hex::encode(hasher.finalize()),
        container_size: len,
        encode_time: busy,
    })
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a safetensors header against the server's limits as soon as it has arrived,
/// before the codec buffers it: the cap on its size, and that the data it declares fits
/// the upload limit and the announced `Content-Length`.
pub struct HeaderGate {
    head: Vec<u8>,
    /// Bytes of `head` needed before a decision: 9 to sniff, then the whole prefix.
    need: usize,
    done: bool,
    cap: u64,
    max_upload: u64,
    content_length: Option<u64>,
}

impl HeaderGate {
    /// A gate for one upload.
    pub fn new(cap: u64, max_upload: u64, content_length: Option<u64>) -> Self {
        HeaderGate {
            head: Vec::new(),
            need: 9,
            done: false,
            cap,
            max_upload,
            content_length,
        }
    }

    /// Looks at the next bytes of the upload.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ApiError> {
        while !self.done && !data.is_empty() {
            let take = (self.need - self.head.len()).min(data.len());
            // Grows with what has arrived, never by the declared length.
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() == self.need {
                self.decide()?;
            }
        }
        Ok(())
    }

    fn decide(&mut self) -> Result<(), ApiError> {
        if self.need == 9 {
            match sniff(&self.head) {
                None => self.done = true, // not safetensors: stored with the byte coder
                Some(json_len) if json_len > self.cap => {
                    return Err(ApiError::HeaderTooLarge(format!(
                        "safetensors header of {json_len} bytes exceeds the cap of {} bytes",
                        self.cap
                    )))
                }
                // json_len <= cap, which config checking keeps far below usize::MAX.
                Some(json_len) => self.need = 8 + json_len as usize,
            }
            return Ok(());
        }
        let header = parse_header(&self.head[8..]).map_err(ApiError::from)?;
        let declared_end = header.prefix_len + header.data_len();
        if declared_end > self.max_upload {
            return Err(ApiError::TooLarge(format!(
                "the safetensors header declares {declared_end} bytes; the upload limit is {}",
                self.max_upload
            )));
        }
        if let Some(len) = self.content_length.filter(|&l| declared_end > l) {
            return Err(ApiError::Truncated(format!(
                "the safetensors header declares tensors up to byte {declared_end} but the body is {len} bytes"
            )));
        }
        self.done = true;
        self.head = Vec::new();
        Ok(())
    }

    /// Called at the end of the body: a header that never completed is truncated input.
    pub fn finish(&self) -> Result<(), ApiError> {
        if !self.done && self.need > 9 {
            return Err(ApiError::Truncated(format!(
                "the body ended inside its safetensors header ({} of {} bytes)",
                self.head.len(),
                self.need
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn gate_checks_cap_offsets_and_length() {
        let ok = st(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            8,
        );
        for split in [1, 5, 9, 20, ok.len()] {
            let mut g = HeaderGate::new(1000, 1 << 20, Some(ok.len() as u64));
            for part in ok.chunks(split) {
                g.feed(part).unwrap();
            }
            g.finish().unwrap();
        }
        let mut g = HeaderGate::new(10, 1 << 20, None);
        assert!(matches!(g.feed(&ok), Err(ApiError::HeaderTooLarge(_))));
        let lying = st(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,9]}}"#,
            8,
        );
        assert!(matches!(
            HeaderGate::new(1000, 1 << 20, None).feed(&lying),
            Err(ApiError::InvalidSafetensors(_))
        ));
        let beyond = st(
            r#"{"a":{"dtype":"U8","shape":[100],"data_offsets":[0,100]}}"#,
            8,
        );
        let mut g = HeaderGate::new(1000, 1 << 20, Some(beyond.len() as u64));
        assert!(matches!(g.feed(&beyond), Err(ApiError::Truncated(_))));
        let mut g = HeaderGate::new(1000, 50, None);
        assert!(matches!(g.feed(&beyond), Err(ApiError::TooLarge(_))));
        let mut g = HeaderGate::new(1000, 1 << 20, None);
        g.feed(&ok[..20]).unwrap();
        assert!(matches!(g.finish(), Err(ApiError::Truncated(_))));
        let mut g = HeaderGate::new(10, 1 << 20, None);
        g.feed(b"{\"not\": \"safetensors\"}").unwrap();
        g.finish().unwrap();
    }
}
