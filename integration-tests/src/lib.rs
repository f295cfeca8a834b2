//! The multi-process harness: real `redis-server` processes and the real sluice binaries on
//! loopback ports, driven by real clients. `sluice local` and every end-to-end test start
//! clusters with this code.

pub mod bins;
pub mod broker;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod differential;
pub mod local;
pub mod migration;
pub mod native;
pub mod ports;
pub mod process;
pub mod python;
pub mod redis_node;
pub mod relay;
pub mod wait;
pub mod workload;

pub use broker::{BrokerClient, BrokerProcess};
pub use cluster::ProxyCluster;
pub use local::{LocalCluster, LocalSpec};
pub use process::ChildProcess;
pub use redis_node::RedisNode;
pub use relay::Relay;
pub use wait::wait_for;
pub use workload::{Workload, WorkloadConfig};
