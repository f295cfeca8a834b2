//! The metadata model shared by broker, coordinator and proxies.
//!
//! The broker stores it, the coordinator carries it, the proxy routes by it. One type per
//! concept, serialised the same way everywhere: the JSON a proxy takes in `UMCTL SETDB` is
//! exactly the [`ProxyConfig`] the broker serves, and the cluster inside it is exactly what
//! `GET /api/v1/clusters/{name}` answers.

use crate::slot::SLOT_COUNT;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// The broker's global metadata version. It only ever goes up.
pub type Epoch = u64;

/// An inclusive range of slots. Serialised as `[start, end]` (the migration API's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "(u16, u16)", into = "(u16, u16)")]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
}

impl SlotRange {
    pub fn new(start: u16, end: u16) -> SlotRange {
        SlotRange { start, end }
    }

    pub fn len(&self) -> usize {
        usize::from(self.end.saturating_sub(self.start)) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }

    pub fn overlaps(&self, other: &SlotRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    pub fn slots(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }

    /// Checks `start <= end < 16384`.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.start > self.end || self.end >= SLOT_COUNT {
            return Err(ModelError::BadRange(*self));
        }
        Ok(())
    }
}

impl From<(u16, u16)> for SlotRange {
    fn from((start, end): (u16, u16)) -> Self {
        SlotRange { start, end }
    }
}

impl From<SlotRange> for (u16, u16) {
    fn from(r: SlotRange) -> Self {
        (r.start, r.end)
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Splits the 16384 slots into `n` contiguous ranges whose sizes differ by at most one.
pub fn split_slots_evenly(n: usize) -> Vec<SlotRange> {
    let total = usize::from(SLOT_COUNT);
    let n = n.clamp(1, total);
    let mut start = 0usize;
    (0..n)
        .map(|i| {
            let len = total / n + usize::from(i < total % n);
            let r = SlotRange::new(start as u16, (start + len - 1) as u16);
            start += len;
            r
        })
        .collect()
}

/// Migration role of a slot range on a node (the seed's MIGRATING / IMPORTING flags).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotTag {
    /// Owned here and being moved away.
    Migrating,
    /// Being moved here; still owned by the migrating side until the switch.
    Importing,
}

/// Slots assigned to a node, as `GET /api/v1/clusters/{name}` shows them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotAssignment {
    pub start: u16,
    pub end: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<SlotTag>,
    /// The id of the migration that tagged this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
}

impl SlotAssignment {
    pub fn plain(range: SlotRange) -> SlotAssignment {
        SlotAssignment { start: range.start, end: range.end, tag: None, migration: None }
    }

    pub fn range(&self) -> SlotRange {
        SlotRange::new(self.start, self.end)
    }
}

/// One node of a cluster: a proxy and the Redis node behind it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The proxy's client-facing address (`host:port`), what `MOVED` names.
    pub proxy: String,
    /// The Redis node's address, as the proxies reach it.
    pub node: String,
    pub slots: Vec<SlotAssignment>,
    /// Where the other proxies reach this proxy's data port (migration switch, forwarding),
    /// when that is not `proxy`: e.g. a service name inside a container network while clients
    /// use a published port. Absent: `proxy` itself. The broker copies it from the proxy's
    /// registration (`peer_address`); it is never what clients are told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The shard's replicas: proxies whose nodes replicate this node. Clients read from them
    /// after `READONLY`, as from Redis Cluster replicas; a failover promotes one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaView>,
    /// A graceful failover asked for: the replica this master hands the shard over to. The
    /// master's proxy holds the shard's writes, waits until that replica has everything, and
    /// says so in `Status`; then the coordinator has the broker make the swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
    /// The shard's config epoch, as a Redis Cluster node's `configEpoch`: the broker sets it
    /// when it changes which node owns the shard's slots (cluster creation gives the masters
    /// 1, 2, …; a failover gives the promoted replica the cluster's greatest plus one, and a
    /// migration's commit gives it to the destination unless that holds the greatest already,
    /// as Redis does). So masters' epochs are distinct and the last change holds the greatest,
    /// which is what clients comparing `CLUSTER NODES` answers rely on.
    /// 0 in clusters stored before it existed (serde default), until their next change.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub config_epoch: Epoch,
}

fn is_zero(e: &Epoch) -> bool {
    *e == 0
}

impl NodeView {
    /// The address other proxies connect to: [`NodeView::peer`], else the client-facing one.
    pub fn peer_address(&self) -> &str {
        self.peer.as_deref().unwrap_or(&self.proxy)
    }
}

