//! Huffman coder throughput on a synthetic BF16-exponent-like plane (128 Ki symbols,
//! ~2.7 bits of entropy over a dozen values with a geometric tail).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use floatzip_codec::coders::{huffman, Histogram};

/// xorshift64*-driven draw from the weights below, so the plane is the same every run.
fn exponent_like(n: usize) -> Vec<u8> {
    let weights = [
        0.2, 0.4, 0.9, 1.7, 3.4, 6.8, 13.0, 22.0, 28.0, 18.0, 4.3, 0.3,
    ];
    let total: f64 = weights.iter().sum();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut x = (r >> 11) as f64 / (1u64 << 53) as f64 * total;
            for (i, &w) in weights.iter().enumerate() {
                if x < w {
                    return 114 + i as u8;
                }
                x -= w;
            }
            125
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let symbols = exponent_like(128 * 1024);
    let hist = Histogram::of(&symbols);
    let mut coded = Vec::new();
    huffman::encode(&symbols, &hist, &mut coded);
    let mut group = c.benchmark_group("huffman/exponent_like_128k");
    group.throughput(Throughput::Elements(symbols.len() as u64));
    group.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(symbols.len());
        b.iter(|| {
            out.clear();
            huffman::encode(black_box(&symbols), &hist, &mut out);
        })
    });
    group.bench_function("decode", |b| {
        let mut out = vec![0u8; symbols.len()];
        b.iter(|| huffman::decode(black_box(&coded), &mut out))
    });
    group.bench_function("encoded_size", |b| {
        b.iter(|| huffman::encoded_size(black_box(&hist)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
