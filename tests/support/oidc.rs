//! A test OIDC issuer on 127.0.0.1 over real TLS: it serves
//! `/.well-known/openid-configuration` and `/jwks`, signs tokens with keys made in the
//! test (RSA 2048, EC P-256, Ed25519), rotates keys at runtime, can be taken down, and
//! counts the fetches it answers.
//!
//! ```ignore
//! let idp = TestIssuer::start().await;
//! let token = idp.mint(Algorithm::RS256, RSA_KID, &idp.claims("chaperone"));
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{self, KeyPair};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The kids of the keys every issuer starts with.
pub const RSA_KID: &str = "rsa-1";
pub const EC_KID: &str = "ec-1";
pub const ED_KID: &str = "ed-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    EcP256,
    Ed25519,
}

/// How a taken-down issuer fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Answers every request with 503.
    Unavailable,
    /// Closes every connection before the TLS handshake.
    Closed,
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    /// The raw public key, for algorithm-confusion attempts.
    public: Vec<u8>,
}

#[derive(Default)]
struct State {
    keys: Vec<SigningKey>,
    /// Kids currently served in the JWKS.
    published: Vec<String>,
    outage: Option<Outage>,
}

/// A running issuer; stops when dropped.
pub struct TestIssuer {
    url: String,
    ca_pem: String,
    ca_file: PathBuf,
    dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_fetches: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestIssuer {
    /// An issuer publishing one RSA, one EC P-256 and one Ed25519 key.
    pub async fn start() -> TestIssuer {
        let (ca_pem, cert_pem, key_pem) = tls_material();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("idp-ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write CA");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let url = format!("https://127.0.0.1:{}", addr.port());
        let state = Arc::new(Mutex::new(State::default()));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery_fetches = Arc::new(AtomicUsize::new(0));
        let acceptor = acceptor(&cert_pem, &key_pem);
        let server = tokio::spawn(serve(
            listener,
            acceptor,
            url.clone(),
            state.clone(),
            jwks_fetches.clone(),
            discovery_fetches.clone(),
        ));
        let issuer = TestIssuer {
            url,
            ca_pem,
            ca_file,
            dir,
            state,
            jwks_fetches,
            discovery_fetches,
            server,
        };
        issuer.add_key(KeyType::Rsa, RSA_KID);
        issuer.add_key(KeyType::EcP256, EC_KID);
        issuer.add_key(KeyType::Ed25519, ED_KID);
        issuer
    }

    /// The issuer URL (`iss`), `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.url)
    }

    /// The CA that signed the issuer's TLS certificate, as PEM and as a file.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_file(&self) -> &std::path::Path {
        &self.ca_file
    }

    /// A scratch directory living as long as the issuer.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Generates a key and publishes it under `kid`.
    pub fn add_key(&self, kind: KeyType, kid: &str) {
        let key = generate(kind, kid);
        let mut state = self.state.lock().expect("state");
        state.keys.push(key);
        state.published.push(kid.to_owned());
    }

    /// Stops publishing `kid` (tokens can still be minted with it).
    pub fn remove_key(&self, kid: &str) {
        self.state
            .lock()
            .expect("state")
            .published
            .retain(|k| k != kid);
    }

    /// Takes the issuer down (`Some`) or brings it back (`None`).
    pub fn set_outage(&self, outage: Option<Outage>) {
        self.state.lock().expect("state").outage = outage;
    }

    /// JWKS documents served so far.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.discovery_fetches.load(Ordering::SeqCst)
    }

    /// The JWKS as currently published.
    pub fn jwks(&self) -> Bytes {
        jwks_document(&self.state.lock().expect("state"))
    }

    /// The raw public key of `kid` (PKCS#1 DER for RSA, the point for EC, 32 bytes for
    /// Ed25519).
    pub fn public_key(&self, kid: &str) -> Vec<u8> {
        let state = self.state.lock().expect("state");
        let key = state.keys.iter().find(|k| k.kid == kid).expect("known kid");
        key.public.clone()
    }

    /// Valid claims for `audience`: iss, sub `alice`, iat/nbf now, exp in 10 minutes.
    pub fn claims(&self, audience: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "sub": "alice",
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        })
    }

    /// A token signed by `kid` with `alg`, the header naming `kid`.
    pub fn mint(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        self.mint_with_header(&header, kid, claims)
    }

    /// A token signed by `signer` with whatever `header` says (kid may be absent or lie).
    pub fn mint_with_header(&self, header: &Header, signer: &str, claims: &Value) -> String {
        let state = self.state.lock().expect("state");
        let key = state
            .keys
            .iter()
            .find(|k| k.kid == signer)
            .expect("known kid");
        jsonwebtoken::encode(header, claims, &key.encoding).expect("sign")
    }

    /// The OIDC issuer entry of an `identity.issuers` list (YAML, two-space indented
    /// under the dash), with discovery and this issuer's CA, plus `extra` lines.
    pub fn issuer_yaml(&self, extra: &[&str]) -> String {
        let mut yaml = format!(
            "- issuer: {}\n  audiences: [chaperone]\n  discovery: true\n  caFile: {}\n",
            self.url,
            self.ca_file.display()
        );
        for line in extra {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml
    }
}

