//! Each request reaches an OpenTelemetry Collector (a real OTLP/gRPC receiver here) as
//! a span continuing the caller's trace and a log record carrying the audit event;
//! a collector outage loses nothing within the queue's bound, and past it `drop`
//! counts what it discards.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span;
use support::otlp::{attrs, hex, serve, serve_refusing, wait_for};
use support::sandbox;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_log_records_continue_the_callers_trace() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (collector, server) = serve(listener);
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  otlp: {{endpoint: \"http://127.0.0.1:{port}\", batch: 1}}\n"
        ))
        .start()
        .await;
    let client = env.client(false);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let ok = client
        .get(
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(ok.status, 200);
    let upstream = env.started.sandbox.last_request_headers().unwrap();
    let denied = client
        .get(
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
            &[("traceparent", &traceparent), ("Impersonate-User", "admin")],
        )
        .await;
    assert_eq!(denied.status, 403);

    // Each request is a server span with its stages as children: the served one
    // authenticate, authorize and upstream; the refused one authenticate and authorize.
    wait_for("two requests' spans and two log records", || {
        collector.spans.lock().unwrap().len() >= 7 && collector.logs.lock().unwrap().len() >= 2
    })
    .await;
    let spans = collector.spans.lock().unwrap().clone();
    let by_code = |code: &str| {
        spans
            .iter()
            .find(|s| {
                attrs(&s.attributes)
                    .get("http.response.status_code")
                    .map(String::as_str)
                    == Some(code)
            })
            .unwrap_or_else(|| panic!("no span with code {code}"))
            .clone()
    };
    let served = by_code("200");
    assert_eq!(hex(&served.trace_id), TRACE);
    assert_eq!(hex(&served.parent_span_id), PARENT);
    assert_eq!(served.name, "list pods");
    let a = attrs(&served.attributes);
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/api/v1/namespaces/default/pods");
    assert_eq!(a["user.name"], "system:serviceaccount:default:mcp-server");
    assert_eq!(a["k8s.namespace.name"], "default");
    assert_eq!(a["chaperone.decision"], "allow");
    assert!(
        served.end_time_unix_nano >= served.start_time_unix_nano && served.start_time_unix_nano > 0
    );

    // Its stages are its children, in order, inside it; the API server was handed the
    // `upstream` stage's span as the parent of its work.
    let children: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == served.span_id)
        .collect();
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["authenticate", "authorize", "upstream"]);
    for (child, next) in children.iter().zip(children.iter().skip(1)) {
        assert_eq!(child.trace_id, served.trace_id);
        assert!(child.start_time_unix_nano >= served.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= next.start_time_unix_nano);
    }
    let to_api_server = children[2];
    assert_eq!(to_api_server.kind, span::SpanKind::Client as i32);
    assert!(to_api_server.end_time_unix_nano <= served.end_time_unix_nano);
    let sent = upstream
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sent,
        format!("00-{TRACE}-{}-01", hex(&to_api_server.span_id))
    );

    let refused = attrs(&by_code("403").attributes);
    assert_eq!(refused["chaperone.decision"], "deny");

    // Each log record's body is the audit event itself.
    let logs = collector.logs.lock().unwrap().clone();
    let bodies: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| match l.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => serde_json::from_str(s).unwrap(),
            other => panic!("log body {other:?}"),
        })
        .collect();
    assert!(bodies
        .iter()
        .all(|b| b["kind"] == "Event" && b["apiVersion"] == "audit.k8s.io/v1"));
    assert!(bodies.iter().any(|b| b["responseStatus"]["code"] == 403));
    assert!(logs.iter().all(|l| hex(&l.trace_id) == TRACE));
    let resource = collector.resources.lock().unwrap()[0].clone();
    assert_eq!(resource["service.name"], "chaperone");
    env.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outage_loses_nothing_within_the_bound() {
    // A port with nothing behind it yet.
    let addr = collector_address();
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  otlp: {{endpoint: \"http://{addr}\", batch: 2, timeout: 1s}}\n"
        ))
        .start()
        .await;
    let client = env.client(false);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let reply = client
            .get(
                &format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url()),
                &[],
            )
            .await;
        assert_eq!(
            reply.status, 200,
            "requests are served while the collector is down"
        );
        ids.push(reply.headers["audit-id"].to_str().unwrap().to_owned());
    }
    // The collector comes up on that address.
    let (collector, server) = serve(std::net::TcpListener::bind(addr).unwrap());
    wait_for("all five events", || {
        let logs = collector.logs.lock().unwrap();
        ids.iter().all(|id| {
            logs.iter()
                .any(|l| attrs(&l.attributes).get("chaperone.audit_id") == Some(id))
        })
    })
    .await;
    env.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_drop_counts_what_it_discards() {
    let addr = collector_address();
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  queue: 1\n  overflow: drop\n  otlp: {{endpoint: \"http://{addr}\", batch: 1, timeout: 1s}}\nupstream:\n  shutdownGrace: 1s\n"
        ))
        .start()
        .await;
    let client = env.client(false);
    for _ in 0..10 {
        let reply = client
            .get(
                &format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url()),
                &[],
            )
            .await;
        assert_eq!(reply.status, 200);
    }
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chaperone_audit_events_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(dropped >= 5, "dropped {dropped}:\n{metrics}");
    env.stop().await;
}

