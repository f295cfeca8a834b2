//! Shards with replicas: each replica proxy's node replicates its master's node, the cluster
//! commands list replicas as a native cluster does, and a replica serves reads to clients
//! that sent `READONLY` (and redirects everything else to its master), so cluster clients
//! that read from replicas (redis-py `read_from_replicas`) get every value written.

use anyhow::{bail, ensure, Result};
use redis::AsyncCommands;
use sluice_common::model::ClusterView;
use sluice_common::resp::Frame;
use sluice_harness::client::{call_ok, RespConn};
use sluice_harness::python::PythonEnv;
use sluice_harness::{wait_for, LocalCluster, LocalSpec};
use std::time::Duration;

const KEYS: usize = 2_000;

fn text(f: &Frame) -> String {
    f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// (master proxy, replica proxy, replica node) of every shard.
fn shards(view: &ClusterView) -> Vec<(String, String, String)> {
    view.nodes
        .iter()
        .flat_map(|n| n.replicas.iter().map(move |r| (n.proxy.clone(), r.proxy.clone(), r.node.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_their_masters_and_serve_readonly_reads() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec { proxies: 3, replicas: 1, spare: 0, ..LocalSpec::default() }).await?;
    let view = cluster.broker_client().cluster("local").await?;
    let shards = shards(&view);
    ensure!(shards.len() == 3, "one replica per shard: {view:?}");

    // Writes through the masters, with a cluster client.
    let client = redis::cluster::ClusterClient::new(cluster.urls())?;
    let mut conn = client.get_async_connection().await?;
    for i in 0..KEYS {
        conn.set::<_, _, ()>(format!("k{i}"), format!("v{i}")).await?;
    }

    // Every replica's node follows its master's and has all of its keys.
    for (master, _, replica_node) in &shards {
        let master_node = view.nodes.iter().find(|n| &n.proxy == master).map(|n| n.node.clone()).unwrap_or_default();
        let want = call_ok(&master_node, &["DBSIZE"]).await?;
        wait_for("the replica's node to hold its master's keys", Duration::from_secs(20), || {
            let (replica_node, want) = (replica_node.clone(), want.clone());
            async move {
                let info = text(&call_ok(&replica_node, &["INFO", "replication"]).await?);
                let keys = call_ok(&replica_node, &["DBSIZE"]).await?;
                Ok((info.contains("role:slave") && info.contains("master_link_status:up") && keys == want)
                    .then_some(()))
            }
        })
        .await?;
    }

    // The cluster commands list each master's replica, through any proxy, masters and replicas.
    for (_, replica, _) in &shards {
        let Frame::Array(ranges) = call_ok(replica, &["CLUSTER", "SLOTS"]).await? else { bail!("CLUSTER SLOTS") };
        ensure!(!ranges.is_empty(), "CLUSTER SLOTS through {replica}");
        for r in &ranges {
            let Frame::Array(entry) = r else { bail!("a range: {r:?}") };
            ensure!(entry.len() == 4, "start, end, master, one replica: {entry:?}");
        }
        let nodes = text(&call_ok(replica, &["CLUSTER", "NODES"]).await?);
        ensure!(nodes.lines().count() == 6, "{nodes}");
        ensure!(nodes.lines().filter(|l| l.contains("slave ")).count() == 3, "{nodes}");
        let me = nodes.lines().find(|l| l.contains("myself")).unwrap_or_default();
        ensure!(me.contains("myself,slave") && me.contains(&replica.to_string()), "{me}");
    }

    // INFO names proxies, as a cluster node names cluster nodes: a replica its master's proxy,
    // a master its replica's proxy, each its own port.
    for (master, replica, _) in &shards {
        let (master_host, master_port) = master.rsplit_once(':').unwrap_or_default();
        let info = text(&call_ok(replica, &["INFO"]).await?);
        ensure!(info.contains(&format!("master_host:{master_host}\r\nmaster_port:{master_port}\r\n")), "{info}");
        let replica_port = replica.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
        ensure!(info.contains(&format!("tcp_port:{replica_port}\r\n")), "{info}");
        let info = text(&call_ok(master, &["INFO", "replication"]).await?);
        let (host, port) = replica.rsplit_once(':').unwrap_or_default();
        ensure!(info.contains(&format!("slave0:ip={host},port={port},")), "{info}");
    }

    // A replica: without READONLY, MOVED to its master; with it, reads here, writes MOVED.
    let (master, replica, _) = &shards[0];
    let slot_key = (0..KEYS)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let slot = sluice_common::slot::key_slot(k.as_bytes());
            view.nodes.iter().any(|n| &n.proxy == master && n.slots.iter().any(|a| a.range().contains(slot)))
        })
        .unwrap_or_default();
    let mut c = RespConn::connect(replica).await?;
    let moved = c.call(&["GET", &slot_key]).await?;
    ensure!(matches!(&moved, Frame::Error(e) if String::from_utf8_lossy(e).ends_with(master.as_str())), "{moved:?}");
    ensure!(c.call(&["READONLY"]).await? == Frame::ok(), "READONLY");
    // The replica's proxy notices its node is in sync within a poll; until then it redirects.
    let want = format!("v{}", &slot_key[1..]);
    wait_for("a READONLY read served by the replica", Duration::from_secs(5), || {
        let (replica, key, want) = (replica.clone(), slot_key.clone(), want.clone());
        async move {
            let mut c = RespConn::connect(&replica).await?;
            c.call(&["READONLY"]).await?;
            Ok((text(&c.call(&["GET", &key]).await?) == want).then_some(()))
        }
    })
    .await?;
    let value = c.call(&["GET", &slot_key]).await?;
    ensure!(text(&value) == want, "a read from the replica: {value:?}");
    let write = c.call(&["SET", &slot_key, "x"]).await?;
    ensure!(matches!(&write, Frame::Error(e) if e.starts_with(b"MOVED")), "a write through the replica: {write:?}");
    let keys = c.call(&["SCAN", "0", "COUNT", "100000"]).await?;
    let Frame::Array(parts) = &keys else { bail!("SCAN: {keys:?}") };
    ensure!(
        matches!(parts.get(1), Some(Frame::Array(k)) if !k.is_empty()),
        "SCAN on a replica shows its master's keys"
    );

    // redis-py reading from replicas sees them and reads every value.
    let env = PythonEnv::ensure_async().await?;
    let script = r#"
import sys
from redis.cluster import RedisCluster, ClusterNode
nodes = [ClusterNode(*n.rsplit(':', 1)) for n in sys.argv[1].split(',')]
c = RedisCluster(startup_nodes=nodes, read_from_replicas=True)
replicas = [n for n in c.get_nodes() if n.server_type == 'replica']
assert len(replicas) == 3, [(n.name, n.server_type) for n in c.get_nodes()]
n = int(sys.argv[2])
wrong = [i for i in range(n) if c.get(f'k{i}') != f'v{i}'.encode()]
assert not wrong, wrong[:10]
c.set('written-through-redis-py', 'yes')
assert c.get('written-through-redis-py') == b'yes'
print('ok')
"#;
    let out = tokio::process::Command::new(&env.python)
        .args(["-c", script, &cluster.cluster_proxies().join(","), &KEYS.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "redis-py with read_from_replicas: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A proxy configured as a replica whose node holds keys (not a former master) leaves them
/// alone: replication would replace them. Once the node is empty, it follows the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_node_holds_data_is_not_made_to_replicate_until_it_is_empty() -> Result<()> {
    use sluice_common::model::{ProxyConfig, ReplicaView, SlotAssignment, SlotRange};
    use sluice_harness::cluster::ProxyCluster;
    let mut cluster = ProxyCluster::start(2, &[]).await?;
    let (master_node, replica_node) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    call_ok(&replica_node, &["SET", "precious", "data"]).await?;
    let mut view = cluster.cluster_view(2);
    let replica = view.nodes.remove(1);
    view.nodes[0].slots = vec![SlotAssignment::plain(SlotRange::new(0, 16383))];
    view.nodes[0].replicas = vec![ReplicaView {
        proxy: replica.proxy.clone(),
        node: replica.node.clone(),
        peer: None,
        former_master: false,
    }];
    for p in cluster.proxy_addrs() {
        let config = ProxyConfig { epoch: 2, proxy: p.clone(), cluster: Some(view.clone()), migrations: Vec::new() };
        call_ok(&p, &["UMCTL", "SETDB", &serde_json::to_string(&config)?]).await?;
    }
    cluster.epoch = 2;
    // A few polls of the replica task later the node is still a master with its key.
    let replica_proxy = cluster.proxies[1].addr();
    for _ in 0..8 {
        let info = text(&call_ok(&replica_node, &["INFO", "replication"]).await?);
        ensure!(info.contains("role:master"), "the node was made a replica: {info}");
        ensure!(call_ok(&replica_node, &["GET", "precious"]).await? == Frame::bulk("data"), "the key is kept");
        // `INFOMGR` answers meanwhile: the proxy is up and holds the config.
        call_ok(&replica_proxy, &["UMCTL", "GETEPOCH"]).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call_ok(&replica_node, &["FLUSHALL"]).await?;
    call_ok(&master_node, &["SET", "k", "v"]).await?;
    wait_for("the emptied node to follow the master", Duration::from_secs(10), || {
        let replica_node = replica_node.clone();
        async move { Ok((call_ok(&replica_node, &["GET", "k"]).await? == Frame::bulk("v")).then_some(())) }
    })
    .await?;
    Ok(())
}
