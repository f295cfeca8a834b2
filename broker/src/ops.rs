//! Every change the API can make, as checks followed by edits of a [`Txn`].
//!
//! The rule that keeps refusals harmless: each operation checks everything it can refuse for
//! *before* it edits anything, and the store only adopts a transaction's state when the
//! operation returned `Ok`. A metadata change calls [`Txn::bump`] (at most one bump per
//! transaction, however many records change); a status change (progress, health) does not.

use crate::error::ApiError;
use crate::slots;
use crate::state::{check_address, migration_id, valid_cluster_name, ProxyRecord, State};
use sluice_common::api::{
    CreateCluster, CreateMigration, HealthReport, Migration, PhaseTimestamps, ProxyInfo, ProxySelection, RegisterProxy,
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
}

impl Txn {
    pub fn new(state: State, now: String) -> Txn {
        let base_epoch = state.epoch;
        Txn { state, base_epoch, now, change: Vec::new() }
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
        if let Some(known) = self.state.proxies.get(&req.address) {
            if known.control_address == req.control_address && known.node_address == req.node_address {
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
            self.bump();
            self.note(format!("proxy {} re-registered with new addresses", req.address));
            let info = self.state.proxy_info(&self.state.proxies[&req.address]);
            return Ok((info, false));
        }
        let rec = ProxyRecord {
            address: req.address.clone(),
            control_address: req.control_address,
            node_address: req.node_address,
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
        // (proxy address, node address) of the chosen proxies, in slot order.
        let chosen: Vec<(String, String)> = match &req.proxies {
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
                free.into_iter().take(n).map(|p| (p.address.clone(), p.node_address.clone())).collect()
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
                    chosen.push((p.address.clone(), p.node_address.clone()));
                }
                chosen
            }
        };
        let epoch = self.bump();
        let nodes = chosen
            .iter()
            .zip(split_slots_evenly(chosen.len()))
            .map(|((proxy, node), r)| NodeView {
                proxy: proxy.clone(),
                node: node.clone(),
                slots: vec![SlotAssignment::plain(r)],
            })
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
        let epoch = self.bump();
        self.note(format!("cluster {name} deleted, freeing {}", freed.join(", ")));
        Ok((epoch, freed))
    }

    // ---- migrations ----

