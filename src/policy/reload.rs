//! The current policy of a file, reloaded when the file changes.
//!
//! A ConfigMap volume updates by swapping its `..data` symlink, so the file's stamp includes
//! the path its symlinks resolve to, not just its size and mtime. A new policy replaces the
//! current one only if it loads; a bad one is logged, counted and reported by
//! [`Watched::last_error`] while the last good policy stays in force. With no policy at all
//! (no file at start, or a bad one), every request is denied with a Status that says so.

use crate::sync::{Locked, ReadWrite};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use super::{decide, load, Commands, Decision, Policy};
use crate::identity::Subject;
use crate::request_info::RequestInfo;

/// How often [`Watched::spawn`] looks at the file, unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// A policy file and the last good policy read from it. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Watched {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    current: RwLock<Option<Arc<Policy>>>,
    last_error: Mutex<Option<Arc<str>>>,
    failures: AtomicU64,
    reloads: AtomicU64,
    seen: Mutex<Seen>,
}

/// What the last look at the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Nothing,
    Missing,
    File(Stamp),
}

/// Identifies one version of the file: where its symlinks lead, its size, mtime and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    target: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let target = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&target)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Stamp {
            target,
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

impl Watched {
    /// Loads the policy at `path` now. A missing or bad file is not an error here: the
    /// `Watched` then has no policy (and denies everything) until a good file appears.
    pub fn open(path: impl Into<PathBuf>) -> Watched {
        let watched = Watched {
            shared: Arc::new(Shared {
                path: path.into(),
                current: RwLock::new(None),
                last_error: Mutex::new(None),
                failures: AtomicU64::new(0),
                reloads: AtomicU64::new(0),
                seen: Mutex::new(Seen::Nothing),
            }),
        };
        watched.shared.check();
        watched
    }

    /// Polls the file every `interval` on the tokio runtime, until the last `Watched` clone
    /// is dropped or the task is aborted.
    pub fn spawn(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                // Reading and parsing are blocking work, however small.
                let checked = tokio::task::spawn_blocking(move || shared.check()).await;
                if let Err(e) = checked {
                    tracing::error!(error = %e, "policy reload task failed");
                }
            }
        })
    }

    /// Looks at the file once; true if a new policy was put in force.
    pub fn check(&self) -> bool {
        self.shared.check()
    }

    /// The policy in force, if any.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.shared.current.reading().clone()
    }

    /// [`super::authorize`] with the policy in force, or a denial saying there is none.
    pub fn authorize(&self, who: &Subject, info: &RequestInfo, query: Option<&str>) -> Decision {
        self.decide(who, info, Commands::Sent(query))
    }

    /// As [`Watched::authorize`], with an exec request's command given as [`Commands`].
    pub fn decide(&self, who: &Subject, info: &RequestInfo, commands: Commands<'_>) -> Decision {
        match self.current() {
            Some(policy) => decide(&policy, who, info, commands),
            None => Decision::no_policy(info, self.shared.last_error.locked().clone()),
        }
    }

    /// Why the file last failed to load, while that is still the case (for `/readyz`).
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .locked()
            .as_deref()
            .map(str::to_owned)
    }

    /// How many times loading the file failed.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// How many policies were put in force (the first load included).
    pub fn reloads(&self) -> u64 {
        self.shared.reloads.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

impl Shared {
    fn check(&self) -> bool {
        let path = self.path.display();
        let stamp = match Stamp::of(&self.path) {
            Ok(stamp) => stamp,
            Err(e) => {
                let mut seen = self.seen.locked();
                if *seen != Seen::Missing {
                    *seen = Seen::Missing;
                    let keeping = self.keeping();
                    self.fail(format!("failed to read policy file {path}: {e}{keeping}"));
                }
                return false;
            }
        };
        if *self.seen.locked() == Seen::File(stamp.clone()) {
            return false;
        }
        let loaded = load(&self.path);
        // A writer that is not atomic may still be at it: look again at the next tick.
        if Stamp::of(&self.path).ok().as_ref() != Some(&stamp) {
            return false;
        }
        *self.seen.locked() = Seen::File(stamp);
        match loaded {
            Ok((policy, warnings)) => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "policy lint");
                }
                tracing::info!(path = %path, policy = policy.name(), "policy loaded");
                *self.current.writing() = Some(Arc::new(policy));
                *self.last_error.locked() = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let keeping = self.keeping();
                self.fail(format!("{e}{keeping}"));
                false
            }
        }
    }

    fn keeping(&self) -> String {
        match &*self.current.reading() {
            Some(p) => format!(" (keeping policy {:?} loaded before)", p.name()),
            None => String::new(),
        }
    }

    fn fail(&self, message: String) {
        tracing::error!(error = %message, "policy not loaded");
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.locked() = Some(message.into());
    }
}
