//! floatzip as a drop-in Hugging Face Hub mirror, checked with the real `huggingface_hub`
//! library: `floatzip push-dir` uploads a model folder (real fixture weights plus config
//! and tokenizer files, some in sub-folders like `1_Pooling/` and `onnx/`, and hidden
//! folders that must be skipped) as one revision, then with `HF_ENDPOINT` pointing at the
//! server `hf download`, `snapshot_download`, `hf_hub_download` (of nested files too) and
//! `get_safetensors_metadata` all succeed with byte-identical files in the right
//! sub-folders, `list_repo_tree` sees the folders, a second download comes from the
//! library's cache, missing repos/revisions/files raise the library's own errors, and an
//! old revision stays downloadable after a new upload.
//!
//! A second test (no Python needed) checks that hostile nested names are refused with 400
//! and a file beside a folder of the same name with 409, leaving storage untouched.
//!
//! Python comes from `FLOATZIP_HF_PYTHON` (default `python3`) and must import
//! `huggingface_hub`; otherwise the test fails with the command that installs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use floatzip_server::Config;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WRITE: &str = "hf-write-token";
const READ: &str = "hf-read-token";
const INSTALL: &str = "python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install huggingface_hub \
     && export FLOATZIP_HF_PYTHON=/tmp/hfvenv/bin/python";

fn python() -> String {
    std::env::var("FLOATZIP_HF_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Runs a command on the blocking pool (the server runs in this process).
async fn run(mut cmd: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("spawn"))
        .await
        .unwrap()
}

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A python command talking to `endpoint` with a fresh cache in `home`.
fn py(endpoint: &str, home: &Path, token: Option<&str>) -> std::process::Command {
    let mut c = std::process::Command::new(python());
    c.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c
}

/// The model folder: real weights plus the small files a Hub repo holds.
fn model_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let weights = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm-bf16.safetensors"),
    )
    .unwrap();
    let mut files = BTreeMap::new();
    files.insert("model.safetensors".to_string(), weights);
    files.insert(
        "config.json".into(),
        br#"{"architectures":["BertModel"],"hidden_size":384,"model_type":"bert","num_hidden_layers":6,"torch_dtype":"bfloat16"}"#.to_vec(),
    );
    files.insert(
        "tokenizer_config.json".into(),
        br#"{"do_lower_case":true,"model_max_length":512,"tokenizer_class":"BertTokenizer"}"#
            .to_vec(),
    );
    files.insert(
        "special_tokens_map.json".into(),
        br#"{"cls_token":"[CLS]","mask_token":"[MASK]","pad_token":"[PAD]","sep_token":"[SEP]","unk_token":"[UNK]"}"#.to_vec(),
    );
    files.insert(
        "vocab.txt".into(),
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nof\nand\n"
            .as_bytes()
            .to_vec(),
    );
    files.insert(
        "README.md".into(),
        b"---\nlicense: apache-2.0\n---\n# mini\nServed by floatzip.\n".to_vec(),
    );
    // Sub-folders, as sentence-transformers and ONNX exports lay them out.
    files.insert(
        "1_Pooling/config.json".into(),
        br#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true}"#.to_vec(),
    );
    // Weight bytes without a safetensors header: the generic byte coder's path.
    let onnx: Vec<u8> = files["model.safetensors"][400_000..700_000].to_vec();
    files.insert("onnx/model.onnx".into(), onnx);
    files.insert(
        "tokenizer/deep/er/vocab.txt".into(),
        b"[PAD]\n[UNK]\nnested\n".to_vec(),
    );
    for (k, v) in &files {
        let p = dir.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
    // Hidden entries at any depth are not model files: push-dir skips them.
    for hidden in [".git/HEAD", ".cache/huggingface/download/x.lock", "onnx/.x"] {
        let p = dir.join(hidden);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"not a model file").unwrap();
    }
    files
}

