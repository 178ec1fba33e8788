//! A request's trail: what each stage learns, turned into its audit event.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderMap};

use super::event::{
    annotation, Annotations, Event, Level, ObjectRef, ResponseStatus, Stage, StageSpan, Step,
};
use super::{capture, event};
use crate::identity::Subject;
use crate::request_info::RequestInfo;
use crate::status::Status;

/// What is known of one request so far; each stage adds to it.
#[derive(Debug, Clone)]
pub struct Trail {
    pub audit_id: String,
    received: time::OffsetDateTime,
    /// `received` as nanoseconds since the Unix epoch, for the stages' span times.
    received_unix_nanos: u64,
    started: Instant,
    request_uri: String,
    /// The lowercase method, the verb of a request never resolved.
    verb: Cow<'static, str>,
    source_ip: String,
    user_agent: String,
    /// The caller once authenticated (shared with the token cache).
    who: Option<Arc<Subject>>,
    /// What the request does, once resolved.
    info: Option<Arc<RequestInfo>>,
    level: Level,
    annotations: Annotations,
    masked: Arc<AtomicU64>,
    request_body: Option<capture::Capture>,
    response_body: Option<capture::Capture>,
    stages: Vec<StageSpan>,
    /// Each stage's span ID, chosen up front: the API server's work is the child of the
    /// `upstream` stage (the `traceparent` sent upstream names it).
    stage_spans: [[u8; 8]; Step::COUNT],
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
        // Every ID this request needs, from one read of the system RNG.
        let ids = RandomIds::new();
        let (trace, parent_span, flags) = match parent {
            Some((t, p, f)) => (t.to_owned(), Some(p.to_owned()), Cow::Owned(f.to_owned())),
            None => (hex(&ids.trace), None, Cow::Borrowed("01")),
        };
        let mut annotations = Annotations::new();
        annotations.insert(Cow::Borrowed(annotation::TRACE_ID), Cow::Owned(trace));
        annotations.insert(
            Cow::Borrowed(annotation::SPAN_ID),
            Cow::Owned(hex(&ids.span)),
        );
        if let Some(p) = parent_span {
            annotations.insert(Cow::Borrowed(annotation::PARENT_SPAN_ID), Cow::Owned(p));
        }
        annotations.insert(Cow::Borrowed(TRACE_FLAGS), flags);
        annotations.insert(Cow::Borrowed(annotation::METHOD), method_name(method));
        let received = time::OffsetDateTime::now_utc();
        Trail {
            audit_id: uuid_v4(ids.audit),
            received,
            received_unix_nanos: u64::try_from(received.unix_timestamp_nanos()).unwrap_or(0),
            started: Instant::now(),
            request_uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
            // Until the request is resolved, the verb is the method, as for
            // non-resource requests.
            verb: lowercase_method(method),
            source_ip: {
                use std::fmt::Write;
                // The longest IPv6 text form, so the address is written without regrowing.
                let mut ip = String::with_capacity(45);
                let _ = write!(ip, "{}", peer.ip());
                ip
            },
            user_agent: user_agent(
                headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default(),
            ),
            who: None,
            info: None,
            level: Level::Metadata,
            annotations,
            masked: Arc::new(AtomicU64::new(0)),
            request_body: None,
            response_body: None,
            stages: Vec::new(),
            stage_spans: ids.stages,
        }
    }

    /// The authenticated caller.
    pub fn who(&mut self, who: &Arc<Subject>) {
        self.note(annotation::ISSUER, who.issuer.clone());
        let pod = who
            .extra
            .get("authentication.kubernetes.io/pod-name")
            .and_then(|v| v.first());
        if let Some(pod) = pod {
            self.note(annotation::POD, pod.clone());
        }
        self.who = Some(who.clone());
    }

    /// What the request does (shared with the pipeline; its strings move into the
    /// event at the end, when the pipeline no longer holds it).
    pub fn info(&mut self, info: &Arc<RequestInfo>) {
        let (path, query) = match self.request_uri.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.request_uri.as_str(), None),
        };
        // The recorded URI is the path as forwarded (normalised, encoded once) with the
        // query as sent: most paths arrive so already, and the URI recorded at the start
        // stands.
        let forwarded = crate::request_info::encode_path(&info.path);
        if path != forwarded {
            let mut uri = String::with_capacity(forwarded.len() + query.map_or(0, |q| q.len() + 1));
            uri.push_str(&forwarded);
            if let Some(query) = query {
                uri.push('?');
                uri.push_str(query);
            }
            self.request_uri = uri;
        }
        self.info = Some(info.clone());
    }

    /// Masks what the detectors find in the recorded URI's query (an exec's command, a
    /// proxied request's query: free text the record would keep as sent).
    pub fn mask_query(&mut self, masker: &crate::mask::Masker) {
        if let Some((path, query)) = self.request_uri.split_once('?') {
            if let Some(masked) = masker.mask_query(query) {
                self.request_uri = format!("{path}?{masked}");
            }
        }
    }

    /// Masks what the detectors find in the URI of a request refused before it could
    /// be resolved, recorded as sent: the path, read as a server would, and the query.
    pub fn mask_unresolved(&mut self, masker: &crate::mask::Masker) {
        // The query first: a raw path holds no `?`, but the path read may (`%3F`).
        self.mask_query(masker);
        let path_end = self.request_uri.find('?').unwrap_or(self.request_uri.len());
        // The masked reading is decoded: recorded encoded once, as every path is, so a
        // `%3F` stays no query and a control character no control character.
        if let Some(masked) = masker.mask_path(&self.request_uri[..path_end]) {
            let encoded = crate::request_info::encode_path(&masked).into_owned();
            self.request_uri.replace_range(..path_end, &encoded);
        }
    }

    /// Masks what the detectors find in a proxied request's path past `.../proxy/`: free
    /// text the caller chose for a service (a callback's token, say), recorded as sent.
    pub fn mask_proxied_path(&mut self, info: &RequestInfo, masker: &crate::mask::Masker) {
        let Some(parts) = info.parts_at.and_then(|at| info.path.get(at..)) else {
            return;
        };
        // `resource/name/proxy/rest`: only `rest` is the caller's free text.
        let Some(rest) = parts.splitn(4, '/').nth(3) else {
            return;
        };
        let Some(masked) = masker.mask_text(rest.as_bytes()) else {
            return;
        };
        // The recorded URI is the path as forwarded, then the query as sent (`info`).
        use crate::request_info::encode_path;
        let query = self
            .request_uri
            .find('?')
            .map_or("", |at| &self.request_uri[at..]);
        let kept = &info.path[..info.path.len() - rest.len()];
        self.request_uri = format!(
            "{}{}{query}",
            encode_path(kept),
            encode_path(&String::from_utf8_lossy(&masked))
        );
    }

    /// Adds an annotation (decision, rule, reason, ...).
    pub fn note(&mut self, key: &'static str, value: impl Into<Cow<'static, str>>) {
        self.annotations.insert(Cow::Borrowed(key), value.into());
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

    /// Records that `step` ran from `since` until now (`failed`: and refused or
    /// failed the request); it becomes a child span of the request's in OTLP.
    pub fn stage(&mut self, step: Step, since: Instant, failed: bool) {
        // Offsets from the request's arrival on the monotonic clock, added to its
        // wall-clock time: no calendar arithmetic per stage.
        let nanos = |at: Instant| {
            let offset = at.saturating_duration_since(self.started).as_nanos();
            self.received_unix_nanos
                .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
        };
        self.stages.push(StageSpan {
            step,
            span_id: self.stage_spans[step as usize],
            start_unix_nanos: nanos(since),
            end_unix_nanos: nanos(Instant::now()),
            failed,
        });
    }

    /// The W3C `traceparent` to send upstream: this request's trace, with the
    /// `upstream` stage's span as the parent of the API server's work.
    pub fn traceparent(&self) -> String {
        let note = |k: &str| self.annotations.get(k).map(|v| &**v).unwrap_or_default();
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(note(annotation::TRACE_ID));
        out.push('-');
        push_hex(&mut out, &self.stage_spans[Step::Upstream as usize]);
        out.push('-');
        out.push_str(note(TRACE_FLAGS));
        out
    }

    /// The authenticated user, `""` before authentication.
    pub fn user(&self) -> &str {
        self.who.as_ref().map_or("", |w| w.user.as_str())
    }

    /// The decision recorded so far: `allow` for a request no stage refused.
    pub fn decision(&self) -> &str {
        self.annotations
            .get(annotation::DECISION)
            .map_or("allow", |v| &**v)
    }

    /// The verb once resolved; until then the lowercase method.
    pub fn verb(&self) -> &str {
        self.info.as_ref().map_or(&self.verb, |i| &i.verb)
    }

    /// The resource a metric counts the request under: [`Trail::resource`] for a caller
    /// who authenticated, `unauthenticated` for anyone else, who could otherwise fill the
    /// metrics' bound of label sets with made-up resources before the first real denial.
    pub fn metrics_resource(&self) -> Cow<'_, str> {
        match self.who {
            Some(_) => self.resource(),
            None => Cow::Borrowed("unauthenticated"),
        }
    }

    /// The resource (with its subresource), or `""` for non-resource requests.
    pub fn resource(&self) -> Cow<'_, str> {
        match self.info.as_deref().filter(|i| i.is_resource_request) {
            Some(i) if i.subresource.is_empty() => Cow::Borrowed(&i.resource),
            Some(i) => Cow::Owned(format!("{}/{}", i.resource, i.subresource)),
            None => Cow::Borrowed(""),
        }
    }

    /// Whether a failure's body is the API server's own `Status`: not through a
    /// `proxy` subresource, where a node, pod or service answers.
    pub fn answered_by_the_api_server(&self) -> bool {
        self.info
            .as_deref()
            .is_none_or(|i| !(i.is_resource_request && i.subresource == "proxy"))
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counter the masker adds to; its total goes into the event.
    pub fn masked_counter(&self) -> Arc<AtomicU64> {
        self.masked.clone()
    }

    /// The event for `stage` with the response's code (and Status, for failures), while
    /// the request goes on (held, or streaming).
    pub fn event(&self, stage: Stage, code: u16, status: Option<&Status>) -> Event {
        self.clone().into_event(stage, code, status)
    }

    /// The request's last event: the trail's contents move into it.
    pub fn into_event(self, stage: Stage, code: u16, status: Option<&Status>) -> Event {
        let mut annotations = self.annotations;
        annotations.insert(
            Cow::Borrowed(annotation::MASKED_FIELDS),
            match self.masked.load(Ordering::Relaxed) {
                0 => Cow::Borrowed("0"),
                n => Cow::Owned(n.to_string()),
            },
        );
        let mut body = |captured: &Option<capture::Capture>, note: &'static str| match captured
            .as_ref()
            .map(|c| c.recorded())
        {
            Some(capture::Recorded::Object(v)) => Some(v),
            Some(capture::Recorded::Omitted(why)) => {
                annotations.insert(Cow::Borrowed(note), Cow::Owned(why));
                None
            }
            None => None,
        };
        let request_object = body(&self.request_body, "chaperone.dev/request-body");
        let response_object = body(&self.response_body, "chaperone.dev/response-body");
        annotations.insert(
            Cow::Borrowed(annotation::LATENCY_MS),
            Cow::Owned(milliseconds(self.started.elapsed())),
        );
        let response_status = (stage != Stage::RequestReceived).then(|| match status {
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
        // The pipeline is done with the request's attributes by now: moved, not copied
        // (copied only for an event while the request goes on).
        let (verb, object_ref) = match self.info.map(Arc::unwrap_or_clone) {
            Some(info) => {
                let object_ref = info.is_resource_request.then_some(ObjectRef {
                    resource: info.resource,
                    namespace: info.namespace,
                    name: info.name,
                    api_group: info.api_group,
                    api_version: info.api_version,
                    subresource: info.subresource,
                });
                (info.verb, object_ref)
            }
            None => (self.verb.into_owned(), None),
        };
        Event {
            kind: Cow::Borrowed("Event"),
            api_version: Cow::Borrowed("audit.k8s.io/v1"),
            level: self.level,
            audit_id: self.audit_id,
            stage,
            request_uri: match self.request_uri.len() > MAX_REQUEST_URI {
                true => cut(&self.request_uri, MAX_REQUEST_URI),
                false => self.request_uri,
            },
            verb,
            user: self.who.map_or_else(Arc::default, |w| w.audit_user()),
            source_ips: vec![self.source_ip],
            user_agent: self.user_agent,
            object_ref,
            response_status,
            request_object,
            response_object,
            request_received_timestamp: event::timestamp(self.received),
            stage_timestamp: event::timestamp(time::OffsetDateTime::now_utc()),
            annotations,
            stages: self.stages,
        }
    }
}

/// The standard methods: (method, its name, the name in lowercase).
const STANDARD_METHODS: [(http::Method, &str, &str); 9] = [
    (http::Method::GET, "GET", "get"),
    (http::Method::POST, "POST", "post"),
    (http::Method::PUT, "PUT", "put"),
    (http::Method::PATCH, "PATCH", "patch"),
    (http::Method::DELETE, "DELETE", "delete"),
    (http::Method::HEAD, "HEAD", "head"),
    (http::Method::OPTIONS, "OPTIONS", "options"),
    (http::Method::CONNECT, "CONNECT", "connect"),
    (http::Method::TRACE, "TRACE", "trace"),
];

/// The method's name, without an allocation for the standard ones, cut at
/// [`MAX_METHOD`] bytes.
pub fn method_name(method: &http::Method) -> Cow<'static, str> {
    match STANDARD_METHODS.iter().find(|(m, _, _)| m == method) {
        Some((_, name, _)) => Cow::Borrowed(name),
        None => Cow::Owned(cut(method.as_str(), MAX_METHOD)),
    }
}

/// The method in lowercase (Go's `strings.ToLower`: methods are ASCII tokens).
fn lowercase_method(method: &http::Method) -> Cow<'static, str> {
    match STANDARD_METHODS.iter().find(|(m, _, _)| m == method) {
        Some((_, _, lower)) => Cow::Borrowed(lower),
        None => Cow::Owned(cut(&method.as_str().to_ascii_lowercase(), MAX_METHOD)),
    }
}

