//! `sluice-coordinator`: see the library for what it does.

use clap::Parser;
use sluice_coordinator::{Cli, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from(Cli::parse());
    sluice_coordinator::init_logging(settings.log_format);
    if let Err(e) = sluice_coordinator::run(settings, shutdown_signal()).await {
        tracing::error!(error = %e, "sluice-coordinator failed");
        return Err(e.into());
    }
    Ok(())
}

/// SIGINT or SIGTERM. If a handler cannot be installed the coordinator runs until killed,
/// which is safe: it holds nothing that needs a clean stop.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("stopping");
}
