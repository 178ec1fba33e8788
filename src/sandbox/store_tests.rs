//! Unit tests of the object store.
use super::*;

fn def(store: &Store, g: &str, v: &str, r: &str) -> ResourceDef {
    store.find(g, v, r).unwrap()
}

fn store_with_ns() -> Store {
    let s = Store::new();
    let ns = def(&s, "", "v1", "namespaces");
    s.create(&ns, json!({"metadata": {"name": "default"}}), false, false)
        .unwrap();
    s
}

#[test]
fn create_sets_metadata_and_rejects_duplicates() {
    let s = store_with_ns();
    let cm = def(&s, "", "v1", "configmaps");
    let o = s
        .create(
            &cm,
            json!({"metadata": {"name": "a", "namespace": "default"}}),
            false,
            false,
        )
        .unwrap();
    assert_eq!(o["kind"], "ConfigMap");
    assert!(o["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(o["metadata"]["resourceVersion"].is_string());
    let e = s
        .create(
            &cm,
            json!({"metadata": {"name": "a", "namespace": "default"}}),
            false,
            false,
        )
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (409, "configmaps \"a\" already exists")
    );
    let e = s
        .create(
            &cm,
            json!({"metadata": {"name": "a", "namespace": "nope"}}),
            false,
            false,
        )
        .unwrap_err();
    assert_eq!(e.message, "namespaces \"nope\" not found");
    let g = s
        .create(
            &cm,
            json!({"metadata": {"generateName": "x-", "namespace": "default"}}),
            false,
            false,
        )
        .unwrap();
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("x-"));
    let d = s
        .create(
            &cm,
            json!({"metadata": {"name": "dry", "namespace": "default"}}),
            true,
            false,
        )
        .unwrap();
    assert_eq!(d["metadata"]["name"], "dry");
    assert!(s.get(&cm, "default", "dry").is_none());
}

#[test]
fn stale_update_conflicts_and_noop_keeps_version() {
    let s = store_with_ns();
    let cm = def(&s, "", "v1", "configmaps");
    let o = s
        .create(
            &cm,
            json!({"metadata": {"name": "a", "namespace": "default"}, "data": {"k": "1"}}),
            false,
            false,
        )
        .unwrap();
    let rv = o["metadata"]["resourceVersion"].clone();
    let (same, _) = s
        .write(&cm, "default", "a", Target::Main, false, |c| {
            Ok(c.unwrap().clone())
        })
        .unwrap();
    assert_eq!(same["metadata"]["resourceVersion"], rv);
    let mut upd = o.clone();
    upd["data"]["k"] = json!("2");
    let (new, _) = s
        .write(
            &cm,
            "default",
            "a",
            Target::Main,
            false,
            |_| Ok(upd.clone()),
        )
        .unwrap();
    assert_ne!(new["metadata"]["resourceVersion"], rv);
    assert!(
        new["metadata"].get("generation").is_none(),
        "configmaps have no generation"
    );
    let e = s
        .write(
            &cm,
            "default",
            "a",
            Target::Main,
            false,
            |_| Ok(upd.clone()),
        )
        .unwrap_err();
    assert_eq!(e.code, 409);
    assert!(e
        .message
        .starts_with("Operation cannot be fulfilled on configmaps \"a\""));
}

#[test]
fn status_writes_touch_only_status() {
    let s = store_with_ns();
    let po = def(&s, "", "v1", "pods");
    s.create(&po, json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": [{"name": "c"}]}}), false, false)
        .unwrap();
    let (o, _) = s
        .write(&po, "default", "p", Target::Status, false, |c| {
            let mut n = c.unwrap().clone();
            n["spec"]["nodeName"] = json!("elsewhere");
            n["status"] = json!({"phase": "Failed"});
            Ok(n)
        })
        .unwrap();
    assert_eq!(o["status"]["phase"], "Failed");
    assert_ne!(o["spec"]["nodeName"], "elsewhere");
    let (o, _) = s
        .write(&po, "default", "p", Target::Main, false, |c| {
            let mut n = c.unwrap().clone();
            n["status"] = json!({"phase": "Succeeded"});
            Ok(n)
        })
        .unwrap();
    assert_eq!(o["status"]["phase"], "Failed");
}

#[test]
fn namespace_delete_cascades_and_watch_replays() {
    let s = store_with_ns();
    let cm = def(&s, "", "v1", "configmaps");
    let ns = def(&s, "", "v1", "namespaces");
    let start = s.resource_version();
    s.create(
        &cm,
        json!({"metadata": {"name": "a", "namespace": "default"}}),
        false,
        false,
    )
    .unwrap();
    s.delete(&ns, "", "default", false).unwrap();
    assert!(s.get(&cm, "default", "a").is_none());
    let w = s.watch(&cm, None, Some(start)).unwrap();
    let kinds: Vec<_> = w
        .replay
        .iter()
        .filter(|e| e.resource == "configmaps")
        .map(|e| e.etype)
        .collect();
    assert_eq!(kinds, [EventType::Added, EventType::Deleted]);
    s.reset_history();
    assert_eq!(
        s.watch(&cm, None, Some(start)).err().map(|e| e.code),
        Some(410)
    );
}

#[test]
fn crds_register_and_unregister() {
    let s = Store::new();
    let crd = def(
        &s,
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
    );
    s.create(
        &crd,
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com",
        "scope": "Cluster", "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true}]}}),
        false,
        false,
    )
    .unwrap();
    let w = def(&s, "example.com", "v1", "widgets");
    s.create(&w, json!({"metadata": {"name": "w1"}}), false, false)
        .unwrap();
    assert_eq!(s.list(&w, None).0.len(), 1);
    s.delete(&crd, "", "widgets.example.com", false).unwrap();
    assert!(s.find("example.com", "v1", "widgets").is_none());
}
