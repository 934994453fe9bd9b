//! Response bodies: original bytes decoded on the fly, and raw byte ranges of blobs.
//!
//! An original range is cut into pieces of about [`PIECE_BYTES`] on frame boundaries; each
//! piece fetches exactly its frames' compressed bytes from the store and decodes them on
//! the blocking pool, two pieces in flight, so memory per download stays a few MiB
//! whatever the file size and only the frames a range covers are read and decoded.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use floatzip_codec::container::CONTAINER_HEADER_LEN;
use floatzip_codec::delta::decode_delta_frames;
use floatzip_codec::{decode_entry_frames, Manifest};
use futures_util::{StreamExt, TryStreamExt};

use crate::error::ApiError;
use crate::ranges::{plan, Plan};
use crate::storage::{ContainerSource, Pointer};
use crate::AppState;

/// Original bytes decoded per piece of a streamed response (at least one frame). With
/// [`PIECES_IN_FLIGHT`] this bounds a download's memory: about 4 MiB decoded plus compressed.
pub const PIECE_BYTES: u64 = 1 << 20;
/// Pieces fetched and decoded ahead of the one being sent.
const PIECES_IN_FLIGHT: usize = 4;

/// One representation to answer with: its length, validator and headers.
pub struct Representation {
    /// Length in bytes.
    pub len: u64,
    /// Strong ETag, with quotes.
    pub etag: String,
    /// Content-Type.
    pub content_type: &'static str,
    /// Cache-Control.
    pub cache_control: &'static str,
    /// Further headers.
    pub extra: Vec<(HeaderName, String)>,
}

/// `Cache-Control` for content-addressed URLs: the bytes behind them never change.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for name URLs, which a new upload may repoint: revalidate (by ETag).
pub const REVALIDATE: &str = "no-cache";

/// Answers GET/HEAD for `rep`, with conditionals and a single Range; `body(start, end)`
/// makes the body for the chosen bytes (not called for HEAD or 304).
pub fn respond(
    method: &Method,
    headers: &HeaderMap,
    rep: Representation,
    body: impl FnOnce(u64, u64) -> Body,
) -> Result<Response, ApiError> {
    let chosen = plan(method, headers, &rep.etag, rep.len)?;
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    let val = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| ApiError::Internal(format!("bad header value {s:?}")))
    };
    h.insert(header::ETAG, val(&rep.etag)?);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(rep.cache_control),
    );
    for (k, v) in &rep.extra {
        h.insert(k.clone(), val(v)?);
    }
    let (status, start, end) = match chosen {
        Plan::NotModified => {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(resp);
        }
        Plan::Full => (StatusCode::OK, 0, rep.len),
        Plan::Partial(s, e) => {
            h.insert(
                header::CONTENT_RANGE,
                val(&format!("bytes {s}-{}/{}", e - 1, rep.len))?,
            );
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rep.content_type),
    );
    h.insert(header::CONTENT_LENGTH, val(&(end - start).to_string())?);
    *resp.status_mut() = status;
    if method != Method::HEAD {
        *resp.body_mut() = body(start, end);
    }
    Ok(resp)
}

/// A raw byte range of a container, streamed as the store delivers it.
pub fn blob_body(state: &AppState, src: ContainerSource, range: Range<u64>) -> Body {
    let metrics = state.metrics.clone();
    let stream = state
        .storage
        .stream_container(src, range)
        .inspect_ok(move |b| {
            metrics.bytes_out.fetch_add(b.len() as u64, Relaxed);
        });
    Body::from_stream(stream)
}

/// A piece of an original range.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Bytes `a..b` of the verbatim prefix (the safetensors header).
    Prefix(u64, u64),
    /// Frames `first..` of entry `entry`, stored at `comp`; of their decoded bytes, `take`
    /// from `skip` are sent.
    Frames {
        entry: usize,
        first: usize,
        comp: Range<u64>,
        decoded: u64,
        skip: u64,
        take: u64,
    },
}

