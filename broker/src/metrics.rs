//! Prometheus metrics of the broker, served as text at `GET /metrics`.
//!
//! Two kinds: what the API has served (requests by method, route and status, and their
//! latency), counted as requests pass; and what the metadata holds (epoch, clusters, proxies
//! by state, migrations by phase and mode), read from the current [`State`] at each scrape so
//! a scrape can never disagree with `GET /api/v1/...`. Routes are labelled by their pattern
//! (`/api/v1/clusters/{name}`), never by the path asked for, so a client cannot grow the
//! number of series.

use crate::state::State;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sluice_common::api::ProxyState;
use sluice_common::model::{MigrationMode, MigrationPhase};
use std::time::Duration;

/// The label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const PROXY_STATES: [(ProxyState, &str); 3] =
    [(ProxyState::Free, "free"), (ProxyState::Serving, "serving"), (ProxyState::Failed, "failed")];

/// The broker's metrics and the registry they are gathered from.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    epoch: IntGauge,
    clusters: IntGauge,
    proxies: IntGaugeVec,
    migrations: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("sluice_broker".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("api_requests_total", "API requests answered, by method, route pattern and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("api_request_duration_seconds", "Time to answer an API request, by method and route")
                .buckets(vec![0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0]),
            &["method", "route"],
        )?;
        let epoch = IntGauge::new("epoch", "The global metadata epoch")?;
        let clusters = IntGauge::new("clusters", "Clusters defined")?;
        let proxies = IntGaugeVec::new(Opts::new("proxies", "Registered proxies by state"), &["state"])?;
        let migrations =
            IntGaugeVec::new(Opts::new("migrations", "Migrations on record by phase and mode"), &["phase", "mode"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(epoch.clone()))?;
        registry.register(Box::new(clusters.clone()))?;
        registry.register(Box::new(proxies.clone()))?;
        registry.register(Box::new(migrations.clone()))?;
        Ok(Metrics { registry, requests, latency, epoch, clusters, proxies, migrations })
    }

    /// Counts one answered request.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.latency.with_label_values(&[method, route]).observe(elapsed.as_secs_f64());
    }

    /// The text format of every metric, the metadata ones as `state` holds them.
    pub fn render(&self, state: &State) -> Result<String, prometheus::Error> {
        self.epoch.set(gauge_value(state.epoch));
        self.clusters.set(gauge_value(state.clusters.len() as u64));
        let infos = state.proxy_infos();
        for (s, name) in PROXY_STATES {
            let n = infos.iter().filter(|p| p.state == s).count();
            self.proxies.with_label_values(&[name]).set(gauge_value(n as u64));
        }
        // Every combination is written, zeros too, so a phase that empties reads 0, not gone.
        for phase in MigrationPhase::ALL {
            for mode in MigrationMode::ALL {
                let n = state.migrations.values().filter(|m| m.phase == phase && m.mode == mode).count();
                self.migrations.with_label_values(&[phase.as_str(), mode.as_str()]).set(gauge_value(n as u64));
            }
        }
        sluice_common::metrics::encode(&self.registry)
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::api::Migration;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn metadata_gauges_follow_the_state_and_requests_are_counted() {
        let m = Metrics::new().expect("registry");
        let mut state = State { epoch: 42, ..State::default() };
        let migration: Migration = serde_json::from_value(serde_json::json!({
            "id": "m-1", "epoch": 40, "cluster": "c", "src": "a:1", "src_node": "a:2",
            "dst": "b:1", "dst_node": "b:2", "slots": [[0, 9]],
            "mode": "filtered", "phase": "following", "timestamps": {}, "updated_at": "2026-12-03T00:00:00Z"
        }))
        .expect("a migration");
        state.migrations.insert(1, migration);
        m.observe("GET", "/api/v1/clusters/{name}", 404, Duration::from_millis(3));
        let text = m.render(&state).expect("render");
        assert_eq!(line(&text, "sluice_broker_epoch "), Some("sluice_broker_epoch 42"));
        assert_eq!(line(&text, "sluice_broker_clusters "), Some("sluice_broker_clusters 0"));
        assert!(text.contains(r#"sluice_broker_migrations{mode="filtered",phase="following"} 1"#), "{text}");
        assert!(text.contains(r#"sluice_broker_migrations{mode="keys",phase="done"} 0"#), "{text}");
        assert!(text.contains(r#"sluice_broker_proxies{state="free"} 0"#), "{text}");
        assert!(
            text.contains(
                r#"sluice_broker_api_requests_total{method="GET",route="/api/v1/clusters/{name}",status="404"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("sluice_broker_api_request_duration_seconds_bucket"), "{text}");

        // A migration that moves on changes its phase's count both ways at the next scrape.
        if let Some(mig) = state.migrations.get_mut(&1) {
            mig.phase = MigrationPhase::Done;
        }
        let text = m.render(&state).expect("render");
        assert!(text.contains(r#"sluice_broker_migrations{mode="filtered",phase="following"} 0"#), "{text}");
        assert!(text.contains(r#"sluice_broker_migrations{mode="filtered",phase="done"} 1"#), "{text}");
    }
}
