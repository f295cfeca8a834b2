//! The destination side of a replication-mode migration.
//!
//! `starting`: the node must be empty and this proxy must serve no slot (a replica cannot
//! take writes, and replication replaces whatever the node holds: sluice never wipes data),
//! then `REPLICAOF <source node>`. `following`: the node is a synced replica; `UMCTL READY`
//! from the source answers yes. The source promotes our node (`REPLICAOF NO ONE`) at the
//! switch, once the broker allowed it, and tells us with `UMCTL TMPSWITCH`; we also find the
//! promotion by ourselves (the source may die before telling). We serve the slots only once
//! our node is promoted (`switched`). After the commit, the garbage collector deletes the
//! copied keys of slots served elsewhere (`cleaning`, then `done`). If the migration ends
//! before the switch, the node stops replicating and everything it copied is deleted.

use super::node::connect;
use super::node::{ControlConn, ReplInfo};
use super::source::RedialingConn;
use super::{Phase, Task};
use crate::migration::error::{refused, MigrationError};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use std::sync::Arc;

const POLL: std::time::Duration = std::time::Duration::from_millis(50);

pub async fn run(shared: Arc<Shared>, task: Arc<Task>) {
    let mut copying = false;
    if let Err(e) = drive(&shared, &task, &mut copying).await {
        let switched = task.phase() >= Phase::Switched;
        task.fail(e);
        // Only what replication copied is deleted: a node found holding data is never touched.
        if copying && !switched {
            stop_replicating(&shared, &task).await;
        }
    }
}

/// Whether the source promoted our node in this migration (`info` is our node's). Known
/// when we saw it follow the source in this run; otherwise (a restart) only once the switch
/// is allowed, before which nothing is promoted and an old promotion from the same source
/// (an earlier migration) would look the same.
async fn promoted_by_source(shared: &Shared, task: &Task, info: &ReplInfo) -> Result<bool, MigrationError> {
    if !info.is_master() {
        return Ok(false);
    }
    if let Some(id) = task.source_replid() {
        return Ok(info.promoted_from(&id));
    }
    if !task.switch_allowed() {
        return Ok(false);
    }
    let src = connect(shared, &task.meta.src_node).await?;
    let id = src.replication().await?.master_replid;
    Ok(info.promoted_from(&id))
}

/// `copying` becomes true once the node replicates from the source (or is found doing so).
async fn drive(shared: &Arc<Shared>, task: &Arc<Task>, copying: &mut bool) -> Result<(), MigrationError> {
    task.set_phase(Phase::Starting);
    let mut node = RedialingConn::new(shared, &shared.opts.node);
    loop {
        if task.is_gone() {
            if *copying {
                stop_replicating(shared, task).await;
            }
            task.set_phase(Phase::Aborted);
            return Ok(());
        }
        if task.phase() == Phase::Switched {
            return super::after_switch(shared, task).await;
        }
        let info = match node.replication().await {
            Ok(info) => info,
            Err(e) => {
                task.note_error(format!("cannot read our node's replication: {e}"));
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if info.is_synced_replica() {
            *copying = true;
            task.set_source_replid(&info.master_replid);
            task.set_phase(Phase::Following);
            task.set_progress("offset", info.master_repl_offset);
        } else if !info.is_master() {
            *copying = true;
            task.set_progress("link", info.master_link_status.clone());
        } else {
            match promoted_by_source(shared, task, &info).await {
                Ok(true) => {
                    serve(shared, task).await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    task.note_error(format!("cannot tell whether the source promoted our node: {e}"));
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            }
            if *copying && !task.switch_allowed() {
                return Err(refused!("the destination node stopped replicating before the switch"));
            }
            // Not copying yet (or our node restarted, empty, after the switch was allowed:
            // the migration must finish, so copy again).
            start_replicating(shared, task, node.get().await?).await?;
            *copying = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = task.wait_gone() => {}
        }
    }
}

/// Checks the node may take a copy of the source's, then `REPLICAOF`.
async fn start_replicating(shared: &Shared, task: &Task, node: &ControlConn) -> Result<(), MigrationError> {
    let served = shared.routes().slots_served();
    if served > 0 {
        return Err(refused!(
            "mode replication needs a destination that serves no slots; {} serves {served} (use mode keys)",
            shared.me()
        ));
    }
    let keys = node.dbsize().await?;
    if keys > 0 {
        return Err(refused!(
            "the destination node {} holds {keys} keys; replication would replace them (use mode keys)",
            shared.opts.node
        ));
    }
    shared.gc.forget_coverage();
    node.replicate_from(&task.meta.src_node).await?;
    tracing::info!(migration = %task.meta.id, master = %task.meta.src_node, "replicating from the source node");
    Ok(())
}

/// Our node is promoted: serve the slots.
async fn serve(shared: &Arc<Shared>, task: &Arc<Task>) {
    let _one_at_a_time = task.switch_lock.lock().await;
    if task.phase() >= Phase::Switched {
        return;
    }
    shared.set_override(&task.meta.id, Some(here(task))).await;
    task.set_phase(Phase::Switched);
    tracing::info!(migration = %task.meta.id, "switched: our node is promoted, serving the slots");
}

fn here(task: &Task) -> Override {
    Override { slots: task.meta.slots.clone(), kind: OverrideKind::Here }
}

/// `UMCTL READY`: whether we follow the source (our node is its synced replica), so that we
/// serve the slots once the source promotes our node.
pub async fn ready(shared: &Shared, task: &Task) -> Result<(), MigrationError> {
    // The source may see the replica online before this task's next look: the node decides.
    if !matches!(task.phase(), Phase::Starting | Phase::Following) {
        return Err(refused!("migration {} is {:?} here, not following", task.meta.id, task.phase()));
    }
    let node = connect(shared, &shared.opts.node).await?;
    let info = node.replication().await?;
    if !info.is_synced_replica() {
        return Err(refused!("our node is not a synced replica of the source"));
    }
    Ok(())
}

/// `TmpSwitch` (the source promoted our node): serve the slots once our node is promoted.
/// Idempotent: a repeated request answers OK.
pub async fn tmp_switch(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    if matches!(task.phase(), Phase::Switched | Phase::Committed | Phase::Cleaning | Phase::Done) {
        return Ok(());
    }
    let node = connect(shared, &shared.opts.node).await?;
    let info = node.replication().await?;
    if !promoted_by_source(shared, task, &info).await? {
        return Err(refused!("our node is not promoted from the source (role {})", info.role));
    }
    serve(shared, task).await;
    Ok(())
}

/// The migration ended before the switch: stop replicating and delete what was copied (the
/// node was empty and served no slots when the migration started).
async fn stop_replicating(shared: &Arc<Shared>, task: &Arc<Task>) {
    let stopped = match connect(shared, &shared.opts.node).await {
        Ok(node) => match promote_if_replica(&node).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(migration = %task.meta.id, error = %e, "could not stop the node replicating");
                false
            }
        },
        Err(e) => {
            tracing::warn!(migration = %task.meta.id, error = %e, "could not reach the node to stop replicating");
            false
        }
    };
    super::gc::discard_copy(shared, task).await;
    if stopped {
        super::report_copy_deleted(shared, task).await;
    }
}

async fn promote_if_replica(node: &ControlConn) -> Result<(), MigrationError> {
    let info = node.replication().await?;
    if !info.is_master() {
        node.promote().await?;
    }
    Ok(())
}
