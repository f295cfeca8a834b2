//! Proxies: registration, listing, deletion, their configs and failure reports.

use super::extract::{ApiPath, IfMatch, JsonBody};
use super::{reply, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use sluice_common::api::{Deleted, ErrorBody, HealthReport, ProxyInfo, ProxyList, RegisterProxy};
use sluice_common::model::ProxyConfig;

fn unknown(address: &str) -> ApiError {
    ApiError::not_found(format!("no proxy registered as {address:?}; GET /api/v1/proxies lists them"))
}

/// All registered proxies, with their cluster and state.
#[utoipa::path(
    get,
    path = "/api/v1/proxies",
    tag = "proxies",
    responses((status = 200, description = "Registered proxies, ordered by address", body = ProxyList))
)]
pub async fn list_proxies(State(app): State<AppState>) -> Response {
    let s = app.store.snapshot();
    reply(StatusCode::OK, s.epoch, ProxyList { proxies: s.proxy_infos() })
}

/// Registers a proxy (201), or confirms a known one (200). A free proxy may change its
/// control and node addresses by registering again; a serving one may not change its node.
#[utoipa::path(
    post,
    path = "/api/v1/proxies",
    tag = "proxies",
    request_body = RegisterProxy,
    params(("If-Match" = Option<String>, Header, description = "Expected global epoch, e.g. \"17\"")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = ProxyInfo),
        (status = 200, description = "Already registered", body = ProxyInfo),
        (status = 400, description = "Malformed body or address", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 409, description = "A serving proxy cannot change its node address", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn register_proxy(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<RegisterProxy>,
) -> Result<Response, ApiError> {
    let ((info, created), s) = app.mutate(if_match, move |t| t.register_proxy(req)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(reply(status, s.epoch, info))
}

/// One proxy.
#[utoipa::path(
    get,
    path = "/api/v1/proxies/{address}",
    tag = "proxies",
    params(("address" = String, Path, description = "The proxy's host:port")),
    responses(
        (status = 200, description = "The proxy", body = ProxyInfo),
        (status = 404, description = "Not registered", body = ErrorBody),
    )
)]
pub async fn get_proxy(State(app): State<AppState>, ApiPath(address): ApiPath<String>) -> Result<Response, ApiError> {
    let s = app.store.snapshot();
    let p = s.proxies.get(&address).ok_or_else(|| unknown(&address))?;
    Ok(reply(StatusCode::OK, s.epoch, s.proxy_info(p)))
}

/// Deletes a free proxy (a failed one that serves no cluster counts as free here).
#[utoipa::path(
    delete,
    path = "/api/v1/proxies/{address}",
    tag = "proxies",
    params(
        ("address" = String, Path, description = "The proxy's host:port"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 409, description = "The proxy is a node of a cluster", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn delete_proxy(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(address): ApiPath<String>,
) -> Result<Response, ApiError> {
    let a = address.clone();
    let (epoch, s) = app.mutate(if_match, move |t| t.delete_proxy(&a)).await?;
    Ok(reply(StatusCode::OK, s.epoch, Deleted { deleted: address, epoch, freed: Vec::new() }))
}

/// The config the proxy must hold now (what `UMCTL SETDB` and gRPC `SetConfig` take): its
/// cluster, exactly as `GET /api/v1/clusters/{name}` shows it (absent for a free proxy), and
/// the migrations it takes part in, at the current global epoch.
#[utoipa::path(
    get,
    path = "/api/v1/proxies/{address}/config",
    tag = "coordinator",
    params(("address" = String, Path, description = "The proxy's host:port")),
    responses(
        (status = 200, description = "The proxy's config", body = ProxyConfig),
        (status = 404, description = "Not registered", body = ErrorBody),
    )
)]
pub async fn get_proxy_config(
    State(app): State<AppState>,
    ApiPath(address): ApiPath<String>,
) -> Result<Response, ApiError> {
    let s = app.store.snapshot();
    let config = s.proxy_config(&address).ok_or_else(|| unknown(&address))?;
    Ok(reply(StatusCode::OK, s.epoch, config))
}

/// A failure report (`{"failed":true,"reason":…}`) or its end (`{"failed":false}`). Status
/// only: the epoch does not move. A failed proxy is listed with state `failed` and is never
/// picked for new clusters, scale-outs or migrations.
#[utoipa::path(
    put,
    path = "/api/v1/proxies/{address}/health",
    tag = "coordinator",
    request_body = HealthReport,
    params(
        ("address" = String, Path, description = "The proxy's host:port"),
        ("If-Match" = Option<String>, Header, description = "Expected global epoch"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded", body = ProxyInfo),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "Not registered", body = ErrorBody),
        (status = 412, description = "Epoch mismatch", body = ErrorBody),
    )
)]
pub async fn put_proxy_health(
    State(app): State<AppState>,
    IfMatch(if_match): IfMatch,
    ApiPath(address): ApiPath<String>,
    JsonBody(report): JsonBody<HealthReport>,
) -> Result<Response, ApiError> {
    let (info, s) = app.mutate(if_match, move |t| t.set_health(&address, report)).await?;
    Ok(reply(StatusCode::OK, s.epoch, info))
}
