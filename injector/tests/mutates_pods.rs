//! The mutation over realistic pods: golden results, the injection invariants, and
//! idempotency (a mutated pod mutates to an empty patch).

mod support;

use chaperone_injector::config::Config;
use chaperone_injector::mutate::{self, mutate};
use serde_json::{json, Value};
use support::*;

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("volume {name}"))
}

fn mount_path<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    c["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)?["mountPath"]
        .as_str()
}

#[test]
fn kubernetes_mcp_server_pod_gets_a_native_sidecar() {
    let config = Config::default();
    let pod = inject(&fixture("kubernetes-mcp-server"), &config);
    assert_injected(&pod, &config);
    golden("kubernetes-mcp-server", &pod);

    let proxy = &pod["spec"]["initContainers"][0];
    assert_eq!(
        mount_path(proxy, "kube-api-access-x7k2p"),
        Some("/var/run/secrets/kubernetes.io/serviceaccount")
    );
    let app = &pod["spec"]["containers"][0];
    assert_eq!(
        mount_path(app, "chaperone-api-access"),
        Some("/var/run/secrets/kubernetes.io/serviceaccount")
    );
    // The app's own env stays, after the three the injector puts first.
    assert_eq!(app["env"][3]["name"], "POD_NAMESPACE");
    let sources = &volume(&pod, "chaperone-api-access")["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["audience"], "chaperone");
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3600);
    assert_eq!(sources[1]["configMap"]["name"], "chaperone-ca");
    assert_eq!(
        volume(&pod, "chaperone-policy")["configMap"]["name"],
        "chaperone-policy"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["chaperone.dev/status"],
        "injected"
    );
    assert_eq!(
        pod["spec"]["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "443"}])
    );
}

#[test]
fn every_container_is_pointed_at_the_proxy_and_existing_settings_are_replaced() {
    let config = Config::default();
    let pod = inject(&fixture("npx-with-init-and-sidecars"), &config);
    assert_injected(&pod, &config);
    golden("npx-with-init-and-sidecars", &pod);

    let init = &pod["spec"]["initContainers"];
    assert_eq!(init[1]["name"], "wait-for-api");
    assert_eq!(
        mount_path(&init[1], "chaperone-api-access"),
        Some("/var/run/secrets/kubernetes.io/serviceaccount")
    );
    let mcp = &pod["spec"]["containers"][0];
    let names: Vec<_> = mcp["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    // HOST and PORT_HTTPS were missing and go first, so `$(KUBERNETES_SERVICE_HOST)` in
    // API_URL expands to loopback; PORT (from a ConfigMap) is replaced where it stood.
    assert_eq!(
        names,
        [
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT_HTTPS",
            "NPM_CONFIG_CACHE",
            "KUBERNETES_SERVICE_PORT",
            "API_URL"
        ]
    );
    assert!(mcp["env"][3].get("valueFrom").is_none());
    // The cloud-identity token (its own audience) is not the API credential: untouched.
    assert_eq!(
        mount_path(mcp, "aws-token"),
        Some("/var/run/secrets/eks.amazonaws.com/serviceaccount")
    );
    let aliases = &pod["spec"]["hostAliases"];
    assert_eq!(
        aliases[0],
        json!({"ip": "10.96.0.1", "hostnames": ["api.internal"]})
    );
    assert_eq!(
        volume(&pod, "chaperone-policy")["configMap"]["name"],
        "readonly-policy"
    );
    // The proxy is told which ConfigMap its policy comes from, to keep callers off it.
    let proxy = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "chaperone")
        .unwrap();
    assert!(
        proxy["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "CHAPERONE_POLICY_CONFIGMAP", "value": "readonly-policy"})),
        "{}",
        proxy["env"]
    );
    assert_eq!(
        pod["spec"]["securityContext"]["sysctls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn pod_without_token_gets_the_proxy_with_its_own_credential() {
    let config = Config::default();
    let pod = inject(&fixture("automount-false"), &config);
    assert_injected(&pod, &config);
    golden("automount-false", &pod);

    assert!(pod["metadata"]["annotations"]["chaperone.dev/status"]
        .as_str()
        .unwrap()
        .starts_with("skipped-sa: automountServiceAccountToken is false"));
    let proxy = &pod["spec"]["initContainers"][0];
    assert_eq!(
        mount_path(proxy, "chaperone-upstream-token"),
        Some("/var/run/secrets/kubernetes.io/serviceaccount")
    );
    let app = &pod["spec"]["containers"][0];
    assert!(
        app.get("volumeMounts").is_none(),
        "the app still gets no token"
    );
    assert!(pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["name"] != "chaperone-api-access"));
}

#[test]
fn host_network_pod_is_only_annotated() {
    let json = fixture("host-network");
    let patch = mutate(&pod(&json), "mcp", &Config::default()).unwrap();
    let got = mutate::check(&json, &patch).unwrap();
    assert_eq!(
        got["metadata"]["annotations"],
        json!({"chaperone.dev/status": mutate::STATUS_HOST_NETWORK})
    );
    assert_eq!(got["spec"], json["spec"]);
    let again = mutate(&pod(&got), "mcp", &Config::default()).unwrap();
    assert!(again.0.is_empty());
}

#[test]
fn opted_out_pod_gets_an_empty_patch() {
    let json = fixture("opted-out");
    let patch = mutate(&pod(&json), "mcp", &Config::default()).unwrap();
    assert!(patch.0.is_empty(), "{patch}");
}

#[test]
fn pods_in_the_injectors_namespace_are_left_alone() {
    let json = fixture("kubernetes-mcp-server");
    for ns in ["chaperone-system", "kube-system"] {
        let got =
            mutate::check(&json, &mutate(&pod(&json), ns, &Config::default()).unwrap()).unwrap();
        assert_eq!(got["spec"], json["spec"], "{ns}");
        assert_eq!(
            got["metadata"]["annotations"]["chaperone.dev/status"],
            mutate::STATUS_OWN_NAMESPACE
        );
    }
}

#[test]
fn without_native_sidecars_the_proxy_is_a_regular_container() {
    let config = Config {
        native_sidecar: false,
        proxy_port: 7443,
        ..Config::default()
    };
    let pod = inject(&fixture("kubernetes-mcp-server"), &config);
    assert_injected(&pod, &config);
    golden("kubernetes-mcp-server-no-native-sidecar", &pod);
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        containers[0]["name"], "kubernetes-mcp-server",
        "the app stays the default container"
    );
    assert!(containers[1].get("restartPolicy").is_none());
    assert!(pod["spec"].get("initContainers").is_none());
}

#[test]
fn reinvocation_fixes_only_a_container_added_by_another_webhook() {
    let config = Config::default();
    let mut pod = inject(&fixture("kubernetes-mcp-server"), &config);
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({
        "name": "added-later",
        "image": "example/tool:1",
        "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
    }));
    let patch = mutate(&support::pod(&pod), "mcp", &config).unwrap();
    assert!(
        patch
            .0
            .iter()
            .all(|op| op.path().to_string().starts_with("/spec/containers/1/")),
        "{patch}"
    );
    let fixed = mutate::check(&pod, &patch).unwrap();
    assert_injected(&fixed, &config);
}

#[test]
fn conflicting_volume_names_and_bad_policy_names_are_refused() {
    let mut json = fixture("automount-false");
    json["spec"]["volumes"] = json!([{"name": "chaperone-tls", "emptyDir": {}}]);
    let err = mutate(&pod(&json), "mcp", &Config::default()).unwrap_err();
    assert!(err.to_string().contains("\"chaperone-tls\""), "{err}");

    let mut json = fixture("automount-false");
    json["metadata"]["annotations"] = json!({"chaperone.dev/policy": "../etc"});
    let err = mutate(&pod(&json), "mcp", &Config::default()).unwrap_err();
    assert!(err.to_string().contains("chaperone.dev/policy"), "{err}");
}

#[test]
fn annotation_keys_are_escaped_in_patch_paths() {
    let json = fixture("kubernetes-mcp-server");
    let patch = mutate(&pod(&json), "mcp", &Config::default()).unwrap();
    let paths: Vec<String> = patch.0.iter().map(|op| op.path().to_string()).collect();
    assert!(
        paths.contains(&"/metadata/annotations/chaperone.dev~1status".to_string()),
        "{paths:?}"
    );
}

/// A pod whose app containers could reach the proxy's credential is refused, saying why:
/// a container taking the proxy's name (it would be taken for the proxy and keep the
/// real token), an app container mounting the proxy's volumes, and containers that can
/// see the proxy's process (its files are readable through `/proc/PID/root`).
#[test]
fn pods_that_could_reach_the_proxys_credential_are_refused() {
    let config = Config::default();
    let base = fixture("kubernetes-mcp-server");
    let refused = |edit: &dyn Fn(&mut Value), words: &str| {
        let mut json = base.clone();
        edit(&mut json);
        let err = mutate(&pod(&json), "mcp", &config).unwrap_err();
        assert!(err.to_string().contains(words), "{words}: {err}");
        assert_eq!(err.status().code, 400);
    };
    refused(
        &|p| {
            p["spec"]["containers"].as_array_mut().unwrap().push(json!({
                "name": "chaperone", "image": "evil/passthrough:1"
            }))
        },
        "container name \"chaperone\" is reserved",
    );
    refused(
        &|p| {
            p["spec"]["volumes"]
                .as_array_mut()
                .unwrap()
                .retain(|v| v["name"] != "kube-api-access-x7k2p");
            p["spec"]["automountServiceAccountToken"] = json!(false);
            p["spec"]["containers"][0]["volumeMounts"] = json!([{
                "name": "chaperone-upstream-token",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
            }]);
        },
        "mounts volume \"chaperone-upstream-token\"",
    );
    refused(
        &|p| {
            p["spec"]["containers"][0]["volumeMounts"] =
                json!([{"name": "chaperone-tls", "mountPath": "/k"}])
        },
        "mounts volume \"chaperone-tls\"",
    );
    refused(
        &|p| p["spec"]["shareProcessNamespace"] = json!(true),
        "sets shareProcessNamespace",
    );
    refused(&|p| p["spec"]["hostPID"] = json!(true), "sets hostPID");

    // The proxy this injector added is recognised as such on reinvocation, even with
    // environment another webhook added to it.
    let mut injected = inject(&base, &config);
    injected["spec"]["initContainers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "OTEL_SERVICE_NAME", "value": "x"}));
    mutate(&pod(&injected), "mcp", &config).expect("reinvocation");
    // Its image swapped by someone else is not the proxy.
    injected["spec"]["initContainers"][0]["image"] = json!("evil/passthrough:1");
    let err = mutate(&pod(&injected), "mcp", &config).unwrap_err();
    assert!(err.to_string().contains("initContainers[0]"), "{err}");
}

/// A pod cannot bring a credential of its own around the proxy: a service-account token
/// it projects for the API server (no audience, or the API server's), the node's files
/// (a hostPath, a privileged container), or the proxy's container copied with volumes of
/// its choosing (another policy or configuration). A token for another audience, as a
/// cloud's workload identity projects it, is the pod's.
#[test]
fn pods_that_bring_a_credential_around_the_proxy_are_refused() {
    let config = Config {
        api_audiences: vec!["https://oidc.example.com/cluster".into()],
        ..Config::default()
    };
    let base = fixture("kubernetes-mcp-server");
    let refused = |json: &Value, words: &str| {
        let err = mutate(&pod(json), "mcp", &config).unwrap_err();
        assert!(err.to_string().contains(words), "{words}: {err}");
        assert_eq!(err.status().code, 400);
    };
    let with_token = |audience: Option<&str>| {
        let mut json = base.clone();
        let mut token = json!({"path": "token", "expirationSeconds": 3600});
        if let Some(a) = audience {
            token["audience"] = json!(a);
        }
        json["spec"]["volumes"].as_array_mut().unwrap().push(
            json!({"name": "tok", "projected": {"sources": [{"serviceAccountToken": token}]}}),
        );
        json["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "tok", "mountPath": "/tok"}));
        json
    };
    for audience in [
        None,
        Some(""),
        Some("https://kubernetes.default.svc.cluster.local"),
        Some("https://oidc.example.com/cluster"),
    ] {
        refused(
            &with_token(audience),
            "volume \"tok\" projects a service-account token for the API server",
        );
    }
    inject(&with_token(Some("sts.amazonaws.com")), &config);

    let mut host = base.clone();
    host["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet"}}));
    refused(&host, "volume \"kubelet\" is a hostPath");
    let mut privileged = base.clone();
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    refused(&privileged, "is privileged");

    // The proxy's container copied, as it is public, with a policy volume of the pod
    // author's: not taken for an injection.
    let injected = inject(&base, &config);
    mutate(&pod(&injected), "mcp", &config).expect("a real injection passes again");
    for (volume, edit) in [
        (
            "chaperone-policy",
            json!({"configMap": {"name": "evil", "optional": true}}),
        ),
        ("chaperone-config", json!({"configMap": {"name": "evil"}})),
        (
            "chaperone-api-access",
            json!({"projected": {"sources": [{"serviceAccountToken": {"path": "token", "audience": "chaperone"}}]}}),
        ),
    ] {
        let mut copied = injected.clone();
        for v in copied["spec"]["volumes"].as_array_mut().unwrap() {
            if v["name"] == volume {
                let mut changed = edit.clone();
                changed["name"] = json!(volume);
                *v = changed;
            }
        }
        refused(
            &copied,
            &format!("volume \"{volume}\" is not as this injector makes it"),
        );
    }
}

