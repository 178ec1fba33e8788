//! Configuration of caller authentication: the `identity` section of the config file.
//!
//! ```yaml
//! identity:
//!   issuers:
//!   - issuer: https://login.example.com/realms/agents
//!     audiences: [chaperone]
//!     discovery: true                 # or jwksUrl / jwksFile / cluster: true
//!     groupsClaim: realm_access.roles
//!     groupsPrefix: "oidc:"
//!   - issuer: https://kubernetes.default.svc.cluster.local
//!     audiences: [chaperone]
//!     cluster: true                   # projected service-account tokens
//! ```
//!
//! Claim mappings follow the API server's `--oidc-*` flags so that a subject here is
//! the subject the cluster would see for the same token. These types move into the
//! main crate's `config.rs`; [`Identity::validate`] reports the offending field so the
//! caller can point at its line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

/// How far `exp`, `nbf` and `iat` may be off, for clock skew between IdP and proxy.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// How often each issuer's keys are re-fetched when nothing asks sooner.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// The least time between two fetches caused by unknown key ids, so a flood of tokens
/// with made-up `kid`s costs the IdP a bounded number of requests.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Verified tokens remembered (by SHA-256) so a client's steady stream costs a lookup.
pub const DEFAULT_CACHE_SIZE: usize = 10_000;
/// The longest a verified token is trusted without re-checking its signature, so that a
/// key removed at the IdP stops working within this time even for cached tokens.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);
/// The claim naming the user, as the API server's `--oidc-username-claim` default.
pub const DEFAULT_USERNAME_CLAIM: &str = "sub";
/// A prefix value meaning "no prefix", as in the API server's flags.
pub const NO_PREFIX: &str = "-";
/// Asymmetric algorithms accepted when `algorithms` is not set. `none` and `HS*` are
/// never accepted: a symmetric secret cannot be published in a JWKS, and accepting
/// them is how algorithm-confusion attacks forge tokens.
pub const DEFAULT_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// The `identity` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Identity {
    /// Trusted token issuers. A token is routed to one by its exact `iss`.
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    /// Verified tokens remembered; 0 turns the cache off.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    /// Upper bound on how long a verified token is remembered (never past its `exp`).
    #[serde(default = "default_cache_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            issuers: Vec::new(),
            cache_size: DEFAULT_CACHE_SIZE,
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }
}

/// One trusted issuer: where its keys come from and how its claims become a subject.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Issuer {
    /// Compared byte for byte with the token's `iss`. A `cluster: true` issuer may
    /// leave it out: the proxy then reads it from the `iss` of its own mounted
    /// service-account token, which the same cluster issued.
    #[serde(default)]
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Keys from OpenID discovery: `true` reads `<issuer>/.well-known/openid-configuration`,
    /// a URL names the discovery document itself.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// Keys from this JWKS URL (https).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Keys from this JWKS file, re-read when its content changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The cluster's own service-account issuer; keys come from the API server.
    #[serde(default)]
    pub cluster: bool,
    /// For a `cluster` issuer: accept only tokens the kubelet bound to this pod (their
    /// `kubernetes.io.pod.uid` is the proxy's `POD_UID`, which the injector sets from
    /// the downward API). A sidecar's only caller is its own pod; a token from another
    /// pod of the same service account, or one that outlived its pod, is refused.
    #[serde(default)]
    pub own_pod_only: bool,
    /// The uid `own_pod_only` compares with, filled in from `POD_UID` at start.
    #[serde(skip)]
    pub own_pod_uid: Option<String>,
    /// PEM CA bundle trusted for the IdP's TLS; the system bundle when unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Default: none for `email`, `<issuer>#` otherwise; `-` means none.
    #[serde(default)]
    pub username_prefix: Option<String>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    #[serde(default)]
    pub groups_prefix: Option<String>,
    #[serde(default)]
    pub uid_claim: Option<String>,
    /// Extra attribute key (e.g. `example.com/tenant`) -> claim path.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
    /// Claim path -> the exact value it must have.
    #[serde(default)]
    pub required_claims: BTreeMap<String, serde_json::Value>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    #[serde(default = "default_refresh_interval", deserialize_with = "duration")]
    pub refresh_interval: Duration,
    #[serde(
        default = "default_min_refresh_interval",
        deserialize_with = "duration"
    )]
    pub min_refresh_interval: Duration,
}

/// `discovery: true` or `discovery: https://.../.well-known/openid-configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Discovery {
    Enabled(bool),
    Url(String),
}

/// Where an issuer's keys come from, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The discovery document URL.
    Discovery(String),
    JwksUrl(String),
    JwksFile(PathBuf),
    Cluster,
}

