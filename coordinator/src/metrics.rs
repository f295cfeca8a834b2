//! The coordinator's Prometheus metrics (`--metrics host:port`, `GET /metrics`): its rounds,
//! the configs it pushed (whole or the epoch alone, how long each took and how it ended), the proxies that
//! did not answer, and what it reported to the broker.

use crate::run::RoundSummary;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How a `SetConfig` ended.
#[derive(Debug, Clone, Copy)]
pub enum PushResult {
    /// The proxy took a config new to it.
    Applied,
    /// It already held it.
    Unchanged,
    /// It holds a newer one than this round read.
    Stale,
    Failed,
}

impl PushResult {
    const ALL: [PushResult; 4] = [PushResult::Applied, PushResult::Unchanged, PushResult::Stale, PushResult::Failed];

    fn name(self) -> &'static str {
        match self {
            PushResult::Applied => "applied",
            PushResult::Unchanged => "unchanged",
            PushResult::Stale => "stale",
            PushResult::Failed => "failed",
        }
    }
}

/// What a push sent: the whole config, or only the epoch (the proxy's config was the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// `SetConfig`.
    Full,
    /// `AdvanceEpoch`.
    EpochOnly,
}

impl PushKind {
    fn name(self) -> &'static str {
        match self {
            PushKind::Full => "full",
            PushKind::EpochOnly => "epoch_only",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    rounds_ok: IntCounter,
    rounds_broker_down: IntCounter,
    round_duration: Histogram,
    pushes: [IntCounter; 4],
    push_calls: [IntCounter; 2],
    epoch_only_mismatches: IntCounter,
    push_duration: Histogram,
    status_failures: IntCounter,
    reports: IntCounterVec,
    epoch: IntGauge,
    proxies: IntGauge,
    answering: IntGauge,
}

const LATENCY_BUCKETS: [f64; 13] = [0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("sluice_coordinator".into()), None)?;
        let rounds = IntCounterVec::new(
            Opts::new("rounds_total", "Rounds, by result: ok, or broker_unreachable (nothing done)"),
            &["result"],
        )?;
        let round_duration = Histogram::with_opts(
            HistogramOpts::new(
                "round_duration_seconds",
                "One round: read the broker, probe and push to every proxy, report",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let pushes = IntCounterVec::new(
            Opts::new("pushes_total", "SetConfig calls, by result: applied, unchanged, stale, failed"),
            &["result"],
        )?;
        let push_calls = IntCounterVec::new(
            Opts::new(
                "push_calls_total",
                "Pushes by what they sent: full (SetConfig, the whole config), epoch_only (AdvanceEpoch, \
                 the proxy's config being the same apart from the epoch)",
            ),
            &["kind"],
        )?;
        let epoch_only_mismatches = IntCounter::new(
            "epoch_only_mismatches_total",
            "AdvanceEpoch calls the proxy answered holding another config version; the full config followed",
        )?;
        let push_duration = Histogram::with_opts(
            HistogramOpts::new(
                "push_duration_seconds",
                "From sending a SetConfig or AdvanceEpoch to the proxy's answer",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let status_failures = IntCounter::new("status_failures_total", "Status calls a proxy did not answer")?;
        let reports = IntCounterVec::new(
            Opts::new("broker_reports_total", "Reports the broker accepted: health, migration, failover"),
            &["kind"],
        )?;
        let epoch = IntGauge::new("epoch", "The broker epoch the last round read")?;
        let proxies = IntGauge::new("proxies", "Proxies this coordinator looked after (its share) at the last round")?;
        let answering = IntGauge::new(
            "proxies_answering",
            "Proxies of this coordinator whose last Status call answered (idle ones are asked every --idle-status-ms)",
        )?;
        registry.register(Box::new(rounds.clone()))?;
        registry.register(Box::new(round_duration.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(push_calls.clone()))?;
        registry.register(Box::new(epoch_only_mismatches.clone()))?;
        registry.register(Box::new(push_duration.clone()))?;
        registry.register(Box::new(status_failures.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(epoch.clone()))?;
        registry.register(Box::new(proxies.clone()))?;
        registry.register(Box::new(answering.clone()))?;
        Ok(Metrics {
            rounds_ok: rounds.with_label_values(&["ok"]),
            rounds_broker_down: rounds.with_label_values(&["broker_unreachable"]),
            pushes: PushResult::ALL.map(|r| pushes.with_label_values(&[r.name()])),
            push_calls: [PushKind::Full, PushKind::EpochOnly].map(|k| push_calls.with_label_values(&[k.name()])),
            epoch_only_mismatches,
            registry,
            round_duration,
            push_duration,
            status_failures,
            reports,
            epoch,
            proxies,
            answering,
        })
    }

    /// A push that got an answer (or failed): how it ended, what it sent, how long it took.
    pub fn push(&self, result: PushResult, kind: PushKind, took: Duration) {
        self.pushes[result as usize].inc();
        self.push_calls[kind as usize].inc();
        self.push_duration.observe(took.as_secs_f64());
    }

    /// An `AdvanceEpoch` the proxy refused for holding another config version.
    pub fn epoch_only_mismatch(&self) {
        self.epoch_only_mismatches.inc();
    }

    pub fn status_failed(&self) {
        self.status_failures.inc();
    }

    pub fn round(&self, summary: &RoundSummary, took: Duration) {
        self.rounds_ok.inc();
        self.round_duration.observe(took.as_secs_f64());
        self.epoch.set(i64::try_from(summary.epoch).unwrap_or(i64::MAX));
        self.proxies.set(summary.proxies as i64);
        self.answering.set(summary.answered as i64);
        for (kind, n) in [
            ("health", summary.health_reports),
            ("migration", summary.migration_reports),
            ("failover", summary.failovers),
        ] {
            self.reports.with_label_values(&[kind]).inc_by(n as u64);
        }
    }

    pub fn broker_unreachable(&self) {
        self.rounds_broker_down.inc();
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        sluice_common::metrics::encode(&self.registry)
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    sluice_common::metrics::serve(listener, move || metrics.render()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_and_pushes_are_counted() {
        let m = Metrics::new().expect("registry");
        m.push(PushResult::Applied, PushKind::Full, Duration::from_millis(2));
        m.push(PushResult::Failed, PushKind::Full, Duration::from_millis(500));
        m.push(PushResult::Applied, PushKind::EpochOnly, Duration::from_millis(1));
        m.epoch_only_mismatch();
        m.status_failed();
        m.broker_unreachable();
        let summary = RoundSummary { epoch: 9, proxies: 4, answered: 3, health_reports: 1, ..RoundSummary::default() };
        m.round(&summary, Duration::from_millis(10));
        let text = m.render().expect("render");
        for line in [
            r#"sluice_coordinator_pushes_total{result="applied"} 2"#,
            r#"sluice_coordinator_pushes_total{result="failed"} 1"#,
            r#"sluice_coordinator_push_calls_total{kind="full"} 2"#,
            r#"sluice_coordinator_push_calls_total{kind="epoch_only"} 1"#,
            "sluice_coordinator_epoch_only_mismatches_total 1",
            r#"sluice_coordinator_push_duration_seconds_count 3"#,
            r#"sluice_coordinator_rounds_total{result="broker_unreachable"} 1"#,
            r#"sluice_coordinator_rounds_total{result="ok"} 1"#,
            r#"sluice_coordinator_broker_reports_total{kind="health"} 1"#,
            "sluice_coordinator_status_failures_total 1",
            "sluice_coordinator_epoch 9",
            "sluice_coordinator_proxies_answering 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
}
