//! The audit event: Kubernetes `audit.k8s.io/v1` `Event`, so tools that read the API
//! server's audit log read chaperone's too, with chaperone's decision in `annotations`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Annotation keys chaperone adds to every event.
pub mod annotation {
    pub const DECISION: &str = "chaperone.dev/decision";
    pub const RULE: &str = "chaperone.dev/rule";
    pub const REASON: &str = "chaperone.dev/reason";
    pub const MASKED_FIELDS: &str = "chaperone.dev/masked-fields";
    pub const MODE: &str = "chaperone.dev/mode";
    pub const ISSUER: &str = "chaperone.dev/issuer";
    pub const POD: &str = "chaperone.dev/pod";
    pub const TRACE_ID: &str = "chaperone.dev/trace-id";
    pub const LATENCY_MS: &str = "chaperone.dev/latency-ms";
    pub const ERROR: &str = "chaperone.dev/error";
    pub const SPAN_ID: &str = "chaperone.dev/span-id";
    pub const PARENT_SPAN_ID: &str = "chaperone.dev/parent-span-id";
    pub const METHOD: &str = "chaperone.dev/method";
    /// How an `approve` rule's review went: held, approved by ..., denied, pending.
    pub const APPROVAL: &str = "chaperone.dev/approval";
    /// The AccessRequest that holds (or held, or granted) the request.
    pub const ACCESS_REQUEST: &str = "chaperone.dev/access-request";
    pub const BREAK_GLASS: &str = "chaperone.dev/break-glass";
}

/// `audit.k8s.io/v1` `Event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `Event` (constants, as every event chaperone writes carries the same two).
    pub kind: Cow<'static, str>,
    /// `audit.k8s.io/v1`.
    pub api_version: Cow<'static, str>,
    pub level: Level,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    /// Shared with the caller's cached identity: not copied per request.
    pub user: Arc<User>,
    #[serde(rename = "sourceIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The request body, at level `Request` and above (JSON bodies within the cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_object: Option<serde_json::Value>,
    /// The response body as the caller got it (masked), at level `RequestResponse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<serde_json::Value>,
    /// RFC 3339 with microseconds, as the API server writes them.
    pub request_received_timestamp: String,
    pub stage_timestamp: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
    /// How long each stage took, as child spans of the request's span in OTLP. Not
    /// part of `audit.k8s.io/v1`, so never in the JSONL recording.
    #[serde(skip)]
    pub stages: Vec<StageSpan>,
}

/// An event's annotations: chaperone's own keys are constants, so recording them
/// allocates only their values.
pub type Annotations = BTreeMap<Cow<'static, str>, Cow<'static, str>>;

/// The stages of the request path that get a span of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Authenticate,
    Authorize,
    Approve,
    /// From sending the request to the API server until its response headers.
    Upstream,
}

impl Step {
    /// How many steps there are (their discriminants index per-step arrays); derived
    /// from the last variant, so adding a step cannot leave the arrays short.
    pub const COUNT: usize = Step::Upstream as usize + 1;

    pub fn name(self) -> &'static str {
        match self {
            Step::Authenticate => "authenticate",
            Step::Authorize => "authorize",
            Step::Approve => "approve",
            Step::Upstream => "upstream",
        }
    }
}

/// One stage of the request path (authenticate, authorize, approve, upstream) as a
/// span: its own ID, and when it started and ended (Unix nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpan {
    pub step: Step,
    pub span_id: [u8; 8],
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Whether it failed (the request was refused or failed in this stage).
    pub failed: bool,
}

/// How much of a request is recorded, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum Level {
    #[default]
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Recorded before the response exists: a request held for a reviewer's approval.
    RequestReceived,
    /// Headers sent, body still streaming (watches, logs, exec): emitted at once so a
    /// long-running request is on record while it runs.
    ResponseStarted,
    ResponseComplete,
    Panic,
}

/// `authentication/v1` `UserInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct User {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The `Status` summary the API server records: the code always, the rest on failure.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResponseStatus {
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub code: u16,
}

/// RFC 3339 UTC with microseconds: `2026-11-25T13:40:00.123456Z`. Written digit by
/// digit: two per event, and `format!` spent more on them than on authorising the
/// request.
pub fn timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut out = String::with_capacity(27);
    // Years before 0 or after 9999 do not occur in a clock reading; clamped, not wrapped.
    let year = u32::try_from(t.year()).unwrap_or(0).min(9999);
    digits(&mut out, year, 4);
    out.push('-');
    digits(&mut out, u32::from(u8::from(t.month())), 2);
    out.push('-');
    digits(&mut out, u32::from(t.day()), 2);
    out.push('T');
    digits(&mut out, u32::from(t.hour()), 2);
    out.push(':');
    digits(&mut out, u32::from(t.minute()), 2);
    out.push(':');
    digits(&mut out, u32::from(t.second()), 2);
    out.push('.');
    digits(&mut out, t.microsecond(), 6);
    out.push('Z');
    out
}

/// Appends `n` as exactly `width` decimal digits, zero-padded (the lowest `width`
/// digits if `n` is longer).
pub(crate) fn digits(out: &mut String, n: u32, width: u32) {
    for place in (0..width).rev() {
        let d = (n / 10u32.pow(place)) % 10;
        out.push(char::from(b'0' + d as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_the_api_servers() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_764_078_000_123_456_789).unwrap();
        assert_eq!(timestamp(t), "2025-11-25T13:40:00.123456Z");
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(0).unwrap();
        assert_eq!(timestamp(t), "1970-01-01T00:00:00.000000Z");
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1798761599999999999).unwrap();
        assert_eq!(timestamp(t), "2026-12-31T23:59:59.999999Z");
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1770084306000007000)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(timestamp(t), "2026-02-03T02:05:06.000007Z");
    }

    #[test]
    fn serialises_with_kubernetes_field_names() {
        let event = Event {
            kind: "Event".into(),
            api_version: "audit.k8s.io/v1".into(),
            level: Level::Metadata,
            audit_id: "id".into(),
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/pods".into(),
            verb: "list".into(),
            user: Default::default(),
            source_ips: vec!["127.0.0.1".into()],
            user_agent: String::new(),
            object_ref: Some(ObjectRef {
                resource: "pods".into(),
                api_version: "v1".into(),
                ..Default::default()
            }),
            response_status: Some(ResponseStatus {
                code: 200,
                ..Default::default()
            }),
            request_object: None,
            response_object: None,
            request_received_timestamp: "t0".into(),
            stage_timestamp: "t1".into(),
            annotations: BTreeMap::new(),
            stages: Vec::new(),
        };
        let v = serde_json::to_value(&event).unwrap();
        for key in [
            "auditID",
            "requestURI",
            "sourceIPs",
            "objectRef",
            "responseStatus",
            "requestReceivedTimestamp",
            "stageTimestamp",
        ] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
        assert_eq!(v["objectRef"]["apiVersion"], "v1");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, event);
    }
}
