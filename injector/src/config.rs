//! Every configuration type of the injector, its defaults, and its loading.
//!
//! The file is strict YAML (unknown keys are errors) and every key has a default, so an
//! empty file is a valid config. It is read once at startup; `mutate` and `reconcile`
//! take the parsed value and never read files or the environment themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The proxy image injected into pods.
pub const DEFAULT_IMAGE: &str = "ghcr.io/chaperone-dev/chaperone:0.1.0";
pub const DEFAULT_IMAGE_PULL_POLICY: &str = "IfNotPresent";
/// Loopback port of the proxy's API listener; app containers' `KUBERNETES_SERVICE_PORT`.
pub const DEFAULT_PROXY_PORT: u16 = 6443;
/// The proxy's plain-HTTP admin port (`/healthz`, `/readyz`, `/metrics`) for probes and scrapes.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;
/// Lifetime of the `chaperone`-audience token projected into app containers.
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The audience of app tokens: the proxy accepts it, the API server does not.
pub const DEFAULT_AUDIENCE: &str = "chaperone";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Where the injector itself runs; the CA Secret lives here and nothing here is injected.
pub const DEFAULT_NAMESPACE: &str = "chaperone-system";
pub const DEFAULT_SERVICE: &str = "chaperone-injector";
pub const DEFAULT_WEBHOOK_CONFIGURATION: &str = "chaperone-injector";
pub const DEFAULT_WEBHOOK_SECRET: &str = "chaperone-injector-tls";
pub const DEFAULT_CA_SECRET: &str = "chaperone-ca";
pub const DEFAULT_CA_CONFIGMAP: &str = "chaperone-ca";
pub const DEFAULT_PROXY_TLS_SECRET: &str = "chaperone-proxy-tls";
pub const DEFAULT_PROXY_CONFIGMAP: &str = "chaperone-proxy";
pub const DEFAULT_POLICY_CONFIGMAP: &str = "chaperone-policy";
/// Lifetimes of what the injector issues. Leaves are renewed at two thirds of theirs.
pub const DEFAULT_CA_DAYS: i64 = 3650;
pub const DEFAULT_LEAF_DAYS: i64 = 90;
/// The namespace label that turns injection on.
pub const INJECT_LABEL: &str = "chaperone.dev/inject";
pub const INJECT_LABEL_VALUE: &str = "enabled";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The injector's whole configuration (`chaperone-injector --config FILE`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub image: String,
    pub image_pull_policy: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// Inject the proxy as a native sidecar (an init container with `restartPolicy:
    /// Always`, Kubernetes >= 1.29). Off: a regular container, for older clusters.
    pub native_sidecar: bool,
    pub token_expiration_seconds: i64,
    pub audience: String,
    /// Audiences the API server accepts service-account tokens for, besides the usual
    /// `https://kubernetes.default.svc[.<clusterDomain>]` and whatever the injector's own
    /// token is for (read at start): a pod projecting a token for one of these around
    /// the proxy is refused ([`Config::is_api_audience`]).
    pub api_audiences: Vec<String>,
    /// The proxy container's resources, as in a pod spec.
    pub resources: Resources,
    pub cluster_domain: String,
    /// Set the pod sysctl `net.ipv4.ip_unprivileged_port_start=443` so the non-root
    /// proxy can bind 127.0.0.1:443 (`NET_BIND_SERVICE` alone does not reach a non-root
    /// process: container runtimes grant no ambient capabilities).
    pub unprivileged_port_sysctl: bool,
    /// The injector's own namespace, Service and webhook configuration.
    pub namespace: String,
    pub service: String,
    pub webhook_configuration: String,
    pub names: Names,
    pub ca_days: i64,
    pub leaf_days: i64,
    /// Where injected proxies send each request's span and audit log record
    /// (OTLP/gRPC); none by default, the audit events then go to the pod's log only.
    pub otlp: Option<Otlp>,
    /// How long the controller keeps labelled namespaces' AccessRequests.
    pub access_requests: AccessRequests,
}

/// The AccessRequests' retention (`crate::retention`); zero keeps them for good.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRequests {
    /// After the decision, or the end of the grant it gives, whichever is later.
    pub keep_decided_seconds: u64,
    /// After the hold of a request nobody decided.
    pub keep_pending_seconds: u64,
}

impl Default for AccessRequests {
    fn default() -> Self {
        AccessRequests {
            keep_decided_seconds: 3600,
            keep_pending_seconds: 24 * 3600,
        }
    }
}

impl AccessRequests {
    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            decided: std::time::Duration::from_secs(self.keep_decided_seconds),
            pending: std::time::Duration::from_secs(self.keep_pending_seconds),
        }
    }
}

