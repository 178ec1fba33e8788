//! Secrets never leave chaperone in clear: Secret values are replaced by the base64
//! of a marker in gets, lists, watches and tables (so typed clients still decode them),
//! the last-applied annotation goes too, log lines lose what the detectors find, and
//! a policy can mask ConfigMap keys and env values.

mod support;

use std::time::Duration;

use support::{ok, run, sandbox};
use tokio::io::{AsyncBufReadExt, BufReader};

/// base64("chaperone:masked")
const MASKED_B64: &str = "Y2hhcGVyb25lOm1hc2tlZA==";
/// What the seed's Secrets hold, in clear and in base64.
const SECRETS: [&str; 4] = [
    "s3cr3t-passw0rd",
    "czNjcjN0LXBhc3N3MHJk",
    "sk-sandbox-0123456789abcdef",
    "c2stc2FuZGJveC0wMTIzNDU2Nzg5YWJjZGVm",
];

fn assert_no_secrets(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what}: {s} leaked in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_masked_secrets_in_every_form() {
    let env = sandbox().with_proxy().start().await;
    let yaml = ok(&env
        .kubectl(&["get", "secret", "db-credentials", "-o", "yaml"])
        .await);
    assert!(yaml.contains(&format!("password: {MASKED_B64}")), "{yaml}");
    assert_no_secrets("get -o yaml", &yaml);

    let list = ok(&env.kubectl(&["get", "secrets", "-o", "json"]).await);
    assert!(list.contains(MASKED_B64), "{list}");
    assert_no_secrets("list -o json", &list);

    let table = ok(&env.kubectl(&["get", "secrets"]).await);
    assert!(table.contains("db-credentials"), "{table}");
    let wide = env
        .client(false)
        .get(
            &format!(
                "{}/api/v1/namespaces/default/secrets?includeObject=Object",
                env.proxy_url()
            ),
            &[("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")],
        )
        .await;
    assert_eq!(wide.status, 200);
    assert_no_secrets("Table with objects", &String::from_utf8_lossy(&wide.body));
    let meta = env
        .client(false)
        .get(
            &format!("{}/api/v1/namespaces/default/secrets", env.proxy_url()),
            &[(
                "Accept",
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
            )],
        )
        .await;
    assert_no_secrets(
        "PartialObjectMetadataList",
        &String::from_utf8_lossy(&meta.body),
    );

    // Directly from the sandbox, the same Secret is in clear: the proxy did the masking.
    let direct = ok(&env
        .kubectl_direct(&["get", "secret", "db-credentials", "-o", "yaml"])
        .await);
    assert!(direct.contains("czNjcjN0LXBhc3N3MHJk"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_secrets_is_masked_event_by_event() {
    let env = sandbox().with_proxy().start().await;
    let mut cmd = env.kubectl_cmd(
        env.proxy_kubeconfig(),
        &[
            "get",
            "secrets",
            "-w",
            "-o",
            "json",
            "--output-watch-events",
        ],
    );
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut watch = cmd.spawn().unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // The initial events, then one for a Secret created behind the proxy's back.
    ok(&env
        .kubectl_direct(&[
            "create",
            "secret",
            "generic",
            "fresh",
            "--from-literal=token=s3cr3t-passw0rd",
        ])
        .await);
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut all = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            all.push_str(&line);
            all.push('\n');
            // One compact JSON event per line.
            if line.contains("\"name\":\"fresh\"") {
                return all;
            }
        }
        panic!("watch ended: {all}");
    })
    .await
    .expect("the new Secret arrived through the watch");
    assert!(seen.contains(MASKED_B64), "{seen}");
    assert_no_secrets("watch", &seen);
    watch.kill().await.unwrap();
    env.stop().await;
}

const CHATTY_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: chatty
  namespace: default
  annotations:
    sandbox.chaperone.dev/log: 'connecting as admin password=hunter2 with AKIAIOSFODNN7EXAMPLE'
