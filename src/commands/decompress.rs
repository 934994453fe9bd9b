//! `floatzip decompress`: a `.fz` container back into the exact original file.

use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use floatzip_codec::decompress_with;

use crate::output::{open_input, AtomicFile};
use crate::progress::{mb, Progress};
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
    let (file, len) = open_input(&a.input)?;
    let out = AtomicFile::create(&target, a.out.force)?;
    let started = Instant::now();
    let reader = Progress::new(
        BufReader::with_capacity(1 << 20, file),
        "decompress",
        len,
        a.quiet,
    );
    let (out, manifest) = a
        .threads
        .run(|| {
            let mut reader = reader;
            let r = decompress_with(&mut reader, out, a.sha256);
            reader.finish();
            r
        })?
        .with_context(|| format!("{}", a.input.display()))?;
    out.commit()?;
    if !a.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{} -> {}: {} restored and verified ({}), in {secs:.2} s ({:.0} MB/s)",
            a.input.display(),
            target.display(),
            mb(manifest.original_size),
            if a.sha256 {
                "xxh3-128 and SHA-256"
            } else {
                "xxh3-128"
            },
            manifest.original_size as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(())
}