/// An OpenTelemetry Collector for the injected proxies (their `audit.otlp`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Otlp {
    /// `http://host:port` (plain gRPC, a collector in the cluster) or `https://host:port`
    /// (a certificate the proxy image's system roots trust).
    pub endpoint: String,
}

/// Names of the objects the injector manages and the pod refers to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Names {
    /// Secret in the injector's namespace holding the proxy CA's certificate and key.
    pub ca_secret: String,
    /// Secret in the injector's namespace holding the webhook's serving certificate.
    pub webhook_secret: String,
    /// Per labelled namespace: the CA certificate (`ca.crt`).
    pub ca_config_map: String,
    /// Per labelled namespace: the proxy's serving certificate (`kubernetes.io/tls`).
    pub proxy_tls_secret: String,
    /// Per labelled namespace: the proxy's `config.yaml`.
    pub proxy_config_map: String,
    /// The policy ConfigMap a pod gets unless it names one in `chaperone.dev/policy`.
    pub default_policy_config_map: String,
}

/// Container resources: quantities as Kubernetes writes them (`50m`, `64Mi`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            image: DEFAULT_IMAGE.into(),
            image_pull_policy: DEFAULT_IMAGE_PULL_POLICY.into(),
            proxy_port: DEFAULT_PROXY_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            native_sidecar: true,
            token_expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
            audience: DEFAULT_AUDIENCE.into(),
            api_audiences: Vec::new(),
            resources: Resources::default(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            unprivileged_port_sysctl: true,
            namespace: DEFAULT_NAMESPACE.into(),
            service: DEFAULT_SERVICE.into(),
            webhook_configuration: DEFAULT_WEBHOOK_CONFIGURATION.into(),
            names: Names::default(),
            ca_days: DEFAULT_CA_DAYS,
            leaf_days: DEFAULT_LEAF_DAYS,
            otlp: None,
            access_requests: AccessRequests::default(),
        }
    }
}

impl Default for Names {
    fn default() -> Self {
        Names {
            ca_secret: DEFAULT_CA_SECRET.into(),
            webhook_secret: DEFAULT_WEBHOOK_SECRET.into(),
            ca_config_map: DEFAULT_CA_CONFIGMAP.into(),
            proxy_tls_secret: DEFAULT_PROXY_TLS_SECRET.into(),
            proxy_config_map: DEFAULT_PROXY_CONFIGMAP.into(),
            default_policy_config_map: DEFAULT_POLICY_CONFIGMAP.into(),
        }
    }
}

impl Default for Resources {
    fn default() -> Self {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Resources {
            requests: map(&[("cpu", "50m"), ("memory", "32Mi")]),
            limits: map(&[("memory", "128Mi")]),
        }
    }
}

impl Config {
    /// Whether a token projected for `audience` (none: the API server's own) is one the
    /// API server accepts.
    pub fn is_api_audience(&self, audience: Option<&str>) -> bool {
        let Some(audience) = audience.map(str::trim).filter(|a| !a.is_empty()) else {
            return true;
        };
        let usual = [
            "https://kubernetes.default.svc".to_owned(),
            format!("https://kubernetes.default.svc.{}", self.cluster_domain),
            "kubernetes.default.svc".to_owned(),
        ];
        usual
            .iter()
            .chain(&self.api_audiences)
            .any(|a| a == audience)
    }

    /// Adds the audiences and issuer of the injector's own service-account token (the
    /// API server's, in a cluster) to [`Config::api_audiences`]; nothing without one.
    pub fn learn_api_audiences(&mut self, token_file: &Path) {
        let Ok(token) = std::fs::read_to_string(token_file) else {
            return;
        };
        use base64::Engine as _;
        let claims = token
            .trim()
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        let aud = match &claims["aud"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let iss = claims["iss"].as_str().map(str::to_owned);
        for a in aud.into_iter().chain(iss) {
            if !self.api_audiences.contains(&a) {
                self.api_audiences.push(a);
            }
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        // An empty file is `null` in YAML: every default.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| Error::Parse {
                path: path.into(),
                source,
            })?
        };
        config.validate().map_err(|message| Error::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("image: must not be empty".into());
        }
        if self.proxy_port == 0 || self.admin_port == 0 || self.proxy_port == self.admin_port {
            return Err("proxyPort, adminPort: must be two different non-zero ports".into());
        }
        if self.proxy_port == 443 {
            return Err("proxyPort: 443 is already the proxy's second listener".into());
        }
        // The API server's bounds for a projected service-account token.
        if !(600..=(1 << 32)).contains(&self.token_expiration_seconds) {
            return Err("tokenExpirationSeconds: must be between 600 and 2^32".into());
        }
        if self.audience.is_empty() {
            return Err("audience: must not be empty".into());
        }
        if self.ca_days < 2 || self.leaf_days < 2 || self.leaf_days >= self.ca_days {
            return Err("caDays, leafDays: need 2 <= leafDays < caDays".into());
        }
        // Past a hundred years a time overflows; "for good" is 0.
        let century = 100 * 365 * 24 * 3600;
        let keep = &self.access_requests;
        if keep.keep_decided_seconds > century || keep.keep_pending_seconds > century {
            return Err("accessRequests: keep at most 100 years (0 keeps for good)".into());
        }
        if let Some(otlp) = &self.otlp {
            check_endpoint(&otlp.endpoint).map_err(|why| format!("otlp.endpoint: {why}"))?;
        }
        Ok(())
    }
}

