//! Keys-mode migrations between nodes that both hold data, under a writer workload.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use sluice_common::api::{ClusterDetail, ScalePlan, ScalePlanRecord, ScaleState};
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, SlotRange};
use sluice_harness::migration::{check_every_slot_served, node_keys, CheckOptions};
use sluice_harness::workload::key_in_slot;
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
        assert_eq!(m.mode, MigrationMode::Filtered, "auto picks filtered replication between nodes with data");
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

/// `INFO clients` `blocked_clients` of a node.
async fn blocked_clients(node: &str) -> Result<u64> {
    let info = sluice_harness::client::call(node, &["INFO", "clients"]).await?;
    let text = match info {
        sluice_common::resp::Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => anyhow::bail!("INFO answered {other:?}"),
    };
    Ok(text.lines().find_map(|l| l.strip_prefix("blocked_clients:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0))
}

/// A command the source proxy routed to its node before a keys-mode migration was known
/// may reach the node late: here a `GET` waits on the node connection behind a `WAIT` of
/// `--ack-replicas` whose replica is stopped (4 s). The migration must not move the key
/// before that `GET` ran, or it reads nothing (and a `SET` would land on the source after
/// its key left: found by the chaos test with replicas, where a read came back empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_routed_before_a_keys_migration_is_answered_before_its_key_moves() -> Result<()> {
    let args = ["--ack-replicas", "1", "--ack-timeout-ms", "4000", "--backend-connections", "1"];
    let spec = LocalSpec {
        proxies: 2,
        replicas: 1,
        spare: 0,
        proxy_args: args.map(String::from).to_vec(),
        ..LocalSpec::default()
    };
    let mut cluster = LocalCluster::start(spec).await?;
    let view = cluster.view().await?;
    let (a, b) = (view.nodes[0].proxy.clone(), view.nodes[1].proxy.clone());
    let slot = view.nodes[0].slots[0].start + 10;
    let other_slot = slot + 1;
    let key = sluice_harness::workload::key_in_slot(slot, "routed-early");
    let other = sluice_harness::workload::key_in_slot(other_slot, "blocker");
    let mut conn = sluice_harness::client::RespConn::connect(&a).await?;
    let set = conn.call(&["SET", key.as_str(), "v1"]).await?;
    assert_eq!(set, sluice_common::resp::Frame::simple("OK"), "with the replica up the write is acknowledged");

    // Stop the replica's node once it has acknowledged that write: a write's WAIT then
    // blocks the one node connection for 4 s.
    let a_node = view.nodes[0].node.clone();
    wait_for("the replica to acknowledge the first write", DEADLINE, || {
        let node = a_node.clone();
        async move {
            let info = sluice_harness::client::call(&node, &["INFO", "replication"]).await?;
            let text = match info {
                sluice_common::resp::Frame::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                _ => String::new(),
            };
            let field = |name: &str| -> Option<u64> {
                text.split(['\r', '\n', ',']).find_map(|f| f.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
            };
            let acked = field("offset=").unwrap_or(0);
            Ok((acked > 0 && Some(acked) == field("master_repl_offset:")).then_some(()))
        }
    })
    .await?;
    let replica = &view.nodes[0].replicas[0];
    let ri = cluster.proxy_index(&replica.proxy)?;
    cluster.nodes[ri].process().pause();
    // Until the proxy counts the replica online (it looks every 250 ms), a write is answered
    // at once: try again until one blocks.
    let mut attempts = 0;
    let blocker = loop {
        attempts += 1;
        let blocker = {
            let (a, other) = (a.clone(), other.clone());
            tokio::spawn(async move {
                let mut c = sluice_harness::client::RespConn::connect(&a).await?;
                c.call(&["SET", other.as_str(), "x"]).await
            })
        };
        let node = a_node.clone();
        let blocked = wait_for("the WAIT to block the node connection, or the write to be answered", DEADLINE, || {
            let node = node.clone();
            let finished = blocker.is_finished();
            async move { Ok((finished || blocked_clients(&node).await? > 0).then_some(!finished)) }
        })
        .await?;
        if blocked {
            break blocker;
        }
        anyhow::ensure!(attempts < 50, "no write ever waited for the stopped replica");
        blocker.await??;
    };
    let reader = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move {
            let mut c = sluice_harness::client::RespConn::connect(&a).await?;
            c.call(&["GET", key.as_str()]).await
        })
    };
    // The GET is routed now, and waits behind the WAIT; the slot starts moving meanwhile.
    let m = cluster.start_migration(&a, &b, &[SlotRange::new(slot, slot)], MigrationMode::Keys).await?;
    let got = reader.await??;
    cluster.nodes[ri].process().resume();
    let end = cluster.watch_migration(&m.id).until_final(DEADLINE).await?;
    assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
    assert_eq!(got, sluice_common::resp::Frame::bulk("v1"), "the GET routed before the migration read its key");
    let blocked = blocker.await??;
    eprintln!("the blocking write answered {blocked:?}");
    let mut conn = sluice_harness::client::RespConn::connect(&b).await?;
    assert_eq!(conn.call(&["GET", key.as_str()]).await?, sluice_common::resp::Frame::bulk("v1"));
    Ok(())
}

/// A keys-mode import into a node that still holds the copy a replication import made of its
/// source (all of the source's slots, garbage until its collector passes) would bring back a
/// key deleted at the source since: keys mode moves only what the source still holds, and the
/// collector does not delete in slots its proxy imports (found by the chaos test: an
/// acknowledged `DEL` undone). The broker refuses such an import until the replication is
/// done; a filtered import (it empties the moving slots at the destination first) is taken,
/// and the deleted key stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_import_waits_until_the_destination_collected_a_replication_copy() -> Result<()> {
    // Slow collection (batches of about 10 keys, 10 keys/s, of 400): the replication stays in
    // `cleaning` for a while, and the copy of the victim most likely outlives the refusal.
    let args = ["--gc-keys-per-sec", "10", "--gc-scan-count", "10"];
    let spec = LocalSpec { proxies: 2, spare: 1, proxy_args: args.map(String::from).to_vec(), ..LocalSpec::default() };
    let cluster = LocalCluster::start(spec).await?;
    let (a, free) = (cluster.proxies[0].addr(), cluster.proxies[2].addr());
    let mut conn = sluice_harness::workload::cluster_connection(&cluster.urls(), Duration::from_secs(10)).await?;
    for slot in 100..500u16 {
        let () = conn.set(key_in_slot(slot, "filler"), "x").await?;
    }
    let victim = key_in_slot(1000, "victim");
    let () = conn.set(&victim, "old").await?;

    // a gives 5000-5100 (no keys there) to the free proxy by replication: its node copies all
    // of a's, the victim included.
    let m1 = cluster.start_migration(&a, &free, &[SlotRange::new(5000, 5100)], MigrationMode::Replication).await?;
    let mut watch = cluster.watch_migration(&m1.id);
    // Switched: the destination's node no longer follows a's, and collects nothing before
    // the commit.
    let switched = watch.until("switched", DEADLINE, |m| m.phase >= MigrationPhase::Switched).await?;
    assert!(
        node_keys(&switched.dst_node).await?.contains(&victim),
        "the replication copied the victim to {} (the premise)",
        switched.dst_node
    );
    let deleted: i64 = conn.del(&victim).await?;
    assert_eq!(deleted, 1);
    watch.until("committed", DEADLINE, |m| m.phase >= MigrationPhase::Committed).await?;

    let slot = [SlotRange::new(1000, 1000)];
    let refusal = match cluster.try_start_migration(&a, &free, &slot, MigrationMode::Keys).await? {
        Err(r) => r,
        Ok(m) => {
            // What that costs: once it is done, the deleted key reads back from the copy.
            let end = cluster.watch_migration(&m.id).until_final(DEADLINE).await?;
            let read: Option<String> = conn.get(&victim).await?;
            anyhow::bail!(
                "a keys-mode import into {free} was accepted while {} still collects; it ended {:?}, and the \
                 deleted {victim} now reads {read:?}",
                m1.id,
                end.phase
            )
        }
    };
    assert_eq!((refusal.status, refusal.code.as_str()), (409, "conflict"), "{refusal}");
    assert!(refusal.message.contains(&m1.id), "the refusal names the migration to wait for: {refusal}");
    let still = watch.poll().await?;
    assert!(still.phase < MigrationPhase::Done, "m-1 was still collecting at the refusal: {still:?}");

    let m2 = cluster.start_migration(&a, &free, &slot, MigrationMode::Filtered).await?;
    let end = cluster.watch_migration(&m2.id).until_final(DEADLINE).await?;
    assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
    let read: Option<String> = conn.get(&victim).await?;
    assert_eq!(read, None, "the deleted key came back after its slot moved");
    let end = watch.until_final(DEADLINE).await?;
    assert_eq!(end.phase, MigrationPhase::Done, "{end:?}");
    Ok(())
}
