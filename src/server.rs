//! Accepts connections on the API listeners (TLS, HTTP/1.1 and HTTP/2) and the admin
//! listener (plain HTTP), serves them, and shuts down gracefully.

mod first_bytes;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::sync::Locked as _;
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
            let mut open = counts.open.locked();
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
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
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

    /// At most `max` of them open from one address at once, loopback addresses aside.
    pub fn per_peer(mut self, max: usize) -> Connections {
        self.per_peer = Some(Arc::new(PerPeer {
            max,
            open: std::sync::Mutex::new(HashMap::new()),
        }));
        self
    }

    /// A place for a connection from `peer`, or why there is none.
    fn take(&self, peer: IpAddr) -> Result<Slot, &'static str> {
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
                let mut open = counts.open.locked();
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
                            tracing::warn!(?local, max_connections = connections.max, %peer,
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
            .locked()
            .is_empty());
    }
}
