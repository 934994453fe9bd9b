//! floatzip-server: an HTTP server that stores neural-network weights compressed with
//! floatzip and serves them back as the exact original bytes, as compressed containers,
//! or tensor by tensor.
//!
//! - [`config`] — settings (TOML file, `FLOATZIP_*` environment, flags)
//! - [`routes`] — the HTTP contract (see `DESIGN.md` §4)
//! - [`upload`] / [`download`] — the streaming pipelines
//! - [`storage`] — the layout on any `object_store` backend (local directory or S3)
//! - [`error`] — the one mapping from failures to HTTP responses
//! - [`hub`] — a read-only Hugging Face Hub mirror (revisions, `resolve`, model info)
//!
//! Start it with [`start`] (tests, embedding) or [`run_until_signal`] (the CLI).

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod download;
pub mod error;
pub mod hub;
pub mod metrics;
pub mod names;
pub mod ranges;
pub mod routes;
pub mod segments;
pub mod storage;
pub mod upload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use error::ApiError;
pub use routes::router;

/// Why the server could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The storage backend could not be opened.
    #[error("storage: {0}")]
    Storage(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler needs, shared by all requests.
#[derive(Clone)]
pub struct AppState {
    /// The settings the server runs with.
    pub config: Arc<Config>,
    /// The storage backend.
    pub storage: storage::Storage,
    /// Counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Token checks.
    pub auth: Arc<auth::Auth>,
    /// Uploads compressing at once.
    pub upload_slots: Arc<Semaphore>,
    /// Frame decodes running at once (bounds download memory and CPU).
    pub decode_slots: Arc<Semaphore>,
    /// Upload tasks, waited for at shutdown.
    pub tasks: TaskTracker,
}

impl AppState {
    /// Opens storage and prepares shared state.
    pub fn new(config: Config) -> Result<AppState, StartError> {
        config.check()?;
        let storage = storage::Storage::open(&config.storage)?;
        let temp = config.temp_dir();
        std::fs::create_dir_all(&temp)
            .map_err(|e| StartError::Config(format!("temp dir {}: {e}", temp.display())))?;
        // Encode and decode run on rayon's global pool; size it once per process.
        if config.codec.threads > 0 {
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(config.codec.threads)
                .build_global();
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(AppState {
            auth: Arc::new(auth::Auth::new(&config.auth)),
            upload_slots: Arc::new(Semaphore::new(config.limits.max_concurrent_uploads)),
            decode_slots: Arc::new(Semaphore::new(cores * 2)),
            metrics: Arc::new(metrics::Metrics::default()),
            tasks: TaskTracker::new(),
            storage,
            config: Arc::new(config),
        })
    }
}

/// Serves on `listener` until `shutdown` completes; then stops accepting, lets in-flight
/// requests finish and waits for running uploads (whose temp files are then gone).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let tasks = state.tasks.clone();
    let app = router(state);
    // TCP_NODELAY: a response's head and body go out as separate writes; with Nagle on,
    // the second waits for the client's delayed ACK (40 ms), capping keep-alive clients
    // at ~25 requests per second per connection.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// A server running in the background (tests, embedding).
pub struct RunningServer {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl RunningServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; returns when every in-flight request and upload has finished.
    pub async fn shutdown(mut self) -> Result<(), StartError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.done)
            .await
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?
    }
}

/// Starts a server on `config.listen` in the current tokio runtime.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    let state = AppState::new(config)?;
    let listener = TcpListener::bind(state.config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(state, listener, async {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        done,
    })
}

/// Installs the log subscriber (`RUST_LOG`, default `info`). Call once, from a binary.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour codes only on a terminal (logs go to stdout): redirected logs stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

/// Builds a tokio runtime, serves until SIGTERM or Ctrl-C, then shuts down gracefully.
pub fn run_until_signal(config: Config) -> Result<(), StartError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.limits.max_blocking_threads)
        .build()?;
    rt.block_on(async move {
        let state = AppState::new(config)?;
        let listener = TcpListener::bind(state.config.listen).await?;
        tracing::info!(
            addr = %listener.local_addr()?,
            storage = %state.storage.description,
            writes = state.auth.writes_enabled(),
            reads_need_token = state.auth.reads_protected(),
            "floatzip server listening"
        );
        if !state.auth.writes_enabled() {
            tracing::warn!("no write token configured: uploads and deletes are refused (set FLOATZIP_WRITE_TOKEN)");
        }
        serve(state, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
