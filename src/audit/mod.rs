//! Records every request — allowed, refused or failed — as an audit event in the shape
//! of Kubernetes `audit.k8s.io/v1` `Event`, delivered through a bounded queue to the
//! configured sinks.
//!
//! A request's [`Trail`] is started when it arrives and filled in by each stage. Its
//! event is recorded when the response is complete: for a streamed body (a watch, a
//! log follow, an exec session) that is when the stream ends, so the event carries the
//! final masked-field count; such requests are also recorded at `ResponseStarted`, so
//! a long-running request is on record while it runs.
//!
//! Past the queue's bound, the configured [`Overflow`] decides: `block` makes requests
//! wait for room (fail closed: nothing goes unrecorded), `drop` discards the event and
//! counts it.

pub mod capture;
pub mod event;
pub mod file;
pub mod otlp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::{Body as _, Frame, SizeHint};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::body::{Body, BoxError};
use crate::request_info::RequestInfo;
use crate::status::Status;
use event::{annotation, Event, Level, ObjectRef, ResponseStatus, Stage, User};

pub use file::Fsync;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open the audit recording {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Otlp(#[from] otlp::Error),
}

/// What happens to an event when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Overflow {
    /// Requests wait until their event has room: nothing is lost, requests slow down.
    #[default]
    Block,
    /// The event is discarded and counted in `chaperone_audit_events_dropped_total`.
    Drop,
}

/// Where events go and how they get there.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The JSONL recording; `-` writes events to standard output.
    pub file: Option<PathBuf>,
    pub max_size: u64,
    pub max_files: u32,
    pub fsync: Fsync,
    pub queue: usize,
    pub overflow: Overflow,
    /// An OpenTelemetry Collector to ship spans and log records to.
    pub otlp: Option<otlp::Settings>,
}

/// Counters the admin port exports.
#[derive(Debug, Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_writes: AtomicU64,
    /// Events accepted by the OTLP collector.
    pub exported: AtomicU64,
    /// Events in a batch being exported (retried while the collector is down).
    pub in_flight: AtomicU64,
    /// Events of ended responses not yet in the queue.
    pub queuing: AtomicU64,
}

