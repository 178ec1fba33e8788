//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a pragmatic
//! strategic merge patch. The latter is a merge patch where the well-known lists of
//! the core types merge by key (containers by name, ports by port, ...) and the
//! directives kubectl emits (`$patch`, `$retainKeys`, `$setElementOrder/…`,
//! `$deleteFromPrimitiveList/…`) are understood rather than stored.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub(crate) fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut t = match target {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            let merged = merge(t.get(k).unwrap_or(&Value::Null), v);
            t.insert(k.clone(), merged);
        }
    }
    Value::Object(t)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into its parent path tokens and last token.
fn split_pointer(path: &str) -> Result<(Vec<String>, String), String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    let mut tokens: Vec<String> = rest.split('/').map(unescape).collect();
    let last = tokens.pop().unwrap_or_default();
    Ok((tokens, last))
}

fn walk<'a>(doc: &'a mut Value, tokens: &[String], path: &str) -> Result<&'a mut Value, String> {
    tokens.iter().try_fold(doc, |cur, t| {
        let next = match cur {
            Value::Object(o) => o.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        };
        next.ok_or_else(|| format!("doc is missing path: \"{path}\": missing value"))
    })
}

fn index(a: &[Value], t: &str, allow_end: bool, path: &str) -> Result<usize, String> {
    if allow_end && t == "-" {
        return Ok(a.len());
    }
    let err = || format!("unable to access invalid index in path \"{path}\"");
    let i = t.parse::<usize>().map_err(|_| err())?;
    let in_range = if allow_end { i <= a.len() } else { i < a.len() };
    if in_range {
        Ok(i)
    } else {
        Err(err())
    }
}

fn get(doc: &Value, path: &str) -> Result<Value, String> {
    if path.is_empty() {
        return Ok(doc.clone());
    }
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| format!("doc is missing path: \"{path}\": missing value"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parents, last) = split_pointer(path)?;
    match walk(doc, &parents, path)? {
        Value::Object(o) => {
            o.insert(last, value);
        }
        Value::Array(a) => {
            let i = index(a, &last, true, path)?;
            a.insert(i, value);
        }
        _ => return Err(format!("doc is missing path: \"{path}\": missing value")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parents, last) = split_pointer(path)?;
    match walk(doc, &parents, path)? {
        Value::Object(o) => o
            .remove(&last)
            .ok_or_else(|| format!("unable to remove nonexistent key: {last}: missing value")),
        Value::Array(a) => {
            let i = index(a, &last, false, path)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("doc is missing path: \"{path}\": missing value")),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub(crate) fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("json patch must be an array of operations")?;
    let mut doc = doc.clone();
    for op in ops {
        let s = |k: &str| op.get(k).and_then(Value::as_str);
        let path = s("path").ok_or("json patch operation is missing \"path\"")?;
        let value = || {
            op.get("value").cloned().ok_or(format!(
                "json patch operation on {path:?} is missing \"value\""
            ))
        };
        match s("op").unwrap_or("") {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                get(&doc, path)?;
                if path.is_empty() {
                    doc = value()?;
                } else {
                    remove(&mut doc, path)?;
                    add(&mut doc, path, value()?)?;
                }
            }
            "move" => {
                let from = s("from").ok_or("move operation is missing \"from\"")?;
                let v = remove(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let from = s("from").ok_or("copy operation is missing \"from\"")?;
                let v = get(&doc, from)?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if get(&doc, path)? != value()? {
                    return Err(format!("testing value {path} failed: test failed"));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(doc)
}

/// The merge key of a list field of the core types, or `None` for atomic lists.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        // Container ports merge on containerPort, Service ports on port.
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        _ => return None,
    })
}

/// Strategic merge patch of `patch` onto `target` (both objects).
pub(crate) fn strategic(target: &Value, patch: &Value) -> Result<Value, String> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            Ok(smp_map(t, p)?.map_or(Value::Null, Value::Object))
        }
        (_, Value::Object(p)) => Ok(smp_map(&Map::new(), p)?.map_or(Value::Null, Value::Object)),
        _ => Err("strategic merge patch must be a JSON object".into()),
    }
}

