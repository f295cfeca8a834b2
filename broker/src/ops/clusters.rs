//! Clusters: creation on chosen or counted free proxies, deletion.

use super::Txn;
use crate::error::ApiError;
use crate::state::{check_address, valid_cluster_name};
use sluice_common::api::{CreateCluster, ProxySelection};
use sluice_common::model::{split_slots_evenly, ClusterView, Epoch, NodeView, ReplicaView, SlotAssignment};
use sluice_common::slot::SLOT_COUNT;

/// Most replicas a shard may have.
pub(super) const MAX_REPLICAS: usize = 5;

impl Txn {
    pub fn create_cluster(&mut self, req: CreateCluster) -> Result<ClusterView, ApiError> {
        if !valid_cluster_name(&req.name) {
            return Err(ApiError::invalid(format!(
                "cluster name {:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ -",
                req.name
            )));
        }
        let replicas = usize::try_from(req.replicas).unwrap_or(usize::MAX);
        if replicas > MAX_REPLICAS {
            return Err(ApiError::invalid(format!(
                "replicas must be between 0 and {MAX_REPLICAS} per shard, not {replicas}"
            )));
        }
        let chosen = match &req.proxies {
            ProxySelection::Count(n) => self.counted_masters(&req.name, *n, replicas)?,
            ProxySelection::Addresses(list) => self.listed_masters(&req.name, list)?,
        };
        let shards = self.with_replicas(&req.name, chosen, replicas)?;
        let epoch = self.bump();
        let ranges = split_slots_evenly(shards.len());
        let nodes = shards
            .into_iter()
            .zip(ranges)
            .enumerate()
            // Distinct config epochs 1, 2, … as `redis-cli --cluster create` gives the masters.
            .map(|(i, ((n, replicas), r))| NodeView {
                slots: vec![SlotAssignment::plain(r)],
                replicas,
                config_epoch: i as Epoch + 1,
                ..n
            })
            .collect();
        let view = ClusterView { name: req.name.clone(), epoch, nodes };
        self.note(format!(
            "cluster {} created on {} proxies ({} replicas per shard)",
            req.name,
            view.nodes.len(),
            replicas
        ));
        self.state.clusters.insert(req.name, view.clone());
        Ok(view)
    }

    /// `proxies: N`: the first `n` free proxies as masters without slots yet, once there are
    /// enough free ones for their replicas too.
    fn counted_masters(&self, name: &str, n: u64, replicas: usize) -> Result<Vec<NodeView>, ApiError> {
        let max = usize::from(SLOT_COUNT);
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n == 0 || n > max {
            return Err(ApiError::invalid(format!("proxies must be between 1 and {max}, not {n}")));
        }
        if self.state.clusters.contains_key(name) {
            return Err(self.cluster_exists(name));
        }
        let free = self.state.free_proxies();
        let needed = n.saturating_mul(1 + replicas);
        if free.len() < needed {
            return Err(ApiError::conflict(format!(
                "cluster {name:?} needs {needed} free proxies ({n} shards × {} proxies) but only {} are \
                 free; register more proxies (POST /api/v1/proxies) or ask for fewer",
                1 + replicas,
                free.len()
            )));
        }
        Ok(free.into_iter().take(n).map(|p| p.node_view()).collect())
    }

    /// `proxies: [addresses]`: those proxies as masters without slots yet, in slot order;
    /// each must be registered, free and listed once.
    fn listed_masters(&self, name: &str, list: &[String]) -> Result<Vec<NodeView>, ApiError> {
        let max = usize::from(SLOT_COUNT);
        if list.is_empty() || list.len() > max {
            return Err(ApiError::invalid(format!(
                "proxies must list between 1 and {max} addresses, not {}",
                list.len()
            )));
        }
        for (i, a) in list.iter().enumerate() {
            check_address("proxy", a).map_err(ApiError::invalid)?;
            if list[..i].contains(a) {
                return Err(ApiError::invalid(format!("proxy {a} is listed twice")));
            }
        }
        if self.state.clusters.contains_key(name) {
            return Err(self.cluster_exists(name));
        }
        list.iter().map(|a| Ok(self.require_free(a, "the new cluster")?.node_view())).collect()
    }

    /// Each chosen master with `replicas` replicas: free proxies other than the chosen
    /// masters, in address order.
    fn with_replicas(
        &self,
        name: &str,
        chosen: Vec<NodeView>,
        replicas: usize,
    ) -> Result<Vec<(NodeView, Vec<ReplicaView>)>, ApiError> {
        let spare: Vec<ReplicaView> = self
            .state
            .free_proxies()
            .into_iter()
            .filter(|p| !chosen.iter().any(|n| n.proxy == p.address))
            .map(|p| p.replica_view())
            .collect();
        let mut spare = spare.into_iter();
        let mut shards = Vec::with_capacity(chosen.len());
        for master in chosen {
            let shard: Vec<ReplicaView> = spare.by_ref().take(replicas).collect();
            if shard.len() < replicas {
                return Err(ApiError::conflict(format!(
                    "cluster {name:?} needs {replicas} replicas per shard, but too few proxies are free; \
                     register more proxies (POST /api/v1/proxies) or ask for fewer replicas"
                )));
            }
            shards.push((master, shard));
        }
        Ok(shards)
    }

    fn cluster_exists(&self, name: &str) -> ApiError {
        ApiError::conflict(format!("cluster {name:?} already exists; pick another name or delete it first"))
    }

