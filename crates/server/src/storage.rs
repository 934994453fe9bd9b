//! Where models live: any `object_store` backend, laid out so that the server keeps no
//! state of its own and several replicas can serve one bucket.
//!
//! ```text
//! blobs/{sha256 of the container}.fz        immutable, content-addressed .fz containers
//! models/{org}/{name}/{path}.json           pointer: blob key, digests, sizes, Manifest
//! ```
//! `{path}` is the file's path in the model, nested paths included
//! (`models/o/n/onnx/model.onnx.json`). The key is the path plus `.json`, so distinct paths
//! have distinct keys, and since no folder segment may end in `.json`
//! ([`crate::names`]) no pointer key is ever a folder of another key (file `x` is
//! `x.json`; a folder `x.json/` cannot exist).
//!
//! Uploads store their container as content-addressed segments instead of one blob, so
//! that tensors shared between files are stored once ([`crate::segments`]); a pointer
//! with segments reads from them, one without from `blobs/{sha}.fz`.
//! An upload stores its blob first and its pointer last; object stores replace an object
//! atomically, so a reader sees the old pointer or the new one, never a half. Blobs are
//! never modified, so anything read through a pointer stays valid while it is read.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::config::StorageConfig;
use crate::error::ApiError;
use crate::names::ModelFile;
use crate::segments::{index_key, locate, segment_key, Index, Segment, MAX_INDEX_BYTES};
use crate::StartError;
use floatzip_codec::Manifest;

/// Largest pointer object read; bounds the one allocation sized by the store's metadata.
pub const MAX_POINTER_BYTES: u64 = 512 << 20;

/// Bytes per part when copying a staged container into the store (S3 multipart minimum
/// is 5 MiB).
const UPLOAD_PART_BYTES: usize = 16 << 20;

/// Bytes per read when streaming a blob from a local file.
const LOCAL_READ_BYTES: u64 = 1 << 20;

/// Streams `range` of a local file in pieces of [`LOCAL_READ_BYTES`], each read on the
/// blocking pool; stops at the first error.
#[cfg(unix)]
fn local_file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let file = Arc::new(file);
    futures_util::stream::unfold(Some(range.start), move |pos| {
        let file = file.clone();
        async move {
            let pos = pos.filter(|&p| p < range.end)?;
            let len = (range.end - pos).min(LOCAL_READ_BYTES);
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            let next = read.is_ok().then_some(pos + len);
            Some((read, next))
        }
    })
    .boxed()
}

/// The per-file pointer object: which blob holds the file, and its manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// Layout version of this object.
    pub version: u32,
    /// Organisation.
    pub org: String,
    /// Model name.
    pub name: String,
    /// File name.
    pub file: String,
    /// Storage key of the container.
    pub blob: String,
    /// SHA-256 of the container, hex (also the blob's name).
    pub container_sha256: String,
    /// Container size in bytes.
    pub container_size: u64,
    /// Unix time of the upload, seconds.
    pub uploaded_at: u64,
    /// The container's manifest (holds the original's size and SHA-256).
    pub manifest: Manifest,
    /// The container's segments, in order, when it is stored as segments (a copy of its
    /// [`crate::segments::Index`]); empty when it is the one object `blob`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
    /// Container bytes that were already in the store when this file was uploaded
    /// (segments shared with other files), so they cost nothing here.
    #[serde(default)]
    pub shared_bytes: u64,
    /// For a delta (uploaded with `?base=`): the pointer of the base file as it was then,
    /// which the container's delta tensors are decoded against (its own `base` too, down
    /// to a standalone root; at most [`MAX_BASE_CHAIN`] long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<Pointer>>,
}

/// Longest chain of delta bases: an upload against a base already this deep is stored
/// standalone (it re-bases: later deltas can use it as their root).
pub const MAX_BASE_CHAIN: usize = 4;

/// Where a container's bytes are: one object, or segments in order.
#[derive(Debug, Clone)]
pub struct ContainerSource {
    /// The single-object key (used when `segments` is empty).
    pub blob: String,
    /// The segments, in container order.
    pub segments: Arc<Vec<Segment>>,
}

