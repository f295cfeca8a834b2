//! `sluice-coordinator` keeps the proxies in step with the broker (docs/design.md, "The coordinator").
//!
//! Every round it reads what each proxy must hold (`GET /api/v1/configs`, again only when the
//! epoch moved: [`config_cache`]) and the running migrations, asks its proxies for their
//! `Status` over gRPC (busy ones every round, idle ones every `--idle-status-ms`; in parallel,
//! at most `--push-concurrency` calls at once, each bounded), pushes `SetConfig` to the
//! proxies that are behind, reports proxies that stop answering, and reports migration
//! progress, switches (→ commit) and failures to the broker. Several coordinators split the
//! clusters among themselves by heartbeat and rendezvous hash ([`share`]).
//!
//! It is stateless on purpose: the broker and the proxies hold all the state, and every
//! action is derived from comparing the two, so any number of coordinators can run and a
//! crashed one is simply restarted. See [`reconcile`] for the decisions, [`mod@run`] for the loop.

pub mod broker_client;
pub mod config;
pub mod config_cache;
pub mod failover;
pub mod fence;
pub mod health;
pub mod metrics;
pub mod proxy_client;
pub mod quiet;
pub mod reconcile;
pub mod run;
pub mod share;
pub mod trace;

pub use broker_client::{BrokerClient, BrokerError};
pub use config::{Cli, LogFormat, Settings};
pub use run::{run, Coordinator, CoordinatorError, RoundSummary};

/// Logs to stderr as text or JSON lines; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
