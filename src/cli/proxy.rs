//! `chaperone proxy --config FILE`: serve the API listeners and the admin port.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::Config;
use crate::{launch, server};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy config (YAML). Unknown keys are errors.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    not_dumpable()?;
    let config = Config::load(&args.config)?;
    let running = launch::proxy(&config, &super::process_env)
        .await
        .with_context(|| format!("failed to start from {}", args.config.display()))?;
    server::signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Makes the process not dumpable. Its files (the upstream token, the serving key) and its
/// memory are otherwise open, through `/proc/PID/root`, `/proc/PID/mem` and `environ`,
/// to any process of the same user that can see it: an app container that shares the
/// pod's process namespace, or one running as the proxy's uid. A process that is not
/// dumpable is open only to those with `CAP_SYS_PTRACE`.
fn not_dumpable() -> anyhow::Result<()> {
    use rustix::process::{set_dumpable_behavior, DumpableBehavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .context("failed to make the proxy's process not dumpable")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_proxy_process_is_not_dumpable() {
        use rustix::process::{dumpable_behavior, DumpableBehavior};
        super::not_dumpable().unwrap();
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
    }
}