/// Returns `None` when the patch deletes the whole map (`$patch: delete`).
fn smp_map(
    target: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            return Ok(Some(strip_directives(p)));
        }
        _ => {}
    }
    let mut out = target.clone();
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (out.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), v) {
            (Some(Value::Object(t)), Value::Object(p)) => match smp_map(t, p)? {
                Some(m) => Value::Object(m),
                None => {
                    out.remove(k);
                    continue;
                }
            },
            (None, Value::Object(p)) => match smp_map(&Map::new(), p)? {
                Some(m) => Value::Object(m),
                None => continue,
            },
            (Some(Value::Array(t)), Value::Array(p)) => Value::Array(smp_list(k, t, p)?),
            (None, Value::Array(p)) => Value::Array(smp_list(k, &[], p)?),
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        out.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(Some(out))
}

fn smp_list(field: &str, target: &[Value], patch: &[Value]) -> Result<Vec<Value>, String> {
    if field == "finalizers" {
        // metadata.finalizers is a set (patchStrategy merge): union.
        let mut out = target.to_vec();
        out.extend(patch.iter().filter(|p| !target.contains(p)).cloned());
        return Ok(out);
    }
    let all_objects = patch.iter().all(Value::is_object) && target.iter().all(Value::is_object);
    let Some(key) = merge_key(field, patch).filter(|_| all_objects) else {
        return Ok(patch
            .iter()
            .map(|v| {
                v.as_object()
                    .map_or(v.clone(), |m| Value::Object(strip_directives(m.clone())))
            })
            .collect());
    };
    let mut out: Vec<Value> = target.to_vec();
    for item in patch {
        let Some(obj) = item.as_object() else {
            continue;
        };
        let id = obj.get(key);
        let pos = id.and_then(|id| out.iter().position(|t| t.get(key) == Some(id)));
        match (obj.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                out.remove(i);
            }
            (Some("delete"), None) => {}
            (Some("replace"), Some(i)) => {
                let mut m = obj.clone();
                m.remove("$patch");
                out[i] = Value::Object(strip_directives(m));
            }
            (_, Some(i)) => {
                let cur = out[i].as_object().cloned().unwrap_or_default();
                match smp_map(&cur, obj)? {
                    Some(m) => out[i] = Value::Object(m),
                    None => {
                        out.remove(i);
                    }
                }
            }
            (_, None) => {
                if let Some(m) = smp_map(&Map::new(), obj)? {
                    out.push(Value::Object(m));
                }
            }
        }
    }
    Ok(out)
}

/// Drops `$…` directive keys (recursively) from a map that replaces a value outright.
fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            *inner = strip_directives(std::mem::take(inner));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let p = json!({"a": "z", "c": {"f": null}});
        assert_eq!(merge(&t, &p), json!({"a": "z", "c": {"d": "e"}}));
        assert_eq!(
            merge(&json!({"l": [1, 2]}), &json!({"l": [3]})),
            json!({"l": [3]})
        );
    }

    #[test]
    fn json_patch_ops() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 2, 3]});
        let ops = json!([
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
            {"op": "remove", "path": "/l/0"},
            {"op": "add", "path": "/l/-", "value": 9},
            {"op": "copy", "from": "/metadata/labels/b", "path": "/c"},
            {"op": "move", "from": "/c", "path": "/d"},
            {"op": "test", "path": "/d", "value": "2"},
            {"op": "add", "path": "/metadata/labels/k8s.io~1x", "value": "y"}
        ]);
        let out = json_patch(&doc, &ops).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "x", "b": "2", "k8s.io/x": "y"}}, "l": [2, 3, 9], "d": "2"})
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/l/0", "value": 5}])).is_err());
        assert!(json_patch(
            &doc,
            &json!([{"op": "replace", "path": "/l/7", "value": 5}])
        )
        .is_err());
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                                               {"name": "b", "image": "b:1"}],
                                "tolerations": [{"key": "t"}]}});
        let p = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                                "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                                               {"name": "b", "$patch": "delete"}],
                                "tolerations": [{"key": "u"}]}});
        let out = strategic(&t, &p).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2",
                     "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}],
                     "tolerations": [{"key": "u"}]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let t = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}});
        let p = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"$patch": "replace", "z": "3"}}});
        assert_eq!(
            strategic(&t, &p).unwrap(),
            json!({"metadata": {"finalizers": ["b"], "labels": {"z": "3"}}})
        );
        let p = json!({"spec": {"$retainKeys": ["type"], "type": "Recreate"}});
        let t = json!({"spec": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}});
        assert_eq!(
            strategic(&t, &p).unwrap(),
            json!({"spec": {"type": "Recreate"}})
        );
        let t = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let p = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        assert_eq!(
            strategic(&t, &p).unwrap(),
            json!({"spec": {"ports": [{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443}]}})
        );
    }
}
