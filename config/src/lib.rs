//! Veneer's one configuration schema, shared by every binary.
//!
//! Every setting is declared once, in [`Settings`], which is both the clap argument set (so it is a CLI
//! flag and a `VENEER_*` environment variable) and the serde schema of the TOML file. Loading merges the
//! three sources field by field — CLI > environment > file — and [`Config`] fills in the defaults and
//! checks the combination. Unknown keys and bad values are rejected with a message naming the key.

mod node;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde::Deserialize;

pub use node::{NodeConfig, NodeSettings};
pub use values::{
    CacheRule, CacheTier, Endpoint, HostPort, LogFormat, Millis, Replication, RuleTarget, Ttl,
    UpstreamTls,
};

/// Every setting, as given by one source (CLI and environment, or the TOML file). `None` means "not
/// given here"; defaults are applied only after the sources are merged, so a file value is not hidden
/// by a default. Field doc comments are the `--help` text.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "veneer",
    version,
    about = "Veneer: a transparent caching proxy for PostgreSQL",
    after_help = "Setup: `veneer setup [OPTIONS]` installs, once, as service_user (a superuser then), \
        an event trigger in every database that reports DDL into the replication stream, so that \
        DDL made outside the proxy invalidates cached results too. `veneer uninstall [OPTIONS]` \
        removes everything Veneer created in the server. Both take the same options."
)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML configuration file; CLI flags and VENEER_* variables override its keys.
    #[arg(long, env = "VENEER_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, env = "VENEER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// PostgreSQL server to forward to, as host:port [default: 127.0.0.1:5432].
    #[arg(long, env = "VENEER_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: Option<HostPort>,

    /// TLS towards the upstream: disable, prefer, require or verify-full, with libpq's sslmode
    /// meanings (require encrypts without verifying the certificate; verify-full checks it against
    /// upstream_tls_root_cert and the upstream host name) [default: prefer].
    #[arg(long, env = "VENEER_UPSTREAM_TLS", value_name = "MODE")]
    pub upstream_tls: Option<UpstreamTls>,

    /// PEM file of the certificate authorities trusted for the upstream's certificate; required by
    /// upstream_tls = verify-full.
    #[arg(long, env = "VENEER_UPSTREAM_TLS_ROOT_CERT", value_name = "FILE")]
    pub upstream_tls_root_cert: Option<PathBuf>,

    /// Time allowed to open the upstream connection before the client gets an error [default: 5s].
    #[arg(long, env = "VENEER_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<Millis>,

    /// Opt-in reuse of server sessions: how long the upstream connection of a client that logged out
    /// cleanly, after a login the server accepted without a password (trust), is kept open for the
    /// next client with the same startup parameters; it is reset with DISCARD ALL first, but a
    /// reused session differs from a new one in ways a client can observe (see the README). 0 gives
    /// every client a new server session of its own, as it would get directly [default: 0s].
    #[arg(long, env = "VENEER_POOL_IDLE_TIMEOUT", value_name = "DURATION")]
    pub pool_idle_timeout: Option<Millis>,

    /// PEM certificate chain offered to clients that ask for TLS; with tls_key, enables client TLS.
    #[arg(long, env = "VENEER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of tls_cert.
    #[arg(long, env = "VENEER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Client sessions served at once; further clients get SQLSTATE 53300 [default: 1000].
    #[arg(long, env = "VENEER_MAX_CLIENT_CONNECTIONS", value_name = "N")]
    pub max_client_connections: Option<usize>,

    /// Largest message accepted from a client, in bytes; a larger one is refused with SQLSTATE 08P01
    /// and closes only that session [default: 67108864].
    #[arg(long, env = "VENEER_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,

    /// On SIGINT/SIGTERM, how long sessions busy in a query or transaction may run before they are
    /// ended with SQLSTATE 57P01; idle sessions end at once [default: 30s].
    #[arg(long, env = "VENEER_SHUTDOWN_DRAIN", value_name = "DURATION")]
    pub shutdown_drain: Option<Millis>,

    /// Log line format: text or json [default: text].
    #[arg(long, env = "VENEER_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. info, veneer_proxy=debug) [default: info].
    #[arg(long, env = "VENEER_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Runtime worker threads; 1 runs everything on one thread [default: 1 on machines with 2 cores or
    /// fewer, else the number of cores].
    #[arg(long, env = "VENEER_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// Serve repeated reads from the cache; false makes Veneer a plain pass-through proxy
    /// [default: true].
    #[arg(long, env = "VENEER_CACHE", value_name = "BOOL")]
    pub cache: Option<bool>,

    /// Memory the cache may hold: stored result bytes plus a per-entry overhead [default: 268435456].
    #[arg(long, env = "VENEER_CACHE_MAX_BYTES", value_name = "BYTES")]
    pub cache_max_bytes: Option<u64>,

    /// Where results are stored: embedded (in this process), nodes (veneer-cache-node servers listed
    /// in cache_nodes), redis (Redis, Valkey, ElastiCache or MemoryDB URLs in cache_nodes) or
    /// redis-cluster (the cluster's seed URLs in cache_nodes) [default: embedded].
    #[arg(long, env = "VENEER_CACHE_TIER", value_name = "TIER")]
    pub cache_tier: Option<CacheTier>,

    /// The remote tier's servers: host:port of each veneer-cache-node (or a redis:// URL when it
    /// needs a password), or redis:// and rediss:// URLs (with user and password, e.g.
    /// rediss://user:secret@host:6379) for redis and redis-cluster.
    /// Separate with , on the command line and in the environment variable; in the file, a list.
    #[arg(
        long,
        env = "VENEER_CACHE_NODES",
        value_name = "ADDRS",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub cache_nodes: Vec<String>,

    /// Further nodes each result is also written to (nodes and redis tiers): a lookup whose node is
    /// down reads the next one instead of missing [default: 0].
    #[arg(long, env = "VENEER_CACHE_REPLICAS", value_name = "N")]
    pub cache_replicas: Option<usize>,

    /// Memory of the near cache, the embedded store in front of a remote tier that answers hot
    /// results without a network hop; 0 turns it off [default: 0].
    #[arg(long, env = "VENEER_CACHE_NEAR_BYTES", value_name = "BYTES")]
    pub cache_near_bytes: Option<u64>,

    /// Longest a lookup waits for a remote tier: a slower answer counts as a miss (and a node that
    /// keeps missing it is marked down) [default: 5ms].
    #[arg(long, env = "VENEER_CACHE_TIER_TIMEOUT", value_name = "DURATION")]
    pub cache_tier_timeout: Option<Millis>,

    /// Secret that authenticates (and with cache_encrypt, encrypts) results stored in a remote tier:
    /// an entry written without it is a miss. Proxies sharing a tier need the same one [default: a
    /// random secret per process].
    #[arg(
        long,
        env = "VENEER_CACHE_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cache_secret: Option<String>,

    /// Encrypt results stored in a remote tier (ChaCha20-Poly1305 under cache_secret), so whoever
    /// can read the tier cannot read the rows [default: false].
    #[arg(long, env = "VENEER_CACHE_ENCRYPT", value_name = "BOOL")]
    pub cache_encrypt: Option<bool>,

    /// How long a result is kept when no rule or hint says otherwise. Writes through the proxy
    /// invalidate at once; this bounds how long a write made elsewhere can go unseen [default: 60s].
    #[arg(long, env = "VENEER_CACHE_DEFAULT_TTL", value_name = "DURATION")]
    pub cache_default_ttl: Option<Millis>,

    /// Largest result stored, in bytes of protocol messages; larger results stream through uncached
    /// [default: 1048576].
    #[arg(long, env = "VENEER_MAX_RESULT_BYTES", value_name = "BYTES")]
    pub max_result_bytes: Option<usize>,

    /// Caching rules, `table:NAME=TTL` or `query:PATTERN=TTL` (TTL a duration or never; PATTERN is
    /// normalized query text where * matches anything). Repeat the flag, or separate with ; in the
    /// environment variable; in the file, a list of strings. A per-statement hint in a comment,
    /// /* veneer: ttl=5s */ or /* veneer: nocache */, overrides them. The first matching query rule
    /// wins, then the shortest TTL among the tables read.
    #[arg(
        long = "cache-rule",
        env = "VENEER_CACHE_RULES",
        value_name = "RULE",
        value_delimiter = ';'
    )]
    #[serde(default)]
    pub cache_rules: Vec<CacheRule>,

    /// Serve cached results inside transactions declared READ ONLY (BEGIN READ ONLY, or BEGIN while
    /// default_transaction_read_only is on). Such a transaction then sees results newer than its
    /// snapshot would (REPEATABLE READ loses its guarantee); its misses are forwarded, never stored
    /// [default: false].
    #[arg(long, env = "VENEER_CACHE_READ_ONLY_TRANSACTIONS", value_name = "BOOL")]
    pub cache_read_only_transactions: Option<bool>,

    /// Let point lookups (equality on a table's row key) depend on their row rather than their whole
    /// table, so a write to one row keeps other rows' lookups cached; false falls back to table-level
    /// invalidation, which only costs hits [default: true].
    #[arg(long, env = "VENEER_CACHE_ROW_KEYS", value_name = "BOOL")]
    pub cache_row_keys: Option<bool>,

    /// Follow writes made outside the proxy through logical replication (one temporary slot
    /// per database in use, as service_user, which needs REPLICATION): required (while the stream is
    /// down, reads are forwarded), best-effort (cached results are still served, bounded by their
    /// TTL) or off [default: required].
    #[arg(long, env = "VENEER_REPLICATION", value_name = "MODE")]
    pub replication: Option<Replication>,

    /// Share of cache hits asked again upstream, off the client's path, and compared with what was
    /// served (0 to 1, e.g. 0.001): mismatches are counted and logged. Needs service_user to be a
    /// superuser or a member of the clients' roles [default: 0, off].
    #[arg(long, env = "VENEER_VERIFY_SAMPLE", value_name = "SHARE")]
    pub verify_sample: Option<f64>,

    /// A publication of yours for the replication stream to follow with pgoutput, instead of every
    /// table's changes with test_decoding; Veneer never creates one. Tables outside it are cached with
    /// their TTL only [default: none, test_decoding].
    #[arg(long, env = "VENEER_PUBLICATION", value_name = "NAME")]
    pub publication: Option<String>,

    /// Keep a permanent replication slot per database, named <prefix>_<database>, instead of a
    /// temporary one: after a lost connection the stream resumes where it stopped, so the cache is
    /// not emptied; the stream then runs until the proxy stops (not only while clients use the
    /// database), and the slot keeps WAL on the server while no proxy follows it. Lowercase letters,
    /// digits and underscores; proxies sharing a server need different prefixes [default: none,
    /// temporary slots].
    #[arg(long, env = "VENEER_REPLICATION_SLOT", value_name = "PREFIX")]
    pub replication_slot: Option<String>,

    /// Most replication streams followed at once, one per database in use; a further database is
    /// served as if its stream were down (see replication) until a stream frees up. Keep it under the
    /// server's max_replication_slots and max_wal_senders, which other replication also uses
    /// [default: 4].
    #[arg(long, env = "VENEER_REPLICATION_LISTENERS", value_name = "COUNT")]
    pub replication_listeners: Option<usize>,

    /// How long a database's replication stream and catalog reader keep running after its last client
    /// left; the slot is then released, and the next client starts them again [default: 5min].
    #[arg(long, env = "VENEER_REPLICATION_IDLE_TIMEOUT", value_name = "DURATION")]
    pub replication_idle_timeout: Option<Millis>,

    /// How often the proxy rereads which relations are plain tables and which functions are safe to
    /// cache, per database; DDL through the proxy rereads at once [default: 60s].
    #[arg(long, env = "VENEER_CATALOG_REFRESH", value_name = "DURATION")]
    pub catalog_refresh: Option<Millis>,

    /// How often the proxy checks, per database, who may read the tables it caches and the roles'
    /// settings: the bound on how long a GRANT, REVOKE, policy or ALTER ROLE made directly on the
    /// server goes unnoticed (with `veneer setup`, GRANT, REVOKE and policies are seen at once)
    /// [default: 500ms].
    #[arg(long, env = "VENEER_PRIVILEGE_CHECK", value_name = "DURATION")]
    pub privilege_check: Option<Millis>,

    /// Role of Veneer's own upstream connections (catalog reads). Without a working login, reads
    /// are forwarded uncached [default: postgres].
    #[arg(long, env = "VENEER_SERVICE_USER", value_name = "ROLE")]
    pub service_user: Option<String>,

    /// Password of service_user, when its authentication needs one.
    #[arg(
        long,
        env = "VENEER_SERVICE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub service_password: Option<String>,

    /// Roles allowed to run VENEER FLUSH and SHOW VENEER QUERIES besides superusers; separate with ,
    /// in the environment variable.
    #[arg(
        long = "admin-user",
        env = "VENEER_ADMIN_USERS",
        value_name = "ROLE",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub admin_users: Vec<String>,

    /// Address of the status pages: Prometheus metrics at /metrics, a status page at /, probes at
    /// /healthz and /readyz; or off [default: 127.0.0.1:9432].
    #[arg(long, env = "VENEER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<Endpoint>,
}

