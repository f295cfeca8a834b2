//! The broker through real HTTP: every test starts the `sluice-broker` binary on its own port
//! and data dir (see `harness`) and drives it with reqwest.

mod auth;
mod concurrency;
mod durability;
mod flows;
mod fuzz;
mod harness;
mod limits;
mod metrics;
mod openapi;
mod peers;
mod replicas;
mod scale;
mod validation;
