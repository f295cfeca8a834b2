//! The copy a replication import leaves behind when it ends without a switch and this proxy
//! dies before deleting it.
//!
//! The destination of an aborted or failed replication-mode migration stops its node
//! replicating and deletes what it copied ([`super::destination`]), after the migration has
//! left its config. Killed in between, the restarted proxy finds a config that names no
//! migration any more, and its node keeps the copy for good: the next replication into it is
//! refused ("holds keys"), and the keys count twice (found by the chaos test). So a *free*
//! proxy (no cluster, no migration) looks at its node: a replica stops replicating, and a
//! node that was a replica (it has a previous replication id) and holds keys is emptied.
//! Only sluice's replication imports make a node a replica, and a replica's data is a copy;
//! a node that never was one (data put there before sluice, by an operator) is left alone.

use super::node::connect;
use crate::migration::error::MigrationError;
use crate::state::Shared;
use std::sync::Arc;

/// What Redis shows as the previous replication id of a node that never had one.
const NO_REPLID: &str = "0000000000000000000000000000000000000000";

/// Whether `shared` is free (no cluster, no migration) in the config it holds now.
fn is_free(shared: &Shared) -> bool {
    let routes = shared.routes();
    routes.config.cluster.is_none() && routes.config.migrations.is_empty() && routes.epoch() > 0
}

/// Checks the node of a free proxy and deletes a leftover copy; logs what it did.
pub async fn clean(shared: Arc<Shared>) {
    if let Err(e) = clean_node(&shared).await {
        tracing::warn!(error = %e, "could not check the node for a leftover replication copy");
    }
}

async fn clean_node(shared: &Shared) -> Result<(), MigrationError> {
    if !is_free(shared) {
        return Ok(());
    }
    let node = connect(shared, &shared.opts.node).await?;
    let info = node.replication().await?;
    if !info.is_master() {
        tracing::warn!(node = %shared.opts.node, "this free proxy's node still replicates: a replication import ended; stopping it");
        node.promote().await?;
    }
    let info = node.replication().await?;
    let was_replica = !info.master_replid2.is_empty() && info.master_replid2 != NO_REPLID;
    let keys = node.dbsize().await?;
    // Checked again right before: a migration into this proxy may have arrived meanwhile
    // (its destination task then finds the keys and refuses, or finds them gone).
    if was_replica && keys > 0 && is_free(shared) {
        tracing::warn!(node = %shared.opts.node, keys, "this free proxy's node holds a copy left by a replication import that ended; deleting it");
        node.call(&["FLUSHALL", "ASYNC"]).await?;
    }
    Ok(())
}
