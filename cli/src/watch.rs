//! Following migrations until they end: a progress bar each on a terminal (`indicatif`), one
//! line per phase change otherwise (logs, CI, pipes), and one line for how each ended.

use crate::admin::{get_migration, migration_line, phase_name};
use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_common::api::Migration;
use sluice_common::model::MigrationPhase;
use sluice_local::BrokerClient;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the broker is asked.
const POLL: Duration = Duration::from_millis(250);

/// The phases a migration passes on its way to `done`, for the bar's length.
const STEPS: u64 = 7;

fn step(phase: MigrationPhase) -> u64 {
    match phase {
        MigrationPhase::Pending => 0,
        MigrationPhase::Starting => 1,
        MigrationPhase::Following => 2,
        MigrationPhase::Switching => 3,
        MigrationPhase::Switched => 4,
        MigrationPhase::Committed => 5,
        MigrationPhase::Cleaning => 6,
        MigrationPhase::Done | MigrationPhase::Failed | MigrationPhase::Aborted => STEPS,
    }
}

/// What the last progress report said, as `key value` pairs (`keys_moved 5000`).
fn progress_text(m: &Migration) -> String {
    match m.progress.as_ref().and_then(|p| p.as_object()) {
        Some(o) => o.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        None => String::new(),
    }
}

/// Follows `ids` of `cluster` until every one has ended; answers their last records.
pub async fn follow(client: &BrokerClient, cluster: &str, ids: &[String]) -> Result<Vec<Migration>> {
    let on_terminal = std::io::stderr().is_terminal();
    let bars = MultiProgress::with_draw_target(if on_terminal {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:>6} [{bar:24}] {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut watched: Vec<(String, ProgressBar, Option<Migration>, Instant)> = ids
        .iter()
        .map(|id| {
            let bar = bars.add(ProgressBar::new(STEPS).with_style(style.clone()).with_prefix(id.clone()));
            bar.enable_steady_tick(Duration::from_millis(200));
            (id.clone(), bar, None, Instant::now())
        })
        .collect();
    loop {
        let mut running = 0;
        for (id, bar, last, started) in &mut watched {
            if last.as_ref().is_some_and(|m| m.phase.is_final()) {
                continue;
            }
            let m = get_migration(client, cluster, id).await?;
            let moved = last.as_ref().is_none_or(|l| l.phase != m.phase);
            bar.set_position(step(m.phase));
            bar.set_message(format!("{} {}", phase_name(&m), progress_text(&m)));
            if moved && !on_terminal && !m.phase.is_final() {
                println!("{id} {}", phase_name(&m));
            }
            if m.phase.is_final() {
                bar.finish_and_clear();
                println!("{} ({:.1}s)", migration_line(&m), started.elapsed().as_secs_f64());
            } else {
                running += 1;
            }
            *last = Some(m);
        }
        if running == 0 {
            return Ok(watched.into_iter().filter_map(|(_, _, m, _)| m).collect());
        }
        tokio::time::sleep(POLL).await;
    }
}
