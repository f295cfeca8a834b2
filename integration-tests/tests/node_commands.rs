//! Node-level commands (`CONFIG`, `SLOWLOG`, `LATENCY`, `MEMORY`, `OBJECT`, `DEBUG`, …)
//! answered through a proxy as a native Redis Cluster node answers them, compared with one
//! started in the same test; and the parameters and commands sluice refuses, with a clear
//! error and nothing changed on the node.

use anyhow::{bail, ensure, Result};
use sluice_common::model::{MigrationMeta, MigrationMode, ProxyConfig, SlotAssignment, SlotRange, SlotTag};
use sluice_common::resp::Frame;
use sluice_harness::client::{call_ok, RespConn};
use sluice_harness::cluster::ProxyCluster;
use sluice_harness::native::NativeCluster;
use sluice_harness::python::PythonEnv;
use sluice_harness::wait_for;
use std::collections::BTreeSet;
use std::time::Duration;

#[path = "node_commands/config_epochs.rs"]
mod config_epochs;
#[path = "node_commands/slot_keys.rs"]
mod slot_keys;

const DEBUG_ON: [&str; 2] = ["--enable-debug-command", "yes"];

/// A script that keeps its node busy for 20 ms.
const BUSY_20_MS: &str = "local s = redis.call('TIME') local t repeat t = redis.call('TIME') \
    until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) > 20000 return 1";

fn text(f: &Frame) -> String {
    f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// The structure of a reply without its values: the kinds of the elements of an array,
/// the keys of a map (and of a flat RESP2 map, `pairs`) with the kinds of their values.
fn shape(f: &Frame) -> String {
    match f {
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            let kinds: BTreeSet<String> = items.iter().map(shape).collect();
            format!("[{}]", kinds.into_iter().collect::<Vec<_>>().join("|"))
        }
        Frame::Map(pairs) => {
            let fields: BTreeSet<String> = pairs.iter().map(|(k, v)| format!("{}:{}", text(k), shape(v))).collect();
            format!("{{{}}}", fields.into_iter().collect::<Vec<_>>().join(","))
        }
        Frame::Bulk(_) | Frame::Verbatim(..) => "str".into(),
        Frame::Simple(_) => "simple".into(),
        Frame::Integer(_) => "int".into(),
        Frame::Double(_) => "double".into(),
        Frame::Boolean(_) => "bool".into(),
        Frame::BigNumber(_) => "big".into(),
        Frame::Null | Frame::NullArray => "null".into(),
        Frame::Error(e) | Frame::BlobError(e) => {
            format!("error {}", String::from_utf8_lossy(e).split(' ').next().unwrap_or(""))
        }
    }
}

/// The field names of a flat `[name, value, …]` reply (RESP2 maps).
fn field_names(f: &Frame) -> Vec<String> {
    match f {
        Frame::Array(items) => items.iter().step_by(2).map(text).collect(),
        Frame::Map(pairs) => pairs.iter().map(|(k, _)| text(k)).collect(),
        _ => Vec::new(),
    }
}

/// A `CONFIG GET` reply as sorted (name, value) pairs.
fn config_pairs(f: &Frame) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = match f {
        Frame::Array(items) => items.chunks(2).map(|p| (text(&p[0]), p.get(1).map(text).unwrap_or_default())).collect(),
        Frame::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
        _ => Vec::new(),
    };
    pairs.sort();
    pairs
}

#[derive(Clone, Copy, Debug)]
enum Compare {
    /// The same answer.
    Exact,
    /// The same structure (values differ between two servers: times, addresses).
    Shape,
    /// The same field names (`MEMORY STATS`).
    Fields,
    /// The same `CONFIG GET` pairs, in any order.
    Config,
}

struct Pair {
    proxy: RespConn,
    native: RespConn,
}

impl Pair {
    async fn both(&mut self, args: &[&str]) -> Result<(Frame, Frame)> {
        Ok((self.proxy.call(args).await?, self.native.call(args).await?))
    }

    async fn check(&mut self, args: &[&str], how: Compare) -> Result<()> {
        let (p, n) = self.both(args).await?;
        let same = match how {
            Compare::Exact => p == n,
            Compare::Shape => shape(&p) == shape(&n),
            Compare::Fields => field_names(&p) == field_names(&n) && !field_names(&p).is_empty(),
            Compare::Config => config_pairs(&p) == config_pairs(&n) && !config_pairs(&p).is_empty(),
        };
        ensure!(same, "{} ({how:?}): the proxy answered\n  {p:?}\na native cluster node\n  {n:?}", args.join(" "));
        Ok(())
    }
}