/// A replica of a shard: a proxy and the Redis node behind it, which replicates the shard's
/// master node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    pub proxy: String,
    pub node: String,
    /// As [`NodeView::peer`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// This replica was the shard's master until a failover: its node may hold writes the new
    /// master lacks, so its proxy makes it replicate the new master (which replaces its data)
    /// even though it holds keys, and serves nothing from it until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub former_master: bool,
}

/// A cluster as clients and operators see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub name: String,
    /// The epoch of the last change to this cluster.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    pub nodes: Vec<NodeView>,
}

/// How a migration moves data.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// The destination replicates the whole source node, then takes over (empty destination only).
    Replication,
    /// Keys are moved one batch at a time with `MIGRATE`.
    Keys,
    /// Slot-filtered replication into a node that may hold data: the source proxy replicates
    /// its own node, restores the keys of the moving slots at the destination (`RESTORE`), then
    /// applies the replication stream's commands on those slots (`sluice-rdb`).
    Filtered,
    /// Replication for a free destination, filtered for one that is a node of the cluster
    /// (resolved at creation).
    #[default]
    Auto,
}

impl MigrationMode {
    /// Every mode, in declaration order.
    pub const ALL: [MigrationMode; 4] =
        [MigrationMode::Replication, MigrationMode::Keys, MigrationMode::Filtered, MigrationMode::Auto];

    /// Whether the destination is filled from the source node's replication stream
    /// (`replication`, `filtered`): it may then hold writes the source lacks only after the
    /// switch, which the source makes only once the broker has recorded `switching`; the
    /// source's copies of the moved slots are garbage after the commit.
    pub fn is_streamed(self) -> bool {
        matches!(self, MigrationMode::Replication | MigrationMode::Filtered)
    }

    /// The mode as the API (and serde) spells it, without a JSON round trip.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationMode::Replication => "replication",
            MigrationMode::Keys => "keys",
            MigrationMode::Filtered => "filtered",
            MigrationMode::Auto => "auto",
        }
    }
}

/// The phases of a migration, in order (seeds: partition-move.md and slots-migration.md).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    Pending,
    Starting,
    Following,
    Switching,
    Switched,
    Committed,
    Cleaning,
    Done,
    Failed,
    Aborted,
}

impl MigrationPhase {
    /// Every phase, in order.
    pub const ALL: [MigrationPhase; 10] = [
        MigrationPhase::Pending,
        MigrationPhase::Starting,
        MigrationPhase::Following,
        MigrationPhase::Switching,
        MigrationPhase::Switched,
        MigrationPhase::Committed,
        MigrationPhase::Cleaning,
        MigrationPhase::Done,
        MigrationPhase::Failed,
        MigrationPhase::Aborted,
    ];

    /// The phases a migration that succeeds goes through, in order: [`MigrationPhase::ALL`]
    /// without the two ways of ending early.
    pub const SUCCEEDING: &'static [MigrationPhase] = MigrationPhase::ALL.split_at(8).0;

    /// The phase as the API (and serde) spells it, without a JSON round trip.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Pending => "pending",
            MigrationPhase::Starting => "starting",
            MigrationPhase::Following => "following",
            MigrationPhase::Switching => "switching",
            MigrationPhase::Switched => "switched",
            MigrationPhase::Committed => "committed",
            MigrationPhase::Cleaning => "cleaning",
            MigrationPhase::Done => "done",
            MigrationPhase::Failed => "failed",
            MigrationPhase::Aborted => "aborted",
        }
    }

    /// Whether the migration has ended, well or not.
    pub fn is_final(self) -> bool {
        matches!(self, MigrationPhase::Done | MigrationPhase::Failed | MigrationPhase::Aborted)
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for MigrationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase or mode name that is none of the API's spellings (which are exact: lowercase,
/// no surrounding spaces, as serde reads them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    /// `"phase"` or `"mode"`.
    pub kind: &'static str,
    pub name: String,
}

impl std::str::FromStr for MigrationPhase {
    type Err = UnknownName;

    /// The same spellings serde accepts (see [`MigrationPhase::as_str`]).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        MigrationPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| UnknownName { kind: "phase", name: name.to_string() })
    }
}

impl std::str::FromStr for MigrationMode {
    type Err = UnknownName;

    /// The same spellings serde accepts (see [`MigrationMode::as_str`]).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        MigrationMode::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| UnknownName { kind: "mode", name: name.to_string() })
    }
}

