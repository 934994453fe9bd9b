//! Counters exposed at `/metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Process-wide counters. Cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Upload body bytes received.
    pub bytes_in: AtomicU64,
    /// Response body bytes produced (original, container and tensor downloads).
    pub bytes_out: AtomicU64,
    /// Original bytes of completed uploads.
    pub uploaded_original: AtomicU64,
    /// Container bytes of completed uploads.
    pub uploaded_stored: AtomicU64,
    /// Uploads published.
    pub uploads_ok: AtomicU64,
    /// Uploads refused or failed.
    pub uploads_failed: AtomicU64,
    encode_nanos: AtomicU64,
    decode_nanos: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, method: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), status)).or_default() += 1;
        }
    }

    /// Adds time spent encoding uploads.
    pub fn add_encode(&self, d: Duration) {
        self.encode_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// Adds time spent decoding frames for downloads.
    pub fn add_decode(&self, d: Duration) {
        self.decode_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(s, "# HELP floatzip_http_requests_total HTTP requests answered.\n# TYPE floatzip_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((method, status), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "floatzip_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let get = |a: &AtomicU64| a.load(Relaxed) as f64;
        counter(
            &mut s,
            "floatzip_bytes_in_total",
            "Upload body bytes received.",
            get(&self.bytes_in),
        );
        counter(
            &mut s,
            "floatzip_bytes_out_total",
            "Response body bytes produced.",
            get(&self.bytes_out),
        );
        counter(
            &mut s,
            "floatzip_uploaded_original_bytes_total",
            "Original bytes of published uploads.",
            get(&self.uploaded_original),
        );
        counter(
            &mut s,
            "floatzip_uploaded_stored_bytes_total",
            "Stored (compressed) bytes of published uploads.",
            get(&self.uploaded_stored),
        );
        counter(
            &mut s,
            "floatzip_uploads_total",
            "Uploads published.",
            get(&self.uploads_ok),
        );
        counter(
            &mut s,
            "floatzip_uploads_failed_total",
            "Uploads refused or failed.",
            get(&self.uploads_failed),
        );
        counter(
            &mut s,
            "floatzip_encode_seconds_total",
            "Time spent compressing uploads.",
            get(&self.encode_nanos) / 1e9,
        );
        counter(
            &mut s,
            "floatzip_decode_seconds_total",
            "Time spent decoding frames for downloads.",
            get(&self.decode_nanos) / 1e9,
        );
        let (o, c) = (get(&self.uploaded_original), get(&self.uploaded_stored));
        let ratio = if o > 0.0 { c / o } else { 0.0 };
        let _ = writeln!(s, "# HELP floatzip_upload_ratio Stored bytes over original bytes, all uploads so far.\n# TYPE floatzip_upload_ratio gauge\nfloatzip_upload_ratio {ratio}");
        s
    }
}
