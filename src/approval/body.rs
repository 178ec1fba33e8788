//! A held request's body, read before it is held: the reviewer sees the object or the
//! patch being approved, and a grant covers only that same body.
//!
//! Without it, an AccessRequest for a `create` said only "create rolebindings in
//! default": the reviewer approved blind, and the grant then let the same caller create
//! any RoleBinding there until it ended.

use bytes::Bytes;
use http::{header, HeaderMap};
use serde_json::Value;

use super::Error;
use crate::mask::{Masker, Target};
use crate::request_info::RequestInfo;

/// The largest body held for review: an AccessRequest is an object in etcd (objects are
/// capped at 1.5 MiB there), and a reviewer reads it.
pub const MAX_REVIEWED: usize = 256 * 1024;

/// A held request's body: the bytes to forward once approved (and that its key is
/// made of), and what the AccessRequest shows of them.
pub struct Reviewed {
    pub bytes: Bytes,
    /// `None` for an empty body.
    pub shown: Option<Value>,
    /// Values masked in `shown`: the body holds something the reviewer does not see.
    pub masked: u64,
}

/// The bytes are the body as sent, unmasked: `Debug` shows their size and what the
/// reviewer sees.
impl std::fmt::Debug for Reviewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewed")
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .field("shown", &self.shown)
            .field("masked", &self.masked)
            .finish()
    }
}

/// Reads the body whole (up to [`MAX_REVIEWED`]) and parses it for the reviewer, masked
/// by `masker` as a response holding it would be (a Secret's values, and what the
/// policy's masking rules cover). A body a reviewer could not read (compressed, not
/// JSON or YAML) is refused rather than approved blind.
pub async fn read<B>(
    body: B,
    headers: &HeaderMap,
    info: &RequestInfo,
    masker: &Masker,
) -> Result<Reviewed, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(Error::Unreviewable(format!(
                "its body is sent with Content-Encoding {:?}; send it uncompressed",
                String::from_utf8_lossy(enc.as_bytes())
            )));
        }
    }
    let bytes = crate::body::read_limited(body, MAX_REVIEWED)
        .await
        .map_err(|e| match e {
            crate::body::ReadError::TooLarge => Error::BodyTooLarge { max: MAX_REVIEWED },
            crate::body::ReadError::Failed(why) => {
                Error::Unreviewable(format!("its body could not be read: {why}"))
            }
        })?;
    let (shown, masked) = if bytes.is_empty() {
        (None, 0)
    } else {
        // Parsed first (YAML and protobuf too), then masked as the JSON it is shown as.
        let value = parse(&bytes, headers)?;
        let unmasked = serde_json::to_vec(&value).map_err(|e| {
            Error::Unreviewable(format!("its body could not be shown as JSON ({e})"))
        })?;
        let (shown, masked) = masker
            .mask_sent(&Target::of(info), &unmasked)
            .map_err(|e| Error::Unreviewable(format!("its body could not be masked ({e})")))?;
        (Some(shown), masked)
    };
    Ok(Reviewed {
        bytes,
        shown,
        masked,
    })
}