/// What both proxies of a migration must know about it (seed: "Notices"). It travels inside
/// the proxy config, tied to the epoch at which the migration started.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationMeta {
    pub id: String,
    /// The epoch at which the migration started.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    pub cluster: String,
    pub src_proxy: String,
    pub src_node: String,
    pub dst_proxy: String,
    pub dst_node: String,
    pub slots: Vec<SlotRange>,
    pub mode: MigrationMode,
    /// The broker has recorded `switching` (replication mode): from then on the migration can
    /// no longer be aborted or failed, only committed, so the source may promote the
    /// destination's node. It never promotes before: an abort accepted while the broker's
    /// record lagged the proxies would give the slots back to a source without the writes the
    /// destination took.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switch_allowed: bool,
    /// The broker asks the source to make no further switch attempt (a stop was asked for
    /// while `switching`): the source ends its task, reporting `failed`, as soon as it knows
    /// it never promoted the destination's node; the broker then ends the migration. Only
    /// goes from false to true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
}

/// Everything one proxy must hold: what `UMCTL SETDB` and gRPC `SetConfig` take, and what
/// the broker serves for each proxy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// The broker's global epoch this config was computed at.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    /// The proxy this config is for (its client-facing address).
    pub proxy: String,
    /// The cluster the proxy serves; absent for a free proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
    /// Migrations in which this proxy is the source or the destination.
    #[serde(default)]
    pub migrations: Vec<MigrationMeta>,
}

/// A model that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("slot range {0} is outside 0-16383 or has start > end")]
    BadRange(SlotRange),
    #[error("slot {slot} is owned by both {a} and {b}")]
    SlotOwnedTwice { slot: u16, a: String, b: String },
    #[error("slot {slot} is importing on {proxy} but migrating nowhere")]
    ImportingWithoutSource { slot: u16, proxy: String },
    #[error("proxy {0} appears twice in the cluster")]
    DuplicateProxy(String),
    #[error("proxy {0} is not a node of the cluster")]
    NotInCluster(String),
    #[error("more migrations than slots")]
    TooManyMigrations,
    #[error("a cluster of {0} nodes is more than a proxy can route (at most 65534)")]
    TooManyNodes(usize),
}

impl ClusterView {
    /// Every proxy of the cluster: the masters, and the replicas of each shard.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .flat_map(|n| std::iter::once(n.proxy.as_str()).chain(n.replicas.iter().map(|r| r.proxy.as_str())))
    }

    /// The cluster's current epoch as Redis Cluster's `currentEpoch`: the greatest
    /// [`NodeView::config_epoch`].
    pub fn current_config_epoch(&self) -> Epoch {
        self.nodes.iter().map(|n| n.config_epoch).max().unwrap_or(0)
    }

    /// The shard (its master's entry) of which `proxy` is a replica.
    pub fn shard_of_replica(&self, proxy: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.replicas.iter().any(|r| r.proxy == proxy))
    }

    /// For each slot, the index in `nodes` of its owner: the node holding it untagged or
    /// migrating. Importing ranges never own a slot: until the switch the source serves it.
    pub fn slot_owners(&self) -> Result<Vec<Option<usize>>, ModelError> {
        let mut owners = vec![None; usize::from(SLOT_COUNT)];
        let mut seen = HashMap::new();
        for member in self.members() {
            if seen.insert(member, ()).is_some() {
                return Err(ModelError::DuplicateProxy(member.to_string()));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            for a in &node.slots {
                a.range().validate()?;
                if a.tag == Some(SlotTag::Importing) {
                    continue;
                }
                for slot in a.range().slots() {
                    if let Some(prev) = owners[usize::from(slot)] {
                        let prev: usize = prev;
                        return Err(ModelError::SlotOwnedTwice {
                            slot,
                            a: self.nodes[prev].proxy.clone(),
                            b: node.proxy.clone(),
                        });
                    }
                    owners[usize::from(slot)] = Some(i);
                }
            }
        }
        for node in &self.nodes {
            for a in node.slots.iter().filter(|a| a.tag == Some(SlotTag::Importing)) {
                for slot in a.range().slots() {
                    if owners[usize::from(slot)].is_none() {
                        return Err(ModelError::ImportingWithoutSource { slot, proxy: node.proxy.clone() });
                    }
                }
            }
        }
        Ok(owners)
    }
}

/// What a [`ProxyConfig::version`] is computed from: everything but the epoch.
#[derive(Serialize)]
struct ConfigContent<'a> {
    proxy: &'a str,
    cluster: &'a Option<ClusterView>,
    migrations: &'a [MigrationMeta],
}

