//! Keys mode (issue 6): a 2-proxy cluster where both nodes hold data. The keys `key:0` …
//! `key:N-1` are written straight into the node that serves each one's slot (so node A and
//! node B hold about half each); then the lower half of A's slots moves to B with
//! `mode: keys` under the client load.
//!
//! In the same run, a native 2-node Redis Cluster with the same slot layout gets the same keys
//! in the same slots, and `redis-cli --cluster reshard` moves the same slots from its first
//! node to its second with redis-cli's default pipeline — reshard takes a source's lowest
//! slots, which is why sluice moves the lower half here. The reshard runs idle unless
//! `--native-under-load`.
//!
//! It prints keys/s, the seconds to `switched`, `committed` and `done`, the longest client
//! command during the migration, the client errors (must be 0), the reshard's time, and the
//! ratio reshard / sluice (to `done`), next to the goal: at least 3 × faster than reshard.
//! Afterwards the nodes must hold exactly the loaded keys plus the ones the clients created,
//! each on the node that owns its slot (nothing lost, nothing left behind).

use crate::load::{
    error_classes, fmt_s, key_name, line, load_node, ms, print_errors, verdict, Load, LoadRecord, Window,
};
use crate::Options;
use anyhow::{bail, Result};
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, SlotRange};
use sluice_common::slot::key_slot;
use sluice_harness::migration::{phase_name, seconds_to};
use sluice_harness::native::NativeCluster;
use sluice_harness::{LocalCluster, LocalSpec, MigrationCluster};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The goal: sluice's keys mode (to `done`) at least this many times faster than reshard.
const GOAL_RATIO: f64 = 3.0;

/// The slot ranges `proxy` holds in `view`.
fn ranges_of(view: &ClusterView, proxy: &str) -> Vec<SlotRange> {
    view.nodes
        .iter()
        .find(|n| n.proxy == proxy)
        .map(|n| n.slots.iter().map(|a| a.range()).collect())
        .unwrap_or_default()
}

/// The keys split by the node serving their slot: (indexes on A, indexes on B).
fn split_keys(keys: &[String], a: &[SlotRange], b: &[SlotRange]) -> Result<(Vec<usize>, Vec<usize>)> {
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for (i, k) in keys.iter().enumerate() {
        let slot = key_slot(k.as_bytes());
        if a.iter().any(|r| r.contains(slot)) {
            on_a.push(i);
        } else if b.iter().any(|r| r.contains(slot)) {
            on_b.push(i);
        } else {
            bail!("nobody serves slot {slot} of {k}");
        }
    }
    Ok((on_a, on_b))
}

/// What the native reshard did.
pub(crate) struct Reshard {
    pub(crate) took: Duration,
    /// Keys of the moved slots on the destination afterwards.
    pub(crate) keys_on_dst: i64,
    /// Keys of the moved slots still on the source (must be 0).
    pub(crate) keys_left: i64,
    pub(crate) total_keys: i64,
    /// The client load during the reshard (`--native-under-load`).
    pub(crate) load: Option<LoadRecord>,
    /// What does not add up afterwards (empty: the reshard moved exactly what it should).
    pub(crate) problems: Vec<String>,
}

