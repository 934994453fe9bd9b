use floatzip_codec::{compress_bytes, EncodeOptions};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let iters: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(10);
    let cpt: usize = std::env::args()
        .nth(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(4);
    let data = std::fs::read(path).unwrap();
    let mut opts = EncodeOptions::default();
    opts.chunks_per_thread = cpt;
    let mut times = vec![];
    for _ in 0..iters {
        let t = std::time::Instant::now();
        let (fz, _) = compress_bytes(&data, opts).unwrap();
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(fz);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "compress {:.0} MB/s",
        data.len() as f64 / times[iters / 2] / 1e6
    );
}
