//! The broker's HTTP API, as types: what `sluice-broker` answers and what the coordinator,
//! the `sluice` CLI and the tests send and read.
//!
//! Every body is JSON. The cluster and proxy-config bodies are the model types themselves
//! ([`ClusterView`], [`ProxyConfig`]), so the API and the proxies
//! can never disagree on their shape. `docs/broker-api.md` is the prose for these types.

use crate::model::{ClusterView, Epoch, MigrationMeta, MigrationMode, MigrationPhase, ProxyConfig, SlotRange};
use serde::{Deserialize, Serialize};

/// The error body of every non-2xx answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code`) and for people (`message`, which says what to fix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// One of `invalid` (400), `unauthorized` (401), `not_found` (404), `method_not_allowed`
    /// (405), `conflict` (409), `epoch_mismatch` (412), `payload_too_large` (413),
    /// `internal` (500).
    pub code: String,
    pub message: String,
}

/// `GET /api/v1/epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EpochResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
}

/// Where a proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ProxyState {
    /// Registered and part of no cluster: can be taken by a cluster creation, a scale-out
    /// or a migration.
    Free,
    /// A node of a cluster (possibly one that only imports slots so far).
    Serving,
    /// Marked failed by a failure report; never picked for new work.
    Failed,
}

/// A registered proxy, as `GET /api/v1/proxies` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProxyInfo {
    /// The client-facing address (`host:port`): the proxy's identity everywhere.
    pub address: String,
    /// The gRPC control address the coordinator pushes configs to.
    pub control_address: String,
    /// The Redis node behind the proxy, as the proxies reach it.
    pub node_address: String,
    /// Where the other proxies reach this proxy's data port, when that is not `address`
    /// (absent: `address`). Cluster views carry it as the node's `peer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    /// The cluster the proxy is a node of; `null` for a free proxy.
    pub cluster: Option<String>,
    pub state: ProxyState,
    /// Why the proxy was marked failed, if it is and a reason was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// A free proxy that a running scale plan of this cluster will bring in: no cluster
    /// creation, scale or migration of anyone else takes it meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<String>,
}

/// `GET /api/v1/proxies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProxyList {
    pub proxies: Vec<ProxyInfo>,
}

/// `POST /api/v1/proxies`: a proxy registers itself (or an operator registers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterProxy {
    pub address: String,
    pub control_address: String,
    pub node_address: String,
    /// Where the other proxies reach this proxy's data port (`--peer-announce`), when it is
    /// not `address`: in a container network the client-facing address may be a port
    /// published on the host, which the other proxies cannot reach. Absent or equal to
    /// `address`: the other proxies use `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
}

/// `PUT /api/v1/proxies/{address}/health`: a failure report (or its end). Status only: it
/// never bumps the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    pub failed: bool,
    /// Why, for operators (e.g. "no answer to PING for 5s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /api/v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterList {
    pub clusters: Vec<String>,
}

/// Which proxies a new cluster takes: a count of free proxies or a list of free proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ProxySelection {
    /// Take this many free proxies.
    Count(u64),
    /// Take exactly these proxies (all must be free).
    Addresses(Vec<String>),
}

/// `POST /api/v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// The shards' masters: a number of free proxies, or their addresses.
    pub proxies: ProxySelection,
    /// Replicas per shard, taken from the free proxies (default 0).
    #[serde(default)]
    pub replicas: u64,
}

/// `DELETE /api/v1/proxies/{address}` and `DELETE /api/v1/clusters/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    /// The proxy address or cluster name that was deleted.
    pub deleted: String,
    /// The global epoch after the deletion.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    /// The proxies the deletion set free (cluster deletion only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freed: Vec<String>,
}

/// `POST /api/v1/clusters/{name}/migrations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateMigration {
    /// The proxy that owns the slots now.
    pub src: String,
    /// The proxy that takes them: a node of the same cluster or a free proxy (it joins).
    pub dst: String,
    /// Inclusive `[start, end]` ranges, all owned (untagged) by `src`.
    pub slots: Vec<SlotRange>,
    #[serde(default)]
    pub mode: MigrationMode,
}

