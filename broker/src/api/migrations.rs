//! Migrations: creation and reading (operators), progress, commit, abort and fail
//! (the coordinator).

use super::extract::{ApiPath, IfMatch, JsonBody, OptionalJsonBody};
use super::{reply, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use sluice_common::api::{
    CommitRequest, CreateMigration, ErrorBody, Migration, MigrationList, ProgressReport, StopRequest,
};
use sluice_common::model::MigrationPhase;

/// Creates a migration of `slots` from `src` to `dst`: the ranges are tagged `migrating` on src
/// and `importing` on dst (a free dst joins the cluster), and the epoch moves.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/migrations",
    tag = "migrations",
    request_body = CreateMigration,
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Created; the coordinator carries it out", body = Migration),
        (status = 400, description = "Bad body: ranges, addresses, src = dst", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "src does not own the slots, they are already moving, dst is busy or in another cluster", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn create_migration(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(name): ApiPath<String>,
    JsonBody(req): JsonBody<CreateMigration>,
) -> Result<Response, ApiError> {
    let (m, s) = app.mutate(if_match, move |t| t.create_migration(&name, req)).await?;
    log_moved(None, &m, "migration created");
    Ok(reply(StatusCode::ACCEPTED, s.epoch, m))
}

/// The cluster's migrations, running and recent, in creation order.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{name}/migrations",
    tag = "migrations",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "Migrations", body = MigrationList),
        (status = 404, description = "No such cluster", body = ErrorBody),
    )
)]
pub async fn list_migrations(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let s = app.store.snapshot();
    if !s.clusters.contains_key(&name) {
        return Err(ApiError::not_found(format!("no cluster named {name:?}; GET /api/v1/clusters lists them")));
    }
    let migrations = s.migrations_of(&name).map(|(_, m)| m.clone()).collect();
    Ok(reply(StatusCode::OK, s.epoch, MigrationList { migrations }))
}

#[derive(Debug, Clone, Deserialize)]
pub struct MigrationPath {
    pub name: String,
    pub id: String,
}

fn lookup(app: &AppState, p: &MigrationPath) -> Result<Response, ApiError> {
    let s = app.store.snapshot();
    if !s.clusters.contains_key(&p.name) {
        return Err(ApiError::not_found(format!("no cluster named {:?}; GET /api/v1/clusters lists them", p.name)));
    }
    let (_, m) = s
        .migration(&p.name, &p.id)
        .ok_or_else(|| ApiError::not_found(format!("cluster {:?} has no migration {:?}", p.name, p.id)))?;
    Ok(reply(StatusCode::OK, s.epoch, m))
}

/// One migration: its meta, phase, error, progress and phase timestamps.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{name}/migrations/{id}",
    tag = "migrations",
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("id" = String, Path, description = "Migration id, e.g. m-3"),
    ),
    responses(
        (status = 200, description = "The migration", body = Migration),
        (status = 404, description = "No such cluster or migration", body = ErrorBody),
    )
)]
pub async fn get_migration(
    State(app): State<AppState>,
    ApiPath(p): ApiPath<MigrationPath>,
) -> Result<Response, ApiError> {
    lookup(&app, &p)
}

/// The progress report's body as read: `phase` as text, so an unknown phase is a 409 that
/// names the valid ones rather than a bare parse error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProgress {
    pub phase: String,
    #[serde(default)]
    pub progress: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
}

