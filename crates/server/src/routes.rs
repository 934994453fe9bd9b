//! The router and its handlers. Handlers are thin: check access and names, load the
//! pointer, and hand over to [`crate::upload`] or [`crate::download`].
//!
//! A model's files are addressed by their path, nested or not:
//! `/v1/models/{org}/{name}/{path…}` with `path` = `config.json` or `onnx/model.onnx` (a
//! `%2F` is the same as a `/`). GET/HEAD of `{path}/manifest` and
//! `{path}/tensors/{tensor}` reach a file's manifest and tensors; nested paths cannot use
//! those two names, so the split is unambiguous ([`FileRequest`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::download::{self, Representation, IMMUTABLE, REVALIDATE};
use crate::error::ApiError;
use crate::names::{FileRequest, ModelFile};
use crate::storage::{blob_key, is_sha256_hex, ContainerSource, Pointer};
use crate::{upload, AppState};

/// Media type of `.fz` containers.
pub const FZ_MEDIA_TYPE: &str = "application/vnd.floatzip";
/// Media type of one tensor's compressed frames.
pub const FRAMES_MEDIA_TYPE: &str = "application/vnd.floatzip.frames";

/// Builds the application.
pub fn router(state: AppState) -> Router {
    let file_routes = Router::new()
        .route(
            "/v1/models/{org}/{name}/{*path}",
            get(get_path).put(put_file).delete(delete_file),
        )
        .layer(DefaultBodyLimit::disable()); // uploads stream and count their own bytes
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(list_models))
        .route("/v1/blobs/{blob}", get(get_blob))
        .merge(file_routes)
        .merge(crate::hub::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .with_state(state)
}

async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    st.metrics.request(&method, resp.status().as_u16());
    resp
}

async fn no_route(req: Request) -> ApiError {
    ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
}

async fn healthz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    st.storage.ping().await?;
    Ok(Json(json!({ "status": "ok" })))
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

/// The query parameters any route understands; others are an error.
#[derive(Default)]
struct Query {
    format: Option<String>,
    decoded: bool,
    sha256: Option<String>,
    /// Upload: code against this stored file (`org/name/path`).
    base: Option<String>,
}

fn parse_query(q: Option<String>) -> Result<Query, ApiError> {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match &*k {
            "format" => out.format = Some(v.into_owned()),
            "decoded" => out.decoded = matches!(&*v, "" | "1" | "true"),
            "sha256" => out.sha256 = Some(v.into_owned()),
            "base" => out.base = Some(v.into_owned()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    Ok(out)
}

fn model_file(
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<ModelFile, ApiError> {
    let Path((org, name, file)) = p.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    ModelFile::new(org, name, file)
}

async fn load(st: &AppState, f: &ModelFile) -> Result<Arc<Pointer>, ApiError> {
    st.storage
        .read_pointer(f)
        .await?
        .map(Arc::new)
        .ok_or_else(|| ApiError::NotFound(f.display()))
}

fn wants_container(q: &Query, headers: &HeaderMap) -> Result<bool, ApiError> {
    match q.format.as_deref() {
        Some("fz") => Ok(true),
        Some("original") => Ok(false),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unknown format {other:?}: use fz or original"
        ))),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',')
                    .any(|t| t.split(';').next().map(str::trim) == Some(FZ_MEDIA_TYPE))
            })),
    }
}

/// The `Content-Type` of a stored file's original bytes, by its name.
pub(crate) fn content_type_for(file: &str) -> &'static str {
    if file.ends_with(".json") {
        "application/json"
    } else if file.ends_with(".txt") || file.ends_with(".md") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// The container's representation through a name URL (`?format=fz`).
fn container_rep(p: &Pointer, cache_control: &'static str) -> Representation {
    Representation {
        len: p.container_size,
        etag: quoted(&p.container_sha256),
        content_type: FZ_MEDIA_TYPE,
        cache_control,
        extra: vec![
            (
                header::CONTENT_LOCATION,
                format!("/v1/blobs/{}.fz", p.container_sha256),
            ),
            (
                HeaderName::from_static("x-floatzip-original-sha256"),
                p.manifest.sha256.clone(),
            ),
            (
                HeaderName::from_static("x-floatzip-original-length"),
                p.manifest.original_size.to_string(),
            ),
        ],
    }
}

