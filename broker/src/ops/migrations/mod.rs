//! Migrations after their creation ([`create`]): progress reports, the commit, abort and
//! fail, and the phase timestamps.

mod create;

use crate::error::ApiError;
use crate::ops::Txn;
use crate::slots;
use sluice_common::api::{Migration, PhaseTimestamps, StopIntent};
use sluice_common::model::{ClusterView, Epoch, MigrationMode, MigrationPhase, SlotTag};

impl Txn {
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
        let current = self.state.migrations[&number].phase;
        let target = parse_phase(phase)?;
        let progress = progress_object(progress)?;
        let at = parse_at(at)?;
        if target != current {
            check_reported_move(cluster, id, current, target)?;
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
        self.note_reported_move(&m, current, target);
        self.sync_scales();
        Ok(m)
    }

    /// A proxy's word that the destination's node no longer holds the copy a replication or
    /// filtered import left there when it ended before its switch ([`Migration::copy_deleted`]):
    /// status only, no epoch bump. Again: no change. Any other migration: 409.
    pub fn report_copy_deleted(&mut self, cluster: &str, id: &str) -> Result<Migration, ApiError> {
        let number = self.migration_number(cluster, id)?;
        let now = self.now.clone();
        let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        if !(m.mode.is_streamed() && matches!(m.phase, MigrationPhase::Aborted | MigrationPhase::Failed)) {
            return Err(ApiError::conflict(format!(
                "migration {id} is {} ({}): only a replication or filtered import that ended before its switch \
                 (aborted or failed) leaves a copy at its destination",
                phase_name(m.phase),
                m.mode.as_str()
            )));
        }
        if !m.copy_deleted {
            m.copy_deleted = true;
            m.updated_at = now;
        }
        Ok(m.clone())
    }

