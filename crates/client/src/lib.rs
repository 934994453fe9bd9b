//! floatzip-client: an async SDK for floatzip servers.
//!
//! It fetches the manifest, then the compressed frames of a container with several
//! single-range GETs in flight, decodes each frame on the blocking pool as soon as its
//! bytes are complete (while later bytes of the same response are still arriving),
//! verifies every frame checksum, tensor digest and — for whole files — the file's
//! SHA-256, and writes or yields the result. Memory is bounded by the frames in flight.
//!
//! ```no_run
//! # async fn demo() -> floatzip_client::Result<()> {
//! use floatzip_client::{Client, Filter};
//! use futures_util::StreamExt;
//!
//! let client = Client::builder("http://127.0.0.1:8080").jobs(8).build()?;
//! let file = client.file("org/model", "model.safetensors")?;
//! file.download("model.safetensors".as_ref()).await?;
//! let mut s = file.tensors(Filter::names(["encoder.layer.0.*"])?);
//! while let Some(t) = s.next().await {
//!     let t = t?;
//!     println!("{} {:?} {}", t.name, t.shape, t.bytes.len());
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod error;
mod fetch;
pub mod filter;
pub mod manifest;
mod resume;
mod sha_follower;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floatzip_codec::container::CONTAINER_HEADER_LEN;
use floatzip_codec::safetensors::{parse_header, write_header, Header};
use futures_util::{Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, RANGE};
use reqwest::StatusCode;
use tokio::sync::{mpsc, OnceCell};
use tokio::task::JoinSet;

pub use error::{Error, Result};
pub use filter::{layer_index, Filter};
pub use floatzip_codec::{Entry, Manifest};
pub use manifest::{ContainerInfo, RemoteManifest};

use fetch::{plan, run_job, Dest, Job};
use sha_follower::ShaFollower;

/// Default largest manifest accepted.
const DEFAULT_MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// Largest error body read to report the server's message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Range requests in flight at once.
    pub jobs: usize,
    /// Neighbouring entries are merged into one range request until it holds this many
    /// compressed bytes.
    pub coalesce_bytes: u64,
    /// Frames of one response decoding at once (bounds memory per request).
    pub frames_in_flight: usize,
    /// No bytes for this long means the connection is stalled: it is dropped and retried.
    pub stall_timeout: Duration,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Attempts in a row that deliver nothing before a request gives up.
    pub retries: u32,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 4,
            coalesce_bytes: 4 << 20,
            frames_in_flight: 4,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 5,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
        }
    }
}

/// Live counters of a [`RemoteFile`]'s transfers, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    pub(crate) wire_bytes: AtomicU64,
    pub(crate) original_bytes: AtomicU64,
    pub(crate) entries_done: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) refetches: AtomicU64,
    pub(crate) total_wire: AtomicU64,
    pub(crate) total_original: AtomicU64,
    /// When the current operation verified its first non-empty entry.
    first_entry_at: Mutex<Option<Instant>>,
}

/// A snapshot of [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Bytes received from the server (compressed frames and headers).
    pub wire_bytes: u64,
    /// Original bytes decoded so far.
    pub original_bytes: u64,
    /// Entries (tensors and other byte ranges) verified so far.
    pub entries_done: u64,
    /// Requests retried after a connection failure.
    pub retries: u64,
    /// Entries fetched again after failing verification.
    pub refetches: u64,
    /// Compressed bytes the current operation will fetch.
    pub total_wire: u64,
    /// Original bytes the current operation will produce.
    pub total_original: u64,
}

impl Progress {
    /// Reads the counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            wire_bytes: self.wire_bytes.load(Relaxed),
            original_bytes: self.original_bytes.load(Relaxed),
            entries_done: self.entries_done.load(Relaxed),
            retries: self.retries.load(Relaxed),
            refetches: self.refetches.load(Relaxed),
            total_wire: self.total_wire.load(Relaxed),
            total_original: self.total_original.load(Relaxed),
        }
    }

    fn begin(&self, total_wire: u64, total_original: u64) {
        for c in [
            &self.wire_bytes,
            &self.original_bytes,
            &self.entries_done,
            &self.retries,
            &self.refetches,
        ] {
            c.store(0, Relaxed);
        }
        self.total_wire.store(total_wire, Relaxed);
        self.total_original.store(total_original, Relaxed);
        if let Ok(mut t) = self.first_entry_at.lock() {
            *t = None;
        }
    }

    /// Notes that an entry was verified (the first one's time is kept).
    pub(crate) fn entry_verified(&self) {
        if self.entries_done.fetch_add(1, Relaxed) == 0 {
            if let Ok(mut t) = self.first_entry_at.lock() {
                t.get_or_insert_with(Instant::now);
            }
        }
    }

    /// When the current operation verified its first entry, if it has.
    pub fn first_entry_at(&self) -> Option<Instant> {
        self.first_entry_at.lock().ok().and_then(|t| *t)
    }
}