/// The same data through both: a string, a small hash, a list, an int set, a sorted set.
async fn write_data(pair: &mut Pair) -> Result<()> {
    let writes: [&[&str]; 6] = [
        &["SET", "a", "12"],
        &["SET", "b", "some text"],
        &["HSET", "h", "f1", "v1", "f2", "v2"],
        &["RPUSH", "l", "x", "y", "z"],
        &["SADD", "s", "1", "2", "3"],
        &["ZADD", "z", "1", "m1", "2", "m2"],
    ];
    for w in writes {
        let (p, n) = pair.both(w).await?;
        ensure!(p == n && !p.is_error(), "{w:?}: {p:?} vs {n:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_level_commands_answer_as_a_native_cluster_node_does() -> Result<()> {
    let cluster = ProxyCluster::start_with(1, None, &DEBUG_ON, &["--allow-debug"]).await?;
    let native =
        NativeCluster::start_with(&cluster.dir.path().join("native"), &[vec![SlotRange::new(0, 16383)]], &DEBUG_ON)
            .await?;
    let mut pair = Pair {
        proxy: RespConn::connect(&cluster.proxies[0].addr()).await?,
        native: RespConn::connect(&native.nodes[0].addr()).await?,
    };
    write_data(&mut pair).await?;
    use Compare::*;
    let checks: Vec<(Vec<&str>, Compare)> = vec![
        // CONFIG
        (vec!["CONFIG", "GET", "maxmemory"], Config),
        (vec!["CONFIG", "GET", "hash-max-listpack-entries"], Config),
        (vec!["CONFIG", "GET", "*max-*-entries*"], Config),
        (vec!["CONFIG", "GET", "cluster-enabled"], Config),
        (vec!["CONFIG", "GET", "maxmemory", "maxmemory-policy", "timeout"], Config),
        (vec!["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"], Exact),
        (vec!["CONFIG", "GET", "maxmemory-policy"], Config),
        (vec!["CONFIG", "SET", "hash-max-listpack-entries", "64", "set-max-intset-entries", "256"], Exact),
        (vec!["CONFIG", "GET", "hash-max-listpack-entries"], Config),
        (vec!["CONFIG", "SET", "no-such-parameter", "1"], Exact),
        (vec!["CONFIG", "RESETSTAT"], Exact),
        // OBJECT and MEMORY by key
        (vec!["OBJECT", "ENCODING", "a"], Exact),
        (vec!["OBJECT", "ENCODING", "b"], Exact),
        (vec!["OBJECT", "ENCODING", "h"], Exact),
        (vec!["OBJECT", "ENCODING", "l"], Exact),
        (vec!["OBJECT", "ENCODING", "s"], Exact),
        (vec!["OBJECT", "ENCODING", "z"], Exact),
        (vec!["OBJECT", "ENCODING", "missing"], Exact),
        (vec!["OBJECT", "REFCOUNT", "h"], Exact),
        (vec!["OBJECT", "IDLETIME", "h"], Shape),
        (vec!["OBJECT", "FREQ", "h"], Exact),
        // A cluster-mode node keeps per-key slot metadata: its sizes are larger.
        (vec!["MEMORY", "USAGE", "h"], Shape),
        (vec!["MEMORY", "USAGE", "l", "SAMPLES", "0"], Shape),
        (vec!["MEMORY", "USAGE", "missing"], Exact),
        (vec!["MEMORY", "DOCTOR"], Shape),
        (vec!["MEMORY", "STATS"], Fields),
        (vec!["MEMORY", "MALLOC-STATS"], Shape),
        // DEBUG (the proxy has --allow-debug; both nodes allow DEBUG)
        (vec!["DEBUG", "OBJECT", "missing"], Exact),
        (vec!["DEBUG", "SLEEP", "0.02"], Exact),
        // SLOWLOG: log everything for a moment
        (vec!["SLOWLOG", "RESET"], Exact),
        (vec!["CONFIG", "SET", "slowlog-log-slower-than", "0"], Exact),
        (vec!["GET", "a"], Exact),
        (vec!["CONFIG", "SET", "slowlog-log-slower-than", "10000"], Exact),
        (vec!["SLOWLOG", "LEN"], Shape),
        (vec!["SLOWLOG", "GET", "2"], Shape),
        // LATENCY: a script busy for 20 ms is a `command` event above a 1 ms threshold on
        // both (`DEBUG SLEEP` is not recorded; other events come and go with the load).
        (vec!["CONFIG", "SET", "latency-monitor-threshold", "1"], Exact),
        (vec!["EVAL", BUSY_20_MS, "0"], Exact),
        (vec!["LATENCY", "LATEST"], Shape),
        (vec!["LATENCY", "HISTORY", "command"], Shape),
        (vec!["LATENCY", "DOCTOR"], Shape),
        (vec!["LATENCY", "HISTOGRAM", "set", "get"], Shape),
        (vec!["LATENCY", "RESET"], Shape),
        // Persistence, modules
        (vec!["BGSAVE"], Exact),
        (vec!["MODULE", "LIST"], Exact),
    ];
    for (args, how) in &checks {
        pair.check(args, *how).await?;
    }
    // Also in RESP3 (maps, sets, verbatim strings).
    pair.both(&["HELLO", "3"]).await?;
    for (args, how) in checks.iter().filter(|(a, _)| a[0] != "DEBUG" && a[0] != "BGSAVE") {
        pair.check(args, *how).await?;
    }
    // The latency checks compared real events, not two empty answers.
    pair.proxy.call(&["EVAL", BUSY_20_MS, "0"]).await?;
    let latest = pair.proxy.call(&["LATENCY", "LATEST"]).await?;
    ensure!(matches!(&latest, Frame::Array(events) if !events.is_empty()), "LATENCY LATEST: {latest:?}");
    // DEBUG OBJECT names the key's encoding as the node does.
    let (p, n) = pair.both(&["DEBUG", "OBJECT", "h"]).await?;
    ensure!(text(&p).contains("encoding:listpack") && text(&n).contains("encoding:listpack"), "{p:?} / {n:?}");
    // CONFIG GET port: the proxy's, as a cluster node's own port.
    let port = config_pairs(&pair.proxy.call(&["CONFIG", "GET", "port"]).await?);
    ensure!(port == vec![("port".to_string(), cluster.proxies[0].port.to_string())], "CONFIG GET port: {port:?}");
    // CONFIG SET reached the proxy's node.
    let on_node = call_ok(&cluster.nodes[0].addr(), &["CONFIG", "GET", "maxmemory-policy"]).await?;
    ensure!(config_pairs(&on_node) == vec![("maxmemory-policy".into(), "allkeys-lru".into())], "{on_node:?}");
    pair.check(&["FLUSHALL"], Exact).await?;
    pair.check(&["DBSIZE"], Exact).await?;
    Ok(())
}

/// What sluice refuses: each answer says why and names the parameter or command, and the
/// node is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_commands_sluice_relies_on_are_refused_and_change_nothing() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let node = cluster.nodes[0].addr();
    let mut proxy = RespConn::connect(&cluster.proxies[0].addr()).await?;
    let refused_params: [(&str, &str); 12] = [
        ("port", "1234"),
        ("bind", "0.0.0.0"),
        ("requirepass", "secret"),
        ("masterauth", "secret"),
        ("masteruser", "someone"),
        ("dir", "/tmp"),
        ("dbfilename", "other.rdb"),
        ("cluster-node-timeout", "100"),
        ("protected-mode", "yes"),
        ("min-replicas-to-write", "1"),
        ("REPLICAOF", "127.0.0.1 1"),
        ("logfile", "/tmp/x.log"),
    ];
    for (param, value) in refused_params {
        let before = call_ok(&node, &["CONFIG", "GET", param]).await?;
        let reply = proxy.call(&["CONFIG", "SET", param, value]).await?;
        let msg = text_of_error(&reply)?;
        ensure!(
            msg.starts_with("ERR sluice: CONFIG SET") && msg.contains(&param.to_ascii_lowercase()),
            "CONFIG SET {param}: {msg}"
        );
        let after = call_ok(&node, &["CONFIG", "GET", param]).await?;
        ensure!(before == after, "CONFIG SET {param} changed the node: {before:?} -> {after:?}");
    }
    // One refused parameter refuses the whole command: maxmemory is not set either.
    let reply = proxy.call(&["CONFIG", "SET", "maxmemory", "100mb", "dir", "/tmp"]).await?;
    ensure!(text_of_error(&reply)?.contains("'dir'"), "{reply:?}");
    let maxmemory = call_ok(&node, &["CONFIG", "GET", "maxmemory"]).await?;
    ensure!(config_pairs(&maxmemory) == vec![("maxmemory".into(), "0".into())], "{maxmemory:?}");
    // Commands that are not passed through.
    let refused: [&[&str]; 14] = [
        &["CONFIG", "REWRITE"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["SLAVEOF", "NO", "ONE"],
        &["FAILOVER"],
        &["SHUTDOWN", "NOSAVE"],
        &["MONITOR"],
        &["SYNC"],
        &["ACL", "LIST"],
        &["ACL", "SETUSER", "eve", "on", ">pw", "+@all"],
        &["MODULE", "LOAD", "/nonexistent.so"],
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
        &["DEBUG", "OBJECT", "a"],
        &["DEBUG", "SLEEP", "0"],
    ];
    for args in refused {
        let reply = proxy.call(args).await?;
        let msg = text_of_error(&reply)?;
        ensure!(msg.starts_with("ERR sluice: ") && msg.len() > 40, "{}: {msg}", args.join(" "));
        if args[0] == "DEBUG" {
            ensure!(msg.contains("--allow-debug"), "the refusal says how to allow it: {msg}");
        }
    }
    // The node is as it was: up, a master, no user added.
    ensure!(call_ok(&node, &["PING"]).await? == Frame::simple("PONG"), "the node answers");
    let role = call_ok(&node, &["ROLE"]).await?;
    ensure!(matches!(&role, Frame::Array(r) if r.first().map(text).as_deref() == Some("master")), "{role:?}");
    let users = call_ok(&node, &["ACL", "USERS"]).await?;
    ensure!(matches!(&users, Frame::Array(u) if u.len() == 1), "ACL users on the node: {users:?}");
    // The proxy still serves.
    ensure!(proxy.call(&["SET", "k", "v"]).await? == Frame::ok(), "the proxy serves after the refusals");
    Ok(())
}

fn text_of_error(f: &Frame) -> Result<String> {
    match f {
        Frame::Error(e) => Ok(String::from_utf8_lossy(e).into_owned()),
        other => bail!("expected an error, got {other:?}"),
    }
}

/// Both proxies' configs: proxy 0 serves every slot, proxy 1 none (a replication-mode
/// destination serves nothing before the switch); with `migrating`, a replication-mode
/// migration of slots 0-99 from proxy 0 to proxy 1.
fn configs_with_migration(cluster: &ProxyCluster, epoch: u64, migrating: bool) -> Vec<ProxyConfig> {
    let mut view = cluster.cluster_view(epoch);
    view.nodes[0].slots = vec![SlotAssignment::plain(SlotRange::new(0, 16383))];
    view.nodes[1].slots = Vec::new();
    let mut migrations = Vec::new();
    if migrating {
        let moving = SlotRange::new(0, 99);
        let tagged = |tag| SlotAssignment { start: 0, end: 99, tag: Some(tag), migration: Some("m-1".into()) };
        view.nodes[0].slots = vec![tagged(SlotTag::Migrating), SlotAssignment::plain(SlotRange::new(100, 16383))];
        view.nodes[1].slots = vec![tagged(SlotTag::Importing)];
        migrations.push(MigrationMeta {
            id: "m-1".into(),
            epoch,
            cluster: view.name.clone(),
            src_proxy: cluster.proxies[0].addr(),
            src_node: cluster.nodes[0].addr(),
            dst_proxy: cluster.proxies[1].addr(),
            dst_node: cluster.nodes[1].addr(),
            slots: vec![moving],
            mode: MigrationMode::Replication,
            switch_allowed: false,
            fenced: false,
        });
    }
    (0..2)
        .map(|i| ProxyConfig {
            epoch,
            proxy: cluster.proxies[i].addr(),
            cluster: Some(view.clone()),
            migrations: migrations.clone(),
        })
        .collect()
}

async fn set_configs(cluster: &ProxyCluster, configs: &[ProxyConfig]) -> Result<()> {
    for (i, c) in configs.iter().enumerate() {
        call_ok(&cluster.proxies[i].addr(), &["UMCTL", "SETDB", &serde_json::to_string(c)?]).await?;
    }
    Ok(())
}

/// While a replication-mode migration involves a proxy, the replication settings it runs
/// on are refused on both of its nodes; once it is gone they are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_settings_are_refused_while_a_replication_migration_runs() -> Result<()> {
    let cluster = ProxyCluster::start(2, &[]).await?;
    set_configs(&cluster, &configs_with_migration(&cluster, 2, true)).await?;
    // The destination's node follows the source: the migration really runs.
    let dst_node = cluster.nodes[1].addr();
    wait_for("the destination's node to replicate the source", Duration::from_secs(20), || {
        let dst_node = dst_node.clone();
        async move {
            let info = call_ok(&dst_node, &["INFO", "replication"]).await?;
            Ok(text(&info).contains("master_link_status:up").then_some(()))
        }
    })
    .await?;
    for proxy in cluster.proxy_addrs() {
        let mut c = RespConn::connect(&proxy).await?;
        for (param, value) in [
            ("repl-backlog-size", "16kb"),
            ("repl-timeout", "1"),
            ("replica-read-only", "no"),
            ("client-output-buffer-limit", "replica 1 1 0"),
        ] {
            let reply = c.call(&["CONFIG", "SET", param, value]).await?;
            let msg = text_of_error(&reply)?;
            ensure!(msg.contains(param) && msg.contains("migration"), "{proxy} CONFIG SET {param}: {msg}");
        }
        ensure!(
            c.call(&["CONFIG", "SET", "maxmemory", "0"]).await? == Frame::ok(),
            "{proxy}: other parameters are accepted"
        );
    }
    let backlog = call_ok(&cluster.nodes[0].addr(), &["CONFIG", "GET", "repl-backlog-size"]).await?;
    ensure!(config_pairs(&backlog)[0].1 != "16384", "the source's backlog was not changed: {backlog:?}");
    // The migration leaves the configs: the settings are the operator's again.
    set_configs(&cluster, &configs_with_migration(&cluster, 3, false)).await?;
    let mut c = RespConn::connect(&cluster.proxies[0].addr()).await?;
    ensure!(
        c.call(&["CONFIG", "SET", "repl-backlog-size", "2mb"]).await? == Frame::ok(),
        "accepted without a migration"
    );
    Ok(())
}

/// redis-py's `RedisCluster.config_get` / `config_set` through three proxies give what they
/// give on a native three-node cluster (one random node by default, as redis-py does), and
/// `config_set(…, target_nodes=ALL_NODES)` reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_config_get_and_set_work_across_three_proxies_as_on_a_native_cluster() -> Result<()> {
    let env = PythonEnv::ensure_async().await?;
    let cluster = ProxyCluster::start(3, &[]).await?;
    let ranges: Vec<Vec<SlotRange>> =
        sluice_common::model::split_slots_evenly(3).into_iter().map(|r| vec![r]).collect();
    let native = NativeCluster::start(&cluster.dir.path().join("native"), &ranges).await?;
    let script = r#"
import json, sys
from redis.cluster import RedisCluster, ClusterNode
def run(nodes):
    c = RedisCluster(startup_nodes=[ClusterNode(*n.rsplit(':', 1)) for n in nodes.split(',')])
    out = {}
    out['get'] = c.config_get('maxmemory')
    out['get_pattern'] = sorted(c.config_get('*max-*-entries*').items())
    out['set'] = c.config_set('slowlog-max-len', '200')
    out['set_all'] = c.config_set('maxmemory-policy', 'allkeys-lru', target_nodes=RedisCluster.ALL_NODES)
    out['after'] = c.config_get('maxmemory-policy')
    every = c.config_get('maxmemory-policy', target_nodes=RedisCluster.ALL_NODES)
    out['every_node'] = sorted(json.dumps(v, sort_keys=True) for v in every.values())
    out['resetstat'] = c.config_resetstat()
    out['slowlog_len'] = type(c.slowlog_len()).__name__
    out['memory_usage'] = type(c.memory_usage('somekey')).__name__
    return out
print(json.dumps({'sluice': run(sys.argv[1]), 'native': run(sys.argv[2])}, sort_keys=True))
"#;
    let native_addrs: Vec<String> = native.nodes.iter().map(|n| n.addr()).collect();
    let out = tokio::process::Command::new(&env.python)
        .args(["-c", script, &cluster.proxy_addrs().join(","), &native_addrs.join(",")])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    ensure!(out.status.success(), "redis-py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    eprintln!("{v}");
    ensure!(v["sluice"] == v["native"], "redis-py through sluice {} vs native {}", v["sluice"], v["native"]);
    ensure!(v["sluice"]["every_node"].as_array().map(Vec::len) == Some(3), "three nodes answered: {v}");
    for node in &cluster.nodes {
        let policy = call_ok(&node.addr(), &["CONFIG", "GET", "maxmemory-policy"]).await?;
        ensure!(config_pairs(&policy)[0].1 == "allkeys-lru", "{}: {policy:?}", node.addr());
    }
    Ok(())
}
