//! Server-side printing: `Accept: application/json;as=Table;g=meta.k8s.io;v=v1` answers a
//! `meta.k8s.io` `Table` (what `kubectl get` prints), `as=PartialObjectMetadata[List]`
//! answers metadata only. Columns follow the real server's printers for the common types.

use serde_json::{json, Value};

use super::registry::ResourceDef;
use super::util;

/// The representation a client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Plain,
    /// `meta.k8s.io` version: `v1` or `v1beta1`.
    Table(&'static str),
    Partial(&'static str),
}

/// Picks the first `Accept` entry the sandbox can produce (JSON only; protobuf entries
/// are skipped because every client that asks for protobuf also accepts JSON).
pub(crate) fn negotiate(accept: Option<&str>) -> Output {
    for entry in accept.unwrap_or("").split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        if !matches!(
            media.as_str(),
            "application/json" | "*/*" | "application/*" | "application/yaml"
        ) {
            continue;
        }
        let (mut r#as, mut g, mut v) = ("", "", "");
        for p in parts {
            match p.split_once('=') {
                Some(("as", x)) => r#as = x,
                Some(("g", x)) => g = x,
                Some(("v", x)) => v = x,
                _ => {}
            }
        }
        let version = match v {
            "v1" => "v1",
            "v1beta1" => "v1beta1",
            _ => "",
        };
        match (r#as, g) {
            ("", _) => return Output::Plain,
            ("Table", "meta.k8s.io") if !version.is_empty() => return Output::Table(version),
            ("PartialObjectMetadata" | "PartialObjectMetadataList", "meta.k8s.io")
                if !version.is_empty() =>
            {
                return Output::Partial(version)
            }
            _ => continue,
        }
    }
    Output::Plain
}

/// `includeObject` of a Table request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Include {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

pub(crate) fn partial(obj: &Value, version: &str) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{version}"),
           "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

pub(crate) fn partial_list(objs: &[Value], list_meta: Value, version: &str) -> Value {
    json!({"kind": "PartialObjectMetadataList", "apiVersion": format!("meta.k8s.io/{version}"),
           "metadata": list_meta, "items": objs.iter().map(|o| partial(o, version)).collect::<Vec<_>>()})
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// (name, type, priority) of each column.
fn columns(def: &ResourceDef) -> Vec<(String, &'static str, u8)> {
    let c = |n: &str, t: &'static str, p: u8| (n.to_string(), t, p);
    let s = "string";
    let i = "integer";
    if def.crd.is_some() {
        let mut cols = vec![c("Name", s, 0)];
        if def.columns.is_empty() {
            cols.push(c("Age", "date", 0));
        }
        for (name, ty, _) in &def.columns {
            let ty = match ty.as_str() {
                "integer" => i,
                "number" => "number",
                "boolean" => "boolean",
                "date" => "date",
                _ => s,
            };
            cols.push((name.clone(), ty, 0));
        }
        return cols;
    }
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => vec![
            c("Name", s, 0),
            c("Ready", s, 0),
            c("Status", s, 0),
            c("Restarts", s, 0),
            c("Age", s, 0),
            c("IP", s, 1),
            c("Node", s, 1),
            c("Nominated Node", s, 1),
            c("Readiness Gates", s, 1),
        ],
        ("", "secrets") => vec![
            c("Name", s, 0),
            c("Type", s, 0),
            c("Data", i, 0),
            c("Age", s, 0),
        ],
        ("", "configmaps") => vec![c("Name", s, 0), c("Data", i, 0), c("Age", s, 0)],
        ("", "namespaces") => vec![c("Name", s, 0), c("Status", s, 0), c("Age", s, 0)],
        ("", "services") => vec![
            c("Name", s, 0),
            c("Type", s, 0),
            c("Cluster-IP", s, 0),
            c("External-IP", s, 0),
            c("Port(s)", s, 0),
            c("Age", s, 0),
            c("Selector", s, 1),
        ],
        ("", "events") => vec![
            c("Last Seen", s, 0),
            c("Type", s, 0),
            c("Reason", s, 0),
            c("Object", s, 0),
            c("Message", s, 0),
            c("Name", s, 1),
        ],
        ("apps", "deployments") => vec![
            c("Name", s, 0),
            c("Ready", s, 0),
            c("Up-to-date", i, 0),
            c("Available", i, 0),
            c("Age", s, 0),
            c("Containers", s, 1),
            c("Images", s, 1),
            c("Selector", s, 1),
        ],
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") | ("apiextensions.k8s.io", _) => {
            vec![c("Name", s, 0), c("Created At", "date", 0)]
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => vec![
            c("Name", s, 0),
            c("Role", s, 0),
            c("Age", s, 0),
            c("Users", s, 1),
            c("Groups", s, 1),
            c("ServiceAccounts", s, 1),
        ],
        _ => vec![c("Name", s, 0), c("Age", s, 0)],
    }
}

pub(crate) fn column_definitions(def: &ResourceDef) -> Vec<Value> {
    columns(def)
        .into_iter()
        .map(|(name, ty, priority)| {
            let (format, description) = match name.as_str() {
                "Name" => ("name", NAME_DOC.to_string()),
                "Age" => ("", AGE_DOC.to_string()),
                _ => ("", name.clone()),
            };
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        })
        .collect()
}

fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn none_if_empty(s: String) -> Value {
    json!(if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    })
}

