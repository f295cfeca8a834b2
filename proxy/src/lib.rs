//! `sluice-proxy`: a RESP proxy in front of one plain Redis node that makes a set of such
//! nodes look like one Redis Cluster to clients.
//!
//! Request path: [`server`] accepts and routes `UMCTL` to [`umctl`], [`session`] reads
//! commands, queues replies in order and keeps the pipeline's order on every connection,
//! [`dispatch`] decides what each command does, [`command`] says where its keys are,
//! [`keyed`] routes by slot using the [`route`] table, [`backend`] pipelines commands to
//! the node. The commands the proxy answers itself live in [`cluster`], [`connection_commands`],
//! [`info`], [`node_level`], [`transaction`]. Migrations run in [`migration`]; [`control`]
//! is the gRPC service. ARCHITECTURE.md lists the layers (each imports only those below).

pub mod ack;
pub mod backend;
pub mod broker;
pub mod cluster;
pub mod command;
pub mod connection_commands;
pub mod control;
pub mod dispatch;
pub mod exporter;
pub mod garbage;
pub mod handover;
pub mod info;
pub mod keyed;
pub mod metrics;
pub mod migration;
pub mod multikey;
pub mod node_level;
pub mod options;
pub mod register;
pub mod route;
pub mod scripts;
pub mod server;
pub mod session;
pub mod shard;
pub mod slot_keys;
pub mod socket;
pub mod state;
pub mod status;
pub mod tls;
pub mod transaction;
pub mod umctl;
pub mod users;
