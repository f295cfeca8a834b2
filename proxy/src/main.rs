use anyhow::Context;
use clap::Parser;
use sluice_proxy::control::Control;
use sluice_proxy::options::{LogFormat, ProxyOptions};
use sluice_proxy::state::Shared;
use sluice_proxy::tls::Tls;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let opts = ProxyOptions::parse();
    init_logging(opts.log_format);
    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build()?
    };
    runtime.block_on(serve(opts))
}

async fn serve(opts: ProxyOptions) -> anyhow::Result<()> {
    // Bad TLS files stop the proxy before it listens: it never serves plain by mistake.
    let tls = Tls::from_options(&opts).context("cannot set up TLS (--tls-cert, --tls-key, --tls-ca)")?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    tracing::info!(listen = %opts.listen, announce = %opts.announce(), peer_announce = %opts.peer_announce(), node = %opts.node, tls = opts.tls_cert.is_some(), "sluice-proxy serving");
    let mut shared = Shared::new(opts.clone());
    shared.tls = tls.map(Arc::new);
    let shared = Arc::new(shared);
    let ctl = Control::new(shared.clone());
    if let Some(control) = &opts.control {
        let listener = tokio::net::TcpListener::bind(control)
            .await
            .with_context(|| format!("cannot listen on --control {control}"))?;
        tracing::info!(control = %control, "control service serving");
        let ctl = ctl.clone();
        tokio::spawn(async move {
            if let Err(e) = sluice_proxy::control::serve(listener, ctl).await {
                tracing::error!(error = %e, "control service stopped");
                std::process::exit(1);
            }
        });
    }
    if let Some(addr) = &opts.metrics {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --metrics {addr}"))?;
        tracing::info!(metrics = %addr, "metrics serving");
        let ctl = ctl.clone();
        tokio::spawn(async move {
            if let Err(e) = sluice_proxy::exporter::serve(listener, ctl).await {
                tracing::error!(error = %e, "metrics service stopped");
            }
        });
    }
    tokio::spawn(sluice_proxy::migration::gc::run(shared.clone()));
    tokio::spawn(sluice_proxy::shard::run(shared.clone()));
    tokio::spawn(sluice_proxy::handover::run(shared.clone()));
    tokio::spawn(sluice_proxy::register::register(opts));
    sluice_proxy::server::run(listener, ctl).await?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
