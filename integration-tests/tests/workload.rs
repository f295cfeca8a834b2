//! The writer workloads themselves (src/workload.rs and python/workload.py), on a cluster that
//! does nothing special: a clean run reports nothing wrong and accounts for every key, and a
//! run whose data is tampered with behind the client's back is caught. The migration tests
//! rely on both: a checker that cannot fail proves nothing.

use anyhow::Result;
use sluice_common::slot::key_slot;
use sluice_harness::client::RespConn;
use sluice_harness::migration::{check_every_slot_served, slot_owner_nodes, CheckOptions, NothingLost};
use sluice_harness::python::{PyWorkload, PyWorkloadOptions, PythonEnv};
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster, Workload, WorkloadConfig};
use std::time::Duration;

async fn wait_for_ops(workload: &Workload, n: u64) -> Result<()> {
    wait_for("the writers to make progress", Duration::from_secs(30), || {
        let done = workload.ops_so_far();
        async move { Ok((done >= n).then_some(())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_reports_nothing_wrong_and_accounts_for_every_key() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { spare: 0, ..LocalSpec::default() }).await?;
    let mut workload = Workload::start(WorkloadConfig::new(20_000), &cluster.urls()).await?;
    wait_for_ops(&workload, 3_000).await?;
    let NothingLost { report, verify: v, placement } = cluster.check_nothing_lost_or_misplaced(&mut workload).await?;
    for kind in ["GET", "SET", "INCR", "DEL", "EXPIRE"] {
        assert!(report.ops[kind] > 0, "the mix has {kind}: {report}");
    }
    assert_eq!(report.uncertain_keys, 0);
    assert_eq!(v.keys_checked, 20_000, "{v}");
    assert!(v.live_keys > 10_000 && v.live_keys < 20_000, "some keys were deleted, most live: {v}");
    assert_eq!(placement.keys, v.live_keys, "{placement}");
    check_every_slot_served(&cluster.urls(), "slotcheck").await?;
    assert_eq!(cluster.total_keys().await?, v.live_keys as i64, "the slot check cleans up after itself");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_lost_or_changed_behind_the_clients_back_are_caught() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { spare: 0, ..LocalSpec::default() }).await?;

    // Lost writes: one node is flushed under running writers.
    let config = WorkloadConfig { writers: 4, prefix: "flushed".into(), ..WorkloadConfig::new(2_000) };
    let mut workload = Workload::start(config, &cluster.urls()).await?;
    wait_for_ops(&workload, 500).await?;
    RespConn::connect(&cluster.nodes[0].addr()).await?.call(&["FLUSHALL"]).await?;
    let noticed = wait_for("the writers to notice", Duration::from_secs(30), || {
        let wrong = workload.wrong_reads_so_far();
        async move { Ok((wrong > 0).then_some(())) }
    })
    .await;
    let report = workload.stop().await?;
    eprintln!("{report}");
    noticed?;
    let v = workload.verify().await?;
    eprintln!("{v}");
    assert!(v.mismatches > 0, "verify catches the flushed keys the writers did not touch again: {v}");

    // A changed value: exactly one key, changed on its node after the writers stopped.
    let config = WorkloadConfig { writers: 4, prefix: "changed".into(), ..WorkloadConfig::new(2_000) };
    let mut workload = Workload::start(config.clone(), &cluster.urls()).await?;
    wait_for_ops(&workload, 500).await?;
    let report = workload.stop().await?;
    assert_eq!((report.total_errors(), report.wrong_reads), (0, 0), "{report}");
    let view = cluster.view().await?;
    let owners = slot_owner_nodes(&view);
    let key = config.key(1_234);
    let node = owners[usize::from(key_slot(key.as_bytes()))].clone().expect("every slot has an owner");
    RespConn::connect(&node).await?.call(&["SET", key.as_str(), "tampered"]).await?;
    let v = workload.verify().await?;
    eprintln!("{v}");
    assert_eq!(v.mismatches, 1, "{v}");
    assert!(v.examples[0].contains(&key) && v.examples[0].contains("tampered"), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_py_workload_runs_clean_and_accounts_for_every_key() -> Result<()> {
    let env = PythonEnv::ensure_async().await?;
    let cluster = LocalCluster::start(LocalSpec { spare: 0, ..LocalSpec::default() }).await?;
    let opts = PyWorkloadOptions { keys: 10_000, ..PyWorkloadOptions::new(10_000) };
    let workload = PyWorkload::start(&env, &cluster.cluster_proxies(), &opts, Duration::from_secs(120)).await?;
    // Let it run until the writers have visibly changed something (a DEL shrinks the nodes).
    let before = cluster.total_keys().await?;
    wait_for("redis-py to write", Duration::from_secs(30), || {
        let c = &cluster;
        async move { Ok((c.total_keys().await? != before).then_some(())) }
    })
    .await?;
    let report = workload.stop(Duration::from_secs(120)).await?;
    eprintln!("{report:#?}");
    assert!(report.total_ops() > 0);
    let v = cluster.check_py_nothing_lost_or_misplaced(&report, &CheckOptions::default()).await?;
    assert_eq!(v.keys_checked, 10_000, "{v:#?}");
    Ok(())
}
