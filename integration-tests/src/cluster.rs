//! Proxies in front of their own redis-server nodes, configured with `UMCTL SETDB`: the
//! proxy data path without broker or coordinator.

use crate::bins::binary;
use crate::client::{call_ok, RespConn};
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::redis_node::RedisNode;
use crate::wait::wait_for;
use anyhow::{bail, Result};
use sluice_common::model::{split_slots_evenly, ClusterView, Epoch, NodeView, ProxyConfig, SlotAssignment};
use sluice_common::resp::Frame;
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

/// A `sluice-proxy` process.
pub struct ProxyProcess {
    pub port: u16,
    pub node: String,
    process: ChildProcess,
}

impl ProxyProcess {
    /// Starts a proxy for `node` on a free port and waits until it answers PING.
    pub async fn start(dir: &Path, node: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        ProxyProcess::start_on(dir, None, node, extra_args).await
    }

    /// Like [`ProxyProcess::start`], on `port` if given (no retry on another port then).
    pub async fn start_on(dir: &Path, port: Option<u16>, node: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        let bin = binary("sluice-proxy")?;
        let mut last = None;
        for _ in 0..if port.is_some() { 1 } else { 5 } {
            let port = port.unwrap_or_else(free_port);
            let addr = format!("127.0.0.1:{port}");
            let mut args: Vec<String> = vec!["--listen".into(), addr.clone(), "--node".into(), node.to_string()];
            args.extend(extra_args.iter().map(|a| a.to_string()));
            let log = dir.join(format!("proxy-{port}.log"));
            let mut process = ChildProcess::spawn(&format!("proxy-{port}"), &bin, &args, &log)?;
            let needs_auth = extra_args.contains(&"--requirepass");
            let up = wait_for("sluice-proxy to answer", Duration::from_secs(10), || {
                let addr = addr.clone();
                let running = process.is_running();
                async move {
                    if !running {
                        bail!("sluice-proxy exited (port {port} taken?)");
                    }
                    Ok(answers(&addr, needs_auth).await.then_some(()))
                }
            })
            .await;
            match up {
                Ok(()) => return Ok(ProxyProcess { port, node: node.to_string(), process }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sluice-proxy did not start")))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// Whether something answers RESP on `addr` (NOAUTH counts: the proxy is up).
async fn answers(addr: &str, needs_auth: bool) -> bool {
    match RespConn::connect(addr).await {
        Ok(mut c) => match c.call(&["PING"]).await {
            Ok(Frame::Simple(_)) => true,
            Ok(Frame::Error(e)) => needs_auth && e.starts_with(b"NOAUTH"),
            _ => false,
        },
        Err(_) => false,
    }
}

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
            .map(|(range, p)| NodeView {
                proxy: p.addr(),
                node: p.node.clone(),
                slots: vec![SlotAssignment::plain(range)],
                peer: None,
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
