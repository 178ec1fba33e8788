//! An in-memory Kubernetes API server for tests, demos and trying policies without a cluster.
//!
//! [`Sandbox::handle`] serves one HTTP request the way kube-apiserver would, closely
//! enough that unmodified clients (kubectl, client-go, kube-rs, the Python client) work
//! against it: discovery, CRUD with resourceVersion semantics, patches, selectors,
//! pagination, watches, server-side Table printing, pod logs, exec over WebSocket,
//! CustomResourceDefinitions and access reviews (which always allow). Errors are
//! `Status` objects with the real server's reasons and messages.
//!
//! What it does not do: authentication or authorization (every request is allowed and
//! the `Authorization` header is only recorded), admission, schema validation, garbage
//! collection, SPDY, port-forward and attach. Responses are always JSON; protobuf
//! request bodies (kubectl 1.32+ sends them from `kubectl create <kind>`) are decoded
//! for the common core, apps and RBAC kinds and refused with 415 otherwise. OpenAPI:
//! `/openapi/v2` is a minimal, schema-less protobuf document (enough for kubectl's
//! client-side validation to pass), `/openapi/v3` is 404.
//! Controllers and the kubelet are simulated instantly: pods are Running and Ready,
//! deployments report their replicas available, CRDs are Established.
//!
//! Serve it with hyper's `serve_connection_with_upgrades` so exec can upgrade.

mod defaults;
mod discovery;
mod exec;
mod handler;
pub mod issuer;
mod logs;
mod patch;
mod registry;
mod rest;
mod selector;
mod status;
mod store;
mod table;
mod util;
mod watch;

use crate::sync::Locked;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};

use http::StatusCode;
use status::{json_response, ApiError};
use store::Store;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The default seed: namespaces `default`, `kube-system`, `team-a` and a few workloads.
const DEFAULT_SEED: &str = include_str!("seed.yaml");

/// chaperone's own CRD, so approvals work against the sandbox as in a cluster.
const ACCESS_REQUEST_CRD: &str = include_str!("../../manifests/base/crd-accessrequests.yaml");

/// How many Authorization values are remembered (oldest dropped first).
const MAX_SEEN: usize = 100_000;

/// Errors loading a seed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the seed is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("seed document {index}: expected an object with apiVersion, kind and metadata.name")]
    NotAnObject { index: usize },
    #[error(
        "seed document {index}: the sandbox serves no kind {kind:?} in apiVersion {api_version:?}"
    )]
    UnknownKind {
        index: usize,
        api_version: String,
        kind: String,
    },
    #[error("seed document {index} ({kind} {name:?}): {message}")]
    Rejected {
        index: usize,
        kind: String,
        name: String,
        message: String,
    },
}

struct Inner {
    store: Arc<Store>,
    issuer: issuer::Issuer,
    seen_authorizations: Mutex<Vec<Option<String>>>,
    last_headers: Mutex<Option<http::HeaderMap>>,
}

/// An in-memory Kubernetes API server; clones share the same state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("resource_version", &self.inner.store.resource_version())
            .finish()
    }
}

/// Seed objects in a usable order: CRDs, then namespaces, then the rest, each with its
/// document index for error messages. `kind: List` documents are flattened.
fn seed_objects(text: &str) -> Result<Vec<(usize, Value)>, Error> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)?;
        match value {
            Value::Null => {}
            Value::Object(_)
                if value
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List")) =>
            {
                let items = value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                out.extend(items.into_iter().map(|i| (index, i)));
            }
            Value::Object(_) => out.push((index, value)),
            _ => return Err(Error::NotAnObject { index }),
        }
    }
    let rank = |v: &Value| match v.get("kind").and_then(Value::as_str) {
        Some("CustomResourceDefinition") => 0,
        Some("Namespace") => 1,
        _ => 2,
    };
    out.sort_by_key(|(i, v)| (rank(v), *i));
    Ok(out)
}

impl Sandbox {
    fn empty() -> Sandbox {
        Sandbox {
            inner: Arc::new(Inner {
                store: Arc::new(Store::new()),
                // A P-256 key from the system RNG; failing here means no usable RNG.
                issuer: issuer::Issuer::generate().expect("the system RNG works"),
                seen_authorizations: Mutex::new(Vec::new()),
                last_headers: Mutex::new(None),
            }),
        }
    }

    /// Seeds from YAML text: a multi-document stream and/or a `kind: List` of objects.
    ///
    /// Namespaced objects without a namespace go to `default`; namespaces an object
    /// names are created if the seed does not define them. A given `status` and
    /// `creationTimestamp` are kept.
    pub fn from_yaml(text: &str) -> Result<Sandbox, Error> {
        let sandbox = Sandbox::empty();
        let store = &sandbox.inner.store;
        let ns_def = store
            .find("", "v1", "namespaces")
            .ok_or_else(|| Error::UnknownKind {
                index: 0,
                api_version: "v1".into(),
                kind: "Namespace".into(),
            })?;
        for (index, obj) in seed_objects(text)? {
            let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (api_version, kind) = (s("apiVersion"), s("kind"));
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if name.is_empty() {
                return Err(Error::NotAnObject { index });
            }
            let def = store
                .find_kind(&api_version, &kind)
                .ok_or_else(|| Error::UnknownKind {
                    index,
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                })?;
            let mut obj = obj;
            if def.namespaced {
                let ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string();
                obj["metadata"]["namespace"] = json!(ns);
                if store.get(&ns_def, "", &ns).is_none() {
                    let created =
                        store.create(&ns_def, json!({"metadata": {"name": ns}}), false, false);
                    created.map_err(|e| rejected(index, &kind, &name, &e))?;
                }
            }
            store
                .create(&def, obj, false, true)
                .map_err(|e| rejected(index, &kind, &name, &e))?;
        }
        store.reset_history();
        Ok(sandbox)
    }

