//! The webhook over real HTTPS on loopback, with a generated certificate: AdmissionReview
//! v1 in and out, the uid echoed, a JSONPatch that injects the pod, and clear errors
//! for reviews it cannot read.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chaperone_injector::config::Config;
use chaperone_injector::server::Limits;
use chaperone_injector::{mutate, pki, server, tls};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Webhook {
    addr: std::net::SocketAddr,
    client: tokio_rustls::TlsConnector,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// The server on 127.0.0.1 with a leaf for the Service name, signed by a fresh CA the
/// client trusts (as the API server trusts `caBundle`).
async fn webhook() -> Webhook {
    webhook_bounded(Limits::default()).await
}

/// The same with bounds of its own.
async fn webhook_bounded(limits: Limits) -> Webhook {
    let now = time::OffsetDateTime::now_utc();
    let ca = pki::Authority::generate("chaperone-webhook-ca", 10, now).unwrap();
    let names = ["chaperone-injector.chaperone-system.svc".to_string()];
    let leaf = ca.issue_server(&names, 2, now).unwrap();
    let resolver = Arc::new(tls::Resolver::new(&leaf.cert_pem, &leaf.key_pem).unwrap());
    let server_tls = Arc::new(tls::server_config(resolver).unwrap());

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        server_tls,
        Arc::new(Config::default()),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    Webhook {
        addr,
        client: tokio_rustls::TlsConnector::from(Arc::new(client)),
        stop: Some(stop),
        task,
    }
}

impl Webhook {
    /// One HTTP/1.1 request; returns the status code and body.
    async fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("chaperone-injector.chaperone-system.svc").unwrap();
        let mut tls = self.client.connect(name, tcp).await.expect("TLS handshake");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: chaperone-injector.chaperone-system.svc\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (413) before reading all of an oversized body.
        let _ = tls.write_all(body).await;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        let code = text[9..12].parse().unwrap();
        let start = text.find("\r\n\r\n").unwrap() + 4;
        let body = out[start..].to_vec();
        // Bodies come back whole (Content-Length) or chunked; de-chunk the latter.
        if text[..start]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return (code, dechunk(&body));
        }
        (code, body)
    }

    /// A TLS connection that has sent `start` and waits.
    async fn open(&self, start: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("chaperone-injector.chaperone-system.svc").unwrap();
        let mut tls = self.client.connect(name, tcp).await.expect("TLS handshake");
        tls.write_all(start).await.unwrap();
        tls.flush().await.unwrap();
        tls
    }

    /// A TLS connection that sends `start` and then waits for the server to answer or
    /// close: what it answered (empty if closed), and after how long.
    async fn stall(&self, start: &[u8]) -> (String, Duration) {
        let mut tls = self.open(start).await;
        let began = std::time::Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "sent {:?}: the connection is still held after 5 s",
            String::from_utf8_lossy(start)
        );
        (String::from_utf8_lossy(&out).into_owned(), began.elapsed())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 4 + size..];
    }
}

fn review(uid: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "mcp",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

#[tokio::test]
async fn a_pod_create_is_answered_with_a_json_patch_that_injects_it() {
    let hook = webhook().await;
    let pod = fixture("kubernetes-mcp-server");
    let body =
        serde_json::to_vec(&review("705ab4f5-6393-11e8-b7cc-42010a800002", pod.clone())).unwrap();
    let (code, body) = hook.call("POST", "/mutate", &body).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    // `[]byte` in Go's JSON: a base64 string.
    assert!(response["patch"].is_string(), "patch is base64");
    let bytes: k8s_openapi::ByteString = serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).unwrap();
    let injected = mutate::check(&pod, &patch).unwrap();
    assert_injected(&injected, &Config::default());
    hook.stop().await;
}

