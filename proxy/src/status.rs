//! What the proxy reports about itself: gRPC `Status` and `UMCTL INFOMGR` say the same.

use crate::backend::BackendError;
use crate::migration::node::ReplInfo;
use crate::state::Shared;
use sluice_common::resp::{Command, Frame, Limits};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A snapshot of the proxy's state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyStatus {
    pub proxy: String,
    pub node: String,
    pub epoch: u64,
    pub cluster: Option<String>,
    pub node_healthy: bool,
    pub node_error: Option<String>,
    /// `DBSIZE` of the node; `None` when the node does not answer.
    pub dbsize: Option<i64>,
    pub slots_served: usize,
    pub connected_clients: usize,
    /// The node's `INFO replication` role (`master`/`slave`), offset and link, when it answers.
    pub repl_role: Option<String>,
    pub repl_offset: u64,
    pub master_link_up: bool,
}

/// How long the node may take to answer the status probe: well under the coordinator's RPC
/// timeout (500 ms), so a hung node shows as unhealthy instead of a silent proxy.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

pub async fn collect(shared: &Shared) -> ProxyStatus {
    let routes = shared.routes();
    let (dbsize, node_error, repl) = match probe_node(shared).await {
        Ok((n, repl)) => (Some(n), None, Some(repl)),
        Err(e) => (None, Some(e.to_string()), None),
    };
    ProxyStatus {
        proxy: shared.me().to_string(),
        node: shared.opts.node.clone(),
        epoch: routes.epoch(),
        cluster: routes.cluster().map(|c| c.name.clone()),
        node_healthy: node_error.is_none(),
        node_error,
        dbsize,
        slots_served: (0..16384u16).filter(|&slot| routes.is_local(slot)).count(),
        connected_clients: shared.connected_clients.load(Ordering::Relaxed),
        repl_offset: repl.as_ref().map_or(0, |r| r.master_repl_offset),
        master_link_up: repl.as_ref().is_some_and(|r| r.master_link_status == "up"),
        repl_role: repl.map(|r| r.role),
    }
}

/// Why the status probe got no usable answer from the node.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    PipelinedConn(#[from] BackendError),
    #[error("connection to the node closed")]
    Closed,
    #[error("connection to the node lost")]
    Lost,
    /// The node answered something that is not what the command returns.
    #[error("{0}")]
    Odd(String),
    #[error("node did not answer within {0:?}")]
    Timeout(Duration),
}

/// Asks the node for `DBSIZE` and `INFO replication` over the shared connection: proves it
/// answers, counts keys, and says where it stands in its shard's replication.
async fn probe_node(shared: &Shared) -> Result<(i64, ReplInfo), ProbeError> {
    let probe = async {
        let backend = shared.node.get(Default::default(), 0).await?;
        let dbsize = backend.send(Command::from_strs(&["DBSIZE"]).raw().clone()).await;
        let info = backend.send(Command::from_strs(&["INFO", "replication"]).raw().clone()).await;
        let (Ok(dbsize), Ok(info)) = (dbsize, info) else { return Err(ProbeError::Closed) };
        let dbsize = dbsize.await.map_err(|_| ProbeError::Lost)??;
        let info = info.await.map_err(|_| ProbeError::Lost)??;
        let n = match sluice_common::resp::parse_frame(&dbsize, &Limits::SERVER) {
            Ok((Frame::Integer(n), _)) => n,
            Ok((other, _)) => return Err(ProbeError::Odd(format!("DBSIZE answered {other:?}"))),
            Err(e) => return Err(ProbeError::Odd(e.to_string())),
        };
        let text = match sluice_common::resp::parse_frame(&info, &Limits::SERVER) {
            Ok((f, _)) => f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default(),
            Err(e) => return Err(ProbeError::Odd(e.to_string())),
        };
        Ok((n, ReplInfo::parse(&text)))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.unwrap_or(Err(ProbeError::Timeout(PROBE_TIMEOUT)))
}
