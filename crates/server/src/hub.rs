//! A read-only Hugging Face Hub mirror: `HF_ENDPOINT=http://floatzip:PORT hf download
//! org/name` works against this server, for model repos.
//!
//! Revisions live next to the per-file pointers ([`crate::storage`]):
//!
//! ```text
//! repos/{org}/{name}/refs/main                     the newest revision id (text)
//! repos/{org}/{name}/revisions/{id}.json           immutable: the files of the repo then
//! repos/{org}/{name}/files/{container sha256}.json copy of a file's pointer (immutable)
//! ```
//! A revision is a snapshot of the repo's current pointers; its id is the first 40 hex
//! digits of the SHA-256 of its parent id and its file list (a content hash shaped like a
//! git commit id). Every successful upload or delete of a file records one (unless the
//! upload asks to defer with [`DEFER_HEADER`]; `POST /v1/repos/{org}/{name}/commit` then
//! records it, which is how `floatzip push-dir` makes one revision of a whole folder). A
//! snapshot equal to the newest revision records nothing. Pointer copies keep their blobs
//! alive: [`blob_in_revisions`] is consulted before a blob is deleted, so old revisions
//! stay downloadable. Deleting the last file of a repo deletes the repo with all its
//! revisions (and the blobs only they used); single old revisions cannot be deleted yet.
//!
//! Routes (the subset of the Hub protocol `huggingface_hub` uses to download):
//! - `GET /api/models/{org}/{name}` and `…/revision/{rev}`: `sha` and `siblings` (every
//!   file, `rfilename` = its full path, e.g. `1_Pooling/config.json`)
//! - `GET /api/models/{org}/{name}/tree/{rev}[/{folder}]`: the folder's files and
//!   sub-folders (`"type": "file" | "directory"`, full paths); `?recursive=true` lists the
//!   whole sub-tree, as `snapshot_download` asks (huggingface_hub 1.x/2.x read the file
//!   list from here, not from `siblings`). One page; `expand`, `cursor` and `limit` are
//!   ignored.
//! - `GET|HEAD /{org}/{name}/resolve/{rev}/{path}`: the original bytes, with Range,
//!   `ETag` = `X-Linked-Etag` = the file's SHA-256, `X-Linked-Size`, `X-Repo-Commit`
//! - 404s carry `X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`.
//!
//! Files may sit in folders: their names are the nested paths of [`crate::names`], as
//! uploaded with `PUT /v1/models/{org}/{name}/{folder}/{file}`.
//!
//! Within one server, revisions are recorded one at a time (a process-wide lock); two
//! replicas recording revisions of the same repo at the same moment may lose one of them
//! (its files are still served by the next revision recorded).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::download::{self, Representation, IMMUTABLE, REVALIDATE};
use crate::error::ApiError;
use crate::names::{check_segment, ModelFile};
use crate::storage::{is_sha256_hex, Pointer, Storage, MAX_POINTER_BYTES};
use crate::AppState;

/// Request header with which an upload (`PUT /v1/models/{org}/{name}/{file}`) asks not to
/// record a revision; a later `POST /v1/repos/{org}/{name}/commit` records one.
pub const DEFER_HEADER: &str = "x-floatzip-defer-revision";

/// Largest revision object read.
const MAX_REVISION_BYTES: u64 = 64 << 20;

/// One revision of a repo: which files it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// Layout version of this object.
    pub version: u32,
    /// The revision id: 40 lowercase hex digits.
    pub id: String,
    /// The revision this one was made from, if any.
    pub parent: Option<String>,
    /// Unix time it was recorded, seconds.
    pub created_at: u64,
    /// The files, by name.
    pub files: BTreeMap<String, RevisionFile>,
}

/// One file of a revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevisionFile {
    /// SHA-256 of the container (names the pointer copy and the blob).
    pub container_sha256: String,
    /// SHA-256 of the original bytes.
    pub sha256: String,
    /// Size of the original bytes.
    pub size: u64,
}

