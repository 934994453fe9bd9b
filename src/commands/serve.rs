//! `floatzip serve`: the HTTP server (crate `floatzip-server`) with settings from a file,
//! the environment and these flags, in increasing precedence.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use floatzip_server::Config;

/// Arguments of `floatzip serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML settings file (see config/floatzip.toml; env FLOATZIP_CONFIG).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Storage: a directory or s3://bucket/prefix [default: ./floatzip-data].
    #[arg(long)]
    pub storage: Option<String>,
    /// Bearer token allowed to upload and delete (or env FLOATZIP_WRITE_TOKEN; prefer the
    /// environment: flags show up in process listings).
    #[arg(long)]
    pub write_token: Option<String>,
}

/// Runs `floatzip serve` until SIGTERM or Ctrl-C.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    floatzip_server::init_logging();
    let path = a.config.or_else(|| {
        std::env::var_os("FLOATZIP_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let mut config = Config::load(path.as_deref())?;
    if let Some(l) = a.listen {
        config.listen = l;
    }
    if let Some(s) = a.storage {
        config.storage.url = s;
    }
    if let Some(t) = a.write_token {
        config.auth.write_tokens = vec![t];
    }
    config.check()?;
    floatzip_server::run_until_signal(config).context("server")?;
    Ok(())
}
