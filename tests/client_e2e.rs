//! End-to-end tests of `floatzip-client` against the real server in-process on
//! 127.0.0.1:0, against small hand-written servers (streaming, lying manifests), and
//! through a fault-injecting proxy (cut connections, flipped bytes, stalls, Range
//! ignored). Every result is compared byte for byte with the original.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floatzip_client::{Client, Error, Filter, RemoteFile};
use floatzip_codec::{compress_bytes, EncodeOptions, Manifest};
use floatzip_server::{Config, RunningServer};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const WRITE: &str = "client-test-write";
const READ: &str = "client-test-read";
const CHUNK: usize = 64 << 10;

/// Which tensor names a subset should hold.
type NamePredicate = Box<dyn Fn(&str) -> bool>;
/// An edit that makes a manifest document lie.
type Lie = Box<dyn Fn(&mut serde_json::Value)>;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "fixtures missing");
    v
}

fn fixture(name: &str) -> PathBuf {
    fixture_dir().join(name)
}

/// A real server with its own storage.
struct TestServer {
    server: RunningServer,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start_server(read_tokens: bool) -> TestServer {
    let data = tempfile::tempdir().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.storage.url = data.path().to_str().unwrap().to_string();
    c.storage.temp_dir = temp.path().to_str().unwrap().to_string();
    c.codec.chunk_bytes = CHUNK;
    c.limits.max_upload_bytes = 16 << 20;
    c.auth.write_tokens = vec![WRITE.into()];
    if read_tokens {
        c.auth.read_tokens = vec![READ.into()];
    }
    let server = floatzip_server::start(c).await.unwrap();
    TestServer {
        server,
        _dirs: (data, temp),
    }
}

impl TestServer {
    fn url(&self) -> String {
        self.server.url()
    }
}

fn client(base: &str) -> floatzip_client::ClientBuilder {
    Client::builder(base).token(WRITE)
}

/// Uploads `path` as `org/model/{file name}` through the client.
async fn push(base: &str, path: &Path) -> RemoteFile {
    let name = path.file_name().unwrap().to_str().unwrap();
    let f = client(base)
        .build()
        .unwrap()
        .file("org/model", name)
        .unwrap();
    let s = f.upload(path).await.unwrap();
    assert_eq!(s.bytes_in, std::fs::metadata(path).unwrap().len());
    f
}

fn no_leftovers(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".part"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

/// The tensors of a safetensors file: name -> (dtype, shape, bytes).
fn tensors_of(bytes: &[u8]) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_pull_is_byte_identical_for_every_fixture() {
    let s = start_server(false).await;
    let out = tempfile::tempdir().unwrap();
    for path in fixtures() {
        let f = push(&s.url(), &path).await;
        let dest = out.path().join(path.file_name().unwrap());
        let r = f.download(&dest).await.unwrap();
        let original = std::fs::read(&path).unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            original,
            "{}",
            path.display()
        );
        assert_eq!(
            r.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(&original)).as_str())
        );
        assert_eq!(r.file_bytes, original.len() as u64);
        assert_eq!(r.entries_reused, 0);
        assert!(
            r.wire_bytes < original.len() as u64,
            "{}: compressed bytes only",
            path.display()
        );
    }
    no_leftovers(out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_pulls_hold_exactly_the_chosen_tensors() {
    let s = start_server(false).await;
    let out = tempfile::tempdir().unwrap();
    for name in [
        "minilm-f32.safetensors",
        "minilm-bf16.safetensors",
        "minilm-nvfp4.safetensors",
    ] {
        let path = fixture(name);
        let original = std::fs::read(&path).unwrap();
        let all = tensors_of(&original);
        let f = push(&s.url(), &path).await;
        let some_name = all.keys().next().unwrap().clone();
        let cases: Vec<(Filter, NamePredicate)> = vec![
            (
                Filter::names(["encoder.layer.0.*"]).unwrap(),
                Box::new(|n: &str| n.starts_with("encoder.layer.0.")),
            ),
            (
                Filter::all()
                    .layers(0, 0)
                    .unwrap()
                    .exclude("*.bias")
                    .unwrap(),
                Box::new(|n: &str| n.starts_with("encoder.layer.0.") && !n.ends_with(".bias")),
            ),
            (
                Filter::exact([some_name.as_str()]),
                Box::new(move |n: &str| n == some_name),
            ),
            (
                Filter::all().exclude("encoder.*").unwrap(),
                Box::new(|n: &str| !n.starts_with("encoder.")),
            ),
        ];
        for (i, (filter, want)) in cases.into_iter().enumerate() {
            let dest = out.path().join(format!("{name}.{i}"));
            f.download_subset(&filter, &dest).await.unwrap();
            let got = tensors_of(&std::fs::read(&dest).unwrap());
            let expected: std::collections::BTreeMap<_, _> = all
                .iter()
                .filter(|(n, _)| want(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            assert!(!expected.is_empty());
            assert_eq!(got, expected, "{name} case {i}");
        }
    }
    no_leftovers(out.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_stream_and_single_tensor_match_the_original() {
    let s = start_server(false).await;
    let path = fixture("minilm-bf16.safetensors");
    let all = tensors_of(&std::fs::read(&path).unwrap());
    let f = push(&s.url(), &path).await;
    let mut got = std::collections::BTreeMap::new();
    let mut stream = f.tensors(Filter::all());
    while let Some(t) = stream.next().await {
        let t = t.unwrap();
        got.insert(t.name.clone(), (t.dtype, t.shape, t.bytes));
    }
    assert_eq!(got.len(), all.len());
    for (n, (dtype, shape, bytes)) in &got {
        let (d, sh, b) = &all[n];
        assert_eq!(bytes, b, "{n}");
        assert_eq!(dtype, &d.to_uppercase(), "{n}");
        assert_eq!(shape.iter().map(|&x| x as usize).collect::<Vec<_>>(), *sh);
    }
    let (name, (_, _, bytes)) = all.iter().next().unwrap();
    let t = f.tensor(name).await.unwrap();
    assert_eq!(&t.bytes, bytes);
    assert!(
        matches!(f.tensor("no.such.tensor").await, Err(Error::UnknownTensor(n)) if n == "no.such.tensor")
    );
    let mut s2 = f.tensors(Filter::names(["nothing.*"]).unwrap());
    assert!(matches!(s2.next().await, Some(Err(Error::Filter(_)))));
    assert!(s2.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_safetensors_round_trips_but_has_no_tensors() {
    let s = start_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("notes.bin");
    let body: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    std::fs::write(&src, &body).unwrap();
    let f = push(&s.url(), &src).await;
    let dest = dir.path().join("out.bin");
    f.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    let e = f
        .download_subset(&Filter::all(), &dir.path().join("sub"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotSafetensors), "{e}");
    let e = f.tensor("x").await.unwrap_err();
    assert!(matches!(e, Error::UnknownTensor(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_precise() {
    let s = start_server(true).await;
    let path = fixture("minilm-fp8-e4m3-pertensor.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.safetensors");
    // Upload: no token, a read token, then the write token.
    let anon = Client::new(&s.url())
        .unwrap()
        .file("org/model", "m.safetensors")
        .unwrap();
    assert!(matches!(
        anon.upload(&path).await,
        Err(Error::Unauthorized { .. })
    ));
    let reader = Client::builder(&s.url()).token(READ).build().unwrap();
    let rf = reader.file("org/model", "m.safetensors").unwrap();
    assert!(matches!(
        rf.upload(&path).await,
        Err(Error::Forbidden { .. })
    ));
    client(&s.url())
        .token(WRITE)
        .build()
        .unwrap()
        .file("org/model", "m.safetensors")
        .unwrap()
        .upload(&path)
        .await
        .unwrap();
    // Reads: no token is 401, unknown file is 404, the read token works.
    assert!(matches!(
        anon.download(&dest).await,
        Err(Error::Unauthorized { .. })
    ));
    let missing = reader.file("org/model", "missing.safetensors").unwrap();
    assert!(matches!(
        missing.download(&dest).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!dest.exists());
    rf.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap());
    // A missing local file to upload names the path.
    let e = rf.upload(&dir.path().join("nope")).await.unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // Bad names and URLs.
    assert!(matches!(
        reader.file("no-slash", "f"),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        Client::new("ftp://x"),
        Err(Error::InvalidUrl { .. })
    ));
    let u = floatzip_client::FileUrl::parse("http://h:1/v1/models/a/b/c.safetensors").unwrap();
    assert_eq!(
        (u.base.as_str(), u.repo.as_str(), u.file.as_str()),
        ("http://h:1", "a/b", "c.safetensors")
    );
    assert!(floatzip_client::FileUrl::parse("http://h:1/v1/models/a/b").is_err());
}

// ---------------------------------------------------------------------------------------
// A small hand-written server: serves a given manifest document and container, with Range,
// optionally pausing inside the container body until released.

struct Mock {
    manifest: Vec<u8>,
    container: Vec<u8>,
    /// Pause container responses once this container offset is reached.
    pause_at: Option<u64>,
    release: Arc<Notify>,
    events: Arc<Mutex<Vec<String>>>,
}

async fn read_head(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut b).await.ok()?;
        if n == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&b[..n]);
    }
    Some(head)
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

async fn start_mock(mock: Mock) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mock = Arc::new(mock);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let mock = mock.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut sock).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                if target.ends_with("/manifest") {
                    let h = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        mock.manifest.len()
                    );
                    let _ = sock.write_all(h.as_bytes()).await;
                    let _ = sock.write_all(&mock.manifest).await;
                    return;
                }
                if !(target.contains(".fz") || target.contains("format=fz")) {
                    let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    return;
                }
                let len = mock.container.len() as u64;
                let Some((a, b)) = header_value(&head, "range").and_then(|r| parse_range(&r))
                else {
                    return;
                };
                if a > b || b >= len {
                    let h = format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = sock.write_all(h.as_bytes()).await;
                    return;
                }
                let h = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b + 1 - a
                );
                let _ = sock.write_all(h.as_bytes()).await;
                let body = &mock.container[a as usize..=b as usize];
                match mock.pause_at {
                    Some(p) if p > a && p <= b => {
                        let _ = sock.write_all(&body[..(p - a) as usize]).await;
                        let _ = sock.flush().await;
                        mock.events.lock().unwrap().push("server paused".into());
                        // Released by the test; the long fallback only keeps a broken
                        // client from hanging the test (the order assertion then fails).
                        let _ =
                            tokio::time::timeout(Duration::from_secs(60), mock.release.notified())
                                .await;
                        mock.events.lock().unwrap().push("server resumed".into());
                        let _ = sock.write_all(&body[(p - a) as usize..]).await;
                    }
                    _ => {
                        let _ = sock.write_all(body).await;
                    }
                }
            });
        }
    });
    addr
}

