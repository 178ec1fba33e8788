//! kubectl works through chaperone exactly as against the API server: get, get -o yaml,
//! get -w, apply, delete, logs and exec, with a kubeconfig and with in-cluster env.

mod support;

use std::time::Duration;

use support::{ok, run, sandbox};
use tokio::io::{AsyncBufReadExt, BufReader};

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
  namespace: default
data:
  greeting: hello
";

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: shell
  namespace: default
spec:
  containers:
  - name: main
    image: busybox
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_lists_and_shows_objects() {
    let env = sandbox().with_proxy().start().await;
    let namespaces = ok(&env.kubectl(&["get", "namespaces"]).await);
    assert!(
        namespaces.lines().next().unwrap().starts_with("NAME"),
        "a table: {namespaces}"
    );
    assert!(
        namespaces.contains("default") && namespaces.contains("kube-system"),
        "{namespaces}"
    );

    let pods = ok(&env.kubectl(&["get", "pods", "-A"]).await);
    assert!(pods.starts_with("NAMESPACE"), "{pods}");
    assert!(pods.lines().count() > 1, "the seed has pods: {pods}");

    let yaml = ok(&env
        .kubectl(&["get", "namespace", "default", "-o", "yaml"])
        .await);
    assert!(
        yaml.contains("kind: Namespace") && yaml.contains("name: default"),
        "{yaml}"
    );

    // The same listing straight from the sandbox: chaperone changes nothing.
    let direct = ok(&env
        .kubectl_direct(&["get", "namespaces", "-o", "name"])
        .await);
    let proxied = ok(&env.kubectl(&["get", "namespaces", "-o", "name"]).await);
    assert_eq!(direct, proxied);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_updates_and_delete_removes() {
    let env = sandbox().with_proxy().start().await;
    let created = ok(&env.kubectl_stdin(&["apply", "-f", "-"], CONFIGMAP).await);
    assert!(created.contains("configmap/demo created"), "{created}");

    let changed = CONFIGMAP.replace("greeting: hello", "greeting: bonjour");
    let configured = ok(&env.kubectl_stdin(&["apply", "-f", "-"], &changed).await);
    assert!(
        configured.contains("configmap/demo configured"),
        "{configured}"
    );
    let value = ok(&env
        .kubectl(&[
            "get",
            "configmap",
            "demo",
            "-o",
            "jsonpath={.data.greeting}",
        ])
        .await);
    assert_eq!(value, "bonjour");

    let deleted = ok(&env.kubectl(&["delete", "configmap", "demo"]).await);
    assert!(deleted.contains("configmap \"demo\" deleted"), "{deleted}");
    let gone = env.kubectl(&["get", "configmap", "demo"]).await;
    assert!(!gone.status.success());
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains("Error from server (NotFound)"), "{stderr}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_changes_as_they_happen() {
    let env = sandbox().with_proxy().start().await;
    let mut cmd = env.kubectl_cmd(env.proxy_kubeconfig(), &["get", "configmaps", "-w"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut watch = cmd.spawn().expect("kubectl runs");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();

    // The header line means the list is done and the watch is open.
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("kubectl printed the list")
        .unwrap()
        .unwrap();
    assert!(first.starts_with("NAME"), "{first}");

    // A change made behind the proxy's back shows up through the open watch.
    let created = ok(&env
        .kubectl_direct(&["create", "configmap", "watched", "--from-literal=a=b"])
        .await);
    assert!(created.contains("created"), "{created}");
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("watched") {
                return line;
            }
        }
        panic!("watch ended without the new configmap");
    })
    .await
    .expect("the new configmap arrived through the watch");
    assert!(seen.starts_with("watched"), "{seen}");
    watch.kill().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_exec_are_tunnelled() {
    let env = sandbox().with_proxy().start().await;
    ok(&env.kubectl_stdin(&["apply", "-f", "-"], POD).await);

    let logs = ok(&env.kubectl(&["logs", "shell"]).await);
    assert!(!logs.trim().is_empty(), "the sandbox writes log lines");

    // `-v=7` logs the upgrade's exchange to stderr: shown if the output is not right
    // (an empty stdout with exit 0 was seen twice in CI, not reproduced since).
    let exec = env
        .kubectl(&["-v=7", "exec", "shell", "--", "echo", "hello", "world"])
        .await;
    let echoed = ok(&exec);
    assert_eq!(
        echoed.trim(),
        "hello world",
        "stderr:\n{}",
        String::from_utf8_lossy(&exec.stderr)
    );

    let interactive = ok(&env
        .kubectl_stdin(&["exec", "-i", "shell", "--", "cat"], "typed in\n")
        .await);
    assert_eq!(interactive.trim(), "typed in");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_impersonation_is_refused_with_a_readable_error() {
    let env = sandbox().with_proxy().start().await;
    // `--raw`: a plain `kubectl get --as` first fails discovery, where kubectl prints
    // "unknown" for any error body (it does so against the real API server too).
    let out = env
        .kubectl(&[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods",
            "--as",
            "system:admin",
        ])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (Forbidden)")
            && stderr.contains("impersonation is not allowed"),
        "{stderr}"
    );
    env.stop().await;
}

/// kubectl inside a pod reads `/var/run/secrets/kubernetes.io/serviceaccount/` and
/// `KUBERNETES_SERVICE_HOST`/`PORT`. The test gives it those in a private mount
/// namespace (`unshare`), so the machine's own `/var/run` is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_in_cluster_config_works_unchanged() {
    let env = sandbox().with_proxy().start().await;
    let sa = env.dir.path().join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), &env.started.caller_token).unwrap();
    std::fs::copy(&env.started.ca_file, sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("namespace"), "default").unwrap();
    let addr = env.started.proxy.as_ref().unwrap().addrs[0];

    let script = r#"set -e
