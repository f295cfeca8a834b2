//! Slot-filtered replication (`mode: filtered`): slots move at replication speed into a node
//! that holds data, which Redis 7 cannot do by itself (Redis 8.4's `CLUSTER MIGRATION` and
//! Valkey 9's `CLUSTER MIGRATESLOTS` do it inside the server).
//!
//! The source proxy replicates its own node ([`sluice_rdb::ReplicaLink`]: `PSYNC ? -1`),
//! restores the snapshot's keys of the moving slots into the destination's node
//! (`RESTORE … ABSTTL REPLACE`, [`apply`]), then applies the replication stream's commands on
//! those slots ([`filter`]), in order, for as long as the migration runs. The link acks only
//! the snapshot's offset, so it never counts for a client's `WAIT`.
//!
//! The switch is replication mode's: once the destination is close behind, the source asks
//! the broker (`switching`) and waits for `switch_allowed`; then it holds the moving slots,
//! waits for the commands on them already sent to its node, reads its node's offset, waits
//! until the destination has applied the stream up to it, and tells the destination to
//! serve (`UMCTL TMPSWITCH <id> <epoch> <attempt>`), then redirects. The destination serves
//! only on that word. An attempt whose answer is lost is settled with `UMCTL SWITCHED <id>
//! <epoch> <attempt>`, which also refuses that attempt (and any older) for good, so a late
//! `TMPSWITCH` can never switch after the source took the slots back.
//!
//! Every copy starts by deleting whatever the destination's node holds in the moving slots
//! (it does not serve them; a failed earlier copy may have left keys). A copy that breaks
//! (the link, the destination, a command that cannot be filtered) is started again; before
//! the switch is allowed, after `--switch-attempts` failures the migration fails, and the
//! destination deletes what was restored. After the commit the source's garbage collector
//! deletes its copies of the moved slots, as in replication mode.

pub mod apply;
pub mod filter;

use super::node::connect;
use super::{Phase, Stage, Task};
use crate::migration::error::{refused, MigrationError};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use apply::Applier;
use bytes::Bytes;
use filter::StreamFilter;
use sluice_common::model::{ClusterView, NodeView};
use sluice_common::resp::Frame;
use sluice_common::slot::{key_slot, SLOT_COUNT};
use sluice_rdb::{Event, LinkOptions, ReplicaLink};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const POLL: Duration = Duration::from_millis(50);
/// The longest wait between two copies or switch attempts.
const MAX_RETRY_GAP: Duration = Duration::from_secs(3);

/// Which of the 16384 slots move.
fn moving(task: &Task) -> Box<[bool]> {
    let mut moving = vec![false; usize::from(SLOT_COUNT)];
    for r in &task.meta.slots {
        for s in r.slots().filter(|&s| s < SLOT_COUNT) {
            moving[usize::from(s)] = true;
        }
    }
    moving.into_boxed_slice()
}

/// A switch attempt's number: the time in milliseconds, so it grows across restarts of the
/// source too (the destination refuses attempts at or below the last one it was asked about).
fn attempt_number() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Why a copy ended.
enum Stop {
    /// Retry with a fresh copy (after `note`).
    Retry(MigrationError),
    /// The migration left the config, or the source was fenced.
    Ended,
}

impl From<MigrationError> for Stop {
    fn from(e: MigrationError) -> Stop {
        Stop::Retry(e)
    }
}

pub async fn run_source(shared: Arc<Shared>, task: Arc<Task>) {
    let ended = match drive(&shared, &task).await {
        Err(e) => {
            // Only before the switch was allowed, or once fenced: the destination never served.
            shared.set_override(&task.meta.id, None).await;
            task.fail(e);
            true
        }
        Ok(()) => task.phase() == Phase::Aborted,
    };
    if ended {
        // The destination deletes its copy itself, but it may be down now and back after the
        // migration left its config: delete it from here too (it never served those slots).
        delete_copy(&shared, &task).await;
    }
}