/// How long the first job of a transfer runs alone, at most (see `run_jobs`).
const HEAD_START: Duration = Duration::from_millis(250);
/// How often the head start is checked for its end.
const HEAD_START_POLL: Duration = Duration::from_millis(5);

/// Time from `started` to the first entry verified, if any.
fn snap_first(p: &Progress, started: Instant) -> Option<Duration> {
    p.first_entry_at()
        .map(|t| t.saturating_duration_since(started))
}

/// What a request needs: the HTTP client, the token, the options and where to count.
#[derive(Clone)]
pub(crate) struct Ctx {
    http: reqwest::Client,
    token: Option<String>,
    pub(crate) opts: Options,
    pub(crate) progress: Arc<Progress>,
}

impl Ctx {
    pub(crate) fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.auth(self.http.get(url))
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    opts: Options,
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Range requests in flight at once (at least 1).
    pub fn jobs(mut self, n: usize) -> Self {
        self.opts.jobs = n.max(1);
        self
    }

    /// Compressed bytes up to which neighbouring entries share one request.
    pub fn coalesce_bytes(mut self, n: u64) -> Self {
        self.opts.coalesce_bytes = n;
        self
    }

    /// Frames of one response decoding at once (at least 1).
    pub fn frames_in_flight(mut self, n: usize) -> Self {
        self.opts.frames_in_flight = n.max(1);
        self
    }

    /// How long without a byte before a connection counts as stalled.
    pub fn stall_timeout(mut self, d: Duration) -> Self {
        self.opts.stall_timeout = d;
        self
    }

    /// Time allowed to connect.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.opts.connect_timeout = d;
        self
    }

    /// Attempts in a row without progress before a request fails.
    pub fn retries(mut self, n: u32) -> Self {
        self.opts.retries = n;
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, opts: Options) -> Self {
        self.opts = opts;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let base = self.base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidUrl {
                url: self.base,
                reason: "the server URL must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.opts.connect_timeout)
            // Frames are already compressed: a transfer encoding would only cost CPU.
            .no_gzip()
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(Client {
            base,
            ctx: Ctx {
                http,
                token: self.token,
                opts: self.opts,
                progress: Arc::default(),
            },
        })
    }
}

/// A connection to one floatzip server.
#[derive(Clone)]
pub struct Client {
    base: String,
    ctx: Ctx,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`) with default options.
    pub fn new(base: &str) -> Result<Client> {
        Client::builder(base).build()
    }

    /// A builder for a client of the server at `base`.
    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_string(),
            token: None,
            opts: Options::default(),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A file of a model: `repo` is `org/name`, `file` e.g. `model.safetensors`.
    pub fn file(&self, repo: &str, file: &str) -> Result<RemoteFile> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: format!("{repo}/{file}"),
            reason: reason.into(),
        };
        let (org, name) = repo
            .split_once('/')
            .ok_or_else(|| bad("the repository must be ORG/NAME"))?;
        for seg in [org, name, file] {
            if seg.is_empty()
                || seg == "."
                || seg == ".."
                || seg.contains(['/', '?', '#', '%', ' ', '\\'])
                || seg.chars().any(char::is_control)
            {
                return Err(bad("names must be non-empty path segments"));
            }
        }
        let ctx = Ctx {
            progress: Arc::default(),
            ..self.ctx.clone()
        };
        Ok(RemoteFile {
            inner: Arc::new(FileInner {
                base: self.base.clone(),
                url: format!("{}/v1/models/{org}/{name}/{file}", self.base),
                ctx,
                manifest: OnceCell::new(),
            }),
        })
    }
}

/// A model file URL taken apart: `http://HOST:PORT/v1/models/ORG/NAME/FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUrl {
    /// The server's base URL (`http://HOST:PORT`, plus any path before `/v1/models/`).
    pub base: String,
    /// `ORG/NAME`.
    pub repo: String,
    /// `FILE`.
    pub file: String,
}