/// A container of a fixture with small chunks, and the manifest document for it.
fn container_of(name: &str) -> (Vec<u8>, Manifest, serde_json::Value) {
    let original = std::fs::read(fixture(name)).unwrap();
    let opts = EncodeOptions {
        chunk_bytes: 16 << 10,
        ..EncodeOptions::default()
    };
    let (container, m) = compress_bytes(&original, opts).unwrap();
    let doc = serde_json::json!({
        "path": "org/model/m.safetensors",
        "original_size": m.original_size,
        "sha256": m.sha256,
        "container": { "sha256": "0".repeat(64), "size": container.len(), "url": format!("/v1/blobs/{}.fz", "0".repeat(64)) },
        "manifest": m,
    });
    (container, m, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tensor_is_yielded_before_its_response_completes() {
    let (container, m, doc) = container_of("minilm-f16.safetensors");
    let first = m
        .entries
        .iter()
        .find(|e| e.name.is_some() && e.frames.len() > 1)
        .unwrap();
    // Pause right after the first multi-frame tensor's last frame; everything before it
    // (smaller tensors) is in the same response too.
    let events = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let addr = start_mock(Mock {
        manifest: serde_json::to_vec(&doc).unwrap(),
        container,
        pause_at: Some(first.compressed[1]),
        release: release.clone(),
        events: events.clone(),
    })
    .await;
    let c = Client::builder(&format!("http://{addr}"))
        .jobs(1)
        .coalesce_bytes(u64::MAX)
        .build()
        .unwrap();
    let f = c.file("org/model", "m.safetensors").unwrap();
    let want = first.name.clone().unwrap();
    let mut stream = f.tensors(Filter::all());
    let mut count = 0;
    while let Some(t) = stream.next().await {
        let t = t.unwrap();
        count += 1;
        if t.name == want {
            events.lock().unwrap().push(format!("client got {want}"));
            release.notify_one();
        }
    }
    assert_eq!(count, m.entries.iter().filter(|e| e.name.is_some()).count());
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev,
        [
            "server paused".to_string(),
            format!("client got {want}"),
            "server resumed".to_string()
        ],
        "the tensor must arrive while the server holds back the rest of the response"
    );
}

async fn mock_with(doc: &serde_json::Value, container: Vec<u8>) -> RemoteFile {
    let addr = start_mock(Mock {
        manifest: serde_json::to_vec(doc).unwrap(),
        container,
        pause_at: None,
        release: Arc::new(Notify::new()),
        events: Arc::default(),
    })
    .await;
    Client::builder(&format!("http://{addr}"))
        .retries(1)
        .build()
        .unwrap()
        .file("org/model", "m.safetensors")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_manifests_are_refused_before_fetching() {
    let (container, m, doc) = container_of("minilm-fp8-e4m3-pertensor.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.safetensors");
    // The honest mock works: the test's server is right.
    let f = mock_with(&doc, container.clone()).await;
    f.download(&dest).await.unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(fixture("minilm-fp8-e4m3-pertensor.safetensors")).unwrap()
    );
    std::fs::remove_file(&dest).unwrap();

    let t = m
        .entries
        .iter()
        .position(|e| e.name.is_some() && e.frames.len() > 1)
        .unwrap();
    let lies: Vec<(&str, Lie)> = vec![
        (
            "frames past the container's end",
            Box::new(|d| d["container"]["size"] = serde_json::json!(100)),
        ),
        (
            "overlapping tensors",
            Box::new(move |d| {
                let v = d["manifest"]["entries"][t + 1]["original"][0]
                    .as_u64()
                    .unwrap();
                d["manifest"]["entries"][t + 1]["original"][0] = serde_json::json!(v - 4);
            }),
        ),
        (
            "absurd chunk size",
            Box::new(move |d| {
                d["manifest"]["entries"][t]["chunk_bytes"] = serde_json::json!(1u64 << 40)
            }),
        ),
        (
            "absurd frame sizes",
            Box::new(move |d| {
                let n = d["manifest"]["entries"][t]["frames"]
                    .as_array()
                    .unwrap()
                    .len();
                let total = d["manifest"]["entries"][t]["compressed"][1]
                    .as_u64()
                    .unwrap()
                    - d["manifest"]["entries"][t]["compressed"][0]
                        .as_u64()
                        .unwrap();
                let mut frames = vec![serde_json::json!(0); n];
                frames[0] = serde_json::json!(total);
                d["manifest"]["entries"][t]["frames"] = serde_json::json!(frames);
            }),
        ),
        (
            "shape that does not fit",
            Box::new(move |d| {
                d["manifest"]["entries"][t]["shape"] = serde_json::json!([1u64 << 62, 1u64 << 62])
            }),
        ),
        (
            "original size",
            Box::new(|d| d["original_size"] = serde_json::json!(1u64 << 50)),
        ),
        (
            "not a manifest",
            Box::new(|d| *d = serde_json::json!({"hello": "world"})),
        ),
    ];
    for (what, lie) in lies {
        let mut d = doc.clone();
        lie(&mut d);
        let f = mock_with(&d, container.clone()).await;
        let e = f.download(&dest).await.unwrap_err();
        assert!(matches!(e, Error::InvalidManifest { .. }), "{what}: {e}");
        let e = f.tensors(Filter::all()).next().await.unwrap().unwrap_err();
        assert!(matches!(e, Error::InvalidManifest { .. }), "{what}: {e}");
        assert!(!dest.exists(), "{what}");
    }

    // A container shorter than the manifest says: the server answers 416.
    let f = mock_with(
        &doc,
        container[..m.entries[t].compressed[0] as usize].to_vec(),
    )
    .await;
    let e = f.download(&dest).await.unwrap_err();
    assert!(matches!(e, Error::RangeNotSatisfiable { .. }), "{e}");
    assert!(!dest.exists());

    // Frames whose bytes are not the ones the digests describe: the tensor is fetched
    // again once, then the call fails naming it.
    let mut bad = container.clone();
    let e = &m.entries[t];
    bad[(e.compressed[0] + e.frames[0] / 2) as usize] ^= 0x10;
    let f = mock_with(&doc, bad).await;
    let err = f.download(&dest).await.unwrap_err();
    let name = e.name.clone().unwrap();
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what.contains(&name)),
        "{err}"
    );
    assert!(!dest.exists());
}

