//! A request chaperone allows and need not change gets the same answer through the
//! proxy as straight from the API server, over HTTP/1.1 and HTTP/2; watch events
//! stream through as they happen.

mod support;

use std::time::Duration;

use chaperone::body;
use http::Request;
use http_body_util::BodyExt;
use support::sandbox;

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_get_the_same_answer_direct_and_through_the_proxy() {
    let env = sandbox().with_proxy().start().await;
    let cases: &[(&str, &[(&str, &str)])] = &[
        // discovery
        ("/version", &[]),
        ("/api", &[]),
        ("/apis", &[]),
        ("/api/v1", &[]),
        ("/apis/apps/v1", &[]),
        // reads, including the forms kubectl and client-go ask for
        ("/api/v1/namespaces", &[]),
        ("/api/v1/namespaces/default", &[]),
        (
            "/api/v1/namespaces/default/pods?limit=500",
            &[("Accept", TABLE)],
        ),
        (
            "/api/v1/pods",
            &[(
                "Accept",
                "application/vnd.kubernetes.protobuf, application/json",
            )],
        ),
        (
            "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dnone",
            &[],
        ),
        // an API error passes through untouched
        ("/api/v1/namespaces/default/pods/no-such-pod", &[]),
        ("/apis/no.such.group/v1/things", &[]),
    ];
    for http2 in [false, true] {
        let client = env.client(http2);
        for (path, headers) in cases {
            let direct = client
                .get(&format!("{}{path}", env.sandbox_url()), headers)
                .await;
            let proxied = client
                .get(&format!("{}{path}", env.proxy_url()), headers)
                .await;
            assert_eq!(proxied.status, direct.status, "{path} http2={http2}");
            assert_eq!(proxied.json(), direct.json(), "{path} http2={http2}");
            assert_eq!(
                proxied.headers.get("content-type"),
                direct.headers.get("content-type"),
                "{path} http2={http2}"
            );
        }
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_stream_through_as_they_happen() {
    let env = sandbox().with_proxy().start().await;
    for http2 in [false, true] {
        let client = env.client(http2);
        let list = client
            .get(
                &format!("{}/api/v1/namespaces/default/configmaps", env.sandbox_url()),
                &[],
            )
            .await
            .json();
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let watch = Request::get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}",
            env.proxy_url()
        ))
        .body(body::empty())
        .unwrap();
        let mut rsp = client.open(watch).await;
        assert_eq!(rsp.status(), 200);

        // Each change made on the API server arrives through the proxy before the next
        // one is made: nothing is held back waiting for more bytes.
        let mut buf = Vec::new();
        for i in 0..3 {
            let name = format!("streamed-{http2}-{i}");
            let create = Request::post(format!(
                "{}/api/v1/namespaces/default/configmaps",
                env.sandbox_url()
            ))
            .header("content-type", "application/json")
            .body(body::full(
                serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}
                }))
                .unwrap(),
            ))
            .unwrap();
            assert_eq!(client.send(create).await.status, 201);
            let event = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        let event: serde_json::Value = serde_json::from_slice(&line).unwrap();
                        if event["type"] != "BOOKMARK" {
                            return event;
                        }
                        continue;
                    }
                    let frame = rsp
                        .body_mut()
                        .frame()
                        .await
                        .expect("stream open")
                        .expect("frame");
                    if let Some(data) = frame.data_ref() {
                        buf.extend_from_slice(data);
                    }
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!("event {i} did not arrive through the proxy (http2={http2})")
            });
            assert_eq!(event["type"], "ADDED");
            assert_eq!(event["object"]["metadata"]["name"], name.as_str());
        }
    }
    env.stop().await;
}