    /// The sandbox seeded with the built-in `seed.yaml`.
    pub fn with_default_seed() -> Sandbox {
        // The embedded seed is tested below; failing to load it is a build defect.
        Sandbox::from_yaml(&format!("{DEFAULT_SEED}\n---\n{ACCESS_REQUEST_CRD}"))
            .expect("the embedded seed.yaml loads")
    }

    /// Serves one request. Never panics; errors are Kubernetes Status objects.
    pub async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        self.record(req.headers());
        let req = match self.serve_issuer(req).await {
            Ok(rsp) => return rsp,
            Err(req) => req,
        };
        let store = self.inner.store.clone();
        AssertUnwindSafe(handler::handle(store, req))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                ApiError::internal("the sandbox failed to serve this request (a bug: it panicked)")
                    .into_response()
            })
    }

    /// The service-account issuer's endpoints: OIDC discovery, the JWKS and the
    /// TokenRequest subresource. Any other request is handed back.
    async fn serve_issuer(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Body>, http::Request<hyper::body::Incoming>> {
        let path = req.uri().path().to_owned();
        let get = req.method() == http::Method::GET;
        match (get, path.as_str()) {
            (true, "/.well-known/openid-configuration") => {
                return Ok(json_response(
                    StatusCode::OK,
                    &self.inner.issuer.discovery(),
                ))
            }
            (true, "/openid/v1/jwks") => {
                return Ok(json_response(StatusCode::OK, &self.inner.issuer.jwks()))
            }
            _ => {}
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] = parts.as_slice()
        else {
            return Err(req);
        };
        if req.method() != http::Method::POST {
            return Ok(ApiError::method_not_allowed().into_response());
        }
        let (ns, name) = (ns.to_string(), name.to_string());
        let body = match handler::read_body(req).await {
            Ok(b) => b,
            Err(e) => return Ok(e.into_response()),
        };
        let request: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Ok(
                    ApiError::bad_request(format!("invalid TokenRequest: {e}")).into_response()
                )
            }
        };
        let audiences: Vec<String> = request
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .filter(|a: &Vec<String>| !a.is_empty())
            .unwrap_or_else(|| vec![issuer::ISSUER.to_owned()]);
        let ttl = request
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let bound = request.pointer("/spec/boundObjectRef");
        let pod = bound.and_then(|b| Some((b.get("name")?.as_str()?, b.get("uid")?.as_str()?)));
        let minted = self.mint(&ns, &name, &audiences, ttl, pod);
        Ok(match minted {
            Ok(token) => {
                let mut out = request.clone();
                out["kind"] = json!("TokenRequest");
                out["apiVersion"] = json!("authentication.k8s.io/v1");
                out["metadata"] = json!({"name": name, "namespace": ns});
                out["status"] = json!({
                    "token": token,
                    "expirationTimestamp": util::rfc3339(util::now_unix() + ttl),
                });
                json_response(StatusCode::CREATED, &out)
            }
            Err(e) => e.into_response(),
        })
    }

    /// The service-account issuer's public keys (`GET /openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        self.inner.issuer.jwks()
    }

    /// Mints a projected-token-shaped JWT for an existing service account, signed by
    /// the sandbox cluster's issuer ([`issuer::ISSUER`], keys at `/openid/v1/jwks`).
    /// The lifetime is clamped to 10 minutes .. 48 hours, as the API server does.
    pub fn mint_service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[String],
        ttl_seconds: i64,
        pod: Option<(&str, &str)>,
    ) -> Result<String, String> {
        self.mint(namespace, service_account, audiences, ttl_seconds, pod)
            .map_err(|e| e.message)
    }

    fn mint(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[String],
        ttl_seconds: i64,
        pod: Option<(&str, &str)>,
    ) -> Result<String, ApiError> {
        let store = &self.inner.store;
        let def = store
            .find("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::internal("no serviceaccounts resource"))?;
        let account = store
            .get(&def, namespace, service_account)
            .ok_or_else(|| ApiError::not_found("", "serviceaccounts", service_account))?;
        let uid = account
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.inner
            .issuer
            .mint(&issuer::TokenSpec {
                namespace,
                service_account,
                service_account_uid: uid,
                audiences,
                ttl_seconds: ttl_seconds.clamp(600, 48 * 3600),
                pod,
            })
            .map_err(ApiError::internal)
    }

    fn record(&self, headers: &http::HeaderMap) {
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        {
            let mut seen = self.inner.seen_authorizations.locked();
            if seen.len() >= MAX_SEEN {
                seen.remove(0);
            }
            seen.push(auth);
        }
        *self.inner.last_headers.locked() = Some(headers.clone());
    }

    /// Every Authorization header value the sandbox has seen, in order (None when absent) — tests assert the caller's token never arrives.
    pub fn seen_authorizations(&self) -> Vec<Option<String>> {
        self.inner.seen_authorizations.locked().clone()
    }

    /// Request headers of the last request (tests check what a proxy forwarded: Accept, Accept-Encoding, Impersonate-*).
    pub fn last_request_headers(&self) -> Option<http::HeaderMap> {
        self.inner.last_headers.locked().clone()
    }
}

fn rejected(index: usize, kind: &str, name: &str, e: &ApiError) -> Error {
    Error::Rejected {
        index,
        kind: kind.to_string(),
        name: name.to_string(),
        message: e.message.clone(),
    }
}

#[cfg(test)]
mod tests;
