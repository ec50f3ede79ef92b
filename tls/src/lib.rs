//! TLS configurations, made once for every part of the project.
//!
//! Clients (the engine's sync client and downloader, the admin CLI) trust
//! the Mozilla root set shipped in `webpki-roots` (the same on every phone,
//! no platform hook needed on Android or iOS) plus any CA the app or
//! operator pins, given as PEM. The relay terminates TLS itself from a PEM
//! certificate chain and key. rustls with the `ring` provider throughout.
//! Pure: bytes in, configurations out; reading the files is the caller's.

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in the PEM data{0}")]
    NoCertificate(String),
    #[error("the PEM data holds no usable private key: {0}")]
    BadKey(String),
    #[error("certificate not accepted: {0}")]
    BadCertificate(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in PEM data (a CA bundle or a chain).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCertificate(format!(" ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(String::new()));
    }
    Ok(certs)
}

/// A client configuration trusting the web's roots plus `extra_ca_pem`.
pub fn client_config(extra_ca_pem: Option<&[u8]>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = extra_ca_pem {
        for cert in certificates(pem)? {
            roots.add(cert).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A server configuration from a PEM certificate chain and private key.
pub fn server_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let chain = certificates(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_from_a_generated_certificate_and_clear_errors_for_junk() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (chain, key) = (cert.cert.pem(), cert.signing_key.serialize_pem());
        assert!(server_config(chain.as_bytes(), key.as_bytes()).is_ok());
        assert!(client_config(Some(chain.as_bytes())).is_ok());
        assert!(client_config(None).is_ok());
        assert!(matches!(client_config(Some(b"not a pem")), Err(TlsError::NoCertificate(_))));
        assert!(matches!(server_config(chain.as_bytes(), b"junk"), Err(TlsError::BadKey(_))));
    }
}
