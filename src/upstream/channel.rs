//! The one HTTP/2 connection to the API server that requests share, as client-go keeps
//! one, driven with the `h2` crate directly. When every stream the server allows on it
//! is in use (watches hold theirs for hours), the next request opens another, as Go's
//! HTTP/2 client does; the full one serves its streams until they end.
//!
//! Each request opens its stream itself and waits on it in its own task: no request
//! queue in front of the connection, no task spawned per request to carry the answer
//! back (hyper's HTTP/2 client does both; at saturation they were about 5% of the
//! proxy's CPU). A request body that is not already whole is streamed by a task of its
//! own, as hyper does.
//!
//! The connection's flow-control window is shared: an answer's data the caller has not
//! taken holds its part of it. A caller who stops reading several large answers would
//! hold all of it, and every other caller's answers would stall behind theirs; so an
//! answer whose data has waited unread for `unread` has its stream reset (as nginx's
//! `send_timeout` closes a client that reads nothing), giving its window back.

use crate::sync::Locked;
use std::future::{poll_fn, Future as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::Dial;
use crate::body::{Body, BoxError};
use crate::headers;

/// hyper's HTTP/2 client settings, which this connection had while it went through
/// hyper: 2 MiB per stream and 5 MiB per connection of receive window (a large List
/// streams without waiting for window updates), 16 KiB frames and header lists, 1 MiB
/// of send buffer per stream, no server push.
fn builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_max_send_streams(100)
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .enable_push(false);
    builder
}

type Sender = h2::client::SendRequest<Bytes>;

/// The connection new streams go on.
#[derive(Clone)]
struct Current {
    /// Numbered so that a failed or full one is replaced only if it is still current.
    number: u64,
    sender: Sender,
    /// Its streams open now (counted from the request's head until its answer's body
    /// is done with).
    open: Arc<AtomicUsize>,
    /// The answers being read from it, watched for callers who stopped reading.
    readers: Arc<Readers>,
}

impl Current {
    /// Whether the server allows another stream on it now
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    fn has_room(&self) -> bool {
        self.open.load(Ordering::Relaxed) < self.sender.current_max_send_streams()
    }
}

/// One open stream on a connection, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::Relaxed);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a connection is checked: a PING every `ping_interval`, answered within
/// `ping_timeout`, or the connection is closed (its streams fail, so watches end and
/// clients re-list, and the next request dials anew); and an answer whose data waits
/// `unread` for a caller who takes none of it has its stream reset.
#[derive(Debug, Clone, Copy)]
pub(super) struct Health {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub unread: Duration,
}

pub(super) struct H2Channel {
    dial: Dial<HttpsConnector<HttpConnector>>,
    health: Health,
    target: Uri,
    sender: Mutex<Option<Current>>,
    /// One dial at a time: requests that find no connection wait for the same one.
    dialing: tokio::sync::Mutex<()>,
    /// When the last dial failed, and why: requests that waited for that dial get its
    /// answer instead of each dialling in turn (a down API server would otherwise
    /// make the n-th waiter wait n connect timeouts).
    failed: Mutex<Option<(Instant, String)>>,
    /// The server chose HTTP/1.1 when offered both.
    http1_only: AtomicBool,
}

/// What became of a request offered to the HTTP/2 channel.
pub(super) enum Sent {
    Answered(Result<Response<Body>, BoxError>),
    /// The server speaks HTTP/1.1 only: the request is handed back for the pooled client.
    Http1Only(Request<Body>),
}

impl H2Channel {
    pub(super) fn new(
        dial: Dial<HttpsConnector<HttpConnector>>,
        health: Health,
        target: Uri,
    ) -> H2Channel {
        H2Channel {
            dial,
            health,
            target,
            sender: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
            http1_only: AtomicBool::new(false),
        }
    }

    fn live(&self) -> Option<Current> {
        let sender = self.sender.locked();
        sender.clone()
    }