spec:
  containers:
  - name: app
    image: busybox
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_lose_what_the_detectors_find() {
    let env = sandbox().with_proxy().start().await;
    ok(&env.kubectl_stdin(&["apply", "-f", "-"], CHATTY_POD).await);
    let logs = ok(&env.kubectl(&["logs", "chatty"]).await);
    assert!(logs.contains("connecting as admin"), "{logs}");
    assert!(
        !logs.contains("hunter2") && !logs.contains("AKIAIOSFODNN7EXAMPLE"),
        "{logs}"
    );
    assert!(logs.contains("chaperone:masked"), "{logs}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_clients_decode_masked_secrets() {
    let env = sandbox().with_proxy().start().await;
    // Python: the generated model decodes the object; the value is the marker.
    let script = r#"
import base64, sys
from kubernetes import client, config
config.load_kube_config(sys.argv[1])
s = client.CoreV1Api().read_namespaced_secret("db-credentials", "default")
print(base64.b64decode(s.data["password"]).decode())
"#;
    let mut cmd = tokio::process::Command::new(support::python_path());
    cmd.arg("-c")
        .arg(script)
        .arg(env.proxy_kubeconfig())
        .env("HOME", env.dir.path());
    assert_eq!(ok(&run(cmd).await).trim(), "chaperone:masked");

    // kube-rs: Api<Secret>::get gives ByteString data.
    let kubeconfig = kube::config::Kubeconfig::read_from(env.proxy_kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, "default");
    let secret = secrets.get("db-credentials").await.unwrap();
    let password = &secret.data.unwrap()["password"];
    assert_eq!(password.0, b"chaperone:masked");
    env.stop().await;
}

const MASKING_POLICY: &str = "apiVersion: chaperone.dev/v1alpha1
kind: Policy
metadata: {name: masking}
spec:
  rules:
  - name: anything
    subjects: {serviceAccounts: [default/mcp-server]}
    apiGroups: [\"*\"]
    resources: [\"*\"]
    verbs: [\"*\"]
    action: allow
  masking:
  - resources: [configmaps]
    fields: [\"data.*\"]
    keyRegex: \"(?i)password|token\"
  - resources: [pods]
    fields: [\"spec.containers[*].env[*].value\"]
    nameRegex: \"(?i)pass|token|secret|key\"
  - resources: [services]
    fields: [\"spec.clusterIP\"]
";

const CONFIGURED: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data:
  db_password: hunter2
  log_level: debug
---
apiVersion: v1
kind: Pod
metadata: {name: envy, namespace: default}
spec:
  containers:
  - name: app
    image: busybox
    env:
    - {name: API_TOKEN, value: tok-123456}
    - {name: MODE, value: production}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_masks_configmap_keys_and_env_values() {
    let env = sandbox().policy(MASKING_POLICY).with_proxy().start().await;
    ok(&support::run_with_stdin(
        env.kubectl_cmd(&env.started.kubeconfig, &["apply", "-f", "-"]),
        CONFIGURED,
    )
    .await);
    let cm = ok(&env
        .kubectl(&["get", "configmap", "settings", "-o", "jsonpath={.data}"])
        .await);
    assert!(
        cm.contains("\"db_password\":\"chaperone:masked\"")
            && cm.contains("\"log_level\":\"debug\""),
        "{cm}"
    );
    let pod = ok(&env
        .kubectl(&[
            "get",
            "pod",
            "envy",
            "-o",
            "jsonpath={.spec.containers[0].env}",
        ])
        .await);
    assert!(
        !pod.contains("tok-123456") && pod.contains("production"),
        "{pod}"
    );
    // A Table's cells are printer columns the masker cannot read by path, so where a
    // rule masks a field a column may show (a Service's cluster IP) the caller is
    // answered with objects (kubectl prints them itself). The API server's own columns
    // never show a ConfigMap's values or an env value: those Tables are served as
    // before, and kubernetes-mcp-server, which prints pods from a Table, keeps working.
    let accepted = |env: &support::Env| {
        env.started
            .sandbox
            .last_request_headers()
            .unwrap()
            .get("accept")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    ok(&env.kubectl(&["get", "services"]).await);
    let accept = accepted(&env);
    assert!(
        !accept.to_ascii_lowercase().contains("as=table"),
        "{accept}"
    );
    for kept in ["configmaps", "pods"] {
        let listed = ok(&env.kubectl(&["get", kept]).await);
        assert!(
            listed.contains("settings") || listed.contains("envy"),
            "{listed}"
        );
        let accept = accepted(&env);
        assert!(accept.contains("as=Table"), "{kept}: {accept}");
    }
    env.stop().await;
}

/// A JSON patch cannot move a Secret's value to where nothing masks it, nor test a guess
/// at one: copying `data.password` into an annotation, or testing it, is refused before
/// it reaches the API server; a JSON patch that does neither goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_patch_cannot_copy_a_secret_value_out_of_masking() {
    let env = sandbox()
        .policy(support::ALLOW_ALL)
        .with_proxy()
        .start()
        .await;
    let url = format!(
        "{}/api/v1/namespaces/default/secrets/db-credentials",
        env.proxy_url()
    );
    let patch = |ops: &str| {
        http::Request::patch(&url)
            .header("content-type", "application/json-patch+json")
            .body(chaperone::body::full(ops.to_owned()))
            .unwrap()
    };
    for ops in [
        r#"[{"op":"add","path":"/metadata/annotations","value":{}},{"op":"copy","from":"/data/password","path":"/metadata/annotations/x"}]"#,
        r#"[{"op":"move","from":"/data","path":"/metadata/labels"}]"#,
        r#"[{"op":"copy","from":"/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration","path":"/type"}]"#,
        r#"[{"op":"test","path":"/data/password","value":"czNjcjN0LXBhc3N3MHJk"}]"#,
        r#"[{"op":"copy","from":"","path":"/metadata/annotations/all"}]"#,
        // The API server's JSON patch library drops a pointer's first piece, slash or
        // not: `x/data/password` reads `/data/password`.
        r#"[{"op":"add","path":"/metadata/annotations","value":{}},{"op":"copy","from":"x/data/password","path":"/metadata/annotations/y"}]"#,
    ] {
        let reply = env.client(false).send(patch(ops)).await;
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(reply.status, 403, "{ops}: {message}");
        assert!(
            message.contains(
                "a JSON patch cannot copy, move or test a field whose value chaperone masks"
            ),
            "{ops}: {message}"
        );
        assert_no_secrets(ops, &String::from_utf8_lossy(&reply.body));
    }
    let direct = ok(&env
        .kubectl_direct(&["get", "secret", "db-credentials", "-o", "json"])
        .await);
    let secret: serde_json::Value = serde_json::from_str(&direct).unwrap();
    assert!(secret["metadata"]["annotations"]["x"].is_null(), "{direct}");
    assert!(secret["data"]["password"].is_string(), "{direct}");
    // A JSON patch that copies nothing masked goes through, its answer masked.
    let reply = env
        .client(false)
        .send(patch(
            r#"[{"op":"add","path":"/metadata/labels","value":{"team":"a"}},{"op":"copy","from":"/metadata/labels/team","path":"/metadata/labels/owner"}]"#,
        ))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["metadata"]["labels"]["owner"], "a");
    assert_no_secrets(
        "a harmless JSON patch",
        &String::from_utf8_lossy(&reply.body),
    );
    env.stop().await;
}
