//! Every configuration type of the proxy, its defaults, and its validation.
//!
//! The file is strict YAML: an unknown or misspelled key stops startup with the file,
//! line and column at fault. Values are checked once here so later stages never
//! re-check them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where the API listeners bind when the config names none: loopback, both families.
pub const DEFAULT_LISTEN: [&str; 2] = ["127.0.0.1:6443", "[::1]:6443"];
/// The admin listener (`/healthz`, `/readyz`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Bound on dialling the API server, so a dead upstream answers 503 instead of hanging.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for the API server's response headers (watches answer headers at once).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the shared HTTP/2 connection to the API server is pinged, and how long a
/// ping may go unanswered before the connection is taken for dead (client-go's 30 s and
/// 15 s): a connection that went silent (a node lost, a NAT entry dropped) would
/// otherwise hold every request until its timeout, and every watch for ever.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(15);
/// As nginx's `send_timeout`.
pub const DEFAULT_UNREAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a client's TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a connection's request head: its first bytes, then each HTTP/1.1 request's
/// headers (the API server's is 32 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long graceful shutdown waits for open requests (watches, exec) before closing them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The service-account mount the kubelet gives the proxy container.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Audit recording rotation: size of one file and how many old files are kept.
pub const DEFAULT_AUDIT_MAX_SIZE: u64 = 100 << 20;
pub const DEFAULT_AUDIT_MAX_FILES: u32 = 5;
/// Audit events that may wait for the sinks before `overflow` applies.
pub const DEFAULT_AUDIT_QUEUE: usize = 10_000;

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
    #[error("invalid config file {path}{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: LineHint,
        message: String,
    },
}

/// " at line N" when the offending value can be found in the file, else nothing.
#[derive(Debug, Default)]
pub struct LineHint(Option<usize>);

impl std::fmt::Display for LineHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, " at line {n}"),
            None => Ok(()),
        }
    }
}

/// The proxy's whole configuration (`chaperone proxy --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// API listeners. Loopback addresses only: the proxy never serves the pod IP.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// On both listeners: a connection that sends no bytes, or no complete HTTP/1.1
    /// request head, this long after it opened (or after its last request) is closed.
    #[serde(default = "default_header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// The serving certificate and key (PEM), reloaded when they change on disk.
    pub tls: Option<Tls>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub upstream: Upstream,
    #[serde(default)]
    pub audit: Audit,
    /// Who may call: trusted token issuers. At least one is required.
    #[serde(default)]
    pub identity: crate::identity::config::Identity,
    /// What callers may do. Without it every request is refused, saying so.
    pub policy: Option<PolicySource>,
    #[serde(default)]
    pub approval: Approval,
    /// How many long-running requests (watches, followed logs, exec, attach and
    /// port-forward sessions) one caller may have open at once; past it, 429.
    #[serde(default = "default_max_streams_per_caller")]
    pub max_streams_per_caller: usize,
    /// How many other requests one caller may have in flight at once, from the moment
    /// they are forwarded until their response has been sent; past it, 429 with
    /// `Retry-After: 1`, which client-go (kubectl, operators, most MCP servers) waits
    /// out and retries.
    #[serde(default = "default_max_requests_per_caller")]
    pub max_requests_per_caller: usize,
    /// How many connections the API listeners keep open at once, all of them together;
    /// one past them is closed as it is accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

pub const DEFAULT_MAX_STREAMS_PER_CALLER: usize = 100;

fn default_max_streams_per_caller() -> usize {
    DEFAULT_MAX_STREAMS_PER_CALLER
}

/// The API server's own default bound on read requests in flight
/// (`--max-requests-inflight`), here for one caller.
pub const DEFAULT_MAX_REQUESTS_PER_CALLER: usize = 400;

fn default_max_requests_per_caller() -> usize {
    DEFAULT_MAX_REQUESTS_PER_CALLER
}

