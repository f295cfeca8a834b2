//! Keys mode: moving slots between two nodes that both hold data, key by key.
//!
//! The source keeps answering for the moving slots. A client command on one of them first
//! pulls its keys to the destination (`MIGRATE … REPLACE KEYS`, atomic on the source node:
//! each key is entirely on one side at any moment), then runs at the destination proxy,
//! which serves forwarded commands for the slots it imports. New keys are therefore created
//! at the destination, and a multi-key command or a script always finds its keys together.
//! Meanwhile this task scans the source node and moves the rest in pipelined `MIGRATE`
//! batches. Once a full pass finds nothing left, the switch is short: hold, tell the
//! destination to serve the slots to everyone, redirect. `MIGRATE` deletes at the source, so
//! no garbage is left.
//!
//! Once a key has moved, the slots can only go forward: the task never gives up (it retries
//! with backoff), since handing the slots back would hide the moved keys.

use super::node::connect;
use super::node::migrate_command;
use super::{Phase, Stage, Task};
use crate::migration::error::{refused, MigrationError};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::Frame;
use sluice_common::slot::{key_slot, SLOT_COUNT};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pass that finds nothing ends the moving only once this long after the task started:
/// commands routed before the migration was known may still land on the source meanwhile.
const SETTLE: Duration = Duration::from_millis(500);