// ---------------------------------------------------------------------------------------
// A fault-injecting proxy in front of the real server. One request per connection
// (`Connection: close` is added), so each fault applies to exactly one response.

#[derive(Clone, Copy, Default, Debug)]
struct Fault {
    /// Close the connection after this many body bytes.
    cut_after: Option<u64>,
    /// Flip the byte at this absolute container offset, if the response holds it.
    flip_offset: Option<u64>,
    /// Send this many body bytes, then nothing (the connection stays open).
    stall_after: Option<u64>,
    /// Remove the Range header: the server answers 200 with the whole container.
    strip_range: bool,
    /// Close the connection without an answer.
    refuse: bool,
}

type Rule = Arc<dyn Fn(u64, Option<(u64, u64)>) -> Fault + Send + Sync>;

struct Proxy {
    addr: SocketAddr,
    /// Container body bytes forwarded.
    body_bytes: Arc<AtomicU64>,
}

async fn start_proxy(upstream: SocketAddr, rule: Rule) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body_bytes = Arc::new(AtomicU64::new(0));
    let counter = body_bytes.clone();
    let requests = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = l.accept().await else {
                return;
            };
            let (rule, counter, requests) = (rule.clone(), counter.clone(), requests.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut down).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text.split(' ').nth(1).unwrap_or("").to_string();
                let container = target.contains(".fz") || target.contains("format=fz");
                let range = header_value(&text, "range").and_then(|r| parse_range(&r));
                let fault = if container {
                    rule(requests.fetch_add(1, SeqCst), range)
                } else {
                    Fault::default()
                };
                if fault.refuse {
                    return;
                }
                let mut lines: Vec<&str> =
                    text.trim_end_matches("\r\n\r\n").split("\r\n").collect();
                lines.retain(|l| {
                    let k = l
                        .split(':')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase();
                    k != "connection" && !(fault.strip_range && k == "range")
                });
                let request = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"));
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                if up.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                // The body starts at this container offset (a 200 starts at 0).
                let base = if fault.strip_range {
                    0
                } else {
                    range.map_or(0, |r| r.0)
                };
                let mut head_done = false;
                let mut pending = Vec::new();
                let mut sent_body = 0u64;
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match up.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut data = buf[..n].to_vec();
                    if !head_done {
                        pending.extend_from_slice(&data);
                        let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        if down.write_all(&pending[..p + 4]).await.is_err() {
                            return;
                        }
                        data = pending[p + 4..].to_vec();
                        head_done = true;
                    }
                    if let Some(off) = fault.flip_offset {
                        if off >= base + sent_body && off < base + sent_body + data.len() as u64 {
                            data[(off - base - sent_body) as usize] ^= 0x01;
                        }
                    }
                    let limit = fault.cut_after.or(fault.stall_after);
                    if let Some(lim) = limit {
                        let room = lim.saturating_sub(sent_body) as usize;
                        if data.len() >= room {
                            let _ = down.write_all(&data[..room]).await;
                            if container {
                                counter.fetch_add(room as u64, SeqCst);
                            }
                            if fault.stall_after.is_some() {
                                // Hold the connection open without sending anything.
                                tokio::time::sleep(Duration::from_secs(120)).await;
                            }
                            return;
                        }
                    }
                    if down.write_all(&data).await.is_err() {
                        return;
                    }
                    sent_body += data.len() as u64;
                    if container {
                        counter.fetch_add(data.len() as u64, SeqCst);
                    }
                }
            });
        }
    });
    Proxy { addr, body_bytes }
}

