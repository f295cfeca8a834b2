//! The epoch (with long polling), the OpenAPI document, and the coordinator's bulk reads.

use super::extract::ApiQuery;
use super::{reply, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sluice_common::api::{ConfigsResponse, EpochResponse, ErrorBody, MigrationList};
use std::time::Duration;
use utoipa::IntoParams;

/// The longest a long poll waits.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EpochQuery {
    /// Long poll: answer as soon as the epoch is above this one…
    pub after: Option<u64>,
    /// …or after this many milliseconds (default 30000, at most 60000), with the current epoch.
    pub timeout_ms: Option<u64>,
}

/// The global epoch. With `after`, waits until the epoch moves past it (or the timeout).
#[utoipa::path(
    get,
    path = "/api/v1/epoch",
    tag = "meta",
    params(EpochQuery),
    responses(
        (status = 200, description = "The global epoch", body = EpochResponse),
        (status = 400, description = "Bad query", body = ErrorBody),
    )
)]
pub async fn get_epoch(State(app): State<AppState>, ApiQuery(q): ApiQuery<EpochQuery>) -> Result<Response, ApiError> {
    if let Some(after) = q.after {
        let wait = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(MAX_WAIT_MS));
        let mut rx = app.epoch.subscribe();
        // Either way the answer is the epoch now; the wait only decides when.
        let _ = tokio::time::timeout(wait, rx.wait_for(|e| *e > after)).await;
    }
    let epoch = app.store.snapshot().epoch;
    Ok(reply(StatusCode::OK, epoch, EpochResponse { epoch }))
}

/// Prometheus metrics in the text format: the epoch, clusters, proxies by state, migrations by
/// phase and mode (as the metadata holds them now), and the API's requests and latency.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "The Prometheus text format", content_type = "text/plain"),
        (status = 500, description = "The metrics could not be encoded", body = ErrorBody),
    )
)]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let text = app
        .metrics
        .render(&app.store.snapshot())
        .map_err(|e| ApiError::internal(format!("encoding the metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, sluice_common::metrics::CONTENT_TYPE)], text).into_response())
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json"))
)]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(crate::openapi::document())
}

/// Every registered proxy's config at one epoch: what the coordinator pushes.
#[utoipa::path(
    get,
    path = "/api/v1/configs",
    tag = "coordinator",
    responses((status = 200, description = "All proxies' configs and the epoch they were computed at", body = ConfigsResponse))
)]
pub async fn get_configs(State(app): State<AppState>) -> Response {
    let s = app.store.snapshot();
    reply(StatusCode::OK, s.epoch, ConfigsResponse { epoch: s.epoch, configs: s.all_configs() })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AllMigrationsQuery {
    /// Also list ended migrations (done, failed, aborted). Default: only running ones.
    #[serde(default)]
    pub all: bool,
}

/// Migrations of every cluster: by default the running ones (the coordinator's work list).
#[utoipa::path(
    get,
    path = "/api/v1/migrations",
    tag = "coordinator",
    params(AllMigrationsQuery),
    responses(
        (status = 200, description = "Migrations, in creation order", body = MigrationList),
        (status = 400, description = "Bad query", body = ErrorBody),
    )
)]
pub async fn list_all_migrations(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AllMigrationsQuery>,
) -> Result<Response, ApiError> {
    let s = app.store.snapshot();
    let migrations = s.migrations.values().filter(|m| q.all || !m.phase.is_final()).cloned().collect();
    Ok(reply(StatusCode::OK, s.epoch, MigrationList { migrations }))
}
