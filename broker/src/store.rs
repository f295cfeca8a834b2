//! The metadata store: the broker's whole [`State`], read from memory and changed one atomic
//! transaction at a time, durable before the caller answers.
//!
//! [`MetaStore`] is what a place to keep the metadata must do. Two implementations:
//! sled ([`SledStore`], the default: one broker, a local directory) and etcd ([`EtcdStore`]:
//! several brokers on one etcd cluster, each change one etcd transaction conditioned on the
//! last one). [`spec`] parses `--store`; [`records`] is the layout as key-value records that
//! both share. [`Store`] is what the API works with: a `MetaStore` and the settings every
//! change runs with, and the one place that checks `If-Match`.

pub mod etcd;
pub mod records;
pub mod sled;
pub mod spec;

pub use self::etcd::EtcdStore;
pub use self::sled::SledStore;
pub use self::spec::{EtcdSpec, StoreSpec};

use crate::config::DEFAULT_SCALE_CONCURRENCY;
use crate::error::{ApiError, StoreError};
use crate::ops::Txn;
use crate::state::State;
use sluice_common::model::Epoch;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Where the broker keeps its metadata.
///
/// Both methods are blocking: call them off the async runtime's worker threads.
pub trait MetaStore: Send + Sync {
    /// The state as last committed, for reads: cheap, and never waits on a writer.
    fn load(&self) -> Arc<State>;

    /// One atomic transaction: reads the current state, runs `apply` on a [`Txn`] over a copy
    /// of it, and commits what `apply` changed (the epoch with it, if `apply` bumped it) only
    /// if the epoch it read is still current, durably, before it returns the committed state
    /// (which [`MetaStore::load`] answers from then on). When `apply` refuses, or changes
    /// nothing, nothing is written. A store that finds the epoch moved on between its read and
    /// its commit (another writer was first) reads again and runs `apply` again on the newer
    /// state; so `apply` depends on its `Txn` alone.
    fn transaction(&self, apply: &mut dyn FnMut(&mut Txn) -> Result<(), ApiError>) -> Result<Arc<State>, ApiError>;

    /// The epoch as it moves, when it can move without this broker: another broker's commit
    /// (etcd). `None` when only this broker's own changes move it (sled), which the API
    /// already publishes.
    fn changes(&self) -> Option<watch::Receiver<Epoch>> {
        None
    }

    /// Makes everything committed durable, should anything be left (on shutdown). A store
    /// whose commits are durable when they return has nothing to do.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The metadata as the API uses it: a [`MetaStore`] and the settings every change runs with.
pub struct Store {
    meta: Arc<dyn MetaStore>,
    /// How many migrations of one scale plan run at once (`--scale-concurrency`).
    scale_concurrency: usize,
}

impl Store {
    pub fn new(meta: Arc<dyn MetaStore>) -> Store {
        Store { meta, scale_concurrency: DEFAULT_SCALE_CONCURRENCY }
    }

    /// Opens (or creates) the sled database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(SledStore::open(dir)?)))
    }

    /// Opens the store `spec` names: sled's database, or a connection to etcd whose calls
    /// each give up after [`etcd::DEFAULT_TIMEOUT`]. Blocking (etcd: up to
    /// [`etcd::OPEN_DEADLINE`] while it does not answer).
    pub fn open_spec(spec: &StoreSpec) -> Result<Store, StoreError> {
        Store::open_spec_with(spec, etcd::DEFAULT_TIMEOUT)
    }

    /// [`Store::open_spec`], each etcd call bounded by `etcd_timeout` (`--etcd-timeout-ms`).
    pub fn open_spec_with(spec: &StoreSpec, etcd_timeout: Duration) -> Result<Store, StoreError> {
        match spec {
            StoreSpec::Sled(dir) => Store::open(dir),
            StoreSpec::Etcd(etcd) => Ok(Store::new(Arc::new(EtcdStore::open(etcd, etcd_timeout)?))),
        }
    }

    /// See [`MetaStore::changes`].
    pub fn changes(&self) -> Option<watch::Receiver<Epoch>> {
        self.meta.changes()
    }

    /// Sets how many migrations of one scale plan run at once (at least one). It applies to
    /// every step that starts from now on, also of plans made before a restart.
    pub fn with_scale_concurrency(mut self, k: usize) -> Store {
        self.scale_concurrency = k.max(1);
        self
    }

    /// The current state. Cheap: a reference count.
    pub fn snapshot(&self) -> Arc<State> {
        self.meta.load()
    }

    /// Runs one change as one transaction of the store: checks `If-Match` against the epoch
    /// the transaction read, then lets `f` edit the state. When either refuses, nothing is
    /// written. Answers what `f` answered and the state committed. `f` is cloned for each
    /// run, should the store run it again (see [`MetaStore::transaction`]). Blocking: call it
    /// off the async runtime's worker threads.
    pub fn mutate<R>(
        &self,
        if_match: Option<Epoch>,
        f: impl FnOnce(&mut Txn) -> Result<R, ApiError> + Clone,
    ) -> Result<(R, Arc<State>), ApiError> {
        let scale_concurrency = self.scale_concurrency;
        let mut result = None;
        let state = self.meta.transaction(&mut |txn| {
            if let Some(expected) = if_match {
                if expected != txn.base_epoch() {
                    return Err(ApiError::epoch_mismatch(expected, txn.base_epoch()));
                }
            }
            txn.scale_concurrency = scale_concurrency;
            result = Some(f.clone()(txn)?);
            Ok(())
        })?;
        let result = result.ok_or_else(|| ApiError::internal("the metadata transaction did not run the change"))?;
        Ok((result, state))
    }

    /// Flushes everything to disk (on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.meta.flush()
    }
}

/// The time of a change (RFC 3339, milliseconds), for the records' timestamps.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
