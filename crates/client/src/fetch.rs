//! The fetch engine: single-range GETs of the container, frames decoded on the blocking
//! pool as soon as each is complete, entries verified and handed on as they finish.
//!
//! One [`Job`] is a run of neighbouring entries fetched with one Range request. Its worker
//! keeps two cursors: `read` (the next frame to cut from the response) and `done` (the
//! next frame to deliver). A failed connection restarts the request at `done`, so frames
//! already verified are never fetched twice; a failed frame or digest restarts at the
//! start of its entry, once.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use floatzip_codec::{decode_entry_frames, Manifest};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::{status_error, Ctx, Tensor};

/// A run of consecutive entries fetched by one Range request.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    /// First entry index.
    pub first: usize,
    /// One past the last entry index.
    pub last: usize,
    /// Container offset where the job's frames start.
    pub start: u64,
    /// Container offset where they end.
    pub end: u64,
}

/// Groups the wanted entries (ascending indices) into jobs: neighbours are coalesced into
/// one range until it reaches `coalesce` bytes, so small tensors do not cost a request each.
pub(crate) fn plan(m: &Manifest, wanted: &[usize], coalesce: u64) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for &i in wanted {
        let e = &m.entries[i];
        match jobs.last_mut() {
            Some(j) if j.last == i && j.end - j.start < coalesce => {
                j.last = i + 1;
                j.end = e.compressed[1];
            }
            _ => jobs.push(Job {
                first: i,
                last: i + 1,
                start: e.compressed[0],
                end: e.compressed[1],
            }),
        }
    }
    jobs
}

/// Where verified entries go.
#[derive(Clone)]
pub(crate) enum Dest {
    /// Whole tensors, sent to a consumer as each one is verified.
    Memory(mpsc::Sender<Result<Tensor>>),
    /// Written into a file at `offsets[entry]`; verified entries are recorded in `log`.
    File {
        file: Arc<File>,
        path: Arc<std::path::PathBuf>,
        offsets: Arc<Vec<u64>>,
        log: Option<Arc<Mutex<crate::resume::ProgressLog>>>,
        /// Told of each entry written, for the whole-file SHA-256.
        sha: Option<crate::sha_follower::DoneSender>,
    },
}

/// A position: frame `frame` of entry `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    entry: usize,
    frame: usize,
}

/// Why one attempt at a job stopped.
enum Fail {
    /// The connection failed (retried while attempts make progress).
    Transient(Transient),
    /// An entry's data failed verification (fetched again once).
    Integrity { entry: usize, reason: String },
    /// Nothing a retry would fix.
    Fatal(Error),
}

enum Transient {
    Stalled,
    Network(reqwest::Error),
    Truncated(String),
    Status(u16, String),
}

/// Why decoding one frame failed.
enum FrameFail {
    Corrupt(String),
    Io(std::io::Error),
}

type Inflight = VecDeque<(Pos, JoinHandle<std::result::Result<Vec<u8>, FrameFail>>)>;

/// An entry being assembled from its frames, in order.
struct Assembly {
    entry: usize,
    hasher: blake3::Hasher,
    bytes: Vec<u8>,
}

/// The state of one job's worker.
struct Worker<'a> {
    ctx: &'a Ctx,
    m: &'a Arc<Manifest>,
    url: &'a str,
    job: &'a Job,
    dest: &'a Dest,
    /// Next frame to deliver; `None` when the job is complete.
    done: Option<Pos>,
    asm: Option<Assembly>,
}

