//! Clusters: creation on chosen or counted free proxies, deletion.

use super::Txn;
use crate::error::ApiError;
use crate::state::{check_address, valid_cluster_name};
use sluice_common::api::{CreateCluster, ProxySelection};
use sluice_common::model::{split_slots_evenly, ClusterView, Epoch, NodeView, SlotAssignment};
use sluice_common::slot::SLOT_COUNT;

impl Txn {
    pub fn create_cluster(&mut self, req: CreateCluster) -> Result<ClusterView, ApiError> {
        if !valid_cluster_name(&req.name) {
            return Err(ApiError::invalid(format!(
                "cluster name {:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ -",
                req.name
            )));
        }
        let max = usize::from(SLOT_COUNT);
        // The chosen proxies as nodes without slots yet, in slot order.
        let chosen: Vec<NodeView> = match &req.proxies {
            ProxySelection::Count(n) => {
                let n = usize::try_from(*n).unwrap_or(usize::MAX);
                if n == 0 || n > max {
                    return Err(ApiError::invalid(format!("proxies must be between 1 and {max}, not {n}")));
                }
                if self.state.clusters.contains_key(&req.name) {
                    return Err(self.cluster_exists(&req.name));
                }
                let free = self.state.free_proxies();
                if free.len() < n {
                    return Err(ApiError::conflict(format!(
                        "cluster {:?} needs {n} free proxies but only {} are free; register more proxies \
                         (POST /api/v1/proxies) or ask for fewer",
                        req.name,
                        free.len()
                    )));
                }
                free.into_iter().take(n).map(|p| p.node_view()).collect()
            }
            ProxySelection::Addresses(list) => {
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
                if self.state.clusters.contains_key(&req.name) {
                    return Err(self.cluster_exists(&req.name));
                }
                let mut chosen = Vec::with_capacity(list.len());
                for a in list {
                    let p = self.require_free(a, "the new cluster")?;
                    chosen.push(p.node_view());
                }
                chosen
            }
        };
        let epoch = self.bump();
        let ranges = split_slots_evenly(chosen.len());
        let nodes = chosen
            .into_iter()
            .zip(ranges)
            .map(|(n, r)| NodeView { slots: vec![SlotAssignment::plain(r)], ..n })
            .collect();
        let view = ClusterView { name: req.name.clone(), epoch, nodes };
        self.note(format!("cluster {} created on {} proxies", req.name, view.nodes.len()));
        self.state.clusters.insert(req.name, view.clone());
        Ok(view)
    }

    fn cluster_exists(&self, name: &str) -> ApiError {
        ApiError::conflict(format!("cluster {name:?} already exists; pick another name or delete it first"))
    }

    /// Deletes a cluster and its migration records; its proxies become free.
    pub fn delete_cluster(&mut self, name: &str, force: bool) -> Result<(Epoch, Vec<String>), ApiError> {
        let cluster = self.cluster(name)?;
        let freed: Vec<String> = cluster.nodes.iter().map(|n| n.proxy.clone()).collect();
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
