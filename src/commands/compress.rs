//! `floatzip compress`: a file into a `.fz` container.

use std::path::PathBuf;

use clap::Args;
use floatzip_codec::delta::{recode_as_delta, FileBase};
use floatzip_codec::kv::KvLayout;
use floatzip_codec::{compress, EncodeOptions, FrameOptions, FzArchive};

use crate::output::{transform_file, AtomicFile};
use crate::progress::mb;
use crate::{OutputArgs, ThreadArgs};

/// Arguments of `floatzip compress`.
#[derive(Args)]
pub struct CompressArgs {
    /// The file to compress (safetensors, or any other file).
    pub input: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
    #[command(flatten)]
    pub codec: CodecArgs,
    /// Code each tensor as the XOR with the same tensor of this earlier checkpoint (the
    /// original safetensors file) where that is smaller. Decoding then needs this file.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// No progress or summary output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Encoder settings on the command line.
#[derive(Args, Clone, Copy)]
pub struct CodecArgs {
    /// Original KiB per independently coded chunk.
    #[arg(long, default_value_t = 256)]
    pub chunk_kib: usize,
    /// zstd level for chunks that hold repeats.
    #[arg(long, default_value_t = FrameOptions::default().zstd_level)]
    pub zstd_level: i32,
    /// Take the smallest coding of every plane even where it decodes slower (rANS over
    /// Huffman for exponents, Huffman over raw for near-random mantissas): ~0.3-0.5 %
    /// smaller, about half the decode speed.
    #[arg(long)]
    pub favor_ratio: bool,
    /// Where Huffman decodes faster (low-entropy or small planes), use rANS instead only
    /// where it is at least this fraction smaller (0 = always the smaller).
    #[arg(long, default_value_t = FrameOptions::default().rans_min_gain,
          value_parser = parse_fraction, conflicts_with = "favor_ratio")]
    pub rans_min_gain: f64,
    /// Code a plane only where that is at least this fraction smaller than storing it raw
    /// (raw planes decode at copy speed). 0.02 keeps packed FP4 weights raw: decode several
    /// times faster, the file ~4 % larger.
    #[arg(long, default_value_t = FrameOptions::default().min_gain,
          value_parser = parse_fraction, conflicts_with = "favor_ratio")]
    pub min_gain: f64,
    /// K/V cache dump: the axis order of its K/V tensors, `lhtd` ([layers, heads, tokens,
    /// head_dim]) or `htd` ([heads, tokens, head_dim]). Tensors of that rank are coded one
    /// head per chunk, each with its own tables (heads of 16 KiB to 4 MiB); other tensors
    /// as usual.
    #[arg(long, value_parser = parse_kv_layout)]
    pub kv_layout: Option<KvLayout>,
}

/// A fraction in `[0, 1)`, for the size margins.
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "{s}: expected a fraction from 0 up to (not including) 1"
        )),
    }
}

/// The `--kv-layout` values a container can use: heads must be contiguous.
fn parse_kv_layout(s: &str) -> Result<KvLayout, String> {
    match KvLayout::parse(s) {
        Some(l @ (KvLayout::Lhtd | KvLayout::Htd)) => Ok(l),
        Some(_) => Err(format!(
            "{s}: heads are not contiguous in this layout; a .fz container takes lhtd or htd \
             (the floatzip_codec::kv API codes thd pages)"
        )),
        None => Err(format!("{s}: unknown layout (lhtd or htd)")),
    }
}

impl CodecArgs {
    /// The codec options these arguments ask for.
    pub fn options(self) -> EncodeOptions {
        EncodeOptions {
            chunk_bytes: self.chunk_kib.saturating_mul(1024),
            frame: if self.favor_ratio {
                FrameOptions {
                    zstd_level: self.zstd_level,
                    ..FrameOptions::smallest()
                }
            } else {
                FrameOptions {
                    zstd_level: self.zstd_level,
                    rans_min_gain: self.rans_min_gain,
                    min_gain: self.min_gain,
                    ..FrameOptions::default()
                }
            },
            kv_layout: self.kv_layout,
            ..EncodeOptions::default()
        }
    }
}

/// `compress --base`: the new file is compressed into a temporary container beside the
/// output (streaming), then re-coded tensor by tensor against the base read from disk, so
/// memory stays at a few times the largest tensor.
fn compress_against(
    r: &mut dyn std::io::Read,
    sink: AtomicFile,
    base: &std::path::Path,
    temp_dir: &std::path::Path,
    opts: EncodeOptions,
) -> floatzip_codec::Result<(AtomicFile, floatzip_codec::Manifest)> {
    let base = FileBase::open(base)?;
    let staged = tempfile::NamedTempFile::new_in(temp_dir)?;
    let (w, _) = compress(r, std::io::BufWriter::new(staged.reopen()?), opts)?;
    w.into_inner().map_err(|e| e.into_error())?;
    let archive = FzArchive::open(staged.reopen()?)?;
    recode_as_delta(&archive, &base, &opts, sink)
}

/// Runs `floatzip compress`.
pub fn run(a: CompressArgs) -> anyhow::Result<()> {
    let target = a.out.output.clone().unwrap_or_else(|| {
        let mut s = a.input.clone().into_os_string();
        s.push(".fz");
        PathBuf::from(s)
    });
    let opts = a.codec.options();
    let base = a.base.clone();
    let temp_dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let (manifest, secs) = transform_file(
        &a.input,
        &target,
        &a.out,
        a.threads,
        "compress",
        a.quiet,
        |r, sink| match &base {
            None => compress(r, sink, opts),
            Some(base) => compress_against(r, sink, base, &temp_dir, opts),
        },
    )?;
    let compressed = std::fs::metadata(&target)?.len();
    if !a.quiet {
        eprintln!(
            "{} -> {}: {} -> {} (ratio {:.4}) in {secs:.2} s ({:.0} MB/s)",
            a.input.display(),
            target.display(),
            mb(manifest.original_size),
            mb(compressed),
            compressed as f64 / manifest.original_size.max(1) as f64,
            manifest.original_size as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}
