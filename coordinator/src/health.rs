//! Failure counting: when a proxy is reported failed and when it is reported back.
//!
//! One missed Status call is not a failure (a GC pause, a busy node, a restart); N in a row
//! are. The counts live in memory only: a coordinator that restarts counts again from zero,
//! which delays a report by at most N rounds and never makes a wrong one. What the broker
//! shows decides whether a report is needed at all, so two coordinators, or one whose
//! previous report got lost, converge on the same state without remembering anything.

use std::collections::HashMap;

/// What one round saw of one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<'a> {
    /// Status answered.
    Answered,
    /// Status did not answer (or the wrong proxy answered); why, for the report.
    Failed(&'a str),
}

/// A report to send to the broker (`PUT /api/v1/proxies/{address}/health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthAction {
    MarkFailed { reason: String },
    MarkRecovered,
}

#[derive(Debug, Clone, Default)]
struct ProxyHealth {
    /// The control address the counts are about: a proxy that re-registers elsewhere starts
    /// over.
    control: String,
    consecutive_failures: u32,
    /// Whether the proxy's Redis node answered its last probe, for logging changes once.
    node_healthy: Option<bool>,
}

/// The failure counts of every registered proxy.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    threshold: u32,
    proxies: HashMap<String, ProxyHealth>,
}

impl HealthTracker {
    /// `threshold`: Status calls that must fail in a row before a proxy counts as failed
    /// (at least 1).
    pub fn new(threshold: u32) -> HealthTracker {
        HealthTracker { threshold: threshold.max(1), proxies: HashMap::new() }
    }

    /// Records one probe of the proxy `address` (reached on `control`) and answers the report
    /// to send, given whether the broker shows it failed now.
    ///
    /// - failed `threshold` times in a row and not failed in the broker → mark failed (again
    ///   every round until the broker shows it: a lost report is simply repeated);
    /// - answered and failed in the broker → mark recovered (whoever marked it failed);
    /// - otherwise nothing.
    pub fn observe(
        &mut self,
        address: &str,
        control: &str,
        probe: Probe<'_>,
        broker_failed: bool,
    ) -> Option<HealthAction> {
        let entry = self.proxies.entry(address.to_string()).or_default();
        if entry.control != control {
            *entry = ProxyHealth { control: control.to_string(), ..ProxyHealth::default() };
        }
        match probe {
            Probe::Answered => {
                entry.consecutive_failures = 0;
                broker_failed.then_some(HealthAction::MarkRecovered)
            }
            Probe::Failed(why) => {
                entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
                let n = entry.consecutive_failures;
                (n >= self.threshold && !broker_failed).then(|| HealthAction::MarkFailed {
                    reason: format!("control {control}: {n} status calls in a row got no answer; last: {why}"),
                })
            }
        }
    }

    /// Status calls in a row that got no answer from `address`.
    pub fn failures(&self, address: &str) -> u32 {
        self.proxies.get(address).map_or(0, |p| p.consecutive_failures)
    }

    /// Records whether the proxy's node answered; `Some(new)` when that changed (the first
    /// observation counts as a change only when unhealthy: a healthy start is not news).
    pub fn node_health_changed(&mut self, address: &str, healthy: bool) -> Option<bool> {
        let entry = self.proxies.entry(address.to_string()).or_default();
        let before = entry.node_healthy.replace(healthy);
        match before {
            Some(b) if b != healthy => Some(healthy),
            None if !healthy => Some(false),
            _ => None,
        }
    }

