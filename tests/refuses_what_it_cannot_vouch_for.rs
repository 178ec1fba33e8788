//! Requests chaperone cannot forward safely are refused with a Kubernetes Status that
//! says why, and never reach the API server.

mod support;

use std::time::{Duration, Instant};

use chaperone::body;
use http::Request;
use support::sandbox;

const PODS: &str = "/api/v1/namespaces/default/pods";

/// (what, method, path, headers, code, reason, words in the message)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
    &'static str,
    &'static str,
);

/// The headers of a websocket handshake (RFC 6455), as a browser or a client library
/// opening a websocket watch sends them.
const WEBSOCKET: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_status_objects_and_never_reach_the_api_server() {
    let env = sandbox().with_proxy().start().await;
    let client = env.client(false);
    let base = env.proxy_url();
    let cases: &[Case] = &[
        (
            "impersonate user",
            "GET",
            PODS,
            &[("Impersonate-User", "admin")],
            403,
            "Forbidden",
            "impersonate-user",
        ),
        (
            "impersonate group",
            "GET",
            PODS,
            &[("Impersonate-Group", "system:masters")],
            403,
            "Forbidden",
            "impersonate-group",
        ),
        (
            "impersonate extra",
            "GET",
            PODS,
            &[("Impersonate-Extra-Scopes", "x")],
            403,
            "Forbidden",
            "impersonate-extra-scopes",
        ),
        (
            "protobuf only",
            "GET",
            PODS,
            &[("Accept", "application/vnd.kubernetes.protobuf")],
            406,
            "NotAcceptable",
            "accept application/json",
        ),
        (
            "yaml only",
            "GET",
            PODS,
            &[("Accept", "application/yaml")],
            406,
            "NotAcceptable",
            "application/yaml",
        ),
        (
            "encoded slash",
            "GET",
            "/api/v1/namespaces/default/pods/a%2Fb",
            &[],
            400,
            "BadRequest",
            "encoded slash",
        ),
        (
            "climbs above root",
            "GET",
            "/../api/v1/pods",
            &[],
            400,
            "BadRequest",
            "refused the request path",
        ),
        (
            "bad escape",
            "GET",
            "/api/v1/namespaces/default/pods/%zz",
            &[],
            400,
            "BadRequest",
            "refused the request path",
        ),
        // A websocket watch or log stream would carry what it reads in frames the masker
        // and the record never see: only connections (exec, attach, port-forward,
        // proxy) are upgraded.
        (
            "websocket watch",
            "GET",
            "/api/v1/namespaces/default/secrets?watch=1",
            WEBSOCKET,
            400,
            "BadRequest",
            "not watch secrets",
        ),
        (
            "websocket log stream",
            "GET",
            "/api/v1/namespaces/default/pods/nginx/log?follow=true",
            WEBSOCKET,
            400,
            "BadRequest",
            "not get pods/log",
        ),
        (
            "upgraded create",
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
            400,
            "BadRequest",
            "not create configmaps",
        ),
        (
            "unknown method",
            "OPTIONS",
            PODS,
            &[],
            405,
            "MethodNotAllowed",
            "OPTIONS",
        ),
    ];
    for (what, method, path, headers, code, reason, words) in cases {
        let seen_before = env.started.sandbox.seen_authorizations().len();
        let mut req = Request::builder()
            .method(*method)
            .uri(format!("{base}{path}"));
        for (k, v) in *headers {
            req = req.header(*k, *v);
        }
        let reply = client.send(req.body(body::empty()).unwrap()).await;
        assert_eq!(reply.status.as_u16(), *code, "{what}: {:?}", reply.body);
        let status = reply.json();
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["apiVersion"], "v1", "{what}");
        assert_eq!(status["status"], "Failure", "{what}");
        assert_eq!(status["code"], *code, "{what}");
        assert_eq!(status["reason"], *reason, "{what}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(words),
            "{what}: {message:?} lacks {words:?}"
        );
        assert_eq!(
            env.started.sandbox.seen_authorizations().len(),
            seen_before,
            "{what}: the refused request reached the API server"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_server_gives_503_not_a_hang() {
    // The sandbox provides the CA and certificates; the upstream points elsewhere.
    let env = sandbox().start().await;
    let ca = String::from_utf8(env.ca_pem()).unwrap();
    env.let_anyone_in_through_a_jwks_file();

    // A port nothing listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    // A listener that accepts and then says nothing: only the dial timeout ends it.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });

    for (what, addr) in [("closed port", closed_addr), ("silent server", silent_addr)] {
        let config = support::proxy_config(
            env.dir.path(),
            &format!("https://{addr}"),
            &ca,
            "t",
            "  connectTimeout: 1s\n  responseTimeout: 30s\n",
        );
        let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
        // Six callers at once: those that wait for the first one's dial get its answer
        // rather than dialling in turn (the sixth would wait six connect timeouts).
        let url = format!("https://{}{PODS}", proxy.addrs[0]);
        let started = Instant::now();
        let replies = futures_util::future::join_all((0..6).map(|_| async {
            let reply = env.client(false).get(&url, &[]).await;
            (reply, started.elapsed())
        }))
        .await;
        for (reply, took) in replies {
            assert_eq!(reply.status.as_u16(), 503, "{what}: {:?}", reply.body);
            let status = reply.json();
            assert_eq!(status["reason"], "ServiceUnavailable", "{what}");
            assert!(
                status["message"].as_str().unwrap().contains("unreachable"),
                "{what}: {status}"
            );
            // The connect timeout is 1s: every answer well before six of them, and
            // before the 30s response bound.
            assert!(took < Duration::from_secs(4), "{what}: took {took:?}");
        }
        // /readyz reports it, without taking the proxy out of service.
        let (code, body) = support::http_get(proxy.admin.unwrap(), "/readyz").await;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("warning: upstream: the API server at") && body.contains("unreachable"),
            "{what}: {body}"
        );
        proxy.stop().await;
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_tls_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = sandbox().with_proxy().start().await;
    let ca = String::from_utf8(env.ca_pem()).unwrap();
    let mut config = support::proxy_config(env.dir.path(), &env.sandbox_url(), &ca, "t", "");
    config.tls.as_mut().unwrap().handshake_timeout = Duration::from_millis(300);
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    // One says nothing; the other starts a ClientHello and stops.
    for start in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut conn = tokio::net::TcpStream::connect(proxy.addrs[0])
            .await
            .unwrap();
        conn.write_all(start).await.unwrap();
        let began = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the proxy closes the connection");
        // Closed (or reset) without an answer, after the bound and well before 5 s.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
    // A client that completes its handshake is answered.
    let url = format!("https://{}{PODS}", proxy.addrs[0]);
    let reply = env.client(false).get(&url, &[]).await;
    assert!(reply.json()["kind"].is_string(), "{:?}", reply.body);
    proxy.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_request_head_is_dropped_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = sandbox().with_proxy().start().await;
    let ca = env.ca_pem();
    let mut config = support::proxy_config(
        env.dir.path(),
        &env.sandbox_url(),
        &String::from_utf8(ca.clone()).unwrap(),
        "t",
        "",
    );
    config.header_timeout = Duration::from_millis(500);
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();

    /// Sends `start`, then waits: the proxy must close the connection without answering,
    /// after the bound and well before 5 s.
    async fn dropped<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        what: &str,
        mut conn: S,
        start: &[u8],
    ) {
        conn.write_all(start).await.unwrap();
        conn.flush().await.unwrap();
        let began = Instant::now();
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: the proxy still holds the connection after 5 s"));
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "{what}: answered {:?}",
            read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        );
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    }

    // After a completed TLS handshake, whatever protocol was agreed: nothing at all,
    // fewer bytes than tell the protocol, and a request head never finished.
    let partial_head = b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\n";
    for alpn in [&[][..], &[&b"h2"[..]][..], &[&b"http/1.1"[..]][..]] {
        for start in [&b""[..], &b"GET /api H"[..], &partial_head[..]] {
            let mut tls = chaperone::tls::client_config(&ca, "test CA", None).unwrap();
            tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            let tcp = tokio::net::TcpStream::connect(proxy.addrs[0])
                .await
                .unwrap();
            let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let what = format!(
                "ALPN {:?}, sent {:?}",
                alpn.iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(start)
            );
            dropped(&what, conn, start).await;
        }
    }
    // The admin port (plain HTTP, reachable on the pod IP in a cluster) alike.
    for start in [
        &b""[..],
        &b"GET /rea"[..],
        &b"GET /readyz HTTP/1.1\r\nHost: x\r\n"[..],
    ] {
        let conn = tokio::net::TcpStream::connect(proxy.admin.unwrap())
            .await
            .unwrap();
        dropped(
            &format!("admin, sent {:?}", String::from_utf8_lossy(start)),
            conn,
            start,
        )
        .await;
    }
    // The admin port speaks HTTP/1.1 only: an HTTP/2 connection (which, once open and
    // without streams, no header timeout would end) is not served.
    let mut h2 = tokio::net::TcpStream::connect(proxy.admin.unwrap())
        .await
        .unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), h2.read_to_end(&mut answer))
        .await
        .expect("the admin port closes an HTTP/2 connection")
        .ok();
    // Not an HTTP/2 SETTINGS frame (type 4 in the fourth byte): HTTP/1.1's error, or nothing.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // Clients that send their requests are answered, on both ports.
    let url = format!("https://{}{PODS}", proxy.addrs[0]);
    let reply = env.client(false).get(&url, &[]).await;
    assert!(reply.json()["kind"].is_string(), "{:?}", reply.body);
    let (code, body) = support::http_get(proxy.admin.unwrap(), "/healthz").await;
    assert_eq!(code, 200, "{body}");
    proxy.stop().await;
    env.stop().await;
}

