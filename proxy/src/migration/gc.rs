//! The garbage collector: deletes, with rate-limited `SCAN` + `UNLINK`, the keys a migration
//! left on this proxy's node: a source's copies of the slots it handed over, and on the
//! destination of a replication everything it copied for slots it does not serve. Only slots
//! named by committed migrations in the config (or by a task that copied and then ended
//! before its switch) are garbage: data sluice did not put there is never deleted.
//!
//! It never deletes a key of a slot this proxy serves, imports or holds. A pass restarts
//! when the route table changes under it, and a config that gives this proxy back a slot
//! waits for an unlink in flight ([`Gc::pause`](crate::garbage::Gc::pause)), so no key written under the new config can
//! be deleted by a decision made under the old one.
//!
//! `Status.clean_epoch` is the epoch of the last complete pass: a migration committed at
//! epoch E has no garbage left on this proxy once `clean_epoch >= E`.

use super::node::connect;
use super::node::ControlConn;
use super::{Phase, Task};
use crate::migration::error::MigrationError;
use crate::route::RouteTable;
use crate::state::Shared;
use sluice_common::model::SlotRange;
use sluice_common::slot::{key_slot, SLOT_COUNT};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// After the commit: `cleaning` until a complete pass has run (with the task's slots added
/// to the garbage, for a proxy that has left the cluster), then `done`.
pub async fn clean(shared: &Arc<Shared>, task: &Arc<Task>) {
    task.set_phase(Phase::Cleaning);
    if task.role == super::Role::Source && task.meta.mode.is_streamed() {
        shared.gc.set_extra(&task.meta.id, Some(task.meta.slots.clone()));
    }
    // Keys deleted since the task started (garbage collection begins at the switch; with
    // several migrations on one proxy the counts overlap).
    let report =
        || task.set_progress("keys_deleted", shared.gc.deleted.load(Ordering::Relaxed) - task.gc_deleted_at_start);
    let fresh = shared.gc.wait_fresh_pass();
    tokio::pin!(fresh);
    loop {
        report();
        tokio::select! {
            _ = &mut fresh => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    report();
    shared.gc.set_extra(&task.meta.id, None);
    task.set_phase(Phase::Done);
}

/// An import that ended before its switch: everything the node copied is garbage.
pub async fn discard_copy(shared: &Arc<Shared>, task: &Arc<Task>) {
    shared.gc.set_extra(&task.meta.id, Some(vec![SlotRange::new(0, SLOT_COUNT - 1)]));
    shared.gc.wait_fresh_pass().await;
    shared.gc.set_extra(&task.meta.id, None);
}

/// Which slots hold garbage now, as a bitmap of 16384: the slots the config's committed
/// migrations name for this proxy, and the tasks' extra ranges, minus every slot served,
/// imported or held here. Keys the config does not account for are never touched: a node
/// may hold data sluice did not put there.
fn garbage(shared: &Shared, routes: &RouteTable, extra: &[SlotRange]) -> Vec<bool> {
    let mut g = vec![false; usize::from(SLOT_COUNT)];
    let named = super::Migrations::garbage_ranges(&routes.config, shared.me());
    for r in named.iter().chain(extra) {
        for s in r.slots().filter(|&s| s < SLOT_COUNT) {
            if routes.is_unclaimed(s) {
                g[usize::from(s)] = true;
            }
        }
    }
    g
}

/// The collector's loop; runs for the life of the proxy.
pub async fn run(shared: Arc<Shared>) {
    let mut node: Option<ControlConn> = None;
    // The garbage the last complete pass covered: a later config with no new garbage slots
    // needs no new pass (the keyspace only shrinks in those slots).
    let mut covered: Option<Vec<bool>> = None;
    loop {
        let woken = shared.gc.woken();
        if shared.epoch() > 0 {
            match pass(&shared, &mut node, &mut covered).await {
                Ok(true) => {
                    shared.gc.pass_completed();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection interrupted");
                    node = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    shared.gc.wake();
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), woken).await;
    }
}

/// One pass; `Ok(true)` when it completed, `Ok(false)` when it could not run now (the node
/// is a replica) or was superseded by a newer table.
async fn pass(
    shared: &Arc<Shared>,
    node: &mut Option<ControlConn>,
    covered: &mut Option<Vec<bool>>,
) -> Result<bool, MigrationError> {
    if shared.gc.take_stale_coverage() {
        *covered = None;
    }
    let generation = shared.route_generation();
    let routes = shared.routes_full();
    let epoch = routes.epoch();
    let extra = shared.gc.extra();
    let garbage = garbage(shared, &routes, &extra);
    let nothing_new =
        extra.is_empty() && covered.as_ref().is_some_and(|c| garbage.iter().zip(c).all(|(g, c)| !*g || *c));
    if !garbage.iter().any(|g| *g) || nothing_new {
        shared.gc.clean_epoch.fetch_max(epoch, Ordering::SeqCst);
        return Ok(true);
    }
    if node.as_ref().is_none_or(ControlConn::is_closed) {
        *node = Some(connect(shared, &shared.opts.node).await?);
    }
    let Some(conn) = node.as_ref() else { return Ok(false) };
    if !conn.replication().await?.is_master() {
        // A replica mirrors its master; it is cleaned once promoted.
        *covered = None;
        return Ok(false);
    }
    let rate = shared.opts.gc_keys_per_sec.max(1) as f64;
    let mut scan = conn.scan_all(shared.opts.gc_scan_count);
    while let Some(keys) = scan.next_batch().await? {
        let doomed: Vec<String> = keys
            .iter()
            .filter(|k| garbage[usize::from(key_slot(k))])
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        if !doomed.is_empty() {
            let guard = shared.gc.pause().await;
            if shared.route_generation() != generation {
                // Ownership may have changed under us: start over with the new table.
                drop(guard);
                shared.gc.wake();
                return Ok(false);
            }
            let mut args = vec!["UNLINK"];
            args.extend(doomed.iter().map(String::as_str));
            conn.call(&args).await?;
            drop(guard);
            shared.gc.deleted.fetch_add(doomed.len() as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs_f64(doomed.len() as f64 / rate)).await;
        }
    }
    if shared.route_generation() != generation {
        shared.gc.wake();
        return Ok(false);
    }
    shared.gc.clean_epoch.fetch_max(epoch, Ordering::SeqCst);
    *covered = Some(garbage);
    tracing::debug!(epoch, deleted = shared.gc.deleted.load(Ordering::Relaxed), "garbage pass complete");
    Ok(true)
}
