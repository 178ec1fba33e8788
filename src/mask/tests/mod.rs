//! Table tests: bodies driven through [`apply`] as a client would read them.

mod json;
mod lines;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

use super::*;
use crate::body::BoxError;

pub(super) const B64: &str = "Y2hhcGVyb25lOm1hc2tlZA==";

pub(super) fn headers(content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    h
}

pub(super) fn target<'a>(resource: &'a str) -> Target<'a> {
    Target {
        resource,
        namespace: "default",
        ..Target::default()
    }
}

pub(super) fn body_of(chunks: Vec<Vec<u8>>) -> Body {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// Reads a body to its end: the bytes, or the error it ended with.
pub(super) async fn collect(mut body: Body) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// Splits `input` into chunks of the given sizes (cycled).
pub(super) fn chunks(input: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < input.len() {
        let n = sizes[k % sizes.len()].max(1).min(input.len() - i);
        out.push(input[i..i + n].to_vec());
        i += n;
        k += 1;
    }
    out
}

/// Masks `input` fed as `pieces`; returns output and count.
pub(super) async fn run_chunks(
    masker: &Masker,
    t: &Target<'_>,
    content_type: &str,
    pieces: Vec<Vec<u8>>,
) -> Result<(Vec<u8>, u64), String> {
    let plan = masker.plan(t, &headers(content_type));
    let count = Arc::new(AtomicU64::new(0));
    let out = collect(apply(body_of(pieces), plan, count.clone())).await?;
    Ok((out, count.load(Ordering::Relaxed)))
}

/// Masks `input` whole, then in 1-byte and in uneven chunks, checks all three agree, and
/// returns the output and the count.
pub(super) async fn run(
    masker: &Masker,
    t: &Target<'_>,
    content_type: &str,
    input: &[u8],
) -> Result<(Vec<u8>, u64), String> {
    let whole = run_chunks(masker, t, content_type, vec![input.to_vec()]).await;
    for sizes in [&[1usize][..], &[7, 1, 64, 3, 1000, 2]] {
        let split = run_chunks(masker, t, content_type, chunks(input, sizes)).await;
        assert_eq!(split, whole, "chunks {sizes:?} differ from the whole body");
    }
    whole
}

pub(super) fn defaults() -> Masker {
    Masker::compile(&[]).unwrap()
}

pub(super) fn value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("invalid JSON out ({e}): {}", String::from_utf8_lossy(bytes)))
}

pub(super) fn secret(name: &str) -> Value {
    json!({
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration":
                    "{\"apiVersion\":\"v1\",\"data\":{\"password\":\"aHVudGVyMg==\"}}",
                "meta.helm.sh/release-name": "team-a"
            }
        },
        "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="},
        "type": "Opaque"
    })
}

#[test]
fn rule_errors_name_the_rule_and_field() {
    let ok = Rule {
        resources: vec!["configmaps".into()],
        fields: vec!["data.*".into()],
        ..Rule::default()
    };
    let cases = [
        (
            Rule {
                key_regex: Some("(".into()),
                ..ok.clone()
            },
            "key_regex",
        ),
        (
            Rule {
                name_regex: Some("[".into()),
                ..ok.clone()
            },
            "name_regex",
        ),
        (
            Rule {
                fields: vec!["data..x".into()],
                ..ok.clone()
            },
            "fields",
        ),
        (
            Rule {
                detectors: vec!["nope".into()],
                ..ok.clone()
            },
            "detectors",
        ),
        (
            Rule {
                patterns: vec!["a(".into()],
                ..ok.clone()
            },
            "patterns",
        ),
        (
            Rule {
                resources: vec![],
                ..ok.clone()
            },
            "resources",
        ),
        (
            Rule {
                fields: vec![],
                ..ok.clone()
            },
            "fields",
        ),
    ];
    for (bad, field) in cases {
        let err = Masker::compile(&[ok.clone(), bad]).unwrap_err();
        match &err {
            Error::Rule {
                rule: 1, field: f, ..
            } if *f == field => {}
            other => panic!("{field}: {other:?}"),
        }
        assert_eq!(err.status().code, 500);
    }
}

