//! The request path, top to bottom: what every request through chaperone goes through.
//!
//! ```text
//! resolve   request_info: method + path + query -> the API server's request attributes
//! authenticate  identity: the bearer token -> the caller (Subject)
//! self-review   `kubectl auth can-i`/`whoami`: answered from the policy and the caller
//! authorize policy: caller + attributes -> allow, deny or approve, naming the rule
//! screen    headers: refuse impersonation, narrow Accept to JSON, drop caller credentials
//! approve   approval: an AccessRequest a human approves or denies, for a bounded time
//! forward   upstream: the proxy's own credential, streamed both ways, upgrades tunnelled
//! mask      mask: Secret values and policy-named fields rewritten as the body streams
//! record    audit: one event per request, whatever happened, when its response ends
//! ```
//!
//! An `approve` decision holds the request in `approval` (after screening, so a request
//! that would be refused anyway never reaches a reviewer) until a reviewer decides.
//!
//! Resolution comes before authentication, as in the API server's filter chain: it
//! reads nothing but the request line, and the audit record of a refused caller then
//! says what was attempted.

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt as _;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::{field, Instrument};

use crate::approval::{self, Approvals};
use crate::audit::event::{annotation, Level, Stage, Step};
use crate::audit::{self, Recorder, Trail, Unanswered};
use crate::body::Body;
use crate::config::UpstreamIdentity;
use crate::headers;
use crate::identity::{self, Authenticator};
use crate::mask;
use crate::metrics::Metrics;
use crate::places::PerCaller;
use crate::policy::{self, Policies};
use crate::request_info;
use crate::self_review;
use crate::server::Conn;
use crate::status::Status;
use crate::upstream::{self, Upstream};

/// Every way a request can fail inside chaperone; each maps to exactly one Status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Resolve(#[from] request_info::Error),
    #[error("chaperone does not forward {} requests", audit::method_name(.0))]
    Method(Method),
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error("{0}")]
    Denied(Box<policy::Decision>),
    #[error(transparent)]
    Headers(#[from] headers::Error),
    #[error(transparent)]
    Mask(#[from] mask::Error),
    #[error(transparent)]
    Approval(#[from] approval::Error),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error(transparent)]
    SelfReview(#[from] self_review::Error),
    #[error(
        "{user} already has {max} watches, followed logs and exec, attach or port-forward \
         sessions open through chaperone; this one is refused until one of them ends"
    )]
    TooManyStreams { user: String, max: usize },
    #[error(
        "{user} already has {max} requests in flight through chaperone \
         (maxRequestsPerCaller); try again once one has been answered"
    )]
    TooManyRequests { user: String, max: usize },
    #[error(
        "chaperone reads the body of every {what} to check it, and could not read this one: {why}"
    )]
    Unread { what: String, why: String },
    #[error(
        "chaperone reads the body of every {what} to check it, and this one is larger than \
         {max} bytes, the API server's own bound"
    )]
    TooLarge { what: String, max: usize },
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::Resolve(e) => {
                Status::bad_request(format!("chaperone refused the request path: {e}"))
            }
            Error::Method(_) => Status::method_not_allowed(self.to_string()),
            Error::Identity(e) => e.status(),
            Error::Denied(decision) => decision.status(),
            Error::Headers(e) => e.status(),
            Error::Mask(e) => e.status(),
            Error::Approval(e) => e.status(),
            Error::Upstream(e) => e.status(),
            Error::SelfReview(e) => e.status(),
            Error::TooManyStreams { .. } => Status::too_many_requests(self.to_string()),
            Error::Unread { .. } => Status::bad_request(self.to_string()),
            Error::TooLarge { .. } => Status::failure(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                self.to_string(),
            ),
            // client-go waits the second and retries, up to ten times: a burst is slowed
            // down, not failed.
            Error::TooManyRequests { .. } => Status::too_many_requests(self.to_string())
                .with_details(crate::status::Details {
                    retry_after_seconds: Some(1),
                    ..Default::default()
                }),
        }
    }
}

/// The proxy: one instance serves every listener.
#[derive(Clone)]
pub struct Proxy {
    upstream: Arc<Upstream>,
    identity: Authenticator,
    policy: Arc<Policies>,
    approvals: Arc<Approvals>,
    upstream_identity: UpstreamIdentity,
    audit: Arc<Recorder>,
    metrics: Arc<Metrics>,
    /// `kubectl auth can-i` bodies being read, per caller.
    self_reviews: Arc<PerCaller>,
    /// Watches, followed logs and upgraded sessions open, per caller, and their bound.
    streams: Arc<PerCaller>,
    max_streams: usize,
    /// The other requests in flight, per caller, and their bound.
    requests: Arc<PerCaller>,
    max_requests: usize,
}

