//! Every caller is authenticated from its bearer token before anything is forwarded:
//! the sandbox cluster's service-account tokens get through, anything else gets a 401
//! Status naming the reason; in `impersonate` mode the API server sees the caller.

mod support;

use chaperone::pki::Authority;
use support::{ok, sandbox};

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_token_get_401_naming_the_reason() {
    let env = sandbox().with_proxy().start().await;
    let url = format!("{}{PODS}", env.proxy_url());
    let client = env.anonymous_client(false);
    let caller = env.started.caller_token.clone();
    let other_audience = env
        .started
        .sandbox
        .mint_service_account_token(
            "default",
            "mcp-server",
            &["kubernetes".to_owned()],
            600,
            None,
        )
        .unwrap();
    // Flip one character of the signature.
    let mut tampered = caller.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases: &[(&str, Option<String>, &str)] = &[
        ("no token", None, "no bearer token"),
        (
            "not a JWT",
            Some("Bearer let-me-in".into()),
            "malformed token",
        ),
        (
            "basic auth",
            Some("Basic YWRtaW46YWRtaW4=".into()),
            "no bearer token",
        ),
        (
            "tampered",
            Some(format!("Bearer {tampered}")),
            "signature is invalid",
        ),
        (
            "wrong audience",
            Some(format!("Bearer {other_audience}")),
            "audience",
        ),
    ];
    let seen_before = env.started.sandbox.seen_authorizations().len();
    for (what, auth, words) in cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let reply = client.get(&url, &headers).await;
        assert_eq!(reply.status.as_u16(), 401, "{what}: {:?}", reply.body);
        let status = reply.json();
        assert_eq!(status["reason"], "Unauthorized", "{what}");
        let message = status["message"].as_str().unwrap();
        // The echo check first: a failure message must not print the token itself.
        assert!(!message.contains(&caller), "{what}: the token is echoed");
        assert!(message.contains(words), "{what}: {message}");
    }
    assert_eq!(
        env.started.sandbox.seen_authorizations().len(),
        seen_before,
        "nothing reached the API server"
    );

    // kubectl with a token chaperone does not accept says what it says for any 401.
    let no_token = chaperone::kubeconfig::render(
        "anon",
        &env.proxy_url(),
        &String::from_utf8(env.ca_pem()).unwrap(),
        "not-a-jwt",
        None,
    );
    let kc = env.dir.path().join("anonymous.kubeconfig");
    std::fs::write(&kc, no_token).unwrap();
    let out = support::run(env.kubectl_cmd(&kc, &["get", "--raw", PODS])).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("You must be logged in to the server (malformed token"),
        "{stderr}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_told_that_only_bearer_tokens_count() {
    let env = sandbox().with_proxy().start().await;
    let ca = Authority::generate("someone else's CA", 1).unwrap();
    let leaf = ca.issue_server(&["client"], 1).unwrap();
    let identity = chaperone::tls::ClientIdentity {
        certs: chaperone::tls::certs_from_pem(leaf.cert_pem.as_bytes(), "cert").unwrap(),
        key: chaperone::tls::key_from_pem(leaf.key_pem.as_bytes(), "key").unwrap(),
    };
    let tls = chaperone::tls::client_config(&env.ca_pem(), "ca", Some(identity)).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, chaperone::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let req = http::Request::get(format!("{}{PODS}", env.proxy_url()))
        .body(chaperone::body::empty())
        .unwrap();
    let rsp = tokio::time::timeout(support::CLIENT_TIMEOUT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 401);
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let message = String::from_utf8_lossy(&body);
    assert!(
        message.contains("client certificate was presented instead of a bearer token"),
        "{message}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonate_mode_shows_the_caller_to_the_api_server() {
    let env = sandbox()
        .with_proxy_config("upstream:\n  identity: impersonate\n")
        .start()
        .await;
    let names = ok(&env.kubectl(&["get", "pods", "-o", "name"]).await);
    assert!(names.contains("pod/nginx"), "{names}");
    let seen = env.started.sandbox.last_request_headers().unwrap();
    let all = |name: &str| -> Vec<String> {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        all("impersonate-user"),
        ["system:serviceaccount:default:mcp-server"]
    );
    let groups = all("impersonate-group");
    for g in [
        "system:serviceaccounts",
        "system:serviceaccounts:default",
        "system:authenticated",
    ] {
        assert!(groups.iter().any(|x| x == g), "{groups:?} lacks {g}");
    }
    assert_eq!(all("impersonate-uid").len(), 1, "the service account's uid");
    // The credential is still the proxy's own, never the caller's.
    assert_eq!(
        all("authorization"),
        [format!("Bearer {}", env.started.upstream_token)]
    );
    // A caller cannot add identity of its own: a front proxy's X-Remote-* headers are
    // dropped, whatever the proxy's credential; nor choose the source address the
    // cluster's audit log records for it.
    let url = format!("{}{PODS}", env.proxy_url());
    let reply = env
        .client(false)
        .get(
            &url,
            &[
                ("x-remote-user", "system:admin"),
                ("x-remote-group", "system:masters"),
                ("x-forwarded-for", "10.9.8.7"),
                ("x-real-ip", "10.9.8.7"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200);
    let seen = env.started.sandbox.last_request_headers().unwrap();
    assert!(
        seen.keys().all(|n| !n.as_str().starts_with("x-remote-")
            && n != "x-forwarded-for"
            && n != "x-real-ip"),
        "forwarded: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    env.stop().await;
}

/// With `ownPodOnly`, a sidecar takes only tokens the kubelet bound to its own pod: one
/// from another pod of the same service account (a replica's, or one that outlived its
/// pod), or bound to none, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pod_only_takes_tokens_bound_to_this_pod() {
    let identity = support::SANDBOX_IDENTITY.to_owned() + "    ownPodOnly: true\n";
    let env = sandbox()
        .with_proxy_config(&identity)
        .env("POD_UID", "uid-of-this-pod")
        .start()
        .await;
    let url = format!("{}{PODS}", env.proxy_url());
    let client = env.anonymous_client(false);
    let bound_to = |pod: Option<(&str, &str)>| {
        env.started
            .sandbox
            .mint_service_account_token(
                "default",
                "mcp-server",
                &["chaperone".to_owned()],
                600,
                pod,
            )
            .unwrap()
    };
    let get = |token: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(&url, &[("Authorization", &format!("Bearer {token}"))])
                .await
        }
    };
    let mine = get(bound_to(Some(("mcp-0", "uid-of-this-pod")))).await;
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    for (what, token) in [
        ("another pod", bound_to(Some(("mcp-1", "uid-of-a-replica")))),
        ("no pod", bound_to(None)),
    ] {
        let reply = get(token).await;
        assert_eq!(reply.status, 401, "{what}");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("kubernetes.io.pod.uid must be this pod's (ownPodOnly)"),
            "{what}: {message}"
        );
    }
    env.stop().await;
}

