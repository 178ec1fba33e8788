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
    let dir = env.dir.path().join("local");
    let policy = env.dir.path().join("desktop-policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["local", "--context", "sandbox", "--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&env.started.kubeconfig)
        .arg("--policy")
        .arg(&policy)
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .env_clear()
        .env("HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(env.dir.path().join("local.stderr")).unwrap())
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
        std::fs::read_to_string(env.dir.path().join("local.stderr")).unwrap_or_default()
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
    let audit = std::fs::read_to_string(env.dir.path().join("local/audit.jsonl")).unwrap();
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
