//! Each issuer's signing keys: fetching them from the configured source, keeping the
//! last good set, and refreshing on a schedule and when a token names an unknown key.
//!
//! Two rules shape this: an IdP outage must not take authentication down (the last
//! good keys keep serving, and failed fetches are retried with backoff), and tokens
//! with made-up key ids must not turn the proxy into an amplifier against the IdP
//! (fetches caused by unknown key ids are single-flight and at most one per
//! `minRefreshInterval`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::{watch, Mutex};

use super::cache::TokenCache;
use super::jwks::{self, KeySet};
use super::ClusterJwks;

/// Bound on one fetch (discovery document or JWKS), so a hung IdP cannot stall the
/// requests waiting on an unknown-kid refresh.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on dialling the IdP.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// How often a `jwksFile` is checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// First retry delay after a failed fetch when `minRefreshInterval` is smaller.
const MIN_RETRY: Duration = Duration::from_millis(100);
/// Where the system CA bundle is looked for when an issuer names no `caFile`.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Where one issuer's keys come from, ready to fetch.
pub(crate) enum Source {
    Discovery {
        url: String,
        issuer: String,
        client: HttpClient,
    },
    Url {
        url: String,
        client: HttpClient,
    },
    File {
        path: PathBuf,
        /// SHA-256 of the content last loaded, to skip re-parsing an unchanged file.
        last: std::sync::Mutex<Option<[u8; 32]>>,
    },
    Cluster(Arc<dyn ClusterJwks>),
}

impl Source {
    /// An https-only client trusting exactly `ca_file`, or the system bundle.
    pub fn client(ca_file: Option<&std::path::Path>) -> Result<HttpClient, String> {
        let (pem, origin) = match ca_file {
            Some(path) => (
                std::fs::read(path)
                    .map_err(|e| format!("cannot read caFile {}: {e}", path.display()))?,
                path.display().to_string(),
            ),
            None => SYSTEM_CA_BUNDLES
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|pem| (pem, (*p).to_owned())))
                .ok_or("no caFile set and no system CA bundle found")?,
        };
        let tls = crate::tls::client_config(&pem, &origin, None).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new()).build(https))
    }

    /// The current JWKS document, or `None` when a file is unchanged since last load.
    async fn fetch(&self) -> Result<Option<Bytes>, String> {
        match self {
            Source::Discovery {
                url,
                issuer,
                client,
            } => {
                #[derive(Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let doc: Discovery = serde_json::from_slice(&get(client, url).await?)
                    .map_err(|e| format!("discovery document {url}: {e}"))?;
                // OpenID Connect Discovery §4.3: the document must name the issuer we
                // asked about, or its keys may belong to someone else.
                if doc.issuer != *issuer {
                    return Err(format!(
                        "discovery document {url} names issuer {:?}, not {issuer:?}",
                        doc.issuer
                    ));
                }
                if !doc.jwks_uri.starts_with("https://") {
                    return Err(format!("jwks_uri {:?} is not https", doc.jwks_uri));
                }
                get(client, &doc.jwks_uri).await.map(Some)
            }
            Source::Url { url, client } => get(client, url).await.map(Some),
            Source::File { path, last } => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let digest = super::cache::sha256(&bytes);
                let mut last = last.lock().map_err(|_| "poisoned lock".to_owned())?;
                if *last == Some(digest) {
                    return Ok(None);
                }
                *last = Some(digest);
                Ok(Some(bytes.into()))
            }
            Source::Cluster(cluster) => cluster
                .fetch()
                .await
                .map(Some)
                .map_err(|e| format!("cluster JWKS: {e}")),
        }
    }

    fn poll_interval(&self, refresh: Duration) -> Duration {
        match self {
            Source::File { .. } => refresh.min(FILE_POLL_INTERVAL),
            _ => refresh,
        }
    }
}

async fn get(client: &HttpClient, url: &str) -> Result<Bytes, String> {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let work = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("GET {url}: reading body: {e}"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| format!("GET {url}: timed out after {FETCH_TIMEOUT:?}"))?
}

