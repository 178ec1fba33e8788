//! JSON responses: objects, Lists, watch streams, Tables, metadata, invalid input.

use bytes::BytesMut;
use serde_json::json;

use super::super::stream::{JsonStream, Transform};
use super::super::unit::Context;
use super::*;

const JSON: &str = "application/json";

fn check_masked_secret(v: &Value) {
    assert_eq!(v["data"]["password"], B64);
    assert_eq!(v["data"]["user"], B64);
    let ann = &v["metadata"]["annotations"];
    assert_eq!(
        ann["kubectl.kubernetes.io/last-applied-configuration"],
        MARKER
    );
    assert_eq!(ann["meta.helm.sh/release-name"], "team-a");
    assert_eq!(v["type"], "Opaque");
}

#[tokio::test]
async fn secret_get() {
    let input = serde_json::to_vec(&secret("s1")).unwrap();
    let (out, n) = run(&defaults(), &target("secrets"), JSON, &input)
        .await
        .unwrap();
    check_masked_secret(&value(&out));
    assert_eq!(n, 3);
    assert!(!String::from_utf8_lossy(&out).contains("aHVudGVyMg"));
}

/// Tools copy a Secret's values into annotations of their own (kapp's original,
/// kubectl's `--record` command line): every annotation but those naming what the
/// Secret belongs to is masked.
#[tokio::test]
async fn a_secrets_annotations_are_masked_but_for_what_it_belongs_to() {
    let mut s = secret("s1");
    s["metadata"]["annotations"] = json!({
        "kapp.k14s.io/original": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}",
        "kubernetes.io/change-cause": "kubectl patch secret s1 -p {\"stringData\":{\"password\":\"hunter2\"}} --record=true",
        "kubernetes.io/service-account.name": "builder",
        "cert-manager.io/common-name": "web.example.com",
    });
    let input = serde_json::to_vec(&s).unwrap();
    let (out, n) = run(&defaults(), &target("secrets"), JSON, &input)
        .await
        .unwrap();
    let v = value(&out);
    let ann = &v["metadata"]["annotations"];
    assert_eq!(ann["kapp.k14s.io/original"], MARKER);
    assert_eq!(ann["kubernetes.io/change-cause"], MARKER);
    assert_eq!(ann["kubernetes.io/service-account.name"], "builder");
    assert_eq!(ann["cert-manager.io/common-name"], "web.example.com");
    assert_eq!(n, 4);
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("aHVudGVyMg") && !text.contains("hunter2"),
        "{text}"
    );
}

/// A Secret answered through another group's `proxy` subresource (Karmada's
/// `clusters/proxy`, reaching a member cluster) is masked as the Secret it is.
#[tokio::test]
async fn a_secret_through_an_aggregated_proxy_is_masked() {
    let input = serde_json::to_vec(&secret("s1")).unwrap();
    let t = Target {
        api_group: "cluster.karmada.io",
        subresource: "proxy",
        ..target("clusters")
    };
    let (out, _) = run(&defaults(), &t, JSON, &input).await.unwrap();
    check_masked_secret(&value(&out));
    assert!(!String::from_utf8_lossy(&out).contains("aHVudGVyMg"));
    // A List's items carry no kind: the request does not say what they are, so every
    // rule applies to them; so it does to a Table's metadata-only objects.
    let items: Vec<Value> = ["a", "b"]
        .iter()
        .map(|n| {
            let mut item = secret(n);
            item.as_object_mut().unwrap().remove("kind");
            item.as_object_mut().unwrap().remove("apiVersion");
            item
        })
        .collect();
    let list = json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items});
    let input = serde_json::to_vec(&list).unwrap();
    let (out, _) = run(&defaults(), &t, JSON, &input).await.unwrap();
    let v = value(&out);
    for item in v["items"].as_array().unwrap() {
        check_masked_secret(item);
    }
    let table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": [], "rows": [{"cells": ["a"], "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": secret("a")["metadata"].clone()}}]});
    let input = serde_json::to_vec(&table).unwrap();
    let (out, _) = run(&defaults(), &t, JSON, &input).await.unwrap();
    let ann = &value(&out)["rows"][0]["object"]["metadata"]["annotations"];
    assert_eq!(
        ann["kubectl.kubernetes.io/last-applied-configuration"],
        MARKER
    );
    assert!(!String::from_utf8_lossy(&out).contains("aHVudGVyMg"));
}

