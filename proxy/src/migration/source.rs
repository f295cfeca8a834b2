//! The source side of a replication-mode migration.
//!
//! 1. Find out where we stand: the slots start held (apply_config holds them) until we know
//!    whether the destination was already promoted by an earlier switch (a restart).
//! 2. `starting` → `following`: wait until the destination's node is our node's replica,
//!    online, and its lag is small.
//! 3. `switching`: hold the moving slots (their commands wait), wait until every command on
//!    them already sent to our node is answered, read our node's replication offset, ask the
//!    destination proxy to take over at that offset (`UMCTL TMPSWITCH`). Bounded by the
//!    write pause; past it, the slots are released to our node and the switch tried again.
//! 4. `switched`: the slots are redirected to the destination (held commands are forwarded
//!    there). After the broker's commit, the garbage collector deletes our copies (`cleaning`),
//!    then `done`.

use super::node::{resolve, NodeConn, NodeError, ReplInfo};
use super::{Phase, Task};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use sluice_common::resp::{Command, Frame, Limits};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the replica's progress is looked at.
const POLL: Duration = Duration::from_millis(50);
/// How long the source may take to learn whether an earlier switch happened.
const STANDING_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(shared: Arc<Shared>, task: Arc<Task>) {
    if let Err(e) = drive(&shared, &task).await {
        // Whatever happened, the slots must not stay held.
        if !matches!(task.phase(), Phase::Switched | Phase::Cleaning | Phase::Done) {
            shared.set_override(&task.meta.id, None).await;
        }
        task.fail(e);
    }
}

async fn drive(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), String> {
    let meta = &task.meta;
    let node = connect(shared, &shared.opts.node).await?;
    let dst_addrs = resolve(&meta.dst_node).await;
    // One replica, no reason to wait for more before streaming the snapshot (Redis waits
    // 5 s by default for others to join a diskless sync).
    if let Err(e) = node.call(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]).await {
        tracing::debug!(error = %e, "could not shorten the diskless sync delay");
    }

    task.set_phase(Phase::Starting);
    let started = Instant::now();
    loop {
        match dst_promoted(shared, meta, &node).await {
            Ok(true) => {
                tracing::info!(migration = %meta.id, "the destination was promoted before: the switch had completed");
                shared.set_override(&meta.id, Some(moved_to(task))).await;
                task.set_phase(Phase::Switched);
                return super::after_switch(shared, task).await;
            }
            Ok(false) => {
                shared.set_override(&meta.id, None).await;
                break;
            }
            Err(e) if started.elapsed() < STANDING_TIMEOUT => {
                task.note_error(e);
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(format!("cannot tell whether the destination node was promoted: {e}")),
        }
    }

    let deadline = Instant::now() + Duration::from_secs(shared.opts.migration_timeout_secs);
    let min_follow = Duration::from_millis(shared.opts.min_follow_ms);
    let mut following_since: Option<Instant> = None;
    let mut attempts = 0;
    loop {
        if task.is_gone() {
            shared.set_override(&meta.id, None).await;
            task.set_phase(Phase::Aborted);
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no switch within {} s (--migration-timeout-secs)",
                shared.opts.migration_timeout_secs
            ));
        }
        let info = node.replication().await.map_err(|e| e.to_string())?;
        let Some(replica) = info.replica_at(&dst_addrs) else {
            following_since = None;
            task.set_progress("replica", "not connected yet");
            tokio::time::sleep(POLL).await;
            continue;
        };
        if replica.state != "online" {
            following_since = None;
            task.set_progress("replica", replica.state.clone());
            tokio::time::sleep(POLL).await;
            continue;
        }
        let lag = info.master_repl_offset.saturating_sub(replica.offset);
        task.set_phase(Phase::Following);
        task.set_progress("replica", "online");
        task.set_progress("lag_bytes", lag);
        let since = *following_since.get_or_insert_with(Instant::now);
        if lag > shared.opts.switch_max_lag_bytes || since.elapsed() < min_follow {
            tokio::time::sleep(POLL).await;
            continue;
        }
        super::carry_scripts(shared, task).await;
        match switch(shared, task, &node).await {
            Ok(pause) => {
                task.set_progress("pause_ms", pause.as_secs_f64() * 1000.0);
                task.set_phase(Phase::Switched);
                return super::after_switch(shared, task).await;
            }
            Err(e) => {
                attempts += 1;
                task.set_progress("switch_attempts", attempts);
                task.note_error(format!("switch attempt {attempts} abandoned: {e}"));
                tracing::warn!(migration = %meta.id, attempt = attempts, error = %e, "switch abandoned; the slots stay here");
                if attempts >= shared.opts.switch_attempts {
                    return Err(format!("{attempts} switch attempts failed; last: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(200) * attempts).await;
            }
        }
    }
}

fn moved_to(task: &Task) -> Override {
    Override { slots: task.meta.slots.clone(), kind: OverrideKind::MovedTo(task.meta.dst_proxy.clone()) }
}

/// One queue-and-switch attempt; the pause it caused on success.
async fn switch(shared: &Arc<Shared>, task: &Arc<Task>, node: &NodeConn) -> Result<Duration, String> {
    let meta = &task.meta;
    task.set_phase(Phase::Switching);
    let t0 = Instant::now();
    let budget = shared.opts.switch_pause();
    shared.set_override(&meta.id, Some(Override { slots: meta.slots.clone(), kind: OverrideKind::Hold })).await;

    // Every command on a moving slot that reached our node before the hold must be answered
    // before the offset is read: then the offset covers all of them.
    if !wait_drained(shared, t0 + budget).await {
        shared.set_override(&meta.id, None).await;
        return Err(format!(
            "{} commands on the moving slots still in flight after {budget:?}",
            shared.inflight.load(Ordering::SeqCst)
        ));
    }
    let offset = node.replication().await.map_err(|e| e.to_string())?.master_repl_offset;
    let remaining = budget.saturating_sub(t0.elapsed()).max(Duration::from_millis(50));
    match tmp_switch(shared, meta, offset, remaining).await {
        Ok(()) => {
            shared.set_override(&meta.id, Some(moved_to(task))).await;
            Ok(t0.elapsed())
        }
        Err(e) => {
            // The answer may have been lost after the destination switched: its node tells.
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                match dst_promoted(shared, meta, node).await {
                    Ok(true) => {
                        shared.set_override(&meta.id, Some(moved_to(task))).await;
                        return Ok(t0.elapsed());
                    }
                    Ok(false) => {
                        shared.set_override(&meta.id, None).await;
                        return Err(e);
                    }
                    Err(check) if Instant::now() < until => {
                        task.note_error(format!("switch answer lost ({e}); checking the destination: {check}"));
                        tokio::time::sleep(POLL).await;
                    }
                    Err(check) => {
                        // Cannot tell: serving here could split the slots' writes in two,
                        // but holding forever stops the clients. Fail the migration.
                        shared.set_override(&meta.id, None).await;
                        return Err(format!("switch answer lost ({e}) and the destination cannot be checked: {check}"));
                    }
                }
            }
        }
    }
}