/// An address nothing listens on yet: the collector starts there later.
fn collector_address() -> std::net::SocketAddr {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    reserved.local_addr().unwrap()
}

/// A proxy exporting to a collector that is down, with `overflow: block` and a queue of
/// one, full: one event is held by the exporter, one fills the queue, and the next
/// request's event waits for room. Returns it, the collector's address and the URL of
/// the ConfigMaps listed. `extra` is more of the proxy's config.
async fn with_a_full_queue(extra: &str) -> (support::Env, std::net::SocketAddr, String) {
    let addr = collector_address();
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  queue: 1\n  overflow: block\n  otlp: {{endpoint: \"http://{addr}\", batch: 1, timeout: 1s}}\n{extra}"
        ))
        .start()
        .await;
    let url = format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url());
    let client = env.client(false);
    for _ in 0..2 {
        assert_eq!(client.get(&url, &[]).await.status, 200);
    }
    (env, addr, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_block_holds_requests_until_the_collector_is_back() {
    let (env, addr, url) = with_a_full_queue("").await;
    let client = Arc::new(env.client(false));
    let third = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url, &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "the request went through with its audit event unqueued"
    );
    let (_collector, server) = serve(std::net::TcpListener::bind(addr).unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("released")
        .unwrap();
    assert_eq!(status, 200);
    env.stop().await;
    server.abort();
}

/// A watch whose start waits for room in a full queue, and whose client goes away
/// meanwhile, is on record to its end: the start is queued all the same, and the end
/// is not lost with the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_client_leaves_while_its_start_waits_is_recorded_to_its_end() {
    let (env, addr, _) = with_a_full_queue("").await;
    // Over HTTP/2, where a client that gives up resets its stream at once.
    let watch = "/api/v1/namespaces/default/configmaps?watch=true";
    let waiting = {
        let (client, url) = (env.client(true), format!("{}{watch}", env.proxy_url()));
        tokio::spawn(async move {
            let req = http::Request::get(url)
                .body(chaperone::body::empty())
                .unwrap();
            client.open(req).await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the watch started unrecorded");
    waiting.abort();
    let (_collector, server) = serve(std::net::TcpListener::bind(addr).unwrap());
    let audit = env.dir.path().join("sandbox/audit.jsonl");
    let stages = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let events: Vec<serde_json::Value> = support::json_lines(&audit);
            let stages: Vec<serde_json::Value> = events
                .into_iter()
                .filter(|e| e["requestURI"] == watch)
                .collect();
            if stages.iter().any(|e| e["stage"] == "ResponseComplete") {
                return stages;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the watch's end is on record");
    assert!(
        stages.iter().any(|e| e["stage"] == "ResponseStarted"),
        "{stages:?}"
    );
    let end = stages
        .iter()
        .find(|e| e["stage"] == "ResponseComplete")
        .unwrap();
    assert!(
        end["annotations"]["chaperone.dev/error"]
            .as_str()
            .is_some_and(|e| e.contains("client closed the connection")),
        "{end}"
    );
    env.stop().await;
    server.abort();
}

/// A watch held back until its start is on record is not its caller's to read yet: its
/// data waiting meanwhile, past `upstream.unreadTimeout`, does not get its stream reset,
/// and the caller gets its events once the collector is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_held_for_its_record_is_not_reset_as_unread() {
    let (env, addr, _) = with_a_full_queue("upstream:\n  unreadTimeout: 1s\n").await;
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true",
        env.proxy_url()
    );
    let watch = {
        let client = env.client(true);
        tokio::spawn(async move {
            let req = http::Request::get(url)
                .body(chaperone::body::empty())
                .unwrap();
            client.open(req).await
        })
    };
    // Held past the unread timeout (and its watch's ticks), then the collector is back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!watch.is_finished(), "the watch started unrecorded");
    let (_collector, server) = serve(std::net::TcpListener::bind(addr).unwrap());
    let rsp = tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("the watch is answered once its start is on record")
        .unwrap();
    assert_eq!(rsp.status().as_u16(), 200);
    let mut body = rsp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("an event")
        .expect("the stream goes on")
        .expect("not reset")
        .into_data()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("\"ADDED\""), "{first}");
    drop(body);
    env.stop().await;
    server.abort();
}

/// The audit IDs of `n` GETs of `path` through the proxy.
async fn audit_ids(env: &support::Env, path: &str, n: usize) -> Vec<String> {
    let client = env.client(false);
    let mut ids = Vec::new();
    for _ in 0..n {
        let reply = client.get(&format!("{}{path}", env.proxy_url()), &[]).await;
        ids.push(reply.headers["audit-id"].to_str().unwrap().to_owned());
    }
    ids
}

fn all_exported(collector: &support::otlp::Collector, ids: &[String]) -> bool {
    let logs = collector.logs.lock().unwrap();
    ids.iter().all(|id| {
        logs.iter()
            .any(|l| attrs(&l.attributes).get("chaperone.audit_id") == Some(id))
    })
}

/// Events that piled up while the collector was down are sent in export calls no
/// larger than a collector takes (4 MiB): a backlog of large events is not one call
/// the collector refuses for ever, holding back every event after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_sent_in_calls_a_collector_takes() {
    let addr = collector_address();
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  otlp: {{endpoint: \"http://{addr}\", batch: 512, timeout: 1s}}\n"
        ))
        .start()
        .await;
    // About 33 KB of log record each (the URI is recorded cut to 16 KiB, in the event
    // and an attribute): two hundred of them are more than a collector takes at once.
    let long = format!(
        "/api/v1/namespaces/default/configmaps?x={}",
        "q".repeat(40_000)
    );
    let backlog = audit_ids(&env, &long, 200).await;
    let (collector, server) = serve(std::net::TcpListener::bind(addr).unwrap());
    let after = audit_ids(&env, "/api/v1/namespaces/default/configmaps", 1).await;
    wait_for("the backlog and the event after it", || {
        all_exported(&collector, &backlog) && all_exported(&collector, &after)
    })
    .await;
    env.stop().await;
    server.abort();
}

