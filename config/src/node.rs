//! The configuration of `veneer-cache-node`, loaded like the proxy's: CLI flags over
//! `VENEER_CACHE_NODE_*` environment variables over a TOML file, unknown keys refused.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::{invalid, reject_unknown_env, ConfigError, Endpoint, LogFormat};

/// Every setting of a cache node, as one source gives it (see [`crate::Settings`]).
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "veneer-cache-node",
    version,
    about = "veneer-cache-node: a node of Veneer's sharded cache tier, speaking the Redis protocol \
        (RESP2 and RESP3)",
    after_help = "Point proxies at a set of nodes with --cache-tier nodes --cache-nodes \
        host:port,host:port,... Redis tools (redis-cli, redis-benchmark) work against a node."
)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// TOML configuration file; CLI flags and VENEER_CACHE_NODE_* variables override its keys.
    #[arg(long, env = "VENEER_CACHE_NODE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to serve on [default: 127.0.0.1:6380].
    #[arg(long, env = "VENEER_CACHE_NODE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Memory the entries may hold: keys, values and a per-entry overhead; past it the least
    /// frequently read entries go [default: 268435456].
    #[arg(long, env = "VENEER_CACHE_NODE_MAX_BYTES", value_name = "BYTES")]
    pub max_bytes: Option<u64>,

    /// Password clients must give (AUTH or HELLO ... AUTH) before any other command [default: none].
    #[arg(
        long,
        env = "VENEER_CACHE_NODE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// File the entries are written to on shutdown and read from on start, so a restarted node is
    /// warm [default: none].
    #[arg(long, env = "VENEER_CACHE_NODE_SNAPSHOT", value_name = "PATH")]
    pub snapshot: Option<PathBuf>,

    /// Most client connections at once; further ones are refused with an error [default: 10000].
    #[arg(long, env = "VENEER_CACHE_NODE_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,

    /// Runtime worker threads [default: 1 on machines with 2 cores or fewer, else the number of
    /// cores].
    #[arg(long, env = "VENEER_CACHE_NODE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// Address of the Prometheus endpoint (GET /metrics), or off [default: off].
    #[arg(long, env = "VENEER_CACHE_NODE_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<Endpoint>,

    /// Log line format: text or json [default: text].
    #[arg(long, env = "VENEER_CACHE_NODE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing's EnvFilter syntax [default: info].
    #[arg(long, env = "VENEER_CACHE_NODE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// A cache node's settings in force.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where it serves.
    pub listen: SocketAddr,
    /// Bound on the entries' memory.
    pub max_bytes: u64,
    /// Password required of clients.
    pub password: Option<String>,
    /// Snapshot file.
    pub snapshot: Option<PathBuf>,
    /// Cap on connections.
    pub max_clients: usize,
    /// Worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// Prometheus endpoint; `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
}

/// The prefix of the node's environment variables (the proxy's own check leaves them alone).
pub(crate) const ENV_PREFIX: &str = "VENEER_CACHE_NODE_";

impl NodeConfig {
    /// Loads from the process's arguments and environment.
    pub fn load() -> Result<NodeConfig, ConfigError> {
        NodeConfig::load_from(std::env::args_os())
    }

    /// Loads from explicit arguments; the environment is still the process's.
    pub fn load_from<I, T>(args: I) -> Result<NodeConfig, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        reject_unknown_env::<NodeSettings>(std::env::vars_os(), |n| n.starts_with(ENV_PREFIX))?;
        let cli = NodeSettings::try_parse_from(args)?;
        let file: NodeSettings = match &cli.config {
            Some(path) => crate::read_toml(path)?,
            None => NodeSettings::default(),
        };
        let s = cli.or(file);
        let config = NodeConfig {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 6380))),
            max_bytes: s.max_bytes.unwrap_or(256 << 20),
            password: s.password,
            snapshot: s.snapshot,
            max_clients: s.max_clients.unwrap_or(10_000),
            workers: s.workers,
            metrics_listen: s.metrics_listen.and_then(|e| e.0),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
            log_level: s.log_level.unwrap_or_else(|| "info".to_owned()),
        };
        if config.max_bytes < 1 << 20 {
            return Err(invalid("max_bytes", "must be at least 1048576"));
        }
        if config.max_clients == 0 {
            return Err(invalid("max_clients", "must be at least 1"));
        }
        if config.workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        Ok(config)
    }
}

impl NodeSettings {
    fn or(self, lower: NodeSettings) -> NodeSettings {
        NodeSettings {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            max_bytes: self.max_bytes.or(lower.max_bytes),
            password: self.password.or(lower.password),
            snapshot: self.snapshot.or(lower.snapshot),
            max_clients: self.max_clients.or(lower.max_clients),
            workers: self.workers.or(lower.workers),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
        }
    }
}
