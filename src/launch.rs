//! Starts a configured proxy or sandbox on its listeners and hands back a handle to
//! stop it: shared by the CLI and the tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin::{Admin, Ready};
use crate::approval::Approvals;
use crate::audit::{self, Recorder};
use crate::config::{self, Config};
use crate::identity::{self, Authenticator};
use crate::metrics::Metrics;
use crate::pipeline::Proxy;
use crate::policy::{self, Policies};
use crate::sandbox::Sandbox;
use crate::server::{self, Handler, Shutdown};
use crate::tls::{self, ReloadingCert};
use crate::upstream::{self, ClusterKeys, Upstream};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the config has no tls section: set tls.certFile and tls.keyFile")]
    NoTls,
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error(transparent)]
    Server(#[from] server::Error),
    #[error(transparent)]
    Audit(#[from] audit::Error),
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error("approval.notify: {0}")]
    Notify(#[from] crate::approval::notify::Error),
    #[error(
        "identity.issuers[{index}]: no issuer set, and none could be read from the proxy's \
         token {token_file}; set `issuer:` to the cluster's --service-account-issuer"
    )]
    ClusterIssuer { index: usize, token_file: PathBuf },
    #[error("{0} {1:?} is not NAME (in POD_NAMESPACE, which must then be set) or NAMESPACE/NAME")]
    OwnObjectNamespace(&'static str, String),
    #[error(
        "identity.issuers[{0}].ownPodOnly needs the pod's uid in POD_UID (the injector sets \
         it from the downward API: fieldRef metadata.uid)"
    )]
    OwnPodUnknown(usize),
}

/// A running server: its bound addresses and the means to stop it.
pub struct Running {
    /// The API (or sandbox) addresses actually bound, in config order.
    pub addrs: Vec<SocketAddr>,
    /// The admin address, for a proxy.
    pub admin: Option<SocketAddr>,
    pub ready: Ready,
    /// A proxy's way to the API server (`chaperone local` checks its credential).
    pub upstream: Option<Arc<crate::upstream::Upstream>>,
    /// The proxy's audit recorder, drained on stop within the grace period.
    audit: Option<(Arc<Recorder>, Duration)>,
    shutdown: Shutdown,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting, lets open requests finish within the grace period, and returns
    /// when every listener has closed.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        while self.tasks.join_next().await.is_some() {}
        if let Some((audit, grace)) = self.audit.take() {
            audit.close(grace).await;
        }
    }

    /// Returns when any listener task ends (it should not, before `stop`).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

