//! A request an `approve` rule holds waits for a human: approved in time it goes
//! through (and the same request passes for the grant's duration), denied it gets the
//! reviewer's reason, undecided it gets a 403 naming the AccessRequest and the
//! command to approve it; the requester can never approve itself.

mod support;

use std::time::Duration;

use support::{ok, sandbox, Env};

const SANDBOX_POLICY: &str = include_str!("../policies/sandbox.yaml");

fn policy_with(hold: &str, grant: &str) -> String {
    SANDBOX_POLICY.replacen(
        "    action: approve\n",
        &format!("    action: approve\n    approval: {{hold: {hold}, grant: {grant}}}\n"),
        1,
    )
}

fn policy_with_hold(hold: &str) -> String {
    policy_with(hold, "10m")
}

/// The proxy re-reads an AccessRequest every `poll` only while its watch is broken;
/// at one hour, a decision that arrives within a test came through the watch.
async fn start(hold: &str) -> Env {
    start_with(&policy_with_hold(hold)).await
}

/// As [`start`], under `policy`.
async fn start_with(policy: &str) -> Env {
    sandbox()
        .policy(policy)
        .with_proxy_config("approval: {poll: 1h}\n")
        .start()
        .await
}

/// The sandbox's policy with `rule` (YAML, as the rules list indents it) before its
/// `no-pod-deletes` rule.
fn sandbox_policy_with_rule(rule: &str) -> String {
    SANDBOX_POLICY.replacen(
        "  - name: no-pod-deletes\n",
        &format!("{rule}\n  - name: no-pod-deletes\n"),
        1,
    )
}

/// `chaperone <args>` as a reviewer, with the sandbox's own kubeconfig.
fn reviewer(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&env.started.kubeconfig)
        .output()
        .expect("chaperone runs")
}

