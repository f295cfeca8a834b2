//! The HTTP API: one table of routes (served and documented from the same list), the token
//! check, the JSON fallbacks, and the handlers, one file per resource.

pub mod clusters;
pub mod coordinators;
pub mod dashboard;
pub mod extract;
pub mod migrations;
pub mod proxies;
pub mod system;

use crate::error::ApiError;
use crate::metrics::{Metrics, UNMATCHED_ROUTE};
use crate::ops::Txn;
use crate::state::State;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State as AxumState};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Serialize;
use sluice_common::model::Epoch;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, Semaphore};

/// The largest body the API reads.
pub const BODY_LIMIT: usize = 1 << 20;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The metadata: whatever [`crate::store::MetaStore`] keeps it (sled or etcd).
    pub store: Arc<Store>,
    /// With a token, mutating calls need `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
    /// The global epoch, for long polls on `GET /api/v1/epoch?after=N`.
    pub epoch: Arc<watch::Sender<Epoch>>,
    /// What `GET /metrics` serves; every answered request is counted in it.
    pub metrics: Arc<Metrics>,
    /// Permits for mutating calls being served (`--max-concurrent-changes`): changes are
    /// applied one at a time, so without a bound a burst of calls would pile up in memory
    /// (and on blocking threads) behind the store's lock.
    pub changes: Arc<Semaphore>,
    /// Live coordinators (their heartbeats): in memory, not metadata.
    pub coordinators: Arc<coordinators::Registry>,
}

impl AppState {
    /// Call it on the runtime: a store that other brokers change (etcd) gets a task that
    /// passes their epochs on to the long polls.
    pub fn new(store: Arc<Store>, token: Option<String>) -> Result<AppState, prometheus::Error> {
        let epoch = Arc::new(watch::Sender::new(store.snapshot().epoch));
        if let Some(mut changes) = store.changes() {
            let epoch = epoch.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let now = *changes.borrow_and_update();
                    epoch.send_if_modified(|e| {
                        let moved = now > *e;
                        if moved {
                            *e = now;
                        }
                        moved
                    });
                }
            });
        }
        Ok(AppState {
            store,
            token: token.map(Arc::from),
            epoch,
            metrics: Arc::new(Metrics::new()?),
            changes: Arc::new(Semaphore::new(crate::config::DEFAULT_MAX_CONCURRENT_CHANGES)),
            coordinators: Arc::new(coordinators::Registry::default()),
        })
    }

    /// At most `n` mutating calls served at once; the others are answered 503 `busy`.
    pub fn with_change_limit(mut self, n: usize) -> AppState {
        self.changes = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Runs one change on a blocking thread (the store's writes and flushes block) and
    /// publishes the resulting epoch.
    pub async fn mutate<R: Send + 'static>(
        &self,
        if_match: Option<Epoch>,
        f: impl FnOnce(&mut Txn) -> Result<R, ApiError> + Clone + Send + 'static,
    ) -> Result<(R, Arc<State>), ApiError> {
        let store = self.store.clone();
        let out = tokio::task::spawn_blocking(move || store.mutate(if_match, f))
            .await
            .map_err(|e| ApiError::internal(format!("the metadata task failed: {e}")))?;
        let now = self.store.snapshot().epoch;
        self.epoch.send_if_modified(|e| {
            let moved = now > *e;
            if moved {
                *e = now;
            }
            moved
        });
        out
    }
}

/// A JSON answer with the global epoch it was computed at as its `ETag`.
pub fn reply<T: Serialize>(status: StatusCode, epoch: Epoch, body: T) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{epoch}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// The router being built, and the list of what it serves (checked against the OpenAPI
/// document by a test).
pub struct RouteTable {
    router: Router<AppState>,
    served: Vec<(Verb, &'static str)>,
}

impl RouteTable {
    fn new() -> RouteTable {
        RouteTable { router: Router::new(), served: Vec::new() }
    }

    fn add<H, T>(mut self, verb: Verb, path: &'static str, handler: H) -> RouteTable
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, on(verb.filter(), handler));
        self.served.push((verb, path));
        self
    }
}