/// GET/HEAD of a file, its manifest or one of its tensors.
async fn get_path(
    State(st): State<AppState>,
    method: Method,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    st.auth.require_read(&headers)?;
    let Path((org, name, path)) = path.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    match FileRequest::parse(&path) {
        FileRequest::File(file) => {
            let f = ModelFile::new(org, name, file)?;
            get_file(&st, &method, &headers, f, parse_query(q)?).await
        }
        FileRequest::Manifest(file) => {
            get_manifest(&st, &method, &headers, ModelFile::new(org, name, file)?).await
        }
        FileRequest::Tensor(file, tensor) => {
            let f = ModelFile::new(org, name, file)?;
            get_tensor(&st, &method, &headers, f, tensor, parse_query(q)?).await
        }
    }
}

async fn get_file(
    st: &AppState,
    method: &Method,
    headers: &HeaderMap,
    f: ModelFile,
    q: Query,
) -> Result<Response, ApiError> {
    let ptr = load(st, &f).await?;
    let mut resp = if wants_container(&q, headers)? {
        let src = ptr.source();
        download::respond(method, headers, container_rep(&ptr, REVALIDATE), |s, e| {
            download::blob_body(st, src, s..e)
        })?
    } else {
        let rep = Representation {
            len: ptr.manifest.original_size,
            etag: quoted(&ptr.manifest.sha256),
            content_type: content_type_for(&f.file),
            cache_control: REVALIDATE,
            extra: vec![(
                HeaderName::from_static("x-floatzip-container-sha256"),
                ptr.container_sha256.clone(),
            )],
        };
        download::respond(method, headers, rep, |s, e| {
            download::original_body(st, ptr.clone(), s, e)
        })?
    };
    // The same URL serves the original or the container depending on Accept.
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(resp)
}

async fn put_file(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let checked = (|| {
        st.auth.require_write(&headers)?;
        let f = model_file(path)?;
        let q = parse_query(q)?;
        let declared = declared_digest(&q, &headers)?;
        let content_length = match headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))?,
            ),
        };
        let base = q.base.as_deref().map(parse_base).transpose()?;
        if st.tasks.is_closed() {
            return Err(ApiError::ShuttingDown);
        }
        Ok((f, declared, content_length, base))
    })();
    // Unless deferred, a successful upload records a Hub revision ([`crate::hub`]).
    let record = !headers.contains_key(crate::hub::DEFER_HEADER);
    let (f, declared, content_length, base) = match checked {
        Ok(v) => v,
        Err(e) => {
            // Read (a bounded part of) what the client is still sending, so it sees this
            // answer rather than a reset connection.
            upload::drain(body.into_data_stream()).await;
            return Err(e);
        }
    };
    // A tracked task: it finishes (or cleans up) even if this handler is dropped, and
    // shutdown waits for it.
    let st2 = st.clone();
    let task = st.tasks.spawn(async move {
        let (org, name) = (f.org.clone(), f.name.clone());
        let summary = upload::run(st2.clone(), f, declared, content_length, base, body).await?;
        let revision = match record {
            true => crate::hub::record_revision(&st2, &org, &name).await?,
            false => None,
        };
        Ok::<_, ApiError>((summary, revision))
    });
    let result = task
        .await
        .map_err(|e| ApiError::Internal(format!("upload task: {e}")))?;
    use std::sync::atomic::Ordering::Relaxed;
    match result {
        Ok((summary, revision)) => {
            st.metrics.uploads_ok.fetch_add(1, Relaxed);
            let status = if summary.replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let mut body =
                serde_json::to_value(&summary).map_err(|e| ApiError::Internal(e.to_string()))?;
            if let (Some(r), Some(o)) = (revision, body.as_object_mut()) {
                o.insert("revision".into(), r.into());
            }
            Ok((status, Json(body)).into_response())
        }
        Err(e) => {
            st.metrics.uploads_failed.fetch_add(1, Relaxed);
            Err(e)
        }
    }
}

