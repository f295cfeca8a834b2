//! Commands a Redis Cluster node answers about itself: `CONFIG`, `SLOWLOG`, `LATENCY`,
//! `DEBUG`, `SAVE`/`BGSAVE`, `MODULE LIST`, … Redis flags them *admin*.
//!
//! Cluster clients and monitoring agents send these to every node of a cluster (redis-py's
//! `RedisCluster.config_get`, exporters reading `SLOWLOG GET` and `LATENCY LATEST`), and each
//! node answers for itself. A proxy stands for one node, so they run on its node, with two
//! kinds of exception, decided command by command in [`refusal`] (and listed in
//! docs/proxy.md):
//! - what sluice itself relies on: the node's replication (`REPLICAOF`, `FAILOVER`, `SYNC`),
//!   its addresses and credentials (`CONFIG SET port|bind|requirepass|masterauth …`), and,
//!   while a replication-mode migration involves this proxy, the replication settings that
//!   migration runs on ([`MIGRATION_PARAMETERS`]);
//! - what cannot mean the same through a proxy: `MONITOR` and `CLIENT LIST` would show
//!   sluice's connections, not the clients; `ACL` administration belongs on the node (its users
//!   are passed through, `users.rs`; `ACL WHOAMI` is answered); `MODULE LOAD` adds commands the
//!   proxy cannot route.
//!
//! `DEBUG` (and `PFDEBUG`/`PFSELFTEST`) run only with `--allow-debug`: they can stop or crash
//! the node (`DEBUG SLEEP`, `DEBUG SEGFAULT`), which the node itself also refuses unless its
//! `enable-debug-command` allows it.
//!
//! `CONFIG GET` answers what a cluster node would say of itself: `cluster-enabled` is `yes`,
//! `port` is the proxy's, `requirepass` the proxy's own, and the node's replication
//! credentials (`masterauth`, `masteruser`) are not shown.

use crate::session::{Flow, Session};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::{parse_frame, Command, Frame, Limits};

/// `CONFIG SET` parameters a replication-mode migration runs on: refused while one involves
/// this proxy (source or destination), accepted otherwise. Changing them mid-migration could
/// force a full resync (a smaller backlog, a replica output buffer limit), make the replica
/// take writes (`replica-read-only no`) or stall the switch (`repl-timeout`).
pub const MIGRATION_PARAMETERS: [&str; 4] = ["repl-", "replica-", "slave-", "client-output-buffer-limit"];

/// Whether `name` (lower case) is one of [`MIGRATION_PARAMETERS`].
fn is_migration_parameter(name: &str) -> bool {
    MIGRATION_PARAMETERS.iter().any(|p| if p.ends_with('-') { name.starts_with(p) } else { name == *p })
}

/// Why sluice refuses `CONFIG SET <name>` always, if it does.
fn fixed_parameter(name: &str) -> Option<&'static str> {
    let why = match name {
        "port" | "bind" | "bind-source-addr" | "unixsocket" | "unixsocketperm" | "tls-port" => {
            "the proxies, the other nodes and sluice's migrations reach the node at its address"
        }
        "requirepass" => "the proxy authenticates to the node with it (--node-password)",
        "masterauth" | "masteruser" => "replication into this node (migrations) authenticates with it",
        "replicaof" | "slaveof" => "sluice decides which node replicates which",
        "dir" | "dbfilename" | "appendfilename" | "appenddirname" | "logfile" | "pidfile" => {
            "the node's files belong to its operator, not to a client"
        }
        "protected-mode" => "the other nodes connect to this one for migrations",
        "min-replicas-to-write" | "min-slaves-to-write" | "min-replicas-max-lag" | "min-slaves-max-lag" => {
            "the node has no replicas of its own, so it would refuse every write"
        }
        _ if name.starts_with("cluster-") => {
            "the cluster is managed by the sluice broker; the node is not in cluster mode"
        }
        _ => return None,
    };
    Some(why)
}

