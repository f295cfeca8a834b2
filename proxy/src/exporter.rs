//! `--metrics ADDR`: Prometheus text at `GET /metrics` (and nothing else) over plain HTTP.
//!
//! The counters are kept by the data path ([`crate::metrics`]); the state gauges are set here,
//! at each scrape, from the route table and the migration tasks: the config epoch, clients,
//! slots served, and each migration task's phase and the numbers in its progress report
//! (`lag_bytes`, `keys_moved`, …). A task that ended and was dropped leaves no series behind.

use crate::control::Control;
use crate::migration::phase_name;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, control: Control) -> std::io::Result<()> {
    sluice_common::metrics::serve(listener, move || render(&control)).await
}

/// Sets the state gauges and encodes everything.
pub fn render(control: &Control) -> Result<String, prometheus::Error> {
    let shared = &control.shared;
    let m = &shared.metrics;
    let routes = shared.routes();
    m.epoch.set(i64::try_from(routes.epoch()).unwrap_or(i64::MAX));
    m.clients.set(i64::try_from(shared.connected_clients.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    m.slots.set((0..16384u16).filter(|&s| routes.is_local(s)).count() as i64);
    m.migration_phase.reset();
    m.migration_progress.reset();
    for t in control.migrations.reports() {
        let role = if t.is_source { "source" } else { "destination" };
        m.migration_phase.with_label_values(&[t.id.as_str(), role, phase_name(t.phase).as_str()]).set(1);
        if let Some(fields) = t.progress.as_object() {
            for (field, value) in fields {
                if let Some(v) = value.as_f64() {
                    m.migration_progress.with_label_values(&[t.id.as_str(), role, field.as_str()]).set(v);
                }
            }
        }
    }
    m.render()
}