/// When a migration entered each phase (RFC 3339, UTC). A phase it skipped has no entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseTimestamps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
}

impl PhaseTimestamps {
    /// The entry of `phase`.
    pub fn get(&self, phase: MigrationPhase) -> Option<&str> {
        self.slot(phase).as_deref()
    }

    /// Records when `phase` was entered.
    pub fn set(&mut self, phase: MigrationPhase, at: String) {
        *self.slot_mut(phase) = Some(at);
    }

    fn slot(&self, phase: MigrationPhase) -> &Option<String> {
        match phase {
            MigrationPhase::Pending => &self.pending,
            MigrationPhase::Starting => &self.starting,
            MigrationPhase::Following => &self.following,
            MigrationPhase::Switching => &self.switching,
            MigrationPhase::Switched => &self.switched,
            MigrationPhase::Committed => &self.committed,
            MigrationPhase::Cleaning => &self.cleaning,
            MigrationPhase::Done => &self.done,
            MigrationPhase::Failed => &self.failed,
            MigrationPhase::Aborted => &self.aborted,
        }
    }

    fn slot_mut(&mut self, phase: MigrationPhase) -> &mut Option<String> {
        match phase {
            MigrationPhase::Pending => &mut self.pending,
            MigrationPhase::Starting => &mut self.starting,
            MigrationPhase::Following => &mut self.following,
            MigrationPhase::Switching => &mut self.switching,
            MigrationPhase::Switched => &mut self.switched,
            MigrationPhase::Committed => &mut self.committed,
            MigrationPhase::Cleaning => &mut self.cleaning,
            MigrationPhase::Done => &mut self.done,
            MigrationPhase::Failed => &mut self.failed,
            MigrationPhase::Aborted => &mut self.aborted,
        }
    }
}

/// A migration record: the seed's migration meta plus its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Migration {
    /// Short and unique for the broker's lifetime: `m-<n>`.
    pub id: String,
    /// The epoch at which the migration started (the epoch its creation produced).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    /// The global epoch the commit produced (absent until committed). The migration is clean
    /// on a proxy once that proxy's garbage pass ran at this epoch or later (its Status
    /// `clean_epoch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub committed_epoch: Option<Epoch>,
    pub cluster: String,
    /// Source proxy.
    pub src: String,
    /// Source proxy's Redis node.
    pub src_node: String,
    /// Destination proxy.
    pub dst: String,
    /// Destination proxy's Redis node.
    pub dst_node: String,
    pub slots: Vec<SlotRange>,
    /// The resolved mode: never `auto`.
    pub mode: MigrationMode,
    pub phase: MigrationPhase,
    /// Why the migration failed or was aborted, or the last error a report carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last progress the coordinator reported: a free-form JSON object (keys mode:
    /// `{"keys_moved": …, "keys_seen": …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub progress: Option<serde_json::Value>,
    /// When each phase was entered.
    pub timestamps: PhaseTimestamps,
    /// When the record last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// A stop asked for once the switch had started (`switching`, replication mode): the
    /// source is *fenced* (it makes no further switch attempt) and the migration ends as
    /// asked once the source confirms it never promoted the destination's node, or is
    /// committed if the switch completed first. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<StopIntent>,
    /// A replication or filtered import that ended before its switch (`aborted`, `failed`)
    /// left a copy of the moving slots on the destination's node: true once a proxy reported
    /// it deleted (`POST …/copy-deleted`). Until then a keys-mode import of those slots into
    /// that destination is refused: it would make the copy's keys live again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_deleted: bool,
}

