//! The verified-token cache: a client sends the same token on every request, so after
//! the first verification the steady state is one SHA-256 and one hash-map lookup.
//!
//! Entries are keyed by the token's SHA-256, never the token, so a heap dump does not
//! hold replayable credentials. An entry is trusted until the earliest of the token's
//! `exp` (plus leeway, exactly as verification would allow) and `cacheTtl` after it was
//! verified; removing a key at the IdP forgets the issuer's entries at the next fetch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::Subject;

pub(crate) type Digest = [u8; 32];

pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

struct Entry {
    subject: Arc<Subject>,
    issuer: usize,
    /// The token's `exp`, for the error message.
    exp: i64,
    /// Last second (unix) the token is valid: `exp + leeway`.
    valid_until: i64,
    /// Last second (unix) this entry may be used without re-verifying.
    cached_until: i64,
}

/// A token just verified, to remember.
pub(crate) struct Verified {
    pub subject: Arc<Subject>,
    /// The issuer's index.
    pub issuer: usize,
    /// The token's `exp`.
    pub exp: i64,
    /// Last second (unix) the token is valid: `exp + leeway`.
    pub valid_until: i64,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Arc<Subject>),
    /// Cached, but the token has expired since: refused without re-verifying.
    Expired {
        exp: i64,
    },
    Miss,
}

pub(crate) struct TokenCache {
    capacity: usize,
    ttl_secs: i64,
    map: RwLock<HashMap<Digest, Entry>>,
    /// How many times an issuer's entries were forgotten. A verification that began
    /// before a forget may have used a key the forget was for: its entry is not kept.
    forgets: AtomicU64,
}

impl TokenCache {
    pub fn new(capacity: usize, ttl: std::time::Duration) -> TokenCache {
        TokenCache {
            capacity,
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            map: RwLock::new(HashMap::new()),
            forgets: AtomicU64::new(0),
        }
    }

    /// Taken before a token is verified and given back to [`TokenCache::insert`]: the
    /// keys it was verified with may have been removed (and the issuer's entries
    /// forgotten) in between, by another thread's key fetch.
    pub fn generation(&self) -> u64 {
        self.forgets.load(Ordering::Acquire)
    }

    pub fn get(&self, digest: &Digest, now: i64) -> Lookup {
        if self.capacity == 0 {
            return Lookup::Miss;
        }
        let stale = {
            let Ok(map) = self.map.read() else {
                return Lookup::Miss;
            };
            match map.get(digest) {
                None => return Lookup::Miss,
                Some(e) if now <= e.valid_until && now <= e.cached_until => {
                    return Lookup::Hit(e.subject.clone())
                }
                Some(e) if now > e.valid_until => Lookup::Expired { exp: e.exp },
                Some(_) => Lookup::Miss,
            }
        };
        if let Ok(mut map) = self.map.write() {
            map.remove(digest);
        }
        stale
    }

