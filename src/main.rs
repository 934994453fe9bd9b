//! `floatzip`: compress, inspect and serve neural-network weights losslessly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod commands;
mod output;
mod progress;

#[derive(Parser)]
#[command(
    name = "floatzip",
    version,
    about = "Lossless compression for neural-network tensors (safetensors, K/V caches, any file)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a file (safetensors or any other) into a .fz container.
    Compress(commands::compress::CompressArgs),
    /// Decompress a .fz container back to the exact original file.
    Decompress(commands::decompress::DecompressArgs),
    /// Show per-tensor dtype, shape, sizes, ratio, coders and the entropy floor.
    Inspect(commands::inspect::InspectArgs),
    /// Write a safetensors file holding only the chosen tensors of a .fz container.
    Extract(commands::extract::ExtractArgs),
    /// Measure ratio and speed against zstd and the order-0 entropy floor.
    Bench(commands::bench::BenchArgs),
    /// Serve models over HTTP: upload compresses, download gives the exact original bytes.
    Serve(commands::serve::ServeArgs),
    /// Download a model file (or chosen tensors) from a floatzip server, verified.
    Pull(commands::pull::PullArgs),
    /// Upload a file to a floatzip server, which compresses it as it arrives.
    Push(commands::push::PushArgs),
    /// Upload a whole model folder to a floatzip server as one Hub revision.
    PushDir(commands::push_dir::PushDirArgs),
}

/// Options shared by the commands that do heavy work.
#[derive(Args, Clone, Copy)]
pub struct ThreadArgs {
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

impl ThreadArgs {
    /// Runs `f` on a rayon pool of the requested size.
    pub fn run<T: Send>(self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(n) = self.threads {
            anyhow::ensure!(n > 0, "--threads must be at least 1");
            b = b.num_threads(n);
        }
        Ok(b.build()?.install(f))
    }
}

/// Where a command writes: `-o` and `--force`.
#[derive(Args, Clone)]
pub struct OutputArgs {
    /// Output path (default: derived from the input name).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Overwrite the output if it exists.
    #[arg(long, short = 'f')]
    pub force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compress(a) => commands::compress::run(a),
        Command::Decompress(a) => commands::decompress::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Extract(a) => commands::extract::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Pull(a) => commands::pull::run(a),
        Command::Push(a) => commands::push::run(a),
        Command::PushDir(a) => commands::push_dir::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `floatzip inspect | head` closing the pipe is not an error worth reporting.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floatzip: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
