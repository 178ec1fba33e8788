//! Questions callers ask about themselves, answered by chaperone and never forwarded.
//!
//! Forwarded, the API server would answer for the credential chaperone forwards with,
//! not for the caller: `kubectl auth can-i` would report the proxy's permissions and
//! `kubectl auth whoami` the proxy's service account. So chaperone answers both itself:
//!
//! - `SelfSubjectAccessReview` (`authorization.k8s.io`): the policy's decision for the
//!   attributes asked about, as it would decide that request (an `approve` rule is "not
//!   allowed, not denied", with the reason saying a reviewer decides);
//! - `SelfSubjectRulesReview` (`authorization.k8s.io`, `kubectl auth can-i --list`): no
//!   rules, marked incomplete, with an evaluation error saying why. A rules review lists
//!   what is allowed, and its readers take every rule listed as safe to use ("rules are
//!   additive"). chaperone's deny and approve rules narrow its allow rules in ways such a
//!   list cannot show, so the only list that holds is the empty one (the API server
//!   answers the same way for authorizers that cannot list their rules);
//! - `SelfSubjectReview` (`authentication.k8s.io`): the caller chaperone authenticated.
//!
//! MCP servers ask the first to decide which tools and namespaces to offer.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::Body;
use crate::identity::Subject;
use crate::places::PerCaller;
use crate::policy::{Action, Commands, Decision, InForce};
use crate::request_info::{Attributes, RequestInfo};
use crate::status::Status;

/// The largest review body read; real ones are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// Review bodies one caller may have being read at once: each is buffered (up to
/// [`MAX_BODY`]), and a caller sending them slowly on many connections must not make
/// the proxy buffer any number. A client asks one question at a time or a few at once.
pub const MAX_READING_PER_CALLER: usize = 16;

/// The rule name audit events carry for answers chaperone gave itself.
pub const RULE: &str = "builtin:self-review";

/// Which question a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    Access,
    Rules,
    Subject,
}

impl Review {
    /// The question `info` asks, if it is one of these.
    pub fn of(info: &RequestInfo) -> Option<Review> {
        if !info.is_resource_request || info.verb != "create" || !info.subresource.is_empty() {
            return None;
        }
        match (info.api_group.as_str(), info.resource.as_str()) {
            ("authorization.k8s.io", "selfsubjectaccessreviews") => Some(Review::Access),
            ("authorization.k8s.io", "selfsubjectrulesreviews") => Some(Review::Rules),
            ("authentication.k8s.io", "selfsubjectreviews") => Some(Review::Subject),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("chaperone answers self reviews itself and reads them as JSON or protobuf, not {0:?}")]
    ContentType(String),
    #[error("the review body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the review body could not be read: {0}")]
    Read(String),
    #[error("the review is not valid: {0}")]
    Invalid(String),
    #[error(
        "{user} already has {max} reviews of its own access being read; this one is \
         refused until one of them has been sent whole"
    )]
    TooMany { user: String, max: usize },
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::ContentType(_) => Status::failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                self.to_string(),
            ),
            Error::TooLarge => Status::failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                self.to_string(),
            ),
            Error::Read(_) | Error::Invalid(_) => Status::bad_request(self.to_string()),
            Error::TooMany { .. } => Status::too_many_requests(self.to_string()),
        }
    }
}

/// What chaperone answered, for the audit record.
pub struct Answer {
    pub response: Response<Body>,
    /// One line saying what was asked and answered.
    pub summary: String,
}

/// Reads the review from `body` (counted in `reading` while it arrives) and answers it
/// for `who`.
pub async fn answer<B>(
    review: Review,
    info: &RequestInfo,
    content_type: &str,
    body: B,
    who: &Subject,
    policy: &InForce<'_>,
    reading: &Arc<PerCaller>,
) -> Result<Answer, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let place = reading
        .take(&who.user, MAX_READING_PER_CALLER)
        .ok_or_else(|| Error::TooMany {
            user: who.user.clone(),
            max: MAX_READING_PER_CALLER,
        })?;
    let text = read(body).await?;
    drop(place);
    let sent: Value = match media {
        _ if text.is_empty() => json!({}),
        // Read as the API server reads it: a key named twice is refused, not answered
        // for one of its values.
        "" | "application/json" => {
            crate::json_once::parse(&text).map_err(|e| Error::Invalid(e.to_string()))?
        }
        // kubectl's typed clients send these as protobuf.
        "application/vnd.kubernetes.protobuf" => {
            crate::protobuf::decode(&text).map_err(Error::Invalid)?
        }
        other => return Err(Error::ContentType(other.to_owned())),
    };
    let api_version = format!("{}/{}", info.api_group, info.api_version);
    let (object, summary) = match review {
        Review::Access => access(&sent, &api_version, who, policy)?,
        Review::Rules => rules(&sent, &api_version),
        Review::Subject => subject(&api_version, who),
    };
    let bytes = serde_json::to_vec(&object).map_err(|e| Error::Invalid(e.to_string()))?;
    let response = Response::builder()
        .status(StatusCode::CREATED)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(crate::body::full(bytes))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Answer { response, summary })
}

