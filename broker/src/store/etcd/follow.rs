//! Keeps the broker's in-memory state current when another broker commits: a watch of the
//! namespace's prefix from the revision in memory; any change newer than it reloads the state
//! (one range read at one revision, so the state is always one a commit left, never half of
//! one). When the watch breaks (etcd down, compacted history) it reloads and watches again,
//! trying every [`RETRY_MIN`]..[`RETRY_MAX`].

use super::{snapshot, Inner};
use crate::error::StoreError;
use etcd_client::WatchOptions;
use std::sync::Arc;
use std::time::Duration;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs for the store's life.
pub(super) async fn follow(inner: Arc<Inner>) {
    let mut retry = RETRY_MIN;
    loop {
        match watch(&inner).await {
            Ok(()) => tracing::warn!("the etcd watch ended; watching again"),
            Err(e) => tracing::warn!(error = %e, "the etcd watch broke; watching again once etcd answers"),
        }
        loop {
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
            match snapshot::read(&inner.conn).await {
                Ok(loaded) => {
                    inner.publish(loaded);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "etcd still unreachable"),
            }
        }
        retry = RETRY_MIN;
    }
}

/// One watch, until it ends or fails.
async fn watch(inner: &Inner) -> Result<(), StoreError> {
    let from = inner.current.load().revision + 1;
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut client = inner.conn.client.clone();
    let store = inner.store_name();
    let mut stream =
        client.watch(inner.conn.spec.prefix(), Some(options)).await.map_err(|e| snapshot::classify(&store, e))?;
    while let Some(resp) = stream.message().await.map_err(|e| snapshot::classify(&store, e))? {
        if resp.canceled() {
            return Err(StoreError::Unavailable {
                store,
                reason: format!(
                    "watch cancelled (compacted up to {}): {}",
                    resp.compact_revision(),
                    resp.cancel_reason()
                ),
            });
        }
        let newest = resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
        if newest.is_some_and(|rev| rev > inner.current.load().revision) {
            let loaded = snapshot::read(&inner.conn).await?;
            tracing::info!(
                epoch = loaded.state.epoch,
                revision = loaded.revision,
                "state reloaded: a change committed through etcd"
            );
            inner.publish(loaded);
        }
    }
    Ok(())
}