/// `kubectl chaperone <args>`: the binary as a kubectl plugin (`kubectl-chaperone` on
/// the PATH), with the sandbox's own kubeconfig.
fn kubectl_plugin(env: &Env, args: &[&str]) -> std::process::Output {
    let bin = env.started.kubeconfig.parent().unwrap().join("plugin-bin");
    let plugin = bin.join("kubectl-chaperone");
    if !plugin.exists() {
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_chaperone"), &plugin).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new(support::kubectl_path())
        .arg("chaperone")
        .args(args)
        .arg("--kubeconfig")
        .arg(&env.started.kubeconfig)
        .env("PATH", path)
        .output()
        .expect("kubectl runs")
}

/// The name of the (first) AccessRequest, once the held request has created it.
async fn held_request(env: &Env) -> String {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let out = reviewer(env, &["requests"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(line) = text.lines().nth(1) {
                return line.split_whitespace().nth(1).unwrap().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.expect("an AccessRequest appears")
}

const CREATE: [&str; 5] = [
    "create",
    "rolebinding",
    "agent-admin",
    "--clusterrole=admin",
    "--user=agent",
];

/// Held too, and a different request from [`CREATE`] (another resource).
const OTHER: [&str; 5] = [
    "create",
    "role",
    "agent-view",
    "--verb=get",
    "--resource=pods",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_goes_through_and_its_grant_covers_a_retry() {
    let env = start("30s").await;
    let held = tokio::spawn({
        let cmd = env.kubectl_cmd(env.proxy_kubeconfig(), &CREATE);
        support::run(cmd)
    });
    let name = held_request(&env).await;
    assert!(name.starts_with("create-rolebindings-"), "{name}");
    assert!(!held.is_finished(), "the request waits for the reviewer");
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "chaperone_approvals_pending 1"),
        "{metrics}"
    );
    let approved = reviewer(
        &env,
        &["approve", &name, "--reason", "reviewed the binding"],
    );
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let out = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent-admin created"),
        "{out:?}"
    );
    // The decision came through the watch (the proxy re-reads only while it is broken).
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "chaperone_approvals_watch_synced 1"),
        "{metrics}"
    );

    // The same request again: the grant lets it through at once, to the API server
    // (which now says it exists).
    let again = env.kubectl(&CREATE).await;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("\"agent-admin\" already exists"),
        "{stderr}"
    );

    // The record: held (before the wait), approved and forwarded, then granted; each
    // names the AccessRequest.
    let dir = env.stop().await;
    let events: Vec<serde_json::Value> =
        support::json_lines::<serde_json::Value>(&dir.path().join("sandbox/audit.jsonl"))
            .into_iter()
            .filter(|e| e["annotations"]["chaperone.dev/access-request"] == name)
            .collect();
    let steps: Vec<(&str, &str, u64)> = events
        .iter()
        .map(|e| {
            (
                e["stage"].as_str().unwrap(),
                e["annotations"]["chaperone.dev/approval"].as_str().unwrap(),
                e["responseStatus"]["code"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("RequestReceived", "held", 0),
            ("ResponseComplete", "approved by sandbox-user", 201),
            ("ResponseComplete", "granted earlier", 409),
        ],
        "{events:#?}"
    );
    assert_eq!(events[0]["auditID"], events[1]["auditID"]);
    assert_eq!(
        events[1]["annotations"]["chaperone.dev/rule"],
        "rbac-needs-approval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_covers_retries_until_it_ends_then_the_request_is_held_again() {
    grant_covers_retries_for_3s("3s").await;
}

/// A reviewer may shorten a grant, not stretch it: approved `--for 1h`, the rule's 3 s
/// grant still ends it, and the same approval does not grant again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewers_longer_grant_ends_with_the_rules() {
    grant_covers_retries_for_3s("1h").await;
}

/// A proxy whose rule holds a RoleBinding's create for 1 s and grants for `grant`, and
/// the name of the AccessRequest of one such create, held and answered pending.
async fn held_once(grant: &str) -> (Env, String) {
    let env = start_with(&policy_with("1s", grant)).await;
    let create = env.kubectl(&CREATE).await;
    assert!(
        String::from_utf8_lossy(&create.stderr).contains("approval pending"),
        "{create:?}"
    );
    let name = held_request(&env).await;
    (env, name)
}

/// A rule with a 3 s grant, approved `--for` `reviewer_grant`: the retries within 3 s are
/// forwarded, the one after is held again.
async fn grant_covers_retries_for_3s(reviewer_grant: &str) {
    let (env, name) = held_once("3s").await;
    let approved = reviewer(&env, &["approve", &name, "--for", reviewer_grant]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let started = std::time::Instant::now();
    // Within the grant: forwarded, so created.
    let created = ok(&env.kubectl(&CREATE).await);
    assert!(created.contains("agent-admin created"), "{created}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the test machine is too slow to check the grant"
    );
    // After it: held again (not forwarded: the API server would say it exists), with a
    // new AccessRequest of the same name.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = env.kubectl(&CREATE).await;
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(
        stderr.contains("approval pending") && stderr.contains(&name),
        "{stderr}"
    );
    env.stop().await;
}

/// A reviewer takes a grant back by deleting its AccessRequest: the same request is
/// held again at once, not forwarded for the rest of the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_approved_request_takes_its_grant_back() {
    let (env, name) = held_once("1h").await;
    let approved = reviewer(&env, &["approve", &name, "--yes"]);
    assert!(approved.status.success(), "{approved:?}");
    let created = ok(&env.kubectl(&CREATE).await);
    assert!(created.contains("agent-admin created"), "{created}");
    let deleted = env
        .kubectl_direct(&["delete", "accessrequest", &name, "-n", "default"])
        .await;
    assert!(deleted.status.success(), "{deleted:?}");
    // The watch sees the delete; then the request is held, not granted (a forwarded one
    // would hear from the API server that the binding exists).
    let mut said = String::new();
    for _ in 0..50 {
        let again = env.kubectl(&CREATE).await;
        said = String::from_utf8_lossy(&again.stderr).into_owned();
        if said.contains("approval pending") {
            break;
        }
        assert!(said.contains("already exists"), "{said}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said.contains("approval pending"), "{said}");
    env.stop().await;
}

/// An AccessRequest's phase written Approved without the approvals its spec asks for
/// (where the admission policy that stops such a write is missing) is not taken: the
/// request stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_without_its_approvals_is_not_taken() {
    let (env, name) = held_once("1h").await;
    let patched = env
        .kubectl_direct(&[
            "patch",
            "accessrequest",
            &name,
            "-n",
            "default",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Approved","decidedBy":"mallory"}}"#,
        ])
        .await;
    assert!(patched.status.success(), "{patched:?}");
    let again = env.kubectl(&CREATE).await;
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("approval pending"), "{again:?}");
    // Asked again: a fresh AccessRequest under the name, for reviewers to decide.
    let object = access_request(&env, &name).await;
    assert_ne!(object["status"]["phase"], "Approved", "{object}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_gets_the_reviewers_reason() {
    let env = start("30s").await;
    let held = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &CREATE),
    ));
    let name = held_request(&env).await;
    // As a kubectl plugin, this time.
    let refused = kubectl_plugin(&env, &["deny", &name]);
    assert!(!refused.status.success(), "deny needs a reason");
    let listed = String::from_utf8_lossy(&kubectl_plugin(&env, &["requests"]).stdout).into_owned();
    assert!(
        listed.contains(&name) && listed.contains("Pending"),
        "{listed}"
    );
    // The reviewer reads what an approval would grant before deciding: the binding's
    // role and subject, in the body as the API server would get it.
    let shown =
        String::from_utf8_lossy(&kubectl_plugin(&env, &["requests", &name]).stdout).into_owned();
    for part in [
        "create rolebindings.rbac.authorization.k8s.io in default",
        "\"roleRef\": {",
        "\"name\": \"admin\"",
        "\"name\": \"agent\"",
        &format!("chaperone deny {name} -n default"),
    ] {
        assert!(shown.contains(part), "{part:?} not in:\n{shown}");
    }
    let denied = kubectl_plugin(
        &env,
        &["deny", &name, "--reason", "no admin bindings for agents"],
    );
    assert!(
        denied.status.success(),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let out = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "denied by sandbox-user: no admin bindings for agents (AccessRequest default/"
        ),
        "{stderr}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_request_says_how_to_approve_it_and_passes_once_approved() {
    let env = start("1s").await;
    let out = env.kubectl(&CREATE).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("approval pending: rule \"rbac-needs-approval\""),
        "{stderr}"
    );
    let name = held_request(&env).await;
    assert!(
        stderr.contains(&format!("kubectl chaperone approve {name} -n default")),
        "{stderr}"
    );
    let approved = reviewer(&env, &["approve", &name]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let retried = ok(&env.kubectl(&CREATE).await);
    assert!(retried.contains("agent-admin created"), "{retried}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requester_cannot_touch_access_requests() {
    let env = start("1s").await;
    let _ = env.kubectl(&CREATE).await;
    let name = held_request(&env).await;
    let patch = r#"{"status":{"phase":"Approved"}}"#;
    let out = env
        .kubectl(&[
            "patch",
            "accessrequests.chaperone.dev",
            &name,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Forbidden")
            && stderr.contains("chaperone.dev resources are never available through chaperone"),
        "{stderr}"
    );
    let listed = reviewer(&env, &["requests"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(" Pending "),
        "still pending"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_means_two_different_reviewers() {
    let policy = SANDBOX_POLICY.replacen(
        "    action: approve\n",
        "    action: approve\n    approval: {hold: 1s, approvers: 2}\n",
        1,
    );
    let env = sandbox()
        .policy(&policy)
        .with_proxy_config("approval: {poll: 50ms}\n")
        .start()
        .await;
    let _ = env.kubectl(&CREATE).await;
    let name = held_request(&env).await;
    let first = reviewer(&env, &["approve", &name]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("approval 1 of 2"),
        "{first:?}"
    );
    let again = reviewer(&env, &["approve", &name]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has already approved"),
        "{again:?}"
    );
    // Still held: one approval is not enough.
    let out = env.kubectl(&CREATE).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("approval pending"),
        "{out:?}"
    );
    env.stop().await;
}

/// A webhook receiver on loopback: records each POST (path, body); the first POST to
/// `/flaky` fails with 500 to exercise the retry.
async fn webhook_receiver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let flaky_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (record, flaky_failed) = (record.clone(), flaky_failed.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (record, flaky_failed) = (record.clone(), flaky_failed.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if path == "/flaky"
                                && !flaky_failed.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                let mut rsp = http::Response::new(chaperone::body::empty());
                                *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                                return Ok::<_, std::convert::Infallible>(rsp);
                            }
                            record
                                .lock()
                                .unwrap()
                                .push((path, String::from_utf8_lossy(&body).into_owned()));
                            Ok(http::Response::new(chaperone::body::empty()))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_are_notified_by_webhook_with_the_command_to_approve() {
    let (addr, seen) = webhook_receiver().await;
    let env = sandbox()
        .policy(&policy_with_hold("1s"))
        .with_proxy_config(&format!(
            "approval:\n  poll: 50ms\n  notify:\n  - url: http://{addr}/flaky\n  - url: http://{addr}/slack\n    format: slack\n"
        ))
        .start()
        .await;
    let _ = env.kubectl(&CREATE).await;
    let name = held_request(&env).await;
    let delivered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if seen.lock().unwrap().len() >= 2 {
                return seen.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both webhooks were called");
    let generic = &delivered
        .iter()
        .find(|(p, _)| p == "/flaky")
        .expect("the generic one, after a retry")
        .1;
    let notice: serde_json::Value = serde_json::from_str(generic).unwrap();
    assert_eq!(notice["kind"], "AccessRequestCreated");
    assert_eq!(
        notice["requester"]["user"],
        "system:serviceaccount:default:mcp-server"
    );
    assert_eq!(notice["request"]["resource"], "rolebindings");
    // The reviewer sees what would be created.
    assert_eq!(notice["request"]["body"]["metadata"]["name"], "agent-admin");
    assert_eq!(notice["request"]["body"]["roleRef"]["name"], "admin");
    assert_eq!(
        notice["approve"],
        format!("kubectl chaperone approve {name} -n default")
    );
    let slack = &delivered.iter().find(|(p, _)| p == "/slack").unwrap().1;
    let text = serde_json::from_str::<serde_json::Value>(slack).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains("wants to *create* `rolebindings in default`") && text.contains(&name),
        "{text}"
    );
    assert!(
        text.contains("```{") && text.contains("\"agent-admin\"") && text.contains("\"admin\""),
        "{text}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_needs_the_group_and_a_reason_and_is_flagged_and_notified() {
    let (addr, seen) = webhook_receiver().await;
    // The sandbox says every reviewer is in system:authenticated.
    let policy = SANDBOX_POLICY.replacen(
        "    action: approve\n",
        "    action: approve\n    approval: {hold: 1s, breakGlassGroups: [system:authenticated]}\n",
        1,
    );
    let env = sandbox()
        .policy(&policy)
        .with_proxy_config(&format!(
            "approval:\n  poll: 50ms\n  notify:\n  - url: http://{addr}/hook\n"
        ))
        .start()
        .await;
    let _ = env.kubectl(&CREATE).await;
    let name = held_request(&env).await;
    let no_reason = reviewer(&env, &["approve", &name, "--break-glass"]);
    assert!(
        String::from_utf8_lossy(&no_reason.stderr).contains("--break-glass needs --reason"),
        "{no_reason:?}"
    );
    let used = reviewer(
        &env,
        &[
            "approve",
            &name,
            "--break-glass",
            "--reason",
            "prod is down",
        ],
    );
    assert!(
        used.status.success(),
        "{}",
        String::from_utf8_lossy(&used.stderr)
    );
    ok(&env.kubectl(&CREATE).await);
    let notified = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some((_, body)) = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(_, b)| b.contains("AccessRequestBreakGlass"))
            {
                return body.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("reviewers hear of the break-glass");
    assert!(notified.contains("prod is down"), "{notified}");
    let dir = env.stop().await;
    let audit = std::fs::read_to_string(dir.path().join("sandbox/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"chaperone.dev/break-glass\":\"prod is down\""),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_is_refused_when_the_rule_allows_none() {
    let env = start("1s").await;
    let _ = env.kubectl(&CREATE).await;
    let name = held_request(&env).await;
    let refused = reviewer(
        &env,
        &["approve", &name, "--break-glass", "--reason", "hurry"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the rule has none"),
        "{refused:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_held_requests_share_one_access_request_and_a_dead_webhook_approves_nothing() {
    // A webhook nobody listens on: notifications fail, the requests stay held.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = sandbox()
        .policy(&policy_with_hold("2s"))
        .with_proxy_config(&format!(
            "approval:\n  poll: 50ms\n  notify:\n  - url: http://{dead}/hook\n"
        ))
        .start()
        .await;
    let (a, b) = tokio::join!(env.kubectl(&CREATE), env.kubectl(&CREATE));
    for out in [a, b] {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("approval pending"),
            "{out:?}"
        );
    }
    let listed = reviewer(&env, &["requests", "-A"]);
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(
        text.lines().count(),
        2,
        "one AccessRequest for both:\n{text}"
    );
    assert!(text.contains(" Pending "), "{text}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_that_cannot_be_requested_refuse_the_request() {
    // An API server without the AccessRequest CRD: the watch and the create fail.
    let env = sandbox()
        .seed(include_str!("../src/sandbox/seed.yaml"))
        .policy(&policy_with_hold("30s"))
        .with_proxy_config("approval: {poll: 50ms}\n")
        .start()
        .await;
    let out = env.kubectl(&CREATE).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "approvals are unavailable, so the request is refused: \
             creating AccessRequest default/create-rolebindings-"
        ) && stderr.contains("got 404 Not Found"),
        "{stderr}"
    );
    // Nothing was forwarded.
    let direct = env
        .kubectl_direct(&["get", "rolebinding", "agent-admin"])
        .await;
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("NotFound"),
        "{direct:?}"
    );
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (_, metrics) = support::http_get(admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "chaperone_approvals_watch_synced 0"),
        "{metrics}"
    );
    env.stop().await;
}

/// The AccessRequests `chaperone requests` lists, by name.
fn listed_requests(env: &Env) -> Vec<String> {
    let out = reviewer(env, &["requests"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// The first listed AccessRequest other than `not`, once one appears.
async fn another_request(env: &Env, not: &str) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(n) = listed_requests(env).into_iter().find(|n| n != not) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("another request is held")
}

/// A reviewer decides (`approve` or `deny`) `name`; the held kubectl run then ends
/// and its output is returned.
async fn decide(
    env: &Env,
    verb: &str,
    name: &str,
    reason: &str,
    held: tokio::task::JoinHandle<std::process::Output>,
) -> std::process::Output {
    let decided = reviewer(env, &[verb, name, "--reason", reason]);
    assert!(decided.status.success(), "{decided:?}");
    tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("the held request ends once decided")
        .unwrap()
}

/// A caller in a loop cannot put any number of AccessRequests in front of reviewers:
/// past `approval.maxHeldPerCaller` different held requests the next is refused at
/// once with 429, on record; once one is decided there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_hold_more_different_requests_than_its_bound() {
    let env = sandbox()
        .policy(&policy_with_hold("30s"))
        .with_proxy_config("approval: {poll: 1h, maxHeldPerCaller: 1}\n")
        .start()
        .await;
    let first = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &CREATE),
    ));
    let name = held_request(&env).await;

    // Another resource: a different request (creates of one resource in one namespace
    // are one request to the approval stage, whatever the object's name).
    let refused = tokio::time::timeout(Duration::from_secs(10), env.kubectl(&OTHER))
        .await
        .expect("refused at once, not held");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("(TooManyRequests)")
            && stderr.contains("already has 1 requests waiting for a reviewer")
            && stderr.contains("approval.maxHeldPerCaller is 1"),
        "{stderr}"
    );
    assert_eq!(
        listed_requests(&env),
        std::slice::from_ref(&name),
        "only the first is held"
    );

    // The first is approved and goes through; its place is free again, and the other
    // request is now held in its turn.
    let out = decide(&env, "approve", &name, "ok", first).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent-admin created"),
        "{out:?}"
    );
    let second = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &OTHER),
    ));
    let other = another_request(&env, &name).await;
    let out = decide(&env, "approve", &other, "ok", second).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent-view created"),
        "{out:?}"
    );

    // The refusal is on record, with its reason.
    let dir = env.stop().await;
    let audit: Vec<serde_json::Value> =
        support::json_lines(&dir.path().join("sandbox/audit.jsonl"));
    let refusals: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["annotations"]["chaperone.dev/approval"] == "refused: too many held")
        .collect();
    assert_eq!(refusals.len(), 1, "{audit:#?}");
    assert_eq!(refusals[0]["responseStatus"]["code"], 429);
    assert!(refusals[0]["annotations"]["chaperone.dev/reason"]
        .as_str()
        .unwrap()
        .contains("approval.maxHeldPerCaller is 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_being_sent_for_review_counts_against_the_callers_bound() {
    use tokio::io::AsyncWriteExt;
    let env = sandbox()
        .policy(&policy_with_hold("30s"))
        .with_proxy_config("approval: {poll: 1h, maxHeldPerCaller: 1}\n")
        .start()
        .await;
    // A RoleBinding create, held by the policy, whose body stops after one byte of a
    // thousand: chaperone buffers it to show it, so it takes the caller's one place.
    let addr = env.started.proxy.as_ref().unwrap().addrs[0];
    let tls = chaperone::tls::client_config(&env.ca_pem(), "test CA", None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings HTTP/1.1\r\n\
         Host: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{",
        env.started.caller_token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();

    // Meanwhile (the head is read within milliseconds on loopback; 1.5 s leaves room
    // for a loaded machine) another request to be held is refused at once, as past the
    // bound.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = tokio::time::timeout(Duration::from_secs(10), env.kubectl(&OTHER))
        .await
        .expect("refused at once, not held");
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(refused.contains("(TooManyRequests)"), "{refused}");
    assert!(
        refused.contains("counting requests whose bodies are still being sent for review"),
        "{refused}"
    );
    assert!(listed_requests(&env).is_empty(), "nothing is held yet");

    // The slow client gives up: its place is given back, and the other request is held.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &OTHER),
    ));
    let name = another_request(&env, "").await;
    let out = decide(&env, "approve", &name, "ok", second).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent-view created"),
        "{out:?}"
    );
    env.stop().await;
}

