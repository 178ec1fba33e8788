//! Helpers for tests of the identity module: config from YAML, an authenticator with
//! its keys loaded, requests with a bearer token, and exact-refusal assertions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chaperone::identity::config::Identity;
use chaperone::identity::{Authenticator, ClusterJwks, Error, Subject};
use http::HeaderMap;
use serde_json::Value;

use super::oidc::TestIssuer;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const AUDIENCE: &str = "chaperone";
pub const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub fn identity(issuers_yaml: &str) -> Identity {
    serde_yaml::from_str(&format!("issuers:\n{issuers_yaml}")).expect("identity config")
}

pub async fn ready(auth: &Authenticator) {
    tokio::time::timeout(TIMEOUT, auth.ready())
        .await
        .expect("issuer keys fetched in time");
}

/// An authenticator trusting `idp` through discovery, with its keys loaded.
pub async fn authenticator(idp: &TestIssuer, extra: &[&str]) -> Authenticator {
    let auth = Authenticator::new(&identity(&idp.issuer_yaml(extra)), None).expect("authenticator");
    ready(&auth).await;
    auth
}

pub fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    headers
}

pub async fn authenticate(auth: &Authenticator, token: &str) -> Result<Subject, Error> {
    tokio::time::timeout(TIMEOUT, auth.authenticate(&bearer(token), false))
        .await
        .expect("authenticate in time")
        .map(|s| (*s).clone())
}

/// Asserts the refusal is a 401 with exactly `message`, and that it does not echo the token.
pub fn assert_unauthorized(err: &Error, token: &str, message: &str) {
    let status = err.status();
    assert_eq!(
        (status.code, status.reason),
        (401, "Unauthorized"),
        "{err:?}"
    );
    assert_eq!(status.message, message);
    assert!(token.is_empty() || !status.message.contains(token));
}

pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

pub fn oidc_subject(idp: &TestIssuer, user: &str) -> Subject {
    Subject {
        user: user.to_owned(),
        groups: vec!["system:authenticated".to_owned()],
        uid: String::new(),
        extra: Default::default(),
        issuer: idp.url().to_owned(),
        audit_user: Default::default(),
    }
}

/// The cluster's JWKS as the proxy would fetch it from the API server.
pub struct FakeCluster(pub Bytes);

impl ClusterJwks for FakeCluster {
    fn fetch(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, String>> + Send + '_>>
    {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

pub async fn cluster_authenticator(idp: &TestIssuer) -> Authenticator {
    let yaml = format!("- issuer: {CLUSTER_ISSUER}\n  audiences: [chaperone]\n  cluster: true\n");
    let cluster: Arc<dyn ClusterJwks> = Arc::new(FakeCluster(idp.jwks()));
    let auth = Authenticator::new(&identity(&yaml), Some(cluster)).expect("authenticator");
    ready(&auth).await;
    auth
}
