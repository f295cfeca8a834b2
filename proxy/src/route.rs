//! The routing table: for each of the 16384 slots, who serves it.
//!
//! Built from the [`ProxyConfig`] and the running migrations' [`Override`]s whenever either
//! changes, and swapped in atomically, so the request path reads it without locks. The
//! config says who owns a slot; an override says what a migration changed since: slots held
//! during a switch, slots already handed to the destination, slots taken over from the source.

use sluice_common::model::{
    node_id, ClusterView, Epoch, MigrationMeta, MigrationMode, ModelError, NodeView, ProxyConfig, SlotRange, SlotTag,
};
use sluice_common::slot::SLOT_COUNT;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

const NO_OWNER: u16 = u16::MAX;
const NO_PULL: u16 = u16::MAX;

/// A slot this proxy serves that a migration is moving away: commands on it are counted
/// while in flight, so a switch can wait for them.
const MIGRATING: u8 = 1;
/// A slot whose commands wait: a switch is in progress.
const HELD: u8 = 2;
/// A slot being imported into this proxy's node (its keys are not garbage).
const IMPORTING: u8 = 4;
/// A slot a keys-mode migration is moving away from here: its keys are pulled to the
/// destination before a command runs there.
const PULLING: u8 = 8;
/// A slot a keys-mode migration is moving here: commands forwarded by the source are served.
const IMPORTING_KEYS: u8 = 16;
/// On a replica: a slot its master serves and moves nowhere, whose reads a `READONLY` client
/// may have from this replica. (A slot its master is migrating is read from the master: the
/// replica's copy cannot tell a key that moved from one that never was.)
const REPLICA_READS: u8 = 32;

/// A peer as the cluster commands describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Client-facing address of the proxy (`host:port`).
    pub proxy: String,
    /// The Redis node behind it.
    pub node: String,
    pub id: String,
    /// Where this proxy connects to it (the view's `peer`, else `proxy`); never shown to clients.
    pub peer: String,
    /// A master's replicas (for the cluster commands); empty for a replica.
    pub replicas: Vec<Peer>,
    /// The shard's config epoch (`CLUSTER NODES`); a replica shows its master's, as in Redis.
    pub config_epoch: Epoch,
}

/// Where the keys of a slot in a keys-mode migration go (the source's view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullTarget {
    pub migration: String,
    /// The destination proxy, which runs the commands once their keys are there.
    pub proxy: String,
    /// The destination node, which `MIGRATE` sends the keys to.
    pub node: String,
}