/// A caller that gives up on a held request leaves its AccessRequest in front of
/// reviewers: the place stays taken until the hold ends, so dropping connections does
/// not let a caller create AccessRequests faster than its bound per hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_keeps_its_place_until_its_hold_ends() {
    let env = sandbox()
        .policy(&policy_with_hold("6s"))
        .with_proxy_config("approval: {poll: 1h, maxHeldPerCaller: 1}\n")
        .start()
        .await;
    // The hold starts a little after this (kubectl starts, the proxy reads the request).
    let began = std::time::Instant::now();
    let mut create = CREATE.to_vec();
    create.push("--request-timeout=1s");
    let gave_up = env.kubectl(&create).await;
    assert!(!gave_up.status.success(), "{gave_up:?}");
    let name = held_request(&env).await;

    let refused = env.kubectl(&OTHER).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("(TooManyRequests)"), "{stderr}");
    assert_eq!(listed_requests(&env), std::slice::from_ref(&name));

    // Once the first one's hold is over, there is room again.
    tokio::time::sleep(
        Duration::from_secs(6).saturating_sub(began.elapsed()) + Duration::from_millis(1500),
    )
    .await;
    let second = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &OTHER),
    ));
    let other = another_request(&env, &name).await;
    let out = decide(&env, "deny", &other, "not now", second).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not now"),
        "{out:?}"
    );
    env.stop().await;
}

