//! The `veneer-cache-node` binary: loads its configuration, loads the snapshot if there is one,
//! serves until SIGINT or SIGTERM, then writes the snapshot.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use veneer_cache_node::node::commands::Node;
use veneer_cache_node::node::{server, snapshot};
use veneer_config::{ConfigError, LogFormat, NodeConfig};

/// How often expired entries are swept and the metrics refreshed.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let config = match NodeConfig::load() {
        Ok(config) => config,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("veneer-cache-node: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("veneer-cache-node: {e}");
        return ExitCode::from(2);
    }
    let runtime = match veneer_config::runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("veneer-cache-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: NodeConfig) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("veneer-cache-node: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let node = Arc::new(Node::new(
        config.max_bytes,
        config.password.clone(),
        config.listen.port(),
    ));
    if let Some(path) = &config.snapshot {
        match snapshot::load(&node.store, path) {
            Ok(entries) => tracing::info!(path = %path.display(), entries, "snapshot loaded"),
            Err(e) => {
                // A damaged snapshot costs a cold start, not the node.
                tracing::warn!(path = %path.display(), error = %e, "snapshot not loaded: starting empty");
            }
        }
    }
    if let Some(addr) = config.metrics_listen {
        match metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
        {
            Ok(()) => tracing::info!(%addr, "metrics served at /metrics"),
            Err(e) => tracing::warn!(%addr, error = %e, "metrics endpoint not started"),
        }
    }
    tokio::spawn(housekeeping(Arc::downgrade(&node)));
    tracing::info!(listen = %config.listen, max_bytes = config.max_bytes, "veneer-cache-node listening");
    server::serve(
        Arc::clone(&node),
        listener,
        config.max_clients,
        shutdown_signal(),
    )
    .await;
    if let Some(path) = &config.snapshot {
        match snapshot::save(&node.store, path) {
            Ok(entries) => tracing::info!(path = %path.display(), entries, "snapshot written"),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "snapshot not written");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// Sweeps expired entries and copies the node's figures into the metrics, until the node is gone.
async fn housekeeping(node: std::sync::Weak<Node>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.store.expire_some();
        let stats = &node.store.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        metrics::gauge!("veneer_node_keys").set(node.store.len() as f64);
        metrics::gauge!("veneer_node_bytes").set(node.store.bytes() as f64);
        metrics::gauge!("veneer_node_max_bytes").set(node.store.max_bytes() as f64);
        metrics::gauge!("veneer_node_connections").set(load(&node.connections) as f64);
        metrics::counter!("veneer_node_hits_total").absolute(load(&stats.hits));
        metrics::counter!("veneer_node_misses_total").absolute(load(&stats.misses));
        metrics::counter!("veneer_node_evictions_total").absolute(load(&stats.evictions));
        metrics::counter!("veneer_node_expirations_total").absolute(load(&stats.expirations));
        metrics::counter!("veneer_node_commands_total").absolute(load(&node.commands));
    }
}

fn init_logging(config: &NodeConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("invalid setting log_level: '{}': {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| format!("cannot install logger: {e}"))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