/// An event the collector refuses as invalid is dropped, counted and logged, and the
/// events around it are exported: one event never stops the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_collector_refuses_is_counted_and_the_rest_go_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (collector, server) = serve(listener);
    *collector.refuse.lock().unwrap() = Some("refuse-me".into());
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  otlp: {{endpoint: \"http://127.0.0.1:{port}\", batch: 8, timeout: 1s}}\n"
        ))
        .start()
        .await;
    let mut ids = audit_ids(&env, "/api/v1/namespaces/default/configmaps", 3).await;
    audit_ids(&env, "/api/v1/namespaces/default/configmaps?x=refuse-me", 1).await;
    ids.extend(audit_ids(&env, "/api/v1/namespaces/default/configmaps", 3).await);
    wait_for("every event but the refused one", || {
        all_exported(&collector, &ids)
    })
    .await;
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chaperone_audit_events_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(dropped, 1, "{metrics}");
    // The six taken are counted as exported.
    let exported: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chaperone_audit_events_exported_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(exported >= 6, "{metrics}");
    env.stop().await;
    server.abort();
}

/// A batch whose log records the collector refuses after taking its spans is halved to
/// find the event refused; the halves carry their log records alone, so no span reaches
/// the collector twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_once_when_log_records_are_refused() {
    let addr = collector_address();
    let env = sandbox()
        .with_proxy_config(&format!(
            "audit:\n  otlp: {{endpoint: \"http://{addr}\", batch: 8, timeout: 1s}}\n"
        ))
        .start()
        .await;
    // The collector is down: the events wait, to go in one batch.
    let mut ids = audit_ids(&env, "/api/v1/namespaces/default/configmaps", 3).await;
    let refused = audit_ids(&env, "/api/v1/namespaces/default/configmaps?x=refuse-me", 1).await;
    ids.extend(audit_ids(&env, "/api/v1/namespaces/default/configmaps", 3).await);
    let (collector, server) = serve_refusing(
        std::net::TcpListener::bind(addr).unwrap(),
        Some("refuse-me"),
    );
    wait_for("every event but the refused one", || {
        all_exported(&collector, &ids)
    })
    .await;
    let spans = collector.spans.lock().unwrap().clone();
    let mut per_request = std::collections::BTreeMap::new();
    for span in &spans {
        if let Some(id) = attrs(&span.attributes).get("chaperone.audit_id") {
            *per_request.entry(id.clone()).or_insert(0) += 1;
        }
    }
    for id in ids.iter().chain(&refused) {
        assert_eq!(per_request.get(id), Some(&1), "{id}: {per_request:?}");
    }
    env.stop().await;
    server.abort();
}
