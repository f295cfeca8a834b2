//! Proxies: registration (and re-registration with new addresses), deletion, health.

use super::Txn;
use crate::error::ApiError;
use crate::state::{check_address, ProxyRecord};
use sluice_common::api::{HealthReport, ProxyInfo, RegisterProxy};
use sluice_common::model::Epoch;

impl Txn {
    /// Registers a proxy. Answers the proxy and whether it is new (201) or was known (200).
    pub fn register_proxy(&mut self, req: RegisterProxy) -> Result<(ProxyInfo, bool), ApiError> {
        check_address("address", &req.address).map_err(ApiError::invalid)?;
        check_address("control_address", &req.control_address).map_err(ApiError::invalid)?;
        check_address("node_address", &req.node_address).map_err(ApiError::invalid)?;
        if let Some(peer) = &req.peer_address {
            check_address("peer_address", peer).map_err(ApiError::invalid)?;
        }
        // A peer address equal to the client-facing one says nothing more: stored as absent, so
        // that giving it or not is the same registration.
        let peer_address = req.peer_address.filter(|p| *p != req.address);
        if let Some(known) = self.state.proxies.get(&req.address) {
            if known.control_address == req.control_address
                && known.node_address == req.node_address
                && known.peer_address == peer_address
            {
                return Ok((self.state.proxy_info(known), false));
            }
            if known.node_address != req.node_address {
                if let Some(cluster) = self.state.cluster_of(&req.address) {
                    return Err(ApiError::conflict(format!(
                        "proxy {} serves cluster {:?} with node {}; it cannot move to node {} while it \
                         serves (migrate its slots away first, or register the new node under another address)",
                        req.address, cluster.name, known.node_address, req.node_address
                    )));
                }
            }
            let rec = self.state.proxies.get_mut(&req.address).ok_or_else(|| ApiError::internal("proxy vanished"))?;
            rec.control_address = req.control_address;
            rec.node_address = req.node_address;
            let peer_changed = rec.peer_address != peer_address;
            rec.peer_address = peer_address.clone();
            let epoch = self.bump();
            if peer_changed {
                // A node's peer address travels in its cluster's view: the other proxies learn
                // the new one with their next config. A serving proxy may change it (unlike its
                // node): it is only where the same proxy is reached.
                let view = self.state.clusters.values_mut().find(|c| c.members().any(|m| m == req.address));
                if let Some(view) = view {
                    for n in view.nodes.iter_mut() {
                        if n.proxy == req.address {
                            n.peer = peer_address.clone();
                        }
                        for r in n.replicas.iter_mut().filter(|r| r.proxy == req.address) {
                            r.peer = peer_address.clone();
                        }
                    }
                    view.epoch = epoch;
                }
            }
            self.note(format!("proxy {} re-registered with new addresses", req.address));
            let info = self.state.proxy_info(&self.state.proxies[&req.address]);
            return Ok((info, false));
        }
        let rec = ProxyRecord {
            address: req.address.clone(),
            control_address: req.control_address,
            node_address: req.node_address,
            peer_address,
            failed: false,
            failure: None,
            registered_at: self.now.clone(),
        };
        let info = self.state.proxy_info(&rec);
        self.state.proxies.insert(req.address.clone(), rec);
        self.bump();
        self.note(format!("proxy {} registered", req.address));
        Ok((info, true))
    }

    pub fn delete_proxy(&mut self, address: &str) -> Result<Epoch, ApiError> {
        self.proxy(address)?;
        if let Some(cluster) = self.state.cluster_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is a node of cluster {:?}; only a free proxy can be deleted (migrate its \
                 slots away or delete the cluster first)",
                cluster.name
            )));
        }
        if let Some(m) = self.state.unfinished_migration_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} still has work in migration {} (phase {:?}); delete it once that is done",
                m.id, m.phase
            )));
        }
        if let Some(plan) = self.state.reserving_plan(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is reserved by scale plan {} of cluster {:?}, which will bring it in; delete it \
                 once the plan has ended",
                plan.id, plan.cluster
            )));
        }
        self.state.proxies.remove(address);
        let epoch = self.bump();
        self.note(format!("proxy {address} deleted"));
        Ok(epoch)
    }

    /// A failure report or its end: status only, no epoch bump.
    pub fn set_health(&mut self, address: &str, report: HealthReport) -> Result<ProxyInfo, ApiError> {
        self.proxy(address)?;
        let rec = self.state.proxies.get_mut(address).ok_or_else(|| ApiError::internal("proxy vanished"))?;
        if rec.failed != report.failed {
            tracing::info!(proxy = address, failed = report.failed, reason = ?report.reason, "proxy health changed");
        }
        rec.failed = report.failed;
        rec.failure = if report.failed { report.reason } else { None };
        let info = self.state.proxy_info(&self.state.proxies[address]);
        Ok(info)
    }

    /// The proxy, if it is registered, not failed and in no cluster.
    pub(super) fn require_free(&self, address: &str, for_what: &str) -> Result<&ProxyRecord, ApiError> {
        let rec = self.state.proxies.get(address).ok_or_else(|| {
            ApiError::conflict(format!(
                "proxy {address} is not registered; register it (POST /api/v1/proxies) before adding it to {for_what}"
            ))
        })?;
        if let Some(c) = self.state.cluster_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is not free: it is a node of cluster {:?}",
                c.name
            )));
        }
        if rec.failed {
            return Err(ApiError::conflict(format!(
                "proxy {address} is marked failed; clear it (PUT /api/v1/proxies/{address}/health \
                 {{\"failed\":false}}) or pick another"
            )));
        }
        if let Some(m) = self.state.unfinished_migration_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is not free yet: migration {} (phase {:?}) is still deleting the keys it left \
                 there; wait until it is done",
                m.id, m.phase
            )));
        }
        if let Some(plan) = self.state.reserving_plan(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is not free: scale plan {} of cluster {:?} reserved it and will bring it in",
                plan.id, plan.cluster
            )));
        }
        Ok(rec)
    }
}
