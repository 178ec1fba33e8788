//! The official Python client, configured as inside a pod, works through chaperone
//! unchanged: list, get, create, patch, watch, and API errors.

mod support;

use support::{ok, run, sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_in_cluster_client_lists_gets_and_watches() {
    let env = sandbox().with_proxy().start().await;
    let cmd = env.python_in_cluster("python_client.py");
    let out: serde_json::Value = serde_json::from_str(&ok(&run(cmd).await)).unwrap();

    let namespaces = out["namespaces"].as_array().unwrap();
    assert!(namespaces.iter().any(|n| n == "default"), "{out}");
    assert!(!out["pods"].as_array().unwrap().is_empty(), "{out}");
    assert_eq!(out["read_back"], serde_json::json!({"k": "v"}));
    let watch = out["watch"].as_array().unwrap();
    assert_eq!(
        watch.last().unwrap(),
        &serde_json::json!(["MODIFIED", "from-python", {"k": "v2"}]),
        "{out}"
    );
    assert_eq!(
        out["missing"],
        serde_json::json!({"status": 404, "reason": "NotFound"})
    );

    // Whatever the client sent, the API server saw only the proxy's credential.
    env.assert_api_server_saw_only_the_proxy_token();
    env.stop().await;
}
