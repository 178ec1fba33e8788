//! The admission webhook's handler: an `AdmissionReview` in, an `AdmissionReview` out.
//!
//! Thin: it turns the review into a pod and a namespace, calls `mutate::mutate`, tries
//! the patch on the object exactly as received, and wraps the answer. A review it cannot
//! read is an `Error` (an HTTP error status); a pod it cannot inject is a response with
//! `allowed: false` and a message saying why.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::ByteString;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use serde_json::Value;

use crate::config::Config;
use crate::mutate;

/// Largest review accepted: the API server caps a request body at 3 MiB, and a review
/// of a pod is smaller than that.
pub const MAX_BODY: usize = 3 << 20;
const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("admission review is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("failed to read the request body: {0}")]
    Body(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("the webhook has its most reviews in flight and none ended within {0:?}")]
    Busy(std::time::Duration),
    #[error("invalid AdmissionReview: {0}")]
    Parse(#[source] serde_json::Error),
    #[error(
        "unsupported AdmissionReview {api_version:?}/{kind:?}: want {API_VERSION}/AdmissionReview"
    )]
    Version { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("failed to encode the AdmissionReview response: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Error {
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Error::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout(_) => http::StatusCode::REQUEST_TIMEOUT,
            Error::Busy(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Error::Body(_) | Error::Parse(_) | Error::Version { .. } | Error::NoRequest => {
                http::StatusCode::BAD_REQUEST
            }
            Error::Encode(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Answers one review body.
pub fn review(body: &[u8], config: &Config) -> Result<AdmissionReview<DynamicObject>, Error> {
    if body.len() > MAX_BODY {
        return Err(Error::TooLarge);
    }
    let value: Value = serde_json::from_slice(body).map_err(Error::Parse)?;
    // The object as the API server sent it, to try the patch on: the typed pod drops
    // fields newer than this build's Kubernetes API version.
    let raw = value.pointer("/request/object").cloned();
    let old = value.pointer("/request/oldObject").cloned();
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(Error::Parse)?;
    if review.types.api_version != API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(Error::Version {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| Error::NoRequest)?;
    if request.operation == Operation::Update {
        return Ok(guard(&request, raw, old).into_review());
    }
    Ok(admit(&request, raw, config).into_review())
}

/// The JSON answer. `patch` is Go's `[]byte`, which the API documents as base64; kube's
/// `AdmissionResponse` writes it as an array of numbers (kube-rs/kube#1781), which
/// Go's decoder happens to accept too. Write the documented form.
pub fn encode(review: &AdmissionReview<DynamicObject>) -> Result<Vec<u8>, Error> {
    let mut value = serde_json::to_value(review).map_err(Error::Encode)?;
    if let Some(patch) = value.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).map_err(Error::Encode)?;
        *patch = serde_json::to_value(ByteString(bytes)).map_err(Error::Encode)?;
    }
    serde_json::to_vec(&value).map_err(Error::Encode)
}

fn admit(
    req: &AdmissionRequest<DynamicObject>,
    raw: Option<Value>,
    config: &Config,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    // The webhook configuration only sends pod CREATEs; anything else passes unchanged.
    if req.operation != Operation::Create || req.kind.kind != "Pod" || req.sub_resource.is_some() {
        return response;
    }
    let Some(raw) = raw.filter(|v| v.is_object()) else {
        return deny(response, bad_request("CREATE of a pod without an object"));
    };
    let pod: Pod = match serde_json::from_value(raw.clone()) {
        Ok(pod) => pod,
        Err(e) => return deny(response, bad_request(&format!("object is not a pod: {e}"))),
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let patch = match mutate::mutate(&pod, &namespace, config) {
        Ok(patch) => patch,
        Err(e) => {
            tracing::warn!(uid = %req.uid, %namespace, pod = %name, error = %e, "refused");
            return deny(response, e.status());
        }
    };
    if patch.0.is_empty() {
        tracing::info!(uid = %req.uid, %namespace, pod = %name, "unchanged");
        return response;
    }
    if let Err(e) = mutate::check(&raw, &patch) {
        tracing::error!(uid = %req.uid, %namespace, pod = %name, error = %e, "bad patch");
        return deny(
            response,
            internal(&format!("injector produced a bad patch: {e}")),
        );
    }
    let ops = patch.0.len();
    match response.clone().with_patch(patch) {
        Ok(r) => {
            tracing::info!(uid = %req.uid, %namespace, pod = %name, ops, "injected");
            r
        }
        Err(e) => deny(
            response,
            internal(&format!("failed to encode the patch: {e}")),
        ),
    }
}

/// An UPDATE of a pod (or of its ephemeral containers): refused when it would hand the
/// proxy's place or credential to something else (`mutate::guard_update`); never patched.
fn guard(
    req: &AdmissionRequest<DynamicObject>,
    raw: Option<Value>,
    old: Option<Value>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let pod_update = req.kind.kind == "Pod"
        && matches!(
            req.sub_resource.as_deref(),
            None | Some("ephemeralcontainers")
        );
    if !pod_update {
        return response;
    }
    let parse = |v: Option<Value>| -> Result<Pod, String> {
        let v = v.filter(|v| v.is_object()).ok_or("no object")?;
        serde_json::from_value(v).map_err(|e| format!("not a pod: {e}"))
    };
    let (new, old) = match (parse(raw), parse(old)) {
        (Ok(new), Ok(old)) => (new, old),
        (Err(e), _) | (_, Err(e)) => {
            return deny(response, bad_request(&format!("UPDATE of a pod: {e}")))
        }
    };
    match mutate::guard_update(&old, &new) {
        Ok(()) => response,
        Err(e) => {
            let namespace = req.namespace.clone().unwrap_or_default();
            let name = new.metadata.name.clone().unwrap_or_default();
            tracing::warn!(uid = %req.uid, %namespace, pod = %name, error = %e, "update refused");
            deny(response, e.status())
        }
    }
}

fn deny(mut response: AdmissionResponse, status: Status) -> AdmissionResponse {
    response.allowed = false;
    response.result = status;
    response
}

fn bad_request(message: &str) -> Status {
    Status::failure(&format!("chaperone-injector: {message}"), "BadRequest").with_code(400)
}

fn internal(message: &str) -> Status {
    Status::failure(&format!("chaperone-injector: {message}"), "InternalError").with_code(500)
}
