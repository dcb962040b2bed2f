//! TLS for the client side of the TLS tests: a self-signed certificate made with the `openssl` CLI,
//! and a rustls connector for tokio-postgres that encrypts without verifying, as libpq's
//! `sslmode=require` does.
//!
//! Verification is off on purpose: the tests check that the proxy terminates TLS and relays the session
//! inside it, not certificate policy, and a self-signed certificate made by `openssl req -x509` is a CA
//! certificate, which rustls refuses as a server's own.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::TempDir;

/// A self-signed certificate and its key as PEM files, removed with the value.
#[derive(Debug)]
pub struct TestCert {
    /// Keeps the files alive.
    _dir: TempDir,
    /// The certificate, for the proxy's `tls_cert`.
    pub cert: PathBuf,
    /// The private key, for the proxy's `tls_key`.
    pub key: PathBuf,
}

impl TestCert {
    /// Makes a fresh certificate for `localhost` valid for one day.
    pub fn generate() -> TestCert {
        let dir = TempDir::new("cert");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "1", "-subj", "/CN=localhost"])
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        TestCert {
            _dir: dir,
            cert,
            key,
        }
    }
}

/// A tokio-postgres TLS connector over rustls (ring) that accepts any server certificate.
#[derive(Clone)]
pub struct NoVerifyTls {
    config: Arc<ClientConfig>,
}

impl Default for NoVerifyTls {
    fn default() -> Self {
        // The proxy's own upstream policy: encrypt, do not verify.
        NoVerifyTls {
            config: veneer_proxy::tls::encrypt_only_client_config(),
        }
    }
}

impl<S> MakeTlsConnect<S> for NoVerifyTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connector> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connector {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's handshake, made by [`NoVerifyTls`].
pub struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { Ok(TlsStream(connector.connect(self.name, stream).await?)) })
    }
}

/// A client TLS stream as tokio-postgres wants it.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // The proxy relays SCRAM from the upstream, which never sees this TLS session, so binding
        // to it could not work (a documented limit of the proxy).
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
