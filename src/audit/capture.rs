//! Keeps a copy of a body for the audit record (levels `Request` and
//! `RequestResponse`), up to a cap, while the body streams on unchanged. A request
//! body's copy is masked when the record is made, as a response holding it would be:
//! a Secret created or patched is recorded with its values masked. Neither copy keeps
//! a token handed on (`TokenRequest`, `TokenReview`: `mask::credentials`).

use crate::sync::Locked;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::mask::{Masker, Target};
use crate::request_info::RequestInfo;

/// The most of one body an audit event keeps.
pub const MAX_RECORDED_BODY: usize = 64 * 1024;

/// What was seen of a body: unmasked, so its `Debug` shows sizes only.
#[derive(Default)]
struct Seen {
    kept: BytesMut,
    total: usize,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("kept", &format_args!("{} bytes", self.kept.len()))
            .field("total", &self.total)
            .finish()
    }
}

/// The shared copy, read when the event is made.
#[derive(Debug, Clone)]
pub struct Capture {
    seen: Arc<Mutex<Seen>>,
    content_type: String,
    of: Of,
}

/// What a copy is the body of, which decides how it is masked when the record is made.
#[derive(Debug, Clone)]
pub enum Of {
    /// A request's: masked by the masking rules in force when the request came, as a
    /// response holding it would be.
    Request {
        masker: Masker,
        info: Arc<RequestInfo>,
    },
    /// The response to a request, masked as it streamed: only tokens it hands on are
    /// masked in the copy.
    Response { info: Arc<RequestInfo> },
}

/// What the record says about a captured body.
pub enum Recorded {
    /// The body as JSON.
    Object(serde_json::Value),
    /// Why it is not in the record (too large, not JSON, empty).
    Omitted(String),
}

impl Capture {
    pub fn recorded(&self) -> Recorded {
        // A proxied request's body, and its answer, are a service's own (or, through
        // another group's proxy, another cluster's): chaperone knows no rule to mask a
        // copy of a service's by, and keeps none of either.
        let (Of::Request { info, .. } | Of::Response { info }) = &self.of;
        if info.subresource == "proxy" {
            return Recorded::Omitted(
                "not recorded: a proxied service's body, which chaperone does not mask".into(),
            );
        }
        let seen = self.seen.locked();
        if seen.total == 0 {
            return Recorded::Omitted("empty".into());
        }
        if seen.total > MAX_RECORDED_BODY {
            return Recorded::Omitted(format!(
                "not recorded: {} bytes, over the {MAX_RECORDED_BODY}-byte cap",
                seen.total
            ));
        }
        // A copy that cannot be masked (not JSON) is not kept.
        let parsed = match &self.of {
            Of::Response { info } => serde_json::from_slice(&seen.kept).ok().map(|mut v| {
                crate::mask::credentials(&Target::of(info), &mut v);
                mask_status_messages(&mut v);
                v
            }),
            Of::Request { masker, info } => masker
                .mask_sent(&Target::of(info), &seen.kept)
                .ok()
                .map(|(masked, _)| masked),
        };
        match parsed {
            Some(v) => Recorded::Object(v),
            None => Recorded::Omitted(format!(
                "not recorded: {} bytes of {}",
                seen.total,
                if self.content_type.is_empty() {
                    "unknown content"
                } else {
                    &self.content_type
                }
            )),
        }
    }
}

/// The detectors applied to a `Status`'s messages, as to the `responseStatus` beside it:
/// an admission webhook's refusal may quote what it refused, and the masker passes a
/// `Status` through as it is.
fn mask_status_messages(v: &mut serde_json::Value) {
    if v["kind"] != "Status" {
        return;
    }
    let mask = |m: &mut serde_json::Value| {
        if let Some(masked) = m
            .as_str()
            .and_then(|s| crate::mask::mask_text(s.as_bytes()))
        {
            *m = String::from_utf8_lossy(&masked).into_owned().into();
        }
    };
    if let Some(m) = v.get_mut("message") {
        mask(m);
    }
    if let Some(causes) = v
        .pointer_mut("/details/causes")
        .and_then(|c| c.as_array_mut())
    {
        for cause in causes {
            if let Some(m) = cause.get_mut("message") {
                mask(m);
            }
        }
    }
}

/// Wraps `body` so its bytes are copied (up to the cap) into the returned capture,
/// which masks them as what they are `of` when read.
pub fn tee(body: Body, content_type: &str, of: Of) -> (Body, Capture) {
    let capture = Capture {
        seen: Arc::new(Mutex::new(Seen::default())),
        content_type: content_type.to_owned(),
        of,
    };
    let body = Body::new(Tee {
        inner: body,
        seen: capture.seen.clone(),
    });
    (body, capture)
}