/// Denies the AccessRequest `name` as a reviewer, with `reason`, and returns what the
/// request `held` for it (sent by a task) was answered.
async fn deny_held(
    env: &Env,
    name: &str,
    reason: &str,
    held: tokio::task::JoinHandle<support::Reply>,
) -> support::Reply {
    let decided = reviewer(env, &["deny", name, "--reason", reason, "--yes"]);
    assert!(decided.status.success(), "{decided:?}");
    tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("the held request ends once decided")
        .unwrap()
}

/// The AccessRequest's object, as a reviewer reads it with kubectl.
async fn access_request(env: &Env, name: &str) -> serde_json::Value {
    let out = env
        .kubectl_direct(&["get", "accessrequest", name, "-o", "json"])
        .await;
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The reviewer sees the object being created (kubectl sends it as protobuf), and an
/// approval grants that object only: a different RoleBinding from the same caller is
/// held again, while the same one passes on the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reviewer_sees_the_body_and_the_grant_covers_that_body_only() {
    let env = start("30s").await;
    let held = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &CREATE),
    ));
    let name = held_request(&env).await;
    let object = access_request(&env, &name).await;
    let body = &object["spec"]["request"]["body"];
    assert_eq!(body["metadata"]["name"], "agent-admin", "{object}");
    assert_eq!(body["roleRef"]["name"], "admin", "{object}");
    assert_eq!(body["subjects"][0]["name"], "agent", "{object}");
    assert_eq!(
        object["spec"]["request"]["contentType"], "application/vnd.kubernetes.protobuf",
        "{object}"
    );
    // `chaperone requests` names the object being created.
    let listed = reviewer(&env, &["requests"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("create default/rolebindings.rbac.authorization.k8s.io agent-admin"),
        "{listed}"
    );
    let out = decide(&env, "approve", &name, "ok", held).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent-admin created"),
        "{out:?}"
    );

    // Another binding, cluster-admin this time: not covered by the grant, held again,
    // and the reviewer sees what it is.
    const ESCALATE: [&str; 5] = [
        "create",
        "rolebinding",
        "agent-root",
        "--clusterrole=cluster-admin",
        "--user=agent",
    ];
    let escalate = tokio::spawn(support::run(
        env.kubectl_cmd(env.proxy_kubeconfig(), &ESCALATE),
    ));
    // (Without the body in the request's key, the grant would let it through here.)
    let other = another_request(&env, &name).await;
    let object = access_request(&env, &other).await;
    assert_eq!(
        object["spec"]["request"]["body"]["roleRef"]["name"], "cluster-admin",
        "{object}"
    );
    let out = decide(&env, "deny", &other, "not cluster-admin", escalate).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not cluster-admin"),
        "{out:?}"
    );
    let direct = env
        .kubectl_direct(&["get", "rolebinding", "agent-root"])
        .await;
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("NotFound"),
        "{direct:?}"
    );

    // The same binding again passes on its grant (the API server says it exists).
    let again = env.kubectl(&CREATE).await;
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("\"agent-admin\" already exists"),
        "{again:?}"
    );
    env.stop().await;
}

