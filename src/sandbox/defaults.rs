//! Type-specific behaviour on create and update: the defaulting the real API server
//! does, plus an instant stand-in for the controllers and kubelet a cluster would run
//! (pods come up Running and Ready, deployments report their replicas available, CRDs
//! become Established), so `kubectl get`, `rollout status` and `wait` look right.
//! A status given on create (seeds, fixtures) is kept as it is.

use serde_json::{json, Value};

use super::registry::ResourceDef;
use super::util;

/// Whether the type tracks spec changes in `metadata.generation` (as in Kubernetes 1.32).
pub(crate) fn has_generation(def: &ResourceDef) -> bool {
    def.crd.is_some()
        || matches!(
            def.plural.as_str(),
            "deployments" | "customresourcedefinitions"
        )
}

pub(crate) fn on_create(def: &ResourceDef, obj: &mut Value) {
    if def.crd.is_some() {
        return;
    }
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "namespaces") => namespace(obj),
        ("", "pods") => pod(obj),
        ("", "secrets") => secret(obj),
        ("", "services") => service(obj),
        ("apps", "deployments") => deployment(obj, true),
        ("apiextensions.k8s.io", "customresourcedefinitions") => crd(obj),
        _ => {}
    }
}

pub(crate) fn on_update(def: &ResourceDef, cur: &Value, new: &mut Value) {
    if def.crd.is_some() {
        return;
    }
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "secrets") => secret(new),
        // The "controller" reacts to spec changes only (generation bumped).
        ("apps", "deployments")
            if cur.pointer("/metadata/generation") != new.pointer("/metadata/generation") =>
        {
            deployment(new, false)
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => crd(new),
        _ => {}
    }
}

/// Sets `obj[key]` to `value` unless present.
fn default(obj: &mut Value, key: &str, value: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.entry(key.to_string()).or_insert(value);
    }
}

/// Whether `obj.status` is absent, null or `{}` (clients like `kubectl run` send `{}`).
fn status_unset(obj: &Value) -> bool {
    match obj.get("status") {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(_) => false,
    }
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn namespace(obj: &mut Value) {
    let name = name_of(obj);
    let meta = &mut obj["metadata"];
    default(meta, "labels", json!({}));
    meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
    default(obj, "spec", json!({"finalizers": ["kubernetes"]}));
    if status_unset(obj) {
        obj["status"] = json!({"phase": "Active"});
    }
}

fn pod(obj: &mut Value) {
    default(obj, "spec", json!({}));
    let now = util::rfc3339(util::now_unix());
    let spec = &mut obj["spec"];
    for (k, v) in [
        ("nodeName", json!("sandbox-node")),
        ("restartPolicy", json!("Always")),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("serviceAccountName", json!("default")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
        ("containers", json!([])),
    ] {
        default(spec, k, v);
    }
    let mut statuses = Vec::new();
    if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in cs.iter_mut() {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let policy = if image.ends_with(":latest") || !image.contains(':') {
                "Always"
            } else {
                "IfNotPresent"
            };
            default(c, "imagePullPolicy", json!(policy));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            default(c, "resources", json!({}));
            statuses.push(json!({
                "name": c.get("name").cloned().unwrap_or(Value::Null),
                "image": image,
                "imageID": format!("docker.io/library/{image}@sha256:{:016x}{:016x}", util::random_u64(), util::random_u64()),
                "containerID": format!("containerd://{:016x}{:016x}", util::random_u64(), util::random_u64()),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
                "lastState": {},
            }));
        }
    }
    let ip = format!("10.244.0.{}", 2 + util::random_u64() % 250);
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    if !status_unset(obj) {
        return;
    }
    obj["status"] = json!({
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                       cond("ContainersReady"), cond("PodScheduled")],
        "hostIP": "172.18.0.2",
        "hostIPs": [{"ip": "172.18.0.2"}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "qosClass": "BestEffort",
        "containerStatuses": statuses,
    });
}

/// `stringData` is write-only: merged into base64 `data`, then dropped.
fn secret(obj: &mut Value) {
    default(obj, "type", json!("Opaque"));
    let Some(string_data) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in string_data.as_object().into_iter().flatten() {
        obj["data"][k] = json!(util::base64_encode(v.as_str().unwrap_or("").as_bytes()));
    }
}

fn service(obj: &mut Value) {
    default(obj, "spec", json!({}));
    let spec = &mut obj["spec"];
    default(spec, "type", json!("ClusterIP"));
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if !headless && spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
        let r = util::random_u64();
        default(
            spec,
            "clusterIP",
            json!(format!("10.96.{}.{}", (r >> 8) % 256, 1 + r % 254)),
        );
    }
    if let Some(ip) = spec.get("clusterIP").cloned() {
        default(spec, "clusterIPs", json!([ip]));
    }
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "ipFamilies", json!(["IPv4"]));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
    default(obj, "status", json!({"loadBalancer": {}}));
}

fn deployment(obj: &mut Value, creating: bool) {
    default(obj, "spec", json!({}));
    let spec = &mut obj["spec"];
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    default(
        spec,
        "strategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
    );
    let replicas = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1);
    if creating {
        let meta = &mut obj["metadata"];
        default(meta, "annotations", json!({}));
        default(
            &mut meta["annotations"],
            "deployment.kubernetes.io/revision",
            json!("1"),
        );
        if !status_unset(obj) {
            return;
        }
    }
    let generation = obj
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let now = util::rfc3339(util::now_unix());
    let name = name_of(obj);
    obj["status"] = json!({
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Available", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now,
             "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "lastUpdateTime": now, "lastTransitionTime": now,
             "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{name}\" has successfully progressed.")},
        ],
    });
    if replicas == 0 {
        for k in ["readyReplicas", "availableReplicas", "updatedReplicas"] {
            obj["status"].as_object_mut().map(|s| s.remove(k));
        }
    }
}

fn crd(obj: &mut Value) {
    let now = util::rfc3339(util::now_unix());
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == json!(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now,
             "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now,
             "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::registry::builtins;

    fn def(plural: &str) -> ResourceDef {
        builtins().into_iter().find(|d| d.plural == plural).unwrap()
    }

    #[test]
    fn secrets_fold_string_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"user": "admin"}});
        on_create(&def("secrets"), &mut s);
        assert_eq!(s["data"]["user"], "YWRtaW4=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }

    #[test]
    fn pods_come_up_running() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}});
        on_create(&def("pods"), &mut p);
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn deployments_follow_replicas() {
        let d = def("deployments");
        let mut o = json!({"metadata": {"name": "d", "generation": 1}, "spec": {"replicas": 2}});
        on_create(&d, &mut o);
        assert_eq!(o["status"]["availableReplicas"], 2);
        let cur = o.clone();
        o["spec"]["replicas"] = json!(5);
        o["metadata"]["generation"] = json!(2);
        on_update(&d, &cur, &mut o);
        assert_eq!(o["status"]["readyReplicas"], 5);
        assert_eq!(o["status"]["observedGeneration"], 2);
    }
}
