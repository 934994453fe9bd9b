//! K/V block throughput: 16-token pages `[tokens, heads, head_dim]` (one layer, as a paged
//! attention cache holds them) cut from the real MiniLM K cache of the repository's
//! fixtures, encoded and decoded with one reused [`KvBlockCodec`]. Bytes/s are of the
//! original page bytes. The target is 1 GB/s per core for 16-token blocks.
//!
//! To profile one case without criterion's analysis in the way:
//! `perf record cargo bench --bench kv -- --profile-time 10 encode/minilm-kv-f16`.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use floatzip_codec::kv::{read_info, KvBlockCodec, KvLayout};
use floatzip_codec::safetensors::parse_header;
use floatzip_codec::DType;

const TOKENS_PER_PAGE: u64 = 16;

/// The `k` tensor of a fixture: dtype, shape `[layers, heads, tokens, head_dim]`, bytes.
fn key_cache(fixture: &str) -> (DType, Vec<u64>, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(fixture);
    let file = std::fs::read(&path).expect("fixture");
    let json_len = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let header = parse_header(&file[8..8 + json_len]).expect("header");
    let k = header.tensors.iter().find(|t| t.name == "k").expect("k");
    let data = &file[8 + json_len..];
    (
        k.coded_as,
        k.shape.clone(),
        data[k.begin as usize..k.end as usize].to_vec(),
    )
}

/// Layer 0 of an `lhtd` cache cut into `[TOKENS_PER_PAGE, heads, head_dim]` pages.
fn pages(shape: &[u64], bytes: &[u8], width: usize) -> Vec<Vec<u8>> {
    let (heads, tokens, dim) = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
    let row = dim * width;
    let page_tokens = TOKENS_PER_PAGE as usize;
    (0..tokens / page_tokens)
        .map(|p| {
            let mut page = Vec::with_capacity(page_tokens * heads * row);
            for t in p * page_tokens..(p + 1) * page_tokens {
                for h in 0..heads {
                    let at = (h * tokens + t) * row;
                    page.extend_from_slice(&bytes[at..at + row]);
                }
            }
            page
        })
        .collect()
}

fn bench_pages(c: &mut Criterion) {
    let mut group = c.benchmark_group("kv_16_token_pages");
    for (fixture, width) in [
        ("minilm-kv-bf16.safetensors", 2),
        ("minilm-kv-f16.safetensors", 2),
        ("minilm-kv-fp8-e4m3.safetensors", 1),
    ] {
        let (dtype, shape, bytes) = key_cache(fixture);
        let pages = pages(&shape, &bytes, width);
        let page_shape = [TOKENS_PER_PAGE, shape[1], shape[3]];
        let total: usize = pages.iter().map(Vec::len).sum();
        let mut codec = KvBlockCodec::new();
        let encoded: Vec<Vec<u8>> = pages
            .iter()
            .map(|p| {
                let mut out = Vec::new();
                codec
                    .encode_block(p, dtype, &page_shape, KvLayout::Thd, &mut out)
                    .expect("encode");
                out
            })
            .collect();
        let coded: usize = encoded.iter().map(Vec::len).sum();
        eprintln!(
            "{fixture}: {} pages of {} bytes, ratio {:.4}",
            pages.len(),
            pages[0].len(),
            coded as f64 / total as f64
        );
        group.throughput(Throughput::Bytes(total as u64));
        let mut out = Vec::new();
        group.bench_function(BenchmarkId::new("encode", fixture), |b| {
            b.iter(|| {
                for p in &pages {
                    codec
                        .encode_block(black_box(p), dtype, &page_shape, KvLayout::Thd, &mut out)
                        .expect("encode");
                }
            })
        });
        let mut page = vec![0u8; pages[0].len()];
        assert_eq!(read_info(&encoded[0]).expect("info").byte_len, page.len());
        group.bench_function(BenchmarkId::new("decode", fixture), |b| {
            b.iter(|| {
                for e in &encoded {
                    codec.decode_block(black_box(e), &mut page).expect("decode");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pages);
criterion_main!(benches);
