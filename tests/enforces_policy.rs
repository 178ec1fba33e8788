//! The policy decides: allowed requests go through, denied ones get a 403 naming the
//! rule, approve-rules refuse saying approval is needed (until approvals land), audit
//! mode only records, and a policy edited on disk takes effect without a restart.

mod support;

use std::time::Duration;

use support::{ok, sandbox, Env};

const SANDBOX_POLICY: &str = include_str!("../policies/sandbox.yaml");

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_is_allowed_denied_and_held_as_the_policy_says() {
    // A short hold: nobody approves here.
    let policy = SANDBOX_POLICY.replacen(
        "    action: approve\n",
        "    action: approve\n    approval: {hold: 1s}\n",
        1,
    );
    let env = sandbox()
        .policy(&policy)
        .with_proxy_config("approval: {poll: 50ms}\n")
        .start()
        .await;

    let pods = ok(&env.kubectl(&["get", "pods"]).await);
    assert!(pods.contains("nginx"), "{pods}");
    let all = ok(&env.kubectl(&["get", "pods", "-A"]).await);
    assert!(
        all.contains("kube-system"),
        "lists across namespaces: {all}"
    );
    assert_eq!(
        ok(&env.kubectl(&["exec", "nginx", "--", "echo", "hi"]).await).trim(),
        "hi"
    );

    let cases: &[(&[&str], &str)] = &[
        (
            &["delete", "pod", "nginx"],
            "Error from server (Forbidden): forbidden by chaperone policy \"sandbox-mcp-server\": rule \"no-pod-deletes\" denies delete on pods \"nginx\" in namespace default",
        ),
        (&["exec", "nginx", "--", "sh", "-c", "id"], "no rule allows"),
        (&["get", "configmaps", "-n", "kube-system"], "rule \"hands-off-kube-system\" denies list on configmaps"),
        (
            &["create", "rolebinding", "agent-admin", "--clusterrole=admin", "--user=agent"],
            "approval pending: rule \"rbac-needs-approval\"",
        ),
    ];
    for (args, words) in cases {
        let out = env.kubectl(args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
    // The pod is still there.
    ok(&env.kubectl(&["get", "pod", "nginx"]).await);

    // The audit trail names the rule of each decision (in the complete event; a held
    // request also has its `RequestReceived` one, see holds_for_approval).
    let _dir = env.stop().await;
    let audit: Vec<serde_json::Value> =
        support::json_lines(&_dir.path().join("sandbox/audit.jsonl"));
    let rule_of = |verb: &str, resource: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
            .filter(|e| e["stage"] == "ResponseComplete")
            .map(|e| {
                format!(
                    "{} {}",
                    e["annotations"]["chaperone.dev/decision"].as_str().unwrap(),
                    e["annotations"]["chaperone.dev/rule"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(rule_of("delete", "pods"), ["deny no-pod-deletes"]);
    assert_eq!(
        rule_of("create", "rolebindings"),
        ["approve rbac-needs-approval"]
    );
}

const DENY_CONFIGMAPS: &str = "apiVersion: chaperone.dev/v1alpha1
kind: Policy
metadata: {name: v1}
spec:
  rules:
  - name: pods-only
    subjects: {serviceAccounts: [default/mcp-server]}
    apiGroups: [\"\"]
    resources: [pods]
    verbs: [list]
    action: allow
";

/// Swaps the policy like the kubelet updates a ConfigMap volume: a new timestamped
/// directory, then an atomic rename of the `..data` symlink.
fn swap_configmap(dir: &std::path::Path, generation: u32, text: &str) {
    let data = dir.join(format!("..2026_11_25_{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("policy.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

async fn wait_for(env: &Env, path: &str, code: u16) {
    let client = env.client(false);
    let url = format!("{}{path}", env.proxy_url());
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if client.get(&url, &[]).await.status.as_u16() == code {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{path} never answered {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_swapped_in_a_configmap_volume_takes_effect_and_a_bad_one_is_kept_out() {
    let mount = tempfile::tempdir().unwrap();
    swap_configmap(mount.path(), 1, DENY_CONFIGMAPS);
    std::os::unix::fs::symlink("..data/policy.yaml", mount.path().join("policy.yaml")).unwrap();
    let env = sandbox()
        .with_proxy_config(&format!(
            "policy: {{file: {}, reloadInterval: 50ms}}\n",
            mount.path().join("policy.yaml").display()
        ))
        .start()
        .await;
    let configmaps = "/api/v1/namespaces/default/configmaps";
    wait_for(&env, configmaps, 403).await;

    swap_configmap(
        mount.path(),
        2,
        &DENY_CONFIGMAPS.replace("[pods]", "[pods, configmaps]"),
    );
    wait_for(&env, configmaps, 200).await;

    // A broken edit: the last good policy stays, and /readyz says why.
    swap_configmap(mount.path(), 3, "apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nspec: {rules: [{name: x, verbz: [get]}]}\n");
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let warned = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (code, body) = support::http_get(admin, "/readyz").await;
            if body.contains("policy reload failed") {
                return (code, body);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("/readyz reports the failed reload");
    assert_eq!(warned.0, 200, "still ready: {}", warned.1);
    assert!(warned.1.contains("verbz"), "{}", warned.1);
    wait_for(&env, configmaps, 200).await;
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("chaperone_policy_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_everything_is_refused_until_one_appears() {
    let env = sandbox()
        .with_proxy_config("policy: {file: absent/policy.yaml, reloadInterval: 50ms}\n")
        .start_unready()
        .await;
    let client = env.client(false);
    let reply = client
        .get(
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
            &[],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 403);
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("no policy is loaded"), "{message}");
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (code, body) = support::http_get(admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("no policy loaded"), "{body}");

    std::fs::create_dir_all(env.dir.path().join("absent")).unwrap();
    std::fs::write(
        env.dir.path().join("absent/policy.yaml"),
        support::ALLOW_ALL,
    )
    .unwrap();
    wait_for(&env, "/api/v1/namespaces/default/pods", 200).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_records_what_it_would_deny_and_lets_it_through() {
    let audit_policy = DENY_CONFIGMAPS.replace("spec:\n", "spec:\n  mode: audit\n");
    let env = sandbox().policy(&audit_policy).with_proxy().start().await;
    let reply = env
        .client(false)
        .get(
            &format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url()),
            &[],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.body);
    let dir = env.stop().await;
    let event: serde_json::Value =
        support::json_lines::<serde_json::Value>(&dir.path().join("sandbox/audit.jsonl"))
            .into_iter()
            .find(|e| e["objectRef"]["resource"] == "configmaps")
            .unwrap();
    let notes = &event["annotations"];
    assert_eq!(notes["chaperone.dev/decision"], "allow");
    assert_eq!(notes["chaperone.dev/mode"], "audit");
    let reason = notes["chaperone.dev/reason"].as_str().unwrap();
    assert!(
        reason.contains("audit mode, not enforced") && reason.contains("no rule allows"),
        "{reason}"
    );
}

/// `kubectl auth can-i ARGS` through the proxy, as the caller: what it prints.
async fn can_i(env: &support::Env, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let out = support::run(env.kubectl_cmd(env.proxy_kubeconfig(), &all)).await;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `kubectl auth can-i '*' '*'` asks about all of it: allowed everything but Secrets, the
/// caller is told no, naming the rule, where RBAC's reading of `*` alone would say yes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_everything_is_no_when_a_rule_denies_part_of_it() {
    let policy = format!(
        "{}  - name: no-secrets\n    subjects: {{serviceAccounts: [default/mcp-server]}}\n    apiGroups: [\"\"]\n    resources: [secrets]\n    verbs: [\"*\"]\n    action: deny\n",
        support::ALLOW_ALL
    );
    let env = sandbox().policy(&policy).with_proxy().start().await;
    let can_i = |args: &'static [&'static str]| can_i(&env, args);
    assert_eq!(
        can_i(&["*", "*"]).await,
        "no - rule \"no-secrets\" denies part of what `*` asks about, so not all of it is allowed"
    );
    assert!(can_i(&["get", "secrets"])
        .await
        .starts_with("no - rule \"no-secrets\""));
    assert_eq!(can_i(&["*", "pods"]).await, "yes");
    assert_eq!(can_i(&["get", "*"]).await.split(" - ").next(), Some("no"));
    env.stop().await;
}

/// `kubectl auth can-i` and `whoami` are about the caller: chaperone answers them from
/// its policy and the caller's identity. Forwarded, the API server would answer for the
/// proxy's own credential (the sandbox's admin, who may do anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_and_whoami_answer_for_the_caller_from_the_policy() {
    let env = sandbox().policy(SANDBOX_POLICY).with_proxy().start().await;
    let can_i = |args: &'static [&'static str]| can_i(&env, args);
    assert_eq!(can_i(&["list", "pods"]).await, "yes");
    assert_eq!(
        can_i(&["delete", "pods"]).await,
        "no - rule \"no-pod-deletes\" denies delete on pods in namespace default"
    );
    assert_eq!(
        can_i(&["create", "rolebindings"]).await,
        "no - chaperone holds this request for a reviewer's approval (rule \"rbac-needs-approval\")"
    );
    assert!(can_i(&["get", "secrets", "-n", "kube-system"])
        .await
        .starts_with("no - rule \"hands-off-kube-system\""));
    // A Namespace's own requests are in the namespace they name, as enforcement
    // resolves `kubectl get namespace kube-system` (kubectl sends `default` along).
    assert!(can_i(&["get", "namespace/kube-system"])
        .await
        .starts_with("no - rule \"hands-off-kube-system\""));
    assert_eq!(can_i(&["get", "namespace/default"]).await, "yes");
    // A review names no command: an exec is allowed when some command is (`echo` and
    // `cat` here; the exec itself is decided on its command).
    assert_eq!(
        can_i(&["create", "pods", "--subresource=exec"]).await,
        "yes"
    );
    assert!(
        can_i(&["create", "pods", "--subresource=exec", "-n", "kube-system"])
            .await
            .starts_with("no - rule \"hands-off-kube-system\"")
    );
    // The proxy's credential could; the caller cannot.
    assert_eq!(
        String::from_utf8_lossy(
            &env.kubectl_direct(&["auth", "can-i", "delete", "pods"])
                .await
                .stdout
        )
        .trim(),
        "yes"
    );

    // A review naming a key twice would be merged by the API server into another
    // question than either copy asks ("delete pods in kube-system" here): refused.
    let twice = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview",
        "spec":{"resourceAttributes":{"verb":"delete","resource":"pods"},
                "resourceAttributes":{"namespace":"kube-system"}}}"#;
    let reply = env
        .client(false)
        .post_json(
            &format!(
                "{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                env.proxy_url()
            ),
            twice,
        )
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("names the key \"resourceAttributes\" twice"),
        "{message}"
    );

    // `can-i --list` lists no rules rather than the proxy's (which the API server would
    // list for the credential chaperone forwards with), and says why.
    let list = env.kubectl(&["auth", "can-i", "--list"]).await;
    let (listed, warned) = (
        String::from_utf8_lossy(&list.stdout).into_owned(),
        stderr(&list),
    );
    assert!(list.status.success(), "{warned}");
    assert!(
        warned.contains("may be incomplete") && warned.contains("kubectl auth can-i VERB RESOURCE"),
        "{warned}"
    );
    assert!(!listed.contains("*.*"), "{listed}");

    let whoami = ok(&env.kubectl(&["auth", "whoami", "-o", "json"]).await);
    let review: serde_json::Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:serviceaccount:default:mcp-server"
    );

    // On record as answered by chaperone.
    let dir = env.stop().await;
    let answered: Vec<String> =
        support::json_lines::<serde_json::Value>(&dir.path().join("sandbox/audit.jsonl"))
            .into_iter()
            .filter(|e| e["annotations"]["chaperone.dev/rule"] == "builtin:self-review")
            .map(|e| {
                e["annotations"]["chaperone.dev/reason"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
    assert!(
        answered.contains(
            &"answered by chaperone, not forwarded: can-i delete pods in default: no".to_owned()
        ),
        "{answered:?}"
    );
    assert!(answered
        .iter()
        .any(|a| a.ends_with("whoami: system:serviceaccount:default:mcp-server")));
    assert!(answered
        .iter()
        .any(|a| a.ends_with("can-i --list in default: no rules listed (incomplete)")));
}

/// A caller in an approve rule's `skipGroups` goes through without review, so
/// `kubectl auth can-i` says yes to it, as enforcement then does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_i_says_yes_where_the_caller_skips_review() {
    let policy = SANDBOX_POLICY.replacen(
        "    action: approve\n",
        "    action: approve\n    approval: {skipGroups: [\"system:serviceaccounts:default\"]}\n",
        1,
    );
    let env = sandbox().policy(&policy).with_proxy().start().await;
    let out = env
        .kubectl(&["auth", "can-i", "create", "rolebindings"])
        .await;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(said, "yes", "{}", stderr(&out));
    ok(&env
        .kubectl(&[
            "create",
            "rolebinding",
            "skipped",
            "--clusterrole=view",
            "--user=agent",
        ])
        .await);
    env.stop().await;
}

/// The ConfigMap the proxy's policy comes from cannot be changed or deleted through the
/// proxy, whatever the policy allows: an agent allowed to edit ConfigMaps must not be
/// able to rewrite its own policy. The injector names it in `CHAPERONE_POLICY_CONFIGMAP`,
/// and the proxy's config, CA and serving certificate beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_objects_the_proxy_runs_with_cannot_be_changed_through_it() {
    let env = sandbox()
        .with_proxy()
        .env("CHAPERONE_POLICY_CONFIGMAP", "chaperone-policy")
        .env("CHAPERONE_CONFIG_CONFIGMAP", "chaperone-proxy")
        .env("CHAPERONE_TLS_SECRET", "chaperone-proxy-tls")
        .env("POD_NAMESPACE", "default")
        .start()
        .await;
    ok(&env
        .kubectl_direct(&[
            "create",
            "configmap",
            "chaperone-policy",
            "--from-literal=policy.yaml=x",
        ])
        .await);
    for args in [
        &["delete", "configmap", "chaperone-policy"][..],
        &[
            "patch",
            "configmap",
            "chaperone-policy",
            "-p",
            r#"{"data":{"policy.yaml":"x"}}"#,
        ],
    ] {
        let out = env.kubectl(args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        let said = stderr(&out);
        assert!(
            said.contains("(Forbidden)")
                && said.contains("the ConfigMap chaperone's policy comes from cannot be changed through chaperone"),
            "{args:?}: {said}"
        );
    }
    // Deleting every ConfigMap of the namespace would delete it too.
    let reply = env
        .client(false)
        .send(
            http::Request::delete(format!(
                "{}/api/v1/namespaces/default/configmaps",
                env.proxy_url()
            ))
            .body(chaperone::body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("cannot be changed through chaperone"),
        "{message}"
    );
    for verb in ["delete", "create"] {
        let out = env
            .kubectl(&["auth", "can-i", verb, "configmap/chaperone-policy"])
            .await;
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .starts_with("no - the ConfigMap chaperone's policy"),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Someone else deletes it: it cannot be created anew through the proxy, with a
    // policy of the caller's own, by its name or by a generateName that could become it.
    ok(&env
        .kubectl_direct(&["delete", "configmap", "chaperone-policy"])
        .await);
    let out = env
        .kubectl(&[
            "create",
            "configmap",
            "chaperone-policy",
            "--from-literal=policy.yaml=mine",
        ])
        .await;
    let said = stderr(&out);
    assert!(
        !out.status.success()
            && said.contains("forbidden by chaperone")
            && said.contains("cannot be changed through chaperone"),
        "{said}"
    );
    let create = |body: &str| {
        http::Request::post(format!(
            "{}/api/v1/namespaces/default/configmaps",
            env.proxy_url()
        ))
        .header("content-type", "application/json")
        .body(chaperone::body::full(body.to_owned()))
        .unwrap()
    };
    let reply = env
        .client(false)
        .send(create(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"chaperone-p"}}"#,
        ))
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    // A body that cannot be read for its name is refused, saying why.
    let reply = env.client(false).send(create("{not json")).await;
    assert_eq!(reply.status, 400, "{:?}", reply.body);
    let message = reply.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("reads the body of every ConfigMap created in namespace default"),
        "{message}"
    );
    assert!(!env
        .kubectl_direct(&["get", "configmap", "chaperone-policy"])
        .await
        .status
        .success());

    // The proxy's config and its serving certificate's Secret are as much its own: a
    // caller who changed the config could name an issuer of its own, and one deleted
    // cannot be put back with the caller's.
    ok(&env
        .kubectl_direct(&[
            "create",
            "configmap",
            "chaperone-proxy",
            "--from-literal=config.yaml=x",
        ])
        .await);
    ok(&env
        .kubectl_direct(&[
            "create",
            "secret",
            "generic",
            "chaperone-proxy-tls",
            "--from-literal=tls.key=x",
        ])
        .await);
    for (args, what) in [
        (
            &[
                "patch",
                "configmap",
                "chaperone-proxy",
                "-p",
                r#"{"data":{"config.yaml":"y"}}"#,
            ][..],
            "the ConfigMap chaperone's config comes from cannot be changed through chaperone",
        ),
        (
            &["delete", "secret", "chaperone-proxy-tls"],
            "the Secret of chaperone's serving certificate cannot be changed through chaperone",
        ),
        (
            &["delete", "secrets", "--all"],
            "the Secret of chaperone's serving certificate cannot be changed through chaperone",
        ),
    ] {
        let out = env.kubectl(args).await;
        let said = stderr(&out);
        assert!(
            !out.status.success() && said.contains(what),
            "{args:?}: {said}"
        );
    }
    ok(&env
        .kubectl_direct(&["delete", "secret", "chaperone-proxy-tls"])
        .await);
    let out = env
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "chaperone-proxy-tls",
            "--from-literal=tls.key=mine",
        ])
        .await;
    let said = stderr(&out);
    assert!(
        !out.status.success() && said.contains("the Secret of chaperone's serving certificate"),
        "{said}"
    );
    // Other Secrets are the policy's to decide.
    ok(&env
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "another",
            "--from-literal=a=b",
        ])
        .await);
    // Other ConfigMaps are the policy's to decide: created as sent, bodies intact.
    ok(&env
        .kubectl(&["create", "configmap", "other", "--from-literal=a=b"])
        .await);
    let reply = env
        .client(false)
        .send(create(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"made-by-agent-"},"data":{"k":"v"}}"#))
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.json()["data"]["k"], "v");
    let out = env
        .kubectl_direct(&["get", "configmap", "other", "-o", "jsonpath={.data.a}"])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b");
    env.stop().await;
}

/// `kubectl auth can-i` bodies are buffered to be read: a caller sending them slowly on
/// many connections gets a 429 past its bound, not any number buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_have_more_than_its_bound_of_review_bodies_being_read() {
    use tokio::io::AsyncWriteExt;
    let env = sandbox().with_proxy().start().await;
    let addr = env.started.proxy.as_ref().unwrap().addrs[0];
    let tls =
        std::sync::Arc::new(chaperone::tls::client_config(&env.ca_pem(), "test CA", None).unwrap());
    let head = format!(
        "POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews HTTP/1.1\r\n\
         Host: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{",
        env.started.caller_token
    );
    let mut slow = Vec::new();
    for _ in 0..chaperone::self_review::MAX_READING_PER_CALLER {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut conn = tokio_rustls::TlsConnector::from(tls.clone())
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.flush().await.unwrap();
        slow.push(conn);
    }
    // Their heads are read within milliseconds; room for a loaded machine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = env.kubectl(&["auth", "can-i", "get", "pods"]).await;
    assert!(!refused.status.success());
    let text = stderr(&refused);
    assert!(
        text.contains("already has 16 reviews of its own access being read"),
        "{text}"
    );
    // When the slow ones give up, the caller is answered again.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = env.kubectl(&["auth", "can-i", "get", "pods"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "yes",
        "{out:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_hold_more_than_its_bound_of_streams_open() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let env = sandbox()
        .with_proxy_config("maxStreamsPerCaller: 2\n")
        .start()
        .await;
    ok(&env
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1\nkind: Pod\nmetadata: {name: shell, namespace: default}\n\
             spec: {containers: [{name: main, image: busybox}]}\n",
        )
        .await);
    let client = env.client(true);
    let watch_url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true",
        env.proxy_url()
    );
    let watch = || {
        http::Request::get(&watch_url)
            .body(chaperone::body::empty())
            .unwrap()
    };
    let first = client.open(watch()).await;
    assert_eq!(first.status(), 200);

    // An exec session holds its place for as long as its tunnel is open.
    let mut exec = env.kubectl_cmd(
        env.proxy_kubeconfig(),
        &["exec", "-i", "shell", "--", "cat"],
    );
    exec.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut exec = exec.spawn().unwrap();
    let mut stdin = exec.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(exec.stdout.take().unwrap());
    stdin.write_all(b"still here\n").await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
        .await
        .expect("the exec session echoes")
        .unwrap();
    assert_eq!(line.trim(), "still here");

    // Two open: a third stream is refused with a Status saying why...
    let refused = client.open(watch()).await;
    assert_eq!(refused.status(), 429, "a third stream was opened");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "TooManyRequests");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("already has 2 watches, followed logs and exec"),
        "{message}"
    );
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("\nchaperone_streams_open 2\n"),
        "{metrics}"
    );
    // ...while requests that end on their own are not counted.
    let listed = client
        .get(
            &format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url()),
            &[],
        )
        .await;
    assert_eq!(listed.status, 200);

    // Each stream's end gives its place back: the exec session's tunnel, then the
    // watch the caller hangs up on.
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(20), exec.wait()).await;
    let second = open_when_free(&client, &watch).await;
    drop(first);
    let third = open_when_free(&client, &watch).await;
    assert_eq!(client.open(watch()).await.status(), 429, "two open again");
    drop((second, third));
    metrics_showing(admin, "chaperone_streams_open 0").await;
    env.stop().await;
}

