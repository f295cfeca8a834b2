//! Coordinators' heartbeats, so several coordinators can split the proxies among themselves
//! (each takes the clusters and free proxies whose rendezvous hash picks it) instead of all
//! polling all.
//!
//! Liveness is not metadata: it is kept in memory only, outside the store, and the epoch does
//! not move. A restarted broker knows no coordinator until their next heartbeat (within a
//! second), and meanwhile each coordinator, seeing itself alone, takes everything, which is
//! safe: coordinators are stateless and every action they take is idempotent.

use super::extract::{ApiPath, OptionalJsonBody};
use super::{reply, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use sluice_common::api::{CoordinatorHeartbeat, CoordinatorInfo, CoordinatorList, ErrorBody};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A heartbeat's lifetime when the coordinator names none.
pub const DEFAULT_TTL: Duration = Duration::from_millis(3000);
/// The accepted lifetimes: shorter would drop a coordinator for one slow round, longer would
/// leave a dead one's proxies unattended for too long.
pub const TTL_MS: std::ops::RangeInclusive<u64> = 100..=60_000;

/// The live coordinators: id → when its last heartbeat expires.
#[derive(Debug, Default)]
pub struct Registry {
    expiries: Mutex<HashMap<String, Instant>>,
}

impl Registry {
    /// Records a heartbeat of `id` good for `ttl` and answers the live coordinators.
    pub fn beat(&self, id: &str, ttl: Duration, now: Instant) -> CoordinatorList {
        let mut map = self.lock();
        map.insert(id.to_string(), now + ttl);
        Self::live(&mut map, now)
    }

    /// Forgets `id` (a coordinator that stops); whether it was live.
    pub fn remove(&self, id: &str, now: Instant) -> bool {
        let mut map = self.lock();
        map.remove(id).is_some_and(|expiry| expiry > now)
    }

    pub fn list(&self, now: Instant) -> CoordinatorList {
        Self::live(&mut self.lock(), now)
    }

    fn live(map: &mut HashMap<String, Instant>, now: Instant) -> CoordinatorList {
        map.retain(|_, expiry| *expiry > now);
        let mut coordinators: Vec<CoordinatorInfo> = map
            .iter()
            .map(|(id, expiry)| CoordinatorInfo {
                id: id.clone(),
                expires_in_ms: expiry.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        coordinators.sort_by(|a, b| a.id.cmp(&b.id));
        CoordinatorList { coordinators }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A map of deadlines cannot be left half-updated by a panic.
        self.expiries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A coordinator id: 1 to 128 of `[A-Za-z0-9._:-]`.
fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("coordinator id {id:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")))
    }
}

/// The live coordinators.
#[utoipa::path(
    get,
    path = "/api/v1/coordinators",
    tag = "coordinator",
    responses((status = 200, description = "Coordinators whose last heartbeat has not expired, by id", body = CoordinatorList))
)]
pub async fn list_coordinators(State(app): State<AppState>) -> Response {
    let epoch = app.store.snapshot().epoch;
    reply(StatusCode::OK, epoch, app.coordinators.list(Instant::now()))
}

/// A coordinator's heartbeat (`{"ttl_ms"}` optional, default 3000): it counts as live until
/// then. Answers the live coordinators, itself included. In memory only; the epoch does not
/// move.
#[utoipa::path(
    put,
    path = "/api/v1/coordinators/{id}",
    tag = "coordinator",
    request_body = CoordinatorHeartbeat,
    params(("id" = String, Path, description = "The coordinator's id (its --id)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Recorded; the live coordinators", body = CoordinatorList),
        (status = 400, description = "Malformed id or body, or a ttl_ms outside 100..=60000", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    )
)]
pub async fn put_coordinator(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJsonBody(beat): OptionalJsonBody<CoordinatorHeartbeat>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let ttl = match beat.ttl_ms {
        None => DEFAULT_TTL,
        Some(ms) if TTL_MS.contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(ApiError::invalid(format!("ttl_ms {ms} is outside {}..={}", TTL_MS.start(), TTL_MS.end())))
        }
    };
    let list = app.coordinators.beat(&id, ttl, Instant::now());
    Ok(reply(StatusCode::OK, app.store.snapshot().epoch, list))
}

/// A coordinator that stops says so, so its proxies are taken over at once rather than when
/// its heartbeat expires. Answers the live coordinators.
#[utoipa::path(
    delete,
    path = "/api/v1/coordinators/{id}",
    tag = "coordinator",
    params(("id" = String, Path, description = "The coordinator's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Forgotten; the live coordinators", body = CoordinatorList),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No live coordinator with this id", body = ErrorBody),
    )
)]
pub async fn delete_coordinator(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let now = Instant::now();
    if !app.coordinators.remove(&id, now) {
        return Err(ApiError::not_found(format!("no live coordinator {id:?}; GET /api/v1/coordinators lists them")));
    }
    Ok(reply(StatusCode::OK, app.store.snapshot().epoch, app.coordinators.list(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_expire() {
        let r = Registry::default();
        let t0 = Instant::now();
        let list = r.beat("b", Duration::from_millis(1000), t0);
        assert_eq!(list.coordinators.len(), 1);
        let list = r.beat("a", Duration::from_millis(200), t0);
        let ids: Vec<&str> = list.coordinators.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "sorted by id");
        let later = r.list(t0 + Duration::from_millis(500));
        assert_eq!(later.coordinators.len(), 1, "a expired: {later:?}");
        assert_eq!(later.coordinators[0].id, "b");
        assert_eq!(later.coordinators[0].expires_in_ms, 500);
        assert!(!r.remove("a", t0 + Duration::from_millis(500)), "a was no longer live");
        assert!(r.remove("b", t0 + Duration::from_millis(500)));
        assert!(r.list(t0).coordinators.is_empty());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("coord-1.host:42").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id(&"x".repeat(129)).is_err());
    }
}
