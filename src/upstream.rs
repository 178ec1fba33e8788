//! Forwards an authorised request to the real API server with the proxy's own
//! credential, streaming bodies both ways and tunnelling connection upgrades.

use crate::sync::Locked;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

pub use channel::Withheld;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::Instrument;

use crate::body::{Body, BoxError};
use crate::config;
use crate::headers;
use crate::kubeconfig::{self, Credential};
use crate::status::Status;
use crate::tls;

mod channel;
use channel::{H2Channel, Sent};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("in-cluster upstream: {0} is not set and upstream.inCluster.{1} is not configured")]
    MissingEnv(&'static str, &'static str),
    #[error("invalid upstream server address {0:?}")]
    BadServer(String),
    #[error("upstream server {0:?} is not https; chaperone only speaks TLS to the API server")]
    NotHttps(String),
    #[error(
        "upstream server {0:?} has a query; an API server's address is a URL with at most \
         a path (as `https://rancher.example.com/k8s/clusters/c-1`)"
    )]
    ServerQuery(String),
    #[error("failed to read the upstream CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the upstream kubeconfig context has no certificate-authority; chaperone will not trust the system roots for the API server")]
    NoCa,
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::Error),
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("failed to read the proxy's token file {path}: {source}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy's token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error(
        "the upstream kubeconfig user's token cannot be sent in a header (it holds a line \
         break or another control character); kubectl would refuse it too"
    )]
    BadToken,
    #[error("the API server at {server} is unreachable: {}", chain(source.as_ref()))]
    Unreachable {
        server: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "the API server at {server} refused chaperone's own credential (401 Unauthorized): \
         the proxy's token or certificate is expired, revoked or not for this cluster; the \
         caller's own was accepted"
    )]
    CredentialRefused { server: String },
    #[error("the API server at {server} did not answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("failed to build the upstream request: {0}")]
    Request(#[from] http::Error),
    #[error("the API server answered {code} to GET {path}")]
    UnexpectedStatus { path: String, code: StatusCode },
    #[error("failed to read the API server's answer to GET {path}: {message}")]
    Body { path: String, message: String },
    #[error("the proxy has no credential for the API server: {0}")]
    Exec(#[from] crate::exec_credential::Error),
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::Unreachable { .. }
            | Error::CredentialRefused { .. }
            | Error::ReadToken { .. }
            | Error::EmptyToken(_)
            | Error::Exec(_) => Status::service_unavailable(self.to_string()),
            Error::Timeout { .. } => Status::timeout(self.to_string()),
            Error::UnexpectedStatus { .. } | Error::Body { .. } => {
                Status::service_unavailable(self.to_string())
            }
            _ => Status::internal(self.to_string()),
        }
    }
}

/// An error and its sources, each once: hyper's client says only "client error
/// (Connect)" where its source says why (a certificate the CA does not sign, say).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = e.source();
    }
    text
}

/// Marks a request to a service, pod or node proxied to (the `proxy` subresource), whose
/// answers are its own: a 401 from it is not about the proxy's credential. The pipeline
/// sets it from the resolved request.
#[derive(Debug, Clone, Copy)]
pub struct ProxiedTo;

/// The proxy's own bearer credential, if it uses one (client certificates live in the
/// TLS configuration instead).
enum Bearer {
    None,
    Static(HeaderValue),
    /// Re-read when the file changes: the kubelet rotates projected tokens in place.
    File(TokenFile),
    /// Printed by a kubeconfig exec plugin, renewed before it expires.
    Exec(Box<crate::exec_credential::Plugin>),
}

struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<((SystemTime, u64), HeaderValue)>>,
}

impl TokenFile {
    fn new(path: PathBuf) -> Result<TokenFile, Error> {
        let file = TokenFile {
            path,
            cached: Mutex::new(None),
        };
        file.header()?;
        Ok(file)
    }

    /// The `Authorization` value for the token now on disk.
    fn header(&self) -> Result<HeaderValue, Error> {
        let read_err = |source| Error::ReadToken {
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(read_err)?;
        let stamp = (meta.modified().map_err(read_err)?, meta.len());
        let mut cached = match self.cached.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((seen, value)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(value.clone());
            }
        }
        let text = std::fs::read_to_string(&self.path).map_err(read_err)?;
        let value = bearer(text.trim()).ok_or_else(|| Error::EmptyToken(self.path.clone()))?;
        *cached = Some((stamp, value.clone()));
        Ok(value)
    }
}

