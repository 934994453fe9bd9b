//! Profiling driver for the K/V page path (the `kv` bench's workload in a plain loop, so
//! `perf record` sees only it): `kv_pages <bf16|f16|fp8> <encode|decode> [iterations]`.
//! Also prints each page's frame layout and plane coders once.

use std::path::Path;

use floatzip_codec::frame::parse_frame;
use floatzip_codec::kv::{KvBlockCodec, KvLayout};
use floatzip_codec::safetensors::parse_header;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("bf16", |s| s.as_str());
    let what = args.get(2).map_or("encode", |s| s.as_str());
    let iters: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let fixture = match which {
        "f16" => "minilm-kv-f16.safetensors",
        "fp8" => "minilm-kv-fp8-e4m3.safetensors",
        _ => "minilm-kv-bf16.safetensors",
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(fixture);
    let file = std::fs::read(&path).expect("fixture");
    let json_len = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let header = parse_header(&file[8..8 + json_len]).expect("header");
    let k = header.tensors.iter().find(|t| t.name == "k").expect("k");
    let bytes = &file[8 + json_len..][k.begin as usize..k.end as usize];
    let dtype = k.coded_as;
    let shape = &k.shape;
    let width = (dtype.bits() / 8) as usize;
    let (heads, tokens, dim) = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
    let row = dim * width;
    let pages: Vec<Vec<u8>> = (0..tokens / 16)
        .map(|p| {
            let mut page = Vec::new();
            for t in p * 16..(p + 1) * 16 {
                for h in 0..heads {
                    let at = (h * tokens + t) * row;
                    page.extend_from_slice(&bytes[at..at + row]);
                }
            }
            page
        })
        .collect();
    let page_shape = [16, shape[1], shape[3]];
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
    let total: usize = pages.iter().map(Vec::len).sum();
    let coded: usize = encoded.iter().map(Vec::len).sum();
    println!("{fixture}: ratio {:.5}", coded as f64 / total as f64);
    for e in encoded.iter().take(3) {
        // The block header is short; find the frame tag after it.
        let at = e.iter().position(|&b| b == 0xF7).expect("frame");
        let (h, _) = parse_frame(&e[at..]).expect("frame");
        let coders = floatzip_codec::frame::frame_coders(&h).expect("coders");
        println!("  {:?} {:?} {} bytes", h.layout, coders, e.len());
    }
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    let mut page = vec![0u8; pages[0].len()];
    for _ in 0..iters {
        match what {
            "decode" => {
                for e in &encoded {
                    codec.decode_block(e, &mut page).expect("decode");
                }
            }
            _ => {
                for p in &pages {
                    codec
                        .encode_block(p, dtype, &page_shape, KvLayout::Thd, &mut out)
                        .expect("encode");
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{what}: {:.1} MB/s", (total * iters) as f64 / secs / 1e6);
}
