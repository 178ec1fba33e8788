//! Who is calling: every request's bearer token (an OIDC ID token or a projected
//! service-account token) is verified and mapped to a [`Subject`] before anything
//! else happens.
//!
//! The path of a token:
//! 1. [`token`] takes it from `Authorization: Bearer` and splits it, trusting nothing;
//! 2. its SHA-256 is looked up in the verified-token [`cache`] (the steady state ends
//!    here);
//! 3. its unverified `iss` picks one configured issuer, and nothing else unverified is
//!    used except the header's `alg` and `kid` to pick a key;
//! 4. [`verify`] checks the algorithm against the issuer's list *and* the key's type,
//!    then the signature, the time window, the audience and required claims, using
//!    the issuer's key cache in [`keys`] (refreshed in the background);
//! 5. [`claims`] maps the claims to a subject the way the API server would.
//!
//! The token itself is never logged, stored, or put in an error message.

pub mod config;

mod cache;
mod claims;
mod jwks;
mod keys;
mod token;
mod verify;

pub use token::WEBSOCKET_BEARER_PREFIX;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;
use tracing::field::Empty;
use tracing::Instrument;

use crate::status::Status;
use cache::{Lookup, TokenCache, Verified};
use claims::Mapping;
use keys::{IssuerKeys, Source};
use verify::Policy;

pub use claims::{
    AUTHENTICATED, EXTRA_CREDENTIAL_ID, EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME,
    EXTRA_POD_UID, SERVICE_ACCOUNTS,
};

/// An authenticated caller, as the API server would see the same token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub user: String,
    pub groups: Vec<String>,
    /// "" when none.
    pub uid: String,
    pub extra: BTreeMap<String, Vec<String>>,
    pub issuer: String,
    /// The caller as audit events name it, built on first use and shared by the events
    /// of every request made with the same cached token.
    pub audit_user: OnceLock<Arc<crate::audit::event::User>>,
}

impl Subject {
    /// The caller as an audit event's `user` (`authentication/v1` `UserInfo`).
    pub fn audit_user(&self) -> Arc<crate::audit::event::User> {
        self.audit_user
            .get_or_init(|| {
                Arc::new(crate::audit::event::User {
                    username: self.user.clone(),
                    uid: self.uid.clone(),
                    groups: self.groups.clone(),
                    extra: self.extra.clone(),
                })
            })
            .clone()
    }
}

/// The cluster's own JWKS (`GET /openid/v1/jwks`), fetched by the proxy through its
/// upstream client with its own credential.
pub trait ClusterJwks: Send + Sync {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<bytes::Bytes, String>> + Send + '_>>;
}

/// The time source for token validity; tests move it instead of waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Why a request was not authenticated. Messages name the reason, never the token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    NoToken,
    #[error(
        "a TLS client certificate was presented instead of a bearer token: chaperone \
         authenticates bearer tokens only; send Authorization: Bearer <token>"
    )]
    ClientCertificateInsteadOfToken,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("token algorithm {} {reason}", plain_or_quoted(alg))]
    DisallowedAlgorithm { alg: String, reason: String },
    #[error(
        "{} is not among the signing keys of issuer {issuer}",
        describe_kid(kid)
    )]
    UnknownKeyId { issuer: String, kid: Option<String> },
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired at {}", rfc3339(*exp))]
    Expired { exp: i64 },
    #[error("token is not valid before {}", rfc3339(*at))]
    NotYetValid { at: i64 },
    #[error("token audience does not include {expected}")]
    WrongAudience { expected: String },
    #[error("token claim {claim} {reason}")]
    InvalidClaim { claim: String, reason: String },
    /// The issuer's keys have never been fetched: not the caller's fault.
    #[error("no signing keys yet for issuer {issuer}")]
    KeysUnavailable { issuer: String },
    /// The authenticator could not be built from its configuration.
    #[error("identity configuration: {0}")]
    Config(String),
}

fn describe_kid(kid: &Option<String>) -> String {
    match kid {
        Some(kid) => format!("token key id {kid:?}"),
        None => "no token key id was given and no key for its algorithm".to_owned(),
    }
}

/// `2001-09-09T01:46:40Z`; the `time` crate's formatter needs a feature the main crate
/// does not enable, and this is all that is needed.
fn rfc3339(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("unix time {secs}"),
    }
}