fn count(obj: &Value, ptr: &str) -> usize {
    obj.pointer(ptr)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

/// `a=b,c=d` from a string map (selectors).
fn join_map(v: Option<&Value>) -> String {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A simple `.a.b[0].c` JSONPath, as CRD printer columns use.
fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        let (field, idx) = match seg.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|s| s["ready"] == json!(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s["restartCount"].as_i64())
        .sum();
    let mut reason = str_at(obj, "/status/reason").to_string();
    if reason.is_empty() {
        reason = str_at(obj, "/status/phase").to_string();
    }
    for s in &statuses {
        for state in ["waiting", "terminated"] {
            if let Some(r) = s
                .pointer(&format!("/state/{state}/reason"))
                .and_then(Value::as_str)
            {
                reason = r.to_string();
            }
        }
    }
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(util::age_of(obj)),
        none_if_empty(str_at(obj, "/status/podIP").into()),
        none_if_empty(str_at(obj, "/spec/nodeName").into()),
        none_if_empty(str_at(obj, "/status/nominatedNodeName").into()),
        json!("<none>"),
    ]
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let external = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        json!(str_at(obj, "/spec/type")),
        none_if_empty(str_at(obj, "/spec/clusterIP").into()),
        none_if_empty(external),
        none_if_empty(ports),
        json!(util::age_of(obj)),
        none_if_empty(join_map(obj.pointer("/spec/selector"))),
    ]
}

fn deployment_cells(obj: &Value) -> Vec<Value> {
    let n = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let containers = obj
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let list = |k: &str| {
        containers
            .iter()
            .filter_map(|c| c[k].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        json!(format!(
            "{}/{}",
            n("/status/readyReplicas"),
            n("/spec/replicas")
        )),
        json!(n("/status/updatedReplicas")),
        json!(n("/status/availableReplicas")),
        json!(util::age_of(obj)),
        json!(list("name")),
        json!(list("image")),
        none_if_empty(join_map(obj.pointer("/spec/selector/matchLabels"))),
    ]
}

fn binding_cells(obj: &Value) -> Vec<Value> {
    let subjects = obj
        .get("subjects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let of = |kind: &str| {
        subjects
            .iter()
            .filter(|s| s["kind"] == json!(kind))
            .map(|s| match (kind, s["namespace"].as_str()) {
                ("ServiceAccount", Some(ns)) => {
                    format!("{ns}/{}", s["name"].as_str().unwrap_or(""))
                }
                _ => s["name"].as_str().unwrap_or("").to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        json!(format!(
            "{}/{}",
            str_at(obj, "/roleRef/kind"),
            str_at(obj, "/roleRef/name")
        )),
        json!(util::age_of(obj)),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    let age = json!(util::age_of(obj));
    let mut out = vec![name.clone()];
    if def.crd.is_some() {
        if def.columns.is_empty() {
            out.push(age);
        }
        for (_, ty, path) in &def.columns {
            let v = json_path(obj, path).cloned().unwrap_or(Value::Null);
            out.push(match (ty.as_str(), &v) {
                ("date", Value::String(s)) => json!(util::parse_rfc3339(s)
                    .map_or(s.clone(), |t| util::human_duration(util::now_unix() - t))),
                _ => v,
            });
        }
        return out;
    }
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "pods") => out.extend(pod_cells(obj)),
        ("", "secrets") => {
            out.extend([json!(str_at(obj, "/type")), json!(count(obj, "/data")), age])
        }
        ("", "configmaps") => {
            out.extend([json!(count(obj, "/data") + count(obj, "/binaryData")), age])
        }
        ("", "namespaces") => out.extend([json!(str_at(obj, "/status/phase")), age]),
        ("", "services") => out.extend(service_cells(obj)),
        ("", "events") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                obj.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(util::parse_rfc3339)
            })
            .map_or_else(
                || "<unknown>".to_string(),
                |t| util::human_duration(util::now_unix() - t),
            );
            let object = format!(
                "{}/{}",
                str_at(obj, "/involvedObject/kind").to_ascii_lowercase(),
                str_at(obj, "/involvedObject/name")
            );
            out = vec![
                json!(last),
                json!(str_at(obj, "/type")),
                json!(str_at(obj, "/reason")),
                json!(object),
                json!(str_at(obj, "/message")),
                name,
            ];
        }
        ("apps", "deployments") => out.extend(deployment_cells(obj)),
        ("rbac.authorization.k8s.io", "roles" | "clusterroles") | ("apiextensions.k8s.io", _) => {
            out.push(json!(str_at(obj, "/metadata/creationTimestamp")))
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            out.extend(binding_cells(obj))
        }
        _ => out.push(age),
    }
    out
}

