//! What the listener and every session share: the proxy's phase (running, draining, terminating)
//! and the state built once at start (settings, TLS, the cache, the pool, the cancel registry).
//! A module of its own so that the listener and the sessions both use it without using each other.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use veneer_config::Config;

use crate::cache::Cache;
use crate::cancel::CancelRegistry;
use crate::metrics::Meters;
use crate::pool::Pool;

/// Where the proxy is in its life; sessions watch it to know when to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// Shutdown requested: no new clients; sessions close as soon as they are idle.
    Draining,
    /// The drain time is over: every session closes now.
    Terminating,
}

/// State every session task shares.
pub struct Shared {
    /// The settings in force.
    pub config: Config,
    /// Client TLS, when a certificate is configured.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Upstream TLS, built once for every session; `None` under upstream_tls = disable.
    pub(crate) upstream_tls: Option<TlsConnector>,
    /// Backend keys of live sessions, for routing CancelRequests.
    pub cancels: CancelRegistry,
    /// One permit per client session: the max_client_connections cap.
    pub(crate) slots: Arc<Semaphore>,
    /// The query-result cache; `None` when caching is off.
    pub cache: Option<Arc<Cache>>,
    /// Upstream connections kept between clients of the same trust login.
    pub pool: Arc<Pool>,
    /// Metric handles.
    pub meters: Arc<Meters>,
    /// Shutdown has begun: no new clients (what `/readyz` reports).
    pub draining: std::sync::atomic::AtomicBool,
}