/// Runs one job to the end: every entry in it verified and delivered, or an error.
pub(crate) async fn run_job(
    ctx: &Ctx,
    m: &Arc<Manifest>,
    url: &str,
    job: &Job,
    dest: &Dest,
) -> Result<()> {
    let mut w = Worker {
        ctx,
        m,
        url,
        job,
        dest,
        done: None,
        asm: None,
    };
    w.done = w.normalize(Pos {
        entry: job.first,
        frame: 0,
    });
    w.finish_empty_entries(job.first).await?;
    let mut refetched = HashSet::new();
    let mut fruitless = 0u32;
    while w.done.is_some() {
        let before = w.done;
        let fail = match w.attempt().await {
            Ok(()) => continue,
            Err(f) => f,
        };
        match fail {
            Fail::Fatal(e) => return Err(e),
            Fail::Integrity { entry, reason } => {
                let e = &m.entries[entry];
                if !refetched.insert(entry) {
                    return Err(Error::Integrity {
                        what: e.label(),
                        reason,
                    });
                }
                // Fetch the whole entry again: its earlier frames went into the digest.
                w.asm = None;
                w.done = Some(Pos { entry, frame: 0 });
                ctx.progress.refetches.fetch_add(1, Relaxed);
            }
            Fail::Transient(t) => {
                // Only attempts that delivered nothing count: a link that drops every few
                // MB still finishes, one that delivers nothing gives up.
                fruitless = if w.done != before { 1 } else { fruitless + 1 };
                if fruitless > ctx.opts.retries {
                    return Err(transient_error(url, t, fruitless, &ctx.opts.stall_timeout));
                }
                ctx.progress.retries.fetch_add(1, Relaxed);
                let backoff = Duration::from_millis(50u64 << fruitless.min(5));
                tokio::time::sleep(backoff).await;
            }
        }
    }
    Ok(())
}

fn transient_error(url: &str, t: Transient, attempts: u32, stall: &Duration) -> Error {
    let url = url.to_string();
    match t {
        Transient::Stalled => Error::Stalled {
            url,
            seconds: stall.as_secs_f64(),
            attempts,
        },
        Transient::Network(source) => Error::Network {
            url,
            attempts,
            source,
        },
        Transient::Truncated(detail) => Error::Truncated {
            url,
            attempts,
            detail,
        },
        Transient::Status(status, message) => Error::Status {
            url,
            status,
            message,
        },
    }
}