/// An exec is upgraded, but an upgrade carries no body: one sent with it would go
/// upstream past the approval's review and the record, so it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_carries_a_body_is_refused() {
    let env = sandbox().with_proxy().start().await;
    let client = env.client(false);
    let seen_before = env.started.sandbox.seen_authorizations().len();
    let req = Request::post(format!(
        "{}/api/v1/namespaces/default/pods/nginx/exec?command=ls&stdout=true",
        env.proxy_url()
    ))
    .header("Connection", "Upgrade")
    .header("Upgrade", "SPDY/3.1")
    .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
    .header("Content-Type", "application/json")
    .body(body::full(&b"{\"kind\":\"RoleBinding\"}"[..]))
    .unwrap();
    let reply = client.send(req).await;
    assert_eq!(reply.status.as_u16(), 400, "{:?}", reply.body);
    let status = reply.json();
    assert_eq!(status["reason"], "BadRequest");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("upgrade request carries no body"),
        "{message}"
    );
    assert_eq!(
        env.started.sandbox.seen_authorizations().len(),
        seen_before,
        "the refused upgrade reached the API server"
    );
    env.stop().await;
}

/// Through `nodes/proxy` the kubelet runs a command in any pod on the node: with a
/// websocket (a GET to RBAC) or a POST to its `run`. Both are refused even where a rule
/// allows every request, and so is an upgrade to any of its paths; nothing reaches the
/// API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelets_commands_through_nodes_proxy_are_refused() {
    let env = sandbox().with_proxy().start().await;
    let client = env.client(false);
    let seen_before = env.started.sandbox.seen_authorizations().len();
    let websocket = |path: &str| {
        Request::get(format!("{}{path}", env.proxy_url()))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Protocol", "v5.channel.k8s.io")
            .body(body::empty())
            .unwrap()
    };
    let run = Request::post(format!(
        "{}/api/v1/nodes/node-1/proxy/run/kube-system/etcd-node-1/etcd?cmd=cat+/etc/kubernetes/pki/etcd/server.key",
        env.proxy_url()
    ))
    .body(body::empty())
    .unwrap();
    for (req, words) in [
        (
            websocket("/api/v1/nodes/node-1/proxy/exec/kube-system/etcd-node-1/etcd?command=sh&stdin=1&stdout=1&tty=1"),
            "nodes/proxy does not reach the kubelet's run, exec",
        ),
        (run, "nodes/proxy does not reach the kubelet's run, exec"),
        (
            websocket("/api/v1/nodes/node-1/proxy/stats/summary"),
            "does not upgrade a connection through nodes/proxy",
        ),
    ] {
        let what = format!("{} {}", req.method(), req.uri());
        let reply = client.send(req).await;
        assert_eq!(reply.status.as_u16(), 403, "{what}: {:?}", reply.body);
        let status = reply.json();
        assert_eq!(status["reason"], "Forbidden");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{what}: {message}");
    }
    assert_eq!(
        env.started.sandbox.seen_authorizations().len(),
        seen_before,
        "a refused request reached the API server"
    );
    env.stop().await;
}

