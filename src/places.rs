//! What each caller holds open at once, counted under a bound: `kubectl auth can-i`
//! bodies being read, and long-running streams (watches, followed logs, exec, attach and
//! port-forward sessions). A place is taken for each and given back when it is dropped,
//! however the request ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt as _;

use crate::body::Body;

/// Places taken, per caller (the authenticated user name).
#[derive(Debug, Default)]
pub struct PerCaller {
    by_caller: Mutex<HashMap<String, usize>>,
}

impl PerCaller {
    /// A place for one more of `user`'s, or `None` when `user` holds `max` already.
    pub fn take(self: &Arc<Self>, user: &str, max: usize) -> Option<Place> {
        let mut map = self.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        let held = map.get(user).copied().unwrap_or(0);
        if held >= max {
            return None;
        }
        map.insert(user.to_owned(), held + 1);
        Some(Place {
            of: self.clone(),
            user: user.to_owned(),
        })
    }

    /// How many places `user` holds now.
    pub fn held(&self, user: &str) -> usize {
        let map = self.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        map.get(user).copied().unwrap_or(0)
    }

    /// How many places every caller holds now, together.
    pub fn total(&self) -> usize {
        let map = self.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        map.values().sum()
    }
}

/// One place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    of: Arc<PerCaller>,
    user: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut map = self.of.by_caller.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// `body`, holding `place` for as long as it lives: hyper drops a response's body once
/// it has sent it whole, or when the caller goes away.
pub fn hold(body: Body, place: Place) -> Body {
    body.map_frame(move |frame| {
        let _held = &place;
        frame
    })
    .boxed()
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
        assert!(
            places.by_caller.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }

    #[tokio::test]
    async fn a_body_holds_its_place_while_it_lives() {
        use bytes::Bytes;
        use http_body::Frame;
        let places = Arc::new(PerCaller::default());
        let mut body = hold(crate::body::full("done"), places.take("agent", 2).unwrap());
        while body.frame().await.is_some() {}
        assert_eq!(places.held("agent"), 1, "until dropped");
        drop(body);
        assert_eq!(places.held("agent"), 0, "sent whole and dropped");

        let (_tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, crate::body::BoxError>>(1);
        let open = http_body_util::StreamBody::new(tokio_stream_of(rx)).boxed();
        let streaming = hold(open, places.take("agent", 2).unwrap());
        assert_eq!(places.held("agent"), 1, "held while it streams");
        drop(streaming);
        assert_eq!(places.held("agent"), 0, "the caller went away");
    }

    /// A stream of the receiver's items, without another dependency.
    fn tokio_stream_of<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
