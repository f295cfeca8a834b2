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
