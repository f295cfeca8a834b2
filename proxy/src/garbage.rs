//! What the garbage collector (`migration::gc`) shares with the rest of the proxy: how far
//! it got (`clean_epoch`, keys deleted), the ranges tasks want cleaned, and the lock a new
//! config takes so no unlink decided under the old config lands after it ([`Gc::pause`]).
//! The collector's task is in `migration::gc`; this handle sits below it, in
//! [`Shared`](crate::state::Shared), so the config path can pause and wake it without importing the
//! migration tasks.

use sluice_common::model::SlotRange;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedMutexGuard};

#[derive(Default)]
pub struct Gc {
    wake: Notify,
    /// Held while an `UNLINK` batch is on its way to the node.
    unlinking: Arc<tokio::sync::Mutex<()>>,
    pub clean_epoch: AtomicU64,
    /// Completed passes; tasks wait for one that started after their request.
    passes: AtomicU64,
    pass_done: Notify,
    pub deleted: AtomicU64,
    /// Set when the node may hold keys a finished pass did not see (it became a replica and
    /// copied a whole node): the next pass scans whatever it covered before.
    stale_coverage: std::sync::atomic::AtomicBool,
    /// Ranges tasks want cleaned even though no other node serves them (a proxy that gave
    /// all its slots away is free and has no cluster view any more), by migration id.
    extra: Mutex<BTreeMap<String, Vec<SlotRange>>>,
}

impl Gc {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes when [`Gc::wake`] is called (the collector waits on it between passes).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// The collector finished a pass.
    pub fn pass_completed(&self) {
        self.passes.fetch_add(1, Ordering::SeqCst);
        self.pass_done.notify_waiters();
    }

    /// Whether the node may hold keys a finished pass did not see (and forgets it).
    pub fn take_stale_coverage(&self) -> bool {
        self.stale_coverage.swap(false, Ordering::SeqCst)
    }

    /// The node is about to receive keys by replication: earlier passes no longer count.
    pub fn forget_coverage(&self) {
        self.stale_coverage.store(true, Ordering::SeqCst);
    }

    /// Waits for an unlink in flight, and keeps new ones from starting while held.
    pub async fn pause(&self) -> OwnedMutexGuard<()> {
        self.unlinking.clone().lock_owned().await
    }

    pub fn set_extra(&self, id: &str, ranges: Option<Vec<SlotRange>>) {
        let mut extra = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        match ranges {
            Some(r) => extra.insert(id.to_string(), r),
            None => extra.remove(id),
        };
    }

    pub fn extra(&self) -> Vec<SlotRange> {
        self.extra.lock().unwrap_or_else(|p| p.into_inner()).values().flatten().copied().collect()
    }

    /// Waits for a complete pass that started after this call.
    pub async fn wait_fresh_pass(&self) {
        // A pass running now may have started before the request: wait for the one after it.
        let target = self.passes.load(Ordering::SeqCst) + 2;
        loop {
            let done = self.pass_done.notified();
            if self.passes.load(Ordering::SeqCst) >= target {
                return;
            }
            self.wake();
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
    }
}
