//! The admin endpoints: `/healthz` (the process is alive) and `/readyz` (it can serve).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{self, Body};

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

/// Answers one admin request.
pub fn respond<B>(req: &Request<B>, ready: &Ready) -> Response<Body> {
    let (code, text) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz" | "/livez") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if ready.is_ready() => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the API listeners are not serving yet\n",
        ),
        (_, "/healthz" | "/livez" | "/readyz") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /healthz or /readyz\n",
        ),
    };
    let mut rsp = Response::new(body::full(text));
    *rsp.status_mut() = code;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_health_and_readiness() {
        let ready = Ready::default();
        let get = |path: &str| Request::get(path).body(()).unwrap();
        let cases = [
            ("/healthz", false, 200),
            ("/readyz", false, 503),
            ("/readyz", true, 200),
            ("/metrics/nope", true, 404),
        ];
        for (path, is_ready, code) in cases {
            if is_ready {
                ready.set();
            }
            assert_eq!(
                respond(&get(path), &ready).status().as_u16(),
                code,
                "{path} ready={is_ready}"
            );
        }
    }
}
