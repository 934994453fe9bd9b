//! End-to-end tests of `floatzip-server`: the server runs in-process on 127.0.0.1:0 and is
//! driven over real HTTP by `curl` and `reqwest` (and raw sockets for requests those
//! normalise away). Every download is compared byte for byte with the original.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use floatzip_codec::{decode_entry_frames, decompress_bytes, Entry, FzArchive};
use floatzip_server::{Config, RunningServer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WRITE: &str = "test-write-token";
const CHUNK: usize = 64 << 10;
const MAX_UPLOAD: u64 = 16 << 20;
const HEADER_CAP: u64 = 1 << 20;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "fixtures missing in {}", dir.display());
    v
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A server with its own storage and temp directories.
struct TestServer {
    server: RunningServer,
    url: String,
    data: tempfile::TempDir,
    temp: tempfile::TempDir,
}

fn base_config(data: &Path, temp: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.storage.url = data.to_str().unwrap().to_string();
    c.storage.temp_dir = temp.to_str().unwrap().to_string();
    c.codec.chunk_bytes = CHUNK;
    c.limits.max_upload_bytes = MAX_UPLOAD;
    c.limits.max_header_bytes = HEADER_CAP;
    c.limits.max_concurrent_uploads = 4;
    c.auth.write_tokens = vec![WRITE.into()];
    c
}

async fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
    let data = tempfile::tempdir().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let mut c = base_config(data.path(), temp.path());
    edit(&mut c);
    let server = floatzip_server::start(c).await.unwrap();
    let url = server.url();
    TestServer {
        server,
        url,
        data,
        temp,
    }
}

async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    fn file_url(&self, org: &str, name: &str, file: &str) -> String {
        format!("{}/v1/models/{org}/{name}/{file}", self.url)
    }

    /// Every file under the storage directory with its digest: "storage unchanged" means
    /// this is equal before and after.
    fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot_dir(self.data.path())
    }

    fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Waits (bounded) until no staged upload is left in the temp directory; uploads clean
    /// up in the background after a client vanishes.
    async fn wait_temp_empty(&self) {
        for _ in 0..600 {
            if self.temp_files().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("temp files left behind: {:?}", self.temp_files());
    }

    async fn upload(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        client
            .put(url)
            .bearer_auth(WRITE)
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

fn snapshot_dir(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(
                    format!("{}/", p.strip_prefix(root).unwrap().display()),
                    String::new(),
                );
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap();
                out.insert(p.strip_prefix(root).unwrap().display().to_string(), sha(&b));
            }
        }
    }
    out
}

/// Runs curl with `args` in `dir`; returns stdout, panicking with stderr on failure.
async fn curl(dir: &Path, args: Vec<String>) -> Vec<u8> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("curl must be installed to run these tests");
        assert!(
            out.status.success(),
            "curl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out.stdout
    })
    .await
    .unwrap()
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_string();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error.message in {body}"
    );
    (status, code)
}