impl Pointer {
    /// Checks that the pointer is consistent with itself, so that every index and length
    /// later taken from its manifest is in bounds.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: &str| {
            Err(ApiError::CorruptStorage(format!(
                "pointer for {}/{}/{}: {m}",
                self.org, self.name, self.file
            )))
        };
        if !is_sha256_hex(&self.container_sha256) || self.blob != blob_key(&self.container_sha256) {
            return bad("blob key and container digest disagree");
        }
        match (&self.base, &self.manifest.base) {
            (None, None) => {}
            (Some(b), Some(r)) if b.manifest.sha256 == r.sha256 => {
                if b.chain_len() >= MAX_BASE_CHAIN {
                    return bad("base chain too long");
                }
                b.validate()?;
            }
            _ => return bad("base and manifest disagree"),
        }
        if !self.segments.is_empty() {
            let total = self
                .segments
                .iter()
                .try_fold(0u64, |t, s| t.checked_add(s.len));
            if total != Some(self.container_size)
                || self.segments.iter().any(|s| !is_sha256_hex(&s.sha256))
            {
                return bad("segments do not make up the container");
            }
        }
        let m = &self.manifest;
        let frames_end = m
            .entries
            .last()
            .map_or(m.frames_offset, |e| e.compressed[1]);
        m.validate(frames_end).map_err(ApiError::stored)?;
        if frames_end >= self.container_size {
            return bad("frames run past the container");
        }
        Ok(())
    }

    /// How many bases this file's decoding goes through (0 for a standalone file).
    pub fn chain_len(&self) -> usize {
        let mut n = 0;
        let mut p = self;
        while let Some(b) = &p.base {
            n += 1;
            p = b;
        }
        n
    }

    /// Whether this file or any base it decodes against is stored in `blob`.
    pub fn uses_blob(&self, blob: &str) -> bool {
        self.blob == blob || self.base.as_ref().is_some_and(|b| b.uses_blob(blob))
    }

    /// Where this file's container is.
    pub fn source(&self) -> ContainerSource {
        ContainerSource {
            blob: self.blob.clone(),
            segments: Arc::new(self.segments.clone()),
        }
    }

    /// Stored bytes over original bytes.
    pub fn ratio(&self) -> f64 {
        ratio(self.container_size, self.manifest.original_size)
    }
}

