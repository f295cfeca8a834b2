//! Filtered mode (issue 14): a 2-proxy cluster where both nodes hold data (`--keys` spread over
//! both by slot), the lower half of A's slots moving to B by slot-filtered replication under
//! the client load. In the same run, on the same data: a plain `REPLICAOF` of node A into an
//! empty node (idle, before the migration), the same migration in keys mode (a fresh cluster),
//! and `redis-cli --cluster reshard` of the same slots on a native Redis Cluster.
//!
//! Goals: committed ≤ 0.5 × keys mode's, ≤ 2 × the plain `REPLICAOF`; the longest client
//! command during the migration ≤ 100 ms. Afterwards the nodes must hold exactly the loaded
//! keys plus the ones the clients created, each on the node that owns its slot.

use crate::keys::{native_reshard, sluice_run, Layout, Reshard, SluiceRun};
use crate::load::{error_classes, fmt_s, line, ms, print_errors, verdict, Window};
use crate::Options;
use anyhow::Result;
use sluice_common::model::{MigrationMode, MigrationPhase};
use sluice_harness::migration::{phase_name, seconds_to};

const GOAL_VS_KEYS: f64 = 0.5;
const GOAL_VS_PLAIN: f64 = 2.0;
const GOAL_LONGEST_MS: f64 = 100.0;

/// Whether a run ended as it must: done, no client error, the keys add up, none misplaced.
fn sound(run: &SluiceRun) -> bool {
    run.end.phase == MigrationPhase::Done
        && run.record.errors.is_empty()
        && run.total_keys == run.expect_keys
        && run.placement.misplaced == 0
}

pub async fn run(opts: &Options) -> Result<bool> {
    let (layout, filtered) = sluice_run(opts, MigrationMode::Filtered, "filtered", true).await?;
    let (_, keys) = sluice_run(opts, MigrationMode::Keys, "filtered-keys", false).await?;
    let Layout { keys: names, a_ranges, b_ranges, split, moving, moving_keys } = layout;
    let reshard = native_reshard(opts, [a_ranges, b_ranges], &names, &split, moving, moving_keys).await?;
    let window = Window::of(&filtered.record, filtered.mig_start, filtered.mig_end);
    let fig = Figures::of(&filtered, &keys, &reshard);

    println!();
    println!(
        "sluice filtered-mode migration: {} keys x {} B on 2 nodes ({} on A, {} on B), slots {}-{} of A ({} slots, {} \
         keys) to B, which holds data",
        opts.keys,
        opts.value_size,
        filtered.before.0,
        filtered.before.1,
        moving.start,
        moving.end,
        moving.len(),
        moving_keys
    );
    println!("load: {}", opts.load_text());
    print_filtered(&filtered, &window, &fig);
    print_yardsticks(&keys, &reshard, &fig);
    let figures = serde_json::json!({
        "keys_on_a": filtered.before.0,
        "keys_on_b": filtered.before.1,
        "to_committed_s": fig.committed,
        "to_done_s": seconds_to(&filtered.end, MigrationPhase::Done),
        "max_latency_ms": ms(window.max()),
        "p99_ms": ms(window.p(0.99)),
        "client_errors": filtered.record.errors.len(),
        "keys_after": filtered.total_keys,
        "misplaced": filtered.placement.misplaced,
        "plain_replicaof_s": fig.plain,
        "keys_mode_committed_s": fig.keys_committed,
        "reshard_s": fig.reshard_s,
        "ratio_vs_keys": fig.vs_keys,
        "ratio_vs_plain": fig.vs_plain,
        "proxy_args": Options::proxy_args(),
    });
    opts.print_result("filtered", (moving.len(), moving_keys), filtered.end.phase, &[figures]);
    let ok = sound(&filtered) && sound(&keys) && reshard.problems.is_empty();
    if !ok {
        eprintln!(
            "bench_migration: filtered mode FAILED (both migrations must reach done with 0 client errors, the nodes must \
             hold exactly the loaded and created keys, each where its slot is served, and the reshard must have moved \
             its keys)"
        );
    }
    Ok(ok)
}

