//! Watch streams: newline-terminated `{"type":…,"object":…}` events over a chunked
//! `application/json` response, each written as soon as it happens.
//!
//! Semantics follow the real server: no (or `0`) resourceVersion announces current
//! objects as ADDED first; a resourceVersion resumes after it (410 Expired as an ERROR
//! event if history no longer reaches back); `sendInitialEvents=true` ends the initial
//! ADDED events with a BOOKMARK annotated `k8s.io/initial-events-end`; with
//! `allowWatchBookmarks=true` a BOOKMARK is sent periodically; selector watches turn
//! changes that enter or leave the selection into ADDED/DELETED; Table watches carry
//! the column definitions in the first event only. Every stream ends at
//! `timeoutSeconds` (default 30 minutes, at most an hour) or when the client leaves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{interval_at, sleep, Instant};

use super::handler::Ctx;
use super::registry::ResourceDef;
use super::rest::Selectors;
use super::status::{streaming_response, ApiError};
use super::store::{present, Event, EventType, Store};
use super::table::{self, Include, Output};
use super::Body;

const DEFAULT_TIMEOUT: u64 = 1800;
const MAX_TIMEOUT: u64 = 3600;
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// Per-stream rendering state.
struct Renderer {
    def: ResourceDef,
    output: Output,
    include: Include,
    headers_sent: bool,
}

impl Renderer {
    fn line(&mut self, etype: &str, obj: &Value) -> Bytes {
        let object = match self.output {
            Output::Plain => obj.clone(),
            Output::Partial(v) => table::partial(obj, v),
            Output::Table(v) => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let t = table::table(
                    &self.def,
                    std::slice::from_ref(obj),
                    self.include,
                    !self.headers_sent,
                    json!({"resourceVersion": rv}),
                    v,
                );
                self.headers_sent = true;
                t
            }
        };
        event_line(etype, object)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta}),
        )
    }
}

/// `{"type":…,"object":…}\n`, written by hand to keep the real server's key order.
fn event_line(etype: &str, object: Value) -> Bytes {
    let object = serde_json::to_string(&object).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("{{\"type\":\"{etype}\",\"object\":{object}}}\n"))
}