/// A request served: its response, whether it streams (a watch, a followed log, an
/// upgraded session), and the caller's place among its requests or streams, held until
/// the response ends (an upgraded session's tunnel holds its own).
struct Served {
    response: Response<Body>,
    streaming: bool,
    place: Option<crate::places::Place>,
}

/// The largest ConfigMap create read for its name where the policy's ConfigMap lives:
/// the API server's own bound on a request body (`MaxRequestBodyBytes`, 3 MiB).
const MAX_CREATED: usize = 3 * 1024 * 1024;

/// The header carrying the audit ID, so the cluster's own audit log and chaperone's
/// name the same request alike.
const AUDIT_ID: http::HeaderName = http::HeaderName::from_static("audit-id");
/// W3C trace context, sent upstream.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

impl Proxy {
    pub fn new(
        upstream: Arc<Upstream>,
        identity: Authenticator,
        policy: Arc<Policies>,
        approvals: Arc<Approvals>,
        upstream_identity: UpstreamIdentity,
        audit: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        Proxy {
            upstream,
            identity,
            policy,
            approvals,
            upstream_identity,
            audit,
            metrics,
            self_reviews: Arc::default(),
            streams: Arc::default(),
            max_streams: crate::config::DEFAULT_MAX_STREAMS_PER_CALLER,
            requests: Arc::default(),
            max_requests: crate::config::DEFAULT_MAX_REQUESTS_PER_CALLER,
        }
    }

    /// The long-running requests open now, per caller.
    pub fn streams(&self) -> Arc<PerCaller> {
        self.streams.clone()
    }

    /// How many long-running requests one caller may have open at once.
    pub fn with_max_streams_per_caller(mut self, max: usize) -> Proxy {
        self.max_streams = max;
        self
    }

    /// The other requests in flight now, per caller.
    pub fn requests(&self) -> Arc<PerCaller> {
        self.requests.clone()
    }

    /// How many other requests one caller may have in flight at once.
    pub fn with_max_requests_per_caller(mut self, max: usize) -> Proxy {
        self.max_requests = max;
        self
    }