/// An exec's command held for review is shown whole, and run as sent once approved. One
/// with what the detectors take for a secret in it is not held: masked, that argument
/// could as well be the payload, and a reviewer would approve what they cannot see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_exec_shows_its_command_whole_or_is_refused() {
    let env = start_with(&sandbox_policy_with_rule(
        "  - name: echo-needs-approval-in-team-a\n    subjects:\n      serviceAccounts: [default/mcp-server]\n    apiGroups: [\"\"]\n    resources: [pods/exec]\n    verbs: [get, create]\n    namespaces: [default]\n    commands:\n    - [echo, \"**\"]\n    action: approve\n",
    ))
    .await;
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    let refused = env
        .kubectl(&["exec", "nginx", "--", "echo", "Bearer", jwt])
        .await;
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("this one's command holds what chaperone takes for a secret"),
        "{stderr}"
    );
    assert!(!stderr.contains(jwt), "{stderr}");
    let listed = reviewer(&env, &["requests"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the header: nothing held {listed:?}"
    );

    let held = tokio::spawn(support::run(env.kubectl_cmd(
        env.proxy_kubeconfig(),
        &["exec", "nginx", "--", "echo", "hello", "reviewer"],
    )));
    let name = held_request(&env).await;
    let object = access_request(&env, &name).await;
    assert_eq!(
        object["spec"]["request"]["command"],
        serde_json::json!(["echo", "hello", "reviewer"]),
        "{}",
        object["spec"]["request"]
    );
    // The whole query is shown (container and streams too).
    let query = object["spec"]["request"]["query"].as_str().unwrap();
    assert!(
        query.starts_with("command=echo&command=hello&command=reviewer&")
            && query.contains("stdout=true")
            && !query.contains("stdin=true"),
        "{query}"
    );
    assert_eq!(
        object["spec"]["request"]["path"],
        "/api/v1/namespaces/default/pods/nginx/exec"
    );
    let out = decide(&env, "approve", &name, "reviewed", held).await;
    let mut printed = ok(&out);
    // kubectl can end a short exec on its status before it has written the output
    // (kubernetes/kubernetes#124571, seen here on a loaded machine); the grant covers
    // the same exec again.
    for _ in 0..3 {
        if !printed.trim().is_empty() {
            break;
        }
        printed = ok(&env
            .kubectl(&["exec", "nginx", "--", "echo", "hello", "reviewer"])
            .await);
    }
    assert_eq!(printed.trim(), "hello reviewer");

    // The grant covers that exec only: the same command with stdin attached (an
    // interactive session) is another request, held again.
    let interactive = tokio::spawn(support::run(env.kubectl_cmd(
        env.proxy_kubeconfig(),
        &["exec", "-i", "nginx", "--", "echo", "hello", "reviewer"],
    )));
    let other = another_request(&env, &name).await;
    let object = access_request(&env, &other).await;
    assert!(
        object["spec"]["request"]["query"]
            .as_str()
            .unwrap()
            .contains("stdin=true"),
        "{object}"
    );
    let out = decide(&env, "deny", &other, "no interactive sessions", interactive).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no interactive sessions"),
        "{out:?}"
    );
    env.stop().await;
}

