//! `floatzip push` and `floatzip pull` end to end against the real server in-process:
//! whole files byte-identical, subsets that the `safetensors` crate opens, and clear
//! failures (bad token, unknown file, unknown tensor) that leave no output behind.

use std::path::{Path, PathBuf};
use std::process::Output;

use floatzip_server::Config;

const WRITE: &str = "cli-write-token";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn floatzip(args: Vec<String>, dir: PathBuf) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_floatzip"))
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("run floatzip")
    })
    .await
    .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed: {err}");
    err
}

fn failed(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "should have failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_whole_and_subset() {
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
    let server = floatzip_server::start(c).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    let src = fixture("minilm-bf16.safetensors");
    let url = format!("{}/v1/models/org/mini/model.safetensors", server.url());

    // push: a wrong token is refused, the right one stores the file.
    let e = failed(
        &floatzip(
            args(&["push", src.to_str().unwrap(), &url, "--token", "wrong"]),
            dir.clone(),
        )
        .await,
    );
    assert!(e.contains("403") || e.contains("401"), "{e}");
    let out = ok(&floatzip(
        args(&["push", src.to_str().unwrap(), &url, "--token", WRITE]),
        dir.clone(),
    )
    .await);
    assert!(out.contains("tensors"), "{out}");

    // pull: the whole file, byte-identical, with a summary.
    let out = ok(&floatzip(args(&["pull", &url]), dir.clone()).await);
    assert!(out.contains("verified: SHA-256"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    // An existing output is not overwritten without --force.
    let e = failed(&floatzip(args(&["pull", &url]), dir.clone()).await);
    assert!(e.contains("exists"), "{e}");
    ok(&floatzip(
        args(&["pull", &url, "--force", "--quiet", "--jobs", "2"]),
        dir.clone(),
    )
    .await);

    // A subset: layer 0 without biases, plus the embeddings' LayerNorm.
    let out = ok(&floatzip(
        args(&[
            "pull",
            &url,
            "-o",
            "sub.safetensors",
            "--include",
            "encoder.*",
            "--include",
            "embeddings.LayerNorm.*",
            "--exclude",
            "*.bias",
            "--layers",
            "0-0",
        ]),
        dir.clone(),
    )
    .await);
    assert!(out.contains("verified"), "{out}");
    let original = std::fs::read(&src).unwrap();
    let full = safetensors::SafeTensors::deserialize(&original).unwrap();
    let sub_bytes = std::fs::read(dir.join("sub.safetensors")).unwrap();
    let sub = safetensors::SafeTensors::deserialize(&sub_bytes).unwrap();
    let mut want: Vec<String> = full
        .names()
        .into_iter()
        .filter(|n| n.starts_with("encoder.layer.0.") && !n.ends_with(".bias"))
        .map(|s| s.to_string())
        .collect();
    want.sort();
    let mut got: Vec<String> = sub.names().into_iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want);
    for n in &got {
        assert_eq!(
            sub.tensor(n).unwrap().data(),
            full.tensor(n).unwrap().data(),
            "{n}"
        );
    }

    // Clear failures, no output left behind.
    let e = failed(
        &floatzip(
            args(&[
                "pull",
                &url,
                "-o",
                "x.safetensors",
                "--include",
                "no.such.tensor",
            ]),
            dir.clone(),
        )
        .await,
    );
    assert!(e.contains("no.such.tensor"), "{e}");
    let missing = format!("{}/v1/models/org/mini/missing.safetensors", server.url());
    let e = failed(
        &floatzip(
            args(&["pull", &missing, "-o", "y.safetensors"]),
            dir.clone(),
        )
        .await,
    );
    assert!(e.contains("404"), "{e}");
    let e = failed(&floatzip(args(&["pull", "http://127.0.0.1:1/nowhere"]), dir.clone()).await);
    assert!(e.contains("invalid URL"), "{e}");
    let e = failed(
        &floatzip(
            args(&["pull", &url, "-o", "z.safetensors", "--layers", "9-3"]),
            dir.clone(),
        )
        .await,
    );
    assert!(e.contains("layer range"), "{e}");
    for name in ["x.safetensors", "y.safetensors", "z.safetensors"] {
        assert!(!dir.join(name).exists(), "{name}");
    }
    server.shutdown().await.unwrap();
}
