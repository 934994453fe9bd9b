//! `floatzip push`: upload a file to a floatzip server, which compresses it as it arrives.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use floatzip_client::{block_on, Client, FileUrl};

/// Arguments of `floatzip push`.
#[derive(Args)]
pub struct PushArgs {
    /// The local file to upload.
    pub file: PathBuf,
    /// Where to store it: http://HOST:PORT/v1/models/ORG/NAME/FILE
    pub url: String,
    /// Bearer token with write access.
    #[arg(long)]
    pub token: String,
    /// Store it as a delta against this file on the same server (ORG/NAME/FILE, e.g. the
    /// previous checkpoint), tensor by tensor where that is smaller.
    #[arg(long)]
    pub base: Option<String>,
    /// No summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `floatzip push`.
pub fn run(a: PushArgs) -> anyhow::Result<()> {
    let u = FileUrl::parse(&a.url)?;
    let remote = Client::builder(&u.base)
        .token(&a.token)
        .build()?
        .file(&u.repo, &u.file)?;
    let started = std::time::Instant::now();
    let s = match &a.base {
        Some(b) => block_on(remote.upload_delta(&a.file, b))?,
        None => block_on(remote.upload(&a.file))?,
    }
    .with_context(|| format!("push {} to {}", a.file.display(), a.url))?;
    if !a.quiet {
        eprintln!(
            "{} -> {}: {:.1} MB sent, {:.1} MB stored ({:.1}%{}{}), {} tensors, {:.2} s{}",
            a.file.display(),
            a.url,
            s.bytes_in as f64 / 1e6,
            s.bytes_stored as f64 / 1e6,
            100.0 * s.ratio,
            match &s.delta_base {
                Some(b) => format!(", a delta against {b}"),
                None => String::new(),
            },
            if s.shared_bytes > 0 {
                format!(
                    ", {:.1} MB shared with other files",
                    s.shared_bytes as f64 / 1e6
                )
            } else {
                String::new()
            },
            s.tensors,
            started.elapsed().as_secs_f64(),
            if s.replaced { " (replaced)" } else { "" }
        );
    }
    Ok(())
}
