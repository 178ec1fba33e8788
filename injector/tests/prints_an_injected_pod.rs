//! `chaperone-injector inject FILE`: the webhook's answer, offline.

use std::process::Command;

fn injector() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chaperone-injector"))
}

#[test]
fn inject_prints_the_patched_pod_and_patch() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubernetes-mcp-server.yaml"
    );
    let out = injector().args(["inject", fixture]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"].as_str(),
        Some("chaperone")
    );

    let out = injector()
        .args(["inject", "--patch", fixture])
        .output()
        .unwrap();
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(patch.as_array().unwrap().len() > 5);
}

#[test]
fn a_bad_config_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("injector.yaml");
    std::fs::write(&config, "proxyPortt: 1\n").unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/automount-false.yaml"
    );
    let out = injector()
        .args(["inject", "--config", config.to_str().unwrap(), fixture])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("injector.yaml") && err.contains("proxyPortt"),
        "{err}"
    );
}
