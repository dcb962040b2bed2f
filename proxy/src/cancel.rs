//! Routing of CancelRequests. Clients see the upstream's own BackendKeyData (the proxy forwards it
//! unchanged), so a CancelRequest names an upstream backend; the registry says which upstream address
//! that backend lives at, and only keys of live sessions are relayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::wire::startup::CANCEL_REQUEST;

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
        let relay = async {
            let mut upstream = TcpStream::connect(addr).await?;
            upstream.write_all(&packet).await?;
            upstream.shutdown().await
        };
        match relay.await {
            Ok(()) => tracing::debug!(%addr, "cancel request relayed"),
            Err(e) => tracing::warn!(%addr, error = %e, "could not relay cancel request"),
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