/// A caller in a loop cannot have any number of requests in flight: past
/// `maxRequestsPerCaller` it gets a 429 with `Retry-After`, which kubectl waits out and
/// retries, so a burst is slowed down rather than failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_have_more_than_its_bound_of_requests_in_flight() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;
    let env = sandbox()
        .with_proxy_config("maxRequestsPerCaller: 2\n")
        .start()
        .await;
    let client = env.client(false);
    // Two creates whose bodies never finish arriving: forwarded, they stay in flight
    // until their callers send the rest.
    let create = |name: &str| {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, chaperone::body::BoxError>>(1);
        let body =
            http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
                rx.recv().await.map(|frame| (frame, rx))
            }))
            .boxed();
        let req = http::Request::post(format!(
            "{}/api/v1/namespaces/default/configmaps",
            env.proxy_url()
        ))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
        let client = client.clone();
        let sent = tokio::spawn(async move { client.send(req).await });
        let rest = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{name}\"}}}}"
        );
        (tx, rest, sent)
    };
    let (first_tx, first_rest, first) = create("first");
    let (second_tx, second_rest, second) = create("second");
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    metrics_showing(admin, "chaperone_requests_in_flight 2").await;

    // A third is refused at once, saying why and when to try again...
    let pods = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let refused = client.get(&pods, &[]).await;
    let text = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 429, "{}", &text[..text.len().min(300)]);
    assert_eq!(refused.headers["retry-after"], "1");
    let status = refused.json();
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("already has 2 requests in flight")
            && message.contains("maxRequestsPerCaller"),
        "{message}"
    );
    // ...and kubectl, told to retry after a second, waits for a place.
    let kubectl = {
        let mut cmd = env.kubectl_cmd(env.proxy_kubeconfig(), &["get", "pods", "-o", "name"]);
        cmd.kill_on_drop(true);
        tokio::spawn(support::run(cmd))
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !kubectl.is_finished(),
        "kubectl was answered with two in flight"
    );

    // The first create gets the rest of its body and is answered: its place is free.
    first_tx
        .send(Ok(Frame::data(Bytes::from(first_rest))))
        .await
        .unwrap();
    drop(first_tx);
    let created = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("the create is answered")
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    let out = tokio::time::timeout(Duration::from_secs(30), kubectl)
        .await
        .expect("kubectl retried and was answered")
        .unwrap();
    assert!(ok(&out).contains("pod/"), "{out:?}");

    second_tx
        .send(Ok(Frame::data(Bytes::from(second_rest))))
        .await
        .unwrap();
    drop(second_tx);
    assert_eq!(second.await.unwrap().status, 201);
    // The refusal is counted with its code, and nothing is left in flight.
    // A caller past its bound is throttled, not denied by policy.
    let metrics = metrics_showing(admin, "chaperone_requests_in_flight 0").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chaperone_requests_total{")
                && l.contains("code=\"429\"")
                && l.contains("decision=\"throttled\"")),
        "{metrics}"
    );
    env.stop().await;
}