impl ProxyConfig {
    /// The version of this config's content: everything but its epoch (the broker's global
    /// epoch, which every change moves, also for proxies the change does not concern). Two
    /// configs of a proxy with the same version are the same apart from their epochs, so a
    /// proxy holding one is moved to the other's epoch by `AdvanceEpoch`, without the whole
    /// config travelling. 32 hex digits of the XXH3-128 of the content's JSON: computed the
    /// same way by the broker (which serves it with each config) and the proxy (which says
    /// what it holds); a proxy built with another model simply never matches and gets whole
    /// configs.
    pub fn version(&self) -> String {
        let content = ConfigContent { proxy: &self.proxy, cluster: &self.cluster, migrations: &self.migrations };
        // Serialising plain data into memory cannot fail; should it ever, the empty input
        // still gives a version, which a proxy's config would not share.
        let json = serde_json::to_vec(&content).unwrap_or_default();
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&json))
    }

    /// An empty config for a proxy that belongs to no cluster.
    pub fn free(proxy: impl Into<String>, epoch: Epoch) -> ProxyConfig {
        ProxyConfig { epoch, proxy: proxy.into(), cluster: None, migrations: Vec::new() }
    }

    /// Whether the cluster still tags slots for migration `id` (on any node): it is not
    /// committed yet.
    pub fn is_tagged(&self, id: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.nodes.iter().any(|n| n.slots.iter().any(|a| a.migration.as_deref() == Some(id))))
    }

    /// Checks that the config is usable by its proxy (`self.proxy`).
    pub fn validate(&self) -> Result<(), ModelError> {
        if let Some(cluster) = &self.cluster {
            cluster.slot_owners()?;
            if !cluster.members().any(|p| p == self.proxy) {
                return Err(ModelError::NotInCluster(self.proxy.clone()));
            }
        }
        for m in &self.migrations {
            for r in &m.slots {
                r.validate()?;
            }
        }
        Ok(())
    }
}

/// A stable 40-hex-digit node id for a proxy address, as `CLUSTER NODES`/`MYID` show it.
/// Derived from the address so every proxy computes the same id for a peer.
pub fn node_id(proxy_address: &str) -> String {
    // FNV-1a, run with three seeds to get 160 bits; stable across builds and platforms.
    let mut out = String::with_capacity(48);
    for seed in [0xcbf2_9ce4_8422_2325u64, 0x8422_2325_cbf2_9ce4, 0x9e37_79b9_7f4a_7c15] {
        let h = proxy_address.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        out.push_str(&format!("{:016x}", mix(h)));
    }
    out.truncate(40);
    out
}

