//! The event's JSON line, written field by field: byte for byte what `serde_json`
//! writes for [`Event`] (the tests hold the two to it), at a fraction of the cost.
//!
//! One event is written per request. Through `serde`, every key went through the
//! string escaper and every value through the generic serializer: more instructions
//! than authorising the request. Here the keys are constants, and a string is checked
//! eight bytes at a time for the three things JSON escapes (`"`, `\` and control
//! characters) before it is copied whole.

use std::borrow::Cow;

use super::event::{Annotations, Event, Level, ObjectRef, ResponseStatus, Stage, User};

/// Appends `event` as one JSON object (no newline).
pub fn write_event(out: &mut Vec<u8>, e: &Event) -> Result<(), serde_json::Error> {
    let mut fields = Fields::new(out);
    string(fields.key(b"kind"), &e.kind);
    string(fields.key(b"apiVersion"), &e.api_version);
    constant(fields.key(b"level"), level(e.level));
    string(fields.key(b"auditID"), &e.audit_id);
    constant(fields.key(b"stage"), stage(e.stage));
    string(fields.key(b"requestURI"), &e.request_uri);
    string(fields.key(b"verb"), &e.verb);
    user(fields.key(b"user"), &e.user);
    if !e.source_ips.is_empty() {
        strings(fields.key(b"sourceIPs"), &e.source_ips);
    }
    if !e.user_agent.is_empty() {
        string(fields.key(b"userAgent"), &e.user_agent);
    }
    if let Some(o) = &e.object_ref {
        object_ref(fields.key(b"objectRef"), o);
    }
    if let Some(s) = &e.response_status {
        response_status(fields.key(b"responseStatus"), s);
    }
    if let Some(v) = &e.request_object {
        serde_json::to_writer(&mut *fields.key(b"requestObject"), v)?;
    }
    if let Some(v) = &e.response_object {
        serde_json::to_writer(&mut *fields.key(b"responseObject"), v)?;
    }
    string(
        fields.key(b"requestReceivedTimestamp"),
        &e.request_received_timestamp,
    );
    string(fields.key(b"stageTimestamp"), &e.stage_timestamp);
    if !e.annotations.is_empty() {
        annotations(fields.key(b"annotations"), &e.annotations);
    }
    fields.end();
    Ok(())
}

/// Appends `event` as one line of a JSONL recording (its JSON object and a newline).
pub fn write_line(out: &mut Vec<u8>, e: &Event) -> std::io::Result<()> {
    write_event(out, e).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

fn annotations(out: &mut Vec<u8>, annotations: &Annotations) {
    out.push(b'{');
    for (i, (k, v)) in annotations.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match k {
            // chaperone's own keys (`Trail::note` takes only `&'static str`):
            // constants, none of which needs escaping.
            Cow::Borrowed(k) => {
                debug_assert!(!k.bytes().any(|b| escape(b).is_some()), "{k}");
                constant(out, k.as_bytes());
            }
            Cow::Owned(k) => string(out, k),
        }
        out.push(b':');
        string(out, v);
    }
    out.push(b'}');
}

/// Appends a constant that needs no escaping as a JSON string.
fn constant(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

fn level(l: Level) -> &'static [u8] {
    match l {
        Level::Metadata => b"Metadata",
        Level::Request => b"Request",
        Level::RequestResponse => b"RequestResponse",
    }
}

fn stage(s: Stage) -> &'static [u8] {
    match s {
        Stage::RequestReceived => b"RequestReceived",
        Stage::ResponseStarted => b"ResponseStarted",
        Stage::ResponseComplete => b"ResponseComplete",
        Stage::Panic => b"Panic",
    }
}

fn user(out: &mut Vec<u8>, u: &User) {
    let mut fields = Fields::new(out);
    if !u.username.is_empty() {
        string(fields.key(b"username"), &u.username);
    }
    if !u.uid.is_empty() {
        string(fields.key(b"uid"), &u.uid);
    }
    if !u.groups.is_empty() {
        strings(fields.key(b"groups"), &u.groups);
    }
    if !u.extra.is_empty() {
        map(
            fields.key(b"extra"),
            u.extra.iter().map(|(k, v)| (k.as_str(), v)),
            |out, v: &Vec<String>| strings(out, v),
        );
    }
    fields.end();
}

fn object_ref(out: &mut Vec<u8>, o: &ObjectRef) {
    let mut fields = Fields::new(out);
    for (key, value) in [
        (&b"resource"[..], &o.resource),
        (b"namespace", &o.namespace),
        (b"name", &o.name),
        (b"apiGroup", &o.api_group),
        (b"apiVersion", &o.api_version),
        (b"subresource", &o.subresource),
    ] {
        if !value.is_empty() {
            string(fields.key(key), value);
        }
    }
    fields.end();
}

fn response_status(out: &mut Vec<u8>, s: &ResponseStatus) {
    let mut fields = Fields::new(out);
    map(
        fields.key(b"metadata"),
        s.metadata.iter().map(|(k, v)| (k.as_str(), v)),
        |o, v: &String| string(o, v),
    );
    for (key, value) in [
        (&b"status"[..], &s.status),
        (b"message", &s.message),
        (b"reason", &s.reason),
    ] {
        if !value.is_empty() {
            string(fields.key(key), value);
        }
    }
    let mut digits = [0u8; 5];
    fields
        .key(b"code")
        .extend_from_slice(crate::status::code_text(s.code, &mut digits).as_bytes());
    fields.end();
}

/// An object's members, each preceded by a comma but the first.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Fields<'a> {
    fn new(out: &'a mut Vec<u8>) -> Fields<'a> {
        out.push(b'{');
        Fields { out, first: true }
    }

    /// Writes `"key":` (keys here are constants that need no escaping).
    fn key(&mut self, key: &[u8]) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

fn strings(out: &mut Vec<u8>, values: &[String]) {
    out.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, v);
    }
    out.push(b']');
}