/// A stop of a `switching` migration that waits for its source (see [`Migration::stopping`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StopIntent {
    /// The epoch that fenced the source: its confirmation counts only from a config of this
    /// epoch or later.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    /// How the migration ends once confirmed: `failed` or `aborted`.
    pub phase: MigrationPhase,
    /// Why it was stopped; the migration's `error` once it ends.
    pub reason: String,
}

impl Migration {
    /// The part both proxies must hold (seed: "Notices").
    pub fn meta(&self) -> MigrationMeta {
        MigrationMeta {
            id: self.id.clone(),
            epoch: self.epoch,
            cluster: self.cluster.clone(),
            src_proxy: self.src.clone(),
            src_node: self.src_node.clone(),
            dst_proxy: self.dst.clone(),
            dst_node: self.dst_node.clone(),
            slots: self.slots.clone(),
            mode: self.mode,
            switch_allowed: self.mode.is_streamed() && self.phase >= MigrationPhase::Switching && self.in_configs(),
            fenced: self.stopping.is_some() && self.is_tagged(),
        }
    }

    /// Whether the migration's tags are in the cluster metadata: created and neither
    /// committed nor ended.
    pub fn is_tagged(&self) -> bool {
        self.phase < MigrationPhase::Committed
    }

    /// Whether the migration travels in its source's and its destination's configs: from its
    /// creation until it ends (`done`, `failed`, `aborted`), so through `committed` and
    /// `cleaning` too, when the proxies delete the keys it left behind.
    pub fn in_configs(&self) -> bool {
        !self.phase.is_final()
    }

    /// A replication or filtered import that ended before its switch and whose copy at the
    /// destination nobody has reported deleted yet ([`Migration::copy_deleted`]).
    pub fn copy_may_remain(&self) -> bool {
        self.mode.is_streamed()
            && matches!(self.phase, MigrationPhase::Aborted | MigrationPhase::Failed)
            && !self.copy_deleted
    }
}

/// `GET /api/v1/clusters/{name}/migrations`, `GET /api/v1/migrations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationList {
    pub migrations: Vec<Migration>,
}

/// `POST /api/v1/clusters/{name}/migrations/{id}/progress`: a status report; phases never go
/// backwards. It does not bump the epoch, except the one that reaches `done`: the migration
/// then leaves its proxies' configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    /// One of `pending`, `starting`, `following`, `switching`, `switched` (before the
    /// commit) or `cleaning`, `done` (after it).
    pub phase: MigrationPhase,
    /// A free-form JSON object; replaces the previous one when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub progress: Option<serde_json::Value>,
    /// A non-fatal error worth showing (a fatal one goes to `/fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the migration entered `phase` (RFC 3339 UTC, e.g. as a proxy saw it), if known:
    /// the phase's timestamp instead of the broker's clock, but never later than now and
    /// never earlier than the timestamp of a phase before it. Used only when the report
    /// moves the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// `POST /api/v1/clusters/{name}/migrations/{id}/commit` (the body is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// The migration's epoch as the committer knows it; a different one is refused (409),
    /// so a stale coordinator cannot commit a migration it never saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub epoch: Option<Epoch>,
}

/// `POST …/abort` (optional body) and `POST …/fail` (`error` required).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Why the migration is stopped; recorded as the migration's `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The coordinator's confirmation that a fenced migration's source stopped: the source
    /// proxy, holding a config of this epoch, lists the migration's task as ended without
    /// having promoted the destination's node. Completes a stop that waits (`stopping`) when
    /// at least its epoch; ignored otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub source_stopped_epoch: Option<Epoch>,
}