impl FileUrl {
    /// Parses a server's download URL of a file.
    pub fn parse(url: &str) -> Result<FileUrl> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.into(),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("must start with http:// or https://"));
        }
        let url_no_query = url.split(['?', '#']).next().unwrap_or(url);
        let (base, rest) = url_no_query
            .split_once("/v1/models/")
            .ok_or_else(|| bad("expected http://HOST:PORT/v1/models/ORG/NAME/FILE"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [org, name, file] = parts[..] else {
            return Err(bad("expected http://HOST:PORT/v1/models/ORG/NAME/FILE"));
        };
        if org.is_empty() || name.is_empty() || file.is_empty() {
            return Err(bad("empty ORG, NAME or FILE"));
        }
        Ok(FileUrl {
            base: base.to_string(),
            repo: format!("{org}/{name}"),
            file: file.to_string(),
        })
    }
}

/// One tensor, decoded and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Name as in the safetensors header.
    pub name: String,
    /// Dtype as the safetensors header names it (`BF16`, `F8_E4M3`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// The tensor's original bytes (little-endian, as stored in the file).
    pub bytes: Vec<u8>,
}

/// What a download did.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    /// The file written.
    pub path: PathBuf,
    /// Bytes of the file written.
    pub file_bytes: u64,
    /// Original (decoded) bytes of the entries fetched in this call.
    pub original_bytes: u64,
    /// Bytes received from the server in this call.
    pub wire_bytes: u64,
    /// Entries (tensors and other byte ranges) fetched in this call.
    pub entries_fetched: usize,
    /// Entries taken from an earlier interrupted download without fetching them again.
    pub entries_reused: usize,
    /// Requests retried after connection failures.
    pub retries: u64,
    /// Entries fetched again after failing verification.
    pub refetches: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The verified SHA-256 of the whole file (whole-file downloads only).
    pub sha256: Option<String>,
    /// From the call to the first tensor verified and written (time to first tensor).
    pub first_entry: Option<Duration>,
}

/// The server's answer to an upload.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct UploadSummary {
    /// `org/name/file` on the server.
    #[serde(default)]
    pub path: String,
    /// Original bytes received.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes stored (the container).
    #[serde(default)]
    pub bytes_stored: u64,
    /// Stored over original.
    #[serde(default)]
    pub ratio: f64,
    /// Tensors in the file.
    #[serde(default)]
    pub tensors: usize,
    /// Whether an earlier upload under the same name was replaced.
    #[serde(default)]
    pub replaced: bool,
    /// Of `bytes_stored`, bytes the store already held (tensors shared with other files).
    #[serde(default)]
    pub shared_bytes: u64,
    /// `org/name/file` of the base the file was stored as a delta against, if it was.
    #[serde(default)]
    pub delta_base: Option<String>,
}

struct FileInner {
    base: String,
    url: String,
    ctx: Ctx,
    manifest: OnceCell<Arc<RemoteManifest>>,
}

/// One model file on the server; cheap to clone.
#[derive(Clone)]
pub struct RemoteFile {
    inner: Arc<FileInner>,
}

/// The stream of [`RemoteFile::tensors`]: verified tensors as they complete. The transfers
/// start on the first poll (inside a tokio runtime) and stop when it is dropped.
pub struct TensorStream {
    start: Option<(RemoteFile, Filter, mpsc::Sender<Result<Tensor>>)>,
    rx: mpsc::Receiver<Result<Tensor>>,
    _driver: Option<AbortOnDrop>,
}

impl Stream for TensorStream {
    type Item = Result<Tensor>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Tensor>>> {
        if let Some((file, filter, tx)) = self.start.take() {
            self._driver = Some(AbortOnDrop(tokio::spawn(async move {
                if let Err(e) = file.stream_into(filter, tx.clone()).await {
                    let _ = tx.send(Err(e)).await;
                }
            })));
        }
        self.rx.poll_recv(cx)
    }
}