/// The settings in force: every source merged, defaults applied, combinations checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the proxy accepts clients on.
    pub listen: SocketAddr,
    /// The PostgreSQL server every session is forwarded to.
    pub upstream: HostPort,
    /// Whether and how the upstream connection is encrypted.
    pub upstream_tls: UpstreamTls,
    /// Trusted authorities for verify-full; set exactly when the mode is verify-full.
    pub upstream_tls_root_cert: Option<PathBuf>,
    /// Bound on opening the upstream connection.
    pub connect_timeout: Duration,
    /// How long an upstream connection waits for the next client of the same trust login; zero: not
    /// at all.
    pub pool_idle_timeout: Duration,
    /// Certificate and key for client TLS; `None` answers SSLRequest with 'N'.
    pub client_tls: Option<ClientTls>,
    /// Cap on concurrent client sessions.
    pub max_client_connections: usize,
    /// Cap on one client message, checked before any buffer grows for it.
    pub max_message_bytes: usize,
    /// Grace period for busy sessions at shutdown.
    pub shutdown_drain: Duration,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter directive.
    pub log_level: String,
    /// Runtime worker threads; `None` lets the runtime use one per core.
    pub workers: Option<usize>,
    /// The query-result cache; `None` when disabled.
    pub cache: Option<CacheConfig>,
    /// Veneer's own login for catalog reads.
    pub service_user: String,
    /// Password of `service_user`.
    pub service_password: Option<String>,
    /// Roles allowed the administrative commands besides superusers.
    pub admin_users: Vec<String>,
    /// Where the Prometheus endpoint listens; `None` when off.
    pub metrics_listen: Option<SocketAddr>,
}

