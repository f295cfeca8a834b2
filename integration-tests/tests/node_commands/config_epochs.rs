//! Config epochs in `CLUSTER NODES` and `CLUSTER INFO`: a deployment (broker, coordinator,
//! three shards with a replica each) beside a native cluster of the same shape, compared
//! after creation, after moving 100 slots from shard 0 to shard 1, and after a failover of
//! shard 2. The epochs must be what the native nodes show: distinct per master, the greatest
//! on the last change, a replica showing its master's.

use super::text;
use anyhow::{anyhow, bail, ensure, Result};
use sluice_common::api::FailoverRequest;
use sluice_common::model::{split_slots_evenly, MigrationMode, MigrationPhase, SlotRange};
use sluice_harness::client::call_ok;
use sluice_harness::native::NativeCluster;
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster};
use std::time::Duration;

/// A slot of each shard that never moves in this test: it names the shard.
const SHARD_SLOTS: [u16; 3] = [3000, 8000, 13000];

/// One node's answer reduced to what must match: per shard (by [`SHARD_SLOTS`]) the
/// master's config epoch, its replicas' epochs and its slot count; which shard the asked
/// node belongs to and its role; `cluster_current_epoch` and `cluster_my_epoch`.
#[derive(Debug, PartialEq, Eq)]
struct EpochView {
    shards: Vec<(u64, Vec<u64>, usize)>,
    myself: (usize, String),
    current_epoch: u64,
    my_epoch: u64,
}

struct Line {
    id: String,
    flags: Vec<String>,
    master: String,
    epoch: u64,
    slots: Vec<SlotRange>,
}

fn parse_lines(nodes: &str) -> Result<Vec<Line>> {
    let mut out = Vec::new();
    for l in nodes.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split(' ').collect();
        ensure!(f.len() >= 8, "a CLUSTER NODES line with {} fields: {l}", f.len());
        ensure!(f[7] == "connected", "a node not connected: {l}");
        let mut slots = Vec::new();
        for r in f[8..].iter().filter(|r| !r.starts_with('[')) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            slots.push(SlotRange::new(a.parse()?, b.parse()?));
        }
        out.push(Line {
            id: f[0].to_string(),
            flags: f[2].split(',').map(str::to_string).collect(),
            master: f[3].to_string(),
            epoch: f[6].parse()?,
            slots,
        });
    }
    Ok(out)
}

async fn epoch_view(addr: &str) -> Result<EpochView> {
    let lines = parse_lines(&text(&call_ok(addr, &["CLUSTER", "NODES"]).await?))?;
    let info = text(&call_ok(addr, &["CLUSTER", "INFO"]).await?);
    let field = |name: &str| -> Result<u64> {
        let line = info.lines().find_map(|l| l.strip_prefix(name)).ok_or_else(|| anyhow!("no {name} in {info}"))?;
        Ok(line.trim().parse()?)
    };
    let mut shards = Vec::new();
    let mut myself = None;
    for (i, slot) in SHARD_SLOTS.iter().enumerate() {
        let master = lines
            .iter()
            .find(|l| l.flags.iter().any(|f| f == "master") && l.slots.iter().any(|r| r.contains(*slot)))
            .ok_or_else(|| anyhow!("{addr}: no master of slot {slot}"))?;
        let replicas: Vec<&Line> = lines.iter().filter(|l| l.master == master.id).collect();
        for l in std::iter::once(master).chain(replicas.iter().copied()) {
            if l.flags.iter().any(|f| f == "myself") {
                let role = if l.id == master.id { "master" } else { "slave" };
                myself = Some((i, role.to_string()));
            }
        }
        let mut replica_epochs: Vec<u64> = replicas.iter().map(|l| l.epoch).collect();
        replica_epochs.sort();
        shards.push((master.epoch, replica_epochs, master.slots.iter().map(SlotRange::len).sum()));
    }
    let myself = myself.ok_or_else(|| anyhow!("{addr}: no myself line"))?;
    Ok(EpochView {
        shards,
        myself,
        current_epoch: field("cluster_current_epoch:")?,
        my_epoch: field("cluster_my_epoch:")?,
    })
}