    /// Creates a migration after checking everything about it; see `docs/broker-api.md`.
    pub fn create_migration(&mut self, cluster: &str, req: CreateMigration) -> Result<Migration, ApiError> {
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
                view.nodes.push(NodeView { proxy: req.dst.clone(), node: dst_node.clone(), slots: Vec::new() });
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

    /// A progress report: status only, no epoch bump. Phases never go backwards.
    pub fn report_progress(
        &mut self,
        cluster: &str,
        id: &str,
        phase: &str,
        progress: Option<serde_json::Value>,
        error: Option<String>,
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
        let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        let before = m.clone();
        if target != current {
            m.phase = target;
            m.timestamps.set(target, self.now.clone());
        }
        if progress.is_some() {
            m.progress = progress;
        }
        if error.is_some() {
            m.error = error;
        }
        if *m != before {
            m.updated_at = self.now.clone();
        }
        Ok(m.clone())
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
        Ok(m)
    }

    /// Aborts (`phase` = aborted, an operator's call: before `switching`) or fails (`phase` =
    /// failed, the coordinator's call on a proxy's report: up to and including `switching`) a
    /// migration: tags cleared, the slots stay on src, a dst left without slots is free again.
    ///
    /// Why an abort stops earlier than a failure: once the source has started the switch, the
    /// destination may already have been promoted and taken writes. Only the proxies can tell,
    /// so from then on only their report (a `fail` from the coordinator) ends the migration
    /// before the commit.
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
            p if phase == MigrationPhase::Aborted && p >= MigrationPhase::Switching => {
                return Err(ApiError::conflict(format!(
                    "migration {id} is {}: the switch has started; the migration now finishes, or fails by itself \
                     if the switch cannot complete (the destination may already have been promoted and taken \
                     writes, which only the proxies can tell). To undo it, move the slots back with a new \
                     migration once it is done",
                    phase_name(p)
                )));
            }
            p if p >= MigrationPhase::Switched => {
                return Err(ApiError::conflict(format!(
                    "migration {id} is {}: dst already serves the slots, so it can no longer be {}; commit it \
                     (or move the slots back with a new migration)",
                    phase_name(p),
                    phase_name(phase)
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
        Ok(m)
    }

    /// Scale-out: each of `add` free proxies takes the upper half of the largest untagged range
    /// of the node with the most untagged slots (recounted after each pick). All the
    /// migrations are created in this one transaction, at one epoch.
    pub fn scale(&mut self, cluster: &str, add: u64) -> Result<Vec<Migration>, ApiError> {
        let max = u64::from(SLOT_COUNT);
        if add == 0 || add > max {
            return Err(ApiError::invalid(format!("add must be between 1 and {max}, not {add}")));
        }
        let view = self.cluster(cluster)?;
        let free: Vec<String> = self.state.free_proxies().iter().map(|p| p.address.clone()).collect();
        let add = usize::try_from(add).unwrap_or(usize::MAX);
        if free.len() < add {
            return Err(ApiError::conflict(format!(
                "scaling cluster {cluster:?} by {add} needs {add} free proxies but only {} are free; register \
                 more proxies (POST /api/v1/proxies) or add fewer",
                free.len()
            )));
        }
        // Plan on a copy of every node's untagged ranges.
        let mut plan: Vec<(String, Vec<SlotRange>)> =
            view.nodes.iter().map(|n| (n.proxy.clone(), slots::untagged(&n.slots))).collect();
        let mut moves = Vec::with_capacity(add);
        for dst in free.into_iter().take(add) {
            let pick = plan
                .iter()
                .enumerate()
                .filter(|(_, (_, ranges))| ranges.iter().any(|r| r.len() >= 2))
                .max_by(|(ia, (_, a)), (ib, (_, b))| slots::count(a).cmp(&slots::count(b)).then(ib.cmp(ia)))
                .map(|(i, _)| i);
            let Some(i) = pick else {
                return Err(ApiError::conflict(format!(
                    "cluster {cluster:?} has no untagged slot range of 2 or more slots left to split; add fewer \
                     proxies or wait for running migrations"
                )));
            };
            let ranges = &mut plan[i].1;
            let Some(j) = ranges
                .iter()
                .enumerate()
                .max_by(|(ja, a), (jb, b)| a.len().cmp(&b.len()).then(jb.cmp(ja)))
                .map(|(j, _)| j)
            else {
                return Err(ApiError::internal("scale planning lost a range"));
            };
            let r = ranges[j];
            let half = (r.len() / 2) as u16;
            let upper = SlotRange::new(r.end - half + 1, r.end);
            ranges[j] = SlotRange::new(r.start, r.end - half);
            moves.push((plan[i].0.clone(), dst, upper));
        }
        let mut created = Vec::with_capacity(moves.len());
        for (src, dst, range) in moves {
            let req = CreateMigration { src, dst, slots: vec![range], mode: MigrationMode::Auto };
            created.push(self.create_migration(cluster, req)?);
        }
        Ok(created)
    }
}

/// Drops nodes that hold no slot at all (a src that gave everything away, a dst whose only
/// import was aborted) and answers their proxies, which are free from now on.
fn remove_empty_nodes(view: &mut ClusterView) -> Vec<String> {
    let left: Vec<String> = view.nodes.iter().filter(|n| n.slots.is_empty()).map(|n| n.proxy.clone()).collect();
    view.nodes.retain(|n| !n.slots.is_empty());
    left
}

/// The phase as the API spells it.
pub fn phase_name(p: MigrationPhase) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{p:?}"))
}