/// Deletes the copy of the moving slots from the destination's shard (its master's node now,
/// see [`destination_shard`]), retrying a while; logs the outcome.
async fn delete_copy(shared: &Shared, task: &Task) {
    let moving = moving(task);
    for attempt in 1..=20u32 {
        let node = {
            let routes = shared.routes_full();
            let shard = routes.cluster().and_then(|c| destination_shard(c, task));
            shard.map_or_else(|| task.meta.dst_node.clone(), |n| n.node.clone())
        };
        let node = node.as_str();
        match clear_slots(shared, task, node, || not_imported_again(shared, task, &moving)).await {
            Ok(n) => {
                tracing::info!(migration = %task.meta.id, node, keys = n, "filtered import ended before the switch: its copy deleted");
                // Only the source knows that no copy of its runs any more (the destination
                // deletes too, but a source that has not heard of the end may still copy).
                if task.role == super::Role::Source {
                    super::report_copy_deleted(shared, task).await;
                }
                return;
            }
            Err(e) => {
                task.note_error(format!("cannot delete the copy at {node} yet: {e}"));
                tokio::time::sleep((Duration::from_millis(250) * attempt).min(MAX_RETRY_GAP)).await;
            }
        }
    }
}

/// The `moving` slots still ours to empty at the destination's node: all but those another
/// migration imports into that same node now (a streamed import empties them itself before
/// it copies; a keys-mode import's moved keys live there). Imports into *other* nodes do not
/// count: skipping for them left this copy on a node that never serves those slots (found by
/// the chaos test). Read afresh before each deletion, so an import that starts meanwhile is
/// not cut into.
fn not_imported_again(shared: &Shared, task: &Task, moving: &[bool]) -> Box<[bool]> {
    let mut still: Box<[bool]> = moving.into();
    let routes = shared.routes_full();
    let Some(shard) = routes.cluster().and_then(|c| destination_shard(c, task)) else { return still };
    let imports = shard.slots.iter().filter(|a| {
        a.tag == Some(sluice_common::model::SlotTag::Importing) && a.migration.as_deref() != Some(task.meta.id.as_str())
    });
    for a in imports {
        for s in a.range().slots().filter(|&s| s < SLOT_COUNT) {
            still[usize::from(s)] = false;
        }
    }
    still
}

/// The destination's shard in the cluster now: the node whose proxy is the destination, or
/// has it as a replica. After a failover the copy is on the promoted replica's node (it
/// replicated it), which the shard names as its master; the destination's own node, if back,
/// is a replica and takes no deletion. `None`: the destination is in no shard (free).
fn destination_shard<'a>(cluster: &'a ClusterView, task: &Task) -> Option<&'a NodeView> {
    let dst = task.meta.dst_proxy.as_str();
    cluster.nodes.iter().find(|n| n.proxy == dst || n.replicas.iter().any(|r| r.proxy == dst))
}