/// Where `approve` decisions wait for a reviewer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Approval {
    /// The namespace of the AccessRequests; default: the pod's own (`POD_NAMESPACE`
    /// from the downward API), else `default`.
    pub namespace: Option<String>,
    /// How often a held request looks for the decision.
    #[serde(default, deserialize_with = "optional_duration")]
    pub poll: Option<Duration>,
    /// Webhooks told about each new AccessRequest.
    #[serde(default)]
    pub notify: Vec<crate::approval::notify::Webhook>,
    /// How many different requests one caller may have held for review at once (each
    /// is an AccessRequest in front of reviewers; identical requests share one); past
    /// it, a new one is refused with 429 until one is decided or its hold ends.
    #[serde(default = "default_max_held_per_caller")]
    pub max_held_per_caller: usize,
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            namespace: None,
            poll: None,
            notify: Vec::new(),
            max_held_per_caller: default_max_held_per_caller(),
        }
    }
}

fn default_max_held_per_caller() -> usize {
    10
}

/// Where the policy comes from: a file (the mounted policy ConfigMap's key), re-read
/// when it changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySource {
    /// A relative path is taken from the config file's directory.
    pub file: PathBuf,
    #[serde(default = "default_policy_interval", deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// The ConfigMap the file is mounted from (`NAME`, in the pod's namespace, or
    /// `NAMESPACE/NAME`): no caller may change or delete it through the proxy, whatever
    /// the policy allows. Default: `CHAPERONE_POLICY_CONFIGMAP`, which the injector sets.
    #[serde(default)]
    pub config_map: Option<String>,
}

/// The audit trail: every request, one `audit.k8s.io/v1` event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Audit {
    /// The JSONL recording (what `chaperone replay` reads). Unset or `-`: standard
    /// output, where the pod's log collection picks it up.
    pub file: Option<PathBuf>,
    #[serde(default = "default_audit_max_size", deserialize_with = "byte_size")]
    pub max_size: u64,
    #[serde(default = "default_audit_max_files")]
    pub max_files: u32,
    #[serde(default)]
    pub fsync: crate::audit::Fsync,
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    #[serde(default)]
    pub overflow: crate::audit::Overflow,
    /// An OpenTelemetry Collector (OTLP/gRPC) receiving a span and a log record per
    /// request.
    pub otlp: Option<Otlp>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Otlp {
    /// `http://otel-collector.chaperone-observability:4317`, or `https://...` with `caFile`.
    pub endpoint: String,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_otlp_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_otlp_batch")]
    pub batch: usize,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            file: None,
            max_size: DEFAULT_AUDIT_MAX_SIZE,
            max_files: DEFAULT_AUDIT_MAX_FILES,
            fsync: Default::default(),
            queue: DEFAULT_AUDIT_QUEUE,
            overflow: Default::default(),
            otlp: None,
        }
    }
}

impl Audit {
    /// The recorder's settings; `env` supplies the pod identity (downward API env) for
    /// the OTLP resource.
    pub fn settings(&self, env: &dyn Fn(&str) -> Option<String>) -> crate::audit::Settings {
        let mut resource = vec![
            ("service.name".to_owned(), "chaperone".to_owned()),
            (
                "service.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ];
        for (var, attribute) in [
            ("POD_NAME", "k8s.pod.name"),
            ("POD_NAMESPACE", "k8s.namespace.name"),
            ("POD_UID", "k8s.pod.uid"),
            ("NODE_NAME", "k8s.node.name"),
            ("SERVICE_ACCOUNT", "k8s.serviceaccount.name"),
        ] {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                resource.push((attribute.to_owned(), value));
            }
        }
        crate::audit::Settings {
            file: Some(self.file.clone().unwrap_or_else(|| "-".into())),
            max_size: self.max_size,
            max_files: self.max_files,
            fsync: self.fsync,
            queue: self.queue,
            overflow: self.overflow,
            otlp: self.otlp.as_ref().map(|o| crate::audit::otlp::Settings {
                endpoint: o.endpoint.clone(),
                ca_file: o.ca_file.clone(),
                timeout: o.timeout,
                batch: o.batch,
                resource,
            }),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration")]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Admin {
    /// Plain-HTTP `/healthz` and `/readyz`. The injector sets the pod IP's port here so
    /// the kubelet can probe it; it never serves the Kubernetes API.
    pub listen: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .expect("the default admin address parses"),
        }
    }
}

/// How the proxy reaches the real API server. Exactly one of `inCluster` and
/// `kubeconfig`; with neither, `inCluster` with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Upstream {
    pub in_cluster: Option<InCluster>,
    pub kubeconfig: Option<KubeconfigSource>,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_response_timeout", deserialize_with = "duration")]
    pub response_timeout: Duration,
    /// How often the HTTP/2 connection to the API server is pinged.
    #[serde(default = "default_ping_interval", deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(default = "default_ping_timeout", deserialize_with = "duration")]
    pub ping_timeout: Duration,
    /// How long an answer's data may wait for a caller who takes none of it before its
    /// stream to the API server is reset (callers share that connection's window).
    #[serde(default = "default_unread_timeout", deserialize_with = "duration")]
    pub unread_timeout: Duration,
    #[serde(default = "default_shutdown_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Whose identity the API server sees.
    #[serde(default)]
    pub identity: UpstreamIdentity,
}