/// The files below `dir` (hidden ones excluded), as repo paths.
fn repo_paths(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| {
            p.strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .replace('\\', "/")
        })
        .filter(|p| !p.split('/').any(|s| s.starts_with('.')))
        .collect();
    out.sort();
    out
}

fn assert_same_files(got_dir: &Path, want: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(
        repo_paths(got_dir),
        want.keys().cloned().collect::<Vec<_>>(),
        "files in {}",
        got_dir.display()
    );
    for (k, v) in want {
        let got = std::fs::read(got_dir.join(k))
            .unwrap_or_else(|e| panic!("{} missing: {e}", got_dir.join(k).display()));
        assert_eq!(
            sha256(&got),
            sha256(v),
            "{k} differs in {}",
            got_dir.display()
        );
    }
}

const SCRIPT: &str = r#"
import json, os, sys
from huggingface_hub import snapshot_download, hf_hub_download, get_safetensors_metadata, list_repo_tree
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
repo, old_rev = sys.argv[1], sys.argv[2]
out = {}
out["snapshot"] = snapshot_download(repo)
out["config"] = hf_hub_download(repo, "config.json")
out["pooling"] = hf_hub_download(repo, "1_Pooling/config.json")
out["onnx"] = hf_hub_download(repo, "onnx/model.onnx", cache_dir=os.environ["HF_HOME"] + "/other")
def tree(**kw):
    return sorted(("d " if type(f).__name__ == "RepoFolder" else "f ") + f.path for f in list_repo_tree(repo, **kw))
