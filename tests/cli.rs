//! The `floatzip` binary end to end: compress, decompress, inspect, extract, bench, and its
//! behaviour on bad input (clear error, non-zero exit, no output file left behind).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn floatzip(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floatzip"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run floatzip")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn compress_decompress_round_trip_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(fixture(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.retain(|n| n.to_string_lossy().ends_with(".safetensors"));
    assert!(names.len() >= 11);
    for n in names {
        let n = n.to_string_lossy().into_owned();
        std::fs::copy(fixture(&n), dir.path().join(&n)).unwrap();
        ok(&floatzip(&["compress", &n, "--threads", "2"], dir.path()));
        let fz = dir.path().join(format!("{n}.fz"));
        assert!(
            std::fs::metadata(&fz).unwrap().len() < std::fs::metadata(fixture(&n)).unwrap().len()
        );
        std::fs::remove_file(dir.path().join(&n)).unwrap();
        ok(&floatzip(&["decompress", &format!("{n}.fz")], dir.path()));
        assert_eq!(sha(&dir.path().join(&n)), sha(&fixture(&n)), "{n}");
    }
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("minilm-mxfp4.safetensors"),
        dir.path().join("m.safetensors"),
    )
    .unwrap();
    ok(&floatzip(&["compress", "m.safetensors", "-q"], dir.path()));
    let again = floatzip(&["compress", "m.safetensors"], dir.path());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    ok(&floatzip(
        &["compress", "m.safetensors", "--force", "-q"],
        dir.path(),
    ));
    let d = floatzip(&["decompress", "m.safetensors.fz"], dir.path());
    assert!(
        !d.status.success(),
        "decompress must not overwrite the original"
    );
    ok(&floatzip(
        &["decompress", "m.safetensors.fz", "-o", "n.safetensors"],
        dir.path(),
    ));
    assert_eq!(
        sha(&dir.path().join("n.safetensors")),
        sha(&fixture("minilm-mxfp4.safetensors"))
    );
}

#[test]
fn inspect_reports_every_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("minilm-nvfp4.safetensors");
    ok(&floatzip(
        &["compress", src.to_str().unwrap(), "-o", "x.fz", "-q"],
        dir.path(),
    ));
    let o = floatzip(&["inspect", "x.fz", "--json"], dir.path());
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 33);
    let w = tensors
        .iter()
        .find(|t| t["name"] == "encoder.layer.0.attention.self.query.weight")
        .unwrap();
    assert_eq!(w["dtype"], "U8");
    assert_eq!(w["coded_as"], "F4");
    assert_eq!(w["original_bytes"], 73728);
    assert!(w["ratio"].as_f64().unwrap() < 1.0);
    assert!(w["floor_ratio"].as_f64().unwrap() > 0.5);
    let table = floatzip(&["inspect", "x.fz"], dir.path());
    ok(&table);
    assert!(String::from_utf8_lossy(&table.stdout)
        .contains("encoder.layer.0.output.dense.weight_scale"));
}

/// `--min-gain` raises the margin a coder must win by over raw storage: at 0.02 every packed
/// FP4 tensor of the NVFP4 fixture is stored raw (coded by rANS at the default), and the
/// file still comes back byte-identical. Values outside [0, 1) are refused before any output.
#[test]
fn min_gain_keeps_near_random_planes_raw() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("minilm-nvfp4.safetensors");
    let fp4_coders = |fz: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec!["compress", src.to_str().unwrap(), "-o", fz, "-q"];
        args.extend_from_slice(extra);
        ok(&floatzip(&args, dir.path()));
        let o = floatzip(&["inspect", fz, "--json"], dir.path());
        ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let tensors = v["tensors"].as_array().unwrap();
        tensors
            .iter()
            .filter(|t| t["coded_as"] == "F4")
            .map(|t| t["coders"].as_str().unwrap().to_string())
            .collect()
    };
    let default = fp4_coders("default.fz", &[]);
    let raw = fp4_coders("raw.fz", &["--min-gain", "0.02"]);
    assert!(default.iter().any(|c| c.contains("rans")), "{default:?}");
    assert!(
        !raw.is_empty() && raw.iter().all(|c| c.starts_with("raw")),
        "{raw:?}"
    );
    ok(&floatzip(
        &["decompress", "raw.fz", "-o", "back.safetensors"],
        dir.path(),
    ));
    assert_eq!(sha(&dir.path().join("back.safetensors")), sha(&src));
    for bad in ["1", "1.5", "-0.1", "nan", "x"] {
        let arg = format!("--min-gain={bad}");
        let o = floatzip(
            &["compress", src.to_str().unwrap(), "-o", "bad.fz", &arg],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(2), "{arg}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("expected a fraction"),
            "{arg}"
        );
        assert!(!dir.path().join("bad.fz").exists());
    }
}

#[test]
fn extract_writes_a_valid_safetensors_subset() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("minilm-bf16.safetensors");
    ok(&floatzip(
        &["compress", src.to_str().unwrap(), "-o", "x.fz", "-q"],
        dir.path(),
    ));
    ok(&floatzip(
        &[
            "extract",
            "x.fz",
            "--tensor",
            "encoder.layer.0.attention.self.*",
            "-n",
            "embeddings.LayerNorm.bias",
            "-o",
            "sub.safetensors",
        ],
        dir.path(),
    ));
    let original = std::fs::read(&src).unwrap();
    let original = safetensors::SafeTensors::deserialize(&original).unwrap();
    let sub = std::fs::read(dir.path().join("sub.safetensors")).unwrap();
    let sub = safetensors::SafeTensors::deserialize(&sub).unwrap();
    let mut names: Vec<String> = sub.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names.len(), 7, "{names:?}");
    for n in &names {
        let (a, b) = (sub.tensor(n).unwrap(), original.tensor(n).unwrap());
        assert_eq!(a.data(), b.data(), "{n}");
        assert_eq!(a.shape(), b.shape());
        assert_eq!(a.dtype(), b.dtype());
    }
    let missing = floatzip(
        &[
            "extract",
            "x.fz",
            "-n",
            "no.such.*",
            "-o",
            "none.safetensors",
        ],
        dir.path(),
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no.such"));
    assert!(!dir.path().join("none.safetensors").exists());
}