/// Cuts original bytes `start..end` into pieces of about `target` decoded bytes.
fn plan_pieces(m: &Manifest, start: u64, end: u64, target: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    if start < m.prefix_len && start < end {
        out.push(Piece::Prefix(start, end.min(m.prefix_len)));
    }
    for (idx, e) in m.entries.iter().enumerate() {
        let (b, en) = (e.original[0], e.original[1]);
        if en <= start || b >= end || e.frames.is_empty() {
            continue;
        }
        let chunk = e.chunk_bytes; // validated non-zero for non-empty entries
        let first = ((start.max(b) - b) / chunk) as usize;
        let last = ((end.min(en) - b).div_ceil(chunk)) as usize;
        let per_piece = (target / chunk).max(1) as usize;
        let mut comp = e.compressed[0] + e.frames[..first].iter().sum::<u64>();
        let mut i = first;
        while i < last {
            let j = (i + per_piece).min(last);
            let len: u64 = e.frames[i..j].iter().sum();
            let ob = b + i as u64 * chunk;
            let oe = (b + j as u64 * chunk).min(en);
            let from = start.max(ob);
            out.push(Piece::Frames {
                entry: idx,
                first: i,
                comp: comp..comp + len,
                decoded: oe - ob,
                skip: from - ob,
                take: end.min(oe) - from,
            });
            comp += len;
            i = j;
        }
    }
    out
}

/// Original bytes `start..end` of the file behind `ptr`, decoded as they are sent.
pub fn original_body(state: &AppState, ptr: Arc<Pointer>, start: u64, end: u64) -> Body {
    let chain = Arc::new(base_chain(ptr));
    let pieces = plan_pieces(&chain[0].manifest, start, end, PIECE_BYTES);
    let state = state.clone();
    let metrics = state.metrics.clone();
    let stream = futures_util::stream::iter(pieces)
        .map(move |p| {
            let (state, chain) = (state.clone(), chain.clone());
            async move {
                fetch_piece(&state, chain, 0, p).await.map_err(|e| {
                    // The status line is gone; all we can do is cut the body short.
                    tracing::error!(error = %e, "download aborted");
                    io::Error::other(e.to_string())
                })
            }
        })
        .buffered(PIECES_IN_FLIGHT)
        .inspect_ok(move |b| {
            metrics.bytes_out.fetch_add(b.len() as u64, Relaxed);
        });
    Body::from_stream(stream)
}

/// A file's pointer followed by the pointers of the bases it decodes against (one clone
/// per request, so pieces share them).
fn base_chain(ptr: Arc<Pointer>) -> Vec<Arc<Pointer>> {
    let mut chain = vec![ptr];
    while let Some(b) = chain.last().and_then(|p| p.base.clone()) {
        chain.push(Arc::new(*b));
    }
    chain
}

/// Original bytes `start..end` of `chain[level]`, decoded whole (for a delta's base).
fn original_bytes(
    state: &AppState,
    chain: Arc<Vec<Arc<Pointer>>>,
    level: usize,
    start: u64,
    end: u64,
) -> futures_util::future::BoxFuture<'static, Result<Vec<u8>, ApiError>> {
    let state = state.clone();
    Box::pin(async move {
        let ptr = chain
            .get(level)
            .ok_or_else(|| ApiError::CorruptStorage("a delta without its base".into()))?;
        let pieces = plan_pieces(&ptr.manifest, start, end, PIECE_BYTES);
        let mut out = Vec::with_capacity((end - start) as usize);
        for p in pieces {
            out.extend_from_slice(&fetch_piece(&state, chain.clone(), level, p).await?);
        }
        Ok(out)
    })
}

/// The bytes of the base tensor that entry `idx` of `ptr` (a delta entry) was coded
/// against, over original range `range` of the entry.
async fn base_bytes(
    state: &AppState,
    chain: &Arc<Vec<Arc<Pointer>>>,
    level: usize,
    idx: usize,
    range: Range<u64>,
) -> Result<Vec<u8>, ApiError> {
    let e = &chain[level].manifest.entries[idx];
    let base = chain.get(level + 1).ok_or_else(|| {
        ApiError::CorruptStorage(format!("{} is a delta without a base", e.label()))
    })?;
    let be = e
        .name
        .as_deref()
        .and_then(|n| base.manifest.find_tensor(n))
        .map(|i| &base.manifest.entries[i])
        .filter(|be| {
            be.dtype == e.dtype && be.shape == e.shape && be.original_len() == e.original_len()
        })
        .ok_or_else(|| {
            ApiError::CorruptStorage(format!("the base has no counterpart of {}", e.label()))
        })?;
    let (b, en) = (
        be.original[0] + (range.start - e.original[0]),
        be.original[0] + (range.end - e.original[0]),
    );
    original_bytes(state, chain.clone(), level + 1, b, en).await
}

