//! The source side of a replication-mode migration. The source is the only one that ever
//! promotes the destination's node, and only once the broker has recorded `switching`
//! (`switch_allowed` in the config), after which nothing but the commit ends the migration.
//!
//! 1. Find out where we stand: the slots start held (apply_config holds them) until we know
//!    whether an earlier run of this task already promoted the destination (a restart). That
//!    can only be so once the switch is allowed; before, nothing was promoted.
//! 2. `starting` → `following`: wait until the destination's node is our node's replica,
//!    online, its lag small, and the destination proxy answers that it follows (`UMCTL READY`).
//! 3. `switching`: ask the broker for the switch (report `switching`), wait until it is
//!    allowed. Then each attempt: hold the moving slots (their commands wait), wait until every
//!    command on them already sent to our node is answered, read our node's replication
//!    offset, wait until the destination's node has processed it, promote that node
//!    (`REPLICAOF NO ONE`), tell the destination proxy to serve (`UMCTL TMPSWITCH`). An attempt
//!    that cannot reach the promotion within the write pause releases the slots to our node
//!    and is tried again later, without end: the switch was allowed, so the migration finishes.
//!    A stop asked for while switching *fences* the task (`fenced` in the config): it makes
//!    no further attempt and fails, which tells the broker (through the coordinator) that
//!    the destination's node was never promoted; the broker then ends the migration.
//! 4. `switched`: the slots are redirected to the destination (held commands are forwarded
//!    there). After the broker's commit, the garbage collector deletes our copies (`cleaning`),
//!    then `done`.

use super::node::{connect, resolve, ControlConn, ReplInfo};
use super::{Phase, Task};
use crate::migration::error::{refused, MigrationError};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use sluice_common::model::MigrationMeta;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the replica's progress is looked at.
const POLL: Duration = Duration::from_millis(50);
/// The longest wait between two switch attempts once the switch is allowed.
const MAX_RETRY_GAP: Duration = Duration::from_secs(3);

pub async fn run(shared: Arc<Shared>, task: Arc<Task>) {
    if let Err(e) = drive(&shared, &task).await {
        // `drive` ends with an error only before the switch was allowed or once fenced:
        // nothing was promoted, the slots stay here.
        shared.set_override(&task.meta.id, None).await;
        task.fail(e);
    }
}

/// A control connection to a node that is opened again after it broke (both replication
/// tasks keep one to their own node, the source one to the destination's too).
pub(super) struct RedialingConn<'a> {
    shared: &'a Shared,
    addr: String,
    conn: Option<ControlConn>,
}

impl<'a> RedialingConn<'a> {
    pub(super) fn new(shared: &'a Shared, addr: &str) -> RedialingConn<'a> {
        RedialingConn { shared, addr: addr.to_string(), conn: None }
    }

    pub(super) async fn get(&mut self) -> Result<&ControlConn, MigrationError> {
        if self.conn.as_ref().is_none_or(ControlConn::is_closed) {
            self.conn = Some(connect(self.shared, &self.addr).await?);
        }
        self.conn.as_ref().ok_or_else(|| refused!("no connection"))
    }

    /// Forgets the connection after an error, so the next call opens a new one.
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }

    /// `INFO replication` of the node; after an error the next call opens a new connection.
    pub(super) async fn replication(&mut self) -> Result<ReplInfo, MigrationError> {
        let info = match self.get().await {
            Ok(conn) => conn.replication().await.map_err(MigrationError::from),
            Err(e) => Err(e),
        };
        if info.is_err() {
            self.reset();
        }
        info
    }
}