/// Waits until no command on a migrating slot is in flight; false at the deadline.
async fn wait_drained(shared: &Shared, deadline: Instant) -> bool {
    loop {
        let notified = shared.inflight_zero.notified();
        if shared.inflight.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(5)), notified).await;
    }
}

/// Asks the destination proxy to take the slots over once its node has processed `offset`.
async fn tmp_switch(
    shared: &Shared,
    meta: &sluice_common::model::MigrationMeta,
    offset: u64,
    timeout: Duration,
) -> Result<(), String> {
    let pool = shared.peer_pool(&meta.dst_proxy);
    let cmd = Command::from_strs(&[
        "UMCTL",
        "TMPSWITCH",
        meta.id.as_str(),
        &meta.epoch.to_string(),
        &offset.to_string(),
        &timeout.as_millis().to_string(),
    ]);
    let call = async {
        let backend = pool.get(Default::default(), 0).await.map_err(|e| e.to_string())?;
        let raw = backend.call(&cmd).await.map_err(|e| e.to_string())?;
        match sluice_common::resp::parse_frame(&raw, &Limits::SERVER) {
            Ok((Frame::Simple(_), _)) => Ok(()),
            Ok((f, _)) => Err(format!(
                "the destination refused: {}",
                f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_else(|| format!("{f:?}"))
            )),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(timeout + Duration::from_millis(100), call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {} within {timeout:?}", meta.dst_proxy)))
}

/// Whether the destination's node was promoted from being our node's replica: it is a master
/// whose previous replication id is our node's. That survives a restart of either proxy.
async fn dst_promoted(
    shared: &Shared,
    meta: &sluice_common::model::MigrationMeta,
    node: &NodeConn,
) -> Result<bool, String> {
    let ours = node.replication().await.map_err(|e| e.to_string())?;
    if ours.replica_at(&resolve(&meta.dst_node).await).is_some() {
        return Ok(false);
    }
    let dst = connect(shared, &meta.dst_node).await?;
    let theirs: ReplInfo = dst.replication().await.map_err(|e| e.to_string())?;
    Ok(theirs.is_master() && !ours.master_replid.is_empty() && theirs.master_replid2 == ours.master_replid)
}

/// A control connection to a node (ours or a peer's), with the node password.
pub async fn connect(shared: &Shared, addr: &str) -> Result<NodeConn, String> {
    NodeConn::connect(addr, shared.opts.node_password.clone(), shared.opts.connect_timeout())
        .await
        .map_err(|e: NodeError| e.to_string())
}
