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
    let (shown, masked) = match value {
        None => (None, 0),
        Some(value) => {
            // Masked as the JSON it is shown as.
            let unmasked = serde_json::to_vec(&value).map_err(|e| {
                Error::Unreviewable(format!("its body could not be shown as JSON ({e})"))
            })?;
            let (shown, masked) = masker
                .mask_sent(&Target::of(info), &unmasked)
                .map_err(|e| Error::Unreviewable(format!("its body could not be masked ({e})")))?;
            (Some(shown), masked)
        }
    };
    Ok(Reviewed {
        bytes,
        media_type: crate::headers::media_type(headers),
        shown,
        masked,
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
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
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

/// JSON (objects and every patch type), YAML for server-side apply, or the protobuf of
/// the objects kubectl's typed clients create.
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
    // too: read as JSON, it means exactly what it says.
    match crate::json_once::parse(bytes, true) {
        Ok(v) => return Ok(v),
        Err(e @ crate::json_once::Error::Repeated { .. }) => {
            return Err(Error::Unreviewable(e.to_string()))
        }
        Err(e) if !yaml => return Err(Error::Unreviewable(e.to_string())),
        Err(_) => {}
    }
    // `<<` merge keys expanded as the API server's YAML decoder expands them: the
    // reviewer sees (and the masker masks) what will be applied. Aliases expand too, so
    // the expansion is measured before anything is built. Written out as JSON text
    // before it is read, so that keys YAML tells apart and JSON does not (`true` and
    // `"true"`) are refused as a key named twice, as in a JSON body.
    yaml_within_budget(bytes)
        .and_then(|()| {
            serde_yaml::from_slice::<serde_yaml::Value>(bytes).map_err(|e| e.to_string())
        })
        .and_then(|mut v| v.apply_merge().map(|()| v).map_err(|e| e.to_string()))
        .map_err(|why| Error::Unreviewable(format!("its body is not valid YAML ({why})")))
        .and_then(|v| {
            read_alike_in_yaml_1_1(&v).map_err(Error::Unreviewable)?;
            serde_json::to_vec(&v)
                .map_err(|e| Error::Unreviewable(format!("its body is not valid YAML ({e})")))
        })
        .and_then(|json| {
            crate::json_once::parse(&json, false)
                .map_err(|why| Error::Unreviewable(why.to_string()))
        })
}

/// The API server reads YAML as YAML 1.1 (`sigs.k8s.io/yaml`, from go-yaml v2), where an
/// unquoted `yes`, `on` or `y` is `true`, `off` or `n` is `false`, `0777` is octal (511)
/// and `1_000` is 1000; the YAML 1.2 read here keeps each as the string it is shown as.
/// `hostPID: on` or `runAsUser: 0_0` would be shown as a string and applied as `true`
/// or root. The quoting is not kept in what was read, so such a string is refused
/// quoted or not (JSON, which kubectl sends, is read as JSON above).
fn read_alike_in_yaml_1_1(v: &serde_yaml::Value) -> Result<(), String> {
    use serde_yaml::Value as Y;
    // A word read as a boolean is quoted; a string read as a number is not (it may be a
    // key, a PIN: the message goes on record and into logs), only its length.
    let check = |s: &str| match yaml_1_1_reading(s) {
        Some(what) => {
            let shown = match what {
                "a boolean" => format!("{s:?}"),
                _ => format!("a string of {} characters", s.chars().count()),
            };
            Err(format!(
                "its YAML holds {shown}, which the API server's YAML decoder (YAML 1.1) \
                 reads as {what} where it is unquoted; send the body as JSON"
            ))
        }
        None => Ok(()),
    };
    match v {
        Y::String(s) => check(s),
        Y::Sequence(items) => items.iter().try_for_each(read_alike_in_yaml_1_1),
        Y::Mapping(m) => m.iter().try_for_each(|(k, v)| {
            read_alike_in_yaml_1_1(k)?;
            read_alike_in_yaml_1_1(v)
        }),
        Y::Tagged(t) => read_alike_in_yaml_1_1(&t.value),
        Y::Null | Y::Bool(_) | Y::Number(_) => Ok(()),
    }
}

/// What go-yaml v2 resolves the plain scalar `s` to, when it is not a string.
fn yaml_1_1_reading(s: &str) -> Option<&'static str> {
    const BOOLS: [&str; 16] = [
        "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off",
        "OFF",
    ];
    if BOOLS.contains(&s) {
        return Some("a boolean");
    }
    // Numbers are tried only for scalars that start with a dot (as they are), or with
    // a sign or a digit (with every `_` removed first): go-yaml v2's `resolve`.
    let plain = match s.chars().next()? {
        '.' => std::borrow::Cow::Borrowed(s),
        c if c.is_ascii_digit() || c == '+' || c == '-' => {
            std::borrow::Cow::Owned(s.replace('_', ""))
        }
        _ => return None,
    };
    let unsigned = plain.strip_prefix(['+', '-']).unwrap_or(&plain);
    let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    let integer = [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ]
    .iter()
    .any(|(prefix, radix)| {
        unsigned
            .strip_prefix(prefix)
            .is_some_and(|t| digits(t, *radix))
    }) || digits(unsigned, 10);
    // `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
    let float = || {
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
            None => (unsigned, None),
        };
        let mantissa_ok = match mantissa.split_once('.') {
            Some((whole, frac)) => {
                (whole.is_empty() && digits(frac, 10))
                    || (digits(whole, 10) && (frac.is_empty() || digits(frac, 10)))
            }
            None => digits(mantissa, 10),
        };
        let exponent_ok =
            exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e), 10));
        mantissa_ok && exponent_ok
    };
    (integer || float()).then_some("a number")
}

