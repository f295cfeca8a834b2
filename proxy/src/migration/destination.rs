//! The destination side of a replication-mode migration.
//!
//! `starting`: the node must be empty and this proxy must serve no slot (a replica cannot
//! take writes, and replication replaces whatever the node holds: sluice never wipes data),
//! then `REPLICAOF <source node>`. `following`: the node is a synced replica. On `TmpSwitch`
//! from the source, at the offset the source read: wait until our node has processed it,
//! promote it (`REPLICAOF NO ONE`) *before* serving a single write, then serve the slots
//! (`switched`). After the commit, the garbage collector deletes the copied keys of slots
//! served elsewhere (`cleaning`, then `done`). If the migration ends before the switch, the
//! node stops replicating and everything it copied is deleted.

use super::node::NodeConn;
use super::source::connect;
use super::{Phase, Task};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

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

/// `copying` becomes true once the node replicates from the source (or is found doing so).
async fn drive(shared: &Arc<Shared>, task: &Arc<Task>, copying: &mut bool) -> Result<(), String> {
    let meta = &task.meta;
    let node = connect(shared, &shared.opts.node).await?;
    task.set_phase(Phase::Starting);
    let info = node.replication().await.map_err(|e| e.to_string())?;
    if info.is_master() {
        let src = connect(shared, &meta.src_node).await?;
        let src_id = src.replication().await.map_err(|e| e.to_string())?.master_replid;
        if !src_id.is_empty() && info.master_replid2 == src_id {
            // Promoted from the source before this task started: an earlier switch completed.
            shared.set_override(&meta.id, Some(here(task))).await;
            task.set_phase(Phase::Switched);
            return super::after_switch(shared, task).await;
        }
        let served = shared.routes().slots_served();
        if served > 0 {
            return Err(format!(
                "mode replication needs a destination that serves no slots; {} serves {served} (use mode keys)",
                shared.me()
            ));
        }
        let keys = node.dbsize().await.map_err(|e| e.to_string())?;
        if keys > 0 {
            return Err(format!(
                "the destination node {} holds {keys} keys; replication would replace them (use mode keys)",
                shared.opts.node
            ));
        }
        *copying = true;
        shared.gc.forget_coverage();
        node.replicate_from(&meta.src_node).await.map_err(|e| e.to_string())?;
        tracing::info!(migration = %meta.id, master = %meta.src_node, "replicating from the source node");
    } else {
        *copying = true;
        shared.gc.forget_coverage();
    }
    loop {
        if task.is_gone() {
            stop_replicating(shared, task).await;
            task.set_phase(Phase::Aborted);
            return Ok(());
        }
        if task.phase() == Phase::Switched {
            return super::after_switch(shared, task).await;
        }
        let info = node.replication().await.map_err(|e| e.to_string())?;
        if info.is_synced_replica() {
            task.set_phase(Phase::Following);
            task.set_progress("offset", info.master_repl_offset);
        } else if info.is_master() && task.phase() < Phase::Switched {
            return Err("the destination node stopped replicating before the switch".into());
        } else {
            task.set_progress("link", info.master_link_status.clone());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = task.wait_gone() => {}
        }
    }
}

fn here(task: &Task) -> Override {
    Override { slots: task.meta.slots.clone(), kind: OverrideKind::Here }
}

/// `TmpSwitch` (the source's request to take over): once our node has processed `offset`
/// it is promoted and the slots are served here. Idempotent: a repeated request answers OK.
pub async fn tmp_switch(shared: &Arc<Shared>, task: &Arc<Task>, offset: u64, budget: Duration) -> Result<(), String> {
    let _one_at_a_time = task.switch_lock.lock().await;
    match task.phase() {
        Phase::Switched | Phase::Committed | Phase::Cleaning | Phase::Done => return Ok(()),
        // The source may see the replica online before this task's next look: the node is
        // checked below either way.
        Phase::Starting | Phase::Following => {}
        other => return Err(format!("migration {} is {other:?} here, not following", task.meta.id)),
    }
    let node = connect(shared, &shared.opts.node).await?;
    let deadline = Instant::now() + budget;
    loop {
        let info = node.replication().await.map_err(|e| e.to_string())?;
        if info.is_synced_replica() && info.master_repl_offset >= offset {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the destination node processed offset {} of {offset} within {budget:?}",
                info.master_repl_offset
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Promote before serving: a write taken while still a replica would be refused, and a
    // resync started later would wipe writes taken after the switch.
    node.promote().await.map_err(|e| e.to_string())?;
    shared.set_override(&task.meta.id, Some(here(task))).await;
    task.set_phase(Phase::Switched);
    tracing::info!(migration = %task.meta.id, offset, "switched: serving the slots");
    Ok(())
}

/// The migration ended before the switch: stop replicating and delete what was copied (the
/// node was empty and served no slots when the migration started).
async fn stop_replicating(shared: &Arc<Shared>, task: &Arc<Task>) {
    match connect(shared, &shared.opts.node).await {
        Ok(node) => {
            if let Err(e) = promote_if_replica(&node).await {
                tracing::warn!(migration = %task.meta.id, error = %e, "could not stop the node replicating");
            }
        }
        Err(e) => tracing::warn!(migration = %task.meta.id, error = %e, "could not reach the node to stop replicating"),
    }
    super::gc::discard_copy(shared, task).await;
}

async fn promote_if_replica(node: &NodeConn) -> Result<(), String> {
    let info = node.replication().await.map_err(|e| e.to_string())?;
    if !info.is_master() {
        node.promote().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
