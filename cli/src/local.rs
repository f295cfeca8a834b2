//! `sluice local`: a whole deployment on this machine until Ctrl-C or SIGTERM.

use anyhow::Result;
use sluice_local::{LocalCluster, LocalSpec};

pub async fn local(spec: LocalSpec) -> Result<()> {
    anyhow::ensure!(spec.proxies >= 1, "--proxies must be at least 1");
    let base_port = spec.base_port.unwrap_or(6001);
    let name = spec.cluster.clone();
    let cluster = LocalCluster::start(spec).await?;
    let broker = cluster.broker.url();
    let client = cluster.broker_client();
    let epoch = client.epoch().await?;
    let view = client.cluster(&name).await?;
    println!("sluice local is up (epoch {epoch})\n");
    println!("  broker       {broker}  (metrics {broker}/metrics)");
    for m in &cluster.coordinator_metrics {
        println!("  coordinator  metrics http://{m}/metrics");
    }
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
        if let Some(metrics) = &p.metrics {
            println!("               metrics http://{metrics}/metrics");
        }
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
