//! TLS for both daemons and the CLI: the one place that builds TLS configs.
//!
//! The coordinator serves one port with *optional* client certificates: agents
//! present a certificate from the coordinator's CA (checked by rustls during the
//! handshake; any other CA is refused there), the CLI and joining agents present
//! none and authenticate with tokens instead. `Connect` additionally requires a
//! certificate at the RPC level.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::names::HostId;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate found in {0}")]
    NoCertificate(&'static str),
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("server URL {0:?} must look like https://HOST[:PORT]")]
    ServerUrl(String),
}

/// `https://host[:port][/…]` → (`host:port` to dial, `host` to check the
/// certificate against). The port defaults to 443; IPv6 hosts are bracketed.
pub fn split_server_url(url: &str) -> Result<(String, String), TlsError> {
    let bad = || TlsError::ServerUrl(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    Ok(if let Some(stripped) = authority.strip_prefix('[') {
        let (host, after) = stripped.split_once(']').ok_or_else(bad)?;
        let port = after.strip_prefix(':').unwrap_or("443");
        (format!("[{host}]:{port}"), host.to_owned())
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) => (authority.to_owned(), host.to_owned()),
            None => (format!("{authority}:443"), authority.to_owned()),
        }
    })
}

/// Hex SHA-256 of a certificate's DER bytes (the join token's CA pin).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// All certificates in a PEM bundle, as DER.
pub fn pem_certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// The PEM text of one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The coordinator's listener config: its certificate chain (leaf then CA),
/// its key, and the CA that signs agent certificates (optional client auth).
pub fn server_config(chain_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(chain_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
        .client_auth_optional(true)
}

/// A client config that trusts only `ca_pem`, with an optional client identity.
/// `domain` is the name checked against the server certificate.
pub fn client_config(
    ca_pem: &[u8],
    domain: &str,
    identity: Option<(&[u8], &[u8])>,
) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(domain);
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}

/// The host id an agent certificate was issued for: its first DNS SAN.
pub fn host_id_from_cert(der: &[u8]) -> Result<HostId, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Parse(e.to_string()))?
        .ok_or_else(|| TlsError::Parse("certificate has no subjectAltName".into()))?;
    for name in &san.value.general_names {
        if let GeneralName::DNSName(dns) = name {
            return HostId::parse(*dns).map_err(|e| TlsError::Parse(e.to_string()));
        }
    }
    Err(TlsError::Parse(
        "certificate has no DNS subjectAltName".into(),
    ))
}

/// `notAfter` of a certificate, in milliseconds since the epoch.
pub fn not_after_ms(der: &[u8]) -> Result<i64, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp().saturating_mul(1000))
}

/// Opens a TLS connection to `addr` *without* trusting anything and returns the
/// certificate chain the server presented. Used only at join time, to find the
/// CA certificate whose fingerprint the join token pins; no secret is sent on
/// this connection, and the caller must check the fingerprint before trusting
/// anything it returns.
pub async fn probe_server_chain(
    addr: &str,
    server_name: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let recorder = Arc::new(RecordingVerifier::default());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Parse(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| TlsError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let _tls = connector
        .connect(name, tcp)
        .await
        .map_err(|source| TlsError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    Ok(chain)
}

/// Accepts any server certificate and remembers the chain. See [`probe_server_chain`].
#[derive(Debug, Default)]
struct RecordingVerifier {
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            chain.push(end_entity.clone().into_owned());
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Installs ring as the process-wide rustls provider. Call first in `main`.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::split_server_url;

    #[test]
    fn server_urls_split_into_address_and_name() {
        let check = |url: &str, addr: &str, host: &str| {
            assert_eq!(
                split_server_url(url).unwrap(),
                (addr.to_owned(), host.to_owned()),
                "{url}"
            );
        };
        check("https://127.0.0.1:7443", "127.0.0.1:7443", "127.0.0.1");
        check(
            "https://fleet.example.com",
            "fleet.example.com:443",
            "fleet.example.com",
        );
        check(
            "https://fleet.example.com:8443/",
            "fleet.example.com:8443",
            "fleet.example.com",
        );
        check("https://[::1]:7443", "[::1]:7443", "::1");
        assert!(split_server_url("http://x:1").is_err());
        assert!(split_server_url("https://").is_err());
        assert!(split_server_url("https://[::1").is_err());
    }
}