    /// The metadata changes a reported phase makes: entering `switching` (streamed modes)
    /// and reaching `done` each bump the epoch; other reports are status only.
    fn note_reported_move(&mut self, m: &Migration, current: MigrationPhase, target: MigrationPhase) {
        use MigrationPhase::*;
        let (id, cluster) = (&m.id, &m.cluster);
        if m.mode.is_streamed() && current < Switching && target >= Switching {
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
        let what = format!("migration {id} of cluster {cluster} committed: slots moved {} -> {}", m.src, m.dst);
        self.end_tags(cluster, id, number, MigrationPhase::Committed, what, |m, epoch| m.committed_epoch = Some(epoch))
    }

    /// Aborts (`phase` = aborted, an operator's call) or fails (`phase` = failed, the
    /// coordinator's call) a migration that has not switched: tags cleared, the slots stay on
    /// src, a dst left without slots is free again.
    ///
    /// Before `switching` it ends at once. Recording `switching` is what allows the source to
    /// promote the destination's node (`switch_allowed` in the configs), after which the
    /// destination may take writes the source never sees; before it, the source has promoted
    /// nothing whatever the proxies report, so ending the migration is safe even though the
    /// broker's phase lags them.
    ///
    /// From `switching` (replication mode) a stop takes two calls (`Txn::fence_or_end`):
    /// the first *fences* the source (the configs tell it to make no further attempt;
    /// `stopping` records the request), the second — the coordinator's, once the source
    /// confirms from a fenced config that it stopped without promoting — ends it. A switch
    /// that completes meanwhile wins: the migration is committed instead. From `switched` on
    /// nothing but the commit ends it. A keys-mode migration is never aborted, and fails only
    /// while `pending` (see below).
    pub fn stop(
        &mut self,
        cluster: &str,
        id: &str,
        phase: MigrationPhase,
        error: String,
        source_stopped_epoch: Option<Epoch>,
    ) -> Result<Migration, ApiError> {
        let number = self.migration_number(cluster, id)?;
        let m = &self.state.migrations[&number];
        match m.phase {
            MigrationPhase::Failed | MigrationPhase::Aborted => return Ok(m.clone()),
            MigrationPhase::Switching if m.mode.is_streamed() => {
                return self.fence_or_end(cluster, id, number, phase, error, source_stopped_epoch);
            }
            p if p >= MigrationPhase::Switching => {
                return Err(ApiError::conflict(format!(
                    "migration {id} is {}: the destination's node is promoted and may have taken writes, so it can \
                     no longer be {}; it is committed. To undo it, move the slots back with a new migration once it \
                     is done",
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
        let what = format!("migration {id} of cluster {cluster} {}: slots stay on {}", phase_name(phase), m.src);
        self.end_tags(cluster, id, number, phase, what, |m, _| m.error = Some(error))
    }

    /// A stop of a replication-mode migration in `switching`. The first call fences: it
    /// records `stopping` at a new epoch, whose configs tell the source (`fenced`) to make
    /// no further switch attempt. The migration ends only on a call that carries the
    /// source's confirmation (`source_stopped_epoch`, at least that epoch): the source,
    /// holding a fenced config, lists its task as ended without a promotion.
    ///
    /// Why that is enough: only the source ever promotes the destination's node, an attempt
    /// that promotes ends its task `switched` (never `failed`), and a source holding a fenced
    /// config starts no attempt (a restarted one first settles whether an earlier run
    /// promoted). So once confirmed, the destination's node was never promoted and never
    /// will be: it took no write, nobody routes to it after the end, and its proxy empties
    /// it (the copy of an ended migration) when it is back. The slots stay on the source,
    /// which has every write. Calls in between change nothing.
    fn fence_or_end(
        &mut self,
        cluster: &str,
        id: &str,
        number: u64,
        phase: MigrationPhase,
        error: String,
        source_stopped_epoch: Option<Epoch>,
    ) -> Result<Migration, ApiError> {
        let m = &self.state.migrations[&number];
        let Some(stopping) = m.stopping.clone() else {
            let epoch = self.bump();
            let now = self.now.clone();
            let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
            m.stopping = Some(StopIntent { epoch, phase, reason: error.clone() });
            m.error = Some(error);
            m.updated_at = now;
            let m = m.clone();
            self.note(format!(
                "migration {id} of cluster {cluster} is switching: its source {} is fenced; it ends {} once the \
                 source confirms it promoted nothing",
                m.src,
                phase_name(phase)
            ));
            return Ok(m);
        };
        if source_stopped_epoch.is_none_or(|e| e < stopping.epoch) {
            return Ok(m.clone());
        }
        let what = format!(
            "migration {id} of cluster {cluster} {} (its source confirmed it stopped without a switch): slots stay \
             on {}",
            phase_name(stopping.phase),
            m.src
        );
        let reason = stopping.reason;
        self.end_tags(cluster, id, number, stopping.phase, what, |m, _| m.error = Some(reason))
    }

    /// The edits a commit and a stop share: the migration's tags go, and with them its slots
    /// from one side: from src when it is `committed` (dst keeps them), from dst when it is
    /// aborted or failed (src keeps them). A node left without slots leaves the cluster (and
    /// `what`, the log note, says so). The migration enters `phase` now, `edit` records the
    /// rest (at the new epoch: one bump), and the scale plans follow.
    fn end_tags(
        &mut self,
        cluster: &str,
        id: &str,
        number: u64,
        phase: MigrationPhase,
        mut what: String,
        edit: impl FnOnce(&mut Migration, Epoch),
    ) -> Result<Migration, ApiError> {
        let to_dst = phase == MigrationPhase::Committed;
        let m = self.state.migrations.get(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        let (src, dst) = (m.src.clone(), m.dst.clone());
        let epoch = self.bump();
        let view = self.state.clusters.get_mut(cluster).ok_or_else(|| ApiError::internal("cluster vanished"))?;
        // A commit changes the slots' owner: the destination ends with the greatest config
        // epoch, as a native node that `CLUSTER SETSLOT … NODE` gives an imported slot: bumped
        // to the greatest plus one unless it holds the greatest already (Redis's
        // `clusterBumpConfigEpochWithoutConsensus`).
        let current = view.current_config_epoch();
        for node in &mut view.nodes {
            if to_dst && node.proxy == dst && (node.config_epoch == 0 || node.config_epoch != current) {
                node.config_epoch = current + 1;
            }
            let (tag, keeps) = if node.proxy == src {
                (SlotTag::Migrating, !to_dst)
            } else if node.proxy == dst {
                (SlotTag::Importing, to_dst)
            } else {
                continue;
            };
            if keeps {
                slots::untag(&mut node.slots, tag, id);
            } else {
                slots::drop_tagged(&mut node.slots, tag, id);
            }
        }
        let left = remove_empty_nodes(view);
        view.epoch = epoch;
        let m = self.state.migrations.get_mut(&number).ok_or_else(|| ApiError::internal("migration vanished"))?;
        m.phase = phase;
        edit(m, epoch);
        m.timestamps.set(phase, self.now.clone());
        m.updated_at = self.now.clone();
        let m = m.clone();
        if !left.is_empty() {
            what.push_str(&format!("; {} left the cluster", left.join(", ")));
        }
        self.note(what);
        self.sync_scales();
        Ok(m)
    }
}

/// Drops nodes that hold no slot at all (a src that gave everything away, a dst whose only
/// import was aborted), with their shards' replicas, and answers their proxies, which are
/// free from now on.
fn remove_empty_nodes(view: &mut ClusterView) -> Vec<String> {
    let left: Vec<String> = view
        .nodes
        .iter()
        .filter(|n| n.slots.is_empty())
        .flat_map(|n| std::iter::once(n.proxy.clone()).chain(n.replicas.iter().map(|r| r.proxy.clone())))
        .collect();
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
    p.as_str().to_string()
}

/// A reported phase by its API name.
fn parse_phase(phase: &str) -> Result<MigrationPhase, ApiError> {
    phase.parse().map_err(|_| {
        ApiError::conflict(format!(
            "unknown phase {phase:?}; report one of pending, starting, following, switching, switched, \
                 cleaning, done"
        ))
    })
}

/// A report's progress: a JSON object, or nothing (`null` too).
fn progress_object(progress: Option<serde_json::Value>) -> Result<Option<serde_json::Value>, ApiError> {
    match progress {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(ApiError::invalid("progress must be a JSON object")),
    }
}

/// A report's `at`: when the phase was entered, as an RFC 3339 UTC timestamp.
fn parse_at(at: Option<String>) -> Result<Option<std::time::SystemTime>, ApiError> {
    let Some(text) = at else { return Ok(None) };
    humantime::parse_rfc3339(text.trim()).map(Some).map_err(|e| {
        ApiError::invalid(format!("at {text:?} is not an RFC 3339 UTC timestamp like 2026-01-01T10:00:00.000Z ({e})"))
    })
}

/// Whether a report may move a migration from `current` to `target`: never backwards, never
/// out of an end, never into a phase that has its own route (commit, abort, fail), never to
/// cleaning or done before the commit.
fn check_reported_move(
    cluster: &str,
    id: &str,
    current: MigrationPhase,
    target: MigrationPhase,
) -> Result<(), ApiError> {
    use MigrationPhase::*;
    let refuse = |why: String| {
        Err(ApiError::conflict(format!(
            "migration {id} is {}; it cannot report {}: {why}",
            phase_name(current),
            phase_name(target)
        )))
    };
    match target {
        Failed | Aborted => refuse(format!(
            "use POST /api/v1/clusters/{cluster}/migrations/{id}/{}",
            if target == Failed { "fail" } else { "abort" }
        )),
        Committed => refuse(format!("use POST /api/v1/clusters/{cluster}/migrations/{id}/commit")),
        _ if current.is_final() => refuse("it has already ended".into()),
        _ if target < current => refuse("phases never go backwards".into()),
        Cleaning | Done if current < Committed => {
            refuse("it must be committed first (it has not switched and been committed)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::*;
    use MigrationPhase::*;

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
    fn a_keys_mode_migration_is_not_aborted_even_while_pending() {
        // Its source moves keys as soon as it holds the config, before the broker hears of it.
        let mut s = setup(false);
        assert_eq!(s.migrations[&1].phase, Pending);
        let before = s.clone();
        let e = txn(&mut s, T0, |t| t.stop("shop", "m-1", Aborted, "why".into(), None)).expect_err("refused");
        assert_eq!(e.code, "conflict");
        assert!(e.message.contains("moves keys"), "{}", e.message);
        assert_eq!(s, before, "a refused abort changes nothing");
        // A proxy's failure report (the coordinator's fail) still ends it while pending.
        let m = txn(&mut s, T0, |t| t.stop("shop", "m-1", Failed, "why".into(), None)).expect("fail");
        assert_eq!(m.phase, Failed);
    }

    #[test]
    fn ended_migrations_leave_the_configs() {
        for end in [Failed, Aborted] {
            let mut s = setup(true);
            assert_eq!(ids(&s, 6003), vec!["m-1".to_string()]);
            txn(&mut s, T0, |t| t.stop("shop", "m-1", end, "why".into(), None)).expect("stop");
            assert!(ids(&s, 6001).is_empty() && ids(&s, 6003).is_empty(), "{end:?}");
        }
    }
}
