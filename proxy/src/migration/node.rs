//! Talking to a Redis node about replication: `INFO replication`, `REPLICAOF`, `DBSIZE`.
//! Migration tasks use a connection of their own for this, never a client's. Also the
//! `MIGRATE` command keys-mode migrations and their pulls send to a node.

use crate::backend::{BackendError, ConnectOptions, PipelinedConn};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::{parse_frame, Command, Frame, Limits, Protocol};
use std::time::Duration;

/// A control connection to a node (ours or a peer's), with the node password.
pub async fn connect(shared: &Shared, addr: &str) -> Result<ControlConn, NodeError> {
    ControlConn::connect(
        addr,
        shared.opts.node_user.clone(),
        shared.opts.node_password.clone(),
        shared.opts.connect_timeout(),
    )
    .await
}

/// `MIGRATE host port "" 0 timeout REPLACE [AUTH pw] KEYS k…` towards `node`.
pub fn migrate_command(shared: &Shared, node: &str, keys: &[Bytes]) -> Command {
    let (host, port) = node.rsplit_once(':').unwrap_or((node, "6379"));
    let mut args: Vec<Bytes> = [
        "MIGRATE",
        host.trim_start_matches('[').trim_end_matches(']'),
        port,
        "",
        "0",
        &shared.opts.keys_migrate_timeout_ms.to_string(),
        "REPLACE",
    ]
    .iter()
    .map(|a| Bytes::copy_from_slice(a.as_bytes()))
    .collect();
    match (&shared.opts.node_user, &shared.opts.node_password) {
        (Some(user), Some(pw)) => {
            args.push(Bytes::from_static(b"AUTH2"));
            args.push(Bytes::copy_from_slice(user.as_bytes()));
            args.push(Bytes::copy_from_slice(pw.as_bytes()));
        }
        (None, Some(pw)) => {
            args.push(Bytes::from_static(b"AUTH"));
            args.push(Bytes::copy_from_slice(pw.as_bytes()));
        }
        _ => {}
    }
    args.push(Bytes::from_static(b"KEYS"));
    args.extend(keys.iter().cloned());
    Command::new(args)
}

/// A control connection to one node.
pub struct ControlConn {
    backend: PipelinedConn,
    pub addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    PipelinedConn(#[from] BackendError),
    #[error("node {addr} answered {cmd} with: {reply}")]
    Refused { addr: String, cmd: String, reply: String },
    #[error("node {addr} did not answer {cmd} within {timeout:?}")]
    Timeout { addr: String, cmd: String, timeout: Duration },
}

/// How long any single control command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl ControlConn {
    pub async fn connect(
        addr: &str,
        user: Option<String>,
        password: Option<String>,
        timeout: Duration,
    ) -> Result<ControlConn, NodeError> {
        let opts = ConnectOptions {
            protocol: Protocol::Resp2,
            user,
            password,
            setup: Vec::new(),
            connect_timeout: timeout,
            tls: None,
            queue: crate::backend::DEFAULT_QUEUE,
        };
        Ok(ControlConn { backend: PipelinedConn::connect(addr, &opts).await?, addr: addr.to_string() })
    }

    pub fn is_closed(&self) -> bool {
        self.backend.is_closed()
    }

    /// Runs one command; an error reply is an `Err`.
    pub async fn call(&self, args: &[&str]) -> Result<Frame, NodeError> {
        self.call_command(&Command::from_strs(args)).await
    }

    /// Like [`ControlConn::call`], for a command already built (binary arguments).
    pub async fn call_command(&self, cmd: &Command) -> Result<Frame, NodeError> {
        let name = String::from_utf8_lossy(cmd.name()).to_ascii_uppercase();
        let raw = tokio::time::timeout(CALL_TIMEOUT, self.backend.call(cmd))
            .await
            .map_err(|_| NodeError::Timeout { addr: self.addr.clone(), cmd: name.clone(), timeout: CALL_TIMEOUT })??;
        let refused = |reply: String| NodeError::Refused { addr: self.addr.clone(), cmd: name.clone(), reply };
        match parse_frame(&raw, &Limits::SERVER) {
            Ok((f, _)) if f.is_error() => {
                Err(refused(String::from_utf8_lossy(f.as_bytes().map(|b| &b[..]).unwrap_or(b"")).into_owned()))
            }
            Ok((f, _)) => Ok(f),
            Err(e) => Err(refused(e.to_string())),
        }
    }

