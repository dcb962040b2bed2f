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

/// A server certificate for `localhost` and 127.0.0.1, signed by a throwaway certificate authority,
/// as PEM files removed with the value. Signed rather than self-signed because rustls, rightly,
/// refuses a CA certificate as a server's own: verify-full tests need a real chain.
#[derive(Debug)]
pub struct TestCert {
    /// Keeps the files alive.
    _dir: TempDir,
    /// The authority that signed `cert`, for `upstream_tls_root_cert`.
    pub ca: PathBuf,
    /// The certificate, for the proxy's `tls_cert` or the server's `server.crt`.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

impl TestCert {
    /// Makes a fresh authority and a certificate it signs, valid for one day.
    pub fn generate() -> TestCert {
        let dir = TempDir::new("cert");
        let file = |name: &str| dir.path().join(name);
        let (ca, ca_key, cert, key, csr, ext) = (
            file("ca.pem"),
            file("ca.key"),
            file("cert.pem"),
            file("key.pem"),
            file("cert.csr"),
            file("ext.cnf"),
        );
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write the extensions file");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=veneer-test-ca",
                "-keyout",
            ],
            &[&ca_key, "-out".as_ref(), &ca],
        );
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
            ],
            &[&key, "-out".as_ref(), &csr],
        );
        openssl(
            &["x509", "-req", "-days", "1", "-CAcreateserial", "-in"],
            &[
                &csr,
                "-CA".as_ref(),
                &ca,
                "-CAkey".as_ref(),
                &ca_key,
                "-extfile".as_ref(),
                &ext,
                "-out".as_ref(),
                &cert,
            ],
        );
        TestCert {
            _dir: dir,
            ca,
            cert,
            key,
        }
    }
}

/// Runs the openssl CLI with fixed words then paths, failing the test with its error output.
fn openssl(words: &[&str], paths: &[&std::path::Path]) {
    let output = Command::new("openssl")
        .args(words)
        .args(paths)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {words:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
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