/// `Bearer <token>` as a sensitive header value (kept out of `Debug` output); `None`
/// for an empty token or one that is not a valid header value.
pub(crate) fn bearer(token: &str) -> Option<HeaderValue> {
    if token.is_empty() {
        return None;
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

type HttpsClient = Client<Dial<HttpsConnector<HttpConnector>>, Body>;

/// Bounds the whole dial, TCP connect and TLS handshake together, so an API server
/// that accepts but never answers is reported as unreachable instead of waited on.
#[derive(Clone)]
struct Dial<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for Dial<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dial = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, dial).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(format!("no TLS connection within {timeout:?}").into()),
            }
        })
    }
}

/// How long the upstream waits, and how often it checks its HTTP/2 connection is alive.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How long an answer's data may wait for a caller who takes none of it.
    pub unread: Duration,
}

/// A pooled client to one API server.
pub struct Upstream {
    server: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The server URL's path, without its last `/`: put before every request's path.
    prefix: String,
    /// Short requests: straight onto the shared HTTP/2 connection.
    h2: H2Channel,
    /// HTTP/1.1, for a server that does not offer HTTP/2.
    client: HttpsClient,
    /// HTTP/1.1 only: `Upgrade` does not exist in HTTP/2.
    upgrade_client: HttpsClient,
    bearer: Bearer,
    response_timeout: Duration,
    /// The last failure to reach the API server, until a request gets through again.
    last_failure: Mutex<Option<(std::time::SystemTime, String)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client from the config; `env` reads the proxy's environment
    /// (`KUBERNETES_SERVICE_HOST`/`PORT`, `KUBECONFIG`, `HOME`).
    pub fn from_config(
        cfg: &config::Upstream,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Upstream, Error> {
        let (server, ca_pem, ca_origin, tls_server_name, credential) = match &cfg.kubeconfig {
            Some(kc) => {
                let (r, origin) = match &kc.path {
                    Some(path) => (
                        kubeconfig::resolve(path, kc.context.as_deref())?,
                        path.display().to_string(),
                    ),
                    None => {
                        let paths = kubeconfig::default_paths(env);
                        if paths.is_empty() {
                            return Err(Error::MissingEnv("KUBECONFIG", "kubeconfig.path"));
                        }
                        let origin: Vec<String> =
                            paths.iter().map(|p| p.display().to_string()).collect();
                        (
                            kubeconfig::resolve_merged(&paths, kc.context.as_deref())?,
                            origin.join(", "),
                        )
                    }
                };
                let ca = r.ca_pem.ok_or(Error::NoCa)?;
                (r.server, ca, origin, r.tls_server_name, r.credential)
            }
            None => {
                let ic = cfg.in_cluster.clone().unwrap_or_default();
                let host = match ic.host {
                    Some(h) => h,
                    None => env("KUBERNETES_SERVICE_HOST")
                        .ok_or(Error::MissingEnv("KUBERNETES_SERVICE_HOST", "host"))?,
                };
                let port = match ic.port {
                    Some(p) => p.to_string(),
                    None => env("KUBERNETES_SERVICE_PORT")
                        .ok_or(Error::MissingEnv("KUBERNETES_SERVICE_PORT", "port"))?,
                };
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                let ca_file = ic.ca_file.unwrap_or_else(|| config::DEFAULT_CA_FILE.into());
                let ca = std::fs::read(&ca_file).map_err(|source| Error::ReadCa {
                    path: ca_file.clone(),
                    source,
                })?;
                let token = ic
                    .token_file
                    .unwrap_or_else(|| config::DEFAULT_TOKEN_FILE.into());
                (
                    format!("https://{host}:{port}"),
                    ca,
                    ca_file.display().to_string(),
                    None,
                    Credential::TokenFile(token),
                )
            }
        };
        Self::new(
            &server,
            &ca_pem,
            &ca_origin,
            tls_server_name,
            credential,
            Timeouts {
                connect: cfg.connect_timeout,
                response: cfg.response_timeout,
                ping_interval: cfg.ping_interval,
                ping_timeout: cfg.ping_timeout,
                unread: cfg.unread_timeout,
            },
        )
    }

    fn new(
        server: &str,
        ca_pem: &[u8],
        ca_origin: &str,
        tls_server_name: Option<String>,
        credential: Credential,
        timeouts: Timeouts,
    ) -> Result<Upstream, Error> {
        let uri: Uri = server
            .parse()
            .map_err(|_| Error::BadServer(server.into()))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(Error::NotHttps(server.into()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Error::BadServer(server.into()))?;
        if uri.query().is_some() {
            return Err(Error::ServerQuery(server.into()));
        }
        // An API server behind a path (Rancher's `/k8s/clusters/ID`): every request path
        // goes under it, as client-go puts it before `/api` and `/apis`.
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let (identity, bearer) = match credential {
            Credential::None => (None, Bearer::None),
            // An empty token is none, as client-go reads it; one that cannot be a header
            // is an error, never a request sent without credential.
            Credential::Token(t) if t.is_empty() => (None, Bearer::None),
            Credential::Token(t) => (None, Bearer::Static(bearer(&t).ok_or(Error::BadToken)?)),
            Credential::TokenFile(p) => (None, Bearer::File(TokenFile::new(p)?)),
            Credential::Exec(e) => (
                None,
                Bearer::Exec(Box::new(crate::exec_credential::Plugin::new(e))),
            ),
            Credential::ClientCert { cert_pem, key_pem } => (
                Some(tls::ClientIdentity {
                    certs: tls::certs_from_pem(&cert_pem, "client-certificate")?,
                    key: tls::key_from_pem(&key_pem, "client-key")?,
                }),
                Bearer::None,
            ),
        };
        let tls_config = tls::client_config(ca_pem, ca_origin, identity)?;
        let connector = |http2: bool| -> Result<Dial<HttpsConnector<HttpConnector>>, Error> {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(timeouts.connect));
            http.set_nodelay(true);
            // The kernel's check under the HTTP/2 pings (and the only one for HTTP/1.1).
            http.set_keepalive(Some(timeouts.ping_interval));
            let mut builder = HttpsConnectorBuilder::new()
                .with_tls_config(tls_config.clone())
                .https_only();
            if let Some(name) = &tls_server_name {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| Error::BadServer(name.clone()))?;
                builder = builder.with_server_name_resolver(FixedServerNameResolver::new(name));
            }
            let inner = if http2 {
                builder.enable_http1().enable_http2().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            };
            Ok(Dial {
                inner,
                timeout: timeouts.connect,
            })
        };
        let h2 = H2Channel::new(
            connector(true)?,
            channel::Health {
                ping_interval: timeouts.ping_interval,
                ping_timeout: timeouts.ping_timeout,
                unread: timeouts.unread,
            },
            Uri::builder()
                .scheme(http::uri::Scheme::HTTPS)
                .authority(authority.clone())
                .path_and_query("/")
                .build()?,
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector(false)?);
        let upgrade_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector(false)?);
        Ok(Upstream {
            server: server.to_owned(),
            scheme: http::uri::Scheme::HTTPS,
            authority,
            prefix,
            h2,
            client,
            upgrade_client,
            bearer,
            response_timeout: timeouts.response,
            last_failure: Mutex::new(None),
        })
    }

    /// Why the API server could not be reached, while that is still the case (for
    /// `/readyz`).
    pub fn unreachable(&self) -> Option<String> {
        let last = self.last_failure.locked();
        last.as_ref().map(|(at, why)| {
            let ago = at.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            format!("{why} ({ago}s ago)")
        })
    }

    fn note_failure(&self, error: &Error) {
        let mut last = self.last_failure.locked();
        // Once per spell, in the log too: `/readyz` shows it only to this host's peers.
        if last.is_none() {
            tracing::warn!(%error, "the API server cannot be used");
        }
        *last = Some((std::time::SystemTime::now(), error.to_string()));
    }

    fn note_success(&self) {
        let mut last = self.last_failure.locked();
        if last.is_some() {
            *last = None;
        }
    }

    /// The proxy's `Authorization` for the API server: a plugin's token is fetched (or
    /// its cached one given). Without it the proxy cannot use the API server, and
    /// `/readyz` says so.
    async fn authorization(&self) -> Result<Option<HeaderValue>, Error> {
        let auth = match &self.bearer {
            Bearer::None => Ok(None),
            Bearer::Static(v) => Ok(Some(v.clone())),
            Bearer::File(f) => f.header().map(Some),
            // Boxed: the plugin's future is kept out of every request's future.
            Bearer::Exec(p) => Box::pin(p.header()).await.map(Some).map_err(Error::from),
        };
        auth.inspect_err(|error| self.note_failure(error))
    }

    /// Whether the proxy has its credential for the API server now (an exec plugin runs,
    /// and its token is kept for the first request): `chaperone local` asks at start.
    pub async fn check_credential(&self) -> Result<(), Error> {
        self.authorization().await.map(|_| ())
    }

    /// The API server's address, for logs and errors.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `req` (headers already prepared by `headers::prepare_upstream`) to
    /// `path_and_query` on the API server with the proxy's credential. With
    /// `downstream_upgrade`, a `101 Switching Protocols` answer is tunnelled: bytes are
    /// copied both ways until either side closes.
    pub async fn forward(
        &self,
        mut req: Request<Body>,
        path_and_query: &str,
        downstream_upgrade: Option<Upgrade>,
    ) -> Result<Response<Body>, Error> {
        let path_and_query = match self.prefix.is_empty() {
            true => std::borrow::Cow::Borrowed(path_and_query),
            false => std::borrow::Cow::Owned(format!("{}{path_and_query}", self.prefix)),
        };
        let proxied_to = req.extensions_mut().remove::<ProxiedTo>().is_some();
        *req.uri_mut() = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query.as_ref())
            .build()?;
        *req.version_mut() = http::Version::HTTP_11;
        if let Some(auth) = self.authorization().await? {
            req.headers_mut().insert(header::AUTHORIZATION, auth);
        }
        let send = async {
            let pooled = |client: &HttpsClient, req| {
                let answer = client.request(req);
                async { answer.await.map(boxed).map_err(BoxError::from) }
            };
            if downstream_upgrade.is_some() {
                return pooled(&self.upgrade_client, req).await;
            }
            match self.h2.send(req).await {
                Sent::Answered(answer) => answer,
                Sent::Http1Only(req) => pooled(&self.client, req).await,
            }
        };
        let mut rsp = match tokio::time::timeout(self.response_timeout, send).await {
            Err(_) => {
                return Err(Error::Timeout {
                    server: self.server.clone(),
                    timeout: self.response_timeout,
                })
            }
            Ok(Err(source)) => {
                let error = Error::Unreachable {
                    server: self.server.clone(),
                    source,
                };
                self.note_failure(&error);
                return Err(error);
            }
            Ok(Ok(rsp)) => rsp,
        };
        // The caller's token never goes upstream: a 401 is about the proxy's own
        // credential, and the caller must not be told its own was refused. A service or
        // node proxied to may answer 401 itself: that one goes back as it is (and does
        // not cost the plugin's token). Another 401 a caller can cause (an admission
        // webhook's, an aggregated API's) drops the plugin's token at most every few
        // seconds (`exec_credential::FORGET_AFTER`).
        if rsp.status() == StatusCode::UNAUTHORIZED && !proxied_to {
            // The plugin's token was refused (revoked, or expired early): the next
            // request gets a new one.
            if let Bearer::Exec(plugin) = &self.bearer {
                plugin.forget().await;
            }
            let error = Error::CredentialRefused {
                server: self.server.clone(),
            };
            self.note_failure(&error);
            return Err(error);
        }
        self.note_success();
        let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(upgrade)) = (switching, downstream_upgrade) {
            let upstream = hyper::upgrade::on(&mut rsp);
            let Upgrade {
                downstream,
                hold,
                connection,
            } = upgrade;
            tokio::spawn(
                async move {
                    tunnel(downstream, upstream).await;
                    drop((hold, connection));
                }
                .instrument(tracing::info_span!("tunnel")),
            );
        }
        headers::strip_hop_by_hop(rsp.headers_mut(), switching);
        headers::strip_redirects_and_challenges(rsp.headers_mut());
        Ok(rsp)
    }
}

