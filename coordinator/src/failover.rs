//! When to fail a shard over, and to which replica: pure decisions, like `reconcile.rs`.
//!
//! A master is *down* while its proxy does not answer Status or answers that its node does
//! not (a SIGKILLed or stopped redis-server, or proxy). Once it has been down for
//! `--failover-after` without a break, the coordinator asks the broker to promote the
//! replica with the highest replication offset among those whose proxy answers and whose
//! node is a replica that answers (it holds the most of the master's stream). The request is
//! conditioned on the epoch the decision was made at, so of two coordinators only one
//! succeeds; the memory here is per coordinator and disposable: a restarted coordinator waits
//! the whole `--failover-after` again, which delays a failover and never makes a wrong one.

use sluice_common::api::FailoverRequest;
use sluice_common::model::ClusterView;
use sluice_proto::control::StatusReply;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the coordinator remembers: since when each master has been down.
#[derive(Debug, Default)]
pub struct FailoverTracker {
    down_since: HashMap<String, Instant>,
}

/// A failover to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub cluster: String,
    pub request: FailoverRequest,
}

/// Why a proxy (a master, or a migration's destination) counts as down now, if it does.
pub(crate) fn down(status: Option<&StatusReply>) -> Option<String> {
    match status {
        None => Some("its proxy does not answer Status".to_string()),
        Some(s) if !s.node_healthy => Some(format!("its node does not answer ({})", s.node_error)),
        Some(_) => None,
    }
}

impl FailoverTracker {
    /// Looks at every shard with replicas of `clusters` (`statuses`: the proxies that answered
    /// this round) and answers the failovers due at `now`. `after` zero disables them.
    pub fn decide(
        &mut self,
        clusters: &[&ClusterView],
        statuses: &HashMap<String, StatusReply>,
        after: Duration,
        now: Instant,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let mut masters = Vec::new();
        for cluster in clusters {
            for shard in cluster.nodes.iter().filter(|n| !n.replicas.is_empty()) {
                masters.push(shard.proxy.clone());
                let Some(why) = down(statuses.get(&shard.proxy)) else {
                    self.down_since.remove(&shard.proxy);
                    continue;
                };
                let since = *self.down_since.entry(shard.proxy.clone()).or_insert(now);
                if after.is_zero() || now.duration_since(since) < after {
                    continue;
                }
                let best = shard
                    .replicas
                    .iter()
                    .filter_map(|r| statuses.get(&r.proxy).map(|s| (r, s)))
                    .filter(|(_, s)| s.node_healthy && s.repl_role == "slave")
                    .max_by_key(|(_, s)| s.repl_offset);
                let Some((replica, status)) = best else { continue };
                let reason = format!(
                    "master down for {:.1}s: {why}; {} has the highest replication offset ({})",
                    now.duration_since(since).as_secs_f64(),
                    replica.proxy,
                    status.repl_offset
                );
                decisions.push(Decision {
                    cluster: cluster.name.clone(),
                    request: FailoverRequest {
                        master: shard.proxy.clone(),
                        promote: Some(replica.proxy.clone()),
                        reason: Some(reason),
                        graceful: false,
                        cancel: false,
                    },
                });
            }
        }
        self.down_since.retain(|m, _| masters.contains(m));
        decisions
    }

    /// Graceful failovers ready to complete: the master holds the shard's writes and says its
    /// replica has all of them at `epoch` (the epoch of the configs just read, so the master
    /// holds the latest one), and that replica's node answers. The swap is asked for at that
    /// epoch: if anything changed since, the broker refuses it and the master holds again.
    pub fn handovers_due(
        clusters: &[&ClusterView],
        statuses: &HashMap<String, StatusReply>,
        epoch: u64,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for cluster in clusters {
            for shard in &cluster.nodes {
                let Some(target) = &shard.handover else { continue };
                let ready = statuses.get(&shard.proxy).is_some_and(|s| s.handover_ready_epoch == epoch && epoch > 0);
                let target_up =
                    statuses.get(target).is_some_and(|s| s.node_healthy && s.repl_role == "slave" && s.master_link_up);
                if ready && target_up {
                    out.push(Decision {
                        cluster: cluster.name.clone(),
                        request: FailoverRequest {
                            master: shard.proxy.clone(),
                            promote: Some(target.clone()),
                            reason: Some("graceful failover: the replica has every write".into()),
                            graceful: false,
                            cancel: false,
                        },
                    });
                }
            }
        }
        out
    }

