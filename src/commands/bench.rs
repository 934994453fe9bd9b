//! `floatzip bench`: ratio and speed of floatzip next to zstd, and the entropy floor.
//!
//! Speeds are of original bytes, median of `--runs`, on one thread unless `--threads`
//! says otherwise. All contenders run in the same process on the same bytes, one after
//! the other, so a noisy machine affects them alike.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use floatzip_codec::frame::{encode_frame, stored_planes, StoredPlane};
use floatzip_codec::{compress_bytes, decompress, decompress_bytes, FzArchive, Manifest};
use rayon::prelude::*;
use serde::Serialize;

use super::compress::CodecArgs;

/// Arguments of `floatzip bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Files to measure (safetensors or any other).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Worker threads for floatzip (zstd runs single-threaded).
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure floatzip alone, without the zstd contenders (quicker repeated A/B runs).
    #[arg(long)]
    pub no_zstd: bool,
    #[command(flatten)]
    pub codec: CodecArgs,
}

/// One contender on one file.
#[derive(Serialize)]
struct Measure {
    name: String,
    ratio: f64,
    compress_mb_s: f64,
    decompress_mb_s: f64,
}

/// Per-dtype sizes inside one file.
#[derive(Serialize, Default)]
struct DtypeRow {
    original_bytes: u64,
    compressed_bytes: u64,
    floor_bytes: f64,
}

/// How close the coders come to the order-0 entropy of the planes they code, summed over
/// the chunks of one dtype, layout and plane.
#[derive(Serialize, Default)]
struct PlaneRow {
    /// Planes (one per chunk) counted.
    planes: u64,
    /// Stored bytes of these planes, coder byte and length included.
    coded_bytes: u64,
    /// Sum of each plane's order-0 entropy in bytes.
    floor_bytes: f64,
    /// Coded bytes of the planes more than 1 % above their own floor (planes whose floor is
    /// under 1 KiB are left out: a length byte alone is 1 % of them).
    over_1pct_bytes: u64,
    /// Sum of each plane's floor plus the cost of describing its statistics to a decoder
    /// that does not know them ([`Histogram::model_cost_bits`]): what the minimax-optimal
    /// universal order-0 code pays, which short planes' bare floors leave out.
    floor_model_bytes: f64,
    /// Coded bytes of the planes (floor of 1 KiB or more) more than 1 % above that.
    over_1pct_model_bytes: u64,
    /// Coders used, by name, with the number of planes each coded.
    coders: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    bytes: u64,
    floor_ratio: f64,
    contenders: Vec<Measure>,
    by_dtype: BTreeMap<String, DtypeRow>,
    planes: BTreeMap<String, PlaneRow>,
}

/// The exact order-0 floors of a compressed file: per plane class, and per entry (the
/// manifest's floors are of the histograms the encoder planned with, which for FP4 and for
/// planes stored raw may be a sample's).
struct Floors {
    planes: BTreeMap<String, PlaneRow>,
    /// Sum of each frame's planes' floors, by manifest entry.
    entries: Vec<f64>,
}

/// Re-splits every chunk as its frame says and compares each stored plane with the order-0
/// entropy of that plane of that chunk.
fn plane_efficiency(data: &[u8], fz: &[u8], manifest: &Manifest) -> anyhow::Result<Floors> {
    let mut rows: BTreeMap<String, PlaneRow> = BTreeMap::new();
    let mut entries = Vec::with_capacity(manifest.entries.len());
    for e in &manifest.entries {
        let mut entry_floor = 0.0;
        for i in 0..e.frames.len() {
            let (cb, ce) = e.frame_compressed_range(i);
            let (ob, oe) = e.frame_original_range(i);
            let frame = fz
                .get(cb as usize..ce as usize)
                .context("frame outside the container")?;
            let chunk = data
                .get(ob as usize..oe as usize)
                .context("chunk outside the file")?;
            let (layout, planes) =
                stored_planes(frame, chunk).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (p, plane) in planes.iter().enumerate() {
                let key = format!("{} {} plane {p}", e.coded_as, layout.name());
                rows.entry(key).or_default().add(plane);
                entry_floor += plane.histogram.entropy_bytes();
            }
        }
        entries.push(entry_floor);
    }
    Ok(Floors {
        planes: rows,
        entries,
    })
}