/// The proxy's metrics once they have `line` (places are given back asynchronously, as
/// the proxy sees a response end); fails after 10 s without it.
async fn metrics_showing(admin: std::net::SocketAddr, line: &str) -> String {
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = support::http_get(admin, "/metrics").await.1;
        if metrics.lines().any(|l| l == line) {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {line:?} within 10 s in\n{metrics}");
}

/// Opens a stream once the caller has a place for it again (given back asynchronously,
/// when the proxy sees the previous one end).
async fn open_when_free(
    client: &support::TestClient,
    request: &impl Fn() -> http::Request<chaperone::body::Body>,
) -> http::Response<hyper::body::Incoming> {
    for _ in 0..200 {
        let rsp = client.open(request()).await;
        if rsp.status() == 200 {
            return rsp;
        }
        assert_eq!(rsp.status(), 429);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no place was given back within 10 s");
}

/// A custom resource may template pods anywhere in it, for an operator to create: one
/// written through chaperone is read as a workload is, at any depth, and one an
/// administrator took out of chaperone is not changed through it.
#[tokio::test]
async fn a_custom_resource_templating_a_pod_stays_in_chaperone() {
    let env = sandbox().with_proxy().start().await;
    let crd = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "rollouts.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "rollouts", "kind": "Rollout"}, "versions": [{"name": "v1", "served": true, "storage": true}]}}"#;
    ok(&env.kubectl_direct_stdin(&["create", "-f", "-"], crd).await);
    let rollout = |name: &str, template: &str| {
        format!(
            r#"{{"apiVersion": "example.com/v1", "kind": "Rollout", "metadata": {{"name": "{name}"}},
            "spec": {{"replicas": 1, "workload": {{"podTemplate": {template}}}}}}}"#
        )
    };
    let plain = r#"{"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}"#;
    let opted_out = r#"{"metadata": {"labels": {"chaperone.dev/inject": "false"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}"#;
    let on_the_node =
        r#"{"spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "nginx"}]}}"#;
    let refused = |out: &std::process::Output, what: &str| {
        let said = stderr(out);
        assert!(
            !out.status.success()
                && said.contains("custom resources (which may template pods) cannot set"),
            "{what}: {said}"
        );
    };
    // A protobuf body is read for Kubernetes' own kinds only: another API's kind of the
    // same name would be misread.
    let req = http::Request::post(format!(
        "{}/apis/example.com/v1/namespaces/default/rollouts",
        env.proxy_url()
    ))
    .header("content-type", "application/vnd.kubernetes.protobuf")
    .body(chaperone::body::full(&b"k8s\0\x0a\x00"[..]))
    .unwrap();
    let reply = env.client(false).send(req).await;
    assert!(
        reply.status == 400
            && String::from_utf8_lossy(&reply.body).contains("Kubernetes' own kinds only"),
        "{} {:?}",
        reply.status,
        reply.body
    );
    // Text an operator renders into pods (Helm values) is read too.
    let helm = r#"{"apiVersion": "example.com/v1", "kind": "Rollout", "metadata": {"name": "helm"},
        "spec": {"values": "controller:\n  hostNetwork: true\n"}}"#;
    refused(
        &env.kubectl_stdin(&["create", "-f", "-"], helm).await,
        "Helm values",
    );
    for (name, template) in [("escape", opted_out), ("host", on_the_node)] {
        let out = env
            .kubectl_stdin(&["create", "-f", "-"], &rollout(name, template))
            .await;
        refused(&out, name);
    }
    ok(&env
        .kubectl_stdin(&["create", "-f", "-"], &rollout("site", plain))
        .await);
    // An administrator's opted-out ones, the second under labels an operator names
    // otherwise (`spec.podMetadata`): the agent cannot change what they run.
    ok(&env
        .kubectl_direct_stdin(&["create", "-f", "-"], &rollout("admins", opted_out))
        .await);
    let pod_metadata = r#"{"apiVersion": "example.com/v1", "kind": "Rollout", "metadata": {"name": "monitor"},
        "spec": {"podMetadata": {"labels": {"chaperone.dev/inject": "false"}}, "image": "prom"}}"#;
    ok(&env
        .kubectl_direct_stdin(&["create", "-f", "-"], pod_metadata)
        .await);
    for (name, patch, what) in [
        (
            "site",
            r#"{"spec":{"workload":{"podTemplate":{"metadata":{"annotations":{"chaperone.dev/policy":"mine"}}}}}}"#,
            "a template's annotation by merge patch",
        ),
        (
            "admins",
            r#"{"spec":{"workload":{"podTemplate":{"spec":{"containers":[{"name":"c","image":"attacker/tool"}]}}}}}"#,
            "an opted-out rollout's image",
        ),
        (
            "monitor",
            r#"{"spec":{"image":"attacker/tool"}}"#,
            "an opted-out rollout under podMetadata",
        ),
    ] {
        let out = env
            .kubectl(&[
                "patch",
                "rollouts.example.com",
                name,
                "--type=merge",
                "-p",
                patch,
            ])
            .await;
        refused(&out, what);
    }
    ok(&env
        .kubectl(&["label", "rollouts.example.com", "site", "tier=front"])
        .await);
    for name in ["escape", "host", "helm"] {
        assert!(!env
            .kubectl_direct(&["get", "rollouts.example.com", name])
            .await
            .status
            .success());
    }
    let live = env
        .kubectl_direct(&["get", "rollouts.example.com", "admins", "-o", "json"])
        .await;
    ok(&live);
    assert!(!String::from_utf8_lossy(&live.stdout).contains("attacker/tool"));
    env.stop().await;
}