/// Whether `s` is a revision id (40 lowercase hex digits).
pub fn is_revision_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn repo_prefix(org: &str, name: &str) -> String {
    format!("repos/{org}/{name}")
}

fn main_ref_key(org: &str, name: &str) -> StorePath {
    StorePath::from(format!("{}/refs/main", repo_prefix(org, name)))
}

fn revision_key(org: &str, name: &str, id: &str) -> StorePath {
    StorePath::from(format!("{}/revisions/{id}.json", repo_prefix(org, name)))
}

fn file_key(org: &str, name: &str, container_sha256: &str) -> StorePath {
    StorePath::from(format!(
        "{}/files/{container_sha256}.json",
        repo_prefix(org, name)
    ))
}

/// Reads a small object, `None` if it does not exist.
async fn read_small(
    storage: &Storage,
    key: &StorePath,
    cap: u64,
) -> Result<Option<bytes::Bytes>, ApiError> {
    let got = match storage.object_store().get(key).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if got.meta.size > cap {
        return Err(ApiError::CorruptStorage(format!(
            "{key} is {} bytes",
            got.meta.size
        )));
    }
    Ok(Some(got.bytes().await?))
}

async fn put_json<T: Serialize>(storage: &Storage, key: &StorePath, v: &T) -> Result<(), ApiError> {
    let body = serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?;
    storage
        .object_store()
        .put(key, PutPayload::from(body))
        .await?;
    Ok(())
}

/// The newest revision id of a repo, `None` if the repo has no revision.
pub async fn main_revision(
    storage: &Storage,
    org: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let Some(b) = read_small(storage, &main_ref_key(org, name), 1024).await? else {
        return Ok(None);
    };
    let id = std::str::from_utf8(&b)
        .map(str::trim)
        .ok()
        .filter(|s| is_revision_id(s))
        .ok_or_else(|| ApiError::CorruptStorage(format!("refs/main of {org}/{name}")))?;
    Ok(Some(id.to_string()))
}

/// A stored revision, `None` if there is none with this id.
pub async fn read_revision(
    storage: &Storage,
    org: &str,
    name: &str,
    id: &str,
) -> Result<Option<Revision>, ApiError> {
    if !is_revision_id(id) {
        return Ok(None);
    }
    let key = revision_key(org, name, id);
    let Some(b) = read_small(storage, &key, MAX_REVISION_BYTES).await? else {
        return Ok(None);
    };
    let r: Revision = serde_json::from_slice(&b)
        .map_err(|e| ApiError::CorruptStorage(format!("revision {key}: {e}")))?;
    if r.id != id {
        return Err(ApiError::CorruptStorage(format!(
            "revision {key} names itself {}",
            r.id
        )));
    }
    Ok(Some(r))
}

/// The pointer copy of one file of a revision.
async fn read_file_pointer(
    storage: &Storage,
    org: &str,
    name: &str,
    f: &RevisionFile,
) -> Result<Pointer, ApiError> {
    let key = file_key(org, name, &f.container_sha256);
    let b = read_small(storage, &key, MAX_POINTER_BYTES)
        .await?
        .ok_or_else(|| ApiError::CorruptStorage(format!("{key} is missing")))?;
    let p: Pointer = serde_json::from_slice(&b)
        .map_err(|e| ApiError::CorruptStorage(format!("pointer {key}: {e}")))?;
    p.validate()?;
    if p.manifest.sha256 != f.sha256 || p.manifest.original_size != f.size {
        return Err(ApiError::CorruptStorage(format!(
            "pointer {key} disagrees with its revision"
        )));
    }
    Ok(p)
}