impl PlaneRow {
    fn add(&mut self, plane: &StoredPlane) {
        let floor = plane.histogram.entropy_bytes();
        let floor_model = floor + plane.histogram.model_cost_bits() / 8.0;
        let size = plane.stored_bytes;
        self.planes += 1;
        self.coded_bytes += size as u64;
        self.floor_bytes += floor;
        self.floor_model_bytes += floor_model;
        if floor >= 1024.0 && size as f64 > floor * 1.01 {
            self.over_1pct_bytes += size as u64;
        }
        if floor >= 1024.0 && size as f64 > floor_model * 1.01 {
            self.over_1pct_model_bytes += size as u64;
        }
        *self
            .coders
            .entry(plane.coder.name().to_string())
            .or_default() += 1;
    }
}

fn median_secs(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-12)
}

fn bench_floatzip(
    data: &[u8],
    a: &BenchArgs,
    rep: &mut Vec<Measure>,
) -> anyhow::Result<(Manifest, Floors)> {
    let opts = a.codec.options();
    let (fz, manifest) = compress_bytes(data, opts)?;
    let floors = plane_efficiency(data, &fz, &manifest)?;
    anyhow::ensure!(
        decompress_bytes(&fz)? == data,
        "floatzip round trip differs"
    );
    let c = median_secs(a.runs, || Ok(compress_bytes(data, opts).map(|_| ())?))?;
    // Into a buffer reused across runs, as a caller decoding many files would: a fresh
    // allocation per run measures the kernel's page faults (glibc maps buffers over 32 MiB
    // anew each time), not the decoder.
    let mut sink = Vec::with_capacity(data.len());
    let d = median_secs(a.runs, || {
        sink.clear();
        sink = decompress(&fz[..], std::mem::take(&mut sink))?.0;
        Ok(())
    })?;
    let ratio = fz.len() as f64 / data.len() as f64;
    rep.push(Measure {
        name: "floatzip".into(),
        ratio,
        compress_mb_s: mbps(data.len(), c),
        decompress_mb_s: mbps(data.len(), d),
    });
    // The codec alone, as ZipNN's compress/decompress measure theirs. Encode: every chunk
    // of every entry coded into frames, without the container's digests (the SHA-256 and
    // xxh3-128 of the file, BLAKE3 per tensor, which `compress` computes on a thread of
    // their own). Decode: frames checked by their checksums, no whole-file check.
    let mut frames = Vec::with_capacity(data.len());
    let e = median_secs(a.runs, || {
        frames.clear();
        for e in &manifest.entries {
            let bytes = &data[e.original[0] as usize..e.original[1] as usize];
            let chunks: Vec<&[u8]> = bytes.chunks(e.chunk_bytes.max(1) as usize).collect();
            let coded: Vec<Vec<u8>> = chunks
                .par_iter()
                .map(|c| {
                    let mut out = Vec::new();
                    encode_frame(c, e.coded_as, &opts.frame, &mut out);
                    out
                })
                .collect();
            coded.iter().for_each(|c| frames.extend_from_slice(c));
        }
        Ok(())
    })?;
    let archive = FzArchive::open(fz)?;
    let mut buf = Vec::with_capacity(data.len());
    let d = median_secs(a.runs, || {
        buf.clear();
        for i in 0..archive.manifest().entries.len() {
            archive.decode_entry_into(i, &mut buf)?;
        }
        Ok(())
    })?;
    rep.push(Measure {
        name: "floatzip (codec only)".into(),
        ratio,
        compress_mb_s: mbps(data.len(), e),
        decompress_mb_s: mbps(data.len(), d),
    });
    Ok((manifest, floors))
}

