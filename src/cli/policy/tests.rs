//! The subcommands end to end, on the example policies and on files written by the tests.

use super::*;

/// The example policies shipped in `policies/`.
fn examples() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("policies/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    files
}

/// Runs `chaperone policy <args>`: exit code, stdout, stderr.
fn run(args: &[&str]) -> (ExitCode, String, String) {
    let args = Args::try_parse_from(std::iter::once("policy").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = execute(args, &mut out, &mut err).expect("runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (code, text(out), text(err))
}

#[test]
fn the_examples_check_clean_and_pass_their_tests() {
    let files = examples();
    assert!(files.len() >= 5, "{files:?}");
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, out, err) = run(&[&["check", "--strict"][..], &refs].concat());
    assert_eq!(code, ExitCode::SUCCESS, "{out}{err}");
    assert!(err.is_empty(), "warnings: {err}");
    let (code, out, err) = run(&[&["test"][..], &refs].concat());
    assert_eq!(code, ExitCode::SUCCESS, "{out}{err}");
    assert!(out.contains(" 0 failed, 0 files with errors"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

const POLICY: &str = "apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: p\nspec:\n  rules:\n  - name: read\n    subjects: {groups: [dev]}\n    apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [get, list]\n    action: allow\n  - name: hold-deletes\n    subjects: {groups: [dev]}\n    apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [delete]\n    action: approve\n";

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = file(&dir, "good.yaml", POLICY);
    let warned = file(
        &dir,
        "warned.yaml",
        &POLICY.replace(
            "resources: [pods]\n    verbs: [get, list]",
            "resources: [\"*\"]\n    verbs: [get, list]",
        ),
    );
    let bad = file(
        &dir,
        "bad.yaml",
        &POLICY.replace("verbs: [delete]", "verbs: [remove]"),
    );
    assert_eq!(run(&["check", &good]).0, ExitCode::SUCCESS);
    let (code, _, err) = run(&["check", &warned]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(err.contains("warning[broad-grant]"), "{err}");
    assert_eq!(run(&["check", "--strict", &warned]).0, ExitCode::from(2));
    let (code, out, err) = run(&["check", &good, &bad]);
    assert_eq!(code, ExitCode::from(1));
    assert!(out.contains("bad.yaml: error"), "{out}");
    assert!(
        err.contains(&format!(
            "{bad}:17:13: spec.rules[1].verbs[0]: unknown variant `remove`"
        )),
        "{err}"
    );
}

#[test]
fn explain_prints_and_exits_with_the_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = file(&dir, "p.yaml", POLICY);
    let (code, out, _) = run(&[
        "explain", "--policy", &p, "--user", "a", "--group", "dev", "-n", "x", "get", "pods", "web",
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        out,
        "decision: allow\nrule:     read\nreason:   rule \"read\" allows get on pods \"web\" in namespace x\nmode:     enforce\n"
    );
    let (code, out, _) = run(&[
        "explain", "--policy", &p, "--user", "a", "--group", "dev", "-n", "x", "delete", "pods",
        "web",
    ]);
    assert_eq!(code, ExitCode::from(3));
    assert!(
        out.contains("approval: hold 60s, grant 900s, 1 approver(s)"),
        "{out}"
    );
    let (code, out, _) = run(&["explain", "--policy", &p, "--user", "a", "get", "secrets"]);
    assert_eq!(code, ExitCode::from(1));
    assert!(
        out.contains("reason:   no rule allows get on secrets cluster-wide"),
        "{out}"
    );
    let (code, out, _) = run(&[
        "explain",
        "--policy",
        &p,
        "--user",
        "a",
        "--group",
        "dev",
        "--request",
        "GET /api/v1/namespaces/x/pods?watch=1",
    ]);
    assert_eq!(code, ExitCode::from(1), "watch is not granted: {out}");
    let (code, out, _) = run(&[
        "explain",
        "--policy",
        &p,
        "--service-account",
        "ns/sa",
        "--request",
        "GET /apis",
    ]);
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("rule:     builtin:discovery"), "{out}");
    let (code, _, err) = run(&["explain", "--policy", &p, "--user", "a", "gett", "pods"]);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("\"gett\" is not a verb"), "{err}");
    let (code, _, err) = run(&[
        "explain",
        "--policy",
        "/nonexistent.yaml",
        "--user",
        "a",
        "get",
        "pods",
    ]);
    assert_eq!(code, ExitCode::from(2));
    assert!(
        err.contains("failed to read policy file /nonexistent.yaml"),
        "{err}"
    );
    let (_, out, _) = run(&[
        "explain",
        "--policy",
        &p,
        "--user",
        "a",
        "--group",
        "dev",
        "-n",
        "x",
        "update",
        "deployments.apps/scale",
        "web",
    ]);
    assert!(
        out.contains("update on deployments.apps/scale \"web\" in namespace x"),
        "{out}"
    );
}

#[test]
fn test_reports_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("{POLICY}tests:\n- name: reads\n  subject: {{user: a, groups: [dev]}}\n  request: GET /api/v1/namespaces/x/pods\n  expect: allow\n- name: wrong\n  subject: {{user: a, groups: [dev]}}\n  request: DELETE /api/v1/namespaces/x/pods/p\n  expect: deny\n");
    let p = file(&dir, "p.yaml", &text);
    let (code, out, _) = run(&["test", &p]);
    assert_eq!(code, ExitCode::from(1));
    assert!(
        out.contains("  PASS  reads  expect allow  got allow by read\n"),
        "{out}"
    );
    assert!(
        out.contains("  FAIL  wrong  expect deny   got approve by hold-deletes\n"),
        "{out}"
    );
    assert!(out.contains(&format!("{p}:24: rule \"hold-deletes\" requires approval for delete on pods \"p\" in namespace x")), "{out}");
    assert!(
        out.ends_with("1 passed, 1 failed, 0 files with errors\n"),
        "{out}"
    );
}