/// The error for an admin command that does not run on the node, or `None` if it does.
pub fn refusal(cmd: &Command, name: &str, shared: &Shared) -> Option<Frame> {
    let why = match name {
        "config|get" | "config|resetstat" | "slowlog|get" | "slowlog|len" | "slowlog|reset" | "bgsave"
        | "bgrewriteaof" | "save" | "module|list" => return None,
        _ if name.starts_with("latency|") => return None,
        "config|set" => return config_set_refusal(cmd, shared),
        "debug" | "pfdebug" | "pfselftest" if shared.opts.allow_debug => return None,
        "debug" | "pfdebug" | "pfselftest" => {
            "it can stop or crash the node; start the proxy with --allow-debug to pass it through"
        }
        "config|rewrite" => {
            "it would save settings sluice changes at runtime (a migration's REPLICAOF) into the node's config file"
        }
        "replicaof" | "slaveof" | "failover" | "sync" | "psync" | "replconf" => {
            "the node's replication is sluice's (migrations); it is not managed through the proxy"
        }
        "shutdown" => "sluice manages the node; stopping it would take its slots down",
        "monitor" => "it would show sluice's own connections to the node, not this proxy's clients",
        _ if name.starts_with("acl|") => {
            "manage the node's ACL on the node; its users authenticate through the proxy with AUTH user pass"
        }
        _ if name.starts_with("module|") => "the proxy routes by its command table and cannot route a module's commands",
        _ if name.starts_with("client|") => return Some(Frame::error(format!(
            "ERR sluice: CLIENT {} is not supported through the proxy: the node sees the proxy's connections, not its clients",
            name.trim_start_matches("client|").to_ascii_uppercase()
        ))),
        _ if name.starts_with("cluster|") => "the cluster topology is managed by the sluice broker",
        _ => "it is an admin command sluice does not pass through; run it on the Redis node directly",
    };
    Some(Frame::error(format!("ERR sluice: '{}' is refused: {why}", display_name(name))))
}

/// `config|set` as `CONFIG SET`.
fn display_name(name: &str) -> String {
    name.replace('|', " ").to_ascii_uppercase()
}

/// `CONFIG SET p1 v1 [p2 v2 …]`: refused as a whole (nothing set, as Redis does with a bad
/// pair) if any parameter is one sluice relies on.
fn config_set_refusal(cmd: &Command, shared: &Shared) -> Option<Frame> {
    let replicating = shared.routes().config.migrations.iter().any(|m| m.mode.is_streamed());
    for param in cmd.args().iter().skip(2).step_by(2) {
        let name = String::from_utf8_lossy(param).to_ascii_lowercase();
        let why = match fixed_parameter(&name) {
            Some(why) => why,
            None if replicating && is_migration_parameter(&name) => {
                "a replication-mode migration involving this node relies on it; set it once the migration is done"
            }
            None => continue,
        };
        return Some(Frame::error(format!("ERR sluice: CONFIG SET '{name}' is refused: {why}")));
    }
    None
}

/// `CONFIG GET`: the node's answer, presented as a cluster node's (see the module doc).
pub async fn config_get(s: &mut Session, cmd: Command) -> Flow {
    let shared = s.shared().clone();
    let protocol = s.protocol();
    s.send_and_present(cmd.raw().clone(), move |raw| match parse_frame(&raw, &Limits::SERVER) {
        Ok((Frame::Array(items), _)) => {
            let mut pairs: Vec<(Frame, Frame)> = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            let pairs = present(pairs, &shared);
            Frame::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()).to_bytes(protocol)
        }
        Ok((Frame::Map(pairs), _)) => Frame::Map(present(pairs, &shared)).to_bytes(protocol),
        _ => raw,
    })
    .await
}

/// The parameters a cluster node would show differently from the proxy's node.
fn present(pairs: Vec<(Frame, Frame)>, shared: &Shared) -> Vec<(Frame, Frame)> {
    let port = shared.me().rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    pairs
        .into_iter()
        .map(|(k, v)| {
            let name = k.as_bytes().map(|b| String::from_utf8_lossy(b).to_ascii_lowercase()).unwrap_or_default();
            let shown = match name.as_str() {
                "cluster-enabled" => Some("yes".to_string()),
                "port" => Some(port.clone()),
                "requirepass" => Some(shared.opts.requirepass.clone().unwrap_or_default()),
                "masterauth" | "masteruser" => Some(String::new()),
                _ => None,
            };
            (k, shown.map_or(v, |s| Frame::Bulk(Bytes::from(s))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_parameters_are_matched_by_prefix_or_whole_name() {
        assert!(is_migration_parameter("repl-backlog-size"));
        assert!(is_migration_parameter("replica-read-only"));
        assert!(is_migration_parameter("slave-read-only"));
        assert!(is_migration_parameter("client-output-buffer-limit"));
        assert!(!is_migration_parameter("maxmemory"));
        assert!(!is_migration_parameter("replicaof"), "always refused, not only during migrations");
        assert!(fixed_parameter("replicaof").is_some());
        assert!(fixed_parameter("cluster-node-timeout").is_some());
        assert!(fixed_parameter("maxmemory-policy").is_none());
    }
}
