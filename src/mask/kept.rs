//! What the copies chaperone keeps of bodies never hold: the audit record's
//! `requestObject` and `responseObject`, and the body an AccessRequest shows its
//! reviewers. The API server and the caller get the bodies as they are sent.
//!
//! A body sent *to* the API server (an object created or replaced, a patch) is masked as
//! a response holding it would be (the built-in Secret rule and the policy's rules,
//! matched by its `kind` and by the requested resource). A JSON patch (an array of
//! operations) has paths that are not the object's: when any rule covers the request's
//! resource, namespace and name, every operation's `value` is masked, its keys kept.
//!
//! Either way, credentials that must reach their recipient but never a record are
//! masked in the copy ([`credentials`]): the token a `TokenRequest` answers with
//! (`kubectl create token`), and the one a `TokenReview` asks about.

use bytes::BytesMut;
use serde_json::Value;

use super::unit::{Context, Part, Units};
use super::{Error, Masker, Target, MARKER};

impl Masker {
    /// `json` masked for keeping, and the number of values masked. Invalid JSON is an
    /// error: nothing of a body that cannot be inspected is to be kept.
    pub fn mask_sent(&self, target: &Target<'_>, json: &[u8]) -> Result<(Value, u64), Error> {
        let (masked, n) = self.mask_sent_json(target, json)?;
        let mut value: Value = serde_json::from_slice(&masked).map_err(|_| Error::InvalidJson {
            offset: 0,
            reason: "not valid JSON",
        })?;
        let more = credentials(target, &mut value);
        Ok((value, n + more))
    }

    fn mask_sent_json(&self, target: &Target<'_>, json: &[u8]) -> Result<(Vec<u8>, u64), Error> {
        if json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            let covered = self.inner.all().any(|r| {
                r.applies(
                    &[target.resource],
                    target.namespace.as_bytes(),
                    target.name.as_bytes(),
                )
            });
            if covered {
                return json_patch(json);
            }
        }
        let ctx = Context {
            resource: target.resource.to_owned(),
            namespace: target.namespace.to_owned(),
            name: target.name.to_owned(),
        };
        let mut out = BytesMut::with_capacity(json.len());
        let n = Units::default().mask(&self.inner, &ctx, json, Part::Whole, &mut out)?;
        Ok((out.to_vec(), n))
    }
}

/// Masks, in an object kept for a record of a request to `target`, the credentials it
/// hands on: a `TokenRequest`'s `status.token` and a `TokenReview`'s `spec.token`,
/// known by the object's `kind` or by the resource (the API server fills in a `kind`
/// a client leaves out). Returns how many.
pub fn credentials(target: &Target<'_>, value: &mut Value) -> u64 {
    let kind = value.get("kind").and_then(Value::as_str);
    let path = match (kind, target.resource, target.subresource) {
        (Some("TokenRequest"), ..) | (_, "serviceaccounts", "token") => "status",
        (Some("TokenReview"), ..) | (_, "tokenreviews", _) => "spec",
        _ => return 0,
    };
    match value.get_mut(path).and_then(|v| v.get_mut("token")) {
        Some(token @ Value::String(_)) => {
            *token = Value::String(MARKER.to_owned());
            1
        }
        _ => 0,
    }
}

/// Every operation's `value` masked, leaf by leaf.
fn json_patch(json: &[u8]) -> Result<(Vec<u8>, u64), Error> {
    let mut ops: Value = serde_json::from_slice(json).map_err(|_| Error::InvalidJson {
        offset: 0,
        reason: "not a valid JSON patch",
    })?;
    let mut n = 0;
    if let Value::Array(ops) = &mut ops {
        for op in ops {
            if let Some(v) = op.get_mut("value") {
                n += mask_leaves(v);
            }
        }
    }
    let out = serde_json::to_vec(&ops).map_err(|_| Error::InvalidJson {
        offset: 0,
        reason: "not a valid JSON patch",
    })?;
    Ok((out, n))
}