fn commit_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// Records a revision of `org/name` holding the repo's current files, and points `main`
/// at it; returns its id (the current one if nothing changed). `None` when the repo has
/// no files and never had a revision.
pub async fn record_revision(
    st: &AppState,
    org: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let storage = &st.storage;
    let _guard = commit_lock().lock().await;
    let prefix = StorePath::from(format!("models/{org}/{name}"));
    let keys: Vec<StorePath> = storage
        .object_store()
        .list(Some(&prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let mut files = BTreeMap::new();
    let dir = format!("models/{org}/{name}/");
    for k in keys {
        let Some(file) = k
            .as_ref()
            .strip_prefix(&dir)
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        let Ok(mf) = ModelFile::new(org.to_string(), name.to_string(), file.to_string()) else {
            continue;
        };
        let Some(p) = storage.read_pointer(&mf).await? else {
            continue; // deleted meanwhile
        };
        let fk = file_key(org, name, &p.container_sha256);
        match storage.object_store().head(&fk).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => put_json(storage, &fk, &p).await?,
            Err(e) => return Err(e.into()),
        }
        files.insert(
            mf.file,
            RevisionFile {
                container_sha256: p.container_sha256.clone(),
                sha256: p.manifest.sha256.clone(),
                size: p.manifest.original_size,
            },
        );
    }
    let parent = main_revision(storage, org, name).await?;
    if files.is_empty() {
        // Every file is deleted: so is the repo, with its history.
        if parent.is_some() {
            purge_repo(storage, org, name).await?;
        }
        return Ok(None);
    }
    if let Some(pid) = &parent {
        if let Some(prev) = read_revision(storage, org, name, pid).await? {
            if prev.files == files {
                return Ok(Some(pid.clone()));
            }
        }
    }
    let digest = Sha256::digest(
        serde_json::to_vec(&json!({ "parent": parent, "files": files }))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let id = hex::encode(digest)[..40].to_string();
    let rev = Revision {
        version: 1,
        id: id.clone(),
        parent,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        files,
    };
    put_json(storage, &revision_key(org, name, &id), &rev).await?;
    storage
        .object_store()
        .put(&main_ref_key(org, name), PutPayload::from(id.clone()))
        .await?;
    tracing::info!(repo = %format!("{org}/{name}"), revision = %id, files = rev.files.len(), "revision recorded");
    Ok(Some(id))
}

/// Deletes a repo's revisions (`main` first, so it is gone at once), then its pointer
/// copies, then the blobs nothing else uses.
async fn purge_repo(storage: &Storage, org: &str, name: &str) -> Result<(), ApiError> {
    let store = storage.object_store();
    match store.delete(&main_ref_key(org, name)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let keys: Vec<StorePath> = store
        .list(Some(&StorePath::from(repo_prefix(org, name))))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let mut blobs = Vec::new();
    for k in keys {
        if let Some(sha) = k
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
            .filter(|s| is_sha256_hex(s) && k.as_ref().contains("/files/"))
        {
            blobs.push(crate::storage::blob_key(sha));
        }
        match store.delete(&k).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for b in blobs {
        storage.collect_blob(&b).await?;
    }
    tracing::info!(repo = %format!("{org}/{name}"), "repo deleted with its history");
    Ok(())
}

/// Whether a pointer copy of any revision refers to `blob` (a `blobs/{sha256}.fz` key),
/// as its own container or as a delta base it decodes against.
pub async fn blob_in_revisions(storage: &Storage, blob: &str) -> Result<bool, ApiError> {
    let Some(sha) = blob
        .strip_prefix("blobs/")
        .and_then(|b| b.strip_suffix(".fz"))
    else {
        return Ok(false);
    };
    let suffix = format!("/files/{sha}.json");
    let keys: Vec<StorePath> = storage
        .object_store()
        .list(Some(&StorePath::from("repos")))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    if keys.iter().any(|k| k.as_ref().ends_with(&suffix)) {
        return Ok(true);
    }
    // Delta files keep their bases: those are only found by reading the copies (one
    // read per stored revision file, on deletes only).
    for k in keys.iter().filter(|k| k.as_ref().contains("/files/")) {
        if let Some(p) = storage.read_pointer_at(k).await? {
            if p.uses_blob(blob) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A failure answered the way `huggingface_hub` understands: the [`ApiError`] response
/// plus `X-Error-Code` (and `X-Repo-Commit` when known).
pub struct HubError {
    code: Option<&'static str>,
    commit: Option<String>,
    err: ApiError,
}

impl From<ApiError> for HubError {
    fn from(err: ApiError) -> Self {
        HubError {
            code: None,
            commit: None,
            err,
        }
    }
}

impl HubError {
    fn repo(org: &str, name: &str) -> HubError {
        HubError {
            code: Some("RepoNotFound"),
            commit: None,
            err: ApiError::NotFound(format!("repository {org}/{name}")),
        }
    }
    fn revision(org: &str, name: &str, rev: &str) -> HubError {
        HubError {
            code: Some("RevisionNotFound"),
            commit: None,
            err: ApiError::NotFound(format!("revision {rev} of {org}/{name}")),
        }
    }
    fn entry(org: &str, name: &str, rev: &Revision, file: &str) -> HubError {
        HubError {
            code: Some("EntryNotFound"),
            commit: Some(rev.id.clone()),
            err: ApiError::NotFound(format!("{file} in {org}/{name} at revision {}", rev.id)),
        }
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let message = self.err.to_string();
        let mut resp = self.err.into_response();
        let h = resp.headers_mut();
        if let Some(code) = self.code {
            h.insert("x-error-code", HeaderValue::from_static(code));
            if let Ok(v) = HeaderValue::from_str(&message) {
                h.insert("x-error-message", v);
            }
        }
        if let Some(c) = self.commit.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert("x-repo-commit", c);
        }
        resp
    }
}

/// The Hub routes, to merge into [`crate::routes::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/models/{org}/{name}", get(model_info))
        .route(
            "/api/models/{org}/{name}/revision/{rev}",
            get(model_info_at),
        )
        .route("/api/models/{org}/{name}/tree/{rev}", get(tree))
        .route(
            "/api/models/{org}/{name}/tree/{rev}/{*path}",
            get(tree_under),
        )
        .route("/{org}/{name}/resolve/{rev}/{*path}", get(resolve))
        .route("/v1/repos/{org}/{name}/commit", post(commit))
}

fn repo_names(org: &str, name: &str) -> Result<(), ApiError> {
    check_segment("org", org)?;
    check_segment("model name", name)
}

/// Resolves `rev` (`main` or a revision id) of an existing repo.
async fn resolve_revision(
    st: &AppState,
    org: &str,
    name: &str,
    rev: &str,
) -> Result<Revision, HubError> {
    repo_names(org, name)?;
    let main = main_revision(&st.storage, org, name)
        .await?
        .ok_or_else(|| HubError::repo(org, name))?;
    let id = if rev == "main" { main.as_str() } else { rev };
    read_revision(&st.storage, org, name, id)
        .await?
        .ok_or_else(|| HubError::revision(org, name, rev))
}

fn path3(
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<(String, String, String), ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::InvalidName(e.body_text()))
}

/// The entries of a revision as `siblings` of the model-info JSON.
fn info_json(org: &str, name: &str, rev: &Revision) -> serde_json::Value {
    let siblings: Vec<_> = rev
        .files
        .iter()
        .map(|(path, f)| {
            json!({
                "rfilename": path,
                "size": f.size,
                "blobId": &f.sha256[..40],
                "lfs": { "sha256": f.sha256, "size": f.size, "pointerSize": 134 },
            })
        })
        .collect();
    json!({
        "_id": format!("{org}/{name}"),
        "id": format!("{org}/{name}"),
        "modelId": format!("{org}/{name}"),
        "author": org,
        "sha": rev.id,
        "private": false,
        "disabled": false,
        "gated": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
    })
}

async fn model_info(
    State(st): State<AppState>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, HubError> {
    st.auth.require_read(&headers)?;
    let Path((org, name)) = p.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    let rev = resolve_revision(&st, &org, &name, "main").await?;
    Ok(Json(info_json(&org, &name, &rev)))
}

async fn model_info_at(
    State(st): State<AppState>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, HubError> {
    st.auth.require_read(&headers)?;
    let (org, name, rev) = path3(p)?;
    let rev = resolve_revision(&st, &org, &name, &rev).await?;
    Ok(Json(info_json(&org, &name, &rev)))
}

/// Whether a tree query asks for the whole sub-tree (`recursive=true`; Python clients
/// send `True`). Other parameters are the Hub's paging and detail knobs, ignored here.
fn wants_recursive(q: Option<&str>) -> bool {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "recursive" && matches!(&*v, "true" | "True" | "1"))
}

/// The tree listing of folder `dir` (`""` = the root) of `rev`: its files and folders
/// with full paths, sorted by path; direct children only unless `recursive`. `None` if
/// `dir` is not a folder of the revision.
fn tree_json(rev: &Revision, dir: &str, recursive: bool) -> Option<serde_json::Value> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    // Folder path → hash of the (path, digest) of every file below it: a stable oid
    // that changes whenever the folder's content does, as a git tree id would.
    let mut folders: BTreeMap<String, Sha256> = BTreeMap::new();
    let mut entries: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (path, f) in rev.files.range(prefix.clone()..) {
        let Some(rest) = path.strip_prefix(&prefix) else {
            break; // sorted: nothing further shares the prefix
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let shown_folders = if recursive { parts.len() - 1 } else { 1 };
        for depth in 1..parts.len() {
            if depth > shown_folders {
                break;
            }
            let folder = format!("{prefix}{}", parts[..depth].join("/"));
            let h = folders.entry(folder).or_default();
            h.update(path.as_bytes());
            h.update([0]);
            h.update(f.sha256.as_bytes());
        }
        if parts.len() == 1 || recursive {
            entries.insert(
                path.clone(),
                json!({
                    "type": "file",
                    "oid": &f.sha256[..40],
                    "size": f.size,
                    "path": path,
                    "lfs": { "oid": f.sha256, "size": f.size, "pointerSize": 134 },
                }),
            );
        }
    }
    if !dir.is_empty() && entries.is_empty() && folders.is_empty() {
        return None;
    }
    for (path, h) in folders {
        let oid = hex::encode(h.finalize())[..40].to_string();
        entries.insert(
            path.clone(),
            json!({ "type": "directory", "oid": oid, "size": 0, "path": path }),
        );
    }
    Some(serde_json::Value::Array(entries.into_values().collect()))
}

async fn tree(
    State(st): State<AppState>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<serde_json::Value>, HubError> {
    st.auth.require_read(&headers)?;
    let (org, name, rev) = path3(p)?;
    let rev = resolve_revision(&st, &org, &name, &rev).await?;
    let listing = tree_json(&rev, "", wants_recursive(q.as_deref()))
        .ok_or_else(|| ApiError::Internal("the root is always a folder".into()))?;
    Ok(Json(listing))
}

async fn tree_under(
    State(st): State<AppState>,
    headers: HeaderMap,
    p: Result<Path<(String, String, String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<serde_json::Value>, HubError> {
    st.auth.require_read(&headers)?;
    let Path((org, name, rev, dir)) = p.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    let rev = resolve_revision(&st, &org, &name, &rev).await?;
    let dir = dir.trim_end_matches('/');
    tree_json(&rev, dir, wants_recursive(q.as_deref()))
        .map(Json)
        .ok_or_else(|| HubError::entry(&org, &name, &rev, dir))
}

async fn resolve(
    State(st): State<AppState>,
    method: Method,
    headers: HeaderMap,
    p: Result<Path<(String, String, String, String)>, PathRejection>,
) -> Result<Response, HubError> {
    st.auth.require_read(&headers)?;
    let Path((org, name, rev_name, file)) = p.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    let rev = resolve_revision(&st, &org, &name, &rev_name).await?;
    let entry = rev
        .files
        .get(&file)
        .ok_or_else(|| HubError::entry(&org, &name, &rev, &file))?;
    let ptr = Arc::new(read_file_pointer(&st.storage, &org, &name, entry).await?);
    if !is_sha256_hex(&ptr.manifest.sha256) {
        return Err(ApiError::CorruptStorage(format!("digest of {file}")).into());
    }
    let rep = Representation {
        len: ptr.manifest.original_size,
        etag: format!("\"{}\"", ptr.manifest.sha256),
        content_type: crate::routes::content_type_for(&file),
        // A revision id names immutable content; `main` moves.
        cache_control: if rev_name == rev.id {
            IMMUTABLE
        } else {
            REVALIDATE
        },
        extra: vec![
            (HeaderName::from_static("x-repo-commit"), rev.id.clone()),
            (
                HeaderName::from_static("x-linked-etag"),
                format!("\"{}\"", ptr.manifest.sha256),
            ),
            (
                HeaderName::from_static("x-linked-size"),
                ptr.manifest.original_size.to_string(),
            ),
        ],
    };
    let resp = download::respond(&method, &headers, rep, |s, e| {
        download::original_body(&st, ptr.clone(), s, e)
    })?;
    Ok(resp)
}

async fn commit(
    State(st): State<AppState>,
    headers: HeaderMap,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    st.auth.require_write(&headers)?;
    let Path((org, name)) = p.map_err(|e| ApiError::InvalidName(e.body_text()))?;
    repo_names(&org, &name)?;
    let id = record_revision(&st, &org, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{org}/{name} has no files to commit")))?;
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "repo": format!("{org}/{name}"), "revision": id })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_ids() {
        assert!(is_revision_id(&"a".repeat(40)));
        assert!(!is_revision_id("main"));
        assert!(!is_revision_id(&"A".repeat(40)));
        assert!(!is_revision_id(&"a".repeat(41)));
    }

    fn rev_of(paths: &[&str]) -> Revision {
        let files = paths
            .iter()
            .map(|p| {
                let sha = hex::encode(Sha256::digest(p.as_bytes()));
                let f = RevisionFile {
                    container_sha256: sha.clone(),
                    sha256: sha,
                    size: p.len() as u64,
                };
                (p.to_string(), f)
            })
            .collect();
        Revision {
            version: 1,
            id: "a".repeat(40),
            parent: None,
            created_at: 0,
            files,
        }
    }

    fn listed(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["path"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn trees_list_folders_and_files() {
        let rev = rev_of(&["a", "a0.txt", "b/c.json", "b/d/e.bin", "config.json"]);
        let root = tree_json(&rev, "", false).unwrap();
        assert_eq!(
            listed(&root),
            ["file a", "file a0.txt", "directory b", "file config.json"]
        );
        let all = tree_json(&rev, "", true).unwrap();
        assert_eq!(
            listed(&all),
            [
                "file a",
                "file a0.txt",
                "directory b",
                "file b/c.json",
                "directory b/d",
                "file b/d/e.bin",
                "file config.json"
            ]
        );
        let b = tree_json(&rev, "b", false).unwrap();
        assert_eq!(listed(&b), ["file b/c.json", "directory b/d"]);
        assert!(tree_json(&rev, "a", false).is_none());
        assert!(tree_json(&rev, "nope", true).is_none());
        // A folder's oid follows its content.
        let other = rev_of(&["a", "b/c.json", "b/d/e2.bin"]);
        let oid = |v: &serde_json::Value| {
            v.as_array()
                .unwrap()
                .iter()
                .find(|e| e["path"] == "b")
                .unwrap()["oid"]
                .clone()
        };
        assert_ne!(oid(&root), oid(&tree_json(&other, "", false).unwrap()));
        assert!(wants_recursive(Some("recursive=True&expand=False")));
        assert!(!wants_recursive(Some("recursive=False")));
        assert!(!wants_recursive(None));
    }
}
