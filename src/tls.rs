//! TLS for both sides: the serving certificate (reloaded when its files change on
//! disk) and the client configuration used to dial the API server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no PEM certificate found in {0}")]
    NoCertificate(String),
    #[error("no PEM private key found in {0}")]
    NoKey(String),
    #[error("unusable private key in {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("invalid CA certificate in {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("failed to build TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("the certificate in {cert} is not for the private key in {key}")]
    Mismatch { cert: String, key: String },
}

/// The crypto provider every TLS configuration in chaperone uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses PEM certificates; `origin` names the source in errors.
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .filter_map(|c| c.ok())
        .collect();
    if certs.is_empty() {
        return Err(Error::NoCertificate(origin.to_owned()));
    }
    Ok(certs)
}

/// Parses the first PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, Error> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(key)) => Ok(key),
        _ => Err(Error::NoKey(origin.to_owned())),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A serving certificate read from a cert and a key file, re-read on the next handshake
/// after either file changes. Kubelet swaps mounted Secrets atomically; if a reload
/// fails (say, a half-written pair during a manual copy), the last good pair keeps
/// serving and the failure is logged.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
}

/// What we compare to notice a change: modification times and sizes of both files.
type Stamp = Option<[(SystemTime, u64); 2]>;

impl ReloadingCert {
    /// Loads the pair now; a missing or broken pair at start is an error.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadingCert, Error> {
        let stamp = stamp(cert_file, key_file);
        let key = load_pair(cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            state: Mutex::new(Loaded { stamp, key }),
        })
    }

    /// The current pair, reloaded first if the files changed since it was loaded.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = stamp(&self.cert_file, &self.key_file);
        if now.is_some() && now != state.stamp {
            match load_pair(&self.cert_file, &self.key_file) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_file.display(), "reloaded serving certificate");
                    *state = Loaded { stamp: now, key };
                }
                Err(error) => {
                    tracing::warn!(%error, "keeping the previous serving certificate");
                    // Remember the stamp so a broken pair is not re-parsed every handshake.
                    state.stamp = now;
                }
            }
        }
        state.key.clone()
    }
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let certs = certs_from_pem(
        &read("certificate file", cert_file)?,
        &cert_file.display().to_string(),
    )?;
    let key_origin = key_file.display().to_string();
    let key = key_from_pem(&read("key file", key_file)?, &key_origin)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| Error::Key {
            path: key_origin.clone(),
            source,
        })?;
    let pair = CertifiedKey::new(certs, signing);
    // A key written before its certificate (a rotation by hand, `cp` one at a time)
    // would serve no handshake: such a pair is not taken.
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(pair))
        }
        Err(_) => Err(Error::Mismatch {
            cert: cert_file.display().to_string(),
            key: key_origin,
        }),
    }
}

/// Asks for, but never requires or trusts, a client certificate. chaperone
/// authenticates bearer tokens only; a caller that presents a certificate instead is
/// noticed here so it can be told so, rather than getting a bare "no token".
#[derive(Debug)]
struct NoticeClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for NoticeClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Not an authentication: the certificate only marks the connection, and
        // `identity` refuses every request on it that carries no bearer token.
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server configuration for the API listeners: HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(NoticeClientCert { provider }))
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client identity for mutual TLS to the API server.
pub struct ClientIdentity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The client configuration for dialling the API server: trusts exactly `ca_pem`.
pub fn client_config(
    ca_pem: &[u8],
    ca_origin: &str,
    identity: Option<ClientIdentity>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(ca_pem, ca_origin)? {
        roots.add(cert).map_err(|source| Error::Ca {
            path: ca_origin.to_owned(),
            source,
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some(id) => builder.with_client_auth_cert(id.certs, id.key)?,
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key replaced before its certificate is not served with the old certificate:
    /// the last good pair stays until the new certificate arrives.
    #[test]
    fn a_key_without_its_certificate_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = crate::pki::Authority::generate("test CA", 1).unwrap();
        let first = ca.issue_server(&["localhost"], 1).unwrap();
        let second = ca.issue_server(&["localhost"], 1).unwrap();
        std::fs::write(&cert, &first.cert_pem).unwrap();
        std::fs::write(&key, &first.key_pem).unwrap();
        let reloading = ReloadingCert::load(&cert, &key).unwrap();
        let served = reloading.current();
        assert!(served.keys_match().is_ok());

        // The key alone: same size (P-256 PEMs are), so the mtime tells it changed.
        std::fs::write(&key, &second.key_pem).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&key)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let now = reloading.current();
        assert!(now.keys_match().is_ok());
        assert_eq!(
            now.end_entity_cert().unwrap(),
            served.end_entity_cert().unwrap()
        );
        assert!(matches!(
            load_pair(&cert, &key),
            Err(Error::Mismatch { .. })
        ));

        // Then its certificate: the new pair is served.
        std::fs::write(&cert, &second.cert_pem).unwrap();
        let now = reloading.current();
        assert!(now.keys_match().is_ok());
        assert_ne!(
            now.end_entity_cert().unwrap(),
            served.end_entity_cert().unwrap()
        );
    }
}
