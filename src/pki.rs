//! Issues the small certificate authorities chaperone needs off-cluster: the sandbox's
//! and `chaperone local`'s CA and serving certificates (the injector has its own).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to issue certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// The names a serving certificate for the proxy must carry: every client verifies the
/// CA, and clients that dial an IP need an IP SAN; clients that ignore
/// `KUBERNETES_SERVICE_HOST` dial the `kubernetes.default.svc` names.
pub const SERVING_NAMES: &[&str] = &[
    "127.0.0.1",
    "::1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// A CA certificate with its key, able to sign leaves.
pub struct Authority {
    pub cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate and its PEM private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid for `days`.
    pub fn generate(common_name: &str, days: i64) -> Result<Authority, Error> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            cert,
            key,
        })
    }

    /// A serving certificate for `names` (IP addresses become IP SANs), valid for `days`.
    pub fn issue_server(&self, names: &[&str], days: i64) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("chaperone"),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little so a skewed clock does not reject a fresh certificate.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_leaf_with_ip_and_dns_names() {
        let ca = Authority::generate("test-ca", 1).unwrap();
        let leaf = ca.issue_server(SERVING_NAMES, 1).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
    }
}
