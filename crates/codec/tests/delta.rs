//! Delta coding ([`floatzip_codec::delta`]): byte-identical round trips of real consecutive
//! checkpoints and a base → fine-tune pair, tensors added / removed / reshaped between
//! versions, and a missing or wrong base being an error, never wrong bytes.

mod common;

use std::path::PathBuf;

use common::T;
use floatzip_codec::delta::{compress_delta, decompress_delta};
use floatzip_codec::{compress_bytes, decompress_bytes, EncodeOptions, Error, FzArchive};

fn ckpt(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/ckpt")
        .join(name);
    std::fs::read(&p).expect("ckpt fixture")
}

fn tensors(file: &[u8]) -> Vec<T> {
    let st = safetensors::SafeTensors::deserialize(file).expect("safetensors");
    let mut v: Vec<(usize, T)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let dtype: &'static str = match format!("{:?}", t.dtype()).as_str() {
                "BF16" => "BF16",
                "F32" => "F32",
                other => panic!("unexpected dtype {other}"),
            };
            let at = t.data().as_ptr() as usize;
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            (
                at,
                T {
                    name,
                    dtype,
                    shape,
                    data: t.data().to_vec(),
                },
            )
        })
        .collect();
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|x| x.1).collect()
}

/// Delta-codes `new` against `base`, checks the round trip, returns (delta, standalone) sizes.
fn round_trip(new: &[u8], base: &[u8]) -> (usize, usize) {
    let opts = EncodeOptions::default();
    let (fz, m) = compress_delta(new, base, opts).expect("compress_delta");
    assert_eq!(decompress_delta(&fz, base).expect("decompress_delta"), new);
    assert!(m.base.is_some());
    let (plain, _) = compress_bytes(new, opts).expect("compress");
    // Without the base every reader refuses.
    assert!(matches!(decompress_bytes(&fz), Err(Error::BaseRequired(_))));
    let a = FzArchive::open(fz.clone()).expect("open");
    assert!(matches!(
        a.write_original(Vec::new()),
        Err(Error::BaseRequired(_))
    ));
    (fz.len(), plain.len())
}

#[test]
fn consecutive_bf16_checkpoints_round_trip_and_shrink() {
    let (base, new) = (
        ckpt("ckpt.step0000.bf16.safetensors"),
        ckpt("ckpt.step0200.bf16.safetensors"),
    );
    let (d, s) = round_trip(&new, &base);
    eprintln!(
        "bf16 0->200: delta {:.4} standalone {:.4}",
        d as f64 / new.len() as f64,
        s as f64 / new.len() as f64
    );
    // README floor for this pair is 0.191 (full files); standalone ~0.66.
    assert!(
        (d as f64) < 0.30 * new.len() as f64,
        "delta {d} of {}",
        new.len()
    );
    assert!(d < s);
}

#[test]
fn base_to_finetune_round_trips_and_shrinks() {
    let (base, new) = (
        ckpt("ckpt.step0000.bf16.safetensors"),
        ckpt("ckpt-ft.step1000.bf16.safetensors"),
    );
    let (d, s) = round_trip(&new, &base);
    eprintln!(
        "bf16 base->ft: delta {:.4} standalone {:.4}",
        d as f64 / new.len() as f64,
        s as f64 / new.len() as f64
    );
    assert!(d < s);
}

#[test]
fn consecutive_f32_checkpoints_round_trip_and_shrink() {
    let (base, new) = (
        ckpt("ckpt.step0100.f32.safetensors"),
        ckpt("ckpt.step0200.f32.safetensors"),
    );
    let (d, s) = round_trip(&new, &base);
    eprintln!(
        "f32 100->200: delta {:.4} standalone {:.4}",
        d as f64 / new.len() as f64,
        s as f64 / new.len() as f64
    );
    assert!(d < s);
}

