//! `chaperone replay` turns a recording into a readable timeline: the golden session
//! (chaperone JSONL plus a Collector OTLP JSON line) prints exactly as recorded in
//! `tests/golden/session.txt`, the filters select what they say, and a live session
//! recorded through the proxy replays.

mod support;

use std::process::Command;

fn replay(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .arg("replay")
        .args(args)
        .output()
        .expect("chaperone runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const SESSION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/session.jsonl");

#[test]
fn the_golden_session_replays_as_recorded() {
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/session.txt"
    ))
    .unwrap();
    assert_eq!(replay(&[SESSION]), want);
}

#[test]
fn filters_select_by_decision_user_trace_and_time() {
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec![SESSION, "--format", "json"];
        all.extend_from_slice(args);
        replay(&all)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["auditID"]
                    .as_str()
                    .unwrap()[35..]
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(ids(&[]), ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(ids(&["--decision", "deny"]), ["3"]);
    assert_eq!(ids(&["--decision", "approve"]), ["4"]);
    assert_eq!(ids(&["--user", "alice@example.com"]), ["4"]);
    assert_eq!(
        ids(&["--user", "system:serviceaccount:default:*"]),
        ["1", "2", "3", "5"]
    );
    assert_eq!(
        ids(&["--trace", "4bf92f3577b34da6a3ce929d0e0e4736"]),
        ["1", "2"]
    );
    // The OTLP record's trace ID becomes the event's.
    assert_eq!(ids(&["--trace", "0af7651916cd43dd8448eb211c80319c"]), ["6"]);
    assert_eq!(ids(&["--since", "2026-11-25T13:40:03Z"]), ["4", "5", "6"]);
}

/// A line that is not an event (one cut short by a crash) is named, file and line, and
/// the events after it are still shown; the exit status says a line was skipped.
#[test]
fn a_bad_line_is_named_and_the_events_after_it_still_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jsonl");
    let good = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"after-the-crash","stage":"ResponseComplete","requestURI":"/api/v1/pods","verb":"list","user":{"username":"agent"},"requestReceivedTimestamp":"2026-11-25T13:40:00.000000Z","stageTimestamp":"2026-11-25T13:40:00.000000Z"}"#;
    std::fs::write(&path, format!("{{\"kind\":\"Event\"}}\n{good}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["replay", "--format", "json", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.jsonl:1: not an audit event"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("after-the-crash"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_through_the_proxy_replays() {
    let env = support::sandbox().with_proxy().start().await;
    support::ok(&env.kubectl(&["get", "pods"]).await);
    let _ = env
        .kubectl(&["get", "--raw", "/api/v1/pods", "--as", "admin"])
        .await;
    let audit = env.started.audit_file.clone().unwrap();
    let _dir = env.stop().await;
    let timeline = replay(&[audit.to_str().unwrap()]);
    assert!(
        timeline
            .lines()
            .any(|l| l.contains(" list ") && l.contains("default/pods") && l.contains(" 200 ")),
        "{timeline}"
    );
    assert!(
        timeline
            .lines()
            .any(|l| l.contains(" deny ") && l.contains(" 403 ")),
        "{timeline}"
    );
}
