//! The proxy's view of the AccessRequests in its namespace: a kube-rs watcher,
//! through the proxy's own upstream, kept as a map from name to object.
//!
//! Held requests wait on it rather than each polling the API server: one list and one
//! long-lived watch serve every waiter, and a reviewer's decision reaches them as soon
//! as the API server sends the event. When the watch is broken (the API server
//! unreachable, the CRD missing, RBAC refusing), [`Watch::health`] says why, and the
//! caller falls back to reading the object directly or fails closed.

use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde_json::Value;

use crate::upstream::{self, Upstream};

/// What the watcher has seen, shared with every waiter.
#[derive(Default)]
struct Seen {
    objects: HashMap<String, Value>,
    /// Objects of a relist in progress, swapped in when it completes.
    relisting: Option<HashMap<String, Value>>,
    /// Whether a complete list has been seen.
    synced: bool,
    /// The last error of the watch, until it recovers.
    error: Option<String>,
}

/// A running watch of AccessRequests; the watcher task stops when this is dropped.
pub struct Watch {
    seen: Arc<Mutex<Seen>>,
    changed: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `chaperone.dev/v1alpha1` `AccessRequest`.
fn resource() -> ApiResource {
    ApiResource {
        group: "chaperone.dev".into(),
        version: "v1alpha1".into(),
        api_version: "chaperone.dev/v1alpha1".into(),
        kind: "AccessRequest".into(),
        plural: "accessrequests".into(),
    }
}

fn to_value(object: DynamicObject) -> Option<(String, Value)> {
    let name = object.metadata.name.clone()?;
    serde_json::to_value(object).ok().map(|v| (name, v))
}

impl Watch {
    /// Starts watching the AccessRequests in `namespace`.
    pub fn start(upstream: Arc<Upstream>, namespace: &str) -> Watch {
        let client = kube::Client::new(upstream::Service(upstream), namespace.to_owned());
        let api: kube::Api<DynamicObject> =
            kube::Api::namespaced_with(client, namespace, &resource());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tell, changed) = tokio::sync::watch::channel(0u64);
        let state = seen.clone();
        let namespace = namespace.to_owned();
        let task = tokio::spawn(async move {
            // The default backoff retries a broken watch (1 s doubling to 30 s); every
            // error is kept for the waiters until the watch recovers.
            let mut events = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(
                watcher::watcher(api, watcher::Config::default())
            ));
            while let Some(event) = events.next().await {
                {
                    let mut seen = state.locked();
                    match event {
                        Ok(watcher::Event::Init) => seen.relisting = Some(HashMap::new()),
                        Ok(watcher::Event::InitApply(object)) => {
                            if let (Some(list), Some((name, v))) =
                                (seen.relisting.as_mut(), to_value(object))
                            {
                                list.insert(name, v);
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(list) = seen.relisting.take() {
                                seen.objects = list;
                            }
                            seen.synced = true;
                            seen.error = None;
                        }
                        Ok(watcher::Event::Apply(object)) => {
                            if let Some((name, v)) = to_value(object) {
                                seen.objects.insert(name, v);
                            }
                            seen.error = None;
                        }
                        Ok(watcher::Event::Delete(object)) => {
                            if let Some(name) = object.metadata.name {
                                seen.objects.remove(&name);
                            }
                            seen.error = None;
                        }
                        // Until the next event: the watcher resumes from the last
                        // resourceVersion, or lists again when that is too old.
                        Err(e) => {
                            tracing::warn!(%namespace, error = %e, "watching AccessRequests failed; retrying");
                            seen.error = Some(e.to_string());
                        }
                    }
                }
                tell.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Watch {
            seen,
            changed,
            task,
        }
    }

    /// The AccessRequest `name` as last seen.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.lock().objects.get(name).cloned()
    }

    /// `Ok` while the watch is in sync with the API server; else why not.
    pub fn health(&self) -> Result<(), String> {
        let seen = self.lock();
        match (&seen.error, seen.synced) {
            (Some(e), _) => Err(e.clone()),
            (None, false) => Err("the watch of AccessRequests has not synced yet".into()),
            (None, true) => Ok(()),
        }
    }

    /// A receiver that wakes at every change the watcher sees.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.locked()
    }
}
