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
    let config = Config::load(&args.config)?;
    let running = launch::proxy(&config, &super::process_env)
        .await
        .with_context(|| format!("failed to start from {}", args.config.display()))?;
    server::signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