/// A pod, a pod template or a namespace written through chaperone cannot set the keys
/// that take pods out of chaperone (`chaperone.dev/inject: "false"`) or choose their
/// policy (`chaperone.dev/policy`), however the write is sent; other writes of them go
/// through as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_written_through_chaperone_stays_in_chaperone() {
    let env = sandbox().with_proxy().start().await;
    // A pod created with a raw JSON body, as a client other than kubectl may send it.
    // Over HTTP/2: an answer that comes before the body is sent whole (the 413 below)
    // reaches the client, where HTTP/1.1 may meet a connection closed mid-write.
    let post_pod = |body: String| {
        let client = env.client(true);
        let req = http::Request::post(format!(
            "{}/api/v1/namespaces/default/pods",
            env.proxy_url()
        ))
        .header("content-type", "application/json")
        .body(chaperone::body::full(body))
        .unwrap();
        async move { client.send(req).await }
    };
    let refused = |out: &std::process::Output, what: &str| {
        let said = stderr(out);
        assert!(
            !out.status.success()
                && said.contains(
                    "cannot set chaperone.dev/inject, chaperone.dev/policy or hostNetwork"
                ),
            "{what}: {said}"
        );
    };
    // As kubectl sends them: a create, a merge patch of a template, a JSON patch.
    let out = env
        .kubectl(&[
            "run",
            "escape",
            "--image=busybox",
            "--labels=chaperone.dev/inject=false",
        ])
        .await;
    refused(&out, "run with the opt-out label");
    let out = env
        .kubectl(&[
            "run",
            "mine",
            "--image=busybox",
            "--annotations=chaperone.dev/policy=mine",
        ])
        .await;
    refused(&out, "run naming a policy");
    ok(&env
        .kubectl(&["create", "deployment", "site", "--image=nginx"])
        .await);
    let out = env
        .kubectl(&[
            "patch",
            "deployment",
            "site",
            "-p",
            r#"{"spec":{"template":{"metadata":{"labels":{"chaperone.dev/inject":"false"}}}}}"#,
        ])
        .await;
    refused(&out, "a template's label by merge patch");
    ok(&env.kubectl(&["run", "plain", "--image=busybox"]).await);
    let out = env
        .kubectl(&[
            "patch",
            "pod",
            "plain",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/annotations","value":{}},{"op":"add","path":"/metadata/annotations/chaperone.dev~1policy","value":"mine"}]"#,
        ])
        .await;
    refused(&out, "a JSON patch");
    // A key spelled with JSON escapes is the same key; a pod on the node's network is
    // left uninjected, the same.
    for pod in [
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"escaped","labels":{"chaperone.dev\u002finject":"false"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"host"},"spec":{"hostNetwork":true,"containers":[{"name":"c","image":"busybox"}]}}"#,
    ] {
        let reply = post_pod(pod.to_owned()).await;
        assert_eq!(reply.status, 403, "{pod}: {:?}", reply.body);
    }
    // The body is screened as the API server will read it. A caller that names
    // `Content-Type` in `Connection` (a header for this hop only, which a proxy drops)
    // has the body screened as JSON, as the API server decodes a body with no type;
    // and a body typed protobuf that is not one is refused, not waved through.
    let typed_post = |content_type: &'static str, connection: &'static str, body: &'static str| {
        let req = http::Request::post(format!(
            "{}/api/v1/namespaces/default/pods",
            env.proxy_url()
        ))
        .header("content-type", content_type)
        .header("connection", connection)
        .body(chaperone::body::full(body))
        .unwrap();
        let client = env.client(false);
        async move {
            let reply = client.send(req).await;
            let message = reply.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (reply.status, message)
        }
    };
    let host = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"host-2"},"spec":{"hostNetwork":true,"containers":[{"name":"c","image":"busybox"}]}}"#;
    for (connection, said) in [
        ("keep-alive, Content-Type", "hostNetwork"),
        ("close", "its protobuf body could not be read"),
    ] {
        let protobuf = "application/vnd.kubernetes.protobuf";
        let (status, message) = typed_post(protobuf, connection, host).await;
        assert!(
            status.is_client_error() && message.contains(said),
            "Connection: {connection}: {status} {message}"
        );
    }
    // YAML that is not JSON is refused: the API server's decoder reads a merge key
    // after the key it overrides, and `!!binary` keys, otherwise than any other reader.
    for pod in [
        "apiVersion: v1\nkind: Pod\nmetadata: {name: merged}\nspec:\n  hostNetwork: false\n  <<: {hostNetwork: true}\n  containers: [{name: c, image: busybox}]\n",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tagged\n  labels:\n    ? !!binary Y2hhcGVyb25lLmRldi9pbmplY3Q=\n    : \"false\"\nspec: {containers: [{name: c, image: busybox}]}\n",
    ] {
        let (status, message) = typed_post("application/yaml", "keep-alive", pod).await;
        assert!(
            status == 400 && message.contains("its body is YAML that is not JSON"),
            "{pod}: {status} {message}"
        );
    }
    // A namespace is not changed through chaperone (leaving its label out of an update
    // would turn injection off), nor a workload an administrator took out of it.
    let out = env
        .kubectl(&["label", "namespace", "default", "team=a"])
        .await;
    refused(&out, "a namespace's labels");
    ok(&env
        .kubectl_direct(&["create", "deployment", "opted-out", "--image=nginx"])
        .await);
    ok(&env
        .kubectl_direct(&[
            "patch",
            "deployment",
            "opted-out",
            "-p",
            r#"{"spec":{"template":{"metadata":{"labels":{"chaperone.dev/inject":"false"}}}}}"#,
        ])
        .await);
    let out = env
        .kubectl(&[
            "set",
            "image",
            "deployment/opted-out",
            "nginx=attacker/tool",
        ])
        .await;
    refused(&out, "an opted-out deployment's image");
    // Other writes go through, as sent.
    ok(&env.kubectl(&["label", "pod", "plain", "app=web"]).await);
    ok(&env
        .kubectl(&["set", "image", "deployment/site", "nginx=nginx:1.27"])
        .await);
    // A body larger than the API server takes is refused as it would refuse it.
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"big","annotations":{{"a":"{}"}}}}}}"#,
        "x".repeat(4 << 20)
    );
    let reply = post_pod(big).await;
    assert_eq!(reply.status, 413, "{:?}", reply.json()["message"]);
    for name in ["escape", "mine", "escaped", "host", "host-2"] {
        assert!(!env
            .kubectl_direct(&["get", "pod", name])
            .await
            .status
            .success());
    }
    env.stop().await;
}
