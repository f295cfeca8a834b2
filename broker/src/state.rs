//! The broker's whole metadata, in memory: proxies, clusters, migrations and the global epoch.
//!
//! Every answer is computed from one [`State`] value, so `GET /api/v1/clusters/{name}` and the
//! proxy configs are the same data seen from two sides: a proxy's cluster is the
//! [`ClusterView`] it is a node of, nothing stored beside it.

use serde::{Deserialize, Serialize};
use sluice_common::api::{Migration, ProxyConfigEntry, ProxyInfo, ProxyState, ScaleKind, ScalePlanRecord, ScaleState};
use sluice_common::model::{ClusterView, Epoch, NodeView, ProxyConfig, ReplicaView};
use std::collections::{BTreeMap, HashMap};

/// A registered proxy as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub address: String,
    pub control_address: String,
    pub node_address: String,
    /// Where the other proxies reach it, when not at `address`; absent in records stored
    /// before the field existed, which is the same thing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    /// Set by a failure report, cleared by a recovery report. Status, not metadata.
    #[serde(default)]
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub registered_at: String,
}

impl ProxyRecord {
    /// This proxy as a node of a cluster, with no slots yet: the view carries its node and
    /// where the other proxies reach it.
    pub fn node_view(&self) -> NodeView {
        NodeView {
            proxy: self.address.clone(),
            node: self.node_address.clone(),
            slots: Vec::new(),
            peer: self.peer_address.clone(),
            replicas: Vec::new(),
            handover: None,
            config_epoch: 0,
        }
    }

    /// This proxy as a replica of a shard.
    pub fn replica_view(&self) -> ReplicaView {
        ReplicaView {
            proxy: self.address.clone(),
            node: self.node_address.clone(),
            peer: self.peer_address.clone(),
            former_master: false,
        }
    }
}

/// Everything the broker knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The global epoch: bumped by one with every metadata change, never lowered.
    pub epoch: Epoch,
    /// The number the next migration id gets (`m-<n>`); never reused.
    pub next_migration: u64,
    pub proxies: BTreeMap<String, ProxyRecord>,
    pub clusters: BTreeMap<String, ClusterView>,
    /// Keyed by the number in the id, so iteration is in creation order.
    pub migrations: BTreeMap<u64, Migration>,
    /// Each cluster's last scale plan (running, done or failed), keyed by cluster name.
    pub scales: BTreeMap<String, ScalePlanRecord>,
}

/// `m-<n>` ↔ `n`. Anything else is no migration id.
pub fn migration_number(id: &str) -> Option<u64> {
    let n: u64 = id.strip_prefix("m-")?.parse().ok()?;
    (migration_id(n) == id).then_some(n)
}

pub fn migration_id(n: u64) -> String {
    format!("m-{n}")
}

/// Sort key that orders `host:6002` before `host:6010`.
pub fn address_order(address: &str) -> (String, u32) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or(u32::MAX)),
        None => (address.to_string(), u32::MAX),
    }
}

impl State {
    /// Proxy address → name of the cluster it is a node of.
    pub fn membership(&self) -> HashMap<&str, &str> {
        let mut out = HashMap::new();
        for (name, cluster) in &self.clusters {
            for member in cluster.members() {
                out.insert(member, name.as_str());
            }
        }
        out
    }

    /// The cluster the proxy is a member of (a shard's master or one of its replicas).
    pub fn cluster_of(&self, proxy: &str) -> Option<&ClusterView> {
        self.clusters.values().find(|c| c.members().any(|m| m == proxy))
    }

    /// The running scale-out that will bring `address` (not yet a node) into its cluster.
    pub fn reserving_plan(&self, address: &str) -> Option<&ScalePlanRecord> {
        self.scales.values().find(|p| {
            p.state == ScaleState::Running
                && p.kind == ScaleKind::Add
                && (p.proxies.iter().any(|a| a == address) || p.replicas.values().flatten().any(|a| a == address))
        })
    }

    fn info_with(&self, p: &ProxyRecord, cluster: Option<&str>) -> ProxyInfo {
        let state = if p.failed {
            ProxyState::Failed
        } else if cluster.is_some() {
            ProxyState::Serving
        } else {
            ProxyState::Free
        };
        ProxyInfo {
            address: p.address.clone(),
            control_address: p.control_address.clone(),
            node_address: p.node_address.clone(),
            peer_address: p.peer_address.clone(),
            cluster: cluster.map(str::to_string),
            state,
            failure: if p.failed { p.failure.clone() } else { None },
            reserved_for: if cluster.is_none() {
                self.reserving_plan(&p.address).map(|plan| plan.cluster.clone())
            } else {
                None
            },
        }
    }

    pub fn proxy_info(&self, p: &ProxyRecord) -> ProxyInfo {
        self.info_with(p, self.cluster_of(&p.address).map(|c| c.name.as_str()))
    }

    /// All proxies, ordered by address (host, then port as a number).
    pub fn proxy_infos(&self) -> Vec<ProxyInfo> {
        let membership = self.membership();
        let mut out: Vec<ProxyInfo> =
            self.proxies.values().map(|p| self.info_with(p, membership.get(p.address.as_str()).copied())).collect();
        out.sort_by_key(|p| address_order(&p.address));
        out
    }

