//! Replication mode (issue 5): a 2-proxy cluster and 1 spare. Node A gets all the keys (in
//! slots A serves), written straight into A's redis node over one pipelined connection.
//! Then, in the same run:
//!
//! 1. a plain `REPLICAOF` of node A into a fresh, empty redis-server, timed until
//!    `master_link_status:up` and `master_sync_in_progress:0` — the floor any replication-based
//!    move pays (with `repl-diskless-sync-delay 0` on A, as the migration's source sets it);
//! 2. the client load while half of A's slots move to the spare with `mode: replication`.
//!
//! It prints the seconds from the migration's creation to `switched`, `committed` and `done`
//! (the broker's phase timestamps), the longest client command during the migration (the
//! write pause), the client errors (must be 0), the plain REPLICAOF time and the ratio, next
//! to the goals: committed ≤ 2 × plain + 1 s, longest pause ≤ 100 ms.

use crate::load::{
    error_classes, fmt_s, key_name, line, load_node, ms, print_errors, verdict, Load, LoadRecord, Window,
};
use crate::Options;
use anyhow::{bail, Result};
use sluice_common::api::Migration;
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, SlotRange};
use sluice_common::resp::Frame;
use sluice_common::slot::key_slot;
use sluice_harness::client::RespConn;
use sluice_harness::migration::{phase_name, seconds_to, upper_half};
use sluice_harness::redis_node::RedisNode;
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `INFO replication` of a node, as `field -> value`.
async fn replication_info(addr: &str) -> Result<BTreeMap<String, String>> {
    let reply = RespConn::connect(addr).await?.call(&["INFO", "replication"]).await?;
    let text = match &reply {
        Frame::Bulk(b) | Frame::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
        other => bail!("INFO replication answered {other:?}"),
    };
    Ok(text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// A fresh empty redis-server replicating `master` until it is in sync: the time that takes.
pub(crate) async fn plain_replicaof(dir: &std::path::Path, master: &RedisNode, expect_keys: i64) -> Result<Duration> {
    // Redis waits `repl-diskless-sync-delay` (5 s by default) for more replicas before a
    // diskless full sync; the migration's source sets it to 0, so the plain run does too.
    let reply =
        RespConn::connect(&master.addr()).await?.call(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]).await?;
    if !matches!(reply, Frame::Simple(_)) {
        bail!("CONFIG SET repl-diskless-sync-delay 0 answered {reply:?}");
    }
    let mut replica = RedisNode::start(&dir.join("plain-replica"), &[]).await?;
    let addr = replica.addr();
    let port = master.port.to_string();
    let started = Instant::now();
    let reply = RespConn::connect(&addr).await?.call(&["REPLICAOF", "127.0.0.1", port.as_str()]).await?;
    if !matches!(reply, Frame::Simple(_)) {
        bail!("REPLICAOF answered {reply:?}");
    }
    let took = wait_for("the plain replica to be in sync", Duration::from_secs(600), || {
        let addr = addr.clone();
        async move {
            let info = replication_info(&addr).await?;
            let up = info.get("master_link_status").map(String::as_str) == Some("up");
            let syncing = info.get("master_sync_in_progress").map(String::as_str) != Some("0");
            Ok((up && !syncing).then(|| started.elapsed()))
        }
    })
    .await?;
    let n = replica.dbsize().await?;
    // Under load the clients may have created keys on A meanwhile.
    if n < expect_keys {
        bail!("the plain replica holds {n} keys, not {expect_keys}");
    }
    replica.kill();
    Ok(took)
}

pub async fn run(opts: &Options) -> Result<bool> {
    eprintln!("bench_migration: replication mode: starting a 2-proxy cluster and 1 spare (seed {})", opts.seed);
    let spec = LocalSpec {
        proxies: 2,
        spare: 1,
        data_dir: opts.data_dir_for("replication"),
        proxy_args: Options::proxy_args(),
        ..LocalSpec::default()
    };
    let cluster = LocalCluster::start(spec).await?;
    let src = cluster.proxies[0].addr();
    let dst = cluster.proxies[2].addr();
    let view = cluster.view().await?;
    let moving = upper_half(&view, &src)?;
    let (keys, moving_keys) = load_node_a(opts, &cluster, &view, &src, moving).await?;
    let run = plain_then_migrate(opts, &cluster, &keys, (&src, &dst), moving).await?;
    let total_keys = cluster.total_keys().await?;
    let expect_keys = opts.keys as i64 + run.record.created as i64;
    let window = Window::of(&run.record, run.mig_start, run.mig_end);
    let fig = Figures::of(&run);
    print_report(opts, &run, &window, &fig, moving, moving_keys, (total_keys, expect_keys));
    let figures = serde_json::json!({
        "to_switched_s": fig.to_switched,
        "to_committed_s": fig.to_committed,
        "to_done_s": fig.to_done,
        "plain_replicaof_s": fig.plain_s,
        "plain_under_load": opts.plain_under_load,
        "ratio_committed_plain": fig.ratio,
        "keys_after": total_keys,
    });
    opts.print_result(
        "replication",
        (moving.len(), moving_keys),
        run.end.phase,
        &[figures, window.result_figures(&run.record)],
    );

    let ok = run.end.phase == MigrationPhase::Done && run.record.errors.is_empty() && total_keys == expect_keys;
    if !ok {
        eprintln!(
            "bench_migration: replication mode FAILED (the migration must reach done, with 0 client errors, and the \
             nodes must hold exactly the loaded and created keys)"
        );
    }
    Ok(ok)
}

/// Writes `opts.keys` keys `key:N` whose slots A serves straight into A's node; answers them
/// and how many are in the `moving` slots.
async fn load_node_a(
    opts: &Options,
    cluster: &LocalCluster,
    view: &ClusterView,
    src: &str,
    moving: SlotRange,
) -> Result<(Arc<Vec<String>>, usize)> {
    let a_slots: Vec<SlotRange> = view
        .nodes
        .iter()
        .find(|n| n.proxy == src)
        .map(|n| n.slots.iter().map(|a| a.range()).collect())
        .unwrap_or_default();
    let mut keys = Vec::with_capacity(opts.keys);
    let mut n = 0u64;
    while keys.len() < opts.keys {
        let k = key_name(n);
        let slot = key_slot(k.as_bytes());
        if a_slots.iter().any(|r| r.contains(slot)) {
            keys.push(k);
        }
        n += 1;
    }
    let moving_keys = keys.iter().filter(|k| moving.contains(key_slot(k.as_bytes()))).count();
    let node_a = &cluster.nodes[0];
    let started = Instant::now();
    let all: Vec<usize> = (0..keys.len()).collect();
    load_node(&node_a.addr(), &keys, &all, opts.value_size).await?;
    let load_time = started.elapsed();
    let loaded = node_a.dbsize().await?;
    if loaded != opts.keys as i64 {
        bail!("node A holds {loaded} keys after the load, not {}", opts.keys);
    }
    eprintln!(
        "loaded {} keys of {} B into node A in {:.1}s ({:.0} keys/s); {} of them in the moving slots {}-{}",
        opts.keys,
        opts.value_size,
        load_time.as_secs_f64(),
        opts.keys as f64 / load_time.as_secs_f64(),
        moving_keys,
        moving.start,
        moving.end
    );
    Ok((Arc::new(keys), moving_keys))
}

/// The plain `REPLICAOF` of node A and the migration under the client load.
struct Run {
    plain: Duration,
    end: Migration,
    record: LoadRecord,
    mig_start: Duration,
    mig_end: Duration,
}

/// Times a plain `REPLICAOF` of node A (idle, or under the load with
/// `--plain-under-load`), then migrates `moving` from `src` to `dst` (the spare) under the
/// client load, after a baseline of it, and stops the load a little after the end.
async fn plain_then_migrate(
    opts: &Options,
    cluster: &LocalCluster,
    keys: &Arc<Vec<String>>,
    (src, dst): (&str, &str),
    moving: SlotRange,
) -> Result<Run> {
    let t0 = Instant::now();
    let urls = cluster.urls();
    let mut load = None;
    if opts.plain_under_load {
        load = Some(Load::start_running(&urls, keys, opts, t0).await?);
    }
    let plain = plain_replicaof(&cluster.dir, &cluster.nodes[0], opts.keys as i64).await?;
    eprintln!(
        "plain REPLICAOF of node A: {:.2}s ({})",
        plain.as_secs_f64(),
        if opts.plain_under_load { "under load" } else { "idle" }
    );
    let load = match load {
        Some(l) => l,
        None => Load::start_running(&urls, keys, opts, t0).await?,
    };
    // A baseline of the load before the migration.
    load.wait_ops(u64::from(opts.rate.max(1000)), Duration::from_secs(60)).await?;

    let mig_start = t0.elapsed();
    let m = cluster.start_migration(src, dst, &[moving], MigrationMode::Replication).await?;
    eprintln!("migration {} created: {src} -> {dst}, slots {}-{}", m.id, moving.start, moving.end);
    let mut watch = cluster.watch_migration(&m.id);
    let end = watch.until_final(opts.deadline).await;
    let mig_end = t0.elapsed();
    // Some traffic after the end too, then stop.
    let after = load.wait_ops(u64::from(opts.rate.max(1000)) / 2, Duration::from_secs(30)).await;
    let record = load.finish().await?;
    let end = end?;
    after?;
    eprintln!("phases seen: {}", watch.seen());
    Ok(Run { plain, end, record, mig_start, mig_end })
}

/// The times the report compares with the goals.
struct Figures {
    to_switched: Option<f64>,
    to_committed: Option<f64>,
    to_done: Option<f64>,
    plain_s: f64,
    /// Committed / plain.
    ratio: Option<f64>,
}

impl Figures {
    fn of(run: &Run) -> Figures {
        let plain_s = run.plain.as_secs_f64();
        let to_committed = seconds_to(&run.end, MigrationPhase::Committed);
        Figures {
            to_switched: seconds_to(&run.end, MigrationPhase::Switched),
            to_committed,
            to_done: seconds_to(&run.end, MigrationPhase::Done),
            plain_s,
            ratio: to_committed.map(|c| c / plain_s),
        }
    }
}

/// The human-readable report. `keys`: (on all nodes after, expected).
fn print_report(
    opts: &Options,
    run: &Run,
    window: &Window,
    fig: &Figures,
    moving: SlotRange,
    moving_keys: usize,
    (total_keys, expect_keys): (i64, i64),
) {
    let (end, record) = (&run.end, &run.record);
    let goal_commit = 2.0 * fig.plain_s + 1.0;
    let max_during = window.max();
    println!();
    println!(
        "sluice replication-mode migration: {} keys x {} B on node A, slots {}-{} ({} slots, {} keys) to a spare",
        opts.keys,
        opts.value_size,
        moving.start,
        moving.end,
        moving.len(),
        moving_keys
    );
    println!("load: {}", opts.load_text());
    let ended =
        format!("{}{}", phase_name(end.phase), end.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
    line("migration ended", ended);
    line("seconds to switched", fmt_s(fig.to_switched));
    line("seconds to committed", fmt_s(fig.to_committed));
    line("seconds to done", fmt_s(fig.to_done));
    let plain_label =
        if opts.plain_under_load { "plain REPLICAOF (under the same load)" } else { "plain REPLICAOF (idle)" };
    line(plain_label, format!("{:.2}s", fig.plain_s));
    line(
        "committed / plain",
        format!(
            "{}   goal: committed <= 2 x plain + 1 s = {goal_commit:.2}s: {}",
            fig.ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
            verdict(fig.to_committed.is_some_and(|c| c <= goal_commit))
        ),
    );
    line("client commands during the migration", window.summary());
    line(
        "longest client command during the migration",
        format!(
            "{:.1} ms{}   goal: <= 100 ms: {}",
            ms(max_during),
            window.worst_when("the migration's creation"),
            verdict(max_during <= 100_000)
        ),
    );
    line("longest client command before it (baseline)", format!("{:.1} ms", ms(window.max_before)));
    line("client errors (must be 0)", format!("{} {:?}", record.errors.len(), error_classes(record)));
    print_errors(record);
    line(
        "keys on all nodes after",
        format!(
            "{total_keys} (must be {expect_keys} = {} loaded + {} created: no garbage once done)",
            opts.keys, record.created
        ),
    );
}
