//! Shared setup for the integration tests: a sandbox API server on loopback with
//! chaperone in front of it, and real clients pointed at either.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cases;
pub mod identity;
pub mod oidc;
pub mod otlp;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use chaperone::body::{self, Body};
use chaperone::cli::sandbox::{self, Started};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Every client command and request in the tests is bounded by this.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A running sandbox, optionally with chaperone in front, in a private temp dir.
pub struct Env {
    pub started: Started,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// The policy file the proxy watches.
    /// For a proxy the test starts itself ([`proxy_config`]): the sandbox's keys go to
    /// the JWKS file it trusts, and its policy lets any authenticated caller through;
    /// the upstream is what is under test.
    pub fn let_anyone_in_through_a_jwks_file(&self) {
        std::fs::write(
            self.dir.path().join("jwks.json"),
            self.started.sandbox.jwks().to_string(),
        )
        .expect("write jwks.json");
        // Through a JWKS file the token is an ordinary OIDC token, its subject
        // prefixed with the issuer.
        let anyone = ALLOW_ALL.replace("serviceAccounts: [default/mcp-server]", "users: [\"*\"]");
        std::fs::write(self.policy_file(), anyone).expect("write policy");
    }

    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// Every request the API server saw carried the proxy's own token (never the
    /// caller's, never none).
    pub fn assert_api_server_saw_only_the_proxy_token(&self) {
        let want = format!("Bearer {}", self.started.upstream_token);
        let seen = self.started.sandbox.seen_authorizations();
        assert!(!seen.is_empty(), "the API server saw no request");
        for (i, auth) in seen.iter().enumerate() {
            // Compared without printing: a failure would show a token.
            assert!(
                auth.as_deref() == Some(want.as_str()),
                "request {i} reached the API server with another credential, or none"
            );
        }
    }

    /// A config line naming the test's policy file, for proxies a test starts itself.
    pub fn policy_config(&self) -> String {
        format!(
            "policy: {{file: {}, reloadInterval: 50ms}}\n",
            self.policy_file().display()
        )
    }
}