/// An OTLP endpoint is `http(s)://` and a host and port, nothing else: it is written
/// into every injected proxy's config, which must never fail to load because of it.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or("must name a port (host:4317)")?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
    };
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API server's audiences: the usual ones, the config's, and those and the
    /// issuer of the injector's own token; no audience is the API server's too.
    #[test]
    fn api_audiences_are_learned_from_the_injectors_own_token() {
        use base64::Engine as _;
        let mut config = Config::default();
        assert!(config.is_api_audience(None));
        assert!(config.is_api_audience(Some(" ")));
        assert!(config.is_api_audience(Some("https://kubernetes.default.svc.cluster.local")));
        assert!(!config.is_api_audience(Some("https://oidc.example.com/id/1")));
        let claims = serde_json::json!({
            "aud": ["https://oidc.example.com/id/1", "api"],
            "iss": "https://issuer.example.com",
        });
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln\n")).unwrap();
        config.learn_api_audiences(&file);
        for a in [
            "https://oidc.example.com/id/1",
            "api",
            "https://issuer.example.com",
        ] {
            assert!(config.is_api_audience(Some(a)), "{a}");
        }
        assert!(!config.is_api_audience(Some("sts.amazonaws.com")));
        config.learn_api_audiences(&dir.path().join("absent"));
        assert_eq!(config.api_audiences.len(), 3);
    }

    #[test]
    fn empty_file_is_every_default() {
        let c = Config::parse("", Path::new("c.yaml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.proxy_port, 6443);
        assert!(c.native_sidecar);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let rows = [
            ("imagee: x\n", "unknown field `imagee`"),
            ("names:\n  caSecrett: x\n", "unknown field `caSecrett`"),
            ("proxyPort: 9901\n", "proxyPort, adminPort"),
            ("proxyPort: 443\n", "proxyPort: 443"),
            ("tokenExpirationSeconds: 60\n", "tokenExpirationSeconds"),
            ("leafDays: 4000\n", "leafDays"),
            ("otlp: {}\n", "missing field `endpoint`"),
            (
                "accessRequests: {keepDecided: 1h}\n",
                "unknown field `keepDecided`",
            ),
            (
                "accessRequests: {keepPendingSeconds: -1}\n",
                "keepPendingSeconds",
            ),
            (
                "accessRequests: {keepDecidedSeconds: 9999999999}\n",
                "at most 100 years",
            ),
            (
                "otlp:\n  endpoint: x\n  batch: 5\n",
                "unknown field `batch`",
            ),
            (
                "otlp: {endpoint: otel:4317}\n",
                "otlp.endpoint: must start with http://",
            ),
            ("otlp: {endpoint: 'http://otel'}\n", "must name a port"),
            ("otlp: {endpoint: 'http://otel:0'}\n", "\"0\" is not a port"),
            (
                "otlp: {endpoint: 'http://otel:4317/v1/traces'}\n",
                "is not a port",
            ),
            (
                "otlp: {endpoint: 'http://a b:4317'}\n",
                "\"a b\" is not a host",
            ),
            ("otlp: {endpoint: 'http://otel\"x:4317'}\n", "is not a host"),
            ("otlp: {endpoint: 'http://:4317'}\n", "is not a host"),
        ];
        for (text, want) in rows {
            let err = Config::parse(text, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("c.yaml") && err.contains(want),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn otlp_endpoints_a_proxy_can_dial_are_accepted() {
        for endpoint in [
            "http://otel-collector.chaperone-observability:4317",
            "https://otel.example.com:443/",
            "http://10.0.0.7:4317",
            "http://[fd00::7]:4317",
        ] {
            let text = format!("otlp: {{endpoint: '{endpoint}'}}\n");
            let c = Config::parse(&text, Path::new("c.yaml"))
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(c.otlp.unwrap().endpoint, endpoint);
        }
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse(
            "nativeSidecar: false\nnames:\n  caSecret: x\n",
            Path::new("c"),
        )
        .unwrap();
        assert!(!c.native_sidecar);
        assert_eq!(c.names.ca_secret, "x");
        assert_eq!(c.names.proxy_config_map, DEFAULT_PROXY_CONFIGMAP);
    }
}
