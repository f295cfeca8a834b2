//! Replication-mode slot migration end to end (issue 5, docs/design.md "Migrations"): a whole
//! deployment on loopback (broker, coordinator, 3 redis-server nodes with a proxy each and one
//! spare), writers on 50,000 keys across all 16384 slots through real cluster clients, and half
//! of one node's slots moving to the spare.
//!
//! The guarantees under test: a cluster-aware client sees no error (the cluster client follows
//! `MOVED` itself; anything it surfaces counts); every acknowledged write reads back its last
//! value; the phases come in order with a timestamp each; after `done` the nodes together hold
//! exactly the live keys, each on the node that serves its slot; the epoch moved forward and
//! every proxy holds it. Then the faults: the destination proxy killed while `following`, the
//! source proxy killed during the switch, and a destination node that is not empty.

use anyhow::{bail, Result};
use sluice_common::api::Migration;
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, SlotRange};
use sluice_common::resp::Frame;
use sluice_harness::client::RespConn;
use sluice_harness::local::proxy_epoch;
use sluice_harness::migration::{
    check_every_slot_served, check_timestamps, phase_name, upper_half, CheckOptions, MigrationWatch,
};
use sluice_harness::python::{PyWorkload, PyWorkloadOptions, PythonEnv};
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster, Workload, WorkloadConfig};
use std::time::Duration;

/// Keys of the writer workload (issue 5: 50,000 keys across all slots).
const KEYS: usize = 50_000;
/// A replication migration of a few MB must be done well within this.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(120);

/// The cluster's first proxy gives half of its slots to the spare.
struct Plan {
    src: String,
    dst: String,
    src_index: usize,
    dst_index: usize,
    slots: SlotRange,
}

async fn start_cluster() -> Result<(LocalCluster, Plan)> {
    start_cluster_with(LocalSpec::default()).await
}

async fn start_cluster_with(spec: LocalSpec) -> Result<(LocalCluster, Plan)> {
    let cluster = LocalCluster::start(spec).await?;
    let (src_index, dst_index) = (0, cluster.spec.proxies);
    let src = cluster.proxies[src_index].addr();
    let dst = cluster.proxies[dst_index].addr();
    let slots = upper_half(&cluster.view().await?, &src)?;
    eprintln!("plan: {src} gives slots {}-{} to the spare {dst}", slots.start, slots.end);
    Ok((cluster, Plan { src, dst, src_index, dst_index, slots }))
}

/// Starts the plan's replication-mode migration and waits until it is `following`.
async fn start_until_following(cluster: &LocalCluster, plan: &Plan) -> Result<(Migration, MigrationWatch)> {
    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    let mut watch = cluster.watch_migration(&m.id);
    watch.until("following", MIGRATION_DEADLINE, |m| m.phase >= MigrationPhase::Following).await?;
    Ok((m, watch))
}

/// Waits until the workload has answered `more` commands beyond `from` (proof that traffic
/// flows at that point), at most `timeout`.
async fn wait_for_traffic(workload: &Workload, more: u64, timeout: Duration) -> Result<()> {
    let target = workload.ops_so_far() + more;
    wait_for("the writers to make progress", timeout, || {
        let done = workload.ops_so_far();
        async move { Ok((done >= target).then_some(())) }
    })
    .await
}

/// After a successful migration: `slots` belong to `dst` untagged, nobody else holds them,
/// and no range anywhere carries a tag.
fn check_slots_moved(view: &ClusterView, plan: &Plan) -> Result<()> {
    for n in &view.nodes {
        for a in &n.slots {
            if a.tag.is_some() {
                bail!("a tag is left after the migration: {} {:?}", n.proxy, a);
            }
            let overlaps = a.range().overlaps(&plan.slots);
            if overlaps && n.proxy != plan.dst {
                bail!("{} still holds {}-{}, which moved to {}", n.proxy, a.start, a.end, plan.dst);
            }
        }
    }
    let dst = view.nodes.iter().find(|n| n.proxy == plan.dst);
    let held: Vec<SlotRange> = dst.map(|n| n.slots.iter().map(|a| a.range()).collect()).unwrap_or_default();
    if held != vec![plan.slots] {
        bail!("the destination {} holds {held:?}, expected exactly {:?}", plan.dst, plan.slots);
    }
    Ok(())
}

