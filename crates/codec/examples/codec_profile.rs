//! Loops the frame encoder or decoder over a file's chunks, single-threaded, for `perf`:
//! `codec_profile enc|dec FILE [RUNS [DTYPE]]` (DTYPE: only the chunks coded as it, e.g.
//! `F8_E8M0`). Prints MB/s (median and best: the machine may be shared) and the ratio.

use std::time::Instant;

use floatzip_codec::frame::{decode_frame, encode_frame, parse_frame};
use floatzip_codec::{compress_bytes, EncodeOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, path) = (args.get(1).ok_or("mode")?, args.get(2).ok_or("file")?);
    let runs: usize = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(20);
    let only = args.get(4);
    let data = std::fs::read(path)?;
    let opts = EncodeOptions::default();
    let (_, manifest) = compress_bytes(&data, opts)?;
    let mut chunks = Vec::new();
    for e in &manifest.entries {
        if only.is_some_and(|d| d != e.coded_as.name()) {
            continue;
        }
        let bytes = &data[e.original[0] as usize..e.original[1] as usize];
        for c in bytes.chunks(e.chunk_bytes.max(1) as usize) {
            chunks.push((c, e.coded_as));
        }
    }
    let mut frames = Vec::new();
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        frames.clear();
        let t = Instant::now();
        for (c, dtype) in &chunks {
            encode_frame(c, *dtype, &opts.frame, &mut frames);
        }
        times.push(t.elapsed().as_secs_f64());
        if mode != "enc" {
            break;
        }
    }
    if mode == "dec" {
        times.clear();
        let mut out = vec![0u8; chunks.iter().map(|(c, _)| c.len()).sum()];
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let (mut at, mut o) = (0, 0);
            while at < frames.len() {
                let (h, len) = parse_frame(&frames[at..]).map_err(|e| format!("{e:?}"))?;
                decode_frame(&h, &mut out[o..o + h.original_len]).map_err(|e| format!("{e:?}"))?;
                o += h.original_len;
                at += len;
            }
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let total: usize = chunks.iter().map(|(c, _)| c.len()).sum();
    println!(
        "{mode}: {:.0} MB/s median, {:.0} MB/s best, frames ratio {:.6} ({} bytes)",
        total as f64 / 1e6 / times[times.len() / 2],
        total as f64 / 1e6 / times[0],
        frames.len() as f64 / total as f64,
        frames.len()
    );
    Ok(())
}
