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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::webhook;

// The proxy's bound on a connection's first bytes, the same file: the webhook listens on
// the pod network, and with `failurePolicy: Fail` an injector whose connections are all
// held by clients that never send a request stops every pod in a labelled namespace.
#[path = "../../src/server/first_bytes.rs"]
mod first_bytes;
use first_bytes::FirstBytes;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a connection's first bytes, each HTTP/1.1 request head and a review's body:
/// the API server waits for a webhook at most 30 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Serves `listener` until `shutdown` completes, then waits for open connections. A
/// connection that sends no request head, or a request whose body does not arrive,
/// within `request_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: Arc<Config>,
    request_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout);
    // An HTTP/2 peer that stops answering pings is dropped.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
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
        let acceptor = acceptor.clone();
        let config = config.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
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
            let service = hyper::service::service_fn(move |req| {
                let config = config.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        route(req, &config, peer, request_timeout).await,
                    )
                }
            });
            let stream = FirstBytes::new(stream, request_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("closing connections still open after {SHUTDOWN_GRACE:?}");
    }
}

async fn route(
    req: Request<Incoming>,
    config: &Config,
    peer: SocketAddr,
    body_timeout: Duration,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz" | "/readyz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/mutate") => mutate(req, config, peer, body_timeout).await,
        (_, "/mutate") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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
