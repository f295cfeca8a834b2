//! The etcd store: the metadata in an etcd cluster (layout: [`super::records`], under
//! `sluice/<namespace>/`), so several brokers can serve one deployment.
//!
//! **One change, one etcd transaction.** Every change rewrites the epoch record (also a
//! status change, which keeps its value), so that record's mod revision is the revision of the
//! last change of all. A transaction reads the state, runs the change on it and commits with
//! `Txn(when: mod_revision(epoch) == the one read, then: the writes)`: of two brokers that
//! read the same state, one commits and the other's compare fails; that one reads the newer
//! state and runs the change again ([`super::MetaStore::transaction`]), where its checks
//! (`If-Match`, overlapping slots, a migration's phase) refuse what the winner already
//! decided. Nothing is ever decided twice, and the epoch climbs by one per metadata change
//! whichever broker made it.
//!
//! **Reads** come from memory: the state as of the last revision this broker saw, kept
//! current by a watch of the prefix (`etcd/follow.rs`) when another broker commits; a change
//! first checks (one linearizable read of the epoch record) that nothing newer exists.
//!
//! **etcd unreachable**: reads still answer the last state known, changes answer 503
//! `store_unavailable` — "nothing was changed" when the failure came before the commit, "may
//! have been committed, re-read before retrying" when the commit itself got no answer (etcd
//! may have applied it). The client reconnects by itself; the watch is set up again and the
//! state reloaded as soon as etcd answers.
//!
//! etcd's calls are async and [`super::MetaStore`]'s are blocking: the store runs its own
//! small runtime (one thread, the watch lives there too) and waits on it.

mod follow;
mod snapshot;

use self::snapshot::{Commit, Conn, Loaded};
use super::spec::EtcdSpec;
use super::{now_rfc3339, records, MetaStore};
use crate::error::{ApiError, StoreError};
use crate::ops::Txn;
use crate::state::State;
use arc_swap::ArcSwap;
use etcd_client::{Client, ConnectOptions};
use sluice_common::model::Epoch;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The longest one etcd call may take before the broker gives up on it (503), unless
/// `--etcd-timeout-ms` says otherwise. Below the coordinator's 3 s timeout on broker calls,
/// so it hears why.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the broker tries to reach etcd at start before it gives up.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// How many times a change is run again after other brokers were first, before it gives up
/// (503): each failed compare means another change did commit, so this is only reached
/// under a storm of changes.
const MAX_ATTEMPTS: usize = 32;

/// What the store and its watch share.
struct Inner {
    conn: Conn,
    /// The state as of the newest revision seen (by a read, a commit or the watch).
    current: ArcSwap<Loaded>,
    /// Serialises publishing, so `current` only moves to newer revisions.
    publish: Mutex<()>,
    /// The epoch of `current`, for the API's long polls.
    epoch: watch::Sender<Epoch>,
}

impl Inner {
    fn store_name(&self) -> String {
        self.conn.spec.to_string()
    }

    /// Makes `loaded` current, unless something as new or newer already is.
    fn publish(&self, loaded: Loaded) {
        let _guard = self.publish.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.revision <= self.current.load().revision {
            return;
        }
        let epoch = loaded.state.epoch;
        self.current.store(Arc::new(loaded));
        self.epoch.send_if_modified(|e| {
            let moved = epoch > *e;
            if moved {
                *e = epoch;
            }
            moved
        });
    }

    /// The current state, made sure to be the newest committed one: a linearizable read of
    /// the epoch record's revision, and a reload when it is not the one in memory.
    async fn fresh(&self) -> Result<Arc<Loaded>, StoreError> {
        let current = self.current.load_full();
        let epoch_rev = snapshot::epoch_revision(&self.conn).await?;
        if epoch_rev == current.epoch_rev {
            return Ok(current);
        }
        let loaded = snapshot::read(&self.conn).await?;
        self.publish(loaded.clone());
        Ok(Arc::new(loaded))
    }
}

pub struct EtcdStore {
    inner: Arc<Inner>,
    /// Where the etcd calls and the watch run; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// This broker's own writers take turns (they would only fail each other's compares).
    write: Mutex<()>,
}

