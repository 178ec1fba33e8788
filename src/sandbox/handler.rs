//! Request parsing and routing: splits the URL the way kube-apiserver's RequestInfo
//! resolver does, then hands off to discovery, the REST verbs, watch, logs or exec.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::registry::ResourceDef;
use super::status::{json_response, text_response, ApiError};
use super::store::Store;
use super::table::{self, Output};
use super::{discovery, exec, logs, rest, watch, Body};
use crate::protobuf;

/// The largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// What a handler needs from the request besides its body.
pub(crate) struct Ctx {
    pub method: Method,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub output: Output,
}

impl Ctx {
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn q_all(&self, key: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A boolean query parameter as the apiserver parses it (`true`, `1`, `True`, ...).
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.q(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A resource URL, split.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// The legacy `/watch/` path prefix.
    pub watch: bool,
}

#[derive(Debug, PartialEq)]
enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    /// `true` for `/openapi/v2` (and the legacy `/swagger-2.0.0.pb-v1`), `false` for v3.
    OpenApi(bool),
    Resource(ResourcePath),
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["api", v] => Route::GroupVersion(String::new(), v.to_string()),
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::GroupVersion(g.to_string(), v.to_string()),
        ["openapi", "v2"] | ["swagger-2.0.0.pb-v1"] => Route::OpenApi(true),
        ["openapi", "v3", ..] => Route::OpenApi(false),
        ["api", v, rest @ ..] => resource_path("", v, rest),
        ["apis", g, v, rest @ ..] => resource_path(g, v, rest),
        _ => Route::Unknown,
    }
}

fn resource_path(group: &str, version: &str, mut rest: &[&str]) -> Route {
    let watch = rest.first() == Some(&"watch");
    if watch {
        rest = &rest[1..];
    }
    let mut namespace = None;
    // `namespaces/<ns>/<resource>...` unless the third part is a namespace subresource.
    if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !matches!(rest[2], "status" | "finalize")
    {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let (resource, name, sub) = match rest {
        [r] => (r, None, None),
        [r, n] => (r, Some(n.to_string()), None),
        [r, n, s] => (r, Some(n.to_string()), Some(s.to_string())),
        _ => return Route::Unknown,
    };
    if resource.is_empty() || name.as_deref() == Some("") || namespace.as_deref() == Some("") {
        return Route::Unknown;
    }
    Route::Resource(ResourcePath {
        group: group.into(),
        version: version.into(),
        namespace,
        resource: resource.to_string(),
        name,
        sub,
        watch,
    })
}

/// Reads a request body (bounded).
pub(crate) async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large (limit 3 MiB)",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

/// Parses a request body as JSON or YAML; protobuf (kubectl 1.33+ may send it) is refused
/// with 415 so the client sees a clear Status.
pub(crate) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") || body.starts_with(b"k8s\0") {
        return protobuf::decode(body).map_err(|e| {
            ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (for some kinds): {e}"
            ))
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if ct.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    }
}