/// Aborts a task when dropped: a dropped stream stops its downloads.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RemoteFile {
    /// The file's URL (its original bytes).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Live transfer counters of this file's operations.
    pub fn progress(&self) -> Arc<Progress> {
        self.inner.ctx.progress.clone()
    }

    fn ctx(&self) -> &Ctx {
        &self.inner.ctx
    }

    /// The manifest, fetched once and validated before anything is sized by it.
    pub async fn manifest(&self) -> Result<Arc<RemoteManifest>> {
        self.inner
            .manifest
            .get_or_try_init(|| self.fetch_manifest())
            .await
            .cloned()
    }

    async fn fetch_manifest(&self) -> Result<Arc<RemoteManifest>> {
        let url = format!("{}/manifest", self.inner.url);
        let limit = self.ctx().opts.max_manifest_bytes;
        let resp = self.send_with_retries(&url, None).await?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp, None).await);
        }
        let body = read_capped(&url, resp, limit, "manifest").await?;
        let rm: RemoteManifest =
            serde_json::from_slice(&body).map_err(|e| Error::InvalidManifest {
                url: url.clone(),
                detail: format!("not a floatzip manifest: {e}"),
            })?;
        rm.validate().map_err(|detail| Error::InvalidManifest {
            url: url.clone(),
            detail,
        })?;
        Ok(Arc::new(rm))
    }

    /// Sends a GET (optionally ranged) and retries connection failures and 5xx answers.
    async fn send_with_retries(
        &self,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Result<reqwest::Response> {
        let ctx = self.ctx();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = ctx.get(url);
            if let Some((s, e)) = range {
                req = req.header(RANGE, format!("bytes={s}-{}", e - 1));
            }
            match tokio::time::timeout(ctx.opts.stall_timeout, req.send()).await {
                Ok(Ok(r)) if !r.status().is_server_error() => return Ok(r),
                Ok(Ok(r)) if attempt > ctx.opts.retries => {
                    return Err(status_error(url, r, range).await)
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if attempt > ctx.opts.retries => {
                    return Err(Error::Network {
                        url: url.into(),
                        attempts: attempt,
                        source: e,
                    })
                }
                Ok(Err(_)) => {}
                Err(_) if attempt > ctx.opts.retries => {
                    return Err(Error::Stalled {
                        url: url.into(),
                        seconds: ctx.opts.stall_timeout.as_secs_f64(),
                        attempts: attempt,
                    })
                }
                Err(_) => {}
            }
            ctx.progress.retries.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(5))).await;
        }
    }

    /// Where the container's bytes are read: its content-addressed URL when the server
    /// gives one (so a re-upload during a download cannot mix two containers), else
    /// `?format=fz` on the file URL.
    fn container_url(&self, rm: &RemoteManifest) -> String {
        match &rm.container.url {
            Some(u) if u.starts_with('/') => format!("{}{u}", self.inner.base),
            _ => format!("{}?format=fz", self.inner.url),
        }
    }

    /// Fetches the container's verbatim header (the original's first `prefix_len` bytes).
    async fn fetch_prefix(&self, rm: &RemoteManifest) -> Result<Vec<u8>> {
        let len = rm.manifest.prefix_len;
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = self.container_url(rm);
        let start = CONTAINER_HEADER_LEN;
        self.fetch_range(&url, start, start + len, "the safetensors header")
            .await
    }

    /// Bytes `start..end` of `url` (a length the validated manifest gave), with retries;
    /// a `200` answer is read from byte 0 and skipped up to `start`.
    async fn fetch_range(&self, url: &str, start: u64, end: u64, what: &str) -> Result<Vec<u8>> {
        let len = (end - start) as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        let ctx = self.ctx();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.send_with_retries(url, Some((start, end))).await?;
            let mut skip = match resp.status() {
                StatusCode::PARTIAL_CONTENT => 0,
                // The whole representation from byte 0: a restart, so skip to `start`.
                StatusCode::OK => start,
                _ => return Err(status_error(url, resp, Some((start, end))).await),
            };
            let mut out = Vec::with_capacity(len);
            let mut body = resp.bytes_stream();
            let failure = loop {
                match tokio::time::timeout(ctx.opts.stall_timeout, body.next()).await {
                    Err(_) => break "stalled",
                    Ok(None) => break "cut short",
                    Ok(Some(Err(_))) => break "connection failed",
                    Ok(Some(Ok(chunk))) => {
                        ctx.progress
                            .wire_bytes
                            .fetch_add(chunk.len() as u64, Relaxed);
                        let mut c: &[u8] = &chunk;
                        let n = skip.min(c.len() as u64);
                        c = &c[n as usize..];
                        skip -= n;
                        let room = len - out.len();
                        out.extend_from_slice(&c[..c.len().min(room)]);
                        if out.len() == len {
                            return Ok(out);
                        }
                    }
                }
            };
            if attempt > ctx.opts.retries {
                return Err(Error::Truncated {
                    url: url.to_string(),
                    attempts: attempt,
                    detail: format!("{what}: {failure}"),
                });
            }
            ctx.progress.retries.fetch_add(1, Relaxed);
        }
    }

    /// For a file stored as a delta against a base (its manifest names one): the frames
    /// need the base tensors, which only the server has, so each wanted entry's original
    /// bytes are fetched (the server decodes the chain) and verified like decoded frames.
    async fn run_decoded(
        &self,
        rm: &Arc<RemoteManifest>,
        jobs: Vec<Job>,
        dest: Dest,
    ) -> Result<()> {
        let m = &rm.manifest;
        for i in jobs.iter().flat_map(|j| j.first..j.last) {
            let e = &m.entries[i];
            let mut tries = 0;
            let bytes = loop {
                tries += 1;
                let b = self
                    .fetch_range(&self.inner.url, e.original[0], e.original[1], &e.label())
                    .await?;
                if blake3::hash(&b).to_hex().as_str() == e.blake3.to_ascii_lowercase() {
                    break b;
                }
                if tries > 1 {
                    return Err(Error::Integrity {
                        what: e.label(),
                        reason: "the decoded bytes do not match the tensor's BLAKE3 digest".into(),
                    });
                }
                self.ctx().progress.refetches.fetch_add(1, Relaxed);
            };
            self.ctx()
                .progress
                .original_bytes
                .fetch_add(bytes.len() as u64, Relaxed);
            fetch::deliver_verified(self.ctx(), m, &dest, i, bytes).await?;
        }
        Ok(())
    }

    /// The safetensors header, fetched and checked against the manifest.
    async fn header(&self, rm: &RemoteManifest) -> Result<Header> {
        if rm.manifest.prefix_len < 8 {
            return Err(Error::NotSafetensors);
        }
        let prefix = self.fetch_prefix(rm).await?;
        self.check_prefix(rm, &prefix)
    }

    /// Parses the fetched header bytes and checks them against the manifest.
    fn check_prefix(&self, rm: &RemoteManifest, prefix: &[u8]) -> Result<Header> {
        let bad = |detail: String| Error::InvalidManifest {
            url: self.container_url(rm),
            detail,
        };
        let declared = prefix
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        if declared != Some(rm.manifest.prefix_len - 8) {
            return Err(bad("the header's length disagrees with the manifest".into()));
        }
        let h = parse_header(&prefix[8..]).map_err(|e| bad(e.to_string()))?;
        rm.check_header(&h).map_err(bad)?;
        Ok(h)
    }

    /// Runs jobs with `opts.jobs` in flight; the first error stops the others.
    async fn run_jobs(&self, rm: &Arc<RemoteManifest>, jobs: Vec<Job>, dest: Dest) -> Result<()> {
        if rm.manifest.base.is_some() {
            return self.run_decoded(rm, jobs, dest).await;
        }
        let url = Arc::new(self.container_url(rm));
        let m = Arc::new(rm.manifest.clone());
        let mut set = JoinSet::new();
        let mut jobs = jobs.into_iter();
        let n = self.ctx().opts.jobs.max(1);
        // The first job runs alone until its first entry is verified (or HEAD_START has
        // passed): N streams sharing the link from the start would deliver the first
        // tensor N times later, and one stream fills the link meanwhile.
        let started = Instant::now();
        let mut limit = 1;
        loop {
            if limit < n
                && (self.ctx().progress.first_entry_at().is_some()
                    || started.elapsed() >= HEAD_START)
            {
                limit = n;
            }
            while set.len() < limit {
                let Some(job) = jobs.next() else { break };
                let (ctx, m, url, dest) =
                    (self.ctx().clone(), m.clone(), url.clone(), dest.clone());
                set.spawn(async move { run_job(&ctx, &m, &url, &job, &dest).await });
            }
            let next = if limit < n {
                match tokio::time::timeout(HEAD_START_POLL, set.join_next()).await {
                    Ok(next) => next,
                    Err(_) => continue,
                }
            } else {
                set.join_next().await
            };
            match next {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(Error::Internal(format!("fetch task: {e}"))),
            }
        }
    }

    /// The entries of `rm` holding tensors chosen by `filter` (checked: unknown names fail).
    fn select(rm: &RemoteManifest, filter: &Filter) -> Result<Vec<usize>> {
        let names = rm.manifest.entries.iter().filter_map(|e| e.name.as_deref());
        filter.check(names)?;
        Ok(rm
            .manifest
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.name.as_deref().is_some_and(|n| filter.matches(n)))
            .map(|(i, _)| i)
            .collect())
    }

    /// One tensor, decoded and verified.
    pub async fn tensor(&self, name: &str) -> Result<Tensor> {
        let rm = self.manifest().await?;
        if rm.manifest.find_tensor(name).is_none() {
            return Err(Error::UnknownTensor(name.to_string()));
        }
        let mut s = self.tensors(Filter::exact([name]));
        match s.next().await {
            Some(r) => r,
            None => Err(Error::Internal(format!(
                "tensor {name:?} was not delivered"
            ))),
        }
    }

    /// The tensors chosen by `filter`, each yielded as soon as its last frame is decoded
    /// and its digest verified — in completion order, not file order. Dropping the stream
    /// stops the transfers. An error ends the stream.
    pub fn tensors(&self, filter: Filter) -> TensorStream {
        let (tx, rx) = mpsc::channel(self.ctx().opts.jobs.max(1));
        TensorStream {
            start: Some((self.clone(), filter, tx)),
            rx,
            _driver: None,
        }
    }

    async fn stream_into(&self, filter: Filter, tx: mpsc::Sender<Result<Tensor>>) -> Result<()> {
        let rm = self.manifest().await?;
        let wanted = Self::select(&rm, &filter)?;
        let m = &rm.manifest;
        self.ctx().progress.begin(
            wanted.iter().map(|&i| m.entries[i].compressed_len()).sum(),
            wanted.iter().map(|&i| m.entries[i].original_len()).sum(),
        );
        let jobs = plan(m, &wanted, self.ctx().opts.coalesce_bytes);
        self.run_jobs(&rm, jobs, Dest::Memory(tx)).await
    }

    /// Downloads the whole file to `path`, byte-identical to the original and verified
    /// (frames, tensor digests, whole-file SHA-256). It is written as `PATH.part` with a
    /// sidecar `PATH.part.progress`, renamed into place only once verified; an interrupted
    /// download called again continues where it stopped.
    pub async fn download(&self, path: &Path) -> Result<DownloadReport> {
        let started = Instant::now();
        let rm = self.manifest().await?;
        let m = &rm.manifest;
        let part = sibling(path, ".part")?;
        let log_path = sibling(path, ".part.progress")?;
        let (p2, l2, rm2) = (part.clone(), log_path.clone(), rm.clone());
        let verified = tokio::task::spawn_blocking(move || resume::load(&p2, &l2, &rm2))
            .await
            .map_err(|e| Error::Internal(format!("resume check: {e}")))?;
        let resuming = verified.is_some();
        let verified = verified.unwrap_or_else(|| vec![false; m.entries.len()]);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resuming)
            .open(&part)
            .map_err(|e| Error::io(&part, e))?;
        file.set_len(rm.original_size)
            .map_err(|e| Error::io(&part, e))?;
        let log = if resuming {
            resume::ProgressLog::append(&log_path)?
        } else {
            resume::ProgressLog::create(&log_path, &rm)?
        };
        // The header is small and covered by the whole-file SHA-256: always fetch it, and
        // check it against the manifest before writing anything by it.
        let prefix = self.fetch_prefix(&rm).await?;
        if m.prefix_len >= 8 {
            self.check_prefix(&rm, &prefix)?;
        }
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&prefix, 0)
                .map_err(|e| Error::io(&part, e))?;
        }
        let wanted: Vec<usize> = (0..m.entries.len())
            .filter(|&i| !verified[i] && m.entries[i].original_len() > 0)
            .collect();
        let reused = verified.iter().filter(|&&v| v).count();
        self.ctx().progress.begin(
            wanted.iter().map(|&i| m.entries[i].compressed_len()).sum(),
            wanted.iter().map(|&i| m.entries[i].original_len()).sum(),
        );
        let jobs = plan(m, &wanted, self.ctx().opts.coalesce_bytes);
        let file = Arc::new(file);
        // Entries already in place (resumed, or empty) are hashed as soon as the follower
        // reaches them; the header was written above.
        let ready: Vec<bool> = (0..m.entries.len())
            .map(|i| verified[i] || m.entries[i].original_len() == 0)
            .collect();
        let sha = ShaFollower::start(
            file.clone(),
            part.clone(),
            rm.original_size,
            m.entries
                .iter()
                .map(|e| (e.original[0], e.original[1]))
                .collect(),
            ready,
        );
        let dest = Dest::File {
            file: file.clone(),
            path: Arc::new(part.clone()),
            offsets: Arc::new(m.entries.iter().map(|e| e.original[0]).collect()),
            log: Some(Arc::new(Mutex::new(log))),
            sha: Some(sha.sender()),
        };
        // On failure the .part and its log stay for the next call to resume from.
        self.run_jobs(&rm, jobs, dest).await?;
        let actual = tokio::task::spawn_blocking(move || sha.finish())
            .await
            .map_err(|e| Error::Internal(format!("hashing: {e}")))??;
        file.sync_all().map_err(|e| Error::io(&part, e))?;
        drop(file);
        if !actual.eq_ignore_ascii_case(&rm.sha256) {
            // Every entry verified but the whole does not: start afresh next time.
            let _ = std::fs::remove_file(&log_path);
            let _ = std::fs::remove_file(&part);
            return Err(Error::FileDigest {
                path: part,
                expected: rm.sha256.clone(),
                actual,
            });
        }
        std::fs::rename(&part, path).map_err(|e| Error::io(path, e))?;
        let _ = std::fs::remove_file(&log_path);
        let snap = self.ctx().progress.snapshot();
        Ok(DownloadReport {
            path: path.to_path_buf(),
            file_bytes: rm.original_size,
            original_bytes: snap.original_bytes,
            wire_bytes: snap.wire_bytes,
            entries_fetched: wanted.len(),
            entries_reused: reused,
            retries: snap.retries,
            refetches: snap.refetches,
            elapsed: started.elapsed(),
            sha256: Some(actual),
            first_entry: snap_first(&self.ctx().progress, started),
        })
    }

    /// Downloads the tensors chosen by `filter` into a new safetensors file at `path`:
    /// a header listing only them (same dtypes, shapes, metadata; offsets packed in file
    /// order) followed by their verified bytes. Written as `PATH.part`, renamed at the end.
    pub async fn download_subset(&self, filter: &Filter, path: &Path) -> Result<DownloadReport> {
        let started = Instant::now();
        let rm = self.manifest().await?;
        let m = &rm.manifest;
        let header = self.header(&rm).await?;
        Self::select(&rm, filter)?;
        let chosen: Vec<_> = header
            .tensors
            .iter()
            .filter(|t| filter.matches(&t.name))
            .collect();
        let mut layout = Vec::with_capacity(chosen.len());
        let mut at = 0u64;
        for t in &chosen {
            layout.push((*t, at, at + (t.end - t.begin)));
            at += t.end - t.begin;
        }
        let head = write_header(&layout, header.metadata.as_ref());
        let total = head.len() as u64 + at;
        let mut offsets = vec![0u64; m.entries.len()];
        let mut wanted = Vec::with_capacity(chosen.len());
        for (t, begin, _) in &layout {
            let idx = m
                .find_tensor(&t.name)
                .ok_or_else(|| Error::UnknownTensor(t.name.clone()))?;
            offsets[idx] = head.len() as u64 + begin;
            if m.entries[idx].original_len() > 0 {
                wanted.push(idx);
            }
        }
        wanted.sort_unstable();
        let part = sibling(path, ".part")?;
        let file = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
        let result = async {
            use std::os::unix::fs::FileExt;
            file.set_len(total).map_err(|e| Error::io(&part, e))?;
            file.write_all_at(&head, 0)
                .map_err(|e| Error::io(&part, e))?;
            self.ctx().progress.begin(
                wanted.iter().map(|&i| m.entries[i].compressed_len()).sum(),
                wanted.iter().map(|&i| m.entries[i].original_len()).sum(),
            );
            let jobs = plan(m, &wanted, self.ctx().opts.coalesce_bytes);
            let file = Arc::new(file);
            let dest = Dest::File {
                file: file.clone(),
                path: Arc::new(part.clone()),
                offsets: Arc::new(offsets),
                log: None,
                sha: None,
            };
            self.run_jobs(&rm, jobs, dest).await?;
            file.sync_all().map_err(|e| Error::io(&part, e))
        }
        .await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        std::fs::rename(&part, path).map_err(|e| Error::io(path, e))?;
        let snap = self.ctx().progress.snapshot();
        Ok(DownloadReport {
            path: path.to_path_buf(),
            file_bytes: total,
            original_bytes: snap.original_bytes,
            wire_bytes: snap.wire_bytes,
            entries_fetched: wanted.len(),
            entries_reused: 0,
            retries: snap.retries,
            refetches: snap.refetches,
            elapsed: started.elapsed(),
            sha256: None,
            first_entry: snap_first(&self.ctx().progress, started),
        })
    }

    /// Uploads the local file at `path` under this name (needs a write token). The file's
    /// SHA-256 is declared, so the server stores it only if every byte arrived intact.
    pub async fn upload(&self, path: &Path) -> Result<UploadSummary> {
        self.upload_with(path, None).await
    }

    /// [`upload`](Self::upload), asking the server to store the file as a delta against
    /// `base` (`org/name/file` on the same server, e.g. the previous checkpoint) where
    /// that is smaller; downloads are unchanged.
    pub async fn upload_delta(&self, path: &Path, base: &str) -> Result<UploadSummary> {
        self.upload_with(path, Some(base)).await
    }

    async fn upload_with(&self, path: &Path, base: Option<&str>) -> Result<UploadSummary> {
        let p2 = path.to_path_buf();
        let sha = tokio::task::spawn_blocking(move || resume::sha256_file(&p2))
            .await
            .map_err(|e| Error::Internal(format!("hashing: {e}")))??;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().await.map_err(|e| Error::io(path, e))?.len();
        self.ctx().progress.begin(len, len);
        let progress = self.progress();
        let stream = futures_util::stream::unfold(file, move |mut f| {
            let progress = progress.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        progress.wire_bytes.fetch_add(n as u64, Relaxed);
                        progress.original_bytes.fetch_add(n as u64, Relaxed);
                        Some((Ok::<_, std::io::Error>(buf), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            }
        });
        let mut url = format!("{}?sha256={sha}", self.inner.url);
        if let Some(b) = base {
            url.push_str("&base=");
            url.extend(form_urlencoded::byte_serialize(b.as_bytes()));
        }
        let req = self
            .ctx()
            .auth(self.ctx().http.put(&url))
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        let resp = req.send().await.map_err(|e| Error::Network {
            url: url.clone(),
            attempts: 1,
            source: e,
        })?;
        if !resp.status().is_success() {
            return Err(status_error(&url, resp, None).await);
        }
        let body = read_capped(&url, resp, 1 << 20, "upload answer").await?;
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            url,
            detail: format!("upload answer is not the expected JSON: {e}"),
        })
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let mut n = name.to_os_string();
    n.push(suffix);
    Ok(path.with_file_name(n))
}