/// One table row; `object` per `includeObject`.
pub(crate) fn row(def: &ResourceDef, obj: &Value, include: Include, version: &str) -> Value {
    let mut r = json!({"cells": cells(def, obj)});
    match include {
        Include::None => {}
        Include::Metadata => r["object"] = partial(obj, version),
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objs`. Watches send column definitions with the first event only.
pub(crate) fn table(
    def: &ResourceDef,
    objs: &[Value],
    include: Include,
    headers: bool,
    meta: Value,
    version: &str,
) -> Value {
    let mut t = json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": meta,
        "rows": objs.iter().map(|o| row(def, o, include, version)).collect::<Vec<_>>(),
    });
    t["columnDefinitions"] = if headers {
        json!(column_definitions(def))
    } else {
        json!([])
    };
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::registry::builtins;

    fn def(plural: &str) -> ResourceDef {
        builtins().into_iter().find(|d| d.plural == plural).unwrap()
    }

    #[test]
    fn negotiates_like_kubectl() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)), Output::Table("v1"));
        assert_eq!(negotiate(Some("application/json")), Output::Plain);
        assert_eq!(negotiate(None), Output::Plain);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")),
            Output::Partial("v1")
        );
        let discovery =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate(Some(discovery)), Output::Plain);
    }

    #[test]
    fn pod_rows() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2}, {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = row(&def("pods"), &pod, Include::Metadata, "v1");
        assert_eq!(r["cells"][0], "web");
        assert_eq!(r["cells"][1], "1/2");
        assert_eq!(r["cells"][2], "CrashLoopBackOff");
        assert_eq!(r["cells"][3], "3");
        assert_eq!(r["cells"][5], "10.0.0.1");
        assert_eq!(r["cells"][7], "<none>");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["metadata"]["namespace"], "default");
        let cols = column_definitions(&def("pods"));
        assert_eq!(cols.len(), r["cells"].as_array().unwrap().len());
    }

    #[test]
    fn other_rows_match_their_columns() {
        let cases = [
            (
                "secrets",
                json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "", "b": ""}}),
            ),
            (
                "configmaps",
                json!({"metadata": {"name": "c"}, "data": {"a": ""}}),
            ),
            (
                "deployments",
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}),
            ),
            (
                "namespaces",
                json!({"metadata": {"name": "n"}, "status": {"phase": "Active"}}),
            ),
            (
                "services",
                json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}),
            ),
            (
                "events",
                json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}}),
            ),
            (
                "rolebindings",
                json!({"metadata": {"name": "rb"}, "roleRef": {"kind": "Role", "name": "r"}}),
            ),
            ("serviceaccounts", json!({"metadata": {"name": "sa"}})),
        ];
        for (plural, obj) in cases.clone() {
            let d = def(plural);
            let r = row(&d, &obj, Include::Object, "v1");
            assert_eq!(
                r["cells"].as_array().unwrap().len(),
                column_definitions(&d).len(),
                "{plural}"
            );
            assert_eq!(r["object"], obj);
        }
        let t = table(&def("secrets"), &[], Include::None, false, json!({}), "v1");
        assert_eq!(t["columnDefinitions"], json!([]));
        let d = def("deployments");
        assert_eq!(row(&d, &cases[2].1, Include::None, "v1")["cells"][1], "2/2");
    }

    #[test]
    fn crd_columns_use_json_path() {
        let mut d = def("configmaps");
        d.crd = Some("x".into());
        d.columns = vec![("Size".into(), "integer".into(), ".spec.sizes[1]".into())];
        let r = row(
            &d,
            &json!({"metadata": {"name": "w"}, "spec": {"sizes": [1, 7]}}),
            Include::None,
            "v1",
        );
        assert_eq!(r["cells"], json!(["w", 7]));
    }
}