/// Settings of the query-result cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bound on the memory the cache holds (the embedded tier).
    pub max_bytes: u64,
    /// Where results are stored.
    pub tier: TierConfig,
    /// TTL of results no rule or hint covers.
    pub default_ttl: Duration,
    /// Largest result stored.
    pub max_result_bytes: usize,
    /// Rules by table and query pattern.
    pub rules: Vec<CacheRule>,
    /// Interval between catalog rereads.
    pub catalog_refresh: Duration,
    /// How often privileges and role settings are checked.
    pub privilege_check: Duration,
    /// Whether hits are served inside READ ONLY transaction blocks.
    pub read_only_transactions: bool,
    /// Whether point lookups and writes depend on row keys rather than whole tables.
    pub row_keys: bool,
    /// Following writes made elsewhere.
    pub replication: Replication,
    /// Share of hits checked against the server.
    pub verify_sample: f64,
    /// The user's publication followed with pgoutput; `None` follows every table with test_decoding.
    pub publication: Option<String>,
    /// Prefix of permanent slots' names; `None` for temporary slots.
    pub replication_slot: Option<String>,
    /// Cap on replication streams running at once.
    pub replication_listeners: usize,
    /// How long a database's background work outlives its last client.
    pub replication_idle_timeout: Duration,
}