/// Whose identity requests carry upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamIdentity {
    /// The proxy's own credential; cluster RBAC sees the proxy's service account.
    #[default]
    Proxy,
    /// The proxy's credential plus `Impersonate-*` headers for the authenticated
    /// caller, so cluster RBAC and the cluster's audit log see the caller. The proxy's
    /// service account then needs `impersonate` on users, groups, serviceaccounts and
    /// uids (and `userextras/*`).
    Impersonate,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            in_cluster: None,
            kubeconfig: None,
            identity: UpstreamIdentity::Proxy,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            unread_timeout: DEFAULT_UNREAD_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// In-cluster: the proxy's own service account, dialling the API server by service IP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InCluster {
    /// Defaults to the proxy container's `KUBERNETES_SERVICE_HOST` (the injector leaves
    /// the proxy's env untouched; only app containers are pointed at loopback).
    pub host: Option<String>,
    /// Defaults to `KUBERNETES_SERVICE_PORT`.
    pub port: Option<u16>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// A kubeconfig file and context (`chaperone local`, the sandbox, and off-cluster runs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeconfigSource {
    /// Defaults to `$KUBECONFIG`, then `~/.kube/config`.
    pub path: Option<PathBuf>,
    /// Defaults to the file's `current-context`.
    pub context: Option<String>,
}