/// The longest method kept as it was sent: HTTP/1.1 allows a made-up one of any length
/// (up to the whole request head), and an event waits in memory until it is written.
pub const MAX_METHOD: usize = 32;
/// The longest `requestURI` kept: a URI may be 64 KiB, and a backlog of events (a
/// collector down) is kept in memory.
const MAX_REQUEST_URI: usize = 16 * 1024;

/// `text` cut to at most `max` bytes (at a character's start), marked as cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let end = crate::text::floor_char_boundary(text, max);
    format!("{}{USER_AGENT_CUT}", &text[..end])
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

/// The random IDs of one request: its audit ID, trace ID (when it starts a trace), span
/// ID and its stages' span IDs.
struct RandomIds {
    audit: [u8; 16],
    trace: [u8; 16],
    span: [u8; 8],
    stages: [[u8; 8]; Step::COUNT],
}

/// Bytes of one request's IDs.
const ID_BYTES: usize = 40 + 8 * Step::COUNT;

/// How many requests' IDs one read of the system RNG serves. The IDs are not secrets
/// (they are written to logs and sent upstream), only unique and unguessable, so
/// reading the RNG once per 56 requests instead of per request loses nothing; that
/// read was a system call on every request.
const ID_POOL: usize = 56 * ID_BYTES;

