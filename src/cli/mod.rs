//! The command line: one `Parser`, one `match`, one module per subcommand.

use clap::{Parser, Subcommand, ValueEnum};

pub mod local;
pub mod policy;
pub mod proxy;
pub mod replay;
pub mod review;
pub mod sandbox;
mod terminal;

#[derive(Debug, Parser)]
#[command(
    name = "chaperone",
    version,
    about = "Least-privilege access to Kubernetes for MCP servers",
    long_about = "chaperone sits between an MCP server (or any Kubernetes client) and the API server: \
                  it authenticates the caller's token, resolves every request exactly as the API server \
                  would, decides it from a policy (allow, deny, or hold for a reviewer's approval), \
                  forwards it with its own credential, masks secrets in what comes back, and records \
                  every request as an audit event. Refusals are Kubernetes Status errors.\n\n\
                  Also usable as the kubectl plugin `kubectl chaperone` (install it as kubectl-chaperone)."
)]
pub struct Cli {
    /// Log filter, in tracing's env-filter syntax (e.g. `info`, `chaperone=debug`).
    #[arg(long, global = true, env = "CHAPERONE_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Threads serving requests. 1 runs everything on one thread, as a sidecar sharing
    /// its pod's CPU should: no hand-offs between threads, the lowest latency. More raise
    /// throughput under heavy load where cores are spare (benches/README.md).
    #[arg(long, global = true, env = "CHAPERONE_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
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
    /// Run the proxy from a config file.
    Proxy(proxy::Args),
    /// Run an in-memory Kubernetes API server with sample objects, optionally with
    /// chaperone in front of it.
    Sandbox(sandbox::Args),
    /// Show recorded requests as a timeline.
    Replay(replay::Args),
    /// Desktop mode: run the proxy on this machine in front of a kubeconfig context,
    /// and write a kubeconfig for a local MCP server that points at it.
    Local(local::Args),
    /// Check, explain and test policies.
    Policy(policy::Args),
    /// Approve a request held for approval (an AccessRequest).
    Approve(review::DecideArgs),
    /// Deny a request held for approval, with a reason the requester sees.
    Deny(review::DecideArgs),
    /// List the requests held for approval, or show one in full.
    Requests(review::ListArgs),
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

/// Runs the subcommand; its exit code (0 on success, the subcommand's own otherwise).
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Proxy(args) => proxy::run(args).await.map(|()| ok),
        Command::Sandbox(args) => sandbox::run(args).await.map(|()| ok),
        Command::Local(args) => local::run(args).await.map(|()| ok),
        Command::Replay(args) => replay::run(args).await.map(|()| ok),
        Command::Policy(args) => policy::run(args).await,
        Command::Approve(args) => review::decide(args, true).await.map(|()| ok),
        Command::Deny(args) => review::decide(args, false).await.map(|()| ok),
        Command::Requests(args) => review::list(args).await.map(|()| ok),
    }
}

/// The real process environment, for code that takes an `env` lookup.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
