//! Keys-mode migrations between nodes that both hold data, under a writer workload.

use anyhow::Result;
use sluice_common::model::{MigrationMode, MigrationPhase, SlotRange};
use sluice_harness::migration::check_every_slot_served;
use sluice_harness::{LocalCluster, LocalSpec, Workload, WorkloadConfig};
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
    let report = workload.stop().await?;
    eprintln!("{report}");
    assert_eq!(report.total_errors(), 0, "the client saw errors:\n{report}");
    assert_eq!(report.wrong_reads, 0, "the client read wrong values:\n{report}");
    let v = workload.verify().await?;
    eprintln!("{v}");
    assert_eq!(v.mismatches, 0, "acknowledged writes were lost:\n{v}");
    assert_eq!(v.ttl_mismatches, 0, "TTLs are wrong:\n{v}");
    assert_eq!(cluster.total_keys().await?, v.live_keys as i64, "sum of DBSIZE");
    let placement = cluster.check_keys_on_owners(&cluster.node_addrs()).await?;
    assert_eq!(placement.misplaced, 0, "{placement}");
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
    let report = workload.stop().await?;
    eprintln!("{report}");
    assert_eq!(report.wrong_reads, 0, "the client read wrong values:\n{report}");
    let v = workload.verify().await?;
    eprintln!("{v}");
    assert_eq!(v.mismatches, 0, "acknowledged writes were lost:\n{v}");
    assert_eq!(cluster.total_keys().await?, v.live_keys as i64, "sum of DBSIZE");
    let placement = cluster.check_keys_on_owners(&cluster.node_addrs()).await?;
    assert_eq!(placement.misplaced, 0, "{placement}");
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