fn via(
    proxy: &Proxy,
    tune: impl FnOnce(floatzip_client::ClientBuilder) -> floatzip_client::ClientBuilder,
) -> RemoteFile {
    tune(
        Client::builder(&format!("http://{}", proxy.addr))
            .stall_timeout(Duration::from_millis(500)),
    )
    .build()
    .unwrap()
    .file("org/model", "m.safetensors")
    .unwrap()
}

fn upstream(s: &TestServer) -> SocketAddr {
    s.server.addr
}

async fn served_as_m(name: &str) -> (TestServer, Manifest, Vec<u8>) {
    let s = start_server(false).await;
    let f = client(&s.url())
        .build()
        .unwrap()
        .file("org/model", "m.safetensors")
        .unwrap();
    f.upload(&fixture(name)).await.unwrap();
    let m = f.manifest().await.unwrap().manifest.clone();
    (s, m, std::fs::read(fixture(name)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_are_resumed_from_the_last_frame() {
    let (s, _m, original) = served_as_m("minilm-f32.safetensors").await;
    // Every container response is cut after 100 KB: the download needs many requests.
    let proxy = start_proxy(
        upstream(&s),
        Arc::new(|_, _| Fault {
            cut_after: Some(100_000),
            ..Fault::default()
        }),
    )
    .await;
    let f = via(&proxy, |b| b.jobs(2));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.safetensors");
    let r = f.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), original);
    assert!(r.retries > 0);
    no_leftovers(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_dropped_and_retried() {
    let (s, _m, original) = served_as_m("minilm-bf16.safetensors").await;
    let proxy = start_proxy(
        upstream(&s),
        Arc::new(|n, _| {
            if n < 3 {
                Fault {
                    stall_after: Some(30_000),
                    ..Fault::default()
                }
            } else {
                Fault::default()
            }
        }),
    )
    .await;
    let f = via(&proxy, |b| {
        b.jobs(1).stall_timeout(Duration::from_millis(300))
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.safetensors");
    let r = f.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), original);
    assert!(r.retries >= 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_answer_to_a_range_request_is_a_restart() {
    let (s, _m, original) = served_as_m("minilm-f16.safetensors").await;
    let proxy = start_proxy(
        upstream(&s),
        Arc::new(|_, _| Fault {
            strip_range: true,
            ..Fault::default()
        }),
    )
    .await;
    let f = via(&proxy, |b| b.jobs(2).coalesce_bytes(200_000));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.safetensors");
    f.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), original);
    // And the same with tensors into memory.
    let all = tensors_of(&original);
    let mut n = 0;
    let mut stream = f.tensors(Filter::all());
    while let Some(t) = stream.next().await {
        let t = t.unwrap();
        assert_eq!(t.bytes, all[&t.name].2);
        n += 1;
    }
    assert_eq!(n, all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_detected_and_the_tensor_fetched_again() {
    let (s, m, original) = served_as_m("minilm-bf16.safetensors").await;
    let t = m
        .entries
        .iter()
        .position(|e| e.name.is_some() && e.frames.len() > 2)
        .unwrap();
    let e = &m.entries[t];
    // Inside the tensor's second frame, so its first frame was already delivered.
    let target = e.compressed[0] + e.frames[0] + e.frames[1] / 2;
    let flips = Arc::new(AtomicU64::new(0));
    let f2 = flips.clone();
    // Once: the refetch succeeds.
    let proxy = start_proxy(
        upstream(&s),
        Arc::new(move |_, r| {
            let covers = r.is_some_and(|(a, b)| a <= target && target <= b);
            if covers && f2.fetch_add(1, SeqCst) == 0 {
                Fault {
                    flip_offset: Some(target),
                    ..Fault::default()
                }
            } else {
                Fault::default()
            }
        }),
    )
    .await;
    let f = via(&proxy, |b| b.jobs(2));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.safetensors");
    let r = f.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), original);
    assert_eq!(r.refetches, 1);
    std::fs::remove_file(&dest).unwrap();

    // Always: the call fails naming the tensor, and nothing is left under the final name.
    let proxy = start_proxy(
        upstream(&s),
        Arc::new(move |_, _| Fault {
            flip_offset: Some(target),
            ..Fault::default()
        }),
    )
    .await;
    let f = via(&proxy, |b| b.jobs(2));
    let err = f.download(&dest).await.unwrap_err();
    let name = e.name.clone().unwrap();
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what.contains(&name)),
        "{err}"
    );
    assert!(err.to_string().contains(&name));
    assert!(!dest.exists());
    let err = f.tensor(&name).await.unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what.contains(&name)),
        "{err}"
    );
    let sub = dir.path().join("sub.safetensors");
    let err = f
        .download_subset(&Filter::exact([name.as_str()]), &sub)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Integrity { .. }), "{err}");
    assert!(!sub.exists());
    no_leftovers_except_resume(dir.path());
}

