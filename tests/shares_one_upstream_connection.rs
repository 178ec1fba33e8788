//! Short requests share one HTTP/2 connection to the API server, as client-go's do; a
//! connection that dies is replaced for the next request, and an API server that speaks
//! only HTTP/1.1 is still served.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::sandbox;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const POD: &str = "/api/v1/namespaces/default/pods";

/// A TCP relay to `to` that counts the connections it carries and can cut them all,
/// as a restarted API server or a dropped route would.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    /// One flag per connection: set, it carries nothing more and stays open.
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(Vec::new()));
        let frozen = Arc::new(Mutex::new(Vec::new()));
        let (count, conns, flags) = (accepted.clone(), open.clone(), frozen.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let flag = Arc::new(AtomicBool::new(false));
                flags.lock().unwrap().push(flag.clone());
                let relay = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(to).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(carry(ri, wo, flag.clone()), carry(ro, wi, flag));
                    }
                });
                conns.lock().unwrap().push(relay.abort_handle());
            }
        });
        Relay {
            addr,
            accepted,
            open,
            frozen,
        }
    }

    /// The connections open now go silent both ways, without closing: a node lost, a
    /// NAT entry dropped. Connections made later carry as before.
    fn freeze(&self) {
        for flag in self.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every relayed connection (both sockets are dropped).
    fn cut(&self) {
        for conn in self.open.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// Copies `from` to `to` until either closes, or for ever once `frozen`.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The sandbox, and chaperone in front of it reaching it through a [`Relay`].
async fn proxy_through_relay() -> (support::Env, Relay, chaperone::launch::Running) {
    proxy_through_relay_with("").await
}

async fn proxy_through_relay_with(
    upstream: &str,
) -> (support::Env, Relay, chaperone::launch::Running) {
    let env = sandbox().start().await;
    env.let_anyone_in_through_a_jwks_file();
    let api: SocketAddr = env
        .sandbox_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let relay = Relay::start(api).await;
    let config = support::proxy_config(
        env.dir.path(),
        &format!("https://{}", relay.addr),
        &String::from_utf8(env.ca_pem()).unwrap(),
        &env.started.upstream_token,
        upstream,
    );
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    (env, relay, proxy)
}

/// A connection to the API server that goes silent is found out by its pings and
/// closed: its watch ends (the client re-lists), and the next request is answered on a
/// new connection instead of waiting out its timeout on the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_closed_and_replaced() {
    use http_body_util::BodyExt;
    let (env, relay, proxy) = proxy_through_relay_with(
        "  pingInterval: 500ms\n  pingTimeout: 500ms\n  responseTimeout: 20s\n",
    )
    .await;
    let url = format!("https://{}{POD}", proxy.addrs[0]);
    let reply = env.client(false).get(&url, &[]).await;
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    let watch = http::Request::get(format!("{url}?watch=1"))
        .body(chaperone::body::empty())
        .unwrap();
    let mut watch = env.client(false).open(watch).await.into_body();
    assert_eq!(relay.accepted(), 1);

    relay.freeze();
    let began = std::time::Instant::now();
    // The watch ends (with an error or not) once the connection is taken for dead.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = watch.frame().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the watch on the silent connection did not end"
    );
    let reply = env.client(false).get(&url, &[]).await;
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    assert!(
        began.elapsed() < std::time::Duration::from_secs(10),
        "answered after {:?}",
        began.elapsed()
    );
    assert_eq!(relay.accepted(), 2, "one new connection");
    proxy.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_one_connection_and_a_dead_one_is_replaced() {
    let (env, relay, proxy) = proxy_through_relay().await;
    let url = format!("https://{}{POD}", proxy.addrs[0]);

    // Twenty requests, five at a time over separate client connections: one upstream
    // connection carries them all.
    for _ in 0..4 {
        let replies = futures_util::future::join_all(
            (0..5).map(|_| async { env.client(false).get(&url, &[]).await }),
        )
        .await;
        for reply in replies {
            assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
        }
    }
    assert_eq!(
        relay.accepted(),
        1,
        "every request on one HTTP/2 connection"
    );

    // The connection dies between requests: the next request is answered, on a new one.
    relay.cut();
    let mut answered = None;
    for _ in 0..50 {
        let reply = env.client(false).get(&url, &[]).await;
        if reply.status.as_u16() == 200 {
            answered = Some(reply);
            break;
        }
        // A request that raced the cut may fail with 503; the proxy must not stay broken.
        assert_eq!(reply.status.as_u16(), 503, "{:?}", reply.body);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(answered.is_some(), "no request succeeded after the cut");
    assert_eq!(relay.accepted(), 2, "one new connection after the cut");
    env.assert_api_server_saw_only_the_proxy_token();
    proxy.stop().await;
    env.stop().await;
}

/// A TLS acceptor with the sandbox's certificate (which the proxy's upstream trusts),
/// offering only `alpn`.
fn sandbox_tls(env: &support::Env, alpn: &[u8]) -> tokio_rustls::TlsAcceptor {
    let dir = env.dir.path().join("sandbox");
    let certs =
        chaperone::tls::certs_from_pem(&std::fs::read(dir.join("tls.crt")).unwrap(), "tls.crt")
            .unwrap();
    let key = chaperone::tls::key_from_pem(&std::fs::read(dir.join("tls.key")).unwrap(), "tls.key")
        .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_speaks_only_http1_is_served() {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let env = sandbox().start().await;
    env.let_anyone_in_through_a_jwks_file();
    let acceptor = sandbox_tls(&env, b"http/1.1");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    seen.lock().unwrap().push(req.version());
                    let list = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}"#;
                    async move {
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(bytes::Bytes::from_static(list.as_bytes())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let config = support::proxy_config(
        env.dir.path(),
        &format!("https://{addr}"),
        &String::from_utf8(env.ca_pem()).unwrap(),
        "t",
        "",
    );
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    let url = format!("https://{}{POD}", proxy.addrs[0]);
    for _ in 0..3 {
        let reply = env.client(false).get(&url, &[]).await;
        assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
        assert_eq!(reply.json()["kind"], "PodList");
    }
    assert_eq!(
        *versions.lock().unwrap(),
        vec![http::Version::HTTP_11; 3],
        "each request over HTTP/1.1"
    );
    proxy.stop().await;
    env.stop().await;
}

/// A request body larger than the API server's flow-control window goes up in pieces as
/// the caller sends them, and an answer larger than the proxy's window comes back whole:
/// both directions wait for and hand back HTTP/2 window, on the shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_the_flow_control_window_stream_both_ways() {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    let (env, relay, proxy) = proxy_through_relay().await;
    let base = format!(
        "https://{}/api/v1/namespaces/default/configmaps",
        proxy.addrs[0]
    );

    // 2.5 MiB of data: more than the sandbox's 1 MiB window per stream and more than
    // the proxy's 2 MiB window for the answer.
    const SIZE: usize = 5 << 19;
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big"},
        "data": {"blob": "x".repeat(SIZE)},
    })
    .to_string()
    .into_bytes();
    let total = object.len();
    // Sent in 64 KiB pieces with a pause now and then, so the body is still arriving
    // when the proxy has sent the request's head.
    let pieces = futures_util::stream::iter(
        object
            .chunks(64 << 10)
            .map(bytes::Bytes::copy_from_slice)
            .collect::<Vec<_>>(),
    )
    .enumerate()
    .then(|(i, piece)| async move {
        if i % 8 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok::<_, chaperone::body::BoxError>(http_body::Frame::data(piece))
    });
    let req = http::Request::post(&base)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(pieces)))
        .unwrap();
    let created = env.client(false).send(req).await;
    assert_eq!(created.status.as_u16(), 201, "{:?}", created.body.len());
    assert_eq!(
        created.json()["data"]["blob"].as_str().map(str::len),
        Some(SIZE)
    );

    let read = env.client(false).get(&format!("{base}/big"), &[]).await;
    assert_eq!(read.status.as_u16(), 200);
    assert_eq!(
        read.json()["data"]["blob"].as_str().map(str::len),
        Some(SIZE)
    );
    assert!(read.body.len() > SIZE && total > SIZE);
    assert_eq!(relay.accepted(), 1, "both on the one HTTP/2 connection");
    proxy.stop().await;
    env.stop().await;
}