impl Worker<'_> {
    /// The first real frame at or after `p` within the job (skipping frameless entries).
    fn normalize(&self, mut p: Pos) -> Option<Pos> {
        while p.entry < self.job.last {
            if p.frame < self.m.entries[p.entry].frames.len() {
                return Some(p);
            }
            p = Pos {
                entry: p.entry + 1,
                frame: 0,
            };
        }
        None
    }

    fn next(&self, p: Pos) -> Option<Pos> {
        self.normalize(Pos {
            entry: p.entry,
            frame: p.frame + 1,
        })
    }

    fn offset(&self, p: Pos) -> u64 {
        self.m.entries[p.entry].frame_compressed_range(p.frame).0
    }

    /// Delivers the frameless (empty) entries from `from` up to the `done` cursor.
    async fn finish_empty_entries(&mut self, from: usize) -> Result<()> {
        let until = self.done.map_or(self.job.last, |p| p.entry);
        for i in from..until {
            if self.m.entries[i].frames.is_empty() {
                self.asm = Some(Assembly {
                    entry: i,
                    hasher: blake3::Hasher::new(),
                    bytes: Vec::new(),
                });
                self.finish_entry().await.map_err(|f| match f {
                    Fail::Integrity { entry, reason } => Error::Integrity {
                        what: self.m.entries[entry].label(),
                        reason,
                    },
                    Fail::Fatal(e) => e,
                    Fail::Transient(t) => {
                        transient_error(self.url, t, 1, &self.ctx.opts.stall_timeout)
                    }
                })?;
            }
        }
        Ok(())
    }

    /// One Range request from the `done` cursor to the end of the job.
    async fn attempt(&mut self) -> std::result::Result<(), Fail> {
        let Some(from) = self.done else {
            return Ok(());
        };
        let start = self.offset(from);
        let end = self.job.end;
        let ctx = self.ctx;
        let req = ctx
            .get(self.url)
            .header(RANGE, format!("bytes={start}-{}", end - 1));
        let resp = match tokio::time::timeout(ctx.opts.stall_timeout, req.send()).await {
            Err(_) => return Err(Fail::Transient(Transient::Stalled)),
            Ok(Err(e)) => return Err(Fail::Transient(Transient::Network(e))),
            Ok(Ok(r)) => r,
        };
        // A 200 is the whole container from byte 0: skip to where this attempt starts
        // rather than appending it after what was already received.
        let mut skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                check_content_range(&resp, start, end).map_err(|detail| {
                    Fail::Fatal(Error::BadResponse {
                        url: self.url.to_string(),
                        detail,
                    })
                })?;
                0
            }
            StatusCode::OK => start,
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                let msg = crate::error_message(resp).await;
                return Err(Fail::Transient(Transient::Status(s.as_u16(), msg)));
            }
            _ => {
                return Err(Fail::Fatal(
                    status_error(self.url, resp, Some((start, end))).await,
                ))
            }
        };
        let mut body = resp.bytes_stream();
        let mut buf = BytesMut::new();
        let mut read = Some(from);
        let mut inflight: Inflight = VecDeque::new();
        let mut broken: Option<Transient> = None;
        let max_inflight = ctx.opts.frames_in_flight.max(1);
        loop {
            if inflight.is_empty() {
                if let Some(t) = broken.take() {
                    return Err(Fail::Transient(t));
                }
                if read.is_none() {
                    return Ok(());
                }
            }
            let reading = broken.is_none() && read.is_some() && inflight.len() < max_inflight;
            tokio::select! {
                // Deliver decoded frames first: a tensor is handed on as soon as its last
                // frame is decoded, whatever the connection is doing.
                biased;
                Some(r) = front(&mut inflight), if !inflight.is_empty() => {
                    let Some((pos, _)) = inflight.pop_front() else {
                        continue;
                    };
                    let bytes = match r {
                        Ok(Ok(b)) => b,
                        Ok(Err(FrameFail::Corrupt(reason))) => {
                            return Err(Fail::Integrity { entry: pos.entry, reason })
                        }
                        Ok(Err(FrameFail::Io(e))) => return Err(Fail::Fatal(self.io_error(e))),
                        Err(e) => return Err(Fail::Fatal(Error::Internal(format!("decode task: {e}")))),
                    };
                    self.deliver(pos, bytes).await?;
                }
                chunk = tokio::time::timeout(ctx.opts.stall_timeout, body.next()), if reading => {
                    match chunk {
                        Err(_) => broken = Some(Transient::Stalled),
                        Ok(None) => {
                            broken = Some(Transient::Truncated(format!(
                                "the response for bytes {start}..{end} ended early"
                            )))
                        }
                        Ok(Some(Err(e))) => broken = Some(Transient::Network(e)),
                        Ok(Some(Ok(chunk))) => {
                            ctx.progress.wire_bytes.fetch_add(chunk.len() as u64, Relaxed);
                            let mut chunk: &[u8] = &chunk;
                            if skip > 0 {
                                let n = skip.min(chunk.len() as u64);
                                chunk = &chunk[n as usize..];
                                skip -= n;
                            }
                            buf.extend_from_slice(chunk);
                            while let Some(p) = read {
                                let need = self.m.entries[p.entry].frames[p.frame] as usize;
                                if buf.len() < need {
                                    break;
                                }
                                let raw = buf.split_to(need).freeze();
                                inflight.push_back((p, self.spawn_decode(p, raw)));
                                read = self.next(p);
                            }
                            // Bytes past the job (a 200 runs to the end of the container)
                            // are not read: the response is dropped when the job is done.
                        }
                    }
                }
                else => return Err(Fail::Fatal(Error::Internal("fetch loop has nothing to wait for".into()))),
            }
        }
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        let path = match self.dest {
            Dest::File { path, .. } => path.as_ref().clone(),
            Dest::Memory(_) => "(memory)".into(),
        };
        Error::Io { path, source: e }
    }

    /// Decodes one frame on the blocking pool (and writes it, for file destinations).
    fn spawn_decode(
        &self,
        p: Pos,
        raw: Bytes,
    ) -> JoinHandle<std::result::Result<Vec<u8>, FrameFail>> {
        let m = self.m.clone();
        let write = match self.dest {
            Dest::File { file, offsets, .. } => {
                let e = &self.m.entries[p.entry];
                let within = e.frame_original_range(p.frame).0 - e.original[0];
                offsets
                    .get(p.entry)
                    .map(|&base| (file.clone(), base + within))
            }
            Dest::Memory(_) => None,
        };
        tokio::task::spawn_blocking(move || {
            let e = &m.entries[p.entry];
            let (b, en) = e.frame_original_range(p.frame);
            // Sized by the validated manifest: at most one chunk.
            let want = (en - b) as usize;
            let mut out = Vec::with_capacity(want);
            decode_entry_frames(e, p.frame, &raw, &mut out)
                .map_err(|err| FrameFail::Corrupt(err.to_string()))?;
            if out.len() != want {
                return Err(FrameFail::Corrupt(format!(
                    "frame {} decodes to {} bytes, the manifest says {want}",
                    p.frame,
                    out.len()
                )));
            }
            if let Some((file, at)) = write {
                file.write_all_at(&out, at).map_err(FrameFail::Io)?;
            }
            Ok(out)
        })
    }

    /// Takes a decoded frame in order; finishes its entry after the last frame.
    async fn deliver(&mut self, p: Pos, bytes: Vec<u8>) -> std::result::Result<(), Fail> {
        let keep = matches!(self.dest, Dest::Memory(_));
        if self.asm.as_ref().map(|a| a.entry) != Some(p.entry) {
            self.asm = None;
        }
        let asm = self.asm.get_or_insert_with(|| Assembly {
            entry: p.entry,
            hasher: blake3::Hasher::new(),
            bytes: Vec::new(),
        });
        asm.hasher.update(&bytes);
        self.ctx
            .progress
            .original_bytes
            .fetch_add(bytes.len() as u64, Relaxed);
        if keep {
            if asm.bytes.is_empty() {
                asm.bytes = bytes;
            } else {
                asm.bytes.extend_from_slice(&bytes);
            }
        }
        self.done = self.next(p);
        if self.done.is_none_or(|d| d.entry != p.entry) {
            self.finish_entry().await?;
            self.finish_empty_entries(p.entry + 1)
                .await
                .map_err(Fail::Fatal)?;
        }
        Ok(())
    }

    /// Verifies the assembled entry's digest and hands it on.
    async fn finish_entry(&mut self) -> std::result::Result<(), Fail> {
        let Some(asm) = self.asm.take() else {
            return Ok(());
        };
        let e = &self.m.entries[asm.entry];
        let actual = asm.hasher.finalize().to_hex().to_string();
        if !actual.eq_ignore_ascii_case(&e.blake3) {
            return Err(Fail::Integrity {
                entry: asm.entry,
                reason: format!("BLAKE3 is {actual}, the manifest says {}", e.blake3),
            });
        }
        // File destinations got the bytes as each frame was decoded (`asm.bytes` is empty
        // then, so nothing is written twice); this records the entry as done.
        deliver_verified(self.ctx, self.m, self.dest, asm.entry, asm.bytes)
            .await
            .map_err(Fail::Fatal)
    }
}