fn bench_zstd(data: &[u8], level: i32, runs: usize, rep: &mut Vec<Measure>) -> anyhow::Result<()> {
    let z = zstd::bulk::compress(data, level)?;
    let c = median_secs(runs, || Ok(zstd::bulk::compress(data, level).map(|_| ())?))?;
    let d = median_secs(runs, || {
        Ok(zstd::bulk::decompress(&z, data.len()).map(|_| ())?)
    })?;
    rep.push(Measure {
        name: format!("zstd -{level}"),
        ratio: z.len() as f64 / data.len() as f64,
        compress_mb_s: mbps(data.len(), c),
        decompress_mb_s: mbps(data.len(), d),
    });
    Ok(())
}

fn bench_file(path: &PathBuf, a: &BenchArgs) -> anyhow::Result<FileReport> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut contenders = Vec::new();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()?;
    let (manifest, floors) = pool.install(|| bench_floatzip(&data, a, &mut contenders))?;
    let levels: &[i32] = if a.no_zstd { &[] } else { &[1, 3, 19] };
    for &level in levels {
        bench_zstd(
            &data,
            level,
            if level > 9 { 1 } else { a.runs },
            &mut contenders,
        )?;
    }
    let mut by_dtype: BTreeMap<String, DtypeRow> = BTreeMap::new();
    for (e, &floor) in manifest.entries.iter().zip(&floors.entries) {
        let r = by_dtype.entry(e.coded_as.to_string()).or_default();
        r.original_bytes += e.original_len();
        r.compressed_bytes += e.compressed_len();
        r.floor_bytes += floor;
    }
    let floor = floors.entries.iter().sum::<f64>() + manifest.prefix_len as f64;
    Ok(FileReport {
        file: path.display().to_string(),
        bytes: data.len() as u64,
        floor_ratio: floor / data.len() as f64,
        contenders,
        by_dtype,
        planes: floors.planes,
    })
}

fn print_table(out: &mut impl Write, r: &FileReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{} ({:.1} MB), chunk-wise order-0 floor {:.4}",
        r.file,
        r.bytes as f64 / 1e6,
        r.floor_ratio
    )?;
    writeln!(
        out,
        "  {:<24} {:>7} {:>12} {:>12}",
        "contender", "ratio", "comp MB/s", "decomp MB/s"
    )?;
    for m in &r.contenders {
        writeln!(
            out,
            "  {:<24} {:>7.4} {:>12.0} {:>12.0}",
            m.name, m.ratio, m.compress_mb_s, m.decompress_mb_s
        )?;
    }
    for (d, row) in &r.by_dtype {
        let orig = row.original_bytes.max(1) as f64;
        writeln!(
            out,
            "  {:<10} {:>12} bytes  floatzip {:.4}  floor {:.4}",
            d,
            row.original_bytes,
            row.compressed_bytes as f64 / orig,
            row.floor_bytes / orig
        )?;
    }
    writeln!(
        out,
        "  {:<36} {:>7} {:>12} {:>8} {:>7} {:>8} {:>7}  coders",
        "plane (chunk-wise)", "planes", "coded bytes", "×floor", ">1% of", "×f+model", ">1% of"
    )?;
    for (k, p) in r.planes.iter().filter(|(_, p)| p.coded_bytes >= 4096) {
        let coders: Vec<String> = p.coders.iter().map(|(c, n)| format!("{c}×{n}")).collect();
        writeln!(
            out,
            "  {:<36} {:>7} {:>12} {:>8.4} {:>6.1}% {:>8.4} {:>6.1}%  {}",
            k,
            p.planes,
            p.coded_bytes,
            p.coded_bytes as f64 / p.floor_bytes.max(1.0),
            100.0 * p.over_1pct_bytes as f64 / p.coded_bytes as f64,
            p.coded_bytes as f64 / p.floor_model_bytes.max(1.0),
            100.0 * p.over_1pct_model_bytes as f64 / p.coded_bytes as f64,
            coders.join(" ")
        )?;
    }
    Ok(())
}

/// Runs `floatzip bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut reports = Vec::new();
    for f in &a.files {
        let r = bench_file(f, &a)?;
        if !a.json {
            print_table(&mut out, &r)?;
        }
        reports.push(r);
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(())
}