/// Reads a whole response body, refusing more than `limit` bytes (declared or received).
async fn read_capped(
    url: &str,
    resp: reqwest::Response,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    let too_large = |size| Error::TooLarge {
        url: url.to_string(),
        what,
        size,
        limit,
    };
    if let Some(n) = resp.content_length() {
        if n > limit {
            return Err(too_large(n));
        }
    }
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::Network {
            url: url.to_string(),
            attempts: 1,
            source: e,
        })?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large((out.len() + chunk.len()) as u64));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The server's error message: `{"error":{"message"}}`, or the start of the body.
pub(crate) async fn error_message(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&out).ok();
    if let Some(msg) = json
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(|m| m.as_str())
    {
        return msg.to_string();
    }
    let text = String::from_utf8_lossy(&out);
    text.chars()
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The error for an unexpected status.
pub(crate) async fn status_error(
    url: &str,
    resp: reqwest::Response,
    range: Option<(u64, u64)>,
) -> Error {
    let status = resp.status();
    let message = error_message(resp).await;
    let url = url.to_string();
    match status {
        StatusCode::UNAUTHORIZED => Error::Unauthorized { url, message },
        StatusCode::FORBIDDEN => Error::Forbidden { url, message },
        StatusCode::NOT_FOUND => Error::NotFound { url, message },
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let (start, end) = range.unwrap_or((0, 0));
            Error::RangeNotSatisfiable {
                url,
                start,
                end,
                message,
            }
        }
        s => Error::Status {
            url,
            status: s.as_u16(),
            message,
        },
    }
}

/// Runs an async client call to completion on a new multi-threaded runtime (for
/// programs, like the CLI, that are not async themselves).
pub fn block_on<F: Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    Ok(rt.block_on(f))
}