impl Error {
    /// A short name of the failure, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoToken => "no_token",
            Error::ClientCertificateInsteadOfToken => "client_certificate",
            Error::Malformed(_) => "malformed",
            Error::UnknownIssuer(_) => "unknown_issuer",
            Error::DisallowedAlgorithm { .. } => "disallowed_algorithm",
            Error::UnknownKeyId { .. } => "unknown_key_id",
            Error::BadSignature => "bad_signature",
            Error::Expired { .. } => "expired",
            Error::NotYetValid { .. } => "not_yet_valid",
            Error::WrongAudience { .. } => "wrong_audience",
            Error::InvalidClaim { .. } => "invalid_claim",
            Error::KeysUnavailable { .. } => "keys_unavailable",
            Error::Config(_) => "config",
        }
    }

    /// The response for this failure: 401 for anything wrong with the request's
    /// credential, 503 while keys are missing, 500 for configuration errors.
    pub fn status(&self) -> Status {
        match self {
            Error::KeysUnavailable { .. } => Status::service_unavailable(self.to_string()),
            Error::Config(_) => Status::internal(self.to_string()),
            _ => Status::unauthorized(self.to_string()),
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered from the verified-token cache.
    pub cache_hits: u64,
    /// Signature verifications performed (a token without `kid` may cost several).
    pub signature_checks: u64,
    /// Key fetches attempted, all issuers.
    pub key_fetches: u64,
}

struct Issuer {
    policy: Policy,
    mapping: Mapping,
    keys: Arc<IssuerKeys>,
}

struct Inner {
    issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    cache: Arc<TokenCache>,
    clock: Clock,
    cache_hits: AtomicU64,
    signature_checks: AtomicU64,
    key_fetches: Arc<AtomicU64>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Verifies bearer tokens against the configured issuers. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl Authenticator {
    /// Builds the issuers and starts their key refresh tasks (needs a tokio runtime).
    /// `cluster` is required when an issuer has `cluster: true`.
    pub fn new(
        config: &config::Identity,
        cluster: Option<Arc<dyn ClusterJwks>>,
    ) -> Result<Authenticator, Error> {
        Self::with_clock(config, cluster, Arc::new(SystemTime::now))
    }

    /// As [`Authenticator::new`], judging token times by `clock`.
    pub fn with_clock(
        config: &config::Identity,
        cluster: Option<Arc<dyn ClusterJwks>>,
        clock: Clock,
    ) -> Result<Authenticator, Error> {
        config.validate().map_err(|e| Error::Config(e.message))?;
        let cache = Arc::new(TokenCache::new(config.cache_size, config.cache_ttl));
        let key_fetches = Arc::new(AtomicU64::new(0));
        let mut issuers = Vec::with_capacity(config.issuers.len());
        let mut by_name = HashMap::new();
        for (index, c) in config.issuers.iter().enumerate() {
            let at = |e: String| Error::Config(format!("issuer {}: {e}", c.issuer));
            let source = match c.key_source() {
                Some(config::KeySource::Discovery(url)) => Source::Discovery {
                    url,
                    issuer: c.issuer.clone(),
                    client: Source::client(c.ca_file.as_deref()).map_err(at)?,
                },
                Some(config::KeySource::JwksUrl(url)) => Source::Url {
                    url,
                    client: Source::client(c.ca_file.as_deref()).map_err(at)?,
                },
                Some(config::KeySource::JwksFile(path)) => Source::File {
                    path,
                    last: std::sync::Mutex::new(None),
                },
                Some(config::KeySource::Cluster) => {
                    Source::Cluster(cluster.clone().ok_or_else(|| {
                        at("cluster: true needs the cluster's JWKS, which was not provided".into())
                    })?)
                }
                None => return Err(at("no key source".into())),
            };
            let keys = Arc::new(IssuerKeys::new(
                c.issuer.clone(),
                index,
                source,
                c.refresh_interval,
                c.min_refresh_interval,
                cache.clone(),
                key_fetches.clone(),
            ));
            issuers.push(Issuer {
                policy: Policy::new(
                    &c.issuer,
                    &c.audiences,
                    &c.algorithms,
                    c.leeway,
                    &c.required_claims,
                )
                .map_err(at)?,
                mapping: Mapping::from_config(c),
                keys,
            });
            by_name.insert(c.issuer.clone(), index);
        }
        let tasks = issuers
            .iter()
            .map(|i| tokio::spawn(keys::run(Arc::downgrade(&i.keys))).abort_handle())
            .collect();
        Ok(Authenticator {
            inner: Arc::new(Inner {
                issuers,
                by_name,
                cache,
                clock,
                cache_hits: AtomicU64::new(0),
                signature_checks: AtomicU64::new(0),
                key_fetches,
                tasks,
            }),
        })
    }

    /// Authenticates from the request headers (`Authorization: Bearer …`, any case; or,
    /// on a WebSocket upgrade without it, the `base64url.bearer.authorization.k8s.io.`
    /// subprotocol, as the API server does). Never logs the token.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        tls_client_cert_presented: bool,
    ) -> Result<Arc<Subject>, Error> {
        let span = tracing::debug_span!(
            "authenticate",
            issuer = Empty,
            alg = Empty,
            kid = Empty,
            cached = Empty,
            user = Empty
        );
        async move {
            let in_protocol;
            let token = match token::bearer(headers)? {
                Some(token) => Some(token),
                None => {
                    in_protocol = token::websocket_bearer(headers)?;
                    in_protocol.as_deref()
                }
            };
            let result = match token {
                Some(token) => self.authenticate_token(token).await,
                None if tls_client_cert_presented => Err(Error::ClientCertificateInsteadOfToken),
                None => Err(Error::NoToken),
            };
            match &result {
                Ok(subject) => {
                    tracing::Span::current().record("user", subject.user.as_str());
                }
                Err(e) => tracing::debug!(reason = %e, "authentication failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    /// The caller, shared with the cache: a cached token costs no copy of its groups
    /// and extra.
    async fn authenticate_token(&self, token: &str) -> Result<Arc<Subject>, Error> {
        let inner = &*self.inner;
        let now = unix_seconds((inner.clock)());
        let digest = cache::sha256(token.as_bytes());
        match inner.cache.get(&digest, now) {
            Lookup::Hit(subject) => {
                inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                tracing::Span::current().record("cached", true);
                Ok(subject)
            }
            Lookup::Expired { exp } => Err(Error::Expired { exp }),
            // Boxed: a verification may fetch keys, and its future, inline, would be
            // part of (and copied with) every request's.
            Lookup::Miss => Box::pin(self.verify(token, digest, now)).await,
        }
    }

    /// Verifies a token not in the cache, and caches its caller.
    async fn verify(
        &self,
        token: &str,
        digest: cache::Digest,
        now: i64,
    ) -> Result<Arc<Subject>, Error> {
        let inner = &*self.inner;
        let parsed = token::parse(token)?;
        let iss = parsed.issuer()?;
        let index = *inner
            .by_name
            .get(iss)
            .ok_or_else(|| Error::UnknownIssuer(shorten_issuer(iss)))?;
        let issuer = &inner.issuers[index];
        let span = tracing::Span::current();
        span.record("issuer", iss);
        // Not verified yet, and chosen by whoever sent the token: recorded shortened.
        span.record("alg", verify::shorten(&parsed.header.alg).as_str());
        if let Some(kid) = &parsed.header.kid {
            span.record("kid", verify::shorten(kid).as_str());
        }
        span.record("cached", false);
        let generation = inner.cache.generation();
        verify::signature(
            &issuer.policy,
            &issuer.keys,
            &parsed,
            &inner.signature_checks,
        )
        .await?;
        let exp = verify::claims(&issuer.policy, &parsed.claims, now)?;
        let subject = issuer
            .mapping
            .subject(&parsed.claims, &issuer.policy.issuer)?;
        let subject = Arc::new(subject);
        inner.cache.insert(
            digest,
            Verified {
                subject: subject.clone(),
                issuer: index,
                exp,
                valid_until: exp.saturating_add(issuer.policy.leeway),
            },
            now,
            generation,
        );
        Ok(subject)
    }

    /// `None` when every issuer has keys; otherwise which do not, for `/readyz`.
    pub fn not_ready(&self) -> Option<String> {
        let missing: Vec<String> = self
            .inner
            .issuers
            .iter()
            .filter(|i| !i.keys.is_ready())
            .map(|i| format!("no keys yet for issuer {}", i.keys.issuer))
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    /// Resolves once every issuer has keys (bound it with a timeout).
    pub async fn ready(&self) {
        for issuer in &self.inner.issuers {
            issuer.keys.wait_ready().await;
        }
    }

    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        Stats {
            cache_hits: i.cache_hits.load(Ordering::Relaxed),
            signature_checks: i.signature_checks.load(Ordering::Relaxed),
            key_fetches: i.key_fetches.load(Ordering::Relaxed),
        }
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// An unknown `iss` is attacker-chosen: bound what is echoed back.
fn shorten_issuer(iss: &str) -> String {
    const MAX: usize = 200;
    match iss.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &iss[..i]),
        None => iss.to_owned(),
    }
}

/// A token's own word in a message: as it is when it is a plain word (`RS256`), else
/// quoted with its escapes (a header's `alg` is the caller's to write, newlines and all,
/// and must not start a line of its own in the log).
fn plain_or_quoted(s: &str) -> std::borrow::Cow<'_, str> {
    match !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        true => std::borrow::Cow::Borrowed(s),
        false => std::borrow::Cow::Owned(format!("{s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header's `alg` is the caller's: it never breaks a log line or a message.
    #[test]
    fn a_tokens_own_words_are_quoted_unless_plain() {
        let said = |alg: &str| {
            Error::DisallowedAlgorithm {
                alg: alg.into(),
                reason: "is not accepted".into(),
            }
            .to_string()
        };
        assert_eq!(said("HS256"), "token algorithm HS256 is not accepted");
        let forged = said("x\n2026-11-27T00:00:00Z INFO chaperone: policy loaded");
        assert!(!forged.contains('\n'), "{forged}");
        assert!(forged.starts_with("token algorithm \"x\\n2026"), "{forged}");
        assert_eq!(said(""), "token algorithm \"\" is not accepted");
    }
}
