//! K/V block coding ([`floatzip_codec::kv`]): byte-identical round trips of the real MiniLM
//! K/V caches in every layout and dtype, synthetic blocks, paged use of [`KvBlockCodec`],
//! per-channel coding beating flat on real keys, and hostile input.

mod common;

use std::path::PathBuf;

use floatzip_codec::kv::{self, KvBlockCodec, KvLayout, KvMode};
use floatzip_codec::DType;

/// `(name, dtype, shape, bytes)` of every tensor in a K/V fixture.
fn tensors(file: &str) -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(file);
    let data = std::fs::read(&path).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&data).expect("safetensors");
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let dtype = DType::from_safetensors(&format!("{:?}", v.dtype())).expect("dtype");
            let shape = v.shape().iter().map(|&d| d as u64).collect();
            (name, dtype, shape, v.data().to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

const FILES: [&str; 3] = [
    "minilm-kv-bf16.safetensors",
    "minilm-kv-f16.safetensors",
    "minilm-kv-fp8-e4m3.safetensors",
];

fn round_trip(bytes: &[u8], dtype: DType, shape: &[u64], layout: KvLayout) -> (usize, KvMode) {
    let enc = kv::encode(bytes, dtype, shape, layout).expect("encode");
    let mut back = Vec::new();
    let info = kv::decode(&enc, &mut back).expect("decode");
    assert_eq!(back, bytes, "{dtype} {shape:?} {layout:?}");
    assert_eq!(info.dtype, dtype);
    assert_eq!(&*info.shape, shape);
    assert_eq!(info.layout, layout);
    (enc.len(), info.mode)
}

/// One layer `[heads, tokens, hd]` of an `[L, H, T, D]` block, as `[tokens, heads, hd]`.
fn layer_as_thd(bytes: &[u8], shape: &[u64], w: usize, layer: usize) -> (Vec<u8>, Vec<u64>) {
    let (h, t, d) = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
    let base = layer * h * t * d * w;
    let mut out = vec![0u8; h * t * d * w];
    for hi in 0..h {
        for ti in 0..t {
            let src = base + ((hi * t + ti) * d) * w;
            let dst = ((ti * h + hi) * d) * w;
            out[dst..dst + d * w].copy_from_slice(&bytes[src..src + d * w]);
        }
    }
    (out, vec![t as u64, h as u64, d as u64])
}

#[test]
fn fixture_caches_round_trip_in_every_layout() {
    for file in FILES {
        for (name, dtype, shape, bytes) in tensors(file) {
            let layout = if shape.len() == 4 {
                KvLayout::Lhtd
            } else {
                KvLayout::Flat // the FP8 scales: [layers] F32
            };
            let (size, mode) = round_trip(&bytes, dtype, &shape, layout);
            eprintln!(
                "{file} {name}: {layout:?} {mode:?} ratio {:.4}",
                size as f64 / bytes.len() as f64
            );
            if shape.len() != 4 {
                continue;
            }
            let w = dtype.unit_bytes();
            let (thd, thd_shape) = layer_as_thd(&bytes, &shape, w, 1);
            round_trip(&thd, dtype, &thd_shape, KvLayout::Thd);
            let htd_len = bytes.len() / shape[0] as usize;
            round_trip(&bytes[..htd_len], dtype, &shape[1..], KvLayout::Htd);
        }
    }
}

#[test]
fn per_channel_beats_flat_on_fixture_keys() {
    for file in FILES {
        let (_, dtype, shape, k) = tensors(file)
            .into_iter()
            .find(|t| t.0 == "k")
            .expect("k tensor");
        let (chan, mode) = round_trip(&k, dtype, &shape, KvLayout::Lhtd);
        let (flat, flat_mode) = round_trip(&k, dtype, &shape, KvLayout::Flat);
        assert_eq!(flat_mode, KvMode::Flat);
        eprintln!(
            "{file} k: per-channel {chan} ({mode:?}) vs flat {flat} bytes of {} ({:.4} vs {:.4})",
            k.len(),
            chan as f64 / k.len() as f64,
            flat as f64 / k.len() as f64
        );
        assert!(
            matches!(mode, KvMode::PerChannel { .. }),
            "{file}: {mode:?}"
        );
        assert!(chan < flat, "{file}: per-channel {chan} >= flat {flat}");
    }
}

#[test]
fn paged_blocks_reuse_one_codec() {
    let mut codec = KvBlockCodec::new();
    let (mut enc, mut page) = (Vec::new(), Vec::new());
    for file in FILES {
        let (_, dtype, shape, k) = tensors(file).into_iter().find(|t| t.0 == "k").unwrap();
        let w = dtype.unit_bytes();
        let (thd, thd_shape) = layer_as_thd(&k, &shape, w, 0);
        let row = (thd_shape[1] * thd_shape[2]) as usize * w;
        for tokens in [16usize, 64, 256] {
            for start in (0..thd_shape[0] as usize).step_by(tokens) {
                let n = tokens.min(thd_shape[0] as usize - start);
                let block = &thd[start * row..(start + n) * row];
                let shape = [n as u64, thd_shape[1], thd_shape[2]];
                codec
                    .encode_block(block, dtype, &shape, KvLayout::Thd, &mut enc)
                    .expect("encode");
                page.clear();
                page.resize(block.len(), 0xAA);
                let info = codec.decode_block(&enc, &mut page).expect("decode");
                assert_eq!(page, block, "{file} {tokens} tokens at {start}");
                assert_eq!(&*info.shape, &shape[..]);
            }
        }
    }
}

#[test]
fn synthetic_blocks_round_trip() {
    let cases: Vec<(DType, Vec<u64>, KvLayout)> = vec![
        (DType::BF16, vec![2, 3, 17, 8], KvLayout::Lhtd),
        (DType::F16, vec![33, 4, 16], KvLayout::Thd),
        (DType::F32, vec![5, 7, 64], KvLayout::Htd),
        (DType::F8_E4M3, vec![16, 8, 128], KvLayout::Thd),
        (DType::F8_E5M2, vec![1, 1, 1, 1], KvLayout::Lhtd),
        (DType::BF16, vec![0, 8, 64], KvLayout::Thd),
        (DType::BF16, vec![16, 8, 1], KvLayout::Thd),
        (DType::F4, vec![3, 5, 32], KvLayout::Thd),
        (DType::F32, vec![3], KvLayout::Flat),
        (DType::U8, vec![], KvLayout::Flat),
    ];
    for (i, (dtype, shape, layout)) in cases.into_iter().enumerate() {
        let elems: u64 = shape.iter().product();
        let len = dtype.byte_len(elems).unwrap() as usize;
        // Per-channel exponents: channel c's values scaled by 2^(c % 5).
        let mut bytes = common::noise(i as u64, len);
        if dtype == DType::BF16 || dtype == DType::F16 {
            let d = *shape.last().unwrap() as usize;
            for (j, e) in bytes.chunks_exact_mut(2).enumerate() {
                e[1] = 0x3c + (j % d % 5) as u8;
            }
        }
        round_trip(&bytes, dtype, &shape, layout);
        round_trip(&vec![0u8; len], dtype, &shape, layout);
    }
}

#[test]
fn bad_arguments_are_errors() {
    assert!(kv::encode(&[0; 8], DType::BF16, &[2, 2], KvLayout::Thd).is_err());
    assert!(kv::encode(&[0; 7], DType::BF16, &[2, 2, 1], KvLayout::Thd).is_err());
    assert!(kv::encode(&[], DType::BF16, &[u64::MAX, 4, 4], KvLayout::Thd).is_err());
    let enc = kv::encode(&[0; 8], DType::BF16, &[2, 1, 2], KvLayout::Thd).unwrap();
    let mut small = [0u8; 4];
    assert!(KvBlockCodec::new().decode_block(&enc, &mut small).is_err());
}

#[test]
fn hostile_blocks_never_panic_nor_give_wrong_bytes() {
    let (_, dtype, shape, k) = tensors("minilm-kv-bf16.safetensors")
        .into_iter()
        .find(|t| t.0 == "k")
        .unwrap();
    // Layer 0, heads 0..4: a block the encoder codes per channel.
    let head = (shape[2] * shape[3]) as usize * dtype.unit_bytes();
    let block = &k[..4 * head];
    let bshape = [1, 4, shape[2], shape[3]];
    let enc = kv::encode(block, dtype, &bshape, KvLayout::Lhtd).unwrap();
    assert!(matches!(
        kv::read_info(&enc).unwrap().mode,
        KvMode::PerChannel { .. }
    ));
    let mut out = Vec::new();
    // Every single-bit flip at a stride over the block: an error, or the original bytes.
    for i in (0..enc.len()).step_by(enc.len() / 1500).chain(0..64) {
        for flip in [0x01u8, 0x80] {
            let mut bad = enc.clone();
            bad[i] ^= flip;
            if kv::decode(&bad, &mut out).is_ok() {
                assert_eq!(out, block, "flip {flip:#x} at {i} decoded to wrong bytes");
            }
        }
    }
    for cut in (0..enc.len()).step_by(enc.len() / 300) {
        assert!(
            kv::decode(&enc[..cut], &mut out).is_err(),
            "truncated at {cut}"
        );
    }
    let mut extra = enc.clone();
    extra.push(0);
    assert!(kv::decode(&extra, &mut out).is_err());
    // Garbage and a header declaring a huge block: rejected before allocating.
    for seed in 0..200u64 {
        let mut g = common::noise(seed, 64 + seed as usize);
        if seed % 2 == 0 {
            g[..3].copy_from_slice(b"FK\x01");
        }
        let _ = kv::decode(&g, &mut out);
    }
    let mut huge = b"FK\x01\x00\x04BF16\x01\x03".to_vec();
    for d in [1u64 << 40, 1 << 20, 64] {
        let mut v = d;
        while v >= 0x80 {
            huge.push(v as u8 | 0x80);
            v >>= 7;
        }
        huge.push(v as u8);
    }
    huge.push(0);
    assert!(matches!(
        kv::decode(&huge, &mut out),
        Err(floatzip_codec::Error::CorruptKvBlock(_))
    ));
}
