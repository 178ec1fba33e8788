//! Pod logs (`GET .../pods/NAME/log`): a few deterministic lines per container, and with
//! `follow=true` a new line every 200 ms, up to 50 lines in all or until the client leaves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::handler::Ctx;
use super::registry::ResourceDef;
use super::status::{streaming_response, text_response, ApiError};
use super::store::Store;
use super::util;
use super::watch::send_until;
use super::Body;

/// Lines every container has logged "so far".
const BASE_LINES: u64 = 5;
/// `follow` streams stop after this many lines in all.
const MAX_LINES: u64 = 50;
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Upper bound of a follow stream whatever the client asks.
const FOLLOW_LIMIT: Duration = Duration::from_secs(60);

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Line `i` (1-based) of a container's log; `timestamps` prefixes an RFC 3339 time
/// `i` seconds after the pod's creation, so output is stable across runs.
fn line(pod: &Value, container: &str, i: u64, timestamps: bool) -> String {
    let s = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (ns, name) = (s("/metadata/namespace"), s("/metadata/name"));
    // A pod may script what its log says (to try masking): annotation
    // `sandbox.chaperone.dev/log` replaces the text of line 2.
    let scripted = s("/metadata/annotations/sandbox.chaperone.dev~1log");
    let text = if i == 2 && !scripted.is_empty() {
        format!("[{container}] {ns}/{name}: {scripted}\n")
    } else {
        format!("[{container}] {ns}/{name}: sandbox log line {i}\n")
    };
    if !timestamps {
        return text;
    }
    let created = util::parse_rfc3339(&s("/metadata/creationTimestamp")).unwrap_or(0);
    let ts = util::rfc3339(created + i as i64).replace('Z', ".000000000Z");
    format!("{ts} {text}")
}

pub(crate) fn serve(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let pod = store
        .get(def, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    let containers = names(&pod, "containers");
    let init = names(&pod, "initContainers");
    let container = match ctx.q("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(&init).any(|x| x == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if ctx.flag("previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let timestamps = ctx.flag("timestamps");
    let tail = ctx
        .q("tailLines")
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|t| *t >= 0);
    let first = tail.map_or(1, |t| (BASE_LINES + 1).saturating_sub(t as u64).max(1));
    let base: String = (first..=BASE_LINES)
        .map(|i| line(&pod, &container, i, timestamps))
        .collect();
    if !ctx.flag("follow") {
        let mut bytes = base.into_bytes();
        if let Some(limit) = ctx.q("limitBytes").and_then(|l| l.parse::<usize>().ok()) {
            bytes.truncate(limit);
        }
        return Ok(text_response(StatusCode::OK, bytes));
    }
    let (resp, tx) = streaming_response("text/plain");
    tokio::spawn(async move {
        let deadline = Instant::now() + FOLLOW_LIMIT;
        if !base.is_empty() && !send_until(&tx, Bytes::from(base), deadline).await {
            return;
        }
        for i in BASE_LINES + 1..=MAX_LINES {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                _ = tx.closed() => return,
            }
            if !send_until(
                &tx,
                Bytes::from(line(&pod, &container, i, timestamps)),
                deadline,
            )
            .await
            {
                return;
            }
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_stable() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        assert_eq!(
            line(&pod, "nginx", 2, false),
            "[nginx] default/web: sandbox log line 2\n"
        );
        assert_eq!(
            line(&pod, "nginx", 2, true),
            "2024-01-01T00:00:02.000000000Z [nginx] default/web: sandbox log line 2\n"
        );
    }
}