/// Where results are stored, and how a remote tier is reached.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// The kind of tier.
    pub kind: CacheTier,
    /// Its servers (empty for the embedded tier).
    pub nodes: Vec<String>,
    /// Further nodes each result is written to.
    pub replicas: usize,
    /// Bytes of the near cache in front of a remote tier; 0: none.
    pub near_bytes: u64,
    /// Longest a lookup waits for the remote tier.
    pub timeout: Duration,
    /// Secret of the values' MAC (and encryption); `None`: random per process.
    pub secret: Option<String>,
    /// Whether values are encrypted too.
    pub encrypt: bool,
}

/// Files of the certificate offered to clients.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why the configuration was refused; the message names the key or file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The CLI or an environment variable was malformed (clap's own report, which names the flag).
    #[error("{0}")]
    Cli(#[from] clap::Error),
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file named by --config or VENEER_CONFIG.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, bad value).
    #[error("invalid configuration file {path}: {message}")]
    File {
        /// The file named by --config or VENEER_CONFIG.
        path: PathBuf,
        /// toml's report, with line, column and key.
        message: String,
    },
    /// A `VENEER_*` variable that no setting reads: most likely a typo, which would otherwise be ignored.
    #[error("unknown environment variable {name}: no setting reads it (see {program} --help)")]
    UnknownEnv {
        /// The variable.
        name: String,
        /// The binary that checked it.
        program: String,
    },
    /// A value or combination that parses but cannot work.
    #[error("invalid setting {key}: {problem}")]
    Invalid {
        /// The setting's file key (the flag is the same with dashes).
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Config {
    /// Loads the configuration from the process's arguments and environment (and the file they name).
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os())
    }

    /// Loads from explicit arguments; the environment is still the process's (clap reads it).
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        reject_unknown_env::<Settings>(std::env::vars_os(), proxy_env)?;
        let cli = Settings::try_parse_from(args)?;
        let file = match &cli.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Config::resolve(cli.or(file))
    }

    /// Applies defaults to merged settings and checks them.
    pub fn resolve(s: Settings) -> Result<Config, ConfigError> {
        let client_tls = match (s.tls_cert, s.tls_key) {
            (Some(cert), Some(key)) => Some(ClientTls { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("tls_key", "tls_cert is set but tls_key is not"))
            }
            (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_key is set but tls_cert is not"))
            }
        };
        let config = Config {
            listen: s
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 6432))),
            upstream: s
                .upstream
                .unwrap_or_else(|| HostPort::new("127.0.0.1", 5432)),
            upstream_tls: s.upstream_tls.unwrap_or(UpstreamTls::Prefer),
            upstream_tls_root_cert: s.upstream_tls_root_cert,
            connect_timeout: s.connect_timeout.map_or(Duration::from_secs(5), Into::into),
            pool_idle_timeout: s.pool_idle_timeout.map_or(Duration::ZERO, Into::into),
            client_tls,
            max_client_connections: s.max_client_connections.unwrap_or(1000),
            max_message_bytes: s.max_message_bytes.unwrap_or(64 << 20),
            shutdown_drain: s.shutdown_drain.map_or(Duration::from_secs(30), Into::into),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
            log_level: s.log_level.unwrap_or_else(|| "info".to_owned()),
            workers: s.workers,
            cache: s.cache.unwrap_or(true).then(|| CacheConfig {
                max_bytes: s.cache_max_bytes.unwrap_or(256 << 20),
                tier: TierConfig {
                    kind: s.cache_tier.unwrap_or(CacheTier::Embedded),
                    nodes: s.cache_nodes,
                    replicas: s.cache_replicas.unwrap_or(0),
                    near_bytes: s.cache_near_bytes.unwrap_or(0),
                    timeout: s
                        .cache_tier_timeout
                        .map_or(Duration::from_millis(5), Into::into),
                    secret: s.cache_secret,
                    encrypt: s.cache_encrypt.unwrap_or(false),
                },
                default_ttl: s
                    .cache_default_ttl
                    .map_or(Duration::from_secs(60), Into::into),
                max_result_bytes: s.max_result_bytes.unwrap_or(1 << 20),
                rules: s.cache_rules,
                catalog_refresh: s
                    .catalog_refresh
                    .map_or(Duration::from_secs(60), Into::into),
                privilege_check: s
                    .privilege_check
                    .map_or(Duration::from_millis(500), Into::into),
                read_only_transactions: s.cache_read_only_transactions.unwrap_or(false),
                row_keys: s.cache_row_keys.unwrap_or(true),
                replication: s.replication.unwrap_or(Replication::Required),
                verify_sample: s.verify_sample.unwrap_or(0.0),
                publication: s.publication,
                replication_slot: s.replication_slot,
                replication_listeners: s.replication_listeners.unwrap_or(4),
                replication_idle_timeout: s
                    .replication_idle_timeout
                    .map_or(Duration::from_secs(300), Into::into),
            }),
            service_user: s.service_user.unwrap_or_else(|| "postgres".to_owned()),
            service_password: s.service_password,
            admin_users: s.admin_users,
            metrics_listen: s
                .metrics_listen
                .map_or(Some(SocketAddr::from(([127, 0, 0, 1], 9432))), |e| e.0),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.max_client_connections == 0 {
            return Err(invalid("max_client_connections", "must be at least 1"));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid("max_message_bytes", "must be at least 1024"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be longer than 0"));
        }
        match (self.upstream_tls, &self.upstream_tls_root_cert) {
            (UpstreamTls::VerifyFull, None) => {
                return Err(invalid(
                    "upstream_tls_root_cert",
                    "upstream_tls = verify-full needs the authorities to verify against",
                ))
            }
            (UpstreamTls::Disable | UpstreamTls::Prefer | UpstreamTls::Require, Some(_)) => {
                return Err(invalid(
                    "upstream_tls_root_cert",
                    "is only used with upstream_tls = verify-full",
                ))
            }
            _ => {}
        }
        if self.workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        if let Some(cache) = &self.cache {
            if !(0.0..=1.0).contains(&cache.verify_sample) {
                return Err(invalid("verify_sample", "must be a share from 0 to 1"));
            }
            if cache.default_ttl.is_zero() {
                return Err(invalid("cache_default_ttl", "must be longer than 0"));
            }
            if cache.max_bytes < 1 << 20 {
                return Err(invalid("cache_max_bytes", "must be at least 1048576"));
            }
            cache.tier.check()?;
            if cache.catalog_refresh < Duration::from_secs(1) {
                return Err(invalid("catalog_refresh", "must be at least 1s"));
            }
            if cache.privilege_check < Duration::from_millis(50) {
                return Err(invalid("privilege_check", "must be at least 50ms"));
            }
            if let Some(prefix) = &cache.replication_slot {
                let valid = prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if prefix.is_empty() || prefix.len() > 30 || !valid {
                    return Err(invalid(
                        "replication_slot",
                        "must be 1 to 30 lowercase letters, digits and underscores",
                    ));
                }
            }
            if cache.replication_listeners == 0 && cache.replication != Replication::Off {
                return Err(invalid(
                    "replication_listeners",
                    "must be at least 1 (set replication = off to follow no database)",
                ));
            }
        }
        Ok(())
    }
}