thread_local! {
    /// This thread's unused random bytes, and where the unused part starts.
    static POOL: std::cell::RefCell<(Box<[u8; ID_POOL]>, usize)> =
        std::cell::RefCell::new((Box::new([0u8; ID_POOL]), ID_POOL));
}

impl RandomIds {
    fn new() -> RandomIds {
        let mut b = [0u8; ID_BYTES];
        POOL.with_borrow_mut(|(pool, used)| {
            if *used + ID_BYTES > ID_POOL {
                use ring::rand::SecureRandom;
                // The system RNG does not fail on Linux; zero IDs would still be recorded.
                let _ = ring::rand::SystemRandom::new().fill(&mut pool[..]);
                *used = 0;
            }
            b.copy_from_slice(&pool[*used..*used + ID_BYTES]);
            // Handed out once: overwritten so no two requests share IDs.
            pool[*used..*used + ID_BYTES].fill(0);
            *used += ID_BYTES;
        });
        let take = |at: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            out.copy_from_slice(&b[at..at + 8]);
            out
        };
        let mut audit = [0u8; 16];
        audit.copy_from_slice(&b[0..16]);
        let mut trace = [0u8; 16];
        trace.copy_from_slice(&b[16..32]);
        RandomIds {
            audit,
            trace,
            span: take(32),
            stages: std::array::from_fn(|i| take(40 + 8 * i)),
        }
    }
}

