//! Keys-mode migrations between nodes that both hold data, under a writer workload.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use sluice_common::api::{ClusterDetail, ScalePlan, ScalePlanRecord, ScaleState};
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, SlotRange};
use sluice_harness::migration::{check_every_slot_served, CheckOptions};
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster, Workload, WorkloadConfig};
use std::time::Duration;

const KEYS: usize = 50_000;
const DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_back_and_forth_between_nodes_that_hold_data() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { spare: 0, ..LocalSpec::default() }).await?;
    let config = WorkloadConfig { expire: true, prefill: true, ..WorkloadConfig::new(KEYS) };
    let mut workload = Workload::start(config, &cluster.urls()).await?;
    let a = cluster.proxies[0].addr();
    let b = cluster.proxies[1].addr();
    // Part of a's slots to b, then back, a few times: both sides hold data every time.
    let range = SlotRange::new(1000, 2500);
    for round in 0..4 {
        let (src, dst) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let m = cluster.start_migration(src, dst, &[range], MigrationMode::Keys).await?;
        let mut watch = cluster.watch_migration(&m.id);
        let end = watch.until_final(DEADLINE).await?;
        eprintln!(
            "round {round}: {} -> {}: {} ({})",
            src,
            dst,
            sluice_harness::migration::phase_name(end.phase),
            watch.seen()
        );
        assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
        watch.check_order()?;
        assert!(end.timestamps.following.is_none(), "keys mode skips following");
    }
    check_every_slot_served(&cluster.urls(), "after-keys").await?;
    cluster.check_nothing_lost_or_misplaced(&mut workload).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_mid_scan_resumes_and_loses_nothing() -> Result<()> {
    // Slow moving (2,000 keys/s): the scan takes long enough to be cut in the middle.
    let args = ["--keys-batch", "20", "--keys-concurrency", "1", "--keys-per-sec", "2000"];
    let spec = LocalSpec { spare: 0, proxy_args: args.iter().map(|a| a.to_string()).collect(), ..LocalSpec::default() };
    let mut cluster = LocalCluster::start(spec).await?;
    // The kill cuts client connections: the cluster client may resend what was in flight.
    let config = WorkloadConfig { prefill: true, tolerate_client_resends: true, ..WorkloadConfig::new(KEYS) };
    let mut workload = Workload::start(config, &cluster.urls()).await?;
    let (src, dst) = (cluster.proxies[0].addr(), cluster.proxies[1].addr());
    let m = cluster.start_migration(&src, &dst, &[SlotRange::new(0, 2730)], MigrationMode::Keys).await?;
    let mut watch = cluster.watch_migration(&m.id);
    let moving = watch
        .until("keys moving", DEADLINE, |m| {
            m.progress.as_ref().and_then(|p| p.get("keys_moved")).and_then(|v| v.as_u64()).unwrap_or(0) > 200
        })
        .await?;
    assert!(moving.phase < MigrationPhase::Switching, "the kill lands mid-scan: {moving:?}");
    cluster.proxies[0].process().kill();
    eprintln!("killed the source mid-scan: {:?}", moving.progress);
    cluster.restart_proxy(0).await?;
    let end = watch.until_final(DEADLINE).await?;
    eprintln!("{}", watch.seen());
    assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
    check_every_slot_served(&cluster.urls(), "after-restart").await?;
    // The kill cut client connections: the client's errors then are expected; wrong reads and
    // lost writes are not.
    let options = CheckOptions { tolerate_client_errors: true, ..CheckOptions::default() };
    cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_keys_move_without_failing_the_migration() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { spare: 0, ..LocalSpec::default() }).await?;
    let (src, dst) = (cluster.proxies[0].addr(), cluster.proxies[1].addr());
    let node = cluster.nodes[0].addr();
    // A 1,000,000-element list and a 100 MB string in slots the migration moves, written
    // straight to the source node (a proxy pipeline would take longer to build them).
    let list = sluice_harness::workload::key_in_slot(100, "big-list");
    let string = sluice_harness::workload::key_in_slot(200, "big-string");
    let mut c = sluice_harness::client::RespConn::connect(&node).await?;
    for chunk in 0..100 {
        let mut args = vec!["RPUSH".to_string(), list.clone()];
        args.extend((0..10_000).map(|i| format!("e{}", chunk * 10_000 + i)));
        c.call(&args).await?;
    }
    let value = "x".repeat(100 * 1024 * 1024);
    c.call(&["SET", string.as_str(), value.as_str()]).await?;
    drop(value);
    let m = cluster.start_migration(&src, &dst, &[SlotRange::new(0, 1000)], MigrationMode::Keys).await?;
    let mut watch = cluster.watch_migration(&m.id);
    let end = watch.until_final(DEADLINE).await?;
    eprintln!("{}", watch.seen());
    assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
    let mut d = sluice_harness::client::RespConn::connect(&cluster.nodes[1].addr()).await?;
    assert_eq!(d.call(&["LLEN", list.as_str()]).await?, sluice_common::resp::Frame::Integer(1_000_000));
    assert_eq!(d.call(&["STRLEN", string.as_str()]).await?, sluice_common::resp::Frame::Integer(100 * 1024 * 1024));
    assert_eq!(cluster.nodes[0].dbsize().await?, 0, "nothing left at the source");
    Ok(())
}

