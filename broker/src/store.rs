//! The sled-backed store: the whole [`State`] in memory for reads, and every change written as
//! one sled transaction, flushed to disk before the caller answers.
//!
//! Layout of the `metadata` tree (values are JSON unless said otherwise):
//! - `meta/epoch` → the global epoch, u64 big-endian
//! - `meta/next_migration` → the next migration number, u64 big-endian
//! - `proxy/<address>` → [`ProxyRecord`]
//! - `cluster/<name>` → [`ClusterView`]
//! - `migration/<number, 20 digits>` → [`Migration`]
//! - `scale/<cluster>` → [`ScalePlanRecord`], the cluster's last scale plan
//!
//! Writers are serialised by one mutex held across check, edit, transaction and flush, so two
//! concurrent `If-Match` calls on the same epoch cannot both pass. Readers never wait on it:
//! they take the last published snapshot.

use crate::config::DEFAULT_SCALE_CONCURRENCY;
use crate::error::{ApiError, StoreError};
use crate::ops::Txn;
use crate::state::{ProxyRecord, State};
use arc_swap::ArcSwap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sluice_common::api::{Migration, ScalePlanRecord};
use sluice_common::model::{ClusterView, Epoch};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const EPOCH_KEY: &str = "meta/epoch";
const NEXT_MIGRATION_KEY: &str = "meta/next_migration";
const PROXY_PREFIX: &str = "proxy/";
const CLUSTER_PREFIX: &str = "cluster/";
const MIGRATION_PREFIX: &str = "migration/";
const SCALE_PREFIX: &str = "scale/";

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    write: Mutex<()>,
    current: ArcSwap<State>,
    /// How many migrations of one scale plan run at once (`--scale-concurrency`).
    scale_concurrency: usize,
}

/// One write of a transaction: a key and its new value, or `None` to remove it.
type Op = (String, Option<Vec<u8>>);