/// Sends raw request bytes and reads the answer until the server closes or `Connection:
/// close` completes it. For requests that HTTP clients would normalise (dot segments).
async fn raw_request(addr: std::net::SocketAddr, req: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn raw_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_upload_download_range_resume_every_fixture() {
    let t = start().await;
    let work = tempfile::tempdir().unwrap();
    for path in fixtures() {
        let original = std::fs::read(&path).unwrap();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let url = t.file_url("sentence-transformers", "all-MiniLM-L6-v2", &file);

        // curl -T: streams the file up.
        let out = curl(
            work.path(),
            vec![
                "-T".into(),
                path.to_str().unwrap().into(),
                "-H".into(),
                format!("Authorization: Bearer {WRITE}"),
                url.clone(),
            ],
        )
        .await;
        let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(summary["sha256"], sha(&original), "{file}");
        assert_eq!(summary["bytes_in"], original.len() as u64);
        assert!(
            summary["tensors"].as_u64().unwrap() > 0,
            "{file}: {summary}"
        );
        assert!(
            summary["bytes_stored"].as_u64().unwrap() < original.len() as u64,
            "{file} did not shrink: {summary}"
        );

        // curl -O: the exact original under its own name.
        curl(work.path(), vec!["-O".into(), url.clone()]).await;
        let got = std::fs::read(work.path().join(&file)).unwrap();
        assert_eq!(sha(&got), sha(&original), "{file}: curl -O");
        assert!(got == original);

        // curl -r: an inclusive byte range.
        let part = curl(
            work.path(),
            vec!["-r".into(), "1000-2000".into(), url.clone()],
        )
        .await;
        assert_eq!(part, &original[1000..=2000], "{file}: curl -r");
        let tail = curl(work.path(), vec!["-r".into(), "-777".into(), url.clone()]).await;
        assert_eq!(
            tail,
            &original[original.len() - 777..],
            "{file}: suffix range"
        );

        // An interrupted download: the first part is on disk, curl -C - fetches the rest.
        for cut in [original.len() / 2, 1, original.len() - 1] {
            let partial = work.path().join(format!("{file}.part"));
            std::fs::write(&partial, &original[..cut]).unwrap();
            curl(
                work.path(),
                vec![
                    "-C".into(),
                    "-".into(),
                    "-o".into(),
                    partial.to_str().unwrap().into(),
                    url.clone(),
                ],
            )
            .await;
            let resumed = std::fs::read(&partial).unwrap();
            assert_eq!(
                sha(&resumed),
                sha(&original),
                "{file}: resume after {cut} bytes"
            );
        }
    }
    assert!(t.temp_files().is_empty());
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_conditionals_and_head() {
    let t = start().await;
    let c = reqwest::Client::new();
    let path = &fixtures()[0];
    let original = std::fs::read(path).unwrap();
    let n = original.len() as u64;
    let url = t.file_url("o", "m", "model.safetensors");
    assert_eq!(t.upload(&c, &url, original.clone()).await.status(), 201);
    let etag = format!("\"{}\"", sha(&original));

    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["content-length"], n.to_string().as_str());
    assert_eq!(h["etag"], etag.as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(h.get("content-encoding").is_none());
    assert!(head.bytes().await.unwrap().is_empty());

    // Many ranges, across the header, frame and tensor boundaries.
    let mut x = 12345u64;
    let mut cases: Vec<(u64, u64)> = vec![
        (0, 0),
        (0, 7),
        (0, n - 1),
        (n - 1, n - 1),
        (8, 200),
        (CHUNK as u64 - 3, CHUNK as u64 + 3),
    ];
    for _ in 0..40 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = (x >> 20) % n;
        let len = (x >> 7) % (3 * CHUNK as u64);
        cases.push((a, (a + len).min(n - 1)));
    }
    for (a, b) in cases {
        let r = c
            .get(&url)
            .header("Range", format!("bytes={a}-{b}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "{a}-{b}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {a}-{b}/{n}").as_str()
        );
        assert_eq!(
            r.headers()["content-length"],
            (b - a + 1).to_string().as_str()
        );
        let body = r.bytes().await.unwrap();
        assert!(
            body[..] == original[a as usize..=b as usize],
            "bytes {a}-{b}"
        );
    }
    // A range past the end is clamped; open-ended and suffix forms.
    let r = c
        .get(&url)
        .header("Range", format!("bytes={}-{}", n - 10, n + 1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap()[..], original[n as usize - 10..]);
    let r = c
        .get(&url)
        .header("Range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-{}/{n}", n - 1).as_str()
    );
    assert_eq!(r.bytes().await.unwrap()[..], original[100..]);

    // Unsatisfiable: 416 with the size.
    for bad in [
        format!("bytes={n}-"),
        format!("bytes={}-{}", n + 5, n + 10),
        "bytes=-0".to_string(),
    ] {
        let r = c.get(&url).header("Range", &bad).send().await.unwrap();
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{n}").as_str()
        );
        assert_eq!(
            error_code(r).await,
            (416, "range_not_satisfiable".into()),
            "{bad}"
        );
    }
    // Multi-range: documented as 200 with the whole file.
    let r = c
        .get(&url)
        .header("Range", "bytes=0-1,5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == original[..]);

    // Conditionals.
    let r = c
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = c
        .get(&url)
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&url)
        .header("Range", "bytes=10-19")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap()[..], original[10..20]);
    let r = c
        .get(&url)
        .header("Range", "bytes=10-19")
        .header("If-Range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == original[..]);
    let r = c
        .get(&url)
        .header("If-Match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (412, "precondition_failed".into()));

    // Replacing the file changes the ETag; the old one no longer matches.
    let other = std::fs::read(&fixtures()[1]).unwrap();
    assert_eq!(t.upload(&c, &url, other.clone()).await.status(), 200);
    let r = c
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == other[..]);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_manifest_and_tensor_views() {
    let t = start().await;
    let c = reqwest::Client::new();
    for path in fixtures() {
        let original = std::fs::read(&path).unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let url = t.file_url("org", "views", file);
        let summary: serde_json::Value = t
            .upload(&c, &url, original.clone())
            .await
            .json()
            .await
            .unwrap();

        // The container, by query and by Accept; never as Content-Encoding.
        let fz = c.get(format!("{url}?format=fz")).send().await.unwrap();
        assert_eq!(fz.status(), 200);
        assert_eq!(fz.headers()["content-type"], "application/vnd.floatzip");
        assert!(fz.headers().get("content-encoding").is_none());
        let container = fz.bytes().await.unwrap().to_vec();
        assert_eq!(
            sha(&container),
            summary["container_sha256"].as_str().unwrap()
        );
        assert!(
            decompress_bytes(&container).unwrap() == original,
            "{file}: container decodes to the original"
        );
        let by_accept = c
            .get(&url)
            .header("Accept", "application/vnd.floatzip")
            .send()
            .await
            .unwrap();
        assert!(by_accept.bytes().await.unwrap()[..] == container[..]);
        let r = c
            .get(format!("{url}?format=fz"))
            .header("Range", "bytes=0-99")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().await.unwrap()[..], container[..100]);

        // The immutable, content-addressed blob URL.
        let blob = c
            .get(format!(
                "{}{}",
                t.url,
                summary["blob_url"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status(), 200);
        assert_eq!(
            blob.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(blob.bytes().await.unwrap()[..] == container[..]);

        // The manifest agrees with the container's own, and each tensor's compressed frames
        // decode to exactly that tensor's bytes.
        let m: serde_json::Value = c
            .get(format!("{url}/manifest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(m["sha256"], sha(&original));
        let archive = FzArchive::open(container.clone()).unwrap();
        let entries: Vec<Entry> = serde_json::from_value(m["manifest"]["entries"].clone()).unwrap();
        assert_eq!(&entries, &archive.manifest().entries);
        let mut tensors = 0;
        for e in entries.iter().filter(|e| e.name.is_some()) {
            tensors += 1;
            let name = e.name.as_deref().unwrap();
            let want = &original[e.original[0] as usize..e.original[1] as usize];
            let enc: String = form_urlencoded_byte_serialize(name);
            let r = c.get(format!("{url}/tensors/{enc}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{file} {name}");
            assert_eq!(r.headers()["x-floatzip-dtype"], e.dtype.as_str());
            let frames = r.bytes().await.unwrap();
            assert_eq!(
                frames[..],
                container[e.compressed[0] as usize..e.compressed[1] as usize]
            );
            let mut decoded = Vec::new();
            decode_entry_frames(e, 0, &frames, &mut decoded).unwrap();
            assert!(
                decoded == want,
                "{file} {name}: frames decode to the tensor"
            );
            floatzip_codec::check_entry_digest(e, &decoded).expect("tensor digest matches");
            let raw = c
                .get(format!("{url}/tensors/{enc}?decoded"))
                .send()
                .await
                .unwrap();
            assert_eq!(raw.status(), 200);
            assert!(
                raw.bytes().await.unwrap()[..] == want[..],
                "{file} {name}: ?decoded"
            );
        }
        assert_eq!(tensors, summary["tensors"].as_u64().unwrap());
        // A range of a decoded tensor decodes only what it covers, and is exact.
        if let Some(e) = entries
            .iter()
            .find(|e| e.name.is_some() && e.original_len() > 3 * CHUNK as u64)
        {
            let enc = form_urlencoded_byte_serialize(e.name.as_deref().unwrap());
            let (a, b) = (CHUNK as u64 + 5, 2 * CHUNK as u64 + 17);
            let r = c
                .get(format!("{url}/tensors/{enc}?decoded"))
                .header("Range", format!("bytes={a}-{b}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            let o = e.original[0] as usize;
            assert_eq!(
                r.bytes().await.unwrap()[..],
                original[o + a as usize..=o + b as usize]
            );
        }
    }
    t.server.shutdown().await.unwrap();
}

/// Percent-encodes a tensor name for a path segment.
fn form_urlencoded_byte_serialize(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_delete_health_metrics_and_other_files() {
    let t = start().await;
    let c = reqwest::Client::new();
    let st = std::fs::read(&fixtures()[0]).unwrap();
    let config = br#"{"architectures": ["BertModel"], "hidden_size": 384}"#.to_vec();
    let empty: Vec<u8> = Vec::new();
    let tiny = b"abc".to_vec();
    for (file, bytes) in [
        ("model.safetensors", &st),
        ("config.json", &config),
        ("empty.bin", &empty),
        ("tiny.txt", &tiny),
    ] {
        let url = t.file_url("acme", "bert", file);
        let r = t.upload(&c, &url, bytes.clone()).await;
        assert_eq!(r.status(), 201, "{file}");
        let got = c.get(&url).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert!(
            got.bytes().await.unwrap()[..] == bytes[..],
            "{file} round trip"
        );
    }
    let r = c
        .get(t.file_url("acme", "bert", "config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");

    let list: serde_json::Value = c
        .get(format!("{}/v1/models", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files = list["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    let m = files
        .iter()
        .find(|f| f["file"] == "model.safetensors")
        .unwrap();
    assert_eq!(m["original_size"], st.len() as u64);
    assert!(m["ratio"].as_f64().unwrap() > 0.0 && m["ratio"].as_f64().unwrap() < 1.0);

    // Deleting needs the write token.
    let url = t.file_url("acme", "bert", "model.safetensors");
    assert_eq!(
        error_code(c.delete(&url).send().await.unwrap()).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        error_code(c.delete(&url).bearer_auth("nope").send().await.unwrap()).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        c.delete(&url)
            .bearer_auth(WRITE)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        error_code(c.get(&url).send().await.unwrap()).await,
        (404, "not_found".into())
    );
    assert_eq!(
        error_code(c.delete(&url).bearer_auth(WRITE).send().await.unwrap()).await,
        (404, "not_found".into())
    );
    for file in ["config.json", "empty.bin", "tiny.txt"] {
        assert_eq!(
            c.delete(t.file_url("acme", "bert", file))
                .bearer_auth(WRITE)
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
    }
    // Nothing is left: pointers and their (unshared) blobs are gone.
    let left: Vec<_> = t
        .snapshot()
        .into_keys()
        .filter(|k| !k.ends_with('/'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let h = c.get(format!("{}/healthz", t.url)).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let metrics = c
        .get(format!("{}/metrics", t.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "floatzip_http_requests_total{",
        "floatzip_bytes_in_total",
        "floatzip_bytes_out_total",
        "floatzip_upload_ratio",
        "floatzip_encode_seconds_total",
        "floatzip_decode_seconds_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let bytes_in: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("floatzip_bytes_in_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(bytes_in as usize, st.len() + config.len() + tiny.len());
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_uploads_and_sixty_four_downloads_at_once() {
    let t = start().await;
    let c = reqwest::Client::new();
    let fx = fixtures();
    let originals: Vec<Vec<u8>> = fx.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let uploads = (0..16).map(|i| {
        let (c, url, body) = (
            c.clone(),
            t.file_url("many", &format!("m{i}"), "model.safetensors"),
            originals[i % originals.len()].clone(),
        );
        tokio::spawn(async move {
            // A streamed (chunked) body, in uneven pieces.
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body
                .chunks(10_007 + i * 13)
                .map(|p| Ok(p.to_vec()))
                .collect();
            let stream = futures_util::stream::iter(pieces);
            let r = c
                .put(&url)
                .bearer_auth(WRITE)
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{url}");
            let s: serde_json::Value = r.json().await.unwrap();
            assert_eq!(s["sha256"], sha(&body));
        })
    });
    for u in uploads.collect::<Vec<_>>() {
        u.await.unwrap();
    }
    let downloads = (0..64).map(|i| {
        let m = i % 16;
        let (c, url, want) = (
            c.clone(),
            t.file_url("many", &format!("m{m}"), "model.safetensors"),
            originals[m % originals.len()].clone(),
        );
        tokio::spawn(async move {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let got = r.bytes().await.unwrap();
            assert_eq!(sha(&got), sha(&want), "{url}");
        })
    });
    for d in downloads.collect::<Vec<_>>() {
        d.await.unwrap();
    }
    assert!(t.temp_files().is_empty());
    t.server.shutdown().await.unwrap();
}

/// A small safetensors file with the given JSON header and `data` bytes of payload.
fn safetensors(json: &str, data: usize) -> Vec<u8> {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend((0..data).map(|i| (i * 7 % 256) as u8));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_4xx_json_and_leaves_storage_unchanged() {
    let t = start().await;
    let c = reqwest::Client::new();
    let fixture = std::fs::read(&fixtures()[0]).unwrap();
    // Something already stored, which every failed request below must leave as it is.
    let keep = t.file_url("o", "m", "keep.safetensors");
    assert_eq!(t.upload(&c, &keep, fixture.clone()).await.status(), 201);
    let before = t.snapshot();
    let url = t.file_url("o", "m", "new.safetensors");

    let check = |what: &'static str, got: (u16, String), want: (u16, &str)| {
        assert_eq!((got.0, got.1.as_str()), want, "{what}");
    };

    // Auth.
    let r = c.put(&url).body(fixture.clone()).send().await.unwrap();
    check("no token", error_code(r).await, (401, "unauthorized"));
    let r = c
        .put(&url)
        .bearer_auth("wrong")
        .body(fixture.clone())
        .send()
        .await
        .unwrap();
    check("wrong token", error_code(r).await, (403, "forbidden"));

    // Truncated safetensors: the header promises more than the body holds.
    let half = fixture[..fixture.len() / 2].to_vec();
    check(
        "truncated (length known)",
        error_code(t.upload(&c, &url, half.clone()).await).await,
        (400, "truncated"),
    );
    let chunked = futures_util::stream::iter(
        half.chunks(4096)
            .map(|p| Ok::<_, std::io::Error>(p.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = c
        .put(&url)
        .bearer_auth(WRITE)
        .body(reqwest::Body::wrap_stream(chunked))
        .send()
        .await
        .unwrap();
    check(
        "truncated (chunked)",
        error_code(r).await,
        (400, "truncated"),
    );
    check(
        "cut inside the header",
        error_code(t.upload(&c, &url, fixture[..100].to_vec()).await).await,
        (400, "truncated"),
    );

    // Lying offsets.
    let overlap = safetensors(
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
        24,
    );
    check(
        "overlapping tensors",
        error_code(t.upload(&c, &url, overlap).await).await,
        (400, "invalid_safetensors"),
    );
    let wrong_size = safetensors(
        r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}}"#,
        16,
    );
    check(
        "shape disagrees with offsets",
        error_code(t.upload(&c, &url, wrong_size).await).await,
        (400, "invalid_safetensors"),
    );
    let backwards = safetensors(
        r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[9,0]}}"#,
        16,
    );
    check(
        "offsets run backwards",
        error_code(t.upload(&c, &url, backwards).await).await,
        (400, "invalid_safetensors"),
    );
    let beyond = safetensors(
        r#"{"a":{"dtype":"U8","shape":[1000000],"data_offsets":[0,1000000]}}"#,
        100,
    );
    check(
        "offsets past the end",
        error_code(t.upload(&c, &url, beyond).await).await,
        (400, "truncated"),
    );
    let huge = safetensors(
        r#"{"a":{"dtype":"U8","shape":[100000000000],"data_offsets":[0,100000000000]}}"#,
        100,
    );
    check(
        "offsets past the size limit",
        error_code(t.upload(&c, &url, huge).await).await,
        (413, "too_large"),
    );
    let not_json = safetensors("{this is not json}", 10);
    check(
        "header not JSON",
        error_code(t.upload(&c, &url, not_json).await).await,
        (400, "invalid_safetensors"),
    );

    // A header larger than the cap is refused from its length field alone.
    let mut big_header = (HEADER_CAP + 1).to_le_bytes().to_vec();
    big_header.extend_from_slice(b"{\"a\":");
    big_header.resize(64 << 10, b' ');
    check(
        "header over the cap",
        error_code(t.upload(&c, &url, big_header).await).await,
        (413, "header_too_large"),
    );

    // A body over the size limit, declared and streamed.
    let big = vec![7u8; MAX_UPLOAD as usize + 1];
    check(
        "declared too large",
        error_code(t.upload(&c, &url, big.clone()).await).await,
        (413, "too_large"),
    );
    let streamed = futures_util::stream::iter(
        big.chunks(1 << 20)
            .map(|p| Ok::<_, std::io::Error>(p.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = c
        .put(&url)
        .bearer_auth(WRITE)
        .body(reqwest::Body::wrap_stream(streamed))
        .send()
        .await
        .unwrap();
    check(
        "streamed too large",
        error_code(r).await,
        (413, "too_large"),
    );

    // Declared digests that do not match store nothing; malformed ones are refused first.
    let wrong = "0".repeat(64);
    let r = c
        .put(format!("{url}?sha256={wrong}"))
        .bearer_auth(WRITE)
        .body(fixture.clone())
        .send()
        .await
        .unwrap();
    check(
        "?sha256 mismatch",
        error_code(r).await,
        (400, "digest_mismatch"),
    );
    let r = c
        .put(&url)
        .bearer_auth(WRITE)
        .header(
            "Repr-Digest",
            "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
        )
        .body(fixture.clone())
        .send()
        .await
        .unwrap();
    check(
        "Repr-Digest mismatch",
        error_code(r).await,
        (400, "digest_mismatch"),
    );
    let r = c
        .put(format!("{url}?sha256=xyz"))
        .bearer_auth(WRITE)
        .body(fixture.clone())
        .send()
        .await
        .unwrap();
    check(
        "malformed sha256",
        error_code(r).await,
        (400, "bad_request"),
    );
    let r = c
        .put(format!("{url}?colour=blue"))
        .bearer_auth(WRITE)
        .body(fixture.clone())
        .send()
        .await
        .unwrap();
    check(
        "unknown parameter",
        error_code(r).await,
        (400, "bad_request"),
    );

    // Names: encoded slashes, dot segments, NUL, over-long, odd characters.
    let long = "a".repeat(129);
    for (what, path) in [
        ("encoded slash", "/v1/models/o/a%2Fb/f".to_string()),
        ("encoded dot-dot", "/v1/models/o/%2e%2e/f".to_string()),
        ("dot-dot file", "/v1/models/o/m/..".to_string()),
        ("dot file", "/v1/models/o/m/.hidden".to_string()),
        ("NUL", "/v1/models/o/m/a%00b".to_string()),
        ("over-long", format!("/v1/models/o/m/{long}")),
        ("space", "/v1/models/o/m/a%20b".to_string()),
        ("backslash", "/v1/models/o/m/a%5Cb".to_string()),
        ("bad utf-8", "/v1/models/o/m/a%FFb".to_string()),
    ] {
        let req = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
        let (status, body) = raw_request(t.server.addr, req.as_bytes()).await;
        assert_eq!(
            (status, raw_code(&body).as_str()),
            (400, "invalid_name"),
            "{what}: {path}"
        );
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_request(t.server.addr, req.as_bytes()).await;
        assert_eq!(
            (status, raw_code(&body).as_str()),
            (400, "invalid_name"),
            "GET {what}: {path}"
        );
    }
    // Literal dot segments do not route anywhere.
    let req = format!("PUT /v1/models/../../etc/passwd HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
    let (status, body) = raw_request(t.server.addr, req.as_bytes()).await;
    assert!(status == 400 || status == 404, "{status}");
    raw_code(&body);

    // Reads: unknown file, unknown tensor, range past the end, unknown format, no route,
    // wrong method.
    check(
        "unknown file",
        error_code(c.get(t.file_url("o", "m", "nope")).send().await.unwrap()).await,
        (404, "not_found"),
    );
    check(
        "unknown tensor",
        error_code(
            c.get(format!("{keep}/tensors/no.such.tensor"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        (404, "unknown_tensor"),
    );
    let n = fixture.len();
    check(
        "range past the end",
        error_code(
            c.get(&keep)
                .header("Range", format!("bytes={n}-"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        (416, "range_not_satisfiable"),
    );
    check(
        "unknown format",
        error_code(c.get(format!("{keep}?format=zip")).send().await.unwrap()).await,
        (400, "bad_request"),
    );
    check(
        "no route",
        error_code(
            c.get(format!("{}/v2/whatever", t.url))
                .send()
                .await
                .unwrap(),
        )
        .await,
        (404, "no_route"),
    );
    check(
        "bad blob name",
        error_code(
            c.get(format!("{}/v1/blobs/abc.fz", t.url))
                .send()
                .await
                .unwrap(),
        )
        .await,
        (400, "invalid_name"),
    );
    check(
        "wrong method",
        error_code(c.post(&keep).send().await.unwrap()).await,
        (405, "method_not_allowed"),
    );

    // A client that vanishes mid-upload, and one that stops sending (half-close).
    for half_close in [false, true] {
        let mut s = tokio::net::TcpStream::connect(t.server.addr).await.unwrap();
        let head = format!(
            "PUT /v1/models/o/m/cut.safetensors HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE}\r\nContent-Length: {}\r\n\r\n",
            fixture.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&fixture[..fixture.len() / 2]).await.unwrap();
        if half_close {
            s.shutdown().await.unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await; // a 400, or just a closed connection
            let text = String::from_utf8_lossy(&buf);
            assert!(
                text.is_empty() || text.starts_with("HTTP/1.1 400"),
                "{text}"
            );
        } else {
            drop(s);
        }
        t.wait_temp_empty().await;
    }

    // The server is still up and nothing changed.
    assert_eq!(
        c.get(format!("{}/healthz", t.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(t.snapshot(), before, "storage changed");
    assert!(t.temp_files().is_empty());
    let got = c.get(&keep).send().await.unwrap().bytes().await.unwrap();
    assert!(got[..] == fixture[..]);

    // A correct declared digest is accepted (both forms).
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&fixture));
    let r = c
        .put(format!("{url}?sha256={}", sha(&fixture)))
        .bearer_auth(WRITE)
        .header("Repr-Digest", format!("sha-256=:{b64}:"))
        .body(fixture.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_can_require_a_token_and_writes_are_off_without_one() {
    let t = start_with(|c| c.auth.read_tokens = vec!["reader".into()]).await;
    let c = reqwest::Client::new();
    let url = t.file_url("o", "m", "f.bin");
    assert_eq!(t.upload(&c, &url, b"hello".to_vec()).await.status(), 201);
    assert_eq!(
        error_code(c.get(&url).send().await.unwrap()).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        error_code(c.get(&url).bearer_auth("bad").send().await.unwrap()).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        c.get(&url)
            .bearer_auth("reader")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        b"hello"[..]
    );
    assert_eq!(
        error_code(
            c.put(&url)
                .bearer_auth("reader")
                .body("x")
                .send()
                .await
                .unwrap()
        )
        .await,
        (403, "forbidden".into())
    );
    t.server.shutdown().await.unwrap();

    let t = start_with(|c| c.auth.write_tokens.clear()).await;
    let url = t.file_url("o", "m", "f.bin");
    let r = c
        .put(&url)
        .bearer_auth(WRITE)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "forbidden".into()));
    assert!(t.snapshot().is_empty());
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_an_upload_in_flight() {
    let t = start().await;
    let fixture = std::fs::read(&fixtures()[2]).unwrap();
    let mut s = tokio::net::TcpStream::connect(t.server.addr).await.unwrap();
    let head = format!(
        "PUT /v1/models/o/m/late.safetensors HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        fixture.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&fixture[..fixture.len() / 2]).await.unwrap();
    // Make sure the request is in the server before asking it to stop.
    t.wait_for_bytes_in().await;
    let addr = t.server.addr;
    let TestServer {
        server, data, temp, ..
    } = t;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&fixture[fixture.len() / 2..]).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    stopping.await.unwrap().unwrap();
    // Stopped: no new connections, no temp files, the upload is stored.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(std::fs::read_dir(temp.path()).unwrap().next().is_none());
    let again = floatzip_server::start(base_config(data.path(), temp.path()))
        .await
        .unwrap();
    let got = reqwest::get(format!("{}/v1/models/o/m/late.safetensors", again.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == fixture[..]);
    again.shutdown().await.unwrap();
}

impl TestServer {
    /// Waits (bounded) until the server has received some upload bytes.
    async fn wait_for_bytes_in(&self) {
        for _ in 0..600 {
            let m = reqwest::get(format!("{}/metrics", self.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let n: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("floatzip_bytes_in_total "))
                .unwrap()
                .parse()
                .unwrap();
            if n > 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the upload never arrived");
    }
}

/// Finds the `s3s-fs` binary: `$S3S_FS`, then `PATH`, then `~/.cargo/bin`.
fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the S3 test needs the `s3s-fs` binary and it is not installed.\n\
             Install it with: cargo install s3s-fs@0.14.1 --features binary --locked\n\
             (or point S3S_FS at it)"
            )
        })
}

/// An `s3s-fs` process serving a directory on a loopback port; killed on drop.
struct S3Server {
    child: std::process::Child,
    port: u16,
    _root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_s3(bucket: &str) -> S3Server {
    let bin = s3s_fs_binary();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(bucket)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            "AKTEST",
            "--secret-key",
            "SKTEST",
        ])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let s3 = S3Server {
        child,
        port,
        _root: root,
    };
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return s3;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("s3s-fs did not start listening on port {port}");
}

fn s3_config(port: u16, temp: &Path) -> Config {
    let mut c = base_config(Path::new("unused"), temp);
    c.limits.max_upload_bytes = 64 << 20;
    c.storage.url = "s3://models/floatzip".into();
    c.storage.endpoint = format!("http://127.0.0.1:{port}");
    c.storage.region = "us-east-1".into();
    c.storage.access_key_id = "AKTEST".into();
    c.storage.secret_access_key = "SKTEST".into();
    c.storage.allow_http = true;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_backend_two_stateless_replicas() {
    let s3 = start_s3("models").await;
    let temp = tempfile::tempdir().unwrap();
    let a = floatzip_server::start(s3_config(s3.port, temp.path()))
        .await
        .unwrap();
    let b = floatzip_server::start(s3_config(s3.port, temp.path()))
        .await
        .unwrap();
    let c = reqwest::Client::new();
    let work = tempfile::tempdir().unwrap();
    for path in fixtures().iter().take(4) {
        let original = std::fs::read(path).unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let on_a = format!("{}/v1/models/s3/model/{file}", a.url());
        let on_b = format!("{}/v1/models/s3/model/{file}", b.url());
        curl(
            work.path(),
            vec![
                "-T".into(),
                path.to_str().unwrap().into(),
                "-H".into(),
                format!("Authorization: Bearer {WRITE}"),
                on_a.clone(),
            ],
        )
        .await;
        // The other replica sees it at once: all state is in the bucket.
        let got = curl(work.path(), vec![on_b.clone()]).await;
        assert_eq!(sha(&got), sha(&original), "{file} via replica b");
        let part = curl(
            work.path(),
            vec!["-r".into(), "5000-99999".into(), on_b.clone()],
        )
        .await;
        assert_eq!(part, &original[5000..=99999]);
        let m: serde_json::Value = c
            .get(format!("{on_b}/manifest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entries: Vec<Entry> = serde_json::from_value(m["manifest"]["entries"].clone()).unwrap();
        let e = entries.iter().find(|e| e.name.is_some()).unwrap();
        let raw = c
            .get(format!(
                "{on_b}/tensors/{}?decoded",
                form_urlencoded_byte_serialize(e.name.as_deref().unwrap())
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(raw[..] == original[e.original[0] as usize..e.original[1] as usize]);
    }
    // A file whose container exceeds one multipart part (16 MiB) goes up in parts.
    let mut x = 0x9E3779B97F4A7C15u64;
    let noise: Vec<u8> = (0..(40usize << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let big_url = format!("{}/v1/models/s3/big/noise.bin", a.url());
    let r = c
        .put(&big_url)
        .bearer_auth(WRITE)
        .body(noise.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(format!("{}/v1/models/s3/big/noise.bin", b.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha(&got), sha(&noise));
    let del = c.delete(&big_url).bearer_auth(WRITE).send().await.unwrap();
    assert_eq!(del.status(), 204);

    let list: serde_json::Value = c
        .get(format!("{}/v1/models", b.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 4);
    let del = c
        .delete(format!(
            "{}/v1/models/s3/model/{}",
            b.url(),
            fixtures()[0].file_name().unwrap().to_str().unwrap()
        ))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let list: serde_json::Value = c
        .get(format!("{}/v1/models", a.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 3);
    // A failed upload leaves the bucket as it was.
    let r = c
        .put(format!(
            "{}/v1/models/s3/model/bad?sha256={}",
            a.url(),
            "0".repeat(64)
        ))
        .bearer_auth(WRITE)
        .body(b"data".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "digest_mismatch".into()));
    assert_eq!(
        c.get(format!("{}/healthz", a.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(std::fs::read_dir(temp.path()).unwrap().next().is_none());
}

/// `floatzip serve` itself: flags and environment, a real upload, SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serve_starts_serves_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_floatzip"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--storage",
            data.path().to_str().unwrap(),
        ])
        .env("FLOATZIP_WRITE_TOKEN", WRITE)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..600 {
        if reqwest::get(format!("{url}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "floatzip serve did not come up");
    let c = reqwest::Client::new();
    let body = b"{\"hidden_size\": 384}".to_vec();
    let r = c
        .put(format!("{url}/v1/models/a/b/config.json"))
        .bearer_auth(WRITE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        reqwest::get(format!("{url}/v1/models/a/b/config.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
        body[..]
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// Bytes of every file under `dir` (recursively).
fn dir_bytes(dir: &Path) -> u64 {
    snapshot_dir(dir)
        .keys()
        .filter(|k| !k.ends_with('/'))
        .map(|k| std::fs::metadata(dir.join(k)).unwrap().len())
        .sum()
}

#[tokio::test]
async fn tensors_shared_between_files_are_stored_once() {
    let t = start().await;
    let c = reqwest::Client::new();
    let a = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm-bf16.safetensors"),
    )
    .unwrap();
    // The same model with one tensor changed: same header, same other tensors.
    let header_len = 8 + u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&a[8..header_len]).unwrap();
    let (name, range) = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (
                k.clone(),
                o[0].as_u64().unwrap() as usize..o[1].as_u64().unwrap() as usize,
            )
        })
        .max_by_key(|(_, r)| r.len())
        .unwrap();
    let mut b = a.clone();
    for x in &mut b[header_len + range.start..header_len + range.start + range.len() / 2] {
        *x = x.wrapping_add(1);
    }
    let segments = t.data.path().join("segments");

    let r = t
        .upload(
            &c,
            &t.file_url("acme", "base", "model.safetensors"),
            a.clone(),
        )
        .await;
    assert_eq!(r.status(), 201);
    let first: serde_json::Value = r.json().await.unwrap();
    assert_eq!(first["shared_bytes"], 0);
    let after_a = dir_bytes(&segments);
    assert_eq!(after_a, first["bytes_stored"].as_u64().unwrap());

    let r = t
        .upload(
            &c,
            &t.file_url("acme", "tuned", "model.safetensors"),
            b.clone(),
        )
        .await;
    assert_eq!(r.status(), 201);
    let second: serde_json::Value = r.json().await.unwrap();
    let stored = second["bytes_stored"].as_u64().unwrap();
    let shared = second["shared_bytes"].as_u64().unwrap();
    let grown = dir_bytes(&segments) - after_a;
    // Storage grew by exactly the bytes not shared, and those are about the changed
    // tensor (its frames) plus the small header and manifest pieces, not the whole file.
    assert_eq!(grown, stored - shared, "{second}");
    assert!(grown < stored / 2, "grew by {grown} of {stored}: {second}");
    let m: serde_json::Value = c
        .get(format!(
            "{}/manifest",
            t.file_url("acme", "tuned", "model.safetensors")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["container"]["shared_bytes"], shared, "{name}");
    let list: serde_json::Value = c
        .get(format!("{}/v1/models", t.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_unique_stored_size"], dir_bytes(&segments));

    // Deleting the first file keeps everything the second uses.
    let del = c
        .delete(t.file_url("acme", "base", "model.safetensors"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success());
    let got = c
        .get(t.file_url("acme", "tuned", "model.safetensors"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap()[..] == b[..]);
    let fz = c
        .get(format!(
            "{}?format=fz",
            t.file_url("acme", "tuned", "model.safetensors")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(fz.bytes().await.unwrap().len() as u64, stored);
    assert_eq!(dir_bytes(&segments), stored);

    // Deleting the last user removes every segment.
    let del = c
        .delete(t.file_url("acme", "tuned", "model.safetensors"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success());
    assert_eq!(dir_bytes(t.data.path()), 0, "{:?}", t.snapshot());
}

fn ckpt_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ckpt")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn delta_uploads_decode_through_their_base_chain() {
    let t = start().await;
    let c = reqwest::Client::new();
    let s0 = ckpt_fixture("ckpt.step0000.bf16.safetensors");
    let s200 = ckpt_fixture("ckpt.step0200.bf16.safetensors");
    let ft = ckpt_fixture("ckpt-ft.step1000.bf16.safetensors");
    let url = |f: &str| t.file_url("acme", "run", f);

    // A base that does not exist: 404, nothing stored.
    let before = t.snapshot();
    let r = t
        .upload(
            &c,
            &format!("{}?base=acme/run/nope.safetensors", url("x.safetensors")),
            s200.clone(),
        )
        .await;
    let (status, code) = error_code(r).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert_eq!(t.snapshot(), before);

    let r = t.upload(&c, &url("step0.safetensors"), s0.clone()).await;
    assert_eq!(r.status(), 201);
    let plain: serde_json::Value = t
        .upload(&c, &url("plain200.safetensors"), s200.clone())
        .await
        .json()
        .await
        .unwrap();
    let r = t
        .upload(
            &c,
            &format!(
                "{}?base=acme/run/step0.safetensors",
                url("step200.safetensors")
            ),
            s200.clone(),
        )
        .await;
    assert_eq!(r.status(), 201);
    let d200: serde_json::Value = r.json().await.unwrap();
    assert_eq!(d200["delta_base"], "acme/run/step0.safetensors");
    assert!(
        d200["bytes_stored"].as_u64().unwrap() * 2 < plain["bytes_stored"].as_u64().unwrap(),
        "delta {d200} vs standalone {plain}"
    );
    // A delta of a delta: decoded through both.
    let r = t
        .upload(
            &c,
            &format!(
                "{}?base=acme/run/step200.safetensors",
                url("ft.safetensors")
            ),
            ft.clone(),
        )
        .await;
    assert_eq!(r.status(), 201);
    let dft: serde_json::Value = r.json().await.unwrap();
    assert_eq!(dft["delta_base"], "acme/run/step200.safetensors");

    // Replacing the base file later does not change what the delta decodes against.
    assert_eq!(
        t.upload(&c, &url("step0.safetensors"), ft.clone())
            .await
            .status(),
        200
    );
    for (f, want) in [("step200.safetensors", &s200), ("ft.safetensors", &ft)] {
        let got = c.get(url(f)).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert!(got.bytes().await.unwrap()[..] == want[..], "{f}");
        // A range inside a delta tensor.
        let got = c
            .get(url(f))
            .header("Range", "bytes=5000-90000")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 206);
        assert!(
            got.bytes().await.unwrap()[..] == want[5000..=90000],
            "{f} range"
        );
    }
    let m: serde_json::Value = c
        .get(format!("{}/manifest", url("ft.safetensors")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["delta_base"]["chain"], 2);

    // A chain at its cap re-bases: stored standalone.
    let mut prev = "ft.safetensors".to_string();
    for i in 0..3 {
        let name = format!("more{i}.safetensors");
        let r = t
            .upload(
                &c,
                &format!("{}?base=acme/run/{prev}", url(&name)),
                s200.clone(),
            )
            .await;
        let v: serde_json::Value = r.json().await.unwrap();
        let chain_after = 3 + i;
        if chain_after <= 4 {
            assert_eq!(v["delta_base"], format!("acme/run/{prev}"), "{v}");
        } else {
            assert!(v.get("delta_base").is_none(), "{v}");
        }
        prev = name;
    }

    // Deleting every file removes every blob and segment, bases last.
    for f in [
        "step0.safetensors",
        "plain200.safetensors",
        "step200.safetensors",
    ] {
        let d = c.delete(url(f)).bearer_auth(WRITE).send().await.unwrap();
        assert!(d.status().is_success());
    }
    let got = c.get(url("ft.safetensors")).send().await.unwrap();
    assert!(
        got.bytes().await.unwrap()[..] == ft[..],
        "ft after its bases' files were deleted"
    );
    for f in [
        "ft.safetensors",
        "more0.safetensors",
        "more1.safetensors",
        "more2.safetensors",
    ] {
        let d = c.delete(url(f)).bearer_auth(WRITE).send().await.unwrap();
        assert!(d.status().is_success());
    }
    assert_eq!(dir_bytes(t.data.path()), 0, "{:?}", t.snapshot());
}
