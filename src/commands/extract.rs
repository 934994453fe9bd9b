//! `floatzip extract`: a safetensors file with only some tensors of a container.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use floatzip_codec::safetensors::write_header;
use floatzip_codec::FzArchive;
use globset::{Glob, GlobSetBuilder};

use crate::output::{open_input, AtomicFile};

/// Arguments of `floatzip extract`.
#[derive(Args)]
pub struct ExtractArgs {
    /// The .fz container.
    pub input: PathBuf,
    /// Tensor name or glob (`encoder.layer.0.*`); repeat for more.
    #[arg(long = "tensor", short = 'n', required = true)]
    pub tensors: Vec<String>,
    /// Output safetensors file.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// Runs `floatzip extract`.
pub fn run(a: ExtractArgs) -> anyhow::Result<()> {
    let (file, _) = open_input(&a.input)?;
    let archive = FzArchive::open(file).with_context(|| format!("{}", a.input.display()))?;
    let Some(header) = archive.safetensors_header()? else {
        bail!("{} was not made from a safetensors file", a.input.display());
    };
    let mut globs = Vec::new();
    for pat in &a.tensors {
        globs.push(
            Glob::new(pat)
                .with_context(|| format!("bad tensor pattern {pat:?}"))?
                .compile_matcher(),
        );
    }
    for (pat, g) in a.tensors.iter().zip(&globs) {
        if !header.tensors.iter().any(|t| g.is_match(&t.name)) {
            bail!("no tensor matches {pat:?}");
        }
    }
    let mut set = GlobSetBuilder::new();
    for pat in &a.tensors {
        set.add(Glob::new(pat)?);
    }
    let set = set.build()?;
    let chosen: Vec<_> = header
        .tensors
        .iter()
        .filter(|t| set.is_match(&t.name))
        .collect();
    let mut layout = Vec::with_capacity(chosen.len());
    let mut offset = 0u64;
    for t in &chosen {
        layout.push((*t, offset, offset + (t.end - t.begin)));
        offset += t.end - t.begin;
    }
    let mut out = AtomicFile::create(&a.output, a.force)?;
    out.write_all(&write_header(&layout, header.metadata.as_ref()))?;
    for t in &chosen {
        let bytes = archive
            .read_tensor(&t.name)
            .with_context(|| format!("{}", a.input.display()))?;
        out.write_all(&bytes)?;
    }
    out.commit()?;
    eprintln!(
        "{}: {} tensors, {offset} bytes of data",
        a.output.display(),
        chosen.len()
    );
    Ok(())
}