/// Where a slot is served from this proxy's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// This proxy's own node.
    Local,
    /// Another proxy: answer `MOVED` to it, or forward to it.
    Peer(&'a Peer),
    /// Nobody (no config yet, or a hole in the config): `CLUSTERDOWN`.
    Unserved,
    /// A migration is switching this slot: wait until the table changes.
    Held,
    /// A keys-mode migration moves this slot away: pull the command's keys to the
    /// destination, then run it there.
    Pull(&'a PullTarget),
}

/// What a running migration changes in the table, until the config catches up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub slots: Vec<SlotRange>,
    pub kind: OverrideKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideKind {
    /// Commands wait (the source is switching the slots).
    Hold,
    /// Served by that proxy now (the source after the switch).
    MovedTo(String),
    /// Served here now (the destination after the switch).
    Here,
}

/// The config and what is derived from it for routing.
#[derive(Debug)]
pub struct RouteTable {
    pub config: Arc<ProxyConfig>,
    /// Owner of each slot: an index into `peers`, or `NO_OWNER`.
    owners: Box<[u16]>,
    /// `MIGRATING` / `HELD` / `IMPORTING` / `PULLING` / `IMPORTING_KEYS` per slot.
    flags: Box<[u8]>,
    /// For `PULLING` slots: an index into `pulls` (one entry per migration), else `NO_PULL`.
    pull_index: Box<[u16]>,
    pub pulls: Vec<PullTarget>,
    pub peers: Vec<Peer>,
    /// Index of this proxy in `peers`, when it is a master of a cluster.
    pub me: Option<usize>,
    /// When this proxy is a replica: the index in `peers` of its shard's master.
    pub replica_of: Option<usize>,
    /// Out of a cluster: who served each slot when this proxy last was in one (see
    /// [`RouteTable::keep_former_view`]).
    former: Option<Arc<FormerView>>,
    /// Commands routed to this proxy's node with this table and not answered yet (see
    /// [`crate::state::Routed`]): a migration waits for those of older tables.
    pub routed: Arc<AtomicUsize>,
    /// `config.version()`, hashed once on first use: every Status and push reply names it.
    version: std::sync::OnceLock<String>,
}

impl Peer {
    /// A master of the cluster, with its replicas.
    fn of_master(node: &NodeView) -> Peer {
        let replicas = node
            .replicas
            .iter()
            .map(|r| Peer {
                proxy: r.proxy.clone(),
                node: r.node.clone(),
                id: node_id(&r.proxy),
                peer: r.peer.clone().unwrap_or_else(|| r.proxy.clone()),
                replicas: Vec::new(),
                config_epoch: node.config_epoch,
            })
            .collect();
        Peer {
            proxy: node.proxy.clone(),
            node: node.node.clone(),
            id: node_id(&node.proxy),
            peer: node.peer_address().to_string(),
            replicas,
            config_epoch: node.config_epoch,
        }
    }
}

/// The per-slot part of a [`RouteTable`] while [`RouteTable::build`] fills it in.
struct SlotMaps {
    owners: Box<[u16]>,
    flags: Box<[u8]>,
    pull_index: Box<[u16]>,
    pulls: Vec<PullTarget>,
}

impl SlotMaps {
    /// Nobody serves anything, nothing moves.
    fn new() -> SlotMaps {
        SlotMaps {
            owners: vec![NO_OWNER; usize::from(SLOT_COUNT)].into_boxed_slice(),
            flags: vec![0; usize::from(SLOT_COUNT)].into_boxed_slice(),
            pull_index: vec![NO_PULL; usize::from(SLOT_COUNT)].into_boxed_slice(),
            pulls: Vec::new(),
        }
    }

    /// The config's owner of each slot, as an index into the cluster's nodes (checked to fit
    /// below `NO_OWNER`).
    fn set_owners(&mut self, slot_owners: Vec<Option<usize>>) {
        for (slot, owner) in slot_owners.into_iter().enumerate() {
            if let Some(o) = owner {
                self.owners[slot] = o as u16;
            }
        }
    }

    /// Adds `flag` to every slot of `range`.
    fn flag(&mut self, range: SlotRange, flag: u8) {
        for slot in range.slots() {
            self.flags[usize::from(slot)] |= flag;
        }
    }

    /// Adds `flag` to the slots of `node` that no migration tags.
    fn flag_untagged(&mut self, node: &NodeView, flag: u8) {
        for a in node.slots.iter().filter(|a| a.tag.is_none()) {
            self.flag(a.range(), flag);
        }
    }

    /// Flags this proxy's slots that migrations tag: moving away (counted in flight; for a
    /// keys-mode migration also pulled to its destination) or coming in.
    fn flag_migrations(&mut self, config: &ProxyConfig, node: &NodeView) -> Result<(), ModelError> {
        for a in &node.slots {
            let keys_mode = a.migration.as_ref().and_then(|id| config.migrations.iter().find(|m| &m.id == id));
            let keys_mode = keys_mode.filter(|m| m.mode == MigrationMode::Keys);
            let flag = match (a.tag, keys_mode) {
                (Some(SlotTag::Migrating), Some(m)) => {
                    let index = self.pull_target(m)?;
                    for slot in a.range().slots() {
                        self.pull_index[usize::from(slot)] = index;
                    }
                    MIGRATING | PULLING
                }
                (Some(SlotTag::Migrating), None) => MIGRATING,
                (Some(SlotTag::Importing), Some(_)) => IMPORTING | IMPORTING_KEYS,
                (Some(SlotTag::Importing), None) => IMPORTING,
                (None, _) => 0,
            };
            self.flag(a.range(), flag);
        }
        Ok(())
    }

    /// The index in `pulls` of where keys-mode migration `m` sends its keys (added on first use).
    fn pull_target(&mut self, m: &MigrationMeta) -> Result<u16, ModelError> {
        let index = match self.pulls.iter().position(|p| p.migration == m.id) {
            Some(i) => i,
            None => {
                self.pulls.push(PullTarget {
                    migration: m.id.clone(),
                    proxy: m.dst_proxy.clone(),
                    node: m.dst_node.clone(),
                });
                self.pulls.len() - 1
            }
        };
        // At most one entry per migration, and a migration has at least one of the 16384
        // slots: the index always fits below `NO_PULL`.
        u16::try_from(index).map_err(|_| ModelError::TooManyMigrations)
    }

    /// What a running migration changed since the config: its slots held, or served by
    /// another proxy (or by this one, `me`) with nothing moving any more.
    fn apply(&mut self, o: &Override, peers: &[Peer], me: Option<usize>) {
        let target = match &o.kind {
            OverrideKind::Hold => None,
            OverrideKind::MovedTo(proxy) => peers.iter().position(|p| &p.proxy == proxy).map(|i| i as u16),
            OverrideKind::Here => me.map(|i| i as u16),
        };
        for r in &o.slots {
            for slot in r.slots().filter(|&s| s < SLOT_COUNT) {
                let s = usize::from(slot);
                match o.kind {
                    OverrideKind::Hold => self.flags[s] |= HELD,
                    _ => {
                        if let Some(t) = target {
                            self.owners[s] = t;
                        }
                        self.flags[s] &= !(MIGRATING | HELD | PULLING | IMPORTING_KEYS);
                    }
                }
            }
        }
    }
}

/// The owners of the slots as a proxy last saw them while it was a node of a cluster.
#[derive(Debug)]
struct FormerView {
    /// An index into `peers`, or `NO_OWNER` (also for the slots this proxy served itself).
    owners: Box<[u16]>,
    peers: Vec<Peer>,
}

impl RouteTable {
    /// The version of the config ([`ProxyConfig::version`]): the config is fixed for the
    /// table's life, so it is hashed once, not at every Status.
    pub fn config_version(&self) -> &str {
        self.version.get_or_init(|| self.config.version())
    }

    /// The table of a proxy that has no config yet (epoch 0, serves nothing).
    pub fn empty(me: &str) -> RouteTable {
        let SlotMaps { owners, flags, pull_index, pulls } = SlotMaps::new();
        RouteTable {
            config: Arc::new(ProxyConfig::free(me, 0)),
            owners,
            flags,
            pull_index,
            pulls,
            peers: Vec::new(),
            me: None,
            replica_of: None,
            former: None,
            routed: Arc::default(),
            version: std::sync::OnceLock::new(),
        }
    }

    /// Builds the table of `config` (checked first) with the migrations' overrides applied.
    pub fn build(config: Arc<ProxyConfig>, overrides: &[Override]) -> Result<RouteTable, ModelError> {
        config.validate()?;
        let mut slots = SlotMaps::new();
        let mut peers = Vec::new();
        let mut me = None;
        let mut replica_of = None;
        if let Some(cluster) = &config.cluster {
            let slot_owners = cluster.slot_owners()?;
            // Owners are stored as u16 indices with `NO_OWNER` reserved: a larger cluster
            // (far beyond any real one) is refused rather than truncated to another node.
            if cluster.nodes.len() >= usize::from(NO_OWNER) {
                return Err(ModelError::TooManyNodes(cluster.nodes.len()));
            }
            slots.set_owners(slot_owners);
            peers = cluster.nodes.iter().map(Peer::of_master).collect();
            // The last node naming this proxy, should a config name it twice.
            me = cluster.nodes.iter().rposition(|n| n.proxy == config.proxy);
            replica_of = cluster.nodes.iter().rposition(|n| n.replicas.iter().any(|r| r.proxy == config.proxy));
            if let Some(master) = replica_of {
                slots.flag_untagged(&cluster.nodes[master], REPLICA_READS);
            }
            if let Some(me) = me {
                let node = &cluster.nodes[me];
                if node.handover.is_some() {
                    // A graceful failover is handing the shard over: commands on its slots are
                    // counted in flight, so the handover can wait for them (`handover.rs`).
                    slots.flag_untagged(node, MIGRATING);
                }
                slots.flag_migrations(&config, node)?;
            }
        }
        for o in overrides {
            slots.apply(o, &peers, me);
        }
        let SlotMaps { owners, flags, pull_index, pulls } = slots;
        Ok(RouteTable {
            config,
            owners,
            flags,
            pull_index,
            pulls,
            peers,
            me,
            replica_of,
            former: None,
            routed: Arc::default(),
            version: std::sync::OnceLock::new(),
        })
    }

    /// Out of a cluster, a table remembers who served each slot when the proxy last was a
    /// node (`previous` is the table it replaces), and answers `MOVED` there instead of
    /// `CLUSTERDOWN`. A proxy that gave its last slots away leaves the cluster at the commit,
    /// while clients may still hold a view from before it: a real Redis Cluster node that
    /// lost its slots redirects them too, and cluster clients back off for seconds on
    /// `CLUSTERDOWN` (redis-rs waits with growing pauses on the same node until its response
    /// timeout) instead of refreshing their view. The remembered owner may be out of date by
    /// then; it redirects again if so.
    ///
    /// Only a proxy that left by giving its slots away (its config still names the migration
    /// it was the source of) remembers: one whose cluster was deleted answers `CLUSTERDOWN`,
    /// as a reset Redis Cluster node does.
    pub fn keep_former_view(mut self, previous: &RouteTable) -> RouteTable {
        if self.me.is_some() {
            return self;
        }
        let gave_slots_away = self.config.migrations.iter().any(|m| m.src_proxy == self.config.proxy);
        self.former = match previous.me {
            Some(_) if !gave_slots_away => None,
            Some(me) => {
                let mut owners = previous.owners.clone();
                for o in owners.iter_mut().filter(|o| usize::from(**o) == me) {
                    *o = NO_OWNER;
                }
                Some(Arc::new(FormerView { owners, peers: previous.peers.clone() }))
            }
            None => previous.former.clone(),
        };
        self
    }

    pub fn epoch(&self) -> Epoch {
        self.config.epoch
    }

    pub fn cluster(&self) -> Option<&ClusterView> {
        self.config.cluster.as_ref()
    }

    /// Where to connect to the proxy known to clients as `proxy`, if it is in the table.
    pub fn peer_address(&self, proxy: &str) -> Option<&str> {
        let former = self.former.iter().flat_map(|f| f.peers.iter());
        self.peers.iter().chain(former).find(|p| p.proxy == proxy).map(|p| p.peer.as_str())
    }

    /// Where a client's command on `slot` goes.
    pub fn route(&self, slot: u16) -> Route<'_> {
        self.route_for(slot, false)
    }

    /// Where a command on `slot` goes; `from_peer`: it was forwarded by another proxy, which
    /// a keys-mode destination serves for the slots it imports.
    pub fn route_for(&self, slot: u16, from_peer: bool) -> Route<'_> {
        let s = usize::from(slot);
        let flags = self.flags.get(s).copied().unwrap_or(0);
        if flags & HELD != 0 {
            return Route::Held;
        }
        if flags & PULLING != 0 {
            if let Some(t) = self.pull_index.get(s).and_then(|&i| self.pulls.get(usize::from(i))) {
                return Route::Pull(t);
            }
        }
        if from_peer && flags & IMPORTING_KEYS != 0 {
            return Route::Local;
        }
        match self.owners.get(s) {
            Some(&o) if o == NO_OWNER => self.former_owner(s).map_or(Route::Unserved, Route::Peer),
            Some(&o) if Some(usize::from(o)) == self.me => Route::Local,
            Some(&o) => self.peers.get(usize::from(o)).map_or(Route::Unserved, Route::Peer),
            None => Route::Unserved,
        }
    }

    /// Who served slot index `s` when this proxy last was in a cluster, if it is in none now.
    fn former_owner(&self, s: usize) -> Option<&Peer> {
        let former = self.former.as_ref().filter(|_| self.me.is_none())?;
        let o = *former.owners.get(s)?;
        former.peers.get(usize::from(o))
    }

    /// Whether this proxy serves `slot` itself (held slots included: they stay here until the
    /// switch completes).
    pub fn is_local(&self, slot: u16) -> bool {
        let s = usize::from(slot);
        self.me.is_some() && self.owners.get(s).is_some_and(|&o| Some(usize::from(o)) == self.me)
    }

    /// Whether a `READONLY` client may read `slot` from this proxy's node: it is this
    /// replica's master's, and not being migrated.
    pub fn replica_reads(&self, slot: u16) -> bool {
        self.flags.get(usize::from(slot)).is_some_and(|f| f & REPLICA_READS != 0)
    }

    /// Whether keys of `slot` on this proxy's node are visible to its clients (`SCAN`,
    /// `KEYS`): it serves the slot, or is a replica of the master that does.
    pub fn shows_keys_of(&self, slot: u16) -> bool {
        self.is_local(slot) || self.replica_reads(slot)
    }

    /// Whether this node holds the live keys of `slot`: it serves it, or a keys-mode
    /// migration has been moving its keys here (a replica's copy does not count).
    pub fn holds_live_keys(&self, slot: u16) -> bool {
        self.is_local(slot) || self.flags.get(usize::from(slot)).is_some_and(|f| f & IMPORTING_KEYS != 0)
    }

    /// Whether commands on `slot` must be counted while in flight (it is being moved away).
    pub fn is_migrating(&self, slot: u16) -> bool {
        self.flags.get(usize::from(slot)).is_some_and(|f| f & MIGRATING != 0)
    }

    /// Whether `slot`'s keys on this node are garbage: another node of the cluster serves
    /// it, and it is neither being imported here nor held by a switch.
    pub fn is_foreign(&self, slot: u16) -> bool {
        let s = usize::from(slot);
        let flags = self.flags.get(s).copied().unwrap_or(0);
        flags & (IMPORTING | HELD | MIGRATING) == 0
            && matches!(self.owners.get(s), Some(&o) if o != NO_OWNER && Some(usize::from(o)) != self.me)
    }

    /// Whether `slot` is neither served, imported, held nor moving here (a task may then
    /// declare its keys garbage although no other node of the cluster serves it).
    pub fn is_unclaimed(&self, slot: u16) -> bool {
        let flags = self.flags.get(usize::from(slot)).copied().unwrap_or(0);
        flags & (IMPORTING | HELD | MIGRATING) == 0 && !self.is_local(slot)
    }

    /// Number of slots somebody serves (for `CLUSTER INFO`).
    pub fn slots_assigned(&self) -> usize {
        self.owners.iter().filter(|&&o| o != NO_OWNER).count()
    }

    /// Number of slots this proxy serves.
    pub fn slots_served(&self) -> usize {
        (0..SLOT_COUNT).filter(|&s| self.is_local(s)).count()
    }

    /// Contiguous runs of slots with the same owner: (start, end, owner index).
    pub fn runs(&self) -> Vec<(u16, u16, usize)> {
        let mut runs: Vec<(u16, u16, usize)> = Vec::new();
        for (slot, &o) in self.owners.iter().enumerate() {
            if o == NO_OWNER {
                continue;
            }
            let slot = slot as u16;
            match runs.last_mut() {
                Some(last) if last.2 == usize::from(o) && last.1 + 1 == slot => last.1 = slot,
                _ => runs.push((slot, slot, usize::from(o))),
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::model::{split_slots_evenly, MigrationMeta, NodeView, SlotAssignment};

    pub fn three_node_config(me: &str, epoch: Epoch) -> Arc<ProxyConfig> {
        let nodes = split_slots_evenly(3)
            .into_iter()
            .enumerate()
            .map(|(i, r)| NodeView {
                proxy: format!("127.0.0.1:600{}", i + 1),
                node: format!("127.0.0.1:700{}", i + 1),
                slots: vec![SlotAssignment::plain(r)],
                peer: None,
                replicas: Vec::new(),
                handover: None,
                config_epoch: 0,
            })
            .collect();
        Arc::new(ProxyConfig {
            epoch,
            proxy: me.into(),
            cluster: Some(ClusterView { name: "c".into(), epoch, nodes }),
            migrations: vec![],
        })
    }

    #[test]
    fn routes_follow_the_config() {
        let t = RouteTable::build(three_node_config("127.0.0.1:6002", 3), &[]).unwrap();
        assert_eq!(t.route(0), Route::Peer(&t.peers[0]));
        assert_eq!(t.route(6000), Route::Local);
        assert_eq!(t.route(16383), Route::Peer(&t.peers[2]));
        assert_eq!(t.runs().len(), 3);
        assert_eq!(t.slots_assigned(), 16384);
        assert!(t.is_foreign(0) && !t.is_foreign(6000));
        let e = RouteTable::empty("127.0.0.1:6001");
        assert_eq!(e.route(0), Route::Unserved);
        assert!(!e.is_foreign(0));
    }

    #[test]
    fn out_of_its_cluster_a_proxy_redirects_to_the_owners_it_last_knew() {
        // 6002 gave its slots to 6003 (override after the switch), then left at the commit.
        let member = RouteTable::build(
            three_node_config("127.0.0.1:6002", 3),
            &[Override {
                slots: vec![SlotRange::new(5461, 10922)],
                kind: OverrideKind::MovedTo("127.0.0.1:6003".into()),
            }],
        )
        .unwrap();
        // Left because the cluster was deleted: nothing to redirect to.
        let free = Arc::new(ProxyConfig::free("127.0.0.1:6002", 4));
        let deleted = RouteTable::build(free.clone(), &[]).unwrap().keep_former_view(&member);
        assert_eq!(deleted.route(0), Route::Unserved);
        // Left by giving its slots away: the committed migration is still in its config.
        let mut gave = ProxyConfig::free("127.0.0.1:6002", 4);
        gave.migrations.push(MigrationMeta {
            id: "m-1".into(),
            epoch: 3,
            cluster: "c".into(),
            src_proxy: "127.0.0.1:6002".into(),
            src_node: "127.0.0.1:7002".into(),
            dst_proxy: "127.0.0.1:6003".into(),
            dst_node: "127.0.0.1:7003".into(),
            slots: vec![SlotRange::new(5461, 10922)],
            mode: MigrationMode::Keys,
            switch_allowed: false,
            fenced: false,
        });
        let t = RouteTable::build(Arc::new(gave), &[]).unwrap().keep_former_view(&member);
        assert!(matches!(t.route(0), Route::Peer(p) if p.proxy == "127.0.0.1:6001"));
        assert!(matches!(t.route(6000), Route::Peer(p) if p.proxy == "127.0.0.1:6003"));
        assert_eq!(t.peer_address("127.0.0.1:6003"), Some("127.0.0.1:6003"));
        // Kept across later free configs, never used once in a cluster again.
        let later = RouteTable::build(Arc::new(ProxyConfig::free("127.0.0.1:6002", 5)), &[]).unwrap();
        let later = later.keep_former_view(&t);
        assert!(matches!(later.route(16383), Route::Peer(p) if p.proxy == "127.0.0.1:6003"));
        assert!(!later.is_foreign(0), "nothing is garbage by a former view");
        let back = RouteTable::build(three_node_config("127.0.0.1:6002", 6), &[]).unwrap().keep_former_view(&later);
        assert_eq!(back.route(6000), Route::Local);
        // A proxy that never was in a cluster has nobody to redirect to.
        let fresh = RouteTable::build(free, &[]).unwrap().keep_former_view(&RouteTable::empty("127.0.0.1:6002"));
        assert_eq!(fresh.route(0), Route::Unserved);
        // A slot the proxy itself served when it left (a hole since) is not redirected to itself.
        let whole = RouteTable::build(three_node_config("127.0.0.1:6002", 3), &[]).unwrap();
        let left = RouteTable::build(t.config.clone(), &[]).unwrap().keep_former_view(&whole);
        assert_eq!(left.route(6000), Route::Unserved);
        assert!(matches!(left.route(0), Route::Peer(p) if p.proxy == "127.0.0.1:6001"));
    }

    #[test]
    fn overrides_hold_move_and_take_over_slots() {
        let config = three_node_config("127.0.0.1:6002", 3);
        let held = Override { slots: vec![SlotRange::new(6000, 6009)], kind: OverrideKind::Hold };
        let t = RouteTable::build(config.clone(), &[held]).unwrap();
        assert_eq!(t.route(6005), Route::Held);
        assert!(t.is_local(6005), "held slots are still ours");
        assert!(!t.is_foreign(6005));
        let moved =
            Override { slots: vec![SlotRange::new(6000, 6009)], kind: OverrideKind::MovedTo("127.0.0.1:6003".into()) };
        let t = RouteTable::build(config.clone(), &[moved]).unwrap();
        assert_eq!(t.route(6005), Route::Peer(&t.peers[2]));
        assert_eq!(t.route(6010), Route::Local);
        let here = Override { slots: vec![SlotRange::new(0, 9)], kind: OverrideKind::Here };
        let t = RouteTable::build(config, &[here]).unwrap();
        assert_eq!(t.route(5), Route::Local);
        assert!(!t.is_foreign(5));
    }

    /// A keys-mode source with many migrations at once (here 600, one slot each, to two
    /// destinations, plus one migration of 300 separate ranges): each slot pulls to its
    /// own migration's destination. A table of at most 255 targets once sent the 256th
    /// and later ones to entry 254.
    #[test]
    fn every_migrating_slot_pulls_to_its_own_migrations_destination() {
        let mut config = (*three_node_config("127.0.0.1:6002", 3)).clone();
        let cluster = config.cluster.as_mut().expect("three nodes");
        let src = &mut cluster.nodes[1];
        let first = src.slots[0].start;
        let mut assignments = Vec::new();
        let dst = |i: u16| if i.is_multiple_of(2) { 0 } else { 2 };
        for i in 0..600u16 {
            let id = format!("m-{i}");
            assignments.push(SlotAssignment {
                start: first + i,
                end: first + i,
                tag: Some(SlotTag::Migrating),
                migration: Some(id.clone()),
            });
            config.migrations.push(keys_migration(&id, dst(i), vec![SlotRange::new(first + i, first + i)]));
        }
        let many: Vec<SlotRange> =
            (0..300u16).map(|j| SlotRange::new(first + 600 + 2 * j, first + 600 + 2 * j)).collect();
        for r in &many {
            assignments.push(SlotAssignment {
                start: r.start,
                end: r.end,
                tag: Some(SlotTag::Migrating),
                migration: Some("m-many".into()),
            });
        }
        config.migrations.push(keys_migration("m-many", 2, many.clone()));
        let last = src.slots[0].end;
        let taken: std::collections::HashSet<u16> = assignments.iter().map(|a| a.start).collect();
        for slot in first..=last {
            if !taken.contains(&slot) {
                assignments.push(SlotAssignment::plain(SlotRange::new(slot, slot)));
            }
        }
        src.slots = assignments;
        let t = RouteTable::build(Arc::new(config), &[]).unwrap();
        for i in 0..600u16 {
            let dst_proxy = format!("127.0.0.1:600{}", dst(i) + 1);
            match t.route(first + i) {
                Route::Pull(p) => {
                    assert_eq!(p.migration, format!("m-{i}"));
                    assert_eq!(p.proxy, dst_proxy);
                }
                other => panic!("slot {} routes to {other:?}", first + i),
            }
        }
        for r in &many {
            assert!(matches!(t.route(r.start), Route::Pull(p) if p.migration == "m-many"));
            assert_eq!(t.route(r.start + 1), Route::Local);
        }
        assert_eq!(t.pulls.len(), 601, "one pull target per migration");
    }

    fn keys_migration(id: &str, dst: usize, slots: Vec<SlotRange>) -> MigrationMeta {
        MigrationMeta {
            id: id.into(),
            epoch: 3,
            cluster: "c".into(),
            src_proxy: "127.0.0.1:6002".into(),
            src_node: "127.0.0.1:7002".into(),
            dst_proxy: format!("127.0.0.1:600{}", dst + 1),
            dst_node: format!("127.0.0.1:700{}", dst + 1),
            slots,
            mode: MigrationMode::Keys,
            switch_allowed: false,
            fenced: false,
        }
    }
}