/// A validation failure: `field` is the YAML key at fault (for a line hint), `message`
/// the full explanation starting with the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn default_cache_size() -> usize {
    DEFAULT_CACHE_SIZE
}
fn default_cache_ttl() -> Duration {
    DEFAULT_CACHE_TTL
}
fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS.iter().map(|a| (*a).to_owned()).collect()
}
fn default_leeway() -> Duration {
    DEFAULT_LEEWAY
}
fn default_refresh_interval() -> Duration {
    DEFAULT_REFRESH_INTERVAL
}
fn default_min_refresh_interval() -> Duration {
    DEFAULT_MIN_REFRESH_INTERVAL
}

/// Claim paths deeper than this are surely a mistake (and bound lookup work).
const MAX_CLAIM_PATH_SEGMENTS: usize = 16;
/// Leeway beyond this would make `exp` meaningless.
const MAX_LEEWAY: Duration = Duration::from_secs(600);

impl Identity {
    /// Checks everything that can be checked without I/O.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, issuer) in self.issuers.iter().enumerate() {
            issuer.validate(&format!("identity.issuers[{i}]"))?;
            if !issuer.issuer.is_empty()
                && self.issuers[..i].iter().any(|o| o.issuer == issuer.issuer)
            {
                return Err(invalid(
                    "issuer",
                    format!(
                        "identity.issuers[{i}].issuer: {:?} is listed twice",
                        issuer.issuer
                    ),
                ));
            }
        }
        if self.cache_size > 0 && self.cache_ttl.is_zero() {
            return Err(invalid(
                "cacheTtl",
                "identity.cacheTtl: must be greater than zero (set cacheSize: 0 to turn the cache off)"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Issuer {
    /// The validated key source (call after [`Identity::validate`]).
    pub fn key_source(&self) -> Option<KeySource> {
        match (
            &self.discovery,
            &self.jwks_url,
            &self.jwks_file,
            self.cluster,
        ) {
            (Some(Discovery::Enabled(true)), None, None, false) => {
                Some(KeySource::Discovery(format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                )))
            }
            (Some(Discovery::Url(url)), None, None, false) => {
                Some(KeySource::Discovery(url.clone()))
            }
            (None, Some(url), None, false) => Some(KeySource::JwksUrl(url.clone())),
            (None, None, Some(path), false) => Some(KeySource::JwksFile(path.clone())),
            (None, None, None, true) => Some(KeySource::Cluster),
            _ => None,
        }
    }

    fn validate(&self, at: &str) -> Result<(), Invalid> {
        if self.issuer.is_empty() && !self.cluster {
            return Err(invalid("issuer", format!("{at}.issuer: must not be empty")));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(invalid(
                "audiences",
                format!("{at}.audiences: list at least one non-empty audience"),
            ));
        }
        let source = self.key_source().ok_or_else(|| {
            invalid(
                "issuer",
                format!(
                    "{at}: set exactly one key source: discovery, jwksUrl, jwksFile or cluster: true"
                ),
            )
        })?;
        match &source {
            KeySource::Discovery(url) => {
                if matches!(self.discovery, Some(Discovery::Enabled(true))) {
                    https_url(&self.issuer).map_err(|why| {
                        invalid(
                            "issuer",
                            format!("{at}.issuer: discovery needs an https issuer URL: {why}"),
                        )
                    })?;
                }
                https_url(url)
                    .map_err(|why| invalid("discovery", format!("{at}.discovery: {why}")))?;
            }
            KeySource::JwksUrl(url) => {
                https_url(url).map_err(|why| invalid("jwksUrl", format!("{at}.jwksUrl: {why}")))?;
            }
            KeySource::JwksFile(_) | KeySource::Cluster => {
                if self.ca_file.is_some() {
                    return Err(invalid(
                        "caFile",
                        format!("{at}.caFile: only applies to discovery and jwksUrl"),
                    ));
                }
            }
        }
        if self.own_pod_only && source != KeySource::Cluster {
            return Err(invalid(
                "ownPodOnly",
                format!("{at}.ownPodOnly: only applies to the cluster issuer (cluster: true)"),
            ));
        }
        if source == KeySource::Cluster {
            // The service-account identity is fixed by Kubernetes; remapping it would make
            // the proxy's subject differ from the one the API server derives.
            let mapped = [
                ("usernameClaim", self.username_claim.is_some()),
                ("usernamePrefix", self.username_prefix.is_some()),
                ("groupsClaim", self.groups_claim.is_some()),
                ("groupsPrefix", self.groups_prefix.is_some()),
                ("uidClaim", self.uid_claim.is_some()),
                ("extra", !self.extra.is_empty()),
            ];
            if let Some((field, _)) = mapped.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    field,
                    format!(
                        "{at}.{field}: cluster issuers map service-account tokens as Kubernetes does; claim mappings do not apply"
                    ),
                ));
            }
        }
        for (field, path) in [
            ("usernameClaim", &self.username_claim),
            ("groupsClaim", &self.groups_claim),
            ("uidClaim", &self.uid_claim),
        ] {
            if let Some(path) = path {
                claim_path(path).map_err(|why| invalid(field, format!("{at}.{field}: {why}")))?;
            }
        }
        for (key, path) in &self.extra {
            let domain_prefixed = key
                .split_once('/')
                .is_some_and(|(d, n)| d.contains('.') && !n.is_empty());
            if !domain_prefixed || key.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(invalid(
                    "extra",
                    format!(
                        "{at}.extra: key {key:?} must be lowercase and domain-prefixed, e.g. example.com/tenant"
                    ),
                ));
            }
            if is_kubernetes_domain(key) {
                return Err(invalid(
                    "extra",
                    format!(
                        "{at}.extra: key {key:?} is under k8s.io or kubernetes.io, reserved for Kubernetes (an identity provider must not fill in, say, the pod a token was issued to)"
                    ),
                ));
            }
            claim_path(path).map_err(|why| invalid("extra", format!("{at}.extra.{key}: {why}")))?;
        }
        for name in self.required_claims.keys() {
            claim_path(name)
                .map_err(|why| invalid("requiredClaims", format!("{at}.requiredClaims: {why}")))?;
        }
        for (field, prefix) in [
            ("usernamePrefix", &self.username_prefix),
            ("groupsPrefix", &self.groups_prefix),
        ] {
            if prefix.as_deref().is_some_and(|p| p.starts_with("system:")) {
                return Err(invalid(
                    field,
                    format!("{at}.{field}: must not start with system: (reserved for Kubernetes)"),
                ));
            }
        }
        self.validate_algorithms(at)?;
        if self.leeway > MAX_LEEWAY {
            return Err(invalid(
                "leeway",
                format!("{at}.leeway: at most {}s", MAX_LEEWAY.as_secs()),
            ));
        }
        if self.refresh_interval < Duration::from_secs(1) {
            return Err(invalid(
                "refreshInterval",
                format!("{at}.refreshInterval: must be at least 1s"),
            ));
        }
        if self.min_refresh_interval.is_zero() {
            // A token naming a key the issuer does not have makes chaperone fetch the
            // keys again, once per this interval: at zero, any client could make it
            // fetch on every request.
            return Err(invalid(
                "minRefreshInterval",
                format!("{at}.minRefreshInterval: must be greater than zero"),
            ));
        }
        if self.min_refresh_interval > self.refresh_interval {
            return Err(invalid(
                "minRefreshInterval",
                format!("{at}.minRefreshInterval: must not exceed refreshInterval"),
            ));
        }
        Ok(())
    }

    fn validate_algorithms(&self, at: &str) -> Result<(), Invalid> {
        if self.algorithms.is_empty() {
            return Err(invalid(
                "algorithms",
                format!("{at}.algorithms: list at least one algorithm"),
            ));
        }
        for alg in &self.algorithms {
            if alg.eq_ignore_ascii_case("none") || alg.to_ascii_uppercase().starts_with("HS") {
                return Err(invalid(
                    "algorithms",
                    format!(
                        "{at}.algorithms: {alg} is never accepted: tokens must be signed with an asymmetric key published by the issuer"
                    ),
                ));
            }
            if !DEFAULT_ALGORITHMS.contains(&alg.as_str()) {
                return Err(invalid(
                    "algorithms",
                    format!(
                        "{at}.algorithms: unknown algorithm {alg:?}; choose from {}",
                        DEFAULT_ALGORITHMS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn invalid(field: &'static str, message: String) -> Invalid {
    Invalid { field, message }
}

/// Accepts `https://host[:port]/...` only: keys fetched over plain http could be swapped
/// by anyone on the path, and every token would then be forgeable.
fn https_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must use https"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

fn claim_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("claim path must not be empty".into());
    }
    let segments = path.split(['.', '/']).count();
    if segments > MAX_CLAIM_PATH_SEGMENTS {
        return Err(format!(
            "claim path {path:?} is deeper than {MAX_CLAIM_PATH_SEGMENTS} levels"
        ));
    }
    Ok(())
}

/// Whether an extra key's domain is Kubernetes' own: `k8s.io`, `kubernetes.io` or a
/// subdomain of either, as the API server's structured authentication configuration
/// refuses them (`validateExtraMappings`).
fn is_kubernetes_domain(key: &str) -> bool {
    let domain = key.split_once('/').map_or(key, |(d, _)| d);
    ["k8s.io", "kubernetes.io"]
        .iter()
        .any(|k| domain == *k || domain.strip_suffix(k).is_some_and(|d| d.ends_with('.')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Identity, String> {
        let identity: Identity = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        identity.validate().map_err(|e| e.message)?;
        Ok(identity)
    }

    #[test]
    fn defaults_apply_to_a_minimal_issuer() {
        let id =
            parse("issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  discovery: true\n")
                .unwrap();
        let iss = &id.issuers[0];
        assert_eq!(id.cache_size, DEFAULT_CACHE_SIZE);
        assert_eq!(iss.leeway, DEFAULT_LEEWAY);
        assert_eq!(iss.algorithms.len(), DEFAULT_ALGORITHMS.len());
        assert_eq!(
            iss.key_source(),
            Some(KeySource::Discovery(
                "https://idp.example/.well-known/openid-configuration".into()
            ))
        );
    }

    #[test]
    fn rejects_symmetric_and_none_algorithms_naming_the_field() {
        for alg in ["HS256", "none"] {
            let err = parse(&format!(
                "issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  jwksUrl: https://idp.example/keys\n  algorithms: [{alg}]\n"
            ))
            .unwrap_err();
            assert!(err.starts_with("identity.issuers[0].algorithms:"), "{err}");
            assert!(err.contains("never accepted"), "{err}");
        }
    }

    #[test]
    fn rejects_plain_http_key_urls() {
        let err = parse("issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  jwksUrl: http://idp.example/keys\n")
            .unwrap_err();
        assert_eq!(
            err,
            "identity.issuers[0].jwksUrl: \"http://idp.example/keys\" must use https"
        );
    }

    #[test]
    fn requires_exactly_one_key_source() {
        let err = parse("issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  discovery: true\n  cluster: true\n")
            .unwrap_err();
        assert!(err.contains("set exactly one key source"), "{err}");
        let err = parse("issuers:\n- issuer: https://idp.example\n  audiences: [a]\n").unwrap_err();
        assert!(err.contains("set exactly one key source"), "{err}");
    }

    #[test]
    fn requires_audiences() {
        let err =
            parse("issuers:\n- issuer: https://idp.example\n  audiences: []\n  discovery: true\n")
                .unwrap_err();
        assert!(err.starts_with("identity.issuers[0].audiences:"), "{err}");
    }

    #[test]
    fn rejects_claim_mappings_on_cluster_issuers() {
        let err = parse("issuers:\n- issuer: https://kubernetes.default.svc\n  audiences: [chaperone]\n  cluster: true\n  groupsClaim: groups\n")
            .unwrap_err();
        assert!(err.starts_with("identity.issuers[0].groupsClaim:"), "{err}");
    }

    #[test]
    fn key_refreshes_are_bounded() {
        let issuer =
            "issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  discovery: true\n";
        for (extra, want) in [
            (
                "  minRefreshInterval: 0s\n",
                "minRefreshInterval: must be greater than zero",
            ),
            (
                "  refreshInterval: 500ms\n",
                "refreshInterval: must be at least 1s",
            ),
            (
                "  minRefreshInterval: 20m\n",
                "minRefreshInterval: must not exceed refreshInterval",
            ),
        ] {
            let err = parse(&format!("{issuer}{extra}")).unwrap_err();
            assert!(err.ends_with(want), "{extra}: {err}");
        }
        assert!(parse(&format!("{issuer}  minRefreshInterval: 100ms\n")).is_ok());
    }

    #[test]
    fn extra_keys_are_domain_prefixed_and_not_kubernetes_own() {
        let issuer =
            "issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  discovery: true\n";
        let extra = |key: &str| parse(&format!("{issuer}  extra: {{{key}: c}}\n"));
        for ok in [
            "example.com/tenant",
            "k8s.io.example.com/x",
            "notkubernetes.io/x",
        ] {
            assert!(extra(ok).is_ok(), "{ok}");
        }
        for (key, why) in [
            ("tenant", "domain-prefixed"),
            ("Example.com/tenant", "lowercase"),
            (
                "authentication.kubernetes.io/pod-name",
                "reserved for Kubernetes",
            ),
            ("kubernetes.io/x", "reserved for Kubernetes"),
            ("k8s.io/x", "reserved for Kubernetes"),
            ("x.k8s.io/y", "reserved for Kubernetes"),
        ] {
            let err = extra(key).unwrap_err();
            assert!(err.contains(why), "{key}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_fields() {
        assert!(parse("issuers:\n- issuer: https://idp.example\n  audiences: [a]\n  discovery: true\n  usernameClaims: x\n")
            .unwrap_err()
            .contains("unknown field"));
    }
}
