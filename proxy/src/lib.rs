//! Veneer's proxy: a transparent PostgreSQL wire-protocol proxy. Each client gets its own upstream
//! connection; every message passes through unchanged while the session state the cache builds on is
//! followed from the traffic.
//!
//! Layers, outermost first: [`server`] (listener, limits, shutdown) → [`handshake`] (TLS negotiation,
//! startup packet) → [`session`] (the relay and its state) → [`wire`] (framing, authored messages).

pub mod cache;
pub mod cancel;
pub mod error;
pub mod faults;
pub mod handshake;
pub mod logging;
pub mod metrics;
pub mod passthrough;
pub mod pool;
pub mod server;
pub mod session;
pub mod setup;
pub mod shared;
pub mod sql_bytes;
pub mod status;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod wire;

pub use error::Error;
pub use server::Proxy;
