//! Records a request's event when its response body ends.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tokio::task::JoinHandle;

use super::event::{annotation, ResponseStatus, Stage};
use super::{Recorder, Trail};
use crate::body::{Body, BoxError};

/// Called once when the response ends (sent whole, failed, or the client gone), with
/// its masked-field total (for metrics); what it holds, such as the caller's place
/// among its requests in flight, is given back with it.
pub type OnEnd = Box<dyn FnOnce(u64) + Send + Sync>;

/// Wraps a response body so the request's event is recorded when the body ends —
/// completely, with an error, or because the client went away.
pub fn on_complete(
    body: Body,
    recorder: Arc<Recorder>,
    trail: Trail,
    code: u16,
    on_end: OnEnd,
) -> Body {
    Body::new(Completion {
        inner: body,
        recording: None,
        // A failure's body is the API server's `Status`: its reason and message go on
        // record (as the API server records its own), not the code alone.
        failure: (code >= 400 && trail.answered_by_the_api_server()).then(Vec::new),
        pending: Some((recorder, trail, code, on_end)),
    })
}

/// The most of a failure's body read for its `Status`; a longer one is no `Status`.
const MAX_STATUS_BODY: usize = 16 << 10;
/// The most of a `Status` message kept on record.
const MAX_STATUS_MESSAGE: usize = 1024;

struct Completion {
    inner: Body,
    pending: Option<(Arc<Recorder>, Trail, u16, OnEnd)>,
    /// The event being queued as the body ends, and what to return once it is: the
    /// last frame waits for the queue, so with `overflow: block` a full queue holds the
    /// response back (its last data frame included, since with a Content-Length the
    /// client needs no end-of-stream) instead of growing without bound. Dropped, the
    /// wait goes on without it.
    recording: Option<(JoinHandle<()>, After)>,
    /// A failure's body so far (up to `MAX_STATUS_BODY`), to read its `Status` from.
    failure: Option<Vec<u8>>,
}

/// What a body yields once its event is queued.
enum After {
    End,
    Error(BoxError),
    Frame(Frame<Bytes>),
}

impl After {
    fn item(self) -> Option<Result<Frame<Bytes>, BoxError>> {
        match self {
            After::End => None,
            After::Error(e) => Some(Err(e)),
            After::Frame(f) => Some(Ok(f)),
        }
    }
}

impl Completion {
    /// Queues the event of the ended body; when a queue is full (and `overflow:
    /// block`), returns the wait for room.
    fn record(&mut self, error: Option<String>) -> Option<JoinHandle<()>> {
        let (recorder, mut trail, code, on_end) = self.pending.take()?;
        if let Some(e) = error {
            trail.note(annotation::ERROR, e);
        }
        on_end(trail.masked_counter().load(Ordering::Relaxed));
        let mut event = trail.into_event(Stage::ResponseComplete, code, None);
        if let Some(status) = self.failure.take().and_then(|b| status_of(&b, code)) {
            event.response_status = Some(status);
        }
        recorder.queue(event)
    }

    /// Keeps what a failure's body holds so far, while it may still be a `Status`.
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if let (Some(kept), Some(data)) = (&mut self.failure, frame.data_ref()) {
            if kept.len() + data.len() > MAX_STATUS_BODY {
                self.failure = None;
            } else {
                kept.extend_from_slice(data);
            }
        }
    }
}

/// The `responseStatus` of a failure whose body is a JSON `Status` with this code.
fn status_of(body: &[u8], code: u16) -> Option<ResponseStatus> {
    #[derive(serde::Deserialize)]
    struct Status {
        kind: String,
        #[serde(default)]
        status: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        reason: String,
    }
    let s: Status = serde_json::from_slice(body).ok()?;
    if s.kind != "Status" {
        return None;
    }
    // An admission webhook's message may quote what it refused: what the detectors
    // find in it is masked, as in every record.
    let mut message = match crate::mask::mask_text(s.message.as_bytes()) {
        Some(masked) => String::from_utf8_lossy(&masked).into_owned(),
        None => s.message,
    };
    if message.len() > MAX_STATUS_MESSAGE {
        message.truncate(crate::text::floor_char_boundary(
            &message,
            MAX_STATUS_MESSAGE,
        ));
        message.push_str("...");
    }
    // `status` and `reason` are words (`Failure`, `NotFound`): anything else is no
    // Status's, and is not kept.
    let word = |w: String| match w.len() <= 64 && w.bytes().all(|b| b.is_ascii_alphanumeric()) {
        true => w,
        false => String::new(),
    };
    Some(ResponseStatus {
        status: word(s.status),
        message,
        reason: word(s.reason),
        code,
        ..ResponseStatus::default()
    })
}