    /// Serves one request; errors become Kubernetes `Status` responses here and only
    /// here, and every request, served or refused, is recorded.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: Conn) -> Response<Body> {
        // Before any stage reads a header: what chaperone inspects is what it forwards.
        headers::drop_connection_named(req.headers_mut());
        let mut trail = Trail::start(req.method(), req.uri(), req.headers(), conn.peer);
        // The response's `audit-id` header, made now: the trail moves into the body.
        let audit_id = http::HeaderValue::from_str(&trail.audit_id).ok();
        // Debug level, like the stages' spans: at the default level a formatted span per
        // request would cost more than authorising it. Refusals are logged at info with
        // the request's identity in the event itself.
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            peer = %conn.peer,
            audit_id = %trail.audit_id,
            user = field::Empty,
            verb = field::Empty,
            resource = field::Empty,
            namespace = field::Empty,
            name = field::Empty,
            status = field::Empty,
        );
        // Recorded even if the client goes away before it is answered (then this future
        // is dropped at an await below), and if serving it panics (a bug): then it is on
        // record as the `Panic` stage, and answered 500.
        let unanswered = Unanswered::new(&mut trail, &self.audit);
        let outcome = std::panic::AssertUnwindSafe(
            self.serve(req, conn, unanswered.trail)
                .instrument(span.clone()),
        )
        .catch_unwind()
        .await;
        unanswered.answered();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => {
                let status = Status::internal(
                    "chaperone failed to serve this request (a bug: it panicked); the \
                     request is on record",
                );
                tracing::error!(audit_id = %trail.audit_id, "serving a request panicked");
                trail.note(annotation::DECISION, "error");
                self.audit
                    .record_detached(trail.into_event(Stage::Panic, status.code, Some(&status)))
                    .await;
                let mut rsp = status.into_response();
                if let Some(id) = audit_id {
                    rsp.headers_mut().insert(AUDIT_ID, id);
                }
                return rsp;
            }
        };
        let mut rsp = match outcome {
            Ok(Served {
                response: rsp,
                streaming,
                place,
            }) => {
                let code = rsp.status().as_u16();
                self.metrics.request(
                    trail.decision(),
                    trail.verb(),
                    &trail.metrics_resource(),
                    code,
                    trail.elapsed(),
                );
                // A watch or exec may run for hours: be on record from its start.
                let started = streaming
                    .then(|| {
                        self.audit
                            .queue(trail.event(Stage::ResponseStarted, code, None))
                    })
                    .flatten();
                let audit = self.audit.clone();
                let metrics = self.metrics.clone();
                // The response's end counts what was masked and gives the caller's
                // place back.
                let on_end: audit::OnEnd = Box::new(move |masked| {
                    metrics.masked(masked);
                    drop(place);
                });
                let rsp = rsp.map(|body| audit::on_complete(body, audit, trail, code, on_end));
                // Answered once the start is queued. A client gone meanwhile drops the
                // response, whose end is then recorded too. Until then chaperone, not
                // the caller, holds the answer back: its data waiting unread is no
                // reason to reset its stream upstream.
                if let Some(started) = started {
                    let withheld = rsp.extensions().get::<upstream::Withheld>().cloned();
                    withheld.iter().for_each(|w| w.set(true));
                    let _ = started.await;
                    withheld.iter().for_each(|w| w.set(false));
                }
                rsp
            }
            Err(error) => {
                let status = error.status();
                tracing::info!(parent: &span, audit_id = %trail.audit_id, user = trail.user(),
                    verb = trail.verb(), resource = %trail.resource(), code = status.code,
                    reason = status.reason, %error, "refused");
                // A policy's decision is on the trail already; an approval that did
                // not come says why next to it.
                match &error {
                    Error::Denied(_) => {}
                    Error::Approval(e) => {
                        let outcome = match e {
                            approval::Error::Denied { .. } => "denied",
                            approval::Error::Pending { .. } => "pending",
                            approval::Error::TooManyHeld { .. } => "refused: too many held",
                            approval::Error::BodyTooLarge { .. }
                            | approval::Error::Unreviewable(_) => "refused: body not reviewable",
                            approval::Error::Hidden { .. } => {
                                "refused: a secret in its command, query or path"
                            }
                            approval::Error::PortsUnseen => {
                                "refused: a port-forward's ports out of sight"
                            }
                            approval::Error::Unseen(_) => "refused: a part out of sight",
                            _ => "unavailable",
                        };
                        trail.note(annotation::APPROVAL, outcome);
                        trail.note(annotation::REASON, status.message.clone());
                    }
                    _ => {
                        // A caller past its bounds is throttled, not denied by policy:
                        // alerts on denials are not set off by a busy agent.
                        let decision = match &error {
                            Error::TooManyRequests { .. } | Error::TooManyStreams { .. } => {
                                "throttled"
                            }
                            _ if status.code >= 500 => "error",
                            _ => "deny",
                        };
                        trail.note(annotation::DECISION, decision);
                        trail.note(annotation::REASON, status.message.clone());
                    }
                }
                self.metrics.request(
                    trail.decision(),
                    trail.verb(),
                    &trail.metrics_resource(),
                    status.code,
                    trail.elapsed(),
                );
                self.audit
                    .record_detached(trail.into_event(
                        Stage::ResponseComplete,
                        status.code,
                        Some(&status),
                    ))
                    .await;
                status.into_response()
            }
        };
        span.record("status", rsp.status().as_u16());
        if let Some(id) = audit_id {
            rsp.headers_mut().insert(AUDIT_ID, id);
        }
        rsp
    }

    /// The stages; returns the response and whether its body is a long-running stream.
    async fn serve(
        &self,
        mut req: Request<Incoming>,
        conn: Conn,
        trail: &mut Trail,
    ) -> Result<Served, Error> {
        // Each stage has a debug-level span (`--log chaperone=debug`): at the default
        // level they would cost a formatted span per stage per request. The stages'
        // timings are in the audit event's OTLP child spans either way.
        // A made-up method may be as long as a request head: refused before it becomes
        // the verb of anything recorded.
        if req.method().as_str().len() > audit::MAX_METHOD {
            return Err(Error::Method(req.method().clone()));
        }
        let resolved = tracing::debug_span!("resolve")
            .in_scope(|| request_info::resolve(req.method(), req.uri()));
        let info = match resolved {
            Ok(info) => Arc::new(info),
            Err(mut e) => {
                // Refused before anyone can say what it is: its URI is recorded as sent,
                // and the refusal quotes its path, so what the detectors find in either
                // is masked (in the record, the log line and the answer alike).
                let masker = self.policy.masker();
                trail.mask_unresolved(&masker);
                if let Some(path) = e.path_mut() {
                    if let Some(masked) = masker.mask_path(path) {
                        *path = masked;
                    }
                }
                return Err(e.into());
            }
        };
        trail.info(&info);
        // A query (an exec's command, a proxied service's parameters, a token a client
        // put there), and a proxied request's path past `proxy/`, are free text: what the
        // detectors find there is masked in the record (the request goes as sent).
        //
        // The policy in force when the request came, kept for all of it: the same rules
        // mask its record, decide what it may ask for, how its copy is kept and how its
        // answer is masked, though the file be reloaded meanwhile.
        let in_force = self.policy.in_force();
        let masker = in_force.masker();
        let proxied = info.subresource == "proxy";
        if proxied || req.uri().query().is_some() {
            if proxied {
                trail.mask_proxied_path(&info, &masker);
            }
            trail.mask_query(&masker);
        }
        let span = tracing::Span::current();
        span.record("verb", info.verb.as_str());
        span.record("resource", info.resource.as_str());
        span.record("namespace", info.namespace.as_str());
        span.record("name", info.name.as_str());
        if !is_forwarded_method(req.method()) {
            return Err(Error::Method(req.method().clone()));
        }

        let since = Instant::now();
        let who = self
            .identity
            .authenticate(req.headers(), conn.client_cert)
            .await;
        trail.stage(Step::Authenticate, since, who.is_err());
        let who = match who {
            Ok(who) => who,
            Err(e) => {
                self.metrics.token_verification(e.kind());
                return Err(e.into());
            }
        };
        self.metrics.token_verification("ok");
        trail.who(&who);
        tracing::Span::current().record("user", who.user.as_str());

        // `kubectl auth can-i` and `whoami` are about the caller, not the proxy's
        // credential: answered here from the policy and the identity, never forwarded.
        if let Some(review) = self_review::Review::of(&info) {
            let kind = content_type(req.headers());
            // Boxed, as the approval wait below: rare paths' futures kept inline would be
            // copied with every request's future.
            let answer = Box::pin(self_review::answer(
                review,
                &info,
                &kind,
                req.into_body(),
                &who,
                &in_force,
                &self.self_reviews,
            ))
            .await?;
            trail.note(annotation::DECISION, "allow");
            trail.note(annotation::RULE, self_review::RULE);
            trail.note(
                annotation::REASON,
                format!("answered by chaperone, not forwarded: {}", answer.summary),
            );
            return Ok(Served {
                response: answer.response,
                streaming: false,
                place: None,
            });
        }

        let since = Instant::now();
        let mut decision = tracing::debug_span!("authorize")
            .in_scope(|| in_force.authorize(&who, &info, req.uri().query()));
        // Some writes are decided by their body too: the creation anew of an object the
        // proxy runs with (its policy's ConfigMap, ...: a create names its object in the
        // body), and a pod, pod template or namespace setting the keys that would take
        // pods out of chaperone. The body is read here (and forwarded as read), counted
        // among the caller's requests while it arrives.
        let mut created: Option<bytes::Bytes> = None;
        if decision.applied() != policy::Action::Deny {
            let own = self.policy.may_create_own(&info);
            let injection = policy::shapes_injection(&info);
            // A JSON patch can copy a field to another place in the object: of one whose
            // fields are masked in answers, it is read for what it copies.
            let json_patch = info.verb == "patch"
                && headers::media_type(req.headers()) == "application/json-patch+json"
                && masker.masks_a_field_of(&mask::Target::of(&info));
            if own.is_some() || injection || json_patch {
                let what = match own {
                    Some(own) => format!("{} created in namespace {}", own.kind(), own.namespace),
                    None => format!("{} of {}", info.verb, info.resource),
                };
                let reading = self
                    .requests
                    .take(&who.user, self.max_requests)
                    .ok_or_else(|| Error::TooManyRequests {
                        user: who.user.clone(),
                        max: self.max_requests,
                    })?;
                let headers = req.headers().clone();
                let unread = |e: approval::Error| match e {
                    approval::Error::BodyTooLarge { max } => Error::TooLarge {
                        what: what.clone(),
                        max,
                    },
                    approval::Error::Unreviewable(why) => Error::Unread {
                        what: what.clone(),
                        why,
                    },
                    e => Error::Unread {
                        what: what.clone(),
                        why: e.to_string(),
                    },
                };
                let bytes = approval::body::read_raw(req.body_mut(), &headers, MAX_CREATED)
                    .await
                    .map_err(unread)?;
                drop(reading);
                if let Some(refusal) = self.screen_sent(&info, &headers, &bytes, injection) {
                    decision = refusal.map_err(unread)?;
                }
                if json_patch && decision.applied() != policy::Action::Deny {
                    let ops = crate::json_once::parse(&bytes)
                        .map_err(|e| unread(approval::Error::Unreviewable(e.to_string())))?;
                    if let Some(why) = masker.patch_reveals(&mask::Target::of(&info), &ops) {
                        decision = policy::Decision::reveals_masked(&info, why);
                    }
                }
                created = Some(bytes);
            }
            // A pod or workload an administrator took out of chaperone is not changed
            // through it: the change could be the caller's code, run with the real token.
            if injection
                && matches!(info.verb.as_str(), "update" | "patch")
                && decision.applied() != policy::Action::Deny
                && Box::pin(self.live_opts_out(&info)).await?
            {
                decision = policy::Decision::stay_injected(&info);
            }
        }
        trail.stage(
            Step::Authorize,
            since,
            decision.applied() == policy::Action::Deny,
        );
        trail.note(annotation::DECISION, decision.applied().as_str());
        trail.note(annotation::RULE, decision.rule().to_owned());
        trail.note(annotation::REASON, decision.to_text());
        trail.set_level(decision.audit_level());
        trail.note(
            annotation::MODE,
            if decision.enforced() {
                "enforce"
            } else {
                "audit"
            },
        );
        if decision.applied() == policy::Action::Deny {
            return Err(Error::Denied(Box::new(decision)));
        }

        let upgrade = headers::is_upgrade(req.headers());
        let inspect = headers::must_inspect(&info);
        tracing::debug_span!("screen").in_scope(|| {
            if upgrade {
                let has_body = !http_body::Body::is_end_stream(req.body());
                headers::check_upgrade(&info, has_body, req.version())?;
            }
            headers::prepare_upstream(req.headers_mut(), upgrade, inspect)?;
            if inspect && masker.masks_fields_of(&mask::Target::of(&info)) {
                headers::refuse_tables(req.headers_mut());
            }
            Ok::<_, Error>(())
        })?;
        // A held request's body as the reviewer saw it. Boxed: the slot is in every
        // request's future, and rarely filled.
        let mut reviewed_body: Option<Box<approval::body::Reviewed>> = None;
        // Held only once the request is known to be forwardable: a request screening
        // would refuse never bothers a reviewer.
        match decision.applied() {
            policy::Action::Allow | policy::Action::Deny => {}
            policy::Action::Approve => {
                let since = Instant::now();
                let outcome = Box::pin(
                    async {
                        // The reviewer approves what is sent: the body is read first,
                        // shown in the AccessRequest and forwarded as it was read. A
                        // GET's or a HEAD's is not read, nor shown: refused (the API
                        // server ignores it, a proxied service may not).
                        if !has_body(req.method())
                            && !upgrade
                            && !http_body::Body::is_end_stream(req.body())
                        {
                            return Err(approval::Error::Unseen(format!(
                                "a body with its {}",
                                req.method()
                            )));
                        }
                        if has_body(req.method()) && !upgrade {
                            // The body is buffered to be read: counted among the
                            // caller's held requests while it arrives.
                            let reading = self.approvals.reading(&who)?;
                            let headers = req.headers().clone();
                            let body = match &created {
                                Some(bytes) => {
                                    let read = crate::body::full(bytes.clone());
                                    approval::body::read(read, &headers, &info, &masker).await?
                                }
                                None => {
                                    approval::body::read(req.body_mut(), &headers, &info, &masker)
                                        .await?
                                }
                            };
                            drop(reading);
                            reviewed_body = Some(Box::new(body));
                        }
                        let asked = approval::Asked {
                            who: &who,
                            info: &info,
                            headers: req.headers(),
                            query: req.uri().query(),
                            body: reviewed_body.as_deref(),
                            decision: &decision,
                            masker: &masker,
                        };
                        self.hold_for_approval(asked, trail).await
                    }
                    .instrument(tracing::debug_span!("approve")),
                )
                .await;
                trail.stage(Step::Approve, since, outcome.is_err());
                match outcome? {
                    approval::Outcome::Approved { name, by } => {
                        trail.note(annotation::APPROVAL, format!("approved by {by}"));
                        trail.note(annotation::ACCESS_REQUEST, name);
                    }
                    approval::Outcome::Granted { name } => {
                        trail.note(annotation::APPROVAL, "granted earlier");
                        trail.note(annotation::ACCESS_REQUEST, name);
                    }
                    approval::Outcome::Skipped => {
                        trail.note(annotation::APPROVAL, "skipped (skipGroups)")
                    }
                    approval::Outcome::BreakGlass { name, by, reason } => {
                        trail.note(annotation::APPROVAL, format!("break-glass by {by}"));
                        trail.note(annotation::ACCESS_REQUEST, name);
                        trail.note(annotation::BREAK_GLASS, reason);
                    }
                }
            }
        }
        if self.upstream_identity == UpstreamIdentity::Impersonate {
            headers::impersonate(
                req.headers_mut(),
                &who.user,
                &who.groups,
                &who.uid,
                &who.extra,
            )?;
        }
        // Both differ on every request: marked so that HTTP/2's header compression
        // sends them as literals instead of adding each to the connection's table,
        // where it would only push out the headers that do repeat.
        if let Ok(mut id) = http::HeaderValue::from_str(&trail.audit_id) {
            id.set_sensitive(true);
            req.headers_mut().insert(AUDIT_ID, id);
        }
        // The String's buffer becomes the header's bytes, not copied.
        if let Ok(mut tp) =
            http::HeaderValue::from_maybe_shared(bytes::Bytes::from(trail.traceparent()))
        {
            tp.set_sensitive(true);
            req.headers_mut().insert(TRACEPARENT, tp);
        }
        let streaming = upgrade || info.verb == "watch" || is_follow(&info, req.uri());
        // Every request forwarded holds an upstream stream, and its buffers until it
        // is answered; a stream holds them for as long as it runs. A caller in a loop
        // must not have any number of either.
        let (places, max, refused): (_, _, fn(String, usize) -> Error) = match streaming {
            true => (&self.streams, self.max_streams, |user, max| {
                Error::TooManyStreams { user, max }
            }),
            false => (&self.requests, self.max_requests, |user, max| {
                Error::TooManyRequests { user, max }
            }),
        };
        let place = places
            .take(&who.user, max)
            .ok_or_else(|| refused(who.user.clone(), max))?;

        // The path authorised above is exactly the path forwarded: the normalised form,
        // re-encoded once, never the caller's raw bytes.
        let path = info.forward_path_and_query(req.uri());
        // An upgraded session's place is held by its tunnel; any other until its
        // response ends.
        let (downstream_upgrade, place) = match upgrade {
            true => (
                Some(upstream::Upgrade {
                    downstream: hyper::upgrade::on(&mut req),
                    hold: Some(place),
                    connection: conn.slot,
                }),
                None,
            ),
            false => (None, Some(place)),
        };
        let request_kind = content_type(req.headers());
        let mut req = req.map(|b| {
            b.map_err(|e| -> crate::body::BoxError { Box::new(e) })
                .boxed()
        });
        if let Some(bytes) = reviewed_body.map(|r| r.bytes).or(created) {
            *req.body_mut() = crate::body::full(bytes);
        }
        if info.subresource == "proxy" {
            req.extensions_mut().insert(upstream::ProxiedTo);
        }
        // A stream's answer waits for its start to be on record (see `handle`).
        if streaming && !upgrade {
            req.extensions_mut().insert(upstream::Withheld::default());
        }
        if trail.level() >= Level::Request && !upgrade {
            let body = std::mem::replace(req.body_mut(), crate::body::empty());
            let of = audit::capture::Of::Request {
                masker: masker.clone(),
                info: info.clone(),
            };
            let (body, captured) = audit::capture::tee(body, &request_kind, of);
            *req.body_mut() = body;
            trail.capture_request(captured);
        }
        let since = Instant::now();
        let rsp = self
            .upstream
            .forward(req, &path, downstream_upgrade)
            .instrument(tracing::debug_span!("forward"))
            .await;
        trail.stage(
            Step::Upstream,
            since,
            rsp.as_ref().map_or(true, |r| r.status().is_server_error()),
        );
        let rsp = rsp?;

        // Secrets never leave in clear: the body is masked as it streams back, or
        // refused when it cannot be inspected.
        let plan = tracing::debug_span!("mask")
            .in_scope(|| masker.plan(&mask::Target::of(&info), rsp.headers()));
        let (mut parts, body) = rsp.into_parts();
        let body = match plan {
            mask::Plan::Refuse(e) => return Err(Error::Mask(e)),
            plan => {
                plan.fix_headers(&mut parts.headers);
                mask::apply(body, plan, trail.masked_counter())
            }
        };
        // The record keeps what the caller got: the masked body.
        let body = if trail.level() >= Level::RequestResponse {
            let kind = content_type(&parts.headers);
            let of = audit::capture::Of::Response { info: info.clone() };
            let (body, captured) = audit::capture::tee(body, &kind, of);
            trail.capture_response(captured);
            body
        } else {
            body
        };
        Ok(Served {
            response: Response::from_parts(parts, body),
            streaming,
            place,
        })
    }
}

