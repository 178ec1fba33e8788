//! The shipped manifests agree with the injector: the webhook calls the Service and path
//! it serves, selects the label it documents, RBAC names the objects it writes, and the
//! ConfigMap's config is the documented defaults. (Schema validation: manifests.sh.)

use std::process::Command;

use chaperone_injector::config::{Config, INJECT_LABEL, INJECT_LABEL_VALUE};
use serde::Deserialize;
use serde_json::Value;

fn render(dir: &str) -> Vec<Value> {
    let kubectl = std::env::var("CHAPERONE_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = format!("{}/../manifests/{dir}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&kubectl)
        .args([
            "kustomize",
            "--load-restrictor",
            "LoadRestrictionsNone",
            &path,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{kubectl} (set CHAPERONE_KUBECTL): {e}"));
    assert!(
        out.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}

fn resource_names(role: &Value, resource: &str) -> Vec<String> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == resource))
        })
        .flat_map(|r| r["resourceNames"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn base_manifests_agree_with_the_injector() {
    let base = render("base");
    let config = Config::default();

    let cm = find(&base, "ConfigMap", "chaperone-injector");
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let parsed = Config::parse(text, "chaperone-injector ConfigMap".as_ref()).unwrap();
    assert_eq!(parsed, config, "the ConfigMap documents the defaults");

    let mwc = find(
        &base,
        "MutatingWebhookConfiguration",
        &config.webhook_configuration,
    );
    let hook = &mwc["webhooks"][0];
    let service = &hook["clientConfig"]["service"];
    assert_eq!(service["name"], config.service.as_str());
    assert_eq!(service["namespace"], config.namespace.as_str());
    assert_eq!(service["path"], "/mutate");
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    let selector = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(selector["key"], INJECT_LABEL);
    assert_eq!(selector["values"][0], INJECT_LABEL_VALUE);
    // The guard of updates: same Service and namespaces, every pod (no objectSelector),
    // failing closed.
    let guard = &mwc["webhooks"][1];
    assert_eq!(guard["clientConfig"], hook["clientConfig"]);
    assert_eq!(guard["namespaceSelector"], hook["namespaceSelector"]);
    assert!(guard.get("objectSelector").is_none());
    assert_eq!(
        guard["rules"][0]["operations"],
        serde_json::json!(["UPDATE"])
    );
    assert_eq!(
        guard["rules"][0]["resources"],
        serde_json::json!(["pods", "pods/ephemeralcontainers"])
    );
    assert_eq!(guard["failurePolicy"], "Fail");

    let role = find(&base, "ClusterRole", "chaperone-injector");
    let cms = resource_names(role, "configmaps");
    assert!(
        cms.contains(&config.names.ca_config_map) && cms.contains(&config.names.proxy_config_map)
    );
    assert!(resource_names(role, "secrets").contains(&config.names.proxy_tls_secret));
    assert_eq!(
        resource_names(role, "mutatingwebhookconfigurations"),
        std::slice::from_ref(&config.webhook_configuration)
    );
    // The controller lists and deletes AccessRequests past their retention, and only that.
    let rules = role["rules"].as_array().unwrap();
    let access_requests: Vec<&serde_json::Value> = rules
        .iter()
        .filter(|r| r["apiGroups"][0] == "chaperone.dev")
        .collect();
    assert_eq!(access_requests.len(), 1, "{rules:?}");
    assert_eq!(
        access_requests[0]["resources"],
        serde_json::json!(["accessrequests"])
    );
    assert_eq!(
        access_requests[0]["verbs"],
        serde_json::json!(["list", "delete"])
    );
    let own = find(&base, "Role", "chaperone-injector");
    let secrets = resource_names(own, "secrets");
    assert!(
        secrets.contains(&config.names.ca_secret) && secrets.contains(&config.names.webhook_secret)
    );

    let deploy = find(&base, "Deployment", "chaperone-injector");
    assert_eq!(deploy["metadata"]["namespace"], config.namespace.as_str());
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "serve");
    assert_eq!(
        c["ports"][0]["containerPort"], 8443,
        "the default --listen port"
    );
}

#[test]
fn the_example_namespace_is_labelled_and_has_its_policy() {
    let example = render("examples/mcp");
    let ns = example.iter().find(|o| o["kind"] == "Namespace").unwrap();
    assert_eq!(ns["metadata"]["labels"][INJECT_LABEL], INJECT_LABEL_VALUE);
    let policy = find(&example, "ConfigMap", "chaperone-policy");
    assert!(policy["data"]["policy.yaml"]
        .as_str()
        .unwrap()
        .contains("kind: Policy"));
}
