//! End-to-end tests: the sandbox behind a real hyper server on loopback, driven by a
//! plain HTTP/1.1 client (and a WebSocket client for exec).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// Serves `sb` on an ephemeral loopback port; returns the address.
async fn serve(sb: Sandbox) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sb = sb.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let sb = sb.clone();
                    async move { Ok::<_, std::convert::Infallible>(sb.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One request on a fresh connection; returns status, content type and body.
async fn call(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, body)
}

async fn json_call(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let (s, _, b) = call(addr, method, path, headers, body).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[test]
fn default_seed_has_the_documented_names() {
    let sb = Sandbox::with_default_seed();
    let store = &sb.inner.store;
    let get = |g: &str, r: &str, ns: &str, n: &str| {
        store.get(&store.find(g, "v1", r).unwrap(), ns, n).is_some()
    };
    for ns in ["default", "kube-system", "team-a"] {
        assert!(get("", "namespaces", "", ns), "{ns}");
        assert!(get("", "serviceaccounts", ns, "default"), "{ns}/default sa");
    }
    assert!(get("", "pods", "default", "nginx"));
    assert!(get("", "pods", "default", "web-7c9f8d6b5-q2x7k"));
    assert!(get("", "pods", "team-a", "api-server"));
    assert!(get("", "pods", "kube-system", "coredns-76f75df574-8xk2m"));
    assert!(get("apps", "deployments", "default", "web"));
    assert!(get("", "secrets", "default", "db-credentials"));
    assert!(get("", "secrets", "default", "api-key"));
    assert!(get("", "secrets", "team-a", "builder-token"));
    assert!(get("", "configmaps", "default", "app-config"));
    assert!(get(
        "rbac.authorization.k8s.io",
        "roles",
        "team-a",
        "pod-reader"
    ));
    assert!(get(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "team-a",
        "builder-reads-pods"
    ));
}

#[test]
fn seed_errors_are_typed() {
    assert!(matches!(
        Sandbox::from_yaml("kind: Widget\napiVersion: x/v1\nmetadata: {name: a}"),
        Err(Error::UnknownKind { .. })
    ));
    assert!(matches!(
        Sandbox::from_yaml("- 1"),
        Err(Error::NotAnObject { .. })
    ));
    assert!(matches!(Sandbox::from_yaml(": :"), Err(Error::Yaml(_))));
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: auto}}\n";
    let sb = Sandbox::from_yaml(list).unwrap();
    let ns = sb.inner.store.find("", "v1", "namespaces").unwrap();
    assert!(
        sb.inner.store.get(&ns, "", "auto").is_some(),
        "a referenced namespace is created"
    );
}

#[tokio::test]
async fn discovery_and_recording() {
    let sb = Sandbox::with_default_seed();
    let addr = serve(sb.clone()).await;
    let (s, v) = json_call(
        addr,
        Method::GET,
        "/version",
        &[("authorization", "Bearer t1")],
        "",
    )
    .await;
    assert_eq!(
        (s, v["gitVersion"].as_str()),
        (StatusCode::OK, Some("v1.32.0"))
    );
    let accept =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let (s, ct, _) = call(addr, Method::GET, "/apis", &[("accept", accept)], "").await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::OK, "application/json"),
        "plain JSON makes kubectl fall back"
    );
    let (_, v) = json_call(addr, Method::GET, "/api/v1", &[], "").await;
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "pods/exec"));
    let (s, _, b) = call(addr, Method::GET, "/openapi/v2", &[], "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&b[..2], b"\x0a\x03");
    assert_eq!(
        sb.seen_authorizations()[..2],
        [Some("Bearer t1".to_string()), None]
    );
    let h = sb.last_request_headers().unwrap();
    assert!(h.get("authorization").is_none());
}

