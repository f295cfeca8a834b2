//! `sluice`: the operator's command.
//!
//! `sluice local` starts redis-server nodes and a sluice-proxy in front of each on this
//! machine, gives every proxy its share of the 16384 slots (with `UMCTL SETDB`, until the
//! broker and coordinator exist), prints how to connect, and stops everything on Ctrl-C.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice_harness::ProxyCluster;

#[derive(Parser)]
#[command(name = "sluice", version, about = "sluice: Redis Cluster from plain redis-server nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster (redis-server nodes from PATH + sluice proxies) until Ctrl-C.
    Local {
        /// Number of proxies, each in front of its own redis-server.
        #[arg(long, default_value_t = 3)]
        proxies: usize,
        /// Port of the first proxy; the others follow.
        #[arg(long, default_value_t = 6001)]
        base_port: u16,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Local { proxies, base_port } => local(proxies, base_port).await,
    }
}

async fn local(proxies: usize, base_port: u16) -> Result<()> {
    anyhow::ensure!(proxies >= 1, "--proxies must be at least 1");
    let cluster = ProxyCluster::start_at(proxies, Some(base_port), &[]).await?;
    println!("sluice local cluster is up: {proxies} proxies, each in front of its own redis-server\n");
    for (p, n) in cluster.proxies.iter().zip(&cluster.nodes) {
        println!("  proxy {}  ->  redis-server {}", p.addr(), n.addr());
    }
    println!("\nTry:");
    println!("  redis-cli -c -p {base_port} SET hello world");
    println!("  redis-cli -c -p {base_port} CLUSTER SLOTS");
    println!("  redis-cli -p {base_port} UMCTL GETEPOCH");
    println!("\nFiles under {}. Ctrl-C stops everything.", cluster.dir.path().display());
    wait_for_shutdown().await;
    println!("stopping");
    drop(cluster);
    Ok(())
}

async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