#[tokio::test]
async fn secret_with_sorted_keys_and_string_data() {
    // serde_json's map (the sandbox) writes keys sorted: `data` before `kind`.
    let mut s = secret("s1");
    s["stringData"] = json!({"token": "plain-text"});
    let sorted: std::collections::BTreeMap<String, Value> = serde_json::from_value(s).unwrap();
    let input = serde_json::to_vec_pretty(&sorted).unwrap();
    let (out, n) = run(&defaults(), &target("secrets"), JSON, &input)
        .await
        .unwrap();
    let v = value(&out);
    check_masked_secret(&v);
    assert_eq!(v["stringData"]["token"], MARKER);
    assert_eq!(n, 4);
}

#[tokio::test]
async fn service_account_token_secret() {
    let input = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "sa-token", "annotations": {"kubernetes.io/service-account.name": "sa"}},
        "data": {"token": "ZXlKaGJHY2lPaUpT", "ca.crt": "LS0tLS1CRUdJTg==", "namespace": "ZGVmYXVsdA=="}
    }))
    .unwrap();
    let (out, n) = run(&defaults(), &target("secrets"), JSON, &input)
        .await
        .unwrap();
    let v = value(&out);
    for k in ["token", "ca.crt", "namespace"] {
        assert_eq!(v["data"][k], B64);
    }
    assert_eq!(
        v["metadata"]["annotations"]["kubernetes.io/service-account.name"],
        "sa"
    );
    assert_eq!(n, 3);
}

#[tokio::test]
async fn secret_list_items_without_kind() {
    let mut items = Vec::new();
    for i in 0..5 {
        let mut s = secret(&format!("s{i}"));
        s.as_object_mut().unwrap().remove("kind");
        items.push(s);
    }
    let list = json!({"kind": "SecretList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "42"}, "items": items});
    let input = serde_json::to_vec(&list).unwrap();
    let (out, n) = run(&defaults(), &target("secrets"), JSON, &input)
        .await
        .unwrap();
    let v = value(&out);
    assert_eq!(v["metadata"]["resourceVersion"], "42");
    for item in v["items"].as_array().unwrap() {
        check_masked_secret(item);
    }
    assert_eq!(n, 15);
    // Envelope kind after the items (sorted keys), and an empty list.
    let sorted = br#"{"apiVersion":"v1","items":[],"kind":"SecretList","metadata":{}}"#;
    let (out, n) = run(&defaults(), &target("secrets"), JSON, sorted)
        .await
        .unwrap();
    assert_eq!((out.as_slice(), n), (&sorted[..], 0));
}

fn watch_stream() -> Vec<u8> {
    let mut input = Vec::new();
    for (i, ty) in ["ADDED", "MODIFIED", "DELETED"].iter().enumerate() {
        let ev = json!({"type": ty, "object": secret(&format!("s{i}"))});
        input.extend_from_slice(&serde_json::to_vec(&ev).unwrap());
        input.push(b'\n');
    }
    input.extend_from_slice(
        br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old","code":410}}"#,
    );
    input.push(b'\n');
    input
}

#[tokio::test]
async fn watch_events_split_at_every_byte() {
    let input = watch_stream();
    let t = Target {
        is_watch: true,
        ..target("secrets")
    };
    let m = defaults();
    let (whole, n) = run(&m, &t, JSON, &input).await.unwrap();
    assert_eq!(n, 9);
    let lines: Vec<&[u8]> = whole
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines[..3] {
        check_masked_secret(&value(l)["object"]);
    }
    assert_eq!(value(lines[3])["object"]["code"], 410);
    for k in 0..=input.len() {
        let pieces = vec![input[..k].to_vec(), input[k..].to_vec()];
        let split = run_chunks(&m, &t, JSON, pieces).await.unwrap();
        assert_eq!(split, (whole.clone(), 9), "split at {k}");
    }
}

#[test]
fn watch_events_leave_as_soon_as_complete() {
    let m = defaults();
    let ctx = Context {
        resource: "secrets".into(),
        namespace: String::new(),
        name: String::new(),
        unknown_kinds: false,
    };
    let mut s = JsonStream::new(m.inner.clone(), ctx, true, true);
    let input = watch_stream();
    let first_end = input.iter().position(|&b| b == b'\n').unwrap();
    let mut out = BytesMut::new();
    s.push(&input[..first_end], &mut out).unwrap();
    check_masked_secret(&value(&out)["object"]);
    // Only the event in flight is held.
    out.clear();
    s.push(&input[first_end..first_end + 10], &mut out).unwrap();
    assert_eq!(&out[..], b"\n");
}

#[tokio::test]
async fn table_of_secrets_with_objects() {
    let partial = |name: &str| {
        let mut m = secret(name)["metadata"].clone();
        m.as_object_mut().unwrap().remove("namespace");
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": m})
    };
    for object in [secret("a"), partial("a")] {
        let table = json!({
            "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "7"},
            "columnDefinitions": [{"name": "Name", "type": "string", "format": "name", "description": "n", "priority": 0}],
            "rows": [{"cells": ["a", "Opaque", 2, "5d"], "object": object}]
        });
        let input = serde_json::to_vec(&table).unwrap();
        let (out, _) = run(&defaults(), &target("secrets"), JSON, &input)
            .await
            .unwrap();
        let v = value(&out);
        let obj = &v["rows"][0]["object"];
        let ann = &obj["metadata"]["annotations"];
        assert_eq!(
            ann["kubectl.kubernetes.io/last-applied-configuration"],
            MARKER
        );
        assert_eq!(ann["meta.helm.sh/release-name"], "team-a");
        if obj["kind"] == "Secret" {
            check_masked_secret(obj);
        }
        assert_eq!(v["rows"][0]["cells"], json!(["a", "Opaque", 2, "5d"]));
        assert_eq!(v["columnDefinitions"], table["columnDefinitions"]);
    }
}

#[tokio::test]
async fn partial_object_metadata_list() {
    let items: Vec<Value> = ["a", "b"]
        .iter()
        .map(|n| {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": secret(n)["metadata"].clone()})
        })
        .collect();
    let list = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
        "metadata": {}, "items": items});
    let input = serde_json::to_vec(&list).unwrap();
    let (out, n) = run(&defaults(), &target("secrets"), JSON, &input)
        .await
        .unwrap();
    let v = value(&out);
    for item in v["items"].as_array().unwrap() {
        let ann = &item["metadata"]["annotations"];
        assert_eq!(
            ann["kubectl.kubernetes.io/last-applied-configuration"],
            MARKER
        );
    }
    assert_eq!(n, 2);
}