/// `POST /api/v1/clusters/{name}/failover`: promote a replica of `master`'s shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// The shard's master now (a proxy address).
    pub master: String,
    /// The replica to promote; absent: the first of the shard's replicas not marked failed.
    /// A coordinator names the one with the highest replication offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<String>,
    /// Why (logged with the epoch change), e.g. `"master unreachable for 5s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hand over without losing a write: the master's proxy first holds the shard's writes
    /// and waits until the replica has all of them; the swap follows (answered at once, with
    /// the shard's `handover` set). The master must be up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub graceful: bool,
    /// Withdraw a graceful failover that has not happened yet (the master keeps the shard).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// `POST /api/v1/clusters/{name}/scale`: exactly one of `add` and `remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// How many free proxies join the cluster (scale-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<u64>,
    /// The nodes that give all their slots to the others and leave the cluster (scale-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove: Option<Vec<String>>,
    /// With `add`: replicas per new shard, free proxies too (default 0). Each joins its shard
    /// with the shard's first migration and follows its master from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
}

/// What a scale plan does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScaleKind {
    /// Free proxies join and take an even share of the slots.
    Add,
    /// Nodes give all their slots to the others and leave.
    Remove,
}

/// Where a scale plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScaleState {
    /// Steps are running or waiting for their turn.
    Running,
    /// Every step's migration is done.
    Done,
    /// A step's migration failed or was aborted, or a step could not start: no further step
    /// starts (steps already running finish). `error` says why.
    Failed,
}

/// One planned migration of a scale plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScaleStep {
    pub src: String,
    pub dst: String,
    /// Inclusive `[start, end]` ranges, owned by `src` when the plan was made.
    pub slots: Vec<SlotRange>,
    /// The migration's id, once the step has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
    /// The migration's phase, once the step has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
}

