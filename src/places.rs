//! What each caller holds open at once, counted under a bound: `kubectl auth can-i`
//! bodies being read, long-running streams (watches, followed logs, exec, attach and
//! port-forward sessions) and the other requests in flight. A place is taken for each
//! and given back when it is dropped, however the request ends.

use crate::sync::Locked;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Places taken, per caller (the authenticated user name). A caller whose places are
/// all given back keeps its counter, so that its next request takes one without an
/// allocation; counters at zero are swept when there are more than [`KEEP`] callers.
#[derive(Debug, Default)]
pub struct PerCaller {
    by_caller: Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>,
}

/// How many callers' counters are kept before those at zero are swept.
const KEEP: usize = 64;

impl PerCaller {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<AtomicUsize>>> {
        self.by_caller.locked()
    }

    /// A place for one more of `user`'s, or `None` when `user` holds `max` already.
    pub fn take(&self, user: &str, max: usize) -> Option<Place> {
        let mut map = self.lock();
        // Places are taken under the lock, so two callers cannot both take the last
        // one; they are given back without it, which can only make room.
        let held = match map.get(user) {
            Some(held) => held.clone(),
            None => {
                if map.len() >= KEEP {
                    map.retain(|_, held| held.load(Ordering::Acquire) > 0);
                }
                let held = Arc::new(AtomicUsize::new(0));
                map.insert(Arc::from(user), held.clone());
                held
            }
        };
        if held.load(Ordering::Acquire) >= max {
            return None;
        }
        held.fetch_add(1, Ordering::AcqRel);
        Some(Place { held })
    }

    /// How many places `user` holds now.
    pub fn held(&self, user: &str) -> usize {
        self.lock()
            .get(user)
            .map_or(0, |held| held.load(Ordering::Acquire))
    }

    /// How many places every caller holds now, together.
    pub fn total(&self) -> usize {
        self.lock()
            .values()
            .map(|held| held.load(Ordering::Acquire))
            .sum()
    }
}

/// One place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    held: Arc<AtomicUsize>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_max_places_and_others_are_not_affected() {
        let places = Arc::new(PerCaller::default());
        let mut held: Vec<_> = (0..3).map(|_| places.take("agent", 3).unwrap()).collect();
        assert!(places.take("agent", 3).is_none(), "past the bound");
        let other = places
            .take("someone-else", 3)
            .expect("another caller is not affected");
        drop(held.pop());
        let again = places.take("agent", 3).expect("a place given back is free");
        assert!(places.take("agent", 3).is_none(), "and only that one");
        assert_eq!(places.held("agent"), 3);
        assert_eq!(places.total(), 4);
        drop((again, held, other));
        assert!(places.take("agent", 0).is_none());
        assert!(places.take("new", 0).is_none());
        assert_eq!(places.total(), 0, "every place given back");
        assert_eq!(places.held("agent"), 0);
    }

    /// Requests of one caller on several threads (`workers: 2` and up) never hold more
    /// than the bound at once, and every place comes back.
    #[test]
    fn threads_together_never_hold_more_than_max() {
        let places = Arc::new(PerCaller::default());
        let live = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (places, live, peak) = (places.clone(), live.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        if let Some(place) = places.take("agent", 3) {
                            let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            live.fetch_sub(1, Ordering::SeqCst);
                            drop(place);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3, "{peak:?}");
        assert_eq!(places.total(), 0);
    }

    /// A caller's entry stays at zero for its next request, but callers come and go
    /// (every token's subject is a caller): the map does not grow with them.
    #[test]
    fn callers_that_hold_nothing_are_swept() {
        let places = Arc::new(PerCaller::default());
        let kept = places.take("agent", 1).unwrap();
        for n in 0..10 * KEEP {
            drop(places.take(&format!("caller-{n}"), 1).unwrap());
            assert!(places.lock().len() <= KEEP + 1, "{n}");
        }
        assert_eq!(places.held("agent"), 1, "a caller holding a place is kept");
        assert!(places.take("agent", 1).is_none());
        drop(kept);
        assert_eq!(places.total(), 0);
    }
}