/// `stored / original`, 0 for an empty original.
pub fn ratio(stored: u64, original: u64) -> f64 {
    if original == 0 {
        0.0
    } else {
        stored as f64 / original as f64
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Key of the blob holding a container with this SHA-256.
pub fn blob_key(container_sha256: &str) -> String {
    format!("blobs/{container_sha256}.fz")
}

fn pointer_key(f: &ModelFile) -> Path {
    Path::from(format!("models/{}/{}/{}.json", f.org, f.name, f.file))
}

/// The object store and the layout on it.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Human-readable description, for the startup log.
    pub description: String,
}

impl Storage {
    /// Opens the backend named by `c.url`: a directory (created if needed) or `s3://`.
    pub fn open(c: &StorageConfig) -> Result<Storage, StartError> {
        if let Some(rest) = c.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StartError::Config(format!(
                    "storage url {:?} names no bucket",
                    c.url
                )));
            }
            // from_env reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
            // AWS_ENDPOINT, AWS_ALLOW_HTTP, ...; the config file's non-empty values win.
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if !c.endpoint.is_empty() {
                b = b.with_endpoint(&c.endpoint);
            }
            if !c.region.is_empty() {
                b = b.with_region(&c.region);
            }
            if !c.access_key_id.is_empty() {
                b = b.with_access_key_id(&c.access_key_id);
            }
            if !c.secret_access_key.is_empty() {
                b = b.with_secret_access_key(&c.secret_access_key);
            }
            if c.allow_http {
                b = b.with_allow_http(true);
            }
            if c.virtual_hosted_style {
                b = b.with_virtual_hosted_style_request(true);
            }
            let s3 = b.build().map_err(|e| StartError::Storage(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            return Ok(Storage {
                store,
                description: c.url.clone(),
            });
        }
        if c.url.contains("://") {
            return Err(StartError::Config(format!(
                "storage url {:?}: only a directory or s3://bucket/prefix is supported",
                c.url
            )));
        }
        let dir = FsPath::new(&c.url);
        std::fs::create_dir_all(dir)
            .map_err(|e| StartError::Storage(format!("creating {}: {e}", dir.display())))?;
        let local = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StartError::Storage(e.to_string()))?
            // Deleting the last file of a model removes its now-empty directories too.
            .with_automatic_cleanup(true);
        Ok(Storage {
            store: Arc::new(local),
            description: format!("directory {}", dir.display()),
        })
    }

    /// The underlying object store, for layouts kept by other modules ([`crate::hub`]).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Checks the backend answers (lists one key).
    pub async fn ping(&self) -> Result<(), ApiError> {
        let mut s = self.store.list(Some(&Path::from("models")));
        match s.next().await {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The pointer of `f`, or `None` if there is no such file.
    pub async fn read_pointer(&self, f: &ModelFile) -> Result<Option<Pointer>, ApiError> {
        self.read_pointer_at(&pointer_key(f)).await
    }

    /// The pointer stored at `key` (checked), or `None` if there is none.
    pub async fn read_pointer_at(&self, key: &Path) -> Result<Option<Pointer>, ApiError> {
        let got = match self.store.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if got.meta.size > MAX_POINTER_BYTES {
            return Err(ApiError::CorruptStorage(format!(
                "pointer {key} is {} bytes",
                got.meta.size
            )));
        }
        let bytes = got.bytes().await?;
        let p: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::CorruptStorage(format!("pointer {key}: {e}")))?;
        p.validate()?;
        Ok(Some(p))
    }

    /// Publishes a pointer (replacing any previous one atomically).
    pub async fn write_pointer(&self, p: &Pointer) -> Result<(), ApiError> {
        let json = serde_json::to_vec(p).map_err(|e| ApiError::Internal(e.to_string()))?;
        let f = ModelFile {
            org: p.org.clone(),
            name: p.name.clone(),
            file: p.file.clone(),
        };
        self.store
            .put(&pointer_key(&f), PutPayload::from(json))
            .await?;
        Ok(())
    }

    /// An existing file of the same model that `f` cannot live beside, if any: a file
    /// named like one of `f`'s folders (`a` for `a/b`), or a file inside a folder named
    /// like `f` (`a/b` for `a`). A checkout of the repo could not hold both.
    pub async fn path_conflict(&self, f: &ModelFile) -> Result<Option<String>, ApiError> {
        let mut dir = String::new();
        let segments: Vec<&str> = f.file.split('/').collect();
        for s in &segments[..segments.len().saturating_sub(1)] {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(s);
            let key = Path::from(format!("models/{}/{}/{dir}.json", f.org, f.name));
            match self.store.head(&key).await {
                Ok(_) => return Ok(Some(dir)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Any file in a folder named like `f` conflicts: the first one listed is enough.
        // (Keys are compared as text too, so a store that lists the prefix itself, such
        // as `x.json` for the folder `x.json`, cannot report a false conflict.)
        let model = format!("models/{}/{}/", f.org, f.name);
        let folder = format!("{model}{}/", f.file);
        let mut inside = self
            .store
            .list(Some(&Path::from(folder.clone())))
            .try_filter(|m| futures_util::future::ready(m.location.as_ref().starts_with(&folder)));
        match inside.next().await {
            None | Some(Err(object_store::Error::NotFound { .. })) => Ok(None),
            Some(Ok(m)) => {
                let key = m.location.as_ref();
                let file = key.strip_prefix(&model).unwrap_or(key);
                Ok(Some(file.strip_suffix(".json").unwrap_or(file).to_string()))
            }
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// Removes a pointer; `false` if there was none.
    pub async fn delete_pointer(&self, f: &ModelFile) -> Result<bool, ApiError> {
        match self.store.delete(&pointer_key(f)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Size of a blob, or `None` if it does not exist.
    pub async fn blob_size(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.store.head(&Path::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies bytes `range` of a staged container file into the store under `key`, in
    /// parts; on failure the partial upload is aborted, leaving nothing behind.
    pub async fn put_object_from_file(
        &self,
        key: &str,
        file: &FsPath,
        range: Range<u64>,
    ) -> Result<(), ApiError> {
        use tokio::io::AsyncSeekExt;
        let mut src = tokio::fs::File::open(file)
            .await
            .map_err(|e| ApiError::Internal(format!("reopening the staged upload: {e}")))?;
        src.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| ApiError::Internal(format!("reading the staged upload: {e}")))?;
        let mut src = src.take(range.end - range.start);
        // Two parts in flight keep the link busy; memory stays at a few parts.
        let mut w =
            BufWriter::with_capacity(self.store.clone(), Path::from(key), UPLOAD_PART_BYTES)
                .with_max_concurrency(2);
        let copied: Result<(), ApiError> = async {
            loop {
                let mut buf = Vec::with_capacity(UPLOAD_PART_BYTES);
                let n = (&mut src)
                    .take(UPLOAD_PART_BYTES as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| ApiError::Internal(format!("reading the staged upload: {e}")))?;
                if n == 0 {
                    break;
                }
                w.put(Bytes::from(buf)).await?;
            }
            tokio::io::AsyncWriteExt::shutdown(&mut w)
                .await
                .map_err(|e| ApiError::Storage(e.to_string()))
        }
        .await;
        if copied.is_err() {
            let _ = w.abort().await;
        }
        copied
    }

    /// Deletes a blob (missing is fine).
    pub async fn delete_blob(&self, key: &str) -> Result<(), ApiError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes `range` of a container, wherever its pieces are.
    /// `segments` empty: the container is the one object `blob`.
    pub async fn get_range(
        &self,
        blob: &str,
        segments: &[Segment],
        range: Range<u64>,
    ) -> Result<Bytes, ApiError> {
        if segments.is_empty() {
            return self.get_object_range(blob, range).await;
        }
        let parts = locate(segments, range.clone());
        if let [(i, r)] = parts.as_slice() {
            return self
                .get_object_range(&segment_key(&segments[*i].sha256), r.clone())
                .await;
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (i, r) in parts {
            let b = self
                .get_object_range(&segment_key(&segments[i].sha256), r)
                .await?;
            out.extend_from_slice(&b);
        }
        if out.len() as u64 != range.end - range.start {
            return Err(ApiError::CorruptStorage(format!(
                "container {blob} is shorter than its manifest says"
            )));
        }
        Ok(Bytes::from(out))
    }

    /// Bytes `range` of a container as a stream of pieces, segment after segment.
    pub fn stream_container(
        &self,
        src: ContainerSource,
        range: Range<u64>,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        let storage = self.clone();
        let parts: Vec<(String, Range<u64>)> = if src.segments.is_empty() {
            vec![(src.blob.clone(), range)]
        } else {
            locate(&src.segments, range)
                .into_iter()
                .map(|(i, r)| (segment_key(&src.segments[i].sha256), r))
                .collect()
        };
        futures_util::stream::iter(parts)
            .then(move |(key, r)| {
                let storage = storage.clone();
                async move {
                    storage
                        .stream_range(&key, r)
                        .await
                        .map_err(std::io::Error::other)
                }
            })
            .try_flatten()
            .boxed()
    }

    /// Bytes `range` of one object, in one request.
    pub async fn get_object_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ApiError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let want = range.end - range.start;
        let b = self.store.get_range(&Path::from(key), range).await?;
        if b.len() as u64 != want {
            return Err(ApiError::CorruptStorage(format!(
                "blob {key} is shorter than its manifest says"
            )));
        }
        Ok(b)
    }

    /// Bytes `range` of a blob as a stream of pieces, as the store delivers them.
    pub async fn stream_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, ApiError> {
        if range.is_empty() {
            return Ok(futures_util::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self.store.get_opts(&Path::from(key), opts).await?;
        let range = got.range.clone();
        match got.payload {
            // object_store streams local files 8 KiB at a time, each read a blocking-pool
            // round trip; reading large pieces is several times faster.
            #[cfg(unix)]
            GetResultPayload::File(file, _) => Ok(local_file_stream(file, range)),
            payload => {
                let got = object_store::GetResult {
                    payload,
                    range,
                    ..got
                };
                Ok(got.into_stream().map_err(std::io::Error::other).boxed())
            }
        }
    }

    /// Every pointer in the store (read a few at a time). Unreadable ones are skipped
    /// with a log line rather than failing the whole listing.
    pub async fn list_pointers(&self) -> Result<Vec<Pointer>, ApiError> {
        let keys: Vec<Path> = self
            .store
            .list(Some(&Path::from("models")))
            .map_ok(|m| m.location)
            .try_filter(|p| futures_util::future::ready(p.as_ref().ends_with(".json")))
            .try_collect()
            .await?;
        let got: Vec<_> = futures_util::stream::iter(keys)
            .map(|k| async move { (self.read_pointer_at(&k).await, k) })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut out = Vec::with_capacity(got.len());
        for (r, k) in got {
            match r {
                Ok(Some(p)) => out.push(p),
                Ok(None) => {} // deleted while listing
                Err(e) => tracing::warn!(key = %k, error = %e, "skipping unreadable pointer"),
            }
        }
        out.sort_by(|a, b| (&a.org, &a.name, &a.file).cmp(&(&b.org, &b.name, &b.file)));
        Ok(out)
    }

    /// Deletes the container `blob` if no pointer refers to it any more, with the
    /// segments no other container uses.
    ///
    /// Containers and segments are content-addressed and may be shared by several files.
    /// The checks are listings, not locks: an upload of identical content racing with
    /// this delete can be left pointing at a removed object (its reads then fail with
    /// `storage_error` until it is uploaded again). Deletes are rare and explicit;
    /// replicas need no coordination.
    pub async fn collect_blob(&self, blob: &str) -> Result<(), ApiError> {
        // Files of Hub revisions keep their blobs too, so old revisions stay downloadable.
        let still_used = self
            .list_pointers()
            .await?
            .iter()
            .any(|p| p.uses_blob(blob))
            || crate::hub::blob_in_revisions(self, blob).await?;
        if still_used {
            return Ok(());
        }
        let Some(sha) = blob
            .strip_prefix("blobs/")
            .and_then(|b| b.strip_suffix(".fz"))
        else {
            return self.delete_blob(blob).await;
        };
        let index = self.read_index(sha).await?;
        self.delete_blob(blob).await?;
        let Some(index) = index else {
            return Ok(());
        };
        self.delete_blob(&index_key(sha)).await?;
        let live = self.live_segments().await?;
        for s in &index.segments {
            if !live.contains(&s.sha256) {
                self.delete_blob(&segment_key(&s.sha256)).await?;
            }
        }
        Ok(())
    }

    /// Stores a container's segment list (after its segments).
    pub async fn write_index(&self, index: &Index) -> Result<(), ApiError> {
        let json = serde_json::to_vec(index).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.store
            .put(
                &Path::from(index_key(&index.container_sha256)),
                PutPayload::from(json),
            )
            .await?;
        Ok(())
    }

    /// The segment list of the container with this SHA-256, if it is stored as segments.
    pub async fn read_index(&self, container_sha256: &str) -> Result<Option<Index>, ApiError> {
        self.read_index_at(&Path::from(index_key(container_sha256)))
            .await
    }

    async fn read_index_at(&self, key: &Path) -> Result<Option<Index>, ApiError> {
        let got = match self.store.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if got.meta.size > MAX_INDEX_BYTES {
            return Err(ApiError::CorruptStorage(format!(
                "segment list {key} is {} bytes",
                got.meta.size
            )));
        }
        let bytes = got.bytes().await?;
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::CorruptStorage(format!("segment list {key}: {e}")))?;
        Ok(Some(index))
    }

    /// The segments listed by any stored container.
    async fn live_segments(&self) -> Result<std::collections::HashSet<String>, ApiError> {
        let keys: Vec<Path> = self
            .store
            .list(Some(&Path::from("blobs")))
            .map_ok(|m| m.location)
            .try_filter(|p| futures_util::future::ready(p.as_ref().ends_with(".segments.json")))
            .try_collect()
            .await?;
        let mut live = std::collections::HashSet::new();
        for k in keys {
            if let Some(index) = self.read_index_at(&k).await? {
                live.extend(index.segments.into_iter().map(|s| s.sha256));
            }
        }
        Ok(live)
    }
}
