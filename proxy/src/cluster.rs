//! `CLUSTER …` emulation: what a Redis Cluster client asks to learn the topology, answered
//! from the proxy's config. Each shard is a master proxy owning its node's slots and its
//! replica proxies, listed as a native cluster lists replicas. Commands that would change a
//! native cluster are refused: the broker owns the topology.

use crate::command::CommandSpec;
use crate::route::{Peer, RouteTable};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::model::{node_id, Epoch};
use sluice_common::resp::{Command, Frame};
use sluice_common::slot::key_slot;

pub fn handle(shared: &Shared, cmd: &Command, spec: &CommandSpec) -> Frame {
    let routes = shared.routes();
    match spec.name {
        "cluster|slots" | "cluster|shards" | "cluster|nodes" if routes.peers.is_empty() => no_topology(),
        "cluster|slots" => slots(&routes),
        "cluster|shards" => shards(&routes),
        "cluster|nodes" => text(nodes(&routes, shared.me())),
        "cluster|info" => text(info(&routes)),
        "cluster|keyslot" => Frame::Integer(i64::from(key_slot(&cmd.args()[2]))),
        "cluster|myid" | "cluster|myshardid" => Frame::bulk(node_id(shared.me())),
        "cluster|replicas" | "cluster|slaves" => {
            let id = String::from_utf8_lossy(&cmd.args()[2]).into_owned();
            match routes.peers.iter().position(|p| p.id == id) {
                Some(i) => {
                    let lines = node_lines(&routes, shared.me());
                    let wanted = &routes.peers[i].replicas;
                    Frame::Array(
                        lines
                            .into_iter()
                            .filter(|(proxy, _)| wanted.iter().any(|r| &r.proxy == proxy))
                            .map(|(_, line)| Frame::bulk(line))
                            .collect(),
                    )
                }
                None if routes.peers.iter().any(|p| p.replicas.iter().any(|r| r.id == id)) => {
                    Frame::error("ERR The specified node is not a master")
                }
                None => Frame::error(format!("ERR Unknown node {id}")),
            }
        }
        "cluster|links" => Frame::Array(Vec::new()),
        "cluster|help" => Frame::Array(
            [
                "CLUSTER <subcommand> (answered by the sluice proxy)",
                "SLOTS | SHARDS | NODES | INFO | KEYSLOT <key> | MYID | MYSHARDID | REPLICAS <id> | LINKS",
                "The topology is managed by the sluice broker; other subcommands are refused.",
            ]
            .into_iter()
            .map(Frame::simple)
            .collect(),
        ),
        other => Frame::error(format!(
            "ERR sluice: '{other}' is not available: the cluster topology is managed by the sluice broker"
        )),
    }
}

/// The topology commands of a proxy that knows no cluster (just started and not configured
/// yet, or free): an error, not an empty topology. A cluster client takes the first answer it
/// gets as the whole cluster: the redis-rs client, reconnecting to a proxy that had just
/// restarted, took its empty `CLUSTER SLOTS`, dropped every connection and never recovered
/// under load (found by the chaos test). On an error it asks another node.
fn no_topology() -> Frame {
    Frame::error("CLUSTERDOWN sluice: this proxy is in no cluster (not configured yet, or free); ask another node")
}

fn text(s: String) -> Frame {
    Frame::Verbatim(Bytes::from_static(b"txt"), Bytes::from(s))
}

/// Splits `host:port`; an address without a valid port gets 0.
fn host_port(addr: &str) -> (&str, i64) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p.parse().unwrap_or(0)),
        None => (addr, 0),
    }
}

fn node_entry(peer: &Peer) -> Frame {
    let (host, port) = host_port(&peer.proxy);
    Frame::Array(vec![Frame::bulk(host.to_string()), Frame::Integer(port), Frame::bulk(peer.id.clone())])
}

/// `CLUSTER SLOTS`: one entry per contiguous range: the master, then its replicas.
fn slots(routes: &RouteTable) -> Frame {
    Frame::Array(
        routes
            .runs()
            .into_iter()
            .map(|(start, end, owner)| {
                let master = &routes.peers[owner];
                let mut entry =
                    vec![Frame::Integer(i64::from(start)), Frame::Integer(i64::from(end)), node_entry(master)];
                entry.extend(master.replicas.iter().map(node_entry));
                Frame::Array(entry)
            })
            .collect(),
    )
}

/// A node of `CLUSTER SHARDS`.
fn shard_node(peer: &Peer, role: &str) -> Frame {
    let (host, port) = host_port(&peer.proxy);
    Frame::Map(vec![
        (Frame::bulk("id"), Frame::bulk(peer.id.clone())),
        (Frame::bulk("port"), Frame::Integer(port)),
        (Frame::bulk("ip"), Frame::bulk(host.to_string())),
        (Frame::bulk("endpoint"), Frame::bulk(host.to_string())),
        (Frame::bulk("role"), Frame::bulk(role.to_string())),
        (Frame::bulk("replication-offset"), Frame::Integer(0)),
        (Frame::bulk("health"), Frame::bulk("online")),
    ])
}

