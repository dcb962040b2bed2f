//! The proxy under test, run in-process on a kernel-chosen port against the test server.
//!
//! In-process rather than as a subprocess so that each test gets its own proxy with its own settings in
//! milliseconds, and so that shutdown can be triggered and awaited precisely. The `veneer` binary itself
//! is covered by [`crate::binary`].

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use veneer_config::{Config, Settings};

use crate::pg::pg;

/// A running in-process proxy. Dropping it leaves the proxy task running until the test's runtime
/// ends; call [`ProxyHandle::shutdown`] to check that it stops cleanly.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Where clients connect.
    addr: SocketAddr,
    /// Completing this ends the shutdown future passed to `run`; `None` once triggered.
    trigger: Option<oneshot::Sender<()>>,
    /// The task running `Proxy::run`, whose result is the proxy's verdict on its own shutdown.
    task: JoinHandle<Result<(), veneer_proxy::Error>>,
}

impl ProxyHandle {
    /// Starts a proxy with default settings in front of the test server.
    pub async fn start() -> ProxyHandle {
        ProxyHandle::start_with(|_| {}).await
    }

    /// Starts a proxy in front of the test server after `adjust` has changed the settings (limits, TLS,
    /// drain time, or another upstream). `listen` and `upstream` are preset and may be overridden.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> ProxyHandle {
        crate::install_panic_counter();
        crate::init_test_logging();
        let mut settings = Settings {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            upstream: Some(pg().upstream()),
            ..Default::default()
        };
        adjust(&mut settings);
        let config = Config::resolve(settings).expect("test settings are valid");
        let proxy = veneer_proxy::Proxy::bind(config)
            .await
            .expect("bind the proxy");
        let addr = proxy.local_addr();
        let (trigger, triggered) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = triggered.await;
        }));
        ProxyHandle {
            addr,
            trigger: Some(trigger),
            task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the graceful shutdown without waiting for it, so a test can watch sessions during the
    /// drain. Calling it twice is harmless.
    pub fn begin_shutdown(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
    }

    /// Whether `run` has returned.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Triggers shutdown (if not yet) and waits for `run` to return, failing the test if it does not
    /// within the step timeout or if the task panicked.
    pub async fn shutdown(mut self) -> Result<(), veneer_proxy::Error> {
        self.begin_shutdown();
        crate::within("Proxy::run to return after shutdown", self.task)
            .await
            .expect("the proxy task panicked")
    }
}