/// Starts the proxy described by `config`; `env` reads the process environment.
pub async fn proxy(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Running, Error> {
    let tls_cfg = config.tls.as_ref().ok_or(Error::NoTls)?;
    let cert = Arc::new(ReloadingCert::load(&tls_cfg.cert_file, &tls_cfg.key_file)?);
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(cert)?));
    let upstream = Arc::new(Upstream::from_config(&config.upstream, env)?);
    tracing::info!(server = upstream.server(), "upstream configured");
    let mut identity = cluster_issuer_named(config)?;
    for (i, issuer) in identity.issuers.iter_mut().enumerate() {
        if issuer.own_pod_only {
            let uid = env("POD_UID").filter(|u| !u.is_empty());
            issuer.own_pod_uid = Some(uid.ok_or(Error::OwnPodUnknown(i))?);
        }
    }
    let authenticator =
        Authenticator::new(&identity, Some(Arc::new(ClusterKeys(upstream.clone()))))?;
    let policies = Arc::new(match &config.policy {
        Some(source) => {
            let watched = policy::Watched::open(&source.file);
            match (watched.current(), watched.last_error()) {
                (Some(p), _) => {
                    tracing::info!(policy = p.name(), file = %source.file.display(), "policy loaded")
                }
                (None, why) => {
                    tracing::error!(file = %source.file.display(), error = why.as_deref().unwrap_or("not read"),
                    "no policy loaded: every request is refused until a valid policy appears")
                }
            }
            // The task ends when the last `Watched` clone is dropped with the proxy.
            watched.spawn(source.reload_interval);
            let own = own_objects(source, env)?;
            for own in &own {
                tracing::info!(resource = own.resource, namespace = %own.namespace,
                    name = %own.name, "{} cannot be changed through the proxy", own.what);
            }
            Policies::watched(watched).protecting(own)
        }
        None => {
            tracing::error!("the config names no policy file: every request is refused");
            Policies::unconfigured()
        }
    });
    let audit = Arc::new(Recorder::start(&config.audit.settings(env))?);
    let metrics = Arc::new(Metrics::default());
    let upstream_for_admin = upstream.clone();
    let approval_namespace = match config.approval.namespace.clone() {
        Some(ns) => ns,
        None => env("POD_NAMESPACE").unwrap_or_else(|| {
            tracing::warn!(
                "neither approval.namespace nor POD_NAMESPACE is set: held requests' \
                 AccessRequests go to namespace default, and whoever may approve there \
                 decides them"
            );
            "default".to_owned()
        }),
    };
    let approvals = Arc::new(Approvals::new(
        upstream.clone(),
        approval_namespace,
        config.approval.poll.unwrap_or(Duration::from_millis(500)),
        crate::approval::notify::Notifier::new(&config.approval.notify)?,
        config.approval.max_held_per_caller,
    ));
    let approvals_for_admin = approvals.clone();
    let proxy = Arc::new(
        Proxy::new(
            upstream,
            authenticator.clone(),
            policies.clone(),
            approvals,
            config.upstream.identity,
            audit.clone(),
            metrics.clone(),
        )
        .with_max_streams_per_caller(config.max_streams_per_caller)
        .with_max_requests_per_caller(config.max_requests_per_caller),
    );
    let streams = proxy.streams();
    let requests = proxy.requests();
    let handler = move |req, conn| {
        let proxy = proxy.clone();
        async move { proxy.handle(req, conn).await }
    };
    raise_open_files();
    let mut running = start(
        &config.listen,
        Some((acceptor, tls_cfg.handshake_timeout)),
        config.header_timeout,
        config.max_connections,
        handler,
        config.upstream.shutdown_grace,
    )
    .await?;

    let admin = Admin {
        ready: running.ready.clone(),
        metrics,
        audit: Some(audit.clone()),
        checks: vec![
            Arc::new(move || authenticator.not_ready()),
            {
                let p = policies.clone();
                Arc::new(move || p.not_ready())
            },
            {
                let a = audit.clone();
                Arc::new(move || a.not_ready())
            },
        ],
        notes: vec![
            {
                let p = policies.clone();
                Arc::new(move || p.warning())
            },
            {
                let u = upstream_for_admin.clone();
                Arc::new(move || u.unreachable().map(|why| format!("upstream: {why}")))
            },
        ],
        policy_counts: {
            let p = policies.clone();
            Some(Arc::new(move || p.counts()))
        },
        approvals_pending: {
            let a = approvals_for_admin.clone();
            Some(Arc::new(move || a.waiting()))
        },
        approvals_watch: {
            let a = approvals_for_admin;
            Some(Arc::new(move || u64::from(a.watch_synced())))
        },
        streams: Some(streams),
        requests: Some(requests),
    };
    let admin = Arc::new(admin);
    let admin_handler = move |req: http::Request<_>, conn: server::Conn| {
        std::future::ready(admin.respond(&req, conn.peer.ip().to_canonical().is_loopback()))
    };
    let admin_listener = server::bind(&[config.admin.listen]).await?;
    let admin_connections =
        server::Connections::new(ADMIN_MAX_CONNECTIONS).per_peer(ADMIN_MAX_PER_PEER);
    for listener in admin_listener {
        running.admin = listener.local_addr().ok();
        running.tasks.spawn(server::serve(
            listener,
            None,
            config.header_timeout.min(ADMIN_HEADER_TIMEOUT),
            admin_connections.clone(),
            admin_handler.clone(),
            running.shutdown.clone(),
            Duration::from_secs(1),
        ));
    }
    running.audit = Some((audit, config.upstream.shutdown_grace));
    running.upstream = Some(upstream_for_admin);
    running.ready.set();
    tracing::info!(listen = ?running.addrs, admin = ?running.admin, "chaperone proxy serving");
    Ok(running)
}