#[test]
fn plans() {
    let m = Masker::compile(&[Rule {
        resources: vec!["configmaps".into()],
        fields: vec!["data.*".into()],
        ..Rule::default()
    }])
    .unwrap();
    let json = headers("application/json");
    let is = |t: Target<'_>, h: &HeaderMap| match m.plan(&t, h) {
        Plan::PassThrough => "pass",
        Plan::MaskJson(_) => "json",
        Plan::MaskLines(_) => "lines",
        Plan::Refuse(_) => "refuse",
    };
    assert_eq!(is(Target::default(), &json), "pass"); // discovery
    assert_eq!(is(target("pods"), &json), "pass");
    assert_eq!(is(target("deployments"), &json), "pass");
    assert_eq!(is(target("secrets"), &json), "json");
    assert_eq!(is(target("configmaps"), &json), "json");
    assert_eq!(
        is(
            target("secrets"),
            &headers("application/json;as=Table;v=v1;g=meta.k8s.io")
        ),
        "json"
    );
    let crd = Target {
        api_group: "example.com",
        ..target("widgets")
    };
    assert_eq!(is(crd, &json), "json");
    let log = Target {
        subresource: "log",
        ..target("pods")
    };
    assert_eq!(is(log, &headers("text/plain")), "lines");
    assert_eq!(is(log, &HeaderMap::new()), "lines");
    assert_eq!(is(log, &headers("application/json")), "json");
    let exec = Target {
        subresource: "exec",
        ..target("pods")
    };
    assert_eq!(is(exec, &HeaderMap::new()), "pass");
    let service_proxy = Target {
        subresource: "proxy",
        ..target("services")
    };
    assert_eq!(is(service_proxy, &json), "pass");
    // Another group's `proxy` (an aggregated API reaching another cluster) answers API
    // objects: read, and masked as any.
    let cluster_proxy = Target {
        api_group: "cluster.karmada.io",
        subresource: "proxy",
        ..target("clusters")
    };
    assert_eq!(is(cluster_proxy, &json), "json");
    assert_eq!(
        is(
            cluster_proxy,
            &headers("application/vnd.kubernetes.protobuf")
        ),
        "refuse"
    );
    for ct in [
        "application/vnd.kubernetes.protobuf",
        "application/cbor",
        "application/yaml",
        "text/plain",
    ] {
        let plan = m.plan(&target("secrets"), &headers(ct));
        let Plan::Refuse(e) = plan else {
            panic!("{ct}: {plan:?}")
        };
        assert_eq!(e.status().code, 406, "{ct}");
        assert!(e.to_string().contains("application/json"));
    }
    let mut gz = json.clone();
    gz.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    assert!(matches!(
        m.plan(&target("secrets"), &gz),
        Plan::Refuse(Error::Encoding { .. })
    ));
    assert!(matches!(
        m.plan(&log, &gz),
        Plan::Refuse(Error::Encoding { .. })
    ));
    // A coding in a second header line, or second in a list, is as good as the first.
    let mut later = headers("text/plain");
    later.append(
        header::CONTENT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    later.append(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let mut listed = headers("text/plain");
    listed.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static("identity, gzip"),
    );
    for encoded in [later, listed] {
        assert!(
            matches!(m.plan(&log, &encoded), Plan::Refuse(Error::Encoding { .. })),
            "{encoded:?}"
        );
    }
    let mut identity = headers("text/plain");
    identity.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static("Identity"),
    );
    assert_eq!(is(log, &identity), "lines");
    let watch = m.plan(
        &target("secrets"),
        &headers("application/json;stream=watch"),
    );
    assert!(matches!(
        watch,
        Plan::MaskJson(JsonPlan { watch: true, .. })
    ));
}

#[test]
fn plan_fixes_content_length() {
    let mut h = headers("application/json");
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let plan = defaults().plan(&target("secrets"), &h);
    plan.fix_headers(&mut h);
    assert!(h.get(header::CONTENT_LENGTH).is_none());
    let mut h2 = headers("application/json");
    h2.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    defaults().plan(&target("pods"), &h2).fix_headers(&mut h2);
    assert!(h2.get(header::CONTENT_LENGTH).is_some());
}

#[tokio::test]
async fn refuse_plan_never_passes_the_body() {
    let plan = defaults().plan(
        &target("secrets"),
        &headers("application/vnd.kubernetes.protobuf"),
    );
    let body = apply(body_of(vec![b"k8s\0secret".to_vec()]), plan, Arc::default());
    let err = collect(body).await.unwrap_err();
    assert!(err.contains("cannot inspect"), "{err}");
}

#[test]
fn masker_is_shareable() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Masker>();
    shareable::<JsonPlan>();
    shareable::<LinePlan>();
    fn sendable<T: Send + 'static>() {}
    sendable::<Plan>();
}

#[test]
fn errors_map_to_statuses() {
    let e = Error::InvalidJson {
        offset: 3,
        reason: "x",
    };
    assert_eq!(e.status().code, 502);
    assert_eq!(Error::TooLarge { limit: 1 }.status().code, 502);
}

/// The built-in detectors are compiled once, on first use: a rule naming all of them (in
/// any order) scans with the very scanner logs are scanned with; one naming fewer has
/// its own.
#[test]
fn a_rule_naming_every_builtin_detector_shares_the_scanner_of_logs() {
    let rule = |detectors: Vec<String>| {
        let rule = Rule {
            resources: vec!["configmaps".into()],
            detectors,
            ..Rule::default()
        };
        rules::Compiled::new(0, &rule).unwrap()
    };
    let every = rule(DETECTORS.iter().rev().map(|s| s.to_string()).collect());
    let one = rule(vec!["jwt".into()]);
    let shared = builtin_scanner().unwrap();
    assert!(Arc::ptr_eq(
        every.scanner.as_ref().unwrap().get().unwrap(),
        shared
    ));
    assert!(!Arc::ptr_eq(
        one.scanner.as_ref().unwrap().get().unwrap(),
        shared
    ));
}

/// A built-in resource's Table prints the API server's own columns, none of which shows
/// an env value, arguments, data values or annotations: a rule masking only those keeps
/// its Tables (kubernetes-mcp-server prints pods from one). A rule masking a field a
/// column may show, or any field of a custom resource (whose printer columns may print
/// anything), has objects answered instead.
#[test]
fn tables_are_kept_unless_a_column_could_show_a_masked_field() {
    let rule = |resources: &[&str], field: &str| Rule {
        resources: resources.iter().map(|r| (*r).to_owned()).collect(),
        fields: vec![field.to_owned()],
        ..Rule::default()
    };
    let env = Masker::compile(&[rule(
        &["pods", "widgets"],
        "spec.containers[*].env[*].value",
    )])
    .unwrap();
    let pods = target("pods");
    let widgets = Target {
        api_group: "example.com",
        ..target("widgets")
    };
    assert!(!env.masks_fields_of(&pods));
    assert!(env.masks_fields_of(&widgets));
    let ip = Masker::compile(&[rule(&["pods"], "status.podIP")]).unwrap();
    assert!(ip.masks_fields_of(&pods));
    let config = Masker::compile(&[rule(&["configmaps"], "data.*")]).unwrap();
    assert!(!config.masks_fields_of(&target("configmaps")));
}
