use anyhow::Context;
use clap::Parser;
use sluice_proxy::control::Control;
use sluice_proxy::options::{LogFormat, ProxyOptions};
use sluice_proxy::state::Shared;
use sluice_proxy::tls::Tls;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    tokio::spawn(sluice_proxy::register::register(opts.clone()));
    tokio::spawn({
        let shared = shared.clone();
        async move {
            let signal = shutdown_signal().await;
            tracing::info!(signal, "shutting down: no new clients, answering what is in flight");
            shared.shutdown.cancel();
        }
    });
    sluice_proxy::server::run(listener, ctl).await?;
    drain(&shared, &opts).await;
    Ok(())
}

/// After the signal: waits (at most `--shutdown-timeout-ms`) until every session has
/// answered what it had read and closed, and until a migration switch under way has
/// completed or released its slots (bounded by its own budget, so possibly a little past the
/// timeout: a switch is never left half done by the exit).
async fn drain(shared: &Arc<Shared>, opts: &ProxyOptions) {
    let started = Instant::now();
    let deadline = started + opts.shutdown_timeout();
    loop {
        let left = shared.connected_clients.load(Ordering::Acquire);
        if left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(clients = left, "shutdown timeout: closing the clients still connected");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switch_bound = Instant::now().max(deadline) + 2 * opts.switch_pause() + Duration::from_secs(3);
    if !shared.wait_switches(switch_bound).await {
        tracing::error!("a migration switch did not end in time; the restarted proxy settles it");
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "sluice-proxy stopped");
}

/// The name of the first SIGTERM or SIGINT. Without a handler (it could not be installed)
/// the proxy runs until killed.
async fn shutdown_signal() -> &'static str {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => "SIGINT",
        () = terminate => "SIGTERM",
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file keeps plain text, so `grep id=m-7` finds a
    // migration's lines (docs/operations.md).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
