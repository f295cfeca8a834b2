//! Every change the API can make, as checks followed by edits of a [`Txn`].
//!
//! The rule that keeps refusals harmless: each operation checks everything it can refuse for
//! *before* it edits anything, and the store only adopts a transaction's state when the
//! operation returned `Ok`. A metadata change calls [`Txn::bump`] (at most one bump per
//! transaction, however many records change); a status change (progress, health) does not.
//!
//! One module per concern, each an `impl Txn` block with its own tests: `proxies.rs`
//! (registration, deletion, health), `clusters.rs` (create, delete), `failover.rs` (a
//! replica replaces its master), `migrations/` (create, progress, commit, abort and fail) and
//! `scale.rs` (scale plans and their steps). `Txn` and
//! the lookups they share live here.

mod clusters;
mod failover;
mod migrations;
mod proxies;
mod scale;

pub use migrations::{phase_name, phase_time};

use crate::config::DEFAULT_SCALE_CONCURRENCY;
use crate::error::ApiError;
use crate::state::{ProxyRecord, State};
use sluice_common::model::{ClusterView, Epoch};

/// How many ended migrations a cluster keeps listing ("running and recent").
pub const RETAINED_ENDED_MIGRATIONS: usize = 100;

/// How many ranges one migration may list.
pub const MAX_RANGES_PER_MIGRATION: usize = 1024;

/// One change in progress: a copy of the state to edit, and whether the epoch moved.
#[derive(Debug)]
pub struct Txn {
    pub state: State,
    base_epoch: Epoch,
    /// The time of the change (RFC 3339), for the records' timestamps.
    pub now: String,
    /// What changed, for the epoch log line.
    pub change: Vec<String>,
    /// How many migrations of one scale plan run at once (`--scale-concurrency`).
    pub scale_concurrency: usize,
}

impl Txn {
    pub fn new(state: State, now: String) -> Txn {
        let base_epoch = state.epoch;
        Txn { state, base_epoch, now, change: Vec::new(), scale_concurrency: DEFAULT_SCALE_CONCURRENCY }
    }

    /// Marks this transaction as a metadata change and answers its epoch: the previous one
    /// plus one, however often it is called.
    pub fn bump(&mut self) -> Epoch {
        self.state.epoch = self.base_epoch + 1;
        self.state.epoch
    }

    /// The epoch this transaction read: the one `If-Match` is checked against.
    pub fn base_epoch(&self) -> Epoch {
        self.base_epoch
    }

    pub fn bumped(&self) -> bool {
        self.state.epoch != self.base_epoch
    }

    fn note(&mut self, what: String) {
        self.change.push(what);
    }

    fn cluster(&self, name: &str) -> Result<&ClusterView, ApiError> {
        self.state
            .clusters
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}; GET /api/v1/clusters lists them")))
    }

    fn proxy(&self, address: &str) -> Result<&ProxyRecord, ApiError> {
        self.state.proxies.get(address).ok_or_else(|| {
            ApiError::not_found(format!("no proxy registered as {address:?}; GET /api/v1/proxies lists them"))
        })
    }

    fn migration_number(&self, cluster: &str, id: &str) -> Result<u64, ApiError> {
        self.cluster(cluster)?;
        self.state.migration(cluster, id).map(|(n, _)| n).ok_or_else(|| {
            ApiError::not_found(format!(
                "cluster {cluster:?} has no migration {id:?}; GET /api/v1/clusters/{cluster}/migrations lists them"
            ))
        })
    }
}

/// What the unit tests of every module share: a state built through the same operations the
/// API runs.
#[cfg(test)]
mod testutil {
    use super::Txn;
    use crate::error::ApiError;
    use crate::state::State;
    use sluice_common::api::{CreateCluster, CreateMigration, Migration, ProxySelection, RegisterProxy};
    use sluice_common::model::{MigrationMode, SlotRange};

    pub(super) const T0: &str = "2026-01-01T10:00:00.000Z";

    pub(super) fn addr(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    /// Runs `f` on `state` as the store does at time `now`: the new state only when `f` agrees.
    pub(super) fn txn<R>(
        state: &mut State,
        now: &str,
        f: impl FnOnce(&mut Txn) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let mut t = Txn::new(state.clone(), now.to_string());
        let r = f(&mut t)?;
        *state = t.state;
        Ok(r)
    }

    /// Registers a proxy on each port (control on port + 1000, node on port + 2000).
    pub(super) fn register(s: &mut State, ports: std::ops::RangeInclusive<u16>) {
        for port in ports {
            let req = RegisterProxy {
                address: addr(port),
                control_address: addr(port + 1000),
                node_address: addr(port + 2000),
                peer_address: None,
            };
            txn(s, T0, |t| t.register_proxy(req)).expect("register");
        }
    }

    /// Proxies registered on `ports` (from 6001), and cluster `shop` on 6001 and 6002 with
    /// `replicas` replicas per shard.
    pub(super) fn shop(ports: std::ops::RangeInclusive<u16>, replicas: u64) -> State {
        let mut s = State::default();
        register(&mut s, ports);
        let req = CreateCluster {
            name: "shop".into(),
            proxies: ProxySelection::Addresses(vec![addr(6001), addr(6002)]),
            replicas,
        };
        txn(&mut s, T0, |t| t.create_cluster(req)).expect("cluster");
        s
    }

    /// Cluster `shop` on 6001 and 6002, free 6003, and `m-1`: 6001 gives all its slots to 6002
    /// (keys mode) or, with `to_free`, slots 0-100 to the free 6003 (replication).
    pub(super) fn setup(to_free: bool) -> State {
        let mut s = shop(6001..=6003, 0);
        let req = if to_free {
            CreateMigration {
                src: addr(6001),
                dst: addr(6003),
                slots: vec![SlotRange::new(0, 100)],
                mode: MigrationMode::Auto,
            }
        } else {
            CreateMigration {
                src: addr(6001),
                dst: addr(6002),
                slots: vec![SlotRange::new(0, 8191)],
                mode: MigrationMode::Keys,
            }
        };
        txn(&mut s, T0, |t| t.create_migration("shop", req)).expect("migration");
        s
    }

    pub(super) fn report(s: &mut State, now: &str, phase: &str, at: Option<&str>) -> Result<Migration, ApiError> {
        txn(s, now, |t| t.report_progress("shop", "m-1", phase, None, None, at.map(str::to_string)))
    }

    pub(super) fn ids(s: &State, port: u16) -> Vec<String> {
        s.proxy_config(&addr(port)).expect("registered").migrations.into_iter().map(|m| m.id).collect()
    }
}
