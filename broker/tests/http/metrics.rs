//! `GET /metrics`: the Prometheus text format agrees with what the API answers, counts the
//! requests it served by route pattern, and needs no token.

use crate::harness::*;
use serde_json::json;

/// Scrapes as Prometheus does: no token (the harness adds it only in `raw`).
async fn scrape(b: &Broker) -> String {
    let resp = b.client.get(format!("{}/metrics", b.base)).send().await.expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "content-type {ctype}");
    resp.text().await.expect("metrics text")
}

/// The value of the sample named exactly `series` (name and labels as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

both_stores! {
async fn metrics_follow_the_metadata_and_count_requests_by_route() {
    let (b, _dir) = fresh(Opts::token("secret")).await;
    register_all(&b, [6001, 6002, 6003, 6004]).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": [addr(6001), addr(6002)]})).await.expect(201);
    b.post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6003), "slots": [[0, 5]]}))
        .await
        .expect(202);
    b.get("/api/v1/clusters/nosuch").await.expect_error(404, "not_found");
    b.get("/no/such/path/1").await;
    b.get("/no/such/path/2").await;

    let text = scrape(&b).await;
    let epoch = b.epoch().await as f64;
    assert_eq!(sample(&text, "sluice_broker_epoch"), Some(epoch), "{text}");
    assert_eq!(sample(&text, "sluice_broker_clusters"), Some(1.0), "{text}");
    // The migration's destination counts as serving (it imports slots).
    assert_eq!(sample(&text, r#"sluice_broker_proxies{state="serving"}"#), Some(3.0), "{text}");
    assert_eq!(sample(&text, r#"sluice_broker_proxies{state="free"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"sluice_broker_proxies{state="failed"}"#), Some(0.0), "{text}");
    // A free destination: auto resolves to replication.
    assert_eq!(sample(&text, r#"sluice_broker_migrations{mode="replication",phase="pending"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"sluice_broker_migrations{mode="keys",phase="pending"}"#), Some(0.0), "{text}");
    let registered = r#"sluice_broker_api_requests_total{method="POST",route="/api/v1/proxies",status="201"}"#;
    assert_eq!(sample(&text, registered), Some(4.0), "{text}");
    let missing = r#"sluice_broker_api_requests_total{method="GET",route="/api/v1/clusters/{name}",status="404"}"#;
    assert_eq!(sample(&text, missing), Some(1.0), "{text}");
    // Paths no route serves share one label, whatever they were.
    let unmatched = r#"sluice_broker_api_requests_total{method="GET",route="unmatched",status="404"}"#;
    assert_eq!(sample(&text, unmatched), Some(2.0), "{text}");
    assert!(!text.contains("/no/such/path"), "{text}");
    let count = r#"sluice_broker_api_request_duration_seconds_count{method="POST",route="/api/v1/clusters"}"#;
    assert_eq!(sample(&text, count), Some(1.0), "{text}");
}
}
