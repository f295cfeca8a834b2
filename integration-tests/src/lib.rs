//! The multi-process harness: real `redis-server` processes and the real sluice binaries on
//! loopback ports, driven by real clients. Every end-to-end test starts its processes with
//! `sluice-local`, the crate `sluice local` runs, re-exported here under the paths the tests
//! use (`sluice_harness::bins`, `::broker`, `::client`, …); this crate adds what only tests
//! need: workloads, migration checks, the fault-injecting relay and the chaos driver.

pub mod chaos;
pub mod cluster;
pub mod differential;
pub mod fleet;
pub mod local;
pub mod migration;
pub mod native;
pub mod python;
pub mod relay;
pub mod workload;

pub use sluice_local::{bins, broker, client, ports, process, redis_node, wait};

pub use broker::{BrokerClient, BrokerProcess};
pub use cluster::ProxyCluster;
pub use local::{LocalCluster, LocalSpec};
pub use migration::MigrationCluster;
pub use process::ChildProcess;
pub use redis_node::RedisNode;
pub use relay::Relay;
pub use wait::wait_for;
pub use workload::{Workload, WorkloadConfig};