/// `CLUSTER SHARDS` (Redis 7): one shard per master, with its ranges, the master and its
/// replicas.
fn shards(routes: &RouteTable) -> Frame {
    let runs = routes.runs();
    Frame::Array(
        routes
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let ranges: Vec<Frame> = runs
                    .iter()
                    .filter(|r| r.2 == i)
                    .flat_map(|&(s, e, _)| [Frame::Integer(i64::from(s)), Frame::Integer(i64::from(e))])
                    .collect();
                let mut nodes = vec![shard_node(peer, "master")];
                nodes.extend(peer.replicas.iter().map(|r| shard_node(r, "replica")));
                Frame::Map(vec![
                    (Frame::bulk("slots"), Frame::Array(ranges)),
                    (Frame::bulk("nodes"), Frame::Array(nodes)),
                ])
            })
            .collect(),
    )
}

/// `CLUSTER NODES`: one line per node, this proxy flagged `myself`.
fn nodes(routes: &RouteTable, me: &str) -> String {
    node_lines(routes, me).into_iter().map(|(_, line)| line + "\n").collect()
}

/// The `CLUSTER NODES` line of every node (with the proxy it describes): each master with
/// its slot ranges, then its replicas (`slave <master id>`, no slots).
fn node_lines(routes: &RouteTable, me: &str) -> Vec<(String, String)> {
    let runs = routes.runs();
    let line = |peer: &Peer, role: &str, master: &str, ranges: &[String]| {
        let epoch = peer.config_epoch;
        let (host, port) = host_port(&peer.proxy);
        let cport = if port + 10000 <= 65535 { port + 10000 } else { port };
        let flags = if peer.proxy == me { format!("myself,{role}") } else { role.to_string() };
        let mut l = format!("{} {host}:{port}@{cport} {flags} {master} 0 0 {epoch} connected", peer.id);
        for r in ranges {
            l.push(' ');
            l.push_str(r);
        }
        (peer.proxy.clone(), l)
    };
    let mut out = Vec::new();
    for (i, peer) in routes.peers.iter().enumerate() {
        let ranges: Vec<String> = runs
            .iter()
            .filter(|r| r.2 == i)
            .map(|&(s, e, _)| if s == e { s.to_string() } else { format!("{s}-{e}") })
            .collect();
        out.push(line(peer, "master", "-", &ranges));
        out.extend(peer.replicas.iter().map(|r| line(r, "slave", &peer.id, &[])));
    }
    out
}

/// `CLUSTER INFO`: `ok` only when every slot is served.
fn info(routes: &RouteTable) -> String {
    let assigned = routes.slots_assigned();
    let state = if assigned == 16384 { "ok" } else { "fail" };
    let size = routes.runs().iter().map(|r| r.2).collect::<std::collections::BTreeSet<_>>().len();
    let (current_epoch, my_epoch) = config_epochs(routes);
    format!(
        "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:{size}\r\n\
         cluster_current_epoch:{current_epoch}\r\ncluster_my_epoch:{my_epoch}\r\ncluster_stats_messages_sent:0\r\n\
         cluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n",
        routes.peers.iter().map(|p| 1 + p.replicas.len()).sum::<usize>().max(1),
    )
}

/// `cluster_current_epoch` and `cluster_my_epoch` as a native node reports them: the greatest
/// config epoch of the cluster, and this node's shard's (a replica's is its master's).
fn config_epochs(routes: &RouteTable) -> (Epoch, Epoch) {
    let current = routes.peers.iter().map(|p| p.config_epoch).max().unwrap_or(0);
    let mine = routes.me.or(routes.replica_of).and_then(|i| routes.peers.get(i)).map_or(0, |p| p.config_epoch);
    (current, mine)
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::command;
    use crate::state::testing::shared_configured_proxy;
    use proptest::prelude::*;

    fn argument() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            prop::sample::select(vec!["0", "16383", "16384", "-1", "99999999999999999999", "x", ""])
                .prop_map(|s: &str| Bytes::copy_from_slice(s.as_bytes())),
            prop::collection::vec(any::<u8>(), 0..42).prop_map(Bytes::from),
        ]
    }

    proptest! {
        /// Every `CLUSTER` subcommand that passes `dispatch`'s arity check, with any arguments:
        /// an answer or an error line, never a panic.
        #[test]
        fn any_cluster_command_is_answered(sub in 0..64usize, rest in prop::collection::vec(argument(), 0..5)) {
            let subs: Vec<&str> = command::all().iter().filter_map(|c| c.name.strip_prefix("cluster|")).collect();
            let mut args = vec![Bytes::from_static(b"CLUSTER"), Bytes::copy_from_slice(subs[sub % subs.len()].as_bytes())];
            args.extend(rest);
            let cmd = Command::new(args);
            let spec = command::lookup(&cmd).expect("a CLUSTER subcommand");
            if spec.arity_ok(cmd.len()) {
                let (_, shared) = shared_configured_proxy();
                if let Frame::Error(e) = handle(shared, &cmd, spec) {
                    prop_assert!(!e.contains(&b'\r') && !e.contains(&b'\n'));
                }
            }
        }
    }
}