/// hyper-util's errors say "client error (Connect)"; the cause (refused, TLS) is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The key cache of one issuer.
pub(crate) struct IssuerKeys {
    pub issuer: String,
    index: usize,
    source: Source,
    keys: RwLock<Option<Arc<KeySet>>>,
    ready: watch::Sender<bool>,
    /// Held while fetching, so concurrent unknown-kid refreshes share one fetch. Holds
    /// the time of the last fetch caused by an unknown key id.
    on_demand: Arc<Mutex<Option<Instant>>>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    cache: Arc<TokenCache>,
    fetches: Arc<AtomicU64>,
}

impl IssuerKeys {
    pub fn new(
        issuer: String,
        index: usize,
        source: Source,
        refresh_interval: Duration,
        min_refresh_interval: Duration,
        cache: Arc<TokenCache>,
        fetches: Arc<AtomicU64>,
    ) -> IssuerKeys {
        IssuerKeys {
            issuer,
            index,
            source,
            keys: RwLock::new(None),
            ready: watch::channel(false).0,
            on_demand: Arc::new(Mutex::new(None)),
            refresh_interval,
            min_refresh_interval,
            cache,
            fetches,
        }
    }

    /// The last good key set, `None` before the first successful fetch.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // Err only if the sender is dropped, which cannot happen while `self` lives.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// A fresh set after an unknown key id, or the current one when a fetch is not
    /// allowed yet. `seen` is the set the caller already looked in: if another request
    /// refreshed meanwhile, its result is used instead of fetching again.
    pub async fn refresh_on_demand(
        self: &Arc<Self>,
        seen: Option<&Arc<KeySet>>,
    ) -> Option<Arc<KeySet>> {
        let mut last = Arc::clone(&self.on_demand).lock_owned().await;
        let current = self.current();
        let changed = match (&current, seen) {
            (Some(now), Some(seen)) => !Arc::ptr_eq(now, seen),
            (now, seen) => now.is_some() != seen.is_some(),
        };
        if changed {
            return current;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refresh_interval) {
            return current;
        }
        *last = Some(Instant::now());
        // The fetch runs in a task of its own, which holds the lock: a caller that hangs
        // up cannot cancel it (and leave the keys unfetched until `min_refresh_interval`
        // has passed), and requests waiting for the lock get its result.
        let this = Arc::clone(self);
        let fetch = tokio::spawn(async move {
            let _last = last;
            if let Err(e) = this.fetch_and_store().await {
                tracing::warn!(issuer = %this.issuer, error = %e, "refreshing keys for an unknown key id failed; keeping the last good keys");
            }
        });
        let _ = fetch.await;
        self.current()
    }

    async fn fetch_and_store(&self) -> Result<(), String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let Some(doc) = self.source.fetch().await? else {
            return Ok(());
        };
        let fresh = Arc::new(jwks::parse(&doc)?);
        let count = fresh.keys.len();
        let old = {
            let mut keys = self.keys.write().map_err(|_| "poisoned lock".to_owned())?;
            keys.replace(fresh.clone())
        };
        if old.is_some_and(|old| old.lost_keys_in(&fresh)) {
            // A removed key may mean a compromised one: stop trusting what it verified.
            self.cache.forget_issuer(self.index);
            tracing::info!(issuer = %self.issuer, keys = count, "signing keys removed; forgot cached tokens of this issuer");
        }
        if !self.is_ready() {
            tracing::info!(issuer = %self.issuer, keys = count, "signing keys loaded");
        }
        self.ready.send_replace(true);
        Ok(())
    }
}

/// Refreshes `keys` forever: every `refreshInterval` (files: more often), and after a
/// failure with backoff from `minRefreshInterval` up to `refreshInterval`. Ends when
/// the authenticator is dropped.
pub(crate) async fn run(keys: Weak<IssuerKeys>) {
    let mut failures = 0u32;
    loop {
        let delay = {
            let Some(keys) = keys.upgrade() else { return };
            match keys.fetch_and_store().await {
                Ok(()) => {
                    failures = 0;
                    keys.source.poll_interval(keys.refresh_interval)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let base = keys.min_refresh_interval.max(MIN_RETRY);
                    let delay = base
                        .saturating_mul(1 << failures.min(16).saturating_sub(1))
                        .min(keys.refresh_interval);
                    tracing::warn!(issuer = %keys.issuer, error = %e, retry_in = ?delay, "fetching signing keys failed");
                    delay
                }
            }
        };
        tokio::time::sleep(delay).await;
    }
}
