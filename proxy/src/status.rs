//! What the proxy reports about itself: gRPC `Status` and `UMCTL INFOMGR` say the same.

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
}

/// How long the node may take to answer the status probe: well under the coordinator's RPC
/// timeout (500 ms), so a hung node shows as unhealthy instead of a silent proxy.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

pub async fn collect(shared: &Shared) -> ProxyStatus {
    let routes = shared.routes();
    let (dbsize, node_error) = match probe_node(shared).await {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(e)),
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
    }
}

/// Asks the node for `DBSIZE` over the shared connection: proves it answers, and counts keys.
async fn probe_node(shared: &Shared) -> Result<i64, String> {
    let probe = async {
        let backend = shared.node.get(Default::default(), 0).await.map_err(|e| e.to_string())?;
        let raw = backend.call(&Command::from_strs(&["DBSIZE"])).await.map_err(|e| e.to_string())?;
        match sluice_common::resp::parse_frame(&raw, &Limits::SERVER) {
            Ok((Frame::Integer(n), _)) => Ok(n),
            Ok((other, _)) => Err(format!("DBSIZE answered {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("node did not answer within {PROBE_TIMEOUT:?}")))
}
