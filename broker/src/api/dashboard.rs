//! The web dashboard at `/`: three static files compiled into the binary (no build step, no
//! CDN), which read and change everything through the public API like any other client.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../dashboard/index.html");
const APP: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // Always fetched again: a new broker version must not run an old page.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}

/// The dashboard's routes (outside `/api/v1`, so not in the OpenAPI document).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/dashboard/app.js", get(|| async { file("text/javascript; charset=utf-8", APP) }))
        .route("/dashboard/style.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
}
