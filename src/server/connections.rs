//! Bounds on the connections a server keeps open: in all, and optionally per peer
//! address. Shared with the injector's webhook server (`injector/src/server.rs`
//! includes this file): both crates serve connections from the network with hyper,
//! and neither depends on the other.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

/// A connection's place among its listeners' [`Connections`], given back when the
/// connection and every session upgraded from it have ended: an exec or port-forward
/// tunnel keeps the connection's socket, so it keeps its place too.
#[derive(Debug, Clone)]
pub struct Slot {
    _place: Arc<Place>,
}

#[derive(Debug)]
struct Place {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The peer's count among `per_peer`, taken back on drop.
    peer: Option<(IpAddr, Arc<PerPeer>)>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some((ip, counts)) = &self.peer {
            let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = open.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

#[derive(Debug)]
struct PerPeer {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// The bound on connections open at once, shared by every listener given a clone: one
/// past it is closed as it is accepted, so that no number of idle connections can take
/// the file descriptors every other connection, the upstream's and the audit file's
/// need. Optionally also a bound per peer address, for a listener anyone on the
/// network may reach (the admin port), so that one peer cannot take every place.
#[derive(Debug, Clone)]
pub struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
    per_peer: Option<Arc<PerPeer>>,
}

impl Connections {
    pub fn new(max: usize) -> Connections {
        Connections {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_peer: None,
        }
    }

    /// The bound on all connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Waits until every place is given back: every connection has ended.
    pub async fn all_closed(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }

    /// At most `max` of them open from one address at once, loopback addresses aside.
    pub fn per_peer(mut self, max: usize) -> Connections {
        self.per_peer = Some(Arc::new(PerPeer {
            max,
            open: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn take(&self, peer: IpAddr) -> Result<Slot, &'static str> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Err("the listeners have their most connections open");
        };
        let peer = match &self.per_peer {
            None => None,
            // This host's peers are the pod's own containers, or a service mesh's proxy
            // standing in for every client: not one peer to bound.
            Some(_) if peer.to_canonical().is_loopback() => None,
            Some(counts) => {
                let ip = peer.to_canonical();
                let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
                let n = open.entry(ip).or_insert(0);
                if *n >= counts.max {
                    return Err("the peer has its most connections open");
                }
                *n += 1;
                Some((ip, counts.clone()))
            }
        };
        Ok(Slot {
            _place: Arc::new(Place {
                _permit: permit,
                peer,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound per peer holds each remote address to its share and gives places back
    /// as connections end; loopback peers are not bounded one by one, the bound on all
    /// connections still holds them.
    #[test]
    fn each_remote_peer_is_held_to_its_share() {
        let connections = Connections::new(12).per_peer(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let from_a: Vec<Slot> = (0..3).map(|_| connections.take(a).unwrap()).collect();
        assert_eq!(
            connections.take(a).unwrap_err(),
            "the peer has its most connections open"
        );
        // The same address written as IPv4-mapped IPv6 is the same peer.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(connections.take(mapped).is_err());
        let from_b: Vec<Slot> = (0..3).map(|_| connections.take(b).unwrap()).collect();
        // A slot cloned (an upgraded session's) is still one place.
        let again = from_a[0].clone();
        drop(from_a);
        let mut from_a: Vec<Slot> = (0..2).map(|_| connections.take(a).unwrap()).collect();
        assert!(
            connections.take(a).is_err(),
            "a clone still holds its place"
        );
        drop(again);
        from_a.push(connections.take(a).unwrap());
        // Loopback: past the share, up to the bound on all.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let local: Vec<Slot> = (0..6).map(|_| connections.take(lo).unwrap()).collect();
        assert_eq!(
            connections.take(lo).unwrap_err(),
            "the listeners have their most connections open"
        );
        drop((from_a, from_b, local));
        assert!(connections
            .per_peer
            .as_ref()
            .unwrap()
            .open
            .lock()
            .unwrap()
            .is_empty());
    }
}
