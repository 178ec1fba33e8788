//! The mutation: pod + namespace + config -> the JSON patch that injects the proxy.
//!
//! Pure and idempotent. Every step compares the pod with what it should be and emits
//! operations only for the difference, so mutating an injected pod yields an empty
//! patch, and a webhook reinvocation (`reinvocationPolicy: IfNeeded`) after another
//! webhook added a container fixes only that container.
//!
//! Operations address arrays by index; they are ordered so that no operation shifts an
//! index a later one relies on: edits inside existing containers first, appends and
//! inserts last.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HostAlias, Pod, PodSecurityContext, PodSpec, Sysctl, Volume, VolumeMount,
};
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::sidecar::{self, CONTAINER, VOLUME_API_ACCESS, VOLUME_UPSTREAM_TOKEN};

/// Pod annotation: `"false"` opts the pod out.
pub const ANNOTATION_INJECT: &str = "chaperone.dev/inject";
/// Pod annotation: the policy ConfigMap (default `chaperone-policy`).
pub const ANNOTATION_POLICY: &str = "chaperone.dev/policy";
/// Set by the injector: what it did, or why it did not.
pub const ANNOTATION_STATUS: &str = "chaperone.dev/status";
/// Set by the injector: the injector version that injected the pod.
pub const ANNOTATION_VERSION: &str = "chaperone.dev/injected-version";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub const STATUS_INJECTED: &str = "injected";
pub const STATUS_HOST_NETWORK: &str =
    "skipped: hostNetwork pods share the node's loopback, so the proxy would not be private to the pod";
pub const STATUS_OWN_NAMESPACE: &str =
    "skipped: the injector never injects into its own namespace or kube-system";