    /// Deletes a cluster and its migration records; its proxies become free.
    pub fn delete_cluster(&mut self, name: &str, force: bool) -> Result<(Epoch, Vec<String>), ApiError> {
        let cluster = self.cluster(name)?;
        let freed: Vec<String> = cluster.members().map(str::to_string).collect();
        let running: Vec<&str> =
            self.state.migrations_of(name).filter(|(_, m)| !m.phase.is_final()).map(|(_, m)| m.id.as_str()).collect();
        if !running.is_empty() && !force {
            return Err(ApiError::conflict(format!(
                "cluster {name:?} has running migrations ({}); wait for them to end, abort them, or delete \
                 with ?force=true",
                running.join(", ")
            )));
        }
        self.state.clusters.remove(name);
        self.state.migrations.retain(|_, m| m.cluster != name);
        self.state.scales.remove(name);
        let epoch = self.bump();
        self.note(format!("cluster {name} deleted, freeing {}", freed.join(", ")));
        Ok((epoch, freed))
    }
}

/// Config epochs (`NodeView::config_epoch`): set where slots change owner, here and in
/// `migrations/` and `failover.rs`, tested together because together they must keep the
/// masters' epochs distinct, with the greatest on the last change.
#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;
    use crate::state::State;
    use sluice_common::api::FailoverRequest;
    use sluice_common::model::MigrationPhase;

    fn epochs(s: &State) -> Vec<(String, u64)> {
        s.clusters["shop"].nodes.iter().map(|n| (n.proxy.clone(), n.config_epoch)).collect()
    }

    #[test]
    fn creation_numbers_the_masters_and_a_commit_gives_the_destination_the_greatest() {
        // Cluster shop on 6001 and 6002; m-1 moves slots 0-100 from 6001 to the free 6003.
        let mut s = setup(true);
        let created = vec![(addr(6001), 1), (addr(6002), 2)];
        // The destination joins without an epoch of its own, as a native node met but not
        // yet given slots.
        assert_eq!(epochs(&s), [created.clone(), vec![(addr(6003), 0)]].concat());
        for phase in ["starting", "following", "switching", "switched"] {
            report(&mut s, T0, phase, None).expect(phase);
        }
        assert_eq!(epochs(&s)[2], (addr(6003), 0), "nothing changes owner before the commit");
        txn(&mut s, T0, |t| t.commit("shop", "m-1", None)).expect("commit");
        assert_eq!(epochs(&s), [created.clone(), vec![(addr(6003), 3)]].concat());
        // The commit again (another coordinator): nothing moves.
        txn(&mut s, T0, |t| t.commit("shop", "m-1", None)).expect("again");
        assert_eq!(epochs(&s)[2], (addr(6003), 3));
        // The configs carry them to every proxy.
        let config = s.proxy_config(&addr(6002)).expect("registered");
        let carried: Vec<u64> = config.cluster.expect("in the cluster").nodes.iter().map(|n| n.config_epoch).collect();
        assert_eq!(carried, vec![1, 2, 3]);
    }

    #[test]
    fn a_destination_that_holds_the_greatest_epoch_keeps_it() {
        // m-1 (keys mode) moves every slot of 6001 to 6002, which holds the greatest epoch.
        let mut s = setup(false);
        report(&mut s, T0, "switched", None).expect("switched");
        txn(&mut s, T0, |t| t.commit("shop", "m-1", None)).expect("commit");
        assert_eq!(epochs(&s), vec![(addr(6002), 2)], "6001 left; 6002 had the greatest already");
    }

    #[test]
    fn a_migration_that_ends_without_a_commit_changes_no_epoch() {
        let mut s = setup(true);
        txn(&mut s, T0, |t| t.stop("shop", "m-1", MigrationPhase::Aborted, "why".into(), None)).expect("abort");
        assert_eq!(epochs(&s), vec![(addr(6001), 1), (addr(6002), 2)]);
    }

    #[test]
    fn a_failover_gives_the_promoted_replica_the_greatest_epoch() {
        let mut s = shop(6001..=6004, 1);
        assert_eq!(epochs(&s), vec![(addr(6001), 1), (addr(6002), 2)]);
        let failover = |master: u16| FailoverRequest {
            master: addr(master),
            promote: None,
            reason: None,
            graceful: false,
            cancel: false,
        };
        // A graceful failover's first step only marks the shard: no owner changes yet.
        let graceful = FailoverRequest { graceful: true, ..failover(6001) };
        txn(&mut s, T0, |t| t.failover("shop", graceful)).expect("handover");
        assert_eq!(epochs(&s), vec![(addr(6001), 1), (addr(6002), 2)]);
        txn(&mut s, T0, |t| t.failover("shop", FailoverRequest { cancel: true, ..failover(6001) })).expect("cancel");
        txn(&mut s, T0, |t| t.failover("shop", failover(6001))).expect("failover");
        let promoted = s.clusters["shop"].nodes[0].proxy.clone();
        assert_ne!(promoted, addr(6001));
        assert_eq!(epochs(&s), vec![(promoted.clone(), 3), (addr(6002), 2)]);
        txn(&mut s, T0, |t| t.failover("shop", failover(6002))).expect("failover");
        let second = s.clusters["shop"].nodes[1].proxy.clone();
        assert_eq!(epochs(&s), vec![(promoted, 3), (second, 4)]);
    }
}