/// Builder for a test environment: `sandbox().with_proxy().start().await`.
pub struct EnvBuilder {
    proxy_config: Option<String>,
    seed: Option<String>,
    policy: String,
    /// Environment variables the proxy sees (it sees no others).
    env: Vec<(&'static str, String)>,
}

/// The tests' default policy: the sandbox's caller may do anything (each test of a
/// refusal brings its own policy).
pub const ALLOW_ALL: &str = "apiVersion: chaperone.dev/v1alpha1
kind: Policy
metadata: {name: tests-allow-all}
spec:
  rules:
  - name: anything
    subjects: {serviceAccounts: [default/mcp-server]}
    apiGroups: [\"*\"]
    resources: [\"*\"]
    verbs: [\"*\"]
    action: allow
  - name: any-path
    subjects: {serviceAccounts: [default/mcp-server]}
    nonResourceURLs: [\"*\"]
    verbs: [get]
    action: allow
";

/// Trust the sandbox cluster's service-account tokens (audience `chaperone`).
pub const SANDBOX_IDENTITY: &str = "identity:\n  issuers:\n  - issuer: https://kubernetes.default.svc.cluster.local\n    audiences: [chaperone]\n    cluster: true\n";

pub fn sandbox() -> EnvBuilder {
    EnvBuilder {
        proxy_config: None,
        seed: None,
        policy: ALLOW_ALL.to_owned(),
        env: Vec::new(),
    }
}

impl EnvBuilder {
    /// Chaperone in front of the sandbox, on ephemeral loopback ports.
    pub fn with_proxy(self) -> Self {
        self.with_proxy_config("")
    }

    /// Chaperone with extra config YAML appended (its `listen`/`admin` are ephemeral,
    /// and it trusts the sandbox's service-account issuer unless `extra` sets
    /// `identity`).
    pub fn with_proxy_config(mut self, extra: &str) -> Self {
        let has = |key: &str| extra.starts_with(key) || extra.contains(&format!("\n{key}"));
        let policy = if has("policy:") {
            ""
        } else {
            "policy: {file: policy.yaml, reloadInterval: 50ms}\n"
        };
        let identity = if has("identity:") {
            ""
        } else {
            SANDBOX_IDENTITY
        };
        self.proxy_config = Some(format!(
            "listen: [\"127.0.0.1:0\"]\nadmin:\n  listen: 127.0.0.1:0\n{policy}{identity}{extra}"
        ));
        self
    }

    /// An environment variable the proxy sees (as the downward API sets `POD_UID`).
    pub fn env(mut self, name: &'static str, value: &str) -> Self {
        self.env.push((name, value.to_owned()));
        self
    }

    /// The policy the proxy starts with (`policy.yaml` in the test's dir, reloaded
    /// every 50ms).
    pub fn policy(mut self, yaml: &str) -> Self {
        self.policy = yaml.to_owned();
        self
    }

    pub fn seed(mut self, yaml: &str) -> Self {
        self.seed = Some(yaml.to_owned());
        self
    }

    /// Starts and waits until the proxy is ready.
    pub async fn start(self) -> Env {
        self.launch(true).await
    }

    /// Starts without waiting for readiness (a proxy that cannot become ready).
    pub async fn start_unready(self) -> Env {
        self.launch(false).await
    }

    async fn launch(self, wait_ready: bool) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("policy.yaml"), &self.policy).expect("write policy");
        let with_proxy = self.proxy_config.map(|text| {
            let path = dir.path().join("chaperone.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        let seed = self.seed.map(|text| {
            let path = dir.path().join("seed.yaml");
            std::fs::write(&path, text).expect("write seed");
            path
        });
        let args = sandbox::Args {
            with_proxy,
            seed,
            dir: dir.path().join("sandbox"),
            listen: "127.0.0.1:0".parse().expect("addr"),
        };
        let env = self.env;
        let started = sandbox::start(&args, &|name| match name {
            // The proxy gets no ambient config from the machine running the tests.
            "HOME" => Some("/nonexistent".into()),
            _ => env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()),
        })
        .await
        .expect("sandbox starts");
        if let Some(admin) = started
            .proxy
            .as_ref()
            .and_then(|p| p.admin)
            .filter(|_| wait_ready)
        {
            self::wait_ready(admin).await;
        }
        Env { started, dir }
    }
}

impl Env {
    pub fn sandbox_url(&self) -> String {
        format!("https://{}", self.started.api.addrs[0])
    }

    pub fn proxy_url(&self) -> String {
        let proxy = self.started.proxy.as_ref().expect("started with a proxy");
        format!("https://{}", proxy.addrs[0])
    }

    pub fn proxy_kubeconfig(&self) -> &Path {
        self.started
            .proxy_kubeconfig
            .as_deref()
            .expect("started with a proxy")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.started.ca_file).expect("read CA")
    }

    /// A TLS connection to `addr` (the proxy, or one a test started) trusting the
    /// test CA, as `localhost`.
    pub async fn tls_to(
        &self,
        addr: std::net::SocketAddr,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tls =
            chaperone::tls::client_config(&self.ca_pem(), "test CA", None).expect("client TLS");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("TLS handshake")
    }

    /// `python tests/clients/<script> HOST PORT TOKEN_FILE CA_FILE`: a Python client
    /// configured as in a pod (in-cluster loader), aimed at the proxy with the caller's
    /// token.
    pub fn python_in_cluster(&self, script: &str) -> tokio::process::Command {
        let token = self.dir.path().join("token");
        std::fs::write(&token, &self.started.caller_token).expect("write token");
        let addr = self
            .started
            .proxy
            .as_ref()
            .expect("started with a proxy")
            .addrs[0];
        let mut cmd = tokio::process::Command::new(python_path());
        cmd.arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/clients")
                .join(script),
        )
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&token)
        .arg(&self.started.ca_file)
        .env_remove("KUBECONFIG")
        .env("HOME", self.dir.path());
        cmd
    }

