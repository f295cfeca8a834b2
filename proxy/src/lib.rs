//! `sluice-proxy`: a RESP proxy in front of one plain Redis node that makes a set of such
//! nodes look like one Redis Cluster to clients.
//!
//! Request path: [`server`] accepts, [`session`] reads commands and queues replies in order,
//! [`command`] says where each command's keys are, [`keyed`] routes by slot using the
//! [`route`] table, [`backend`] pipelines commands to the node. The commands the proxy
//! answers itself live in [`cluster`], [`connection`], [`info`], [`transaction`], [`umctl`].

pub mod backend;
pub mod cluster;
pub mod command;
pub mod connection;
pub mod control;
pub mod info;
pub mod keyed;
pub mod migration;
pub mod multikey;
pub mod node_level;
pub mod options;
pub mod register;
pub mod route;
pub mod scripts;
pub mod server;
pub mod session;
pub mod state;
pub mod status;
pub mod transaction;
pub mod umctl;
