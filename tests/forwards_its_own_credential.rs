//! The caller's credential never reaches the API server; the proxy's own does, and a
//! token the kubelet rotates on disk is used from the next request on.

mod support;

use std::path::Path;

use support::sandbox;

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_token_never_reaches_the_api_server() {
    let env = sandbox().with_proxy().start().await;
    let url = format!("{}{PODS}", env.proxy_url());
    let caller = &env.started.caller_token;
    for http2 in [false, true] {
        let client = env.client(http2);
        // The Python client writes the scheme in lower case.
        for auth in [format!("Bearer {caller}"), format!("bearer {caller}")] {
            let reply = client.get(&url, &[("Authorization", &auth)]).await;
            assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
        }
    }
    // Every request the API server saw (the four above, and the proxy's own fetch of
    // the cluster's signing keys) carried the proxy's token, never the caller's.
    let seen = env.started.sandbox.seen_authorizations();
    assert!(
        seen.len() >= 4,
        "the API server saw {} requests",
        seen.len()
    );
    env.assert_api_server_saw_only_the_proxy_token();
    env.stop().await;
}

/// Writes a token the way the kubelet does: a new file renamed over the old one.
fn rotate(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_token_rotated_on_disk_is_used_on_the_next_request() {
    let env = sandbox().start().await;
    let dir = env.dir.path();
    let token = dir.join("token");
    rotate(&token, "first-token");
    let sandbox_addr = env.started.api.addrs[0];
    // In-cluster mode: host and port come from the proxy's own environment, exactly as
    // the kubelet sets them in the proxy container.
    let text = format!(
        "listen: [\"127.0.0.1:0\", \"[::1]:0\"]\nadmin: {{listen: 127.0.0.1:0}}\n\
         tls: {{certFile: {d}/sandbox/tls.crt, keyFile: {d}/sandbox/tls.key}}\n\
         upstream:\n  inCluster:\n    tokenFile: {d}/token\n    caFile: {d}/sandbox/ca.crt\n{identity}{policy}",
        d = dir.display(),
        identity = support::SANDBOX_IDENTITY,
        policy = env.policy_config(),
    );
    let config = chaperone::config::Config::parse(Path::new("test.yaml"), &text).unwrap();
    let port = sandbox_addr.port().to_string();
    let proxy = chaperone::launch::proxy(&config, &move |name| match name {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".into()),
        "KUBERNETES_SERVICE_PORT" => Some(port.clone()),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(proxy.addrs.len(), 2, "both loopback families serve");

    let client = env.client(true);
    for (i, tok) in ["first-token", "second-token", "third-token"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            rotate(&token, tok);
        }
        // Alternate the IPv4 and IPv6 listeners: every listener serves the same proxy.
        let addr = proxy.addrs[i % 2];
        let reply = client.get(&format!("https://{addr}{PODS}"), &[]).await;
        assert_eq!(reply.status.as_u16(), 200, "{tok}: {:?}", reply.body);
        let seen = env.started.sandbox.seen_authorizations();
        assert_eq!(
            seen.last().cloned().flatten().as_deref(),
            Some(&*format!("Bearer {tok}"))
        );
    }

    // An emptied token file is an error the caller sees, not an unauthenticated request.
    std::fs::write(&token, "").unwrap();
    let reply = client
        .get(&format!("https://{}{PODS}", proxy.addrs[0]), &[])
        .await;
    assert_eq!(reply.status.as_u16(), 503, "{:?}", reply.body);
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("token file"));

    proxy.stop().await;
    env.stop().await;
}
