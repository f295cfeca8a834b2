//! A native Redis Cluster (cluster-enabled redis-server masters): the yardstick sluice is
//! compared with, by the keys-mode benchmark (`redis-cli --cluster reshard` moving the same
//! slots holding the same keys) and by the tests that check a proxy answers as a cluster
//! node does.
//!
//! `redis-cli --cluster create` refuses fewer than 3 masters, so the cluster is made by hand
//! the way `create` does it: distinct config epochs, `CLUSTER ADDSLOTSRANGE` on each node,
//! `CLUSTER MEET`, then wait until every node sees the whole cluster `ok`.

use crate::bins::which;
use crate::client::{call_ok, RespConn};
use crate::redis_node::RedisNode;
use crate::wait::wait_for;
use anyhow::{anyhow, bail, Context, Result};
use sluice_common::model::SlotRange;
use sluice_common::resp::Frame;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct NativeCluster {
    /// The masters, in the order of the ranges they were given.
    pub nodes: Vec<RedisNode>,
    /// `CLUSTER MYID` of each node.
    pub ids: Vec<String>,
    /// Replicas, by master index ([`NativeCluster::add_replicas`]).
    pub replicas: Vec<Vec<RedisNode>>,
}

/// A bulk or simple string reply as text.
fn text(f: &Frame) -> Option<String> {
    match f {
        Frame::Bulk(b) | Frame::Simple(b) | Frame::Verbatim(_, b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

impl NativeCluster {
    /// Starts one cluster-enabled redis-server per entry of `ranges` (their files under
    /// `dir`), node `i` serving `ranges[i]`, and waits until the cluster is `ok` everywhere.
    pub async fn start(dir: &Path, ranges: &[Vec<SlotRange>]) -> Result<NativeCluster> {
        NativeCluster::start_with(dir, ranges, &[]).await
    }

    /// Like [`NativeCluster::start`], with `node_args` for every redis-server.
    pub async fn start_with(dir: &Path, ranges: &[Vec<SlotRange>], node_args: &[&str]) -> Result<NativeCluster> {
        let mut nodes = Vec::new();
        let mut ids = Vec::new();
        for (i, slots) in ranges.iter().enumerate() {
            let mut args = vec!["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"];
            args.extend_from_slice(node_args);
            let node = RedisNode::start(&dir.join(format!("native{i}")), &args).await?;
            let addr = node.addr();
            let id = call_ok(&addr, &["CLUSTER", "MYID"]).await?;
            ids.push(text(&id).ok_or_else(|| anyhow!("CLUSTER MYID answered {id:?}"))?);
            call_ok(&addr, &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]).await?;
            for r in slots {
                call_ok(&addr, &["CLUSTER", "ADDSLOTSRANGE", &r.start.to_string(), &r.end.to_string()]).await?;
            }
            nodes.push(node);
        }
        let first = nodes[0].addr();
        for n in &nodes[1..] {
            call_ok(&first, &["CLUSTER", "MEET", "127.0.0.1", &n.port.to_string()]).await?;
        }
        let addrs: Vec<String> = nodes.iter().map(RedisNode::addr).collect();
        let count = nodes.len();
        wait_for("the native cluster to be ok on every node", Duration::from_secs(30), || {
            let addrs = addrs.clone();
            async move {
                for a in &addrs {
                    let info = call_ok(a, &["CLUSTER", "INFO"]).await?;
                    let info = text(&info).unwrap_or_default();
                    let ok = info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_assigned:16384")
                        && info.contains(&format!("cluster_known_nodes:{count}\r"));
                    if !ok || cluster_slots(a).await?.len() < count {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await?;
        let replicas = ids.iter().map(|_| Vec::new()).collect();
        let cluster = NativeCluster { nodes, ids, replicas };
        cluster.wait_settled(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Every node, masters and replicas.
    pub fn all_nodes(&self) -> impl Iterator<Item = &RedisNode> {
        self.nodes.iter().chain(self.replicas.iter().flatten())
    }

    /// Waits until the cluster's gossip has settled: every node is `ok`, knows every node,
    /// sees each of them `connected` with no `fail?`/`fail`/`handshake` flag, and all nodes
    /// agree on each node's role, master, config epoch and slots, and on the current epoch.
    /// `cluster_state:ok` alone comes earlier: a comparison made then saw a peer
    /// `disconnected` (a CI failure), or an epoch a change had not yet spread to.
    pub async fn wait_settled(&self, timeout: Duration) -> Result<()> {
        let addrs: Vec<String> = self.all_nodes().map(RedisNode::addr).collect();
        wait_for("the native cluster's gossip to settle", timeout, || {
            let addrs = addrs.clone();
            async move {
                let mut agreed: Option<(Vec<String>, String)> = None;
                for a in &addrs {
                    let info = text(&call_ok(a, &["CLUSTER", "INFO"]).await?).unwrap_or_default();
                    if !info.contains("cluster_state:ok")
                        || !info.contains(&format!("cluster_known_nodes:{}\r", addrs.len()))
                    {
                        return Ok(None);
                    }
                    let current = info.lines().find(|l| l.starts_with("cluster_current_epoch:")).unwrap_or("");
                    let nodes = text(&call_ok(a, &["CLUSTER", "NODES"]).await?).unwrap_or_default();
                    let Some(view) = settled_view(&nodes) else { return Ok(None) };
                    let seen = (view, current.trim().to_string());
                    match &agreed {
                        None => agreed = Some(seen),
                        Some(first) if *first == seen => {}
                        Some(_) => return Ok(None),
                    }
                }
                Ok(Some(()))
            }
        })
        .await
    }

    /// Gives every master `n` replicas (`CLUSTER MEET`, then `CLUSTER REPLICATE`), started
    /// under `dir` with `node_args`, and waits until every node sees them all and each replica
    /// has synced.
    pub async fn add_replicas(&mut self, dir: &Path, n: usize, node_args: &[&str]) -> Result<()> {
        let first = self.nodes[0].addr();
        for (m, id) in self.ids.clone().iter().enumerate() {
            for r in 0..n {
                let mut args = vec!["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"];
                args.extend_from_slice(node_args);
                let node = RedisNode::start(&dir.join(format!("native{m}-replica{r}")), &args).await?;
                call_ok(&first, &["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()]).await?;
                let addr = node.addr();
                wait_for("the replica to know its master", Duration::from_secs(30), || {
                    let (addr, id) = (addr.clone(), id.clone());
                    async move {
                        let nodes = text(&call_ok(&addr, &["CLUSTER", "NODES"]).await?).unwrap_or_default();
                        Ok(nodes.contains(&id).then_some(()))
                    }
                })
                .await?;
                call_ok(&addr, &["CLUSTER", "REPLICATE", id]).await?;
                self.replicas[m].push(node);
            }
        }
        let replicas: Vec<String> = self.replicas.iter().flatten().map(RedisNode::addr).collect();
        wait_for("every native replica to sync", Duration::from_secs(60), || {
            let replicas = replicas.clone();
            async move {
                for a in &replicas {
                    let info = text(&call_ok(a, &["INFO", "replication"]).await?).unwrap_or_default();
                    if !info.contains("master_link_status:up") {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await?;
        self.wait_settled(Duration::from_secs(30)).await
    }

    /// `redis://` URLs of the nodes, for cluster clients.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://{}/", n.addr())).collect()
    }

    /// Runs `redis-cli --cluster reshard` moving `slots` slots from node `from` to node `to`
    /// with redis-cli's default pipeline (10 keys per `MIGRATE`), its output into `log`: the
    /// time the command took.
    pub async fn reshard(
        &self,
        from: usize,
        to: usize,
        slots: usize,
        log: &Path,
        deadline: Duration,
    ) -> Result<Duration> {
        let cli =
            which("redis-cli").ok_or_else(|| anyhow!("redis-cli is not on PATH (apt-get install redis-tools)"))?;
        let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&cli)
            .args(["--cluster", "reshard", &self.nodes[from].addr()])
            .args(["--cluster-from", &self.ids[from], "--cluster-to", &self.ids[to]])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", cli.display()))?;
        let status = tokio::time::timeout(deadline, child.wait())
            .await
            .map_err(|_| anyhow!("redis-cli --cluster reshard still running after {deadline:?}"))??;
        let took = started.elapsed();
        if !status.success() {
            bail!("redis-cli --cluster reshard failed ({status}); its output is in {}", log.display());
        }
        Ok(took)
    }

    /// Keys of `range` on node `i` (`CLUSTER COUNTKEYSINSLOT` of each slot).
    pub async fn keys_in(&self, i: usize, range: SlotRange) -> Result<i64> {
        let mut c = RespConn::connect(&self.nodes[i].addr()).await?;
        let mut sum = 0;
        for s in range.slots() {
            match c.call(&["CLUSTER", "COUNTKEYSINSLOT", &s.to_string()]).await? {
                Frame::Integer(n) => sum += n,
                other => bail!("CLUSTER COUNTKEYSINSLOT {s} answered {other:?}"),
            }
        }
        Ok(sum)
    }

    /// The slot ranges node `i` serves, as node `at` sees it (`CLUSTER SLOTS`).
    pub async fn slots_of(&self, at: usize, i: usize) -> Result<Vec<SlotRange>> {
        let id = &self.ids[i];
        let mut ranges: Vec<SlotRange> = cluster_slots(&self.nodes[at].addr())
            .await?
            .into_iter()
            .filter(|(_, owner)| owner == id)
            .map(|(r, _)| r)
            .collect();
        ranges.sort_by_key(|r| r.start);
        Ok(ranges)
    }

    /// Sum of `DBSIZE` over the nodes.
    pub async fn total_keys(&self) -> Result<i64> {
        let mut sum = 0;
        for n in &self.nodes {
            sum += n.dbsize().await?;
        }
        Ok(sum)
    }
}

/// A node's `CLUSTER NODES` as what every node must agree on (per node: id, role, master,
/// config epoch, slots; without `myself`, ping times and addresses' bus ports), or `None` while
/// a node is not `connected`, is suspected or failed, or still in a handshake.
fn settled_view(nodes: &str) -> Option<Vec<String>> {
    let mut view = Vec::new();
    for line in nodes.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 8 || f[7] != "connected" {
            return None;
        }
        let flags: Vec<&str> = f[2].split(',').filter(|fl| *fl != "myself").collect();
        if flags.iter().any(|fl| matches!(*fl, "fail?" | "fail" | "handshake" | "noaddr")) {
            return None;
        }
        view.push(format!("{} {} {} {} {}", f[0], flags.join(","), f[3], f[6], f[8..].join(" ")));
    }
    view.sort();
    Some(view)
}

/// `CLUSTER SLOTS` of the node at `addr`: (range, id of the master serving it).
async fn cluster_slots(addr: &str) -> Result<Vec<(SlotRange, String)>> {
    let reply = call_ok(addr, &["CLUSTER", "SLOTS"]).await?;
    let Frame::Array(entries) = reply else { bail!("CLUSTER SLOTS answered {reply:?}") };
    let mut out = Vec::new();
    for e in &entries {
        let Frame::Array(parts) = e else { bail!("CLUSTER SLOTS entry {e:?}") };
        let (Some(Frame::Integer(start)), Some(Frame::Integer(end)), Some(Frame::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            bail!("CLUSTER SLOTS entry {e:?}")
        };
        let id = master.get(2).and_then(text).ok_or_else(|| anyhow!("CLUSTER SLOTS entry without a node id: {e:?}"))?;
        let (start, end) = (u16::try_from(*start)?, u16::try_from(*end)?);
        out.push((SlotRange::new(start, end), id));
    }
    Ok(out)
}
