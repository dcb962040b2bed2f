//! The listener: accepts clients, caps how many are served, opens each one's upstream connection,
//! routes cancel requests, logs every connection, and drains sessions at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use veneer_config::Config;

use crate::cache::Cache;
use crate::cancel::CancelRegistry;
use crate::error::Error;
use crate::handshake::{self, Hello};
use crate::metrics::Meters;
use crate::pool::Pool;
use crate::session::{End, Session};
use crate::shared::{Phase, Shared};
use crate::stream::Stream;
use crate::upstream;
use crate::wire::authored::{error_response, sqlstate, Severity};
use crate::wire::startup::StartupMessage;

/// A bound proxy, ready to run.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Binds the listener and loads TLS material; errors name the address or file.
    pub async fn bind(config: Config) -> Result<Proxy, Error> {
        let tls = config
            .client_tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let upstream_tls = crate::tls::upstream_connector(&config)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::bind(config.listen, e))?;
        let meters = Arc::new(Meters::default());
        let cache = match config.cache.clone() {
            Some(c) => Some(Arc::new(Cache::new(
                c,
                config.clone(),
                upstream_tls.clone(),
                Arc::clone(&meters),
            )?)),
            None => None,
        };
        if let Some(cache) = &cache {
            tokio::spawn(crate::cache::report_usage(Arc::downgrade(cache)));
        }
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.max_client_connections)),
            cache,
            pool: Pool::new(config.pool_idle_timeout, Arc::clone(&meters)),
            meters,
            config,
            tls,
            upstream_tls,
            cancels: CancelRegistry::default(),
            draining: Default::default(),
        });
        Ok(Proxy { listener, shared })
    }

    /// The address clients connect to (useful when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves the metrics listener's pages (see [`crate::status`]) on `addr` with the counters
    /// `prometheus` renders; returns the address bound.
    pub async fn serve_status(
        &self,
        addr: SocketAddr,
        prometheus: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Result<SocketAddr, Error> {
        let listener = crate::status::bind(addr).await?;
        let bound = listener.local_addr().map_err(|e| Error::metrics(addr, e))?;
        crate::status::serve(listener, Arc::clone(&self.shared), prometheus);
        Ok(bound)
    }

    /// Serves clients until `shutdown` completes, then drains: idle sessions end at once, busy ones
    /// when they become idle or when `shutdown_drain` runs out, whichever is first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        // Every session task holds a sender; the channel closing means they have all ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let shared = self.shared.clone();
                        let phase = phase_rx.clone();
                        let alive = alive_tx.clone();
                        tokio::spawn(async move {
                            serve(tcp, peer, shared, phase).await;
                            drop(alive);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep the proxy up, give it a moment.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(self.listener);
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let busy =
            self.shared.config.max_client_connections - self.shared.slots.available_permits();
        tracing::info!(sessions = busy, drain = ?self.shared.config.shutdown_drain, "shutting down");
        let _ = phase_tx.send(Phase::Draining);
        drop(alive_tx);
        let drain = tokio::time::sleep(self.shared.config.shutdown_drain);
        tokio::select! {
            _ = alive_rx.recv() => {}
            _ = drain => {
                tracing::info!("drain time over: terminating remaining sessions");
                let _ = phase_tx.send(Phase::Terminating);
                alive_rx.recv().await;
            }
        }
        if let Some(cache) = &self.shared.cache {
            cache.stop();
        }
        self.shared.pool.expire(true);
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Serves one accepted connection from greeting to close.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) {
    let _ = tcp.set_nodelay(true);
    let greeting = tokio::time::timeout(
        handshake::STARTUP_TIMEOUT,
        handshake::greet(tcp, shared.tls.as_ref()),
    );
    match greeting.await {
        Ok(Ok(Hello::Startup(client, startup))) => {
            open_session(client, startup, peer, shared, phase).await
        }
        Ok(Ok(Hello::Cancel(key, client))) => {
            shared.cancels.cancel(&key).await;
            drop(client);
        }
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "connection refused during startup")
        }
        Err(_) => tracing::info!(client = %peer, "startup packet not received in time"),
    }
}

async fn open_session(
    mut client: Stream,
    startup: StartupMessage,
    peer: SocketAddr,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) {
    let started = Instant::now();
    let (user, database) = (startup.user().to_owned(), startup.database().to_owned());
    let refuse = |code, message: String| error_response(Severity::Fatal, code, &message);
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        tracing::warn!(client = %peer, %user, %database, limit = shared.config.max_client_connections,
            "connection refused: max_client_connections reached");
        let message = refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".into(),
        );
        let _ = client.write_all(&message).await;
        return;
    };
    if *phase.borrow() != Phase::Running {
        let message = refuse(
            sqlstate::ADMIN_SHUTDOWN,
            "the proxy is shutting down".into(),
        );
        let _ = client.write_all(&message).await;
        return;
    }
    let (upstream, greeting) = match shared.pool.take(&startup.raw) {
        Some(kept) => (kept.upstream, Some(kept.greeting)),
        None => match login(&shared, &startup).await {
            Ok(upstream) => (upstream, None),
            Err(e) => {
                tracing::warn!(client = %peer, %user, %database, error = %e, "connection refused: upstream unreachable");
                let code = e.sqlstate().unwrap_or(sqlstate::CONNECTION_REJECTED);
                let _ = client.write_all(&refuse(code, e.to_string())).await;
                return;
            }
        },
    };
    tracing::info!(client = %peer, %user, %database, tls = client.is_tls(), upstream = %upstream.addr,
        reused = greeting.is_some(), "connection opened");
    let meters = Arc::clone(&shared.meters);
    meters.client_connections.increment(1.0);
    meters.upstream_connections.increment(1.0);
    let (end, traffic) = Session::new(client, upstream, shared, &startup, greeting)
        .run(phase)
        .await;
    meters.client_connections.decrement(1.0);
    meters.upstream_connections.decrement(1.0);
    let duration_ms = started.elapsed().as_millis() as u64;
    let reason = match &end {
        End::ClientClosed => "client closed".to_owned(),
        End::UpstreamClosed => "upstream closed".to_owned(),
        End::Shutdown => "proxy shutdown".to_owned(),
        End::Failed(e) => e.to_string(),
    };
    tracing::info!(client = %peer, %user, %database, duration_ms,
        bytes_from_client = traffic.from_client, bytes_to_client = traffic.to_client, %reason,
        "connection closed");
}

/// Opens a new upstream connection and sends the client's startup message on it; the session relays
/// the rest of the login.
async fn login(shared: &Shared, startup: &StartupMessage) -> Result<upstream::Upstream, Error> {
    let mut upstream = upstream::connect(&shared.config, shared.upstream_tls.as_ref()).await?;
    upstream
        .stream
        .write_all(&startup.raw)
        .await
        .map_err(Error::upstream_io)?;
    Ok(upstream)
}
