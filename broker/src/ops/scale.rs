//! Scale plans: planning a scale-out or scale-in as migrations, starting its steps a few at a
//! time, and following them as they end.

use super::{phase_name, Txn, MAX_RANGES_PER_MIGRATION};
use crate::error::ApiError;
use crate::state::check_address;
use crate::{scale, slots};
use sluice_common::api::{CreateMigration, Migration, ScaleKind, ScalePlanRecord, ScaleRequest, ScaleState, ScaleStep};
use sluice_common::model::{MigrationMode, MigrationPhase, ReplicaView, SlotRange};
use sluice_common::slot::SLOT_COUNT;
use std::collections::BTreeMap;

impl Txn {
    /// Plans a scale-out (`add`) or a scale-in (`remove`) that leaves every node with an even
    /// share of the slots (see [`scale::plan`]), stores the plan and starts its first steps
    /// (at most `scale_concurrency`, never two sharing a proxy), all in this transaction at
    /// one epoch. Answers the plan and the migrations started now.
    pub fn scale(&mut self, cluster: &str, req: ScaleRequest) -> Result<(ScalePlanRecord, Vec<Migration>), ApiError> {
        match (req.add, req.remove) {
            (Some(add), None) => self.scale_add(cluster, add, req.replicas.unwrap_or(0)),
            (None, Some(_)) if req.replicas.is_some() => {
                Err(ApiError::invalid("replicas goes with add: the shards that leave take their replicas along"))
            }
            (None, Some(remove)) => self.scale_remove(cluster, remove),
            _ => Err(ApiError::invalid(
                "give exactly one of add (how many free proxies join) and remove (which nodes leave)",
            )),
        }
    }

    fn scale_add(
        &mut self,
        cluster: &str,
        add: u64,
        replicas: u64,
    ) -> Result<(ScalePlanRecord, Vec<Migration>), ApiError> {
        let max = u64::from(SLOT_COUNT);
        if add == 0 || add > max {
            return Err(ApiError::invalid(format!("add must be between 1 and {max}, not {add}")));
        }
        if replicas > super::clusters::MAX_REPLICAS as u64 {
            return Err(ApiError::invalid(format!(
                "replicas must be between 0 and {} per shard, not {replicas}",
                super::clusters::MAX_REPLICAS
            )));
        }
        let view = self.cluster(cluster)?;
        let add = usize::try_from(add).unwrap_or(usize::MAX);
        let per_shard = usize::try_from(replicas).unwrap_or(usize::MAX);
        let needed = add.saturating_mul(1 + per_shard);
        let mut free: Vec<String> = self.state.free_proxies().iter().map(|p| p.address.clone()).collect();
        if free.len() < needed {
            return Err(ApiError::conflict(format!(
                "scaling cluster {cluster:?} by {add} shards of {} proxies needs {needed} free proxies but only {} \
                 are free; register more proxies (POST /api/v1/proxies) or add fewer",
                1 + per_shard,
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
        let spare = free.split_off(add);
        let joining = free;
        let shard_replicas: BTreeMap<String, Vec<String>> = joining
            .iter()
            .zip(spare.chunks(per_shard.max(1)))
            .filter(|_| per_shard > 0)
            .map(|(master, replicas)| (master.clone(), replicas.to_vec()))
            .collect();
        let moves = scale::plan(&self.layout(cluster)?, &joining, &[], MAX_RANGES_PER_MIGRATION);
        self.begin_plan(cluster, ScaleKind::Add, joining, shard_replicas, moves)
    }

    /// Gives each node of `cluster` that joined through a running scale plan the replicas the
    /// plan reserved for it, once it is a node (its first migration created it). A replica
    /// joins with an empty node and follows its master from then on, as a chained replica
    /// while the master itself still copies its first import by replication.
    fn attach_planned_replicas(&mut self, cluster: &str) {
        let Some(plan) = self.state.scales.get(cluster).filter(|p| p.state == ScaleState::Running) else {
            return;
        };
        let planned = plan.replicas.clone();
        let mut attached = Vec::new();
        for (master, replicas) in planned {
            let views: Vec<ReplicaView> =
                replicas.iter().filter_map(|r| self.state.proxies.get(r)).map(|p| p.replica_view()).collect();
            let Some(view) = self.state.clusters.get_mut(cluster) else { return };
            let Some(node) = view.nodes.iter_mut().find(|n| n.proxy == master) else { continue };
            if node.replicas.is_empty() && !views.is_empty() {
                node.replicas = views;
                attached.push(master.clone());
            }
            if let Some(plan) = self.state.scales.get_mut(cluster) {
                if attached.contains(&master) {
                    plan.replicas.remove(&master);
                }
            }
        }
        if !attached.is_empty() {
            self.note(format!("replicas of {} joined cluster {cluster}", attached.join(", ")));
        }
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
        self.begin_plan(cluster, ScaleKind::Remove, remove, BTreeMap::new(), moves)
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
        replicas: BTreeMap<String, Vec<String>>,
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
            replicas,
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
            self.attach_planned_replicas(cluster);
        }
        Ok(started)
    }

    /// Brings every scale plan up to date after a migration changed: each started step's
    /// phase (status, like the migration's own), the plan's state (`failed` when a step's
    /// migration failed or was aborted, `done` when every step is done) and, when this
    /// transaction is a metadata change anyway (a migration reached `done`, failed, was
    /// aborted), the next steps. A step that cannot start then fails the plan: the change
    /// that triggered it (e.g. a `done` report) still goes through.
    pub(super) fn sync_scales(&mut self) {
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

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;
    use crate::ops::Txn;
    use crate::state::State;
    use sluice_common::api::{CreateCluster, HealthReport, ProxySelection, ScaleRequest, ScaleState};
    use sluice_common::model::MigrationPhase::*;

    #[test]
    fn a_step_that_cannot_start_fails_the_plan_not_the_done_report() {
        let mut s = State::default();
        register(&mut s, 6001..=6005);
        let req = CreateCluster { name: "shop".into(), proxies: ProxySelection::Count(3), replicas: 0 };
        txn(&mut s, T0, |t| t.create_cluster(req)).expect("cluster");
        let one = |t: &mut Txn| t.scale_concurrency = 1;
        let (plan, started) = txn(&mut s, T0, |t| {
            one(t);
            t.scale("shop", ScaleRequest { add: Some(2), ..ScaleRequest::default() })
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
}