fn default_listen() -> Vec<SocketAddr> {
    DEFAULT_LISTEN
        .iter()
        .map(|a| a.parse().expect("the default listen addresses parse"))
        .collect()
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_response_timeout() -> Duration {
    DEFAULT_RESPONSE_TIMEOUT
}
fn default_ping_interval() -> Duration {
    DEFAULT_PING_INTERVAL
}
fn default_ping_timeout() -> Duration {
    DEFAULT_PING_TIMEOUT
}
fn default_unread_timeout() -> Duration {
    DEFAULT_UNREAD_TIMEOUT
}
fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}
fn default_header_timeout() -> Duration {
    DEFAULT_HEADER_TIMEOUT
}
fn default_shutdown_grace() -> Duration {
    DEFAULT_SHUTDOWN_GRACE
}
fn default_policy_interval() -> Duration {
    crate::policy::DEFAULT_INTERVAL
}
fn default_audit_max_size() -> u64 {
    DEFAULT_AUDIT_MAX_SIZE
}
fn default_audit_max_files() -> u32 {
    DEFAULT_AUDIT_MAX_FILES
}
fn default_audit_queue() -> usize {
    DEFAULT_AUDIT_QUEUE
}
fn default_otlp_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_otlp_batch() -> usize {
    512
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
        // An empty file is an empty mapping: all defaults.
        let mut config: Config = if text.trim().is_empty() {
            serde_yaml::from_str("{}")
        } else {
            serde_yaml::from_str(text)
        }
        .map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate(path, text)?;
        if let Some(policy) = &mut config.policy {
            if policy.file.is_relative() {
                let base = path.parent().unwrap_or(Path::new(""));
                policy.file = base.join(&policy.file);
            }
        }
        Ok(config)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), Error> {
        let invalid = |needle: &str, message: String| Error::Invalid {
            path: path.to_owned(),
            line: line_of(text, needle),
            message,
        };
        if self.listen.is_empty() {
            return Err(invalid(
                "listen",
                "listen: at least one loopback address is required".into(),
            ));
        }
        for addr in &self.listen {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    &addr.ip().to_string(),
                    format!(
                        "listen: {addr} is not a loopback address; the API port is served on \
                         127.0.0.1 and ::1 only, never on the pod IP"
                    ),
                ));
            }
        }
        if self.upstream.in_cluster.is_some() && self.upstream.kubeconfig.is_some() {
            return Err(invalid(
                "kubeconfig",
                "upstream: set one of inCluster and kubeconfig, not both".into(),
            ));
        }
        if self.identity.issuers.is_empty() {
            return Err(invalid(
                "identity",
                "identity.issuers: list at least one trusted token issuer; chaperone \
                 authenticates every caller (for in-cluster service-account tokens: \
                 `identity: {issuers: [{cluster: true, audiences: [chaperone]}]}`)"
                    .into(),
            ));
        }
        if let Err(e) = self.identity.validate() {
            return Err(invalid(e.field, e.message));
        }
        // A zero would fail every request (a timeout), or spin (a poll) or stop (a
        // reload task) where an interval is meant: each must be greater than zero.
        let positive = [
            (
                "connectTimeout",
                "upstream.connectTimeout",
                Some(self.upstream.connect_timeout),
            ),
            (
                "responseTimeout",
                "upstream.responseTimeout",
                Some(self.upstream.response_timeout),
            ),
            (
                "pingInterval",
                "upstream.pingInterval",
                Some(self.upstream.ping_interval),
            ),
            (
                "pingTimeout",
                "upstream.pingTimeout",
                Some(self.upstream.ping_timeout),
            ),
            (
                "unreadTimeout",
                "upstream.unreadTimeout",
                Some(self.upstream.unread_timeout),
            ),
            ("headerTimeout", "headerTimeout", Some(self.header_timeout)),
            (
                "handshakeTimeout",
                "tls.handshakeTimeout",
                self.tls.as_ref().map(|t| t.handshake_timeout),
            ),
            (
                "reloadInterval",
                "policy.reloadInterval",
                self.policy.as_ref().map(|p| p.reload_interval),
            ),
            ("poll", "approval.poll", self.approval.poll),
            (
                "timeout",
                "audit.otlp.timeout",
                self.audit.otlp.as_ref().map(|o| o.timeout),
            ),
        ];
        for (needle, field, value) in positive {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(invalid(
                    needle,
                    format!("{field}: must be greater than zero"),
                ));
            }
        }
        if self.max_streams_per_caller == 0 {
            return Err(invalid(
                "maxStreamsPerCaller",
                "maxStreamsPerCaller: must be at least 1 (to refuse watches or exec, say so \
                 in the policy)"
                    .into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "maxConnections",
                "maxConnections: must be at least 1".into(),
            ));
        }
        if self.max_requests_per_caller == 0 {
            return Err(invalid(
                "maxRequestsPerCaller",
                "maxRequestsPerCaller: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The 1-based line of the first occurrence of `needle`, for error messages.
fn line_of(text: &str, needle: &str) -> LineHint {
    LineHint(text.lines().position(|l| l.contains(needle)).map(|i| i + 1))
}

/// Parses durations written as `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Parses sizes written as `1048576`, `512Ki`, `100Mi`, `1Gi` (or `KB`/`MB`/`GB`, powers of 1000).
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "KB" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(t) => parse_byte_size(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size {t:?}: write e.g. 512Ki, 100Mi or 1Gi"
            ))
        }),
    }
}

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(t) => parse_duration(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {t:?}: write e.g. 500ms, 5s, 2m or 1h"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid identity section, appended so line numbers stay put.
    const IDENTITY: &str = "identity:\n  issuers: [{cluster: true, audiences: [chaperone]}]\n";

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("chaperone.yaml"), &format!("{text}{IDENTITY}"))
    }

    #[test]
    fn the_shipped_configs_parse() {
        for name in ["in-cluster.yaml", "sandbox.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("manifests/config")
                .join(name);
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(config.policy.is_some(), "{name} names a policy");
            assert!(
                !config.identity.issuers.is_empty(),
                "{name} trusts an issuer"
            );
        }
    }

    #[test]
    fn identity_is_required_and_validated() {
        let cases = [
            ("", "at least one trusted token issuer"),
            ("identity: {issuers: []}\n", "at least one trusted token issuer"),
            (
                "identity:\n  issuers:\n  - issuer: https://idp\n    audiences: [a]\n    jwksUrl: http://idp/keys\n",
                "line 5",
            ),
            (
                "identity:\n  issuers:\n  - issuer: https://idp\n    audiences: [a]\n    discovery: true\n    algorithms: [HS256]\n",
                "HS256",
            ),
            ("identity:\n  issuers:\n  - audiences: [a]\n    discovery: true\n", "issuer: must not be empty"),
        ];
        for (text, words) in cases {
            let err = Config::parse(Path::new("c.yaml"), text)
                .expect_err(text)
                .to_string();
            assert!(err.contains(words), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_minimal_file_gives_loopback_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.upstream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(c.tls.is_none());
        assert_eq!(c.max_streams_per_caller, 100);
        assert_eq!(c.max_requests_per_caller, 400);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            // (config text, words the error must contain)
            (
                "listen: [127.0.0.1:6443]\nlisen: x\n",
                vec!["chaperone.yaml", "lisen", "line 2"],
            ),
            (
                "upstream:\n  conectTimeout: 5s\n",
                vec!["conectTimeout", "line 2"],
            ),
            (
                "listen: [\"0.0.0.0:6443\"]\n",
                vec!["0.0.0.0:6443", "loopback", "line 1"],
            ),
            (
                "listen: [\"10.0.0.7:443\"]\n",
                vec!["10.0.0.7:443", "not a loopback"],
            ),
            ("listen: []\n", vec!["at least one"]),
            (
                "policy: {file: p.yaml, reloadInterval: 0s}\n",
                vec!["policy.reloadInterval", "greater than zero", "line 1"],
            ),
            (
                "approval:\n  poll: 0ms\n",
                vec!["approval.poll", "greater than zero", "line 2"],
            ),
            (
                "upstream:\n  responseTimeout: 0s\n",
                vec!["upstream.responseTimeout", "greater than zero", "line 2"],
            ),
            (
                "upstream:\n  unreadTimeout: 0s\n",
                vec!["upstream.unreadTimeout", "greater than zero", "line 2"],
            ),
            (
                "tls: {certFile: a, keyFile: b, handshakeTimeout: 0s}\n",
                vec!["tls.handshakeTimeout", "greater than zero"],
            ),
            (
                "audit:\n  otlp: {endpoint: \"http://127.0.0.1:4317\", timeout: 0s}\n",
                vec!["audit.otlp.timeout", "greater than zero", "line 2"],
            ),
            (
                "upstream:\n  connectTimeout: 5 parsecs\n",
                vec!["invalid duration", "line 2"],
            ),
            (
                "upstream:\n  inCluster: {}\n  kubeconfig: {}\n",
                vec!["not both", "line 3"],
            ),
            ("tls:\n  certFile: a\n", vec!["keyFile"]),
            (
                "audit:\n  maxSize: 10 parsecs\n",
                vec!["invalid size", "line 2"],
            ),
            (
                "audit:\n  overflow: shrug\n",
                vec!["unknown variant", "block", "drop"],
            ),
            (
                "audit:\n  fsync: sometimes\n",
                vec!["unknown variant", "interval"],
            ),
            (
                "listen: [127.0.0.1:6443]\nmaxStreamsPerCaller: 0\n",
                vec!["maxStreamsPerCaller: must be at least 1", "line 2"],
            ),
            (
                "listen: [127.0.0.1:6443]\nmaxRequestsPerCaller: 0\n",
                vec!["maxRequestsPerCaller: must be at least 1", "line 2"],
            ),
        ];
        for (text, words) in cases {
            let err = parse(text).expect_err(text).to_string();
            for w in words {
                assert!(err.contains(w), "{text:?}: {err:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn accepts_any_loopback_port_including_443() {
        let c = parse("listen: [\"127.0.0.1:443\", \"[::1]:6443\", \"127.0.0.2:8443\"]\n").unwrap();
        assert_eq!(c.listen.len(), 3);
    }

    #[test]
    fn byte_sizes() {
        let cases = [
            ("1048576", Some(1 << 20)),
            ("512Ki", Some(512 << 10)),
            ("100Mi", Some(100 << 20)),
            ("1Gi", Some(1 << 30)),
            ("10MB", Some(10_000_000)),
            ("10 Mi", Some(10 << 20)),
            ("10Xi", None),
            ("Mi", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_byte_size(text), want, "{text}");
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(Duration::from_millis(500))),
            ("5s", Some(Duration::from_secs(5))),
            ("5", Some(Duration::from_secs(5))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("5x", None),
            ("", None),
            ("-1s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), want, "{text}");
        }
    }
}
