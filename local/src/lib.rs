//! A sluice deployment on this machine: `redis-server` nodes from PATH and the sluice
//! binaries (broker, coordinator, proxies) as child processes on loopback ports, each waited
//! for until it answers, and killed when dropped. `sluice local` runs it; the end-to-end tests
//! (`sluice-harness`) start their clusters with it too.
//!
//! - [`deployment`]: the whole thing ([`LocalCluster`], [`LocalSpec`]).
//! - [`broker`], [`proxy`], [`redis_node`]: one process of each kind; [`process`] what they
//!   share (a child with its log, signals, restart).
//! - [`bins`] (where the binaries are), [`ports`] (free ports), [`wait`] (polling with a
//!   deadline), [`client`] (a small RESP client for readiness and configuration).

pub mod bins;
pub mod broker;
pub mod client;
pub mod deployment;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod redis_node;
pub mod tls;
pub mod wait;

pub use broker::{BrokerClient, BrokerProcess};
pub use deployment::{LocalCluster, LocalSpec};
pub use process::ChildProcess;
pub use proxy::ProxyProcess;
pub use redis_node::RedisNode;
pub use wait::wait_for;
