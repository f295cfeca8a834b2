//! Proxies in front of their own redis-server nodes, configured with `UMCTL SETDB`: the
//! proxy data path without broker or coordinator.

use crate::client::call_ok;
use crate::redis_node::RedisNode;
use anyhow::Result;
use sluice_common::model::{split_slots_evenly, ClusterView, Epoch, NodeView, ProxyConfig, SlotAssignment};
use tempfile::TempDir;

// The proxy process itself lives in sluice-local, with the rest of what starts a deployment;
// re-exported where the tests always found it.
pub use sluice_local::proxy::ProxyProcess;

/// N redis nodes, each behind its own proxy, the 16384 slots split evenly between them.
pub struct ProxyCluster {
    pub nodes: Vec<RedisNode>,
    pub proxies: Vec<ProxyProcess>,
    pub epoch: Epoch,
    /// Owns the files of every process; removed when the cluster is dropped.
    pub dir: TempDir,
}

impl ProxyCluster {
    /// Starts `n` nodes and proxies (with `proxy_args` added) and configures them at epoch 1.
    pub async fn start(n: usize, proxy_args: &[&str]) -> Result<ProxyCluster> {
        ProxyCluster::start_at(n, None, proxy_args).await
    }

    /// Like [`ProxyCluster::start`], with proxies on `base_port`, `base_port + 1`, … if given.
    pub async fn start_at(n: usize, base_port: Option<u16>, proxy_args: &[&str]) -> Result<ProxyCluster> {
        ProxyCluster::start_with(n, base_port, &[], proxy_args).await
    }

    /// Like [`ProxyCluster::start_at`], with `node_args` for every redis-server.
    pub async fn start_with(
        n: usize,
        base_port: Option<u16>,
        node_args: &[&str],
        proxy_args: &[&str],
    ) -> Result<ProxyCluster> {
        let dir = tempfile::Builder::new().prefix("sluice-").tempdir()?;
        let mut nodes = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..n {
            let node = RedisNode::start(&dir.path().join(format!("node{i}")), node_args).await?;
            let port = base_port.map(|b| b + i as u16);
            let proxy = ProxyProcess::start_on(dir.path(), port, &node.addr(), proxy_args).await?;
            nodes.push(node);
            proxies.push(proxy);
        }
        let mut cluster = ProxyCluster { nodes, proxies, epoch: 0, dir };
        if !proxy_args.contains(&"--requirepass") {
            cluster.configure(1).await?;
        }
        Ok(cluster)
    }

    pub fn proxy_addrs(&self) -> Vec<String> {
        self.proxies.iter().map(ProxyProcess::addr).collect()
    }

    /// The cluster as every proxy should see it at `epoch`.
    pub fn cluster_view(&self, epoch: Epoch) -> ClusterView {
        let nodes = split_slots_evenly(self.proxies.len())
            .into_iter()
            .zip(&self.proxies)
            .enumerate()
            .map(|(i, (range, p))| NodeView {
                proxy: p.addr(),
                node: p.node.clone(),
                slots: vec![SlotAssignment::plain(range)],
                peer: None,
                replicas: Vec::new(),
                handover: None,
                config_epoch: i as Epoch + 1,
            })
            .collect();
        ClusterView { name: "test".into(), epoch, nodes }
    }

    /// The config of proxy `i` at `epoch`.
    pub fn config(&self, i: usize, epoch: Epoch) -> ProxyConfig {
        ProxyConfig {
            epoch,
            proxy: self.proxies[i].addr(),
            cluster: Some(self.cluster_view(epoch)),
            migrations: Vec::new(),
        }
    }

    /// Sends every proxy its config at `epoch` with `UMCTL SETDB`.
    pub async fn configure(&mut self, epoch: Epoch) -> Result<()> {
        for i in 0..self.proxies.len() {
            let json = serde_json::to_string(&self.config(i, epoch))?;
            call_ok(&self.proxies[i].addr(), &["UMCTL", "SETDB", json.as_str()]).await?;
        }
        self.epoch = epoch;
        Ok(())
    }

    /// Index of the proxy that owns `slot`.
    pub fn owner_of(&self, slot: u16) -> usize {
        split_slots_evenly(self.proxies.len()).iter().position(|r| r.contains(slot)).unwrap_or(0)
    }

    /// `redis://` URLs of all proxies, for cluster clients.
    pub fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(|p| format!("redis://{}/", p.addr())).collect()
    }

    /// Sum of `DBSIZE` over all nodes.
    pub async fn total_keys(&self) -> Result<i64> {
        let mut sum = 0;
        for n in &self.nodes {
            sum += n.dbsize().await?;
        }
        Ok(sum)
    }
}