/// Every proxy's view equals the native node's in the same place (master or replica of the
/// same shard); the masters' epochs are distinct and `greatest` holds the greatest.
async fn compare(cluster: &LocalCluster, native: &NativeCluster, greatest: usize, stage: &str) -> Result<()> {
    let view = cluster.view().await?;
    let mut checked = 0;
    for (i, shard) in view.nodes.iter().enumerate() {
        let shard_of = SHARD_SLOTS
            .iter()
            .position(|s| shard.slots.iter().any(|a| a.range().contains(*s)))
            .ok_or_else(|| anyhow!("{stage}: shard {i} holds none of {SHARD_SLOTS:?}"))?;
        let native_addrs: Vec<String> = native.all_nodes().map(|n| n.addr()).collect();
        let mut pairs = vec![(shard.proxy.clone(), "master")];
        pairs.extend(shard.replicas.iter().map(|r| (r.proxy.clone(), "slave")));
        for (proxy, role) in pairs {
            let ours = epoch_view(&proxy).await?;
            // The native node in the same place.
            let mut theirs = None;
            for addr in &native_addrs {
                let v = epoch_view(addr).await?;
                if v.myself == (shard_of, role.to_string()) {
                    theirs = Some(v);
                    break;
                }
            }
            let theirs = theirs.ok_or_else(|| anyhow!("{stage}: no native {role} of shard {shard_of}"))?;
            ensure!(
                ours == theirs,
                "{stage}: proxy {proxy} ({role} of shard {shard_of}) shows\n  {ours:?}\na native node\n  {theirs:?}"
            );
            let masters: Vec<u64> = ours.shards.iter().map(|s| s.0).collect();
            let distinct: std::collections::BTreeSet<_> = masters.iter().collect();
            ensure!(distinct.len() == masters.len(), "{stage}: masters' epochs not distinct: {masters:?}");
            ensure!(
                masters.iter().max() == Some(&masters[greatest]) && ours.current_epoch == masters[greatest],
                "{stage}: shard {greatest} should hold the greatest epoch: {ours:?}"
            );
            for (m, replicas, _) in &ours.shards {
                ensure!(
                    replicas.iter().all(|r| r == m),
                    "{stage}: a replica shows another epoch than its master: {ours:?}"
                );
            }
            checked += 1;
        }
    }
    ensure!(checked == 6, "{stage}: compared {checked} proxies");
    Ok(())
}

/// `CLUSTER FAILOVER` on the native replica at `replica` until it is a master. A manual
/// failover the master does not complete within Redis's 5 s (a loaded machine) is abandoned
/// by Redis, so it is asked again, up to 5 times.
async fn promote_native(replica: &str) -> Result<()> {
    let is_master = |replica: String| async move {
        let nodes = text(&call_ok(&replica, &["CLUSTER", "NODES"]).await?);
        anyhow::Ok(nodes.contains("myself,master"))
    };
    for _ in 0..5 {
        if is_master(replica.to_string()).await? {
            return Ok(());
        }
        call_ok(replica, &["CLUSTER", "FAILOVER"]).await?;
        let waited = wait_for("the native replica to be promoted", Duration::from_secs(12), || {
            let replica = replica.to_string();
            async move { Ok(is_master(replica).await?.then_some(())) }
        })
        .await;
        if waited.is_ok() {
            return Ok(());
        }
    }
    bail!("the native replica {replica} was not promoted after 5 CLUSTER FAILOVER")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_epochs_follow_creation_migration_and_failover_as_on_a_native_cluster() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { proxies: 3, replicas: 1, spare: 0, ..LocalSpec::default() }).await?;
    let ranges: Vec<Vec<SlotRange>> = split_slots_evenly(3).into_iter().map(|r| vec![r]).collect();
    let mut native = NativeCluster::start(&cluster.dir.join("native"), &ranges).await?;
    native.add_replicas(&cluster.dir.join("native"), 1, &[]).await?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    compare(&cluster, &native, 2, "created").await?;

    // 100 slots from shard 0 to shard 1: shard 1 takes the greatest epoch.
    let view = cluster.view().await?;
    let m = cluster
        .start_migration(&view.nodes[0].proxy, &view.nodes[1].proxy, &[SlotRange::new(0, 99)], MigrationMode::Keys)
        .await?;
    let done = cluster.watch_migration(&m.id).until_final(Duration::from_secs(60)).await?;
    ensure!(done.phase == MigrationPhase::Done, "the migration ended {:?}: {:?}", done.phase, done.error);
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let log = cluster.dir.join("reshard.log");
    native.reshard(0, 1, 100, &log, Duration::from_secs(60)).await?;
    native.wait_settled(Duration::from_secs(60)).await?;
    compare(&cluster, &native, 1, "after a migration").await?;

    // A failover of shard 2: its replica becomes the master with the greatest epoch.
    let master = cluster.view().await?.nodes[2].proxy.clone();
    let req = FailoverRequest { master, promote: None, reason: None, graceful: false, cancel: false };
    cluster.broker_client().failover(&cluster.spec.cluster, &req).await?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let replica = native.replicas[2][0].addr();
    promote_native(&replica).await?;
    native.wait_settled(Duration::from_secs(60)).await?;
    compare(&cluster, &native, 2, "after a failover").await?;
    if !matches!(epoch_view(&cluster.view().await?.nodes[2].proxy).await?.myself, (2, ref r) if r == "master") {
        bail!("the promoted proxy is not shard 2's master");
    }
    Ok(())
}