fn map<'a, V: 'a>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (&'a str, &'a V)>,
    value: impl Fn(&mut Vec<u8>, &V),
) {
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        // Eight bytes at a time while none of them needs escaping.
        if let Some(chunk) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            if !needs_escape(word) {
                at += 8;
                continue;
            }
        }
        let b = bytes[at];
        if let Some(escape) = escape(b) {
            out.extend_from_slice(&bytes[start..at]);
            match escape {
                Escape::Short(c) => out.extend_from_slice(&[b'\\', c]),
                Escape::Unicode => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
            }
            start = at + 1;
        }
        at += 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

enum Escape {
    Short(u8),
    Unicode,
}

/// How JSON (as `serde_json` writes it) escapes byte `b`, if at all.
fn escape(b: u8) -> Option<Escape> {
    Some(match b {
        b'"' => Escape::Short(b'"'),
        b'\\' => Escape::Short(b'\\'),
        0x08 => Escape::Short(b'b'),
        0x0c => Escape::Short(b'f'),
        b'\n' => Escape::Short(b'n'),
        b'\r' => Escape::Short(b'r'),
        b'\t' => Escape::Short(b't'),
        0x00..=0x1f => Escape::Unicode,
        _ => return None,
    })
}

/// Whether any byte of `word` is a control character (< 0x20), `"` or `\`.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte is zero in `x` exactly when the high bit of the same byte is set in
    // `(x - ONES) & !x & HIGHS` (the lowest such byte is exact; any set bit means some
    // byte is zero, which is all this needs). A byte below 0x20: `b - 0x20` borrows.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Annotations, StageSpan, Step};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ours(e: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        write_event(&mut out, e).unwrap();
        out
    }

    fn event() -> Event {
        let mut annotations = Annotations::new();
        annotations.insert(Cow::Borrowed("chaperone.dev/decision"), "allow".into());
        annotations.insert(
            Cow::Borrowed("chaperone.dev/reason"),
            "rule \"read-pods\" allows get on pods \"nginx\" in namespace default".into(),
        );
        annotations.insert(Cow::Owned("x/\u{1}\t\"".into()), "a\\b\n\u{7f}é🚀".into());
        let mut extra = BTreeMap::new();
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec!["mcp-0".into(), "\u{0}\u{1f}".into()],
        );
        let mut metadata = BTreeMap::new();
        metadata.insert("k".into(), "v".into());
        Event {
            kind: Cow::Borrowed("Event"),
            api_version: Cow::Borrowed("audit.k8s.io/v1"),
            level: Level::RequestResponse,
            audit_id: "2b6c4d1e-0c8e-4e8f-9a1b-3c5d7e9f1a2b".into(),
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb".into(),
            verb: "list".into(),
            user: std::sync::Arc::new(User {
                username: "system:serviceaccount:default:mcp".into(),
                uid: "u-1".into(),
                groups: vec!["system:authenticated".into(), "g\"2".into()],
                extra,
            }),
            source_ips: vec!["127.0.0.1".into(), "::1".into()],
            user_agent: "kubectl/v1.32.4 (linux/amd64)".into(),
            object_ref: Some(ObjectRef {
                resource: "pods".into(),
                namespace: "default".into(),
                name: String::new(),
                api_group: String::new(),
                api_version: "v1".into(),
                subresource: "log".into(),
            }),
            response_status: Some(ResponseStatus {
                metadata,
                status: "Failure".into(),
                message: "pods \"x\" is forbidden".into(),
                reason: "Forbidden".into(),
                code: 403,
            }),
            request_object: Some(serde_json::json!({"a": [1, 2.5, null, "x\"y"], "b": {}})),
            response_object: Some(serde_json::json!("masked")),
            request_received_timestamp: "2026-11-25T13:40:00.123456Z".into(),
            stage_timestamp: "2026-11-25T13:40:00.223456Z".into(),
            annotations,
            stages: vec![StageSpan {
                step: Step::Upstream,
                span_id: [1; 8],
                start_unix_nanos: 1,
                end_unix_nanos: 2,
                failed: false,
            }],
        }
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let full = event();
        assert_eq!(
            String::from_utf8(ours(&full)).unwrap(),
            serde_json::to_string(&full).unwrap()
        );
        // Every optional member absent, every code width.
        for code in [0, 7, 42, 200, 65535] {
            let bare = Event {
                user: Default::default(),
                source_ips: vec![],
                user_agent: String::new(),
                object_ref: Some(ObjectRef::default()),
                response_status: Some(ResponseStatus {
                    code,
                    ..Default::default()
                }),
                request_object: None,
                response_object: None,
                annotations: Annotations::new(),
                level: Level::Metadata,
                stage: Stage::RequestReceived,
                ..event()
            };
            assert_eq!(ours(&bare), serde_json::to_vec(&bare).unwrap(), "{code}");
        }
        for (level, stage) in [
            (Level::Request, Stage::ResponseStarted),
            (Level::Metadata, Stage::Panic),
        ] {
            let e = Event {
                level,
                stage,
                object_ref: None,
                response_status: None,
                ..event()
            };
            assert_eq!(ours(&e), serde_json::to_vec(&e).unwrap());
        }
    }

    #[test]
    fn the_word_check_finds_every_byte_that_needs_escaping() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    escape(b).is_some(),
                    "byte {b:#04x} at {at}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in any::<String>()) {
            let mut out = Vec::new();
            string(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }

        #[test]
        fn near_ascii_strings_too(s in "[\\x00-\\x7f\"\\\\é]{0,40}") {
            let mut out = Vec::new();
            string(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
    }
}
