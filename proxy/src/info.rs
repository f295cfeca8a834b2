//! `INFO`: the node's own report, adjusted so clients see a cluster node, plus a `# Sluice`
//! section with the proxy's state.

use crate::session::{Flow, Session};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::{parse_frame, Command, Frame, Limits};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub async fn handle(s: &mut Session, cmd: Command) -> Flow {
    let shared = s.shared().clone();
    let protocol = s.protocol();
    let wants_sluice = cmd.len() == 1
        || cmd.args()[1..]
            .iter()
            .any(|a| ["sluice", "all", "everything", "default"].iter().any(|w| a.eq_ignore_ascii_case(w.as_bytes())));
    s.send_and_present(cmd.raw().clone(), move |raw| {
        let text = match parse_frame(&raw, &Limits::SERVER) {
            Ok((frame, _)) if frame.is_error() => return raw,
            Ok((frame, _)) => frame.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()),
            Err(_) => None,
        };
        let Some(text) = text else { return raw };
        let mut text = rewrite(&text, &Presented::of(&shared));
        if wants_sluice {
            text.push_str(&sluice_section(&shared));
        }
        Frame::Verbatim(Bytes::from_static(b"txt"), Bytes::from(text)).to_bytes(protocol)
    })
    .await
}

/// What `INFO` says in place of the node's own facts: the proxy is the cluster node clients
/// know, so its port, its clients, and its shard's proxies stand where the node's are.
struct Presented {
    /// The proxy's client-facing port (`tcp_port`).
    port: Option<String>,
    clients: usize,
    /// On a replica: its shard's master proxy (`master_host`/`master_port`).
    master: Option<(String, String)>,
    /// Replica nodes (`host:port`) → their proxies' `(host, port)`, for `slaveN:` lines.
    replicas: Vec<(String, (String, String))>,
}

fn host_port(addr: &str) -> Option<(String, String)> {
    let (h, p) = addr.rsplit_once(':')?;
    Some((h.to_string(), p.to_string()))
}

impl Presented {
    fn of(shared: &Shared) -> Presented {
        let me = shared.me();
        let routes = shared.routes();
        let shard = routes
            .cluster()
            .and_then(|c| c.nodes.iter().find(|n| n.proxy == me || n.replicas.iter().any(|r| r.proxy == me)).cloned());
        let master = shard.as_ref().filter(|n| n.proxy != me).and_then(|n| host_port(&n.proxy));
        let replicas = shard
            .iter()
            .flat_map(|n| n.replicas.iter())
            .filter_map(|r| Some((r.node.clone(), host_port(&r.proxy)?)))
            .collect();
        Presented {
            port: host_port(me).map(|(_, p)| p),
            clients: shared.connected_clients.load(Ordering::Relaxed),
            master,
            replicas,
        }
    }

    /// A `slaveN:ip=…,port=…,state=…` line naming the replica's proxy, when the node it names
    /// is one of the shard's replica nodes.
    fn replica_line(&self, line: &str) -> Option<String> {
        let (name, fields) = line.split_once(':')?;
        let field = |k: &str| fields.split(',').find_map(|f| f.strip_prefix(k)?.strip_prefix('='));
        let node = format!("{}:{}", field("ip")?, field("port")?);
        let (host, port) = &self.replicas.iter().find(|(n, _)| *n == node)?.1;
        let rest: Vec<&str> = fields.split(',').filter(|f| !f.starts_with("ip=") && !f.starts_with("port=")).collect();
        Some(format!("{name}:ip={host},port={port},{}", rest.join(",")))
    }
}

/// Presents the node as a cluster node: its mode, the proxy's port and clients (not its
/// connections), and in the replication section the shard's proxies instead of their nodes.
fn rewrite(info: &str, p: &Presented) -> String {
    info.lines()
        .map(|line| {
            let is_replica_line = line.starts_with("slave") && line.as_bytes().get(5).is_some_and(u8::is_ascii_digit);
            if line.starts_with("redis_mode:") {
                "redis_mode:cluster".to_string()
            } else if line.starts_with("cluster_enabled:") {
                "cluster_enabled:1".to_string()
            } else if line.starts_with("connected_clients:") {
                format!("connected_clients:{}", p.clients)
            } else if let (Some(port), true) = (&p.port, line.starts_with("tcp_port:")) {
                format!("tcp_port:{port}")
            } else if let (Some((host, _)), true) = (&p.master, line.starts_with("master_host:")) {
                format!("master_host:{host}")
            } else if let (Some((_, port)), true) = (&p.master, line.starts_with("master_port:")) {
                format!("master_port:{port}")
            } else if is_replica_line {
                p.replica_line(line).unwrap_or_else(|| line.to_string())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

fn sluice_section(shared: &Arc<Shared>) -> String {
    let routes = shared.routes();
    let cluster = routes.cluster().map(|c| c.name.as_str()).unwrap_or("");
    format!(
        "\r\n# Sluice\r\nsluice_version:{}\r\nsluice_epoch:{}\r\nsluice_cluster:{cluster}\r\nsluice_proxy:{}\r\n\
         sluice_node:{}\r\nsluice_uptime_in_seconds:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        routes.epoch(),
        shared.me(),
        shared.opts.node,
        shared.started.elapsed().as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(master: Option<(&str, &str)>) -> Presented {
        Presented {
            port: Some("6001".into()),
            clients: 3,
            master: master.map(|(h, p)| (h.into(), p.into())),
            replicas: vec![("10.0.0.5:7004".into(), ("proxy4.example".into(), "6004".into()))],
        }
    }

    #[test]
    fn a_master_shows_the_proxy_port_and_its_replicas_proxies() {
        let info = "# Server\r\nredis_mode:standalone\r\ntcp_port:7001\r\n# Clients\r\nconnected_clients:9\r\n\
                    # Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=10.0.0.5,port=7004,state=online,offset=42,lag=0\r\n\
                    slave1:ip=10.0.0.9,port=7009,state=online,offset=42,lag=1\r\n\
                    slave_read_repl_offset:42\r\n";
        let out = rewrite(info, &presented(None));
        assert!(out.contains("redis_mode:cluster\r\n"), "{out}");
        assert!(out.contains("tcp_port:6001\r\n"), "{out}");
        assert!(out.contains("connected_clients:3\r\n"), "{out}");
        assert!(out.contains("slave0:ip=proxy4.example,port=6004,state=online,offset=42,lag=0\r\n"), "{out}");
        // A node that is no replica of the shard's (not in the view) is shown as it is.
        assert!(out.contains("slave1:ip=10.0.0.9,port=7009,state=online,offset=42,lag=1\r\n"), "{out}");
        assert!(out.contains("slave_read_repl_offset:42\r\n"), "{out}");
    }

    #[test]
    fn a_replica_names_its_shards_master_proxy() {
        let info = "role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:7001\r\nmaster_link_status:up\r\n";
        let out = rewrite(info, &presented(Some(("127.0.0.1", "6001"))));
        assert!(out.contains("master_host:127.0.0.1\r\nmaster_port:6001\r\nmaster_link_status:up"), "{out}");
    }
}