    /// A failover of `master` was made (by anyone): its clock starts over.
    pub fn forget(&mut self, master: &str) {
        self.down_since.remove(master);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::model::{NodeView, ReplicaView, SlotAssignment, SlotRange};

    fn cluster() -> ClusterView {
        let replica =
            |p: &str| ReplicaView { proxy: p.into(), node: format!("n-{p}"), peer: None, former_master: false };
        ClusterView {
            name: "c".into(),
            epoch: 3,
            nodes: vec![NodeView {
                proxy: "m".into(),
                node: "n-m".into(),
                slots: vec![SlotAssignment::plain(SlotRange::new(0, 16383))],
                peer: None,
                replicas: vec![replica("r1"), replica("r2")],
                handover: None,
                config_epoch: 0,
            }],
        }
    }

    fn replica_status(offset: u64) -> StatusReply {
        StatusReply { node_healthy: true, repl_role: "slave".into(), repl_offset: offset, ..Default::default() }
    }

    #[test]
    fn a_master_down_long_enough_is_replaced_by_the_replica_with_the_highest_offset() {
        let c = cluster();
        let mut t = FailoverTracker::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(5);
        let mut statuses: HashMap<String, StatusReply> =
            [("r1".to_string(), replica_status(100)), ("r2".to_string(), replica_status(250))].into();
        assert!(t.decide(&[&c], &statuses, after, t0).is_empty(), "down, but not for long");
        assert!(t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(4)).is_empty());
        let d = t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(5));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].request.master, "m");
        assert_eq!(d[0].request.promote.as_deref(), Some("r2"));
        // A replica whose node does not answer is not promoted.
        if let Some(s) = statuses.get_mut("r2") {
            s.node_healthy = false;
        }
        let d = t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(6));
        assert_eq!(d[0].request.promote.as_deref(), Some("r1"));
        statuses.clear();
        assert!(t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(7)).is_empty(), "no replica answers");
    }

    #[test]
    fn a_master_that_answers_in_between_starts_over() {
        let c = cluster();
        let mut t = FailoverTracker::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(5);
        let mut statuses: HashMap<String, StatusReply> = [("r1".to_string(), replica_status(1))].into();
        t.decide(&[&c], &statuses, after, t0);
        statuses
            .insert("m".into(), StatusReply { node_healthy: true, repl_role: "master".into(), ..Default::default() });
        t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(3));
        statuses.remove("m");
        assert!(t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(6)).is_empty(), "down for 3 s only");
        assert!(t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(t.decide(&[&c], &statuses, after, t0 + Duration::from_secs(11)).len(), 1);
        assert!(t.decide(&[&c], &statuses, Duration::ZERO, t0 + Duration::from_secs(60)).is_empty(), "0 disables");
    }

    #[test]
    fn a_handover_completes_only_when_the_master_is_ready_at_this_epoch_and_the_replica_follows() {
        let mut c = cluster();
        c.nodes[0].handover = Some("r1".into());
        let master = |ready| StatusReply {
            node_healthy: true,
            repl_role: "master".into(),
            handover_ready_epoch: ready,
            ..Default::default()
        };
        let replica = StatusReply { master_link_up: true, ..replica_status(10) };
        let mut statuses: HashMap<String, StatusReply> =
            [("m".to_string(), master(7)), ("r1".to_string(), replica)].into();
        let due = FailoverTracker::handovers_due(&[&c], &statuses, 7);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].request.promote.as_deref(), Some("r1"));
        assert!(!due[0].request.graceful, "the swap itself");
        assert!(FailoverTracker::handovers_due(&[&c], &statuses, 8).is_empty(), "ready at an older epoch");
        statuses.insert("m".into(), master(0));
        assert!(FailoverTracker::handovers_due(&[&c], &statuses, 7).is_empty(), "not ready");
        statuses.insert("m".into(), master(7));
        statuses.remove("r1");
        assert!(FailoverTracker::handovers_due(&[&c], &statuses, 7).is_empty(), "the replica does not answer");
    }
}
