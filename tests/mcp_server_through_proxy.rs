//! kubernetes-mcp-server, unmodified and driven over MCP (JSON-RPC on its stdio),
//! works through chaperone with the sandbox policy: what the policy allows, denies or
//! holds for a reviewer comes back to the agent as tool results it can read, Secrets
//! come back masked, and the audit trail has an event for every call, attributed to
//! the MCP server's service account.

mod support;

#[path = "clients/mcp.rs"]
mod mcp;

use mcp::McpServer;
use serde_json::{json, Value};
use support::sandbox;

const SANDBOX_POLICY: &str = include_str!("../policies/sandbox.yaml");

/// base64("chaperone:masked")
const MASKED_B64: &str = "Y2hhcGVyb25lOm1hc2tlZA==";
/// The seed's `db-credentials` password, in base64 and in clear.
const PASSWORD: [&str; 2] = ["czNjcjN0LXBhc3N3MHJk", "s3cr3t-passw0rd"];

const ROLEBINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: agent-admin
  namespace: default
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: agent
";

fn events(audit: &str) -> Vec<Value> {
    audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `decision rule` of each event for this verb on this resource.
fn decisions(events: &[Value], verb: &str, resource: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
        .map(|e| {
            let notes = &e["annotations"];
            format!(
                "{} {}",
                notes["chaperone.dev/decision"].as_str().unwrap_or("?"),
                notes["chaperone.dev/rule"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mcp_server_lists_reads_masked_and_is_refused_through_the_proxy() {
    let program = mcp::server_path();
    // The sandbox policy, with RBAC changes held for one second instead of a minute.
    let policy = SANDBOX_POLICY.replacen(
        "    action: approve\n",
        "    action: approve\n    approval: {hold: 1s}\n",
        1,
    );
    assert_ne!(
        policy, SANDBOX_POLICY,
        "the sandbox policy has an approve rule"
    );
    let env = sandbox().policy(&policy).with_proxy().start().await;
    let audit_file = env.started.audit_file.clone().expect("an audit file");

    let home = env.dir.path().join("mcp-home");
    std::fs::create_dir_all(&home).unwrap();
    let log = env.dir.path().join("mcp-server.log");
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg("--kubeconfig")
        .arg(env.proxy_kubeconfig())
        .args([
            "--cluster-provider",
            "kubeconfig",
            "--disable-multi-cluster",
            "--toolsets",
            "core",
            "--log-level",
            "2",
            "--log-file",
        ])
        .arg(&log)
        // No ambient config or proxies; no OTLP endpoint, so its telemetry stays off.
        .env_clear()
        .env("HOME", &home)
        .env("OTEL_SDK_DISABLED", "true")
        .stderr(std::fs::File::create(env.dir.path().join("mcp-server.stderr")).unwrap());
    let mut server = McpServer::spawn(cmd, Some(log));

    let init = server.initialize().await;
    assert_eq!(
        init["serverInfo"]["name"], "kubernetes-mcp-server",
        "{init}"
    );
    let tools = server.tool_names().await;
    for tool in [
        "pods_list_in_namespace",
        "resources_get",
        "pods_delete",
        "resources_create_or_update",
    ] {
        assert!(tools.iter().any(|t| t == tool), "{tool} not in {tools:?}");
    }

    // 1. Allowed: the pods of default.
    let pods = server
        .call_tool("pods_list_in_namespace", json!({"namespace": "default"}))
        .await;
    assert!(!pods.is_error && pods.text.contains("nginx"), "{pods:#?}");

    // 2. Allowed, masked: the Secret's value is the marker, never the password.
    let secret = server
        .call_tool(
            "resources_get",
            json!({"apiVersion": "v1", "kind": "Secret", "namespace": "default", "name": "db-credentials"}),
        )
        .await;
    assert!(
        !secret.is_error && secret.text.contains(MASKED_B64),
        "{secret:#?}"
    );
    let raw = secret.raw.to_string();
    for clear in PASSWORD {
        assert!(!raw.contains(clear), "{clear} leaked: {raw}");
    }

    // 3. Denied: the tool error carries chaperone's Status message.
    let delete = server
        .call_tool(
            "pods_delete",
            json!({"namespace": "default", "name": "nginx"}),
        )
        .await;
    assert!(delete.is_error, "{delete:#?}");
    assert!(
        delete.text.contains(
            "forbidden by chaperone policy \"sandbox-mcp-server\": rule \"no-pod-deletes\" denies delete on pods \"nginx\""
        ),
        "{delete:#?}"
    );

    // 4. Held: RBAC changes wait for a reviewer. Nobody approves here, so once the
    // (shortened) hold is over the tool gets chaperone's 403 naming the rule and the
    // AccessRequest a reviewer would approve.
    let bind = server
        .call_tool(
            "resources_create_or_update",
            json!({"resource": ROLEBINDING}),
        )
        .await;
    assert!(bind.is_error, "{bind:#?}");
    assert!(
        bind.text.contains(
            "approval pending: rule \"rbac-needs-approval\" needs a reviewer and AccessRequest"
        ),
        "{bind:#?}"
    );

    let server_log = server.log();
    server.shutdown().await;
    // Stopping drains the audit queue; the returned dir keeps the files.
    let _dir = env.stop().await;
    let audit = std::fs::read_to_string(&audit_file).unwrap();
    let events = events(&audit);

    let calls = [
        ("list", "pods", "allow read-workloads"),
        ("get", "secrets", "allow read-workloads"),
        ("delete", "pods", "deny no-pod-deletes"),
        // The tool applies server-side: a PATCH (apply-patch+yaml), so verb patch.
        ("patch", "rolebindings", "approve rbac-needs-approval"),
    ];
    for (verb, resource, want) in calls {
        let got = decisions(&events, verb, resource);
        assert!(
            got.iter().any(|d| d == want),
            "no `{want}` event for {verb} {resource} (got {got:?})\naudit:\n{audit}\nmcp-server log:\n{server_log}"
        );
    }
    for event in &events {
        assert_eq!(
            event["user"]["username"], "system:serviceaccount:default:mcp-server",
            "{event}"
        );
    }
}
