//! Certificates kept in the injector's own namespace: the proxy CA (`chaperone-ca`),
//! and the webhook's CA and serving certificate (`chaperone-injector-tls`), whose CA the
//! MutatingWebhookConfiguration's `caBundle` carries. Or, with cert-manager, serving
//! files on disk.
//!
//! Both replicas run this. Creation is create-or-read (the loser of a race reads the
//! winner's), renewal is a replace guarded by resourceVersion, so they converge on one
//! CA and one serving certificate without leader election.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use time::OffsetDateTime;

use crate::config::Config;
use crate::controller::{self, Plan, MANAGED_BY};
use crate::{pki, tls};

const PROXY_CA_NAME: &str = "chaperone proxy CA";
const WEBHOOK_CA_NAME: &str = "chaperone-injector webhook CA";
/// How often a replica re-reads the serving certificate (another replica may have
/// renewed it) and re-checks `caBundle`.
const RECHECK: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read Secret {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write Secret {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} has no usable {key}; delete it to have it re-created")]
    Corrupt {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error(transparent)]
    Issue(#[from] pki::Error),
    #[error("unusable serving certificate: {0}")]
    Tls(#[from] tls::Error),
    #[error("failed to patch caBundle of MutatingWebhookConfiguration {name}: {source}")]
    PatchWebhook {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A serving certificate and key, the CA that signed it, and when to renew it.
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub renew_at: Option<OffsetDateTime>,
}

/// The proxy CA, created on first start.
pub async fn proxy_ca(client: &Client, config: &Config) -> Result<pki::Authority> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let name = &config.names.ca_secret;
    let secret = get_or_create(&api, config, name, || {
        let ca =
            pki::Authority::generate(PROXY_CA_NAME, config.ca_days, OffsetDateTime::now_utc())?;
        Ok(secret(
            config,
            name,
            &[("tls.crt", &ca.cert_pem), ("tls.key", &ca.key_pem)],
            BTreeMap::new(),
        ))
    })
    .await?;
    let get = |key| text(&secret, key).ok_or_else(|| corrupt(config, name, key));
    Ok(pki::Authority::from_pem(
        PROXY_CA_NAME,
        &get("tls.crt")?,
        &get("tls.key")?,
    )?)
}

/// The names the API server dials the webhook by.
pub fn webhook_names(config: &Config) -> Vec<String> {
    let (s, ns) = (&config.service, &config.namespace);
    vec![
        format!("{s}.{ns}.svc"),
        format!("{s}.{ns}.svc.{}", config.cluster_domain),
        format!("{s}.{ns}"),
        s.clone(),
    ]
}

/// The webhook's serving certificate: created on first start, renewed when due.
pub async fn webhook_serving(client: &Client, config: &Config) -> Result<Serving> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let name = &config.names.webhook_secret;
    let names = webhook_names(config);
    let now = OffsetDateTime::now_utc();
    let mut current = get_or_create(&api, config, name, || {
        let ca = pki::Authority::generate(WEBHOOK_CA_NAME, config.ca_days, now)?;
        let leaf = ca.issue_server(&names, config.leaf_days, now)?;
        Ok(webhook_secret(config, &ca, &leaf, &names))
    })
    .await?;
    let get = |s: &Secret, key| text(s, key).ok_or_else(|| corrupt(config, name, key));
    let ca_pem = get(&current, "ca.crt")?;
    if let Plan::Issue(reason) = controller::leaf_plan(Some(&current), &ca_pem, &names, now) {
        let ca = pki::Authority::from_pem(WEBHOOK_CA_NAME, &ca_pem, &get(&current, "ca.key")?)?;
        let leaf = ca.issue_server(&names, config.leaf_days, now)?;
        let mut desired = webhook_secret(config, &ca, &leaf, &names);
        desired.metadata.resource_version = current.metadata.resource_version.clone();
        current = match api.replace(name, &PostParams::default(), &desired).await {
            Ok(s) => {
                tracing::info!(reason, "renewed the webhook serving certificate");
                s
            }
            // The other replica renewed it first: use theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .get(name)
                .await
                .map_err(|source| read_err(config, name, source))?,
            Err(source) => return Err(write_err(config, name, source)),
        };
    }
    let annotations = current.metadata.annotations.clone().unwrap_or_default();
    let time = |k| annotations.get(k).and_then(|v: &String| pki::parse_time(v));
    Ok(Serving {
        cert_pem: get(&current, "tls.crt")?,
        key_pem: get(&current, "tls.key")?,
        ca_pem: get(&current, "ca.crt")?,
        renew_at: time(controller::ANNOTATION_NOT_BEFORE)
            .zip(time(controller::ANNOTATION_NOT_AFTER))
            .map(|(b, a)| pki::renew_at(b, a)),
    })
}

fn webhook_secret(
    config: &Config,
    ca: &pki::Authority,
    leaf: &pki::Issued,
    names: &[String],
) -> Secret {
    let annotations = BTreeMap::from([
        (
            controller::ANNOTATION_NOT_BEFORE.to_string(),
            pki::format_time(leaf.not_before),
        ),
        (
            controller::ANNOTATION_NOT_AFTER.to_string(),
            pki::format_time(leaf.not_after),
        ),
        (controller::ANNOTATION_NAMES.to_string(), names.join(",")),
    ]);
    secret(
        config,
        &config.names.webhook_secret,
        &[
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
            ("ca.crt", &ca.cert_pem),
            ("ca.key", &ca.key_pem),
        ],
        annotations,
    )
}

/// Sets `caBundle` on every webhook of the configuration that calls our Service.
/// Returns whether anything changed. A missing configuration is not an error (it may
/// not be applied yet); the next check patches it.
pub async fn patch_ca_bundle(client: &Client, config: &Config, ca_pem: &str) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &config.webhook_configuration;
    let err = |source| Error::PatchWebhook {
        name: name.clone(),
        source,
    };
    let Some(mwc) = api.get_opt(name).await.map_err(err)? else {
        tracing::warn!(%name, "MutatingWebhookConfiguration not found; caBundle not set");
        return Ok(false);
    };
    let ops = ca_bundle_ops(&mwc, config, ca_pem);
    if ops.is_empty() {
        return Ok(false);
    }
    let patch = Patch::<()>::Json(json_patch::Patch(ops));
    api.patch(name, &PatchParams::default(), &patch)
        .await
        .map_err(err)?;
    tracing::info!(%name, "patched caBundle");
    Ok(true)
}

