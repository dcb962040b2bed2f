//! Bytes waiting to be written to one side of a session. Writes are a branch of the session's event
//! loop rather than an `await` in the middle of relaying, so a session keeps reading one side while the
//! other is slow: a client that pipelines a large batch while reading its results (as libpq does when
//! its own writes would block) cannot deadlock through the proxy. Reads pause only when an outbox is
//! over its high-water mark, which is how backpressure reaches the sender.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Queued bytes above which the side feeding this outbox is no longer read.
const HIGH_WATER: usize = 256 * 1024;

/// How many queued buffers one vectored write hands to the kernel.
const MAX_SLICES: usize = 32;

/// An ordered queue of buffers for one destination.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl Outbox {
    /// Queues `bytes` after everything already queued.
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Enough waits that the feeding side should not be read until some is written.
    pub fn is_full(&self) -> bool {
        self.queued >= HIGH_WATER
    }

    /// Writes as much as the destination takes in one write: a plain one for a single buffer (the
    /// common case of a request or a result relayed whole; `send` costs the kernel less than
    /// `writev`), a vectored one for several. Cancel-safe: bytes leave the queue only once the write
    /// reports them written.
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, dest: &mut W) -> std::io::Result<()> {
        let written = match self.queue.len() {
            1 => dest.write(&self.queue[0]).await?,
            _ => {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for (slot, bytes) in slices.iter_mut().zip(&self.queue) {
                    *slot = IoSlice::new(bytes);
                    count += 1;
                }
                dest.write_vectored(&slices[..count]).await?
            }
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.advance(written);
        if self.is_empty() {
            dest.flush().await?;
        }
        Ok(())
    }

    /// Writes everything queued; used when a session ends.
    pub async fn write_all<W: AsyncWrite + Unpin>(&mut self, dest: &mut W) -> std::io::Result<()> {
        while !self.is_empty() {
            self.write_some(dest).await?;
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

    #[test]
    fn high_water_mark_is_reached_by_queued_bytes() {
        let mut outbox = Outbox::default();
        outbox.push(Bytes::from(vec![0u8; HIGH_WATER - 1]));
        assert!(!outbox.is_full());
        outbox.push(Bytes::from_static(b"x"));
        assert!(outbox.is_full());
    }
}
