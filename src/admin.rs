//! The admin endpoints: `/healthz` (the process is alive), `/readyz` (it can serve,
//! with the reason when it cannot) and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::audit::Recorder;
use crate::body::{self, Body};
use crate::metrics::{Gauges, Metrics};

/// Readiness, flipped once every API listener is bound and serving.
#[derive(Debug, Clone, Default)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A readiness check: `Some(reason)` while its part cannot serve (no keys yet, ...).
pub type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What the admin port reports on.
#[derive(Clone, Default)]
pub struct Admin {
    pub ready: Ready,
    pub metrics: Arc<Metrics>,
    pub audit: Option<Arc<Recorder>>,
    /// Each may make the proxy not ready.
    pub checks: Vec<Check>,
    /// Shown on `/readyz` without making it fail (a policy reload that failed while
    /// the previous policy stays in force).
    pub notes: Vec<Check>,
    /// (policies put in force, failed policy loads).
    pub policy_counts: Option<Arc<dyn Fn() -> (u64, u64) + Send + Sync>>,
    /// Requests held for approval now.
    pub approvals_pending: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// Whether the watch of AccessRequests is in sync (1) or not started or broken (0).
    pub approvals_watch: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// The long-running requests open now.
    pub streams: Option<Arc<crate::places::PerCaller>>,
    /// The other requests in flight now.
    pub requests: Option<Arc<crate::places::PerCaller>>,
}

/// What a peer off this host reads in place of `/readyz`'s reasons and warnings.
const REASONS_HIDDEN: &str =
    "the reasons are in the proxy's log, and on /readyz from the pod itself (kubectl port-forward)\n";
const WARNINGS_HIDDEN: &str =
    "with warnings: in the proxy's log, and on /readyz from the pod itself (kubectl port-forward)\n";

impl Admin {
    /// Why the proxy is not ready, if it is not.
    fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.ready.is_ready() {
            reasons.push("the API listeners are not serving yet".to_owned());
        }
        reasons.extend(self.checks.iter().filter_map(|c| c()));
        reasons
    }

    fn gauges(&self) -> Gauges {
        let mut g = Gauges::default();
        if let Some(a) = &self.audit {
            g.audit_queue_depth = a.queued() as u64;
            g.audit_events_dropped = a.counters.dropped.load(Ordering::Relaxed);
            g.audit_write_failures = a.counters.failed_writes.load(Ordering::Relaxed);
            g.audit_events_recorded = a.counters.recorded.load(Ordering::Relaxed);
            g.audit_events_exported = a.counters.exported.load(Ordering::Relaxed);
            g.audit_events_waiting = a.counters.in_flight.load(Ordering::Relaxed)
                + a.counters.queuing.load(Ordering::Relaxed);
        }
        if let Some(pending) = &self.approvals_pending {
            g.approvals_pending = pending();
        }
        if let Some(watch) = &self.approvals_watch {
            g.approvals_watch_synced = watch();
        }
        if let Some(streams) = &self.streams {
            g.streams_open = streams.total() as u64;
        }
        if let Some(requests) = &self.requests {
            g.requests_in_flight = requests.total() as u64;
        }
        if let Some(counts) = &self.policy_counts {
            (g.policy_reloads, g.policy_reload_failures) = counts();
        }
        g
    }

    /// Answers one admin request.
    /// Answers `req`. `/readyz` says why only to a peer on this host (`detail`), as
    /// through `kubectl port-forward`: the admin port listens on the pod's address,
    /// and the reasons may quote the policy, its path and the issuers. Every other peer
    /// (the kubelet, anyone in the cluster) gets the status code and a pointer to them.
    pub fn respond<B>(&self, req: &Request<B>, detail: bool) -> Response<Body> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let (code, text, kind) = match req.uri().path() {
            "/healthz" | "/livez" if get => (
                StatusCode::OK,
                "ok\n".to_owned(),
                "text/plain; charset=utf-8",
            ),
            "/readyz" if get => match self.not_ready().as_slice() {
                [] => {
                    let mut text = "ok\n".to_owned();
                    for note in self.notes.iter().filter_map(|n| n()) {
                        if !detail {
                            text.push_str(WARNINGS_HIDDEN);
                            break;
                        }
                        text.push_str(&format!("warning: {note}\n"));
                    }
                    (StatusCode::OK, text, "text/plain; charset=utf-8")
                }
                _ if !detail => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready; {}", REASONS_HIDDEN),
                    "text/plain; charset=utf-8",
                ),
                reasons => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", reasons.join("; ")),
                    "text/plain; charset=utf-8",
                ),
            },
            "/metrics" if get => (
                StatusCode::OK,
                self.metrics.render(self.gauges()),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/healthz" | "/livez" | "/readyz" | "/metrics" => (
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET\n".to_owned(),
                "text/plain; charset=utf-8",
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n".to_owned(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut rsp = Response::new(body::full(text));
        *rsp.status_mut() = code;
        rsp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_health_readiness_and_metrics() {
        let mut admin = Admin::default();
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let body = |r: Response<Body>| {
            futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(r.into_body()))
                .unwrap()
                .unwrap()
                .to_bytes()
        };
        assert_eq!(admin.respond(&get("/healthz"), true).status(), 200);
        let not_yet = admin.respond(&get("/readyz"), true);
        assert_eq!(not_yet.status(), 503);
        assert!(String::from_utf8_lossy(&body(not_yet)).contains("listeners are not serving"));

        admin.ready.set();
        assert_eq!(admin.respond(&get("/readyz"), true).status(), 200);
        admin.notes.push(Arc::new(|| {
            Some("policy reload failed: resource name \"db/root\" contains '/'".to_owned())
        }));
        let warned = body(admin.respond(&get("/readyz"), true));
        assert!(String::from_utf8_lossy(&warned).contains("warning: policy reload failed"));
        let remote = admin.respond(&get("/readyz"), false);
        assert_eq!(remote.status(), 200);
        let text = String::from_utf8_lossy(&body(remote)).into_owned();
        assert!(
            text.starts_with("ok\nwith warnings: in the proxy's log"),
            "{text}"
        );
        assert!(!text.contains("db/root"), "{text}");
        admin.checks.push(Arc::new(|| {
            Some("no keys yet for issuer https://idp".to_owned())
        }));
        let keys = admin.respond(&get("/readyz"), true);
        assert_eq!(keys.status(), 503);
        assert!(String::from_utf8_lossy(&body(keys)).contains("no keys yet"));
        // Off this host: the status, and where the reasons are.
        let remote = admin.respond(&get("/readyz"), false);
        assert_eq!(remote.status(), 503);
        let text = String::from_utf8_lossy(&body(remote)).into_owned();
        assert!(!text.contains("no keys yet"), "{text}");
        assert!(
            text.starts_with("not ready; the reasons are in the proxy's log"),
            "{text}"
        );

        let metrics = admin.respond(&get("/metrics"), true);
        assert_eq!(metrics.status(), 200);
        assert!(String::from_utf8_lossy(&body(metrics))
            .contains("# TYPE chaperone_requests_total counter"));
        assert_eq!(admin.respond(&get("/nope"), true).status(), 404);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(admin.respond(&post, true).status(), 405);
    }
}
