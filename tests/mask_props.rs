//! Properties of the masking transform over generated JSON and logs, fed in random chunks.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use chaperone::body::{Body, BoxError};
use chaperone::mask::{apply, Masker, Rule, Target, DETECTORS, MARKER};
use http::{header, HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;

#[path = "support/cases.rs"]
mod cases;
use serde_json::{Map, Value};

fn config() -> ProptestConfig {
    let cases = cases::cases(500);
    ProptestConfig {
        cases,
        // `nothing_to_mask_leaves_identical_bytes` sets aside about one input in ten; a
        // deep run must not stop at proptest's default bound of 1,024 set aside.
        max_global_rejects: cases.max(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Keys that steer the masker (object nodes, Secret fields, env), mixed with random ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "data", "stringData", "items", "rows", "object", "metadata", "annotations", "name",
            "namespace", "env", "value", "spec", "cells", "type",
            "kubectl.kubernetes.io/last-applied-configuration",
        ])
        .prop_map(str::to_string),
        2 => "[a-zA-Z<>&\"\\\\é]{0,6}",
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,12}",
        "[a-z0-9é\n\t\"\\\\\u{2028}😀]{0,8}",
        Just("AKIAIOSFODNN7EXAMPLE".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| {
                let mut m = Map::new();
                for (k, v) in kv {
                    m.insert(k, v);
                }
                Value::Object(m)
            }),
            prop::sample::select(vec!["Secret", "ConfigMap", "Pod", "List", "Table"])
                .prop_map(|k| serde_json::json!({ "kind": k })),
        ]
    })
}

/// A body of `input` cut at the given (sorted, deduplicated) offsets.
fn body(input: &[u8], cuts: &[usize]) -> Body {
    let mut pieces = Vec::new();
    let mut last = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts.into_iter().chain([input.len()]) {
        if c > last {
            pieces.push(Ok::<_, BoxError>(Frame::data(Bytes::copy_from_slice(
                &input[last..c],
            ))));
            last = c;
        }
    }
    StreamBody::new(futures_util::stream::iter(pieces)).boxed()
}

fn mask(
    m: &Masker,
    t: &Target<'_>,
    content_type: &str,
    input: &[u8],
    cuts: &[usize],
) -> Result<Vec<u8>, String> {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    let plan = m.plan(t, &h);
    let out = apply(body(input, cuts), plan, Arc::new(AtomicU64::new(0)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move {
        let collected = out.collect().await.map_err(|e| e.to_string())?;
        Ok(collected.to_bytes().to_vec())
    })
}

/// A secret of each kind the built-in detectors find by its shape alone.
fn detected_secret() -> impl Strategy<Value = String> {
    prop_oneof![
        "AKIA[A-Z0-9]{16}",
        "ghp_[A-Za-z0-9]{36}",
        "xox[bp]-[0-9]{10,12}-[A-Za-z0-9]{10,12}",
        "eyJ[A-Za-z0-9_-]{10,20}\\.eyJ[A-Za-z0-9_-]{10,20}\\.[A-Za-z0-9_-]{10,20}",
    ]
}

/// Same structure: only string values may differ.
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(_), Value::String(_)) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_shape(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_shape(v, w)))
        }
        _ => a == b,
    }
}

/// Compiled once: regex compilation dominates a case otherwise.
static EVERYTHING: LazyLock<Masker> = LazyLock::new(everything);
static DEFAULTS: LazyLock<Masker> = LazyLock::new(|| Masker::compile(&[]).unwrap());

fn everything() -> Masker {
    Masker::compile(&[
        Rule {
            resources: vec!["*".into()],
            detectors: DETECTORS.iter().map(|s| s.to_string()).collect(),
            ..Rule::default()
        },
        Rule {
            resources: vec!["configmaps".into(), "widgets".into()],
            fields: vec![
                "data.*".into(),
                "spec.env[*].value".into(),
                "metadata.annotations".into(),
            ],
            key_regex: Some("a".into()),
            name_regex: Some("(?i)key".into()),
            ..Rule::default()
        },
    ])
    .unwrap()
}