#[test]
fn identical_files_cost_almost_nothing() {
    let f = ckpt("ckpt.step0200.bf16.safetensors");
    let (fz, m) = compress_delta(&f, &f, EncodeOptions::default()).unwrap();
    assert_eq!(decompress_delta(&fz, &f).unwrap(), f);
    let data: u64 = m.compressed_data_len();
    // Every XOR plane is constant zero: a few bytes per frame.
    assert!(data < 2_000, "{data} bytes of frames for an unchanged file");
    assert!(m
        .entries
        .iter()
        .filter(|e| e.name.is_some())
        .all(|e| e.delta));
}

#[test]
fn added_removed_reshaped_and_retyped_tensors() {
    let base_file = ckpt("ckpt.step0000.bf16.safetensors");
    let new_file = ckpt("ckpt.step0200.bf16.safetensors");
    let mut new = tensors(&new_file);
    // Remove the first tensor, reshape the query weight, retype a bias, add a new tensor.
    let removed = new.remove(0).name;
    let q = new
        .iter_mut()
        .find(|t| t.name.ends_with("query.weight"))
        .unwrap();
    q.shape = vec![768, 192];
    let qname = q.name.clone();
    let b = new
        .iter_mut()
        .find(|t| t.name.ends_with("key.bias"))
        .unwrap();
    b.dtype = "F16";
    let bname = b.name.clone();
    new.push(T {
        name: "added.weight".into(),
        dtype: "BF16",
        shape: vec![64, 64],
        data: common::noise(7, 64 * 64 * 2),
    });
    let new_bytes = common::safetensors_file(&new);
    let (fz, m) = compress_delta(&new_bytes, &base_file, EncodeOptions::default()).unwrap();
    assert_eq!(decompress_delta(&fz, &base_file).unwrap(), new_bytes);
    assert!(m.find_tensor(&removed).is_none());
    for standalone in [qname.as_str(), bname.as_str(), "added.weight"] {
        let e = &m.entries[m.find_tensor(standalone).unwrap()];
        assert!(!e.delta && e.base_blake3.is_none(), "{standalone}");
    }
    assert!(m.entries.iter().any(|e| e.delta));
}

#[test]
fn wrong_or_missing_base_is_an_error() {
    let base = ckpt("ckpt.step0000.bf16.safetensors");
    let other = ckpt("ckpt-ft.step1000.bf16.safetensors");
    let new = ckpt("ckpt.step0200.bf16.safetensors");
    let (fz, _) = compress_delta(&new, &base, EncodeOptions::default()).unwrap();
    assert!(matches!(
        decompress_delta(&fz, &other),
        Err(Error::BaseMismatch { .. })
    ));
    // The same tensors, one byte changed: still the wrong base.
    let mut tweaked = base.clone();
    let last = tweaked.len() - 1;
    tweaked[last] ^= 1;
    assert!(matches!(
        decompress_delta(&fz, &tweaked),
        Err(Error::BaseMismatch { .. })
    ));
    assert!(decompress_delta(&fz, b"not a safetensors file").is_err());
    // An ordinary container decodes with or without a base.
    let (plain, _) = compress_bytes(&new, EncodeOptions::default()).unwrap();
    assert_eq!(decompress_delta(&plain, &base).unwrap(), new);
}

#[test]
fn corrupt_delta_containers_are_rejected() {
    let base = ckpt("ckpt.step0000.bf16.safetensors");
    let new = ckpt("ckpt.step0200.bf16.safetensors");
    let (fz, _) = compress_delta(&new, &base, EncodeOptions::default()).unwrap();
    for i in (0..fz.len()).step_by(fz.len() / 400) {
        let mut bad = fz.clone();
        bad[i] ^= 0x10;
        if let Ok(out) = decompress_delta(&bad, &base) {
            assert_eq!(out, new, "flip at {i} decoded to wrong bytes");
        }
    }
}

#[test]
fn old_manifests_without_delta_fields_still_parse() {
    let new = ckpt("ckpt.step0200.bf16.safetensors");
    let (fz, m) = compress_bytes(&new, EncodeOptions::default()).unwrap();
    let json = serde_json::to_string(&m).unwrap();
    assert!(!json.contains("delta") && !json.contains("base"));
    assert_eq!(decompress_bytes(&fz).unwrap(), new);
}

