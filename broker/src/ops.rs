//! Every change the API can make, as checks followed by edits of a [`Txn`].
//!
//! The rule that keeps refusals harmless: each operation checks everything it can refuse for
//! *before* it edits anything, and the store only adopts a transaction's state when the
//! operation returned `Ok`. A metadata change calls [`Txn::bump`] (at most one bump per
//! transaction, however many records change); a status change (progress, health) does not.

use crate::config::DEFAULT_SCALE_CONCURRENCY;
use crate::error::ApiError;
use crate::state::{check_address, migration_id, valid_cluster_name, ProxyRecord, State};
use crate::{scale, slots};
use sluice_common::api::{
    CreateCluster, CreateMigration, HealthReport, Migration, PhaseTimestamps, ProxyInfo, ProxySelection, RegisterProxy,
    ScaleKind, ScalePlanRecord, ScaleRequest, ScaleState, ScaleStep,
};
use sluice_common::model::{
    split_slots_evenly, ClusterView, Epoch, MigrationMode, MigrationPhase, NodeView, SlotAssignment, SlotRange, SlotTag,
};
use sluice_common::slot::SLOT_COUNT;

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

    // ---- proxies ----

    /// Registers a proxy. Answers the proxy and whether it is new (201) or was known (200).
    pub fn register_proxy(&mut self, req: RegisterProxy) -> Result<(ProxyInfo, bool), ApiError> {
        check_address("address", &req.address).map_err(ApiError::invalid)?;
        check_address("control_address", &req.control_address).map_err(ApiError::invalid)?;
        check_address("node_address", &req.node_address).map_err(ApiError::invalid)?;
        if let Some(peer) = &req.peer_address {
            check_address("peer_address", peer).map_err(ApiError::invalid)?;
        }
        // A peer address equal to the client-facing one says nothing more: stored as absent, so
        // that giving it or not is the same registration.
        let peer_address = req.peer_address.filter(|p| *p != req.address);
        if let Some(known) = self.state.proxies.get(&req.address) {
            if known.control_address == req.control_address
                && known.node_address == req.node_address
                && known.peer_address == peer_address
            {
                return Ok((self.state.proxy_info(known), false));
            }
            if known.node_address != req.node_address {
                if let Some(cluster) = self.state.cluster_of(&req.address) {
                    return Err(ApiError::conflict(format!(
                        "proxy {} serves cluster {:?} with node {}; it cannot move to node {} while it \
                         serves (migrate its slots away first, or register the new node under another address)",
                        req.address, cluster.name, known.node_address, req.node_address
                    )));
                }
            }
            let rec = self.state.proxies.get_mut(&req.address).ok_or_else(|| ApiError::internal("proxy vanished"))?;
            rec.control_address = req.control_address;
            rec.node_address = req.node_address;
            let peer_changed = rec.peer_address != peer_address;
            rec.peer_address = peer_address.clone();
            let epoch = self.bump();
            if peer_changed {
                // A node's peer address travels in its cluster's view: the other proxies learn
                // the new one with their next config. A serving proxy may change it (unlike its
                // node): it is only where the same proxy is reached.
                let view = self.state.clusters.values_mut().find(|c| c.nodes.iter().any(|n| n.proxy == req.address));
                if let Some(view) = view {
                    for n in view.nodes.iter_mut().filter(|n| n.proxy == req.address) {
                        n.peer = peer_address.clone();
                    }
                    view.epoch = epoch;
                }
            }
            self.note(format!("proxy {} re-registered with new addresses", req.address));
            let info = self.state.proxy_info(&self.state.proxies[&req.address]);
            return Ok((info, false));
        }
        let rec = ProxyRecord {
            address: req.address.clone(),
            control_address: req.control_address,
            node_address: req.node_address,
            peer_address,
            failed: false,
            failure: None,
            registered_at: self.now.clone(),
        };
        let info = self.state.proxy_info(&rec);
        self.state.proxies.insert(req.address.clone(), rec);
        self.bump();
        self.note(format!("proxy {} registered", req.address));
        Ok((info, true))
    }

    pub fn delete_proxy(&mut self, address: &str) -> Result<Epoch, ApiError> {
        self.proxy(address)?;
        if let Some(cluster) = self.state.cluster_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is a node of cluster {:?}; only a free proxy can be deleted (migrate its \
                 slots away or delete the cluster first)",
                cluster.name
            )));
        }
        if let Some(m) = self.state.unfinished_migration_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} still has work in migration {} (phase {:?}); delete it once that is done",
                m.id, m.phase
            )));
        }
        if let Some(plan) = self.state.reserving_plan(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is reserved by scale plan {} of cluster {:?}, which will bring it in; delete it \
                 once the plan has ended",
                plan.id, plan.cluster
            )));
        }
        self.state.proxies.remove(address);
        let epoch = self.bump();
        self.note(format!("proxy {address} deleted"));
        Ok(epoch)
    }

    /// A failure report or its end: status only, no epoch bump.
    pub fn set_health(&mut self, address: &str, report: HealthReport) -> Result<ProxyInfo, ApiError> {
        self.proxy(address)?;
        let rec = self.state.proxies.get_mut(address).ok_or_else(|| ApiError::internal("proxy vanished"))?;
        if rec.failed != report.failed {
            tracing::info!(proxy = address, failed = report.failed, reason = ?report.reason, "proxy health changed");
        }
        rec.failed = report.failed;
        rec.failure = if report.failed { report.reason } else { None };
        let info = self.state.proxy_info(&self.state.proxies[address]);
        Ok(info)
    }

    // ---- clusters ----

    pub fn create_cluster(&mut self, req: CreateCluster) -> Result<ClusterView, ApiError> {
        if !valid_cluster_name(&req.name) {
            return Err(ApiError::invalid(format!(
                "cluster name {:?} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ -",
                req.name
            )));
        }
        let max = usize::from(SLOT_COUNT);
        // The chosen proxies as nodes without slots yet, in slot order.
        let chosen: Vec<NodeView> = match &req.proxies {
            ProxySelection::Count(n) => {
                let n = usize::try_from(*n).unwrap_or(usize::MAX);
                if n == 0 || n > max {
                    return Err(ApiError::invalid(format!("proxies must be between 1 and {max}, not {n}")));
                }
                if self.state.clusters.contains_key(&req.name) {
                    return Err(self.cluster_exists(&req.name));
                }
                let free = self.state.free_proxies();
                if free.len() < n {
                    return Err(ApiError::conflict(format!(
                        "cluster {:?} needs {n} free proxies but only {} are free; register more proxies \
                         (POST /api/v1/proxies) or ask for fewer",
                        req.name,
                        free.len()
                    )));
                }
                free.into_iter().take(n).map(|p| p.node_view()).collect()
            }
            ProxySelection::Addresses(list) => {
                if list.is_empty() || list.len() > max {
                    return Err(ApiError::invalid(format!(
                        "proxies must list between 1 and {max} addresses, not {}",
                        list.len()
                    )));
                }
                for (i, a) in list.iter().enumerate() {
                    check_address("proxy", a).map_err(ApiError::invalid)?;
                    if list[..i].contains(a) {
                        return Err(ApiError::invalid(format!("proxy {a} is listed twice")));
                    }
                }
                if self.state.clusters.contains_key(&req.name) {
                    return Err(self.cluster_exists(&req.name));
                }
                let mut chosen = Vec::with_capacity(list.len());
                for a in list {
                    let p = self.require_free(a, "the new cluster")?;
                    chosen.push(p.node_view());
                }
                chosen
            }
        };
        let epoch = self.bump();
        let ranges = split_slots_evenly(chosen.len());
        let nodes = chosen
            .into_iter()
            .zip(ranges)
            .map(|(n, r)| NodeView { slots: vec![SlotAssignment::plain(r)], ..n })
            .collect();
        let view = ClusterView { name: req.name.clone(), epoch, nodes };
        self.note(format!("cluster {} created on {} proxies", req.name, view.nodes.len()));
        self.state.clusters.insert(req.name, view.clone());
        Ok(view)
    }

    fn cluster_exists(&self, name: &str) -> ApiError {
        ApiError::conflict(format!("cluster {name:?} already exists; pick another name or delete it first"))
    }

    /// The proxy, if it is registered, not failed and in no cluster.
    fn require_free(&self, address: &str, for_what: &str) -> Result<&ProxyRecord, ApiError> {
        let rec = self.state.proxies.get(address).ok_or_else(|| {
            ApiError::conflict(format!(
                "proxy {address} is not registered; register it (POST /api/v1/proxies) before adding it to {for_what}"
            ))
        })?;
        if let Some(c) = self.state.cluster_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is not free: it is a node of cluster {:?}",
                c.name
            )));
        }
        if rec.failed {
            return Err(ApiError::conflict(format!(
                "proxy {address} is marked failed; clear it (PUT /api/v1/proxies/{address}/health \
                 {{\"failed\":false}}) or pick another"
            )));
        }
        if let Some(m) = self.state.unfinished_migration_of(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is not free yet: migration {} (phase {:?}) is still deleting the keys it left \
                 there; wait until it is done",
                m.id, m.phase
            )));
        }
        if let Some(plan) = self.state.reserving_plan(address) {
            return Err(ApiError::conflict(format!(
                "proxy {address} is not free: scale plan {} of cluster {:?} reserved it and will bring it in",
                plan.id, plan.cluster
            )));
        }
        Ok(rec)
    }

    /// Deletes a cluster and its migration records; its proxies become free.
    pub fn delete_cluster(&mut self, name: &str, force: bool) -> Result<(Epoch, Vec<String>), ApiError> {
        let cluster = self.cluster(name)?;
        let freed: Vec<String> = cluster.nodes.iter().map(|n| n.proxy.clone()).collect();
        let running: Vec<&str> =
            self.state.migrations_of(name).filter(|(_, m)| !m.phase.is_final()).map(|(_, m)| m.id.as_str()).collect();
        if !running.is_empty() && !force {
            return Err(ApiError::conflict(format!(
                "cluster {name:?} has running migrations ({}); wait for them to end, abort them, or delete \
                 with ?force=true",
                running.join(", ")
            )));
        }
        self.state.clusters.remove(name);
        self.state.migrations.retain(|_, m| m.cluster != name);
        self.state.scales.remove(name);
        let epoch = self.bump();
        self.note(format!("cluster {name} deleted, freeing {}", freed.join(", ")));
        Ok((epoch, freed))
    }

    // ---- migrations ----

    /// Creates a migration after checking everything about it; see `docs/broker-api.md`.
    pub fn create_migration(&mut self, cluster: &str, req: CreateMigration) -> Result<Migration, ApiError> {
        self.create_migration_for(cluster, req, None)
    }

    /// The keys-mode migrations, not committed yet, that lead from proxy `from` to proxy `to`
    /// (each one's dst is the next one's src), if any: their sources are still moving keys
    /// with `MIGRATE`, node to node. A new keys-mode migration `to` → `from` would close a
    /// cycle, and `MIGRATE` blocks the sending node until the receiving one answers: two nodes
    /// migrating to each other both wait (each unable to serve anyone) until the MIGRATE
    /// timeout, again and again. The chaos test (integration-tests/tests/chaos.rs) found that
    /// with two migrations in opposite directions between the same two nodes. The broker's
    /// phase may lag the proxies, but only behind: a migration tagged here may have
    /// switched already (then it no longer migrates), never the other way round.
    fn keys_path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let edges: Vec<(&str, &str, &str)> = self
            .state
            .migrations
            .values()
            .filter(|m| m.mode == MigrationMode::Keys && m.is_tagged())
            .map(|m| (m.src.as_str(), m.dst.as_str(), m.id.as_str()))
            .collect();
        // Breadth-first from `from`; `via[p]` is the migration that reached proxy p first.
        let mut via: std::collections::HashMap<&str, (&str, &str)> = std::collections::HashMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(at) = queue.pop_front() {
            if at == to {
                let mut path = Vec::new();
                let mut p = to;
                while let Some(&(prev, id)) = via.get(p) {
                    path.push(id.to_string());
                    p = prev;
                }
                path.reverse();
                return Some(path);
            }
            for &(src, dst, id) in &edges {
                if src == at && dst != from && !via.contains_key(dst) {
                    via.insert(dst, (at, id));
                    queue.push_back(dst);
                }
            }
        }
        None
    }

    /// [`Txn::create_migration`], for scale plan `plan` if given: the one caller allowed to
    /// take a free proxy that plan reserved.
    fn create_migration_for(
        &mut self,
        cluster: &str,
        req: CreateMigration,
        plan: Option<&str>,
    ) -> Result<Migration, ApiError> {
        // Checks of the request alone.
        check_address("src", &req.src).map_err(ApiError::invalid)?;
        check_address("dst", &req.dst).map_err(ApiError::invalid)?;
        if req.src == req.dst {
            return Err(ApiError::invalid(format!("src and dst are both {}; pick two different proxies", req.src)));
        }
        if req.slots.is_empty() {
            return Err(ApiError::invalid("slots is empty; give at least one [start, end] range"));
        }
        if req.slots.len() > MAX_RANGES_PER_MIGRATION {
            return Err(ApiError::invalid(format!(
                "slots lists {} ranges; one migration takes at most {MAX_RANGES_PER_MIGRATION} (merge adjacent \
                 ranges or split the move into several migrations)",
                req.slots.len()
            )));
        }
        let mut ranges = req.slots.clone();
        for r in &ranges {
            if r.validate().is_err() {
                return Err(ApiError::invalid(format!(
                    "slot range [{}, {}] is invalid: slots are 0..16383 and start must be <= end",
                    r.start, r.end
                )));
            }
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[0].overlaps(&w[1]) {
                return Err(ApiError::invalid(format!(
                    "slot ranges [{}, {}] and [{}, {}] overlap; list each slot once",
                    w[0].start, w[0].end, w[1].start, w[1].end
                )));
            }
        }

        // Checks against the state.
        let view = self.cluster(cluster)?;
        let Some(src_index) = view.nodes.iter().position(|n| n.proxy == req.src) else {
            let nodes: Vec<&str> = view.nodes.iter().map(|n| n.proxy.as_str()).collect();
            return Err(ApiError::conflict(format!(
                "src {} is not a node of cluster {cluster:?} (its nodes: {})",
                req.src,
                nodes.join(", ")
            )));
        };
        let src_node = view.nodes[src_index].node.clone();
        if self.state.proxies.get(&req.src).is_some_and(|p| p.failed) {
            return Err(ApiError::conflict(format!(
                "src {} is marked failed; a failed proxy cannot hand over slots",
                req.src
            )));
        }
        let dst_rec = self.state.proxies.get(&req.dst).ok_or_else(|| {
            ApiError::conflict(format!("dst {} is not registered; register it first (POST /api/v1/proxies)", req.dst))
        })?;
        if dst_rec.failed {
            return Err(ApiError::conflict(format!("dst {} is marked failed; pick another destination", req.dst)));
        }
        let dst_index = view.nodes.iter().position(|n| n.proxy == req.dst);
        let dst_peer = dst_rec.peer_address.clone();
        let dst_node = match dst_index {
            Some(i) => view.nodes[i].node.clone(),
            None => {
                if let Some(other) = self.state.cluster_of(&req.dst) {
                    return Err(ApiError::conflict(format!(
                        "dst {} is a node of cluster {:?}; the destination must be a node of {cluster:?} or a \
                         free proxy",
                        req.dst, other.name
                    )));
                }
                if let Some(reserving) = self.state.reserving_plan(&req.dst) {
                    if plan != Some(reserving.id.as_str()) {
                        return Err(ApiError::conflict(format!(
                            "dst {} is reserved by scale plan {} of cluster {:?}, which will bring it in; pick \
                             another destination",
                            req.dst, reserving.id, reserving.cluster
                        )));
                    }
                }
                dst_rec.node_address.clone()
            }
        };
        let dst_free = dst_index.is_none();
        let mode = match req.mode {
            MigrationMode::Auto if dst_free => MigrationMode::Replication,
            MigrationMode::Auto => MigrationMode::Keys,
            MigrationMode::Replication if !dst_free => {
                return Err(ApiError::conflict(format!(
                    "mode replication needs an empty destination, but dst {} already is a node of cluster \
                     {cluster:?}; use mode keys",
                    req.dst
                )));
            }
            m => m,
        };
        if mode == MigrationMode::Keys {
            if let Some(path) = self.keys_path(&req.dst, &req.src) {
                return Err(ApiError::conflict(format!(
                    "keys-mode migration(s) {} already move keys from {} towards {}: with this one, nodes would \
                     MIGRATE keys to each other in a cycle, and a Redis node blocks on MIGRATE until the other \
                     answers (both stall until the MIGRATE timeout); wait until they have switched",
                    path.join(", "),
                    req.dst,
                    req.src
                )));
            }
        }
        if let Some(busy) = self
            .state
            .migrations_of(cluster)
            .map(|(_, m)| m)
            .find(|m| m.is_tagged() && m.dst == req.dst && m.mode == MigrationMode::Replication)
        {
            return Err(ApiError::conflict(format!(
                "dst {} is already importing by replication (migration {}); a replication destination takes \
                 one import at a time, wait for it to commit",
                req.dst, busy.id
            )));
        }
        let owners = slots::owners(view);
        for r in &ranges {
            for s in r.slots() {
                match owners[usize::from(s)] {
                    Some((i, a)) if i == src_index && a.tag.is_none() => {}
                    Some((i, a)) if i == src_index => {
                        return Err(ApiError::conflict(format!(
                            "slot {s} (in [{}, {}]) is already being moved by running migration {}; wait for it \
                             or pick other slots",
                            r.start,
                            r.end,
                            a.migration.as_deref().unwrap_or("?")
                        )));
                    }
                    Some((i, _)) => {
                        return Err(ApiError::conflict(format!(
                            "slot {s} (in [{}, {}]) is owned by {}, not by src {}; migrate only slots src owns",
                            r.start, r.end, view.nodes[i].proxy, req.src
                        )));
                    }
                    None => {
                        return Err(ApiError::conflict(format!(
                            "slot {s} (in [{}, {}]) has no owner in cluster {cluster:?}",
                            r.start, r.end
                        )));
                    }
                }
            }
        }

        // All checks passed: edit.
        let epoch = self.bump();
        let number = self.state.next_migration.max(1);
        self.state.next_migration = number + 1;
        let id = migration_id(number);
        let view = self.state.clusters.get_mut(cluster).ok_or_else(|| ApiError::internal("cluster vanished"))?;
        for r in &ranges {
            slots::tag_migrating(&mut view.nodes[src_index].slots, *r, &id);
        }
        let dst_index = match dst_index {
            Some(i) => i,
            None => {
                view.nodes.push(NodeView {
                    proxy: req.dst.clone(),
                    node: dst_node.clone(),
                    slots: Vec::new(),
                    peer: dst_peer,
                });
                view.nodes.len() - 1
            }
        };
        for r in &ranges {
            slots::tag_importing(&mut view.nodes[dst_index].slots, *r, &id);
        }
        view.epoch = epoch;
        let mut timestamps = PhaseTimestamps::default();
        timestamps.set(MigrationPhase::Pending, self.now.clone());
        let migration = Migration {
            id: id.clone(),
            epoch,
            committed_epoch: None,
            cluster: cluster.to_string(),
            src: req.src.clone(),
            src_node,
            dst: req.dst.clone(),
            dst_node,
            slots: ranges.clone(),
            mode,
            phase: MigrationPhase::Pending,
            error: None,
            progress: None,
            timestamps,
            updated_at: self.now.clone(),
        };
        self.state.migrations.insert(number, migration.clone());
        self.prune_ended(cluster);
        let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        self.note(format!(
            "migration {id} of cluster {cluster} created: {} -> {} slots {} ({})",
            req.src,
            req.dst,
            list.join(","),
            serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        ));
        Ok(migration)
    }

    fn prune_ended(&mut self, cluster: &str) {
        let ended: Vec<u64> =
            self.state.migrations_of(cluster).filter(|(_, m)| m.phase.is_final()).map(|(n, _)| *n).collect();
        if ended.len() > RETAINED_ENDED_MIGRATIONS {
            for n in &ended[..ended.len() - RETAINED_ENDED_MIGRATIONS] {
                self.state.migrations.remove(n);
            }
        }
    }

    /// A progress report: status, no epoch bump, except for the report that reaches `done`,
    /// which takes the migration out of its proxies' configs (a metadata change, one bump).
    /// Phases never go backwards. `at`: when the phase was entered, if the reporter knows
    /// (see [`phase_time`]); it only matters when the phase moves.
    pub fn report_progress(
        &mut self,
        cluster: &str,
        id: &str,
        phase: &str,
        progress: Option<serde_json::Value>,
        error: Option<String>,
        at: Option<String>,
    ) -> Result<Migration, ApiError> {
        let number = self.migration_number(cluster, id)?;
        let m = &self.state.migrations[&number];
        let target: MigrationPhase =
            serde_json::from_value(serde_json::Value::String(phase.to_string())).map_err(|_| {
                ApiError::conflict(format!(
                    "unknown phase {phase:?}; report one of pending, starting, following, switching, switched, \
                     cleaning, done"
                ))
            })?;
        let progress = match progress {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => Some(v),
            Some(_) => return Err(ApiError::invalid("progress must be a JSON object")),
        };
        let at = match at {
            None => None,
            Some(text) => Some(humantime::parse_rfc3339(text.trim()).map_err(|e| {
                ApiError::invalid(format!(
                    "at {text:?} is not an RFC 3339 UTC timestamp like 2026-01-01T10:00:00.000Z ({e})"
                ))
            })?),
        };
        use MigrationPhase::*;
        let current = m.phase;
        if target != current {
            let refuse = |why: String| {
                Err(ApiError::conflict(format!(
                    "migration {id} is {}; it cannot report {}: {why}",
                    phase_name(current),
                    phase_name(target)
                )))
            };
            match target {
                Failed | Aborted => {
                    return refuse(format!(
                        "use POST /api/v1/clusters/{cluster}/migrations/{id}/{}",
                        if target == Failed { "fail" } else { "abort" }
                    ));
                }
                Committed => {
                    return refuse(format!("use POST /api/v1/clusters/{cluster}/migrations/{id}/commit"));
                }
                _ if current.is_final() => return refuse("it has already ended".into()),
                _ if target < current => return refuse("phases never go backwards".into()),
                Cleaning | Done if current < Committed => {
                    return refuse("it must be committed first (it has not switched and been committed)".into());
                }
                _ => {}
            }
        }
        let now = self.now.clone();
        let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        let before = m.clone();
        if target != current {
            let entered = phase_time(&m.timestamps, target, at, &now);
            m.phase = target;
            m.timestamps.set(target, entered);
        }
        if progress.is_some() {
            m.progress = progress;
        }
        if error.is_some() {
            m.error = error;
        }
        if *m != before {
            m.updated_at = now;
        }
        let m = m.clone();
        if m.mode == MigrationMode::Replication && current < Switching && target >= Switching {
            // The source promotes the destination's node only once its config says the
            // broker recorded this (`switch_allowed`): from here on nothing but the commit
            // ends the migration, so no abort can race a switch the record had not seen yet.
            self.bump();
            self.note(format!(
                "migration {id} of cluster {cluster} is switching: {} may now hand the slots to {}",
                m.src, m.dst
            ));
        }
        if target == Done && current != Done {
            // The migration leaves the configs of its source and its destination.
            self.bump();
            self.note(format!(
                "migration {id} of cluster {cluster} done: it leaves the configs of {} and {}",
                m.src, m.dst
            ));
        }
        self.sync_scales();
        Ok(m)
    }

    /// Commits a switched migration: the ranges move to dst, the tags go, a node left without
    /// slots leaves the cluster. Idempotent once committed.
    pub fn commit(&mut self, cluster: &str, id: &str, epoch: Option<Epoch>) -> Result<Migration, ApiError> {
        let number = self.migration_number(cluster, id)?;
        let m = &self.state.migrations[&number];
        if let Some(e) = epoch {
            if e != m.epoch {
                return Err(ApiError::conflict(format!(
                    "stale commit: migration {id} started at epoch {}, the commit names epoch {e}",
                    m.epoch
                )));
            }
        }
        match m.phase {
            MigrationPhase::Committed | MigrationPhase::Cleaning | MigrationPhase::Done => return Ok(m.clone()),
            MigrationPhase::Switched => {}
            other => {
                return Err(ApiError::conflict(format!(
                    "migration {id} is {}; only a switched migration can be committed (report phase switched first)",
                    phase_name(other)
                )));
            }
        }
        let (src, dst) = (m.src.clone(), m.dst.clone());
        let epoch = self.bump();
        let view = self.state.clusters.get_mut(cluster).ok_or_else(|| ApiError::internal("cluster vanished"))?;
        for node in &mut view.nodes {
            if node.proxy == src {
                slots::drop_tagged(&mut node.slots, SlotTag::Migrating, id);
            } else if node.proxy == dst {
                slots::untag(&mut node.slots, SlotTag::Importing, id);
            }
        }
        let left = remove_empty_nodes(view);
        view.epoch = epoch;
        let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        m.phase = MigrationPhase::Committed;
        m.committed_epoch = Some(epoch);
        m.timestamps.set(MigrationPhase::Committed, self.now.clone());
        m.updated_at = self.now.clone();
        let m = m.clone();
        let mut what = format!("migration {id} of cluster {cluster} committed: slots moved {src} -> {dst}");
        if !left.is_empty() {
            what.push_str(&format!("; {} left the cluster", left.join(", ")));
        }
        self.note(what);
        self.sync_scales();
        Ok(m)
    }

    /// Aborts (`phase` = aborted, an operator's call) or fails (`phase` = failed, the
    /// coordinator's call on a proxy's report) a migration before `switching`: tags cleared,
    /// the slots stay on src, a dst left without slots is free again.
    ///
    /// Why nothing ends it from `switching` on: recording `switching` is what allows the
    /// source to promote the destination's node (`switch_allowed` in the configs), after
    /// which the destination may take writes the source never sees. Before it, the source
    /// has promoted nothing whatever the proxies report, so ending the migration is safe even
    /// though the broker's phase lags them. A keys-mode migration is never aborted, and fails
    /// only while `pending` (see below).
    pub fn stop(
        &mut self,
        cluster: &str,
        id: &str,
        phase: MigrationPhase,
        error: String,
    ) -> Result<Migration, ApiError> {
        let number = self.migration_number(cluster, id)?;
        let m = &self.state.migrations[&number];
        match m.phase {
            MigrationPhase::Failed | MigrationPhase::Aborted => return Ok(m.clone()),
            p if p >= MigrationPhase::Switching => {
                return Err(ApiError::conflict(format!(
                    "migration {id} is {}: the switch has started, so it can no longer be {}; it finishes (the \
                     source may already have promoted the destination's node, which then takes writes; a switch \
                     that cannot complete now is retried until it does). To undo it, move the slots back with a \
                     new migration once it is done",
                    phase_name(p),
                    phase_name(phase)
                )));
            }
            // A keys-mode migration cannot be aborted even while `pending`: the broker's phase
            // lags the proxies. The source proxy starts moving keys (client commands pull
            // theirs, its scan moves the rest) as soon as it holds the config that tags the
            // slots, before the coordinator has reported `starting`; an abort then would give
            // the slots back to a source whose keys already live at the destination (lost
            // writes: found by the chaos test, integration-tests/tests/chaos.rs).
            p if m.mode == MigrationMode::Keys
                && (p >= MigrationPhase::Starting || phase == MigrationPhase::Aborted) =>
            {
                return Err(ApiError::conflict(format!(
                    "migration {id} moves keys and is {}: keys may already live at the destination (the source \
                     starts moving them as soon as it holds the migration), so the slots cannot go back to the \
                     source without them; it finishes by itself (move the slots back with a new migration once \
                     it is done)",
                    phase_name(p)
                )));
            }
            _ => {}
        }
        let (src, dst) = (m.src.clone(), m.dst.clone());
        let epoch = self.bump();
        let view = self.state.clusters.get_mut(cluster).ok_or_else(|| ApiError::internal("cluster vanished"))?;
        for node in &mut view.nodes {
            if node.proxy == src {
                slots::untag(&mut node.slots, SlotTag::Migrating, id);
            } else if node.proxy == dst {
                slots::drop_tagged(&mut node.slots, SlotTag::Importing, id);
            }
        }
        let left = remove_empty_nodes(view);
        view.epoch = epoch;
        let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        m.phase = phase;
        m.error = Some(error);
        m.timestamps.set(phase, self.now.clone());
        m.updated_at = self.now.clone();
        let m = m.clone();
        let mut what = format!("migration {id} of cluster {cluster} {}: slots stay on {src}", phase_name(phase));
        if !left.is_empty() {
            what.push_str(&format!("; {} left the cluster", left.join(", ")));
        }
        self.note(what);
        self.sync_scales();
        Ok(m)
    }

    // ---- scale plans ----

    /// Plans a scale-out (`add`) or a scale-in (`remove`) that leaves every node with an even
    /// share of the slots (see [`scale::plan`]), stores the plan and starts its first steps
    /// (at most `scale_concurrency`, never two sharing a proxy), all in this transaction at
    /// one epoch. Answers the plan and the migrations started now.
    pub fn scale(&mut self, cluster: &str, req: ScaleRequest) -> Result<(ScalePlanRecord, Vec<Migration>), ApiError> {
        match (req.add, req.remove) {
            (Some(add), None) => self.scale_add(cluster, add),
            (None, Some(remove)) => self.scale_remove(cluster, remove),
            _ => Err(ApiError::invalid(
                "give exactly one of add (how many free proxies join) and remove (which nodes leave)",
            )),
        }
    }

    fn scale_add(&mut self, cluster: &str, add: u64) -> Result<(ScalePlanRecord, Vec<Migration>), ApiError> {
        let max = u64::from(SLOT_COUNT);
        if add == 0 || add > max {
            return Err(ApiError::invalid(format!("add must be between 1 and {max}, not {add}")));
        }
        let view = self.cluster(cluster)?;
        let add = usize::try_from(add).unwrap_or(usize::MAX);
        let free: Vec<String> = self.state.free_proxies().iter().map(|p| p.address.clone()).collect();
        if free.len() < add {
            return Err(ApiError::conflict(format!(
                "scaling cluster {cluster:?} by {add} needs {add} free proxies but only {} are free; register \
                 more proxies (POST /api/v1/proxies) or add fewer",
                free.len()
            )));
        }
        if view.nodes.len() + add > usize::from(SLOT_COUNT) {
            return Err(ApiError::conflict(format!(
                "cluster {cluster:?} has {} nodes; with {add} more it would have more nodes than the {SLOT_COUNT} \
                 slots",
                view.nodes.len()
            )));
        }
        self.check_scale_idle(cluster)?;
        let joining: Vec<String> = free.into_iter().take(add).collect();
        let moves = scale::plan(&self.layout(cluster)?, &joining, &[], MAX_RANGES_PER_MIGRATION);
        self.begin_plan(cluster, ScaleKind::Add, joining, moves)
    }

    fn scale_remove(
        &mut self,
        cluster: &str,
        remove: Vec<String>,
    ) -> Result<(ScalePlanRecord, Vec<Migration>), ApiError> {
        if remove.is_empty() {
            return Err(ApiError::invalid("remove lists no proxy; name the nodes that leave the cluster"));
        }
        for (i, a) in remove.iter().enumerate() {
            check_address("proxy", a).map_err(ApiError::invalid)?;
            if remove[..i].contains(a) {
                return Err(ApiError::invalid(format!("proxy {a} is listed twice")));
            }
        }
        let view = self.cluster(cluster)?;
        let nodes: Vec<&str> = view.nodes.iter().map(|n| n.proxy.as_str()).collect();
        for a in &remove {
            if !self.state.proxies.contains_key(a) {
                return Err(ApiError::invalid(format!(
                    "proxy {a} is not registered; remove names nodes of cluster {cluster:?} (its nodes: {})",
                    nodes.join(", ")
                )));
            }
            if !nodes.contains(&a.as_str()) {
                return Err(ApiError::invalid(format!(
                    "proxy {a} is not a node of cluster {cluster:?} (its nodes: {})",
                    nodes.join(", ")
                )));
            }
        }
        if remove.len() >= nodes.len() {
            return Err(ApiError::invalid(format!(
                "remove names every node of cluster {cluster:?}; at least one must stay to take the slots \
                 (DELETE /api/v1/clusters/{cluster} frees them all)"
            )));
        }
        self.check_scale_idle(cluster)?;
        let moves = scale::plan(&self.layout(cluster)?, &[], &remove, MAX_RANGES_PER_MIGRATION);
        self.begin_plan(cluster, ScaleKind::Remove, remove, moves)
    }

    /// A scale plans from a settled layout: no plan and no migration of the cluster running.
    fn check_scale_idle(&self, cluster: &str) -> Result<(), ApiError> {
        if let Some(plan) = self.state.scales.get(cluster).filter(|p| p.state == ScaleState::Running) {
            return Err(ApiError::conflict(format!(
                "scale plan {} of cluster {cluster:?} is still running ({} of {} steps done); one plan at a time \
                 per cluster: wait for it to end (GET /api/v1/clusters/{cluster} shows its progress)",
                plan.id, plan.done, plan.total
            )));
        }
        let running: Vec<&str> = self
            .state
            .migrations_of(cluster)
            .filter(|(_, m)| !m.phase.is_final())
            .map(|(_, m)| m.id.as_str())
            .collect();
        if !running.is_empty() {
            return Err(ApiError::conflict(format!(
                "migrations of cluster {cluster:?} are still running ({}); a scale is planned from settled slots: \
                 wait until they are done",
                running.join(", ")
            )));
        }
        Ok(())
    }

    /// Every node of the cluster with the ranges it owns untagged, in cluster order.
    fn layout(&self, cluster: &str) -> Result<Vec<(String, Vec<SlotRange>)>, ApiError> {
        Ok(self.cluster(cluster)?.nodes.iter().map(|n| (n.proxy.clone(), slots::untagged(&n.slots))).collect())
    }

    /// Stores a new plan of `moves` and starts its first steps. Checks first: a failed proxy
    /// in any step refuses the whole plan (it could not hand over or take slots).
    fn begin_plan(
        &mut self,
        cluster: &str,
        kind: ScaleKind,
        proxies: Vec<String>,
        moves: Vec<scale::Move>,
    ) -> Result<(ScalePlanRecord, Vec<Migration>), ApiError> {
        for m in &moves {
            for p in [&m.src, &m.dst] {
                if self.state.proxies.get(p).is_some_and(|r| r.failed) {
                    return Err(ApiError::conflict(format!(
                        "proxy {p} is marked failed and the plan needs it to {} slots; clear it (PUT \
                         /api/v1/proxies/{p}/health {{\"failed\":false}}) or remove it from the plan",
                        if *p == m.src { "hand over" } else { "take" }
                    )));
                }
            }
        }
        if moves.is_empty() {
            return Err(ApiError::conflict(format!("cluster {cluster:?} needs no slot moved for this scale")));
        }
        let epoch = self.bump();
        let steps: Vec<ScaleStep> = moves
            .into_iter()
            .map(|m| ScaleStep { src: m.src, dst: m.dst, slots: m.slots, migration: None, phase: None })
            .collect();
        let id = format!("scale-{epoch}");
        let what = format!(
            "scale plan {id} of cluster {cluster}: {} {} in {} steps",
            if kind == ScaleKind::Add { "add" } else { "remove" },
            proxies.join(", "),
            steps.len()
        );
        let plan = ScalePlanRecord {
            id,
            cluster: cluster.to_string(),
            kind,
            proxies,
            state: ScaleState::Running,
            error: None,
            epoch,
            total: steps.len(),
            done: 0,
            steps,
            created_at: self.now.clone(),
            updated_at: self.now.clone(),
        };
        self.state.scales.insert(cluster.to_string(), plan);
        self.note(what);
        // At creation a step that cannot start refuses the whole call: nothing is stored.
        let started = self.start_steps(cluster)?;
        let plan = self.state.scales.get(cluster).cloned().ok_or_else(|| ApiError::internal("scale plan vanished"))?;
        Ok((plan, started))
    }

    /// Starts the plan's next steps in order: while fewer than `scale_concurrency` of its
    /// migrations are unfinished, each step not started yet whose source and destination are
    /// in no unfinished migration (of the plan or not) and in no step started in this round.
    /// Mode `auto`: an empty proxy that joins gets its first import by replication; once it is
    /// a node (that import done), the next import into it is by keys.
    fn start_steps(&mut self, cluster: &str) -> Result<Vec<Migration>, ApiError> {
        let k = self.scale_concurrency.max(1);
        let Some(plan) = self.state.scales.get(cluster).filter(|p| p.state == ScaleState::Running) else {
            return Ok(Vec::new());
        };
        let plan_id = plan.id.clone();
        let running =
            plan.steps.iter().filter(|s| s.migration.is_some() && !s.phase.is_some_and(|p| p.is_final())).count();
        let mut busy: std::collections::HashSet<&str> = self
            .state
            .migrations
            .values()
            .filter(|m| m.in_configs())
            .flat_map(|m| [m.src.as_str(), m.dst.as_str()])
            .collect();
        let mut picks = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            if running + picks.len() >= k {
                break;
            }
            if step.migration.is_some() || busy.contains(step.src.as_str()) || busy.contains(step.dst.as_str()) {
                continue;
            }
            busy.insert(&step.src);
            busy.insert(&step.dst);
            let req = CreateMigration {
                src: step.src.clone(),
                dst: step.dst.clone(),
                slots: step.slots.clone(),
                mode: MigrationMode::Auto,
            };
            picks.push((i, req));
        }
        let mut started = Vec::with_capacity(picks.len());
        for (i, req) in picks {
            let (src, dst) = (req.src.clone(), req.dst.clone());
            let m = self.create_migration_for(cluster, req, Some(&plan_id)).map_err(|e| {
                ApiError::new(
                    e.status,
                    e.code,
                    format!("scale plan {plan_id}: step {src} -> {dst} cannot start: {}", e.message),
                )
            })?;
            let now = self.now.clone();
            let plan = self.state.scales.get_mut(cluster).ok_or_else(|| ApiError::internal("scale plan vanished"))?;
            plan.steps[i].migration = Some(m.id.clone());
            plan.steps[i].phase = Some(m.phase);
            plan.updated_at = now;
            started.push(m);
        }
        if !started.is_empty() {
            let ids: Vec<&str> = started.iter().map(|m| m.id.as_str()).collect();
            self.note(format!("scale plan {plan_id} of cluster {cluster} started {}", ids.join(", ")));
        }
        Ok(started)
    }

    /// Brings every scale plan up to date after a migration changed: each started step's
    /// phase (status, like the migration's own), the plan's state (`failed` when a step's
    /// migration failed or was aborted, `done` when every step is done) and, when this
    /// transaction is a metadata change anyway (a migration reached `done`, failed, was
    /// aborted), the next steps. A step that cannot start then fails the plan: the change
    /// that triggered it (e.g. a `done` report) still goes through.
    fn sync_scales(&mut self) {
        let names: Vec<String> = self.state.scales.keys().cloned().collect();
        for name in names {
            self.sync_scale(&name);
        }
    }

    fn sync_scale(&mut self, cluster: &str) {
        let Some(before) = self.state.scales.get(cluster) else { return };
        let mut plan = before.clone();
        let mut failure = None;
        for step in &mut plan.steps {
            let Some(id) = &step.migration else { continue };
            let Some((_, m)) = self.state.migration(cluster, id) else { continue };
            step.phase = Some(m.phase);
            if matches!(m.phase, MigrationPhase::Failed | MigrationPhase::Aborted) && failure.is_none() {
                failure = Some(format!(
                    "step {} -> {} (migration {id}) {}: {}",
                    step.src,
                    step.dst,
                    phase_name(m.phase),
                    m.error.as_deref().unwrap_or("no reason given")
                ));
            }
        }
        plan.done = plan.steps.iter().filter(|s| s.phase == Some(MigrationPhase::Done)).count();
        let mut what = None;
        if plan.state == ScaleState::Running {
            if let Some(why) = failure {
                plan.state = ScaleState::Failed;
                what = Some(format!("scale plan {} of cluster {cluster} failed: {why}", plan.id));
                plan.error = Some(why);
            } else if plan.done == plan.total {
                plan.state = ScaleState::Done;
                what = Some(format!("scale plan {} of cluster {cluster} done", plan.id));
            }
        }
        if plan != *before {
            plan.updated_at = self.now.clone();
            self.state.scales.insert(cluster.to_string(), plan);
        }
        if let Some(what) = what {
            self.note(what);
        }
        if !self.bumped() {
            return;
        }
        if let Err(e) = self.start_steps(cluster) {
            let now = self.now.clone();
            if let Some(plan) = self.state.scales.get_mut(cluster) {
                plan.state = ScaleState::Failed;
                plan.error = Some(e.message.clone());
                plan.updated_at = now;
                let what = format!("scale plan {} of cluster {cluster} failed: {}", plan.id, e.message);
                self.note(what);
            }
        }
    }
}