/// A port-forward held for approval is shown with its ports, so one that names them
/// inside its tunnel (kubectl's: SPDY, or SPDY within a WebSocket) is refused rather
/// than held for a reviewer who would approve every port of the pod; a plain WebSocket
/// port-forward naming its ports in the query is held, showing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_forward_is_held_only_with_its_ports_in_sight() {
    let env = start_with(&sandbox_policy_with_rule(
        "  - name: port-forward-needs-approval\n    subjects:\n      serviceAccounts: [default/mcp-server]\n    apiGroups: [\"\"]\n    resources: [pods/portforward]\n    verbs: [get, create]\n    namespaces: [default]\n    action: approve\n",
    ))
    .await;
    // kubectl tries SPDY within a WebSocket, then SPDY: both refused, nothing held.
    let out = env
        .kubectl(&["port-forward", "pod/nginx", "0:80", "--address=127.0.0.1"])
        .await;
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("names its ports inside its tunnel"), "{said}");
    assert!(listed_requests(&env).is_empty(), "nothing held");
    // A query naming ports does not make an SPDY upgrade's ports seen.
    let forward = |method: &str, upgrade: &str, protocol: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!(
                "{}/api/v1/namespaces/default/pods/nginx/portforward?ports=8080",
                env.proxy_url()
            ))
            .header("connection", "Upgrade")
            .header("upgrade", upgrade)
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-protocol", protocol)
            .body(chaperone::body::empty())
            .unwrap()
    };
    let reply = env
        .client(false)
        .send(forward("POST", "SPDY/3.1", "portforward.k8s.io"))
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert!(listed_requests(&env).is_empty(), "nothing held");
    // A plain WebSocket port-forward: held, its ports shown; denied here.
    let (client, req) = (
        env.client(false),
        forward("GET", "websocket", "v4.channel.k8s.io"),
    );
    let held = tokio::spawn(async move { client.send(req).await });
    let name = held_request(&env).await;
    let object = access_request(&env, &name).await;
    assert_eq!(object["spec"]["request"]["query"], "ports=8080", "{object}");
    let reply = deny_held(&env, &name, "not that port", held).await;
    assert_eq!(reply.status, 403);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("not that port"),
        "{:?}",
        reply.body
    );
    env.stop().await;
}