impl TierConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let remote = self.kind != CacheTier::Embedded;
        if remote && self.nodes.is_empty() {
            return Err(invalid(
                "cache_nodes",
                "the remote cache_tier needs at least one server",
            ));
        }
        if !remote && !self.nodes.is_empty() {
            return Err(invalid(
                "cache_nodes",
                "is only used with cache_tier = nodes, redis or redis-cluster",
            ));
        }
        for node in &self.nodes {
            let url = node.starts_with("redis://") || node.starts_with("rediss://");
            match self.kind {
                CacheTier::Nodes if !url && node.parse::<HostPort>().is_err() => {
                    return Err(ConfigError::Invalid {
                        key: "cache_nodes",
                        problem: format!("'{node}' is neither host:port nor a redis:// URL"),
                    })
                }
                CacheTier::Redis | CacheTier::RedisCluster if !url => {
                    return Err(ConfigError::Invalid {
                        key: "cache_nodes",
                        problem: format!("'{node}' is not a redis:// or rediss:// URL"),
                    })
                }
                _ => {}
            }
        }
        if self.replicas >= self.nodes.len().max(1) && self.replicas > 0 {
            return Err(invalid(
                "cache_replicas",
                "must be fewer than the nodes in cache_nodes",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("cache_tier_timeout", "must be longer than 0"));
        }
        if self.secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("cache_secret", "must be at least 16 characters"));
        }
        Ok(())
    }
}

