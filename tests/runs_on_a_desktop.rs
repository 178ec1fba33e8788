//! `chaperone local`, as a user runs it on a laptop: in front of a kubeconfig context
//! (the sandbox plays the cluster), it writes a kubeconfig for the MCP server that
//! points at the proxy with a token of its own, and prints what to paste into an MCP
//! client. The context's credential never leaves chaperone; the policy decides.

mod support;

#[path = "clients/mcp.rs"]
mod mcp;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::{ok, sandbox, Env};

const POLICY: &str = "apiVersion: chaperone.dev/v1alpha1
kind: Policy
metadata: {name: desktop}
spec:
  rules:
  - name: read-workloads
    subjects: {groups: [\"chaperone:local\"]}
    apiGroups: [\"\"]
    resources: [pods, secrets]
    verbs: [get, list, watch]
    action: allow
";

/// base64("chaperone:masked")
const MASKED_B64: &str = "Y2hhcGVyb25lOm1hc2tlZA==";

/// A running `chaperone local`, stopped (SIGTERM) when dropped.
struct Local {
    child: Child,
    stdout: String,
    dir: PathBuf,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Local {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("mcp.kubeconfig")
    }
}

/// Starts `chaperone local` on the sandbox's kubeconfig and reads what it prints until
/// `Stop with Ctrl-C.`.
fn start_local(env: &Env, extra: &[&str]) -> Local {
    start_local_with(env, &env.started.kubeconfig, "local", extra)
}

/// The events `chaperone local` recorded under `dir/local/` (once it has stopped).
fn local_audit(dir: &Path) -> Vec<Value> {
    support::json_lines(&dir.join("local/audit.jsonl"))
}

fn start_local_with(env: &Env, kubeconfig: &Path, name: &str, extra: &[&str]) -> Local {
    let policy = env.dir.path().join("desktop-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    start_local_on(env, Some(kubeconfig), name, &policy, extra)
}

/// `kubeconfig: None` leaves the files to `$KUBECONFIG`, which `extra_env` may set.
fn start_local_on(
    env: &Env,
    kubeconfig: Option<&Path>,
    name: &str,
    policy: &Path,
    extra: &[&str],
) -> Local {
    start_local_env(env, kubeconfig, name, policy, extra, &[])
}

fn start_local_env(
    env: &Env,
    kubeconfig: Option<&Path>,
    name: &str,
    policy: &Path,
    extra: &[&str],
    extra_env: &[(&str, &std::ffi::OsStr)],
) -> Local {
    let dir = env.dir.path().join(name);
    let mut command = Command::new(env!("CARGO_BIN_EXE_chaperone"));
    command.args(["local", "--context", "sandbox", "--listen", "127.0.0.1:0"]);
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    let mut child = command
        .arg("--policy")
        .arg(policy)
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .env_clear()
        .env("HOME", "/nonexistent")
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(env.dir.path().join(format!("{name}.stderr"))).unwrap())
        .spawn()
        .expect("chaperone runs");
    let mut stdout = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if line == "Stop with Ctrl-C." {
            break;
        }
    }
    assert!(
        stdout.contains("Stop with Ctrl-C."),
        "chaperone local did not start:\n{stdout}\n{}",
        std::fs::read_to_string(env.dir.path().join(format!("{name}.stderr"))).unwrap_or_default()
    );
    Local { child, stdout, dir }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(support::kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_on_a_laptop_gets_its_own_kubeconfig_and_the_policy_decides() {
    let env = sandbox().start().await;
    let local = start_local(&env, &[]);

    // What it printed: the kubeconfig, the audit trail, and the MCP client config.
    let kubeconfig = local.kubeconfig();
    assert!(
        local
            .stdout
            .contains(&format!("MCP server kubeconfig  {}", kubeconfig.display())),
        "{}",
        local.stdout
    );
    let start = local.stdout.find("{\n").expect("a JSON snippet");
    let end = local.stdout.rfind("\n}").expect("a JSON snippet") + 2;
    let snippet: Value = serde_json::from_str(&local.stdout[start..end]).unwrap();
    let server = &snippet["mcpServers"]["kubernetes"];
    assert_eq!(server["command"], "npx");
    let args: Vec<&str> = server["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[args.len() - 2..],
        ["--kubeconfig", kubeconfig.to_str().unwrap()]
    );

    // The MCP server's kubeconfig: private, pointing at the proxy, with chaperone's
    // token, never the context's credential.
    let written = std::fs::read_to_string(&kubeconfig).unwrap();
    let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mcp.kubeconfig is readable by others");
    assert!(!written.contains(&env.started.upstream_token));
    let key_mode = std::fs::metadata(local.dir.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o077, 0, "tls.key is readable by others");

    // A second run in the same directory is refused before it writes anything: the
    // first's CA, token keys and kubeconfig stay, and its MCP server is still served.
    let files = ["ca.crt", "jwks.json", "mcp.kubeconfig", "tls.key"];
    let before = files.map(|f| std::fs::read(local.dir.join(f)).unwrap());
    let mut second = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["local", "--context", "sandbox", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&env.started.kubeconfig)
        .arg("--policy")
        .arg(env.dir.path().join("desktop-policy.yaml"))
        .arg("--dir")
        .arg(&local.dir)
        .env_clear()
        .env("HOME", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Refused at once; a run that started instead is stopped, and fails the test.
    let waited = std::time::Instant::now();
    while second.try_wait().unwrap().is_none() && waited.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if second.try_wait().unwrap().is_none() {
        let _ = second.kill();
        panic!("a second chaperone local started in the first one's directory");
    }
    let second = second.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && said.contains("another `chaperone local` is running with"),
        "{said}"
    );
    assert!(files
        .iter()
        .zip(&before)
        .all(|(f, b)| std::fs::read(local.dir.join(f)).unwrap() == *b));

    // The policy decides: reads allowed, Secrets masked, anything else refused.
    let pods = ok(&kubectl(&kubeconfig, &["get", "pods", "-n", "default"]));
    assert!(pods.contains("nginx"), "{pods}");
    let secret = ok(&kubectl(
        &kubeconfig,
        &[
            "get",
            "secret",
            "db-credentials",
            "-o",
            "jsonpath={.data.password}",
        ],
    ));
    assert_eq!(secret, MASKED_B64);
    let delete = kubectl(&kubeconfig, &["delete", "pod", "nginx"]);
    assert!(!delete.status.success());
    assert!(
        String::from_utf8_lossy(&delete.stderr)
            .contains("forbidden by chaperone policy \"desktop\": no rule allows delete on pods"),
        "{delete:?}"
    );

    // A real MCP server with the printed arguments (the binary npx would run).
    let home = env.dir.path().join("mcp-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new(mcp::server_path());
    cmd.args(&args[2..])
        .args(["--toolsets", "core", "--disable-multi-cluster"])
        .env_clear()
        .env("HOME", &home)
        .env("OTEL_SDK_DISABLED", "true")
        .stderr(Stdio::null());
    let mut server = mcp::McpServer::spawn(cmd, None);
    server.initialize().await;
    let listed = server
        .call_tool("pods_list_in_namespace", json!({"namespace": "default"}))
        .await;
    assert!(
        !listed.is_error && listed.text.contains("nginx"),
        "{listed:#?}"
    );
    server.shutdown().await;

    // The audit trail names the laptop's user and groups, for replay.
    drop(local);
    let events = local_audit(env.dir.path());
    assert!(events
        .iter()
        .any(|e| e["verb"] == "delete" && e["annotations"]["chaperone.dev/decision"] == "deny"));
    for e in &events {
        assert_eq!(e["user"]["username"], "mcp-agent", "{e}");
        assert_eq!(
            e["user"]["groups"],
            json!(["chaperone:local", "system:authenticated"]),
            "{e}"
        );
    }
    let replay = ok(&Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .arg("replay")
        .arg(env.dir.path().join("local/audit.jsonl"))
        .args(["--decision", "deny"])
        .output()
        .unwrap());
    assert!(
        replay.contains("mcp-agent") && replay.contains("default/pods nginx"),
        "{replay}"
    );
    env.stop().await;
}

/// The shipped desktop policy: the agent reads, and its pod delete waits for the person
/// at the keyboard, who approves it from their own kubeconfig with `chaperone approve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_policy_holds_an_agents_delete_for_the_person_at_the_keyboard() {
    let env = sandbox().start().await;
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/desktop.yaml");
    let local = start_local_on(&env, Some(&env.started.kubeconfig), "local", &policy, &[]);
    let kubeconfig = local.kubeconfig();
    let pods = ok(&kubectl(&kubeconfig, &["get", "pods", "-n", "default"]));
    assert!(pods.contains("nginx"), "{pods}");

    let approver = support::approve_when_held(&env);
    let held = kubeconfig.clone();
    let delete = tokio::task::spawn_blocking(move || {
        kubectl(&held, &["delete", "pod", "nginx", "-n", "default"])
    })
    .await
    .unwrap();
    let name = approver.await.unwrap();
    assert!(ok(&delete).contains("pod \"nginx\" deleted"), "{delete:?}");
    // The reviewer saw which run asked: its approvals cover no other run's agent.
    let uid = env
        .kubectl_direct(&[
            "get",
            "accessrequest",
            &name,
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.requester.uid}",
        ])
        .await;
    let uid = String::from_utf8_lossy(&uid.stdout);
    assert!(uid.starts_with("chaperone-local-"), "{uid:?}");
    let gone = env
        .kubectl_direct(&["get", "pod", "nginx", "-n", "default"])
        .await;
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{gone:?}"
    );

    // On record: held, then approved, under the AccessRequest's name.
    drop(local);
    let deletes: Vec<Value> = local_audit(env.dir.path())
        .into_iter()
        .filter(|e| e["verb"] == "delete")
        .collect();
    let approval = |e: &Value| {
        e["annotations"]["chaperone.dev/approval"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        deletes.iter().any(|e| approval(e) == "held"
            && e["annotations"]["chaperone.dev/access-request"] == name.as_str()),
        "{deletes:#?}"
    );
    assert!(
        deletes
            .iter()
            .any(|e| approval(e).starts_with("approved by") && e["responseStatus"]["code"] == 200),
        "{deletes:#?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_that_cannot_be_used_is_refused_before_anything_starts() {
    let env = sandbox().start().await;
    let policy = env.dir.path().join("p.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["local", "--context", "prod"])
        .arg("--kubeconfig")
        .arg(&env.started.kubeconfig)
        .arg("--policy")
        .arg(&policy)
        .arg("--dir")
        .arg(env.dir.path().join("local"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prod"), "{stderr}");
    assert!(!env.dir.path().join("local/mcp.kubeconfig").exists());
    env.stop().await;
}

/// With no `--kubeconfig`, the files `$KUBECONFIG` lists are read as kubectl reads them:
/// merged (a missing one skipped, `null` lists as kubectl writes them), the context's
/// namespace kept for the MCP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_kubeconfig_lists_are_merged_as_kubectl_merges_them() {
    let env = sandbox().start().await;
    let dir = env.dir.path().join("kubeconfigs");
    std::fs::create_dir_all(&dir).unwrap();
    // First, a file with another context, current, and nothing else.
    let other = dir.join("other");
    std::fs::write(
        &other,
        "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\nclusters: null\n\
         users: null\ncontexts:\n- name: elsewhere\n  context: {cluster: nowhere, user: nobody}\n",
    )
    .unwrap();
    // Then the sandbox's context, working in kube-system.
    let sandbox_kc = dir.join("sandbox");
    let text = std::fs::read_to_string(&env.started.kubeconfig).unwrap();
    assert!(text.contains("namespace: default"), "{text}");
    std::fs::write(
        &sandbox_kc,
        text.replace("namespace: default", "namespace: kube-system"),
    )
    .unwrap();
    let list = std::env::join_paths([dir.join("absent"), other, sandbox_kc]).unwrap();
    let policy = env.dir.path().join("desktop-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let local = start_local_env(
        &env,
        None,
        "local-merged",
        &policy,
        &[],
        &[("KUBECONFIG", list.as_os_str())],
    );
    let config = std::fs::read_to_string(local.dir.join("chaperone.yaml")).unwrap();
    assert!(config.contains("KUBECONFIG's files merged"), "{config}");
    // The MCP server lands in the context's namespace, through the merged credential.
    let out = kubectl(&local.kubeconfig(), &["get", "pods", "-o", "name"]);
    let pods = ok(&out);
    assert!(pods.contains("pod/coredns-"), "{pods}");
    drop(local);

    // Without --context, the first current-context set is read: here one whose
    // cluster no file names, and that is said before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["local", "--policy"])
        .arg(&policy)
        .arg("--dir")
        .arg(env.dir.path().join("local-elsewhere"))
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("KUBECONFIG", &list)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster \"nowhere\" not found"), "{stderr}");
    env.stop().await;
}

/// A copy of the sandbox's kubeconfig whose user gets its token from an exec plugin
/// (as EKS, GKE and AKS contexts do): a script that counts its runs and prints an
/// ExecCredential expiring `expires_in` seconds from now (or fails, when `fail`).
fn exec_kubeconfig(env: &Env, expires_in: u32, fail: bool) -> (PathBuf, PathBuf) {
    let dir = env.dir.path().join(if fail { "exec-fail" } else { "exec" });
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let runs = dir.join("runs");
    let script = dir.join("bin/token-plugin");
    let body = if fail {
        "echo 'the SSO session has expired; run aws sso login' >&2\nexit 1\n".to_owned()
    } else {
        format!(
            "exp=$(date -u -d '+{expires_in} seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\
             \"status\":{{\"token\":\"%s\",\"expirationTimestamp\":\"%s\"}}}}' \"$TOKEN\" \"$exp\"\n"
        )
    };
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# chaperone runs plugins without a terminal, telling them so.\n\
             echo \"$KUBERNETES_EXEC_INFO\" >> \"$RUNS\"\n{body}"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&env.started.kubeconfig).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    config["users"][0]["user"] = serde_yaml::to_value(json!({
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "./bin/token-plugin",
            "env": [
                {"name": "TOKEN", "value": env.started.upstream_token},
                {"name": "RUNS", "value": runs.display().to_string()},
            ],
            "interactiveMode": "Never",
        }
    }))
    .unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    (path, runs)
}

fn runs(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_with_an_exec_plugin_works_and_its_token_is_renewed_before_expiry() {
    let env = sandbox().start().await;
    // Fresh for 18 s (17 and some: `date` cuts to the second); renewed within 10 s of
    // expiry, so fresh for 7 s from the run as `chaperone local` starts.
    let (kubeconfig, runs_file) = exec_kubeconfig(&env, 18, false);
    let local = start_local_with(&env, &kubeconfig, "local-exec", &[]);
    for _ in 0..3 {
        let pods = ok(&kubectl(
            &local.kubeconfig(),
            &["get", "pods", "-n", "default"],
        ));
        assert!(pods.contains("nginx"), "{pods}");
    }
    // One run served every request so far (kubectl's discovery included)...
    let first = runs(&runs_file);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["kind"], "ExecCredential");
    assert_eq!(first[0]["spec"]["interactive"], false);
    // ...until the token nears its expiry.
    tokio::time::sleep(Duration::from_secs(9)).await;
    ok(&kubectl(
        &local.kubeconfig(),
        &["get", "pods", "-n", "default"],
    ));
    assert_eq!(runs(&runs_file).len(), 2);
    // The plugin's token is the proxy's alone: not in the MCP server's kubeconfig.
    let written = std::fs::read_to_string(local.kubeconfig()).unwrap();
    assert!(!written.contains(&env.started.upstream_token));
    drop(local);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_exec_plugin_is_a_503_its_error_output_logged_and_nothing_is_forwarded() {
    let env = sandbox().start().await;
    let (kubeconfig, _) = exec_kubeconfig(&env, 0, true);
    let local = start_local_with(&env, &kubeconfig, "local-exec-fail", &[]);
    // Said at start, where the user is: the plugin ran then.
    assert!(
        local.stdout.contains(
            "warning: the proxy has no credential for the API server: the credential plugin"
        ) && local.stdout.contains("Requests get a 503 until it works"),
        "{}",
        local.stdout
    );
    let out = kubectl(
        &local.kubeconfig(),
        &["get", "--raw", "/api/v1/namespaces/default/pods"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the proxy has no credential for the API server: the credential plugin")
            && stderr.contains("its error output is in chaperone's log"),
        "{stderr}"
    );
    // The plugin's own words are for the user running chaperone, not for the caller.
    assert!(!stderr.contains("aws sso login"), "{stderr}");
    let log = std::fs::read_to_string(env.dir.path().join("local-exec-fail.stderr")).unwrap();
    assert!(
        log.contains("the credential plugin failed")
            && log.contains("the SSO session has expired; run aws sso login"),
        "{log}"
    );
    // Without a credential nothing went to the API server at all.
    assert_eq!(
        env.started.sandbox.seen_authorizations(),
        Vec::<Option<String>>::new()
    );
    // `/readyz` says why, for the user at this machine.
    let admin = local
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("health"))
        .and_then(|l| l.trim().strip_prefix("http://"))
        .and_then(|l| l.strip_suffix("/readyz"))
        .expect("the admin address is printed");
    let (_, readyz) = support::http_get(admin.parse().unwrap(), "/readyz").await;
    assert!(
        readyz.contains("warning: upstream: the proxy has no credential for the API server"),
        "{readyz}"
    );
    drop(local);
    env.stop().await;
}