    /// Forgets proxies that are no longer registered.
    pub fn retain(&mut self, mut registered: impl FnMut(&str) -> bool) {
        self.proxies.retain(|address, _| registered(address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:6001";
    const CA: &str = "127.0.0.1:7001";

    fn failed(t: &mut HealthTracker, broker_failed: bool) -> Option<HealthAction> {
        t.observe(A, CA, Probe::Failed("connection refused"), broker_failed)
    }

    #[test]
    fn a_proxy_is_reported_failed_at_the_threshold_not_before() {
        let mut t = HealthTracker::new(3);
        assert_eq!(failed(&mut t, false), None);
        assert_eq!(failed(&mut t, false), None);
        match failed(&mut t, false) {
            Some(HealthAction::MarkFailed { reason }) => {
                assert!(reason.contains("3 status calls"), "{reason}");
                assert!(reason.contains("connection refused"), "{reason}");
                assert!(reason.contains(CA), "{reason}");
            }
            other => panic!("expected a failure report, got {other:?}"),
        }
    }

    #[test]
    fn an_answer_resets_the_count() {
        let mut t = HealthTracker::new(3);
        failed(&mut t, false);
        failed(&mut t, false);
        assert_eq!(t.observe(A, CA, Probe::Answered, false), None);
        assert_eq!(t.failures(A), 0);
        assert_eq!(failed(&mut t, false), None);
        assert_eq!(failed(&mut t, false), None);
        assert!(failed(&mut t, false).is_some());
    }

    #[test]
    fn no_report_while_the_broker_already_shows_it_failed() {
        let mut t = HealthTracker::new(2);
        failed(&mut t, false);
        assert!(failed(&mut t, false).is_some());
        // The report went through: the broker shows it failed; nothing more to say.
        assert_eq!(failed(&mut t, true), None);
        assert_eq!(failed(&mut t, true), None);
        // Someone unmarked it (an operator, another coordinator) while it still fails.
        assert!(failed(&mut t, false).is_some());
    }

    #[test]
    fn a_lost_report_is_repeated() {
        let mut t = HealthTracker::new(1);
        assert!(failed(&mut t, false).is_some());
        // The broker call failed: the broker still does not show it failed.
        assert!(failed(&mut t, false).is_some());
    }

    #[test]
    fn recovery_is_reported_when_the_broker_shows_failed() {
        let mut t = HealthTracker::new(1);
        assert!(failed(&mut t, false).is_some());
        assert_eq!(t.observe(A, CA, Probe::Answered, true), Some(HealthAction::MarkRecovered));
        // Reported; the broker shows it serving again.
        assert_eq!(t.observe(A, CA, Probe::Answered, false), None);
    }

    #[test]
    fn recovery_is_reported_for_a_failure_another_coordinator_reported() {
        // This coordinator never saw it fail (it started later, or it reaches the proxy).
        let mut t = HealthTracker::new(3);
        assert_eq!(t.observe(A, CA, Probe::Answered, true), Some(HealthAction::MarkRecovered));
    }

    #[test]
    fn a_new_control_address_starts_the_count_over() {
        let mut t = HealthTracker::new(2);
        failed(&mut t, false);
        assert_eq!(t.observe(A, "127.0.0.1:7999", Probe::Failed("refused"), false), None);
        assert_eq!(t.failures(A), 1);
    }

    #[test]
    fn two_trackers_agree() {
        // Two coordinators seeing the same thing decide the same thing; the second report
        // finds the broker already in the state the first one set and is not sent.
        let mut a = HealthTracker::new(2);
        let mut b = HealthTracker::new(2);
        for t in [&mut a, &mut b] {
            failed(t, false);
        }
        assert!(failed(&mut a, false).is_some());
        assert_eq!(failed(&mut b, true), None);
    }

    #[test]
    fn node_health_changes_are_reported_once() {
        let mut t = HealthTracker::new(3);
        assert_eq!(t.node_health_changed(A, true), None);
        assert_eq!(t.node_health_changed(A, true), None);
        assert_eq!(t.node_health_changed(A, false), Some(false));
        assert_eq!(t.node_health_changed(A, false), None);
        assert_eq!(t.node_health_changed(A, true), Some(true));
        assert_eq!(t.node_health_changed("127.0.0.1:6002", false), Some(false));
    }

    #[test]
    fn unregistered_proxies_are_forgotten() {
        let mut t = HealthTracker::new(3);
        failed(&mut t, false);
        t.retain(|a| a != A);
        assert_eq!(t.failures(A), 0);
    }

    #[test]
    fn threshold_zero_means_one() {
        let mut t = HealthTracker::new(0);
        assert!(failed(&mut t, false).is_some());
    }
}