#[test]
fn sparse_changes_take_the_sparse_coder() {
    // A fine-tune that touched one element in 500 (e.g. a few rows of an embedding):
    // the XOR planes are nearly all zero.
    let base = ckpt("ckpt.step0200.bf16.safetensors");
    let header_len = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let mut new = base.clone();
    let mut changed = 0usize;
    for i in (header_len..new.len()).step_by(1000) {
        new[i] ^= 0x5A;
        changed += 1;
    }
    let (fz, m) = compress_delta(&new, &base, EncodeOptions::default()).unwrap();
    assert_eq!(decompress_delta(&fz, &base).unwrap(), new);
    let sparse_planes: u64 = m
        .entries
        .iter()
        .filter_map(|e| e.coders.get("sparse"))
        .sum();
    assert!(
        sparse_planes > 0,
        "no sparse plane: {:?}",
        m.entries[0].coders
    );
    eprintln!(
        "sparse delta: {} bytes of frames for {changed} changed bytes",
        m.compressed_data_len()
    );
    // About two bytes per changed byte, plus per-frame headers.
    let data = m.compressed_data_len() as usize;
    assert!(
        data < changed * 3 + 4_000,
        "{data} bytes for {changed} changes"
    );
}

#[test]
fn recoding_a_container_against_a_stored_base_chain() {
    use floatzip_codec::delta::{recode_as_delta, ArchiveBase, BaseTensors};
    let opts = EncodeOptions::default();
    let (s0, s200, ft) = (
        ckpt("ckpt.step0000.bf16.safetensors"),
        ckpt("ckpt.step0200.bf16.safetensors"),
        ckpt("ckpt-ft.step1000.bf16.safetensors"),
    );
    let root = FzArchive::open(compress_bytes(&s0, opts).unwrap().0).unwrap();
    let root_base = ArchiveBase::new(&root, None).unwrap();

    // step 200 against the stored step 0: the same bytes as the in-memory delta coder.
    let plain200 = compress_bytes(&s200, opts).unwrap().0;
    let (d200, m200) = recode_as_delta(
        &FzArchive::open(plain200.clone()).unwrap(),
        &root_base,
        &opts,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(decompress_delta(&d200, &s0).unwrap(), s200);
    assert!(
        d200.len() < plain200.len() / 2,
        "{} vs {}",
        d200.len(),
        plain200.len()
    );
    assert_eq!(
        d200.len(),
        compress_delta(&s200, &s0, opts).unwrap().0.len()
    );
    assert_eq!(
        m200.base.as_ref().unwrap().sha256,
        root_base.base_ref().sha256
    );

    // The fine-tune against step 200, which is itself a delta: the chain is decoded.
    let d200_archive = FzArchive::open(d200).unwrap();
    assert!(matches!(
        ArchiveBase::new(&d200_archive, None),
        Err(Error::BaseRequired(_))
    ));
    let mid = ArchiveBase::new(&d200_archive, Some(&root_base)).unwrap();
    for t in tensors(&s200) {
        let got = mid
            .tensor_like(&t.name, t.dtype, &t.shape)
            .unwrap()
            .unwrap();
        assert!(got == t.data, "{}", t.name);
    }
    let plain_ft = compress_bytes(&ft, opts).unwrap().0;
    let (d_ft, _) = recode_as_delta(
        &FzArchive::open(plain_ft.clone()).unwrap(),
        &mid,
        &opts,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(decompress_delta(&d_ft, &s200).unwrap(), ft);
    assert!(d_ft.len() <= plain_ft.len());
    // A wrong parent is refused.
    let wrong = FzArchive::open(plain_ft).unwrap();
    let wrong_base = ArchiveBase::new(&wrong, None).unwrap();
    assert!(matches!(
        ArchiveBase::new(&d200_archive, Some(&wrong_base)),
        Err(Error::BaseMismatch { .. })
    ));
}