async fn drive(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    let meta = &task.meta;
    let mut node = RedialingConn::new(shared, &shared.opts.node);
    let mut dst = RedialingConn::new(shared, &meta.dst_node);
    let dst_addrs = resolve(&meta.dst_node).await;
    task.set_phase(Phase::Starting);
    if task.switch_allowed() && promoted_before(task, &mut node, &mut dst).await {
        tracing::info!(migration = %meta.id, "the destination was promoted before: the switch had completed");
        return switched(shared, task).await;
    }
    shared.set_override(&meta.id, None).await;
    shorten_diskless_sync_delay(&mut node).await;

    let deadline = Instant::now() + Duration::from_secs(shared.opts.migration_timeout_secs);
    let mut following_since: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        if let Some(end) = ended(shared, task, deadline).await {
            return end;
        }
        if !follows_closely(shared, task, &mut node, &dst_addrs, &mut following_since).await {
            tokio::time::sleep(POLL).await;
            continue;
        }
        // The destination proxy must be there to serve once its node is promoted.
        if let Err(e) = umctl(shared, meta, &["READY"], shared.opts.switch_pause()).await {
            failures += 1;
            task.set_progress("switch_attempts", failures);
            task.note_error(format!("the destination is not ready to switch: {e}"));
            if !task.switch_allowed() && failures >= shared.opts.switch_attempts {
                return Err(refused!("the destination was not ready to switch {failures} times; last: {e}"));
            }
            tokio::time::sleep(retry_gap(failures)).await;
            continue;
        }
        if !task.switch_allowed() {
            // Ask the broker (through the coordinator) and wait for its word.
            task.set_phase(Phase::Switching);
            if !task.wait_switch_allowed(Duration::from_secs(1)).await {
                continue;
            }
            tracing::info!(migration = %meta.id, "the broker allows the switch");
        }
        task.set_phase(Phase::Switching);
        super::carry_scripts(shared, task).await;
        // The offset read at the switch covers commands on the moving slots counted in
        // flight; one routed before the migration was known is not counted: wait for those.
        super::keys_mode::wait_routed_before(shared, task).await;
        // A proxy shutting down starts no switch (it exits with the slots here); one under
        // way completes or releases before the proxy exits.
        let Some(switching) = shared.begin_switch() else { return std::future::pending().await };
        match switch(shared, task, &mut node, &mut dst).await {
            Ok(pause) => {
                task.set_progress("pause_ms", pause.as_secs_f64() * 1000.0);
                shared.set_override(&task.meta.id, Some(moved_to(task))).await;
                drop(switching);
                return switched(shared, task).await;
            }
            Err(e) => {
                failures += 1;
                task.set_progress("switch_attempts", failures);
                task.note_error(format!("switch attempt {failures} abandoned: {e}"));
                tracing::warn!(migration = %meta.id, attempt = failures, error = %e, "switch abandoned; the slots stay here");
                tokio::time::sleep(retry_gap(failures)).await;
            }
        }
    }
}