struct Tee {
    inner: Body,
    seen: Arc<Mutex<Seen>>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let mut seen = self.seen.locked();
                seen.total += data.len();
                let room = MAX_RECORDED_BODY.saturating_sub(seen.kept.len());
                let take = room.min(data.len());
                seen.kept.extend_from_slice(&data[..take]);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn response() -> Of {
        let path = "/api/v1/namespaces/default/serviceaccounts/default/token";
        Of::Response {
            info: Arc::new(
                crate::request_info::resolve(&http::Method::POST, &path.parse().unwrap()).unwrap(),
            ),
        }
    }

    /// A failure's `Status` kept at `RequestResponse` has the detectors applied to its
    /// messages, as its `responseStatus` does.
    #[tokio::test]
    async fn a_status_kept_for_the_record_is_masked_like_its_response_status() {
        let status = br#"{"kind":"Status","status":"Failure","message":"denied: env AWS_KEY=AKIAIOSFODNN7EXAMPLE","details":{"causes":[{"message":"key AKIAIOSFODNN7EXAMPLE is not allowed"}]},"code":403}"#;
        let (body, capture) = tee(
            crate::body::full(&status[..]),
            "application/json",
            response(),
        );
        body.collect().await.unwrap();
        let Recorded::Object(v) = capture.recorded() else {
            panic!("a Status is recorded");
        };
        let text = v.to_string();
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"), "{text}");
        assert!(text.contains("denied: env AWS_KEY="), "{text}");
    }

    #[tokio::test]
    async fn keeps_json_within_the_cap_and_says_why_otherwise() {
        let cases: Vec<(Vec<u8>, &str, Result<serde_json::Value, &str>)> = vec![
            (
                br#"{"kind":"ConfigMap"}"#.to_vec(),
                "application/json",
                Ok(serde_json::json!({"kind": "ConfigMap"})),
            ),
            (
                vec![0x6b, 0x38, 0x73, 0x00],
                "application/vnd.kubernetes.protobuf",
                Err("4 bytes of application/vnd.kubernetes.protobuf"),
            ),
            (Vec::new(), "application/json", Err("empty")),
            (
                vec![b' '; MAX_RECORDED_BODY + 1],
                "application/json",
                Err("over the 65536-byte cap"),
            ),
        ];
        for (bytes, kind, want) in cases {
            let (body, capture) = tee(crate::body::full(bytes.clone()), kind, response());
            let passed = body.collect().await.unwrap().to_bytes();
            assert_eq!(passed, bytes, "the body passes unchanged");
            match (capture.recorded(), want) {
                (Recorded::Object(v), Ok(w)) => assert_eq!(v, w),
                (Recorded::Omitted(why), Err(w)) => assert!(why.contains(w), "{why}"),
                (_, w) => panic!("unexpected for {kind}: wanted {w:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_request_body_is_recorded_masked_and_forwarded_as_sent() {
        let info = |path: &str| {
            Arc::new(
                crate::request_info::resolve(&http::Method::POST, &path.parse().unwrap()).unwrap(),
            )
        };
        let masking = |path: &str| Of::Request {
            masker: Masker::builtin(),
            info: info(path),
        };
        let secret =
            br#"{"kind":"Secret","metadata":{"name":"db"},"stringData":{"password":"hunter2"}}"#;
        let (body, capture) = tee(
            crate::body::full(secret.to_vec()),
            "application/json",
            masking("/api/v1/namespaces/default/secrets"),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), &secret[..]);
        let Recorded::Object(v) = capture.recorded() else {
            panic!("not recorded")
        };
        assert_eq!(v["stringData"]["password"], crate::mask::MARKER);
        assert_eq!(v["metadata"]["name"], "db");
        // A proxied service's bodies, which no rule masks, are not kept either way.
        for of in [
            masking("/api/v1/namespaces/default/services/app:8080/proxy/login"),
            Of::Response {
                info: info("/api/v1/namespaces/default/services/app:8080/proxy/login"),
            },
        ] {
            let sent = br#"{"user":"admin","password":"hunter2"}"#;
            let (body, capture) = tee(crate::body::full(sent.to_vec()), "application/json", of);
            assert_eq!(body.collect().await.unwrap().to_bytes(), &sent[..]);
            assert!(matches!(
                capture.recorded(),
                Recorded::Omitted(why) if why.contains("a proxied service's body")
            ));
        }
        // What cannot be masked is not recorded.
        let (body, capture) = tee(
            crate::body::full(b"{\"stringData\": {\"password\": \"hun".to_vec()),
            "application/json",
            masking("/api/v1/namespaces/default/secrets"),
        );
        body.collect().await.unwrap();
        assert!(
            matches!(capture.recorded(), Recorded::Omitted(why) if why.contains("not recorded"))
        );
        // A response is recorded as the caller got it, less a token handed on.
        let answer = br#"{"kind":"TokenRequest","status":{"token":"eyJhbGciOi.eyJzdWIiOi.c2ln"}}"#;
        let (body, capture) = tee(
            crate::body::full(answer.to_vec()),
            "application/json",
            response(),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), &answer[..]);
        let Recorded::Object(v) = capture.recorded() else {
            panic!("not recorded")
        };
        assert_eq!(v["status"]["token"], crate::mask::MARKER);
    }
}
