//! Inbound TLS (RFC 3207 STARTTLS and implicit TLS) with rustls: the certificate from
//! `smtp-server-tls-certificate`, TLS 1.2 and 1.3. Connections drive rustls's buffer-level
//! API (`read_tls` / `write_tls`) from the shard's own io_uring buffers: no blocking adapter.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_config::{Config, ConfigError};
use std::sync::Arc;

/// The server side of TLS, or None when no certificate is configured. Errors name the
/// `smtp-server-tls-certificate` line.
pub fn server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    config.tls_certificate.as_ref().map(server_config_of).transpose()
}

/// The server side of TLS with one certificate and key (they may be one PEM file); errors
/// name the line that gave them.
pub fn server_config_of(t: &sluice_config::TlsCertificate) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let hint = "give PEM files: the certificate chain, then its private key (e.g. from openssl req -x509)";
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&t.cert).and_then(|it| it.collect::<Result<Vec<_>, _>>()).map_err(|e| {
            ConfigError::at(&t.span, format!("cannot read certificates from {}: {e}", t.cert.display()), hint)
        })?;
    if certs.is_empty() {
        return Err(ConfigError::at(&t.span, format!("no certificate in {}", t.cert.display()), hint));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| {
        ConfigError::at(&t.span, format!("cannot read a private key from {}: {e}", t.key.display()), hint)
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::at(&t.span, format!("TLS setup failed: {e}"), hint))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::at(&t.span, format!("the certificate and key do not go together: {e}"), hint))?;
    Ok(Arc::new(server))
}

/// Outbound STARTTLS as MTAs do it between each other: opportunistic (RFC 7435), so the
/// server's certificate chain is not checked (a self-signed or expired certificate still
/// gets encryption rather than plain text); the handshake signature still is.
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Opportunistic(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct Opportunistic(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The negotiated protocol and cipher suite, e.g. ("TLSv1.3", "TLS13_AES_256_GCM_SHA384").
pub fn describe<D>(conn: &rustls::ConnectionCommon<D>) -> (String, String) {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
    (version, cipher)
}
