//! The master's side of a graceful failover: hand the shard over to a replica without
//! losing a write (the broker's side is `broker/src/ops/failover.rs`).
//!
//! While the config names a `handover` for this proxy's shard: hold the shard's slots (as a
//! migration's switch does: commands wait in the sessions), wait until the commands already
//! sent to the node are answered, read the node's replication offset, and wait until the
//! replica's node has processed it. Then every write this master acknowledged is on the
//! replica, and no more can reach the node: say so in `Status` (`handover_ready_epoch`) and
//! keep holding. The coordinator then has the broker make the swap; with the new config
//! the held commands go to the new master. Any new config ends the hold (a new one starts if
//! the handover is still asked for). A replica that does not catch up within the write pause
//! (`--switch-pause-ms`) releases the slots for a while and is tried again.

use crate::migration::error::{refused, MigrationError};
use crate::migration::node::{connect, ControlConn};
use crate::route::{Override, OverrideKind};
use crate::state::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The override a handover holds the shard's slots with.
const HANDOVER: &str = "handover";

/// How long a handover that could not complete waits before it tries again.
const RETRY: Duration = Duration::from_millis(500);

/// Runs for the life of the proxy.
pub async fn run(shared: Arc<Shared>) {
    let mut changes = shared.route_changes();
    loop {
        let attempt = attempt(&shared).await;
        let wait = match attempt {
            Ok(true) => None,
            Ok(false) => Some(RETRY),
            Err(e) => {
                tracing::warn!(error = %e, "graceful failover: the handover could not complete; trying again");
                Some(RETRY)
            }
        };
        // The attempt's own hold changed the table: only later changes wake us.
        changes.borrow_and_update();
        match wait {
            // Ready (or nothing to do): wait for the next change of the table.
            None => {
                let _ = changes.changed().await;
            }
            Some(pause) => {
                if shared.has_override(HANDOVER) {
                    shared.set_override(HANDOVER, None).await;
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One handover attempt under the current config. `Ok(true)`: ready and holding, or no
/// handover asked for; `Ok(false)`/`Err`: not ready, released (the caller lets go).
async fn attempt(shared: &Arc<Shared>) -> Result<bool, MigrationError> {
    let routes = shared.routes_full();
    let Some(me) = routes.me else { return Ok(true) };
    let Some(shard) = routes.cluster().map(|c| &c.nodes[me]) else { return Ok(true) };
    let Some(target) = shard.handover.as_deref() else { return Ok(true) };
    let replica = shard
        .replicas
        .iter()
        .find(|r| r.proxy == target)
        .ok_or_else(|| refused!("the handover target {target} is not a replica of this shard"))?;
    let epoch = routes.epoch();
    let t0 = Instant::now();
    let deadline = t0 + shared.opts.switch_pause();
    let slots = shard.slots.iter().filter(|a| a.tag.is_none()).map(|a| a.range()).collect();
    shared.set_override(HANDOVER, Some(Override { slots, kind: OverrideKind::Hold })).await;
    if !shared.wait_drained(deadline).await {
        return Ok(false);
    }
    let ours: ControlConn = connect(shared, &shared.opts.node).await?;
    let offset = ours.replication().await?.master_repl_offset;
    let theirs = connect(shared, &replica.node).await?;
    loop {
        let info = theirs.replication().await?;
        if info.is_synced_replica() && info.master_repl_offset >= offset {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if shared.routes().epoch() != epoch {
        return Ok(false);
    }
    shared.handover_ready.store(epoch, Ordering::SeqCst);
    tracing::info!(to = %target, offset, epoch, held_ms = t0.elapsed().as_millis() as u64, "graceful failover: the replica has every write; holding until the swap");
    Ok(true)
}
