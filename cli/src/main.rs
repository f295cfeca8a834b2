//! `sluice`: the operator's command.
//!
//! `sluice local` starts a whole deployment on this machine: the broker (sled data in
//! `--data-dir`), a coordinator, redis-server nodes from PATH and a sluice-proxy in front of
//! each (they register with the broker), creates the cluster `local` through the broker's
//! API, waits until every proxy holds the broker's epoch, prints how to connect, and stops
//! every child on Ctrl-C or SIGTERM.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice_local::{LocalCluster, LocalSpec};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "sluice: Redis Cluster from plain redis-server nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run broker, coordinator, redis-server nodes and proxies on this machine until Ctrl-C.
    Local {
        /// Proxies in the cluster, each in front of its own redis-server.
        #[arg(long, default_value_t = 3)]
        proxies: usize,
        /// Replica proxies per shard (each with its own redis-server replicating the master's).
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// Extra free proxies (with their redis-server) to scale out into.
        #[arg(long, default_value_t = 1)]
        spare: usize,
        /// Port of the first proxy; the others follow; control ports are 10000 above.
        #[arg(long, default_value_t = 6001)]
        base_port: u16,
        /// Port of the broker's HTTP API.
        #[arg(long, default_value_t = 7799)]
        broker_port: u16,
        /// Where the broker's data, node files and logs go (kept); a temporary directory,
        /// removed at exit, when absent.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Local { proxies, replicas, spare, base_port, broker_port, data_dir } => {
            let spec = LocalSpec {
                proxies,
                replicas,
                spare,
                base_port: Some(base_port),
                broker_port: Some(broker_port),
                data_dir,
                ..LocalSpec::default()
            };
            local(spec).await
        }
    }
}

async fn local(spec: LocalSpec) -> Result<()> {
    anyhow::ensure!(spec.proxies >= 1, "--proxies must be at least 1");
    let base_port = spec.base_port.unwrap_or(6001);
    let name = spec.cluster.clone();
    let cluster = LocalCluster::start(spec).await?;
    let broker = cluster.broker.url();
    let client = cluster.broker_client();
    let epoch = client.epoch().await?;
    let view = client.cluster(&name).await?;
    println!("sluice local is up (epoch {epoch})\n");
    println!("  broker       {broker}");
    println!("  coordinator  1 running");
    let mut spare = None;
    for (p, n) in cluster.proxies.iter().zip(&cluster.nodes) {
        let addr = p.addr();
        let role = if view.nodes.iter().any(|m| m.proxy == addr) {
            format!("master in cluster '{name}'")
        } else if let Some(shard) = view.shard_of_replica(&addr) {
            format!("replica of {} in cluster '{name}'", shard.proxy)
        } else {
            spare.get_or_insert(addr.clone());
            "spare (free)".to_string()
        };
        println!("  proxy        {addr}  ->  redis-server {}   {role}", n.addr());
    }
    let first = cluster.proxies[0].addr();
    println!("\nTry:");
    println!("  redis-cli -c -p {base_port} SET hello world");
    println!("  curl -s {broker}/api/v1/clusters/{name}");
    if let Some(dst) = spare {
        println!(
            "  curl -s -X POST {broker}/api/v1/clusters/{name}/migrations -d '{{\"src\":\"{first}\",\"dst\":\"{dst}\",\"slots\":[[0,1000]]}}'"
        );
    }
    println!("\nFiles and logs under {}. Ctrl-C stops everything.", cluster.dir.display());
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