    /// One `SCAN cursor COUNT count` step: the next cursor ("0" at the end) and the keys.
    pub async fn scan(&self, cursor: &str, count: &str) -> Result<(String, Vec<bytes::Bytes>), NodeError> {
        let odd = |reply: String| NodeError::Refused { addr: self.addr.clone(), cmd: "SCAN".into(), reply };
        let Frame::Array(mut parts) = self.call(&["SCAN", cursor, "COUNT", count]).await? else {
            return Err(odd("not an array".into()));
        };
        let keys = match parts.pop() {
            Some(Frame::Array(keys)) => keys.iter().filter_map(|k| k.as_bytes().cloned()).collect(),
            other => return Err(odd(format!("{other:?}"))),
        };
        let next = parts.pop().and_then(|c| c.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()));
        Ok((next.filter(|c| !c.is_empty()).unwrap_or_else(|| "0".into()), keys))
    }

    /// A walk over every key of the node, `count` keys per `SCAN` step (see [`KeyScan`]).
    pub fn scan_all(&self, count: u64) -> KeyScan<'_> {
        KeyScan { conn: self, count: count.max(1).to_string(), cursor: Some("0".into()) }
    }

    pub async fn dbsize(&self) -> Result<i64, NodeError> {
        match self.call(&["DBSIZE"]).await? {
            Frame::Integer(n) => Ok(n),
            other => {
                Err(NodeError::Refused { addr: self.addr.clone(), cmd: "DBSIZE".into(), reply: format!("{other:?}") })
            }
        }
    }

    pub async fn replication(&self) -> Result<ReplInfo, NodeError> {
        let f = self.call(&["INFO", "replication"]).await?;
        let text = f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        Ok(ReplInfo::parse(&text))
    }

    /// `REPLICAOF host port`.
    pub async fn replicate_from(&self, master: &str) -> Result<(), NodeError> {
        let (host, port) = master.rsplit_once(':').unwrap_or((master, "6379"));
        self.call(&["REPLICAOF", host.trim_start_matches('[').trim_end_matches(']'), port]).await.map(|_| ())
    }

    /// `REPLICAOF NO ONE`: the node becomes a master and takes writes.
    pub async fn promote(&self) -> Result<(), NodeError> {
        self.call(&["REPLICAOF", "NO", "ONE"]).await.map(|_| ())
    }

    /// `CLIENT ID` of this connection.
    pub async fn client_id(&self) -> Result<i64, NodeError> {
        match self.call(&["CLIENT", "ID"]).await? {
            Frame::Integer(id) => Ok(id),
            other => {
                Err(NodeError::Refused { addr: self.addr.clone(), cmd: "CLIENT".into(), reply: format!("{other:?}") })
            }
        }
    }

    /// `CLIENT KILL ID id`: closes another connection to the node, so nothing it sent but the
    /// node has not read yet runs later. Killing a connection already gone is not an error.
    pub async fn kill_client(&self, id: i64) -> Result<(), NodeError> {
        match self.call(&["CLIENT", "KILL", "ID", &id.to_string()]).await {
            Err(NodeError::Refused { reply, .. }) if reply.contains("No such client") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Closes every connection to the node named `name` (`CLIENT SETNAME`), as
    /// [`ControlConn::kill_client`] does one.
    pub async fn kill_clients_named(&self, name: &str) -> Result<(), NodeError> {
        let list = self.call(&["CLIENT", "LIST", "TYPE", "normal"]).await?;
        let text = list.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        for line in text.lines() {
            let field = |key: &str| line.split(' ').find_map(|f| f.strip_prefix(key));
            if field("name=") == Some(name) {
                if let Some(id) = field("id=").and_then(|id| id.parse().ok()) {
                    self.kill_client(id).await?;
                }
            }
        }
        Ok(())
    }
}

/// A whole `SCAN` of a node, one step per [`KeyScan::next_batch`]: what the garbage
/// collector, `DBSIZE` during a migration and `CLUSTER COUNTKEYSINSLOT`/`GETKEYSINSLOT`
/// share. Each filters the keys by slot itself; a key present throughout is seen at least
/// once (`SCAN`'s guarantee), possibly twice if the node rehashes meanwhile.
pub struct KeyScan<'a> {
    conn: &'a ControlConn,
    count: String,
    /// The next cursor; `None` once the node answered cursor 0.
    cursor: Option<String>,
}

impl KeyScan<'_> {
    /// The keys of the next step, or `None` once the walk is complete.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Bytes>>, NodeError> {
        let Some(cursor) = self.cursor.take() else { return Ok(None) };
        let (next, keys) = self.conn.scan(&cursor, &self.count).await?;
        self.cursor = (next != "0").then_some(next);
        Ok(Some(keys))
    }
}

