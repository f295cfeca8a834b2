//! A whole sluice deployment on loopback: broker, coordinator(s), redis-server nodes and
//! proxies that register themselves, and a cluster created through the broker's API.
//! `sluice local` runs exactly this, and so do the end-to-end tests (`sluice-harness`).

use crate::bins::binary;
use crate::broker::{BrokerClient, BrokerProcess};
use crate::client::RespConn;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::proxy::ProxyProcess;
use crate::redis_node::RedisNode;
use crate::wait::wait_for;
use anyhow::{anyhow, Result};
use sluice_common::resp::Frame;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    /// Shards of the cluster (each a master proxy).
    pub proxies: usize,
    /// Replica proxies per shard (started besides the masters and the spares).
    pub replicas: usize,
    /// Extra free proxies (for scaling out).
    pub spare: usize,
    /// Proxies on base_port, base_port + 1, …; control ports 10000 above, metrics ports 20000
    /// above. Free ports when absent.
    pub base_port: Option<u16>,
    /// The broker's port; a free one when absent.
    pub broker_port: Option<u16>,
    /// The broker's `--store` (`etcd://…`, an etcd the caller runs); sled in the data dir when
    /// absent.
    pub broker_store: Option<String>,
    /// Where every file goes (kept); a temporary directory when absent (removed).
    pub data_dir: Option<PathBuf>,
    pub coordinators: usize,
    /// Name of the cluster to create.
    pub cluster: String,
    pub proxy_args: Vec<String>,
    /// Extra arguments of every redis-server (config directives, e.g. `--user`, `masterauth`).
    pub node_args: Vec<String>,
    /// Extra flags of every coordinator (e.g. `--fence-after-ms 3000`).
    pub coordinator_args: Vec<String>,
}

impl Default for LocalSpec {
    fn default() -> Self {
        LocalSpec {
            proxies: 3,
            replicas: 0,
            spare: 1,
            base_port: None,
            broker_port: None,
            broker_store: None,
            data_dir: None,
            coordinators: 1,
            cluster: "local".into(),
            proxy_args: Vec::new(),
            node_args: Vec::new(),
            coordinator_args: Vec::new(),
        }
    }
}

pub struct LocalCluster {
    pub spec: LocalSpec,
    pub broker: BrokerProcess,
    pub coordinators: Vec<ChildProcess>,
    /// Where each coordinator serves its Prometheus metrics (`--metrics`), in start order.
    pub coordinator_metrics: Vec<String>,
    pub nodes: Vec<RedisNode>,
    /// The cluster's proxies first, then the spares.
    pub proxies: Vec<ProxyProcess>,
    pub dir: PathBuf,
    _temp: Option<TempDir>,
}

impl LocalCluster {
    pub async fn start(spec: LocalSpec) -> Result<LocalCluster> {
        let (cluster, _) = LocalCluster::start_linked(spec, |node| async move { Ok(((), node)) }).await?;
        Ok(cluster)
    }

