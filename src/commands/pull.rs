//! `floatzip pull`: download a model file (or some of its tensors) from a floatzip server,
//! moving only compressed bytes and verifying everything before it gets its final name.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use floatzip_client::{block_on, Client, FileUrl, Filter, Progress};

/// Arguments of `floatzip pull`.
#[derive(Args)]
pub struct PullArgs {
    /// The file's download URL: http://HOST:PORT/v1/models/ORG/NAME/FILE
    pub url: String,
    /// Output path (default: FILE in the current directory).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Only tensors matching this name or glob (`encoder.layer.0.*`); repeat for more.
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out tensors matching this name or glob; repeat for more.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Only tensors whose layer index is in A-B (e.g. 12-23).
    #[arg(long)]
    pub layers: Option<String>,
    /// Range requests in flight at once.
    #[arg(long, short = 'j', default_value_t = 4)]
    pub jobs: usize,
    /// Bearer token, for servers that protect reads.
    #[arg(long)]
    pub token: Option<String>,
    /// No progress and no summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Overwrite the output if it exists.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// Runs `floatzip pull`.
pub fn run(a: PullArgs) -> anyhow::Result<()> {
    let u = FileUrl::parse(&a.url)?;
    let out = a.output.clone().unwrap_or_else(|| PathBuf::from(&u.file));
    if out.exists() && !a.force {
        bail!("{} exists (use --force to overwrite)", out.display());
    }
    let mut filter = Filter::all();
    for p in &a.include {
        filter = filter.include(p)?;
    }
    for p in &a.exclude {
        filter = filter.exclude(p)?;
    }
    if let Some(spec) = &a.layers {
        let (first, last) = Filter::parse_layers(spec)?;
        filter = filter.layers(first, last)?;
    }
    anyhow::ensure!(a.jobs > 0, "--jobs must be at least 1");
    let mut b = Client::builder(&u.base).jobs(a.jobs);
    if let Some(t) = &a.token {
        b = b.token(t);
    }
    let file = b.build()?.file(&u.repo, &u.file)?;
    let shown = Display::start(file.progress(), a.quiet, out.display().to_string());
    let report = block_on(async {
        if filter.is_all() {
            file.download(&out).await
        } else {
            file.download_subset(&filter, &out).await
        }
    })?;
    shown.stop();
    let report = report.with_context(|| format!("pull {}", a.url))?;
    if !a.quiet {
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        let verified = match &report.sha256 {
            Some(s) => format!("SHA-256 {s}"),
            None => format!("{} tensor digests", report.entries_fetched),
        };
        let ratio = if report.original_bytes > 0 {
            format!(
                " ({:.1}% of original)",
                100.0 * report.wire_bytes as f64 / report.original_bytes as f64
            )
        } else {
            String::new()
        };
        let resumed = if report.entries_reused > 0 {
            format!(
                ", {} entries reused from an earlier attempt",
                report.entries_reused
            )
        } else {
            String::new()
        };
        let first = match report.first_entry {
            Some(t) => format!(", first tensor after {} ms", t.as_millis()),
            None => String::new(),
        };
        eprintln!(
            "{}: {} written; {} on the wire for {} decoded{ratio}; {secs:.2} s, {:.1} MB/s{first}{resumed}; verified: {verified}",
            report.path.display(),
            mb(report.file_bytes),
            mb(report.wire_bytes),
            mb(report.original_bytes),
            report.original_bytes as f64 / 1e6 / secs,
        );
    }
    Ok(())
}

/// A 24-cell text bar for a fraction in 0..=1.
fn bar(frac: f64) -> String {
    const CELLS: usize = 24;
    let full = ((frac.clamp(0.0, 1.0) * CELLS as f64).round() as usize).min(CELLS);
    format!("{}{}", "#".repeat(full), "-".repeat(CELLS - full))
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// Progress on stderr from a thread: a redrawn line on a terminal, else a log line per
/// tenth of the transfer.
struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    fn start(progress: Arc<Progress>, quiet: bool, label: String) -> Display {
        let stop = Arc::new(AtomicBool::new(false));
        if quiet {
            return Display { stop, thread: None };
        }
        let tty = std::io::stderr().is_terminal();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut logged_tenth = 0;
            let mut drew = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let s = progress.snapshot();
                if s.total_original == 0 {
                    continue;
                }
                let secs = started.elapsed().as_secs_f64().max(1e-9);
                let frac = s.original_bytes as f64 / s.total_original as f64;
                let rate = s.original_bytes as f64 / secs;
                let eta = if rate > 0.0 {
                    (s.total_original.saturating_sub(s.original_bytes)) as f64 / rate
                } else {
                    0.0
                };
                let ratio = if s.original_bytes > 0 {
                    100.0 * s.wire_bytes as f64 / s.original_bytes as f64
                } else {
                    0.0
                };
                if tty {
                    eprint!(
                        "\r{label} [{}] {} / {} ({:.0}%), {:.1} MB/s, ETA {eta:.0} s, wire {ratio:.1}% of original   ",
                        bar(frac),
                        mb(s.original_bytes),
                        mb(s.total_original),
                        100.0 * frac,
                        rate / 1e6,
                    );
                    let _ = std::io::stderr().flush();
                    drew = true;
                } else {
                    let tenth = (frac * 10.0) as u32;
                    if tenth > logged_tenth && tenth < 10 {
                        logged_tenth = tenth;
                        eprintln!(
                            "{label}: {}% ({} of {}, {} on the wire)",
                            tenth * 10,
                            mb(s.original_bytes),
                            mb(s.total_original),
                            mb(s.wire_bytes)
                        );
                    }
                }
            }
            if drew {
                eprint!("\r{:100}\r", "");
            }
        });
        Display {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
