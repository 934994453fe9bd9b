//! `floatzip inspect`: what is in a container and how well each tensor compressed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use floatzip_codec::{Entry, FzArchive};
use serde::Serialize;

use crate::output::open_input;

/// Arguments of `floatzip inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The .fz container.
    pub input: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One row of the report.
#[derive(Serialize)]
struct Row<'a> {
    name: String,
    dtype: &'a str,
    coded_as: String,
    shape: &'a [u64],
    original_bytes: u64,
    compressed_bytes: u64,
    ratio: f64,
    floor_ratio: f64,
    layouts: String,
    coders: String,
    /// `[delta, standalone]` bytes, for tensors of a delta container with a base counterpart.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_vs_standalone: Option<[u64; 2]>,
}

fn summary(map: &std::collections::BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row(e: &Entry) -> Row<'_> {
    let orig = e.original_len().max(1) as f64;
    Row {
        name: e
            .name
            .clone()
            .unwrap_or_else(|| format!("<bytes {}..{}>", e.original[0], e.original[1])),
        dtype: &e.dtype,
        coded_as: e.coded_as.to_string(),
        shape: &e.shape,
        original_bytes: e.original_len(),
        compressed_bytes: e.compressed_len(),
        ratio: e.compressed_len() as f64 / orig,
        floor_ratio: e.floor_bytes / orig,
        layouts: summary(&e.layouts),
        coders: match (e.delta, e.delta_vs_standalone) {
            (true, Some([d, s])) => format!("delta {d} < standalone {s}: {}", summary(&e.coders)),
            (true, None) => format!("delta(xor base) {}", summary(&e.coders)),
            (false, Some([d, s])) => format!("standalone {s} <= delta {d}: {}", summary(&e.coders)),
            (false, None) => summary(&e.coders),
        },
        delta_vs_standalone: e.delta_vs_standalone,
    }
}

/// Runs `floatzip inspect`.
pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let (file, size) = open_input(&a.input)?;
    let archive = FzArchive::open(file).with_context(|| format!("{}", a.input.display()))?;
    let m = archive.manifest();
    let rows: Vec<Row> = m.entries.iter().map(row).collect();
    let mut out = std::io::stdout().lock();
    let total_ratio = size as f64 / m.original_size.max(1) as f64;
    if a.json {
        let doc = serde_json::json!({
            "file": a.input.display().to_string(),
            "original_size": m.original_size,
            "container_size": size,
            "ratio": total_ratio,
            "sha256": m.sha256,
            "base": m.base,
            "tensors": rows,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<56} {:>8} {:>14} {:>11} {:>11} {:>7} {:>7}  layout / coders",
        "tensor", "dtype", "shape", "original", "compressed", "ratio", "floor"
    )?;
    for r in &rows {
        let dtype = if r.dtype == r.coded_as {
            r.dtype.to_string()
        } else {
            format!("{}>{}", r.dtype, r.coded_as)
        };
        writeln!(
            out,
            "{:<56} {:>8} {:>14} {:>11} {:>11} {:>7.4} {:>7.4}  {} / {}",
            r.name,
            dtype,
            format!("{:?}", r.shape),
            r.original_bytes,
            r.compressed_bytes,
            r.ratio,
            r.floor_ratio,
            r.layouts,
            r.coders
        )?;
    }
    writeln!(
        out,
        "total: {} -> {} bytes, ratio {total_ratio:.4}; sha256 {}",
        m.original_size, size, m.sha256
    )?;
    if let Some(b) = &m.base {
        let deltas = m.entries.iter().filter(|e| e.delta).count();
        writeln!(
            out,
            "delta container: {deltas} tensors coded as XOR with base sha256 {} ({} bytes); the rest standalone",
            b.sha256, b.size
        )?;
    }
    Ok(())
}