/// After a restart once the switch was allowed: whether an earlier run of this task promoted
/// the destination. Until we know, the slots stay held (the destination may be serving
/// them), however long that takes.
async fn promoted_before(task: &Task, node: &mut RedialingConn<'_>, dst: &mut RedialingConn<'_>) -> bool {
    loop {
        match dst_promoted(node, dst).await {
            Ok(promoted) => return promoted,
            Err(e) => {
                // Fenced or not: until we know, we cannot say we promoted nothing.
                task.note_error(format!("cannot tell yet whether the destination was promoted: {e}"));
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// One replica, no reason to wait for more before streaming the snapshot (Redis waits 5 s
/// by default for others to join a diskless sync).
async fn shorten_diskless_sync_delay(node: &mut RedialingConn<'_>) {
    if let Ok(n) = node.get().await {
        if let Err(e) = n.call(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]).await {
            tracing::debug!(error = %e, "could not shorten the diskless sync delay");
        }
    }
}

/// `Some` when the task ends before a switch: the migration is gone (aborted before the
/// switch was allowed, or after a fence we confirmed), fenced, or out of time.
async fn ended(shared: &Shared, task: &Task, deadline: Instant) -> Option<Result<(), MigrationError>> {
    let meta = &task.meta;
    if task.is_gone() {
        shared.set_override(&meta.id, None).await;
        task.set_phase(Phase::Aborted);
        return Some(Ok(()));
    }
    if task.fenced() {
        // Every attempt so far ended with the destination's node certainly not promoted
        // (one that promoted returned `switched`), and none follows: failing the task is
        // the confirmation the broker waits for. The slots stay here.
        return Some(Err(refused!(
            "stopped by the broker while switching (fenced): {} was never promoted; the slots stay here",
            meta.dst_node
        )));
    }
    if !task.switch_allowed() && Instant::now() > deadline {
        return Some(Err(refused!(
            "no switch within {} s (--migration-timeout-secs)",
            shared.opts.migration_timeout_secs
        )));
    }
    None
}

/// Whether the destination's node follows ours closely enough to try a switch: an online
/// replica whose lag is at most `--switch-max-lag-bytes`, for `--min-follow-ms` in a row
/// (`following_since` counts that). Reports what it sees in the task's progress.
async fn follows_closely(
    shared: &Shared,
    task: &Task,
    node: &mut RedialingConn<'_>,
    dst_addrs: &[std::net::SocketAddr],
    following_since: &mut Option<Instant>,
) -> bool {
    let info = match node.replication().await {
        Ok(info) => info,
        Err(e) => {
            task.note_error(format!("cannot read our node's replication: {e}"));
            return false;
        }
    };
    let Some(replica) = info.replica_at(dst_addrs) else {
        *following_since = None;
        task.set_progress("replica", "not connected yet");
        return false;
    };
    if replica.state != "online" {
        *following_since = None;
        task.set_progress("replica", replica.state.clone());
        return false;
    }
    let lag = info.master_repl_offset.saturating_sub(replica.offset);
    task.set_phase(Phase::Following);
    task.set_progress("replica", "online");
    task.set_progress("lag_bytes", lag);
    let since = *following_since.get_or_insert_with(Instant::now);
    lag <= shared.opts.switch_max_lag_bytes && since.elapsed() >= Duration::from_millis(shared.opts.min_follow_ms)
}

fn retry_gap(failures: u32) -> Duration {
    (Duration::from_millis(200) * failures).min(MAX_RETRY_GAP)
}

/// The destination's node is promoted: redirect the slots there for good.
async fn switched(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    shared.set_override(&task.meta.id, Some(moved_to(task))).await;
    task.set_phase(Phase::Switched);
    super::after_switch(shared, task).await
}

fn moved_to(task: &Task) -> Override {
    Override { slots: task.meta.slots.clone(), kind: OverrideKind::MovedTo(task.meta.dst_proxy.clone()) }
}

/// One queue-and-switch attempt; the pause it caused once the destination's node is
/// promoted. `Err`: it was not promoted and the slots are served here again.
async fn switch(
    shared: &Arc<Shared>,
    task: &Arc<Task>,
    node: &mut RedialingConn<'_>,
    dst: &mut RedialingConn<'_>,
) -> Result<Duration, MigrationError> {
    let meta = &task.meta;
    let t0 = Instant::now();
    let budget = shared.opts.switch_pause();
    shared.set_override(&meta.id, Some(Override { slots: meta.slots.clone(), kind: OverrideKind::Hold })).await;
    match promote_destination(shared, task, node, dst, t0 + budget).await {
        Ok(()) => {
            // Best effort: the destination also finds its node promoted by itself.
            let left = budget.saturating_sub(t0.elapsed()).max(Duration::from_millis(100));
            if let Err(e) = umctl(shared, meta, &["TMPSWITCH", "0"], left).await {
                task.note_error(format!(
                    "the destination did not confirm the switch ({e}); it serves once it sees its node promoted"
                ));
            }
            Ok(t0.elapsed())
        }
        Err(e) => {
            shared.set_override(&meta.id, None).await;
            Err(e)
        }
    }
}

/// Drains the moving slots, then promotes the destination's node once it has processed our
/// node's offset. `Ok` once it is promoted; `Err` when it certainly is not.
async fn promote_destination(
    shared: &Shared,
    task: &Task,
    node: &mut RedialingConn<'_>,
    dst: &mut RedialingConn<'_>,
    deadline: Instant,
) -> Result<(), MigrationError> {
    // Every command on a moving slot that reached our node before the hold must be answered
    // before the offset is read: then the offset covers all of them.
    if !shared.wait_drained(deadline).await {
        return Err(refused!(
            "{} commands on the moving slots still in flight after the write pause",
            shared.inflight.load(Ordering::SeqCst)
        ));
    }
    let offset = node.replication().await?.master_repl_offset;
    // A fresh connection for the promotion, whose id lets us close it should its answer
    // be lost.
    dst.reset();
    let conn = dst.get().await?;
    let conn_id = conn.client_id().await?;
    loop {
        let info = conn.replication().await?;
        if !info.is_synced_replica() {
            return Err(refused!("the destination's node is not a synced replica any more"));
        }
        if info.master_repl_offset >= offset {
            break;
        }
        if Instant::now() >= deadline {
            return Err(refused!(
                "the destination's node processed offset {} of {offset} within the write pause",
                info.master_repl_offset
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let promoted = conn.promote().await;
    let Err(e) = promoted else {
        tracing::info!(migration = %task.meta.id, offset, "promoted the destination's node");
        return Ok(());
    };
    // The answer is lost or the node refused: close that connection (so the command cannot
    // still run later), then look. Until we can tell, the slots stay held.
    dst.reset();
    loop {
        let looked = async {
            let conn = dst.get().await?;
            conn.kill_client(conn_id).await?;
            let theirs = conn.replication().await?;
            let ours = node.replication().await?;
            Ok::<_, MigrationError>(theirs.promoted_from(&ours.master_replid))
        }
        .await;
        match looked {
            Ok(true) => return Ok(()),
            Ok(false) => return Err(refused!("promoting the destination's node failed: {e}")),
            Err(check) => {
                dst.reset();
                task.note_error(format!("promoting the destination's node: {e}; cannot look yet: {check}"));
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// `UMCTL <sub> <id> <epoch> <rest…>` to the destination proxy: `READY` (does it follow?)
/// or `TMPSWITCH` (its node is promoted: serve).
async fn umctl(shared: &Shared, meta: &MigrationMeta, args: &[&str], timeout: Duration) -> Result<(), MigrationError> {
    let epoch = meta.epoch.to_string();
    let mut parts = vec![args[0], meta.id.as_str(), epoch.as_str()];
    parts.extend_from_slice(&args[1..]);
    super::call_destination(shared, meta, &parts, timeout).await.map(|_| ())
}

/// Whether the destination's node was promoted from being our node's replica: it is a master
/// whose previous replication id is our node's. Asked only once the switch is allowed: the
/// destination followed us in this migration then, and only we promote it.
async fn dst_promoted(node: &mut RedialingConn<'_>, dst: &mut RedialingConn<'_>) -> Result<bool, MigrationError> {
    let ours = node.replication().await?;
    let theirs = dst.replication().await?;
    Ok(theirs.promoted_from(&ours.master_replid))
}