#[tokio::test]
async fn kind_list_is_decided_per_item() {
    let m = Masker::compile(&[Rule {
        resources: vec!["configmaps".into()],
        fields: vec!["data.*".into()],
        key_regex: Some("(?i)password".into()),
        ..Rule::default()
    }])
    .unwrap();
    let cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"},
        "data": {"db_password": "hunter2", "url": "db:5432"}});
    let list = json!({"kind": "List", "apiVersion": "v1", "metadata": {},
        "items": [secret("s"), cm, {"kind": "Pod", "metadata": {"name": "p"}, "spec": {}}]});
    let input = serde_json::to_vec(&list).unwrap();
    // An aggregated API may answer a `kind: List` for anything.
    let t = Target {
        api_group: "bundles.example.com",
        ..target("bundles")
    };
    let (out, n) = run(&m, &t, JSON, &input).await.unwrap();
    let v = value(&out);
    check_masked_secret(&v["items"][0]);
    assert_eq!(
        v["items"][1]["data"],
        json!({"db_password": MARKER, "url": "db:5432"})
    );
    assert_eq!(v["items"][2], list["items"][2]);
    assert_eq!(n, 4);
}

#[tokio::test]
async fn configmap_key_regex_and_last_applied() {
    let m = Masker::compile(&[Rule {
        resources: vec!["configmaps".into()],
        namespaces: vec!["team-*".into()],
        fields: vec!["data.*".into()],
        key_regex: Some("(?i)pass|token|secret|key".into()),
        ..Rule::default()
    }])
    .unwrap();
    let cm = |ns: &str| {
        json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "c", "namespace": ns, "annotations":
                {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"API_KEY\":\"k\"}}"}},
            "data": {"API_KEY": "abc", "LOG_LEVEL": "debug", "dbPass": "x", "esc\u{3c}Token": "y"}})
    };
    let input = serde_json::to_vec(&cm("team-a")).unwrap();
    let (out, n) = run(&m, &target("configmaps"), JSON, &input).await.unwrap();
    let v = value(&out);
    assert_eq!(
        v["data"],
        json!({"API_KEY": MARKER, "LOG_LEVEL": "debug", "dbPass": MARKER, "esc<Token": MARKER})
    );
    assert_eq!(
        v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        MARKER
    );
    assert_eq!(n, 4);
    // Another namespace: untouched, byte for byte.
    let other = serde_json::to_vec(&cm("prod")).unwrap();
    let (out, n) = run(&m, &target("configmaps"), JSON, &other).await.unwrap();
    assert_eq!((out, n), (other, 0));
}