/// What reaches a service a request is proxied to is what its reviewer saw: a header
/// the AccessRequest does not show (`X-HTTP-Method-Override`) or a body on a GET, which
/// is never read, is refused rather than held; the same request without is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_carries_nothing_its_reviewer_cannot_see() {
    let env = start_with(&sandbox_policy_with_rule(
        "  - name: service-calls-need-approval\n    subjects:\n      serviceAccounts: [default/mcp-server]\n    apiGroups: [\"\"]\n    resources: [services/proxy]\n    verbs: [get, create]\n    namespaces: [default]\n    action: approve\n",
    ))
    .await;
    let url = format!(
        "{}/api/v1/namespaces/default/services/web:80/proxy/items/5",
        env.proxy_url()
    );
    let post = |extra: Option<(&str, &str)>| {
        let mut req = http::Request::post(&url).header("content-type", "application/json");
        if let Some((name, value)) = extra {
            req = req.header(name, value);
        }
        req.body(chaperone::body::full(&b"{\"note\":\"hello\"}"[..]))
            .unwrap()
    };
    let get_with_body = http::Request::get(&url)
        .header("content-type", "application/json")
        .body(chaperone::body::full(
            &b"{\"script\":\"drop everything\"}"[..],
        ))
        .unwrap();
    for (req, words) in [
        (
            post(Some(("x-http-method-override", "DELETE"))),
            "carries the header x-http-method-override",
        ),
        (get_with_body, "carries a body with its GET"),
    ] {
        let reply = env.client(false).send(req).await;
        assert_eq!(reply.status, 403, "{:?}", reply.body);
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(words), "{message}");
        assert!(listed_requests(&env).is_empty(), "nothing held");
    }
    // Without them: held, and shown.
    let client = env.client(false);
    let req = post(None);
    let held = tokio::spawn(async move { client.send(req).await });
    let name = held_request(&env).await;
    let object = access_request(&env, &name).await;
    assert_eq!(
        object["spec"]["request"]["subresource"], "proxy",
        "{object}"
    );
    let reply = deny_held(&env, &name, "not now", held).await;
    assert_eq!(reply.status, 403);
    env.stop().await;
}

/// A body in which a key comes twice is read by the API server with both values merged,
/// so no reviewer could be shown what it applies: the request is refused before it is
/// held (nothing to approve, nothing created), and it is on record as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_naming_a_key_twice_is_refused_not_held() {
    let env = start("30s").await;
    // cluster-admin first; the second roleRef leaves out the name, which the API
    // server would keep from the first.
    let binding = r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding",
        "metadata":{"name":"sneaky"},
        "subjects":[{"kind":"User","name":"agent","apiGroup":"rbac.authorization.k8s.io"}],
        "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"},
        "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole"}}"#;
    let reply = env
        .client(false)
        .post_json(
            &format!(
                "{}/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
                env.proxy_url()
            ),
            binding,
        )
        .await;
    assert_eq!(reply.status, 415, "{reply:?}");
    let status = reply.json();
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("the body names the key \"roleRef\" twice in one object (line 5"),
        "{message}"
    );
    let listed = reviewer(&env, &["requests"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the header: nothing held {listed:?}"
    );
    let direct = env.kubectl_direct(&["get", "rolebinding", "sneaky"]).await;
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("NotFound"),
        "{direct:?}"
    );
    let dir = env.stop().await;
    let refused: Vec<serde_json::Value> =
        support::json_lines::<serde_json::Value>(&dir.path().join("sandbox/audit.jsonl"))
            .into_iter()
            .filter(|e| e["objectRef"]["resource"] == "rolebindings" && e["verb"] == "create")
            .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["responseStatus"]["code"], 415);
}

