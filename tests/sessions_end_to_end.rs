//! Short sessions of kubectl and of the Python client through chaperone with the
//! sandbox policy from `policies/`: a list, a Secret read (masked), a pod delete
//! (denied), a RoleBinding (held, approved by a reviewer in another process, created).
//! Each session is on record three ways: the audit JSONL, spans and log records at an
//! OpenTelemetry collector, and `chaperone replay`'s timeline.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{ok, otlp, run, sandbox, Env};

const SANDBOX_POLICY: &str = include_str!("../policies/sandbox.yaml");

/// base64("chaperone:masked")
const MASKED_B64: &str = "Y2hhcGVyb25lOm1hc2tlZA==";

async fn start() -> (Env, otlp::Collector, tokio::task::JoinHandle<()>) {
    otlp::start_exporting(sandbox().policy(SANDBOX_POLICY)).await
}

/// What every session must leave behind, once the proxy has stopped (its queues
/// drained): for each (verb, resource, decision, code) a complete audit event, a span
/// and a replay row; the held request's own event; nothing by anyone but `user`.
fn assert_recorded(
    audit_file: &Path,
    collector: &otlp::Collector,
    user: &str,
    calls: &[(&str, &str, &str, u64)],
) {
    let audit = std::fs::read_to_string(audit_file).unwrap();
    let events: Vec<Value> = support::json_lines(audit_file);
    for e in &events {
        assert_eq!(e["user"]["username"], user, "{e}");
    }
    let spans = collector.spans.lock().unwrap().clone();
    let replay = ok(&std::process::Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .arg("replay")
        .arg(audit_file)
        .output()
        .unwrap());
    let rows: Vec<String> = replay
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for &(verb, resource, decision, code) in calls {
        let event = events.iter().find(|e| {
            e["stage"] == "ResponseComplete"
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["responseStatus"]["code"] == code
        });
        let event = event.unwrap_or_else(|| panic!("no event {verb} {resource} {code}:\n{audit}"));
        assert_eq!(
            event["annotations"]["chaperone.dev/decision"], decision,
            "{event}"
        );
        let span = spans.iter().find(|s| {
            let a = otlp::attrs(&s.attributes);
            s.name == format!("{verb} {resource}")
                && a.get("http.response.status_code") == Some(&code.to_string())
        });
        let span = span.unwrap_or_else(|| panic!("no span {verb} {resource} {code}"));
        assert_eq!(
            otlp::attrs(&span.attributes)["chaperone.audit_id"],
            event["auditID"].as_str().unwrap()
        );
        assert!(
            rows.iter().any(|r| r.contains(&format!(" {verb} "))
                && r.contains(resource)
                && r.contains(&format!(" {decision} "))
                && r.contains(&format!(" {code} "))),
            "no replay row for {verb} {resource} {decision} {code}:\n{replay}"
        );
    }
    assert!(
        events.iter().any(|e| e["stage"] == "RequestReceived"
            && e["annotations"]["chaperone.dev/approval"] == "held"),
        "{audit}"
    );
    assert!(rows.iter().any(|r| r.contains("create (held)")), "{replay}");
    let logs = collector.logs.lock().unwrap().len();
    assert!(
        logs >= events.len(),
        "{logs} log records, {} events",
        events.len()
    );
}

const CALLS: [(&str, &str, &str, u64); 4] = [
    ("list", "pods", "allow", 200),
    ("get", "secrets", "allow", 200),
    ("delete", "pods", "deny", 403),
    ("create", "rolebindings", "approve", 201),
];

/// Ends a session: stopping drains the audit queues (the returned dir keeps the files),
/// then every call of [`CALLS`] must be on record for the MCP server's service account.
async fn stop_and_assert_recorded(
    env: Env,
    collector: otlp::Collector,
    task: tokio::task::JoinHandle<()>,
) {
    let audit_file = env.started.audit_file.clone().unwrap();
    let _dir = env.stop().await;
    assert_recorded(
        &audit_file,
        &collector,
        "system:serviceaccount:default:mcp-server",
        &CALLS,
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_session_is_decided_approved_masked_and_recorded() {
    let (env, collector, task) = start().await;
    let pods = ok(&env.kubectl(&["get", "pods", "-n", "default"]).await);
    assert!(pods.contains("nginx"), "{pods}");
    let password = ok(&env
        .kubectl(&[
            "get",
            "secret",
            "db-credentials",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await);
    assert_eq!(password, MASKED_B64);
    let delete = env.kubectl(&["delete", "pod", "nginx"]).await;
    assert!(
        String::from_utf8_lossy(&delete.stderr).contains("rule \"no-pod-deletes\" denies delete"),
        "{delete:?}"
    );
    let reviewer = support::approve_when_held(&env);
    let created = ok(&env
        .kubectl(&[
            "create",
            "rolebinding",
            "agent-admin",
            "--clusterrole=admin",
            "--user=agent",
        ])
        .await);
    reviewer.await.unwrap();
    assert!(created.contains("agent-admin created"), "{created}");

    stop_and_assert_recorded(env, collector, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_session_is_decided_approved_masked_and_recorded() {
    let (env, collector, task) = start().await;
    let cmd = env.python_in_cluster("python_session.py");
    let reviewer = support::approve_when_held(&env);
    let out: Value = serde_json::from_str(&ok(&run(cmd).await)).unwrap();
    reviewer.await.unwrap();
    assert!(
        out["pods"].as_array().unwrap().iter().any(|p| p == "nginx"),
        "{out}"
    );
    assert_eq!(out["password"], MASKED_B64);
    assert_eq!(out["delete"]["status"], 403, "{out}");
    assert!(
        out["delete"]["message"]
            .as_str()
            .unwrap()
            .contains("rule \"no-pod-deletes\" denies delete"),
        "{out}"
    );
    assert_eq!(out["created"], "agent-admin");

    stop_and_assert_recorded(env, collector, task).await;
}
