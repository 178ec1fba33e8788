//! The command line: one `Parser`, one `match`, one function per subcommand.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::config::Config;
use crate::{certs, controller, mutate, server, tls};

#[derive(Debug, Parser)]
#[command(
    name = "chaperone-injector",
    version,
    about = "Injects the chaperone proxy into pods of labelled namespaces",
    long_about = "A mutating admission webhook that injects the chaperone proxy as a native \
                  sidecar into every pod of a namespace labelled chaperone.dev/inject=enabled, \
                  and a controller that keeps those namespaces supplied with the proxy's CA, \
                  serving certificate and config."
)]
pub struct Cli {
    /// Log filter, in tracing's env-filter syntax (e.g. `info`, `chaperone_injector=debug`).
    #[arg(long, global = true, env = "CHAPERONE_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook and run the controller (in a cluster).
    Serve(ServeArgs),
    /// Print a pod as the webhook would inject it (offline; no cluster needed).
    Inject(InjectArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The injector's config file (YAML); every key has a default.
    #[arg(long, env = "CHAPERONE_INJECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// The webhook's HTTPS address.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serve `tls.crt`/`tls.key` from this directory (cert-manager) instead of issuing
    /// and rotating the webhook certificate and patching `caBundle` itself.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Connections open at once; one past them is closed as it is accepted.
    #[arg(long, default_value_t = server::MAX_CONNECTIONS,
          value_parser = at_least_one)]
    pub max_connections: usize,
    /// Connections open at once from one remote address (loopback aside).
    #[arg(long, default_value_t = server::MAX_CONNECTIONS_PER_PEER, value_parser = at_least_one)]
    pub max_connections_per_peer: usize,
    /// Reviews read and answered at once (each up to 3 MiB); one past them waits up to
    /// 30 s for a turn, then is answered 503, and the API server refuses its pod.
    #[arg(long, default_value_t = server::MAX_REVIEWS,
          value_parser = at_least_one)]
    pub max_reviews: usize,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The injector's config file (YAML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The namespace the pod is created in (default: the pod's own, else `default`).
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Print the JSON patch instead of the patched pod.
    #[arg(long)]
    pub patch: bool,
    /// A pod as YAML or JSON; `-` reads standard input.
    pub file: PathBuf,
}

impl Cli {
    /// Logs go to stderr so stdout stays for command output.
    pub fn init_tracing(&self) -> anyhow::Result<()> {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|e| anyhow::anyhow!("invalid --log filter {:?}: {e}", self.log))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colours only for a terminal: a log file or collector gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        Ok(())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Inject(args) => inject(args),
    }
}

/// Where the injector's own service-account token is mounted in its pod.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load(args.config.as_deref())?;
    // The API server's audiences, from the injector's own token: a pod projecting a
    // token for one of them is refused.
    config.learn_api_audiences(Path::new(SERVICE_ACCOUNT_TOKEN));
    let config = Arc::new(config);
    let client = kube::Client::try_default()
        .await
        .context("failed to configure the Kubernetes client")?;
    let (stop, stopped) = watch::channel(false);
    let shutdown = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let ca = certs::proxy_ca(&client, &config)
        .await
        .context("failed to load the proxy CA")?;
    let resolver = match &args.cert_dir {
        Some(dir) => {
            let (cert, key) = certs::read_files(dir)?;
            let resolver = Arc::new(tls::Resolver::new(&cert, &key)?);
            tokio::spawn(certs::watch_files(
                dir.clone(),
                resolver.clone(),
                shutdown(),
            ));
            resolver
        }
        None => {
            let serving = certs::webhook_serving(&client, &config)
                .await
                .context("failed to set up the webhook serving certificate")?;
            let resolver = Arc::new(tls::Resolver::new(&serving.cert_pem, &serving.key_pem)?);
            let maintain = certs::maintain(
                client.clone(),
                config.clone(),
                resolver.clone(),
                serving,
                shutdown(),
            );
            tokio::spawn(maintain);
            resolver
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "serving the webhook");
    let tls = Arc::new(tls::server_config(resolver)?);
    let web = tokio::spawn(server::serve(
        listener,
        tls,
        config.clone(),
        server::Limits {
            max_connections: args.max_connections,
            max_connections_per_peer: args.max_connections_per_peer,
            max_reviews: args.max_reviews,
            ..server::Limits::default()
        },
        shutdown(),
    ));

    let ctx = Arc::new(controller::Context { client, config, ca });
    let control = tokio::spawn(controller::run(ctx, shutdown()));

    signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = tokio::join!(web, control);
    Ok(())
}

/// SIGTERM (the kubelet) or Ctrl-C.
async fn signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn inject(args: InjectArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_deref())?;
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("failed to read standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("failed to read {}", args.file.display()))?
    };
    let raw: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not YAML or JSON", args.file.display()))?;
    let pod: Pod = serde_json::from_value(raw.clone())
        .with_context(|| format!("{}: not a pod", args.file.display()))?;
    let namespace = args
        .namespace
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let patch = mutate::mutate(&pod, &namespace, &config)?;
    let patched = mutate::check(&raw, &patch).map_err(anyhow::Error::msg)?;
    let out = if args.patch {
        serde_json::to_string_pretty(&patch)?
    } else {
        serde_yaml::to_string(&patched)?
    };
    println!("{}", out.trim_end());
    Ok(())
}