impl Settings {
    /// Reads a TOML file; unknown keys and malformed values are errors that name the file and key.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        read_toml(path)
    }

    /// Field-wise merge: a value set in `self` wins over `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            upstream: self.upstream.or(lower.upstream),
            upstream_tls: self.upstream_tls.or(lower.upstream_tls),
            upstream_tls_root_cert: self.upstream_tls_root_cert.or(lower.upstream_tls_root_cert),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            pool_idle_timeout: self.pool_idle_timeout.or(lower.pool_idle_timeout),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            max_client_connections: self.max_client_connections.or(lower.max_client_connections),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            shutdown_drain: self.shutdown_drain.or(lower.shutdown_drain),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            workers: self.workers.or(lower.workers),
            cache: self.cache.or(lower.cache),
            cache_max_bytes: self.cache_max_bytes.or(lower.cache_max_bytes),
            cache_tier: self.cache_tier.or(lower.cache_tier),
            cache_nodes: non_empty_or(self.cache_nodes, lower.cache_nodes),
            cache_replicas: self.cache_replicas.or(lower.cache_replicas),
            cache_near_bytes: self.cache_near_bytes.or(lower.cache_near_bytes),
            cache_tier_timeout: self.cache_tier_timeout.or(lower.cache_tier_timeout),
            cache_secret: self.cache_secret.or(lower.cache_secret),
            cache_encrypt: self.cache_encrypt.or(lower.cache_encrypt),
            cache_default_ttl: self.cache_default_ttl.or(lower.cache_default_ttl),
            max_result_bytes: self.max_result_bytes.or(lower.max_result_bytes),
            cache_rules: non_empty_or(self.cache_rules, lower.cache_rules),
            catalog_refresh: self.catalog_refresh.or(lower.catalog_refresh),
            privilege_check: self.privilege_check.or(lower.privilege_check),
            replication: self.replication.or(lower.replication),
            verify_sample: self.verify_sample.or(lower.verify_sample),
            publication: self.publication.or(lower.publication),
            replication_slot: self.replication_slot.or(lower.replication_slot),
            replication_listeners: self.replication_listeners.or(lower.replication_listeners),
            replication_idle_timeout: self
                .replication_idle_timeout
                .or(lower.replication_idle_timeout),
            cache_read_only_transactions: self
                .cache_read_only_transactions
                .or(lower.cache_read_only_transactions),
            cache_row_keys: self.cache_row_keys.or(lower.cache_row_keys),
            service_user: self.service_user.or(lower.service_user),
            service_password: self.service_password.or(lower.service_password),
            admin_users: non_empty_or(self.admin_users, lower.admin_users),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
        }
    }
}

