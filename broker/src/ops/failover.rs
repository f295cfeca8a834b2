//! Failover: a replica of a shard becomes its master, and the master it replaces becomes a
//! replica marked `former_master`.
//!
//! The change is one epoch. From it on every proxy routes the shard's slots to the new master
//! (whose proxy promotes its node, `REPLICAOF NO ONE`), and the former master is fenced: its
//! proxy, once it holds the new config, serves nothing of the shard as a master and makes its
//! node replicate the new one, which replaces whatever that node took that the new master
//! lacks. Two coordinators that both see the master down send the same request conditioned on
//! the epoch (`If-Match`): the first wins, the second gets 412.
//!
//! A *graceful* failover is two steps. Asking for it only marks the shard (`handover`: the
//! replica to hand over to): the master's proxy holds the shard's writes, waits until the
//! replica has everything the master has, and says so in `Status`, still holding. Then the
//! coordinator asks for the swap itself (an ordinary failover naming that replica, at the
//! epoch the master said so), and the held writes go to the new master: none is lost. The
//! master's proxy lets go only when its config changes, so the swap and a `cancel` are the
//! two ways a handover ends.

use super::Txn;
use crate::error::ApiError;
use sluice_common::api::FailoverRequest;
use sluice_common::model::{ClusterView, NodeView, ReplicaView};

impl Txn {
    pub fn failover(&mut self, cluster: &str, req: FailoverRequest) -> Result<ClusterView, ApiError> {
        if req.cancel {
            return self.cancel_handover(cluster, &req.master);
        }
        let view = self.cluster(cluster)?;
        let Some(index) = view.nodes.iter().position(|n| n.proxy == req.master) else {
            return Err(match view.shard_of_replica(&req.master) {
                Some(shard) => ApiError::conflict(format!(
                    "{} is a replica of the shard of {}; name the shard's master",
                    req.master, shard.proxy
                )),
                None => ApiError::conflict(format!("{} is not a master of cluster {cluster:?}", req.master)),
            });
        };
        let shard = &view.nodes[index];
        let candidates: Vec<&ReplicaView> =
            shard.replicas.iter().filter(|r| !r.former_master || req.promote.is_some()).collect();
        let replica =
            match &req.promote {
                Some(p) => shard.replicas.iter().find(|r| &r.proxy == p).ok_or_else(|| {
                    ApiError::conflict(format!("{p} is not a replica of the shard of {}", req.master))
                })?,
                None => candidates
                    .into_iter()
                    .find(|r| !self.state.proxies.get(&r.proxy).is_some_and(|p| p.failed))
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "the shard of {} has no replica to promote (none, or all marked failed)",
                            req.master
                        ))
                    })?,
            };
        if self.state.proxies.get(&replica.proxy).is_some_and(|p| p.failed) {
            return Err(ApiError::conflict(format!("{} is marked failed; promote another replica", replica.proxy)));
        }
        let running: Vec<&str> = self
            .state
            .migrations_of(cluster)
            .filter(|(_, m)| !m.phase.is_final() && (m.src == req.master || m.dst == req.master))
            .map(|(_, m)| m.id.as_str())
            .collect();
        if !running.is_empty() {
            return Err(ApiError::conflict(format!(
                "migration {} involves the shard of {}; a failover waits until it has ended",
                running.join(", "),
                req.master
            )));
        }
        if req.graceful {
            return self.begin_handover(cluster, index, &replica.proxy.clone());
        }
        let promoted = replica.clone();
        let former = ReplicaView {
            proxy: shard.proxy.clone(),
            node: shard.node.clone(),
            peer: shard.peer.clone(),
            former_master: true,
        };
        let mut replicas: Vec<ReplicaView> =
            shard.replicas.iter().filter(|r| r.proxy != promoted.proxy).cloned().collect();
        replicas.push(former);
        let new_master = NodeView {
            proxy: promoted.proxy.clone(),
            node: promoted.node,
            slots: shard.slots.clone(),
            peer: promoted.peer,
            replicas,
            handover: None,
            // As a native failover: the promoted replica takes the greatest config epoch.
            config_epoch: view.current_config_epoch() + 1,
        };
        let view = self.edit_shard(cluster, index, |node| *node = new_master)?;
        let why = req.reason.map(|r| format!(" ({r})")).unwrap_or_default();
        self.note(format!("failover in cluster {cluster}: {} replaces {} as master{why}", promoted.proxy, req.master));
        Ok(view)
    }

    /// Step one of a graceful failover: marks the shard of `nodes[index]` for a handover to
    /// `to`. Asking again for the same handover changes nothing.
    fn begin_handover(&mut self, cluster: &str, index: usize, to: &str) -> Result<ClusterView, ApiError> {
        let view = self.cluster(cluster)?;
        let shard = &view.nodes[index];
        match shard.handover.as_deref() {
            Some(t) if t == to => return Ok(view.clone()),
            Some(t) => {
                return Err(ApiError::conflict(format!(
                    "a graceful failover of the shard of {} to {t} is in progress; cancel it first",
                    shard.proxy
                )))
            }
            None => {}
        }
        if self.state.proxies.get(&shard.proxy).is_some_and(|p| p.failed) {
            return Err(ApiError::conflict(format!(
                "{} is marked failed: a graceful failover needs the master up; ask for a forced one",
                shard.proxy
            )));
        }
        let master = shard.proxy.clone();
        let view = self.edit_shard(cluster, index, |node| node.handover = Some(to.to_string()))?;
        self.note(format!("graceful failover in cluster {cluster}: {master} hands over to {to}"));
        Ok(view)
    }

    /// Withdraws the handover of `master`'s shard; the master keeps the shard.
    fn cancel_handover(&mut self, cluster: &str, master: &str) -> Result<ClusterView, ApiError> {
        let view = self.cluster(cluster)?;
        let Some(index) = view.nodes.iter().position(|n| n.proxy == master && n.handover.is_some()) else {
            return Err(ApiError::conflict(format!("no graceful failover of {master}'s shard is in progress")));
        };
        let view = self.edit_shard(cluster, index, |node| node.handover = None)?;
        self.note(format!("graceful failover of {master}'s shard in cluster {cluster} cancelled"));
        Ok(view)
    }

    /// One edit of a shard of `cluster` (`nodes[index]`), as one epoch: the cluster records
    /// it as its epoch, and the answer is the cluster after it.
    fn edit_shard(
        &mut self,
        cluster: &str,
        index: usize,
        edit: impl FnOnce(&mut NodeView),
    ) -> Result<ClusterView, ApiError> {
        let epoch = self.bump();
        let view = self
            .state
            .clusters
            .get_mut(cluster)
            .ok_or_else(|| ApiError::not_found(format!("no cluster {cluster:?}")))?;
        let node =
            view.nodes.get_mut(index).ok_or_else(|| ApiError::not_found(format!("no shard {index} in {cluster:?}")))?;
        edit(node);
        view.epoch = epoch;
        Ok(view.clone())
    }
}