/// Drops nodes that hold no slot at all (a src that gave everything away, a dst whose only
/// import was aborted) and answers their proxies, which are free from now on.
fn remove_empty_nodes(view: &mut ClusterView) -> Vec<String> {
    let left: Vec<String> = view.nodes.iter().filter(|n| n.slots.is_empty()).map(|n| n.proxy.clone()).collect();
    view.nodes.retain(|n| !n.slots.is_empty());
    left
}

/// The timestamp of `phase`, entered now by the broker's clock (`now`, RFC 3339) or at `at`
/// by the reporter's: never later than now (a reporter's clock may run ahead), and never
/// earlier than the timestamp of any phase before it in `timestamps` (nor its clock behind),
/// so the timestamps stay in the order of the phases; that bound wins over now should the
/// broker's own clock have stepped back. Formatted like every broker timestamp (milliseconds).
pub fn phase_time(
    timestamps: &PhaseTimestamps,
    phase: MigrationPhase,
    at: Option<std::time::SystemTime>,
    now: &str,
) -> String {
    use MigrationPhase::*;
    let Ok(now_time) = humantime::parse_rfc3339(now) else {
        return now.to_string();
    };
    let floor = [Pending, Starting, Following, Switching, Switched, Committed, Cleaning, Done]
        .into_iter()
        .filter(|p| *p < phase)
        .filter_map(|p| humantime::parse_rfc3339(timestamps.get(p)?).ok())
        .max();
    let mut t = at.map_or(now_time, |at| at.min(now_time));
    if let Some(floor) = floor {
        t = t.max(floor);
    }
    humantime::format_rfc3339_millis(t).to_string()
}