/// Every string and number in `value` becomes the marker, its keys kept; returns how
/// many.
fn mask_leaves(value: &mut Value) -> u64 {
    match value {
        Value::Object(map) => map.values_mut().map(mask_leaves).sum(),
        Value::Array(items) => items.iter_mut().map(mask_leaves).sum(),
        Value::Null | Value::Bool(_) => 0,
        _ => {
            *value = Value::String(MARKER.to_owned());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mask::Rule;

    fn target<'a>(resource: &'a str, name: &'a str) -> Target<'a> {
        Target {
            resource,
            namespace: "default",
            name,
            ..Target::default()
        }
    }

    fn masked(masker: &Masker, target: &Target<'_>, body: Value) -> (Value, u64) {
        masker
            .mask_sent(target, body.to_string().as_bytes())
            .unwrap()
    }

    #[test]
    fn a_secret_sent_is_kept_masked_whatever_the_form() {
        let masker = Masker::builtin();
        let created = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"p\":\"czNjcjN0\"}}"}},
            "data": {"p": "czNjcjN0"},
            "stringData": {"q": "s3cr3t"}
        });
        let (kept, n) = masked(&masker, &target("secrets", ""), created);
        let text = kept.to_string();
        assert!(
            !text.contains("czNjcjN0") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert_eq!(kept["metadata"]["name"], "db");
        assert_eq!(n, 3);
        // A merge patch has no kind: the requested resource decides.
        let (kept, _) = masked(
            &masker,
            &target("secrets", "db"),
            json!({"data": {"p": "czNjcjN0"}}),
        );
        assert!(!kept.to_string().contains("czNjcjN0"));
        // A JSON patch's values, keys kept so the reviewer sees what changes.
        let (kept, n) = masked(
            &masker,
            &target("secrets", "db"),
            json!([
                {"op": "replace", "path": "/data/p", "value": "czNjcjN0"},
                {"op": "add", "path": "/stringData", "value": {"q": "s3cr3t"}},
                {"op": "remove", "path": "/data/old"}
            ]),
        );
        assert_eq!(
            kept,
            json!([
                {"op": "replace", "path": "/data/p", "value": MARKER},
                {"op": "add", "path": "/stringData", "value": {"q": MARKER}},
                {"op": "remove", "path": "/data/old"}
            ])
        );
        assert_eq!(n, 2);
    }

    #[test]
    fn the_policy_rules_mask_what_is_sent_as_what_is_read() {
        let masker = Masker::compile(&[Rule {
            resources: vec!["configmaps".into()],
            fields: vec!["data.*".into()],
            key_regex: Some("(?i)password".into()),
            ..Rule::default()
        }])
        .unwrap();
        let (kept, n) = masked(
            &masker,
            &target("configmaps", ""),
            json!({"kind": "ConfigMap", "metadata": {"name": "app"},
                   "data": {"db_password": "hunter2", "mode": "fast"}}),
        );
        assert_eq!(kept["data"]["db_password"], MARKER);
        assert_eq!(kept["data"]["mode"], "fast");
        assert_eq!(n, 1);
        // A JSON patch to a covered resource: values masked.
        let (kept, _) = masked(
            &masker,
            &target("configmaps", "app"),
            json!([{"op": "add", "path": "/data/db_password", "value": "hunter2"}]),
        );
        assert_eq!(kept[0]["value"], MARKER);
        // Nothing covers pods: sent as it is kept.
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(masked(&masker, &target("pods", ""), pod.clone()), (pod, 0));
        let patch = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
        assert_eq!(
            masked(&masker, &target("deployments", "web"), patch.clone()),
            (patch, 0)
        );
    }

    #[test]
    fn tokens_handed_on_are_never_kept() {
        let masker = Masker::builtin();
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln", "audiences": ["api"]}});
        let (kept, n) = masked(&masker, &target("tokenreviews", ""), review);
        assert_eq!(kept["spec"]["token"], MARKER);
        assert_eq!(kept["spec"]["audiences"][0], "api");
        assert_eq!(n, 1);
        // Without `kind` (the API server takes it from the path): by the resource.
        let bare = json!({"spec": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln"}});
        let (kept, _) = masked(&masker, &target("tokenreviews", ""), bare.clone());
        assert_eq!(kept["spec"]["token"], MARKER);
        let mut answer = json!({"status": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln"}});
        let token_request = Target {
            subresource: "token",
            ..target("serviceaccounts", "default")
        };
        assert_eq!(credentials(&token_request, &mut answer), 1);
        assert_eq!(answer["status"]["token"], MARKER);
        // The answer to `kubectl create token`, as a response capture keeps it.
        let mut answer = json!({"kind": "TokenRequest", "spec": {"audiences": ["api"]},
            "status": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln", "expirationTimestamp": "2026-11-26T10:00:00Z"}});
        assert_eq!(credentials(&Target::default(), &mut answer), 1);
        assert_eq!(answer["status"]["token"], MARKER);
        assert_eq!(
            answer["status"]["expirationTimestamp"],
            "2026-11-26T10:00:00Z"
        );
        let mut other = json!({"kind": "ConfigMap", "status": {"token": "not a credential here"}});
        assert_eq!(credentials(&target("configmaps", "c"), &mut other), 0);
    }

    #[test]
    fn a_body_that_is_not_json_is_not_kept() {
        let masker = Masker::builtin();
        assert!(masker
            .mask_sent(&target("secrets", ""), b"{\"data\": {\"p\": ")
            .is_err());
        assert!(masker
            .mask_sent(&target("secrets", "db"), b"[{\"op\": ")
            .is_err());
    }
}