/// `?base=org/name/path`: the stored file a delta upload is coded against.
fn parse_base(v: &str) -> Result<ModelFile, ApiError> {
    let mut parts = v.trim_start_matches('/').splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(org), Some(name), Some(path)) => {
            ModelFile::new(org.to_string(), name.to_string(), path.to_string())
        }
        _ => Err(ApiError::BadRequest(format!(
            "base {v:?} is not org/name/file"
        ))),
    }
}

/// The digest the client declares for the original, from `?sha256=HEX` or
/// `Repr-Digest: sha-256=:BASE64:` (RFC 9530); both must agree if both are given.
fn declared_digest(q: &Query, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let from_query = match &q.sha256 {
        None => None,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            if !is_sha256_hex(&h) {
                return Err(ApiError::BadRequest("sha256 must be 64 hex digits".into()));
            }
            Some(h)
        }
    };
    let from_header = match headers.get("repr-digest") {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Repr-Digest is not ASCII".into()))?;
            let b64 = v
                .split(',')
                .filter_map(|item| item.trim().split_once('='))
                .find(|(alg, _)| alg.trim().eq_ignore_ascii_case("sha-256"))
                .map(|(_, val)| val.trim().trim_matches(':'))
                .ok_or_else(|| ApiError::BadRequest("Repr-Digest has no sha-256 member".into()))?;
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .filter(|r| r.len() == 32)
                .ok_or_else(|| {
                    ApiError::BadRequest("Repr-Digest sha-256 is not 32 bytes of base64".into())
                })?;
            Some(hex::encode(raw))
        }
    };
    match (from_query, from_header) {
        (Some(a), Some(b)) if a != b => Err(ApiError::BadRequest(
            "?sha256 and Repr-Digest disagree".into(),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

async fn delete_file(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    st.auth.require_write(&headers)?;
    let f = model_file(path)?;
    let ptr = load(&st, &f).await?;
    if !st.storage.delete_pointer(&f).await? {
        return Err(ApiError::NotFound(f.display()));
    }
    crate::hub::record_revision(&st, &f.org, &f.name).await?;
    st.storage.collect_blob(&ptr.blob).await?;
    tracing::info!(path = %f.display(), "deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn get_manifest(
    st: &AppState,
    method: &Method,
    headers: &HeaderMap,
    f: ModelFile,
) -> Result<Response, ApiError> {
    let p = load(st, &f).await?;
    let body = serde_json::to_vec(&json!({
        "path": f.display(),
        "original_size": p.manifest.original_size,
        "sha256": p.manifest.sha256,
        "container": {
            "sha256": p.container_sha256,
            "size": p.container_size,
            "url": format!("/v1/blobs/{}.fz", p.container_sha256),
            // Bytes shared with files stored before this one (deduplicated tensors).
            "shared_bytes": p.shared_bytes,
            "segments": p.segments.len(),
        },
        "ratio": p.ratio(),
        "uploaded_at": p.uploaded_at,
        // A delta: the file its tensors are decoded against (and how many bases deep).
        "delta_base": p.base.as_ref().map(|b| json!({
            "path": format!("{}/{}/{}", b.org, b.name, b.file),
            "sha256": b.manifest.sha256,
            "chain": p.chain_len(),
        })),
        "manifest": p.manifest,
    }))
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let rep = Representation {
        len: body.len() as u64,
        etag: quoted(&format!("{}-manifest", p.container_sha256)),
        content_type: "application/json",
        cache_control: REVALIDATE,
        extra: vec![],
    };
    let body = bytes::Bytes::from(body);
    download::respond(method, headers, rep, |s, e| {
        Body::from(body.slice(s as usize..e as usize))
    })
}

async fn get_tensor(
    st: &AppState,
    method: &Method,
    headers: &HeaderMap,
    f: ModelFile,
    tensor: String,
    q: Query,
) -> Result<Response, ApiError> {
    let p = load(st, &f).await?;
    let idx = p
        .manifest
        .find_tensor(&tensor)
        .ok_or(ApiError::UnknownTensor(tensor))?;
    let e = &p.manifest.entries[idx];
    let mut extra = vec![
        (HeaderName::from_static("x-floatzip-dtype"), e.dtype.clone()),
        (
            HeaderName::from_static("x-floatzip-shape"),
            serde_json::to_string(&e.shape).unwrap_or_default(),
        ),
        (
            HeaderName::from_static("x-floatzip-original-length"),
            e.original_len().to_string(),
        ),
        (
            HeaderName::from_static("x-floatzip-original-sha256"),
            e.blake3.clone(),
        ),
    ];
    if q.decoded {
        let rep = Representation {
            len: e.original_len(),
            etag: quoted(&e.blake3),
            content_type: "application/octet-stream",
            cache_control: REVALIDATE,
            extra,
        };
        let base = e.original[0];
        return download::respond(method, headers, rep, |s, en| {
            download::original_body(st, p.clone(), base + s, base + en)
        });
    }
    extra.push((
        HeaderName::from_static("x-floatzip-chunk-bytes"),
        e.chunk_bytes.to_string(),
    ));
    extra.push((
        HeaderName::from_static("x-floatzip-first-frame"),
        "0".into(),
    ));
    let rep = Representation {
        len: e.compressed_len(),
        etag: quoted(&format!("{}-{idx}", p.container_sha256)),
        content_type: FRAMES_MEDIA_TYPE,
        cache_control: REVALIDATE,
        extra,
    };
    let (base, src) = (e.compressed[0], p.source());
    download::respond(method, headers, rep, |s, en| {
        download::blob_body(st, src, base + s..base + en)
    })
}

async fn get_blob(
    State(st): State<AppState>,
    method: Method,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    st.auth.require_read(&headers)?;
    let Path(blob) = path.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    let sha = blob
        .strip_suffix(".fz")
        .filter(|s| is_sha256_hex(s))
        .ok_or_else(|| {
            ApiError::InvalidName("a blob is named by its SHA-256: {64 hex digits}.fz".into())
        })?;
    let key = blob_key(sha);
    let (len, segments) = match st.storage.blob_size(&key).await? {
        Some(len) => (len, Vec::new()),
        None => {
            let index = st
                .storage
                .read_index(sha)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("blob {blob}")))?;
            (index.segments.iter().map(|s| s.len).sum(), index.segments)
        }
    };
    let src = ContainerSource {
        blob: key,
        segments: std::sync::Arc::new(segments),
    };
    let rep = Representation {
        len,
        etag: quoted(sha),
        content_type: FZ_MEDIA_TYPE,
        cache_control: IMMUTABLE,
        extra: vec![],
    };
    download::respond(&method, &headers, rep, |s, e| {
        download::blob_body(&st, src, s..e)
    })
}

async fn list_models(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    st.auth.require_read(&headers)?;
    let ptrs = st.storage.list_pointers().await?;
    let (mut orig, mut stored) = (0u64, 0u64);
    // What the store holds once: each segment (or unsegmented container) counted once.
    let mut unique = std::collections::HashMap::new();
    let files: Vec<_> = ptrs
        .iter()
        .map(|p| {
            orig += p.manifest.original_size;
            stored += p.container_size;
            if p.segments.is_empty() {
                unique.insert(p.container_sha256.clone(), p.container_size);
            }
            for s in &p.segments {
                unique.insert(s.sha256.clone(), s.len);
            }
            json!({
                "org": p.org, "name": p.name, "file": p.file,
                "url": format!("/v1/models/{}/{}/{}", p.org, p.name, p.file),
                "original_size": p.manifest.original_size,
                "stored_size": p.container_size,
                "ratio": p.ratio(),
                "sha256": p.manifest.sha256,
                "tensors": p.manifest.entries.iter().filter(|e| e.name.is_some()).count(),
                "uploaded_at": p.uploaded_at,
            })
        })
        .collect();
    Ok(Json(json!({
        "files": files,
        "total_original_size": orig,
        "total_stored_size": stored,
        // Bytes the store holds for these files: shared tensors counted once.
        "total_unique_stored_size": unique.values().sum::<u64>(),
        "ratio": crate::storage::ratio(stored, orig),
    })))
}