/// An HTTP/2 API server on loopback (the sandbox's certificate) that allows
/// `max_streams` streams per connection and answers a watch with its head and then
/// nothing, a list for `labelSelector=big` with a PodList of 16 MiB, and anything else
/// with an empty PodList. It serves the first `serve`
/// connections and closes any after those at once. Returns its address and a count of
/// the connections it accepted.
async fn h2_api_server(
    env: &support::Env,
    max_streams: u32,
    serve: usize,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let acceptor = sandbox_tls(env, b"h2");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) >= serve {
                drop(tcp);
                continue;
            }
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let query = req.uri().query().unwrap_or_default();
                    let watch = query.contains("watch=true");
                    let body = if query.contains("labelSelector=big") {
                        Full::new(big_pod_list()).boxed()
                    } else if watch {
                        StreamBody::new(futures_util::stream::pending::<
                            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
                        >())
                        .boxed()
                    } else {
                        let list =
                            r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}"#;
                        Full::new(bytes::Bytes::from_static(list.as_bytes())).boxed()
                    };
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .body(body)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

/// A PodList of 16 MiB: one pod with a large annotation.
fn big_pod_list() -> bytes::Bytes {
    let mut list = br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[{"metadata":{"name":"big","annotations":{"a":""#.to_vec();
    list.resize(list.len() + (16 << 20), b'x');
    list.extend_from_slice(br#""}}}]}"#);
    bytes::Bytes::from(list)
}

/// chaperone in front of `server`, and `n` watches opened through it.
async fn proxy_with_watches(
    env: &support::Env,
    server: SocketAddr,
    n: usize,
) -> (
    chaperone::launch::Running,
    String,
    Vec<http::Response<hyper::body::Incoming>>,
) {
    let config = support::proxy_config(
        env.dir.path(),
        &format!("https://{server}"),
        &String::from_utf8(env.ca_pem()).unwrap(),
        "t",
        "",
    );
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    let url = format!("https://{}{POD}", proxy.addrs[0]);
    let mut watches = Vec::new();
    for _ in 0..n {
        let req = http::Request::get(format!("{url}?watch=true"))
            .body(chaperone::body::empty())
            .unwrap();
        let rsp = env.client(false).open(req).await;
        assert_eq!(rsp.status().as_u16(), 200);
        watches.push(rsp);
    }
    (proxy, url, watches)
}

/// An API server that allows two streams per connection: with two watches holding both,
/// the next request goes on a second connection (as Go's HTTP/2 client would open)
/// instead of waiting for a stream to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_every_stream_in_use_is_joined_by_another() {
    let env = sandbox().start().await;
    env.let_anyone_in_through_a_jwks_file();
    let (server, connections) = h2_api_server(&env, 2, usize::MAX).await;
    let (proxy, url, watches) = proxy_with_watches(&env, server, 2).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1, "both watches on one");

    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        env.client(false).get(&url, &[]),
    )
    .await
    .expect("answered while both watches hold their streams");
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    assert_eq!(reply.json()["kind"], "PodList");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "a second connection");
    drop(watches);
    proxy.stop().await;
    env.stop().await;
}

/// When no second connection can be had, a request waits on the full one for a stream
/// to end instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_on_a_full_connection_when_no_other_can_be_opened() {
    let env = sandbox().start().await;
    env.let_anyone_in_through_a_jwks_file();
    let (server, connections) = h2_api_server(&env, 2, 1).await;
    let (proxy, url, mut watches) = proxy_with_watches(&env, server, 2).await;

    let client = env.client(false);
    let waiting = tokio::spawn(async move { client.get(&url, &[]).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "answered although no stream was free"
    );
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "a second connection was tried"
    );
    // A watch ends: its stream is free, and the waiting request takes it.
    watches.pop();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("answered once a stream was free")
        .unwrap();
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    assert_eq!(reply.json()["kind"], "PodList");
    drop(watches);
    proxy.stop().await;
    env.stop().await;
}

