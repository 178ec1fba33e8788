//! Every request through chaperone — served, refused, failed upstream, streamed — is
//! recorded as one `audit.k8s.io/v1` event, and the caller, chaperone and the API
//! server agree on its audit ID.

mod support;

use std::time::Duration;

use chaperone::audit::event::{Event, Stage};
use chaperone::body;
use http::Request;
use http_body_util::BodyExt;
use support::{sandbox, Env};

/// (path, headers, code, verb, decision annotation)
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
    &'static str,
    Option<&'static str>,
);

/// The recorded events, waiting (bounded) until `n` are there.
async fn events(env: &Env, n: usize) -> Vec<Event> {
    let path = env.started.audit_file.clone().expect("proxy audit file");
    let read = || -> Vec<Event> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is an audit event"))
            .collect()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let got = read();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} audit events: {:#?}", read()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_refused_and_failed_requests_are_each_recorded() {
    let env = sandbox().with_proxy().start().await;
    let client = env.client(false);
    let base = env.proxy_url();
    let cases: &[Case] = &[
        (
            "/api/v1/namespaces/default/pods?limit=5",
            &[],
            200,
            "list",
            Some("allow"),
        ),
        (
            "/api/v1/namespaces/default/pods/nginx",
            &[],
            200,
            "get",
            Some("allow"),
        ),
        (
            "/api/v1/namespaces/default/pods/missing",
            &[],
            404,
            "get",
            Some("allow"),
        ),
        (
            "/api/v1/namespaces/default/pods",
            &[("Impersonate-User", "admin")],
            403,
            "list",
            Some("deny"),
        ),
        (
            "/api/v1/namespaces/default/pods",
            &[("Accept", "application/yaml")],
            406,
            "list",
            Some("deny"),
        ),
        (
            "/api/v1/namespaces/default/pods/a%2Fb",
            &[],
            400,
            "get",
            Some("deny"),
        ),
    ];
    let mut ids = Vec::new();
    for (path, headers, code, _, _) in cases {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        h.push(("User-Agent", "records-every-request/1.0"));
        let reply = client.get(&format!("{base}{path}"), &h).await;
        assert_eq!(reply.status.as_u16(), *code, "{path}");
        let id = reply
            .headers
            .get("audit-id")
            .expect("Audit-Id on every response");
        ids.push(id.to_str().unwrap().to_owned());
    }
    let recorded = events(&env, cases.len()).await;
    for ((path, _, code, verb, decision), id) in cases.iter().zip(&ids) {
        let event = recorded
            .iter()
            .find(|e| &e.audit_id == id)
            .unwrap_or_else(|| panic!("{path}: no event with audit ID {id}"));
        assert_eq!(event.stage, Stage::ResponseComplete, "{path}");
        assert_eq!(event.verb, *verb, "{path}");
        assert_eq!(
            event.response_status.as_ref().unwrap().code,
            *code,
            "{path}"
        );
        assert_eq!(event.user_agent, "records-every-request/1.0", "{path}");
        assert_eq!(event.source_ips, ["127.0.0.1"], "{path}");
        assert_eq!(
            event
                .annotations
                .get("chaperone.dev/decision")
                .map(|v| &**v),
            *decision,
            "{path}"
        );
    }
    let get = recorded.iter().find(|e| e.audit_id == ids[1]).unwrap();
    let object = get.object_ref.as_ref().unwrap();
    assert_eq!(
        (
            object.resource.as_str(),
            object.namespace.as_str(),
            object.name.as_str()
        ),
        ("pods", "default", "nginx")
    );

    // A failure the API server answered is on record with its reason and message, as
    // the API server records its own: not the code alone.
    let missing = recorded.iter().find(|e| e.audit_id == ids[2]).unwrap();
    let status = missing.response_status.as_ref().unwrap();
    assert_eq!(
        (
            status.status.as_str(),
            status.reason.as_str(),
            status.message.as_str()
        ),
        ("Failure", "NotFound", "pods \"missing\" not found")
    );

    // A made-up method as long as a request head is refused, and recorded and answered
    // cut short: a backlog of such events would otherwise hold megabytes each.
    let long = http::Method::from_bytes("M".repeat(20_000).as_bytes()).unwrap();
    let req = http::Request::builder()
        .method(long)
        .uri(format!("{base}/version"))
        .body(chaperone::body::empty())
        .unwrap();
    let reply = client.send(req).await;
    assert_eq!(reply.status.as_u16(), 405);
    assert!(reply.body.len() < 2_000, "{} bytes", reply.body.len());
    let id = reply.headers["audit-id"].to_str().unwrap().to_owned();
    let recorded = events(&env, cases.len() + 1).await;
    let event = recorded.iter().find(|e| e.audit_id == id).unwrap();
    let line = serde_json::to_string(event).unwrap();
    assert!(line.len() < 4_000, "{} bytes: {}", line.len(), &line[..200]);

    // The API server was told the same audit ID for the requests it saw.
    let seen = env.started.sandbox.last_request_headers().unwrap();
    let upstream_id = seen.get("audit-id").expect("Audit-ID forwarded upstream");
    assert_eq!(upstream_id.to_str().unwrap(), ids[2]);

    // A caller who did not authenticate is counted without the resource it named: made
    // up ones would fill the metrics' bound before the first real denial.
    let anonymous = env
        .anonymous_client(false)
        .get(
            &format!("{base}/api/v1/namespaces/default/made-up-things"),
            &[],
        )
        .await;
    assert_eq!(anonymous.status.as_u16(), 401);

    // The admin port counts the same requests.
    let admin = env.started.proxy.as_ref().unwrap().admin.unwrap();
    let (code, metrics) = support::http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "chaperone_requests_total{decision=\"allow\",verb=\"list\",resource=\"pods\",code=\"200\"} 1",
        "chaperone_requests_total{decision=\"allow\",verb=\"get\",resource=\"pods\",code=\"404\"} 1",
        "chaperone_requests_total{decision=\"deny\",verb=\"list\",resource=\"pods\",code=\"403\"} 1",
        "chaperone_requests_total{decision=\"deny\",verb=\"list\",resource=\"pods\",code=\"406\"} 1",
        "chaperone_requests_total{decision=\"deny\",verb=\"list\",resource=\"unauthenticated\",code=\"401\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line} in\n{metrics}");
    }

    // Nothing secret in the recording: neither token appears.
    let text = std::fs::read_to_string(env.started.audit_file.as_ref().unwrap()).unwrap();
    assert!(!text.contains(&env.started.upstream_token));
    assert!(!text.contains(&env.started.caller_token));
    env.stop().await;
}

