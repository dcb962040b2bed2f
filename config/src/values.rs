//! Value types of settings: each parses from the same text on the command line, in an environment
//! variable and in the TOML file, so a value means one thing wherever it is written.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserializes any `FromStr` value from a TOML string, keeping its own error message.
macro_rules! deserialize_from_str {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An upstream address as `host:port`; the host may be a name, resolved at each connection so a
/// changed DNS record is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Builds an address from its parts.
    pub fn new(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port,
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}' is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("'{s}' has no host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("'{port}' in '{s}' is not a port number"))?;
        Ok(HostPort::new(host, port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}
deserialize_from_str!(HostPort);

/// A duration written as humans do: `250ms`, `5s`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Millis)
            .map_err(|e| format!("'{s}' is not a duration such as 500ms or 5s ({e})"))
    }
}

impl From<Millis> for Duration {
    fn from(m: Millis) -> Duration {
        m.0
    }
}
deserialize_from_str!(Millis);

/// Names the accepted words of an enum setting, so errors can list them.
macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The setting's word for this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($word => Ok($name::$variant),)+
                    _ => Err(format!("'{s}' is not one of: {}", [$($word),+].join(", "))),
                }
            }
        }
        deserialize_from_str!($name);
    };
}

word_enum!(
    /// How the upstream connection is encrypted, with libpq's sslmode meanings.
    UpstreamTls {
        /// Plain TCP.
        Disable = "disable",
        /// TLS when the server offers it, plain TCP otherwise.
        Prefer = "prefer",
        /// TLS or no connection; the certificate is not verified (as libpq's sslmode=require).
        Require = "require",
        /// TLS or no connection, with the certificate verified against `upstream_tls_root_cert` and
        /// the upstream's host name (as libpq's sslmode=verify-full).
        VerifyFull = "verify-full",
    }
);

word_enum!(
    /// Shape of log lines.
    LogFormat {
        /// Human-readable lines.
        Text = "text",
        /// One JSON object a line, for log collectors.
        Json = "json",
    }
);

/// How long results matched by a rule are kept, or `never` to keep them out of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Never cached.
    Never,
    /// Cached for at most this long.
    For(Duration),
}

impl FromStr for Ttl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("never") {
            return Ok(Ttl::Never);
        }
        let Millis(d) = s.trim().parse()?;
        if d.is_zero() {
            return Err(format!("'{s}': a TTL of 0 caches nothing; write never"));
        }
        Ok(Ttl::For(d))
    }
}
deserialize_from_str!(Ttl);

/// What a caching rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleTarget {
    /// Every query that reads this table (name without schema, as Postgres folds it).
    Table(String),
    /// Queries whose normalized text (literals replaced by `?`, whitespace collapsed) matches this
    /// pattern, where `*` stands for any text; compared without regard to ASCII case.
    Query(String),
}

/// A caching rule: `table:NAME=TTL` or `query:PATTERN=TTL`, where TTL is a duration or `never`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    /// What the rule matches.
    pub target: RuleTarget,
    /// What it decides.
    pub ttl: Ttl,
}

impl FromStr for CacheRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let shape = || format!("'{s}' is not table:NAME=TTL or query:PATTERN=TTL");
        let (kind, rest) = s.split_once(':').ok_or_else(shape)?;
        let (pattern, ttl) = rest.rsplit_once('=').ok_or_else(shape)?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(shape());
        }
        let target = match kind.trim().to_ascii_lowercase().as_str() {
            "table" => RuleTarget::Table(pattern.to_owned()),
            "query" => RuleTarget::Query(pattern.to_owned()),
            other => return Err(format!("'{other}' in '{s}' is not table or query")),
        };
        Ok(CacheRule {
            target,
            ttl: ttl.parse()?,
        })
    }
}
deserialize_from_str!(CacheRule);

/// An address to serve on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub Option<std::net::SocketAddr>);

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Endpoint(None));
        }
        s.trim()
            .parse()
            .map(|a| Endpoint(Some(a)))
            .map_err(|_| format!("'{s}' is not an address such as 127.0.0.1:9432, or off"))
    }
}
deserialize_from_str!(Endpoint);

word_enum!(
    /// Whether writes made outside the proxy are followed through logical replication, and what the
    /// cache does while it cannot follow them.
    Replication {
        /// Follow the stream; while it is down, reads are forwarded rather than risk a stale answer.
        Required = "required",
        /// Follow the stream; while it is down, cached results are still served, bounded by their TTL.
        BestEffort = "best-effort",
        /// Do not follow it: out-of-band writes show once an entry's TTL runs out.
        Off = "off",
    }
);

word_enum!(
    /// Where cached results are stored.
    CacheTier {
        /// In the proxy's own memory.
        Embedded = "embedded",
        /// A sharded tier of `veneer-cache-node`s, each key on one node (and `cache_replicas` more).
        Nodes = "nodes",
        /// Redis, Valkey, ElastiCache or MemoryDB servers (several are sharded like nodes).
        Redis = "redis",
        /// A Redis (or Valkey) Cluster: hash slots, redirections and replicas are the cluster's.
        RedisCluster = "redis-cluster",
    }
);