    /// A migration that still names `address` in its configs (a source that gave all its slots
    /// away keeps deleting their keys until the migration is done): such a proxy is not free.
    pub fn unfinished_migration_of(&self, address: &str) -> Option<&Migration> {
        self.migrations.values().find(|m| m.in_configs() && (m.src == address || m.dst == address))
    }

    /// Free proxies (in no cluster, not failed, no migration still at work on them, not
    /// reserved by a running scale-out), in address order: the ones a cluster creation or a
    /// scale-out takes first.
    pub fn free_proxies(&self) -> Vec<&ProxyRecord> {
        let membership = self.membership();
        let mut out: Vec<&ProxyRecord> = self
            .proxies
            .values()
            .filter(|p| {
                !p.failed
                    && !membership.contains_key(p.address.as_str())
                    && self.unfinished_migration_of(&p.address).is_none()
                    && self.reserving_plan(&p.address).is_none()
            })
            .collect();
        out.sort_by_key(|p| address_order(&p.address));
        out
    }

    /// The migrations of a cluster, in creation order.
    pub fn migrations_of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = (&'a u64, &'a Migration)> + 'a {
        self.migrations.iter().filter(move |(_, m)| m.cluster == cluster)
    }

    /// A migration by cluster and id.
    pub fn migration(&self, cluster: &str, id: &str) -> Option<(u64, &Migration)> {
        let n = migration_number(id)?;
        self.migrations.get(&n).filter(|m| m.cluster == cluster).map(|m| (n, m))
    }

    /// The one place a proxy's config is computed (`GET /api/v1/proxies/{address}/config` and
    /// `GET /api/v1/configs` both come here). `cluster`: the cluster `proxy` is a node of.
    ///
    /// The migrations are every one in which the proxy is src or dst, from `pending` until it
    /// ends (see [`Migration::in_configs`]), in creation order, whatever cluster the proxy is
    /// in now: a source that gave all its slots away is free after the commit and must still
    /// learn that it has keys to delete. The proxies' garbage collectors delete keys only for
    /// the migrations their config names, so the `done` report, which takes a migration out
    /// of two configs, bumps the epoch.
    fn config_with(&self, proxy: &str, cluster: Option<&ClusterView>) -> ProxyConfig {
        let migrations = self
            .migrations
            .values()
            .filter(|m| m.in_configs() && (m.src == proxy || m.dst == proxy))
            .map(Migration::meta)
            .collect();
        ProxyConfig { epoch: self.epoch, proxy: proxy.to_string(), cluster: cluster.cloned(), migrations }
    }

    /// The config the proxy must hold at the current epoch: the cluster it is a node of
    /// (exactly the stored view; absent when it is free) and the migrations it is the src or
    /// the dst of that have not ended.
    pub fn proxy_config(&self, proxy: &str) -> Option<ProxyConfig> {
        self.proxies.get(proxy)?;
        Some(self.config_with(proxy, self.cluster_of(proxy)))
    }

    /// Every proxy's config, in address order.
    pub fn all_configs(&self) -> Vec<ProxyConfigEntry> {
        let membership = self.membership();
        let mut out: Vec<ProxyConfigEntry> = self
            .proxies
            .values()
            .map(|p| {
                let cluster = membership.get(p.address.as_str()).and_then(|name| self.clusters.get(*name));
                let config = self.config_with(&p.address, cluster);
                ProxyConfigEntry {
                    proxy: self.info_with(p, cluster.map(|c| c.name.as_str())),
                    config_version: config.version(),
                    config,
                }
            })
            .collect();
        out.sort_by_key(|e| address_order(&e.proxy.address));
        out
    }
}

/// Cluster names: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks `host:port`: a host name or IPv4 address of `[A-Za-z0-9._-]`, or a bracketed IPv6
/// address, then a port 1..65535. What it refuses is said in the error.
pub fn check_address(what: &str, address: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{what} {address:?} is not a valid host:port address: {why}"));
    if address.len() > 255 {
        return bad("longer than 255 bytes");
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("missing :port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !port.starts_with('+') => {}
        _ => return bad("the port must be a number in 1..65535"),
    }
    if host.is_empty() {
        return bad("the host is empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return bad("a bracketed host must be an IPv6 address like [::1]");
        }
        return Ok(());
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_') {
        return bad("the host may hold only letters, digits, '.', '-' and '_' (IPv6 goes in brackets)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_cluster_name("shop_2-a"));
        assert!(valid_cluster_name(&"a".repeat(64)));
        assert!(!valid_cluster_name(&"a".repeat(65)));
        assert!(!valid_cluster_name(""));
        assert!(!valid_cluster_name("sh op"));
        assert!(!valid_cluster_name("shöp"));
    }

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:6001", "redis-a:6379", "[::1]:7000", "host_1.local:1"] {
            assert!(check_address("proxy", ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", ":6001", "h:0", "h:65536", "h:x", "a b:1", "h/x:1", "[::1:7000", "[zz]:1", "h:+1"] {
            assert!(check_address("proxy", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn migration_ids_round_trip() {
        assert_eq!(migration_number("m-12"), Some(12));
        assert_eq!(migration_id(12), "m-12");
        assert_eq!(migration_number("m-012"), None);
        assert_eq!(migration_number("x-1"), None);
        assert_eq!(migration_number("m-"), None);
    }

    #[test]
    fn ports_order_as_numbers() {
        assert!(address_order("h:6002") < address_order("h:6010"));
    }
}
