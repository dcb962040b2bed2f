//! Bytes waiting to be written to one side of a session. Writes are a branch of the session's event
//! loop rather than an `await` in the middle of relaying, so a session keeps reading one side while the
//! other is slow: a client that pipelines a large batch while reading its results (as libpq does when
//! its own writes would block) cannot deadlock through the proxy. Reads pause only when an outbox is
//! over its high-water mark, which is how backpressure reaches the sender.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// Queued bytes above which the side feeding this outbox is no longer read.
const HIGH_WATER: usize = 256 * 1024;

/// How many queued buffers one vectored write hands to the kernel.
const MAX_SLICES: usize = 32;

/// An ordered queue of buffers for one destination.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Bytes were written since the destination was last flushed. A TLS stream may take bytes into
    /// its own buffer and send them only when flushed, so a flush cut short must be retried even
    /// though the queue is empty.
    unflushed: bool,
}

impl Outbox {
    /// Queues `bytes` after everything already queued.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Nothing waits to be written or flushed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.unflushed
    }

    /// Enough waits that the feeding side should not be read until some is written.
    pub fn is_full(&self) -> bool {
        self.queued >= HIGH_WATER
    }

    /// Writes as much as the destination takes in one write: a plain one for a single buffer (the
    /// common case of a request or a result relayed whole; `send` costs the kernel less than
    /// `writev`), a vectored one for several. Once the queue is empty the destination is flushed.
    /// Bytes leave the queue only once the write reports them written, and a flush left pending is
    /// done again by the next call. A poll rather than an async fn: its slices live on the stack for
    /// the one call, not in a future that would be moved whole each time the session makes one.
    pub fn poll_write_some<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        dest: &mut W,
    ) -> Poll<io::Result<()>> {
        if !self.queue.is_empty() {
            let dest = Pin::new(&mut *dest);
            let written = match self.queue.len() {
                1 => ready!(dest.poll_write(cx, &self.queue[0]))?,
                _ => {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let mut count = 0;
                    for (slot, bytes) in slices.iter_mut().zip(&self.queue) {
                        *slot = IoSlice::new(bytes);
                        count += 1;
                    }
                    ready!(dest.poll_write_vectored(cx, &slices[..count]))?
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
            self.unflushed = true;
        }
        if self.queue.is_empty() && self.unflushed {
            ready!(Pin::new(dest).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued; used when a session ends.
    pub async fn write_all<W: AsyncWrite + Unpin>(&mut self, dest: &mut W) -> io::Result<()> {
        while !self.is_empty() {
            std::future::poll_fn(|cx| self.poll_write_some(cx, dest)).await?;
        }
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let front = self.queue.front_mut().expect("written bytes were queued");
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    #[tokio::test]
    async fn partial_writes_keep_order() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from_static(b"abc"));
        outbox.push(Bytes::from_static(b"defg"));
        // A sink that takes at most two bytes a write.
        let (mut near, mut far) = tokio::io::duplex(2);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far, &mut got)
                .await
                .unwrap();
            got
        });
        outbox.write_all(&mut near).await.unwrap();
        drop(near);
        assert_eq!(reader.await.unwrap(), b"abcdefg");
        assert!(outbox.is_empty());
    }

    /// A destination that, like a TLS stream, takes every write into a buffer of its own and sends it
    /// only when flushed; its first flush does not finish.
    #[derive(Default)]
    struct Buffering {
        buffered: Vec<u8>,
        sent: Vec<u8>,
        flushes: usize,
    }

    impl AsyncWrite for Buffering {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.buffered.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.flushes += 1;
            if self.flushes == 1 {
                return Poll::Pending;
            }
            let buffered = std::mem::take(&mut self.buffered);
            self.sent.extend(buffered);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_flush_cut_short_is_finished_later() {
        let mut outbox = Outbox::default();
        let mut dest = Buffering::default();
        outbox.push(Bytes::from_static(b"result"));
        // The write is taken and the flush does not finish; the session's event loop then goes on to
        // its other sources.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(outbox.poll_write_some(&mut cx, &mut dest).is_pending());
        assert_eq!(dest.buffered, b"result");
        assert!(!outbox.is_empty(), "the unfinished flush is still owed");
        outbox.write_all(&mut dest).await.unwrap();
        assert_eq!(dest.sent, b"result");
        assert!(outbox.is_empty());
    }

    #[test]
    fn high_water_mark_is_reached_by_queued_bytes() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from(vec![0u8; HIGH_WATER - 1]));
        assert!(!outbox.is_full());
        outbox.push(Bytes::from_static(b"x"));
        assert!(outbox.is_full());
    }
}