/// The times compared: filtered mode's, keys mode's, the plain `REPLICAOF`'s, the reshard's.
struct Figures {
    committed: Option<f64>,
    keys_committed: Option<f64>,
    plain: Option<f64>,
    vs_keys: Option<f64>,
    vs_plain: Option<f64>,
    reshard_s: f64,
}

impl Figures {
    fn of(filtered: &SluiceRun, keys: &SluiceRun, reshard: &Reshard) -> Figures {
        let committed = seconds_to(&filtered.end, MigrationPhase::Committed);
        let keys_committed = seconds_to(&keys.end, MigrationPhase::Committed);
        let plain = filtered.plain.map(|d| d.as_secs_f64());
        Figures {
            committed,
            keys_committed,
            plain,
            vs_keys: committed.zip(keys_committed).map(|(f, k)| f / k),
            vs_plain: committed.zip(plain).map(|(f, p)| f / p),
            reshard_s: reshard.took.as_secs_f64(),
        }
    }
}

/// The filtered migration: its times, the clients' view, the keys afterwards.
fn print_filtered(filtered: &SluiceRun, window: &Window, fig: &Figures) {
    let longest = ms(window.max());
    line("migration ended", phase_name(filtered.end.phase));
    line("phases", &filtered.seen);
    line("seconds to switched", fmt_s(seconds_to(&filtered.end, MigrationPhase::Switched)));
    line("seconds to committed", fmt_s(fig.committed));
    line("seconds to done", fmt_s(seconds_to(&filtered.end, MigrationPhase::Done)));
    let progress = filtered.moving_progress.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    line("last progress of the copy", progress);
    line("client commands during the migration", window.summary());
    line(
        "longest client command during the migration",
        format!(
            "{longest:.1} ms{}   goal: <= {GOAL_LONGEST_MS} ms: {}",
            window.worst_when("the migration's creation"),
            verdict(longest <= GOAL_LONGEST_MS)
        ),
    );
    line(
        "client errors (must be 0)",
        format!("{} {:?}", filtered.record.errors.len(), error_classes(&filtered.record)),
    );
    print_errors(&filtered.record);
    line("keys on A, B after", format!("{} + {}", filtered.after_nodes.0, filtered.after_nodes.1));
    line(
        "keys on all nodes after",
        format!("{} (must be {}: nothing lost, nothing left)", filtered.total_keys, filtered.expect_keys),
    );
    line("keys on a node that does not own their slot", format!("{} (must be 0)", filtered.placement.misplaced));
}

/// The yardsticks (keys mode, plain `REPLICAOF`, reshard) and the ratios against the goals.
fn print_yardsticks(keys: &SluiceRun, reshard: &Reshard, fig: &Figures) {
    let ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
    println!("the yardsticks, same data, same machine:");
    line("plain REPLICAOF of node A (idle)", fmt_s(fig.plain));
    line(
        "keys mode (a fresh cluster, same load): seconds to committed",
        format!(
            "{} ({}, {} client errors)",
            fmt_s(fig.keys_committed),
            phase_name(keys.end.phase),
            keys.record.errors.len()
        ),
    );
    line("redis-cli --cluster reshard (idle)", format!("{:.2}s", fig.reshard_s));
    for p in &reshard.problems {
        println!("      reshard check failed: {p}");
    }
    line(
        "filtered / keys mode (to committed)",
        format!(
            "{}   goal: <= {GOAL_VS_KEYS}: {}",
            ratio(fig.vs_keys),
            verdict(fig.vs_keys.is_some_and(|r| r <= GOAL_VS_KEYS))
        ),
    );
    line(
        "filtered / plain REPLICAOF (to committed)",
        format!(
            "{}   goal: <= {GOAL_VS_PLAIN}: {}",
            ratio(fig.vs_plain),
            verdict(fig.vs_plain.is_some_and(|r| r <= GOAL_VS_PLAIN))
        ),
    );
    line(
        "reshard / filtered (to committed)",
        fig.committed.map(|c| format!("{:.2}", fig.reshard_s / c)).unwrap_or_default(),
    );
}
