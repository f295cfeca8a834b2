//! The sled store: the whole [`State`] in memory for reads, and every change written as one
//! sled transaction of the `metadata` tree (layout: [`super::records`]), flushed to disk before
//! the caller answers.
//!
//! Writers are serialised by one mutex held across read, edit, transaction and flush, so the
//! epoch a transaction read is always still current when it commits: two concurrent
//! `If-Match` calls on the same epoch cannot both pass, and nothing is ever run twice.
//! Readers never wait on it: they take the last published snapshot.

use super::{now_rfc3339, records, MetaStore};
use crate::error::{ApiError, StoreError};
use crate::ops::Txn;
use crate::state::State;
use arc_swap::ArcSwap;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    write: Mutex<()>,
    current: ArcSwap<State>,
}

impl SledStore {
    /// Opens (or creates) the database in `dir` and loads the state.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let tree = db.open_tree("metadata")?;
        let state = records::load(tree.iter().map(|item| item.map_err(StoreError::from)))?;
        Ok(SledStore { db, tree, write: Mutex::new(()), current: ArcSwap::from_pointee(state) })
    }

    /// Writes `ops` in one sled transaction.
    fn commit(&self, ops: &[records::Op]) -> Result<(), ApiError> {
        let applied: Result<(), TransactionError<()>> = self.tree.transaction(|tx| {
            for (key, value) in ops {
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
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e).into()),
            Err(TransactionError::Abort(())) => Err(ApiError::internal("metadata transaction aborted")),
        }
    }
}

impl MetaStore for SledStore {
    fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Under the write lock: `apply` edits a copy of the state, what differs is written in one
    /// sled transaction, the state is published, then flushed. `apply` runs exactly once.
    fn transaction(&self, apply: &mut dyn FnMut(&mut Txn) -> Result<(), ApiError>) -> Result<Arc<State>, ApiError> {
        let _guard = self.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.current.load_full();
        let mut txn = Txn::new((*old).clone(), now_rfc3339());
        apply(&mut txn)?;
        if txn.state == *old {
            return Ok(old);
        }
        let ops = records::diff(&old, &txn.state)?;
        self.commit(&ops)?;
        // The transaction is in; from here memory follows it even if the flush fails.
        let new = Arc::new(txn.state);
        self.current.store(new.clone());
        let flushed = self.db.flush();
        if old.epoch != new.epoch {
            tracing::info!(epoch = new.epoch, previous = old.epoch, change = %txn.change.join("; "), "epoch changed");
        }
        flushed.map_err(StoreError::Sled)?;
        Ok(new)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
