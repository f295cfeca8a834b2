//! What lets one migration be followed through the coordinator's log: its reports, commit
//! and fencing run in a `migration` span with its `id` — the span name and field the broker
//! and the proxies use too, so `grep 'id=m-7'` finds the migration in all four logs — and the
//! config pushes name the migrations the pushed config carries.

use sluice_common::api::Migration;
use sluice_common::model::ProxyConfig;

/// The span of one migration's work this round (its reports to the broker and their logs).
pub fn migration_span(m: &Migration) -> tracing::Span {
    tracing::info_span!("migration", id = %m.id, cluster = %m.cluster)
}

/// The ids of the migrations `config` carries, comma-separated ("" for none), for the line
/// that logs a push: a push is what starts, switches and ends a migration on a proxy.
pub fn migration_ids(config: &ProxyConfig) -> String {
    let ids: Vec<&str> = config.migrations.iter().map(|m| m.id.as_str()).collect();
    ids.join(",")
}