mount -t tmpfs chaperone-test /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
cp "$SA"/* /run/secrets/kubernetes.io/serviceaccount/
exec "$KUBECTL" get configmaps,pods -o name"#;
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("SA", &sa)
        .env("KUBECTL", support::kubectl_path())
        .env("KUBERNETES_SERVICE_HOST", addr.ip().to_string())
        .env("KUBERNETES_SERVICE_PORT", addr.port().to_string());
    let names = ok(&run(cmd).await);
    assert!(names.contains("pod/"), "{names}");

    env.assert_api_server_saw_only_the_proxy_token();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_runs_as_sent_and_is_recorded_with_its_secrets_masked() {
    let env = sandbox().with_proxy().start().await;
    ok(&env.kubectl_stdin(&["apply", "-f", "-"], POD).await);
    // A token-shaped argument, as an agent might pass one to curl.
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    let echoed = ok(&env
        .kubectl(&[
            "exec",
            "shell",
            "--",
            "echo",
            "Authorization:",
            "Bearer",
            jwt,
        ])
        .await);
    assert_eq!(echoed.trim(), format!("Authorization: Bearer {jwt}"));
    // A password that only the flag before it names.
    let echoed = ok(&env
        .kubectl(&["exec", "shell", "--", "echo", "--password", "Pw-4-echo"])
        .await);
    assert_eq!(echoed.trim(), "--password Pw-4-echo");
    let dir = env.stop().await;
    let audit = std::fs::read_to_string(dir.path().join("sandbox/audit.jsonl")).unwrap();
    assert!(!audit.contains(jwt), "the token is in the audit record");
    assert!(
        !audit.contains("Pw-4-echo"),
        "the password is in the audit record"
    );
    assert!(
        audit.contains("command=--password&command=chaperone%3Amasked"),
        "the flag is kept, its value masked"
    );
    let exec = audit
        .lines()
        .find(|l| l.contains("/pods/shell/exec"))
        .expect("the exec is recorded");
    let event: serde_json::Value = serde_json::from_str(exec).unwrap();
    let uri = event["requestURI"].as_str().unwrap();
    assert!(
        uri.contains("command=echo") && uri.contains("command=chaperone%3Amasked"),
        "{uri}"
    );
}
