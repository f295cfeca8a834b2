//! sluice-broker: the single source of truth of a sluice deployment.
//!
//! It keeps the cluster metadata — proxies, clusters with their slot assignments and migration
//! tags, migrations, and one global epoch — in sled (one broker) or etcd (several brokers on
//! one etcd), and serves it over HTTP (axum). Every metadata change is one transaction of the
//! store that bumps the epoch by one and is durable before the call answers; status reports
//! (migration progress, proxy health) are stored too but do not move the epoch.
//!
//! Map: [`config`] (flags, env, file) → [`store`] (the in-memory [`state::State`] behind the
//! [`store::MetaStore`] trait, sled and etcd its implementations) → [`ops`] (every change, checks first,
//! one module per concern; [`scale`] plans scale-outs and scale-ins) → [`api`] (routes and
//! handlers), [`openapi`] and [`metrics`] (Prometheus, `GET /metrics`).

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod scale;
pub mod slots;
pub mod state;
pub mod store;

use crate::config::{Config, LogFormat};
use crate::error::BrokerError;
use crate::store::Store;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`), `format` shapes the lines.
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

/// Opens the store, binds `config.listen` and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), BrokerError> {
    let spec = config.store.clone();
    let (k, etcd_timeout) = (config.scale_concurrency, config.etcd_timeout);
    let store = tokio::task::spawn_blocking(move || {
        Store::open_spec_with(&spec, etcd_timeout).map(|s| s.with_scale_concurrency(k))
    })
    .await
    .map_err(|e| BrokerError::Serve(std::io::Error::other(e)))?
    .map_err(|source| BrokerError::Open { dir: config.store.to_string(), source })?;
    let store = Arc::new(store);
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| BrokerError::Listen { addr: config.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| BrokerError::Listen { addr: config.listen.clone(), source })?;
    let s = store.snapshot();
    tracing::info!(
        %addr,
        store = %config.store,
        epoch = s.epoch,
        proxies = s.proxies.len(),
        clusters = s.clusters.len(),
        auth = config.api_token.is_some(),
        scale_concurrency = config.scale_concurrency,
        "listening"
    );
    let app = api::AppState::new(store.clone(), config.api_token)?.with_change_limit(config.max_concurrent_changes);
    serve(listener, app, shutdown_signal()).await?;
    store.flush().map_err(BrokerError::Flush)?;
    tracing::info!("stopped");
    Ok(())
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: api::AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BrokerError> {
    let app = api::router(app);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(BrokerError::Serve)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