/// Prefix of the volume the ServiceAccount admission plugin adds before webhooks run.
const SA_VOLUME_PREFIX: &str = "kube-api-access-";
const LOOPBACK: &str = "127.0.0.1";
const PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid annotation {ANNOTATION_POLICY}={value:?}: not a ConfigMap name (lower-case DNS-1123 subdomain)")]
    PolicyName { value: String },
    #[error("pod already has a volume named {name:?}, which the injector needs; rename it or annotate the pod {ANNOTATION_INJECT}: \"false\"")]
    VolumeConflict { name: String },
    #[error("container name {CONTAINER:?} is reserved for the proxy the injector adds, and container {where_} is not it (its image, command, arguments, mounts or security context differ); rename it")]
    ReservedName { where_: String },
    #[error("container {container:?} mounts volume {volume:?}, which holds the proxy's credential or configuration; only the proxy may mount it")]
    ProxyVolume { container: String, volume: String },
    #[error("the pod sets {field}: its containers could read the proxy's credential through /proc; chaperone does not inject such a pod (annotate it {ANNOTATION_INJECT}: \"false\" to run it without the proxy)")]
    SharedProcesses { field: &'static str },
    #[error("the proxy container {where_} of an injected pod cannot be changed (its image, command, arguments, mounts or security context); delete and recreate the pod instead")]
    ProxyChanged { where_: String },
    #[error("ephemeral container {container:?} targets the proxy container: it would see the proxy's process and files")]
    EphemeralTarget { container: String },
    #[error("volume {volume:?} projects a service-account token for the API server (no audience, or one the API server accepts): an app container could call the API server with it, around the proxy; a pod in a chaperone namespace gets such a token only from the ServiceAccount admission plugin, which the injector swaps")]
    OwnToken { volume: String },
    #[error("{what}: it could read the node's files, which hold every pod's tokens, the proxy's included; chaperone does not inject such a pod")]
    HostAccess { what: String },
    #[error("the pod carries the proxy and its volumes, but volume {volume:?} is not as this injector makes it: it would run the proxy with another configuration, policy or credential")]
    ProxyVolumeChanged { volume: String },
    #[error("failed to serialize a patch value: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// The Status the admission response carries: the pod's fault is a 400, ours a 500.
    pub fn status(&self) -> kube::core::Status {
        let (code, reason) = match self {
            Error::PolicyName { .. }
            | Error::VolumeConflict { .. }
            | Error::ReservedName { .. }
            | Error::ProxyVolume { .. }
            | Error::SharedProcesses { .. }
            | Error::OwnToken { .. }
            | Error::HostAccess { .. }
            | Error::ProxyVolumeChanged { .. } => (400, "BadRequest"),
            Error::ProxyChanged { .. } | Error::EphemeralTarget { .. } => (403, "Forbidden"),
            Error::Serialize(_) => (500, "InternalError"),
        };
        kube::core::Status::failure(&format!("chaperone-injector: {self}"), reason).with_code(code)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The patch that injects the proxy into `pod`, created in `namespace`.
pub fn mutate(pod: &Pod, namespace: &str, config: &Config) -> Result<Patch> {
    let mut ops = Ops::default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(ops.into_patch());
    };
    if annotations.get(ANNOTATION_INJECT).map(String::as_str) == Some("false") {
        return Ok(ops.into_patch());
    }
    if namespace == config.namespace || namespace == "kube-system" {
        ops.annotate(&annotations, &[(ANNOTATION_STATUS, STATUS_OWN_NAMESPACE)])?;
        return Ok(ops.into_patch());
    }
    if spec.host_network == Some(true) {
        ops.annotate(&annotations, &[(ANNOTATION_STATUS, STATUS_HOST_NETWORK)])?;
        return Ok(ops.into_patch());
    }
    let policy = annotations
        .get(ANNOTATION_POLICY)
        .cloned()
        .unwrap_or_else(|| config.names.default_policy_config_map.clone());
    if !is_dns_subdomain(&policy) {
        return Err(Error::PolicyName { value: policy });
    }

    let sa_volume = service_account_volume(spec);
    let proxy_token_volume = match sa_volume {
        Some(v) => v.name.clone(),
        None => VOLUME_UPSTREAM_TOKEN.to_string(),
    };
    let proxy = sidecar::container(config, &proxy_token_volume, &policy);
    let injected = screen(spec, &proxy)?;
    // The proxy's and the apps' volumes, as this injector makes them: checked when the
    // pod has them already (a reinvocation, or a copy of the proxy someone else wrote).
    let mut volumes = Vec::new();
    match sa_volume {
        Some(_) => volumes.push(sidecar::api_access_volume(config)),
        None => volumes.push(sidecar::upstream_token_volume()),
    }
    volumes.extend(sidecar::proxy_volumes(config, &policy));
    screen_volumes(spec, sa_volume, injected, &volumes, config)?;

    // 1. Edits inside existing containers: loopback API address, and the token volume
    //    swapped for the chaperone one at the same path.
    let swap = sa_volume.map(|v| v.name.as_str());
    for (i, c) in spec.containers.iter().enumerate() {
        ops.point_at_proxy(&["spec", "containers", &i.to_string()], c, config, swap)?;
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        ops.point_at_proxy(&["spec", "initContainers", &i.to_string()], c, config, swap)?;
    }

    // 2. The loopback names, and the sysctl that lets the non-root proxy bind :443.
    ops.host_aliases(spec, config)?;
    if config.unprivileged_port_sysctl {
        ops.port_sysctl(spec)?;
    }
    if injected {
        return Ok(ops.into_patch());
    }

    // 3. The proxy, its volumes and the annotations: once.
    let status = match sa_volume {
        Some(_) => STATUS_INJECTED.to_string(),
        None => format!("skipped-sa: {}", why_no_service_account(spec)),
    };
    for v in &volumes {
        if find_volume(spec, &v.name).is_some() {
            return Err(Error::VolumeConflict {
                name: v.name.clone(),
            });
        }
    }
    ops.append(&["spec", "volumes"], spec.volumes.is_some(), &volumes)?;

    if config.native_sidecar {
        // First among init containers: up before any other init container runs, so
        // those can use the API too.
        match spec.init_containers {
            Some(_) => ops.add(&["spec", "initContainers", "0"], &proxy)?,
            None => ops.add(&["spec", "initContainers"], &[proxy])?,
        }
    } else {
        // Appended, so the app stays the default container for `kubectl exec/logs`.
        ops.add(&["spec", "containers", "-"], &proxy)?;
    }
    ops.annotate(
        &annotations,
        &[(ANNOTATION_STATUS, &status), (ANNOTATION_VERSION, VERSION)],
    )?;
    Ok(ops.into_patch())
}

/// Refuses a pod in which an app container could reach the proxy's credential, and says
/// whether the proxy is in it already (a reinvocation): a container named `chaperone` must
/// be the proxy this injector adds, or it would be taken for it and left with the real
/// token; no other container may mount the proxy's volumes; and no container may see the
/// proxy's process (its files are readable through `/proc/PID/root` by the same user).
fn screen(spec: &PodSpec, proxy: &Container) -> Result<bool> {
    for (field, set) in [
        ("shareProcessNamespace", spec.share_process_namespace),
        ("hostPID", spec.host_pid),
    ] {
        if set == Some(true) {
            return Err(Error::SharedProcesses { field });
        }
    }
    let mut injected = false;
    for (list, i, c) in containers(spec) {
        if c.name == CONTAINER {
            if !is_the_proxy(c, proxy) {
                return Err(Error::ReservedName {
                    where_: format!("{list}[{i}]"),
                });
            }
            injected = true;
            continue;
        }
        refuse_mounts(&c.name, &c.volume_mounts, |v| PROXY_ONLY.contains(&v))?;
    }
    Ok(injected)
}

/// Refuses a pod whose volumes would give an app a credential around the proxy: a
/// service-account token for the API server projected by the pod itself (only the
/// ServiceAccount plugin's, which the injector swaps, and the injector's own are
/// allowed; one for another audience is the pod's), or a `hostPath` or
/// privileged container (the node's files hold every pod's tokens). A pod that has the
/// proxy already must have its volumes exactly as this injector makes them (`ours`):
/// otherwise a copy of the proxy's container, which is public, would run it with a
/// configuration, policy or token of the pod author's choosing.
fn screen_volumes(
    spec: &PodSpec,
    sa_volume: Option<&Volume>,
    injected: bool,
    ours: &[Volume],
    config: &Config,
) -> Result<()> {
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            return Err(Error::HostAccess {
                what: format!("volume {:?} is a hostPath", v.name),
            });
        }
        // A token for another audience (a cloud's workload identity, Vault) is the
        // pod's to have: the API server does not take it.
        let projects_token = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
            .any(|t| config.is_api_audience(t.audience.as_deref()));
        let theirs = sa_volume.is_some_and(|sa| std::ptr::eq(sa, v));
        let injectors = ours.iter().any(|o| o.name == v.name);
        if projects_token && !theirs && !injectors {
            return Err(Error::OwnToken {
                volume: v.name.clone(),
            });
        }
    }
    for (list, i, c) in containers(spec) {
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
        if privileged == Some(true) {
            return Err(Error::HostAccess {
                what: format!("container {list}[{i}] ({:?}) is privileged", c.name),
            });
        }
    }
    if injected {
        for want in ours {
            let found = find_volume(spec, &want.name);
            if !found.is_some_and(|found| same_volume(found, want)) {
                return Err(Error::ProxyVolumeChanged {
                    volume: want.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Whether two volumes are the same but for what the API server fills in on its own
/// (file modes, `optional: false`).
fn same_volume(a: &Volume, b: &Volume) -> bool {
    fn normal(v: &Volume) -> Value {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(map) => {
                    map.retain(|k, v| {
                        !(matches!(k.as_str(), "defaultMode" | "mode")
                            || (k == "optional" && *v == Value::Bool(false)))
                    });
                    map.values_mut().for_each(strip);
                }
                Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
        strip(&mut v);
        v
    }
    normal(a) == normal(b)
}

/// Every init and app container of `spec`, with where it stands (`initContainers`, 0).
fn containers(spec: &PodSpec) -> impl Iterator<Item = (&'static str, usize, &Container)> {
    let init = spec.init_containers.iter().flatten().enumerate();
    let app = spec.containers.iter().enumerate();
    init.map(|(i, c)| ("initContainers", i, c))
        .chain(app.map(|(i, c)| ("containers", i, c)))
}

/// Refuses container `name` when it mounts a volume `refused` names.
fn refuse_mounts(
    name: &str,
    mounts: &Option<Vec<VolumeMount>>,
    refused: impl Fn(&str) -> bool,
) -> Result<()> {
    match mounts.iter().flatten().find(|m| refused(&m.name)) {
        Some(m) => Err(Error::ProxyVolume {
            container: name.to_owned(),
            volume: m.name.clone(),
        }),
        None => Ok(()),
    }
}

/// Refuses an update of an injected pod that would hand the proxy's place or its
/// credential to something else. A pod's containers may change only their image after
/// creation, and the kubelet restarts a container whose image changed: a new image for
/// the proxy would run with the real token and no policy. And an ephemeral container
/// (`kubectl debug`) may mount any of the pod's volumes or join the proxy's process
/// namespace. A pod without the proxy (opted out, or from before injection) is left alone.
pub fn guard_update(old: &Pod, new: &Pod) -> Result<()> {
    let (Some(old), Some(new)) = (old.spec.as_ref(), new.spec.as_ref()) else {
        return Ok(());
    };
    let proxies = |spec| containers(spec).filter(|(_, _, c)| c.name == CONTAINER);
    let before: Vec<_> = proxies(old).collect();
    let Some((_, _, proxy)) = before.first() else {
        return Ok(());
    };
    for (list, i, c) in proxies(new) {
        let same = before
            .iter()
            .any(|(l, _, o)| *l == list && is_the_proxy(c, o));
        if !same {
            return Err(Error::ProxyChanged {
                where_: format!("{list}[{i}]"),
            });
        }
    }
    let proxy_volumes: Vec<&str> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    let existing: Vec<&str> = old
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for c in new.ephemeral_containers.iter().flatten() {
        if existing.contains(&c.name.as_str()) {
            continue;
        }
        if c.target_container_name.as_deref() == Some(CONTAINER) {
            return Err(Error::EphemeralTarget {
                container: c.name.clone(),
            });
        }
        refuse_mounts(&c.name, &c.volume_mounts, |v| {
            proxy_volumes.contains(&v) || PROXY_ONLY.contains(&v)
        })?;
    }
    Ok(())
}

/// The volumes the injector adds for the proxy alone.
const PROXY_ONLY: [&str; 5] = [
    sidecar::VOLUME_UPSTREAM_TOKEN,
    sidecar::VOLUME_CONFIG,
    sidecar::VOLUME_POLICY,
    sidecar::VOLUME_TLS,
    sidecar::VOLUME_TMP,
];

/// Whether `c` is the proxy as this injector adds it, in what decides what it runs and
/// what it can read. Other webhooks may add environment or resources to it.
fn is_the_proxy(c: &Container, proxy: &Container) -> bool {
    c.image == proxy.image
        && c.command == proxy.command
        && c.args == proxy.args
        && c.volume_mounts == proxy.volume_mounts
        && c.security_context == proxy.security_context
}

/// The volume holding a token the API server accepts, as the ServiceAccount admission
/// plugin adds it: projected, named `kube-api-access-<suffix>`.
fn service_account_volume(spec: &PodSpec) -> Option<&Volume> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(SA_VOLUME_PREFIX) && v.projected.is_some())
}

fn why_no_service_account(spec: &PodSpec) -> &'static str {
    if spec.automount_service_account_token == Some(false) {
        "automountServiceAccountToken is false; app containers get no token, the proxy gets its own"
    } else {
        "the pod has no kube-api-access volume; app containers get no token, the proxy gets its own"
    }
}

fn find_volume<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a Volume> {
    spec.volumes.iter().flatten().find(|v| v.name == name)
}

/// The three variables every Kubernetes client's in-cluster config reads.
fn api_env(config: &Config) -> [(&'static str, String); 3] {
    let port = config.proxy_port.to_string();
    [
        ("KUBERNETES_SERVICE_HOST", LOOPBACK.to_string()),
        ("KUBERNETES_SERVICE_PORT", port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port),
    ]
}

/// The `kubernetes` Service's names that clients dial regardless of the environment.
pub fn service_names(config: &Config) -> [String; 4] {
    [
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", config.cluster_domain),
    ]
}

/// RFC 1123 subdomain, as Kubernetes checks object names.
fn is_dns_subdomain(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(ok_char)
                && label.ends_with(ok_char)
                && label.chars().all(|c| ok_char(c) || c == '-')
        })
}

/// The patch being built.
#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn into_patch(self) -> Patch {
        Patch(self.0)
    }

    fn add<T: Serialize + ?Sized>(&mut self, path: &[impl AsRef<str>], value: &T) -> Result<()> {
        self.0.push(PatchOperation::Add(AddOperation {
            path: pointer(path),
            value: serde_json::to_value(value)?,
        }));
        Ok(())
    }

    fn replace<T: Serialize + ?Sized>(
        &mut self,
        path: &[impl AsRef<str>],
        value: &T,
    ) -> Result<()> {
        self.0.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(path),
            value: serde_json::to_value(value)?,
        }));
        Ok(())
    }

    /// Appends `items` to the array at `path`, creating it when `exists` is false.
    fn append<T: Serialize>(&mut self, path: &[&str], exists: bool, items: &[T]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if !exists {
            return self.add(path, items);
        }
        let mut at: Vec<&str> = path.to_vec();
        at.push("-");
        for item in items {
            self.add(&at, item)?;
        }
        Ok(())
    }

    /// Sets annotations that differ from `existing`.
    fn annotate(
        &mut self,
        existing: &BTreeMap<String, String>,
        set: &[(&str, &str)],
    ) -> Result<()> {
        let changed: BTreeMap<&str, &str> = set
            .iter()
            .filter(|(k, v)| existing.get(*k).map(String::as_str) != Some(*v))
            .copied()
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if existing.is_empty() {
            // Also covers `annotations: {}`; `add` on an object member replaces it.
            return self.add(&["metadata", "annotations"], &changed);
        }
        for (k, v) in changed {
            self.add(&["metadata", "annotations", k], v)?;
        }
        Ok(())
    }

    /// Points one app or init container's API client at the proxy: the env variables,
    /// and its mount of the service-account volume re-pointed to the chaperone one.
    fn point_at_proxy(
        &mut self,
        at: &[&str],
        c: &Container,
        config: &Config,
        sa_volume: Option<&str>,
    ) -> Result<()> {
        if c.name == CONTAINER {
            return Ok(());
        }
        let path = |tail: &[&str]| -> Vec<String> {
            at.iter().chain(tail).map(|s| s.to_string()).collect()
        };

        let want = api_env(config);
        match &c.env {
            None => {
                let env: Vec<EnvVar> = want.iter().map(|(n, v)| env_var(n, v)).collect();
                self.add(&path(&["env"]), &env)?;
            }
            Some(env) => {
                // Existing entries of these names are replaced where they stand (a
                // `valueFrom` included); missing ones go first, so that `$(VAR)`
                // references later in the list expand to the proxy's address.
                for (j, e) in env.iter().enumerate() {
                    if let Some((n, v)) = want.iter().find(|(n, _)| *n == e.name) {
                        if e.value.as_deref() != Some(v.as_str()) || e.value_from.is_some() {
                            let p = path(&["env", &j.to_string()]);
                            self.replace(&p, &env_var(n, v))?;
                        }
                    }
                }
                let missing = want
                    .iter()
                    .filter(|(n, _)| !env.iter().any(|e| e.name == *n));
                for (k, (n, v)) in missing.enumerate() {
                    let p = path(&["env", &k.to_string()]);
                    self.add(&p, &env_var(n, v))?;
                }
            }
        }

        if let Some(sa) = sa_volume {
            for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                if m.name == sa {
                    let p = path(&["volumeMounts", &j.to_string(), "name"]);
                    self.replace(&p, VOLUME_API_ACCESS)?;
                }
            }
        }
        Ok(())
    }

    /// Maps the `kubernetes` Service's names to loopback, and takes them out of any
    /// other alias so `/etc/hosts` has one answer.
    fn host_aliases(&mut self, spec: &PodSpec, config: &Config) -> Result<()> {
        let names = service_names(config);
        let Some(aliases) = &spec.host_aliases else {
            let alias = HostAlias {
                ip: LOOPBACK.into(),
                hostnames: Some(names.to_vec()),
            };
            return self.add(&["spec", "hostAliases"], &[alias]);
        };
        for (i, a) in aliases.iter().enumerate() {
            let hostnames = a.hostnames.clone().unwrap_or_default();
            if a.ip != LOOPBACK && hostnames.iter().any(|h| names.contains(h)) {
                let kept: Vec<String> = hostnames
                    .into_iter()
                    .filter(|h| !names.contains(h))
                    .collect();
                self.replace(&["spec", "hostAliases", &i.to_string(), "hostnames"], &kept)?;
            }
        }
        match aliases.iter().position(|a| a.ip == LOOPBACK) {
            Some(i) => {
                let have = &aliases[i].hostnames;
                let missing: Vec<String> = names
                    .iter()
                    .filter(|n| !have.iter().flatten().any(|h| h == *n))
                    .cloned()
                    .collect();
                let at = ["spec", "hostAliases", &i.to_string(), "hostnames"];
                self.append(&at, have.is_some(), &missing)?;
            }
            None => {
                let alias = HostAlias {
                    ip: LOOPBACK.into(),
                    hostnames: Some(names.to_vec()),
                };
                self.add(&["spec", "hostAliases", "-"], &alias)?;
            }
        }
        Ok(())
    }

    /// `net.ipv4.ip_unprivileged_port_start=443` unless the pod already sets it.
    fn port_sysctl(&mut self, spec: &PodSpec) -> Result<()> {
        let sysctl = Sysctl {
            name: PORT_SYSCTL.into(),
            value: "443".into(),
        };
        match &spec.security_context {
            None => self.add(
                &["spec", "securityContext"],
                &PodSecurityContext {
                    sysctls: Some(vec![sysctl]),
                    ..Default::default()
                },
            ),
            Some(sc) => match &sc.sysctls {
                Some(s) if s.iter().any(|s| s.name == PORT_SYSCTL) => Ok(()),
                Some(_) => self.add(&["spec", "securityContext", "sysctls", "-"], &sysctl),
                None => self.add(&["spec", "securityContext", "sysctls"], &[sysctl]),
            },
        }
    }
}

