//! What all sessions of one proxy share: options, the routing table, backend pools.

use crate::backend::{BackendPool, ConnectOptions};
use crate::garbage::Gc;
use crate::options::ProxyOptions;
use crate::route::{Override, OverrideKind, RouteTable};
use arc_swap::{ArcSwap, Guard};
use sluice_common::model::{Epoch, MigrationMeta, ModelError, ProxyConfig};
use sluice_common::resp::Command;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Why a config was not taken. Nothing changes when one is refused. The texts carry no RESP
/// prefix (gRPC statuses and logs show them as they are); `UMCTL SETDB` adds `ERR sluice:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("stale config: epoch {offered} is older than epoch {held} held by this proxy")]
    Stale { offered: Epoch, held: Epoch },
    #[error("config conflict: epoch {epoch} is already held with a different config")]
    Conflict { epoch: Epoch },
    #[error("config is for proxy {config_for}, this proxy is {me}")]
    WrongProxy { config_for: String, me: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl From<ModelError> for ConfigError {
    fn from(e: ModelError) -> Self {
        ConfigError::Invalid(e.to_string())
    }
}

/// What applying a config did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A newer config replaced the old one.
    Updated { from: Epoch, to: Epoch },
    /// The same config at the same epoch: nothing to do.
    Unchanged,
}

/// The hold a proxy that has just become its shard's master keeps on the shard's slots until
/// its node is promoted (`shard::run` lifts it).
pub const PROMOTION: &str = "promotion";

/// What taking a config asks of the migration tasks (`migration::Migrations`), which sit
/// above this module: the data path and the config path never import them.
pub trait MigrationTasks: Send + Sync {
    /// Migrations of `config` this proxy is the source of and has no task for yet: their
    /// slots are held until the task knows where they stand.
    fn new_sources(&self, config: &ProxyConfig, me: &str) -> Vec<MigrationMeta>;
    /// The config is in force: start tasks for new migrations, tell those whose migration
    /// left it.
    fn reconcile(&self, shared: &Arc<Shared>, config: &ProxyConfig);
}

pub struct Shared {
    pub opts: ProxyOptions,
    routes: ArcSwap<RouteTable>,
    /// Serialises changes of the config and of the overrides: the table is always rebuilt
    /// from both, as one step.
    config_lock: tokio::sync::Mutex<()>,
    /// What running migrations change in the table (by migration id).
    overrides: Mutex<BTreeMap<String, Override>>,
    /// Bumped whenever the table changes; sessions waiting on held slots watch it.
    route_changes: watch::Sender<u64>,
    /// Commands on migrating slots sent to the node and not answered yet.
    pub inflight: AtomicUsize,
    /// Signalled when `inflight` drops to zero.
    pub inflight_zero: Notify,
    pub gc: Gc,
    /// Lua scripts seen, which migrations load into their destination's node.
    pub scripts: crate::scripts::Scripts,
    pub node: BackendPool,
    /// The node connections of clients authenticated as one of the node's ACL users.
    pub users: crate::users::Users,
    /// The client port's TLS (`--tls-cert`), also used to dial the peer proxies; `None`:
    /// plain TCP. Set by `main` before the proxy serves.
    pub tls: Option<Arc<crate::tls::Tls>>,
    peers: Mutex<HashMap<String, Arc<BackendPool>>>,
    next_client_id: AtomicU64,
    pub connected_clients: AtomicUsize,
    pub started: Instant,
    /// On a replica: its node replicates the shard's master with the link up, so `READONLY`
    /// clients may read from it (kept by `shard::run`).
    pub replica_synced: AtomicBool,
    /// On a master: replicas its node has online (kept by `shard::run`, for `--ack-replicas`).
    pub online_replicas: AtomicUsize,
    /// On a master handing its shard over (a graceful failover): the config epoch at which it
    /// holds the shard's writes and the replica has all of them; 0 otherwise (`handover.rs`).
    pub handover_ready: AtomicU64,
    /// The `routed` counters of the tables replaced so far that may still count something
    /// (see [`Shared::wait_routed_before`]).
    retired: Mutex<Vec<Arc<AtomicUsize>>>,
    /// Prometheus metrics: counted by the data path, served by `exporter.rs`.
    pub metrics: crate::metrics::Metrics,
    /// Fired on SIGTERM/SIGINT: the accept loop stops, sessions answer what they have
    /// queued and close, and no new migration switch starts.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Migration switches under way (see [`Shared::begin_switch`]).
    switching: AtomicUsize,
    /// Signalled when `switching` drops.
    switch_done: Notify,
}