/// Which event, if any, a stored change becomes for this watcher.
fn translate(
    ev: &Event,
    def: &ResourceDef,
    ns: Option<&str>,
    name: Option<&str>,
    sel: &Selectors,
) -> Option<&'static str> {
    if ev.group != def.group || ev.resource != def.plural || ns.is_some_and(|n| n != ev.namespace) {
        return None;
    }
    let named = |o: &Value| {
        name.is_none_or(|n| o.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
    };
    let now = named(&ev.object) && sel.matches(&ev.object);
    match ev.etype {
        EventType::Added | EventType::Deleted => now.then_some(ev.etype.as_str()),
        EventType::Modified => {
            let before = ev.old.as_ref().is_some_and(|o| named(o) && sel.matches(o));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

pub(crate) fn serve(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    ns: Option<&str>,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let sel = Selectors::parse(ctx)?;
    let name = name
        .map(str::to_string)
        .or_else(|| sel.fields.name().map(str::to_string));
    let send_initial = ctx.flag("sendInitialEvents");
    let from = match ctx.q("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        _ if send_initial => None,
        rv => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(MAX_TIMEOUT);
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let mut renderer = Renderer {
        def: def.clone(),
        output: ctx.output,
        include: Include::parse(ctx.q("includeObject")),
        headers_sent: false,
    };
    let (resp, tx) = streaming_response("application/json");
    let start = match store.watch(def, ns, from) {
        Ok(s) => s,
        Err(e) => {
            // The watch cache reports an expired resourceVersion as an ERROR event.
            let line = event_line("ERROR", e.to_status());
            tokio::spawn(async move {
                let _ = tx.send(line).await;
            });
            return Ok(resp);
        }
    };
    let ns = ns.map(str::to_string);
    let def = def.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut last_rv = start.rv;
        let mut rx = start.rx;
        let mut initial: Vec<Bytes> = start
            .current
            .iter()
            .filter(|o| {
                sel.matches(o)
                    && name.as_deref().is_none_or(|n| {
                        o.pointer("/metadata/name").and_then(Value::as_str) == Some(n)
                    })
            })
            .map(|o| renderer.line("ADDED", o))
            .collect();
        if send_initial {
            initial.push(renderer.bookmark(last_rv, true));
        }
        for ev in &start.replay {
            last_rv = ev.rv;
            if let Some(t) = translate(ev, &def, ns.as_deref(), name.as_deref(), &sel) {
                initial.push(renderer.line(t, &present(&def, ev.object.clone())));
            }
        }
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let mut ticker = interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        let timeout = sleep(deadline.saturating_duration_since(Instant::now()));
        tokio::pin!(timeout);
        loop {
            let line = tokio::select! {
                _ = &mut timeout => break,
                _ = tx.closed() => break,
                _ = ticker.tick(), if bookmarks => renderer.bookmark(last_rv, false),
                r = rx.recv() => match r {
                    Ok(ev) => {
                        last_rv = ev.rv;
                        match translate(&ev, &def, ns.as_deref(), name.as_deref(), &sel) {
                            Some(t) => renderer.line(t, &present(&def, ev.object.clone())),
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too far behind to be exact: tell the client to re-list.
                        let e = ApiError::new(410, "Expired", "the watch fell behind; re-list and watch again");
                        let _ = tx.send(event_line("ERROR", e.to_status())).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if !send_until(&tx, line, deadline).await {
                break;
            }
        }
    });
    Ok(resp)
}

/// Sends one chunk unless the deadline passes first; false when the stream should end.
pub(crate) async fn send_until(tx: &mpsc::Sender<Bytes>, line: Bytes, deadline: Instant) -> bool {
    tokio::select! {
        r = tx.send(line) => r.is_ok(),
        _ = tokio::time::sleep_until(deadline) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::registry::builtins;
    use http::{HeaderMap, Method};

    fn ev(etype: EventType, obj: Value, old: Option<Value>) -> Event {
        Event {
            rv: 1,
            group: String::new(),
            resource: "pods".into(),
            namespace: "default".into(),
            etype,
            object: obj,
            old,
        }
    }

    #[test]
    fn selector_transitions() {
        let def = builtins().into_iter().find(|d| d.plural == "pods").unwrap();
        let ctx = Ctx {
            method: Method::GET,
            query: vec![("labelSelector".into(), "app=web".into())],
            headers: HeaderMap::new(),
            output: Output::Plain,
        };
        let sel = Selectors::parse(&ctx).unwrap();
        let web = json!({"metadata": {"name": "p", "labels": {"app": "web"}}});
        let other = json!({"metadata": {"name": "p", "labels": {"app": "db"}}});
        let t = |e: &Event| translate(e, &def, Some("default"), None, &sel);
        assert_eq!(t(&ev(EventType::Added, web.clone(), None)), Some("ADDED"));
        assert_eq!(t(&ev(EventType::Added, other.clone(), None)), None);
        assert_eq!(
            t(&ev(EventType::Modified, web.clone(), Some(other.clone()))),
            Some("ADDED")
        );
        assert_eq!(
            t(&ev(EventType::Modified, other.clone(), Some(web.clone()))),
            Some("DELETED")
        );
        assert_eq!(
            t(&ev(EventType::Modified, web.clone(), Some(web.clone()))),
            Some("MODIFIED")
        );
        assert_eq!(
            translate(
                &ev(EventType::Added, web.clone(), None),
                &def,
                Some("kube-system"),
                None,
                &sel
            ),
            None
        );
        assert_eq!(
            translate(
                &ev(EventType::Added, web, None),
                &def,
                None,
                Some("q"),
                &sel
            ),
            None
        );
    }

    #[test]
    fn table_events_carry_headers_once() {
        let def = builtins()
            .into_iter()
            .find(|d| d.plural == "configmaps")
            .unwrap();
        let mut r = Renderer {
            def,
            output: Output::Table("v1"),
            include: Include::Metadata,
            headers_sent: false,
        };
        let obj = json!({"metadata": {"name": "c", "resourceVersion": "3"}});
        let first: Value = serde_json::from_slice(&r.line("ADDED", &obj)).unwrap();
        let second: Value = serde_json::from_slice(&r.line("MODIFIED", &obj)).unwrap();
        assert_eq!(first["object"]["kind"], "Table");
        assert!(!first["object"]["columnDefinitions"]
            .as_array()
            .unwrap()
            .is_empty());
        assert!(second["object"]["columnDefinitions"]
            .as_array()
            .unwrap()
            .is_empty());
        let b: Value = serde_json::from_slice(&r.bookmark(9, true)).unwrap();
        assert_eq!(
            b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(b["object"]["metadata"]["resourceVersion"], "9");
    }
}
