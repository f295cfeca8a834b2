//! A new migration: the checks of the request, the checks against the state, the edits.

use crate::error::ApiError;
use crate::ops::{Txn, MAX_RANGES_PER_MIGRATION, RETAINED_ENDED_MIGRATIONS};
use crate::slots;
use crate::state::{check_address, migration_id};
use sluice_common::api::{CreateMigration, Migration, PhaseTimestamps};
use sluice_common::model::{MigrationMode, MigrationPhase, NodeView};

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
    /// take a free proxy that plan reserved.
    pub(in crate::ops) fn create_migration_for(
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
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;
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
}
