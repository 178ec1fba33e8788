//! kubernetes-mcp-server, unmodified and driven over MCP (JSON-RPC on its stdio),
//! works through chaperone with the sandbox policy: what the policy allows, denies or
//! holds for a reviewer comes back to the agent as tool results it can read, Secrets
//! come back masked, a held change goes through once a reviewer approves it from
//! another process, and every call is on record three ways: the audit JSONL, spans and
//! log records at an OpenTelemetry collector, and `chaperone replay`'s timeline.

mod support;

#[path = "clients/mcp.rs"]
mod mcp;

use mcp::McpServer;
use serde_json::{json, Value};
use support::{otlp, sandbox};

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
async fn kubernetes_mcp_server_session_is_decided_approved_masked_and_recorded() {
    let program = mcp::server_path();
    let (env, collector, collector_task) =
        otlp::start_exporting(sandbox().policy(SANDBOX_POLICY)).await;
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

    // 4. Held: RBAC changes wait for a reviewer. A reviewer, in another process with
    // their own kubeconfig, approves while the tool call waits; the call then completes.
    let reviewer = support::approve_when_held(&env);
    let bind = server
        .call_tool(
            "resources_create_or_update",
            json!({"resource": ROLEBINDING}),
        )
        .await;
    let access_request = reviewer.await.unwrap();
    assert!(!bind.is_error, "{bind:#?}");
    assert!(bind.text.contains("agent-admin"), "{bind:#?}");
    let created = support::ok(
        &env.kubectl_direct(&["get", "rolebinding", "agent-admin", "-o", "name"])
            .await,
    );
    assert_eq!(
        created.trim(),
        "rolebinding.rbac.authorization.k8s.io/agent-admin"
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
    // The approved change: held, then forwarded, both naming the AccessRequest.
    let approval: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["annotations"]["chaperone.dev/access-request"] == access_request.as_str())
        .map(|e| {
            (
                e["stage"].as_str().unwrap(),
                e["annotations"]["chaperone.dev/approval"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        approval,
        [
            ("RequestReceived", "held"),
            ("ResponseComplete", "approved by sandbox-user")
        ],
        "{audit}"
    );

    // The collector got a span and a log record for every call.
    let spans = collector.spans.lock().unwrap().clone();
    let span_of = |name: &str, decision: &str| {
        spans.iter().find(|s| {
            let a = otlp::attrs(&s.attributes);
            s.name == name && a.get("chaperone.decision").map(String::as_str) == Some(decision)
        })
    };
    for (name, decision) in [
        ("list pods", "allow"),
        ("get secrets", "allow"),
        ("delete pods", "deny"),
        ("patch rolebindings", "approve"),
    ] {
        let span = span_of(name, decision)
            .unwrap_or_else(|| panic!("no span {name:?} with decision {decision}"));
        let a = otlp::attrs(&span.attributes);
        assert_eq!(a["user.name"], "system:serviceaccount:default:mcp-server");
        // Every span has its stages; the approved one waited in `approve`.
        let stages: Vec<&str> = spans
            .iter()
            .filter(|s| s.parent_span_id == span.span_id)
            .map(|s| s.name.as_str())
            .collect();
        assert!(stages.contains(&"authorize"), "{name}: {stages:?}");
        if decision == "approve" {
            assert!(stages.contains(&"approve"), "{name}: {stages:?}");
        }
    }
    let masked = span_of("get secrets", "allow").unwrap();
    assert_ne!(
        otlp::attrs(&masked.attributes)["chaperone.masked_fields"],
        "0"
    );
    let logs = collector.logs.lock().unwrap().len();
    assert!(
        logs >= events.len(),
        "{logs} log records for {} events",
        events.len()
    );
    collector_task.abort();

    // And `chaperone replay` tells the session as a timeline.
    let replay = support::ok(
        &std::process::Command::new(env!("CARGO_BIN_EXE_chaperone"))
            .arg("replay")
            .arg(&audit_file)
            .output()
            .unwrap(),
    );
    // Columns: time, user, verb, resource, decision, rule, code, latency, masked.
    let rows: Vec<String> = replay
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for row in [
        "list default/pods allow read-workloads 200",
        "get default/secrets db-credentials allow read-workloads 200",
        "delete default/pods nginx deny no-pod-deletes 403",
        "patch (held) default/rolebindings.rbac.authorization.k8s.io agent-admin approve rbac-needs-approval",
        "patch default/rolebindings.rbac.authorization.k8s.io agent-admin approve rbac-needs-approval 201",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(row)),
            "no {row:?} in the replay:\n{replay}"
        );
    }
}
