//! Records a request's event when its response body ends.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tokio::task::JoinHandle;

use super::event::{annotation, Stage};
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
        pending: Some((recorder, trail, code, on_end)),
        recording: None,
    })
}

struct Completion {
    inner: Body,
    pending: Option<(Arc<Recorder>, Trail, u16, OnEnd)>,
    /// The event being queued as the body ends, and what to return once it is: the
    /// last frame waits for the queue, so with `overflow: block` a full queue holds the
    /// response back (its last data frame included, since with a Content-Length the
    /// client needs no end-of-stream) instead of growing without bound. Dropped, the
    /// wait goes on without it.
    recording: Option<(JoinHandle<()>, After)>,
}

/// What a body yields once its event is queued.
enum After {
    End,
    Error(BoxError),
    Frame(Frame<Bytes>),
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
        recorder.queue(trail.into_event(Stage::ResponseComplete, code, None))
    }
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
                return Poll::Ready(match self.recording.take().map(|(_, after)| after) {
                    Some(After::Frame(f)) => Some(Ok(f)),
                    Some(After::Error(e)) => Some(Err(e)),
                    Some(After::End) | None => None,
                });
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(None) => match self.record(None) {
                    Some(waiting) => self.recording = Some((waiting, After::End)),
                    None => return Poll::Ready(None),
                },
                Poll::Ready(Some(Err(e))) => match self.record(Some(e.to_string())) {
                    Some(waiting) => self.recording = Some((waiting, After::Error(e))),
                    None => return Poll::Ready(Some(Err(e))),
                },
                Poll::Ready(Some(Ok(frame))) if self.inner.is_end_stream() => {
                    match self.record(None) {
                        Some(waiting) => self.recording = Some((waiting, After::Frame(frame))),
                        None => return Poll::Ready(Some(Ok(frame))),
                    }
                }
                other => return other,
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