/// A scale plan as the broker stores it and shows it (one per cluster: the last one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScalePlanRecord {
    /// `scale-<epoch>`: the epoch the plan's creation produced.
    pub id: String,
    pub cluster: String,
    pub kind: ScaleKind,
    /// The proxies that join (`add`) or leave (`remove`).
    pub proxies: Vec<String>,
    /// With `add` and `replicas`: the replicas of each joining proxy's shard (reserved for the
    /// plan; they join with the shard's first migration).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub replicas: std::collections::BTreeMap<String, Vec<String>>,
    pub state: ScaleState,
    /// Why the plan failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The epoch the plan's creation produced.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    /// In the order they start (largest first).
    pub steps: Vec<ScaleStep>,
    /// Steps whose migration is done.
    pub done: usize,
    /// All steps.
    pub total: usize,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/v1/clusters/{name}/scale` → 202: the plan, and the migrations it started now
/// (at most `--scale-concurrency`, at one epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScalePlan {
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    pub plan: ScalePlanRecord,
    pub migrations: Vec<Migration>,
}

/// `GET /api/v1/clusters/{name}`: the cluster view (exactly the [`ClusterView`] the proxies
/// hold) plus, when the cluster has had a scale plan, the last one with its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterDetail {
    #[serde(flatten)]
    pub cluster: ClusterView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScalePlanRecord>,
}

/// One entry of `GET /api/v1/configs`: a proxy and the config it must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProxyConfigEntry {
    pub proxy: ProxyInfo,
    pub config: ProxyConfig,
    /// `config`'s [`ProxyConfig::version`]: the same for every epoch at which this proxy's
    /// config has the same content, so a proxy already holding it only needs the new epoch.
    /// Empty from a broker that predates it: then the coordinator always sends the config.
    #[serde(default)]
    pub config_version: String,
}

/// `GET /api/v1/configs`: every proxy's config at one epoch, in one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigsResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: Epoch,
    pub configs: Vec<ProxyConfigEntry>,
}

#[cfg(feature = "openapi")]
mod schema {
    //! [`SlotRange`] is serialised as a `[start, end]` pair, which a derive cannot see.

    use super::SlotRange;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
    use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};

    impl utoipa::PartialSchema for SlotRange {
        fn schema() -> RefOr<Schema> {
            let slot = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                .minimum(Some(0))
                .maximum(Some(16383));
            ArrayBuilder::new()
                .items(slot)
                .min_items(Some(2))
                .max_items(Some(2))
                .description(Some("An inclusive slot range `[start, end]`, 0 <= start <= end <= 16383."))
                .examples([serde_json::json!([0, 1000])])
                .into()
        }
    }

    impl utoipa::ToSchema for SlotRange {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_selection_takes_a_count_or_a_list() {
        let c: CreateCluster = serde_json::from_str(r#"{"name":"shop","proxies":3}"#).unwrap();
        assert_eq!(c.proxies, ProxySelection::Count(3));
        let c: CreateCluster = serde_json::from_str(r#"{"name":"shop","proxies":["a:1","b:2"]}"#).unwrap();
        assert_eq!(c.proxies, ProxySelection::Addresses(vec!["a:1".into(), "b:2".into()]));
    }

    #[test]
    fn create_migration_defaults_to_auto() {
        let m: CreateMigration = serde_json::from_str(r#"{"src":"a:1","dst":"b:2","slots":[[0,1000]]}"#).unwrap();
        assert_eq!(m.mode, MigrationMode::Auto);
        assert_eq!(m.slots, vec![SlotRange::new(0, 1000)]);
    }

    #[test]
    fn committed_epoch_is_optional_and_left_out_while_absent() {
        let json = r#"{"id":"m-1","epoch":6,"cluster":"shop","src":"a:1","src_node":"a:2","dst":"b:1",
            "dst_node":"b:2","slots":[[0,10]],"mode":"replication","phase":"pending","timestamps":{},
            "updated_at":"2026-01-01T00:00:00.000Z"}"#;
        let mut m: Migration = serde_json::from_str(json).unwrap();
        assert_eq!(m.committed_epoch, None, "records written before the field existed still load");
        assert!(!serde_json::to_string(&m).unwrap().contains("committed_epoch"));
        m.committed_epoch = Some(7);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["committed_epoch"], 7);
        assert_eq!(serde_json::from_value::<Migration>(v).unwrap(), m);
    }

    #[test]
    fn scale_takes_add_or_remove_and_the_cluster_detail_is_the_view_plus_scale() {
        let r: ScaleRequest = serde_json::from_str(r#"{"add":2}"#).unwrap();
        assert_eq!(r, ScaleRequest { add: Some(2), ..ScaleRequest::default() });
        let r: ScaleRequest = serde_json::from_str(r#"{"remove":["a:1"]}"#).unwrap();
        assert_eq!(r, ScaleRequest { remove: Some(vec!["a:1".into()]), ..ScaleRequest::default() });
        assert!(serde_json::from_str::<ScaleRequest>(r#"{"add":1,"x":1}"#).is_err());
        let view = ClusterView { name: "c".into(), epoch: 3, nodes: Vec::new() };
        let d = ClusterDetail { cluster: view.clone(), scale: None };
        assert_eq!(serde_json::to_value(&d).unwrap(), serde_json::to_value(&view).unwrap());
        let back: ClusterView = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, view);
    }

    #[test]
    fn timestamps_are_set_per_phase() {
        let mut t = PhaseTimestamps::default();
        t.set(MigrationPhase::Switched, "2024-01-01T00:00:00Z".into());
        assert_eq!(t.get(MigrationPhase::Switched), Some("2024-01-01T00:00:00Z"));
        assert_eq!(t.get(MigrationPhase::Pending), None);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"switched":"2024-01-01T00:00:00Z"}"#);
    }
}

/// `PUT /api/v1/coordinators/{id}`: a coordinator's heartbeat. Not metadata: the broker keeps
/// it in memory only and the epoch does not move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CoordinatorHeartbeat {
    /// How long the coordinator counts as live without another heartbeat (default 3000,
    /// 100..=60000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// One live coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorInfo {
    pub id: String,
    /// Until it drops out of the list unless it heartbeats again.
    pub expires_in_ms: u64,
}

/// `GET /api/v1/coordinators` (and the answer to a heartbeat): the live coordinators, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CoordinatorList {
    pub coordinators: Vec<CoordinatorInfo>,
}