    async fn connect(&self) -> Result<Option<Current>, BoxError> {
        let asked = Instant::now();
        let _one = self.dialing.lock().await;
        if let Some(live) = self.live().filter(Current::has_room) {
            return Ok(Some(live));
        }
        if let Some((at, why)) = &*self.failed.locked() {
            if *at >= asked {
                return Err(why.clone().into());
            }
        }
        let dialled = self.dial_h2().await;
        if let Err(error) = &dialled {
            *self.failed.locked() = Some((Instant::now(), error.to_string()));
        }
        dialled
    }

    async fn dial_h2(&self) -> Result<Option<Current>, BoxError> {
        let mut dial = self.dial.clone();
        poll_fn(|cx| tower_service::Service::poll_ready(&mut dial, cx)).await?;
        let io = tower_service::Service::call(&mut dial, self.target.clone()).await?;
        if !io.connected().is_negotiated_h2() {
            self.http1_only.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        let (sender, mut conn) = builder().handshake::<_, Bytes>(TokioIo::new(io)).await?;
        let pings = conn.ping_pong();
        let health = self.health;
        let readers = Arc::new(Readers::default());
        let watched = readers.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    ended = &mut conn => if let Err(error) = ended {
                        tracing::debug!(%error, "upstream HTTP/2 connection ended");
                    },
                    why = unanswered(pings, health) => {
                        // Dropping the connection fails its streams.
                        tracing::warn!(why, "closing the HTTP/2 connection to the API server");
                    }
                    never = watched.reset_unread(health.unread) => match never {},
                }
            }
            .instrument(tracing::debug_span!("upstream_connection")),
        );
        // A connection it replaces because it was full carries on with the streams it
        // has, and closes after the last.
        let mut current = self.sender.locked();
        let new = Current {
            number: current.as_ref().map_or(0, |c| c.number + 1),
            sender,
            open: Arc::new(AtomicUsize::new(0)),
            readers,
        };
        *current = Some(new.clone());
        Ok(Some(new))
    }

    pub(super) async fn send(&self, mut req: Request<Body>) -> Sent {
        if self.http1_only.load(Ordering::Relaxed) {
            return Sent::Http1Only(req);
        }
        let withheld = req.extensions_mut().remove::<Withheld>();
        let mut retried = false;
        loop {
            let current = match self.live() {
                Some(c) if c.has_room() => c,
                // No connection yet, or every stream the server allows on it is open
                // (long-running watches, most often): a new one, as Go's HTTP/2 client
                // opens. Boxed: the dial's future is large, and kept inline it would
                // be copied with every request's future although it runs rarely.
                live => match (Box::pin(self.connect()).await, live) {
                    (Ok(Some(c)), _) => c,
                    (Ok(None), _) => return Sent::Http1Only(req),
                    // No second connection to be had: the full one is still a
                    // connection, where the request waits for a stream to end.
                    (Err(_), Some(full)) => full,
                    (Err(e), None) => return Sent::Answered(Err(e)),
                },
            };
            let (number, slot) = (current.number, Slot::take(&current.open));
            match current.sender.ready().await {
                Ok(sender) => {
                    return Sent::Answered(match open(sender, req) {
                        Ok(answer) => receive(answer, slot, &current.readers, withheld).await,
                        Err(e) => Err(e),
                    })
                }
                // The connection closed, failed or was told to go away since it was
                // last used, and the request has not been sent: it goes once more, on
                // a new connection.
                Err(_) if !retried => {
                    retried = true;
                    self.forget(number);
                }
                Err(e) => return Sent::Answered(Err(e.into())),
            }
        }
    }

    /// Drops connection `number` as the shared one, unless another has replaced it.
    fn forget(&self, number: u64) {
        let mut current = self.sender.locked();
        if current.as_ref().is_some_and(|c| c.number == number) {
            *current = None;
        }
    }
}

/// Pings the connection every `health.ping_interval` until a ping goes unanswered for
/// `health.ping_timeout`; returns why.
async fn unanswered(pings: Option<h2::PingPong>, health: Health) -> String {
    let Some(mut pings) = pings else {
        // Taken already: never the case for a new connection. Not checked, then.
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(health.ping_interval).await;
        match tokio::time::timeout(health.ping_timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection is closing on its own: nothing to check.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => {
                return format!("a ping went unanswered for {:?}", health.ping_timeout);
            }
        }
    }
}