#[tokio::test]
async fn an_injected_pod_is_allowed_without_a_patch() {
    let hook = webhook().await;
    let pod = inject(&fixture("kubernetes-mcp-server"), &Config::default());
    let (code, body) = hook
        .call(
            "POST",
            "/mutate",
            &serde_json::to_vec(&review("u-2", pod)).unwrap(),
        )
        .await;
    assert_eq!(code, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    hook.stop().await;
}

#[tokio::test]
async fn a_pod_that_cannot_be_injected_is_refused_with_the_reason() {
    let hook = webhook().await;
    let mut pod = fixture("automount-false");
    pod["metadata"]["annotations"] = json!({"chaperone.dev/policy": "Not_A_Name"});
    let (code, body) = hook
        .call(
            "POST",
            "/mutate",
            &serde_json::to_vec(&review("u-3", pod)).unwrap(),
        )
        .await;
    assert_eq!(code, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let response = &answer["response"];
    assert_eq!(response["uid"], "u-3");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert!(response["status"]["message"]
        .as_str()
        .unwrap()
        .contains("chaperone.dev/policy"));
    hook.stop().await;
}

#[tokio::test]
async fn unreadable_and_oversized_reviews_get_clear_errors() {
    let hook = webhook().await;
    let rows: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/mutate",
            b"{not json".to_vec(),
            400,
            "invalid AdmissionReview",
        ),
        (
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "no request",
        ),
        (
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "want admission.k8s.io/v1",
        ),
        (
            "POST",
            "/mutate",
            vec![b' '; (3 << 20) + 1],
            413,
            "larger than",
        ),
        ("GET", "/mutate", vec![], 405, "POST"),
        ("GET", "/healthz", vec![], 200, "ok"),
        ("GET", "/readyz", vec![], 200, "ok"),
        ("GET", "/other", vec![], 404, "not found"),
    ];
    for (method, path, body, want_code, want_text) in rows {
        let (code, got) = hook.call(method, path, &body).await;
        let text = String::from_utf8_lossy(&got);
        assert_eq!(code, want_code, "{method} {path}: {text}");
        assert!(text.contains(want_text), "{method} {path}: {text}");
    }
    // An update of a pod the proxy is not in passes unchanged.
    let mut r = review("u-4", fixture("automount-false"));
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["oldObject"] = fixture("automount-false");
    let (code, body) = hook
        .call("POST", "/mutate", &serde_json::to_vec(&r).unwrap())
        .await;
    assert_eq!(code, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    hook.stop().await;
}

/// An injected pod's proxy cannot be given another image by an update: the kubelet
/// would restart it as that image, holding the real token.
#[tokio::test]
async fn an_update_that_swaps_the_proxys_image_is_refused() {
    let hook = webhook().await;
    let injected = inject(&fixture("kubernetes-mcp-server"), &Config::default());
    let update = |new: Value| {
        let mut r = review("u-5", new);
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["oldObject"] = injected.clone();
        r["request"]["options"] = json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"});
        serde_json::to_vec(&r).unwrap()
    };
    let mut swapped = injected.clone();
    swapped["spec"]["initContainers"][0]["image"] = json!("evil/passthrough:1");
    let (code, body) = hook.call("POST", "/mutate", &update(swapped)).await;
    assert_eq!(code, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 403);
    assert!(response["status"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot be changed"));
    // The app's own image may change, as for any pod.
    let mut upgraded = injected.clone();
    upgraded["spec"]["containers"][0]["image"] = json!("example/mcp:2");
    let (_, body) = hook.call("POST", "/mutate", &update(upgraded)).await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    hook.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_no_request_or_no_body_in_time_is_dropped() {
    let hook = webhook_bounded(Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let head = "POST /mutate HTTP/1.1\r\nHost: chaperone-injector.chaperone-system.svc\r\n";
    // Nothing, fewer bytes than tell the protocol, a head never finished: closed unanswered.
    for start in ["", "POST /mu", head] {
        let (answer, took) = hook.stall(start.as_bytes()).await;
        assert_eq!(answer, "", "sent {start:?}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "sent {start:?}: closed after {took:?}"
        );
    }
    // A body that stops short of its Content-Length: answered 408, saying why.
    let slow =
        format!("{head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\"");
    let (answer, took) = hook.stall(slow.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 500ms"), "{answer}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // An HTTP/2 connection that opens no stream answers pings for good: it is told to
    // go away (GOAWAY, then closed) once it has had no request open for the bound.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let (_, took) = hook.stall(preface).await;
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "an idle HTTP/2 connection closed after {took:?}"
    );
    // A client that sends its request is answered.
    let (code, _) = hook.call("GET", "/healthz", &[]).await;
    assert_eq!(code, 200);
    hook.stop().await;
}

#[tokio::test]
async fn connections_and_reviews_past_their_bounds_wait_or_are_refused() {
    let hook = webhook_bounded(Limits {
        request_timeout: Duration::from_secs(5),
        max_connections: 3,
        max_reviews: 1,
        ..Limits::default()
    })
    .await;
    let review = review("u-9", fixture("kubernetes-mcp-server")).to_string();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: chaperone-injector.chaperone-system.svc\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        review.len()
    );
    // A review whose body is slow to come holds the one turn; a second review, whole,
    // waits for it, and is answered once the first has been.
    let (first, rest) = review.split_at(10);
    let mut holder = hook.open(format!("{head}{first}").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiter = hook.open(format!("{head}{review}").as_bytes()).await;
    let mut answer = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(500), waiter.read_exact(&mut answer));
    assert!(
        early.await.is_err(),
        "a second review was read while the first held the turn"
    );
    holder.write_all(rest.as_bytes()).await.unwrap();
    for mut conn in [holder, waiter] {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut out));
        assert!(
            read.await.is_ok(),
            "a review was not answered once the turn was free"
        );
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    // Three idle connections take every place: a fourth is closed unanswered, before
    // its handshake ends, and it takes no place.
    let idle = [
        hook.open(b"").await,
        hook.open(b"").await,
        hook.open(b"").await,
    ];
    let tcp = TcpStream::connect(hook.addr).await.unwrap();
    let name = ServerName::try_from("chaperone-injector.chaperone-system.svc").unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(2), hook.client.connect(name, tcp))
        .await
        .expect("the connection past the bound is closed at once");
    assert!(refused.is_err(), "a connection past the bound was served");
    // Once one of them ends, its place is free again and a review is answered.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, body) = hook.call("POST", "/mutate", review.as_bytes()).await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    hook.stop().await;
}
