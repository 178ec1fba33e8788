//! What each caller holds open at once, counted under a bound: `kubectl auth can-i`
//! bodies being read, and long-running streams (watches, followed logs, exec, attach and
//! port-forward sessions). A place is taken for each and given back when it is dropped,
//! however the request ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::body::{Body, BoxError};

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

/// `body`, holding `place` until it ends or is dropped (the caller went away).
pub fn hold(body: Body, place: Place) -> Body {
    use http_body_util::BodyExt as _;
    Holding {
        body,
        place: Some(place),
    }
    .boxed()
}

struct Holding {
    body: Body,
    place: Option<Place>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Ended: the place is free now, not when hyper gets round to dropping us.
            self.place = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

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
        drop((again, held, other));
        assert!(places.take("agent", 0).is_none());
        assert!(
            places.by_caller.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }

    #[tokio::test]
    async fn a_body_gives_its_place_back_when_it_ends_or_is_dropped() {
        let places = Arc::new(PerCaller::default());
        let body = hold(crate::body::full("done"), places.take("agent", 2).unwrap());
        assert_eq!(places.held("agent"), 1);
        let mut body = body;
        while body.frame().await.is_some() {}
        assert_eq!(places.held("agent"), 0, "read to its end");
        drop(body);

        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
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