/// After a migration that did not happen: every slot is held untagged by the three original
/// proxies, the source still holds the moving range, and the destination left the cluster.
fn check_slots_stayed(view: &ClusterView, plan: &Plan) -> Result<()> {
    if view.nodes.iter().any(|n| n.proxy == plan.dst) {
        bail!("the destination {} is still a node of the cluster: {view:?}", plan.dst);
    }
    for n in &view.nodes {
        if let Some(a) = n.slots.iter().find(|a| a.tag.is_some()) {
            bail!("a tag is left after the migration ended: {} {:?}", n.proxy, a);
        }
    }
    let src = view.nodes.iter().find(|n| n.proxy == plan.src);
    let holds = src.is_some_and(|n| n.slots.iter().any(|a| a.start <= plan.slots.start && plan.slots.end <= a.end));
    if !holds {
        bail!("the source {} does not hold {:?} any more: {view:?}", plan.src, plan.slots);
    }
    let total: usize = view.nodes.iter().flat_map(|n| &n.slots).map(|a| a.range().len()).sum();
    if total != 16384 {
        bail!("the cluster holds {total} slots, not 16384: {view:?}");
    }
    Ok(())
}

/// The epoch moved forward past the migration's own, and every proxy in `proxies` holds the
/// broker's epoch.
async fn check_epochs(cluster: &LocalCluster, proxies: &[String], before: u64, m: &Migration) -> Result<u64> {
    let epoch = cluster.wait_converged_on(proxies, Duration::from_secs(15)).await?;
    assert!(epoch > before, "the epoch moved forward ({before} -> {epoch})");
    assert!(epoch > m.epoch, "the end of migration {} bumped the epoch past its own ({} -> {epoch})", m.id, m.epoch);
    for p in proxies {
        assert_eq!(proxy_epoch(p).await?, epoch, "proxy {p} holds the broker's epoch");
    }
    Ok(epoch)
}