/// After a failed whole-file download only its `.part` and progress log may remain.
fn no_leftovers_except_resume(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            n.ends_with(".part") || n.ends_with(".part.progress"),
            "unexpected file {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_without_refetching_verified_tensors() {
    let (s, m, original) = served_as_m("minilm-f32.safetensors").await;
    // The link dies for good after the header and two range requests.
    let proxy = start_proxy(
        upstream(&s),
        Arc::new(|n, _| {
            if n < 3 {
                Fault::default()
            } else {
                Fault {
                    refuse: true,
                    ..Fault::default()
                }
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.safetensors");
    let f = via(&proxy, |b| b.jobs(1).retries(1).coalesce_bytes(1));
    let err = f.download(&dest).await.unwrap_err();
    assert!(
        matches!(err, Error::Network { .. } | Error::Truncated { .. }),
        "{err}"
    );
    assert!(!dest.exists());
    let log = std::fs::read_to_string(dir.path().join("m.safetensors.part.progress")).unwrap();
    assert!(
        log.lines().count() >= 3,
        "verified entries are recorded: {log}"
    );

    // Again, through a clean proxy that counts what it forwards.
    let proxy = start_proxy(upstream(&s), Arc::new(|_, _| Fault::default())).await;
    let f = via(&proxy, |b| b.jobs(2));
    let r = f.download(&dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), original);
    let nonempty = m.entries.iter().filter(|e| e.original_len() > 0).count();
    assert!(r.entries_reused >= 2, "{r:?}");
    assert_eq!(r.entries_reused + r.entries_fetched, nonempty);
    let reused_bytes: u64 = m.compressed_data_len() - r.wire_bytes.min(m.compressed_data_len());
    assert!(reused_bytes > 0);
    assert!(
        proxy.body_bytes.load(SeqCst) < m.compressed_data_len(),
        "the second run fetched {} of {} compressed bytes",
        proxy.body_bytes.load(SeqCst),
        m.compressed_data_len()
    );
    no_leftovers(dir.path());

    // A leftover .part for another file is not trusted: the download starts afresh.
    std::fs::write(dir.path().join("x.part"), b"junk").unwrap();
    std::fs::write(
        dir.path().join("x.part.progress"),
        "{\"sha256\":\"00\"}\n0\n1\n",
    )
    .unwrap();
    let r = f.download(&dir.path().join("x")).await.unwrap();
    assert_eq!(r.entries_reused, 0);
    assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), original);
}

#[tokio::test]
async fn files_stored_as_deltas_download_through_the_server() {
    let s = start_server(false).await;
    let ckpt = |n: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ckpt")
            .join(n)
    };
    push(&s.url(), &ckpt("ckpt.step0000.bf16.safetensors")).await;
    let new = std::fs::read(ckpt("ckpt.step0200.bf16.safetensors")).unwrap();
    let f = client(&s.url())
        .build()
        .unwrap()
        .file("org/model", "step200.safetensors")
        .unwrap();
    let up = f
        .upload_delta(
            &ckpt("ckpt.step0200.bf16.safetensors"),
            "org/model/ckpt.step0000.bf16.safetensors",
        )
        .await
        .unwrap();
    assert_eq!(
        up.delta_base.as_deref(),
        Some("org/model/ckpt.step0000.bf16.safetensors")
    );
    assert!(up.bytes_stored * 2 < up.bytes_in, "{up:?}");
    assert!(f.manifest().await.unwrap().manifest.base.is_some());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("step200.safetensors");
    let report = f.download(&out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == new);
    assert!(report.sha256.is_some());
    no_leftovers(dir.path());
    let want = tensors_of(&new);
    let mut n = 0;
    let mut stream = f.tensors(Filter::all());
    while let Some(t) = stream.next().await {
        let t = t.unwrap();
        assert!(want[&t.name].2 == t.bytes, "{}", t.name);
        n += 1;
    }
    assert_eq!(n, want.len());
}