/// The most chaperone reads of a response it fetches for itself (a JWKS, a discovery
/// document).
const MAX_OWN_BODY: usize = 1 << 20;

impl Upstream {
    /// Fetches `path` from the API server for the proxy itself (never for a caller),
    /// with the proxy's credential: e.g. the cluster's `/openid/v1/jwks`.
    pub async fn get(&self, path: &str) -> Result<bytes::Bytes, Error> {
        let (code, body) = self.call(http::Method::GET, path, None).await?;
        if !code.is_success() {
            return Err(Error::UnexpectedStatus {
                path: path.to_owned(),
                code,
            });
        }
        Ok(body)
    }

    /// Sends one JSON request for the proxy itself (`body`: content type and bytes)
    /// and reads the whole answer, whatever its code.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, bytes::Bytes), Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some((kind, bytes)) => {
                req = req.header(header::CONTENT_TYPE, kind);
                crate::body::full(bytes)
            }
            None => crate::body::empty(),
        };
        let rsp = self.forward(req.body(body)?, path, None).await?;
        let code = rsp.status();
        let body = crate::body::read_limited(rsp.into_body(), MAX_OWN_BODY)
            .await
            .map_err(|e| Error::Body {
                path: path.to_owned(),
                message: match e {
                    crate::body::ReadError::TooLarge => format!("larger than {MAX_OWN_BODY} bytes"),
                    crate::body::ReadError::Failed(why) => why,
                },
            })?;
        Ok((code, body))
    }
}

