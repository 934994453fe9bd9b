use floatzip_codec::{compress_bytes, EncodeOptions, FzArchive};
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let iters: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(40);
    let data = std::fs::read(path).unwrap();
    let (fz, _) = compress_bytes(&data, EncodeOptions::default()).unwrap();
    let archive = FzArchive::open(fz.clone()).unwrap();
    let mut buf = Vec::with_capacity(data.len());
    let t = std::time::Instant::now();
    if std::env::var("FULL").is_ok() {
        for _ in 0..iters {
            let out = floatzip_codec::decompress_bytes(&fz).unwrap();
            assert_eq!(out.len(), data.len());
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!("full {:.0} MB/s", (data.len() * iters) as f64 / s / 1e6);
        return;
    }
    for _ in 0..iters {
        buf.clear();
        for i in 0..archive.manifest().entries.len() {
            archive.decode_entry_into(i, &mut buf).unwrap();
        }
    }
    let s = t.elapsed().as_secs_f64();
    eprintln!("decode {:.0} MB/s", (data.len() * iters) as f64 / s / 1e6);
}
