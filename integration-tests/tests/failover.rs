//! Failover: a shard's master dies, the coordinator has the broker promote the replica with
//! the highest offset, every slot is served again, and with `--ack-replicas 1` no write a
//! client saw acknowledged is lost. The old master, back, is fenced: a replica of the new one
//! that serves nothing stale.

use anyhow::{ensure, Result};
use sluice_common::model::ClusterView;
use sluice_harness::client::call_ok;
use sluice_harness::migration::{wait_every_slot_served, CheckOptions};
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster, Workload, WorkloadConfig};
use std::time::{Duration, Instant};

const KEYS: usize = 20_000;

fn text(f: &sluice_common::resp::Frame) -> String {
    f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

fn master_nodes(view: &ClusterView) -> Vec<String> {
    view.nodes.iter().map(|n| n.node.clone()).collect()
}

/// Waits until `node` is a replica of `master` with the link up and as many keys.
async fn wait_replica_synced(node: &str, master: &str, timeout: Duration) -> Result<()> {
    wait_for("the node to be a synced replica of the master", timeout, || {
        let (node, master) = (node.to_string(), master.to_string());
        async move {
            let info = text(&call_ok(&node, &["INFO", "replication"]).await?);
            let (want, got) = (call_ok(&master, &["DBSIZE"]).await?, call_ok(&node, &["DBSIZE"]).await?);
            let port = master.rsplit(':').next().unwrap_or_default();
            let follows = info.contains("role:slave")
                && info.contains(&format!("master_port:{port}"))
                && info.contains("master_link_status:up");
            Ok((follows && want == got).then_some(()))
        }
    })
    .await
}

/// A cluster of 3 shards with a replica each (`proxy_args` for every proxy) and its view,
/// once every replica has synced.
async fn start_with_replicas(proxy_args: &[&str]) -> Result<(LocalCluster, ClusterView)> {
    let proxy_args = proxy_args.iter().map(|a| a.to_string()).collect();
    let cluster =
        LocalCluster::start(LocalSpec { proxies: 3, replicas: 1, spare: 0, proxy_args, ..LocalSpec::default() })
            .await?;
    let view = cluster.view().await?;
    for n in &view.nodes {
        wait_replica_synced(&n.replicas[0].node, &n.node, Duration::from_secs(20)).await?;
    }
    Ok((cluster, view))
}

/// SIGKILLs the master's node `node` and waits until the broker has promoted `replica` (a
/// shard's master now): the node's index and the cluster after the failover.
async fn kill_master_node(cluster: &mut LocalCluster, node: &str, replica: &str) -> Result<(usize, ClusterView)> {
    let victim = cluster.nodes.iter().position(|n| n.addr() == node).expect("the master's node");
    cluster.nodes[victim].kill();
    let broker = cluster.broker_client();
    let after = wait_for("the replica to be promoted", Duration::from_secs(30), || {
        let broker = broker.clone();
        let replica = replica.to_string();
        async move {
            let view = broker.cluster("local").await?;
            Ok(view.nodes.iter().any(|n| n.proxy == replica).then_some(view))
        }
    })
    .await?;
    Ok((victim, after))
}

/// Waits until the writers have done 4,000 more commands.
async fn writers_progress(workload: &Workload, what: &str) -> Result<()> {
    let at = workload.ops_so_far();
    wait_for(what, Duration::from_secs(20), || {
        let ops = workload.ops_so_far();
        async move { Ok((ops > at + 4_000).then_some(())) }
    })
    .await
}

/// Stops the writers and runs the shared check over the masters of `view` (client errors
/// tolerated or not); prints what the writers saw.
async fn check_and_report(
    cluster: &LocalCluster,
    workload: &mut Workload,
    view: &ClusterView,
    tolerate_client_errors: bool,
    label: &str,
) -> Result<()> {
    let options = CheckOptions { nodes: Some(master_nodes(view)), tolerate_client_errors };
    let checked = cluster.check_nothing_lost_or_misplaced_with(workload, &options).await?;
    eprintln!(
        "{label}: {} commands, {} errors, longest command {:?}",
        checked.report.total_ops(),
        checked.report.total_errors(),
        checked.report.max_latency
    );
    Ok(())
}

/// What happens to the shard's master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL of its redis-server; restarted (empty) at the end.
    KillNode,
    /// SIGKILL of its proxy; restarted at the end (its node kept everything meanwhile).
    KillProxy,
    /// SIGSTOP of its redis-server past the failover timeout; SIGCONT at the end.
    StopNode,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_node_is_replaced_by_its_replica_and_no_acknowledged_write_is_lost() -> Result<()> {
    fail_over_under_writers(Fault::KillNode).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_proxy_is_replaced_and_comes_back_as_a_replica() -> Result<()> {
    fail_over_under_writers(Fault::KillProxy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_master_node_is_replaced_and_fenced_when_it_resumes() -> Result<()> {
    fail_over_under_writers(Fault::StopNode).await
}

/// Writers on 20,000 keys through a 3-shard cluster with a replica per shard and
/// `--ack-replicas 1`; `fault` hits shard 0's master; its replica is promoted, every slot is
/// served again, errors stop with the failover, the old master comes back as a replica of
/// the new one, and no acknowledged write is lost.
async fn fail_over_under_writers(fault: Fault) -> Result<()> {
    let (mut cluster, before) = start_with_replicas(&["--ack-replicas", "1"]).await?;
    let shard = before.nodes[0].clone();
    let replica = shard.replicas[0].clone();
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    writers_progress(&workload, "the writers to run").await?;

    let victim = cluster.nodes.iter().position(|n| n.addr() == shard.node).expect("the master's node");
    let proxy = cluster.proxy_index(&shard.proxy)?;
    let killed = Instant::now();
    match fault {
        Fault::KillNode => cluster.nodes[victim].kill(),
        Fault::KillProxy => cluster.proxies[proxy].process().kill(),
        Fault::StopNode => cluster.nodes[victim].process().pause(),
    }
    eprintln!("{fault:?} on the master of shard 0 ({} / {})", shard.proxy, shard.node);
    let broker = cluster.broker_client();
    let after = wait_for("the replica to be promoted", Duration::from_secs(30), || {
        let broker = broker.clone();
        let (replica, old) = (replica.proxy.clone(), shard.proxy.clone());
        async move {
            let view = broker.cluster("local").await?;
            let promoted = view.nodes.iter().any(|n| n.proxy == replica)
                && view.nodes.iter().flat_map(|n| &n.replicas).any(|r| r.proxy == old && r.former_master);
            Ok(promoted.then_some(view))
        }
    })
    .await?;
    let attempts = wait_every_slot_served(&cluster.urls(), "failover-slotcheck", Duration::from_secs(120)).await?;
    eprintln!("slot check passed on attempt {attempts}");
    let served = killed.elapsed();
    eprintln!("{fault:?}: every slot served again {:.1}s after the fault", served.as_secs_f64());
    let promoted_node = replica.node.clone();
    let info = text(&call_ok(&promoted_node, &["INFO", "replication"]).await?);
    ensure!(info.contains("role:master"), "the promoted node is a master: {info}");

    // The writers go on through the new master.
    writers_progress(&workload, "the writers to go on").await?;

    // From here on no client sees an error: errors happen only inside the failover window.
    let errors_in_window = workload.errors_so_far();

    // The old master comes back and becomes a replica of the new one.
    match fault {
        Fault::KillNode => cluster.nodes[victim].restart().await?,
        Fault::KillProxy => cluster.restart_proxy(proxy).await?,
        Fault::StopNode => cluster.nodes[victim].process().resume(),
    }
    wait_replica_synced(&shard.node, &promoted_node, Duration::from_secs(30)).await?;
    let errors_after = workload.errors_so_far() - errors_in_window;

    check_and_report(&cluster, &mut workload, &after, true, &format!("{fault:?}")).await?;
    ensure!(errors_after == 0, "{errors_after} client errors after the failover window");
    Ok(())
}

/// A graceful failover asked for by an operator under writers: the master holds the shard's
/// writes until its replica has all of them, then the swap; no write is lost, no client sees
/// an error, and the old master follows the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_loses_no_write_and_no_client_sees_an_error() -> Result<()> {
    let (cluster, before) = start_with_replicas(&[]).await?;
    let shard = before.nodes[0].clone();
    let replica = shard.replicas[0].clone();
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    writers_progress(&workload, "the writers to run").await?;
    let broker = cluster.broker_client();
    let asked = Instant::now();
    let req = sluice_common::api::FailoverRequest {
        master: shard.proxy.clone(),
        promote: Some(replica.proxy.clone()),
        graceful: true,
        ..Default::default()
    };
    let marked = broker.failover("local", &req).await?;
    ensure!(
        marked.nodes[0].handover.as_deref() == Some(replica.proxy.as_str()),
        "the handover is asked for: {marked:?}"
    );
    wait_for("the graceful failover to complete", Duration::from_secs(20), || {
        let broker = broker.clone();
        let replica = replica.proxy.clone();
        async move {
            let view = broker.cluster("local").await?;
            Ok(view.nodes.iter().any(|n| n.proxy == replica && n.handover.is_none()).then_some(()))
        }
    })
    .await?;
    eprintln!("graceful failover done {:.2}s after it was asked for", asked.elapsed().as_secs_f64());
    wait_replica_synced(&shard.node, &replica.node, Duration::from_secs(30)).await?;
    writers_progress(&workload, "the writers to go on").await?;
    let after = cluster.view().await?;
    check_and_report(&cluster, &mut workload, &after, false, "graceful failover").await?;
    Ok(())
}

/// The same node kill under a redis-py `RedisCluster` writer (`python/workload.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_node_under_a_redis_py_writer_loses_no_acknowledged_write() -> Result<()> {
    use sluice_harness::python::{PyWorkload, PyWorkloadOptions, PythonEnv};
    let env = PythonEnv::ensure_async().await?;
    let (mut cluster, before) = start_with_replicas(&["--ack-replicas", "1"]).await?;
    let shard = before.nodes[0].clone();
    let replica = shard.replicas[0].clone();
    let opts = PyWorkloadOptions::new(KEYS);
    let workload = PyWorkload::start(&env, &cluster.cluster_proxies(), &opts, Duration::from_secs(180)).await?;
    // Two seconds of writes before the fault (workload.py reports its counts only at the end).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (victim, after) = kill_master_node(&mut cluster, &shard.node, &replica.proxy).await?;
    wait_every_slot_served(&cluster.urls(), "failover-py-slotcheck", Duration::from_secs(120)).await?;
    cluster.nodes[victim].restart().await?;
    wait_replica_synced(&shard.node, &replica.node, Duration::from_secs(30)).await?;
    let report = workload.stop(Duration::from_secs(300)).await?;
    eprintln!(
        "redis-py: {} commands, {} errors, longest {:.0} ms",
        report.total_ops(),
        report.total_errors(),
        report.max_latency_ms
    );
    ensure!(report.total_ops() >= 1_000, "redis-py wrote ({} commands)", report.total_ops());
    let v = cluster
        .check_py_nothing_lost_or_misplaced(
            &report,
            &CheckOptions { nodes: Some(master_nodes(&after)), tolerate_client_errors: true },
        )
        .await?;
    ensure!(v.keys_checked == KEYS, "every key read back: {v:?}");
    Ok(())
}

/// A scale-out with `replicas: 1` under writers: the new shard's replica joins with its
/// master's first migration (replicating the master's node while that node still copies its
/// import), follows it afterwards, and takes over when the new master's node is killed: no
/// acknowledged write lost (`--ack-replicas 1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_by_a_scale_out_with_replicas_fails_over_to_its_replica() -> Result<()> {
    let proxy_args = ["--ack-replicas", "1"].map(String::from).to_vec();
    let spec = LocalSpec { proxies: 2, replicas: 1, spare: 2, proxy_args, ..LocalSpec::default() };
    let mut cluster = LocalCluster::start(spec).await?;
    let mut workload = Workload::start(WorkloadConfig::new(KEYS), &cluster.urls()).await?;
    writers_progress(&workload, "the writers to run").await?;

    let plan: sluice_common::api::ScalePlan =
        cluster.broker_client().post("/clusters/local/scale", &serde_json::json!({"add": 1, "replicas": 1})).await?;
    let new_master = plan.plan.proxies[0].clone();
    for m in &plan.migrations {
        let end = cluster.watch_migration(&m.id).until_final(Duration::from_secs(120)).await?;
        ensure!(end.phase == sluice_common::model::MigrationPhase::Done, "{end:?}");
    }
    let broker = cluster.broker_client();
    wait_for("the scale plan to end", Duration::from_secs(120), || {
        let broker = broker.clone();
        async move {
            let d: sluice_common::api::ClusterDetail = broker.get("/clusters/local").await?;
            Ok(d.scale.filter(|p| p.state != sluice_common::api::ScaleState::Running))
        }
    })
    .await?;
    let view = cluster.view().await?;
    let shard = view.nodes.iter().find(|n| n.proxy == new_master).expect("the new shard").clone();
    ensure!(shard.replicas.len() == 1, "the new shard has its replica: {view:?}");
    let replica = shard.replicas[0].clone();
    wait_replica_synced(&replica.node, &shard.node, Duration::from_secs(30)).await?;
    writers_progress(&workload, "the writers to write into the new shard").await?;

    let (victim, after) = kill_master_node(&mut cluster, &shard.node, &replica.proxy).await?;
    writers_progress(&workload, "the writers to go on after the failover").await?;
    cluster.nodes[victim].restart().await?;
    wait_replica_synced(&shard.node, &replica.node, Duration::from_secs(30)).await?;
    check_and_report(&cluster, &mut workload, &after, true, "scale-out replica failover").await?;
    Ok(())
}

/// A filtered import into a shard is aborted while the shard's master node is stopped (so
/// its copy cannot be deleted there), and that node is then killed: the replica, which
/// replicated the copy, becomes the master. The copy is deleted from the new master (the
/// source deletes from the destination's shard as it is now, not from the node it copied
/// into), and reported deleted; nothing is lost or left on a node that does not serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_import_s_copy_is_deleted_from_the_shard_s_new_master_after_a_failover() -> Result<()> {
    use sluice_common::model::{MigrationMode, MigrationPhase};
    use sluice_common::slot::key_slot;
    use sluice_harness::migration::{node_keys, upper_half};
    // The import follows until aborted.
    let (mut cluster, view) = start_with_replicas(&["--min-follow-ms", "600000"]).await?;
    let (src, dst) = (view.nodes[0].proxy.clone(), view.nodes[1].proxy.clone());
    let (dst_node, replica) = (view.nodes[1].node.clone(), view.nodes[1].replicas[0].clone());
    let moving = upper_half(&view, &src)?;
    let in_moving = |keys: Vec<String>| keys.into_iter().filter(|k| moving.contains(key_slot(k.as_bytes()))).count();
    let config = WorkloadConfig { prefill: true, ..WorkloadConfig::new(KEYS) };
    let mut workload = Workload::start(config, &cluster.urls()).await?;

    let m = cluster.start_migration(&src, &dst, &[moving], MigrationMode::Filtered).await?;
    let mut watch = cluster.watch_migration(&m.id);
    watch.until("following", Duration::from_secs(60), |m| m.phase >= MigrationPhase::Following).await?;
    let copied = wait_for("the replica to hold the copy too", Duration::from_secs(30), || {
        let node = replica.node.clone();
        async move { Ok(Some(in_moving(node_keys(&node).await?)).filter(|&n| n > 0)) }
    })
    .await?;
    let victim = cluster.nodes.iter().position(|n| n.addr() == dst_node).expect("the master's node");
    cluster.nodes[victim].process().pause();
    let aborted = cluster.abort_migration(&m.id).await?;
    ensure!(aborted.as_ref().is_ok_and(|m| m.phase == MigrationPhase::Aborted), "abort: {aborted:?}");
    let (_, after) = kill_master_node(&mut cluster, &dst_node, &replica.proxy).await?;
    eprintln!("{copied} keys of {moving:?} copied; {} is the shard's master now", replica.proxy);

    wait_for("the new master to hold no key of the moving slots", Duration::from_secs(90), || {
        let node = replica.node.clone();
        async move { Ok((in_moving(node_keys(&node).await?) == 0).then_some(())) }
    })
    .await?;
    wait_for("the source to report the copy deleted", Duration::from_secs(60), || {
        let (cluster, id) = (&cluster, m.id.clone());
        async move { Ok(cluster.migration(&id).await?.copy_deleted.then_some(())) }
    })
    .await?;
    wait_every_slot_served(&cluster.urls(), "after-failover", Duration::from_secs(60)).await?;
    check_and_report(&cluster, &mut workload, &after, true, "aborted import, failover").await
}