/// JSON (objects and every patch type), YAML for server-side apply, or the protobuf of
/// the objects kubectl's typed clients create.
fn parse(bytes: &[u8], headers: &HeaderMap) -> Result<Value, Error> {
    let kind = crate::headers::media_type(headers);
    let yaml = kind.ends_with("yaml");
    if kind.contains("protobuf") {
        // kubectl's typed clients send protobuf: decoded for the reviewer as the
        // sandbox decodes it; a type the decoder does not know is refused.
        return crate::protobuf::decode_strict(bytes).map_err(|why| {
            Error::Unreviewable(format!(
                "its protobuf body could not be decoded for review ({why}); send it as JSON"
            ))
        });
    }
    let parsed = if yaml {
        // `<<` merge keys expanded as the API server's YAML decoder expands them: the
        // reviewer sees (and the masker masks) what will be applied.
        serde_yaml::from_slice::<serde_yaml::Value>(bytes)
            .and_then(|mut v| v.apply_merge().map(|()| v))
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
    } else {
        serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string())
    };
    parsed.map_err(|why| {
        Error::Unreviewable(format!(
            "its body is not valid {} ({why})",
            if yaml { "YAML" } else { "JSON" }
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::Full;

    use crate::mask::MARKER;

    fn info(resource: &str) -> RequestInfo {
        crate::request_info::resolve(
            &http::Method::POST,
            &format!("/api/v1/namespaces/default/{resource}")
                .parse()
                .unwrap(),
        )
        .unwrap()
    }

    fn headers(kind: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(kind).unwrap());
        h
    }

    async fn reviewed(body: &str, kind: &str, resource: &str) -> Result<Reviewed, Error> {
        read(
            Full::new(Bytes::from(body.to_owned())),
            &headers(kind),
            &info(resource),
            &Masker::builtin(),
        )
        .await
    }

    #[tokio::test]
    async fn the_reviewer_sees_the_object_and_the_key_tells_bodies_apart() {
        let a = reviewed(
            r#"{"metadata":{"name":"a"}}"#,
            "application/json",
            "configmaps",
        )
        .await
        .unwrap();
        let b = reviewed(
            r#"{"metadata":{"name":"b"}}"#,
            "application/json",
            "configmaps",
        )
        .await
        .unwrap();
        assert_eq!(a.shown.as_ref().unwrap()["metadata"]["name"], "a");
        let who = crate::identity::Subject::default();
        let info = info("configmaps");
        assert_ne!(
            super::super::request_key(&who, &info, &[], Some(&a.bytes), false).unwrap(),
            super::super::request_key(&who, &info, &[], Some(&b.bytes), false).unwrap()
        );
        assert_eq!(a.bytes, r#"{"metadata":{"name":"a"}}"#);
        let apply = reviewed(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            "application/apply-patch+yaml",
            "configmaps",
        )
        .await
        .unwrap();
        assert_eq!(apply.shown.unwrap()["metadata"]["name"], "c");
        let empty = reviewed("", "application/json", "configmaps")
            .await
            .unwrap();
        assert!(empty.shown.is_none());
    }

    #[tokio::test]
    async fn secret_values_never_reach_the_access_request() {
        let secret = r#"{"kind":"Secret","metadata":{"name":"s","annotations":{
            "kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{\"k\":\"c2VjcmV0\"}}"}},
            "data":{"k":"c2VjcmV0"},"stringData":{"p":"hunter2"},"type":"Opaque"}"#;
        let shown = reviewed(secret, "application/json", "secrets")
            .await
            .unwrap()
            .shown
            .unwrap();
        let text = shown.to_string();
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("hunter2"),
            "{text}"
        );
        // As a client reading the Secret would see it: still base64.
        assert_eq!(shown["data"]["k"], "Y2hhcGVyb25lOm1hc2tlZA==");
        assert_eq!(shown["stringData"]["p"], MARKER);
        assert_eq!(shown["metadata"]["name"], "s");
        let patch = r#"[{"op":"replace","path":"/data/k","value":"c2VjcmV0"}]"#;
        let shown = reviewed(patch, "application/json-patch+json", "secrets")
            .await
            .unwrap()
            .shown
            .unwrap();
        assert_eq!(shown[0]["value"], MARKER);
        assert_eq!(shown[0]["path"], "/data/k");
    }

    #[tokio::test]
    async fn the_policy_masking_rules_apply_to_what_reviewers_see() {
        let masker = Masker::compile(&[crate::mask::Rule {
            resources: vec!["configmaps".into()],
            fields: vec!["data.*".into()],
            key_regex: Some("(?i)password".into()),
            ..Default::default()
        }])
        .unwrap();
        // YAML (server-side apply) is masked as the JSON it is shown as.
        let apply =
            "kind: ConfigMap\nmetadata: {name: app}\ndata: {db_password: hunter2, mode: fast}\n";
        let reviewed = read(
            Full::new(Bytes::from_static(apply.as_bytes())),
            &headers("application/apply-patch+yaml"),
            &info("configmaps"),
            &masker,
        )
        .await
        .unwrap();
        let shown = reviewed.shown.unwrap();
        assert_eq!(shown["data"]["db_password"], MARKER);
        assert_eq!(shown["data"]["mode"], "fast");
        // What is forwarded once approved is what was sent.
        assert_eq!(reviewed.bytes, apply);
    }

    #[tokio::test]
    async fn yaml_merge_keys_are_expanded_before_the_reviewer_sees_them() {
        // A merged-in value is a Secret's value like any other: masked.
        let apply = "kind: Secret\nmetadata: {name: s}\nx-shared: &creds {password: hunter2}\ndata:\n  <<: *creds\n  user: YWRtaW4=\n";
        let shown = reviewed(apply, "application/apply-patch+yaml", "secrets")
            .await
            .unwrap()
            .shown
            .unwrap();
        assert_eq!(shown["data"]["password"], "Y2hhcGVyb25lOm1hc2tlZA==");
        assert!(shown["data"].get("<<").is_none(), "{shown}");
        // Explicit keys win over merged ones, as in the API server's decoder.
        let apply = "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  <<: {mode: admin, other: x}\n  mode: view\n";
        let shown = reviewed(apply, "application/apply-patch+yaml", "configmaps")
            .await
            .unwrap()
            .shown
            .unwrap();
        assert_eq!(shown["data"]["mode"], "view");
        assert_eq!(shown["data"]["other"], "x");
    }

    #[tokio::test]
    async fn a_body_a_reviewer_could_not_read_is_refused() {
        for (body, kind, want) in [
            ("{not json", "application/json", "not valid JSON"),
            (
                "k8s\0...",
                "application/vnd.kubernetes.protobuf",
                "protobuf body could not be decoded",
            ),
            (
                "- not: [yaml",
                "application/apply-patch+yaml",
                "not valid YAML",
            ),
        ] {
            let e = reviewed(body, kind, "configmaps").await.unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.status().code, 415, "{e}");
        }
        let mut h = headers("application/json");
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let e = read(
            Full::new(Bytes::from_static(b"x")),
            &h,
            &info("configmaps"),
            &Masker::builtin(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("Content-Encoding \"gzip\""), "{e}");
        let big = "x".repeat(MAX_REVIEWED + 1);
        let e = reviewed(&big, "application/json", "configmaps")
            .await
            .unwrap_err();
        assert_eq!(e.status().code, 413, "{e}");
    }
}
