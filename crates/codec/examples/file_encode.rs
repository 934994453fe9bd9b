//! Profiling driver for whole-file codec-only encode (what `floatzip bench` times as
//! "floatzip (codec only)", on one thread): `file_encode FILE [iterations]`.

use floatzip_codec::frame::encode_frame;
use floatzip_codec::{compress_bytes, EncodeOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: file_encode FILE [iterations]");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let data = std::fs::read(path).expect("read");
    let opts = EncodeOptions::default();
    let (fz, manifest) = compress_bytes(&data, opts).expect("compress");
    println!("ratio {:.5}", fz.len() as f64 / data.len() as f64);
    let mut out = Vec::new();
    let mut times = Vec::new();
    for _ in 0..iters {
        let start = std::time::Instant::now();
        let mut coded = 0usize;
        for e in &manifest.entries {
            let bytes = &data[e.original[0] as usize..e.original[1] as usize];
            for c in bytes.chunks(e.chunk_bytes.max(1) as usize) {
                out.clear();
                encode_frame(c, e.coded_as, &opts.frame, &mut out);
                coded += out.len();
            }
        }
        times.push(start.elapsed().as_secs_f64());
        std::hint::black_box(coded);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "encode: {:.0} MB/s (median of {iters})",
        data.len() as f64 / times[times.len() / 2] / 1e6
    );
}
