//! rANS encode/decode throughput on 128k-symbol planes shaped like the planes it is chosen for.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use floatzip_codec::coders::{rans, Histogram};

const PLANE: usize = 128 * 1024;

/// splitmix64: deterministic planes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn gauss(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// MXFP4 codes of Gaussian weights, one 4-bit code per byte (about 3.9 bits/symbol).
fn fp4_plane(rng: &mut Rng) -> Vec<u8> {
    const GRID: [f64; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let mut out = Vec::with_capacity(PLANE);
    while out.len() < PLANE {
        let block: Vec<f64> = (0..32).map(|_| rng.gauss()).collect();
        let max = block.iter().fold(0f64, |m, v| m.max(v.abs()));
        let scale = (max.log2().floor() - 2.0).exp2();
        for v in block {
            let a = (v.abs() / scale).min(6.0);
            let idx = (0..8).min_by(|&i, &j| (GRID[i] - a).abs().total_cmp(&(GRID[j] - a).abs()));
            out.push(idx.unwrap_or(0) as u8 | if v < 0.0 { 8 } else { 0 });
        }
    }
    out.truncate(PLANE);
    out
}

/// Draws symbols `first..` with the given weights.
fn categorical(rng: &mut Rng, first: u8, weights: &[u32]) -> Vec<u8> {
    let total: u64 = weights.iter().map(|&w| w as u64).sum();
    (0..PLANE)
        .map(|_| {
            let mut r = rng.next() % total;
            for (i, &w) in weights.iter().enumerate() {
                if r < w as u64 {
                    return first + i as u8;
                }
                r -= w as u64;
            }
            first
        })
        .collect()
}

/// E8M0-like block scales with the proportions of a real MXFP4 layer (about 1.55 bits/symbol).
fn skewed_plane(rng: &mut Rng) -> Vec<u8> {
    categorical(rng, 118, &[1, 21, 4953, 28921, 24731, 2743, 64, 5, 0, 1])
}

/// A mostly-zero XOR-delta-like plane (about 0.09 bits/symbol): finer precision, four lanes.
fn sparse_plane(rng: &mut Rng) -> Vec<u8> {
    categorical(rng, 0, &[20_000, 60, 40, 30, 20, 10, 5, 2, 1, 1, 1, 1])
}

/// A near-constant plane (about 0.003 bits/symbol): small enough to be coded with one lane.
fn near_constant_plane(rng: &mut Rng) -> Vec<u8> {
    categorical(rng, 0, &[200_000, 30, 10, 5, 1])
}

/// Exponent bytes of f32 Gaussian weights whose scale varies by row (about 2.7 bits/symbol).
fn exponent_plane(rng: &mut Rng) -> Vec<u8> {
    let mut sigma = 0.02;
    (0..PLANE)
        .map(|i| {
            if i % 1024 == 0 {
                sigma = 0.02 * (2.0 * rng.uniform()).exp2();
            }
            (((rng.gauss() * sigma) as f32).to_bits() >> 23) as u8
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x5eed);
    let planes = [
        ("fp4", fp4_plane(&mut rng)),
        ("skewed", skewed_plane(&mut rng)),
        ("exponent", exponent_plane(&mut rng)),
        ("sparse", sparse_plane(&mut rng)),
        ("near_constant", near_constant_plane(&mut rng)),
    ];
    let mut group = c.benchmark_group("rans");
    group.throughput(Throughput::Elements(PLANE as u64));
    for (name, plane) in &planes {
        let hist = Histogram::of(plane);
        let mut stream = Vec::new();
        rans::encode(plane, &hist, &mut stream);
        eprintln!(
            // The precision is the tag byte's high nibble plus one.
            "{name}: precision {}, entropy {:.4} bits/sym, coded {:.4} bits/sym \
             ({:+.3}% vs entropy), estimate {} vs {} bytes",
            (stream[0] >> 4) + 1,
            hist.entropy_bits_per_symbol(),
            stream.len() as f64 * 8.0 / plane.len() as f64,
            (stream.len() as f64 / hist.entropy_bytes() - 1.0) * 100.0,
            rans::encoded_size(&hist),
            stream.len(),
        );
        group.bench_with_input(BenchmarkId::new("encode", name), plane, |b, plane| {
            let mut out = Vec::with_capacity(stream.len() + 64);
            b.iter(|| {
                out.clear();
                rans::encode(black_box(plane), &hist, &mut out);
                out.len()
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &stream, |b, stream| {
            let mut out = vec![0u8; PLANE];
            b.iter(|| rans::decode(black_box(stream), &mut out).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
