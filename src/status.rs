//! The Kubernetes `Status` object: the one shape every error chaperone returns takes.
//!
//! Clients print it as `Error from server (<Reason>): <message>`, and an LLM reading a
//! tool result sees exactly why a request was refused.

use bytes::Bytes;

use crate::body::{self, Body};
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// `meta/v1` `Status` with `status: Failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: Empty,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    pub code: u16,
}

/// `metadata: {}` as the API server writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Empty {}

/// `StatusDetails`: what the error was about.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// How long the client should wait before it tries again; also sent as the
    /// `Retry-After` header, which is what client-go reads.
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

impl Status {
    /// A failure with the given HTTP code, `reason` (a `metav1.StatusReason`) and message.
    pub fn failure(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: message.into(),
            reason,
            details: None,
            code: code.as_u16(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::NOT_ACCEPTABLE, "NotAcceptable", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        )
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn with_details(mut self, details: Details) -> Self {
        self.details = Some(details);
        self
    }

    pub fn code(&self) -> StatusCode {
        StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON bytes of this Status.
    pub fn to_bytes(&self) -> Bytes {
        // Serialising plain strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(self).expect("a Status always serialises"))
    }

    /// A complete HTTP response carrying this Status as JSON.
    pub fn into_response(self) -> Response<Body> {
        let mut rsp = Response::new(body::full(self.to_bytes()));
        *rsp.status_mut() = self.code();
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.details.as_ref().and_then(|d| d.retry_after_seconds) {
            rsp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        rsp
    }
}

/// An HTTP status code in decimal, written into `buf`: no allocation, no formatter.
pub fn code_text(mut code: u16, buf: &mut [u8; 5]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (code % 10) as u8;
        code /= 10;
        if code == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_written_in_decimal() {
        let mut buf = [0u8; 5];
        for (n, text) in [
            (0, "0"),
            (7, "7"),
            (200, "200"),
            (503, "503"),
            (u16::MAX, "65535"),
        ] {
            assert_eq!(code_text(n, &mut buf), text);
        }
    }

    /// As apimachinery's `NewTooManyRequests`: the wait in the details and in the
    /// header client-go reads before it retries.
    #[test]
    fn a_retry_after_is_in_the_details_and_the_header() {
        let s = Status::too_many_requests("busy").with_details(Details {
            retry_after_seconds: Some(1),
            ..Default::default()
        });
        let v: serde_json::Value = serde_json::from_slice(&s.to_bytes()).unwrap();
        assert_eq!(v["details"], serde_json::json!({"retryAfterSeconds": 1}));
        let rsp = s.into_response();
        assert_eq!(rsp.status(), 429);
        assert_eq!(rsp.headers()[header::RETRY_AFTER], "1");
        let plain = Status::forbidden("no").into_response();
        assert!(!plain.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn serialises_like_the_api_server() {
        let s = Status::forbidden("no");
        let v: serde_json::Value = serde_json::from_slice(&s.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"no","reason":"Forbidden","code":403})
        );
    }
}