/// Values a YAML body may expand to (its aliases replayed): as many as it has bytes, so
/// any body without aliases fits, and one that repeats an anchor a thousand times over
/// (a few KiB that would build gigabytes) is refused before anything is built.
const MAX_YAML_VALUES: usize = MAX_REVIEWED;
/// Bytes of scalars a YAML body may expand to.
const MAX_YAML_SCALAR_BYTES: usize = 4 * MAX_REVIEWED;

/// Walks the YAML document as it would be deserialised, counting values and scalar
/// bytes with every alias replayed, and stops at the first past the bounds.
fn yaml_within_budget(bytes: &[u8]) -> Result<(), String> {
    use serde::de::DeserializeSeed;
    let budget = Budget {
        values: std::cell::Cell::new(0),
        scalar_bytes: std::cell::Cell::new(0),
    };
    Expansion(&budget)
        .deserialize(serde_yaml::Deserializer::from_slice(bytes))
        .map_err(|e| e.to_string())
}

struct Budget {
    values: std::cell::Cell<usize>,
    scalar_bytes: std::cell::Cell<usize>,
}

/// One value of the document, counted with what it holds.
#[derive(Clone, Copy)]
struct Expansion<'a>(&'a Budget);

impl Expansion<'_> {
    fn count<E: serde::de::Error>(self, scalar_bytes: usize) -> Result<(), E> {
        let values = self.0.values.get() + 1;
        let bytes = self.0.scalar_bytes.get().saturating_add(scalar_bytes);
        self.0.values.set(values);
        self.0.scalar_bytes.set(bytes);
        if values > MAX_YAML_VALUES || bytes > MAX_YAML_SCALAR_BYTES {
            return Err(E::custom(format!(
                "it expands to more than {MAX_YAML_VALUES} values or \
                 {MAX_YAML_SCALAR_BYTES} bytes of scalars (YAML aliases repeat what they \
                 name); send it without anchors and aliases"
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Expansion<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Expansion<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.count(0)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.count(0)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.count(0)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.count(0)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.count(v.len())
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.count(v.len())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.count(0)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.count(0)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.count(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.count(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!Tag value`): the tag, then the value.
        use serde::de::VariantAccess;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
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
        let shown = reviewer_sees(apply, "application/apply-patch+yaml", "secrets").await;
        assert_eq!(shown["data"]["password"], "Y2hhcGVyb25lOm1hc2tlZA==");
        assert!(shown["data"].get("<<").is_none(), "{shown}");
        // Explicit keys win over merged ones, as in the API server's decoder.
        let apply = "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  <<: {mode: admin, other: x}\n  mode: view\n";
        let shown = reviewer_sees(apply, "application/apply-patch+yaml", "configmaps").await;
        assert_eq!(shown["data"]["mode"], "view");
        assert_eq!(shown["data"]["other"], "x");
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

    /// The reviewer must see what the API server applies. A key named twice in one
    /// object would be shown as its last value, where the API server merges the two:
    /// refused, in JSON and in YAML (where `true` and `"true"` are two keys until the
    /// body becomes JSON).
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
                "kind: ConfigMap\nmetadata: {name: c}\ndata: {true: a, \"true\": b}\n",
                "application/apply-patch+yaml",
                "the key \"true\" twice in one object: the API server",
            ),
            (
                "kind: ConfigMap\nmetadata: {name: c}\nmetadata: {name: d}\n",
                "application/apply-patch+yaml",
                "duplicate entry with key \"metadata\"",
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

    /// YAML 1.1 (the API server's) reads unquoted `on`, `y`, `0777` or `0_0` as a
    /// boolean or a number, YAML 1.2 as strings: such a YAML body is refused. The same
    /// object sent as JSON (as kubectl sends server-side apply) is read as it says.
    #[tokio::test]
    async fn yaml_the_api_server_would_read_as_yaml_1_1_is_refused() {
        for (value, what) in [
            ("on", "a boolean"),
            ("y", "a boolean"),
            ("NO", "a boolean"),
            ("0777", "a number"),
            ("0_0", "a number"),
            ("08", "a number"),
            ("1_000", "a number"),
            ("-0x_1F", "a number"),
            ("1_0.5e+3", "a number"),
            ("\".5\"", "a number"),
            ("\"yes\"", "a boolean"),
        ] {
            let body = format!("kind: Pod\nmetadata: {{name: p}}\nspec: {{hostPID: {value}}}\n");
            let e = reviewed(&body, "application/apply-patch+yaml", "pods")
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(&format!("reads as {what} where it is unquoted")),
                "{text}"
            );
            // A string read as a number may be a key or a PIN: the message, which goes
            // on record, does not quote it.
            let bare = value.trim_matches('"');
            assert_eq!(
                text.contains(&format!("\"{bare}\"")),
                what == "a boolean",
                "{text}"
            );
            assert_eq!(e.status().code, 415);
            // A key too (`on:` is `true:` in YAML 1.1).
            let body = format!("kind: ConfigMap\nmetadata: {{name: c}}\ndata: {{{value}: x}}\n");
            assert!(
                reviewed(&body, "application/apply-patch+yaml", "configmaps")
                    .await
                    .is_err()
            );
        }
        // Strings both read alike, and real booleans and numbers, are shown.
        let fine = "kind: Pod\nmetadata: {name: p}\nspec: {hostPID: true, nodeName: one, \
                    priority: 10, x: [-1.5, .5, 0x1F, 1e3, yesterday, o, _1, 1:2, 2001-12-14, '']}\n";
        let shown = reviewer_sees(fine, "application/apply-patch+yaml", "pods").await;
        assert_eq!(shown["spec"]["hostPID"], true, "{shown}");
        assert_eq!(shown["spec"]["x"][4], "yesterday", "{shown}");
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

    #[tokio::test]
    async fn a_yaml_body_whose_aliases_expand_without_bound_is_refused() {
        // 2,000 values named once and repeated 2,000 times: 12 KiB of YAML that would
        // build four million values (a 256 KiB one, two billion).
        let wide = format!(
            "kind: ConfigMap\nmetadata: {{name: c}}\nx: &a [{}]\ndata: [{}]\n",
            vec!["x"; 2000].join(","),
            vec!["*a"; 2000].join(",")
        );
        // One long string repeated.
        let long = format!(
            "kind: ConfigMap\nmetadata: {{name: c}}\nx: &s \"{}\"\ndata: [{}]\n",
            "y".repeat(100_000),
            vec!["*s"; 20].join(",")
        );
        for body in [wide, long] {
            let began = std::time::Instant::now();
            let e = reviewed(&body, "application/apply-patch+yaml", "configmaps")
                .await
                .unwrap_err();
            assert!(e.to_string().contains("without anchors and aliases"), "{e}");
            assert_eq!(e.status().code, 415, "{e}");
            // Stopped at the bound, not after building the expansion.
            assert!(began.elapsed() < std::time::Duration::from_secs(5));
        }
        // An anchor used a few times, as people write YAML, is shown expanded.
        let fine =
            "kind: ConfigMap\nmetadata: {name: c, labels: &l {app: web}}\nx: *l\ndata: {a: *l}\n";
        let shown = reviewer_sees(fine, "application/apply-patch+yaml", "configmaps").await;
        assert_eq!(shown["x"]["app"], "web", "{shown}");
        assert_eq!(shown["data"]["a"]["app"], "web", "{shown}");
    }
}