/// Credentials in an exec's command or a proxied request's path and query are masked in
/// the recorded URI, also in a value the API server would drop for a `%` that starts no
/// escape, and in the path and query of a request refused before it is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_a_recorded_uri_are_masked_however_they_are_written() {
    const OPAQUE_TOKEN: &str = "ya29.a0AfB_byC-opaque-7Qx";
    let env = sandbox().with_proxy().start().await;
    let client = env.client(false);
    let base = env.proxy_url();
    let exec = "/api/v1/namespaces/default/pods/nginx/exec";
    let requests = [
        format!("{exec}?command=mysql&command=--password&command=hunter2%zz&stdout=true"),
        format!("{exec}?command=echo&command=AKIAIOSFODNN7EXAMPLE%&stdout=true"),
        format!("{exec}?command=echo&command=AKIA%49OSFODNN7EXAMPLE&stdout=true"),
        // A service proxied to: the path past `proxy/` and the query are the caller's.
        "/api/v1/namespaces/default/services/web:80/proxy/callback/AKIAIOSFODNN7EXAMPLE/done?x=1"
            .to_owned(),
        // One refused for its path (an escaped `/`, a bad `%` escape): the path is
        // recorded, and quoted in the refusal, with the key masked.
        "/api/v1/namespaces/default/services/web:80/proxy/cb/AKIAIOSFODNN7EXAMPLE%2Fx%zz"
            .to_owned(),
        // A path refused before it is resolved (a `/` escaped in a name): its query is
        // recorded masked all the same.
        "/api/v1/namespaces/default/pods/a%2Fb/exec?command=sh&command=--password&command=hunter2"
            .to_owned(),
        // A credential a client put in a query says what it is by its key, on any
        // request: a proxied login form, a list with a token.
        "/api/v1/namespaces/default/services/web:80/proxy/login?user=admin&password=hunter2"
            .to_owned(),
        format!("/api/v1/namespaces/default/configmaps?limit=5&access_token={OPAQUE_TOKEN}"),
    ];
    for request in &requests {
        // Refused or not (no upgrade is asked for), each is recorded.
        client.get(&format!("{base}{request}"), &[]).await;
    }
    let recorded = events(&env, requests.len()).await;
    // One event each, all of them in the file read below.
    assert_eq!(recorded.len(), requests.len(), "{recorded:#?}");
    assert!(recorded.iter().all(|e| e.stage == Stage::ResponseComplete));
    let text = std::fs::read_to_string(env.started.audit_file.as_ref().unwrap()).unwrap();
    for secret in [
        "hunter2",
        "AKIAIOSFODNN7EXAMPLE",
        "AKIA%49OSFODNN7EXAMPLE",
        OPAQUE_TOKEN,
    ] {
        assert!(
            !text.contains(secret),
            "{secret} is in the recording:\n{text}"
        );
    }
    for event in &recorded {
        let uri = &event.request_uri;
        assert!(
            uri.contains("chaperone%3Amasked") || uri.contains("/chaperone:masked/"),
            "{uri}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_recorded_when_it_starts_and_when_it_ends() {
    let env = sandbox().with_proxy().start().await;
    let client = env.client(true);
    let watch = Request::get(format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
        env.proxy_url()
    ))
    .body(body::empty())
    .unwrap();
    let rsp = client.open(watch).await;
    let id = rsp
        .headers()
        .get("audit-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let started = events(&env, 1).await;
    assert_eq!(started[0].audit_id, id);
    assert_eq!(started[0].stage, Stage::ResponseStarted);
    // The sandbox ends the watch after timeoutSeconds; reading to the end completes it.
    tokio::time::timeout(Duration::from_secs(10), rsp.into_body().collect())
        .await
        .expect("the watch ends")
        .unwrap();
    let all = events(&env, 2).await;
    let complete = all
        .iter()
        .find(|e| e.stage == Stage::ResponseComplete)
        .unwrap();
    assert_eq!(complete.audit_id, id);
    assert_eq!(complete.verb, "watch");
    env.stop().await;
}

const RECORD_BODIES: &str = "apiVersion: chaperone.dev/v1alpha1
kind: Policy
metadata: {name: bodies}
spec:
  auditLevel: Metadata
  rules:
  # The deciding rule sets the level: among allow rules, the first that matches.
  - name: record-configmaps-and-secrets
    subjects: {serviceAccounts: [default/mcp-server]}
    apiGroups: [\"\"]
    resources: [configmaps, secrets]
    verbs: [\"*\"]
    action: allow
    auditLevel: RequestResponse
  - name: anything
    subjects: {serviceAccounts: [default/mcp-server]}
    apiGroups: [\"*\"]
    resources: [\"*\"]
    verbs: [\"*\"]
    action: allow
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_can_record_bodies_and_they_are_the_masked_ones() {
    let env = sandbox().policy(RECORD_BODIES).with_proxy().start().await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: recorded, namespace: default}\ndata: {k: v}\n";
    support::ok(&env.kubectl_stdin(&["create", "-f", "-"], cm).await);
    // A Secret sent is recorded as one read back would be: masked.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: sent, namespace: default}\nstringData: {password: recorded-in-clear-is-a-leak}\n";
    support::ok(&env.kubectl_stdin(&["create", "-f", "-"], secret).await);
    support::ok(
        &env.kubectl(&["get", "secret", "db-credentials", "-o", "name"])
            .await,
    );
    support::ok(&env.kubectl(&["get", "pods", "-o", "name"]).await);
    let dir = env.stop().await;
    let audit = dir.path().join("sandbox/audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    let events: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |verb: &str, resource: &str| {
        events
            .iter()
            .find(|e| {
                e.verb == verb
                    && e.object_ref
                        .as_ref()
                        .is_some_and(|o| o.resource == resource)
            })
            .unwrap_or_else(|| panic!("no {verb} {resource}"))
    };
    let create = find("create", "configmaps");
    assert_eq!(
        create.level,
        chaperone::audit::event::Level::RequestResponse
    );
    assert_eq!(create.request_object.as_ref().unwrap()["data"]["k"], "v");
    assert_eq!(
        create.response_object.as_ref().unwrap()["metadata"]["name"],
        "recorded"
    );
    let sent = find("create", "secrets");
    assert_eq!(
        sent.request_object.as_ref().unwrap()["stringData"]["password"],
        "chaperone:masked"
    );
    assert!(
        !text.contains("recorded-in-clear-is-a-leak"),
        "a Secret's value is in the recording"
    );
    let secret = find("get", "secrets");
    let recorded = secret.response_object.as_ref().unwrap().to_string();
    assert!(
        recorded.contains("Y2hhcGVyb25lOm1hc2tlZA==") && !recorded.contains("czNjcjN0LXBhc3N3MHJk"),
        "{recorded}"
    );
    // Other rules keep the default level: no bodies.
    let pods = find("list", "pods");
    assert!(pods.request_object.is_none() && pods.response_object.is_none());
    // `replay --bodies` shows them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["replay", "--bodies", audit.to_str().unwrap()])
        .output()
        .unwrap();
    let timeline = String::from_utf8_lossy(&out.stdout);
    assert!(
        timeline.contains("    request: {") && timeline.contains("\"recorded\""),
        "{timeline}"
    );
}

/// A body may name a key twice (the API server merges the copies): every copy of a
/// Secret's values is masked in the recorded request, the last one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_sent_with_its_data_twice_is_recorded_masked() {
    let env = sandbox().policy(RECORD_BODIES).with_proxy().start().await;
    let body = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"twice"},
        "stringData":{"a":"first-copy-in-clear-is-a-leak"},
        "stringData":{"b":"second-copy-in-clear-is-a-leak"}}"#;
    let reply = env
        .client(false)
        .post_json(
            &format!("{}/api/v1/namespaces/default/secrets", env.proxy_url()),
            body,
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let dir = env.stop().await;
    let text = std::fs::read_to_string(dir.path().join("sandbox/audit.jsonl")).unwrap();
    assert!(text.contains("\"twice\""), "{text}");
    assert!(!text.contains("copy-in-clear-is-a-leak"), "{text}");
}