impl Proxy {
    /// The refusal a sent body calls for, if any (see where the body is read in
    /// `serve`); an error when it cannot be read as the API server would read it.
    fn screen_sent(
        &self,
        info: &request_info::RequestInfo,
        headers: &http::HeaderMap,
        bytes: &[u8],
        injection: bool,
    ) -> Option<Result<policy::Decision, approval::Error>> {
        if bytes.is_empty() {
            return None;
        }
        // Protobuf (kubectl's typed clients send it): its strings are searched in its
        // bytes, and what chaperone can decode (pods, Deployments: labels, annotations,
        // hostNetwork) is read; other fields and kinds are skipped.
        // A body that is not protobuf at all is refused: the API server would not decode
        // it either, and chaperone has not read it.
        if injection && headers::media_type(headers).contains("protobuf") {
            // Decoded by the kind its envelope names, with Kubernetes' own field
            // numbers: another API's kind of the same name would be misread.
            if policy::custom_group(info) {
                return Some(Err(approval::Error::Unreviewable(format!(
                    "its body is protobuf, which chaperone reads for Kubernetes' own kinds \
                     only, not for {}: send it as JSON",
                    info.api_group
                ))));
            }
            let object = match crate::protobuf::decode(bytes) {
                Ok(object) => object,
                Err(why) => {
                    return Some(Err(approval::Error::Unreviewable(format!(
                        "its protobuf body could not be read ({why})"
                    ))))
                }
            };
            let found = policy::injection_key_in_bytes(bytes).is_some()
                || policy::injection_key_sent(info, &object).is_some();
            return found.then(|| Ok(policy::Decision::stay_injected(info)));
        }
        let object = match approval::body::parse(bytes, headers) {
            Ok(object) => object,
            Err(e) => return Some(Err(e)),
        };
        if injection && policy::injection_key_sent(info, &object).is_some() {
            return Some(Ok(policy::Decision::stay_injected(info)));
        }
        self.policy
            .own_created(info, &object)
            .map(|own| Ok(policy::Decision::own_object(info, own.what)))
    }

