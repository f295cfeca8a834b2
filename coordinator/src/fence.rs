//! When to stop a replication-mode migration stuck in `switching` because its destination is
//! gone: pure decisions, like `failover.rs`.
//!
//! From `switching` the source may promote the destination's node, so the broker ends such a
//! migration only in two steps (`broker/src/ops/migrations/mod.rs`, `fence_or_end`): a first
//! `fail` fences the source, which then stops its switch attempts and confirms; the
//! coordinator relays that confirmation ([`crate::reconcile::confirm_stop`]) and the
//! migration fails with the slots on the source. This module decides the first step: the
//! destination (its proxy silent, or its node not answering it) has been down for
//! `--fence-after` without a break. The memory is per coordinator and disposable, as in
//! [`crate::failover`]: a restarted coordinator waits the whole bound again.

use crate::failover::down;
use sluice_common::api::Migration;
use sluice_common::model::MigrationPhase;
use sluice_proto::control::StatusReply;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Since when the destination of each switching migration (`cluster/id`) has been down.
#[derive(Debug, Default)]
pub struct FenceTracker {
    down_since: HashMap<String, Instant>,
}

impl FenceTracker {
    /// The migrations to stop at `now`, each with the reason to record. `after` zero: none.
    pub fn decide<'m>(
        &mut self,
        migrations: &'m [Migration],
        statuses: &HashMap<String, StatusReply>,
        after: Duration,
        now: Instant,
    ) -> Vec<(&'m Migration, String)> {
        let mut due = Vec::new();
        let mut watched = Vec::new();
        for m in migrations {
            let stuck_candidate = m.mode.is_streamed() && m.phase == MigrationPhase::Switching && m.stopping.is_none();
            if !stuck_candidate {
                continue;
            }
            let key = format!("{}/{}", m.cluster, m.id);
            watched.push(key.clone());
            let Some(why) = down(statuses.get(&m.dst)) else {
                self.down_since.remove(&key);
                continue;
            };
            let since = *self.down_since.entry(key).or_insert(now);
            let for_how_long = now.duration_since(since);
            if after.is_zero() || for_how_long < after {
                continue;
            }
            let reason = format!(
                "the destination {} was down for {:.1}s while switching ({why}); the source {} keeps the slots",
                m.dst,
                for_how_long.as_secs_f64(),
                m.src
            );
            due.push((m, reason));
        }
        self.down_since.retain(|k, _| watched.contains(k));
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::api::{PhaseTimestamps, StopIntent};
    use sluice_common::model::{MigrationMode, SlotRange};

    fn migration(phase: MigrationPhase, mode: MigrationMode) -> Migration {
        Migration {
            id: "m-1".into(),
            epoch: 6,
            committed_epoch: None,
            cluster: "shop".into(),
            src: "s:1".into(),
            src_node: "s:2".into(),
            dst: "d:1".into(),
            dst_node: "d:2".into(),
            slots: vec![SlotRange::new(0, 10)],
            mode,
            phase,
            error: None,
            progress: None,
            timestamps: PhaseTimestamps::default(),
            updated_at: String::new(),
            stopping: None,
            copy_deleted: false,
        }
    }

    fn healthy() -> StatusReply {
        StatusReply { node_healthy: true, ..StatusReply::default() }
    }

    #[test]
    fn a_switching_migration_is_stopped_once_its_destination_was_down_for_the_whole_bound() {
        let mut t = FenceTracker::default();
        let ms = vec![migration(MigrationPhase::Switching, MigrationMode::Replication)];
        let after = Duration::from_secs(10);
        let t0 = Instant::now();
        let none = HashMap::new();
        assert!(t.decide(&ms, &none, after, t0).is_empty(), "down, not for long");
        assert!(t.decide(&ms, &none, after, t0 + Duration::from_secs(9)).is_empty());
        let due = t.decide(&ms, &none, after, t0 + Duration::from_secs(10));
        assert_eq!(due.len(), 1);
        assert!(due[0].1.contains("d:1") && due[0].1.contains("does not answer Status"), "{}", due[0].1);
        // An answer in between starts the count again; a node that does not answer counts as down.
        let mut t = FenceTracker::default();
        t.decide(&ms, &none, after, t0);
        let up = HashMap::from([("d:1".to_string(), healthy())]);
        t.decide(&ms, &up, after, t0 + Duration::from_secs(5));
        let node_down = HashMap::from([(
            "d:1".to_string(),
            StatusReply { node_error: "refused".into(), ..StatusReply::default() },
        )]);
        assert!(t.decide(&ms, &node_down, after, t0 + Duration::from_secs(12)).is_empty());
        let due = t.decide(&ms, &node_down, after, t0 + Duration::from_secs(22));
        assert!(due.len() == 1 && due[0].1.contains("refused"), "{due:?}");
        // Zero: never.
        assert!(FenceTracker::default().decide(&ms, &none, Duration::ZERO, t0).is_empty());
    }

    #[test]
    fn only_replication_migrations_in_switching_and_not_stopping_yet_are_watched() {
        let none = HashMap::new();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(100);
        let mut stopping = migration(MigrationPhase::Switching, MigrationMode::Replication);
        stopping.stopping = Some(StopIntent { epoch: 9, phase: MigrationPhase::Failed, reason: "x".into() });
        for m in [
            migration(MigrationPhase::Following, MigrationMode::Replication),
            migration(MigrationPhase::Switched, MigrationMode::Replication),
            migration(MigrationPhase::Switching, MigrationMode::Keys),
            stopping,
        ] {
            let mut t = FenceTracker::default();
            let ms = vec![m];
            t.decide(&ms, &none, Duration::from_secs(1), t0);
            assert!(t.decide(&ms, &none, Duration::from_secs(1), later).is_empty(), "{:?}", ms[0].phase);
        }
    }
}
