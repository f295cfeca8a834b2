//! The routing table: for each of the 16384 slots, who serves it.
//!
//! Built once from a [`ProxyConfig`] when the config changes and swapped in atomically, so
//! the request path reads it without locks.

use sluice_common::model::{node_id, ClusterView, Epoch, ModelError, ProxyConfig};
use sluice_common::slot::SLOT_COUNT;
use std::sync::Arc;

const NO_OWNER: u16 = u16::MAX;

/// A peer as the cluster commands describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Client-facing address of the proxy (`host:port`).
    pub proxy: String,
    /// The Redis node behind it.
    pub node: String,
    pub id: String,
}

/// Where a slot is served from this proxy's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// This proxy's own node.
    Local,
    /// Another proxy: answer `MOVED` to it, or forward to it.
    Peer(&'a Peer),
    /// Nobody (no config yet, or a hole in the config): `CLUSTERDOWN`.
    Unserved,
}

/// The config and what is derived from it for routing.
#[derive(Debug)]
pub struct RouteTable {
    pub config: Arc<ProxyConfig>,
    /// Owner of each slot: an index into `peers`, or `NO_OWNER`.
    owners: Box<[u16]>,
    pub peers: Vec<Peer>,
    /// Index of this proxy in `peers`, when it is in a cluster.
    pub me: Option<usize>,
}

impl RouteTable {
    /// The table of a proxy that has no config yet (epoch 0, serves nothing).
    pub fn empty(me: &str) -> RouteTable {
        RouteTable {
            config: Arc::new(ProxyConfig::free(me, 0)),
            owners: vec![NO_OWNER; usize::from(SLOT_COUNT)].into_boxed_slice(),
            peers: Vec::new(),
            me: None,
        }
    }

    pub fn build(config: ProxyConfig) -> Result<RouteTable, ModelError> {
        config.validate()?;
        let mut owners = vec![NO_OWNER; usize::from(SLOT_COUNT)].into_boxed_slice();
        let mut peers = Vec::new();
        let mut me = None;
        if let Some(cluster) = &config.cluster {
            let slot_owners = cluster.slot_owners()?;
            for (i, node) in cluster.nodes.iter().enumerate() {
                if node.proxy == config.proxy {
                    me = Some(i);
                }
                peers.push(Peer { proxy: node.proxy.clone(), node: node.node.clone(), id: node_id(&node.proxy) });
            }
            for (slot, owner) in slot_owners.into_iter().enumerate() {
                if let Some(o) = owner {
                    owners[slot] = o as u16;
                }
            }
        }
        Ok(RouteTable { config: Arc::new(config), owners, peers, me })
    }

    pub fn epoch(&self) -> Epoch {
        self.config.epoch
    }

    pub fn cluster(&self) -> Option<&ClusterView> {
        self.config.cluster.as_ref()
    }

    pub fn route(&self, slot: u16) -> Route<'_> {
        match self.owners.get(usize::from(slot)) {
            Some(&o) if o == NO_OWNER => Route::Unserved,
            Some(&o) if Some(usize::from(o)) == self.me => Route::Local,
            Some(&o) => self.peers.get(usize::from(o)).map_or(Route::Unserved, Route::Peer),
            None => Route::Unserved,
        }
    }

    /// Whether this proxy serves `slot` itself.
    pub fn is_local(&self, slot: u16) -> bool {
        matches!(self.route(slot), Route::Local)
    }

    /// Number of slots somebody serves (for `CLUSTER INFO`).
    pub fn slots_assigned(&self) -> usize {
        self.owners.iter().filter(|&&o| o != NO_OWNER).count()
    }

    /// Contiguous runs of slots with the same owner: (start, end, owner index).
    pub fn runs(&self) -> Vec<(u16, u16, usize)> {
        let mut runs: Vec<(u16, u16, usize)> = Vec::new();
        for (slot, &o) in self.owners.iter().enumerate() {
            if o == NO_OWNER {
                continue;
            }
            let slot = slot as u16;
            match runs.last_mut() {
                Some(last) if last.2 == usize::from(o) && last.1 + 1 == slot => last.1 = slot,
                _ => runs.push((slot, slot, usize::from(o))),
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::model::{split_slots_evenly, NodeView, SlotAssignment};

    pub fn three_node_config(me: &str, epoch: Epoch) -> ProxyConfig {
        let nodes = split_slots_evenly(3)
            .into_iter()
            .enumerate()
            .map(|(i, r)| NodeView {
                proxy: format!("127.0.0.1:600{}", i + 1),
                node: format!("127.0.0.1:700{}", i + 1),
                slots: vec![SlotAssignment::plain(r)],
            })
            .collect();
        ProxyConfig {
            epoch,
            proxy: me.into(),
            cluster: Some(ClusterView { name: "c".into(), epoch, nodes }),
            migrations: vec![],
        }
    }

    #[test]
    fn routes_follow_the_config() {
        let t = RouteTable::build(three_node_config("127.0.0.1:6002", 3)).unwrap();
        assert_eq!(t.route(0), Route::Peer(&t.peers[0]));
        assert_eq!(t.route(6000), Route::Local);
        assert_eq!(t.route(16383), Route::Peer(&t.peers[2]));
        assert_eq!(t.runs().len(), 3);
        assert_eq!(t.slots_assigned(), 16384);
        let e = RouteTable::empty("127.0.0.1:6001");
        assert_eq!(e.route(0), Route::Unserved);
    }
}