impl http_body::Body for Completion {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some((recording, _)) = &mut self.recording {
                if Pin::new(recording).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                return Poll::Ready(self.recording.take().and_then(|(_, after)| after.item()));
            }
            // The body's end (its last frame, an error, or none) is held back until its
            // event is queued.
            let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
            let (error, after) = match polled {
                None => (None, After::End),
                Some(Err(e)) => (Some(e.to_string()), After::Error(e)),
                Some(Ok(frame)) => {
                    self.keep(&frame);
                    if !self.inner.is_end_stream() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    (None, After::Frame(frame))
                }
            };
            match self.record(error) {
                Some(waiting) => self.recording = Some((waiting, after)),
                None => return Poll::Ready(after.item()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recording.is_none() && self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // The client is gone before the body ended: the event is queued all the same
        // (a wait for room already begun goes on without this body).
        if self.pending.is_some() {
            let why = (!self.inner.is_end_stream())
                .then(|| "the client closed the connection before the response ended".to_owned());
            drop(self.record(why));
        }
    }
}

/// The code an unanswered request is recorded with: nginx's "client closed request",
/// which no API server answers.
pub const CLIENT_CLOSED: u16 = 499;

/// A request's trail while chaperone works on it. Dropped before
/// [`Unanswered::answered`] (the client reset its stream or closed its connection while
/// the request was being decided, held for a reviewer or forwarded), the request is
/// recorded anyway, as unanswered: the API server may have acted on it.
pub struct Unanswered<'a> {
    pub trail: &'a mut Trail,
    recorder: &'a Arc<Recorder>,
    armed: bool,
}

impl<'a> Unanswered<'a> {
    pub fn new(trail: &'a mut Trail, recorder: &'a Arc<Recorder>) -> Unanswered<'a> {
        Unanswered {
            trail,
            recorder,
            armed: true,
        }
    }

    /// The request has its answer: its event is the pipeline's to record.
    pub fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut status = crate::status::Status::failure(
            http::StatusCode::BAD_REQUEST,
            "ClientClosedRequest",
            "the client went away before chaperone answered; if it was forwarded, the API \
             server may have acted on it",
        );
        status.code = CLIENT_CLOSED;
        self.trail.note(
            annotation::ERROR,
            "the client went away before it was answered",
        );
        let event = self
            .trail
            .event(Stage::ResponseComplete, CLIENT_CLOSED, Some(&status));
        // Nothing can wait here: what a full queue leaves is queued from a task.
        drop(self.recorder.queue(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Through a `proxy` subresource a pod, node or service answers, not the API
    /// server: its body is not read for a `Status`.
    #[test]
    fn only_the_api_servers_failures_are_read() {
        let answered_by = |path: &str| {
            let uri: http::Uri = path.parse().unwrap();
            let mut t = Trail::start(
                &http::Method::GET,
                &uri,
                &http::HeaderMap::new(),
                "127.0.0.1:5555".parse().unwrap(),
            );
            let info = crate::request_info::resolve(&http::Method::GET, &uri).unwrap();
            t.info(&Arc::new(info));
            t.answered_by_the_api_server()
        };
        assert!(answered_by("/api/v1/namespaces/default/pods/web"));
        assert!(answered_by("/healthz"));
        assert!(!answered_by(
            "/api/v1/namespaces/default/services/web/proxy/login"
        ));
        assert!(!answered_by(
            "/api/v1/namespaces/default/pods/web:8080/proxy/"
        ));
    }

    #[test]
    fn a_failure_is_recorded_with_its_status() {
        let body = br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" already exists","reason":"AlreadyExists","details":{"name":"x","kind":"pods"},"code":409}"#;
        let s = status_of(body, 409).unwrap();
        assert_eq!(
            (
                s.status.as_str(),
                s.reason.as_str(),
                s.message.as_str(),
                s.code
            ),
            ("Failure", "AlreadyExists", "pods \"x\" already exists", 409)
        );
        // A long message is cut (on a character boundary); anything else is no Status.
        let long = format!(r#"{{"kind":"Status","message":"{}"}}"#, "é".repeat(1000));
        let s = status_of(long.as_bytes(), 422).unwrap();
        assert!(s.message.len() <= MAX_STATUS_MESSAGE + 3 && s.message.ends_with("..."));
        // A credential a webhook quotes is masked.
        let quoted = br#"{"kind":"Status","message":"denied: env AWS_KEY=AKIAIOSFODNN7EXAMPLE is not allowed"}"#;
        let s = status_of(quoted, 403).unwrap();
        assert!(!s.message.contains("AKIAIOSFODNN7EXAMPLE"), "{}", s.message);
        assert!(s.message.contains(crate::mask::MARKER), "{}", s.message);
        // Its status and reason are words, or nothing.
        let odd = br#"{"kind":"Status","status":"Failure","reason":"token abc.def"}"#;
        let s = status_of(odd, 401).unwrap();
        assert_eq!((s.status.as_str(), s.reason.as_str()), ("Failure", ""));
        for other in [&br#"{"kind":"Pod"}"#[..], b"<html>502</html>", b""] {
            assert_eq!(status_of(other, 502), None);
        }
    }
}
