//! `chaperone sandbox [--with-proxy CONFIG]`: an in-memory API server with sample
//! objects, its CA and kubeconfigs, and optionally chaperone in front of it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Config, KubeconfigSource, Tls};
use crate::launch::{self, write_private, Running};
use crate::sandbox::Sandbox;
use crate::{kubeconfig, pki, server};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Also start chaperone, configured by this file, in front of the sandbox. Its
    /// `upstream` is replaced by the sandbox, and without a `tls` section it serves a
    /// certificate from the sandbox's CA.
    #[arg(long, value_name = "CONFIG")]
    pub with_proxy: Option<PathBuf>,
    /// Objects to start with (multi-document YAML or a `List`); default: the built-in seed.
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,
    /// Where to write the CA, certificates and kubeconfigs.
    #[arg(long, value_name = "DIR", default_value = ".chaperone-sandbox")]
    pub dir: PathBuf,
    /// Where the sandbox API server listens (loopback; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
}

/// The service account whose token `proxy.kubeconfig` carries (in the default seed).
pub const CALLER_NAMESPACE: &str = "default";
pub const CALLER_SERVICE_ACCOUNT: &str = "mcp-server";
/// The audience of tokens meant for chaperone, which the API server itself rejects.
pub const CALLER_AUDIENCE: &str = "chaperone";

/// A started sandbox (and proxy), with the files a client needs.
pub struct Started {
    pub sandbox: Sandbox,
    pub api: Running,
    pub proxy: Option<Running>,
    /// CA of both the sandbox and the proxy certificates.
    pub ca_file: PathBuf,
    /// Talks to the sandbox directly, as the proxy does (an "admin" token).
    pub kubeconfig: PathBuf,
    /// Talks through chaperone, as an MCP server would.
    pub proxy_kubeconfig: Option<PathBuf>,
    /// The proxy's audit recording (`--with-proxy` only).
    pub audit_file: Option<PathBuf>,
    /// The token the proxy uses upstream, and the service-account token callers present.
    pub upstream_token: String,
    pub caller_token: String,
}

impl Started {
    pub async fn stop(self) {
        if let Some(p) = self.proxy {
            p.stop().await;
        }
        self.api.stop().await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = start(&args, &super::process_env).await?;
    println!("sandbox API server  https://{}", started.api.addrs[0]);
    println!("  kubeconfig        {}", started.kubeconfig.display());
    if let (Some(proxy), Some(kc)) = (&started.proxy, &started.proxy_kubeconfig) {
        println!("chaperone proxy     https://{}", proxy.addrs[0]);
        println!("  kubeconfig        {}", kc.display());
        if let Some(admin) = proxy.admin {
            println!("  health            http://{admin}/readyz");
        }
        if let Some(audit) = &started.audit_file {
            println!("  audit trail       {}", audit.display());
        }
        println!();
        println!("try:  KUBECONFIG={} kubectl get pods -A", kc.display());
    } else {
        println!();
        println!(
            "try:  KUBECONFIG={} kubectl get pods -A",
            started.kubeconfig.display()
        );
    }
    println!("stop with Ctrl-C");
    server::signal().await;
    started.stop().await;
    Ok(())
}

/// Writes the PKI and kubeconfigs into `args.dir` and starts the servers.
pub async fn start(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Started> {
    let sandbox = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read seed file {}", path.display()))?;
            Sandbox::from_yaml(&text)
                .with_context(|| format!("invalid seed file {}", path.display()))?
        }
        None => Sandbox::with_default_seed(),
    };
    // Read the proxy config first: a bad config should fail before anything starts.
    let proxy_config = match &args.with_proxy {
        Some(path) => Some(Config::load(path)?),
        None => None,
    };

    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let ca = pki::Authority::generate("chaperone sandbox CA", 30)?;
    let leaf = ca.issue_server(pki::SERVING_NAMES, 30)?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem)
        .with_context(|| format!("failed to write {}", ca_file.display()))?;
    let cert_file = dir.join("tls.crt");
    let key_file = dir.join("tls.key");
    std::fs::write(&cert_file, &leaf.cert_pem)?;
    write_private(&key_file, &leaf.key_pem)?;

    let api = launch::sandbox(sandbox.clone(), &[args.listen], &cert_file, &key_file).await?;
    let upstream_token = random_token()?;
    let kubeconfig = write_private(
        &dir.join("sandbox.kubeconfig"),
        &kubeconfig::render(
            "sandbox",
            &format!("https://{}", api.addrs[0]),
            &ca.cert_pem,
            &upstream_token,
            Some("default"),
        ),
    )?;

    // The caller's token: what the kubelet would project into an MCP server's pod.
    let caller_token = sandbox
        .mint_service_account_token(
            CALLER_NAMESPACE,
            CALLER_SERVICE_ACCOUNT,
            &[CALLER_AUDIENCE.to_owned()],
            24 * 3600,
            None,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "failed to mint a token for service account {CALLER_NAMESPACE}/{CALLER_SERVICE_ACCOUNT} \
                 (does the seed define it?): {e}"
            )
        })?;
    let (proxy, proxy_kubeconfig, audit_file) = match proxy_config {
        None => (None, None, None),
        Some(mut config) => {
            config.upstream.in_cluster = None;
            config.upstream.kubeconfig = Some(KubeconfigSource {
                path: Some(kubeconfig.clone()),
                context: None,
            });
            if config.audit.file.is_none() {
                config.audit.file = Some(dir.join("audit.jsonl"));
            }
            if config.tls.is_none() {
                config.tls = Some(Tls {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                    handshake_timeout: crate::config::DEFAULT_HANDSHAKE_TIMEOUT,
                });
            }
            let proxy = launch::proxy(&config, env).await?;
            let kc = write_private(
                &dir.join("proxy.kubeconfig"),
                &kubeconfig::render(
                    "chaperone",
                    &format!("https://{}", proxy.addrs[0]),
                    &ca.cert_pem,
                    &caller_token,
                    Some("default"),
                ),
            )?;
            (Some(proxy), Some(kc), config.audit.file.clone())
        }
    };
    Ok(Started {
        sandbox,
        api,
        proxy,
        ca_file,
        kubeconfig,
        proxy_kubeconfig,
        audit_file,
        upstream_token,
        caller_token,
    })
}

/// 128 random bits as hex, from the kernel's CSPRNG.
fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("failed to read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