/// splitmix64's finaliser: spreads FNV's output so nearby addresses get unrelated ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_epoch_defaults_to_zero_so_stored_views_still_load() {
        let old = r#"{"proxy":"p:1","node":"n:1","slots":[{"start":0,"end":16383}]}"#;
        let node: NodeView = serde_json::from_str(old).expect("a view stored before config epochs");
        assert_eq!(node.config_epoch, 0);
        assert_eq!(serde_json::to_string(&node).expect("json"), old, "0 is not written");
        let node = NodeView { config_epoch: 7, ..node };
        let back: NodeView = serde_json::from_str(&serde_json::to_string(&node).expect("json")).expect("json");
        assert_eq!(back.config_epoch, 7);
    }

    #[test]
    fn a_config_version_ignores_the_epoch_and_nothing_else() {
        let a = ProxyConfig {
            epoch: 5,
            proxy: "p:1".into(),
            cluster: Some(cluster(vec![("p:1", vec![SlotAssignment::plain(SlotRange::new(0, 16383))])])),
            migrations: Vec::new(),
        };
        let v = a.version();
        assert_eq!(v.len(), 32);
        assert_eq!(ProxyConfig { epoch: 9, ..a.clone() }.version(), v, "only the epoch moved");
        let through_json: ProxyConfig = serde_json::from_str(&serde_json::to_string(&a).expect("json")).expect("json");
        assert_eq!(through_json.version(), v, "what a proxy holds after SetConfig has the broker's version");
        let mut other = a.clone();
        if let Some(c) = other.cluster.as_mut() {
            c.epoch = 6;
        }
        assert_ne!(other.version(), v, "the cluster changed");
        assert_ne!(ProxyConfig { proxy: "p:2".into(), ..a.clone() }.version(), v);
        assert_ne!(ProxyConfig { cluster: None, ..a }.version(), v);
    }

    fn cluster(nodes: Vec<(&str, Vec<SlotAssignment>)>) -> ClusterView {
        ClusterView {
            name: "c".into(),
            epoch: 1,
            nodes: nodes
                .into_iter()
                .map(|(p, slots)| NodeView {
                    proxy: p.into(),
                    node: format!("node-{p}"),
                    slots,
                    peer: None,
                    replicas: Vec::new(),
                    handover: None,
                    config_epoch: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn even_split_covers_every_slot_once() {
        for n in [1, 2, 3, 5, 7, 100] {
            let ranges = split_slots_evenly(n);
            assert_eq!(ranges.len(), n);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[n - 1].end, 16383);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end + 1, w[1].start);
            }
            let sizes: Vec<usize> = ranges.iter().map(SlotRange::len).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn slot_range_serialises_as_a_pair() {
        let r: SlotRange = serde_json::from_str("[0,1000]").unwrap();
        assert_eq!(r, SlotRange::new(0, 1000));
        assert_eq!(serde_json::to_string(&r).unwrap(), "[0,1000]");
    }

    #[test]
    fn owners_follow_tags() {
        let mig = SlotAssignment { start: 0, end: 9, tag: Some(SlotTag::Migrating), migration: Some("m1".into()) };
        let imp = SlotAssignment { tag: Some(SlotTag::Importing), ..mig.clone() };
        let c = cluster(vec![("a", vec![mig]), ("b", vec![imp])]);
        let owners = c.slot_owners().unwrap();
        assert_eq!(owners[5], Some(0));
        assert_eq!(owners[10], None);
    }

    #[test]
    fn a_slot_owned_twice_is_refused() {
        let c = cluster(vec![
            ("a", vec![SlotAssignment::plain(SlotRange::new(0, 10))]),
            ("b", vec![SlotAssignment::plain(SlotRange::new(10, 20))]),
        ]);
        assert!(matches!(c.slot_owners(), Err(ModelError::SlotOwnedTwice { slot: 10, .. })));
        let bad = cluster(vec![("a", vec![SlotAssignment::plain(SlotRange::new(0, 16384))])]);
        assert!(matches!(bad.slot_owners(), Err(ModelError::BadRange(_))));
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        let a = node_id("127.0.0.1:6001");
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, node_id("127.0.0.1:6001"));
        assert_ne!(a, node_id("127.0.0.1:6002"));
    }

    #[test]
    fn a_node_without_peer_is_reached_at_its_proxy_address() {
        let json = r#"{"proxy":"127.0.0.1:6001","node":"redis1:6379","slots":[]}"#;
        let mut n: NodeView = serde_json::from_str(json).unwrap();
        assert_eq!((n.peer.as_deref(), n.peer_address()), (None, "127.0.0.1:6001"));
        assert_eq!(serde_json::to_string(&n).unwrap(), json, "no peer, no field: views stored before it stay equal");
        n.peer = Some("proxy1:6001".into());
        assert_eq!(n.peer_address(), "proxy1:6001");
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["peer"], "proxy1:6001");
        assert_eq!(serde_json::from_value::<NodeView>(v).unwrap(), n);
    }

    #[test]
    fn phase_names_agree_with_serde() {
        for p in MigrationPhase::ALL {
            let json = serde_json::to_value(p).unwrap();
            assert_eq!(json.as_str(), Some(p.as_str()), "{p:?}");
            assert_eq!(p.as_str().parse::<MigrationPhase>(), Ok(p));
            assert_eq!(serde_json::from_value::<MigrationPhase>(json).unwrap(), p);
            assert_eq!(p.to_string(), p.as_str());
        }
        // ALL holds each variant once, in order (Ord is the declaration order).
        assert!(MigrationPhase::ALL.windows(2).all(|w| w[0] < w[1]));
        for bad in ["Done", " done", "", "switch", "DONE"] {
            assert!(bad.parse::<MigrationPhase>().is_err(), "{bad:?}");
            assert!(serde_json::from_value::<MigrationPhase>(serde_json::json!(bad)).is_err(), "{bad:?}");
        }
        assert_eq!("nope".parse::<MigrationPhase>().unwrap_err().to_string(), "unknown phase \"nope\"");
    }

    #[test]
    fn mode_names_agree_with_serde() {
        for m in MigrationMode::ALL {
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json.as_str(), Some(m.as_str()), "{m:?}");
            assert_eq!(m.as_str().parse::<MigrationMode>(), Ok(m));
            assert_eq!(serde_json::from_value::<MigrationMode>(json).unwrap(), m);
            assert_eq!(m.to_string(), m.as_str());
        }
        let distinct: std::collections::HashSet<_> = MigrationMode::ALL.into_iter().collect();
        assert_eq!(distinct.len(), MigrationMode::ALL.len());
        for bad in ["Keys", "key", "", "slots"] {
            assert!(bad.parse::<MigrationMode>().is_err(), "{bad:?}");
            assert!(serde_json::from_value::<MigrationMode>(serde_json::json!(bad)).is_err(), "{bad:?}");
        }
    }
}