    /// Like [`LocalCluster::start`], with something between each proxy and its node (the
    /// tests' fault-injecting relay): `link(node)` is called with each node's address once it
    /// answers and returns what it started (the caller keeps it alive) and the address the
    /// proxy dials instead. When that differs from the node's, the node's own address becomes
    /// the proxy's `--node-announce`, so node-to-node traffic (replication, `MIGRATE`) does not
    /// cross the link. The links are returned in proxy order.
    pub async fn start_linked<L, F, Fut>(spec: LocalSpec, mut link: F) -> Result<(LocalCluster, Vec<L>)>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<(L, String)>>,
    {
        let (dir, temp) = match &spec.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("sluice-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let broker =
            BrokerProcess::start_with_store(&dir, &dir.join("broker"), spec.broker_store.as_deref(), spec.broker_port)
                .await?;
        let mut cluster = LocalCluster {
            spec,
            broker,
            coordinators: Vec::new(),
            coordinator_metrics: Vec::new(),
            nodes: Vec::new(),
            proxies: Vec::new(),
            dir,
            _temp: temp,
        };
        for _ in 0..cluster.spec.coordinators {
            cluster.start_coordinator()?;
        }
        let mut links = Vec::new();
        for i in 0..cluster.spec.proxies * (1 + cluster.spec.replicas) + cluster.spec.spare {
            links.push(cluster.add_proxy(i, &mut link).await?);
        }
        let client = cluster.broker_client();
        let total = cluster.proxies.len();
        wait_for("every proxy to register", Duration::from_secs(20), || {
            let client = client.clone();
            async move { Ok((client.proxies().await?.proxies.len() >= total).then_some(())) }
        })
        .await?;
        let members: Vec<String> = cluster.proxies[..cluster.spec.proxies].iter().map(ProxyProcess::addr).collect();
        client.create_cluster_with_replicas(&cluster.spec.cluster, members, cluster.spec.replicas as u64).await?;
        cluster.wait_converged(Duration::from_secs(20)).await?;
        Ok((cluster, links))
    }

    /// Starts one more coordinator.
    pub fn start_coordinator(&mut self) -> Result<()> {
        let n = self.coordinators.len();
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--broker".to_string(), self.broker.url(), "--metrics".into(), metrics.clone()];
        args.extend(self.spec.coordinator_args.iter().cloned());
        let log = self.dir.join(format!("coordinator-{n}.log"));
        let c = ChildProcess::spawn(&format!("coordinator-{n}"), &binary("sluice-coordinator")?, &args, &log)?;
        self.coordinators.push(c);
        self.coordinator_metrics.push(metrics);
        Ok(())
    }

    /// Starts redis-server number `i` and its proxy, which registers with the broker and
    /// reaches its node through `link`.
    async fn add_proxy<L, F, Fut>(&mut self, i: usize, link: &mut F) -> Result<L>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<(L, String)>>,
    {
        let node_args: Vec<&str> = self.spec.node_args.iter().map(String::as_str).collect();
        let node = RedisNode::start(&self.dir.join(format!("node{i}")), &node_args).await?;
        let port = self.spec.base_port.map(|b| b + i as u16);
        let control = port.and_then(|p| p.checked_add(10000)).unwrap_or_else(free_port);
        let metrics = port.and_then(|p| p.checked_add(20000)).unwrap_or_else(free_port);
        let mut args: Vec<String> = vec![
            "--control".into(),
            format!("127.0.0.1:{control}"),
            "--metrics".into(),
            format!("127.0.0.1:{metrics}"),
            "--broker".into(),
            self.broker.url(),
        ];
        args.extend(self.spec.proxy_args.iter().cloned());
        let (linked, node_addr) = link(node.addr()).await?;
        if node_addr != node.addr() {
            args.extend(["--node-announce".to_string(), node.addr()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = ProxyProcess::start_on(&self.dir, port, &node_addr, &args).await?;
        self.nodes.push(node);
        self.proxies.push(proxy);
        Ok(linked)
    }

    pub fn broker_client(&self) -> BrokerClient {
        self.broker.client()
    }

    /// The cluster's proxies (not the spares).
    pub fn cluster_proxies(&self) -> Vec<String> {
        self.proxies[..self.spec.proxies].iter().map(ProxyProcess::addr).collect()
    }

    /// `redis://` URLs of the cluster's proxies, for cluster clients.
    pub fn urls(&self) -> Vec<String> {
        self.cluster_proxies().iter().map(|a| format!("redis://{a}/")).collect()
    }

    /// Waits until every running proxy holds the broker's epoch.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<u64> {
        let proxies: Vec<String> = self.proxies.iter().map(ProxyProcess::addr).collect();
        self.wait_converged_on(&proxies, timeout).await
    }

    /// Waits until each of `proxies` holds the broker's epoch (for when some proxy is dead and
    /// [`LocalCluster::wait_converged`] would wait for it too).
    pub async fn wait_converged_on(&self, proxies: &[String], timeout: Duration) -> Result<u64> {
        let client = self.broker_client();
        let proxies = proxies.to_vec();
        wait_for("the proxies to hold the broker's epoch", timeout, || {
            let client = client.clone();
            let proxies = proxies.clone();
            async move {
                let epoch = client.epoch().await?;
                for p in &proxies {
                    if proxy_epoch(p).await? != epoch {
                        return Ok(None);
                    }
                }
                Ok(Some(epoch))
            }
        })
        .await
    }

    /// Index (in `proxies` and `nodes`) of the proxy at `addr`.
    pub fn proxy_index(&self, addr: &str) -> Result<usize> {
        self.proxies.iter().position(|p| p.addr() == addr).ok_or_else(|| anyhow!("no proxy {addr} in this cluster"))
    }

    /// Restarts proxy `i` with the same flags (after a kill) and waits until it answers PING.
    pub async fn restart_proxy(&mut self, i: usize) -> Result<()> {
        self.proxies[i].process().restart()?;
        let addr = self.proxies[i].addr();
        wait_for("the restarted proxy to answer PING", Duration::from_secs(15), || {
            let addr = addr.clone();
            async move {
                Ok(match RespConn::connect(&addr).await {
                    Ok(mut c) => matches!(c.call(&["PING"]).await, Ok(Frame::Simple(_))).then_some(()),
                    Err(_) => None,
                })
            }
        })
        .await
    }

    /// Addresses of every redis node started (spares included).
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr()).collect()
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

/// `UMCTL GETEPOCH` of a proxy.
pub async fn proxy_epoch(addr: &str) -> Result<u64> {
    match RespConn::connect(addr).await?.call(&["UMCTL", "GETEPOCH"]).await? {
        Frame::Integer(n) => Ok(n as u64),
        other => anyhow::bail!("UMCTL GETEPOCH answered {other:?}"),
    }
}