out["tree_root"] = tree()
out["tree_tokenizer"] = tree(path_in_repo="tokenizer", recursive=True)
meta = get_safetensors_metadata(repo)
out["tensors"] = sorted(meta.files_metadata["model.safetensors"].tensors.keys())
out["old_config"] = hf_hub_download(repo, "config.json", revision=old_rev)
def err(f):
    try:
        f()
        return None
    except (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as e:
        return type(e).__name__
out["missing_file"] = err(lambda: hf_hub_download(repo, "missing.json"))
out["missing_repo"] = err(lambda: hf_hub_download(repo + "-nope", "config.json"))
out["missing_rev"] = err(lambda: hf_hub_download(repo, "config.json", revision="0" * 40))
print(json.dumps(out))
"#;

const AGAIN: &str = r#"
import json, sys
from huggingface_hub import snapshot_download, hf_hub_download
print(json.dumps({"snapshot": snapshot_download(sys.argv[1]), "one": hf_hub_download(sys.argv[1], "model.safetensors")}))
"#;

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn bytes_out(http: &reqwest::Client, base: &str) -> u64 {
    let m = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("floatzip_bytes_out_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("bytes_out metric")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_downloads_through_floatzip() {
    // The library must be there: a missing one fails the test with the fix.
    let probe = std::process::Command::new(python())
        .args([
            "-c",
            "import huggingface_hub; print(huggingface_hub.__version__)",
        ])
        .output();
    let why = match &probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = why {
        panic!(
            "huggingface_hub is not importable with {:?} ({why}). Install it:\n  {INSTALL}",
            python()
        );
    }

    let data = tempfile::tempdir().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.storage.url = data.path().to_str().unwrap().to_string();
    c.storage.temp_dir = temp.path().to_str().unwrap().to_string();
    c.codec.chunk_bytes = 64 << 10;
    c.auth.write_tokens = vec![WRITE.into()];
    c.auth.read_tokens = vec![READ.into()];
    let server = floatzip_server::start(c).await.unwrap();
    let base = server.url();
    let http = reqwest::Client::new();

    // push-dir: the whole folder as one revision.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("model");
    std::fs::create_dir(&src).unwrap();
    let mut files = model_dir(&src);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_floatzip"));
    cmd.args([
        "push-dir",
        src.to_str().unwrap(),
        &format!("{base}/v1/models/acme/mini"),
        "--token",
        WRITE,
    ]);
    let rev1 = ok("push-dir", &run(cmd).await).trim().to_string();
    assert!(
        rev1.len() == 40 && rev1.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rev1:?}"
    );

    // The raw protocol: reads need the token; info names the revision and every file.
    let info_url = format!("{base}/api/models/acme/mini");
    let r = http.get(&info_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let info: serde_json::Value = http
        .get(&info_url)
        .bearer_auth(READ)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sha"], rev1.as_str());
    let names: Vec<&str> = info["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rfilename"].as_str().unwrap())
        .collect();
    assert_eq!(names, files.keys().map(String::as_str).collect::<Vec<_>>());

    // resolve: headers the library reads, and a Range inside the weights.
    let weights = files["model.safetensors"].clone();
    let url = format!("{base}/acme/mini/resolve/main/model.safetensors");
    let h = http.head(&url).bearer_auth(READ).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let hv = |n: &str| h.headers()[n].to_str().unwrap().to_string();
    assert_eq!(hv("x-repo-commit"), rev1);
    assert_eq!(hv("etag"), format!("\"{}\"", sha256(&weights)));
    assert_eq!(hv("x-linked-etag"), format!("\"{}\"", sha256(&weights)));
    assert_eq!(hv("x-linked-size"), weights.len().to_string());
    assert_eq!(hv("content-length"), weights.len().to_string());
    assert_eq!(hv("accept-ranges"), "bytes");
    let part = http
        .get(&url)
        .bearer_auth(READ)
        .header("range", "bytes=1000-200999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(&part.bytes().await.unwrap()[..], &weights[1000..201000]);
    let missing = http
        .head(format!("{base}/acme/mini/resolve/main/nope.bin"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-error-code"], "EntryNotFound");

    // A new upload of one file makes a new revision; the old one stays.
    let new_config = br#"{"architectures":["BertModel"],"hidden_size":384,"model_type":"bert","num_hidden_layers":6}"#.to_vec();
    let put: serde_json::Value = http
        .put(format!("{base}/v1/models/acme/mini/config.json"))
        .bearer_auth(WRITE)
        .body(new_config.clone())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let rev2 = put["revision"].as_str().unwrap().to_string();
    assert_ne!(rev2, rev1);
    let old_config = files.insert("config.json".into(), new_config).unwrap();

    // The library: snapshot, one file, safetensors metadata, old revision, errors.
    let home = work.path().join("hf-home");
    let mut cmd = py(&base, &home, Some(READ));
    cmd.args(["-c", SCRIPT, "acme/mini", &rev1]);
    let out = ok("huggingface_hub script", &run(cmd).await);
    let v: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let snap = PathBuf::from(v["snapshot"].as_str().unwrap());
    assert!(snap.ends_with(&rev2), "{}", snap.display());
    assert_same_files(&snap, &files);
    assert_eq!(
        sha256(&std::fs::read(v["config"].as_str().unwrap()).unwrap()),
        sha256(&files["config.json"])
    );
    assert_eq!(
        sha256(&std::fs::read(v["old_config"].as_str().unwrap()).unwrap()),
        sha256(&old_config)
    );
    // Nested files, one by one, land in their sub-folders of the snapshot.
    for (key, file) in [
        ("pooling", "1_Pooling/config.json"),
        ("onnx", "onnx/model.onnx"),
    ] {
        let got = PathBuf::from(v[key].as_str().unwrap());
        assert!(got.ends_with(file), "{}", got.display());
        assert_eq!(sha256(&std::fs::read(&got).unwrap()), sha256(&files[file]));
    }
    let strs = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        strs("tree_root"),
        [
            "d 1_Pooling",
            "d onnx",
            "d tokenizer",
            "f README.md",
            "f config.json",
            "f model.safetensors",
            "f special_tokens_map.json",
            "f tokenizer_config.json",
            "f vocab.txt"
        ]
    );
    assert_eq!(
        strs("tree_tokenizer"),
        [
            "d tokenizer/deep",
            "d tokenizer/deep/er",
            "f tokenizer/deep/er/vocab.txt"
        ]
    );
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut want: Vec<String> = st.names().into_iter().map(String::from).collect();
    want.sort();
    let got: Vec<String> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(v["missing_file"], "RemoteEntryNotFoundError");
    assert_eq!(v["missing_repo"], "RepositoryNotFoundError");
    assert_eq!(v["missing_rev"], "RevisionNotFoundError");

    // Again: served from the cache (the ETags match), so no file body is sent.
    let before = bytes_out(&http, &base).await;
    let mut cmd = py(&base, &home, Some(READ));
    cmd.args(["-c", AGAIN, "acme/mini"]);
    let out = ok("second download", &run(cmd).await);
    let v: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(PathBuf::from(v["snapshot"].as_str().unwrap()), snap);
    let after = bytes_out(&http, &base).await;
    assert!(
        after - before < 16 << 10,
        "the second download sent {} bytes",
        after - before
    );

    // The CLI, into a local folder.
    let local = work.path().join("local");
    let mut cmd = py(&base, &work.path().join("hf-home-2"), Some(READ));
    cmd.args([
        "-m",
        "huggingface_hub.cli.hf",
        "download",
        "acme/mini",
        "--local-dir",
        local.to_str().unwrap(),
    ]);
    ok("hf download", &run(cmd).await);
    assert_same_files(&local, &files);

    // Deleting every file deletes the repo, with its history and blobs.
    for name in files.keys() {
        let r = http
            .delete(format!("{base}/v1/models/acme/mini/{name}"))
            .bearer_auth(WRITE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{name}");
    }
    let r = http.get(&info_url).bearer_auth(READ).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-error-code"], "RepoNotFound");
    let r = http
        .get(format!("{base}/acme/mini/resolve/{rev1}/config.json"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let left: Vec<_> = walk(data.path());
    assert!(left.is_empty(), "{left:?}");

    server.shutdown().await.unwrap();
}

/// One raw HTTP/1.1 exchange, so that paths reach the server exactly as written (HTTP
/// clients normalise `..` and `//`); returns the status and the body.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
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

fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]["code"].as_str().unwrap().to_string()
}

/// Every file below `dir` with its bytes: the whole state of a local store.
fn store_state(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_names_are_checked_and_cannot_collide() {
    let data = tempfile::tempdir().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    c.storage.url = data.path().to_str().unwrap().to_string();
    c.storage.temp_dir = temp.path().to_str().unwrap().to_string();
    c.auth.write_tokens = vec![WRITE.into()];
    let server = floatzip_server::start(c).await.unwrap();
    let (base, addr) = (server.url(), server.addr);
    let http = reqwest::Client::new();
    let put = |path: &str, body: &'static [u8]| {
        http.put(format!("{base}/v1/models/o/m/{path}"))
            .bearer_auth(WRITE)
            .body(body)
            .send()
    };
    for (path, body) in [
        ("a", &b"file a"[..]),
        ("c/d.txt", b"file c/d.txt"),
        ("x.json", b"{}"),
        ("deep/er/still/f.bin", b"\x00\x01\x02"),
    ] {
        let r = put(path, body).await.unwrap();
        assert_eq!(r.status(), 201, "{path}: {}", r.text().await.unwrap());
    }
    let before = store_state(data.path());

    // Hostile nested names: 400 with the JSON error, for PUT, GET and DELETE alike.
    let deep = vec!["a"; 17].join("/");
    let long_path = vec!["b".repeat(100); 6].join("/");
    let long_segment = format!("c/{}", "d".repeat(129));
    let hostile = [
        ("empty segment", "c//d.txt".to_string()),
        ("leading slash", "/c/d.txt".to_string()),
        ("trailing slash", "c/".to_string()),
        ("dot-dot", "c/../a".to_string()),
        ("encoded dot-dot", "c/%2e%2e/a".to_string()),
        ("encoded slashes and dots", "c%2F..%2F..%2Fetc".to_string()),
        ("dot segment", "c/./d.txt".to_string()),
        ("hidden folder", ".git/config".to_string()),
        ("hidden nested", "c/.d".to_string()),
        ("NUL", "c/d%00.txt".to_string()),
        ("backslash", "c%5C..%5Cd".to_string()),
        ("space", "c/d%20e".to_string()),
        ("bad utf-8", "c/%FF".to_string()),
        ("reserved manifest", "e/manifest".to_string()),
        ("reserved tensors", "e/tensors/t".to_string()),
        ("folder named like a pointer", "a.json/b".to_string()),
        ("too deep", deep),
        ("too long", long_path),
        ("segment too long", long_segment),
    ];
    for (what, path) in &hostile {
        for method in ["PUT", "DELETE", "GET"] {
            let req = format!(
                "{method} /v1/models/o/m/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            );
            let (status, body) = raw_request(addr, &req).await;
            // A GET of `e/manifest` or `e/tensors/t` asks for the manifest or a tensor
            // of the flat file `e`, which does not exist.
            let sub_resource = matches!(path.as_str(), "e/manifest" | "e/tensors/t");
            let want = if method == "GET" && sub_resource {
                (404, "not_found")
            } else {
                (400, "invalid_name")
            };
            assert_eq!(
                (status, error_code(&body).as_str()),
                want,
                "{method} {what}: {path}"
            );
        }
    }

    // A file cannot sit beside a folder of the same name, either way round: 409.
    for (path, other) in [
        ("a/b", "a"),
        ("c", "c/d.txt"),
        ("deep/er", "deep/er/still/f.bin"),
    ] {
        let r = put(path, b"clash").await.unwrap();
        assert_eq!(r.status(), 409, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "path_conflict", "{path}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(other),
            "{v}"
        );
    }
    assert_eq!(
        store_state(data.path()),
        before,
        "a refused request changed storage"
    );

    // `x.json` and a folder `x/` have distinct keys; `%2F` is a `/`; sub-resources of
    // nested files are reachable.
    let r = put("x/y.json", b"nested y").await.unwrap();
    assert_eq!(r.status(), 201);
    for (path, want) in [
        ("x.json", &b"{}"[..]),
        ("x/y.json", b"nested y"),
        ("x%2Fy.json", b"nested y"),
        ("c/d.txt", b"file c/d.txt"),
    ] {
        let r = http
            .get(format!("{base}/v1/models/o/m/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(&r.bytes().await.unwrap()[..], want, "{path}");
    }
    let m: serde_json::Value = http
        .get(format!("{base}/v1/models/o/m/deep/er/still/f.bin/manifest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["path"], "o/m/deep/er/still/f.bin");
    assert_eq!(m["original_size"], 3);
    let list: serde_json::Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let urls: Vec<&str> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&"/v1/models/o/m/deep/er/still/f.bin"),
        "{urls:?}"
    );

    // The Hub view of the same repo: nested siblings, folder listings, nested resolve.
    let info: serde_json::Value = http
        .get(format!("{base}/api/models/o/m"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let siblings: Vec<&str> = info["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rfilename"].as_str().unwrap())
        .collect();
    assert_eq!(
        siblings,
        ["a", "c/d.txt", "deep/er/still/f.bin", "x.json", "x/y.json"]
    );
    let r = http
        .get(format!("{base}/o/m/resolve/main/deep/er/still/f.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"\x00\x01\x02");
    let r = http
        .get(format!("{base}/api/models/o/m/tree/main/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a file is not a folder");
    assert_eq!(r.headers()["x-error-code"], "EntryNotFound");

    // Deleting nested files leaves no empty folders behind, and frees the names.
    for path in ["deep/er/still/f.bin", "c/d.txt", "x/y.json"] {
        let r = http
            .delete(format!("{base}/v1/models/o/m/{path}"))
            .bearer_auth(WRITE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
    }
    assert!(!data.path().join("models/o/m/deep").exists());
    assert_eq!(put("c", b"now a file").await.unwrap().status(), 201);
    assert_eq!(put("deep/er", b"and this").await.unwrap().status(), 201);

    server.shutdown().await.unwrap();
}