/// The sending side of the audit queues (one per sink), shared by every request.
pub struct Recorder {
    sinks: Vec<mpsc::Sender<Arc<Event>>>,
    overflow: Overflow,
    pub counters: Arc<Counters>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("sinks", &self.sinks.len())
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

enum Sink {
    Stdout,
    File(file::Recording),
}

impl Recorder {
    /// Opens the sinks and starts one writer task per sink, each behind its own
    /// bounded queue, so a collector outage does not hold up the local recording.
    pub fn start(settings: &Settings) -> Result<Recorder, Error> {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut sinks = Vec::new();
        let mut writers = Vec::new();
        let local = match &settings.file {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Sink::Stdout),
            Some(path) => Some(Sink::File(
                file::Recording::open(path, settings.max_size, settings.max_files, settings.fsync)
                    .map_err(|source| Error::Open {
                        path: path.clone(),
                        source,
                    })?,
            )),
        };
        if let Some(sink) = local {
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            sinks.push(tx);
            writers.push(tokio::spawn(write_events(
                rx,
                sink,
                counters.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(otlp) = &settings.otlp {
            let exporter = otlp::Exporter::new(otlp)?;
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            sinks.push(tx);
            writers.push(tokio::spawn(export_events(
                rx,
                exporter,
                otlp.batch.max(1),
                counters.clone(),
                stop_rx,
            )));
        }
        Ok(Recorder {
            sinks,
            overflow: settings.overflow,
            counters,
            writers: Mutex::new(writers),
            stop,
        })
    }

    /// Queues one event for every sink, waiting for room or dropping it as configured.
    pub async fn record(&self, event: Event) {
        let event = Arc::new(event);
        for sink in &self.sinks {
            let sent = match self.overflow {
                Overflow::Block => sink.send(event.clone()).await.is_ok(),
                Overflow::Drop => sink.try_send(event.clone()).is_ok(),
            };
            if !sent {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events waiting in the fullest queue.
    pub fn queued(&self) -> usize {
        self.sinks
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .max()
            .unwrap_or(0)
    }

    /// Waits up to `grace` for the queues to drain to the sinks, then stops the writers.
    pub async fn close(&self, grace: Duration) {
        let drained = async {
            while self.queued() > 0
                || self.counters.in_flight.load(Ordering::Relaxed) > 0
                || self.counters.queuing.load(Ordering::Relaxed) > 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                queued = self.queued(),
                "audit queue not drained within the grace period"
            );
        }
        // Writers sync and end on the stop signal; one that does not (an exporter
        // retrying a dead collector) is ended after a short wait.
        self.stop.send_replace(true);
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for mut w in writers {
            if tokio::time::timeout(Duration::from_secs(1), &mut w)
                .await
                .is_err()
            {
                w.abort();
            }
        }
    }
}

async fn write_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut sink: Sink,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            _ = tick.tick() => {
                if let Sink::File(rec) = &mut sink {
                    if let Err(error) = rec.sync_due() {
                        tracing::error!(%error, "failed to sync the audit recording");
                    }
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(first) = event else {
            if let Sink::File(rec) = &mut sink {
                let _ = rec.sync();
            }
            return;
        };
        // Everything already waiting goes out with one write to the OS.
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut failed = None;
        for event in &batch {
            let result = match &mut sink {
                Sink::Stdout => serde_json::to_vec(&**event)
                    .map_err(std::io::Error::other)
                    .and_then(|mut line| {
                        line.push(b'\n');
                        std::io::stdout().lock().write_all(&line)
                    }),
                Sink::File(rec) => rec.append(event),
            };
            if let Err(error) = result {
                failed = Some((error, event.audit_id.clone()));
                break;
            }
        }
        let flushed = match &mut sink {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File(rec) => rec.flush(),
        };
        match (failed, flushed) {
            (None, Ok(())) => {
                counters
                    .recorded
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            (Some((error, audit_id)), _) => {
                counters
                    .failed_writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(%error, %audit_id, events = batch.len(), "failed to write audit events");
            }
            (None, Err(error)) => {
                counters
                    .failed_writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(%error, events = batch.len(), "failed to write audit events");
            }
        }
    }
}

/// The most events one write to the recording carries.
const WRITE_BATCH: usize = 256;

/// Takes up to `batch` events at a time and exports them, holding a batch until the
/// collector accepts it.
async fn export_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut exporter: otlp::Exporter,
    batch: usize,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut events = Vec::with_capacity(batch);
    while let Some(first) = rx.recv().await {
        events.push(first);
        while events.len() < batch {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        counters
            .in_flight
            .store(events.len() as u64, Ordering::Relaxed);
        let exported = exporter.export(&events, &mut stop).await;
        counters.in_flight.store(0, Ordering::Relaxed);
        if exported {
            counters
                .exported
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        } else {
            counters
                .dropped
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            return;
        }
        events.clear();
    }
}

/// What is known of one request so far; each stage adds to it.
#[derive(Debug, Clone)]
pub struct Trail {
    pub audit_id: String,
    received: time::OffsetDateTime,
    started: Instant,
    request_uri: String,
    verb: String,
    source_ip: String,
    user_agent: String,
    user: User,
    object_ref: Option<ObjectRef>,
    level: Level,
    annotations: BTreeMap<String, String>,
    masked: Arc<AtomicU64>,
    request_body: Option<capture::Capture>,
    response_body: Option<capture::Capture>,
}

impl Trail {
    /// Starts the trail of a request as it arrives.
    pub fn start(
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Trail {
        // Continue the caller's W3C trace when it sent one; start one otherwise. This
        // request is a span of its own, the parent of what goes upstream.
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let (trace, parent_span, flags) = match parent {
            Some((t, p, f)) => (t.to_owned(), Some(p.to_owned()), f.to_owned()),
            None => (random_hex(16), None, "01".to_owned()),
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(annotation::TRACE_ID.to_owned(), trace);
        annotations.insert(annotation::SPAN_ID.to_owned(), random_hex(8));
        if let Some(p) = parent_span {
            annotations.insert(annotation::PARENT_SPAN_ID.to_owned(), p);
        }
        annotations.insert("chaperone.dev/trace-flags".to_owned(), flags);
        annotations.insert(annotation::METHOD.to_owned(), method.as_str().to_owned());
        Trail {
            audit_id: new_audit_id(),
            received: time::OffsetDateTime::now_utc(),
            started: Instant::now(),
            request_uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
            // Until the request is resolved, the verb is the method, as for
            // non-resource requests.
            verb: method.as_str().to_ascii_lowercase(),
            source_ip: peer.ip().to_string(),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            user: User::default(),
            object_ref: None,
            level: Level::Metadata,
            annotations,
            masked: Arc::new(AtomicU64::new(0)),
            request_body: None,
            response_body: None,
        }
    }

    /// The authenticated caller.
    pub fn who(
        &mut self,
        user: &str,
        uid: &str,
        groups: &[String],
        extra: &BTreeMap<String, Vec<String>>,
        issuer: &str,
    ) {
        self.user = User {
            username: user.to_owned(),
            uid: uid.to_owned(),
            groups: groups.to_vec(),
            extra: extra.clone(),
        };
        self.note(annotation::ISSUER, issuer);
        let pod = extra
            .get("authentication.kubernetes.io/pod-name")
            .and_then(|v| v.first());
        if let Some(pod) = pod {
            self.note(annotation::POD, pod);
        }
    }

    /// What the request does.
    pub fn info(&mut self, info: &RequestInfo) {
        self.verb = info.verb.clone();
        self.request_uri = match self.request_uri.split_once('?') {
            Some((_, query)) => format!("{}?{query}", info.path),
            None => info.path.clone(),
        };
        if info.is_resource_request {
            self.object_ref = Some(ObjectRef {
                resource: info.resource.clone(),
                namespace: info.namespace.clone(),
                name: info.name.clone(),
                api_group: info.api_group.clone(),
                api_version: info.api_version.clone(),
                subresource: info.subresource.clone(),
            });
        }
    }

    /// Adds an annotation (decision, rule, reason, ...).
    pub fn note(&mut self, key: &str, value: impl Into<String>) {
        self.annotations.insert(key.to_owned(), value.into());
    }

    pub fn set_level(&mut self, level: Level) {
        self.level = level;
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Keeps the request body for the record (level `Request` and above).
    pub fn capture_request(&mut self, body: capture::Capture) {
        self.request_body = Some(body);
    }

    /// Keeps the (masked) response body for the record (level `RequestResponse`).
    pub fn capture_response(&mut self, body: capture::Capture) {
        self.response_body = Some(body);
    }

    /// The W3C `traceparent` to send upstream: this request's trace, with this
    /// request's span as the parent of the API server's work.
    pub fn traceparent(&self) -> String {
        let note = |k: &str| {
            self.annotations
                .get(k)
                .map(String::as_str)
                .unwrap_or_default()
        };
        format!(
            "00-{}-{}-{}",
            note(annotation::TRACE_ID),
            note(annotation::SPAN_ID),
            note("chaperone.dev/trace-flags")
        )
    }

    /// The decision recorded so far: `allow` for a request no stage refused.
    pub fn decision(&self) -> &str {
        self.annotations
            .get(annotation::DECISION)
            .map_or("allow", String::as_str)
    }

    pub fn verb(&self) -> &str {
        &self.verb
    }

    /// The resource (with its subresource), or `""` for non-resource requests.
    pub fn resource(&self) -> String {
        match &self.object_ref {
            Some(o) if o.subresource.is_empty() => o.resource.clone(),
            Some(o) => format!("{}/{}", o.resource, o.subresource),
            None => String::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counter the masker adds to; its total goes into the event.
    pub fn masked_counter(&self) -> Arc<AtomicU64> {
        self.masked.clone()
    }

    /// The event for `stage` with the response's code (and Status, for failures).
    pub fn event(&self, stage: Stage, code: u16, status: Option<&Status>) -> Event {
        let mut annotations = self.annotations.clone();
        annotations.insert(
            annotation::MASKED_FIELDS.to_owned(),
            self.masked.load(Ordering::Relaxed).to_string(),
        );
        let mut body = |captured: &Option<capture::Capture>, note: &str| match captured
            .as_ref()
            .map(|c| c.recorded())
        {
            Some(capture::Recorded::Object(v)) => Some(v),
            Some(capture::Recorded::Omitted(why)) => {
                annotations.insert(note.to_owned(), why);
                None
            }
            None => None,
        };
        let request_object = body(&self.request_body, "chaperone.dev/request-body");
        let response_object = body(&self.response_body, "chaperone.dev/response-body");
        annotations.insert(
            annotation::LATENCY_MS.to_owned(),
            format!("{:.3}", self.started.elapsed().as_secs_f64() * 1000.0),
        );
        let response_status = Some(match status {
            Some(s) => ResponseStatus {
                metadata: BTreeMap::new(),
                status: s.status.to_owned(),
                message: s.message.clone(),
                reason: s.reason.to_owned(),
                code: s.code,
            },
            None => ResponseStatus {
                code,
                ..Default::default()
            },
        });
        Event {
            kind: "Event".into(),
            api_version: "audit.k8s.io/v1".into(),
            level: self.level,
            audit_id: self.audit_id.clone(),
            stage,
            request_uri: self.request_uri.clone(),
            verb: self.verb.clone(),
            user: self.user.clone(),
            source_ips: vec![self.source_ip.clone()],
            user_agent: self.user_agent.clone(),
            object_ref: self.object_ref.clone(),
            response_status,
            request_object,
            response_object,
            request_received_timestamp: event::timestamp(self.received),
            stage_timestamp: event::timestamp(time::OffsetDateTime::now_utc()),
            annotations,
        }
    }
}

/// The trace ID of a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`), if it
/// is well formed and not all zeros.
#[cfg(test)]
fn trace_id(traceparent: &str) -> Option<&str> {
    parse_traceparent(traceparent).map(|(trace, _, _)| trace)
}

/// A `traceparent`'s (trace id, parent span id, flags), if well formed.
fn parse_traceparent(traceparent: &str) -> Option<(&str, &str, &str)> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, parent, flags))
}

/// `n` random bytes as lowercase hex (trace and span IDs).
fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random UUID (version 4), as the API server's audit IDs are.
fn new_audit_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // The system RNG does not fail on Linux; a zero ID would still be recorded.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Called with the masked-field total when a response completes (for metrics).
pub type OnMasked = Box<dyn FnOnce(u64) + Send + Sync>;

/// Wraps a response body so the request's event is recorded when the body ends —
/// completely, with an error, or because the client went away.
pub fn on_complete(
    body: Body,
    recorder: Arc<Recorder>,
    trail: Trail,
    code: u16,
    on_masked: OnMasked,
) -> Body {
    Body::new(Completion {
        inner: body,
        pending: Some((recorder, trail, code, on_masked)),
        recording: None,
    })
}

struct Completion {
    inner: Body,
    pending: Option<(Arc<Recorder>, Trail, u16, OnMasked)>,
    /// The event being queued as the body ends, and what to return once it is: the
    /// last frame waits for the queue, so with `overflow: block` a full queue holds the
    /// response back (its last data frame included, since with a Content-Length the
    /// client needs no end-of-stream) instead of growing without bound.
    recording: Option<(Mutex<Recording>, After)>,
}

/// What a body yields once its event is queued.
enum After {
    End,
    Error(BoxError),
    Frame(Frame<Bytes>),
}

type Recording = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Completion {
    /// The event for the ended body, as a future that queues it.
    fn record(&mut self, error: Option<String>) -> Option<Recording> {
        let (recorder, mut trail, code, on_masked) = self.pending.take()?;
        if let Some(e) = error {
            trail.note(annotation::ERROR, e);
        }
        on_masked(trail.masked.load(Ordering::Relaxed));
        let event = trail.event(Stage::ResponseComplete, code, None);
        recorder.counters.queuing.fetch_add(1, Ordering::Relaxed);
        Some(Box::pin(async move {
            recorder.record(event).await;
            recorder.counters.queuing.fetch_sub(1, Ordering::Relaxed);
        }))
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
                let fut = recording.get_mut().unwrap_or_else(|e| e.into_inner());
                if fut.as_mut().poll(cx).is_pending() {
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
                    Some(fut) => self.recording = Some((Mutex::new(fut), After::End)),
                    None => return Poll::Ready(None),
                },
                Poll::Ready(Some(Err(e))) => match self.record(Some(e.to_string())) {
                    Some(fut) => self.recording = Some((Mutex::new(fut), After::Error(e))),
                    None => return Poll::Ready(Some(Err(e))),
                },
                Poll::Ready(Some(Ok(frame))) if self.inner.is_end_stream() => {
                    match self.record(None) {
                        Some(fut) => self.recording = Some((Mutex::new(fut), After::Frame(frame))),
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
        // The client is gone: nothing can wait any more, so the event is queued from a
        // task of its own.
        let fut = match self.recording.take() {
            Some((recording, _)) => Some(recording.into_inner().unwrap_or_else(|e| e.into_inner())),
            None if self.pending.is_some() => {
                let why = (!self.inner.is_end_stream()).then(|| {
                    "the client closed the connection before the response ended".to_owned()
                });
                self.record(why)
            }
            None => None,
        };
        if let Some(fut) = fut {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(fut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn settings(file: Option<PathBuf>, queue: usize, overflow: Overflow) -> Settings {
        Settings {
            file,
            max_size: 1 << 20,
            max_files: 1,
            fsync: Fsync::Never,
            queue,
            overflow,
            otlp: None,
        }
    }

    fn trail() -> Trail {
        let uri: http::Uri = "/api/v1/namespaces/default/pods?limit=5".parse().unwrap();
        let mut t = Trail::start(
            &http::Method::GET,
            &uri,
            &HeaderMap::new(),
            "127.0.0.1:5555".parse().unwrap(),
        );
        let info = crate::request_info::resolve(&http::Method::GET, &uri).unwrap();
        t.info(&info);
        t
    }

    #[tokio::test]
    async fn events_reach_the_recording_when_the_body_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder =
            Arc::new(Recorder::start(&settings(Some(path.clone()), 16, Overflow::Block)).unwrap());
        let t = trail();
        t.masked_counter().fetch_add(3, Ordering::Relaxed);
        let body = on_complete(
            crate::body::full("{}"),
            recorder.clone(),
            t.clone(),
            200,
            Box::new(|_| {}),
        );
        body.collect().await.unwrap();
        recorder.close(Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let event: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(event.audit_id, t.audit_id);
        assert_eq!(event.verb, "list");
        assert_eq!(event.stage, Stage::ResponseComplete);
        assert_eq!(event.request_uri, "/api/v1/namespaces/default/pods?limit=5");
        assert_eq!(event.object_ref.unwrap().resource, "pods");
        assert_eq!(event.annotations[annotation::MASKED_FIELDS], "3");
        assert_eq!(event.response_status.unwrap().code, 200);
    }

    #[tokio::test]
    async fn a_dropped_body_is_still_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder =
            Arc::new(Recorder::start(&settings(Some(path.clone()), 16, Overflow::Block)).unwrap());
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        drop(on_complete(
            Body::new(stream),
            recorder.clone(),
            trail(),
            200,
            Box::new(|_| {}),
        ));
        recorder.close(Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("closed the connection"), "{text}");
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn drop_overflow_counts_what_it_discards() {
        // A collector that is not there and a queue of one: the exporter holds one
        // event, the queue one more, the rest overflow.
        let mut s = settings(None, 1, Overflow::Drop);
        s.otlp = Some(otlp::Settings {
            endpoint: "http://127.0.0.1:1".into(),
            ca_file: None,
            timeout: Duration::from_secs(1),
            batch: 1,
            resource: vec![],
        });
        let recorder = Recorder::start(&s).unwrap();
        for _ in 0..50 {
            recorder
                .record(trail().event(Stage::ResponseComplete, 200, None))
                .await;
        }
        let c = &recorder.counters;
        let (recorded, dropped) = (
            c.recorded.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        );
        assert!(dropped > 0, "recorded {recorded}, dropped {dropped}");
        assert!(recorded + dropped <= 50);
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents() {
        let cases = [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                None,
            ),
            ("garbage", None),
        ];
        for (header, want) in cases {
            assert_eq!(trace_id(header), want, "{header}");
        }
    }

    #[test]
    fn audit_ids_are_uuid_v4() {
        let id = new_audit_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_audit_id());
    }
}
