//! A proxy's part in its shard. A replica proxy keeps its node replicating the shard's
//! master node (`REPLICAOF`), and says whether it follows it with the link up
//! ([`Shared::replica_synced`]): `READONLY` clients read from it only then.
//!
//! Replication replaces everything the replica's node holds. So a node that holds keys and
//! is not the shard's former master (a failover marks that one) is never made a replica:
//! sluice does not wipe data it did not put there. The proxy logs why and keeps trying, so
//! emptying the node (or replacing the replica) is enough.

use crate::migration::node::{connect, NodeConn};
use crate::state::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica looks at its node between config changes.
const POLL: Duration = Duration::from_millis(250);

/// Runs for the life of the proxy.
pub async fn run(shared: Arc<Shared>) {
    let mut changes = shared.route_changes();
    let mut node: Option<NodeConn> = None;
    let mut last_problem = String::new();
    loop {
        match step(&shared, &mut node).await {
            Ok(()) => last_problem.clear(),
            Err(e) => {
                shared.replica_synced.store(false, Ordering::Release);
                node = None;
                if e != last_problem {
                    tracing::warn!(error = %e, "this replica's node does not follow its master");
                    last_problem = e;
                }
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One look at the node: makes a replica's node follow the shard's master.
async fn step(shared: &Shared, node: &mut Option<NodeConn>) -> Result<(), String> {
    let routes = shared.routes_full();
    let Some(master) = routes.replica_of.map(|i| &routes.peers[i]) else {
        shared.replica_synced.store(false, Ordering::Release);
        return Ok(());
    };
    let conn = match node {
        Some(c) if !c.is_closed() => c,
        _ => node.insert(connect(shared, &shared.opts.node).await?),
    };
    let info = conn.replication().await.map_err(|e| e.to_string())?;
    if info.role == "slave" && info.master() == master.node {
        shared.replica_synced.store(info.is_synced_replica(), Ordering::Release);
        return Ok(());
    }
    shared.replica_synced.store(false, Ordering::Release);
    let former_master = routes
        .cluster()
        .and_then(|c| c.shard_of_replica(shared.me()))
        .and_then(|n| n.replicas.iter().find(|r| r.proxy == shared.me()))
        .is_some_and(|r| r.former_master);
    if info.is_master() && !former_master {
        let keys = conn.dbsize().await.map_err(|e| e.to_string())?;
        if keys > 0 {
            return Err(format!(
                "node {} holds {keys} keys; as a replica of {} it would lose them, so it is not made one \
                 (empty it, or make another proxy the replica)",
                shared.opts.node, master.node
            ));
        }
    }
    conn.replicate_from(&master.node).await.map_err(|e| e.to_string())?;
    tracing::info!(master = %master.node, proxy = %master.proxy, "this replica's node now replicates the shard's master");
    Ok(())
}
