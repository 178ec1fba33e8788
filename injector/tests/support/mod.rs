//! Shared test setup: fixture pods, golden files, and the invariants every injected pod
//! must satisfy.
#![allow(dead_code)]

use std::path::PathBuf;

use chaperone_injector::config::Config;
use chaperone_injector::mutate::{self, mutate};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

pub fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(sub)
}

/// A fixture pod (tests/fixtures/NAME.yaml) as JSON.
pub fn fixture(name: &str) -> Value {
    let path = dir("fixtures").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

pub fn pod(json: &Value) -> Pod {
    serde_json::from_value(json.clone()).expect("fixture is a pod")
}

pub fn namespace(json: &Value) -> String {
    json["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string()
}

/// Mutates `json` and applies the patch the way the API server does.
pub fn inject(json: &Value, config: &Config) -> Value {
    let patch = mutate(&pod(json), &namespace(json), config).expect("mutate");
    mutate::check(json, &patch).expect("patch applies")
}

/// Compares `got` with tests/golden/NAME.json. `CHAPERONE_UPDATE_GOLDEN=1` rewrites the file.
pub fn golden(name: &str, got: &Value) {
    let path = dir("golden").join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(got).expect("json") + "\n";
    if std::env::var_os("CHAPERONE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e} (run with CHAPERONE_UPDATE_GOLDEN=1)"));
    let want: Value = serde_json::from_str(&want).expect("golden is json");
    assert!(
        want == *got,
        "{name}: result differs from {path:?}; got:\n{text}"
    );
}

/// Names of containers other than the proxy, init containers included.
pub fn apps(pod: &Value) -> Vec<&Value> {
    let spec = &pod["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten()
        .filter(|c| c["name"] != "chaperone")
        .collect()
}

pub fn env<'a>(c: &'a Value, name: &str) -> Vec<&'a Value> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["name"] == name)
        .map(|e| &e["value"])
        .collect()
}

/// What every injected pod satisfies, whatever it looked like before.
pub fn assert_injected(pod: &Value, config: &Config) {
    let port = config.proxy_port.to_string();
    let proxy = if config.native_sidecar {
        let first = &pod["spec"]["initContainers"][0];
        assert_eq!(
            first["name"], "chaperone",
            "proxy is the first init container"
        );
        assert_eq!(first["restartPolicy"], "Always");
        first
    } else {
        let c = pod["spec"]["containers"].as_array().expect("containers");
        c.iter()
            .find(|c| c["name"] == "chaperone")
            .expect("proxy container")
    };
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["name"].as_str().unwrap().starts_with("KUBERNETES_")),
        "the proxy keeps the kubelet's KUBERNETES_SERVICE_*"
    );
    for c in apps(pod) {
        let name = &c["name"];
        assert_eq!(env(c, "KUBERNETES_SERVICE_HOST"), ["127.0.0.1"], "{name}");
        assert_eq!(env(c, "KUBERNETES_SERVICE_PORT"), [port.as_str()], "{name}");
        assert_eq!(
            env(c, "KUBERNETES_SERVICE_PORT_HTTPS"),
            [port.as_str()],
            "{name}"
        );
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let v = m["name"].as_str().unwrap();
            assert!(!v.starts_with("kube-api-access-"), "{name} mounts {v}");
            assert_ne!(v, "chaperone-upstream-token", "{name}");
        }
    }
    let aliases = pod["spec"]["hostAliases"].as_array().expect("hostAliases");
    let loopback: Vec<_> = aliases.iter().filter(|a| a["ip"] == "127.0.0.1").collect();
    assert_eq!(loopback.len(), 1);
    for n in mutate::service_names(config) {
        let holders: Vec<_> = aliases
            .iter()
            .filter(|a| a["hostnames"].as_array().unwrap().iter().any(|h| *h == *n))
            .collect();
        assert_eq!(holders.len(), 1, "{n} in one alias");
        assert_eq!(holders[0]["ip"], "127.0.0.1", "{n}");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["chaperone.dev/injected-version"],
        mutate::VERSION
    );

    // Idempotent: the injected pod, reviewed again, needs nothing.
    let again = mutate(&self::pod(pod), &namespace(pod), config).expect("mutate again");
    assert!(again.0.is_empty(), "second mutation is empty, got {again}");
}