async fn read<B>(body: B) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    crate::body::read_limited(body, MAX_BODY)
        .await
        .map_err(|e| match e {
            crate::body::ReadError::TooLarge => Error::TooLarge,
            crate::body::ReadError::Failed(why) => Error::Read(why),
        })
}

/// `SelfSubjectAccessReview`: the policy's decision for the attributes in `spec`.
fn access(
    sent: &Value,
    api_version: &str,
    who: &Subject,
    policy: &InForce<'_>,
) -> Result<(Value, String), Error> {
    let spec = &sent["spec"];
    let asked = asked(spec)?;
    // A review names no command: an exec is allowed if some command is.
    let decision = policy.decide(who, &asked, Commands::Any);
    // A member of the rule's `skipGroups` goes through without review.
    let skips =
        decision.applied() == Action::Approve && decision.approval().is_some_and(|a| a.skips(who));
    let (mut allowed, denied) = match decision.applied() {
        Action::Allow => (true, false),
        Action::Approve => (skips, false),
        Action::Deny => (false, true),
    };
    let mut reason = match skips {
        true => format!(
            "rule {:?} holds this request for approval, but not for {}: a member of its skipGroups",
            decision.rule(),
            who.user
        ),
        false => reason(&decision),
    };
    // A question about `*` is about all of it: a yes would say more than enforcement
    // does where a rule denies or holds part of it.
    let mut partly = false;
    if allowed {
        if let Some(rule) = policy.restricting_part(who, &asked) {
            (allowed, partly) = (false, true);
            let does = match rule.action {
                Action::Approve => "holds for approval",
                _ => "denies",
            };
            reason = format!(
                "rule {:?} {does} part of what `*` asks about, so not all of it is allowed",
                rule.name
            );
        }
    }
    let summary = format!(
        "can-i {} {}: {}",
        asked.verb,
        describe(&asked),
        if allowed {
            "yes"
        } else if denied {
            "no"
        } else if partly {
            "not all of it"
        } else {
            "after approval"
        }
    );
    let mut status = json!({"allowed": allowed, "reason": reason});
    if denied {
        status["denied"] = json!(true);
    }
    let object = json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    });
    Ok((object, summary))
}

fn reason(decision: &Decision) -> String {
    match decision.applied() {
        Action::Approve => format!(
            "chaperone holds this request for a reviewer's approval (rule {:?})",
            decision.rule()
        ),
        _ => decision.to_string(),
    }
}

/// The request a review's `spec` asks about, as request attributes.
fn asked(spec: &Value) -> Result<RequestInfo, Error> {
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    if let Some(attrs) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let (verb, group) = (text(attrs, "verb"), text(attrs, "group"));
        let (resource, subresource) = (text(attrs, "resource"), text(attrs, "subresource"));
        let (namespace, name) = (text(attrs, "namespace"), text(attrs, "name"));
        if verb.is_empty() || resource.is_empty() {
            return Err(Error::Invalid(
                "spec.resourceAttributes needs a verb and a resource".into(),
            ));
        }
        return Ok(RequestInfo::from_attributes(Attributes {
            verb: &verb,
            group: &group,
            version: &text(attrs, "version"),
            namespace: &namespace,
            resource: &resource,
            subresource: &subresource,
            name: &name,
        }));
    }
    if let Some(attrs) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        let (path, verb) = (text(attrs, "path"), text(attrs, "verb"));
        if path.is_empty() || verb.is_empty() {
            return Err(Error::Invalid(
                "spec.nonResourceAttributes needs a path and a verb".into(),
            ));
        }
        return Ok(RequestInfo {
            is_resource_request: false,
            path,
            verb,
            ..Default::default()
        });
    }
    Err(Error::Invalid(
        "spec needs resourceAttributes or nonResourceAttributes".into(),
    ))
}

fn describe(info: &RequestInfo) -> String {
    if !info.is_resource_request {
        return info.path.clone();
    }
    let mut what = info.resource.clone();
    if !info.api_group.is_empty() {
        what = format!("{what}.{}", info.api_group);
    }
    if !info.subresource.is_empty() {
        what = format!("{what}/{}", info.subresource);
    }
    if !info.name.is_empty() {
        what = format!("{what} {}", info.name);
    }
    if !info.namespace.is_empty() {
        what = format!("{what} in {}", info.namespace);
    }
    what
}