/// The JSON patch that sets `caBundle` where it differs, each guarded by a `test` of
/// the webhook's name so a concurrent reorder fails instead of patching the wrong one.
pub fn ca_bundle_ops(
    mwc: &MutatingWebhookConfiguration,
    config: &Config,
    ca_pem: &str,
) -> Vec<PatchOperation> {
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let mut ops = Vec::new();
    for (i, w) in mwc.webhooks.iter().flatten().enumerate() {
        let ours = w
            .client_config
            .service
            .as_ref()
            .is_some_and(|s| s.name == config.service && s.namespace == config.namespace);
        if !ours || w.client_config.ca_bundle.as_ref() == Some(&want) {
            continue;
        }
        let i = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", &i, "name"]),
            value: serde_json::Value::String(w.name.clone()),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", &i, "clientConfig", "caBundle"]),
            value: serde_json::to_value(&want).unwrap_or_default(),
        }));
    }
    ops
}

/// Keeps the served certificate and `caBundle` current until `shutdown` completes.
pub async fn maintain(
    client: Client,
    config: Arc<Config>,
    resolver: Arc<tls::Resolver>,
    mut served: Serving,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return,
        }
        let round = async {
            let now = webhook_serving(&client, &config).await?;
            if now != served {
                resolver.set(&now.cert_pem, &now.key_pem)?;
                tracing::info!("serving a new webhook certificate");
                served = now;
            }
            patch_ca_bundle(&client, &config, &served.ca_pem).await?;
            Ok::<_, Error>(())
        };
        wait = match round.await {
            Ok(()) => next_check(served.renew_at, OffsetDateTime::now_utc()),
            Err(error) => {
                tracing::warn!(%error, "webhook certificate check failed");
                RETRY
            }
        };
    }
}

fn next_check(renew_at: Option<OffsetDateTime>, now: OffsetDateTime) -> Duration {
    let until = renew_at
        .and_then(|r| Duration::try_from(r - now).ok())
        .unwrap_or(Duration::ZERO);
    until.clamp(Duration::from_secs(1), RECHECK)
}