    pub fn insert(&self, digest: Digest, verified: Verified, now: i64, generation: u64) {
        let Verified {
            subject,
            issuer,
            exp,
            valid_until,
        } = verified;
        if self.capacity == 0 {
            return;
        }
        let Ok(mut map) = self.map.write() else {
            return;
        };
        // Forgets happen under this lock: one since `generation` was taken means the
        // token may have been verified with a key that is gone.
        if self.forgets.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= self.capacity && !map.contains_key(&digest) {
            map.retain(|_, e| now <= e.valid_until && now <= e.cached_until);
            if map.len() >= self.capacity {
                // Still full of live entries: drop an eighth, in hash order, which is
                // effectively random since keys are SHA-256 digests. Evicting in bulk
                // keeps the O(n) scan rare.
                let evict: Vec<Digest> = map.keys().take(self.capacity / 8 + 1).copied().collect();
                for k in evict {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            digest,
            Entry {
                subject,
                issuer,
                exp,
                valid_until,
                cached_until: now.saturating_add(self.ttl_secs),
            },
        );
    }

    /// Forgets every token of one issuer (after one of its keys disappeared).
    pub fn forget_issuer(&self, issuer: usize) {
        if let Ok(mut map) = self.map.write() {
            map.retain(|_, e| e.issuer != issuer);
            self.forgets.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn verified(subject: Arc<Subject>, issuer: usize, exp: i64, valid_until: i64) -> Verified {
        Verified {
            subject,
            issuer,
            exp,
            valid_until,
        }
    }

    fn subject(user: &str) -> Arc<Subject> {
        Arc::new(Subject {
            user: user.into(),
            groups: vec![],
            uid: String::new(),
            extra: Default::default(),
            issuer: "i".into(),
            audit_user: Default::default(),
        })
    }

    #[test]
    fn hits_until_expiry_then_refuses() {
        let cache = TokenCache::new(10, Duration::from_secs(300));
        let d = sha256(b"token");
        cache.insert(
            d,
            verified(subject("u"), 0, 1000, 1060),
            900,
            cache.generation(),
        );
        assert!(matches!(cache.get(&d, 1000), Lookup::Hit(s) if s.user == "u"));
        assert!(matches!(cache.get(&d, 1061), Lookup::Expired { exp: 1000 }));
        assert!(
            matches!(cache.get(&d, 1000), Lookup::Miss),
            "expired entries are removed"
        );
    }

    #[test]
    fn entries_live_no_longer_than_the_ttl() {
        let cache = TokenCache::new(10, Duration::from_secs(300));
        let d = sha256(b"token");
        cache.insert(
            d,
            verified(subject("u"), 0, 10_000, 10_000),
            0,
            cache.generation(),
        );
        assert!(matches!(cache.get(&d, 300), Lookup::Hit(_)));
        assert!(matches!(cache.get(&d, 301), Lookup::Miss));
    }

    #[test]
    fn stays_bounded() {
        let cache = TokenCache::new(100, Duration::from_secs(300));
        for i in 0..1000u32 {
            cache.insert(
                sha256(&i.to_be_bytes()),
                verified(subject("u"), 0, 10_000, 10_000),
                0,
                cache.generation(),
            );
        }
        assert!(cache.len() <= 100);
        let last = sha256(&999u32.to_be_bytes());
        assert!(matches!(cache.get(&last, 1), Lookup::Hit(_)));
    }

    #[test]
    fn forgets_an_issuers_tokens() {
        let cache = TokenCache::new(10, Duration::from_secs(300));
        cache.insert(
            sha256(b"a"),
            verified(subject("a"), 0, 10_000, 10_000),
            0,
            cache.generation(),
        );
        cache.insert(
            sha256(b"b"),
            verified(subject("b"), 1, 10_000, 10_000),
            0,
            cache.generation(),
        );
        cache.forget_issuer(0);
        assert!(matches!(cache.get(&sha256(b"a"), 1), Lookup::Miss));
        assert!(matches!(cache.get(&sha256(b"b"), 1), Lookup::Hit(_)));
    }

    /// A token verified while another thread's key fetch removed the key (and forgot
    /// the issuer's entries) is not kept: the key it was verified with may be the one
    /// removed.
    #[test]
    fn a_verification_that_overlaps_a_forget_is_not_kept() {
        let cache = TokenCache::new(10, Duration::from_secs(300));
        let before = cache.generation();
        cache.forget_issuer(0);
        cache.insert(
            sha256(b"a"),
            verified(subject("a"), 0, 10_000, 10_000),
            0,
            before,
        );
        assert!(matches!(cache.get(&sha256(b"a"), 1), Lookup::Miss));
        // One verified after the forget is kept.
        cache.insert(
            sha256(b"a"),
            verified(subject("a"), 0, 10_000, 10_000),
            0,
            cache.generation(),
        );
        assert!(matches!(cache.get(&sha256(b"a"), 1), Lookup::Hit(_)));
    }

    #[test]
    fn a_zero_capacity_cache_remembers_nothing() {
        let cache = TokenCache::new(0, Duration::from_secs(300));
        cache.insert(
            sha256(b"a"),
            verified(subject("a"), 0, 10_000, 10_000),
            0,
            cache.generation(),
        );
        assert!(matches!(cache.get(&sha256(b"a"), 1), Lookup::Miss));
    }
}
