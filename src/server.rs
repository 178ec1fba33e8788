//! Accepts connections on the API listeners (TLS, HTTP/1.1 and HTTP/2) and the admin
//! listener (plain HTTP), serves them, and shuts down gracefully.

mod connections;
mod first_bytes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
pub use connections::{Connections, Slot};
use first_bytes::FirstBytes;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What is known of the connection a request came on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The client presented a TLS client certificate (never trusted; see `tls`).
    pub client_cert: bool,
    /// The connection's place among the listener's [`Connections`].
    pub slot: Slot,
}

/// What serves each request: the proxy pipeline, the sandbox, or the admin endpoints.
/// A plain function of the request, not a boxed trait object: the connection keeps the
/// future it returns in place, so serving a request allocates nothing for it (a boxed
/// future was a 6 KB allocation and copy per proxied request). The price: hyper's slot
/// for it is sized for the whole future and kept for the connection's life (about 8 KiB
/// per open connection; benches/README.md).
pub trait Handler:
    Fn(Request<Incoming>, Conn) -> Self::Answer + Clone + Send + Sync + 'static
{
    type Answer: Future<Output = Response<Body>> + Send + 'static;
}

impl<H, F> Handler for H
where
    H: Fn(Request<Incoming>, Conn) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    type Answer = F;
}

/// Tells every accept loop to stop; connections then get `grace` to finish.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// Binds every address before serving any, so a bad address fails startup as a whole.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, Error> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves one listener until shutdown, then waits up to `grace` for open connections
/// (watches, exec sessions) before dropping them. `tls: None` serves plain HTTP (the
/// admin port only). A connection that sends nothing, or no complete HTTP/1.1 request
/// head, within `header_timeout` is closed. `connections` bounds how many are open
/// at once. The admin port (`tls: None`) serves one request per connection.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TlsAcceptor, Duration)>,
    header_timeout: Duration,
    connections: Connections,
    handler: impl Handler,
    shutdown: Shutdown,
    grace: Duration,
) {
    let local = listener.local_addr().ok();
    let mut stop = shutdown.subscribe();
    let graceful = GracefulShutdown::new();
    let mut said_full = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Usually EMFILE or a reset before accept; the listener itself is fine.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match connections.take(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        if !std::mem::replace(&mut said_full, true) {
                            tracing::warn!(?local, max_connections = connections.max(), %peer,
                                "connection refused: {why}");
                        }
                        drop(stream);
                        continue;
                    }
                };
                said_full = false;
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = move |conn: Conn| {
                    service_fn(move |req| {
                        let answer = handler(req, conn.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer.await) }
                    })
                };
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // A client that opens a connection and never finishes its headers
                    // must not hold it forever: hyper bounds an HTTP/1.1 request's
                    // head once it knows the protocol, `FirstBytes` the bytes it needs
                    // to know it.
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout);
                    builder
                        .http2()
                        .timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(30));
                    let result = match tls {
                        Some((acceptor, timeout)) => {
                            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
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
                            let client_cert = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                            let service = service(Conn { peer, client_cert, slot });
                            let stream = FirstBytes::new(stream, header_timeout);
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        None => {
                            // The admin port: HTTP/1.1 only (probes and scrapes use it),
                            // so every idle connection is bounded by the header timeout;
                            // an HTTP/2 one without streams would be held for good. One
                            // request per connection: kept alive, a connection that sends
                            // a probe every few seconds would hold its place for good.
                            let service = service(Conn { peer, client_cert: false, slot });
                            let stream = FirstBytes::new(stream, header_timeout);
                            builder.http1().keep_alive(false);
                            let builder = builder.http1_only();
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            // The `Ref` the wait returns is not `Send`: drop it inside the branch.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(?local, "all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::info!(?local, ?grace, "shutdown grace elapsed; closing open connections"),
    }
}

/// Resolves when the process gets SIGTERM or SIGINT.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