/// The admin port's bounds on open connections, in all and from one address, and how
/// long one may take to send its request: probes and scrapes need a few connections
/// and a few milliseconds. It listens on the pod's IP, where anyone in the cluster may
/// connect, and serves one request per connection: to keep the kubelet's probes out, a
/// peer would need connections from more than a hundred addresses at once.
const ADMIN_MAX_CONNECTIONS: usize = 1024;
const ADMIN_MAX_PER_PEER: usize = 8;
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Raises the soft limit on open files to the hard one, as Go programs (the API server,
/// client-go's) do by themselves: a container's soft limit may be 1,024, and every
/// connection, upstream stream and file the proxy holds needs one. The connection
/// bounds keep the proxy within it.
fn raise_open_files() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else {
        return;
    };
    // No hard limit: as far as the kernel's own default (`fs.nr_open`) goes.
    let to = limit.maximum.unwrap_or(1 << 20);
    if to <= soft {
        return;
    }
    limit.current = Some(to);
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => tracing::debug!(from = soft, to, "raised the open files limit"),
        Err(error) => tracing::warn!(%error, soft, "could not raise the open files limit"),
    }
}

/// The objects the proxy runs with, which no caller may change through it: the
/// ConfigMap the policy is mounted from (`policy.configMap`, else
/// `CHAPERONE_POLICY_CONFIGMAP`), and those the injector names in the proxy's
/// environment: its config's ConfigMap (`CHAPERONE_CONFIG_CONFIGMAP`), its CA's
/// (`CHAPERONE_CA_CONFIGMAP`) and its serving certificate's Secret
/// (`CHAPERONE_TLS_SECRET`). A bare `NAME` is in `POD_NAMESPACE`.
fn own_objects(
    source: &config::PolicySource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<policy::OwnObject>, Error> {
    let named = [
        (
            source
                .config_map
                .clone()
                .or_else(|| env("CHAPERONE_POLICY_CONFIGMAP")),
            "policy.configMap",
            "configmaps",
            "the ConfigMap chaperone's policy comes from",
        ),
        (
            env("CHAPERONE_CONFIG_CONFIGMAP"),
            "CHAPERONE_CONFIG_CONFIGMAP",
            "configmaps",
            "the ConfigMap chaperone's config comes from",
        ),
        (
            env("CHAPERONE_CA_CONFIGMAP"),
            "CHAPERONE_CA_CONFIGMAP",
            "configmaps",
            "the ConfigMap of the CA chaperone's callers trust",
        ),
        (
            env("CHAPERONE_TLS_SECRET"),
            "CHAPERONE_TLS_SECRET",
            "secrets",
            "the Secret of chaperone's serving certificate",
        ),
    ];
    let mut own = Vec::new();
    for (value, origin, resource, what) in named {
        let Some(value) = value.filter(|n| !n.is_empty()) else {
            continue;
        };
        let (namespace, name) = match value.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            None => match env("POD_NAMESPACE").filter(|ns| !ns.is_empty()) {
                Some(ns) => (ns, value),
                None => return Err(Error::OwnObjectNamespace(origin, value)),
            },
        };
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(Error::OwnObjectNamespace(
                origin,
                format!("{namespace}/{name}"),
            ));
        }
        own.push(policy::OwnObject {
            resource,
            namespace,
            name,
            what,
        });
    }
    Ok(own)
}

/// The identity config with every `cluster: true` issuer named: one left unnamed takes
/// the `iss` of the proxy's own mounted service-account token.
fn cluster_issuer_named(config: &Config) -> Result<identity::config::Identity, Error> {
    let mut identity = config.identity.clone();
    for (i, issuer) in identity.issuers.iter_mut().enumerate() {
        if !issuer.cluster || !issuer.issuer.is_empty() {
            continue;
        }
        let token_file = config
            .upstream
            .in_cluster
            .as_ref()
            .and_then(|ic| ic.token_file.clone())
            .unwrap_or_else(|| config::DEFAULT_TOKEN_FILE.into());
        let named = std::fs::read_to_string(&token_file)
            .ok()
            .and_then(|t| upstream::unverified_issuer(&t));
        issuer.issuer = named.ok_or_else(|| Error::ClusterIssuer {
            index: i,
            token_file: token_file.clone(),
        })?;
        tracing::info!(issuer = %issuer.issuer, "cluster issuer read from the proxy's token");
    }
    Ok(identity)
}