/// Without the pod's uid to compare with, `ownPodOnly` stops the proxy at start rather
/// than let any token through; and it is for the cluster issuer only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pod_only_without_pod_uid_refuses_to_start() {
    let env = sandbox().start().await;
    let dir = env.dir.path().join("proxy-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let leaf = Authority::generate("ca", 1)
        .unwrap()
        .issue_server(chaperone::pki::SERVING_NAMES, 1)
        .unwrap();
    std::fs::write(dir.join("tls.key"), leaf.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.cert_pem).unwrap();
    let text = format!(
        "listen: [\"127.0.0.1:0\"]\n\
         tls: {{certFile: {d}/tls.crt, keyFile: {d}/tls.key}}\n\
         upstream: {{kubeconfig: {{path: {kc}}}}}\n{identity}    ownPodOnly: true\n{policy}",
        d = dir.display(),
        kc = env.started.kubeconfig.display(),
        identity = support::SANDBOX_IDENTITY,
        policy = env.policy_config(),
    );
    let path = std::path::Path::new("t.yaml");
    let config = chaperone::config::Config::parse(path, &text).unwrap();
    let err = chaperone::launch::proxy(&config, &|_| None)
        .await
        .err()
        .expect("started without POD_UID");
    assert!(
        err.to_string()
            .contains("identity.issuers[0].ownPodOnly needs the pod's uid in POD_UID"),
        "{err}"
    );
    let oidc = text.replace("    cluster: true\n", "    discovery: true\n");
    let err = chaperone::config::Config::parse(path, &oidc).unwrap_err();
    assert!(
        err.to_string()
            .contains("ownPodOnly: only applies to the cluster issuer"),
        "{err}"
    );
    env.stop().await;
}

/// A WebSocket exec through the proxy with `Sec-WebSocket-Protocol: <protocol>` and
/// no `Authorization`: the handshake's answer, and the stdout frames if it succeeded.
async fn websocket_exec(
    env: &support::Env,
    protocols: &str,
) -> Result<(String, Vec<Vec<u8>>), u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error, Message};

    let addr = env.started.proxy.as_ref().unwrap().addrs[0];
    let url = format!(
        "wss://{addr}/api/v1/namespaces/default/pods/nginx/exec?command=echo&command=hello&stdout=true"
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let stream = env.tls_to(addr).await;
    let (mut ws, rsp) = match tokio_tungstenite::client_async(req, stream).await {
        Ok(pair) => pair,
        Err(Error::Http(rsp)) => return Err(rsp.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    };
    let chosen = rsp.headers()["sec-websocket-protocol"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut frames = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(d) = m {
            frames.push(d);
        }
    }
    Ok((chosen, frames))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_may_carry_the_token_as_a_subprotocol_which_never_goes_upstream() {
    use base64::Engine;
    let env = sandbox().with_proxy().start().await;
    let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    let caller = env.started.caller_token.clone();
    let bearer = format!("base64url.bearer.authorization.k8s.io.{}", b64(&caller));

    // As a browser-based client sends it: authenticated, the exec runs.
    let (chosen, frames) = websocket_exec(&env, &format!("{bearer},v5.channel.k8s.io"))
        .await
        .expect("the handshake succeeds");
    assert_eq!(chosen, "v5.channel.k8s.io");
    assert_eq!(frames[0], b"\x01hello\n");
    // The API server got the proxy's credential and the other subprotocol only.
    let seen = env.started.sandbox.last_request_headers().unwrap();
    // (Compared without printing: a failure would show the token.)
    assert!(
        seen["sec-websocket-protocol"] == "v5.channel.k8s.io",
        "the bearer subprotocol went upstream"
    );
    let forwarded = format!("{seen:?}");
    assert!(
        !forwarded.contains(&b64(&caller)) && !forwarded.contains(&caller),
        "the caller's token went upstream"
    );
    assert!(env
        .started
        .sandbox
        .seen_authorizations()
        .iter()
        .all(|a| a.as_deref() != Some(&format!("Bearer {caller}"))));

    // A tampered token, or one with no subprotocol beside it, is refused.
    let mut tampered = caller.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let bad = format!(
        "base64url.bearer.authorization.k8s.io.{}, v5.channel.k8s.io",
        b64(&tampered)
    );
    assert_eq!(websocket_exec(&env, &bad).await.unwrap_err(), 401);
    assert_eq!(websocket_exec(&env, &bearer).await.unwrap_err(), 401);
    // No token at all.
    assert_eq!(
        websocket_exec(&env, "v5.channel.k8s.io").await.unwrap_err(),
        401
    );
    env.stop().await;
}
