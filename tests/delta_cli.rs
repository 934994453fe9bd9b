//! `floatzip compress --base` / `decompress --base` / `inspect` on real consecutive
//! checkpoints: byte-identical round trip, and a missing or wrong base refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn floatzip(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floatzip"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run floatzip")
}

fn ckpt(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ckpt")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn delta_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (base, new) = (
        ckpt("ckpt.step0000.bf16.safetensors"),
        ckpt("ckpt.step0200.bf16.safetensors"),
    );
    let o = floatzip(
        &["compress", &new, "--base", &base, "-o", "new.fz", "-q"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let delta_len = std::fs::metadata(dir.path().join("new.fz")).unwrap().len();
    let o = floatzip(&["compress", &new, "-o", "plain.fz", "-q"], dir.path());
    assert!(o.status.success());
    let plain_len = std::fs::metadata(dir.path().join("plain.fz"))
        .unwrap()
        .len();
    assert!(
        delta_len < plain_len,
        "delta {delta_len} vs standalone {plain_len}"
    );

    let o = floatzip(&["inspect", "new.fz"], dir.path());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains(" < standalone ") && text.contains("delta container"),
        "{text}"
    );
    // Per tensor, both sizes: the stored one is the smaller.
    let o = floatzip(&["inspect", "new.fz", "--json"], dir.path());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut compared = 0;
    for t in doc["tensors"].as_array().unwrap() {
        if let Some(pair) = t["delta_vs_standalone"].as_array() {
            let (d, s) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
            assert_eq!(t["compressed_bytes"].as_u64().unwrap(), d.min(s), "{t}");
            compared += 1;
        }
    }
    assert!(compared > 0);

    // No base, or the wrong one: an error, and no output file.
    let o = floatzip(&["decompress", "new.fz", "-o", "a.st", "-q"], dir.path());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--base"));
    assert!(!dir.path().join("a.st").exists());
    let other = ckpt("ckpt-ft.step1000.bf16.safetensors");
    let o = floatzip(
        &["decompress", "new.fz", "--base", &other, "-o", "b.st", "-q"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong base"));
    assert!(!dir.path().join("b.st").exists());

    let o = floatzip(
        &["decompress", "new.fz", "--base", &base, "-o", "c.st", "-q"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("c.st")).unwrap(),
        std::fs::read(&new).unwrap()
    );
}