#[tokio::test]
async fn env_name_regex_with_name_after_value() {
    let m = Masker::compile(&[Rule {
        resources: vec!["pods".into()],
        fields: vec!["spec.containers[*].env[*].value".into()],
        name_regex: Some("(?i)pass|token|secret|key".into()),
        ..Rule::default()
    }])
    .unwrap();
    // `value` before `name`, as a sorted-key writer puts them.
    let input = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"env":[{"value":"s3cret","name":"DB_PASSWORD"},{"value":"info","name":"LOG_LEVEL"},{"name":"API_TOKEN","valueFrom":{"secretKeyRef":{"name":"t","key":"k"}}}],"name":"app"}],"initContainers":[{"name":"i","env":[{"name":"PASSWORD","value":"x"}]}]}}"#;
    let (out, n) = run(&m, &target("pods"), JSON, input).await.unwrap();
    let v = value(&out);
    let env = &v["spec"]["containers"][0]["env"];
    assert_eq!(env[0], json!({"value": MARKER, "name": "DB_PASSWORD"}));
    assert_eq!(env[1]["value"], "info");
    assert_eq!(env[2]["valueFrom"]["secretKeyRef"]["name"], "t");
    // Only the paths given: initContainers were not named.
    assert_eq!(v["spec"]["initContainers"][0]["env"][0]["value"], "x");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn detectors_and_patterns_in_values() {
    let m = Masker::compile(&[
        Rule {
            resources: vec!["*".into()],
            detectors: vec!["jwt".into(), "aws-access-key".into()],
            ..Rule::default()
        },
        Rule {
            resources: vec!["widgets".into()],
            patterns: vec![r"internal-[0-9]+".into()],
            ..Rule::default()
        },
    ])
    .unwrap();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let w = json!({"kind": "Widget", "metadata": {"name": "w"},
        "spec": {"auth": format!("Bearer {jwt}"), "key": "AKIAIOSFODNN7EXAMPLE", "host": "internal-42",
                 "note": "plain", "list": ["a", "AKIAIOSFODNN7EXAMPLE"], "n": 5}});
    let input = serde_json::to_vec(&w).unwrap();
    let t = Target {
        api_group: "example.com",
        ..target("widgets")
    };
    let (out, n) = run(&m, &t, JSON, &input).await.unwrap();
    let v = value(&out);
    assert_eq!(
        v["spec"],
        json!({"auth": MARKER, "key": MARKER, "host": MARKER, "note": "plain",
               "list": ["a", MARKER], "n": 5})
    );
    assert_eq!(n, 4);
    // A JSON-escaped secret is decoded before matching.
    let escaped = br#"{"kind":"Widget","spec":{"k":"\u0041KIAIOSFODNN7EXAMPLE"}}"#;
    let (out, n) = run(&m, &t, JSON, escaped).await.unwrap();
    assert_eq!(value(&out)["spec"]["k"], MARKER);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn list_elements_that_are_not_objects_are_scanned_in_any_chunking() {
    // Found by the chunking property (tests/mask_props.rs): streamed, an element that is an
    // array or a string was a unit without an object node, so no scanner saw its strings,
    // while the same List arriving in one piece had them scanned as the envelope's.
    let m = Masker::compile(&[Rule {
        resources: vec!["*".into()],
        detectors: vec!["aws-access-key".into()],
        ..Rule::default()
    }])
    .unwrap();
    let input = br#"{"kind":"List","items":["AKIAIOSFODNN7EXAMPLE",[{"x":"AKIAIOSFODNN7EXAMPLE"}],{"kind":"Widget","y":"AKIAIOSFODNN7EXAMPLE"}],"metadata":{}}"#;
    let t = target("widgets");
    let (whole, n) = run(&m, &t, JSON, input).await.unwrap();
    assert_eq!(
        value(&whole)["items"],
        json!([MARKER, [{"x": MARKER}], {"kind": "Widget", "y": MARKER}])
    );
    assert_eq!(n, 3);
    for k in 0..=input.len() {
        let pieces = vec![input[..k].to_vec(), input[k..].to_vec()];
        let split = run_chunks(&m, &t, JSON, pieces).await.unwrap();
        assert_eq!(split, (whole.clone(), 3), "split at {k}");
    }
    // A bare array (no object at all) is scanned too.
    let (out, n) = run(&m, &t, JSON, br#"["AKIAIOSFODNN7EXAMPLE"]"#)
        .await
        .unwrap();
    assert_eq!((value(&out), n), (json!([MARKER]), 1));
}

#[tokio::test]
async fn nothing_matches_leaves_identical_bytes() {
    let m = Masker::compile(&[Rule {
        resources: vec!["pods".into()],
        fields: vec!["spec.containers[*].env[*].value".into()],
        name_regex: Some("(?i)password".into()),
        detectors: vec!["jwt".into()],
        ..Rule::default()
    }])
    .unwrap();
    let input = br#" {"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[ {"metadata":{"name":"a","labels":{"x":"\u00e9\"q"}},"spec":{"containers":[{"name":"c","env":[{"name":"HOME","value":"/root"}]}]},"status":{"phase":"Running","n":-1.5e3,"ok":true,"z":null}} , {"metadata":{"name":"b"},"spec":{}} ] , "x":[1,2]} "#;
    let (out, n) = run(&m, &target("pods"), JSON, input).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(input)
    );
    assert_eq!(n, 0);
    let (out, _) = run(&m, &target("pods"), JSON, b"").await.unwrap();
    assert!(out.is_empty());
}

#[tokio::test]
async fn envelope_prefix_and_suffix_are_masked_too() {
    // An object with a root `items` array is streamed as an envelope; fields around the
    // array are still masked (here: a Secret-like custom object, fail closed).
    let input = br#"{"data":{"a":"eA=="},"items":[{"data":{"b":"eQ=="}}],"kind":"Secret","stringData":{"c":"z"}}"#;
    let (out, n) = run(&defaults(), &target("secrets"), JSON, input)
        .await
        .unwrap();
    let v = value(&out);
    assert_eq!(v["data"]["a"], B64);
    assert_eq!(v["items"][0]["data"]["b"], B64);
    assert_eq!(v["stringData"]["c"], MARKER);
    assert_eq!(n, 3);
}

#[tokio::test]
async fn a_custom_objects_own_items_are_masked_by_path_however_it_arrives() {
    // A custom object whose spec keeps an `items` array at its top level. The answer to
    // a request for one object is read whole, so the rule's path through `items` reaches
    // the value whether the body comes in one piece or in many (`run` checks both).
    let m = Masker::compile(&[Rule {
        resources: vec!["vaults".into()],
        fields: vec!["items[*].password".into()],
        ..Rule::default()
    }])
    .unwrap();
    let input = br#"{"apiVersion":"example.com/v1","kind":"Vault","metadata":{"name":"v","namespace":"default"},"items":[{"user":"root","password":"hunter2"}]}"#;
    let t = Target {
        api_group: "example.com",
        one_object: true,
        ..target("vaults")
    };
    let (out, n) = run(&m, &t, JSON, input).await.unwrap();
    let v = value(&out);
    assert_eq!(v["items"][0]["password"], MARKER);
    assert_eq!(v["items"][0]["user"], "root");
    assert_eq!(n, 1);
    // A List of them is still streamed item by item, and each item's own `items` is
    // masked by the same path.
    let list = format!(
        r#"{{"apiVersion":"example.com/v1","kind":"VaultList","metadata":{{}},"items":[{}]}}"#,
        std::str::from_utf8(input).unwrap()
    );
    let t = Target {
        api_group: "example.com",
        ..target("vaults")
    };
    let (out, n) = run(&m, &t, JSON, list.as_bytes()).await.unwrap();
    assert_eq!(value(&out)["items"][0]["items"][0]["password"], MARKER);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn streamed_envelope_prefix_fails_closed() {
    // `kind` after the array: when the envelope is streamed, the prefix is masked before the
    // kind is known, so every rule applies to it; whole, the kind decides.
    let m = Masker::compile(&[Rule {
        resources: vec!["widgets".into()],
        fields: vec!["spec.password".into()],
        ..Rule::default()
    }])
    .unwrap();
    let input = br#"{"spec":{"password":"p"},"items":[{"kind":"Gadget","spec":{"password":"q"}}],"kind":"Widget"}"#;
    let t = Target {
        api_group: "example.com",
        ..target("gadgets")
    };
    for sizes in [&[1usize][..], &[input.len()]] {
        let (out, n) = run_chunks(&m, &t, JSON, chunks(input, sizes))
            .await
            .unwrap();
        let v = value(&out);
        assert_eq!(v["spec"]["password"], MARKER, "{sizes:?}");
        assert_eq!(v["items"][0]["spec"]["password"], "q");
        assert_eq!(n, 1);
    }
}

#[tokio::test]
async fn invalid_json_ends_the_stream() {
    let t = target("secrets");
    let m = defaults();
    for bad in [
        &br#"{"kind":"Secret","data":{"a":"eA=="}"#[..], // cut short
        br#"{"kind":"Secret",}"#,
        br#"{"items":[{"data":{"a":"eA=="}},]}"#,
        br#"{"items":[{"data":{"a":"eA=="}} {"b":1}]}"#,
        br#"{"items":[{"a":1}],"kind":}"#,
        br#"{"items":[{"a":1]]}"#,
        br#"{"a":1} {"b":2}"#, // two values outside a watch
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\xff\"}",
        b"nul",
        b"[1,2",
        b"}",
    ] {
        let err = run(&m, &t, JSON, bad).await.unwrap_err();
        assert!(err.contains("JSON") || err.contains("value"), "{err}");
        // Nothing of the unit in error is sent before the error.
        let plan = m.plan(&t, &headers(JSON));
        let mut body = apply(body_of(vec![bad.to_vec()]), plan, Arc::default());
        let mut sent = Vec::new();
        while let Some(Ok(f)) = body.frame().await {
            sent.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..]));
        }
        assert!(!String::from_utf8_lossy(&sent).contains("eA=="), "{sent:?}");
    }
}