    /// Whether the live object `info` changes is out of chaperone ([`policy::opts_out`]),
    /// read with the proxy's credential. One that does not exist is not: the write fails
    /// upstream as it would anyway.
    async fn live_opts_out(&self, info: &request_info::RequestInfo) -> Result<bool, Error> {
        let path = request_info::encode_path(&info.path).into_owned();
        let req = Request::get(&path)
            .header(http::header::ACCEPT, "application/json")
            .body(crate::body::empty())
            .map_err(|e| Error::Upstream(upstream::Error::Request(e)))?;
        let rsp = self.upstream.forward(req, &path, None).await?;
        let code = rsp.status();
        if code == http::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let body = crate::body::read_limited(rsp.into_body(), MAX_CREATED).await;
        let live = match (code.is_success(), body) {
            (true, Ok(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| format!("its answer is not JSON: {e}")),
            (true, Err(crate::body::ReadError::TooLarge)) => Err(format!(
                "its answer is larger than {} MiB",
                MAX_CREATED >> 20
            )),
            (true, Err(crate::body::ReadError::Failed(e))) => {
                Err(format!("its answer broke off: {e}"))
            }
            (false, _) => Err(format!(
                "the proxy's credential got {code} (it needs `get` on what it may change)"
            )),
        };
        match live {
            Ok(live) => Ok(policy::opts_out(&live, policy::custom_group(info))),
            Err(why) => Err(Error::Unread {
                what: format!("{} of {}", info.verb, info.resource),
                why: format!(
                    "the object it changes could not be read first, to see whether an \
                     administrator took it out of chaperone: {why}"
                ),
            }),
        }
    }

    /// The approval stage: an answer at once (a grant, a skip group), or the request is
    /// held — on record as held, naming its AccessRequest, before the wait — until a
    /// reviewer decides or the hold ends.
    async fn hold_for_approval(
        &self,
        asked: approval::Asked<'_>,
        trail: &mut Trail,
    ) -> Result<approval::Outcome, approval::Error> {
        match self.approvals.request(asked).await? {
            approval::Hold::Ready(outcome) => Ok(outcome),
            approval::Hold::Held(held) => {
                trail.note(annotation::APPROVAL, "held");
                trail.note(annotation::ACCESS_REQUEST, held.name.clone());
                self.audit
                    .record_detached(trail.event(Stage::RequestReceived, 0, None))
                    .await;
                self.approvals.wait(held).await
            }
        }
    }
}

fn content_type(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Methods whose body says what is done: read and shown to the reviewer when held.
fn has_body(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// `pods/log?follow=true`: a stream that ends when the container does. `follow` is read
/// as the API server reads it (`?follow`, `follow=yes` follow; the first value counts).
fn is_follow(info: &request_info::RequestInfo, uri: &http::Uri) -> bool {
    info.subresource == "log"
        && uri
            .query()
            .is_some_and(|q| request_info::go_bool_param(q, "follow"))
}

/// The methods the Kubernetes API uses. Anything else (CONNECT, TRACE, ...) has no
/// Kubernetes meaning and is refused rather than guessed at.
fn is_forwarded_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A followed log is a stream (bounded by `maxStreamsPerCaller`, on record from its
    /// start) whenever the API server follows it: `follow` read as its conversions read
    /// a boolean.
    #[test]
    fn a_log_is_followed_as_the_api_server_reads_follow() {
        let uri = |q: &str| -> http::Uri {
            format!("/api/v1/namespaces/d/pods/p/log?{q}")
                .parse()
                .unwrap()
        };
        let info = request_info::resolve(&Method::GET, &uri("")).unwrap();
        let cases = [
            ("follow=true", true),
            ("follow", true),
            ("follow=", true),
            ("follow=TRUE", true),
            ("follow=yes", true),
            ("container=a&follow=1", true),
            ("follow=true&follow=false", true),
            ("follow=false", false),
            ("follow=FALSE", false),
            ("follow=0", false),
            ("follow=false&follow=true", false),
            ("follow=tru%zz", false),
            ("follow;x=1", false),
            ("container=a", false),
        ];
        for (query, want) in cases {
            assert_eq!(is_follow(&info, &uri(query)), want, "{query}");
        }
        let pod = request_info::resolve(
            &Method::GET,
            &"/api/v1/namespaces/d/pods/p".parse().unwrap(),
        )
        .unwrap();
        assert!(!is_follow(
            &pod,
            &"/api/v1/namespaces/d/pods/p?follow=true".parse().unwrap()
        ));
    }

    #[test]
    fn every_error_maps_to_one_status() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (
                Error::Resolve(request_info::Error::EncodedSlash("/a%2Fb".into())),
                400,
                "BadRequest",
            ),
            (Error::Method(Method::OPTIONS), 405, "MethodNotAllowed"),
            (
                Error::Headers(headers::Error::Impersonation("impersonate-user".into())),
                403,
                "Forbidden",
            ),
            (
                Error::Headers(headers::Error::NotAcceptable("application/yaml".into())),
                406,
                "NotAcceptable",
            ),
            (Error::Headers(headers::Error::BadAccept), 400, "BadRequest"),
            (
                Error::Headers(headers::Error::Upgrade("watch secrets".into())),
                400,
                "BadRequest",
            ),
            (
                Error::Headers(headers::Error::UpgradeWithBody),
                400,
                "BadRequest",
            ),
            (
                Error::Upstream(upstream::Error::Timeout {
                    server: "https://10.0.0.1".into(),
                    timeout: std::time::Duration::from_secs(1),
                }),
                504,
                "Timeout",
            ),
            (
                Error::Upstream(upstream::Error::EmptyToken("/token".into())),
                503,
                "ServiceUnavailable",
            ),
            (Error::Upstream(upstream::Error::NoCa), 500, "InternalError"),
            (
                Error::Unread {
                    what: "ConfigMap created in namespace agents".into(),
                    why: "its body is not valid YAML".into(),
                },
                400,
                "BadRequest",
            ),
            (
                Error::TooLarge {
                    what: "create of pods".into(),
                    max: MAX_CREATED,
                },
                413,
                "RequestEntityTooLarge",
            ),
        ];
        for (error, code, reason) in cases {
            let status = error.status();
            assert_eq!((status.code, status.reason), (code, reason), "{error}");
            assert!(!status.message.is_empty(), "{error}");
        }
    }
}
