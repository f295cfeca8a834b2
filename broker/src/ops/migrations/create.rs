//! A new migration: the checks of the request, the checks against the state, the edits.

use crate::error::ApiError;
use crate::ops::{Txn, MAX_RANGES_PER_MIGRATION, RETAINED_ENDED_MIGRATIONS};
use crate::slots;
use crate::state::{check_address, migration_id};
use sluice_common::api::{CreateMigration, Migration, PhaseTimestamps};
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, NodeView, SlotRange};

/// Where the destination of a new migration stands.
struct Destination {
    /// Its index among the cluster's nodes; `None` for a free proxy, which joins.
    index: Option<usize>,
    node: String,
    peer: Option<String>,
}

/// What the checks against the state found, for the edits.
struct Placement {
    src_index: usize,
    src_node: String,
    dst: Destination,
    /// The mode the migration runs in (`auto` resolved).
    mode: MigrationMode,
}

impl Txn {
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
    /// take a free proxy that plan reserved. Three steps, in the order that keeps a refusal
    /// harmless: the request alone, then the state, and only then the edits.
    pub(in crate::ops) fn create_migration_for(
        &mut self,
        cluster: &str,
        req: CreateMigration,
        plan: Option<&str>,
    ) -> Result<Migration, ApiError> {
        let ranges = validate_request(&req)?;
        let placement = self.check_allowed(cluster, &req, &ranges, plan)?;
        self.apply_migration(cluster, &req, ranges, placement)
    }

    /// Checks against the state: both sides may take part, the mode fits the destination, no
    /// keys-mode cycle, a replication destination is not importing already, and src owns every
    /// slot untagged. Answers where the two sides stand.
    fn check_allowed(
        &self,
        cluster: &str,
        req: &CreateMigration,
        ranges: &[SlotRange],
        plan: Option<&str>,
    ) -> Result<Placement, ApiError> {
        let view = self.cluster(cluster)?;
        let src_index = self.check_src(view, cluster, req)?;
        let src_node = view.nodes[src_index].node.clone();
        let dst = self.check_dst(view, cluster, req, plan)?;
        let mode = resolve_mode(cluster, req, dst.index.is_none())?;
        self.check_no_cycle(req, mode)?;
        self.check_no_replication_import(cluster, req)?;
        self.check_no_garbage_at_dst(cluster, req, ranges, mode)?;
        check_src_owns(view, cluster, req, ranges, src_index)?;
        Ok(Placement { src_index, src_node, dst, mode })
    }

    /// src is a node of the cluster and not failed; answers its index among the nodes.
    fn check_src(&self, view: &ClusterView, cluster: &str, req: &CreateMigration) -> Result<usize, ApiError> {
        if let Some(shard) = view.shard_of_replica(&req.src) {
            return Err(replica_refused("src", &req.src, &shard.proxy));
        }
        let Some(src_index) = view.nodes.iter().position(|n| n.proxy == req.src) else {
            let nodes: Vec<&str> = view.nodes.iter().map(|n| n.proxy.as_str()).collect();
            return Err(ApiError::conflict(format!(
                "src {} is not a node of cluster {cluster:?} (its nodes: {})",
                req.src,
                nodes.join(", ")
            )));
        };
        if self.state.proxies.get(&req.src).is_some_and(|p| p.failed) {
            return Err(ApiError::conflict(format!(
                "src {} is marked failed; a failed proxy cannot hand over slots",
                req.src
            )));
        }
        Ok(src_index)
    }