/// Updates of an injected pod may not hand the proxy's place or credential to something
/// else: another image for the proxy, or an ephemeral container that mounts the proxy's
/// volumes (the real token among them) or targets its process.
#[test]
fn updates_that_would_hand_over_the_proxys_credential_are_refused() {
    let config = Config::default();
    let injected = inject(&fixture("kubernetes-mcp-server"), &config);
    let guard = |edit: &dyn Fn(&mut Value)| {
        let mut new = injected.clone();
        edit(&mut new);
        mutate::guard_update(&pod(&injected), &pod(&new))
    };
    guard(&|_| {}).expect("an unchanged pod");
    guard(&|p| p["spec"]["containers"][0]["image"] = json!("example/mcp:2"))
        .expect("the app's image may change");
    guard(&|p| {
        p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox", "targetContainerName": "kubernetes-mcp-server"}])
    })
    .expect("kubectl debug of the app");
    let refused = |edit: &dyn Fn(&mut Value), words: &str| {
        let err = guard(edit).unwrap_err();
        assert!(err.to_string().contains(words), "{words}: {err}");
    };
    refused(
        &|p| p["spec"]["initContainers"][0]["image"] = json!("evil/passthrough:1"),
        "the proxy container initContainers[0] of an injected pod cannot be changed",
    );
    refused(
        &|p| {
            p["spec"]["ephemeralContainers"] = json!([{"name": "d", "image": "busybox",
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/t"}]}])
        },
        "mounts volume \"kube-api-access-x7k2p\"",
    );
    refused(
        &|p| {
            p["spec"]["ephemeralContainers"] =
                json!([{"name": "d", "image": "busybox", "targetContainerName": "chaperone"}])
        },
        "targets the proxy container",
    );
    // A pod without the proxy (opted out) is not the guard's business.
    let plain = fixture("kubernetes-mcp-server");
    let mut changed = plain.clone();
    changed["spec"]["containers"][0]["image"] = json!("example/mcp:2");
    mutate::guard_update(&pod(&plain), &pod(&changed)).expect("not injected");
}
