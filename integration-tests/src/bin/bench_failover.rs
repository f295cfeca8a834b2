//! Failover time (issue 13; run it with `bench/failover.sh`): seconds from SIGKILL of a
//! master's redis-server to every slot of its shard served again, seen by a redis-rs cluster
//! client.
//!
//! - sluice: 3 shards with a replica each (`LocalCluster`), the coordinator's default
//!   `--failover-after-ms 5000`.
//! - native: a Redis Cluster of 3 masters and 3 replicas with `cluster-node-timeout 5000`.
//!
//! Each side `--runs` times (default 5) on a fresh cluster; prints every run, the medians and
//! the ratio sluice / native, then the same as one JSON line (`RESULT {…}`). "Served" means a
//! fresh cluster client's `SET` of one key in every 64th slot of the killed shard succeeds
//! (polled every 20 ms). Exit code 1 when a side never recovers within `--deadline`.

use anyhow::{anyhow, bail, Result};
use redis::AsyncCommands;
use sluice_common::model::{split_slots_evenly, SlotRange};
use sluice_common::slot::key_slot;
use sluice_harness::native::NativeCluster;
use sluice_harness::workload::cluster_connection;
use sluice_harness::{LocalCluster, LocalSpec, MigrationCluster};
use std::time::{Duration, Instant};

const USAGE: &str = "\
bench_failover: seconds from SIGKILL of a master's redis-server to its slots served again,
sluice (3 shards x 1 replica, --failover-after-ms 5000) vs a native Redis Cluster (3 masters,
3 replicas, cluster-node-timeout 5000)

  --runs N       runs per side (default 5); the medians are compared
  --deadline S   seconds a side may take to recover before the run fails (default 60)
  --only SIDE    sluice or native: that side only (no ratio)

Binaries come from $SLUICE_BIN_DIR or the directory of this executable; redis-server from PATH.";

/// One key in every 64th slot of `range`: what the probe writes.
fn probe_keys(range: SlotRange) -> Vec<String> {
    let mut keys = Vec::new();
    let mut i = 0u64;
    let wanted: Vec<u16> = range.slots().step_by(64).collect();
    let mut found = vec![false; wanted.len()];
    while found.iter().any(|f| !f) {
        let k = format!("probe:{i}");
        let slot = key_slot(k.as_bytes());
        if let Some(j) = wanted.iter().position(|&w| w == slot) {
            if !found[j] {
                found[j] = true;
                keys.push(k);
            }
        }
        i += 1;
    }
    keys
}

/// Polls until every probe key can be written: the time from `since`. Each round opens a
/// fresh redis-rs cluster connection (its view of the topology from `CLUSTER SLOTS` then): a
/// connection made before the kill, with a 1 s response timeout, did not recover within a
/// minute on either side (redis-rs 1.8), so that would time the client, not the cluster.
async fn time_to_served(urls: &[String], keys: &[String], since: Instant, deadline: Duration) -> Result<Duration> {
    loop {
        let round = async {
            let conn = cluster_connection(urls, Duration::from_secs(1)).await.map_err(|e| e.to_string())?;
            let writes = keys.iter().map(|k| {
                let mut c = conn.clone();
                async move { c.set::<_, _, ()>(k, "x").await }
            });
            match futures::future::join_all(writes).await.into_iter().find_map(Result::err) {
                None => Ok(()),
                Some(e) => Err(e.to_string()),
            }
        };
        let last = match tokio::time::timeout(Duration::from_secs(3), round).await {
            Ok(Ok(())) => return Ok(since.elapsed()),
            Ok(Err(e)) => e,
            Err(_) => "a round did not finish within 3 s".to_string(),
        };
        if since.elapsed() > deadline {
            bail!("the killed master's slots were not served within {deadline:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sluice_run(deadline: Duration) -> Result<Duration> {
    let mut cluster =
        LocalCluster::start(LocalSpec { proxies: 3, replicas: 1, spare: 0, ..LocalSpec::default() }).await?;
    let view = cluster.view().await?;
    let shard = &view.nodes[0];
    let range = shard.slots.first().map(|a| a.range()).ok_or_else(|| anyhow!("shard 0 has no slots"))?;
    let keys = probe_keys(range);
    let urls = cluster.urls();
    time_to_served(&urls, &keys, Instant::now(), deadline).await?;
    // Every replica synced before the kill.
    for n in &view.nodes {
        let replica = &n.replicas[0].node;
        sluice_harness::wait_for("the replica to sync", Duration::from_secs(30), || {
            let replica = replica.clone();
            async move {
                let info = sluice_harness::client::call_ok(&replica, &["INFO", "replication"]).await?;
                let text = info.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                Ok(text.contains("master_link_status:up").then_some(()))
            }
        })
        .await?;
    }
    let victim = cluster.nodes.iter().position(|n| n.addr() == shard.node).ok_or_else(|| anyhow!("no master node"))?;
    let killed = Instant::now();
    cluster.nodes[victim].kill();
    time_to_served(&urls, &keys, killed, deadline).await
}

async fn native_run(deadline: Duration) -> Result<Duration> {
    let dir = tempfile::Builder::new().prefix("sluice-native-failover-").tempdir()?;
    let ranges: Vec<Vec<SlotRange>> = split_slots_evenly(3).into_iter().map(|r| vec![r]).collect();
    let args = ["--cluster-node-timeout", "5000"];
    let mut native = NativeCluster::start_with(dir.path(), &ranges, &args).await?;
    native.add_replicas(dir.path(), 1, &args).await?;
    let keys = probe_keys(ranges[0][0]);
    let urls = native.urls();
    time_to_served(&urls, &keys, Instant::now(), deadline).await?;
    let killed = Instant::now();
    native.nodes[0].kill();
    time_to_served(&urls, &keys, killed, deadline).await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn run(runs: usize, deadline: Duration, only: Option<String>) -> Result<()> {
    let mut sluice = Vec::new();
    let mut native = Vec::new();
    for i in 1..=runs {
        if only.as_deref() != Some("native") {
            let s = sluice_run(deadline).await?.as_secs_f64();
            println!("run {i}: sluice {s:.2} s");
            sluice.push(s);
        }
        if only.as_deref() != Some("sluice") {
            let n = native_run(deadline).await?.as_secs_f64();
            println!("run {i}: native {n:.2} s");
            native.push(n);
        }
    }
    if only.is_some() {
        return Ok(());
    }
    let (s, n) = (median(sluice.clone()), median(native.clone()));
    println!("median seconds from SIGKILL of a master node to its slots served again: sluice {s:.2}, native {n:.2}");
    println!("ratio sluice / native: {:.2}", s / n);
    println!(
        "RESULT {}",
        serde_json::json!({"sluice_s": sluice, "native_s": native, "sluice_median_s": s, "native_median_s": n, "ratio": s / n})
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut runs = 5;
    let mut deadline = Duration::from_secs(60);
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| args.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--runs" => runs = value(&mut args).unwrap_or(0) as usize,
            "--deadline" => deadline = Duration::from_secs(value(&mut args).unwrap_or(0)),
            "--only" => only = args.next(),
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if runs == 0 || deadline.is_zero() {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    if let Err(e) = run(runs, deadline, only).await {
        eprintln!("bench_failover: {e:#}");
        std::process::exit(1);
    }
}