/// How much of a `User-Agent` the record keeps, and the mark of one cut short: the API
/// server's audit does the same (a header can be hundreds of KiB, and every event,
/// refused requests' too, waits in the queue).
const MAX_USER_AGENT: usize = 1024;
const USER_AGENT_CUT: &str = "...TRUNCATED";

fn user_agent(sent: &str) -> String {
    match sent.get(..MAX_USER_AGENT) {
        Some(kept) if sent.len() > MAX_USER_AGENT => {
            let mut out = String::with_capacity(MAX_USER_AGENT + USER_AGENT_CUT.len());
            out.push_str(kept);
            out.push_str(USER_AGENT_CUT);
            out
        }
        _ => sent.to_owned(),
    }
}

/// The trace's W3C flags, kept with the annotations so the event and the
/// `traceparent` sent upstream agree.
const TRACE_FLAGS: &str = "chaperone.dev/trace-flags";

/// Lowercase hex (trace and span IDs).
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// A random UUID (version 4), as the API server's audit IDs are.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, part) in [&b[0..4], &b[4..6], &b[6..8], &b[8..10], &b[10..16]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        push_hex(&mut out, part);
    }
    out
}

/// A duration in milliseconds with three decimals (`12.345`), as the latency
/// annotation has always been written.
fn milliseconds(d: Duration) -> String {
    use std::fmt::Write;
    let micros = d.as_micros();
    // Sized for up to a day and a bit in milliseconds: one allocation.
    let mut out = String::with_capacity(12);
    let _ = write!(out, "{}", micros / 1000);
    out.push('.');
    // The remainder is below 1000, so it fits the three digits exactly.
    event::digits(&mut out, (micros % 1000) as u32, 3);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event records the path that was authorised and forwarded (normalised, encoded
    /// once as it is forwarded), with the query as sent; an unresolved request keeps the
    /// raw URI and its method as verb.
    #[test]
    fn records_the_normalised_uri_and_the_method_until_resolved() {
        let cases = [
            (
                "GET",
                "/api/v1/namespaces/default/./pods//web/?limit=1&x=%2F",
                Some("/api/v1/namespaces/default/pods/web/?limit=1&x=%2F"),
                "get",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/web",
                Some("/api/v1/namespaces/default/pods/web"),
                "delete",
            ),
            // A `?` or `%` that is part of the path is recorded as the escape it was
            // sent as (and forwarded as): never as the start of a query.
            (
                "GET",
                "/api/v1/namespaces/default/services/web/proxy/a%3Fb=1?c=2",
                Some("/api/v1/namespaces/default/services/web/proxy/a%3Fb=1?c=2"),
                "get",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/./web%2525",
                Some("/api/v1/namespaces/default/pods/web%2525"),
                "get",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/w%65b",
                Some("/api/v1/namespaces/default/pods/web"),
                "get",
            ),
            (
                "PURGE",
                "/api/v1/namespaces/default/pods/a%2Fb?x=1",
                None,
                "purge",
            ),
        ];
        for (method, uri, normalised, verb) in cases {
            let method = http::Method::from_bytes(method.as_bytes()).unwrap();
            let parsed: http::Uri = uri.parse().unwrap();
            let mut trail = Trail::start(
                &method,
                &parsed,
                &HeaderMap::new(),
                "127.0.0.1:1".parse().unwrap(),
            );
            assert_eq!(trail.verb(), verb, "{uri}");
            if let Ok(info) = crate::request_info::resolve(&method, &parsed) {
                trail.info(&Arc::new(info));
            }
            let event = trail.into_event(Stage::ResponseComplete, 200, None);
            assert_eq!(event.request_uri, normalised.unwrap_or(uri), "{uri}");
            assert_eq!(
                event.annotations[annotation::METHOD],
                method.as_str(),
                "{uri}"
            );
        }
    }

    /// A URI or a made-up method of any length is kept cut short in the record.
    #[test]
    fn a_long_uri_or_method_is_cut_short() {
        let long = format!("/api/v1/namespaces/d/configmaps?x={}", "q".repeat(60_000));
        let uri: http::Uri = long.parse().unwrap();
        let method = http::Method::from_bytes("M".repeat(5000).as_bytes()).unwrap();
        let trail = Trail::start(
            &method,
            &uri,
            &HeaderMap::new(),
            "127.0.0.1:1".parse().unwrap(),
        );
        let event = trail.into_event(Stage::ResponseComplete, 400, None);
        assert_eq!(
            event.request_uri.len(),
            MAX_REQUEST_URI + USER_AGENT_CUT.len()
        );
        assert!(event.request_uri.ends_with("q...TRUNCATED"));
        assert_eq!(event.verb.len(), MAX_METHOD + USER_AGENT_CUT.len());
        assert_eq!(
            event.annotations[annotation::METHOD].len(),
            MAX_METHOD + USER_AGENT_CUT.len()
        );
    }

    /// A path refused before it was resolved, with a key in it, is recorded masked and
    /// encoded once: no control character, and no `?` that was never a query.
    #[test]
    fn a_masked_unresolved_path_is_recorded_encoded() {
        let uri: http::Uri =
            "/api/v1/namespaces/d/pods/AKIAIOSFODNN7EXAMPLE%0A%1B%5B2J%1B%5D0;x%07%3Fa=b"
                .parse()
                .unwrap();
        let mut trail = Trail::start(
            &http::Method::GET,
            &uri,
            &HeaderMap::new(),
            "127.0.0.1:1".parse().unwrap(),
        );
        trail.mask_unresolved(&crate::mask::Masker::builtin());
        let event = trail.into_event(Stage::ResponseComplete, 400, None);
        let recorded = &event.request_uri;
        assert!(!recorded.contains("AKIA"), "{recorded}");
        assert!(recorded.bytes().all(|b| b.is_ascii_graphic()), "{recorded}");
        assert!(!recorded.contains('?'), "{recorded}");
    }

    #[test]
    fn a_stage_span_is_the_arrival_wall_clock_time_plus_its_monotonic_offsets() {
        let uri: http::Uri = "/api/v1/pods".parse().unwrap();
        let mut trail = Trail::start(
            &http::Method::GET,
            &uri,
            &HeaderMap::new(),
            "127.0.0.1:1".parse().unwrap(),
        );
        std::thread::sleep(Duration::from_millis(2));
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(3));
        trail.stage(Step::Authenticate, since, true);
        let elapsed = trail.started.elapsed();
        let event = trail.into_event(Stage::ResponseComplete, 200, None);
        let received = time::OffsetDateTime::parse(
            &event.request_received_timestamp,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp_nanos() as u64;
        let stage = &event.stages[0];
        let (start, end) = (stage.start_unix_nanos, stage.end_unix_nanos);
        // The recorded timestamp keeps microseconds; the span's nanoseconds are exact.
        assert!(start >= received + 2_000_000, "{start} vs {received}");
        assert!(end >= start + 3_000_000, "{end} vs {start}");
        assert!(end <= received + 1_000 + elapsed.as_nanos() as u64);
        assert!(stage.failed);
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
        let id = uuid_v4(RandomIds::new().audit);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, uuid_v4(RandomIds::new().audit));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let ids = RandomIds::new();
        assert_ne!(ids.stages[0], ids.stages[1]);
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn ids_stay_distinct_across_refills_of_the_pool() {
        let per_pool = ID_POOL / ID_BYTES;
        let ids: std::collections::HashSet<String> = (0..3 * per_pool + 7)
            .map(|_| uuid_v4(RandomIds::new().audit))
            .collect();
        assert_eq!(ids.len(), 3 * per_pool + 7);
        assert!(!ids.contains("00000000-0000-4000-8000-000000000000"));
    }

    #[test]
    fn latency_is_milliseconds_with_three_decimals() {
        assert_eq!(milliseconds(Duration::from_micros(12_345)), "12.345");
        assert_eq!(milliseconds(Duration::from_micros(7)), "0.007");
        assert_eq!(
            milliseconds(Duration::from_nanos(2_000_999_999)),
            "2000.999"
        );
    }

    #[test]
    fn a_long_user_agent_is_kept_cut_short_as_the_api_server_keeps_it() {
        assert_eq!(user_agent("kubectl/v1.33.0"), "kubectl/v1.33.0");
        let exact = "a".repeat(MAX_USER_AGENT);
        assert_eq!(user_agent(&exact), exact);
        let long = "b".repeat(300_000);
        let kept = user_agent(&long);
        assert_eq!(kept.len(), MAX_USER_AGENT + USER_AGENT_CUT.len());
        assert!(kept.ends_with("b...TRUNCATED"), "{}", &kept[1000..]);
    }

    #[test]
    fn traceparent_names_the_upstream_stage() {
        let headers = HeaderMap::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let uri: http::Uri = "/api".parse().unwrap();
        let trail = Trail::start(&http::Method::GET, &uri, &headers, peer);
        let tp = trail.traceparent();
        let (trace, parent, flags) = parse_traceparent(&tp).unwrap();
        assert_eq!(trace, trail.annotations[annotation::TRACE_ID]);
        assert_eq!(parent, hex(&trail.stage_spans[Step::Upstream as usize]));
        assert_eq!(flags, "01");
    }
}
