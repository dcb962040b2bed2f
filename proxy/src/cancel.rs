//! Routing of CancelRequests. Clients see the upstream's own BackendKeyData (the proxy forwards it
//! unchanged), so a CancelRequest names an upstream backend; the registry says which upstream address
//! that backend lives at, and only keys of live sessions are relayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::startup::CANCEL_REQUEST;

/// Longest wait for the server to take a relayed cancel request.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Backend keys of live sessions and the upstream each belongs to. A std `Mutex`: it is held only
/// for a map operation, never across an await.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<Bytes, SocketAddr>>>,
}

/// Removes a session's key when the session ends.
pub struct Registration {
    registry: CancelRegistry,
    key: Bytes,
}

impl CancelRegistry {
    /// Records that `key` belongs to the backend at `upstream` until the guard is dropped.
    pub fn register(&self, key: Bytes, upstream: SocketAddr) -> Registration {
        self.lock().insert(key.clone(), upstream);
        Registration {
            registry: self.clone(),
            key,
        }
    }

    /// Sends a CancelRequest to the upstream that owns `key`; unknown keys are dropped silently, as
    /// Postgres does, so cancel requests cannot probe for keys.
    pub async fn cancel(&self, key: &Bytes) {
        let Some(addr) = self.lock().get(key).copied() else {
            tracing::debug!("cancel request for an unknown backend key ignored");
            return;
        };
        let mut packet = Vec::with_capacity(8 + key.len());
        packet.extend_from_slice(&(8 + key.len() as u32).to_be_bytes());
        packet.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        packet.extend_from_slice(key);
        // The server closes a cancel connection once it has signalled the backend; clients (asyncpg)
        // take that close as "cancelled" and send their next query. So the client's connection is
        // closed only after the server closed the relayed one: a signal landing later would cancel
        // the next query instead.
        let relay = async {
            let mut upstream = TcpStream::connect(addr).await?;
            upstream.write_all(&packet).await?;
            upstream.shutdown().await?;
            let mut rest = [0u8; 64];
            while upstream.read(&mut rest).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(CANCEL_TIMEOUT, relay).await {
            Ok(Ok(())) => tracing::debug!(%addr, "cancel request relayed"),
            Ok(Err(e)) => tracing::warn!(%addr, error = %e, "could not relay cancel request"),
            Err(_) => {
                tracing::warn!(%addr, "the server did not close the relayed cancel request's connection")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, SocketAddr>> {
        // A panic while holding this lock cannot leave the map half-updated; keep serving.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}
