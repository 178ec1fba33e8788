//! The webhook's HTTPS server: `/mutate`, `/healthz`, `/readyz`; graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::webhook;

// The proxy's bound on a connection's first bytes, the same file: the webhook listens on
// the pod network, and with `failurePolicy: Fail` an injector whose connections are all
// held by clients that never send a request stops every pod in a labelled namespace.
#[path = "../../src/server/first_bytes.rs"]
mod first_bytes;
use first_bytes::FirstBytes;

// The proxy's bound on connections, in all and per peer address: the same file.
#[path = "../../src/server/connections.rs"]
mod connections;
use connections::Connections;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a connection's first bytes, each HTTP/1.1 request head and a review's body:
/// the API server waits for a webhook at most 30 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default bound on connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Default bound on connections open at once from one address (loopback aside). The
/// API server needs a few: one HTTP/2 connection, another each time one carries
/// `MAX_STREAMS` reviews at once.
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Default bound on reviews read and answered at once.
pub const MAX_REVIEWS: usize = 16;
/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 32;
/// What one HTTP/2 connection may have sent and not yet been read, over all its
/// streams: with `MAX_CONNECTIONS`, a bound on what peers can make the webhook hold
/// beside the reviews being read.
const CONNECTION_WINDOW: u32 = 512 << 10;

/// The webhook's bounds. The webhook listens on the pod network, and with
/// `failurePolicy: Fail` every pod in a labelled namespace waits on it: no client may
/// hold it for good or make it buffer without end. Past a bound it refuses, which the
/// API server turns into a refused pod, never an uninjected one.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bound on a connection's first bytes, each HTTP/1.1 request head and a review's
    /// body, and on the wait for a turn among `max_reviews`.
    pub request_timeout: Duration,
    /// Connections open at once; one past them is closed as it is accepted.
    pub max_connections: usize,
    /// Connections open at once from one remote address: one peer cannot take every
    /// place.
    pub max_connections_per_peer: usize,
    /// Reviews read and answered at once. Each may hold up to `webhook::MAX_BODY`
    /// (3 MiB): the default 16 hold at most 48 MiB.
    pub max_reviews: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_connections_per_peer: MAX_CONNECTIONS_PER_PEER,
            max_reviews: MAX_REVIEWS,
        }
    }
}

type Body = Full<Bytes>;

/// Serves `listener` until `shutdown` completes, then waits for open connections. A
/// connection that sends no request head, or a request whose body does not arrive,
/// within `limits.request_timeout` is closed, and so is one with no request open for
/// that long (HTTP/2 answers pings without a request: it would be held for good); see
/// [`Limits`] for the rest.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Arc<Config>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let request_timeout = limits.request_timeout;
    let acceptor = TlsAcceptor::from(tls);
    let connections =
        Connections::new(limits.max_connections).per_peer(limits.max_connections_per_peer);
    let reviews = Arc::new(Semaphore::new(limits.max_reviews));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut said_full = false;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    // An HTTP/2 peer that stops answering pings is dropped.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(MAX_STREAMS)
        .initial_connection_window_size(CONNECTION_WINDOW);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Usually EMFILE: without a pause the loop would spin a core and
                    // fill the log until a descriptor is free.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match connections.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                if !std::mem::replace(&mut said_full, true) {
                    tracing::warn!(%peer, max_connections = connections.max(),
                        max_connections_per_peer = limits.max_connections_per_peer,
                        "connection refused: {why}");
                }
                drop(tcp);
                continue;
            }
        };
        said_full = false;
        let acceptor = acceptor.clone();
        let config = config.clone();
        let reviews = reviews.clone();
        let builder = builder.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let activity = Arc::new(Activity::new());
            let seen = activity.clone();
            let service = hyper::service::service_fn(move |req| {
                let config = config.clone();
                let reviews = reviews.clone();
                let busy = seen.begin();
                async move {
                    let answer = route(req, &config, peer, &reviews, request_timeout).await;
                    drop(busy);
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let stream = FirstBytes::new(stream, request_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(error) = ended {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        break;
                    }
                    // Shutting down, or idle: GOAWAY, and the requests open finish.
                    _ = async { let _ = stopped.wait_for(|s| *s).await; }, if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = activity.idle_for(request_timeout), if !closing => {
                        tracing::debug!(%peer, "closing a connection with no request open");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    // HTTP/2's goodbye waits for the peer to answer a ping, which a
                    // peer holding the connection on purpose never does.
                    () = tokio::time::sleep(request_timeout), if closing => {
                        tracing::debug!(%peer, "dropping a connection that did not close");
                        break;
                    }
                }
            }
        });
    }
    let _ = stop.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.all_closed())
        .await
        .is_err()
    {
        tracing::warn!("closing connections still open after {SHUTDOWN_GRACE:?}");
    }
}