/// Puts in place of AccessRequest `name` one whose spec `edit` changed (as whoever else
/// may create AccessRequests could), and has a reviewer approve it.
async fn replace_and_approve(env: &Env, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut object = access_request(env, name).await;
    ok(&env.kubectl_direct(&["delete", "accessrequest", name]).await);
    edit(&mut object["spec"]);
    object["metadata"] = serde_json::json!({"name": name, "namespace": "default"});
    object.as_object_mut().unwrap().remove("status");
    ok(&support::run_with_stdin(
        env.kubectl_cmd(&env.started.kubeconfig, &["create", "-f", "-"]),
        &object.to_string(),
    )
    .await);
    let approved = reviewer(env, &["approve", name]);
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
}

/// A decision is taken for the request it was asked about only. An AccessRequest under a
/// request's name that holds another request's key (two requests whose keys share the
/// digits in the name) does not decide this one, even approved: it is refused, 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_request_holding_another_request_decides_nothing_for_this_one() {
    let env = start("1s").await;
    let out = env.kubectl(&CREATE).await;
    assert!(!out.status.success());
    let name = held_request(&env).await;
    let object = access_request(&env, &name).await;
    assert_eq!(object["spec"]["key"].as_str().unwrap().len(), 64);
    assert!(name.ends_with(&object["spec"]["key"].as_str().unwrap()[..16]));
    replace_and_approve(&env, &name, |spec| {
        spec["key"] = serde_json::json!("0".repeat(64));
    })
    .await;
    let out = env.kubectl(&CREATE).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("holds another request (its spec.key differs)"),
        "{stderr}"
    );
    let found = env
        .kubectl_direct(&["get", "rolebinding", "agent-admin"])
        .await;
    assert!(!found.status.success(), "the binding was created");
    env.stop().await;
}

/// An AccessRequest under a request's name and with its key, but showing something else
/// (made by another party that may create AccessRequests: a harmless-looking request,
/// one approver), decides nothing for it: chaperone puts the request as it is in its
/// place, and the reviewer's approval of what the other one showed lets nothing through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_request_showing_another_request_under_its_key_is_replaced() {
    let env = start("1s").await;
    let out = env.kubectl(&CREATE).await;
    assert!(!out.status.success());
    let name = held_request(&env).await;
    let shown = access_request(&env, &name).await["spec"]["request"].clone();
    replace_and_approve(&env, &name, |spec| {
        spec["request"]["name"] = serde_json::json!("harmless");
        spec["request"]["body"] = serde_json::json!({"kind": "ConfigMap"});
    })
    .await;
    // Held again, under the same name, now showing the request as it is.
    let out = env.kubectl(&CREATE).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && stderr.contains("approval pending"),
        "{stderr}"
    );
    let replaced = access_request(&env, &name).await;
    assert_eq!(replaced["spec"]["request"], shown);
    assert_ne!(replaced["status"]["phase"], "Approved");
    let found = env
        .kubectl_direct(&["get", "rolebinding", "agent-admin"])
        .await;
    assert!(!found.status.success(), "the binding was created");
    env.stop().await;
}

/// A client that goes away before it is answered (here, while its request is held) is
/// still on record: the request was recorded as held, and then as unanswered, for the
/// API server may have acted on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_goes_away_is_recorded_as_unanswered() {
    let env = start("30s").await;
    let mut create = CREATE.to_vec();
    create.push("--request-timeout=1s");
    let gave_up = env.kubectl(&create).await;
    assert!(!gave_up.status.success(), "{gave_up:?}");
    let name = held_request(&env).await;
    // Recorded as the client goes, not when the hold ends.
    let audit = env.dir.path().join("sandbox/audit.jsonl");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let events: Vec<serde_json::Value> = support::json_lines(&audit);
            if let Some(e) = events.iter().find(|e| {
                e["stage"] == "ResponseComplete"
                    && e["annotations"]["chaperone.dev/access-request"] == name
            }) {
                return (events.clone(), e.clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (events, ended) = ended.expect("the unanswered request is recorded within 10 s");
    assert_eq!(ended["responseStatus"]["code"], 499, "{ended}");
    assert_eq!(ended["responseStatus"]["reason"], "ClientClosedRequest");
    assert_eq!(
        ended["annotations"]["chaperone.dev/error"],
        "the client went away before it was answered"
    );
    assert_eq!(ended["annotations"]["chaperone.dev/approval"], "held");
    let held = events
        .iter()
        .find(|e| e["auditID"] == ended["auditID"] && e["stage"] == "RequestReceived")
        .expect("the hold was recorded first");
    assert_eq!(held["annotations"]["chaperone.dev/approval"], "held");
    env.stop().await;
}