/// The native cluster with the same layout and keys; times `redis-cli --cluster reshard` of
/// `moving` from the first node to the second.
pub(crate) async fn native_reshard(
    opts: &Options,
    ranges: [Vec<SlotRange>; 2],
    keys: &Arc<Vec<String>>,
    split: &(Vec<usize>, Vec<usize>),
    moving: SlotRange,
    moving_keys: usize,
) -> Result<Reshard> {
    let temp;
    let dir = match opts.data_dir_for("native") {
        Some(d) => d,
        None => {
            temp = tempfile::Builder::new().prefix("sluice-native-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    eprintln!("native Redis Cluster: starting 2 masters (slots {:?} and {:?})", ranges[0], ranges[1]);
    let native = NativeCluster::start(&dir, &ranges).await?;
    let started = Instant::now();
    let (n0, n1) = (native.nodes[0].addr(), native.nodes[1].addr());
    tokio::try_join!(load_node(&n0, keys, &split.0, opts.value_size), load_node(&n1, keys, &split.1, opts.value_size))?;
    let loaded = native.total_keys().await?;
    if loaded != opts.keys as i64 {
        bail!("the native cluster holds {loaded} keys after the load, not {}", opts.keys);
    }
    eprintln!("loaded the same keys into the native cluster in {:.1}s", started.elapsed().as_secs_f64());

    let t0 = Instant::now();
    let load = match opts.native_under_load {
        true => Some(Load::start_running(&native.urls(), keys, opts, t0).await?),
        false => None,
    };
    let log = dir.join("reshard.log");
    eprintln!(
        "redis-cli --cluster reshard: {} slots ({}-{}) from {n0} to {n1}, default pipeline; output in {}",
        moving.len(),
        moving.start,
        moving.end,
        log.display()
    );
    let took = native.reshard(0, 1, moving.len(), &log, opts.deadline).await;
    let load = match load {
        Some(l) => Some(l.finish().await?),
        None => None,
    };
    let took = took?;

    let mut problems = Vec::new();
    for at in 0..2 {
        let dst = native.slots_of(at, 1).await?;
        let src = native.slots_of(at, 0).await?;
        if !moving.slots().all(|s| dst.iter().any(|r| r.contains(s))) || src.iter().any(|r| r.overlaps(&moving)) {
            problems.push(format!("node {at} sees the source with {src:?} and the destination with {dst:?}"));
        }
    }
    let keys_on_dst = native.keys_in(1, moving).await?;
    let keys_left = native.keys_in(0, moving).await?;
    let created = load.as_ref().map_or(0, |l| l.created);
    let total_keys = native.total_keys().await?;
    if keys_left != 0 {
        problems.push(format!("{keys_left} keys of the moved slots are still on the source"));
    }
    // Under load the clients may have created keys in the moved slots too.
    let short = keys_on_dst < moving_keys as i64;
    if short || (load.is_none() && keys_on_dst != moving_keys as i64) {
        problems.push(format!("the destination holds {keys_on_dst} keys of the moved slots, not {moving_keys}"));
    }
    if total_keys != opts.keys as i64 + created as i64 {
        problems.push(format!("the nodes hold {total_keys} keys, not {} loaded + {created} created", opts.keys));
    }
    Ok(Reshard { took, keys_on_dst, keys_left, total_keys, load, problems })
}

/// One sluice run of the benchmark: what the migration did and what the nodes hold after.
pub(crate) struct SluiceRun {
    pub end: sluice_common::api::Migration,
    pub seen: String,
    pub moving_progress: Option<serde_json::Value>,
    pub record: LoadRecord,
    pub mig_start: Duration,
    pub mig_end: Duration,
    pub before: (i64, i64),
    pub after_nodes: (i64, i64),
    pub total_keys: i64,
    pub expect_keys: i64,
    pub placement: sluice_harness::migration::Placement,
    /// A plain `REPLICAOF` of node A (as loaded, idle) into an empty node, when asked for.
    pub plain: Option<Duration>,
}

/// The data of a run: the keys, where they live, what moves.
pub(crate) struct Layout {
    pub keys: Arc<Vec<String>>,
    pub a_ranges: Vec<SlotRange>,
    pub b_ranges: Vec<SlotRange>,
    pub split: (Vec<usize>, Vec<usize>),
    pub moving: SlotRange,
    pub moving_keys: usize,
}

/// A 2-proxy cluster loaded with `opts.keys` keys spread over both nodes by slot; the lower
/// half of A's slots moves to B in `mode` under the client load (`run`: the name of the data
/// directory). With `plain`, a plain `REPLICAOF` of node A is timed first, idle.
pub(crate) async fn sluice_run(
    opts: &Options,
    mode: MigrationMode,
    run: &str,
    plain: bool,
) -> Result<(Layout, SluiceRun)> {
    eprintln!("bench_migration: {} mode: starting a 2-proxy cluster (seed {})", mode.as_str(), opts.seed);
    let spec = LocalSpec {
        proxies: 2,
        spare: 0,
        data_dir: opts.data_dir_for(run),
        proxy_args: Options::proxy_args(),
        ..LocalSpec::default()
    };
    let cluster = LocalCluster::start(spec).await?;
    let (layout, before) = load_layout(opts, &cluster).await?;
    let (node_a, node_b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let plain = match plain {
        true => Some(crate::replication::plain_replicaof(&cluster.dir, node_a, before.0).await?),
        false => None,
    };
    let m = migrate_under_load(opts, &cluster, &layout, mode).await?;
    let total_keys = cluster.total_keys().await?;
    let expect_keys = opts.keys as i64 + m.record.created as i64;
    let after_nodes = (node_a.dbsize().await?, node_b.dbsize().await?);
    let placement = cluster.check_keys_on_owners(&cluster.node_addrs()).await?;
    let run = SluiceRun {
        end: m.end,
        seen: m.seen,
        moving_progress: m.moving_progress,
        record: m.record,
        mig_start: m.mig_start,
        mig_end: m.mig_end,
        before,
        after_nodes,
        total_keys,
        expect_keys,
        placement,
        plain,
    };
    Ok((layout, run))
}

/// Writes `opts.keys` keys straight into the node serving each one's slot and picks the
/// moving range (the lower half of A's); answers the layout and the keys on A and B.
async fn load_layout(opts: &Options, cluster: &LocalCluster) -> Result<(Layout, (i64, i64))> {
    let view = cluster.view().await?;
    let (a_ranges, b_ranges) =
        (ranges_of(&view, &cluster.proxies[0].addr()), ranges_of(&view, &cluster.proxies[1].addr()));
    let [a] = a_ranges[..] else { bail!("node A should hold one slot range, not {a_ranges:?}") };
    if a.len() < 2 {
        bail!("node A's range {a:?} cannot be halved");
    }
    let moving = SlotRange::new(a.start, a.start + (a.len() / 2) as u16 - 1);
    let keys: Arc<Vec<String>> = Arc::new((0..opts.keys as u64).map(key_name).collect());
    let split = split_keys(&keys, &a_ranges, &b_ranges)?;
    let moving_keys = split.0.iter().filter(|&&i| moving.contains(key_slot(keys[i].as_bytes()))).count();
    let (node_a, node_b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (addr_a, addr_b) = (node_a.addr(), node_b.addr());
    let started = Instant::now();
    tokio::try_join!(
        load_node(&addr_a, &keys, &split.0, opts.value_size),
        load_node(&addr_b, &keys, &split.1, opts.value_size)
    )?;
    let load_time = started.elapsed();
    let before = (node_a.dbsize().await?, node_b.dbsize().await?);
    if before != (split.0.len() as i64, split.1.len() as i64) {
        bail!("the nodes hold {before:?} keys after the load, not {} and {}", split.0.len(), split.1.len());
    }
    eprintln!(
        "loaded {} keys of {} B in {:.1}s ({:.0} keys/s): {} on node A, {} on node B; {} of them in the moving slots \
         {}-{}",
        opts.keys,
        opts.value_size,
        load_time.as_secs_f64(),
        opts.keys as f64 / load_time.as_secs_f64(),
        before.0,
        before.1,
        moving_keys,
        moving.start,
        moving.end
    );
    Ok((Layout { keys, a_ranges, b_ranges, split, moving, moving_keys }, before))
}

/// What the migration did under the client load.
struct UnderLoad {
    end: sluice_common::api::Migration,
    seen: String,
    moving_progress: Option<serde_json::Value>,
    record: LoadRecord,
    mig_start: Duration,
    mig_end: Duration,
}

/// Starts the client load, then (after a baseline) the migration of `layout.moving` from A to
/// B in `mode`; follows it to its end, and stops the load a little after.
async fn migrate_under_load(
    opts: &Options,
    cluster: &LocalCluster,
    layout: &Layout,
    mode: MigrationMode,
) -> Result<UnderLoad> {
    let (src, dst, moving) = (cluster.proxies[0].addr(), cluster.proxies[1].addr(), layout.moving);
    let t0 = Instant::now();
    let load = Load::start_running(&cluster.urls(), &layout.keys, opts, t0).await?;
    // A baseline of the load before the migration.
    load.wait_ops(u64::from(opts.rate.max(1000)), Duration::from_secs(60)).await?;
    let mig_start = t0.elapsed();
    let m = cluster.start_migration(&src, &dst, &[moving], mode).await?;
    eprintln!(
        "migration {} created: {src} -> {dst}, slots {}-{}, mode {}",
        m.id,
        moving.start,
        moving.end,
        mode.as_str()
    );
    let mut watch = cluster.watch_migration(&m.id);
    // The source's last report of the moving (keys_moved, passes, pause_ms); the cleanup's
    // reports replace it in the record.
    let mut moving_progress = None;
    let end = watch
        .until("the end", opts.deadline, |m| {
            if let Some(p) =
                m.progress.as_ref().filter(|p| p.get("keys_moved").is_some() || p.get("lag_bytes").is_some())
            {
                moving_progress = Some(p.clone());
            }
            m.phase.is_final()
        })
        .await;
    let mig_end = t0.elapsed();
    // Some traffic after the end too, then stop.
    let after = load.wait_ops(u64::from(opts.rate.max(1000)) / 2, Duration::from_secs(30)).await;
    let record = load.finish().await?;
    let end = end?;
    after?;
    let seen = watch.seen().to_string();
    eprintln!("phases seen: {seen}");
    Ok(UnderLoad { end, seen, moving_progress, record, mig_start, mig_end })
}

/// What keys mode's report compares: sluice's times against the reshard's.
struct Figures {
    to_switched: Option<f64>,
    to_committed: Option<f64>,
    to_done: Option<f64>,
    reshard_s: f64,
    keys_per_s: Option<f64>,
    reshard_keys_per_s: f64,
    ratio_done: Option<f64>,
    ratio_committed: Option<f64>,
}

impl Figures {
    fn of(run: &SluiceRun, reshard: &Reshard, moving_keys: usize) -> Figures {
        let to_switched = seconds_to(&run.end, MigrationPhase::Switched);
        let to_committed = seconds_to(&run.end, MigrationPhase::Committed);
        let to_done = seconds_to(&run.end, MigrationPhase::Done);
        let reshard_s = reshard.took.as_secs_f64();
        Figures {
            to_switched,
            to_committed,
            to_done,
            reshard_s,
            keys_per_s: to_switched.map(|s| moving_keys as f64 / s),
            reshard_keys_per_s: moving_keys as f64 / reshard_s,
            ratio_done: to_done.map(|s| reshard_s / s),
            ratio_committed: to_committed.map(|s| reshard_s / s),
        }
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into())
}

pub async fn run(opts: &Options) -> Result<bool> {
    let (layout, sluice) = sluice_run(opts, MigrationMode::Keys, "keys", false).await?;
    let Layout { keys, a_ranges, b_ranges, split, moving, moving_keys } = layout;
    let reshard = native_reshard(opts, [a_ranges, b_ranges], &keys, &split, moving, moving_keys).await?;
    let window = Window::of(&sluice.record, sluice.mig_start, sluice.mig_end);
    let fig = Figures::of(&sluice, &reshard, moving_keys);
    print_sluice(opts, &sluice, &window, &fig, moving, moving_keys);
    print_reshard(opts, &reshard, &fig, moving, moving_keys);
    let figures = figures_json(opts, &sluice, &fig, &reshard);
    opts.print_result(
        "keys",
        (moving.len(), moving_keys),
        sluice.end.phase,
        &[figures, window.result_figures(&sluice.record)],
    );

    let ok = sluice.end.phase == MigrationPhase::Done
        && sluice.record.errors.is_empty()
        && sluice.total_keys == sluice.expect_keys
        && sluice.placement.misplaced == 0
        && reshard.problems.is_empty();
    if !ok {
        eprintln!(
            "bench_migration: keys mode FAILED (the migration must reach done, with 0 client errors, the nodes must \
             hold exactly the loaded and created keys, each where its slot is served, and the reshard must have moved \
             its keys)"
        );
    }
    Ok(ok)
}

/// The sluice half of the report: times, the clients' view, the keys afterwards.
fn print_sluice(
    opts: &Options,
    run: &SluiceRun,
    window: &Window,
    fig: &Figures,
    moving: SlotRange,
    moving_keys: usize,
) {
    let (end, record, before) = (&run.end, &run.record, run.before);
    println!();
    println!(
        "sluice keys-mode migration: {} keys x {} B on 2 nodes ({} on A, {} on B), slots {}-{} of A ({} slots, {} \
         keys) to B",
        opts.keys,
        opts.value_size,
        before.0,
        before.1,
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
    line(
        "keys/s (keys of the slots / to switched)",
        fig.keys_per_s.map(|k| format!("{k:.0}")).unwrap_or_else(|| "-".into()),
    );
    let progress = |p: &Option<serde_json::Value>| p.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    line("last progress of the moving", progress(&run.moving_progress));
    line("last progress", progress(&end.progress));
    line("client commands during the migration", window.summary());
    line(
        "longest client command during the migration",
        format!("{:.1} ms{}", ms(window.max()), window.worst_when("the migration's creation")),
    );
    line("longest client command before it (baseline)", format!("{:.1} ms", ms(window.max_before)));
    line("client errors (must be 0)", format!("{} {:?}", record.errors.len(), error_classes(record)));
    print_errors(record);
    line("keys on A, B before", format!("{} + {}", before.0, before.1));
    line("keys on A, B after", format!("{} + {}", run.after_nodes.0, run.after_nodes.1));
    line(
        "keys on all nodes after",
        format!(
            "{} (must be {} = {} loaded + {} created: nothing lost, nothing left)",
            run.total_keys, run.expect_keys, opts.keys, record.created
        ),
    );
    line("keys on a node that does not own their slot", format!("{} (must be 0)", run.placement.misplaced));
    for e in &run.placement.examples {
        println!("      {e}");
    }
}

/// The native half of the report, and the ratios against the goal.
fn print_reshard(opts: &Options, reshard: &Reshard, fig: &Figures, moving: SlotRange, moving_keys: usize) {
    println!(
        "native Redis Cluster, redis-cli --cluster reshard of the same {} slots holding the same {} keys ({}):",
        moving.len(),
        moving_keys,
        if opts.native_under_load { "under the same load" } else { "idle" }
    );
    line("reshard time", format!("{:.2}s ({:.0} keys/s)", fig.reshard_s, fig.reshard_keys_per_s));
    line(
        "keys of the slots on the destination / source",
        format!("{} / {} (total {})", reshard.keys_on_dst, reshard.keys_left, reshard.total_keys),
    );
    if let Some(r) = &reshard.load {
        let longest = r.ops.iter().map(|(_, l)| *l).max().unwrap_or(0);
        line("reshard: longest client command", format!("{:.1} ms", ms(longest)));
        line("reshard: client errors", format!("{} {:?}", r.errors.len(), error_classes(r)));
    }
    for p in &reshard.problems {
        println!("      reshard check failed: {p}");
    }
    line(
        "reshard / sluice (to done)",
        format!(
            "{}   goal: >= {GOAL_RATIO}: {}",
            ratio(fig.ratio_done),
            verdict(fig.ratio_done.is_some_and(|r| r >= GOAL_RATIO))
        ),
    );
    line("reshard / sluice (to committed)", ratio(fig.ratio_committed));
}

/// Keys mode's own figures in the `RESULT` line (see [`Options::print_result`]).
fn figures_json(opts: &Options, run: &SluiceRun, fig: &Figures, reshard: &Reshard) -> serde_json::Value {
    serde_json::json!({
        "keys_on_a": run.before.0,
        "keys_on_b": run.before.1,
        "to_switched_s": fig.to_switched,
        "to_committed_s": fig.to_committed,
        "to_done_s": fig.to_done,
        "keys_per_s": fig.keys_per_s,
        "progress_moving": run.moving_progress,
        "progress": run.end.progress,
        "keys_after": run.total_keys,
        "misplaced": run.placement.misplaced,
        "reshard_s": fig.reshard_s,
        "reshard_keys_per_s": fig.reshard_keys_per_s,
        "reshard_under_load": opts.native_under_load,
        "reshard_client_errors": reshard.load.as_ref().map(|r| r.errors.len()),
        "ratio_reshard_done": fig.ratio_done,
        "ratio_reshard_committed": fig.ratio_committed,
        "proxy_args": Options::proxy_args(),
    })
}