/// A command (or a batch) routed to this proxy's node with some route table, until its reply
/// is in: it counts in that table's `routed`. A keys-mode migration's source moves keys only
/// once nothing routed with a table from before the migration is outstanding: a command the
/// old table sent to our node (a `GET`, a `SET`) must not reach it after its key moved, which
/// a slow node connection (a `WAIT` of `--ack-replicas`, a slow link) can delay for seconds.
#[derive(Debug)]
pub struct Routed(Arc<AtomicUsize>);

impl Routed {
    pub fn new(table: &RouteTable) -> Routed {
        table.routed.fetch_add(1, Ordering::SeqCst);
        Routed(table.routed.clone())
    }
}

/// A migration switch under way (see [`Shared::begin_switch`]).
pub struct SwitchGuard(Arc<Shared>);

impl Drop for SwitchGuard {
    fn drop(&mut self) {
        self.0.switching.fetch_sub(1, Ordering::SeqCst);
        self.0.switch_done.notify_waiters();
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub fn new(opts: ProxyOptions) -> Shared {
        let connect = ConnectOptions {
            protocol: Default::default(),
            user: opts.node_user.clone(),
            password: opts.node_password.clone(),
            setup: Vec::new(),
            connect_timeout: opts.connect_timeout(),
            tls: None,
            queue: opts.backend_queue,
        };
        let node = BackendPool::new(opts.node.clone(), connect, opts.backend_connections);
        Shared {
            routes: ArcSwap::from_pointee(RouteTable::empty(opts.announce())),
            config_lock: tokio::sync::Mutex::new(()),
            overrides: Mutex::new(BTreeMap::new()),
            route_changes: watch::channel(0).0,
            inflight: AtomicUsize::new(0),
            inflight_zero: Notify::new(),
            gc: Gc::default(),
            scripts: Default::default(),
            node,
            users: Default::default(),
            tls: None,
            peers: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            connected_clients: AtomicUsize::new(0),
            started: Instant::now(),
            replica_synced: AtomicBool::new(false),
            online_replicas: AtomicUsize::new(0),
            handover_ready: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            shutdown: Default::default(),
            switching: AtomicUsize::new(0),
            switch_done: Notify::new(),
            // Fails only for a malformed or duplicate definition, which its unit test rules out.
            metrics: crate::metrics::Metrics::new(opts.metrics.is_some())
                .expect("the proxy's metric definitions are valid"),
            opts,
        }
    }

    /// The current routing table (lock-free).
    pub fn routes(&self) -> Guard<Arc<RouteTable>> {
        self.routes.load()
    }

    /// The current routing table, as an owned pointer (for long-running work).
    pub fn routes_full(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    pub fn epoch(&self) -> Epoch {
        self.routes.load().epoch()
    }

    pub fn me(&self) -> &str {
        self.opts.announce()
    }

    /// How many replicas a write must reach before it is acknowledged (`ack.rs`):
    /// `--ack-replicas`, at most the replicas online; 0 when not asked for.
    pub fn ack_replicas(&self) -> usize {
        match self.opts.ack_replicas {
            0 => 0,
            n => n.min(self.online_replicas.load(Ordering::Acquire)),
        }
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a config if its epoch is newer than the one held; the same config again is a
    /// no-op; anything older, different at the same epoch, or for another proxy is refused.
    /// Migrations that appear or leave are started or told (`tasks`); the garbage collector
    /// is woken.
    pub async fn apply_config(
        self: &Arc<Self>,
        config: ProxyConfig,
        tasks: &dyn MigrationTasks,
    ) -> Result<Applied, ConfigError> {
        let _guard = self.config_lock.lock().await;
        self.apply_config_locked(config, tasks).await
    }

    /// The version of the config held ([`ProxyConfig::version`]); empty before the first
    /// config, so nothing is ever advanced from the one a proxy starts with.
    pub fn config_version(&self) -> String {
        let table = self.routes.load();
        if table.epoch() == 0 {
            String::new()
        } else {
            table.config_version().to_string()
        }
    }

    /// `AdvanceEpoch`: takes the held config again at `epoch` when its content has `version`
    /// (the broker's config for this proxy at `epoch` is then this one but for the epoch), by
    /// the same rules and with the same effects as [`Shared::apply_config`] of that config.
    /// `Ok(None)`: the version differs (or no config was taken yet); nothing changed.
    pub async fn advance_epoch(
        self: &Arc<Self>,
        epoch: Epoch,
        version: &str,
        tasks: &dyn MigrationTasks,
    ) -> Result<Option<Applied>, ConfigError> {
        let _guard = self.config_lock.lock().await;
        let current = self.routes.load_full();
        if current.epoch() == 0 || current.config_version() != version {
            return Ok(None);
        }
        let config = ProxyConfig { epoch, ..(*current.config).clone() };
        self.apply_config_locked(config, tasks).await.map(Some)
    }

    /// [`Shared::apply_config`] with `config_lock` held.
    async fn apply_config_locked(
        self: &Arc<Self>,
        config: ProxyConfig,
        tasks: &dyn MigrationTasks,
    ) -> Result<Applied, ConfigError> {
        let current = self.routes.load_full();
        let held = current.epoch();
        if config.proxy != self.me() {
            return Err(ConfigError::WrongProxy { config_for: config.proxy, me: self.me().to_string() });
        }
        if config.epoch < held {
            return Err(ConfigError::Stale { offered: config.epoch, held });
        }
        if config.epoch == held {
            return if *current.config == config {
                Ok(Applied::Unchanged)
            } else {
                Err(ConfigError::Conflict { epoch: held })
            };
        }
        let config = Arc::new(config);
        // The overrides this config leaves in force, worked out on a copy: a config that is
        // refused (it does not validate) must leave them, like the table, as they were.
        let mut overrides = self.overrides.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Committed or ended migrations no longer override the config: it says it all now.
        // A handover's hold ends with any new config too: the handover holds again if it is
        // still asked for, and says it is ready at the new epoch.
        overrides.retain(|id, _| id == PROMOTION || config.is_tagged(id));
        // A replica that becomes its shard's master (a failover) holds the shard's slots until
        // its node is promoted (`shard::run` lifts the hold): a write must not reach the node
        // while it is still a read-only replica.
        let me = self.me();
        let mine = config.cluster.as_ref().and_then(|c| c.nodes.iter().find(|n| n.proxy == me));
        if let (Some(node), Some(_)) = (mine, current.replica_of) {
            let slots = node.slots.iter().map(|a| a.range()).collect();
            overrides.insert(PROMOTION.to_string(), Override { slots, kind: OverrideKind::Hold });
        }
        // New migrations start with their slots held until their task knows where they stand.
        for meta in tasks.new_sources(&config, self.me()) {
            overrides.insert(meta.id.clone(), Override { slots: meta.slots.clone(), kind: OverrideKind::Hold });
        }
        let table = self.build_table_with(config.clone(), overrides.values())?;
        *self.overrides.lock().unwrap_or_else(|p| p.into_inner()) = overrides;
        self.handover_ready.store(0, Ordering::SeqCst);
        // A slot that stops being garbage must not lose a key to an unlink already on its way.
        let regained = (0..16384u16).any(|s| current.is_foreign(s) && !table.is_foreign(s));
        let _gc = if regained { Some(self.gc.pause().await) } else { None };
        let to = table.epoch();
        let demoted = current.me.is_some() && table.me.is_none() && table.replica_of.is_some();
        self.store(table);
        tracing::info!(from = held, to, "epoch changed");
        if demoted {
            // A failover replaced this proxy's node as its shard's master. From the new table on
            // nothing routes to it; what is still in flight there must not be acknowledged now,
            // so every connection to it fails (its proxy makes it a replica next: `shard::run`).
            tracing::warn!("this proxy's node is no longer its shard's master: closing every connection to it");
            self.node.close_all().await;
            self.users.close_all().await;
        }
        tasks.reconcile(self, &config);
        self.gc.wake();
        Ok(Applied::Updated { from: held, to })
    }

    /// Waits until no command on a migrating slot is in flight (`inflight`); false at the
    /// deadline. A switch (or a handover) holds the slots first, so none can start meanwhile.
    pub async fn wait_drained(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.inflight_zero.notified();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(std::time::Duration::from_millis(5)), notified).await;
        }
    }

    /// Marks a migration switch attempt as under way until the guard drops; `None` once
    /// the proxy is shutting down (no switch starts then). A shutting-down proxy waits for
    /// the switches under way ([`Shared::wait_switches`]): each one either completes or
    /// releases its slots within its budget, never half done.
    pub fn begin_switch(self: &Arc<Self>) -> Option<SwitchGuard> {
        self.switching.fetch_add(1, Ordering::SeqCst);
        let guard = SwitchGuard(self.clone());
        (!self.shutdown.is_cancelled()).then_some(guard)
    }

    /// Waits until no switch is under way; `false` at the deadline.
    pub async fn wait_switches(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.switch_done.notified();
            if self.switching.load(Ordering::SeqCst) == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }

    /// Whether an override named `id` is in force.
    pub fn has_override(&self, id: &str) -> bool {
        self.overrides.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// Sets (or clears) the override of migration `id` and rebuilds the table.
    pub async fn set_override(&self, id: &str, value: Option<Override>) {
        let _guard = self.config_lock.lock().await;
        {
            let mut overrides = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
            match value {
                Some(o) => overrides.insert(id.to_string(), o),
                None => overrides.remove(id),
            };
        }
        let config = self.routes.load().config.clone();
        match self.build_table(config) {
            Ok(table) => self.store(table),
            Err(e) => tracing::error!(error = %e, "cannot rebuild the route table"),
        }
        self.gc.wake();
    }

    fn build_table(&self, config: Arc<ProxyConfig>) -> Result<RouteTable, ModelError> {
        let overrides: Vec<Override> =
            self.overrides.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        self.build_table_with(config, overrides.iter())
    }

    fn build_table_with<'a>(
        &self,
        config: Arc<ProxyConfig>,
        overrides: impl Iterator<Item = &'a Override>,
    ) -> Result<RouteTable, ModelError> {
        let overrides: Vec<Override> = overrides.cloned().collect();
        Ok(RouteTable::build(config, &overrides)?.keep_former_view(&self.routes.load()))
    }

    fn store(&self, table: RouteTable) {
        let old = self.routes.swap(Arc::new(table));
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|c| Arc::strong_count(c) > 1 || c.load(Ordering::SeqCst) > 0);
        retired.push(old.routed.clone());
        self.route_changes.send_modify(|g| *g += 1);
    }