async fn drive(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    let meta = &task.meta;
    task.set_phase(Phase::Starting);
    if task.switch_allowed() {
        // An earlier run may have switched: until the destination says, the slots stay held.
        loop {
            match ask_switched(shared, task, attempt_number()).await {
                Ok(true) => return switched(shared, task).await,
                Ok(false) => break,
                Err(e) => {
                    task.note_error(format!("cannot tell yet whether the destination serves the slots: {e}"));
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
    shared.set_override(&meta.id, None).await;
    let deadline = Instant::now() + Duration::from_secs(shared.opts.migration_timeout_secs);
    let mut failures = 0u32;
    loop {
        if task.is_gone() {
            task.set_phase(Phase::Aborted);
            return Ok(());
        }
        if task.fenced() {
            return Err(refused!(
                "stopped by the broker while switching (fenced): {} never served the slots; they stay here",
                meta.dst_proxy
            ));
        }
        if !task.switch_allowed() && Instant::now() > deadline {
            return Err(refused!(
                "no switch within {} s (--migration-timeout-secs)",
                shared.opts.migration_timeout_secs
            ));
        }
        match copy_and_switch(shared, task).await {
            Ok(()) => return switched(shared, task).await,
            Err(Stop::Ended) => continue,
            Err(Stop::Retry(e)) => {
                failures += 1;
                task.set_progress("copies", failures + 1);
                task.note_error(format!("copy {failures} abandoned: {e}"));
                tracing::warn!(migration = %meta.id, attempt = failures, error = %e, "filtered copy abandoned");
                if !task.switch_allowed() && failures >= shared.opts.switch_attempts {
                    return Err(refused!("the copy failed {failures} times; last: {e}"));
                }
                tokio::time::sleep((Duration::from_millis(200) * failures).min(MAX_RETRY_GAP)).await;
            }
        }
    }
}

/// The destination serves the slots: redirect them there for good.
async fn switched(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    let to = Override { slots: task.meta.slots.clone(), kind: OverrideKind::MovedTo(task.meta.dst_proxy.clone()) };
    shared.set_override(&task.meta.id, Some(to)).await;
    task.set_phase(Phase::Switched);
    super::after_switch(shared, task).await
}

/// One copy: empty the moving slots at the destination, restore the snapshot, follow the
/// stream, and switch when allowed. `Ok`: the destination serves the slots.
async fn copy_and_switch(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), Stop> {
    let meta = &task.meta;
    let moving = moving(task);
    // One replica, no reason to wait for more before streaming the snapshot (Redis waits 5 s
    // by default for others to join a diskless sync).
    if let Ok(n) = connect(shared, &shared.opts.node).await {
        if let Err(e) = n.call(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]).await {
            tracing::debug!(error = %e, "could not shorten the diskless sync delay");
        }
    }
    let port = shared.opts.announce().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let options = LinkOptions { ack_received: false, user: shared.opts.node_user.clone(), ..LinkOptions::default() };
    // Empty the moving slots at the destination (a copy of an earlier attempt may be there)
    // while our node forks for the snapshot: the snapshot waits in the socket meanwhile.
    let (cleared, link) = tokio::join!(
        clear_slots(shared, task, &meta.dst_node, || moving.clone()),
        ReplicaLink::connect_with(&shared.opts.node, shared.opts.node_password.as_deref(), port, options)
    );
    task.set_progress("cleared_at_destination", cleared?);
    let mut link = link.map_err(|e| refused!("cannot replicate our node: {e}"))?;
    let mut applier = Applier::connect(shared, &meta.dst_node, &copy_client_name(task), link.initial_offset()).await?;
    // The snapshot.
    let started = Instant::now();
    loop {
        if task.is_gone() || task.fenced() {
            return Err(Stop::Ended);
        }
        let event = link.next_event().await.map_err(|e| refused!("reading our node's snapshot: {e}"))?;
        match event {
            Some(Event::Entry(e)) => {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                if e.db != 0 || !moving[usize::from(key_slot(&e.key))] || e.expire_at_ms.is_some_and(|t| t <= now_ms) {
                    continue;
                }
                let version = link.rdb_version().unwrap_or(sluice_rdb::MAX_RDB_VERSION);
                applier.restore(&e, version).await?;
                if applier.restored.is_multiple_of(10_000) {
                    task.set_progress("keys_restored", applier.restored);
                }
            }
            Some(Event::Eof { .. }) | None => break,
            Some(_) => {}
        }
    }
    applier.settle_all().await?;
    task.set_progress("keys_restored", applier.restored);
    task.set_progress("snapshot_ms", started.elapsed().as_millis() as u64);
    tracing::info!(migration = %meta.id, keys = applier.restored, "filtered copy: snapshot restored at the destination");
    let mut follow = Follow { link, applier, filter: StreamFilter::new(moving) };
    follow_and_switch(shared, task, &mut follow).await
}

/// The stream being followed into the destination.
struct Follow {
    link: ReplicaLink,
    applier: Applier,
    filter: StreamFilter,
}

impl Follow {
    /// Applies one command of the stream. Never cancelled half-way: a command taken from the
    /// link is always handed to the applier (only the wait for the next one is bounded).
    async fn apply(&mut self, cmd: sluice_rdb::ReplCommand) -> Result<(), MigrationError> {
        match self.filter.feed(&cmd.args, &cmd.raw)? {
            Some(unit) => self.applier.unit(unit.data, unit.commands, cmd.offset).await,
            None => {
                self.applier.skip(cmd.offset);
                Ok(())
            }
        }
    }

    /// The next command of the stream, if one comes before `until`.
    async fn next_before(
        &mut self,
        until: tokio::time::Instant,
    ) -> Result<Option<sluice_rdb::ReplCommand>, MigrationError> {
        match tokio::time::timeout_at(until, self.link.next_command()).await {
            Ok(cmd) => cmd.map(Some).map_err(|e| refused!("our node's replication stream: {e}")),
            Err(_) => Ok(None),
        }
    }

    /// Applies the stream for up to `wait` (less if nothing comes).
    async fn run_for(&mut self, wait: Duration) -> Result<(), MigrationError> {
        let until = tokio::time::Instant::now() + wait;
        while let Some(cmd) = self.next_before(until).await? {
            self.apply(cmd).await?;
        }
        self.applier.settle_ready()
    }

    /// Applies the stream until the destination has applied `offset`; `false` at `deadline`.
    async fn catch_up(&mut self, offset: u64, deadline: Instant) -> Result<bool, MigrationError> {
        let until = tokio::time::Instant::from_std(deadline);
        while self.applier.applied() < offset {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if self.link.offset() < offset {
                match self.next_before(until).await? {
                    Some(cmd) => self.apply(cmd).await?,
                    None => return Ok(false),
                }
            } else {
                match tokio::time::timeout_at(until, self.applier.settle_one()).await {
                    Ok(settled) => settled?,
                    Err(_) => return Ok(false),
                }
            }
        }
        Ok(true)
    }
}

async fn follow_and_switch(shared: &Arc<Shared>, task: &Arc<Task>, follow: &mut Follow) -> Result<(), Stop> {
    let mut node = super::source::RedialingConn::new(shared, &shared.opts.node);
    let min_follow = Duration::from_millis(shared.opts.min_follow_ms);
    let following_since = Instant::now();
    let mut attempts = 0u32;
    let mut waited_routed = false;
    task.set_phase(Phase::Following);
    loop {
        follow.run_for(POLL).await?;
        if task.is_gone() || task.fenced() {
            return Err(Stop::Ended);
        }
        let ours = node.replication().await.map_err(|e| refused!("cannot read our node's replication: {e}"))?;
        let lag = ours.master_repl_offset.saturating_sub(follow.applier.applied());
        task.set_progress("lag_bytes", lag);
        task.set_progress("stream_units", follow.applier.units);
        if lag > shared.opts.switch_max_lag_bytes || following_since.elapsed() < min_follow {
            continue;
        }
        if !task.switch_allowed() {
            // Ask the broker (through the coordinator); keep applying meanwhile.
            task.set_phase(Phase::Switching);
            continue;
        }
        task.set_phase(Phase::Switching);
        if !waited_routed {
            super::keys_mode::wait_routed_before(shared, task).await;
            waited_routed = true;
        }
        super::carry_scripts(shared, task).await;
        match switch(shared, task, &mut node, follow).await? {
            true => return Ok(()),
            false => {
                attempts += 1;
                task.set_progress("switch_attempts", attempts);
                let gap = (Duration::from_millis(200) * attempts).min(MAX_RETRY_GAP);
                follow.run_for(gap).await?;
            }
        }
    }
}

/// One switch attempt: `true` once the destination serves the slots; `false` when it
/// certainly does not (the slots are served here again).
async fn switch(
    shared: &Arc<Shared>,
    task: &Arc<Task>,
    node: &mut super::source::RedialingConn<'_>,
    follow: &mut Follow,
) -> Result<bool, MigrationError> {
    let meta = &task.meta;
    // A proxy shutting down starts no switch; one under way ends before it exits.
    let Some(_switching) = shared.begin_switch() else { return std::future::pending().await };
    let t0 = Instant::now();
    let deadline = t0 + shared.opts.switch_pause();
    shared.set_override(&meta.id, Some(Override { slots: meta.slots.clone(), kind: OverrideKind::Hold })).await;
    let release = |why: String| async move {
        shared.set_override(&meta.id, None).await;
        task.note_error(why);
        Ok(false)
    };
    if !shared.wait_drained(deadline).await {
        return release("commands on the moving slots still in flight after the write pause".into()).await;
    }
    let offset = node.replication().await?.master_repl_offset;
    if !follow.catch_up(offset, deadline).await? {
        return release(format!(
            "the destination applied offset {} of {offset} within the write pause",
            follow.applier.applied()
        ))
        .await;
    }
    let attempt = attempt_number();
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let epoch = meta.epoch.to_string();
    let told =
        super::call_destination(shared, meta, &["TMPSWITCH", &meta.id, &epoch, &attempt.to_string()], left).await;
    let told = match told {
        Ok(_) => {
            task.set_progress("pause_ms", t0.elapsed().as_secs_f64() * 1000.0);
            tracing::info!(migration = %meta.id, offset, "filtered switch: the destination serves the slots");
            return Ok(true);
        }
        // No connection to the destination: nothing was sent, so nothing can switch late.
        Err(e) if e.is_unreachable() => {
            return release(format!("the destination proxy cannot be reached: {e}")).await;
        }
        Err(e) => e,
    };
    // Lost or refused: settle it. Asking also refuses this attempt for good at the
    // destination, so a TMPSWITCH still on its way cannot switch later.
    loop {
        match ask_switched(shared, task, attempt).await {
            Ok(true) => return Ok(true),
            Ok(false) => {
                return release(format!("the destination did not take the switch ({told})")).await;
            }
            Err(e) => {
                task.note_error(format!("cannot tell whether the destination switched: {e}"));
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// `UMCTL SWITCHED <id> <epoch> <attempt>` at the destination: whether it serves the slots;
/// when not, it refuses `attempt` and every earlier one from now on.
async fn ask_switched(shared: &Shared, task: &Task, attempt: u64) -> Result<bool, MigrationError> {
    let meta = &task.meta;
    let epoch = meta.epoch.to_string();
    let args = ["SWITCHED", meta.id.as_str(), epoch.as_str(), &attempt.to_string()];
    match super::call_destination(shared, meta, &args, Duration::from_secs(2)).await? {
        Frame::Integer(n) => Ok(n == 1),
        other => Err(refused!("UMCTL SWITCHED answered {other:?}")),
    }
}

/// The name of the connections that restore a copy of `task` at its destination's node.
fn copy_client_name(task: &Task) -> String {
    format!("sluice-copy-{}", task.meta.id)
}

/// Deletes every key of the slots `doomed` answers from the node at `addr` (a destination
/// that does not serve them); `doomed` is asked again before each deletion. Answers how many.
/// First the connections that restore this migration's copies there are cut off: a `RESTORE`
/// already written (still in a socket, or queued by a copy given up) would otherwise land
/// after the scan passed its key.
async fn clear_slots(
    shared: &Shared,
    task: &Task,
    addr: &str,
    doomed: impl Fn() -> Box<[bool]>,
) -> Result<u64, MigrationError> {
    let node = connect(shared, addr).await?;
    node.kill_clients_named(&copy_client_name(task)).await?;
    let count = shared.opts.keys_scan_count.max(1).to_string();
    let mut cursor = "0".to_string();
    let mut deleted = 0u64;
    loop {
        let (next, keys) = node.scan(&cursor, &count).await?;
        if !keys.is_empty() {
            let slots = doomed();
            let doomed: Vec<Bytes> = keys.into_iter().filter(|k| slots[usize::from(key_slot(k))]).collect();
            if !doomed.is_empty() {
                let mut args = vec![Bytes::from_static(b"UNLINK")];
                deleted += doomed.len() as u64;
                args.extend(doomed);
                node.call_command(&sluice_common::resp::Command::new(args)).await?;
            }
        }
        if next == "0" {
            return Ok(deleted);
        }
        cursor = next;
    }
}

// ---- the destination ----
//
// The destination serves the slots only once the broker has recorded `switched` (it reports
// it itself, before answering the source): the record survives a restart of either proxy, so
// "did the destination switch?" always has one answer, the broker's. A restarted source asks
// the destination, which asks the broker; had the switch happened, recopying (which empties
// the destination's moving slots first) would delete the writes it took since.

pub async fn run_destination(shared: Arc<Shared>, task: Arc<Task>) {
    task.set_phase(Phase::Starting);
    if task.switch_allowed() {
        // A restart after our switch: the broker knows.
        if let Err(e) = adopt_recorded_switch(&shared, &task).await {
            task.note_error(format!("cannot read the broker's record of the switch yet: {e}"));
        }
    }
    match task.wait_untagged().await {
        Stage::Gone if task.phase() < Phase::Switched => {
            // Ended before the switch: what the copy restored here is not ours to keep.
            delete_copy(&shared, &task).await;
            task.set_phase(Phase::Aborted);
        }
        Stage::Gone => {}
        _ => {
            // Nothing to collect: only the moving slots' keys were copied here.
            task.set_phase(Phase::Committed);
            task.set_phase(Phase::Done);
        }
    }
}

/// Serves the slots now.
async fn serve(shared: &Arc<Shared>, task: &Arc<Task>) {
    shared
        .set_override(&task.meta.id, Some(Override { slots: task.meta.slots.clone(), kind: OverrideKind::Here }))
        .await;
    task.set_phase(Phase::Switched);
    tracing::info!(migration = %task.meta.id, "switched: serving the slots");
}

/// Whether the broker's record says the switch happened; if so, serves (a restart lost it).
/// Call with `switch_lock` held or before anyone can call in.
async fn adopt_recorded_switch(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<bool, MigrationError> {
    let broker = crate::broker::Broker::new(&shared.opts)?;
    let m = broker.migration(&task.meta.cluster, &task.meta.id).await?;
    let switched = m.epoch == task.meta.epoch && (Phase::Switched..=Phase::Done).contains(&m.phase);
    if switched && task.phase() < Phase::Switched {
        serve(shared, task).await;
    }
    Ok(switched)
}

/// `UMCTL TMPSWITCH` of a filtered migration, at the destination: record the switch at the
/// broker, then serve the slots; refused for an attempt the source already asked about
/// ([`switched_or_refuse`]). A record whose answer is lost is read back before answering.
pub async fn tmp_switch(shared: &Arc<Shared>, task: &Arc<Task>, attempt: u64) -> Result<(), MigrationError> {
    let _one_at_a_time = task.switch_lock.lock().await;
    if (Phase::Switched..=Phase::Done).contains(&task.phase()) {
        return Ok(());
    }
    if task.phase().is_final() || task.is_gone() {
        return Err(refused!("migration {} ended here ({:?})", task.meta.id, task.phase()));
    }
    if attempt <= task.refused_attempts() {
        return Err(refused!("switch attempt {attempt} of migration {} was refused already", task.meta.id));
    }
    let broker = crate::broker::Broker::new(&shared.opts)?;
    match broker.report_switched(&task.meta.cluster, &task.meta.id).await {
        Ok(m) if (Phase::Switched..=Phase::Done).contains(&m.phase) => {
            serve(shared, task).await;
            Ok(())
        }
        Ok(m) => Err(refused!("the broker has migration {} {:?}, not switched", task.meta.id, m.phase)),
        Err(e) => match adopt_recorded_switch(shared, task).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(refused!("the broker did not record the switch: {e}")),
            Err(again) => Err(refused!("cannot tell whether the broker recorded the switch: {e}; {again}")),
        },
    }
}

/// `UMCTL SWITCHED`: whether we serve the slots (by the broker's record); when not, `attempt`
/// and every earlier one are refused from now on. `Err`: cannot tell (the broker is away).
pub async fn switched_or_refuse(shared: &Arc<Shared>, task: &Arc<Task>, attempt: u64) -> Result<bool, MigrationError> {
    let _one_at_a_time = task.switch_lock.lock().await;
    if (Phase::Switched..=Phase::Done).contains(&task.phase()) {
        return Ok(true);
    }
    if !task.switch_allowed() {
        // Nothing switches before the broker allows it (and the source asks only after).
        task.refuse_attempts_up_to(attempt);
        return Ok(false);
    }
    if adopt_recorded_switch(shared, task).await? {
        return Ok(true);
    }
    task.refuse_attempts_up_to(attempt);
    Ok(false)
}
