//! What the three programs' Prometheus endpoints share (feature `metrics`): the text format's
//! encoding and content type, and the small HTTP server of `--metrics` that serves it.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::Arc;
use tokio::net::TcpListener;

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything in `registry`, in the text format.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(format!("the text format is not UTF-8: {e}")))
}

/// The answer to a scrape: the text, or a 500 saying why there is none.
pub fn response(rendered: Result<String, prometheus::Error>) -> Response {
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n")).into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until the process ends; `render` runs at each scrape.
pub async fn serve(
    listener: TcpListener,
    render: impl Fn() -> Result<String, prometheus::Error> + Send + Sync + 'static,
) -> std::io::Result<()> {
    let render = Arc::new(render);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { response(render()) }
        }),
    );
    axum::serve(listener, app).await
}