    /// Waits until every command routed to our node with a table older than the current one
    /// has been answered (blocking commands are not counted: they only wait). `false` after
    /// `limit`. (Counters nobody can raise any more, their table and commands gone, are
    /// forgotten at the next table change.)
    pub async fn wait_routed_before(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let older: Vec<Arc<AtomicUsize>> = self.retired.lock().unwrap_or_else(|p| p.into_inner()).clone();
        loop {
            let outstanding: usize = older.iter().map(|c| c.load(Ordering::SeqCst)).sum();
            if outstanding == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(outstanding, "commands routed with an older route table still unanswered");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A receiver that sees every change of the route table.
    pub fn route_changes(&self) -> watch::Receiver<u64> {
        self.route_changes.subscribe()
    }

    /// The number of the current route table (bumped on every change).
    pub fn route_generation(&self) -> u64 {
        *self.route_changes.borrow()
    }

    /// The shared connections to another proxy, named by its client-facing address (forwarding,
    /// a migration's switch and pulls). They go to the address the route table gives for it
    /// (its `--peer-announce`), else to the client-facing one: behind published ports that
    /// one may reach the host, not the peer. The pool is replaced when that address changes.
    /// Those connections announce themselves with `UMCTL PEER`, so the peer never forwards back.
    pub fn peer_pool(&self, proxy: &str) -> Arc<BackendPool> {
        let routes = self.routes();
        let addr = routes.peer_address(proxy).unwrap_or(proxy);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = peers.get(proxy).filter(|pool| pool.addr() == addr) {
            return pool.clone();
        }
        let connect = ConnectOptions {
            protocol: Default::default(),
            user: None,
            password: self.opts.requirepass.clone(),
            setup: vec![Command::from_strs(&["UMCTL", "PEER"])],
            connect_timeout: self.opts.connect_timeout(),
            tls: self.tls.clone(),
            queue: self.opts.backend_queue,
        };
        let pool = Arc::new(BackendPool::new(addr, connect, 1));
        peers.insert(proxy.to_string(), pool.clone());
        pool
    }
}

#[cfg(test)]
mod proptests;

/// What the unit tests of the modules above need: a proxy's shared state holding a config.
#[cfg(test)]
pub mod testing {
    use super::*;
    use clap::Parser;
    use sluice_common::model::{ClusterView, MigrationMode, NodeView, SlotAssignment, SlotRange, SlotTag};

    /// Starts and tells no task.
    pub struct NoTasks;

    impl MigrationTasks for NoTasks {
        fn new_sources(&self, _: &ProxyConfig, _: &str) -> Vec<MigrationMeta> {
            Vec::new()
        }

        fn reconcile(&self, _: &Arc<Shared>, _: &ProxyConfig) {}
    }

    /// This proxy in the configs below.
    pub const ME: &str = "127.0.0.1:6001";

    /// A proxy with no config, and a runtime to drive it.
    pub fn proxy() -> (tokio::runtime::Runtime, Arc<Shared>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let shared = {
            let _in = rt.enter();
            Arc::new(Shared::new(ProxyOptions::parse_from(["sluice-proxy", "--announce", ME])))
        };
        (rt, shared)
    }

    fn node(proxy: &str, slots: Vec<SlotAssignment>) -> NodeView {
        NodeView {
            proxy: proxy.into(),
            node: format!("node-{proxy}"),
            slots,
            peer: None,
            replicas: Vec::new(),
            handover: None,
            config_epoch: 0,
        }
    }

    /// Every kind of route: ME owns 0-5000 and moves 5001-6000 to 6003 (keys mode), 6002 owns
    /// 6001-16000, nobody 16001-16383.
    pub fn config(epoch: Epoch) -> ProxyConfig {
        let moving = SlotRange::new(5001, 6000);
        let tagged = |tag| SlotAssignment { start: 5001, end: 6000, tag: Some(tag), migration: Some("m-1".into()) };
        ProxyConfig {
            epoch,
            proxy: ME.into(),
            cluster: Some(ClusterView {
                name: "c".into(),
                epoch,
                nodes: vec![
                    node(ME, vec![SlotAssignment::plain(SlotRange::new(0, 5000)), tagged(SlotTag::Migrating)]),
                    node("127.0.0.1:6002", vec![SlotAssignment::plain(SlotRange::new(6001, 16000))]),
                    node("127.0.0.1:6003", vec![tagged(SlotTag::Importing)]),
                ],
            }),
            migrations: vec![MigrationMeta {
                id: "m-1".into(),
                epoch,
                cluster: "c".into(),
                src_proxy: ME.into(),
                src_node: format!("node-{ME}"),
                dst_proxy: "127.0.0.1:6003".into(),
                dst_node: "node-127.0.0.1:6003".into(),
                slots: vec![moving],
                mode: MigrationMode::Keys,
                switch_allowed: false,
                fenced: false,
            }],
        }
    }

    /// One [`configured_proxy`] for tests that only read it (building one per case is slow).
    pub fn shared_configured_proxy() -> &'static (tokio::runtime::Runtime, Arc<Shared>) {
        static PROXY: std::sync::OnceLock<(tokio::runtime::Runtime, Arc<Shared>)> = std::sync::OnceLock::new();
        PROXY.get_or_init(configured_proxy)
    }

    /// A proxy holding [`config`] at epoch 1, with slots 100-200 held by a switch.
    pub fn configured_proxy() -> (tokio::runtime::Runtime, Arc<Shared>) {
        let (rt, shared) = proxy();
        rt.block_on(async {
            shared.apply_config(config(1), &NoTasks).await.expect("a valid config");
            let hold = Override { slots: vec![SlotRange::new(100, 200)], kind: OverrideKind::Hold };
            shared.set_override("m-2", Some(hold)).await;
        });
        (rt, shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sluice_common::model::{ClusterView, NodeView, SlotAssignment, SlotRange};

    struct NoTasks;

    impl MigrationTasks for NoTasks {
        fn new_sources(&self, _: &ProxyConfig, _: &str) -> Vec<MigrationMeta> {
            Vec::new()
        }

        fn reconcile(&self, _: &Arc<Shared>, _: &ProxyConfig) {}
    }

    #[test]
    fn an_epoch_is_advanced_only_over_the_config_version_named() {
        use super::testing::{config, proxy, ME};
        let (rt, shared) = proxy();
        let tasks = super::testing::NoTasks;
        let version = config(1).version();
        rt.block_on(async {
            assert_eq!(shared.config_version(), "", "no config taken yet");
            let none = shared.advance_epoch(2, &ProxyConfig::free(ME, 0).version(), &tasks).await;
            assert!(matches!(none, Ok(None)), "nothing is advanced from the config a proxy starts with");
            shared.apply_config(config(1), &tasks).await.expect("a valid config");
            assert_eq!(shared.config_version(), version);
            let other = shared.advance_epoch(3, "0123", &tasks).await;
            assert!(matches!(other, Ok(None)), "another version: refused");
            assert_eq!(shared.epoch(), 1, "a refusal changes nothing");
            let moved = shared.advance_epoch(3, &version, &tasks).await;
            assert!(matches!(moved, Ok(Some(Applied::Updated { from: 1, to: 3 }))), "{moved:?}");
            assert_eq!(
                *shared.routes().config,
                ProxyConfig { epoch: 3, ..config(1) },
                "the same config at the new epoch"
            );
            let again = shared.advance_epoch(3, &version, &tasks).await;
            assert!(matches!(again, Ok(Some(Applied::Unchanged))), "{again:?}");
            let back = shared.advance_epoch(2, &version, &tasks).await;
            assert!(matches!(back, Err(ConfigError::Stale { offered: 2, held: 3 })), "{back:?}");
        });
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_switch_under_way_and_starts_none() {
        let shared = Arc::new(Shared::new(ProxyOptions::parse_from(["sluice-proxy"])));
        let switching = shared.begin_switch().expect("a switch may start before the shutdown");
        shared.shutdown.cancel();
        assert!(shared.begin_switch().is_none(), "a switch started after the shutdown");
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!shared.wait_switches(soon).await, "the wait ended while a switch was under way");
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { shared.wait_switches(Instant::now() + Duration::from_secs(20)).await }
        });
        drop(switching);
        assert!(waiter.await.expect("the waiter"), "the wait did not end with the switch");
    }

    #[tokio::test]
    async fn a_migration_waits_for_commands_routed_with_an_older_table() {
        let shared = Arc::new(Shared::new(ProxyOptions::parse_from(["sluice-proxy", "--announce", "127.0.0.1:6001"])));
        let old = Routed::new(&shared.routes());
        let current = Routed::new(&shared.routes());
        shared.set_override("m-1", None).await;
        assert!(!shared.wait_routed_before(Duration::from_millis(30)).await, "one is outstanding");
        drop(current); // the same table: still outstanding until `old` is in
        assert!(!shared.wait_routed_before(Duration::from_millis(30)).await);
        drop(old);
        assert!(shared.wait_routed_before(Duration::from_millis(30)).await);
        // Routed with the table now current: not waited for.
        let _new = Routed::new(&shared.routes());
        assert!(shared.wait_routed_before(Duration::from_millis(30)).await);
    }

    #[tokio::test]
    async fn peers_are_dialled_at_their_peer_address() {
        let shared = Arc::new(Shared::new(ProxyOptions::parse_from(["sluice-proxy", "--announce", "127.0.0.1:6001"])));
        let node = |proxy: &str, peer: Option<&str>, slots: (u16, u16)| NodeView {
            proxy: proxy.into(),
            node: format!("node-{proxy}"),
            slots: vec![SlotAssignment::plain(SlotRange::new(slots.0, slots.1))],
            peer: peer.map(str::to_string),
            replicas: Vec::new(),
            handover: None,
            config_epoch: 0,
        };
        let config = |epoch, peer| ProxyConfig {
            epoch,
            proxy: "127.0.0.1:6001".into(),
            cluster: Some(ClusterView {
                name: "c".into(),
                epoch,
                nodes: vec![
                    node("127.0.0.1:6001", Some("proxy1:6001"), (0, 8191)),
                    node("127.0.0.1:6002", peer, (8192, 16383)),
                ],
            }),
            migrations: Vec::new(),
        };
        assert_eq!(shared.peer_pool("127.0.0.1:6002").addr(), "127.0.0.1:6002", "unknown: the client-facing address");
        shared.apply_config(config(1, Some("proxy2:6002")), &NoTasks).await.unwrap();
        let pool = shared.peer_pool("127.0.0.1:6002");
        assert_eq!(pool.addr(), "proxy2:6002");
        assert!(Arc::ptr_eq(&pool, &shared.peer_pool("127.0.0.1:6002")), "one pool per peer");
        shared.apply_config(config(2, None), &NoTasks).await.unwrap();
        assert_eq!(shared.peer_pool("127.0.0.1:6002").addr(), "127.0.0.1:6002", "a new address: a new pool");
        // Clients are still told the client-facing address.
        assert_eq!(shared.routes().route(9000), crate::route::Route::Peer(&shared.routes().peers[1]));
        assert_eq!(shared.routes().peers[1].proxy, "127.0.0.1:6002");
    }
}
