//! `sluice-broker`: see the library for what it does.

use clap::Parser;
use sluice_broker::config::{Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::resolve(Cli::parse())?;
    sluice_broker::init_logging(config.log_format);
    if let Err(e) = sluice_broker::run(config).await {
        tracing::error!(error = %e, "sluice-broker failed");
        return Err(e.into());
    }
    Ok(())
}
