//! kube-rs, configured from the kubeconfig chaperone hands out, lists, gets, creates
//! and watches through the proxy over HTTP/2.

mod support;

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use support::sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_gets_creates_and_watches() {
    let env = sandbox().with_proxy().start().await;
    let kubeconfig = Kubeconfig::read_from(env.proxy_kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<_> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.iter().any(|n| n == "default"), "{names:?}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let listed = pods.list(&ListParams::default()).await.unwrap();
    let first = listed.items[0].metadata.name.clone().unwrap();
    let got = pods.get(&first).await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some(first.as_str()));

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = configmaps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = configmaps
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "from-kube-rs"}, "data": {"k": "v"}
    }))
    .unwrap();
    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), stream.try_next())
        .await
        .expect("the watch event arrives")
        .unwrap()
        .expect("the stream is open");
    match event {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("from-kube-rs")),
        other => panic!("expected ADDED, got {other:?}"),
    }

    let missing = pods.get("no-such-pod").await.unwrap_err();
    match missing {
        kube::Error::Api(status) => assert_eq!(status.code, 404),
        other => panic!("expected a 404 Status, got {other:?}"),
    }
    // Close the open watch first, or shutdown waits out its grace period for it.
    drop((stream, pods, configmaps, namespaces, client));
    env.stop().await;
}
