//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>[/<v>]`.
//!
//! Only legacy (unaggregated) discovery is served: kubectl first asks for the aggregated
//! `APIGroupDiscoveryList`, and a reply whose Content-Type is plain `application/json`
//! makes client-go fall back to these documents.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::registry::{version_priority, ResourceDef};
use super::status::{full, ApiError};
use super::Body;

pub(crate) const GIT_VERSION: &str = "v1.32.0";

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T17:59:15Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions.
pub(crate) fn api_versions(host: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    })
}

/// The named groups, each with its versions sorted by preference.
fn groups(defs: &[ResourceDef]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for d in defs.iter().filter(|d| !d.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == d.group) {
            Some((_, vs)) if !vs.contains(&d.version) => vs.push(d.version.clone()),
            Some(_) => {}
            None => out.push((d.group.clone(), vec![d.version.clone()])),
        }
    }
    for (_, vs) in &mut out {
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

/// `/apis`: APIGroupList.
pub(crate) fn api_group_list(defs: &[ResourceDef]) -> Value {
    let groups: Vec<Value> = groups(defs)
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: APIGroup, or `None` if the group is not served.
pub(crate) fn api_group(defs: &[ResourceDef], group: &str) -> Option<Value> {
    let (g, vs) = groups(defs).into_iter().find(|(g, _)| g == group)?;
    let mut doc = group_doc(&g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/<g>/<v>`: APIResourceList, or `None` if not served.
pub(crate) fn resource_list(defs: &[ResourceDef], group: &str, version: &str) -> Option<Value> {
    let mut served: Vec<&ResourceDef> = defs
        .iter()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    served.sort_by(|a, b| a.plural.cmp(&b.plural));
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = served.iter().flat_map(|d| d.discovery_entries()).collect();
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// A minimal OpenAPI v2 document in the protobuf encoding kubectl asks for: `swagger`
/// (field 1) = "2.0" and `info` (field 2) = {title: "Kubernetes", version}. It defines no
/// schemas, so kubectl's client-side validation finds nothing to check and lets the
/// request through (a 404 here makes `kubectl apply/create` fail unless
/// `--validate=false`).
fn openapi_v2_protobuf() -> Vec<u8> {
    let field = |tag: u8, bytes: &[u8]| {
        let mut out = vec![tag, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    };
    let info = [
        field(0x0a, b"Kubernetes"),
        field(0x12, GIT_VERSION.as_bytes()),
    ]
    .concat();
    [field(0x0a, b"2.0"), field(0x12, &info)].concat()
}

/// `/openapi/v2`: the minimal document above; `/openapi/v3`: not served (404), so
/// clients fall back to v2.
pub(crate) fn openapi(v2: bool) -> Response<Body> {
    if !v2 {
        return ApiError::unknown_path().into_response();
    }
    let mut resp = Response::new(full(openapi_v2_protobuf()));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        // What kube-apiserver sends: Go cannot parse the `@` of the requested type.
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::registry::builtins;

    #[test]
    fn core_resources_with_subresources() {
        let doc = resource_list(&builtins(), "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "pods",
            "pods/log",
            "pods/exec",
            "pods/status",
            "namespaces",
            "secrets",
            "configmaps",
        ] {
            assert!(names.contains(&want), "{want}");
        }
        let pods = &doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap()
            .clone();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(doc["groupVersion"], "v1");
        assert!(resource_list(&builtins(), "nope", "v1").is_none());
    }

    #[test]
    fn groups_and_scale() {
        let list = api_group_list(&builtins());
        assert!(list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["preferredVersion"]["groupVersion"] == "apps/v1"));
        let apps = resource_list(&builtins(), "apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap()
            .clone();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(api_group(&builtins(), "apps").unwrap()["kind"], "APIGroup");
    }
}
