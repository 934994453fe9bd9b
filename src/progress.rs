//! Progress on a terminal for long work: bytes done, rate and percent, redrawn in place.

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// A `Read` wrapper that reports how much has been read, at most a few times a second.
pub struct Progress<R> {
    inner: R,
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    enabled: bool,
}

impl<R: Read> Progress<R> {
    /// Wraps `inner`; shows progress only if stderr is a terminal and `quiet` is off.
    pub fn new(inner: R, label: &'static str, total: u64, quiet: bool) -> Self {
        let now = Instant::now();
        Progress {
            inner,
            label,
            total,
            done: 0,
            started: now,
            last: now,
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    fn draw(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let pct = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        eprint!(
            "\r{}: {:.1} / {:.1} MB ({pct:.0}%), {:.0} MB/s   ",
            self.label,
            self.done as f64 / 1e6,
            self.total as f64 / 1e6,
            self.done as f64 / 1e6 / secs
        );
        let _ = std::io::stderr().flush();
    }

    /// Clears the progress line.
    pub fn finish(&self) {
        if self.enabled && self.last != self.started {
            eprint!("\r{:70}\r", "");
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.enabled && self.last.elapsed() > Duration::from_millis(250) {
            self.last = Instant::now();
            self.draw();
        }
        Ok(n)
    }
}

/// Formats a byte count as MB with one decimal.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