/// Callers share the connection's flow-control window: four who ask for a large List
/// and never read it hold all of it, and every other answer would stall behind theirs.
/// Once their data has waited `upstream.unreadTimeout` their streams are reset, the
/// next caller is answered, and theirs end in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_who_stop_reading_do_not_hold_up_the_others() {
    let env = sandbox().start().await;
    env.let_anyone_in_through_a_jwks_file();
    let (server, connections) = h2_api_server(&env, 100, usize::MAX).await;
    let config = support::proxy_config(
        env.dir.path(),
        &format!("https://{server}"),
        &String::from_utf8(env.ca_pem()).unwrap(),
        "t",
        "  unreadTimeout: 2s\n",
    );
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    let url = format!("https://{}{POD}", proxy.addrs[0]);
    let mut unread = Vec::new();
    for _ in 0..4 {
        let req = http::Request::get(format!("{url}?labelSelector=big"))
            .body(chaperone::body::empty())
            .unwrap();
        let rsp = env.client(true).open(req).await;
        assert_eq!(rsp.status().as_u16(), 200);
        unread.push(rsp);
    }
    // Their data fills the window within milliseconds; the window is full before the
    // next caller asks, and stays full until a stream is reset.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        env.client(false).get(&url, &[]),
    )
    .await
    .expect("answered although four callers stopped reading");
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    assert_eq!(reply.json()["kind"], "PodList");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
    // Those reset end in an error; any read before its turn came is whole.
    let mut reset = 0;
    for rsp in unread {
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            http_body_util::BodyExt::collect(rsp.into_body()),
        )
        .await
        .expect("the unread answer ends");
        match read {
            Ok(body) => assert_eq!(body.to_bytes(), big_pod_list(), "a whole answer"),
            Err(_) => reset += 1,
        }
    }
    assert!(reset >= 1, "no unread answer's stream was reset");
    proxy.stop().await;
    env.stop().await;
}
