//! Veneer's end-to-end test harness: a private PostgreSQL per test binary, the proxy in-process or as
//! the `veneer` binary, and the clients that drive them (tokio-postgres, psql, pgbench, and a raw
//! socket client for byte-level checks). No mocks: every test talks to a real server through the real
//! proxy, on ports chosen by the kernel.
//!
//! Test files live in `tests/tests/`, one binary each; every binary starts its own server on first use
//! (see [`pg`]) and shares it between its tests, which therefore pick distinct table names and
//! `application_name`s.

#![warn(missing_docs)]

pub mod binary;
pub mod cache;
pub mod client;
pub mod fuzz;
pub mod http;
pub mod pg;
pub mod privileges;
pub mod proxy;
pub mod raw;
pub mod tier;
pub mod tls;
pub mod tools;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

pub use client::{
    backends_named, connect, connect_as, direct_admin, scalar, wait_backend_active,
    wait_backend_gone, wait_for, Conn,
};
pub use pg::{
    pg, PgServer, DATABASE, MD5_PASSWORD, MD5_USER, PASSWORD_PASSWORD, PASSWORD_USER,
    SCRAM_PASSWORD, SCRAM_USER, SERVICE_USER, SUPERUSER, TLS_USER, TRUST_USER,
};
pub use proxy::ProxyHandle;

/// How long any single step may take before a test gives up: long enough for a loaded 2-core machine,
/// short enough that a hung proxy fails the test instead of the CI run.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`STEP_TIMEOUT`]: a proxy that
/// stops answering must show up as a named failure, not as a test run that never ends.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(STEP_TIMEOUT, what, fut).await
}

/// [`within`] with an explicit bound, for steps whose timing is itself what the test checks.
pub async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

static WORKER_PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();

/// Counts panics on tokio worker threads, where the in-process proxy's session tasks run. A panicking
/// session task only shows as a closed socket to its client; the issue requires that client input never
/// panics the proxy, so bad-input tests assert this count stays at zero. Test threads are not counted:
/// their panics are ordinary assertion failures.
pub fn install_panic_counter() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                WORKER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

static LOGGING: Once = Once::new();

/// Events in which the proxy's session tracking lost step with the server (see
/// [`tracking_losses`]).
static TRACKING_LOSSES: AtomicUsize = AtomicUsize::new(0);

/// The module whose debug events report lost session tracking.
const TRACKING_TARGET: &str = "veneer_proxy::session::state";

/// Counts the proxy's session-tracking events. The tracking matches every reply to its request; a
/// reply it cannot match makes the session's settings opaque (safe, but no longer shareable), so
/// real clients driving real servers must never cause one.
struct TrackingLossCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TrackingLossCounter {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        TRACKING_LOSSES.fetch_add(1, Ordering::SeqCst);
    }
}

/// Installs the test binary's subscriber: the tracking-loss counter always, and the in-process
/// proxy's logs on stderr when `VENEER_TESTS_LOG` is set (a tracing filter such as
/// `veneer_proxy=debug`), for diagnosing a failing test. The `veneer` subprocesses never see it: they
/// start with every `VENEER_*` variable removed, since the binary rejects unknown ones.
pub fn init_test_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    LOGGING.call_once(|| {
        let counter = TrackingLossCounter.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(TRACKING_TARGET, tracing::Level::DEBUG),
        );
        let logs = std::env::var("VENEER_TESTS_LOG").ok().map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let _ = tracing_subscriber::registry()
            .with(counter)
            .with(logs)
            .try_init();
    });
}

/// How often the in-process proxy's session tracking lost step with the server since the process
/// started. Tests of well-formed traffic assert it stays at zero.
pub fn tracking_losses() -> usize {
    TRACKING_LOSSES.load(Ordering::SeqCst)
}

/// Panics seen on tokio worker threads since the process started (see [`install_panic_counter`]).
pub fn worker_panics() -> usize {
    WORKER_PANICS.load(Ordering::SeqCst)
}

/// A directory removed when dropped, for per-test files (certificates, config files). The server's own
/// directory is not one of these: it lives as long as the process and is removed at exit.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp dir; `label` makes leftovers recognisable.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("veneer-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port that was free a moment ago, for the one place a port must be named before the process that
/// binds it starts (the `veneer` binary's `--listen`). In-process servers bind port 0 instead.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}
