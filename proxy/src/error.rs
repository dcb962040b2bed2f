//! The proxy's one error type: what went wrong, where (client, upstream, setup), its cause, and the
//! SQLSTATE a client is told.

use std::fmt;

use crate::wire::authored::sqlstate;

/// An error of the proxy, cheap to move (one box).
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    message: String,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Where an error came from, which decides what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Listening socket could not be opened.
    Bind,
    /// TLS material could not be loaded or a TLS handshake failed.
    Tls,
    /// The upstream could not be reached or refused the session.
    UpstreamConnect,
    /// The upstream connection broke mid-session.
    UpstreamIo,
    /// The client broke the protocol.
    ClientProtocol,
    /// The client connection broke.
    ClientIo,
    /// Veneer's own login (service_user) failed or its query did; only the cache is affected.
    Service,
    /// The metrics endpoint could not be started.
    Metrics,
    /// The remote cache tier's configuration cannot be used.
    Tier,
}

impl Error {
    fn new(kind: Kind, message: String) -> Error {
        Error(Box::new(Inner {
            kind,
            message,
            cause: None,
        }))
    }

    fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.0.cause = Some(Box::new(cause));
        self
    }

    /// The listener could not bind.
    pub fn bind(addr: std::net::SocketAddr, cause: std::io::Error) -> Error {
        Error::new(Kind::Bind, format!("cannot listen on {addr}")).with_cause(cause)
    }

    /// The remote cache tier cannot be set up; the message names the setting and server.
    pub fn tier(message: String) -> Error {
        Error::new(Kind::Tier, message)
    }

    /// TLS setup failed; the message names the file or peer.
    pub fn tls(message: String) -> Error {
        Error::new(Kind::Tls, message)
    }

    /// The upstream at `addr` could not be reached.
    pub fn upstream_connect(
        addr: &dyn fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::new(
            Kind::UpstreamConnect,
            format!("could not connect to upstream {addr}"),
        )
        .with_cause(cause)
    }

    /// The upstream refused something the proxy needs (e.g. TLS under upstream_tls=require).
    pub fn upstream_refused(addr: &dyn fmt::Display, what: &str) -> Error {
        Error::new(Kind::UpstreamConnect, format!("upstream {addr} {what}"))
    }

    /// Reading from or writing to the upstream failed.
    pub fn upstream_io(cause: std::io::Error) -> Error {
        Error::new(Kind::UpstreamIo, "upstream connection lost".to_owned()).with_cause(cause)
    }

    /// The client broke the protocol.
    pub fn client_protocol(cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::new(Kind::ClientProtocol, "protocol violation".to_owned()).with_cause(cause)
    }

    /// Reading from or writing to the client failed.
    pub fn client_io(cause: std::io::Error) -> Error {
        Error::new(Kind::ClientIo, "client connection lost".to_owned()).with_cause(cause)
    }

    /// Veneer's own session as `user` on `database` failed while doing `what`.
    pub fn service(
        what: &str,
        user: &str,
        database: &str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::new(
            Kind::Service,
            format!("{what} as service_user {user} in database {database} failed"),
        )
        .with_cause(cause)
    }

    /// Reading a database's catalog took longer than `limit`.
    pub fn catalog_timeout(database: &str, limit: std::time::Duration) -> Error {
        Error::new(
            Kind::Service,
            format!("reading the catalog of database {database} took longer than {limit:?}"),
        )
    }

    /// A check of database `database`'s privileges went wrong in a way the server did not report.
    pub fn privileges(database: &str, what: &str) -> Error {
        Error::new(
            Kind::Service,
            format!("checking the privileges of database {database}: {what}"),
        )
    }

    /// The Prometheus endpoint could not start.
    pub fn metrics(
        addr: std::net::SocketAddr,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::new(Kind::Metrics, format!("cannot serve metrics on {addr}")).with_cause(cause)
    }

    /// Where the error came from.
    pub fn kind(&self) -> Kind {
        self.0.kind
    }

    /// The SQLSTATE to tell the client, where the client can still be told anything.
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self.0.kind {
            Kind::UpstreamConnect => Some(sqlstate::CONNECTION_REJECTED),
            Kind::UpstreamIo => Some(sqlstate::CONNECTION_FAILURE),
            Kind::ClientProtocol => Some(sqlstate::PROTOCOL_VIOLATION),
            Kind::Bind
            | Kind::Tls
            | Kind::ClientIo
            | Kind::Service
            | Kind::Metrics
            | Kind::Tier => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        let Some(cause) = &self.0.cause else {
            return Ok(());
        };
        // tokio-postgres says only "db error" and keeps the server's words in its source.
        if let Some(db) = cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            return write!(f, ": {} (SQLSTATE {})", db.message(), db.code().code());
        }
        write!(f, ": {cause}")?;
        let mut source = cause.source();
        while let Some(inner) = source {
            write!(f, ": {inner}")?;
            source = inner.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {self})", self.0.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.cause.as_deref().map(|c| c as _)
    }
}