#[test]
fn corrupt_container_fails_cleanly_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("minilm-f16.safetensors");
    ok(&floatzip(
        &["compress", src.to_str().unwrap(), "-o", "x.fz", "-q"],
        dir.path(),
    ));
    let mut fz = std::fs::read(dir.path().join("x.fz")).unwrap();
    let mid = fz.len() / 2;
    fz[mid] ^= 0x40;
    std::fs::write(dir.path().join("bad.fz"), &fz).unwrap();
    let o = floatzip(&["decompress", "bad.fz", "-q"], dir.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.fz") && (err.contains("frame") || err.contains("SHA-256")),
        "{err}"
    );
    assert!(!o.stderr.windows(8).any(|w| w == b"panicked"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "only x.fz and bad.fz: {leftovers:?}");
    // Truncated safetensors input: an error naming the problem, no .fz written.
    let st = std::fs::read(&src).unwrap();
    std::fs::write(dir.path().join("cut.safetensors"), &st[..st.len() / 2]).unwrap();
    let o = floatzip(&["compress", "cut.safetensors", "-q"], dir.path());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("truncated"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.path().join("cut.safetensors.fz").exists());
}

#[test]
fn bench_reports_floatzip_zstd_and_floor() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("minilm-kv-fp8-e4m3.safetensors");
    let o = floatzip(
        &["bench", src.to_str().unwrap(), "--runs", "1", "--json"],
        dir.path(),
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v[0]["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"floatzip") && names.contains(&"zstd -1") && names.contains(&"zstd -3"),
        "{names:?}"
    );
    let floor = v[0]["floor_ratio"].as_f64().unwrap();
    assert!(floor > 0.5 && floor < 1.0);
    assert!(
        v[0]["by_dtype"]["F8_E4M3"]["original_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The per-plane report covers every stored frame's planes: its coded bytes add up to
    // at most the container's frames, and the big planes sit at or just above their floor.
    let planes = v[0]["planes"].as_object().unwrap();
    let coded: u64 = planes
        .values()
        .map(|p| p["coded_bytes"].as_u64().unwrap())
        .sum();
    let bytes = v[0]["bytes"].as_u64().unwrap() as f64;
    let ratio = v[0]["contenders"][0]["ratio"].as_f64().unwrap();
    assert!(coded > 0 && (coded as f64) < bytes * ratio, "{coded}");
    let fp8 = planes
        .iter()
        .filter(|(k, _)| k.starts_with("F8_E4M3"))
        .max_by_key(|(_, p)| p["coded_bytes"].as_u64().unwrap())
        .map(|(_, p)| p)
        .unwrap();
    let over = fp8["coded_bytes"].as_f64().unwrap() / fp8["floor_bytes"].as_f64().unwrap();
    assert!((1.0..1.02).contains(&over), "{over}");
}

#[test]
fn kv_layout_codes_one_head_per_chunk_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    // [2 layers, 12 heads, 512 tokens, 32]: 32 KiB heads of K in BF16/F16 code smaller one
    // per chunk, 24 in all; 16 KiB FP8 heads are too small and keep the plain 256 KiB chunks.
    for (n, want_frames) in [
        ("minilm-kv-bf16.safetensors", 24),
        ("minilm-kv-f16.safetensors", 24),
        ("minilm-kv-fp8-e4m3.safetensors", 2),
    ] {
        std::fs::copy(fixture(n), dir.path().join(n)).unwrap();
        ok(&floatzip(
            &["compress", n, "--kv-layout", "lhtd", "--force"],
            dir.path(),
        ));
        let inspect = floatzip(&["inspect", &format!("{n}.fz"), "--json"], dir.path());
        ok(&inspect);
        let doc: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let k = doc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "k")
            .unwrap();
        // "layouts" reads like "bytes×17 e4m3-exp|sm×7".
        let frames: u64 = k["layouts"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(|l| l.rsplit('×').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(frames, want_frames, "{n}: {k}");
        // Each tensor takes the smaller chunking (both are tried on its first MiB, here all
        // of it): never larger than plain chunks.
        ok(&floatzip(
            &["compress", n, "-o", "plain.fz", "--force"],
            dir.path(),
        ));
        let plain = floatzip(&["inspect", "plain.fz", "--json"], dir.path());
        ok(&plain);
        let plain: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
        for (t, p) in doc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .zip(plain["tensors"].as_array().unwrap())
        {
            let (kv, flat) = (&t["compressed_bytes"], &p["compressed_bytes"]);
            assert!(
                kv.as_u64().unwrap() <= flat.as_u64().unwrap(),
                "{n}: {t} vs {p}"
            );
        }
        std::fs::remove_file(dir.path().join(n)).unwrap();
        ok(&floatzip(&["decompress", &format!("{n}.fz")], dir.path()));
        assert_eq!(sha(&dir.path().join(n)), sha(&fixture(n)), "{n}");
    }
    let thd = floatzip(
        &[
            "compress",
            "minilm-kv-bf16.safetensors",
            "--kv-layout",
            "thd",
            "-o",
            "x.fz",
        ],
        dir.path(),
    );
    assert!(!thd.status.success());
    assert!(String::from_utf8_lossy(&thd.stderr).contains("not contiguous"));
    assert!(!dir.path().join("x.fz").exists());
}
