//! The controller: in every namespace labelled `chaperone.dev/inject=enabled`, keeps the
//! objects injected pods mount — the `chaperone-ca` ConfigMap (`ca.crt`), the
//! `chaperone-proxy` ConfigMap (`config.yaml`) and the `chaperone-proxy-tls` Secret (the
//! proxy's serving certificate, renewed at two thirds of its lifetime); and deletes the
//! namespace's AccessRequests once past their retention (`crate::retention`).
//!
//! It watches Namespaces only: reading ConfigMaps and Secrets cluster-wide would make the
//! injector able to read every Secret. It reads its three objects by name, and requeues
//! each namespace before its certificate is due.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource};
use time::OffsetDateTime;

use crate::config::{Config, INJECT_LABEL, INJECT_LABEL_VALUE};
use crate::pki;

/// Label on every object the injector writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "chaperone-injector");
/// Annotations on issued certificate Secrets: validity and names, so renewal needs no
/// X.509 parser.
pub const ANNOTATION_NOT_BEFORE: &str = "chaperone.dev/not-before";
pub const ANNOTATION_NOT_AFTER: &str = "chaperone.dev/not-after";
pub const ANNOTATION_NAMES: &str = "chaperone.dev/names";
/// Bounds on how long a namespace waits for its next reconcile: drift (a deleted or
/// edited object) is repaired within the upper bound.
const REQUEUE_MIN: Duration = Duration::from_secs(60);
const REQUEUE_MAX: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("namespace object has no name")]
    NoName,
    #[error("failed to read {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write {kind} {namespace}/{name}: {source}")]
    Write {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to issue the proxy certificate for namespace {namespace}: {source}")]
    Issue {
        namespace: String,
        #[source]
        source: pki::Error,
    },
}

