//! Keeps a labelled namespace's AccessRequests from piling up, as kube-controller-manager's
//! CSR cleaner keeps CertificateSigningRequests: one decided is deleted `keepDecided`
//! after its decision and any grant it gives have ended (default 1 hour); one never
//! decided, `keepPending` after the proxy stopped waiting for it (default 24 hours: a
//! reviewer may still approve it, and the caller's retry is then let through).
//!
//! Proxies do not need an AccessRequest past those times (a grant they have seen is kept
//! in memory; a request held again is asked again), and the record of each decision is in
//! the proxy's audit events and the cluster's audit log, not in the object.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use time::OffsetDateTime;

use crate::pki::parse_time;

/// How long AccessRequests are kept; a zero keeps them for good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// After the decision, or the end of the grant it gives, whichever is later.
    pub decided: Duration,
    /// After the hold (`spec.expiresAt`) of a request nobody decided.
    pub pending: Duration,
}

/// Objects listed per page.
const PAGE: u32 = 500;

/// The `chaperone.dev/v1alpha1` AccessRequest resource.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("chaperone.dev", "v1alpha1", "AccessRequest"),
        "accessrequests",
    )
}

/// When `object` (an AccessRequest: `metadata`, `spec`, `status`) may be deleted, or
/// `None` while it is to be kept for good. Times that are missing or unreadable fall back
/// to the object's creation.
pub fn deletable_at(object: &Value, retention: &Retention) -> Option<OffsetDateTime> {
    let time = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .and_then(parse_time)
    };
    let created = time("/metadata/creationTimestamp");
    let (since, keep) = match object.pointer("/status/phase").and_then(Value::as_str) {
        Some("Approved") => {
            let ended = match (time("/status/decidedAt"), time("/status/grantUntil")) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            (ended.or(created), retention.decided)
        }
        Some("Denied" | "Expired") => (time("/status/decidedAt").or(created), retention.decided),
        _ => (time("/spec/expiresAt").or(created), retention.pending),
    };
    if keep.is_zero() {
        return None;
    }
    Some(since? + keep)
}

/// Deletes the AccessRequests of `namespace` that are past their retention, and says
/// when the next one will be. A namespace without the AccessRequest resource (its CRD
/// not installed) has none. Each delete is guarded by the object's uid and
/// resourceVersion: one decided again or replaced meanwhile is left for the next look.
pub async fn sweep(
    client: &Client,
    namespace: &str,
    retention: &Retention,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, kube::Error> {
    if retention.decided.is_zero() && retention.pending.is_zero() {
        return Ok(None);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource());
    let mut next: Option<OffsetDateTime> = None;
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        };
        for object in &page.items {
            let value = serde_json::to_value(object).unwrap_or(Value::Null);
            let Some(due) = deletable_at(&value, retention) else {
                continue;
            };
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let Some(name) = object.metadata.name.as_deref() else {
                continue;
            };
            let guard = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: object.metadata.uid.clone(),
                    resource_version: object.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            let phase = value
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Pending");
            match api.delete(name, &guard).await {
                Ok(_) => {
                    tracing::info!(%namespace, access_request = %name, %phase, "deleted past its retention")
                }
                // Gone already, or changed since listed: the next look decides again.
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    tracing::debug!(%namespace, access_request = %name, code = e.code, "not deleted")
                }
                Err(e) => return Err(e),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(s: &str) -> OffsetDateTime {
        parse_time(s).unwrap()
    }

    #[test]
    fn each_phase_is_kept_for_its_time_after_what_it_waits_on() {
        let keep = Retention {
            decided: HOUR,
            pending: 24 * HOUR,
        };
        let created = "2026-11-20T10:00:00Z";
        // (what, spec.expiresAt, status, deletable at)
        let rows: &[(&str, Option<&str>, Value, Option<&str>)] = &[
            (
                "approved: the later of decision and grant, plus an hour",
                None,
                json!({"phase": "Approved", "decidedAt": "2026-11-20T10:05:00Z", "grantUntil": "2026-11-20T10:20:00Z"}),
                Some("2026-11-20T11:20:00Z"),
            ),
            (
                "approved with a grant ending before the decision (clock skew)",
                None,
                json!({"phase": "Approved", "decidedAt": "2026-11-20T10:05:00Z", "grantUntil": "2026-11-20T10:00:00Z"}),
                Some("2026-11-20T11:05:00Z"),
            ),
            (
                "approved by hand, no grantUntil",
                None,
                json!({"phase": "Approved", "decidedAt": "2026-11-20T10:05:00Z"}),
                Some("2026-11-20T11:05:00Z"),
            ),
            (
                "approved, times unreadable: from creation",
                None,
                json!({"phase": "Approved", "decidedAt": "yesterday", "grantUntil": 5}),
                Some("2026-11-20T11:00:00Z"),
            ),
            (
                "denied",
                Some("2026-11-20T10:01:00Z"),
                json!({"phase": "Denied", "decidedAt": "2026-11-20T10:00:30Z"}),
                Some("2026-11-20T11:00:30Z"),
            ),
            (
                "expired",
                None,
                json!({"phase": "Expired", "decidedAt": "2026-11-20T10:02:00Z"}),
                Some("2026-11-20T11:02:00Z"),
            ),
            (
                "pending: a day after its hold",
                Some("2026-11-20T10:01:00Z"),
                Value::Null,
                Some("2026-11-21T10:01:00Z"),
            ),
            (
                "pending with one approval of two",
                Some("2026-11-20T10:01:00Z"),
                json!({"approvals": [{"user": "alice"}]}),
                Some("2026-11-21T10:01:00Z"),
            ),
            (
                "an unknown phase is pending",
                Some("2026-11-20T10:01:00Z"),
                json!({"phase": "Weird"}),
                Some("2026-11-21T10:01:00Z"),
            ),
            (
                "pending without expiresAt: from creation",
                None,
                Value::Null,
                Some("2026-11-21T10:00:00Z"),
            ),
        ];
        for (what, expires, status, want) in rows {
            let mut object =
                json!({"metadata": {"name": "x", "creationTimestamp": created}, "spec": {}});
            if let Some(e) = expires {
                object["spec"]["expiresAt"] = json!(e);
            }
            if !status.is_null() {
                object["status"] = status.clone();
            }
            assert_eq!(deletable_at(&object, &keep), want.map(at), "{what}");
        }
    }

    #[test]
    fn zero_keeps_for_good_and_no_time_at_all_keeps() {
        let denied = json!({"metadata": {"creationTimestamp": "2026-11-20T10:00:00Z"}, "status": {"phase": "Denied"}});
        let pending =
            json!({"metadata": {"creationTimestamp": "2026-11-20T10:00:00Z"}, "spec": {}});
        let only_pending = Retention {
            decided: Duration::ZERO,
            pending: HOUR,
        };
        assert_eq!(deletable_at(&denied, &only_pending), None);
        assert_eq!(
            deletable_at(&pending, &only_pending),
            Some(at("2026-11-20T11:00:00Z"))
        );
        let no_times = json!({"metadata": {"name": "x"}, "status": {"phase": "Denied"}});
        let keep = Retention {
            decided: HOUR,
            pending: HOUR,
        };
        assert_eq!(deletable_at(&no_times, &keep), None);
    }
}