    /// dst is registered and not failed, and a node of the cluster or a free proxy (not
    /// reserved by a scale plan other than `plan`).
    fn check_dst(
        &self,
        view: &ClusterView,
        cluster: &str,
        req: &CreateMigration,
        plan: Option<&str>,
    ) -> Result<Destination, ApiError> {
        let dst_rec = self.state.proxies.get(&req.dst).ok_or_else(|| {
            ApiError::conflict(format!("dst {} is not registered; register it first (POST /api/v1/proxies)", req.dst))
        })?;
        if dst_rec.failed {
            return Err(ApiError::conflict(format!("dst {} is marked failed; pick another destination", req.dst)));
        }
        if let Some(shard) = view.shard_of_replica(&req.dst) {
            return Err(replica_refused("dst", &req.dst, &shard.proxy));
        }
        let index = view.nodes.iter().position(|n| n.proxy == req.dst);
        let node = match index {
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
        Ok(Destination { index, node, peer: dst_rec.peer_address.clone() })
    }

    /// A keys-mode migration must not close a cycle of keys-mode migrations (see
    /// [`Txn::keys_path`]).
    fn check_no_cycle(&self, req: &CreateMigration, mode: MigrationMode) -> Result<(), ApiError> {
        if mode != MigrationMode::Keys {
            return Ok(());
        }
        match self.keys_path(&req.dst, &req.src) {
            Some(path) => Err(ApiError::conflict(format!(
                "keys-mode migration(s) {} already move keys from {} towards {}: with this one, nodes would \
                 MIGRATE keys to each other in a cycle, and a Redis node blocks on MIGRATE until the other \
                 answers (both stall until the MIGRATE timeout); wait until they have switched",
                path.join(", "),
                req.dst,
                req.src
            ))),
            None => Ok(()),
        }
    }

    /// A replication destination takes one import at a time.
    fn check_no_replication_import(&self, cluster: &str, req: &CreateMigration) -> Result<(), ApiError> {
        match self
            .state
            .migrations_of(cluster)
            .map(|(_, m)| m)
            .find(|m| m.is_tagged() && m.dst == req.dst && m.mode.is_streamed())
        {
            Some(busy) => Err(ApiError::conflict(format!(
                "dst {} is already importing by {} (migration {}); a destination that imports by replication \
                 or filtered replication takes one import at a time, wait for it to commit",
                req.dst,
                busy.mode.as_str(),
                busy.id
            ))),
            None => Ok(()),
        }
    }

    /// A keys-mode import must not land on keys a streamed migration left at dst and has not
    /// collected yet: the destination of a committed replication holds a copy of every slot
    /// of its source until its garbage collector has passed (`done`), the source of a
    /// committed replication or filtered migration its old copy of the moved slots. Keys mode
    /// only `MIGRATE`s (with `REPLACE`) the keys its source still holds, and the collector never
    /// deletes in a slot its proxy imports or serves: a key deleted at the source since that
    /// copy was taken would come back from it (found by the chaos test: an acknowledged `DEL`
    /// undone). Filtered imports empty the moving slots at the destination first, and a
    /// replication import needs an empty node, so only keys mode waits. The same holds for the
    /// copy a streamed import into dst left when it ended before its switch, until a proxy
    /// reports it deleted ([`Migration::copy_deleted`]; a replication's copy is of every slot).
    fn check_no_garbage_at_dst(
        &self,
        cluster: &str,
        req: &CreateMigration,
        ranges: &[SlotRange],
        mode: MigrationMode,
    ) -> Result<(), ApiError> {
        if mode != MigrationMode::Keys {
            return Ok(());
        }
        let overlaps = |slots: &[SlotRange]| slots.iter().any(|a| ranges.iter().any(|b| a.overlaps(b)));
        let collecting = self.state.migrations_of(cluster).map(|(_, m)| m).find(|m| {
            let undeleted_copy =
                m.dst == req.dst && m.copy_may_remain() && (m.mode == MigrationMode::Replication || overlaps(&m.slots));
            undeleted_copy
                || (m.in_configs()
                    && !m.is_tagged()
                    && ((m.dst == req.dst && m.mode == MigrationMode::Replication)
                        || (m.src == req.dst && m.mode.is_streamed() && overlaps(&m.slots))))
        });
        match collecting {
            Some(m) => Err(ApiError::conflict(format!(
                "dst {} still holds keys migration {} ({}, {}) left there and has not deleted yet; a keys-mode \
                 import would bring back keys deleted since that copy: wait until {}, or use mode filtered",
                req.dst,
                m.id,
                m.mode.as_str(),
                m.phase,
                if m.phase.is_final() {
                    "a proxy reports that copy deleted (its copy_deleted)".to_string()
                } else {
                    format!("{} is done", m.id)
                }
            ))),
            None => Ok(()),
        }
    }

    /// The edits, once every check passed: a new migration number and record, the ranges
    /// tagged migrating on src and importing on dst (which joins the cluster if it was free),
    /// one epoch bump.
    fn apply_migration(
        &mut self,
        cluster: &str,
        req: &CreateMigration,
        ranges: Vec<SlotRange>,
        placement: Placement,
    ) -> Result<Migration, ApiError> {
        let Placement { src_index, src_node, dst, mode } = placement;
        let epoch = self.bump();
        let number = self.state.next_migration.max(1);
        self.state.next_migration = number + 1;
        let id = migration_id(number);
        let view = self.state.clusters.get_mut(cluster).ok_or_else(|| ApiError::internal("cluster vanished"))?;
        for r in &ranges {
            slots::tag_migrating(&mut view.nodes[src_index].slots, *r, &id);
        }
        let dst_index = match dst.index {
            Some(i) => i,
            None => {
                view.nodes.push(NodeView {
                    proxy: req.dst.clone(),
                    node: dst.node.clone(),
                    slots: Vec::new(),
                    peer: dst.peer,
                    replicas: Vec::new(),
                    handover: None,
                    config_epoch: 0,
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
            dst_node: dst.node,
            slots: ranges.clone(),
            mode,
            phase: MigrationPhase::Pending,
            error: None,
            progress: None,
            timestamps,
            updated_at: self.now.clone(),
            stopping: None,
            copy_deleted: false,
        };
        self.state.migrations.insert(number, migration.clone());
        self.prune_ended(cluster);
        let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        self.note(format!(
            "migration {id} of cluster {cluster} created: {} -> {} slots {} ({})",
            req.src,
            req.dst,
            list.join(","),
            mode.as_str()
        ));
        Ok(migration)
    }

    /// Forgets the oldest ended migrations past [`RETAINED_ENDED_MIGRATIONS`], but never one
    /// whose copy may remain at its destination: a keys-mode import checks it.
    fn prune_ended(&mut self, cluster: &str) {
        let ended: Vec<u64> = self
            .state
            .migrations_of(cluster)
            .filter(|(_, m)| m.phase.is_final() && !m.copy_may_remain())
            .map(|(n, _)| *n)
            .collect();
        if ended.len() > RETAINED_ENDED_MIGRATIONS {
            for n in &ended[..ended.len() - RETAINED_ENDED_MIGRATIONS] {
                self.state.migrations.remove(n);
            }
        }
    }
}

/// Checks of the request alone, whatever the state: two different valid addresses, between 1
/// and [`MAX_RANGES_PER_MIGRATION`] valid ranges that do not overlap. Answers the ranges sorted.
fn validate_request(req: &CreateMigration) -> Result<Vec<SlotRange>, ApiError> {
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
    Ok(ranges)
}

/// `auto` is replication into a free proxy and filtered replication into a node (the faster
/// of the two ways into a node that holds data: `bench/migration.sh --mode filtered`; a source
/// node that refuses `PSYNC` fails such a migration with that reason: ask for `keys` then);
/// replication into a node is refused (it would wipe the node's data with a resync).
fn resolve_mode(cluster: &str, req: &CreateMigration, dst_free: bool) -> Result<MigrationMode, ApiError> {
    match req.mode {
        MigrationMode::Auto if dst_free => Ok(MigrationMode::Replication),
        MigrationMode::Auto => Ok(MigrationMode::Filtered),
        MigrationMode::Replication if !dst_free => Err(ApiError::conflict(format!(
            "mode replication needs an empty destination, but dst {} already is a node of cluster {cluster:?}; \
             use mode filtered or keys",
            req.dst
        ))),
        m => Ok(m),
    }
}

/// Every slot of `ranges` is owned by src (node `src_index`) and not being moved already.
fn check_src_owns(
    view: &ClusterView,
    cluster: &str,
    req: &CreateMigration,
    ranges: &[SlotRange],
    src_index: usize,
) -> Result<(), ApiError> {
    let owners = slots::owners(view);
    for r in ranges {
        for s in r.slots() {
            match owners[usize::from(s)] {
                Some((i, a)) if i == src_index && a.tag.is_none() => {}
                Some((i, a)) if i == src_index => {
                    return Err(ApiError::conflict(format!(
                        "slot {s} (in [{}, {}]) is already being moved by running migration {}; wait for it or \
                         pick other slots",
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
    Ok(())
}

/// A shard's replica holds no slots of its own: migrations move slots between masters.
fn replica_refused(side: &str, proxy: &str, master: &str) -> ApiError {
    ApiError::conflict(format!(
        "{side} {proxy} is a replica of the shard of {master}; migrations move slots between masters \
         (use {master}, or a free proxy as dst)"
    ))
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;
    use crate::state::State;
    use sluice_common::api::CreateMigration;
    use sluice_common::model::MigrationPhase::*;
    use sluice_common::model::{MigrationMode, SlotRange};

    #[test]
    fn keys_mode_migrations_never_form_a_cycle() {
        // m-1: 6001 -> 6002 (keys). The way back would have both nodes MIGRATE to each other.
        let mut s = setup(false);
        let back = |slots: SlotRange| CreateMigration {
            src: addr(6002),
            dst: addr(6001),
            slots: vec![slots],
            mode: MigrationMode::Keys,
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
    fn keys_mode_waits_until_a_streamed_migration_collected_its_garbage_at_dst() {
        // m-1: 6001 gives 0-100 to the free 6003 by replication, which copies all of 6001.
        let mut s = setup(true);
        for phase in ["starting", "following", "switching", "switched"] {
            report(&mut s, T0, phase, None).expect(phase);
        }
        txn(&mut s, T0, |t| t.commit("shop", "m-1", None)).expect("commit");
        let keys = |src: u16, dst: u16, slots: SlotRange, mode: MigrationMode| CreateMigration {
            src: addr(src),
            dst: addr(dst),
            slots: vec![slots],
            mode,
        };
        // 6003 still holds 6001's copy of 200-300, 6001 its copy of 0-100 (both garbage).
        let before = s.clone();
        for req in [
            keys(6001, 6003, SlotRange::new(200, 300), MigrationMode::Keys),
            keys(6003, 6001, SlotRange::new(50, 60), MigrationMode::Keys),
        ] {
            let e = txn(&mut s, T0, |t| t.create_migration("shop", req)).expect_err("garbage at dst");
            assert_eq!(e.code, "conflict");
            assert!(e.message.contains("m-1") && e.message.contains("keys deleted since"), "{}", e.message);
            assert_eq!(s, before, "a refused migration changes nothing");
        }
        // Slots 6001 never gave away, and filtered imports (they empty the moving slots at
        // the destination first), are fine meanwhile.
        let mut s2 = s.clone();
        txn(&mut s2, T0, |t| {
            t.create_migration("shop", keys(6001, 6002, SlotRange::new(200, 300), MigrationMode::Keys))
        })
        .expect("no garbage at 6002");
        let mut s3 = s.clone();
        txn(&mut s3, T0, |t| {
            t.create_migration("shop", keys(6001, 6003, SlotRange::new(200, 300), MigrationMode::Filtered))
        })
        .expect("filtered empties the slots first");
        // Once m-1 is done (both collectors passed), keys mode is fine too.
        report(&mut s, T0, "cleaning", None).expect("cleaning");
        report(&mut s, T0, "done", None).expect("done");
        txn(&mut s, T0, |t| {
            t.create_migration("shop", keys(6001, 6003, SlotRange::new(200, 300), MigrationMode::Keys))
        })
        .expect("garbage collected");
    }

    #[test]
    fn keys_mode_waits_until_the_copy_of_an_import_that_ended_before_its_switch_is_deleted() {
        let mut s = shop(6001..=6003, 0);
        let req = |slots: SlotRange, mode: MigrationMode| CreateMigration {
            src: addr(6001),
            dst: addr(6002),
            slots: vec![slots],
            mode,
        };
        // m-1: a filtered import of 0-100 into 6002, aborted after its copy began.
        txn(&mut s, T0, |t| t.create_migration("shop", req(SlotRange::new(0, 100), MigrationMode::Filtered)))
            .expect("m-1");
        let e = txn(&mut s, T0, |t| t.report_copy_deleted("shop", "m-1")).expect_err("still running");
        assert_eq!(e.code, "conflict");
        report(&mut s, T0, "starting", None).expect("starting");
        txn(&mut s, T0, |t| t.stop("shop", "m-1", Aborted, "aborted on request".into(), None)).expect("abort");
        let before = s.clone();
        for slots in [SlotRange::new(0, 100), SlotRange::new(50, 150)] {
            let e = txn(&mut s, T0, |t| t.create_migration("shop", req(slots, MigrationMode::Keys)))
                .expect_err("the copy is still at 6002");
            assert_eq!(e.code, "conflict");
            assert!(e.message.contains("m-1") && e.message.contains("copy_deleted"), "{}", e.message);
            assert_eq!(s, before, "a refused migration changes nothing");
        }
        // Other slots, and a filtered import (it empties the moving slots first), are fine.
        let mut other = s.clone();
        txn(&mut other, T0, |t| t.create_migration("shop", req(SlotRange::new(200, 300), MigrationMode::Keys)))
            .expect("no copy of 200-300 at 6002");
        let mut filtered = s.clone();
        txn(&mut filtered, T0, |t| t.create_migration("shop", req(SlotRange::new(0, 100), MigrationMode::Filtered)))
            .expect("filtered empties the slots first");
        // Once a proxy reports the copy deleted (twice: no change the second time).
        let m = txn(&mut s, T0, |t| t.report_copy_deleted("shop", "m-1")).expect("copy deleted");
        assert!(m.copy_deleted && m.phase == Aborted, "{m:?}");
        let again = s.clone();
        txn(&mut s, T0, |t| t.report_copy_deleted("shop", "m-1")).expect("again");
        assert_eq!(s, again);
        let m2 = txn(&mut s, T0, |t| t.create_migration("shop", req(SlotRange::new(0, 100), MigrationMode::Keys)))
            .expect("nothing left at 6002");
        // Keys mode leaves no copy to report.
        let e = txn(&mut s, T0, |t| t.report_copy_deleted("shop", &m2.id)).expect_err("keys mode");
        assert_eq!(e.code, "conflict");
    }

    #[test]
    fn an_ended_import_whose_copy_may_remain_is_never_pruned() {
        let mut s = shop(6001..=6002, 0);
        let filtered = |slots: SlotRange| CreateMigration {
            src: addr(6001),
            dst: addr(6002),
            slots: vec![slots],
            mode: MigrationMode::Filtered,
        };
        let aborted = |s: &mut State, slots: SlotRange| {
            let m = txn(s, T0, |t| t.create_migration("shop", filtered(slots))).expect("created");
            txn(s, T0, |t| t.stop("shop", &m.id, Aborted, "aborted on request".into(), None)).expect("aborted");
            m.id
        };
        // m-1's copy is never reported deleted; the next ones' are.
        let first = aborted(&mut s, SlotRange::new(0, 100));
        for _ in 0..crate::ops::RETAINED_ENDED_MIGRATIONS + 5 {
            let id = aborted(&mut s, SlotRange::new(200, 300));
            txn(&mut s, T0, |t| t.report_copy_deleted("shop", &id)).expect("copy deleted");
        }
        txn(&mut s, T0, |t| t.create_migration("shop", filtered(SlotRange::new(400, 500)))).expect("prunes");
        assert!(s.migration("shop", &first).is_some(), "m-1 is kept: its copy may remain at 6002");
        assert!(s.migration("shop", "m-2").is_none(), "the oldest ended migrations go");
        let keys = CreateMigration { mode: MigrationMode::Keys, ..filtered(SlotRange::new(0, 100)) };
        let e = txn(&mut s, T0, |t| t.create_migration("shop", keys)).expect_err("still refused");
        assert!(e.message.contains(&first), "{}", e.message);
    }
}