#[tokio::test]
async fn crud_lifecycle_with_statuses() {
    let addr = serve(Sandbox::with_default_seed()).await;
    let base = "/api/v1/namespaces/default/configmaps";
    let (s, created) = json_call(
        addr,
        Method::POST,
        base,
        &[],
        r#"{"metadata":{"name":"c1","labels":{"a":"1"}},"data":{"k":"v"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = json_call(
        addr,
        Method::POST,
        base,
        &[],
        r#"{"metadata":{"name":"c1"}}"#,
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyExists"))
    );
    let (s, v) = json_call(
        addr,
        Method::POST,
        "/api/v1/namespaces/nope/configmaps",
        &[],
        r#"{"metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("namespaces \"nope\" not found"))
    );
    // Stale update conflicts.
    let mut stale = created.clone();
    stale["data"]["k"] = json!("v2");
    let (s, _) = json_call(
        addr,
        Method::PUT,
        &format!("{base}/c1"),
        &[],
        &stale.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = json_call(
        addr,
        Method::PUT,
        &format!("{base}/c1"),
        &[],
        &stale.to_string(),
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict"))
    );
    // Patches.
    let merge = [("content-type", "application/merge-patch+json")];
    let (_, v) = json_call(
        addr,
        Method::PATCH,
        &format!("{base}/c1"),
        &merge,
        r#"{"data":{"n":"1"}}"#,
    )
    .await;
    assert_eq!(v["data"], json!({"k": "v2", "n": "1"}));
    let jp = [("content-type", "application/json-patch+json")];
    let (_, v) = json_call(
        addr,
        Method::PATCH,
        &format!("{base}/c1"),
        &jp,
        r#"[{"op":"remove","path":"/data/k"}]"#,
    )
    .await;
    assert_eq!(v["data"], json!({"n": "1"}));
    let apply = [("content-type", "application/apply-patch+yaml")];
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c2}\ndata: {x: y}\n";
    let (s, _) = json_call(
        addr,
        Method::PATCH,
        &format!("{base}/c2?fieldManager=t&force=true"),
        &apply,
        body,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "apply creates");
    let (s, _) = json_call(
        addr,
        Method::PATCH,
        &format!("{base}/c2?fieldManager=t"),
        &apply,
        body,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "then patches");
    // Dry run does not store.
    let (s, _) = json_call(
        addr,
        Method::POST,
        &format!("{base}?dryRun=All"),
        &[],
        r#"{"metadata":{"name":"dry"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = json_call(addr, Method::GET, &format!("{base}/dry"), &[], "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        v,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "configmaps \"dry\" not found", "reason": "NotFound", "details": {"name": "dry", "kind": "configmaps"}, "code": 404})
    );
    // Delete returns a Success Status for configmaps, the object for pods.
    let (s, v) = json_call(
        addr,
        Method::DELETE,
        &format!("{base}/c1"),
        &[],
        r#"{"propagationPolicy":"Background"}"#,
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("Success")));
    let (_, v) = json_call(
        addr,
        Method::DELETE,
        "/api/v1/namespaces/default/pods/nginx",
        &[],
        "",
    )
    .await;
    assert_eq!(v["kind"], "Pod");
    let (s, v) = json_call(
        addr,
        Method::DELETE,
        "/api/v1/namespaces/default/pods/nginx",
        &[],
        "",
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some("NotFound"))
    );
}