#[tokio::test]
async fn oversized_object_is_refused() {
    let big = format!(
        r#"{{"kind":"Secret","data":{{"a":"{}"}}}}"#,
        "x".repeat(MAX_UNIT)
    );
    let err = run_chunks(
        &defaults(),
        &target("secrets"),
        JSON,
        chunks(big.as_bytes(), &[1 << 16]),
    )
    .await
    .unwrap_err();
    assert!(err.contains("more than"), "{err}");
}

#[tokio::test]
async fn lists_larger_than_the_unit_limit_stream_in_any_chunking() {
    let item = serde_json::to_vec(&secret("s")).unwrap();
    let n = MAX_UNIT / item.len() * 2 + 3;
    let mut input = br#"{"kind":"SecretList","metadata":{},"items":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            input.push(b',');
        }
        input.extend_from_slice(&item);
    }
    input.extend_from_slice(b"]}");
    let t = target("secrets");
    for sizes in [&[input.len()][..], &[1 << 16], &[MAX_UNIT + 5, 3]] {
        let (out, masked) = run_chunks(&defaults(), &t, JSON, chunks(&input, sizes))
            .await
            .unwrap();
        assert_eq!(masked, 3 * n as u64, "{sizes:?}");
        let v = value(&out);
        assert_eq!(v["items"].as_array().unwrap().len(), n);
        check_masked_secret(&v["items"][n - 1]);
    }
}

