//! The node's network side: one task per connection, reading requests as they come (pipelined
//! requests are answered with one write), on a multi-threaded runtime so every core serves.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::commands::{execute, After, Client, Node};
use super::resp;

/// Bytes read at a time.
const READ_SIZE: usize = 16 * 1024;

/// Replies buffered before they are written, even in the middle of a pipeline: a client that sends
/// faster than it reads cannot make the node hold more than this for it.
const MAX_PENDING_REPLIES: usize = 1 << 20;

/// Serves `listener` until `shutdown` completes; connections then end at their next read.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    max_clients: usize,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, say: wait a moment rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        node.accepted.fetch_add(1, Ordering::Relaxed);
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let open = node.connections.fetch_add(1, Ordering::AcqRel) + 1;
            let result = if open as usize > max_clients {
                refuse(socket).await
            } else {
                connection(&node, socket).await
            };
            node.connections.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn refuse(mut socket: TcpStream) -> std::io::Result<()> {
    socket
        .write_all(b"-ERR max number of clients reached\r\n")
        .await
}

async fn connection(node: &Node, mut socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut client = Client::new(node);
    let mut input = BytesMut::with_capacity(READ_SIZE);
    let mut out = BytesMut::with_capacity(READ_SIZE);
    let mut args = Vec::new();
    loop {
        if input.capacity() - input.len() < READ_SIZE / 4 {
            input.reserve(READ_SIZE);
        }
        if socket.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        loop {
            match resp::parse(&mut input, &mut args) {
                Ok(true) => {
                    if execute(node, &mut client, &args, &mut out) == After::Close {
                        socket.write_all(&out).await?;
                        return Ok(());
                    }
                    if out.len() >= MAX_PENDING_REPLIES {
                        socket.write_all(&out).await?;
                        out.clear();
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    client
                        .writer()
                        .error(&mut out, &format!("ERR Protocol error: {}", e.0));
                    socket.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
    }
}