/// What `reconcile` needs: the API, the config, and the proxy CA (loaded at startup).
pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub ca: pki::Authority,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    let selector = format!("{INJECT_LABEL}={INJECT_LABEL_VALUE}");
    Controller::new(namespaces, watcher::Config::default().labels(&selector))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((ns, _)) => tracing::debug!(namespace = %ns.name, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// Brings one labelled namespace's objects to their desired state.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ns.metadata.name.clone().ok_or(Error::NoName)?;
    if ns.metadata.deletion_timestamp.is_some() || namespace == ctx.config.namespace {
        return Ok(Action::await_change());
    }
    let config = &ctx.config;
    let now = OffsetDateTime::now_utc();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    for desired in [
        ca_config_map(&namespace, &ctx.ca.cert_pem, config),
        proxy_config_map(&namespace, config),
    ] {
        let existing = read(&config_maps, &desired).await?;
        if existing.as_ref().map(|e| (&e.data, managed(e))) != Some((&desired.data, true)) {
            write(&config_maps, desired, existing).await?;
        }
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let names = proxy_names(config);
    let template = Secret {
        metadata: meta(&namespace, &config.names.proxy_tls_secret, BTreeMap::new()),
        ..Default::default()
    };
    let existing = read(&secrets, &template).await?;
    let renew = match leaf_plan(existing.as_ref(), &ctx.ca.cert_pem, &names, now) {
        Plan::Keep { renew_at } => renew_at,
        Plan::Issue(reason) => {
            let issued = ctx
                .ca
                .issue_server(&names, config.leaf_days, now)
                .map_err(|source| Error::Issue {
                    namespace: namespace.clone(),
                    source,
                })?;
            let desired = tls_secret(
                &namespace,
                &config.names.proxy_tls_secret,
                &issued,
                &ctx.ca.cert_pem,
                &names,
            );
            write(&secrets, desired, existing).await?;
            tracing::info!(%namespace, reason, "issued proxy certificate");
            pki::renew_at(issued.not_before, issued.not_after)
        }
    };
    // Not a reason to retry the namespace sooner: its objects are in place, and the
    // next look tries again.
    let retention = config.access_requests.retention();
    let next = match crate::retention::sweep(&ctx.client, &namespace, &retention, now).await {
        Ok(next) => next,
        Err(error) => {
            tracing::warn!(%namespace, %error, "could not delete AccessRequests past their retention");
            None
        }
    };
    let due = next.map_or(renew, |n| n.min(renew));
    Ok(Action::requeue(requeue_after(due, now)))
}

/// Retries a failed namespace after a short pause; the error is logged by `run`.
pub fn error_policy(_ns: Arc<Namespace>, error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(pause(error))
}

fn pause(error: &Error) -> Duration {
    match error {
        // Cannot happen for an object read from the API; do not spin on it.
        Error::NoName => Duration::from_secs(3600),
        // A conflict with the other replica, an API hiccup: soon.
        Error::Read { .. } | Error::Write { .. } | Error::Issue { .. } => Duration::from_secs(15),
    }
}

/// What to do with a namespace's serving-certificate Secret.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// It is current; look again at `renew_at`.
    Keep { renew_at: OffsetDateTime },
    /// Issue a new certificate, for this reason.
    Issue(&'static str),
}

/// Decides whether `existing` still serves: present, signed by the current CA, for the
/// wanted names, and not yet at two thirds of its lifetime.
pub fn leaf_plan(
    existing: Option<&Secret>,
    ca_pem: &str,
    names: &[String],
    now: OffsetDateTime,
) -> Plan {
    let Some(secret) = existing else {
        return Plan::Issue("missing");
    };
    let data = secret.data.clone().unwrap_or_default();
    let has = |k: &str| data.get(k).is_some_and(|v| !v.0.is_empty());
    if !has("tls.crt") || !has("tls.key") {
        return Plan::Issue("incomplete");
    }
    if data.get("ca.crt").map(|v| v.0.as_slice()) != Some(ca_pem.as_bytes()) {
        return Plan::Issue("signed by another CA");
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(ANNOTATION_NAMES) != Some(&names.join(",")) {
        return Plan::Issue("names changed");
    }
    let time = |k: &str| annotations.get(k).and_then(|v| pki::parse_time(v));
    let (Some(not_before), Some(not_after)) =
        (time(ANNOTATION_NOT_BEFORE), time(ANNOTATION_NOT_AFTER))
    else {
        return Plan::Issue("validity unknown");
    };
    let renew_at = pki::renew_at(not_before, not_after);
    if now >= renew_at {
        return Plan::Issue("due for renewal");
    }
    Plan::Keep { renew_at }
}

/// How long until the namespace is looked at again.
pub fn requeue_after(renew_at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    let until = Duration::try_from(renew_at - now).unwrap_or(Duration::ZERO);
    until.clamp(REQUEUE_MIN, REQUEUE_MAX)
}

/// The names the proxy's serving certificate carries: loopback for clients that follow
/// `KUBERNETES_SERVICE_HOST`, the `kubernetes` Service names for those that do not.
pub fn proxy_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = ["127.0.0.1", "::1", "localhost"].map(String::from).to_vec();
    names.extend(crate::mutate::service_names(config));
    names
}

/// `chaperone-ca`: the CA app containers trust, as `ca.crt` in their token volume.
pub fn ca_config_map(namespace: &str, ca_pem: &str, config: &Config) -> ConfigMap {
    ConfigMap {
        metadata: meta(namespace, &config.names.ca_config_map, BTreeMap::new()),
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// `chaperone-proxy`: the proxy's `config.yaml`.
pub fn proxy_config_map(namespace: &str, config: &Config) -> ConfigMap {
    ConfigMap {
        metadata: meta(namespace, &config.names.proxy_config_map, BTreeMap::new()),
        data: Some(BTreeMap::from([(
            "config.yaml".to_string(),
            crate::proxy_config::render(config),
        )])),
        ..Default::default()
    }
}

/// A `kubernetes.io/tls` Secret for `issued`, with the CA and the annotations
/// `leaf_plan` reads.
pub fn tls_secret(
    namespace: &str,
    name: &str,
    issued: &pki::Issued,
    ca_pem: &str,
    names: &[String],
) -> Secret {
    let annotations = BTreeMap::from([
        (
            ANNOTATION_NOT_BEFORE.to_string(),
            pki::format_time(issued.not_before),
        ),
        (
            ANNOTATION_NOT_AFTER.to_string(),
            pki::format_time(issued.not_after),
        ),
        (ANNOTATION_NAMES.to_string(), names.join(",")),
    ]);
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: meta(namespace, name, annotations),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), bytes(&issued.cert_pem)),
            ("tls.key".to_string(), bytes(&issued.key_pem)),
            ("ca.crt".to_string(), bytes(ca_pem)),
        ])),
        ..Default::default()
    }
}

fn meta(namespace: &str, name: &str, annotations: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    }
}

fn managed<K: Resource>(k: &K) -> bool {
    k.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

fn describe<K: Resource<DynamicType = ()>>(k: &K) -> (&'static str, String, String) {
    let kind = if K::kind(&()) == "Secret" {
        "Secret"
    } else {
        "ConfigMap"
    };
    let m = k.meta();
    (
        kind,
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

async fn read<K>(api: &Api<K>, desired: &K) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (kind, namespace, name) = describe(desired);
    api.get_opt(&name).await.map_err(|source| Error::Read {
        kind,
        namespace,
        name,
        source,
    })
}

/// Creates `desired`, or replaces `existing` with it (guarded by its resourceVersion, so
/// a concurrent writer makes this fail and retry rather than overwrite).
async fn write<K>(api: &Api<K>, mut desired: K, existing: Option<K>) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (kind, namespace, name) = describe(&desired);
    let pp = PostParams {
        field_manager: Some(MANAGED_BY.1.into()),
        ..Default::default()
    };
    let result = match existing {
        None => api.create(&pp, &desired).await,
        Some(e) => {
            desired.meta_mut().resource_version = e.meta().resource_version.clone();
            api.replace(&name, &pp, &desired).await
        }
    };
    result.map(|_| ()).map_err(|source| Error::Write {
        kind,
        namespace,
        name,
        source,
    })
}

#[cfg(test)]
mod tests;