/// A progress report from the coordinator: status only, the epoch does not move, except when
/// the migration reaches `done` (it then leaves its proxies' configs: one epoch bump). Phases
/// only go forward; the same phase again is fine (progress and error are updated). `at` (RFC
/// 3339 UTC) is when the phase was entered as the proxies saw it, clamped between the previous
/// phase's timestamp and now.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/migrations/{id}/progress",
    tag = "coordinator",
    request_body = ProgressReport,
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("id" = String, Path, description = "Migration id"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded", body = Migration),
        (status = 400, description = "Bad body, progress not an object, or `at` not an RFC 3339 UTC timestamp", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster or migration", body = ErrorBody),
        (status = 409, description = "Unknown phase, a phase going backwards, or a migration that ended", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn report_progress(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(p): ApiPath<MigrationPath>,
    JsonBody(r): JsonBody<RawProgress>,
) -> Result<Response, ApiError> {
    let ((before, m), s) = app
        .mutate(if_match, move |t| {
            let before = phase_of(t, &p);
            Ok((before, t.report_progress(&p.name, &p.id, &r.phase, r.progress, r.error, r.at)?))
        })
        .await?;
    log_moved(before, &m, "migration phase reported");
    Ok(reply(StatusCode::OK, s.epoch, m))
}

/// A proxy's word that the destination's node no longer holds the copy a replication or
/// filtered import left there when it ended before its switch (`aborted`, `failed`): sets
/// the migration's `copy_deleted`, which a keys-mode import of those slots into that
/// destination waits for. Status only, the epoch does not move. Again: 200, no change.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/migrations/{id}/copy-deleted",
    tag = "coordinator",
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("id" = String, Path, description = "Migration id"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded (now or before)", body = Migration),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster or migration", body = ErrorBody),
        (status = 409, description = "Not a replication or filtered import that ended before its switch", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn report_copy_deleted(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(p): ApiPath<MigrationPath>,
) -> Result<Response, ApiError> {
    let (m, s) = app.mutate(if_match, move |t| t.report_copy_deleted(&p.name, &p.id)).await?;
    let _span = tracing::info_span!("migration", id = %m.id, cluster = %m.cluster).entered();
    tracing::info!(dst = %m.dst, "the copy at the destination is reported deleted");
    Ok(reply(StatusCode::OK, s.epoch, m))
}

/// Commits a switched migration: the tags go, the ranges belong to dst, a node left without
/// slots leaves the cluster (its proxy is free), phase `committed`, the epoch moves (the new
/// epoch is recorded as the migration's `committed_epoch`). Committing again is a 200 that
/// changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/migrations/{id}/commit",
    tag = "coordinator",
    request_body(content = Option<CommitRequest>, description = "Optional: the migration's epoch, to refuse a stale commit"),
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("id" = String, Path, description = "Migration id"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Committed (now or before)", body = Migration),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster or migration", body = ErrorBody),
        (status = 409, description = "Not switched yet, ended otherwise, or a stale epoch", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn commit_migration(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(p): ApiPath<MigrationPath>,
    OptionalJsonBody(req): OptionalJsonBody<CommitRequest>,
) -> Result<Response, ApiError> {
    let ((before, m), s) =
        app.mutate(if_match, move |t| Ok((phase_of(t, &p), t.commit(&p.name, &p.id, req.epoch)?))).await?;
    log_moved(before, &m, "migration committed");
    Ok(reply(StatusCode::OK, s.epoch, m))
}

/// Aborts a migration that has not switched: the tags go, the slots stay on src, a dst that
/// joined for it leaves again; phase `aborted`, the epoch moves. Again: 200, no change.
/// Replication mode in `switching`: 202, the source is fenced (`stopping` set, an epoch bump)
/// and the migration ends `aborted` once the source confirms it never promoted the
/// destination's node, or is committed if the switch completed first. From `switched` on (or
/// keys mode, whose keys may already be at the destination): 409.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/migrations/{id}/abort",
    tag = "migrations",
    request_body(content = Option<StopRequest>, description = "Optional: why"),
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("id" = String, Path, description = "Migration id"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Aborted (now or before)", body = Migration),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster or migration", body = ErrorBody),
        (status = 202, description = "Switching: the source is fenced; it ends once the source confirms", body = Migration),
        (status = 409, description = "Switched or later, or keys mode: the migration finishes", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn abort_migration(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(p): ApiPath<MigrationPath>,
    OptionalJsonBody(req): OptionalJsonBody<StopRequest>,
) -> Result<Response, ApiError> {
    let error = req.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "aborted on request".to_string());
    let confirmed = req.source_stopped_epoch;
    let ((before, m), s) = app
        .mutate(if_match, move |t| {
            Ok((phase_of(t, &p), t.stop(&p.name, &p.id, MigrationPhase::Aborted, error, confirmed)?))
        })
        .await?;
    log_moved(before, &m, ABORT);
    Ok(reply(stop_status(&m), s.epoch, m))
}

/// The coordinator's failure report for a migration that has not switched (on a proxy's
/// report, or a destination down for longer than its bound while `switching`): like abort,
/// with phase `failed` and the error recorded; in `switching` it fences first (202) and ends
/// on the call that carries the source's confirmation (`source_stopped_epoch`).
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/migrations/{id}/fail",
    tag = "coordinator",
    request_body(content = StopRequest, description = "`error` is required"),
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("id" = String, Path, description = "Migration id"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Failed (now or before)", body = Migration),
        (status = 400, description = "Bad body or no error given", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster or migration", body = ErrorBody),
        (status = 202, description = "Switching: the source is fenced; it ends once the source confirms", body = Migration),
        (status = 409, description = "Already switched: it can only be committed", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn fail_migration(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(p): ApiPath<MigrationPath>,
    JsonBody(req): JsonBody<StopRequest>,
) -> Result<Response, ApiError> {
    let Some(error) = req.error.filter(|e| !e.trim().is_empty()) else {
        return Err(ApiError::invalid("fail needs the reason: {\"error\": \"…\"}"));
    };
    let confirmed = req.source_stopped_epoch;
    let ((before, m), s) = app
        .mutate(if_match, move |t| {
            Ok((phase_of(t, &p), t.stop(&p.name, &p.id, MigrationPhase::Failed, error, confirmed)?))
        })
        .await?;
    log_moved(before, &m, "migration failure reported");
    Ok(reply(stop_status(&m), s.epoch, m))
}

/// 200 once a stop has ended the migration (now or before), 202 while it waits for the
/// fenced source (or the switch completed first and the migration goes on to its commit).
fn stop_status(m: &Migration) -> StatusCode {
    if m.phase.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}

/// The phase of the migration `p` names before a change, to log only changes that moved it.
fn phase_of(t: &crate::ops::Txn, p: &MigrationPath) -> Option<MigrationPhase> {
    t.state.migration(&p.name, &p.id).map(|(_, m)| m.phase)
}

/// Logs at info that `m` moved: created, or its phase changed (a repeated report, commit or
/// fail that changed nothing logs at debug; an operator's abort always at info). Inside a
/// `migration` span with its id: the span name and field the proxies and the coordinator
/// use, so one `grep 'id=m-7'` follows a migration through all four logs.
fn log_moved(before: Option<MigrationPhase>, m: &Migration, what: &str) {
    let _span = tracing::info_span!("migration", id = %m.id, cluster = %m.cluster).entered();
    let (phase, migration_epoch, error) = (m.phase.as_str(), m.epoch, m.error.as_deref());
    if before.is_none() {
        let slots: Vec<String> = m.slots.iter().map(ToString::to_string).collect();
        let (mode, src, dst, slots) = (m.mode.as_str(), &m.src, &m.dst, slots.join(","));
        tracing::info!(%phase, migration_epoch, %mode, %src, %dst, %slots, "{what}");
    } else if before == Some(m.phase) && what != ABORT {
        tracing::debug!(%phase, "{what}: no change");
    } else {
        let from = before.map(|b| b.as_str()).unwrap_or_default();
        tracing::info!(%from, %phase, error, "{what}");
    }
}

const ABORT: &str = "migration abort asked";
