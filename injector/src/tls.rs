//! The webhook's TLS: a server config whose certificate can be swapped while serving.

use std::sync::{Arc, RwLock};

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("no private key in the PEM data")]
    NoKey,
    #[error("invalid PEM data: {0}")]
    Pem(#[source] std::io::Error),
    #[error("unusable private key: {0}")]
    Key(#[source] rustls::Error),
    #[error("failed to build the TLS config: {0}")]
    Config(#[source] rustls::Error),
}

/// The serving certificate, replaced in place when it is rotated.
#[derive(Debug)]
pub struct Resolver(RwLock<Arc<CertifiedKey>>);

impl Resolver {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Resolver, Error> {
        Ok(Resolver(RwLock::new(Arc::new(certified_key(
            cert_pem, key_pem,
        )?))))
    }

    /// Serves `cert_pem`/`key_pem` from the next handshake on.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), Error> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        match self.0.write() {
            Ok(mut k) => *k = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, Error> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Pem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(Error::Pem)?
        .ok_or(Error::NoKey)?;
    let key = ring::sign::any_supported_type(&key).map_err(Error::Key)?;
    Ok(CertifiedKey::new(certs, key))
}

/// TLS 1.2+ with the ring provider, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(resolver: Arc<Resolver>) -> Result<rustls::ServerConfig, Error> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