/// Runs a scale request and waits until its plan is done; returns the plan.
async fn scale(cluster: &LocalCluster, body: serde_json::Value) -> Result<ScalePlanRecord> {
    let broker = cluster.broker_client();
    let answer: ScalePlan = broker.post("/clusters/local/scale", &body).await?;
    let id = answer.plan.id.clone();
    wait_for("the scale plan to finish", DEADLINE, || {
        let broker = broker.clone();
        let id = id.clone();
        async move {
            let detail: ClusterDetail = broker.get("/clusters/local").await?;
            let plan = detail.scale.filter(|p| p.id == id).ok_or_else(|| anyhow::anyhow!("plan {id} not shown"))?;
            match plan.state {
                ScaleState::Running => Ok(None),
                ScaleState::Done => Ok(Some(plan)),
                ScaleState::Failed => anyhow::bail!("plan failed: {:?}", plan.error),
            }
        }
    })
    .await
}

/// Slots each node of the cluster serves.
fn shares(view: &ClusterView) -> Vec<usize> {
    view.nodes.iter().map(|n| n.slots.iter().map(|a| a.range().len()).sum()).collect()
}

// The scale-in found that a proxy leaving the cluster must keep redirecting: redis-rs waits
// and retries on the same node after CLUSTERDOWN (1.28 s and more each time, no topology
// refresh) until its response timeout, so every writer stalled for 10 s when a freed proxy
// answered CLUSTERDOWN (see RouteTable::keep_former_view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_data_grows_shrinks_and_rebalances_under_writers() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { proxies: 3, spare: 2, ..LocalSpec::default() }).await?;
    let config = WorkloadConfig { expire: true, prefill: true, ..WorkloadConfig::new(KEYS) };
    let t0 = std::time::Instant::now();
    let mut workload = Workload::start(config, &cluster.urls()).await?;

    // 3 -> 5: every node ends with an even share (within 1 %).
    let plan = scale(&cluster, serde_json::json!({"add": 2})).await?;
    eprintln!("{:.3}s scale add: {} steps", t0.elapsed().as_secs_f64(), plan.total);
    let view = cluster.view().await?;
    assert_eq!(view.nodes.len(), 5);
    let even = 16384 / 5;
    for n in shares(&view) {
        assert!(n.abs_diff(even) * 100 <= even, "uneven share {n} (target {even}): {:?}", shares(&view));
    }
    // 5 -> 2: three proxies leave, the two left split the slots evenly.
    let leaving: Vec<String> = view.nodes.iter().take(3).map(|n| n.proxy.clone()).collect();
    let plan = scale(&cluster, serde_json::json!({"remove": leaving})).await?;
    eprintln!("{:.3}s scale remove: {} steps", t0.elapsed().as_secs_f64(), plan.total);
    let view = cluster.view().await?;
    assert_eq!(view.nodes.len(), 2, "{view:?}");
    for n in shares(&view) {
        assert!(n.abs_diff(8192) * 100 <= 8192, "uneven share {n}: {:?}", shares(&view));
    }
    let proxies = cluster.broker_client().proxies().await?.proxies;
    for p in &leaving {
        let info = proxies.iter().find(|i| &i.address == p).expect("registered");
        assert_eq!(info.state, sluice_common::api::ProxyState::Free, "{p} left the cluster");
    }
    // A random range back and forth ten times between the two nodes, which both hold data.
    let (a, b) = (view.nodes[0].proxy.clone(), view.nodes[1].proxy.clone());
    let seed = sluice_harness::workload::seed_from_env();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    eprintln!("range seed {seed}");
    for round in 0..10 {
        let view = cluster.view().await?;
        let (src, dst) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let own = view.nodes.iter().find(|n| &n.proxy == src).expect("src in cluster");
        let r = own.slots[rng.random_range(0..own.slots.len())].range();
        let start = rng.random_range(r.start..=r.end);
        let end = rng.random_range(start..=r.end.min(start.saturating_add(2000)));
        let m = cluster.start_migration(src, dst, &[SlotRange::new(start, end)], MigrationMode::Auto).await?;
        assert_eq!(m.mode, MigrationMode::Keys, "auto picks keys between nodes with data");
        let end_state = cluster.watch_migration(&m.id).until_final(DEADLINE).await?;
        assert_eq!(end_state.phase, MigrationPhase::Done, "round {round}: {end_state:?}");
        eprintln!("{:.3}s round {round}: {start}-{end} moved {src} -> {dst}", t0.elapsed().as_secs_f64());
    }
    let urls: Vec<String> = [&a, &b].iter().map(|p| format!("redis://{p}/")).collect();
    check_every_slot_served(&urls, "after-rebalance").await?;
    eprintln!("every slot is served");
    // The three proxies the writers started with are free now: read back through the nodes.
    workload.set_urls(&urls);
    cluster.check_nothing_lost_or_misplaced(&mut workload).await?;
    Ok(())
}