#[tokio::test]
async fn lists_select_paginate_and_print_tables() {
    let addr = serve(Sandbox::with_default_seed()).await;
    let names = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (_, v) = json_call(addr, Method::GET, "/api/v1/pods", &[], "").await;
    assert_eq!(v["kind"], "PodList");
    assert_eq!(names(&v).len(), 4);
    let (_, v) = json_call(
        addr,
        Method::GET,
        "/api/v1/pods?labelSelector=app%20in%20(web,api)",
        &[],
        "",
    )
    .await;
    assert_eq!(names(&v), ["web-7c9f8d6b5-q2x7k", "api-server"]);
    let (_, v) = json_call(
        addr,
        Method::GET,
        "/api/v1/pods?fieldSelector=metadata.namespace!=default,status.phase=Running",
        &[],
        "",
    )
    .await;
    assert_eq!(names(&v).len(), 2);
    let (s, v) = json_call(
        addr,
        Method::GET,
        "/api/v1/pods?labelSelector=a%20in%20(",
        &[],
        "",
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    let (_, page1) = json_call(addr, Method::GET, "/api/v1/pods?limit=3", &[], "").await;
    assert_eq!(names(&page1).len(), 3);
    assert_eq!(page1["metadata"]["remainingItemCount"], 1);
    let token = page1["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, page2) = json_call(
        addr,
        Method::GET,
        &format!("/api/v1/pods?limit=3&continue={token}"),
        &[],
        "",
    )
    .await;
    assert_eq!(names(&page2), ["api-server"]);
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (_, t) = json_call(
        addr,
        Method::GET,
        "/api/v1/namespaces/default/pods",
        &[("accept", table)],
        "",
    )
    .await;
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let (_, t) = json_call(
        addr,
        Method::GET,
        "/api/v1/namespaces/default/pods/nginx?includeObject=Object",
        &[("accept", table)],
        "",
    )
    .await;
    assert_eq!(t["rows"][0]["object"]["kind"], "Pod");
    let partial = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io";
    let (_, p) = json_call(
        addr,
        Method::GET,
        "/api/v1/secrets",
        &[("accept", partial)],
        "",
    )
    .await;
    assert_eq!(p["kind"], "PartialObjectMetadataList");
    assert!(p["items"][0].get("data").is_none());
}

#[tokio::test]
async fn watch_streams_events() {
    let sb = Sandbox::with_default_seed();
    let addr = serve(sb).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(
        "/api/v1/namespaces/default/configmaps?watch=True&timeoutSeconds=5&labelSelector=w",
    )
    .header("host", "x")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let mut body = resp.into_body();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        json_call(
            addr,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            &[],
            r#"{"metadata":{"name":"w1","labels":{"w":"1"}}}"#,
        )
        .await;
        json_call(
            addr,
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/w1",
            &[],
            "",
        )
        .await;
    });
    let mut text = String::new();
    while let Some(Ok(frame)) = tokio::time::timeout(Duration::from_secs(6), body.frame())
        .await
        .unwrap()
    {
        if let Some(d) = frame.data_ref() {
            text.push_str(std::str::from_utf8(d).unwrap());
        }
        if text.lines().count() >= 2 {
            break;
        }
    }
    let types: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["ADDED", "DELETED"]);
    assert!(text.starts_with(r#"{"type":"ADDED","object":{"#));
}

#[tokio::test]
async fn logs_and_subresources() {
    let addr = serve(Sandbox::with_default_seed()).await;
    let (s, ct, b) = call(
        addr,
        Method::GET,
        "/api/v1/namespaces/default/pods/nginx/log?tailLines=2",
        &[],
        "",
    )
    .await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, "text/plain"));
    assert_eq!(String::from_utf8(b).unwrap().lines().count(), 2);
    let (s, v) = json_call(
        addr,
        Method::GET,
        "/api/v1/namespaces/team-a/pods/api-server/log",
        &[],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("a container name must be specified"));
    let merge = [("content-type", "application/merge-patch+json")];
    let (_, v) = json_call(
        addr,
        Method::PATCH,
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        &merge,
        r#"{"spec":{"replicas":4}}"#,
    )
    .await;
    assert_eq!(
        (v["kind"].as_str(), v["spec"]["replicas"].as_i64()),
        (Some("Scale"), Some(4))
    );
    let (_, v) = json_call(
        addr,
        Method::PATCH,
        "/api/v1/namespaces/default/pods/nginx/status",
        &merge,
        r#"{"status":{"phase":"Failed"},"spec":{"nodeName":"x"}}"#,
    )
    .await;
    assert_eq!(
        (
            v["status"]["phase"].as_str(),
            v["spec"]["nodeName"].as_str()
        ),
        (Some("Failed"), Some("sandbox-node"))
    );
    let (s, v) = json_call(
        addr,
        Method::POST,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        &[("content-type", "application/vnd.kubernetes.protobuf")],
        "k8s\0garbage",
    )
    .await;
    assert_eq!(
        (s, v["status"]["allowed"].as_bool()),
        (StatusCode::CREATED, Some(true))
    );
}

#[tokio::test]
async fn exec_echoes_over_websocket() {
    let addr = serve(Sandbox::with_default_seed()).await;
    let url = format!("ws://{addr}/api/v1/namespaces/default/pods/nginx/exec?command=echo&command=hello&stdout=true&stderr=true");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    let mut frames = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(d) = m {
            frames.push(d);
        }
    }
    let _ = ws.close(None).await;
    assert_eq!(frames[0], b"\x01hello\n");
    assert_eq!(frames[1][0], 3);
    let (s, v) = json_call(
        addr,
        Method::GET,
        "/api/v1/namespaces/default/pods/nginx/exec?command=ls&stdout=true",
        &[("upgrade", "SPDY/3.1")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("WebSocket"));
    let _ = ws.send(Message::Close(None)).await;
}

#[tokio::test]
async fn crds_become_served() {
    let addr = serve(Sandbox::with_default_seed()).await;
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"}, "spec": {"group": "example.com", "scope": "Cluster",
        "names": {"plural": "gadgets", "kind": "Gadget"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
    let (s, v) = json_call(
        addr,
        Method::POST,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &[],
        &crd.to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["status"]["conditions"][1]["type"], "Established");
    let (_, v) = json_call(addr, Method::GET, "/apis/example.com/v1", &[], "").await;
    assert_eq!(v["resources"][0]["namespaced"], false);
    let (s, _) = json_call(
        addr,
        Method::POST,
        "/apis/example.com/v1/gadgets",
        &[],
        r#"{"metadata":{"name":"g"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = json_call(
        addr,
        Method::POST,
        "/apis/example.com/v1/namespaces/default/gadgets",
        &[],
        r#"{"metadata":{"name":"g"}}"#,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "cluster-scoped resources have no namespaced URL"
    );
    let (_, v) = json_call(addr, Method::GET, "/apis", &[], "").await;
    assert!(v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "example.com"));
}
