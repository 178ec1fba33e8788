//! The object store: objects keyed by resource and namespace/name, one global
//! resourceVersion counter, a bounded event history and a broadcast fan-out for watches.
//!
//! Everything runs under one `std::sync::Mutex` that is never held across an `.await`;
//! events are broadcast while the lock is held so every watcher sees them in
//! resourceVersion order, and a watch subscribes under the same lock it lists with, so
//! no event can fall between the initial state and the stream.

use crate::sync::Locked;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::defaults;
use super::registry::{self, ResourceDef};
use super::status::ApiError;
use super::util;

/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 2000;
/// Broadcast buffer; a watcher lagging further behind is ended with 410 Expired.
const FANOUT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as stored (the watch layer adapts apiVersion and applies selectors).
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub etype: EventType,
    pub object: Value,
    /// The object before a modification, so selector watches can turn a change that
    /// leaves or enters the selection into DELETED/ADDED as the real server does.
    pub old: Option<Value>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Main,
    Status,
}

/// Where a watch starts: objects to announce as ADDED, events to replay, and the live feed.
pub(crate) struct WatchStart {
    pub current: Vec<Value>,
    pub replay: Vec<Arc<Event>>,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub rv: u64,
}

type Objects = BTreeMap<(String, String), Value>;

struct State {
    defs: Vec<ResourceDef>,
    objects: HashMap<(String, String), Objects>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// The oldest resourceVersion a watch may resume from.
    floor: u64,
}

pub(crate) struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `obj.metadata`, created if missing (callers have checked `obj` is an object).
fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// The object as served for `def`: the requested version's apiVersion and kind.
pub(crate) fn present(def: &ResourceDef, mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(def.api_version()));
        o.insert("kind".into(), json!(def.kind));
    }
    obj
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
    }
    v
}

impl Store {
    pub fn new() -> Store {
        let (events, _) = broadcast::channel(FANOUT);
        Store {
            state: Mutex::new(State {
                defs: registry::builtins(),
                objects: HashMap::new(),
                rv: 1000,
                history: VecDeque::new(),
                floor: 1000,
            }),
            events,
        }
    }