/// Connections past `maxConnections` are closed as they are accepted, so idle ones
/// cannot take every file descriptor; those within the bound, and the admin port, are
/// served, and a place given back is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let env = sandbox().with_proxy().start().await;
    let ca = String::from_utf8(env.ca_pem()).unwrap();
    let mut config = support::proxy_config(env.dir.path(), &env.sandbox_url(), &ca, "t", "");
    config.max_connections = 4;
    // Two listeners share the bound: it is what they hold together.
    config.listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ];
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(proxy.addrs[i % 2])
                .await
                .unwrap(),
        );
    }
    // Accepted in order: give the listener a moment to take the four.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..6 {
        let mut extra = tokio::net::TcpStream::connect(proxy.addrs[i % 2])
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("a connection past the bound is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // The four within the bound are still open.
    for conn in &mut held {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "a connection within the bound was closed: {read:?}"
        );
    }
    let admin = proxy.admin.unwrap();
    assert_eq!(support::http_get(admin, "/healthz").await.0, 200);
    // Places given back are taken again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("https://{}{PODS}", proxy.addrs[0]);
    let reply = env.client(false).get(&url, &[]).await;
    assert!(reply.json()["kind"].is_string(), "{:?}", reply.body);
    proxy.stop().await;
    env.stop().await;
}

