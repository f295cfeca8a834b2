//! Clusters: creation, reading, deletion and scale plans.

use super::extract::{ApiPath, ApiQuery, IfMatch, JsonBody};
use super::{reply, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use sluice_common::api::{
    ClusterDetail, ClusterList, CreateCluster, Deleted, ErrorBody, FailoverRequest, ScalePlan, ScaleRequest,
};
use sluice_common::model::ClusterView;
use utoipa::IntoParams;

/// Cluster names, sorted.
#[utoipa::path(
    get,
    path = "/api/v1/clusters",
    tag = "clusters",
    responses((status = 200, description = "Cluster names", body = ClusterList))
)]
pub async fn list_clusters(State(app): State<AppState>) -> Response {
    let s = app.store.snapshot();
    reply(StatusCode::OK, s.epoch, ClusterList { clusters: s.clusters.keys().cloned().collect() })
}

/// Creates a cluster on N free proxies (`"proxies": 3`) or on the listed free proxies, with
/// the 16384 slots split evenly over them in order.
#[utoipa::path(
    post,
    path = "/api/v1/clusters",
    tag = "clusters",
    request_body = CreateCluster,
    params(("If-Match" = Option<String>, Header, description = "Expected global epoch")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = ClusterView),
        (status = 400, description = "Bad name, count or address", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "Name taken, not enough free proxies, or a listed proxy is not free", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn create_cluster(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<CreateCluster>,
) -> Result<Response, ApiError> {
    let (view, s) = app.mutate(if_match, move |t| t.create_cluster(req)).await?;
    Ok(reply(StatusCode::CREATED, s.epoch, view))
}

/// One cluster: its nodes and their slots, with migration tags (the `ClusterView` the proxies
/// hold), and `scale`, the cluster's last scale plan with its progress, if it had one.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{name}",
    tag = "clusters",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "The cluster", body = ClusterDetail),
        (status = 404, description = "No such cluster", body = ErrorBody),
    )
)]
pub async fn get_cluster(State(app): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    let s = app.store.snapshot();
    let view = s
        .clusters
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no cluster named {name:?}; GET /api/v1/clusters lists them")))?;
    let detail = ClusterDetail { cluster: view.clone(), scale: s.scales.get(&name).cloned() };
    Ok(reply(StatusCode::OK, s.epoch, detail))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteClusterQuery {
    /// Delete even while migrations of the cluster are running (they are dropped).
    #[serde(default)]
    pub force: bool,
}

/// Deletes a cluster and its migration records; its proxies become free.
#[utoipa::path(
    delete,
    path = "/api/v1/clusters/{name}",
    tag = "clusters",
    params(
        ("name" = String, Path, description = "Cluster name"),
        DeleteClusterQuery,
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "Migrations are running (use ?force=true)", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn delete_cluster(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteClusterQuery>,
) -> Result<Response, ApiError> {
    let n = name.clone();
    let ((epoch, freed), s) = app.mutate(if_match, move |t| t.delete_cluster(&n, q.force)).await?;
    Ok(reply(StatusCode::OK, s.epoch, Deleted { deleted: name, epoch, freed }))
}

/// Scale-out (`{"add": N}`: N free proxies join) or scale-in (`{"remove": [proxies]}`: those
/// nodes give all their slots to the others and leave): plans the migrations that leave every
/// node with an even share of the slots, stores the plan, and starts its first steps (at most
/// `--scale-concurrency`, never two sharing a proxy; the next ones start when one is done).
/// Answers the plan and the migrations started now, all at one epoch.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/scale",
    tag = "clusters",
    request_body = ScaleRequest,
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Plan stored, first migrations created", body = ScalePlan),
        (status = 400, description = "Bad body, add out of range, remove naming an unknown proxy, a proxy that is not a node, or every node", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "Not enough free proxies, a plan or a migration of the cluster still running, or a failed proxy in the plan", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn scale_cluster(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(name): ApiPath<String>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> Result<Response, ApiError> {
    let ((plan, migrations), s) = app.mutate(if_match, move |t| t.scale(&name, req)).await?;
    Ok(reply(StatusCode::ACCEPTED, s.epoch, ScalePlan { epoch: s.epoch, plan, migrations }))
}

/// Failover: a replica of `master`'s shard (`promote`, or the first not marked failed)
/// becomes the shard's master; the former master becomes a replica, fenced: its proxy makes
/// its node replicate the new master before it serves anything of the shard again. Refused
/// while a migration involves the shard.
#[utoipa::path(
    post,
    path = "/api/v1/clusters/{name}/failover",
    tag = "clusters",
    request_body = FailoverRequest,
    params(
        ("name" = String, Path, description = "Cluster name"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cluster with the new master", body = ClusterView),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "Not a master, no replica to promote, the replica is failed, or a migration involves the shard", body = ErrorBody),
        (status = 412, description = "Epoch mismatch (another failover or change came first)", body = ErrorBody),
    )
)]
pub async fn failover_cluster(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(name): ApiPath<String>,
    JsonBody(req): JsonBody<FailoverRequest>,
) -> Result<Response, ApiError> {
    let (view, s) = app.mutate(if_match, move |t| t.failover(&name, req)).await?;
    Ok(reply(StatusCode::OK, s.epoch, view))
}
