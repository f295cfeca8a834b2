//! The broker through real HTTP: every test starts the `sluice-broker` binary on its own port
//! and data dir (see `harness`) and drives it with reqwest, once on sled and once on etcd
//! (`both_stores!`); `two_brokers` runs two brokers on one etcd.

// First: the macro is used by the modules below.
#[macro_use]
mod harness;
mod etcd;

mod auth;
mod concurrency;
mod durability;
mod flows;
mod fuzz;
mod limits;
mod metrics;
mod openapi;
mod peers;
mod replicas;
mod scale;
mod store;
mod two_brokers;
mod validation;