    /// The state, even if a panicking thread poisoned the lock: every mutation below is
    /// completed before anything that could panic, so the data stays consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    pub fn defs(&self) -> Vec<ResourceDef> {
        self.lock().defs.clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.lock()
            .defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<ResourceDef> {
        self.lock()
            .defs
            .iter()
            .find(|d| d.api_version() == api_version && d.kind == kind)
            .cloned()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Marks everything stored so far as the start of history (after seeding).
    pub fn reset_history(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.floor = st.rv;
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Value> {
        let st = self.lock();
        st.objects
            .get(&(def.group.clone(), def.plural.clone()))
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .map(|o| present(def, o.clone()))
    }

    /// Objects of `def` in `ns` (all namespaces for `None`), sorted by namespace/name
    /// like etcd keys, with the current resourceVersion.
    pub fn list(&self, def: &ResourceDef, ns: Option<&str>) -> (Vec<Value>, u64) {
        let st = self.lock();
        (Self::list_locked(&st, def, ns), st.rv)
    }

    fn list_locked(st: &State, def: &ResourceDef, ns: Option<&str>) -> Vec<Value> {
        st.objects
            .get(&(def.group.clone(), def.plural.clone()))
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, o)| present(def, o.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn emit(
        &self,
        st: &mut State,
        def: &ResourceDef,
        etype: EventType,
        object: Value,
        old: Option<Value>,
    ) {
        let ev = Arc::new(Event {
            rv: st.rv,
            group: def.group.clone(),
            resource: def.plural.clone(),
            namespace: meta_str(&object, "namespace").to_string(),
            etype,
            object,
            old,
        });
        if st.history.len() >= HISTORY {
            if let Some(dropped) = st.history.pop_front() {
                st.floor = dropped.rv;
            }
        }
        st.history.push_back(ev.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(ev);
    }

    /// Creates `obj` (its namespace already set by the caller for namespaced resources).
    /// `keep_timestamps` keeps a given creationTimestamp (seeding only).
    pub fn create(
        &self,
        def: &ResourceDef,
        obj: Value,
        dry_run: bool,
        keep_timestamps: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.create_locked(&mut st, def, obj, dry_run, keep_timestamps)
    }

    fn create_locked(
        &self,
        st: &mut State,
        def: &ResourceDef,
        mut obj: Value,
        dry_run: bool,
        keep_timestamps: bool,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        let key = (def.group.clone(), def.plural.clone());
        let ns = if def.namespaced {
            meta_str(&obj, "namespace").to_string()
        } else {
            String::new()
        };
        if def.namespaced {
            let exists = st
                .objects
                .get(&(String::new(), "namespaces".to_string()))
                .is_some_and(|m| m.contains_key(&(String::new(), ns.clone())));
            if !exists {
                return Err(ApiError::not_found("", "namespaces", &ns));
            }
        }
        let mut name = meta_str(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &def.group,
                    &def.kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            // Bounded retries, as the real server retries name generation on conflict.
            for _ in 0..8 {
                let candidate = format!("{prefix}{}", util::random_suffix(5));
                if !st
                    .objects
                    .get(&key)
                    .is_some_and(|m| m.contains_key(&(ns.clone(), candidate.clone())))
                {
                    name = candidate;
                    break;
                }
            }
        }
        if st
            .objects
            .get(&key)
            .is_some_and(|m| m.contains_key(&(ns.clone(), name.clone())))
        {
            return Err(ApiError::already_exists(&def.group, &def.plural, &name));
        }
        let new_defs = if def.crd.is_none() && def.plural == "customresourcedefinitions" {
            let defs = registry::defs_from_crd(&obj).ok_or_else(|| {
                ApiError::invalid(
                    &def.group,
                    &def.kind,
                    &name,
                    "spec",
                    "Required value: group, names and versions are required",
                )
            })?;
            Some(defs)
        } else {
            None
        };
        let now = util::rfc3339(util::now_unix());
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            if def.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(util::new_uid()));
            if !(keep_timestamps && m.get("creationTimestamp").is_some_and(Value::is_string)) {
                m.insert("creationTimestamp".into(), json!(now));
            }
            if defaults::has_generation(def) {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
            m.remove("deletionTimestamp");
        }
        defaults::on_create(def, &mut obj);
        let mut obj = present(def, obj);
        if dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(st.rv.to_string()));
            return Ok(obj);
        }
        st.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(st.rv.to_string()));
        st.objects
            .entry(key)
            .or_default()
            .insert((ns, name), obj.clone());
        if let Some(defs) = new_defs {
            Self::register(st, defs);
        }
        self.emit(st, def, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces the resources a CRD serves (by CRD name) with `defs`.
    fn register(st: &mut State, defs: Vec<ResourceDef>) {
        let crd = defs.first().and_then(|d| d.crd.clone());
        st.defs.retain(|d| d.crd.is_none() || d.crd != crd);
        for d in defs {
            // A CRD never shadows a built-in or another CRD's resource.
            if !st
                .defs
                .iter()
                .any(|e| e.group == d.group && e.version == d.version && e.plural == d.plural)
            {
                st.defs.push(d);
            }
        }
    }

    /// Read-modify-write of one object under the lock. `f` gets the current object (or
    /// `None`) and returns the desired one; if there was none, the result is created
    /// (that is how server-side apply creates). Returns the stored object and whether it
    /// was created.
    pub fn write<F>(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        target: Target,
        dry_run: bool,
        f: F,
    ) -> Result<(Value, bool), ApiError>
    where
        F: FnOnce(Option<&Value>) -> Result<Value, ApiError>,
    {
        let mut st = self.lock();
        let key = (def.group.clone(), def.plural.clone());
        let okey = (ns.to_string(), name.to_string());
        let cur = st
            .objects
            .get(&key)
            .and_then(|m| m.get(&okey))
            .map(|o| present(def, o.clone()));
        let mut new = f(cur.as_ref())?;
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        {
            let m = meta_mut(&mut new);
            m.insert("name".into(), json!(name));
            if def.namespaced {
                m.insert("namespace".into(), json!(ns));
            }
        }
        let Some(cur) = cur else {
            if target == Target::Status {
                return Err(ApiError::not_found(&def.group, &def.plural, name));
            }
            meta_mut(&mut new).remove("resourceVersion");
            return self
                .create_locked(&mut st, def, new, dry_run, false)
                .map(|o| (o, true));
        };
        let want_rv = meta_str(&new, "resourceVersion");
        if !want_rv.is_empty() && want_rv != meta_str(&cur, "resourceVersion") {
            return Err(ApiError::conflict(&def.group, &def.plural, name));
        }
        let mut new = match target {
            Target::Status => {
                let mut merged = cur.clone();
                match new.get("status") {
                    Some(s) => merged["status"] = s.clone(),
                    None => {
                        merged.as_object_mut().map(|o| o.remove("status"));
                    }
                }
                merged
            }
            // With a status subresource the main endpoint ignores status changes.
            Target::Main if def.has_sub("status") => {
                match cur.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|o| o.remove("status"));
                    }
                }
                new
            }
            Target::Main => new,
        };
        {
            let old_meta = cur.get("metadata").cloned().unwrap_or_else(|| json!({}));
            let bump = spec_part(&cur) != spec_part(&new);
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "resourceVersion",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            match old_meta.get("generation").and_then(Value::as_i64) {
                Some(generation) => m.insert(
                    "generation".into(),
                    json!(if bump { generation + 1 } else { generation }),
                ),
                None => m.remove("generation"),
            };
        }
        defaults::on_update(def, &cur, &mut new);
        let new = present(def, new);
        // A no-op write changes nothing and emits nothing, like the real server.
        if new == cur || dry_run {
            return Ok((new, false));
        }
        let new_defs = if def.crd.is_none() && def.plural == "customresourcedefinitions" {
            registry::defs_from_crd(&new)
        } else {
            None
        };
        let mut new = new;
        st.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(st.rv.to_string()));
        st.objects.entry(key).or_default().insert(okey, new.clone());
        if let Some(defs) = new_defs {
            Self::register(&mut st, defs);
        }
        self.emit(&mut st, def, EventType::Modified, new.clone(), Some(cur));
        Ok((new, false))
    }

    /// Deletes one object; deleting a namespace deletes what it holds, deleting a CRD
    /// stops serving its resources and deletes their objects.
    pub fn delete(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = (def.group.clone(), def.plural.clone());
        let okey = (ns.to_string(), name.to_string());
        let Some(cur) = st.objects.get(&key).and_then(|m| m.get(&okey)).cloned() else {
            return Err(ApiError::not_found(&def.group, &def.plural, name));
        };
        if dry_run {
            return Ok(present(def, cur));
        }
        let removed = self.remove_locked(&mut st, def, &okey).unwrap_or(cur);
        if def.crd.is_none() && def.plural == "namespaces" {
            let defs: Vec<ResourceDef> = st.defs.iter().filter(|d| d.namespaced).cloned().collect();
            for d in dedup_storage(defs) {
                let keys: Vec<_> = st
                    .objects
                    .get(&(d.group.clone(), d.plural.clone()))
                    .map(|m| m.keys().filter(|(n, _)| n == name).cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    self.remove_locked(&mut st, &d, &k);
                }
            }
        }
        if def.crd.is_none() && def.plural == "customresourcedefinitions" {
            let crd_defs: Vec<ResourceDef> = st
                .defs
                .iter()
                .filter(|d| d.crd.as_deref() == Some(name))
                .cloned()
                .collect();
            for d in dedup_storage(crd_defs) {
                let keys: Vec<_> = st
                    .objects
                    .get(&(d.group.clone(), d.plural.clone()))
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    self.remove_locked(&mut st, &d, &k);
                }
            }
            st.defs.retain(|d| d.crd.as_deref() != Some(name));
        }
        Ok(removed)
    }

    fn remove_locked(
        &self,
        st: &mut State,
        def: &ResourceDef,
        okey: &(String, String),
    ) -> Option<Value> {
        let mut obj = st
            .objects
            .get_mut(&(def.group.clone(), def.plural.clone()))?
            .remove(okey)?;
        st.rv += 1;
        obj = present(def, obj);
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(st.rv.to_string()));
        self.emit(st, def, EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    /// Subscribes a watch. `from` is the resourceVersion to resume after; `None` means
    /// "announce the current objects first" (absent or `0`).
    pub fn watch(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let rx = self.events.subscribe();
        match from {
            None => Ok(WatchStart {
                current: Self::list_locked(&st, def, ns),
                replay: Vec::new(),
                rx,
                rv: st.rv,
            }),
            Some(rv) if rv < st.floor => Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", st.floor),
            )),
            Some(rv) => Ok(WatchStart {
                current: Vec::new(),
                replay: st.history.iter().filter(|e| e.rv > rv).cloned().collect(),
                rx,
                rv: st.rv,
            }),
        }
    }
}

/// One definition per stored resource (CRDs have one per served version).
fn dedup_storage(defs: Vec<ResourceDef>) -> Vec<ResourceDef> {
    let mut out: Vec<ResourceDef> = Vec::new();
    for d in defs {
        if !out
            .iter()
            .any(|o| o.group == d.group && o.plural == d.plural)
        {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