pub(crate) async fn handle(store: Arc<Store>, mut req: Request<Incoming>) -> Response<Body> {
    let ctx = Ctx {
        method: req.method().clone(),
        query: parse_query(req.uri().query()),
        headers: req.headers().clone(),
        output: table::negotiate(
            req.headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok()),
        ),
    };
    let defs = store.defs();
    let get_only = |doc: Option<Value>| match (ctx.method == Method::GET, doc) {
        (true, Some(doc)) => json_response(StatusCode::OK, &doc),
        (false, Some(_)) => ApiError::method_not_allowed().into_response(),
        (_, None) => ApiError::unknown_path().into_response(),
    };
    match route(req.uri().path()) {
        Route::Version => get_only(Some(discovery::version())),
        Route::Health => text_response(StatusCode::OK, "ok"),
        Route::Api => {
            // HTTP/1.1 names the server in Host, HTTP/2 in the :authority of the URI.
            let host = ctx
                .header("host")
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_else(|| "127.0.0.1:6443".to_owned());
            get_only(Some(discovery::api_versions(&host)))
        }
        Route::Apis => get_only(Some(discovery::api_group_list(&defs))),
        Route::Group(g) => get_only(discovery::api_group(&defs, &g)),
        Route::GroupVersion(g, v) => get_only(discovery::resource_list(&defs, &g, &v)),
        Route::OpenApi(v2) => discovery::openapi(v2),
        Route::Unknown => ApiError::unknown_path().into_response(),
        Route::Resource(p) => {
            let Some(def) = defs
                .into_iter()
                .find(|d| d.group == p.group && d.version == p.version && d.plural == p.resource)
            else {
                return ApiError::unknown_path().into_response();
            };
            if p.sub.as_deref() == Some("exec") && def.has_sub("exec") {
                return exec::serve(&store, &ctx, &def, &p, &mut req)
                    .unwrap_or_else(ApiError::into_response);
            }
            let body = if matches!(
                ctx.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            ) {
                match read_body(req).await {
                    Ok(b) => b,
                    Err(e) => return e.into_response(),
                }
            } else {
                Bytes::new()
            };
            resource(&store, &ctx, &def, &p, body).unwrap_or_else(ApiError::into_response)
        }
    }
}