/// The upstream as a `tower` service, so kube-rs (the approvals' watcher) reaches the
/// API server through the proxy's own credential, connection pool and timeouts.
#[derive(Clone)]
pub struct Service(pub std::sync::Arc<Upstream>);

impl tower_service::Service<Request<kube::client::Body>> for Service {
    type Response = Response<Body>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let upstream = self.0.clone();
        Box::pin(async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
            // kube-rs sends small JSON bodies (its body type is not `Sync`, ours is).
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map_err(|e| Error::Body {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let req = Request::from_parts(parts, crate::body::full(body.to_bytes()));
            upstream.forward(req, &path, None).await
        })
    }
}

/// The cluster's service-account signing keys, read through the proxy's own
/// upstream credential (the `system:service-account-issuer-discovery` ClusterRole
/// grants `GET /openid/v1/jwks`).
pub struct ClusterKeys(pub std::sync::Arc<Upstream>);

impl crate::identity::ClusterJwks for ClusterKeys {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<bytes::Bytes, String>> + Send + '_>> {
        Box::pin(async move {
            self.0
                .get("/openid/v1/jwks")
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The `iss` claim of a JWT, read without verifying it. Only for the proxy's own
/// mounted service-account token, to learn which issuer this cluster uses.
pub fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// A caller's connection upgrade (exec, attach, port-forward), tunnelled once the API
/// server agrees to it.
pub struct Upgrade {
    pub downstream: OnUpgrade,
    /// Held for as long as the tunnel lasts: the caller's place among its streams.
    pub hold: Option<crate::places::Place>,
    /// Held for as long as the tunnel lasts: the connection's place among the
    /// listener's, since the tunnel keeps its socket.
    pub connection: crate::server::Slot,
}

/// A pooled client's answer, with the body every stage carries.
fn boxed(rsp: Response<Incoming>) -> Response<Body> {
    rsp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed())
}

/// Copies bytes both ways between the caller and the API server after a 101.
async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(%error, "connection upgrade failed");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((to_server, to_client)) => {
            tracing::debug!(to_server, to_client, "tunnel closed")
        }
        Err(error) => tracing::debug!(%error, "tunnel ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS server on loopback answering every request with its path and query.
    async fn echo_paths(issued: &crate::pki::Issued) -> std::net::SocketAddr {
        answering(issued, StatusCode::OK).await
    }

    /// A TLS server on loopback answering every request with `code` and its path.
    async fn answering(issued: &crate::pki::Issued, code: StatusCode) -> std::net::SocketAddr {
        let mut config = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                tls::certs_from_pem(issued.cert_pem.as_bytes(), "cert").unwrap(),
                tls::key_from_pem(issued.key_pem.as_bytes(), "key").unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let seen = req.uri().path_and_query().map(|p| p.to_string());
                        async move {
                            let mut rsp =
                                Response::new(crate::body::full(seen.unwrap_or_default()));
                            *rsp.status_mut() = code;
                            // What a service proxied to may answer with.
                            for (name, value) in [
                                ("location", "https://elsewhere.example/steal"),
                                ("www-authenticate", "Basic realm=\"x\""),
                                ("set-cookie", "session=1"),
                            ] {
                                rsp.headers_mut().insert(name, value.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(rsp)
                        }
                    });
                tokio::spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }

    /// Every timeout 5 s: ample for a loopback server.
    fn five_seconds() -> Timeouts {
        let timeout = Duration::from_secs(5);
        Timeouts {
            connect: timeout,
            response: timeout,
            ping_interval: timeout,
            ping_timeout: timeout,
            unread: timeout,
        }
    }

    /// An API server behind a path (`https://rancher.example.com/k8s/clusters/c-1`) gets
    /// every request under it, as from client-go; a server URL with a query is refused.
    #[tokio::test]
    async fn a_server_path_goes_before_every_request_path() {
        let ca = crate::pki::Authority::generate("test CA", 1).unwrap();
        let issued = ca.issue_server(&["127.0.0.1"], 1).unwrap();
        let addr = echo_paths(&issued).await;
        let timeouts = five_seconds();
        for (server, want) in [
            (format!("https://{addr}"), "/api/v1/pods?limit=1"),
            (format!("https://{addr}/"), "/api/v1/pods?limit=1"),
            (
                format!("https://{addr}/k8s/clusters/c-1"),
                "/k8s/clusters/c-1/api/v1/pods?limit=1",
            ),
            (
                format!("https://{addr}/k8s/clusters/c-1/"),
                "/k8s/clusters/c-1/api/v1/pods?limit=1",
            ),
        ] {
            let upstream = Upstream::new(
                &server,
                ca.cert_pem.as_bytes(),
                "test CA",
                None,
                Credential::None,
                timeouts,
            )
            .unwrap();
            let req = Request::get("/").body(crate::body::empty()).unwrap();
            let rsp = upstream
                .forward(req, "/api/v1/pods?limit=1", None)
                .await
                .unwrap();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, want, "{server}");
        }
        let refused = Upstream::new(
            &format!("https://{addr}/k8s?cluster=c-1"),
            ca.cert_pem.as_bytes(),
            "test CA",
            None,
            Credential::None,
            timeouts,
        );
        assert!(matches!(refused, Err(Error::ServerQuery(_))), "{refused:?}");
    }

    /// A 401 from the API server is about the proxy's own credential (the caller's never
    /// goes upstream): a 503 saying so, noted for `/readyz`. A service proxied to may
    /// answer 401 itself: that one goes back as it is.
    #[tokio::test]
    async fn a_401_is_the_proxys_credential_refused_unless_proxied() {
        let ca = crate::pki::Authority::generate("test CA", 1).unwrap();
        let issued = ca.issue_server(&["127.0.0.1"], 1).unwrap();
        let addr = answering(&issued, StatusCode::UNAUTHORIZED).await;
        let upstream = Upstream::new(
            &format!("https://{addr}"),
            ca.cert_pem.as_bytes(),
            "test CA",
            None,
            Credential::Token("expired".into()),
            five_seconds(),
        )
        .unwrap();
        let get = || Request::get("/").body(crate::body::empty()).unwrap();
        let refused = upstream.forward(get(), "/api/v1/pods", None).await;
        let Err(error) = refused else {
            panic!("a 401 is an error");
        };
        assert!(matches!(error, Error::CredentialRefused { .. }), "{error}");
        assert_eq!(error.status().code, 503);
        assert!(upstream
            .unreachable()
            .is_some_and(|why| why.contains("refused chaperone's own credential")));
        let mut req = get();
        req.extensions_mut().insert(ProxiedTo);
        let proxied = upstream
            .forward(
                req,
                "/api/v1/namespaces/d/services/web:80/proxy/login",
                None,
            )
            .await
            .unwrap();
        assert_eq!(proxied.status(), StatusCode::UNAUTHORIZED);
        // Without what could send the caller's client, and its token, elsewhere.
        for name in ["location", "www-authenticate", "set-cookie"] {
            assert!(!proxied.headers().contains_key(name), "{name}");
        }
        // A namespace or an object named `proxy` is no service proxied to.
        let named = upstream
            .forward(get(), "/api/v1/namespaces/proxy/configmaps/proxy", None)
            .await;
        assert!(matches!(named, Err(Error::CredentialRefused { .. })));
    }

    /// A kubeconfig token that cannot be a header (`token: |` in YAML ends in a line
    /// break) is refused at start, where it had been dropped and requests sent without
    /// any credential; an empty one is no credential, as client-go reads it.
    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_not_dropped() {
        let ca = crate::pki::Authority::generate("test CA", 1).unwrap();
        let timeouts = five_seconds();
        let new = |token: &str| {
            Upstream::new(
                "https://127.0.0.1:6443",
                ca.cert_pem.as_bytes(),
                "test CA",
                None,
                Credential::Token(token.into()),
                timeouts,
            )
        };
        let refused = new("abc\n").expect_err("a token with a line break is refused");
        assert!(matches!(refused, Error::BadToken), "{refused}");
        assert!(!refused.to_string().contains("abc"), "{refused}");
        assert!(new("").is_ok());
        assert!(new("abc").is_ok());
    }

    /// A failure to connect says why, not only "client error (Connect)".
    #[test]
    fn an_error_says_its_causes_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            chain(&Outer(inner)),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }
}