#[tokio::test]
async fn upstream_errors_pass_through() {
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"{\"items\":["))),
        Err::<Frame<Bytes>, BoxError>("connection reset".into()),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let plan = defaults().plan(&target("secrets"), &headers(JSON));
    let err = collect(apply(body, plan, Arc::default()))
        .await
        .unwrap_err();
    assert_eq!(err, "connection reset");
}

/// JSON may name a key twice (the API server, given such a body, merges the two): every
/// copy of a Secret's `data` and `stringData` is masked, whichever comes first, in a
/// response and in a body kept for the record.
#[tokio::test]
async fn a_secret_naming_its_data_twice_has_both_masked() {
    let input = br#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s"},
        "data":{"a":"c2VjcmV0LWE="},"stringData":{"x":"hunter2"},
        "data":{"b":"c2VjcmV0LWI="},"stringData":{"y":"hunter3"},"kind":"Secret"}"#;
    let (out, n) = run(&defaults(), &target("secrets"), JSON, input)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    for secret in ["c2VjcmV0LWE=", "c2VjcmV0LWI=", "hunter2", "hunter3"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(n, 4, "{text}");
    // Known by its kind alone (an item of a List an aggregated API answers), too.
    let list = format!(
        r#"{{"kind":"List","items":[{}]}}"#,
        String::from_utf8_lossy(input)
    );
    let t = Target {
        api_group: "bundles.example.com",
        ..target("bundles")
    };
    let (out, _) = run(&defaults(), &t, JSON, list.as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("c2VjcmV0") && !text.contains("hunter"),
        "{text}"
    );
    // A body kept for the record.
    let (kept, n) = defaults().mask_sent(&target("secrets"), input).unwrap();
    assert_eq!(n, 4);
    assert!(!kept.to_string().contains("hunter"), "{kept}");
}