    /// Runs kubectl through chaperone with the proxy kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        run(self.kubectl_cmd(self.proxy_kubeconfig(), args)).await
    }

    /// Runs kubectl through chaperone, feeding `input` on stdin (`apply -f -`, `exec -i`).
    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        run_with_stdin(self.kubectl_cmd(self.proxy_kubeconfig(), args), input).await
    }

    /// Runs kubectl straight at the sandbox, bypassing chaperone (to set up or compare).
    pub async fn kubectl_direct(&self, args: &[&str]) -> Output {
        run(self.kubectl_cmd(&self.started.kubeconfig, args)).await
    }

    /// Runs kubectl straight at the sandbox, feeding `input` on stdin.
    pub async fn kubectl_direct_stdin(&self, args: &[&str], input: &str) -> Output {
        run_with_stdin(self.kubectl_cmd(&self.started.kubeconfig, args), input).await
    }

    /// A kubectl command with a clean environment: only PATH, a private HOME and the
    /// given kubeconfig.
    pub fn kubectl_cmd(&self, kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(kubectl_path());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", kubeconfig);
        cmd
    }

    /// An HTTPS client (HTTP/2 when `http2`) trusting the sandbox CA, that presents
    /// the caller's service-account token unless a request sets `Authorization`.
    pub fn client(&self, http2: bool) -> TestClient {
        let mut client = self.anonymous_client(http2);
        client.token = Some(self.started.caller_token.clone());
        client
    }

    /// As [`Env::client`], with no credential of its own.
    pub fn anonymous_client(&self, http2: bool) -> TestClient {
        let tls =
            chaperone::tls::client_config(&self.ca_pem(), "test CA", None).expect("client TLS");
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let connector = if http2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        TestClient {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(http2)
                .build(connector),
            token: None,
        }
    }

    /// Stops the servers (draining the audit queue); the returned temp dir keeps
    /// their files until it is dropped.
    pub async fn stop(self) -> tempfile::TempDir {
        self.started.stop().await;
        self.dir
    }
}

/// The kubectl under test: `$CHAPERONE_KUBECTL` (set by `.ci/test`), else `kubectl`.
pub fn kubectl_path() -> PathBuf {
    std::env::var_os("CHAPERONE_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// The Python with the `kubernetes` package: `$CHAPERONE_PYTHON` (set by `.ci/test`),
/// else the virtualenv `.ci/test` makes, else `python3`.
pub fn python_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CHAPERONE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cache/venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs a client command to completion within `CLIENT_TIMEOUT`.
pub async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let program = format!("{:?}", cmd.as_std());
    match tokio::time::timeout(CLIENT_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            panic!("failed to run {program}: {e} (is the client installed? run .ci/test)")
        }
        Err(_) => panic!("{program} did not finish within {CLIENT_TIMEOUT:?}"),
    }
}

/// Runs a client command with `input` on its stdin, within `CLIENT_TIMEOUT`.
pub async fn run_with_stdin(mut cmd: tokio::process::Command, input: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let program = format!("{:?}", cmd.as_std());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("failed to run {program}: {e} (is the client installed? run .ci/test)")
    });
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    match tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{program}: {e}"),
        Err(_) => panic!("{program} did not finish within {CLIENT_TIMEOUT:?}"),
    }
}

/// Asserts a client command succeeded and returns its stdout.
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "command failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Each line of a JSON-lines file (an audit recording), parsed; panics naming the file
/// and the line that cannot be read.
pub fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: {e}: {l}", path.display(), i + 1))
        })
        .collect()
}

