//! The injector's certificate authorities: issue, reload from PEM, and decide renewal.
//!
//! Two CAs, both self-signed and kept in Secrets in the injector's namespace: one signs
//! the webhook's serving certificate (the API server trusts it through `caBundle`), the
//! other the proxies' serving certificates (app containers trust it through `ca.crt`).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to issue certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// A CA certificate with its key, able to sign leaves.
pub struct Authority {
    pub cert_pem: String,
    pub key_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate, its PEM key, and its validity.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid for `days` from `now`.
    pub fn generate(common_name: &str, days: i64, now: OffsetDateTime) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(common_name);
        validity(&mut params, now, days);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert,
            key,
        })
    }

    /// A CA stored earlier. rcgen signs with a certificate object, not PEM, so the issuer
    /// is rebuilt with the same name and key: leaves it signs carry the stored CA's
    /// subject and key identifier and verify against `cert_pem`, which is kept as is.
    pub fn from_pem(common_name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert = ca_params(common_name).self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert,
            key,
        })
    }

    /// A serving certificate for `names` (IP addresses become IP SANs).
    pub fn issue_server(
        &self,
        names: &[String],
        days: i64,
        now: OffsetDateTime,
    ) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let cn = names.first().map(String::as_str).unwrap_or("chaperone");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let (not_before, not_after) = validity(&mut params, now, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
        })
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(
    params: &mut CertificateParams,
    now: OffsetDateTime,
    days: i64,
) -> (OffsetDateTime, OffsetDateTime) {
    // Back-dated a little so a node with a skewed clock accepts a fresh certificate.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    (params.not_before, params.not_after)
}

/// When a certificate valid from `not_before` to `not_after` is due for renewal: at two
/// thirds of its lifetime, leaving a third for the new one to reach every pod (kubelet
/// volume sync is up to a minute or two, a proxy re-reads its files on change).
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// Timestamps as stored in annotations (RFC 3339).
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["127.0.0.1", "::1", "localhost", "kubernetes.default.svc"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn a_reloaded_ca_signs_leaves_that_verify_against_the_stored_certificate() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("chaperone-ca", 10, now).unwrap();
        let again = Authority::from_pem("chaperone-ca", &ca.cert_pem, &ca.key_pem).unwrap();
        let leaf = again.issue_server(&names(), 2, now).unwrap();

        let der = |pem: &str| -> CertificateDer<'static> {
            rustls_pemfile::certs(&mut pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert_pem)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        for name in ["127.0.0.1", "kubernetes.default.svc"] {
            verifier
                .verify_server_cert(
                    &der(&leaf.cert_pem),
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let start = parse_time("2025-01-01T00:00:00Z").unwrap();
        let end = start + Duration::days(90);
        assert_eq!(renew_at(start, end), start + Duration::days(60));
        assert_eq!(parse_time(&format_time(start)), Some(start));
        assert_eq!(parse_time("yesterday"), None);
    }
}