/// One replica as its master lists it (`slaveN:ip=…,port=…,state=…,offset=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub ip: String,
    pub port: u16,
    pub state: String,
    pub offset: u64,
}

/// The fields of `INFO replication` that migrations use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplInfo {
    /// `master` or `slave`.
    pub role: String,
    /// On a replica: `up` once the link to the master works.
    pub master_link_status: String,
    /// On a replica: its master as given to `REPLICAOF`.
    pub master_host: String,
    pub master_port: String,
    pub master_sync_in_progress: bool,
    /// A master's own offset; on a replica, how far it has processed the master's stream.
    pub master_repl_offset: u64,
    pub master_replid: String,
    /// After a replica is promoted: the replication id of its former master.
    pub master_replid2: String,
    pub replicas: Vec<ReplicaEntry>,
}

impl ReplInfo {
    pub fn parse(text: &str) -> ReplInfo {
        let mut info = ReplInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim_end().split_once(':') else { continue };
            match k {
                "role" => info.role = v.to_string(),
                "master_link_status" => info.master_link_status = v.to_string(),
                "master_host" => info.master_host = v.to_string(),
                "master_port" => info.master_port = v.to_string(),
                "master_sync_in_progress" => info.master_sync_in_progress = v == "1",
                "master_repl_offset" => info.master_repl_offset = v.parse().unwrap_or(0),
                "master_replid" => info.master_replid = v.to_string(),
                "master_replid2" => info.master_replid2 = v.to_string(),
                k if k.starts_with("slave") && k[5..].chars().all(|c| c.is_ascii_digit()) => {
                    let mut e = ReplicaEntry { ip: String::new(), port: 0, state: String::new(), offset: 0 };
                    for kv in v.split(',') {
                        match kv.split_once('=') {
                            Some(("ip", x)) => e.ip = x.to_string(),
                            Some(("port", x)) => e.port = x.parse().unwrap_or(0),
                            Some(("state", x)) => e.state = x.to_string(),
                            Some(("offset", x)) => e.offset = x.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    info.replicas.push(e);
                }
                _ => {}
            }
        }
        info
    }

    /// On a replica: its master, `host:port`.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_host, self.master_port)
    }

    pub fn is_master(&self) -> bool {
        self.role == "master"
    }

    /// A master promoted from being a replica of the master whose replication id is
    /// `master_replid` (its previous id is that one).
    pub fn promoted_from(&self, master_replid: &str) -> bool {
        self.is_master() && !master_replid.is_empty() && self.master_replid2 == master_replid
    }

    /// A replica that finished its initial sync and follows the stream.
    pub fn is_synced_replica(&self) -> bool {
        self.role == "slave" && self.master_link_status == "up" && !self.master_sync_in_progress
    }

    /// The entry of the replica at `addrs` (any of the addresses the node name resolves to).
    pub fn replica_at(&self, addrs: &[std::net::SocketAddr]) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|r| addrs.iter().any(|a| a.port() == r.port && a.ip().to_string() == r.ip)).or_else(
            || {
                // Behind NAT the master may see another ip: a single replica on the right port is it.
                let on_port: Vec<&ReplicaEntry> =
                    self.replicas.iter().filter(|r| addrs.iter().any(|a| a.port() == r.port)).collect();
                (on_port.len() == 1).then(|| on_port[0])
            },
        )
    }
}

/// Resolves `host:port` to socket addresses (empty when it does not resolve).
pub async fn resolve(addr: &str) -> Vec<std::net::SocketAddr> {
    tokio::net::lookup_host(addr).await.map(|it| it.collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_master_and_replica_views() {
        let master = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
slave0:ip=127.0.0.1,port=7002,state=online,offset=1234,lag=0\r\n\
master_replid:abc\r\nmaster_replid2:0000\r\nmaster_repl_offset:1300\r\n";
        let m = ReplInfo::parse(master);
        assert!(m.is_master());
        assert_eq!(m.master_repl_offset, 1300);
        assert_eq!(
            m.replicas,
            vec![ReplicaEntry { ip: "127.0.0.1".into(), port: 7002, state: "online".into(), offset: 1234 }]
        );
        let addr: std::net::SocketAddr = "127.0.0.1:7002".parse().unwrap();
        assert!(m.replica_at(&[addr]).is_some());
        let replica = "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\n\
slave_repl_offset:1300\r\nmaster_replid:abc\r\nmaster_repl_offset:1300\r\n";
        let r = ReplInfo::parse(replica);
        assert!(r.is_synced_replica());
        assert_eq!(r.master_repl_offset, 1300);
    }
}