/// Opens a stream for `req` on a sender that is ready. Not `async`: the request's head
/// is not kept in the waiting future, which every request's future would carry.
fn open(mut sender: Sender, req: Request<Body>) -> Result<h2::client::ResponseFuture, BoxError> {
    let (mut head, body) = req.into_parts();
    // HTTP/2 has no connection-specific headers; `headers::prepare_upstream` has
    // removed a caller's already, this covers the proxy's own requests too.
    headers::strip_hop_by_hop(&mut head.headers, false);
    if let Some(len) = body.size_hint().exact() {
        if len != 0 || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
            head.headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
    }
    let end_of_stream = body.is_end_stream();
    let (answer, stream) = sender.send_request(Request::from_parts(head, ()), end_of_stream)?;
    if !end_of_stream {
        let mut pipe = Box::pin(send_body(body, stream));
        // A body that has already arrived whole (a small one usually comes with the
        // head) goes at once; one still arriving from the caller is streamed by a task
        // of its own while this one waits for the answer. Polled here with a waker
        // that does nothing: the task polls it again first thing.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if pipe.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(pipe.instrument(tracing::debug_span!("request_body")));
        }
    }
    Ok(answer)
}

/// Waits for the answer's head; its body holds the stream's `slot` until it is done.
async fn receive(
    answer: h2::client::ResponseFuture,
    slot: Slot,
    readers: &Arc<Readers>,
    withheld: Option<Withheld>,
) -> Result<Response<Body>, BoxError> {
    let mut answer = answer.await?;
    let length = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(withheld) = &withheld {
        answer.extensions_mut().insert(withheld.clone());
    }
    Ok(answer.map(|recv| ResponseBody::new(recv, length, slot, readers, withheld).boxed()))
}

/// Set on a request whose answer chaperone may hold back from its caller (a stream's,
/// until its start is on record), and then on the answer: while it is set, nobody can
/// be reading the answer, and its data waiting is not the caller's doing.
#[derive(Debug, Clone, Default)]
pub struct Withheld(Arc<AtomicBool>);

impl Withheld {
    pub fn set(&self, withheld: bool) {
        self.0.store(withheld, Ordering::Relaxed);
    }
}

/// Streams a request body onto its HTTP/2 stream, within the flow-control window the
/// API server grants; resets the stream if the body fails.
async fn send_body(mut body: Body, mut stream: h2::SendStream<Bytes>) {
    if let Err(error) = pipe(&mut body, &mut stream).await {
        tracing::debug!(%error, "request body not sent whole; stream reset");
        stream.send_reset(h2::Reason::CANCEL);
    }
}

