//! The generic REST verbs every stored resource supports: get, list, create, update,
//! patch (merge, JSON, strategic, server-side apply), delete and deletecollection, plus
//! the `status` and `scale` subresources.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::handler::{parse_body, Ctx};
use super::patch;
use super::registry::ResourceDef;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{json_response, ApiError};
use super::store::{Store, Target};
use super::table::{self, Include, Output};
use super::util;
use super::Body;

/// Which part of the object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Main,
    Status,
    Scale,
}

/// Label and field selectors of a request (400 on a malformed one).
pub(crate) struct Selectors {
    labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(ctx: &Ctx) -> Result<Self, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

fn rv_of(obj: &Value) -> String {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn dry_run(ctx: &Ctx) -> bool {
    ctx.q_all("dryRun").iter().any(|v| v == "All")
}

/// Renders one object as the client asked (plain, Table row, or metadata only).
pub(crate) fn render_one(
    ctx: &Ctx,
    def: &ResourceDef,
    code: StatusCode,
    obj: &Value,
) -> Response<Body> {
    let doc = match ctx.output {
        Output::Plain => obj.clone(),
        Output::Partial(v) => table::partial(obj, v),
        Output::Table(v) => table::table(
            def,
            std::slice::from_ref(obj),
            Include::parse(ctx.q("includeObject")),
            true,
            json!({"resourceVersion": rv_of(obj)}),
            v,
        ),
    };
    json_response(code, &doc)
}

pub(crate) fn get(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let obj = store
        .get(def, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    Ok(render_one(ctx, def, StatusCode::OK, &obj))
}

/// Continue tokens are opaque to clients; here base64 of `{"rv":..,"start":"ns/name"}`.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    util::base64_encode(
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{ns}/{name}")})
            .to_string()
            .as_bytes(),
    )
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    let bad =
        || ApiError::bad_request("continue key is not valid: the continue token is malformed");
    let raw = util::base64_decode(token).ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    Ok((ns.to_string(), name.to_string()))
}

fn key_of(obj: &Value) -> (String, String) {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

pub(crate) fn list(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let sel = Selectors::parse(ctx)?;
    let (all, rv) = store.list(def, ns);
    let mut items: Vec<Value> = all.into_iter().filter(|o| sel.matches(o)).collect();
    if let Some(token) = ctx.q("continue").filter(|t| !t.is_empty()) {
        let start = decode_continue(token)?;
        items.retain(|o| key_of(o) > start);
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    let limit = ctx
        .q("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            let (lns, lname) = key_of(last);
            meta["continue"] = json!(encode_continue(rv, &lns, &lname));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let doc = match ctx.output {
        Output::Plain => {
            json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(), "metadata": meta, "items": items})
        }
        Output::Partial(v) => table::partial_list(&items, meta, v),
        Output::Table(v) => table::table(
            def,
            &items,
            Include::parse(ctx.q("includeObject")),
            true,
            meta,
            v,
        ),
    };
    Ok(json_response(StatusCode::OK, &doc))
}

/// Checks the apiVersion/kind a body declares against the URL, as the server does.
fn check_type(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        let same_group = av.split_once('/').map_or(("", av), |(g, v)| (g, v)).0 == def.group;
        if !same_group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
        if kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    Ok(())
}

fn check_namespace(def: &ResourceDef, obj: &Value, ns: &str) -> Result<(), ApiError> {
    let body_ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if def.namespaced && !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

pub(crate) fn create(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let mut obj = parse_body(&ctx.headers, body)?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    check_type(def, &obj)?;
    check_namespace(def, &obj, ns)?;
    if def.namespaced {
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        obj["metadata"]["namespace"] = json!(ns);
    }
    let created = store.create(def, obj, dry_run(ctx), false)?;
    Ok(render_one(ctx, def, StatusCode::CREATED, &created))
}

/// The `autoscaling/v1` Scale view of an object with `spec.replicas`.
fn scale_of(obj: &Value) -> Value {
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let pick = |k: &str| meta.get(k).cloned().unwrap_or(Value::Null);
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": pick("name"), "namespace": pick("namespace"), "uid": pick("uid"),
                     "resourceVersion": pick("resourceVersion"), "creationTimestamp": pick("creationTimestamp")},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Applies a wanted Scale to an object: only `spec.replicas` moves.
fn with_scale(cur: &Value, scale: &Value) -> Result<Value, ApiError> {
    let replicas = scale
        .pointer("/spec/replicas")
        .filter(|r| r.is_i64())
        .ok_or_else(|| ApiError::bad_request("Scale.spec.replicas must be an integer"))?;
    let mut new = cur.clone();
    if !new.get("spec").is_some_and(Value::is_object) {
        new["spec"] = json!({});
    }
    new["spec"]["replicas"] = replicas.clone();
    // Optimistic concurrency on the Scale's resourceVersion, as for the object.
    match scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(rv) => new["metadata"]["resourceVersion"] = json!(rv),
        None => {
            new["metadata"]
                .as_object_mut()
                .map(|m| m.remove("resourceVersion"));
        }
    }
    Ok(new)
}

pub(crate) fn get_sub(
    store: &Arc<Store>,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    sub: Sub,
) -> Result<Response<Body>, ApiError> {
    let obj = store
        .get(def, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    let doc = if sub == Sub::Scale {
        scale_of(&obj)
    } else {
        obj
    };
    Ok(json_response(StatusCode::OK, &doc))
}

fn target(sub: Sub) -> Target {
    if sub == Sub::Status {
        Target::Status
    } else {
        Target::Main
    }
}

pub(crate) fn update(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    body: &[u8],
    sub: Sub,
) -> Result<Response<Body>, ApiError> {
    let obj = parse_body(&ctx.headers, body)?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    if sub != Sub::Scale {
        check_type(def, &obj)?;
    }
    check_namespace(def, &obj, ns)?;
    let body_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let (new, _) = store.write(def, ns, name, target(sub), dry_run(ctx), |cur| {
        let cur = cur.ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        if sub == Sub::Scale {
            with_scale(cur, &obj)
        } else {
            Ok(obj.clone())
        }
    })?;
    let out = if sub == Sub::Scale {
        scale_of(&new)
    } else {
        new
    };
    Ok(json_response(StatusCode::OK, &out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

fn patch_type(ctx: &Ctx, def: &ResourceDef) -> Result<PatchType, ApiError> {
    let ct = crate::headers::media_type(&ctx.headers);
    let custom = def.crd.is_some();
    Ok(match ct.as_str() {
        "application/merge-patch+json" => PatchType::Merge,
        "application/json-patch+json" => PatchType::Json,
        "application/strategic-merge-patch+json" if !custom => PatchType::Strategic,
        "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
        _ => {
            let mut accepted = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".to_string();
            if !custom {
                accepted.push_str(", application/strategic-merge-patch+json");
            }
            return Err(ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            )));
        }
    })
}

fn apply_patch(
    kind: PatchType,
    custom: bool,
    cur: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    let invalid = |e: String| ApiError::new(422, "Invalid", e);
    match kind {
        PatchType::Merge => Ok(patch::merge(cur, patch)),
        PatchType::Json => patch::json_patch(cur, patch).map_err(invalid),
        // Server-side apply approximated as a merge of the applied configuration:
        // keyed lists of the core types merge by key, as the apply schema says.
        PatchType::Strategic | PatchType::Apply if !custom => {
            patch::strategic(cur, patch).map_err(invalid)
        }
        PatchType::Strategic | PatchType::Apply => Ok(patch::merge(cur, patch)),
    }
}

pub(crate) fn patch(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    body: &[u8],
    sub: Sub,
) -> Result<Response<Body>, ApiError> {
    let kind = patch_type(ctx, def)?;
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the patch is not UTF-8"))?;
    let patch: Value = if kind == PatchType::Apply {
        serde_yaml::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
    };
    if kind != PatchType::Json && !patch.is_object() {
        return Err(ApiError::bad_request("the patch must be a JSON object"));
    }
    if kind == PatchType::Apply {
        check_type(def, &patch)?;
    }
    let custom = def.crd.is_some();
    let (new, created) =
        store.write(def, ns, name, target(sub), dry_run(ctx), |cur| match cur {
            // Only server-side apply creates a missing object.
            None if kind == PatchType::Apply && sub == Sub::Main => {
                let mut obj = patch.clone();
                obj["apiVersion"] = json!(def.api_version());
                obj["kind"] = json!(def.kind);
                Ok(obj)
            }
            None => Err(ApiError::not_found(&def.group, &def.plural, name)),
            Some(cur) if sub == Sub::Scale => {
                let scale = apply_patch(kind, true, &scale_of(cur), &patch)?;
                with_scale(cur, &scale)
            }
            Some(cur) => {
                let mut new = apply_patch(kind, custom, cur, &patch)?;
                // A patch that does not mention resourceVersion must not trip the conflict check.
                if new.pointer("/metadata/resourceVersion").is_none() {
                    if let Some(rv) = cur.pointer("/metadata/resourceVersion") {
                        new["metadata"]["resourceVersion"] = rv.clone();
                    }
                }
                Ok(new)
            }
        })?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let out = if sub == Sub::Scale {
        scale_of(&new)
    } else {
        new
    };
    Ok(json_response(code, &out))
}

/// Resources whose delete returns the object (the rest return a Success Status), as
/// the real registries' `ReturnDeletedObject` says.
fn returns_object(def: &ResourceDef) -> bool {
    def.crd.is_some()
        || matches!(
            def.plural.as_str(),
            "pods" | "namespaces" | "customresourcedefinitions"
        )
}

pub(crate) fn delete(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    // DeleteOptions (propagationPolicy, gracePeriodSeconds, preconditions...) are
    // accepted; only dryRun has an effect.
    let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let body_dry = opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
        let cur = store
            .get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
        if cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return Err(ApiError::conflict(&def.group, &def.plural, name));
        }
    }
    let obj = store.delete(def, ns, name, dry_run(ctx) || body_dry)?;
    if returns_object(def) {
        return Ok(json_response(StatusCode::OK, &obj));
    }
    let mut details = json!({"name": name, "kind": def.plural, "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)});
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

pub(crate) fn delete_collection(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
) -> Result<Response<Body>, ApiError> {
    let sel = Selectors::parse(ctx)?;
    let ns = def.namespaced.then_some(ns);
    let (all, _) = store.list(def, ns);
    let mut deleted = Vec::new();
    for obj in all.iter().filter(|o| sel.matches(o)) {
        let (ons, name) = key_of(obj);
        // Something else may have deleted it meanwhile: that is fine.
        if let Ok(o) = store.delete(def, &ons, &name, dry_run(ctx)) {
            deleted.push(o);
        }
    }
    let doc = json!({"kind": format!("{}List", def.kind), "apiVersion": def.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": deleted});
    Ok(json_response(StatusCode::OK, &doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(7, "default", "web");
        assert_eq!(
            decode_continue(&t).unwrap(),
            ("default".to_string(), "web".to_string())
        );
        assert!(decode_continue("!!").is_err());
    }

    #[test]
    fn scale_round_trip() {
        let d = json!({"metadata": {"name": "d", "resourceVersion": "5"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let s = scale_of(&d);
        assert_eq!(s["status"]["selector"], "app=web");
        let new = with_scale(&d, &json!({"spec": {"replicas": 4}})).unwrap();
        assert_eq!(new["spec"]["replicas"], 4);
        assert!(new.pointer("/metadata/resourceVersion").is_none());
        assert!(with_scale(&d, &json!({"spec": {}})).is_err());
    }

    #[test]
    fn patches_dispatch_by_type() {
        let cur = json!({"spec": {"containers": [{"name": "a", "image": "1"}]}});
        let p = json!({"spec": {"containers": [{"name": "b", "image": "2"}]}});
        let smp = apply_patch(PatchType::Strategic, false, &cur, &p).unwrap();
        assert_eq!(smp["spec"]["containers"].as_array().unwrap().len(), 2);
        let mp = apply_patch(PatchType::Merge, false, &cur, &p).unwrap();
        assert_eq!(mp["spec"]["containers"].as_array().unwrap().len(), 1);
        let cr = apply_patch(PatchType::Apply, true, &cur, &p).unwrap();
        assert_eq!(cr, mp);
    }
}
