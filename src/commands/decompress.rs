//! `floatzip decompress`: a `.fz` container back into the exact original file.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use floatzip_codec::delta::{decompress_delta_to, FileBase};
use floatzip_codec::{decompress_with, FzArchive};

use crate::output::transform_file;
use crate::progress::mb;
use crate::{OutputArgs, ThreadArgs};

/// Arguments of `floatzip decompress`.
#[derive(Args)]
pub struct DecompressArgs {
    /// The .fz container.
    pub input: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub threads: ThreadArgs,
    /// Also verify the SHA-256 of the restored file (xxh3-128 is always checked).
    #[arg(long)]
    pub sha256: bool,
    /// The original base safetensors file a delta container (`compress --base`) was
    /// coded against.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// No progress or summary output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `floatzip decompress`.
pub fn run(a: DecompressArgs) -> anyhow::Result<()> {
    let target = match &a.out.output {
        Some(p) => p.clone(),
        None => match a.input.to_str().and_then(|s| s.strip_suffix(".fz")) {
            Some(stem) if !stem.is_empty() => PathBuf::from(stem),
            _ => bail!(
                "{} does not end in .fz: name the output with -o",
                a.input.display()
            ),
        },
    };
    let verify_sha256 = a.sha256;
    let base = a.base.clone();
    let input = a.input.clone();
    let (manifest, secs) = transform_file(
        &a.input,
        &target,
        &a.out,
        a.threads,
        "decompress",
        a.quiet,
        |r, sink| match &base {
            None => decompress_with(r, sink, verify_sha256),
            Some(base) => {
                // Random access to the container, the base read tensor by tensor: memory
                // stays at the largest tensor. Checks every entry's BLAKE3 and the
                // file's SHA-256.
                let archive = FzArchive::open(std::fs::File::open(&input)?)?;
                let base = FileBase::open(base)?;
                let sink = decompress_delta_to(&archive, &base, sink)?;
                Ok((sink, archive.manifest().clone()))
            }
        },
    )?;
    if !a.quiet {
        eprintln!(
            "{} -> {}: {} restored and verified ({}), in {secs:.2} s ({:.0} MB/s)",
            a.input.display(),
            target.display(),
            mb(manifest.original_size),
            if a.base.is_some() {
                "BLAKE3 per tensor and SHA-256"
            } else if a.sha256 {
                "xxh3-128 and SHA-256"
            } else {
                "xxh3-128"
            },
            manifest.original_size as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}