/// The redis nodes of the cluster's members in `view` (a destination that left is not one).
fn member_nodes(view: &ClusterView) -> Vec<String> {
    view.nodes.iter().map(|n| n.node.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_migration_under_redis_rs_writers_loses_nothing_and_leaves_no_garbage() -> Result<()> {
    let (cluster, plan) = start_cluster().await?;
    let epoch_before = cluster.broker_client().epoch().await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;

    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    assert_eq!(m.mode, MigrationMode::Replication);
    let ops_at_start = workload.ops_so_far();
    let mut watch = cluster.watch_migration(&m.id);
    let end = watch.until_final(MIGRATION_DEADLINE).await;
    let ops_during = workload.ops_so_far() - ops_at_start;
    eprintln!("phases seen ({} polls): {}", watch.polls, watch.seen());
    let end = end?;
    eprintln!("migration record at the end: {end:?}");

    assert_eq!(end.phase, MigrationPhase::Done, "the migration ended {:?}: {:?}", end.phase, end.error);
    watch.check_order()?;
    check_timestamps(&end, MigrationPhase::SUCCEEDING)?;
    assert!(ops_during >= 100, "the writers ran during the migration ({ops_during} commands)");

    // No garbage: the nodes together hold exactly the live keys, each on its slot's node.
    let checked = cluster.check_nothing_lost_or_misplaced(&mut workload).await?;
    assert_eq!(checked.verify.keys_checked, KEYS);
    check_slots_moved(&cluster.view().await?, &plan)?;

    let proxies: Vec<String> = cluster.proxies.iter().map(|p| p.addr()).collect();
    check_epochs(&cluster, &proxies, epoch_before, &end).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_migration_under_redis_py_writers_loses_nothing_and_leaves_no_garbage() -> Result<()> {
    let env = PythonEnv::ensure_async().await?;
    let (cluster, plan) = start_cluster().await?;
    let epoch_before = cluster.broker_client().epoch().await?;
    let opts = PyWorkloadOptions::new(KEYS);
    let workload = PyWorkload::start(&env, &cluster.cluster_proxies(), &opts, Duration::from_secs(180)).await?;

    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    let mut watch = cluster.watch_migration(&m.id);
    let end = watch.until_final(MIGRATION_DEADLINE).await;
    let report = workload.stop(Duration::from_secs(300)).await?;
    eprintln!("workload.py report: {report:#?}");
    eprintln!("phases seen ({} polls): {}", watch.polls, watch.seen());
    let end = end?;

    assert_eq!(end.phase, MigrationPhase::Done, "the migration ended {:?}: {:?}", end.phase, end.error);
    watch.check_order()?;
    check_timestamps(&end, MigrationPhase::SUCCEEDING)?;
    assert!(report.total_ops() >= 100, "redis-py wrote ({} commands)", report.total_ops());
    let v = cluster.check_py_nothing_lost_or_misplaced(&report, &CheckOptions::default()).await?;
    assert_eq!(v.keys_checked, KEYS);
    check_slots_moved(&cluster.view().await?, &plan)?;
    let proxies: Vec<String> = cluster.proxies.iter().map(|p| p.addr()).collect();
    check_epochs(&cluster, &proxies, epoch_before, &end).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_proxy_killed_while_following_fails_the_migration_and_the_source_keeps_serving() -> Result<()> {
    // The source waits 3 s in `following` before it switches: time to inject the fault.
    let spec = LocalSpec { proxy_args: vec!["--min-follow-ms".into(), "3000".into()], ..LocalSpec::default() };
    let (mut cluster, plan) = start_cluster_with(spec).await?;
    let epoch_before = cluster.broker_client().epoch().await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;

    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    let mut watch = cluster.watch_migration(&m.id);
    let seen = watch.until("following", MIGRATION_DEADLINE, |m| m.phase >= MigrationPhase::Following).await?;
    if seen.phase != MigrationPhase::Following {
        bail!(
            "the migration went past `following` before the test could see it ({}): the fault was not injected",
            watch.seen()
        );
    }
    cluster.proxies[plan.dst_index].process().kill();
    eprintln!("killed the destination proxy {} while the migration was following", plan.dst);

    let end = watch.until_final(MIGRATION_DEADLINE).await;
    eprintln!("phases seen: {}", watch.seen());
    let end = end?;
    assert_eq!(end.phase, MigrationPhase::Failed, "the migration ended {:?}", end.phase);
    let error = end.error.clone().unwrap_or_default();
    assert!(!error.trim().is_empty(), "a failed migration says why: {end:?}");
    eprintln!("the migration failed: {error}");

    // The source keeps serving after the failure too.
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;
    let view = cluster.view().await?;
    check_slots_stayed(&view, &plan)?;
    // Nothing moved: the slots the client uses were served by their owners all along (no
    // client error). The cluster's own nodes hold exactly the live keys, each on its owner
    // (the dead destination's node is out of the cluster; whatever it copied is not served).
    let options = CheckOptions { nodes: Some(member_nodes(&view)), ..CheckOptions::default() };
    let checked = cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    assert_eq!(checked.verify.keys_checked, KEYS);
    let alive: Vec<String> =
        (0..cluster.proxies.len()).filter(|i| *i != plan.dst_index).map(|i| cluster.proxies[i].addr()).collect();
    check_epochs(&cluster, &alive, epoch_before, &end).await?;
    check_every_slot_served(&cluster.urls(), "after-failure").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_proxy_killed_during_the_switch_loses_no_acknowledged_write() -> Result<()> {
    let (mut cluster, plan) = start_cluster().await?;
    let epoch_before = cluster.broker_client().epoch().await?;
    // The kill cuts client connections: the redis-rs cluster client resends what was in flight
    // on them, which may apply an INCR or a DEL twice. That is the client's doing; it is
    // counted apart, and everything else must still be exact.
    let config = WorkloadConfig { tolerate_client_resends: true, ..WorkloadConfig::new(KEYS) };
    let mut workload = Workload::start(config, &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;

    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    let mut watch = cluster.watch_migration(&m.id);
    // Polls every 5 ms; if `switching` passes too fast to be seen, the kill lands right after
    // (at `switched` or a little later), which the same checks must survive.
    let seen = watch.until("switching", MIGRATION_DEADLINE, |m| m.phase >= MigrationPhase::Switching).await?;
    cluster.proxies[plan.src_index].process().kill();
    eprintln!("killed the source proxy {} at phase {} ({})", plan.src, phase_name(seen.phase), watch.seen());
    if seen.phase.is_final() {
        eprintln!("note: the migration had already ended when the kill landed");
    }
    cluster.restart_proxy(plan.src_index).await?;
    eprintln!("restarted the source proxy");

    let end = watch.until_final(MIGRATION_DEADLINE).await;
    eprintln!("phases seen: {}", watch.seen());
    let end = end?;
    eprintln!("the migration ended {}: {:?}", phase_name(end.phase), end.error);
    watch.check_order()?;
    let all_proxies: Vec<String> = cluster.proxies.iter().map(|p| p.addr()).collect();
    check_epochs(&cluster, &all_proxies, epoch_before, &end).await?;
    // Every slot is served again.
    check_every_slot_served(&cluster.urls(), "after-restart").await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(30)).await?;

    // Done: every node counts. Aborted or failed: the cluster's nodes (the destination's copy
    // is not served).
    let view = cluster.view().await?;
    let nodes = match end.phase {
        MigrationPhase::Done => {
            check_slots_moved(&view, &plan)?;
            cluster.node_addrs()
        }
        MigrationPhase::Aborted | MigrationPhase::Failed => {
            check_slots_stayed(&view, &plan)?;
            member_nodes(&view)
        }
        other => bail!("the migration ended in {other:?}"),
    };
    // The kill cut client connections: the client's errors then are expected; wrong reads and
    // lost writes are not.
    let options = CheckOptions { nodes: Some(nodes), tolerate_client_errors: true };
    let checked = cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    assert_eq!(checked.verify.keys_checked, KEYS);
    Ok(())
}

/// The spare's node still holds exactly the `n` keys written straight into it, with their
/// values, and it never became a replica (`REPLICAOF` would have wiped it).
async fn check_untouched(node: &str, n: usize) -> Result<()> {
    let mut c = RespConn::connect(node).await?;
    let Frame::Integer(size) = c.call(&["DBSIZE"]).await? else { bail!("DBSIZE") };
    assert_eq!(size, n as i64, "the destination node still holds exactly its own keys");
    for i in 0..n {
        let got = c.call(&["GET", format!("foreign:{i}").as_str()]).await?;
        assert_eq!(got.as_bytes().map(|b| b.to_vec()), Some(format!("precious-{i}").into_bytes()), "foreign:{i}");
    }
    let info = c.call(&["INFO", "replication"]).await?;
    let info = info.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    assert!(info.contains("role:master"), "the destination node is still a master: {info}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_into_a_non_empty_destination_is_refused_and_its_data_untouched() -> Result<()> {
    let (cluster, plan) = start_cluster().await?;
    // Data written straight into the spare's redis node: the broker cannot know about it,
    // only the destination proxy's DBSIZE check can.
    let spare_node = cluster.nodes[plan.dst_index].addr();
    let foreign = 100;
    let mut c = RespConn::connect(&spare_node).await?;
    for i in 0..foreign {
        let (k, v) = (format!("foreign:{i}"), format!("precious-{i}"));
        let reply = c.call(&["SET", k.as_str(), v.as_str()]).await?;
        assert_eq!(reply, Frame::ok(), "SET {k} on the spare's node");
    }
    // And some data in the cluster, to check the source is unharmed.
    let mut workload =
        Workload::start(WorkloadConfig { keys: 5_000, rate: Some(500), ..WorkloadConfig::new(5_000) }, &cluster.urls())
            .await?;
    wait_for_traffic(&workload, 200, Duration::from_secs(20)).await?;

    match cluster.try_start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await? {
        Err(refusal) => {
            eprintln!("the broker refused: {refusal}");
            assert_eq!(refusal.status, 409, "refused as a conflict: {refusal}");
        }
        Ok(m) => {
            let mut watch = cluster.watch_migration(&m.id);
            let end = watch.until_final(MIGRATION_DEADLINE).await;
            eprintln!("phases seen: {}", watch.seen());
            let end = end?;
            assert_eq!(end.phase, MigrationPhase::Failed, "the migration ended {:?}: {end:?}", end.phase);
            let error = end.error.clone().unwrap_or_default().to_lowercase();
            eprintln!("the migration failed: {error}");
            assert!(
                ["dbsize", "empty", "keys", "not 0"].iter().any(|w| error.contains(w)),
                "the error says the destination is not empty: {error:?}"
            );
            assert!(
                !watch.phases().contains(&MigrationPhase::Switching),
                "a refused destination never reaches the switch: {}",
                watch.seen()
            );
        }
    }

    // Its data is untouched right after the refusal, and still once every proxy holds the
    // final config and the rest of the checks ran (a late cleanup must not take it either).
    check_untouched(&spare_node, foreign).await?;
    let view = cluster.view().await?;
    check_slots_stayed(&view, &plan)?;
    // The cluster's nodes: the spare's holds its own keys, which are none of the writers'.
    let options = CheckOptions { nodes: Some(member_nodes(&view)), ..CheckOptions::default() };
    cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    cluster.wait_converged(Duration::from_secs(15)).await?;
    check_every_slot_served(&cluster.urls(), "after-refusal").await?;
    check_untouched(&spare_node, foreign).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_the_switch_stops_replication_and_empties_the_destination() -> Result<()> {
    // The source waits 5 s in `following`: the abort lands before any switch.
    let spec = LocalSpec { proxy_args: vec!["--min-follow-ms".into(), "5000".into()], ..LocalSpec::default() };
    let (cluster, plan) = start_cluster_with(spec).await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;
    let (m, _) = start_until_following(&cluster, &plan).await?;
    let epoch_before_abort = cluster.broker_client().epoch().await?;
    let aborted = cluster.abort_migration(&m.id).await?;
    let aborted = aborted.map_err(|r| anyhow::anyhow!("the abort before the switch was refused: {r:?}"))?;
    assert_eq!(aborted.phase, MigrationPhase::Aborted);
    let epoch_after_abort = cluster.broker_client().epoch().await?;
    assert!(epoch_after_abort > epoch_before_abort, "the abort bumped the epoch");

    // The destination stops replicating and its node is emptied of what it copied.
    wait_empty_master(&cluster.nodes[plan.dst_index].addr()).await?;
    let view = cluster.view().await?;
    check_slots_stayed(&view, &plan)?;
    check_every_slot_served(&cluster.urls(), "after-abort").await?;
    let options = CheckOptions { nodes: Some(member_nodes(&view)), ..CheckOptions::default() };
    cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    Ok(())
}

/// Waits until `node` is a master (replicates from nobody) and holds no key.
async fn wait_empty_master(node: &str) -> Result<()> {
    wait_for("the destination node to be a master again and empty", Duration::from_secs(30), || async move {
        let mut c = RespConn::connect(node).await?;
        let info = c.call(&["INFO", "replication"]).await?;
        let master = info.as_bytes().is_some_and(|b| String::from_utf8_lossy(b).contains("role:master"));
        let keys = c.call(&["DBSIZE"]).await?;
        Ok((master && keys == Frame::Integer(0)).then_some(()))
    })
    .await
}

/// The destination proxy is down when the migration is aborted, so nobody stops its node
/// replicating or deletes the copy; restarted, it is free and finds no migration in its
/// config. It must still clean its node: otherwise the copy stays for good, counts twice,
/// and every later replication into that proxy is refused (found by the 20-minute chaos run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_during_the_abort_cleans_its_node_once_back() -> Result<()> {
    let spec = LocalSpec { proxy_args: vec!["--min-follow-ms".into(), "60000".into()], ..LocalSpec::default() };
    let (mut cluster, plan) = start_cluster_with(spec).await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;
    let (m, _) = start_until_following(&cluster, &plan).await?;
    cluster.proxies[plan.dst_index].process().kill();
    let aborted = cluster.abort_migration(&m.id).await?;
    let aborted = aborted.map_err(|r| anyhow::anyhow!("the abort before the switch was refused: {r:?}"))?;
    assert_eq!(aborted.phase, MigrationPhase::Aborted);
    let dst_node = cluster.nodes[plan.dst_index].addr();
    let copied = cluster.nodes[plan.dst_index].dbsize().await?;
    eprintln!("the destination's node holds {copied} copied keys while its proxy is down");
    cluster.restart_proxy(plan.dst_index).await?;
    wait_empty_master(&dst_node).await?;

    // And it takes a new replication import again.
    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    let mut watch = cluster.watch_migration(&m.id);
    let end = watch.until("following", MIGRATION_DEADLINE, |m| m.phase >= MigrationPhase::Following).await?;
    assert!(!end.phase.is_final(), "the second import ended {:?}: {:?}", end.phase, end.error);
    // The second import is still following: the destination's node holds a copy nobody is
    // served from yet; the nodes that serve the slots hold exactly the live keys.
    let serving: Vec<String> = cluster.node_addrs().into_iter().filter(|n| *n != dst_node).collect();
    let options = CheckOptions { nodes: Some(serving), ..CheckOptions::default() };
    cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_doubles_the_cluster_with_migrations_running_at_once() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { proxies: 2, spare: 2, ..LocalSpec::default() }).await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;
    let plan: sluice_common::api::ScalePlan =
        cluster.broker_client().post("/clusters/local/scale", &serde_json::json!({"add": 2})).await?;
    assert_eq!(plan.migrations.len(), 2, "one migration per new proxy: {plan:?}");
    let dsts: std::collections::HashSet<&str> = plan.migrations.iter().map(|m| m.dst.as_str()).collect();
    assert_eq!(dsts.len(), 2, "the migrations do not share a destination");
    for m in &plan.migrations {
        assert_eq!(m.mode, MigrationMode::Replication, "auto picks replication for empty free proxies");
    }
    let mut watches: Vec<_> = plan.migrations.iter().map(|m| cluster.watch_migration(&m.id)).collect();
    for w in &mut watches {
        let end = w.until_final(MIGRATION_DEADLINE).await?;
        assert_eq!(end.phase, MigrationPhase::Done, "{} ended {:?}: {:?}", end.id, end.phase, end.error);
    }
    let view = cluster.view().await?;
    assert_eq!(view.nodes.len(), 4, "the cluster doubled: {view:?}");
    for n in &view.nodes {
        let slots: usize = n.slots.iter().map(|a| a.range().len()).sum();
        assert!((4000..=4200).contains(&slots), "{} serves {slots} slots", n.proxy);
    }
    let urls: Vec<String> = view.nodes.iter().map(|n| format!("redis://{}/", n.proxy)).collect();
    check_every_slot_served(&urls, "after-scale").await?;
    cluster.check_nothing_lost_or_misplaced(&mut workload).await?;
    Ok(())
}

/// A destination promoted from the same source by an earlier migration looks, by its node's
/// replication ids alone, like one this migration already promoted (its previous replication
/// id is the source's). The second replication into it must still copy: found by the chaos
/// test, where both sides skipped the copy and the slots went to an empty node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replication_into_a_node_the_same_source_promoted_before_copies_again() -> Result<()> {
    let (cluster, plan) = start_cluster().await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;

    // There (replication), back (keys: the spare is left empty and free), there again.
    let moves = [
        (&plan.src, &plan.dst, MigrationMode::Replication),
        (&plan.dst, &plan.src, MigrationMode::Keys),
        (&plan.src, &plan.dst, MigrationMode::Replication),
    ];
    for (from, to, mode) in moves {
        let m = cluster.start_migration(from, to, &[plan.slots], mode).await?;
        assert_eq!(m.mode, mode);
        let end = cluster.watch_migration(&m.id).until_final(MIGRATION_DEADLINE).await?;
        assert_eq!(end.phase, MigrationPhase::Done, "{mode:?} {from} -> {to} ended {:?}: {:?}", end.phase, end.error);
        wait_for_traffic(&workload, 500, Duration::from_secs(30)).await?;
    }
    cluster.check_nothing_lost_or_misplaced(&mut workload).await?;
    check_slots_moved(&cluster.view().await?, &plan)?;
    Ok(())
}

/// The source's own view of migration `id` (`UMCTL INFOMGR`): its task's phase.
async fn source_task_phase(proxy: &str, id: &str) -> Result<Option<String>> {
    let task = sluice_harness::migration::proxy_task(proxy, id).await?;
    Ok(task.and_then(|t| t["phase"].as_str().map(str::to_string)))
}

/// A migration stuck in `switching` because its destination is gone for good: the source
/// asked for the switch, then the destination's proxy and node died before the broker's
/// permission reached it (the coordinator is stopped meanwhile, so the broker records
/// `switching` only afterwards), and every switch attempt fails. After `--fence-after-ms` the
/// coordinator stops it: the source is fenced, confirms it promoted nothing, and the
/// migration ends `failed` with the slots on the source. No client sees an error (a failed
/// attempt never holds the slots), no acknowledged write is lost, no key is misplaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stuck_in_switching_with_its_destination_gone_ends_failed_after_the_bound() -> Result<()> {
    let spec = LocalSpec {
        // Time to stop the coordinator while following; the source never gives up asking.
        proxy_args: ["--min-follow-ms", "4000", "--switch-attempts", "1000000"].map(String::from).to_vec(),
        coordinator_args: ["--fence-after-ms", "3000"].map(String::from).to_vec(),
        ..LocalSpec::default()
    };
    let (mut cluster, plan) = start_cluster_with(spec).await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;
    let (m, mut watch) = start_until_following(&cluster, &plan).await?;
    cluster.coordinators[0].pause();
    wait_for("the source to ask for the switch", Duration::from_secs(30), || {
        let (src, id) = (plan.src.clone(), m.id.clone());
        async move { Ok((source_task_phase(&src, &id).await?.as_deref() == Some("switching")).then_some(())) }
    })
    .await?;
    cluster.proxies[plan.dst_index].process().kill();
    cluster.nodes[plan.dst_index].kill();
    cluster.coordinators[0].resume();

    let stuck = watch.until("switching", MIGRATION_DEADLINE, |m| m.phase >= MigrationPhase::Switching).await?;
    assert_eq!(stuck.phase, MigrationPhase::Switching, "{stuck:?}");
    let end = watch.until_final(Duration::from_secs(60)).await?;
    assert_eq!(end.phase, MigrationPhase::Failed, "{end:?}");
    let error = end.error.clone().unwrap_or_default();
    assert!(error.contains(&plan.dst) && error.contains("down"), "{error}");
    assert!(end.stopping.is_some(), "ended through the fence: {end:?}");

    // The slots are the source's again, untagged; the destination is not in the cluster.
    let view = cluster.view().await?;
    let src = view.nodes.iter().find(|n| n.proxy == plan.src).expect("the source is a node");
    assert!(src.slots.iter().all(|a| a.tag.is_none()), "{src:?}");
    assert!(src.slots.iter().any(|a| a.range().contains(plan.slots.start) && a.range().contains(plan.slots.end)));
    assert!(view.nodes.iter().all(|n| n.proxy != plan.dst), "{view:?}");
    let live: Vec<String> = cluster.proxies.iter().map(|p| p.addr()).filter(|p| *p != plan.dst).collect();
    cluster.wait_converged_on(&live, Duration::from_secs(20)).await?;
    wait_for_traffic(&workload, 500, Duration::from_secs(20)).await?;
    let dst_node = cluster.nodes[plan.dst_index].addr();
    let serving: Vec<String> = cluster.node_addrs().into_iter().filter(|n| *n != dst_node).collect();
    let options = CheckOptions { nodes: Some(serving), ..CheckOptions::default() };
    cluster.check_nothing_lost_or_misplaced_with(&mut workload, &options).await?;
    Ok(())
}

/// Issue 23: one migration can be followed through the logs by its id. Each of the four
/// programs logs it at the default level inside a `migration` span that names it: the broker
/// (created, the phases reported, committed), the coordinator (the phases it reports, the
/// commit), the source proxy (its task's phases, the promotion) and the destination proxy
/// (its task, the TmpSwitch the source sent it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_migration_is_followed_by_its_id_through_all_four_logs() -> Result<()> {
    let (mut cluster, plan) = start_cluster().await?;
    let m = cluster.start_migration(&plan.src, &plan.dst, &[plan.slots], MigrationMode::Replication).await?;
    let end = cluster.watch_migration(&m.id).until_final(MIGRATION_DEADLINE).await?;
    assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
    let span = format!("migration{{id={} ", m.id);
    let logs: [(&str, std::path::PathBuf, &[&str]); 4] = [
        (
            "broker",
            cluster.broker.process().log_path().to_path_buf(),
            &["migration created", "migration phase reported", "migration committed"],
        ),
        (
            "coordinator",
            cluster.coordinators[0].log_path().to_path_buf(),
            &["migration phase reported", "migration committed"],
        ),
        (
            "source proxy",
            cluster.proxies[plan.src_index].process().log_path().to_path_buf(),
            &["role=source", "migration task started", "to=Switching", "promoted the destination's node"],
        ),
        (
            "destination proxy",
            cluster.proxies[plan.dst_index].process().log_path().to_path_buf(),
            &["role=destination", "migration task started", "TmpSwitch asked by the source", "to=Committed"],
        ),
    ];
    for (program, path, needles) in logs {
        // Each needle on some line inside the migration's span; polled, as the last lines
        // (the commit's) may land just after the broker records `done`.
        wait_for(&format!("{program}'s log to follow {}", m.id), Duration::from_secs(10), || {
            let (path, span) = (path.clone(), span.clone());
            async move {
                let text = std::fs::read_to_string(&path)?;
                let missing: Vec<&str> = needles
                    .iter()
                    .copied()
                    .filter(|n| !text.lines().any(|l| l.contains(span.as_str()) && l.contains(n)))
                    .collect();
                if !missing.is_empty() {
                    bail!("{program} ({}): no line in `{span}` with {missing:?}", path.display());
                }
                Ok(Some(()))
            }
        })
        .await?;
    }
    Ok(())
}
