//! A whole sluice deployment on loopback, as `sluice local` runs it ([`sluice_local::deployment`],
//! re-exported here), and the same with a fault-injecting [`Relay`] between each proxy and its
//! node, for the chaos test.

use crate::relay::Relay;
use anyhow::Result;

pub use sluice_local::deployment::*;

/// [`LocalCluster::start`] with a [`Relay`] in front of every node: the proxy's `--node` is
/// the relay, its `--node-announce` the node itself (so node-to-node traffic, replication and
/// `MIGRATE`, does not cross it). Relay `i` is proxy `i`'s.
pub async fn start_with_relays(spec: LocalSpec) -> Result<(LocalCluster, Vec<Relay>)> {
    LocalCluster::start_linked(spec, |node| async move {
        let relay = Relay::start(&node).await?;
        let addr = relay.addr();
        Ok((relay, addr))
    })
    .await
}