impl Store {
    /// Opens (or creates) the database in `dir` and loads the state.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("metadata")?;
        let state = load(&tree)?;
        Ok(Store {
            db,
            tree,
            write: Mutex::new(()),
            current: ArcSwap::from_pointee(state),
            scale_concurrency: DEFAULT_SCALE_CONCURRENCY,
        })
    }

    /// Sets how many migrations of one scale plan run at once (at least one). It applies to
    /// every step that starts from now on, also of plans made before a restart.
    pub fn with_scale_concurrency(mut self, k: usize) -> Store {
        self.scale_concurrency = k.max(1);
        self
    }

    /// The current state. Cheap: a reference count.
    pub fn snapshot(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Runs one change: checks `If-Match` against the current epoch, lets `f` edit a copy of
    /// the state, writes what differs (with the epoch, if `f` bumped it) in one sled
    /// transaction, flushes, then publishes the new state. When `f` refuses, nothing is
    /// written. Blocking: call it off the async runtime's worker threads.
    pub fn mutate<R>(
        &self,
        if_match: Option<Epoch>,
        f: impl FnOnce(&mut Txn) -> Result<R, ApiError>,
    ) -> Result<(R, Arc<State>), ApiError> {
        let _guard = self.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.current.load_full();
        if let Some(expected) = if_match {
            if expected != old.epoch {
                return Err(ApiError::epoch_mismatch(expected, old.epoch));
            }
        }
        let mut txn = Txn::new((*old).clone(), now_rfc3339());
        txn.scale_concurrency = self.scale_concurrency;
        let result = f(&mut txn)?;
        if txn.state == *old {
            return Ok((result, old));
        }
        let ops = diff(&old, &txn.state)?;
        let applied: Result<(), TransactionError<()>> = self.tree.transaction(|tx| {
            for (key, value) in &ops {
                match value {
                    Some(v) => {
                        tx.insert(key.as_bytes(), v.as_slice())?;
                    }
                    None => {
                        tx.remove(key.as_bytes())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match applied {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(StoreError::Sled(e).into()),
            Err(TransactionError::Abort(())) => return Err(ApiError::internal("metadata transaction aborted")),
        }
        // The transaction is in; from here memory follows it even if the flush fails.
        let new = Arc::new(txn.state);
        self.current.store(new.clone());
        let flushed = self.db.flush();
        if old.epoch != new.epoch {
            tracing::info!(epoch = new.epoch, previous = old.epoch, change = %txn.change.join("; "), "epoch changed");
        }
        flushed.map_err(StoreError::Sled)?;
        Ok((result, new))
    }

    /// Flushes everything to disk (on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode { key: key.to_string(), reason: e.to_string() })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })
}

fn decode_u64(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn migration_key(number: u64) -> String {
    format!("{MIGRATION_PREFIX}{number:020}")
}

/// The writes that turn `old` into `new`, record by record.
fn diff(old: &State, new: &State) -> Result<Vec<Op>, StoreError> {
    let mut ops = Vec::new();
    if old.epoch != new.epoch {
        ops.push((EPOCH_KEY.to_string(), Some(new.epoch.to_be_bytes().to_vec())));
    }
    if old.next_migration != new.next_migration {
        ops.push((NEXT_MIGRATION_KEY.to_string(), Some(new.next_migration.to_be_bytes().to_vec())));
    }
    diff_map(&mut ops, &old.proxies, &new.proxies, |k| format!("{PROXY_PREFIX}{k}"))?;
    diff_map(&mut ops, &old.clusters, &new.clusters, |k| format!("{CLUSTER_PREFIX}{k}"))?;
    diff_map(&mut ops, &old.migrations, &new.migrations, |k| migration_key(*k))?;
    diff_map(&mut ops, &old.scales, &new.scales, |k| format!("{SCALE_PREFIX}{k}"))?;
    Ok(ops)
}

fn diff_map<K: Ord, V: PartialEq + Serialize>(
    ops: &mut Vec<Op>,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> String,
) -> Result<(), StoreError> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let key = key(k);
            let bytes = encode(&key, v)?;
            ops.push((key, Some(bytes)));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(k)) {
        ops.push((key(k), None));
    }
    Ok(())
}

fn load(tree: &sled::Tree) -> Result<State, StoreError> {
    let mut state = State::default();
    for item in tree.iter() {
        let (k, v) = item?;
        let key = String::from_utf8(k.to_vec())
            .map_err(|_| StoreError::Corrupt { key: format!("{:?}", k.as_ref()), reason: "key is not UTF-8".into() })?;
        if key == EPOCH_KEY {
            state.epoch = decode_u64(&key, &v)?;
        } else if key == NEXT_MIGRATION_KEY {
            state.next_migration = decode_u64(&key, &v)?;
        } else if let Some(address) = key.strip_prefix(PROXY_PREFIX) {
            let rec: ProxyRecord = decode(&key, &v)?;
            state.proxies.insert(address.to_string(), rec);
        } else if let Some(name) = key.strip_prefix(CLUSTER_PREFIX) {
            let view: ClusterView = decode(&key, &v)?;
            state.clusters.insert(name.to_string(), view);
        } else if let Some(number) = key.strip_prefix(MIGRATION_PREFIX) {
            let number: u64 = number
                .parse()
                .map_err(|_| StoreError::Corrupt { key: key.clone(), reason: "bad migration number".into() })?;
            let m: Migration = decode(&key, &v)?;
            state.migrations.insert(number, m);
        } else if let Some(name) = key.strip_prefix(SCALE_PREFIX) {
            let plan: ScalePlanRecord = decode(&key, &v)?;
            state.scales.insert(name.to_string(), plan);
        } else {
            tracing::warn!(key, "ignoring an unknown key in the metadata store");
        }
    }
    // Belt and braces: the epoch never goes below anything it already stamped.
    let stamped = state
        .clusters
        .values()
        .map(|c| c.epoch)
        .chain(state.migrations.values().map(|m| m.epoch))
        .chain(state.scales.values().map(|p| p.epoch))
        .max()
        .unwrap_or(0);
    state.epoch = state.epoch.max(stamped);
    let highest = state.migrations.keys().next_back().copied().unwrap_or(0);
    state.next_migration = state.next_migration.max(highest + 1);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::api::RegisterProxy;

    fn register(store: &Store, port: u16) -> Epoch {
        let req = RegisterProxy {
            address: format!("127.0.0.1:{port}"),
            control_address: format!("127.0.0.1:{}", port + 1000),
            node_address: format!("127.0.0.1:{}", port + 2000),
            peer_address: None,
        };
        let (_, state) = store.mutate(None, |t| t.register_proxy(req)).unwrap();
        state.epoch
    }

    #[test]
    fn changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(register(&store, 6001), 1);
            assert_eq!(register(&store, 6002), 2);
            // Re-registering the same proxy changes nothing.
            assert_eq!(register(&store, 6002), 2);
        }
        // sled's flusher thread may keep the file lock a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let s = store.snapshot();
        assert_eq!(s.epoch, 2);
        assert_eq!(s.proxies.len(), 2);
    }

    #[test]
    fn a_refused_change_writes_nothing_and_if_match_guards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        register(&store, 6001);
        let err = store.mutate(Some(7), |t| t.delete_proxy("127.0.0.1:6001")).unwrap_err();
        assert_eq!(err.code, "epoch_mismatch");
        let err = store
            .mutate(None, |t| {
                t.bump();
                Err::<(), _>(ApiError::conflict("no"))
            })
            .unwrap_err();
        assert_eq!(err.code, "conflict");
        assert_eq!(store.snapshot().epoch, 1);
        store.mutate(Some(1), |t| t.delete_proxy("127.0.0.1:6001")).unwrap();
        assert_eq!(store.snapshot().epoch, 2);
        assert!(store.snapshot().proxies.is_empty());
    }
}