/// A body kept for the record is read as the API server reads it: with `metadata` twice
/// its name is the last one given, and an env entry naming itself twice is the last name.
#[tokio::test]
async fn keys_named_twice_are_read_as_the_api_server_reads_them() {
    let m = Masker::compile(&[
        Rule {
            resources: vec!["configmaps".into()],
            names: vec!["db-creds".into()],
            fields: vec!["data.*".into()],
            ..Rule::default()
        },
        Rule {
            resources: vec!["pods".into()],
            fields: vec!["spec.containers[*].env[*].value".into()],
            name_regex: Some("(?i)password".into()),
            ..Rule::default()
        },
    ])
    .unwrap();
    // Created (no name in the path): the object's name is the second metadata's.
    let cm = br#"{"kind":"ConfigMap","metadata":{"labels":{"a":"b"}},"metadata":{"name":"db-creds"},"data":{"password":"hunter2"}}"#;
    let (kept, n) = m.mask_sent(&target("configmaps"), cm).unwrap();
    assert_eq!(kept["data"]["password"], MARKER, "{kept}");
    assert_eq!(n, 1);
    // A later name replaces an earlier one: this one is not db-creds.
    let renamed = br#"{"kind":"ConfigMap","metadata":{"name":"db-creds"},"metadata":{"name":"other"},"data":{"password":"visible"}}"#;
    let (kept, n) = m.mask_sent(&target("configmaps"), renamed).unwrap();
    assert_eq!((kept["data"]["password"].as_str(), n), (Some("visible"), 0));
    let pod = br#"{"kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","env":[{"name":"LOG_LEVEL","value":"hunter2","name":"DB_PASSWORD"}]}]}}"#;
    let (kept, n) = m.mask_sent(&target("pods"), pod).unwrap();
    assert!(!kept.to_string().contains("hunter2"), "{kept}");
    assert_eq!(n, 1);
}

/// The example policy `policies/cluster-viewer.yaml` masks secret-looking env values in
/// every object its reader may list that carries a pod template, in init containers too:
/// a Deployment's ReplicaSets repeat its template, and a CronJob's sits one level deeper.
#[tokio::test]
async fn the_cluster_viewer_example_masks_env_in_every_pod_template() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/cluster-viewer.yaml");
    let (policy, _) = crate::policy::load(std::path::Path::new(path)).unwrap();
    let env =
        json!([{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "MODE", "value": "prod"}]);
    let spec = json!({"containers": [{"name": "app", "env": env}], "initContainers": [{"name": "init", "env": env}]});
    let template = json!({"template": {"spec": spec}});
    let cases = [
        (
            "pods",
            "",
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}, "spec": spec}),
        ),
        (
            "replicationcontrollers",
            "",
            json!({"kind": "ReplicationController", "apiVersion": "v1", "metadata": {"name": "r"}, "spec": template}),
        ),
        (
            "replicasets",
            "apps",
            json!({"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": {"name": "r"}, "spec": template}),
        ),
        (
            "deployments",
            "apps",
            json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"}, "spec": template}),
        ),
        (
            "cronjobs",
            "batch",
            json!({"kind": "CronJob", "apiVersion": "batch/v1", "metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": template}}}),
        ),
    ];
    for (resource, api_group, object) in cases {
        let t = Target {
            resource,
            api_group,
            ..target(resource)
        };
        let input = serde_json::to_vec(&object).unwrap();
        let (out, n) = run(policy.masker(), &t, JSON, &input).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("hunter2"), "{resource}: {text}");
        assert!(text.contains("prod"), "{resource}: {text}");
        assert_eq!(n, 2, "{resource}: the app's and the init container's");
    }
}