fn widgets() -> Target<'static> {
    Target {
        resource: "widgets",
        api_group: "example.com",
        ..Target::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn output_is_valid_json_of_the_same_shape(
        v in json_value(),
        pretty in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let input = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        for resource in ["secrets", "widgets"] {
            let t = Target { resource, ..widgets() };
            let out = mask(&EVERYTHING, &t, "application/json", &input, &cuts).unwrap();
            // Compare with the input as parsed (floats do not round-trip exactly).
            let (v, w): (Value, Value) = (serde_json::from_slice(&input).unwrap(), serde_json::from_slice(&out).unwrap());
            prop_assert!(same_shape(&v, &w), "{} -> {}", v, w);
        }
    }

    #[test]
    fn watch_streams_keep_their_shape(
        events in prop::collection::vec(json_value(), 0..5),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut input = Vec::new();
        let events: Vec<Value> = events.iter().map(|e| serde_json::from_slice(&serde_json::to_vec(e).unwrap()).unwrap()).collect();
        for e in &events {
            input.extend(serde_json::to_vec(&serde_json::json!({"type": "ADDED", "object": e})).unwrap());
            input.push(b'\n');
        }
        let t = Target { resource: "secrets", is_watch: true, ..Target::default() };
        let out = mask(&EVERYTHING, &t, "application/json", &input, &cuts).unwrap();
        let outs: Vec<Value> = serde_json::Deserializer::from_slice(&out)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(outs.len(), events.len());
        for (e, o) in events.iter().zip(&outs) {
            let event = serde_json::json!({"type": "ADDED", "object": e});
            prop_assert!(same_shape(&event, o), "{} -> {}", event, o);
        }
    }

    #[test]
    fn where_the_body_is_cut_never_changes_what_comes_out(
        items in prop::collection::vec(json_value(), 0..6),
        shape in 0..3u8,
        corrupt in prop::option::of((any::<usize>(), prop::sample::select(b"\"{}[],:\\ x0".to_vec()))),
        cuts in prop::collection::vec(any::<usize>(), 1..10),
    ) {
        // A List (its items are units of their own), a bare array, or a watch stream;
        // perhaps with one byte changed, so that invalid input is cut too.
        let mut input = match shape {
            0 => serde_json::to_vec(&serde_json::json!({"kind": "SecretList", "metadata": {}, "items": items})).unwrap(),
            1 => serde_json::to_vec(&items).unwrap(),
            _ => items.iter().flat_map(|e| {
                let mut line = serde_json::to_vec(&serde_json::json!({"type": "ADDED", "object": e})).unwrap();
                line.push(b'\n');
                line
            }).collect(),
        };
        if let Some((at, byte)) = corrupt {
            if !input.is_empty() {
                let at = at % input.len();
                input[at] = byte;
            }
        }
        let t = Target { resource: "secrets", is_watch: shape == 2, ..Target::default() };
        let whole = mask(&EVERYTHING, &t, "application/json", &input, &[]);
        let cut = mask(&EVERYTHING, &t, "application/json", &input, &cuts);
        // Byte for byte the same, or the same error at the same offset.
        prop_assert_eq!(cut, whole);
    }

    #[test]
    fn nothing_to_mask_leaves_identical_bytes(
        v in json_value(),
        pretty in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let input = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        // Only the built-in Secret rule, on a custom resource: nothing of a Secret applies
        // unless a node says `kind: Secret`.
        prop_assume!(!input.windows(8).any(|w| w.eq_ignore_ascii_case(b"\"secret\"")));
        let out = mask(&DEFAULTS, &widgets(), "application/json", &input, &cuts).unwrap();
        prop_assert_eq!(out, input);
    }

    #[test]
    fn detected_secrets_never_leave_json(
        v in json_value(),
        secret in detected_secret(),
        around in "[ a-z]{0,6}",
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let doc = serde_json::json!({"kind": "Widget", "spec": {"x": v, "y": format!("{around} {secret} {around}")}});
        let input = serde_json::to_vec(&doc).unwrap();
        let out = mask(&EVERYTHING, &widgets(), "application/json", &input, &cuts).unwrap();
        prop_assert!(!String::from_utf8_lossy(&out).contains(&secret));
    }

    #[test]
    fn secret_data_never_leaves(
        values in prop::collection::vec("[A-Za-z0-9+/]{16,40}", 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        sorted in any::<bool>(),
    ) {
        let items: Vec<Value> = values.iter().enumerate().map(|(i, v)| {
            serde_json::json!({"metadata": {"name": format!("s{i}")}, "data": {"k": v}, "type": "Opaque"})
        }).collect();
        let list = serde_json::json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items});
        let mut input = serde_json::to_vec(&list).unwrap();
        if sorted {
            // Envelope keys after the items, as a sorted-key writer puts them.
            let m: std::collections::BTreeMap<String, Value> = serde_json::from_value(list).unwrap();
            input = serde_json::to_vec(&m).unwrap();
        }
        let t = Target { resource: "secrets", ..Target::default() };
        let out = mask(&DEFAULTS, &t, "application/json", &input, &cuts).unwrap();
        let text = String::from_utf8_lossy(&out);
        for v in &values {
            prop_assert!(!text.contains(v.as_str()));
        }
    }

    #[test]
    fn logs_come_out_the_same_however_they_are_cut(
        lines in prop::collection::vec(prop_oneof![
            4 => "[ -~]{0,40}",
            1 => Just("token AKIAIOSFODNN7EXAMPLE end".to_string()),
            1 => Just("-----BEGIN PRIVATE KEY-----".to_string()),
            1 => Just("-----END PRIVATE KEY-----".to_string()),
            1 => "password=[a-z]{1,12}",
        ], 0..10),
        long in prop::option::weighted(0.1, 0..64usize),
        trailing_newline in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 1..10),
    ) {
        let mut input = lines.join("\n");
        if let Some(extra) = long {
            // A line past the longest kept whole, a secret where it is cut.
            input.push('\n');
            input.push_str(&"x".repeat(chaperone::mask::MAX_LINE - 10 + extra));
            input.push_str("AKIAIOSFODNN7EXAMPLE");
        }
        if trailing_newline {
            input.push('\n');
        }
        let t = Target { resource: "pods", subresource: "log", ..Target::default() };
        let whole = mask(&DEFAULTS, &t, "text/plain", input.as_bytes(), &[]);
        let cut = mask(&DEFAULTS, &t, "text/plain", input.as_bytes(), &cuts);
        prop_assert_eq!(cut, whole);
    }

    #[test]
    fn detected_secrets_never_leave_logs(
        lines in prop::collection::vec("[ -~]{0,40}", 0..6),
        secret in detected_secret(),
        at in any::<usize>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut lines = lines;
        let at = at % (lines.len() + 1);
        lines.insert(at, format!("token {secret} end"));
        let input = lines.join("\n");
        let t = Target { resource: "pods", subresource: "log", ..Target::default() };
        let out = mask(&DEFAULTS, &t, "text/plain", input.as_bytes(), &cuts).unwrap();
        let text = String::from_utf8(out).unwrap();
        prop_assert!(!text.contains(&secret));
        prop_assert!(text.contains(MARKER));
        prop_assert_eq!(text.matches('\n').count(), input.matches('\n').count());
    }

    #[test]
    fn secret_data_never_leaves_however_its_keys_are_escaped(
        values in prop::collection::vec("[A-Za-z0-9+/]{16,40}", 1..4),
        escapes in prop::collection::vec(0..3u8, 64),
        string_data in any::<bool>(),
        by_kind in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Every name chaperone reads (`kind`, `Secret`, `data`/`stringData`, `items`)
        // written with some characters as `\u00XX` escapes: the same names to the API
        // server.
        let mut at = 0;
        let mut name = |text: &str| {
            let mut out = String::new();
            for c in text.chars() {
                at += 1;
                match escapes[at % escapes.len()] {
                    0 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    _ => out.push(c),
                }
            }
            out
        };
        let field = name(if string_data { "stringData" } else { "data" });
        let (kind, secret) = (name("kind"), name("Secret"));
        let items: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!(r#"{{"{kind}":"{secret}","metadata":{{"name":"s{i}"}},"{field}":{{"k":"{v}"}}}}"#))
            .collect();
        let input = format!(
            r#"{{"{}":"SecretList","apiVersion":"v1","metadata":{{}},"{}":[{}]}}"#,
            name("kind"),
            name("items"),
            items.join(",")
        );
        // Known by the resource asked for, or (a List of a custom resource's) by its kind.
        let t = if by_kind { widgets() } else { Target { resource: "secrets", ..Target::default() } };
        let out = mask(&DEFAULTS, &t, "application/json", input.as_bytes(), &cuts).unwrap();
        let read: Value = serde_json::from_slice(&out).unwrap();
        for v in &values {
            prop_assert!(!read.to_string().contains(v.as_str()), "{}", read);
        }
    }

    #[test]
    fn secret_data_never_leaves_a_secret_that_names_its_keys_twice(
        values in prop::collection::vec("[A-Za-z0-9+/]{16,40}", 1..5),
        fields in prop::collection::vec(any::<bool>(), 5),
        extra in prop::collection::vec(0..4u8, 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Each value in its own copy of `data` or `stringData`, with copies of
        // `metadata` and `kind` between them: the API server merges them all.
        let mut members = vec![r#""kind":"Secret""#.to_owned(), r#""apiVersion":"v1""#.to_owned()];
        for (i, v) in values.iter().enumerate() {
            let field = if fields[i % fields.len()] { "stringData" } else { "data" };
            members.push(format!(r#""{field}":{{"k{i}":"{v}"}}"#));
            match extra.get(i) {
                Some(0) => members.push(r#""metadata":{"name":"s"}"#.to_owned()),
                Some(1) => members.push(r#""kind":"Secret""#.to_owned()),
                Some(2) => members.push(r#""metadata":{"labels":{"a":"b"}}"#.to_owned()),
                _ => {}
            }
        }
        let input = format!("{{{}}}", members.join(","));
        let t = Target { resource: "secrets", ..Target::default() };
        // As a response, and as a body kept for the record.
        let out = mask(&DEFAULTS, &t, "application/json", input.as_bytes(), &cuts).unwrap();
        let text = String::from_utf8_lossy(&out);
        let (kept, n) = DEFAULTS.mask_sent(&t, input.as_bytes()).unwrap();
        prop_assert_eq!(n, values.len() as u64);
        for v in &values {
            prop_assert!(!text.contains(v.as_str()), "{}", text);
            prop_assert!(!kept.to_string().contains(v.as_str()), "{}", kept);
        }
    }

    #[test]
    fn detected_secrets_never_leave_json_however_escaped(
        secret in detected_secret(),
        escapes in prop::collection::vec(0..4u8, 64),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Each character as is or as a `\u00XX` escape (either case): the same string to
        // a JSON reader.
        let mut text = String::new();
        for (i, c) in format!("token {secret} end").chars().enumerate() {
            match escapes[i % escapes.len()] {
                0 | 1 => text.push(c),
                2 => text.push_str(&format!("\\u{:04X}", c as u32)),
                _ => text.push_str(&format!("\\u{:04x}", c as u32)),
            }
        }
        let input = format!(r#"{{"kind":"Widget","spec":{{"y":"{text}"}}}}"#);
        let out = mask(&EVERYTHING, &widgets(), "application/json", input.as_bytes(), &cuts).unwrap();
        let read: Value = serde_json::from_slice(&out).unwrap();
        prop_assert!(!read.to_string().contains(&secret), "{}", read);
    }

    #[test]
    fn detected_secrets_never_leave_a_recorded_query(
        secret in detected_secret(),
        around in "[ a-z]{0,6}",
        key in prop::sample::select(vec!["command", "comm%61nd", "x", "container"]),
        escapes in prop::collection::vec(0..3u8, 64),
        stray in prop::sample::select(vec!["", "%", "%z", "%zz", "%4", "%%41"]),
        stray_first in any::<bool>(),
    ) {
        // The value as a client might escape it, byte by byte: as is, `%XX` or `%xx`
        // (`+` or `%20` for a space); with a `%` that starts no escape before or after.
        let value = format!("{around} {secret} {around}");
        let mut sent = String::new();
        for (i, b) in value.bytes().enumerate() {
            match (b, escapes[i % escapes.len()]) {
                (b' ', 0) => sent.push('+'),
                (b' ', _) => sent.push_str("%20"),
                (_, 0) => sent.push(b as char),
                (_, 1) => sent.push_str(&format!("%{b:02X}")),
                _ => sent.push_str(&format!("%{b:02x}")),
            }
        }
        let sent = if stray_first { format!("{stray}{sent}") } else { format!("{sent}{stray}") };
        let query = format!("command=sh&{key}={sent}&stdout=true");
        let out = DEFAULTS.mask_query(&query);
        prop_assert!(out.is_some(), "nothing found in {}", query);
        let out = out.unwrap();
        prop_assert!(!out.contains(&secret), "{}", out);
        for pair in out.split('&') {
            let read = lenient_unescape(pair);
            prop_assert!(!read.contains(&secret), "{} reads {}", pair, read);
        }
    }
}

/// A query piece decoded as a reader of the record might: `%XX` and `+`, any other `%`
/// as it is.
fn lenient_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).and_then(|&c| (c as char).to_digit(16));
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A corrupt number in a List's items reads the same wherever the body is cut: the
/// value ends where the number does, and the byte after it is no `,` or `]`.
#[test]
fn a_corrupt_number_is_the_same_error_at_every_cut() {
    let input = br#"{"items":[-20x704.1713930982,[]],"kind":"SecretList","metadata":{}}"#;
    let t = Target {
        resource: "secrets",
        ..Target::default()
    };
    let whole = mask(&EVERYTHING, &t, "application/json", input, &[]);
    assert_eq!(
        whole,
        Err("upstream sent invalid JSON at byte 13: expected ',' or ']'".to_owned())
    );
    for cut in 0..=input.len() {
        let cut_once = mask(&EVERYTHING, &t, "application/json", input, &[cut]);
        assert_eq!(cut_once, whole, "cut at {cut}");
    }
}

/// A line longer than the longest kept whole is cut at the same place whether its `\n`
/// comes in the same frame or a later one: in a private key block each piece is then one
/// masked line, wherever the body is cut.
#[test]
fn a_long_line_in_a_key_block_is_cut_the_same_wherever_the_body_is_cut() {
    let begin = "-----BEGIN PRIVATE KEY-----\n";
    let long = format!(
        "{}AKIAIOSFODNN7EXAMPLE\n",
        "x".repeat(chaperone::mask::MAX_LINE + 17)
    );
    let input = format!("{begin}{long}after\n");
    let t = Target {
        resource: "pods",
        subresource: "log",
        ..Target::default()
    };
    let whole = mask(&DEFAULTS, &t, "text/plain", input.as_bytes(), &[]);
    // The header's line, the long line's two pieces (the first without a `\n`), `after`.
    let expected = format!("{MARKER}\n{MARKER}{MARKER}\n{MARKER}\n");
    assert_eq!(
        whole.as_deref().map(String::from_utf8_lossy),
        Ok(expected.into())
    );
    let at = begin.len();
    let max = chaperone::mask::MAX_LINE;
    for cut in [
        1,
        at,
        at + 1,
        at + max - 1,
        at + max,
        at + max + 1,
        at + long.len() - 1,
        at + long.len(),
    ] {
        let cut_once = mask(&DEFAULTS, &t, "text/plain", input.as_bytes(), &[cut]);
        assert_eq!(cut_once, whole, "cut at {cut}");
    }
}

/// An object at the unit bound, one byte under or over it, alone or as a List's item,
/// is masked or refused the same whether it comes whole or cut.
#[test]
fn the_unit_bound_is_the_same_however_the_body_is_cut() {
    use chaperone::mask::MAX_UNIT;
    let t = Target {
        resource: "secrets",
        ..Target::default()
    };
    for alone in [true, false] {
        // `{"kind":"Secret","data":{"a":"` + x's + `"}}` is MAX_UNIT + delta bytes.
        let head = r#"{"kind":"Secret","data":{"a":""#;
        let tail = r#""}}"#;
        for delta in [-1i64, 0, 1] {
            let fill = (MAX_UNIT as i64 + delta) as usize - head.len() - tail.len();
            let object = format!("{head}{}{tail}", "x".repeat(fill));
            let input = if alone {
                object
            } else {
                format!(r#"{{"kind":"SecretList","metadata":{{}},"items":[{object}]}}"#)
            };
            let whole = mask(&DEFAULTS, &t, "application/json", input.as_bytes(), &[]);
            for cuts in [
                vec![1],
                vec![MAX_UNIT / 2],
                vec![MAX_UNIT - 1, MAX_UNIT + 1],
                vec![input.len() - 1],
            ] {
                let cut = mask(&DEFAULTS, &t, "application/json", input.as_bytes(), &cuts);
                assert_eq!(
                    cut.as_ref().map(Vec::len).map_err(Clone::clone),
                    whole.as_ref().map(Vec::len).map_err(Clone::clone),
                    "alone {alone}, delta {delta}, cuts {cuts:?}"
                );
                assert!(cut == whole, "alone {alone}, delta {delta}, cuts {cuts:?}");
            }
            // At the bound an object is masked (none of its value left); one byte over
            // it is refused.
            match &whole {
                Ok(out) => assert!(delta <= 0 && !out.contains(&b'x'), "{delta}"),
                Err(e) => assert!(delta > 0 && e.contains("more than"), "{e}"),
            }
        }
    }
}