pub async fn run_source(shared: Arc<Shared>, task: Arc<Task>) {
    // The slots answer through the pull from the start, but only once the destination proxy
    // holds the migration (until then they stay held, as apply_config left them).
    task.set_phase(Phase::Starting);
    wait_for_destination(&shared, &task).await;
    shared.set_override(&task.meta.id, None).await;
    // Commands routed to our node before this migration was known may still be on their way
    // (a slow node connection, a `WAIT` of --ack-replicas): none may land after its key moved.
    wait_routed_before(&shared, &task).await;
    let started = Instant::now();
    let mut moving = vec![false; usize::from(SLOT_COUNT)];
    for r in &task.meta.slots {
        for s in r.slots().filter(|&s| s < SLOT_COUNT) {
            moving[usize::from(s)] = true;
        }
    }
    let mut moved_total: u64 = 0;
    let mut passes: u64 = 0;
    let mut backoff = Duration::from_millis(100);
    // Forwarded `EVALSHA`s run at the destination from now on.
    super::carry_scripts(&shared, &task).await;
    loop {
        if task.is_gone() {
            tracing::warn!(migration = %task.meta.id, "keys-mode migration left the config before its switch");
            task.set_phase(Phase::Aborted);
            return;
        }
        if task.stage() == Stage::Committed {
            // The broker commits only after a switch: the destination took the slots from a
            // `TmpSwitch` whose answer never came back here (it was stopped past our budget
            // and carried on later). Retrying the switch would be refused for good once its
            // task is done, and this one would never clean up (found by the chaos test).
            tracing::info!(migration = %task.meta.id, "committed: the destination switched on an earlier attempt");
            task.set_phase(Phase::Switched);
            break;
        }
        match pass(&shared, &task, &moving, &mut moved_total).await {
            Ok(found) => {
                passes += 1;
                task.set_progress("passes", passes);
                backoff = Duration::from_millis(100);
                if found == 0 && passes >= 2 && started.elapsed() >= SETTLE {
                    super::carry_scripts(&shared, &task).await;
                    match switch(&shared, &task).await {
                        Ok(pause) => {
                            task.set_progress("pause_ms", pause.as_secs_f64() * 1000.0);
                            task.set_phase(Phase::Switched);
                            break;
                        }
                        Err(e) => {
                            task.note_error(format!("switch abandoned: {e}"));
                            tracing::warn!(migration = %task.meta.id, error = %e, "keys-mode switch abandoned; retrying");
                            tokio::time::sleep(backoff).await;
                        }
                    }
                } else if found == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => {
                task.note_error(&e);
                tracing::warn!(migration = %task.meta.id, error = %e, "moving keys failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if task.wait_untagged().await == Stage::Committed {
        task.set_phase(Phase::Committed);
        super::gc::clean(&shared, &task).await;
    }
}

/// How long the moving waits for commands routed with an older table; past it, it goes on
/// (what still lands on the source is then moved by a later pass).
const ROUTED_BEFORE_LIMIT: Duration = Duration::from_secs(30);

/// Waits until every command our node was sent with a route table from before the migration
/// has been answered (see [`crate::state::Routed`]).
pub(super) async fn wait_routed_before(shared: &Shared, task: &Task) {
    if !shared.wait_routed_before(ROUTED_BEFORE_LIMIT).await {
        task.note_error(format!(
            "commands routed before the migration still unanswered after {ROUTED_BEFORE_LIMIT:?}; going on"
        ));
    }
}

/// Waits until the destination proxy holds a config at least as new as the migration, so it
/// serves the commands this proxy forwards for the moving slots. A destination still at an
/// older config (stopped, cut off, or behind a coordinator that is down) answers them with
/// `MOVED` back here, and the client goes round in circles until it gives up with an error:
/// the chaos test found that with the destination `SIGSTOP`ped as the migration started.
/// Every command on a moving slot needs the destination anyway (it runs there once its keys
/// are pulled), so holding the slots meanwhile costs no availability.
async fn wait_for_destination(shared: &Arc<Shared>, task: &Arc<Task>) {
    let meta = &task.meta;
    loop {
        if task.is_gone() {
            return;
        }
        let epoch = async {
            match super::call_destination(shared, meta, &["GETEPOCH"], Duration::from_secs(1)).await? {
                Frame::Integer(n) => Ok(u64::try_from(n).unwrap_or(0)),
                f => Err(refused!("UMCTL GETEPOCH answered {f:?}")),
            }
        };
        match epoch.await {
            Ok(held) if held >= meta.epoch => {
                task.set_progress("destination", "ready");
                return;
            }
            Ok(held) => task.set_progress("destination", format!("at epoch {held}, waiting for {}", meta.epoch)),
            Err(e) => task.set_progress("destination", format!("not reachable: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One scan of the source node: moves every key of the moving slots it finds. Returns how
/// many it found.
async fn pass(
    shared: &Arc<Shared>,
    task: &Arc<Task>,
    moving: &[bool],
    moved_total: &mut u64,
) -> Result<u64, MigrationError> {
    let node = connect(shared, &shared.opts.node).await?;
    let count = shared.opts.keys_scan_count.max(1).to_string();
    let batch = shared.opts.keys_batch.max(1);
    let concurrency = shared.opts.keys_concurrency.max(1);
    let mut cursor = "0".to_string();
    let mut found: u64 = 0;
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        let (next, keys) = node.scan(&cursor, &count).await?;
        cursor = next;
        for k in keys {
            if moving[usize::from(key_slot(&k))] {
                found += 1;
                pending.push(k);
            }
        }
        let done = cursor == "0";
        while pending.len() >= batch * concurrency || (done && !pending.is_empty()) {
            let take = pending.len().min(batch * concurrency);
            let chunk: Vec<Bytes> = pending.drain(..take).collect();
            *moved_total += migrate(shared, &node, &task.meta.dst_node, &chunk, batch).await?;
            task.set_progress("keys_moved", *moved_total);
            if shared.opts.keys_per_sec > 0 {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / shared.opts.keys_per_sec as f64)).await;
            }
        }
        task.set_progress("keys_seen", found);
        if done {
            return Ok(found);
        }
    }
}

/// Sends `keys` in batches of `batch`, all batches at once (pipelined on one connection).
/// Returns how many keys moved.
async fn migrate(
    shared: &Shared,
    node: &super::node::ControlConn,
    dst_node: &str,
    keys: &[Bytes],
    batch: usize,
) -> Result<u64, MigrationError> {
    let calls = keys.chunks(batch).map(|chunk| {
        let cmd = migrate_command(shared, dst_node, chunk);
        async move { (chunk.len() as u64, node.call_command(&cmd).await) }
    });
    let mut moved = 0;
    for (n, result) in futures::future::join_all(calls).await {
        match result {
            Ok(Frame::Simple(s)) if &s[..] == b"OK" => moved += n,
            Ok(Frame::Simple(_)) => {} // NOKEY: they expired or were pulled meanwhile
            Ok(other) => return Err(refused!("MIGRATE answered {other:?}")),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(moved)
}

/// The short switch: hold the slots, let the destination serve them to everyone, redirect.
async fn switch(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<Duration, MigrationError> {
    let meta = &task.meta;
    // A proxy shutting down starts no switch; one under way ends before it exits.
    let Some(_switching) = shared.begin_switch() else { return std::future::pending().await };
    task.set_phase(Phase::Switching);
    let t0 = Instant::now();
    shared.set_override(&meta.id, Some(Override { slots: meta.slots.clone(), kind: OverrideKind::Hold })).await;
    let budget = shared.opts.switch_pause();
    let epoch = meta.epoch.to_string();
    let args = ["TMPSWITCH", meta.id.as_str(), epoch.as_str(), "0", &budget.as_millis().to_string()];
    let result = super::call_destination(shared, meta, &args, budget).await.map(|_| ());
    match result {
        Ok(()) => {
            let to = Override { slots: meta.slots.clone(), kind: OverrideKind::MovedTo(meta.dst_proxy.clone()) };
            shared.set_override(&meta.id, Some(to)).await;
            Ok(t0.elapsed())
        }
        Err(e) => {
            // Whether the destination switched or not, pulling keys and forwarding stays
            // right: release the hold and try again.
            shared.set_override(&meta.id, None).await;
            Err(e)
        }
    }
}

/// The destination of a keys-mode migration has nothing to do but wait for the switch (the
/// source forwards commands, `MIGRATE` writes the keys) and then serve the slots.
pub async fn run_destination(shared: Arc<Shared>, task: Arc<Task>) {
    task.set_phase(Phase::Starting);
    if task.wait_untagged().await == Stage::Committed {
        task.set_phase(Phase::Committed);
        super::gc::clean(&shared, &task).await;
    } else if task.phase() < Phase::Switched {
        task.set_phase(Phase::Aborted);
    }
}

/// `TmpSwitch` on a keys-mode destination: serve the slots to every client from now on.
pub async fn tmp_switch(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    let _one_at_a_time = task.switch_lock.lock().await;
    // Switched already (also when cleaned up and done since: the source may ask again after
    // its earlier request timed out on its side but was carried out here).
    if (Phase::Switched..=Phase::Done).contains(&task.phase()) {
        return Ok(());
    }
    if task.phase().is_final() {
        return Err(refused!("migration {} ended here ({:?})", task.meta.id, task.phase()));
    }
    shared
        .set_override(&task.meta.id, Some(Override { slots: task.meta.slots.clone(), kind: OverrideKind::Here }))
        .await;
    task.set_phase(Phase::Switched);
    tracing::info!(migration = %task.meta.id, "switched: serving the slots");
    Ok(())
}