/// Scope checks and verb dispatch for one resource URL.
fn resource(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    p: &ResourcePath,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    if def.review {
        return match (&ctx.method, &p.name) {
            (&Method::POST, None) => Ok(review(ctx, def, &body)),
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    // A cluster-scoped resource has no namespaced URL; a namespaced one only lists
    // and watches across namespaces.
    if !def.namespaced && p.namespace.is_some() {
        return Err(ApiError::unknown_path());
    }
    let ns = p.namespace.clone().unwrap_or_default();
    let is_watch = p.watch || (ctx.method == Method::GET && ctx.flag("watch"));
    if def.namespaced && p.namespace.is_none() && !(ctx.method == Method::GET && p.name.is_none()) {
        return Err(ApiError::unknown_path());
    }
    let all_ns = def.namespaced && p.namespace.is_none();
    match (&ctx.method, p.name.as_deref(), p.sub.as_deref()) {
        (&Method::GET, _, None) if is_watch => watch::serve(
            store,
            ctx,
            def,
            (!all_ns).then_some(ns.as_str()),
            p.name.as_deref(),
        ),
        (&Method::GET, None, None) => rest::list(store, ctx, def, (!all_ns).then_some(ns.as_str())),
        (&Method::POST, None, None) => rest::create(store, ctx, def, &ns, &body),
        (&Method::DELETE, None, None) => rest::delete_collection(store, ctx, def, &ns),
        (_, None, _) => Err(ApiError::method_not_allowed()),
        (&Method::GET, Some(name), None) => rest::get(store, ctx, def, &ns, name),
        (&Method::PUT, Some(name), None) => {
            rest::update(store, ctx, def, &ns, name, &body, rest::Sub::Main)
        }
        (&Method::PATCH, Some(name), None) => {
            rest::patch(store, ctx, def, &ns, name, &body, rest::Sub::Main)
        }
        (&Method::DELETE, Some(name), None) => rest::delete(store, ctx, def, &ns, name, &body),
        (_, Some(_), None) => Err(ApiError::method_not_allowed()),
        (method, Some(name), Some(sub)) if def.has_sub(sub) => {
            let sub = match sub {
                "status" => rest::Sub::Status,
                "scale" => rest::Sub::Scale,
                "log" if method == Method::GET => return logs::serve(store, ctx, def, &ns, name),
                _ => return Err(ApiError::method_not_allowed()),
            };
            match *method {
                Method::GET => rest::get_sub(store, def, &ns, name, sub),
                Method::PUT => rest::update(store, ctx, def, &ns, name, &body, sub),
                Method::PATCH => rest::patch(store, ctx, def, &ns, name, &body, sub),
                _ => Err(ApiError::method_not_allowed()),
            }
        }
        _ => Err(ApiError::unknown_path()),
    }
}

/// Access and identity reviews: everything is allowed in the sandbox. A protobuf body
/// (which some clients send) is not decoded; the answer is JSON either way.
fn review(ctx: &Ctx, def: &ResourceDef, body: &[u8]) -> Response<Body> {
    let mut obj = parse_body(&ctx.headers, body)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"spec": {}}));
    obj["apiVersion"] = json!(def.api_version());
    obj["kind"] = json!(def.kind);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = match def.plural.as_str() {
        "selfsubjectaccessreviews" => {
            json!({"allowed": true, "reason": "the sandbox allows every request"})
        }
        "selfsubjectrulesreviews" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        _ => json!({"userInfo": {"username": "sandbox-user", "groups": ["system:authenticated"]}}),
    };
    json_response(StatusCode::CREATED, &obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(
        g: &str,
        ns: Option<&str>,
        r: &str,
        name: Option<&str>,
        sub: Option<&str>,
        watch: bool,
    ) -> Route {
        Route::Resource(ResourcePath {
            group: g.into(),
            version: "v1".into(),
            namespace: ns.map(Into::into),
            resource: r.into(),
            name: name.map(Into::into),
            sub: sub.map(Into::into),
            watch,
        })
    }

    #[test]
    fn routes_like_request_info() {
        assert_eq!(
            route("/api/v1/pods"),
            rp("", None, "pods", None, None, false)
        );
        assert_eq!(
            route("/api/v1/namespaces/default/pods/web/log"),
            rp("", Some("default"), "pods", Some("web"), Some("log"), false)
        );
        assert_eq!(
            route("/api/v1/namespaces/default"),
            rp("", None, "namespaces", Some("default"), None, false)
        );
        assert_eq!(
            route("/api/v1/namespaces/team-a/status"),
            rp(
                "",
                None,
                "namespaces",
                Some("team-a"),
                Some("status"),
                false
            )
        );
        assert_eq!(
            route("/api/v1/watch/namespaces/x/configmaps"),
            rp("", Some("x"), "configmaps", None, None, true)
        );
        assert_eq!(
            route("/apis/apps/v1/namespaces/d/deployments/w/scale"),
            rp(
                "apps",
                Some("d"),
                "deployments",
                Some("w"),
                Some("scale"),
                false
            )
        );
        assert_eq!(route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(
            route("/api/v1"),
            Route::GroupVersion(String::new(), "v1".into())
        );
        assert_eq!(route("/apis/a/v1/x/y/z/w"), Route::Unknown);
        assert_eq!(route("/nope"), Route::Unknown);
    }

    #[test]
    fn query_and_flags() {
        let q = parse_query(Some(
            "watch=True&labelSelector=app%3Dweb%2Ctier+in+(a)&command=echo&command=hi",
        ));
        let ctx = Ctx {
            method: Method::GET,
            query: q,
            headers: HeaderMap::new(),
            output: Output::Plain,
        };
        assert!(ctx.flag("watch"));
        assert_eq!(ctx.q("labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(ctx.q_all("command"), ["echo", "hi"]);
        assert!(!ctx.flag("follow"));
    }

    #[test]
    fn bodies() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_body(&h, br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        h.insert(header::CONTENT_TYPE, "application/yaml".parse().unwrap());
        assert_eq!(parse_body(&h, b"a: 1\n").unwrap(), json!({"a": 1}));
        h.insert(
            header::CONTENT_TYPE,
            "application/vnd.kubernetes.protobuf".parse().unwrap(),
        );
        assert_eq!(
            parse_body(&h, b"k8s\0\x0a\x0a\x0a\x02v1\x12\x04Node")
                .unwrap_err()
                .code,
            415
        );
    }
}