/// The current time as a JWT NumericDate.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// An unsigned-by-us token: `header` and `claims` encoded, signature bytes as given.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn jwks_document(state: &State) -> Bytes {
    let keys: Vec<&Value> = state
        .keys
        .iter()
        .filter(|k| state.published.contains(&k.kid))
        .map(|k| &k.jwk)
        .collect();
    Bytes::from(json!({ "keys": keys }).to_string())
}

fn generate(kind: KeyType, kid: &str) -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    match kind {
        KeyType::Rsa => {
            let der = rsa_pkcs1_der();
            let pair = signature::RsaKeyPair::from_der(&der).expect("RSA key");
            let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
            SigningKey {
                kid: kid.to_owned(),
                encoding: EncodingKey::from_rsa_der(&der),
                // No `alg`: RSA keys verify both RS* and PS* tokens.
                jwk: json!({"kty": "RSA", "use": "sig", "kid": kid,
                    "n": URL_SAFE_NO_PAD.encode(&parts.n), "e": URL_SAFE_NO_PAD.encode(&parts.e)}),
                public: pair.public().as_ref().to_vec(),
            }
        }
        KeyType::EcP256 => {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("EC key");
            let pair =
                signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("EC key");
            let point = pair.public_key().as_ref();
            SigningKey {
                kid: kid.to_owned(),
                encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
                public: point.to_vec(),
            }
        }
        KeyType::Ed25519 => {
            let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
            let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key");
            let public = pair.public_key().as_ref().to_vec();
            SigningKey {
                kid: kid.to_owned(),
                encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
                jwk: json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(&public)}),
                public,
            }
        }
    }
}

/// A fresh RSA-2048 key as PKCS#1 DER. ring cannot generate RSA keys and pure-Rust
/// generation is slow in debug builds, so the `openssl` CLI makes it (~0.1 s).
fn rsa_pkcs1_der() -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .expect("run openssl genrsa");
    assert!(
        out.status.success(),
        "openssl genrsa: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match rustls_pemfile::read_one(&mut &out.stdout[..]) {
        Ok(Some(rustls_pemfile::Item::Pkcs1Key(key))) => key.secret_pkcs1_der().to_vec(),
        other => panic!("openssl genrsa gave no PKCS#1 key: {other:?}"),
    }
}

/// A CA and a serving certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair as CertKey, SanType};
    let ca_key = CertKey::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let key = CertKey::generate().expect("leaf key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("leaf cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn acceptor(cert_pem: &str, key_pem: &str) -> TlsAcceptor {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert PEM");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("key PEM")
        .expect("a key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    url: String,
    state: Arc<Mutex<State>>,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_fetches: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if state.lock().expect("state").outage == Some(Outage::Closed) {
            drop(stream);
            continue;
        }
        let acceptor = acceptor.clone();
        let (url, state) = (url.clone(), state.clone());
        let (jwks_fetches, discovery_fetches) = (jwks_fetches.clone(), discovery_fetches.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(&req, &url, &state, &jwks_fetches, &discovery_fetches);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    url: &str,
    state: &Mutex<State>,
    jwks_fetches: &AtomicUsize,
    discovery_fetches: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let state = state.lock().expect("state");
    let reply = |status: StatusCode, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("response")
    };
    if state.outage.is_some() {
        return reply(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"{}"));
    }
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let doc = json!({"issuer": url, "jwks_uri": format!("{url}/jwks"),
                "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"]});
            reply(StatusCode::OK, Bytes::from(doc.to_string()))
        }
        "/jwks" => {
            jwks_fetches.fetch_add(1, Ordering::SeqCst);
            reply(StatusCode::OK, jwks_document(&state))
        }
        _ => reply(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
    }
}

/// Claims of a projected service-account token as the API server issues them.
pub fn service_account_claims(issuer: &str, audience: &str, namespace: &str, name: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "aud": [audience],
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": now, "nbf": now, "exp": now + 3600,
        "jti": "5b0a5a1e-2f52-4f0c-9e0b-8f3a1c2d4e5f",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "7d1b3c55-9a55-4b0e-8a8c-0c2a6f1d9e10"},
            "pod": {"name": "agent-7f9c", "uid": "1f0e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"},
            "serviceaccount": {"name": name, "uid": "9c8b7a6f-5e4d-3c2b-1a09-f8e7d6c5b4a3"},
        },
    })
}

/// Extra values as a map, for comparing with `Subject::extra`.
pub fn extra(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
        .collect()
}