/// cert-manager (or any other issuer): `tls.crt` and `tls.key` in `dir`.
pub fn read_files(dir: &Path) -> Result<(String, String)> {
    let read = |f: &str| {
        let path = dir.join(f);
        std::fs::read_to_string(&path).map_err(|source| Error::File { path, source })
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

/// Re-reads the files in `dir` and serves them when they change (the kubelet updates a
/// mounted Secret in place when cert-manager renews it).
pub async fn watch_files(
    dir: PathBuf,
    resolver: Arc<tls::Resolver>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last = read_files(&dir).ok();
    loop {
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = &mut shutdown => return,
        }
        match read_files(&dir) {
            Ok(now) if Some(&now) != last.as_ref() => match resolver.set(&now.0, &now.1) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "serving a new certificate from files");
                    last = Some(now);
                }
                Err(error) => tracing::warn!(%error, "new certificate files are unusable"),
            },
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read certificate files"),
        }
    }
}

async fn get_or_create(
    api: &Api<Secret>,
    config: &Config,
    name: &str,
    make: impl FnOnce() -> Result<Secret>,
) -> Result<Secret> {
    if let Some(s) = api
        .get_opt(name)
        .await
        .map_err(|e| read_err(config, name, e))?
    {
        return Ok(s);
    }
    match api.create(&PostParams::default(), &make()?).await {
        Ok(s) => {
            tracing::info!(secret = %name, "created");
            Ok(s)
        }
        // Another replica created it between our read and our create.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.get(name).await.map_err(|e| read_err(config, name, e))
        }
        Err(e) => Err(write_err(config, name, e)),
    }
}

fn secret(
    config: &Config,
    name: &str,
    data: &[(&str, &str)],
    annotations: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(config.namespace.clone()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

fn corrupt(config: &Config, name: &str, key: &'static str) -> Error {
    Error::Corrupt {
        namespace: config.namespace.clone(),
        name: name.into(),
        key,
    }
}

fn read_err(config: &Config, name: &str, source: kube::Error) -> Error {
    Error::Read {
        namespace: config.namespace.clone(),
        name: name.into(),
        source,
    }
}

fn write_err(config: &Config, name: &str, source: kube::Error) -> Error {
    Error::Write {
        namespace: config.namespace.clone(),
        name: name.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ca_bundle_is_set_only_on_our_webhooks_and_only_when_it_differs() {
        let config = Config::default();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let b64 = serde_json::to_value(ByteString(pem.as_bytes().to_vec())).unwrap();
        let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "chaperone-injector"},
            "webhooks": [
                {"name": "other.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"service": {"name": "other", "namespace": "chaperone-system"}}},
                {"name": "inject.chaperone.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"service": {"name": "chaperone-injector", "namespace": "chaperone-system", "path": "/mutate"}}}
            ]
        }))
        .unwrap();
        let ops = ca_bundle_ops(&mwc, &config, pem);
        let patch = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "inject.chaperone.dev"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64}
            ])
        );
        let mut doc = serde_json::to_value(&mwc).unwrap();
        json_patch::patch(&mut doc, &ops).unwrap();
        let patched: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
        assert!(
            ca_bundle_ops(&patched, &config, pem).is_empty(),
            "idempotent"
        );
    }

    #[test]
    fn webhook_names_start_with_the_service_dns_name() {
        assert_eq!(
            webhook_names(&Config::default())[0],
            "chaperone-injector.chaperone-system.svc"
        );
    }

    #[test]
    fn the_next_check_is_bounded() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(next_check(None, now), Duration::from_secs(1));
        assert_eq!(
            next_check(Some(now + time::Duration::days(9)), now),
            RECHECK
        );
        assert_eq!(
            next_check(Some(now - time::Duration::days(1)), now),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn certificate_files_are_read_and_reported_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tls.crt"), "{err}");
        std::fs::write(dir.path().join("tls.crt"), "c").unwrap();
        std::fs::write(dir.path().join("tls.key"), "k").unwrap();
        assert_eq!(read_files(dir.path()).unwrap(), ("c".into(), "k".into()));
    }
}