async fn pipe(body: &mut Body, stream: &mut h2::SendStream<Bytes>) -> Result<(), BoxError> {
    loop {
        let frame = poll_fn(|cx| {
            // The API server may answer, and reset the stream, before the body is
            // sent whole (it refused the request): stop reading the caller's body then.
            if let Poll::Ready(reason) = stream.poll_reset(cx) {
                let why = match reason {
                    Ok(reason) => format!("the API server reset the stream ({reason})"),
                    Err(error) => error.to_string(),
                };
                return Poll::Ready(Err(BoxError::from(why)));
            }
            Pin::new(&mut *body).poll_frame(cx).map(Ok)
        })
        .await?;
        let Some(frame) = frame else {
            stream.send_data(Bytes::new(), true)?;
            return Ok(());
        };
        let frame = match frame?.into_data() {
            Ok(mut data) => {
                let last = body.is_end_stream();
                if data.is_empty() {
                    // Nothing to carry the end of the stream but an empty frame.
                    if last {
                        stream.send_data(data, true)?;
                        return Ok(());
                    }
                    continue;
                }
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let granted = poll_fn(|cx| stream.poll_capacity(cx))
                        .await
                        .ok_or("the API server closed the stream")??;
                    let chunk = data.split_to(granted.min(data.len()));
                    stream.send_data(chunk, last && data.is_empty())?;
                }
                if last {
                    return Ok(());
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            stream.send_trailers(trailers)?;
            return Ok(());
        }
    }
}

/// The answers being read from one connection, each shared with its body.
#[derive(Default)]
struct Readers(Mutex<slab::Slab<Arc<Reading>>>);

/// One answer's stream, shared by its body and the connection's watch.
struct Reading {
    state: Mutex<ReadState>,
    withheld: Option<Withheld>,
}

struct ReadState {
    /// Taken by the watch when the caller stopped reading: dropped, the stream is reset
    /// and its part of the connection's window given back.
    recv: Option<h2::RecvStream>,
    /// Bytes passed on to the caller.
    taken: u64,
    /// `taken` when the watch last looked.
    seen: u64,
    /// Since when data has waited for a caller who took none of it.
    waiting_since: Option<Instant>,
}

impl Reading {
    /// The stream, taken if its data has waited `unread` for a caller who took none.
    fn take_if_unread(&self, now: Instant, unread: Duration) -> Option<h2::RecvStream> {
        let mut state = self.state.locked();
        let waiting = match &mut state.recv {
            Some(recv) => recv.flow_control().used_capacity(),
            None => return None,
        };
        let withheld = self
            .withheld
            .as_ref()
            .is_some_and(|w| w.0.load(Ordering::Relaxed));
        if waiting == 0 || state.taken != state.seen || withheld {
            state.seen = state.taken;
            state.waiting_since = None;
            return None;
        }
        let since = *state.waiting_since.get_or_insert(now);
        match now.duration_since(since) >= unread {
            true => state.recv.take(),
            false => None,
        }
    }
}

impl Readers {
    /// Every so often, resets the streams whose data has waited `unread` for a caller
    /// who took none of it. Runs for as long as the connection.
    async fn reset_unread(&self, unread: Duration) -> std::convert::Infallible {
        let every = (unread / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::time::sleep(every).await;
            let now = Instant::now();
            let unread_streams: Vec<h2::RecvStream> = self
                .0
                .locked()
                .iter()
                .filter_map(|(_, reading)| reading.take_if_unread(now, unread))
                .collect();
            for recv in unread_streams {
                let mut recv = recv;
                tracing::warn!(
                    stream = u32::from(recv.stream_id()),
                    waiting = recv.flow_control().used_capacity(),
                    ?unread,
                    "a caller took none of an answer's data for upstream.unreadTimeout: its \
                     stream to the API server is reset, so that the callers sharing the \
                     connection are not held up"
                );
                // Dropped here: the stream is reset and its window given back.
            }
        }
    }
}

/// An answer's body as it arrives, handing flow-control window back to the API
/// server as each piece is passed on, so a large List or a watch keeps streaming at the
/// pace the caller reads.
struct ResponseBody {
    reading: Arc<Reading>,
    /// Where `reading` is watched from, and its place there (none for an answer that
    /// came whole with its head).
    watched: Option<(Arc<Readers>, usize)>,
    _slot: Slot,
    data_done: bool,
    /// What `Content-Length` said is left, if it was given.
    remaining: Option<u64>,
}

impl ResponseBody {
    fn new(
        recv: h2::RecvStream,
        length: Option<u64>,
        slot: Slot,
        readers: &Arc<Readers>,
        withheld: Option<Withheld>,
    ) -> ResponseBody {
        let ended = recv.is_end_stream();
        let reading = Arc::new(Reading {
            state: Mutex::new(ReadState {
                recv: Some(recv),
                taken: 0,
                seen: 0,
                waiting_since: None,
            }),
            withheld,
        });
        let watched =
            (!ended).then(|| (readers.clone(), readers.0.locked().insert(reading.clone())));
        ResponseBody {
            reading,
            watched,
            _slot: slot,
            data_done: false,
            remaining: length,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((readers, key)) = self.watched.take() {
            readers.0.locked().try_remove(key);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut state = this.reading.state.locked();
        let state = &mut *state;
        let Some(recv) = &mut state.recv else {
            return Poll::Ready(Some(Err(BoxError::from(
                "the caller took none of the answer for upstream.unreadTimeout: its stream \
                 to the API server was reset",
            ))));
        };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    state.taken += data.len() as u64;
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RFC 9113 §8.1: a reset with NO_ERROR after a whole answer only tells
                // the client to stop sending; the answer stands (as hyper reads it).
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None)
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.data_done = true,
            }
        }
        match ready!(recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading
            .state
            .locked()
            .recv
            .as_ref()
            .is_some_and(h2::RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose last frame is empty and only then says it has ended.
    struct EndsEmpty(u8);

    impl http_body::Body for EndsEmpty {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0 += 1;
            Poll::Ready(match self.0 {
                1 => Some(Ok(Frame::data(Bytes::from_static(b"{\"a\":1}")))),
                2 => Some(Ok(Frame::data(Bytes::new()))),
                _ => None,
            })
        }

        fn is_end_stream(&self) -> bool {
            self.0 >= 2
        }
    }

    /// An HTTP/2 server on an in-memory pipe that reads one request's body to its end
    /// and answers 200 with it.
    async fn echo_once(io: tokio::io::DuplexStream) -> Bytes {
        let mut conn = h2::server::handshake(io).await.expect("server handshake");
        let (req, mut respond) = conn.accept().await.expect("a request").expect("no error");
        tokio::spawn(async move { poll_fn(|cx| conn.poll_closed(cx)).await });
        let mut body = req.into_body();
        let mut got = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.expect("body data");
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        let answer = Response::builder().status(200).body(()).expect("response");
        respond.send_response(answer, true).expect("send response");
        got.into()
    }

    /// A caller's body that never sends more; notes when it is dropped.
    struct Stalled(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    impl Drop for Stalled {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_body_ends_stops_reading_the_body() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        // The server refuses at once, without reading the body, then resets the stream
        // as Go's server does (RFC 9113 §8.1: NO_ERROR, the answer stands).
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.expect("handshake");
            let (_req, mut respond) = conn.accept().await.expect("request").expect("ok");
            tokio::spawn(async move { poll_fn(|cx| conn.poll_closed(cx)).await });
            let answer = Response::builder().status(413).body(()).expect("response");
            respond.send_response(answer, true).expect("send response");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            respond.send_reset(h2::Reason::NO_ERROR);
        });
        let (sender, conn) = builder()
            .handshake::<_, Bytes>(client_io)
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        let dropped = std::sync::Arc::new(AtomicBool::new(false));
        let req = Request::put("https://api.test/api/v1/namespaces/default/configmaps/c")
            .body(Stalled(dropped.clone()).boxed())
            .expect("request");
        let answer = open(sender.ready().await.expect("ready"), req).expect("opened");
        let rsp = receive(
            answer,
            Slot::take(&Arc::new(AtomicUsize::new(0))),
            &Arc::default(),
            None,
        )
        .await
        .expect("an answer");
        assert_eq!(rsp.status(), 413);
        for _ in 0..500 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the caller's body is still being read after the stream was reset");
    }

    #[tokio::test]
    async fn a_body_whose_last_frame_is_empty_still_ends_the_stream() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(echo_once(server_io));
        let (sender, conn) = builder()
            .handshake::<_, Bytes>(client_io)
            .await
            .expect("client handshake");
        tokio::spawn(conn);
        let sender = sender.ready().await.expect("ready");
        let req = Request::post("https://api.test/api/v1/namespaces/default/configmaps")
            .body(EndsEmpty(0).boxed())
            .expect("request");
        let answer = open(sender, req).expect("stream opened");
        let rsp = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            receive(
                answer,
                Slot::take(&Arc::new(AtomicUsize::new(0))),
                &Arc::default(),
                None,
            ),
        )
        .await
        .expect("an answer: the request's stream was ended")
        .expect("no error");
        assert_eq!(rsp.status(), 200);
        assert_eq!(&server.await.expect("server")[..], b"{\"a\":1}");
    }
}
