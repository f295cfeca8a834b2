//! A proxy's part in its shard. A replica proxy keeps its node replicating the shard's
//! master node (`REPLICAOF`), and says whether it follows it with the link up
//! ([`Shared::replica_synced`]): `READONLY` clients read from it only then. A master proxy
//! whose node still replicates (a failover just made it the master) promotes it
//! (`REPLICAOF NO ONE`), unless a replication-mode migration is importing into it: that
//! node's promotion is the migration's source's to do, at the switch.
//!
//! Replication replaces everything the replica's node holds. So a node that holds keys and
//! is not the shard's former master (a failover marks that one) is never made a replica,
//! unless what it holds is an older copy of the master's own (a replica restarted from the RDB
//! of its last sync): sluice does not wipe data it did not put there. The proxy logs why and
//! keeps trying, so emptying the node (or replacing the replica) is enough.

use crate::migration::error::{refused, MigrationError};
use crate::migration::node::{connect, ControlConn};
use crate::state::{Shared, PROMOTION};
use sluice_common::model::MigrationMode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The node connection, opened again if it broke.
async fn connection<'a>(shared: &Shared, node: &'a mut Option<ControlConn>) -> Result<&'a ControlConn, MigrationError> {
    if node.as_ref().is_none_or(ControlConn::is_closed) {
        *node = Some(connect(shared, &shared.opts.node).await?);
    }
    node.as_ref().ok_or_else(|| refused!("no connection to the node"))
}

/// Whether a replication-mode migration imports into this proxy (its node replicates the
/// migration's source until the switch).
fn importing_by_replication(shared: &Shared, routes: &crate::route::RouteTable) -> bool {
    routes.config.migrations.iter().any(|m| m.dst_proxy == shared.me() && m.mode == MigrationMode::Replication)
}

/// How often a replica looks at its node between config changes.
const POLL: Duration = Duration::from_millis(250);

/// Runs for the life of the proxy.
pub async fn run(shared: Arc<Shared>) {
    let mut changes = shared.route_changes();
    let mut node: Option<ControlConn> = None;
    let mut last_problem = String::new();
    loop {
        match step(&shared, &mut node).await {
            Ok(()) => last_problem.clear(),
            Err(e) => {
                shared.replica_synced.store(false, Ordering::Release);
                node = None;
                let problem = e.to_string();
                if problem != last_problem {
                    tracing::warn!(error = %problem, "this replica's node does not follow its master");
                    last_problem = problem;
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
async fn step(shared: &Shared, node: &mut Option<ControlConn>) -> Result<(), MigrationError> {
    let routes = shared.routes_full();
    if routes.me.is_none() && shared.has_override(PROMOTION) {
        // Demoted again before the promotion: the hold is not this proxy's to keep.
        shared.set_override(PROMOTION, None).await;
    }
    let Some(master) = routes.replica_of.map(|i| &routes.peers[i]) else {
        shared.replica_synced.store(false, Ordering::Release);
        if routes.me.is_some() && routes.slots_served() > 0 && !importing_by_replication(shared, &routes) {
            let conn = connection(shared, node).await?;
            let info = conn.replication().await?;
            if !info.is_master() {
                conn.promote().await?;
                tracing::warn!(former_master = %info.master(), "this proxy is its shard's master now: its node was promoted");
            }
            if shared.has_override(PROMOTION) {
                shared.set_override(PROMOTION, None).await;
            }
            // A filtered migration's link to our node (it announces our own port) is no replica
            // of the shard: it must not make --ack-replicas wait for it.
            let link_port: Option<u16> = shared.opts.announce().rsplit(':').next().and_then(|p| p.parse().ok());
            let online = info.replicas.iter().filter(|r| r.state == "online" && Some(r.port) != link_port).count();
            shared.online_replicas.store(online, Ordering::Release);
        } else {
            shared.online_replicas.store(0, Ordering::Release);
        }
        return Ok(());
    };
    let conn = connection(shared, node).await?;
    let info = conn.replication().await?;
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
        let keys = conn.dbsize().await?;
        if keys > 0 && !copy_of_master(shared, &info, &master.node).await {
            return Err(refused!(
                "node {} holds {keys} keys; as a replica of {} it would lose them, so it is not made one \
                 (empty it, or make another proxy the replica)",
                shared.opts.node,
                master.node
            ));
        }
    }
    conn.replicate_from(&master.node).await?;
    tracing::info!(master = %master.node, proxy = %master.proxy, "this replica's node now replicates the shard's master");
    Ok(())
}

/// Whether a node that holds keys holds (an older) copy of `master`'s: its previous
/// replication id is one of the master's. A replica that restarted from the RDB its last sync
/// saved comes back a master with that id as its previous one; replication then only brings
/// the copy up to date, and nothing that is not the master's is lost.
async fn copy_of_master(shared: &Shared, info: &crate::migration::node::ReplInfo, master: &str) -> bool {
    const NO_REPLID: &str = "0000000000000000000000000000000000000000";
    if info.master_replid2.is_empty() || info.master_replid2 == NO_REPLID {
        return false;
    }
    let Ok(conn) = connect(shared, master).await else { return false };
    let Ok(theirs) = conn.replication().await else { return false };
    info.master_replid2 == theirs.master_replid || info.master_replid2 == theirs.master_replid2
}