/// A JSON pointer from unescaped tokens (`~` and `/` in annotation keys get escaped).
fn pointer(tokens: &[impl AsRef<str>]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().map(|t| t.as_ref()))
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Applies `patch` to the pod JSON exactly as the API server will, and checks that
/// the result is still a pod: the webhook answers nothing it has not tried.
pub fn check(pod: &Value, patch: &Patch) -> std::result::Result<Value, String> {
    let mut out = pod.clone();
    json_patch::patch(&mut out, patch).map_err(|e| format!("patch does not apply: {e}"))?;
    serde_json::from_value::<Pod>(out.clone())
        .map_err(|e| format!("patched object is not a valid pod: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        let rows = [
            (Error::PolicyName { value: "X".into() }, 400, "BadRequest"),
            (
                Error::VolumeConflict {
                    name: "chaperone-tls".into(),
                },
                400,
                "BadRequest",
            ),
            (
                Error::Serialize(serde_json::from_str::<u8>("x").unwrap_err()),
                500,
                "InternalError",
            ),
        ];
        for (err, code, reason) in rows {
            let s = err.status();
            assert_eq!((s.code, s.reason.as_str()), (code, reason), "{err}");
            assert!(s.message.starts_with("chaperone-injector: "), "{err}");
        }
    }

    #[test]
    fn policy_names_are_dns_subdomains() {
        for (name, ok) in [
            ("chaperone-policy", true),
            ("a.b-c.d", true),
            ("a", true),
            ("", false),
            ("Policy", false),
            ("-a", false),
            ("a-", false),
            ("a..b", false),
            ("a/b", false),
            (&"a".repeat(254), false),
        ] {
            assert_eq!(is_dns_subdomain(name), ok, "{name:?}");
        }
    }
}