fn route_table() -> RouteTable {
    use Verb::*;
    RouteTable::new()
        .add(Get, "/metrics", system::metrics)
        .add(Get, "/api/v1/epoch", system::get_epoch)
        .add(Get, "/api/v1/openapi.json", system::openapi_json)
        .add(Get, "/api/v1/configs", system::get_configs)
        .add(Get, "/api/v1/migrations", system::list_all_migrations)
        .add(Get, "/api/v1/coordinators", coordinators::list_coordinators)
        .add(Put, "/api/v1/coordinators/{id}", coordinators::put_coordinator)
        .add(Delete, "/api/v1/coordinators/{id}", coordinators::delete_coordinator)
        .add(Get, "/api/v1/proxies", proxies::list_proxies)
        .add(Post, "/api/v1/proxies", proxies::register_proxy)
        .add(Get, "/api/v1/proxies/{address}", proxies::get_proxy)
        .add(Delete, "/api/v1/proxies/{address}", proxies::delete_proxy)
        .add(Get, "/api/v1/proxies/{address}/config", proxies::get_proxy_config)
        .add(Put, "/api/v1/proxies/{address}/health", proxies::put_proxy_health)
        .add(Get, "/api/v1/clusters", clusters::list_clusters)
        .add(Post, "/api/v1/clusters", clusters::create_cluster)
        .add(Get, "/api/v1/clusters/{name}", clusters::get_cluster)
        .add(Delete, "/api/v1/clusters/{name}", clusters::delete_cluster)
        .add(Post, "/api/v1/clusters/{name}/scale", clusters::scale_cluster)
        .add(Post, "/api/v1/clusters/{name}/failover", clusters::failover_cluster)
        .add(Get, "/api/v1/clusters/{name}/migrations", migrations::list_migrations)
        .add(Post, "/api/v1/clusters/{name}/migrations", migrations::create_migration)
        .add(Get, "/api/v1/clusters/{name}/migrations/{id}", migrations::get_migration)
        .add(Post, "/api/v1/clusters/{name}/migrations/{id}/progress", migrations::report_progress)
        .add(Post, "/api/v1/clusters/{name}/migrations/{id}/copy-deleted", migrations::report_copy_deleted)
        .add(Post, "/api/v1/clusters/{name}/migrations/{id}/commit", migrations::commit_migration)
        .add(Post, "/api/v1/clusters/{name}/migrations/{id}/abort", migrations::abort_migration)
        .add(Post, "/api/v1/clusters/{name}/migrations/{id}/fail", migrations::fail_migration)
}

/// Every (method, path) the router serves, in the OpenAPI path syntax.
pub fn served_routes() -> Vec<(&'static str, &'static str)> {
    route_table().served.into_iter().map(|(v, p)| (v.name(), p)).collect()
}

/// The whole API as an axum router.
pub fn router(app: AppState) -> Router {
    route_table()
        .router
        .merge(dashboard::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn(buffer_body))
        .with_state(app)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}; GET /api/v1/openapi.json lists the API", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{method} is not served on {}; GET /api/v1/openapi.json lists the API",
        uri.path()
    ))
}

/// How much of a too-large body is read (and dropped) before answering 413, so the client,
/// still sending, reads the answer instead of a reset connection.
pub const DRAIN_LIMIT: usize = 16 << 20;

/// Reads the whole body before anything answers. A server that answers before reading the
/// body (a 404 for an unknown name, a 401) and then closes the connection can make the
/// client lose the answer in a TCP reset while it is still sending; reading first avoids it.
async fn buffer_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buffered: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return ApiError::invalid(format!("could not read the body: {e}")).into_response(),
        };
        total = total.saturating_add(chunk.len());
        if total <= BODY_LIMIT {
            buffered.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > BODY_LIMIT {
        return ApiError::payload_too_large(format!("the body is {total} bytes or more; the limit is {BODY_LIMIT}"))
            .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buffered))).await
}

/// Whether the request changes something (and so needs the token).
fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Compares without stopping at the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// Checks the bearer token on mutating calls, counts every request in the metrics and logs
/// it at debug level.
async fn guard(AxumState(app): AxumState<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, |m| m.as_str()).to_string();
    let response = authorized(&app, &method, &path, req, next).await;
    let elapsed = started.elapsed();
    app.metrics.observe(method.as_str(), &route, response.status().as_u16(), elapsed);
    tracing::debug!(%method, path, status = response.status().as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}

/// Runs the request if it may: mutating calls need the token when there is one.
async fn authorized(app: &AppState, method: &Method, path: &str, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        if is_mutating(method) {
            let refused = match bearer(&req) {
                None => Some(
                    "this call changes metadata and needs Authorization: Bearer <token> (the broker's --api-token)",
                ),
                Some(given) if !same_secret(given, token.as_bytes()) => Some("the bearer token is wrong"),
                Some(_) => None,
            };
            if let Some(why) = refused {
                tracing::warn!(%method, path, "refused a mutating call: {why}");
                return ApiError::unauthorized(why).into_response();
            }
        }
    }
    if !is_mutating(method) {
        return next.run(req).await;
    }
    let Ok(_permit) = app.changes.clone().try_acquire_owned() else {
        tracing::warn!(%method, path, "refused a mutating call: too many in progress");
        let mut response = ApiError::busy(
            "too many changes in progress (the broker's --max-concurrent-changes); nothing was changed, retry shortly",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(req).await
}