/// The admin port listens on the pod's address, where anyone in the cluster may
/// connect: it serves one request per connection, so that a connection cannot hold its
/// place by sending a probe every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_one_request_per_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = sandbox().with_proxy().start().await;
    let admin = env.started.proxy.as_ref().and_then(|p| p.admin).unwrap();
    // A kept-alive request is answered, and the connection closed after it.
    let mut conn = tokio::net::TcpStream::connect(admin).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the admin port kept the connection open");
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    // Loopback peers (the pod's own containers, a mesh's proxy) are not bounded one by
    // one: a ninth connection from 127.0.0.1 is served. (The bound per address is
    // `server::tests`': these tests listen on loopback only.)
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(support::http_get(admin, "/healthz").await.0, 200);
    drop(held);
    env.stop().await;
}

/// An exec session keeps its connection's place among `maxConnections` for as long as
/// it runs: upgraded, the connection still holds its socket, so a caller cannot open
/// sessions past the bound by upgrading each connection it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_session_keeps_its_connections_place() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let env = sandbox().start().await;
    env.let_anyone_in_through_a_jwks_file();
    let ca = String::from_utf8(env.ca_pem()).unwrap();
    let token = &env.started.upstream_token;
    let mut config = support::proxy_config(env.dir.path(), &env.sandbox_url(), &ca, token, "");
    config.max_connections = 1;
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    support::wait_ready(proxy.admin.unwrap()).await;
    let addr = proxy.addrs[0];

    let url = format!(
        "wss://{addr}/api/v1/namespaces/default/pods/nginx/exec?command=cat&stdin=true&stdout=true"
    );
    let mut req = url.into_client_request().unwrap();
    let headers = req.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let bearer = format!("Bearer {}", env.started.caller_token);
    headers.insert("authorization", bearer.parse().unwrap());
    let stream = env.tls_to(addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("the exec session is upgraded");
    // The session runs: what goes to stdin comes back on stdout.
    ws.send(Message::Binary(b"\0hello".to_vec())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(d) = m {
                if d.first() == Some(&1) {
                    return d;
                }
            }
        }
        panic!("the session ended before its echo");
    })
    .await
    .expect("stdin echoed");
    assert_eq!(echoed, b"\x01hello");

    // The session holds the one place: another connection is closed as it is accepted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .expect("a connection past the bound is closed at once while a session holds the place");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The session ended, its place is taken again.
    ws.close(None).await.unwrap();
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut probe = tokio::net::TcpStream::connect(addr).await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(300), probe.read(&mut buf)).await;
        if read.is_err() {
            break; // held open: the place is free again
        }
        assert!(
            Instant::now() < deadline,
            "the session's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = env
        .client(false)
        .get(&format!("https://{addr}{PODS}"), &[])
        .await;
    assert_eq!(reply.json()["kind"], "PodList", "{:?}", reply.body);
    proxy.stop().await;
    env.stop().await;
}
