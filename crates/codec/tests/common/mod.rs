//! Helpers shared by the codec's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use floatzip_codec::safetensors::{write_header, TensorInfo};
use floatzip_codec::DType;

/// A tensor to put in a test file.
#[derive(Debug, Clone)]
pub struct T {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// A safetensors file holding `tensors` back to back, checked by the `safetensors` crate.
pub fn safetensors_file(tensors: &[T]) -> Vec<u8> {
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|t| TensorInfo {
            name: t.name.clone(),
            dtype_name: t.dtype.into(),
            dtype: DType::from_safetensors(t.dtype),
            coded_as: DType::Bytes,
            shape: t.shape.clone(),
            begin: 0,
            end: t.data.len() as u64,
        })
        .collect();
    let mut layout = Vec::new();
    let mut off = 0u64;
    for i in &infos {
        layout.push((i, off, off + i.end));
        off += i.end;
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let mut out = write_header(&layout, Some(&meta));
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// BF16 values shaped like trained weights: small normals around zero.
pub fn weights_bf16(seed: u64, n: usize) -> Vec<u8> {
    let r = noise(seed, n * 4);
    let mut out = Vec::with_capacity(n * 2);
    for c in r.chunks_exact(4) {
        // Sum of uniforms ≈ normal; scale 0.05.
        let u =
            (c[0] as f32 + c[1] as f32 + c[2] as f32 - 382.5) / 128.0 * 0.05 + c[3] as f32 * 1e-6;
        out.extend_from_slice(&((u.to_bits() >> 16) as u16).to_le_bytes());
    }
    out
}

/// A small file mixing dtypes: BF16, F32, FP8, packed FP4 with scales, an I64 buffer.
pub fn mixed_file(seed: u64) -> Vec<u8> {
    let bf16 = weights_bf16(seed, 1500);
    let f32: Vec<u8> = bf16
        .chunks_exact(2)
        .flat_map(|c| [0, 0, c[0], c[1]])
        .collect();
    let fp8: Vec<u8> = bf16.chunks_exact(2).map(|c| c[1] ^ (c[0] >> 5)).collect();
    safetensors_file(&[
        T {
            name: "a.weight".into(),
            dtype: "BF16",
            shape: vec![30, 50],
            data: bf16,
        },
        T {
            name: "b.weight".into(),
            dtype: "F32",
            shape: vec![1500],
            data: f32,
        },
        T {
            name: "c.weight".into(),
            dtype: "F8_E4M3",
            shape: vec![1500],
            data: fp8,
        },
        T {
            name: "d.weight_blocks".into(),
            dtype: "U8",
            shape: vec![10, 16],
            data: noise(seed + 1, 160),
        },
        T {
            name: "d.weight_scales".into(),
            dtype: "U8",
            shape: vec![10],
            data: vec![120; 10],
        },
        T {
            name: "e.position_ids".into(),
            dtype: "I64",
            shape: vec![4],
            data: (0..4u64).flat_map(|i| i.to_le_bytes()).collect(),
        },
    ])
}