/// Hands on entry `idx`'s verified original bytes: to the consumer, or written into the
/// file (and recorded for resume and the whole-file hash).
pub(crate) async fn deliver_verified(
    ctx: &Ctx,
    m: &Manifest,
    dest: &Dest,
    idx: usize,
    bytes: Vec<u8>,
) -> Result<()> {
    let e = &m.entries[idx];
    ctx.progress.entry_verified();
    match dest {
        Dest::Memory(tx) => {
            let Some(name) = e.name.clone() else {
                return Ok(());
            };
            let t = Tensor {
                name,
                dtype: e.dtype.clone(),
                shape: e.shape.clone(),
                bytes,
            };
            tx.send(Ok(t))
                .await
                .map_err(|_| Error::Internal("the tensor stream was dropped".into()))
        }
        Dest::File {
            file,
            path,
            offsets,
            log,
            sha,
        } => {
            use std::os::unix::fs::FileExt;
            let at = offsets
                .get(idx)
                .copied()
                .ok_or_else(|| Error::Internal(format!("no offset for entry {idx}")))?;
            if !bytes.is_empty() {
                file.write_all_at(&bytes, at)
                    .map_err(|e| Error::io(path.as_ref(), e))?;
            }
            if let Some(log) = log {
                log.lock()
                    .map_err(|_| Error::Internal("progress log poisoned".into()))?
                    .record(idx)?;
            }
            if let Some(sha) = sha {
                sha.entry_done(idx);
            }
            Ok(())
        }
    }
}

/// Awaits the oldest decode task.
async fn front(
    q: &mut Inflight,
) -> Option<std::result::Result<std::result::Result<Vec<u8>, FrameFail>, tokio::task::JoinError>> {
    match q.front_mut() {
        Some((_, h)) => Some(h.await),
        None => None,
    }
}

/// Checks that a 206 answer holds exactly the bytes asked for.
fn check_content_range(
    resp: &reqwest::Response,
    start: u64,
    end: u64,
) -> std::result::Result<(), String> {
    let v = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or("206 without a Content-Range")?;
    let want = format!("bytes {start}-{}/", end - 1);
    if !v.starts_with(&want) {
        return Err(format!(
            "asked for bytes {start}-{}, got Content-Range {v:?}",
            end - 1
        ));
    }
    Ok(())
}