impl EtcdStore {
    /// Connects, loads the state (trying for up to [`OPEN_DEADLINE`] while etcd does not
    /// answer) and starts following other brokers' changes. `timeout` bounds each etcd call.
    pub fn open(spec: &EtcdSpec, timeout: Duration) -> Result<EtcdStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd { store: spec.to_string(), reason: format!("starting its runtime: {e}") })?;
        let spec = spec.clone();
        let inner = block_on(&runtime, async move {
            let options = ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_keep_alive(Duration::from_secs(2), timeout)
                .with_keep_alive_while_idle(true);
            let client = Client::connect(spec.urls(), Some(options))
                .await
                .map_err(|e| snapshot::classify(&spec.to_string(), e))?;
            let conn = Conn { client, spec, timeout };
            let deadline = Instant::now() + OPEN_DEADLINE;
            let loaded = loop {
                match snapshot::read(&conn).await {
                    Ok(loaded) => break loaded,
                    Err(e @ StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                        tracing::warn!(error = %e, "waiting for etcd");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let epoch = loaded.state.epoch;
            Ok(Arc::new(Inner {
                conn,
                current: ArcSwap::from_pointee(loaded),
                publish: Mutex::new(()),
                epoch: watch::Sender::new(epoch),
            }))
        })??;
        runtime.spawn(follow::follow(inner.clone()));
        Ok(EtcdStore { inner, runtime: Some(runtime), write: Mutex::new(()) })
    }

    /// Runs `f` on the store's runtime and waits for it (from any thread, async or not).
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> Result<T, StoreError> {
        match &self.runtime {
            Some(runtime) => block_on(runtime, f),
            None => Err(StoreError::Etcd { store: self.inner.store_name(), reason: "the store is closing".into() }),
        }
    }
}

/// Spawns `f` on `runtime` and waits for its end without entering any runtime, so it works
/// both on a plain thread and on a blocking thread of the API's runtime.
fn block_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    futures::executor::block_on(runtime.spawn(f))
        .map_err(|e| StoreError::Etcd { store: "etcd".into(), reason: format!("its task failed: {e}") })
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which is refused inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl MetaStore for EtcdStore {
    fn load(&self) -> Arc<State> {
        self.inner.current.load().state.clone()
    }

    /// Read fresh, apply, commit with the compare; a failed compare means another broker was
    /// first: read again and apply again.
    fn transaction(&self, apply: &mut dyn FnMut(&mut Txn) -> Result<(), ApiError>) -> Result<Arc<State>, ApiError> {
        let _guard = self.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 1..=MAX_ATTEMPTS {
            let inner = self.inner.clone();
            let base = self.run(async move { inner.fresh().await })??;
            let mut txn = Txn::new((*base.state).clone(), now_rfc3339());
            apply(&mut txn)?;
            if txn.state == *base.state {
                return Ok(base.state.clone());
            }
            let mut ops = records::diff(&base.state, &txn.state)?;
            if !ops.iter().any(|(key, _)| key == records::EPOCH_KEY) {
                ops.push(records::epoch_op(txn.state.epoch));
            }
            let inner = self.inner.clone();
            let epoch_rev = base.epoch_rev;
            let committed = self.run(async move { snapshot::commit(&inner.conn, epoch_rev, ops).await })?;
            match committed {
                Ok(Commit::Done { revision }) => {
                    let state = Arc::new(txn.state);
                    self.inner.publish(Loaded { state: state.clone(), epoch_rev: revision, revision });
                    if base.state.epoch != state.epoch {
                        tracing::info!(
                            epoch = state.epoch,
                            previous = base.state.epoch,
                            revision,
                            change = %txn.change.join("; "),
                            "epoch changed"
                        );
                    }
                    return Ok(state);
                }
                Ok(Commit::Lost) => {
                    tracing::debug!(attempt, "another broker committed first; running the change again");
                }
                Err(StoreError::Unavailable { store, reason }) => {
                    return Err(ApiError::unavailable(format!(
                        "the metadata store ({store}) did not confirm the change: {reason}; it may or may not \
                         have been committed, so re-read the state before retrying"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::unavailable(format!(
            "other brokers changed the metadata {MAX_ATTEMPTS} times in a row while this change was tried; \
             nothing was changed, retry"
        )))
    }

    fn changes(&self) -> Option<watch::Receiver<Epoch>> {
        Some(self.inner.epoch.subscribe())
    }
}