/// Starts the in-memory API server on `addrs` with the given serving certificate.
pub async fn sandbox(
    sandbox: Sandbox,
    addrs: &[SocketAddr],
    cert_file: &Path,
    key_file: &Path,
) -> Result<Running, Error> {
    let cert = Arc::new(ReloadingCert::load(cert_file, key_file)?);
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(cert)?));
    let handler = move |req, _| {
        let sandbox = sandbox.clone();
        async move { sandbox.handle(req).await }
    };
    let running = start(
        addrs,
        Some((acceptor, config::DEFAULT_HANDSHAKE_TIMEOUT)),
        config::DEFAULT_HEADER_TIMEOUT,
        config::DEFAULT_MAX_CONNECTIONS,
        handler,
        Duration::from_secs(1),
    )
    .await?;
    running.ready.set();
    Ok(running)
}

async fn start(
    addrs: &[SocketAddr],
    tls: Option<(TlsAcceptor, Duration)>,
    header_timeout: Duration,
    max_connections: usize,
    handler: impl Handler,
    grace: Duration,
) -> Result<Running, Error> {
    // One bound across the listeners: `maxConnections` is what they hold together.
    let connections = server::Connections::new(max_connections);
    let listeners = server::bind(addrs).await?;
    let shutdown = Shutdown::default();
    let mut tasks = JoinSet::new();
    let mut bound = Vec::with_capacity(listeners.len());
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            bound.push(addr);
        }
        tasks.spawn(server::serve(
            listener,
            tls.clone(),
            header_timeout,
            connections.clone(),
            handler.clone(),
            shutdown.clone(),
            grace,
        ));
    }
    Ok(Running {
        addrs: bound,
        admin: None,
        ready: Ready::default(),
        upstream: None,
        audit: None,
        shutdown,
        tasks,
    })
}

/// Writes `contents` to `path` readable by the owner only (keys, tokens, kubeconfigs).
/// A file already there is narrowed to the owner before anything is written to it (the
/// mode given at open applies only to a file it creates).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        let Some(hard) = limit.maximum else {
            return;
        };
        // A soft limit below the hard one, as a container runtime may set it.
        limit.current = Some((hard / 2).max(4096).min(hard));
        setrlimit(Resource::Nofile, limit).unwrap();
        raise_open_files();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }
    use std::os::unix::fs::PermissionsExt;

    /// The objects the proxy runs with, as the injector names them; a name that names
    /// nothing (an empty namespace or name) stops the start, as a bare name without
    /// POD_NAMESPACE does.
    #[test]
    fn own_objects_are_named_in_full_or_not_at_all() {
        let source = config::PolicySource {
            file: "policy.yaml".into(),
            reload_interval: Duration::from_secs(1),
            config_map: None,
        };
        let with = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            own_objects(&source, &move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        let own = with(&[
            ("POD_NAMESPACE", "agents"),
            ("CHAPERONE_POLICY_CONFIGMAP", "chaperone-policy"),
            ("CHAPERONE_CONFIG_CONFIGMAP", "chaperone-proxy"),
            ("CHAPERONE_TLS_SECRET", "other/chaperone-proxy-tls"),
        ])
        .unwrap();
        let named: Vec<_> = own
            .iter()
            .map(|o| (o.resource, o.namespace.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("configmaps", "agents", "chaperone-policy"),
                ("configmaps", "agents", "chaperone-proxy"),
                ("secrets", "other", "chaperone-proxy-tls"),
            ]
        );
        for value in ["ns/", "/name", "a/b/c"] {
            assert!(
                with(&[("CHAPERONE_CONFIG_CONFIGMAP", value)]).is_err(),
                "{value}"
            );
        }
        assert!(with(&[("CHAPERONE_CA_CONFIGMAP", "chaperone-ca")]).is_err());
        assert!(with(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_private_file_is_the_owners_even_when_it_was_there_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "token: new").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "token: new");
        let fresh = dir.path().join("key.pem");
        write_private(&fresh, "key").unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