/// The phase as the API spells it.
pub fn phase_name(p: MigrationPhase) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{p:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationPhase::*;

    const T0: &str = "2026-01-01T10:00:00.000Z";

    fn addr(port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    /// Runs `f` on `state` as the store does at time `now`: the new state only when `f` agrees.
    fn txn<R>(state: &mut State, now: &str, f: impl FnOnce(&mut Txn) -> Result<R, ApiError>) -> Result<R, ApiError> {
        let mut t = Txn::new(state.clone(), now.to_string());
        let r = f(&mut t)?;
        *state = t.state;
        Ok(r)
    }

    /// Registers a proxy on each port (control on port + 1000, node on port + 2000).
    fn register(s: &mut State, ports: std::ops::RangeInclusive<u16>) {
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

    /// Cluster `shop` on 6001 and 6002, free 6003, and `m-1`: 6001 gives all its slots to 6002
    /// (keys mode) or, with `to_free`, slots 0-100 to the free 6003 (replication).
    fn setup(to_free: bool) -> State {
        let mut s = State::default();
        register(&mut s, 6001..=6003);
        let req =
            CreateCluster { name: "shop".into(), proxies: ProxySelection::Addresses(vec![addr(6001), addr(6002)]) };
        txn(&mut s, T0, |t| t.create_cluster(req)).expect("cluster");
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
                mode: MigrationMode::Auto,
            }
        };
        txn(&mut s, T0, |t| t.create_migration("shop", req)).expect("migration");
        s
    }

    fn report(s: &mut State, now: &str, phase: &str, at: Option<&str>) -> Result<Migration, ApiError> {
        txn(s, now, |t| t.report_progress("shop", "m-1", phase, None, None, at.map(str::to_string)))
    }

    fn ids(s: &State, port: u16) -> Vec<String> {
        s.proxy_config(&addr(port)).expect("registered").migrations.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_reported_time_is_kept_within_the_previous_phase_and_now() {
        let mut s = setup(true);
        let now = "2026-01-01T10:00:10.000Z";
        // Within bounds: taken as it is (in milliseconds, like every broker timestamp).
        let m = report(&mut s, now, "starting", Some("2026-01-01T10:00:01.123456Z")).expect("starting");
        assert_eq!(m.timestamps.get(Starting), Some("2026-01-01T10:00:01.123Z"));
        // Earlier than the phase before it (a proxy's clock behind): that phase's time.
        let m = report(&mut s, now, "following", Some("2026-01-01T09:59:00.000Z")).expect("following");
        assert_eq!(m.timestamps.get(Following), Some("2026-01-01T10:00:01.123Z"));
        // Later than now (a proxy's clock ahead): now.
        let m = report(&mut s, now, "switching", Some("2026-01-01T11:00:00.000Z")).expect("switching");
        assert_eq!(m.timestamps.get(Switching), Some(now));
        // Without `at`: now, as before.
        let later = "2026-01-01T10:00:11.000Z";
        let m = report(&mut s, later, "switched", None).expect("switched");
        assert_eq!(m.timestamps.get(Switched), Some(later));
        // The same phase again with another time changes nothing: the first entry stays.
        let before = s.clone();
        report(&mut s, later, "switched", Some("2026-01-01T10:00:10.500Z")).expect("again");
        assert_eq!(s, before);
        // Status only, except `switching`, which allows the source to promote the
        // destination: one bump, and the configs say so.
        assert_eq!(s.epoch, setup(true).epoch + 1);
        let config = s.proxy_config(&addr(6001)).expect("registered");
        assert!(config.migrations[0].switch_allowed, "{config:?}");
        let order: Vec<&str> =
            [Pending, Starting, Following, Switching, Switched].iter().filter_map(|p| m.timestamps.get(*p)).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    }

    #[test]
    fn the_previous_phase_bound_wins_over_a_clock_that_stepped_back() {
        let mut s = setup(true);
        report(&mut s, "2026-01-01T10:00:10.000Z", "starting", None).expect("starting");
        let m = report(&mut s, "2026-01-01T10:00:05.000Z", "following", Some("2026-01-01T10:00:04.000Z")).expect("f");
        assert_eq!(m.timestamps.get(Following), Some("2026-01-01T10:00:10.000Z"));
        let m = report(&mut s, "2026-01-01T10:00:06.000Z", "switching", None).expect("switching");
        assert_eq!(m.timestamps.get(Switching), Some("2026-01-01T10:00:10.000Z"));
    }

    #[test]
    fn an_invalid_at_is_refused_and_changes_nothing() {
        let mut s = setup(true);
        let before = s.clone();
        for bad in ["yesterday", "2026-01-01 10:00:00", "2026-13-01T10:00:00Z", "2026-01-01T10:00:00+02:00", ""] {
            let err = report(&mut s, T0, "starting", Some(bad)).expect_err(bad);
            assert_eq!(err.code, "invalid", "{bad}");
            assert!(err.message.contains("RFC 3339"), "{}", err.message);
        }
        assert_eq!(s, before);
    }

    #[test]
    fn a_migration_stays_in_both_configs_until_done() {
        let mut s = setup(false);
        let created = s.epoch;
        assert_eq!((ids(&s, 6001), ids(&s, 6002)), (vec!["m-1".to_string()], vec!["m-1".to_string()]));
        report(&mut s, T0, "switched", None).expect("switched");
        txn(&mut s, T0, |t| t.commit("shop", "m-1", None)).expect("commit");
        assert_eq!(s.epoch, created + 1);
        // The source gave everything away: it is free, its config has no cluster, and still
        // the migration, whose keys it must delete.
        let src = s.proxy_config(&addr(6001)).expect("registered");
        assert_eq!(src.cluster, None);
        assert_eq!(src.migrations, vec![s.migrations[&1].meta()]);
        assert_eq!(ids(&s, 6002), vec!["m-1".to_string()]);
        assert!(ids(&s, 6003).is_empty());
        report(&mut s, T0, "cleaning", None).expect("cleaning");
        assert_eq!(s.epoch, created + 1, "cleaning is status only");
        assert_eq!(ids(&s, 6001), vec!["m-1".to_string()]);
        // Done: out of both configs, in a change of its own.
        let done = txn(&mut s, T0, |t| {
            let m = t.report_progress("shop", "m-1", "done", None, None, None)?;
            assert!(t.bumped());
            Ok(m)
        })
        .expect("done");
        assert_eq!(done.phase, Done);
        assert_eq!(s.epoch, created + 2);
        assert!(ids(&s, 6001).is_empty() && ids(&s, 6002).is_empty());
        // Done again (another coordinator): no change, no bump.
        let before = s.clone();
        report(&mut s, T0, "done", None).expect("done again");
        assert_eq!(s, before);
        // Every config, one by one or all at once, is the same.
        for e in s.all_configs() {
            assert_eq!(Some(e.config), s.proxy_config(&e.proxy.address));
        }
    }

    #[test]
    fn a_step_that_cannot_start_fails_the_plan_not_the_done_report() {
        let mut s = State::default();
        register(&mut s, 6001..=6005);
        let req = CreateCluster { name: "shop".into(), proxies: ProxySelection::Count(3) };
        txn(&mut s, T0, |t| t.create_cluster(req)).expect("cluster");
        let one = |t: &mut Txn| t.scale_concurrency = 1;
        let (plan, started) = txn(&mut s, T0, |t| {
            one(t);
            t.scale("shop", ScaleRequest { add: Some(2), remove: None })
        })
        .expect("scale");
        assert_eq!((started.len(), plan.total), (1, 4));
        // The next step's destination fails before its turn.
        let health = HealthReport { failed: true, reason: None };
        txn(&mut s, T0, |t| t.set_health(&addr(6005), health)).expect("health");
        report(&mut s, T0, "switched", None).expect("switched");
        txn(&mut s, T0, |t| t.commit("shop", "m-1", None)).expect("commit");
        let epoch = s.epoch;
        let done = txn(&mut s, T0, |t| {
            one(t);
            t.report_progress("shop", "m-1", "done", None, None, None)
        })
        .expect("the done report goes through");
        assert_eq!(done.phase, Done);
        assert_eq!(s.epoch, epoch + 1);
        let plan = &s.scales["shop"];
        assert_eq!((plan.state, plan.done), (ScaleState::Failed, 1));
        let error = plan.error.as_deref().unwrap_or_default();
        assert!(error.contains("cannot start") && error.contains("failed"), "{error}");
        assert_eq!(s.migrations.len(), 1, "nothing else started");
        // 6005 is no longer reserved.
        assert!(s.reserving_plan(&addr(6005)).is_none());
    }

    #[test]
    fn a_keys_mode_migration_is_not_aborted_even_while_pending() {
        // Its source moves keys as soon as it holds the config, before the broker hears of it.
        let mut s = setup(false);
        assert_eq!(s.migrations[&1].phase, Pending);
        let before = s.clone();
        let e = txn(&mut s, T0, |t| t.stop("shop", "m-1", Aborted, "why".into())).expect_err("refused");
        assert_eq!(e.code, "conflict");
        assert!(e.message.contains("moves keys"), "{}", e.message);
        assert_eq!(s, before, "a refused abort changes nothing");
        // A proxy's failure report (the coordinator's fail) still ends it while pending.
        let m = txn(&mut s, T0, |t| t.stop("shop", "m-1", Failed, "why".into())).expect("fail");
        assert_eq!(m.phase, Failed);
    }

    #[test]
    fn keys_mode_migrations_never_form_a_cycle() {
        // m-1: 6001 -> 6002 (keys). The way back would have both nodes MIGRATE to each other.
        let mut s = setup(false);
        let back = |slots: SlotRange| CreateMigration {
            src: addr(6002),
            dst: addr(6001),
            slots: vec![slots],
            mode: MigrationMode::Auto,
        };
        let before = s.clone();
        let e = txn(&mut s, T0, |t| t.create_migration("shop", back(SlotRange::new(9000, 9100)))).expect_err("cycle");
        assert_eq!(e.code, "conflict");
        assert!(e.message.contains("m-1") && e.message.contains("cycle"), "{}", e.message);
        assert_eq!(s, before, "a refused migration changes nothing");
        // Once m-1 has committed (no more MIGRATE from 6001), the way back is fine.
        let mut s2 = s.clone();
        for m in s2.migrations.values_mut() {
            m.phase = Committed;
        }
        txn(&mut s2, T0, |t| t.create_migration("shop", back(SlotRange::new(9000, 9100)))).expect("no cycle");
    }

    #[test]
    fn ended_migrations_leave_the_configs() {
        for end in [Failed, Aborted] {
            let mut s = setup(true);
            assert_eq!(ids(&s, 6003), vec!["m-1".to_string()]);
            txn(&mut s, T0, |t| t.stop("shop", "m-1", end, "why".into())).expect("stop");
            assert!(ids(&s, 6001).is_empty() && ids(&s, 6003).is_empty(), "{end:?}");
        }
    }
}