/// Why a rules review lists nothing.
const NO_RULES: &str = "chaperone decides each request from its policy, whose deny and \
    approve rules narrow what its allow rules grant in ways a list of allowed rules cannot \
    show, so it lists none; ask about one request instead (kubectl auth can-i VERB RESOURCE)";

/// `SelfSubjectRulesReview`: no rules, incomplete, saying why (see the module's doc).
fn rules(sent: &Value, api_version: &str) -> (Value, String) {
    let spec = &sent["spec"];
    let namespace = spec["namespace"].as_str().unwrap_or_default();
    let object = json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {
            "resourceRules": [],
            "nonResourceRules": [],
            "incomplete": true,
            "evaluationError": NO_RULES,
        },
    });
    let summary = match namespace {
        "" => "can-i --list: no rules listed (incomplete)".to_owned(),
        ns => format!("can-i --list in {ns}: no rules listed (incomplete)"),
    };
    (object, summary)
}

/// `SelfSubjectReview`: the caller as chaperone authenticated it.
fn subject(api_version: &str, who: &Subject) -> (Value, String) {
    let mut user = json!({"username": who.user, "groups": who.groups});
    if !who.uid.is_empty() {
        user["uid"] = json!(who.uid);
    }
    if !who.extra.is_empty() {
        user["extra"] = json!(who.extra);
    }
    let object = json!({
        "kind": "SelfSubjectReview",
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": user},
    });
    (object, format!("whoami: {}", who.user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, path: &str) -> RequestInfo {
        crate::request_info::resolve(&method.parse().unwrap(), &path.parse().unwrap()).unwrap()
    }

    #[test]
    fn only_creates_of_the_three_reviews_are_answered_here() {
        let cases = [
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                Some(Review::Access),
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1beta1/selfsubjectaccessreviews",
                Some(Review::Access),
            ),
            (
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                Some(Review::Subject),
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                Some(Review::Rules),
            ),
            (
                "GET",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                None,
            ),
            // Reviews about others go to the policy like any request.
            (
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                None,
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews",
                None,
            ),
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", None),
            ("POST", "/api/v1/namespaces/default/pods", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(Review::of(&info(method, path)), want, "{method} {path}");
        }
    }

    #[test]
    fn asked_attributes_resolve_like_the_request_they_describe() {
        let cases = [
            (
                json!({"resourceAttributes": {"verb": "delete", "resource": "pods", "namespace": "default", "name": "nginx"}}),
                "DELETE",
                "/api/v1/namespaces/default/pods/nginx",
            ),
            (
                json!({"resourceAttributes": {"verb": "list", "group": "apps", "resource": "deployments"}}),
                "GET",
                "/apis/apps/v1/deployments",
            ),
            (
                json!({"resourceAttributes": {"verb": "create", "resource": "pods", "subresource": "exec", "namespace": "team-a", "name": "web-0"}}),
                "POST",
                "/api/v1/namespaces/team-a/pods/web-0/exec",
            ),
            (
                json!({"resourceAttributes": {"verb": "patch", "group": "apps", "version": "v1", "resource": "deployments", "subresource": "scale", "namespace": "default", "name": "web"}}),
                "PATCH",
                "/apis/apps/v1/namespaces/default/deployments/web/scale",
            ),
            // A Namespace's own requests are in the namespace they name; kubectl sends
            // the current namespace along.
            (
                json!({"resourceAttributes": {"verb": "delete", "resource": "namespaces", "namespace": "default", "name": "kube-system"}}),
                "DELETE",
                "/api/v1/namespaces/kube-system",
            ),
            (
                json!({"resourceAttributes": {"verb": "update", "resource": "namespaces", "subresource": "finalize", "name": "old"}}),
                "PUT",
                "/api/v1/namespaces/old/finalize",
            ),
            (
                json!({"resourceAttributes": {"verb": "list", "resource": "namespaces", "namespace": "default"}}),
                "GET",
                "/api/v1/namespaces/default/namespaces",
            ),
        ];
        for (spec, method, path) in cases {
            let got = asked(&spec).unwrap();
            let want = info(method, path);
            assert_eq!(
                (
                    &got.verb,
                    &got.api_group,
                    &got.resource,
                    &got.subresource,
                    &got.namespace,
                    &got.name,
                    &got.path
                ),
                (
                    &want.verb,
                    &want.api_group,
                    &want.resource,
                    &want.subresource,
                    &want.namespace,
                    &want.name,
                    &want.path
                ),
                "{spec}"
            );
        }
        let health =
            asked(&json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}})).unwrap();
        assert!(!health.is_resource_request);
        assert_eq!(
            (health.path.as_str(), health.verb.as_str()),
            ("/healthz", "get")
        );
        for bad in [
            json!({}),
            json!({"resourceAttributes": {"verb": "get"}}),
            json!({"nonResourceAttributes": {"path": "/healthz"}}),
        ] {
            assert!(matches!(asked(&bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}
