//! One stream type for both sides of a session, plain or TLS, so the session code is written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, TcpStream};

/// A connection to a client or to the upstream.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated here, towards a client.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS started here, towards the upstream.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the bytes on this stream are encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

/// The read side of a [`Stream`], owned by the session's event loop apart from the write side.
pub enum ReadHalf {
    /// Plain TCP: the socket's own halves, with no lock between them.
    Tcp(tcp::OwnedReadHalf),
    /// TLS: one state machine for both directions, shared through tokio's split.
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The write side of a [`Stream`].
pub enum WriteHalf {
    /// Plain TCP.
    Tcp(tcp::OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<Stream>),
}

impl Stream {
    /// Splits the stream so reads and writes can be awaited at once. Plain TCP, the common case, splits
    /// without a lock; TLS needs one, since both directions drive one rustls state machine.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            tls => {
                let (read, write) = tokio::io::split(tls);
                (ReadHalf::Tls(read), WriteHalf::Tls(write))
            }
        }
    }

    /// The stream `into_split` made `read` and `write` from; `None` for halves of different streams.
    pub fn unsplit(read: ReadHalf, write: WriteHalf) -> Option<Stream> {
        match (read, write) {
            (ReadHalf::Tcp(read), WriteHalf::Tcp(write)) => {
                read.reunite(write).ok().map(Stream::Plain)
            }
            (ReadHalf::Tls(read), WriteHalf::Tls(write)) if read.is_pair_of(&write) => {
                Some(read.unsplit(write))
            }
            _ => None,
        }
    }
}

/// Calls the same poll method on whichever variant `$self` is (boxed streams poll through their box).
macro_rules! each {
    ($self:ident, $method:ident $args:tt, $($variant:path),+) => {
        match $self.get_mut() {
            $($variant(s) => Pin::new(s).$method $args,)+
        }
    };
    ($self:ident, $method:ident $args:tt) => {
        each!($self, $method $args, Stream::Plain, Stream::ServerTls, Stream::ClientTls)
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, poll_shutdown(cx))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, poll_read(cx, buf), ReadHalf::Tcp, ReadHalf::Tls)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, poll_write(cx, buf), WriteHalf::Tcp, WriteHalf::Tls)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(
            self,
            poll_write_vectored(cx, bufs),
            WriteHalf::Tcp,
            WriteHalf::Tls
        )
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(s) => s.is_write_vectored(),
            WriteHalf::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, poll_flush(cx), WriteHalf::Tcp, WriteHalf::Tls)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, poll_shutdown(cx), WriteHalf::Tcp, WriteHalf::Tls)
    }
}