async fn fetch_piece(
    state: &AppState,
    chain: Arc<Vec<Arc<Pointer>>>,
    level: usize,
    p: Piece,
) -> Result<Bytes, ApiError> {
    let ptr = chain[level].clone();
    match p {
        Piece::Prefix(a, b) => {
            let base = CONTAINER_HEADER_LEN;
            state
                .storage
                .get_range(&ptr.blob, &ptr.segments, base + a..base + b)
                .await
        }
        Piece::Frames {
            entry,
            first,
            comp,
            decoded,
            skip,
            take,
        } => {
            let raw = state
                .storage
                .get_range(&ptr.blob, &ptr.segments, comp)
                .await?;
            let e = &ptr.manifest.entries[entry];
            let base = if e.delta {
                let ob = e.frame_original_range(first).0;
                Some(base_bytes(state, &chain, level, entry, ob..ob + decoded).await?)
            } else {
                None
            };
            let _slot = state
                .decode_slots
                .acquire()
                .await
                .map_err(|_| ApiError::ShuttingDown)?;
            let metrics = state.metrics.clone();
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let e = &ptr.manifest.entries[entry];
                // `decoded` comes from the validated manifest: at most one piece's frames.
                let mut out = Vec::with_capacity(decoded as usize);
                match &base {
                    Some(b) => decode_delta_frames(e, first, &raw, b, &mut out),
                    None => decode_entry_frames(e, first, &raw, &mut out),
                }
                .map_err(ApiError::stored)?;
                metrics.add_decode(t.elapsed());
                if out.len() as u64 != decoded {
                    return Err(ApiError::CorruptStorage(format!(
                        "{} decoded to the wrong length",
                        e.label()
                    )));
                }
                Ok(Bytes::from(out).slice(skip as usize..(skip + take) as usize))
            })
            .await
            .map_err(|e| ApiError::Internal(format!("decode task: {e}")))?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floatzip_codec::{compress_bytes, EncodeOptions, FzArchive};

    fn decode_pieces(fz: &[u8], m: &Manifest, pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        let prefix =
            &fz[CONTAINER_HEADER_LEN as usize..(CONTAINER_HEADER_LEN + m.prefix_len) as usize];
        for p in pieces {
            match p {
                Piece::Prefix(a, b) => out.extend_from_slice(&prefix[*a as usize..*b as usize]),
                Piece::Frames {
                    entry,
                    first,
                    comp,
                    decoded,
                    skip,
                    take,
                } => {
                    let mut buf = Vec::new();
                    decode_entry_frames(
                        &m.entries[*entry],
                        *first,
                        &fz[comp.start as usize..comp.end as usize],
                        &mut buf,
                    )
                    .unwrap();
                    assert_eq!(buf.len() as u64, *decoded);
                    out.extend_from_slice(&buf[*skip as usize..(*skip + *take) as usize]);
                }
            }
        }
        out
    }

    #[test]
    fn pieces_cover_exactly_the_range() {
        let mut json = String::from("{");
        let mut off = 0u64;
        for i in 0..5u64 {
            let n = 1000 + i * 777;
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!(
                "\"t{i}\":{{\"dtype\":\"BF16\",\"shape\":[{n}],\"data_offsets\":[{off},{}]}}",
                off + 2 * n
            ));
            off += 2 * n;
        }
        json.push('}');
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json.as_bytes());
        file.extend((0..off).map(|i| (i * 31 % 251) as u8));
        file.extend_from_slice(b"trailing");
        let opts = EncodeOptions {
            chunk_bytes: 512,
            ..EncodeOptions::default()
        };
        let (fz, m) = compress_bytes(&file, opts).unwrap();
        let ar = FzArchive::open(fz.clone()).unwrap();
        let n = file.len() as u64;
        for (s, e) in [
            (0, n),
            (0, 1),
            (5, 9000),
            (m.prefix_len, m.prefix_len + 1),
            (n - 3, n),
            (1234, 1235),
            (100, n - 100),
        ] {
            for target in [1, 512, 1500, 1 << 20] {
                let got = decode_pieces(&fz, &m, &plan_pieces(&m, s, e, target));
                assert_eq!(
                    got,
                    &file[s as usize..e as usize],
                    "{s}..{e} target {target}"
                );
                assert_eq!(got, ar.read_range(s, e).unwrap());
            }
        }
        assert!(plan_pieces(&m, 7, 7, 512).is_empty());
    }
}
