//! TLS configuration: the acceptor for clients (certificate and key from the config) and the connector
//! for the upstream, which, like libpq's sslmode=require, encrypts without verifying the certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;

use tokio_rustls::{TlsAcceptor, TlsConnector};
use veneer_config::{ClientTls, Config, UpstreamTls};

use crate::error::Error;

/// Builds the acceptor for client TLS from PEM files; errors name the file.
pub fn acceptor(files: &ClientTls) -> Result<TlsAcceptor, Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect())
        .map_err(|e| {
            Error::tls(format!(
                "cannot read certificate {}: {e}",
                files.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::tls(format!(
            "no certificate in {}",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        Error::tls(format!(
            "cannot read private key {}: {e}",
            files.key.display()
        ))
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            Error::tls(format!(
                "certificate {} unusable: {e}",
                files.cert.display()
            ))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Builds, once, the connector the `upstream_tls` mode calls for: none for `disable`, encryption only
/// for `prefer` and `require`, and certificate plus host-name verification for `verify-full`.
pub fn upstream_connector(config: &Config) -> Result<Option<TlsConnector>, Error> {
    let client_config = match (config.upstream_tls, &config.upstream_tls_root_cert) {
        (UpstreamTls::Disable, _) => return Ok(None),
        (UpstreamTls::VerifyFull, Some(roots)) => verifying_client_config(roots)?,
        (UpstreamTls::VerifyFull, None) => {
            return Err(Error::tls(
                "verify-full needs upstream_tls_root_cert".to_owned(),
            ))
        }
        (UpstreamTls::Prefer | UpstreamTls::Require, _) => encrypt_only_client_config(),
    };
    Ok(Some(TlsConnector::from(client_config)))
}

/// A client configuration that trusts the authorities in a PEM file; errors name the file.
fn verifying_client_config(roots_file: &Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::tls(format!(
            "cannot read upstream_tls_root_cert {}: {e}",
            roots_file.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots_file).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that encrypts without verifying the server's certificate (libpq's
/// sslmode=require). Public so that tests talking to the proxy's own TLS can use the same policy.
pub fn encrypt_only_client_config() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// The server name to present and, under verify-full, to verify: the configured host (a name or an IP
/// address); a host rustls cannot name gets a placeholder, which verification then rejects.
pub fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("upstream").expect("a valid DNS name"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Accepts any certificate but still checks the handshake signatures, so the session is encrypted to
/// whoever holds the key of the certificate shown: sslmode=require semantics.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