/// Lists merge whole: a list given by a higher source replaces the lower one.
fn non_empty_or<T>(higher: Vec<T>, lower: Vec<T>) -> Vec<T> {
    if higher.is_empty() {
        lower
    } else {
        higher
    }
}

fn invalid(key: &'static str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    }
}

/// The tokio runtime of a binary whose `workers` setting is `workers`: when unset, 1 on machines
/// with 2 cores or fewer (where the process shares them with its clients and peers), else one per
/// core. One worker means one thread: the current-thread scheduler then saves the cross-thread
/// wake-ups (futex calls) the work-stealing scheduler makes even with a single worker.
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = workers.unwrap_or_else(|| {
        match std::thread::available_parallelism().map_or(1, |n| n.get()) {
            cores if cores <= 2 => 1,
            cores => cores,
        }
    });
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    };
    builder.enable_all().build()
}

/// Whether an environment variable is the proxy's to know: `VENEER_*`, but not a cache node's.
fn proxy_env(name: &str) -> bool {
    name.starts_with("VENEER_") && !name.starts_with(node::ENV_PREFIX)
}

/// Reads a TOML file of settings; unknown keys and malformed values are errors that name the file
/// and key.
fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// A misspelt variable would silently do nothing; refuse every variable `ours` claims that `S`
/// does not know.
fn reject_unknown_env<S: CommandFactory>(
    env: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ours: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let command = S::command();
    let known: Vec<&std::ffi::OsStr> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .collect();
    for (name, _) in env {
        let is_ours = name.to_str().is_some_and(&ours);
        if is_ours && !known.contains(&name.as_os_str()) {
            return Err(ConfigError::UnknownEnv {
                name: name.to_string_lossy().into_owned(),
                program: command.get_name().to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
