//! Property tests: random files of every dtype, edge values included, every chunk size,
//! round-trip byte for byte, and random access agrees with the full decode.

mod common;

use common::T;
use floatzip_codec::frame::{decode_frame, encode_frame, parse_frame, FrameOptions};
use floatzip_codec::{compress_bytes, decompress_bytes, DType, EncodeOptions, FzArchive};
use proptest::prelude::*;

/// Edge values of each float width, as little-endian bytes.
fn edge_values(bytes: usize) -> Vec<Vec<u8>> {
    match bytes {
        8 => [
            0.0f64,
            -0.0,
            f64::INFINITY,
            f64::NAN,
            5e-324,
            -1.0,
            f64::MAX,
        ]
        .iter()
        .map(|v| v.to_le_bytes().to_vec())
        .chain(
            [i64::MIN, -1, 0x7ff8_0000_dead_beef]
                .iter()
                .map(|v| v.to_le_bytes().to_vec()),
        )
        .collect(),
        4 => [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 3.0,
            -1e-45,
            f32::MAX,
            1.0,
        ]
        .iter()
        .map(|v| v.to_le_bytes().to_vec())
        .chain(
            [0x7fc0_0001u32, 0xffa0_beefu32, 0x7f80_0001]
                .iter()
                .map(|v| v.to_le_bytes().to_vec()),
        )
        .collect(),
        2 => [
            0x0000u16, 0x8000, 0x7f80, 0xff80, 0x7fc1, 0xffff, 0x0001, 0x8001, 0x7c00, 0xfc00,
            0x7e01, 0x3c00,
        ]
        .iter()
        .map(|v| v.to_le_bytes().to_vec())
        .collect(),
        _ => [0x00u8, 0x80, 0x7f, 0xff, 0x01, 0x81, 0x78, 0x7c, 0xf8]
            .iter()
            .map(|v| vec![*v])
            .collect(),
    }
}

/// Tensor data: a mix of edge values, repeats and noise, or one value throughout.
fn tensor_data(dtype: &'static str, width: usize) -> impl Strategy<Value = (Vec<u64>, Vec<u8>)> {
    let edges = edge_values(width);
    (0usize..3000, any::<u64>(), 0u8..4).prop_map(move |(n, seed, mode)| {
        let noise = common::noise(seed, n * width);
        let mut data = Vec::with_capacity(n * width);
        for i in 0..n {
            let v = match mode {
                0 => edges[(seed as usize) % edges.len()].clone(), // all equal
                1 => edges[(noise[i * width] as usize) % edges.len()].clone(),
                _ if noise[i * width] < 40 => edges[i % edges.len()].clone(),
                _ => noise[i * width..(i + 1) * width].to_vec(),
            };
            data.extend_from_slice(&v);
        }
        let shape = if dtype == "F4" {
            vec![n as u64, 2]
        } else {
            vec![n as u64]
        };
        (shape, data)
    })
}

fn dtype_strategy() -> impl Strategy<Value = (&'static str, usize)> {
    prop::sample::select(vec![
        ("F32", 4),
        ("BF16", 2),
        ("F16", 2),
        ("F8_E4M3", 1),
        ("F8_E5M2", 1),
        ("F8_E8M0", 1),
        ("F4", 1),
        ("U8", 1),
        ("I64", 8),
        ("I32", 4),
        ("F64", 8),
    ])
}

fn file_strategy() -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(
        dtype_strategy().prop_flat_map(|(d, w)| (Just(d), tensor_data(d, w), any::<bool>())),
        0..5,
    )
    .prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, (dtype, (shape, data), blocks))| {
                // Half the U8 tensors follow the MXFP4 naming so the FP4 layouts are tried.
                let suffix = if dtype == "U8" && blocks {
                    "_blocks"
                } else {
                    ""
                };
                T {
                    name: format!("t{i}{suffix}"),
                    dtype,
                    shape,
                    data,
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn files_round_trip(tensors in file_strategy(), chunk in prop::sample::select(vec![1usize, 2, 7, 8, 64, 1000, 4096, 1 << 18])) {
        let file = common::safetensors_file(&tensors);
        let opts = EncodeOptions { chunk_bytes: chunk, ..Default::default() };
        let (fz, m) = compress_bytes(&file, opts).unwrap();
        prop_assert_eq!(&decompress_bytes(&fz).unwrap(), &file);
        let a = FzArchive::open(fz).unwrap();
        for t in &tensors {
            let e = &m.entries[m.find_tensor(&t.name).unwrap()];
            prop_assert_eq!(&a.read_tensor(&t.name).unwrap(), &t.data);
            // Ranges that start and end around frame boundaries.
            let (b, en) = (e.original[0], e.original[1]);
            for (x, y) in [(b, en), (b + (en - b) / 3, en), (b.saturating_sub(3), (b + 5).min(en))] {
                prop_assert_eq!(&a.read_range(x, y).unwrap(), &file[x as usize..y as usize]);
            }
        }
    }

    #[test]
    fn single_frames_round_trip(data in prop::collection::vec(any::<u8>(), 0..5000), d in 0usize..11) {
        let dtypes = [DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::F8_E5M2, DType::F4,
                      DType::U8, DType::I64, DType::F64, DType::Bytes, DType::F8_E8M0];
        let dtype = dtypes[d];
        // Frames of any length, even ones that do not divide into elements (coded as bytes).
        let mut out = Vec::new();
        encode_frame(&data, dtype, &FrameOptions::default(), &mut out);
        let (h, len) = parse_frame(&out).unwrap();
        prop_assert_eq!(len, out.len());
        let mut back = vec![0u8; h.original_len];
        decode_frame(&h, &mut back).unwrap();
        prop_assert_eq!(back, data);
    }
}

#[test]
fn chunk_boundaries_exactly() {
    // Tensors of chunk-1, chunk, chunk+1 and 3*chunk bytes, and empty and one-element ones.
    let chunk = 256usize;
    let mut tensors = Vec::new();
    for (i, n) in [0usize, 1, chunk - 2, chunk, chunk + 2, 3 * chunk]
        .iter()
        .enumerate()
    {
        tensors.push(T {
            name: format!("bf{i}"),
            dtype: "BF16",
            shape: vec![*n as u64 / 2],
            data: common::weights_bf16(i as u64, n / 2),
        });
    }
    tensors.push(T {
        name: "one".into(),
        dtype: "F32",
        shape: vec![1],
        data: 1.5f32.to_le_bytes().to_vec(),
    });
    tensors.push(T {
        name: "scalar".into(),
        dtype: "F32",
        shape: vec![],
        data: (-0.0f32).to_le_bytes().to_vec(),
    });
    tensors.push(T {
        name: "odd_blocks".into(),
        dtype: "U8",
        shape: vec![3],
        data: vec![0x21, 0x8f, 0x07],
    });
    let file = common::safetensors_file(&tensors);
    for c in [chunk - 1, chunk, chunk + 1, 2, 1] {
        let (fz, m) = compress_bytes(
            &file,
            EncodeOptions {
                chunk_bytes: c,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(decompress_bytes(&fz).unwrap(), file, "chunk {c}");
        let e = &m.entries[m.find_tensor("bf5").unwrap()];
        assert!(
            e.frames.len() >= 3,
            "a 3-chunk tensor has at least 3 frames at chunk {c}"
        );
        assert_eq!(e.chunk_bytes % 2, 0, "BF16 chunks hold whole elements");
    }
}