/// A connection's requests: how many are open, and since when none has been.
struct Activity {
    open: std::sync::Mutex<(usize, tokio::time::Instant)>,
}

/// One request open on a connection, until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            open: std::sync::Mutex::new((0, tokio::time::Instant::now())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (usize, tokio::time::Instant)> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.state().0 += 1;
        Busy(self.clone())
    }

    /// Resolves once no request has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let (open, since) = *self.state();
            if open == 0 && since.elapsed() >= idle {
                return;
            }
            let wake = if open == 0 {
                since + idle
            } else {
                tokio::time::Instant::now() + idle
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.0 -= 1;
        state.1 = tokio::time::Instant::now();
    }
}

async fn route(
    req: Request<Incoming>,
    config: &Config,
    peer: SocketAddr,
    reviews: &Semaphore,
    body_timeout: Duration,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz" | "/readyz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/mutate") => {
            // A turn among the reviews in flight before the body is read, so that no
            // number of requests makes the webhook hold more than `max_reviews` bodies.
            match turn(reviews, body_timeout).await {
                Ok(_turn) => mutate(req, config, peer, body_timeout).await,
                Err(e) => error(&e, peer),
            }
        }
        (_, "/mutate") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A turn among the reviews in flight, waiting up to `wait` for one to end.
async fn turn(reviews: &Semaphore, wait: Duration) -> Result<SemaphorePermit<'_>, webhook::Error> {
    match tokio::time::timeout(wait, reviews.acquire()).await {
        Ok(Ok(turn)) => Ok(turn),
        _ => Err(webhook::Error::Busy(wait)),
    }
}

async fn mutate(
    req: Request<Incoming>,
    config: &Config,
    peer: SocketAddr,
    body_timeout: Duration,
) -> Response<Body> {
    // The limit is enforced while reading, so an oversized body is never buffered whole.
    let read = Limited::new(req.into_body(), webhook::MAX_BODY).collect();
    let body = match tokio::time::timeout(body_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(&webhook::Error::TooLarge, peer);
        }
        Ok(Err(e)) => return error(&webhook::Error::Body(e.to_string()), peer),
        Err(_) => return error(&webhook::Error::BodyTimeout(body_timeout), peer),
    };
    let answer = webhook::review(&body, config).and_then(|r| webhook::encode(&r));
    match answer {
        Ok(json) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
        Err(e) => error(&e, peer),
    }
}

fn error(e: &webhook::Error, peer: SocketAddr) -> Response<Body> {
    tracing::warn!(%peer, error = %e, "bad admission review");
    text(e.http_status(), &format!("{e}\n"))
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_review_that_gets_no_turn_in_time_is_answered_503_saying_why() {
        let reviews = Semaphore::new(1);
        let held = turn(&reviews, Duration::from_millis(10)).await.unwrap();
        let e = turn(&reviews, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "the webhook has its most reviews in flight and none ended within 50ms"
        );
        drop(held);
        assert!(turn(&reviews, Duration::from_millis(10)).await.is_ok());
    }
}