#[derive(Clone)]
pub struct TestClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    token: Option<String>,
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl TestClient {
    fn authorize(&self, mut req: Request<Body>) -> Request<Body> {
        if let Some(token) = &self.token {
            if !req.headers().contains_key("authorization") {
                let value = format!("Bearer {token}").parse().expect("a header value");
                req.headers_mut().insert("authorization", value);
            }
        }
        req
    }

    /// Sends a GET with the given headers and reads the whole response.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(body::empty()).expect("request")).await
    }

    /// Sends a POST of a JSON body (as written: it may be one no serialiser would
    /// write) and reads the whole response.
    pub async fn post_json(&self, url: &str, json: &'static str) -> Reply {
        let req = Request::post(url)
            .header("content-type", "application/json")
            .body(body::full(json))
            .expect("request");
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let req = self.authorize(req);
        let rsp = tokio::time::timeout(CLIENT_TIMEOUT, self.inner.request(req))
            .await
            .expect("response within the client timeout")
            .expect("response");
        let (parts, body) = rsp.into_parts();
        let body = tokio::time::timeout(CLIENT_TIMEOUT, body.collect())
            .await
            .expect("body within the client timeout")
            .expect("body")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn open(&self, req: Request<Body>) -> http::Response<hyper::body::Incoming> {
        let req = self.authorize(req);
        tokio::time::timeout(CLIENT_TIMEOUT, self.inner.request(req))
            .await
            .expect("response within the client timeout")
            .expect("response")
    }
}

/// Waits for a proxy's admin port to say it is ready: the issuer's keys are fetched,
/// so tests then see only their own requests reach the sandbox.
pub async fn wait_ready(admin: std::net::SocketAddr) {
    let ready = async {
        while http_get(admin, "/readyz").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, ready)
        .await
        .expect("the proxy becomes ready");
}

/// A plain-HTTP GET (the admin port): status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .expect("admin answers");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

/// Waits (in the background) for the request held for approval to show up in
/// `chaperone requests`, approves it as the sandbox's admin user, and returns its name.
pub fn approve_when_held(env: &Env) -> tokio::task::JoinHandle<String> {
    let kubeconfig = env.started.kubeconfig.clone();
    // Async: the sandbox and proxy run on this runtime, and a worker blocked waiting
    // for a child that talks to them could hold up the very task serving it.
    let chaperone = |args: &[&str], kubeconfig: &std::path::Path| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chaperone"));
        cmd.args(args).arg("--kubeconfig").arg(kubeconfig);
        run(cmd)
    };
    tokio::spawn(async move {
        let name = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                let out = chaperone(&["requests"], &kubeconfig).await;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if let Some(line) = text.lines().nth(1) {
                    return line.split_whitespace().nth(1).unwrap().to_owned();
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the change is held for approval");
        let approved = chaperone(
            &["approve", &name, "--reason", "the agent needs it"],
            &kubeconfig,
        )
        .await;
        assert!(
            approved.status.success(),
            "{}",
            String::from_utf8_lossy(&approved.stderr)
        );
        name
    })
}

/// Trust the sandbox's service-account tokens through a JWKS file, so callers are
/// authenticated even when the upstream (which would serve the keys) is down.
fn jwks_file_identity(dir: &Path) -> String {
    format!(
        "identity:\n  issuers:\n  - issuer: https://kubernetes.default.svc.cluster.local\n    audiences: [chaperone]\n    jwksFile: {}\n",
        dir.join("jwks.json").display()
    )
}

/// A config for a proxy the test starts itself, in front of `server` with `token` as
/// its credential, serving with the sandbox's certificate (see
/// [`Env::let_anyone_in_through_a_jwks_file`]).
pub fn proxy_config(
    dir: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    extra: &str,
) -> chaperone::config::Config {
    let kc = dir.join("upstream.kubeconfig");
    std::fs::write(
        &kc,
        chaperone::kubeconfig::render("up", server, ca_pem, token, None),
    )
    .expect("write kubeconfig");
    let text = format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{listen: 127.0.0.1:0}}\ntls:\n  certFile: {dir}/sandbox/tls.crt\n  keyFile: {dir}/sandbox/tls.key\nupstream:\n  kubeconfig: {{path: {kc}}}\n{extra}{identity}policy: {{file: {policy}}}\n",
        dir = dir.display(),
        kc = kc.display(),
        identity = jwks_file_identity(dir),
        policy = dir.join("policy.yaml").display(),
    );
    chaperone::config::Config::parse(Path::new("test.yaml"), &text).expect("config parses")
}
