//! Every refusal: its status, its error shape, and a model (epoch included) left exactly as it
//! was.

use crate::harness::*;
use reqwest::Method;
use serde_json::json;

/// Cluster `shop` on 6001-6003, cluster `other` on 6004, migration m-1 (shop, 6001 → free
/// 6005, slots 0-100, replication, reported `starting`), free proxies 6006-6008.
async fn setup(b: &Broker) {
    register_all(b, 6001..=6008).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": [addr(6001), addr(6002), addr(6003)]}))
        .await
        .expect(201);
    b.post("/api/v1/clusters", json!({"name": "other", "proxies": [addr(6004)]})).await.expect(201);
    let m = b
        .post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6005), "slots": [[0, 100]]}))
        .await;
    assert_eq!(m.expect(202)["mode"], "replication");
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "starting"})).await.expect(200);
}

struct Case {
    method: Method,
    path: String,
    body: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
    /// A word the message must contain (it says what to fix).
    says: &'static str,
}

fn case(method: Method, path: &str, body: Option<&str>, status: u16, code: &'static str, says: &'static str) -> Case {
    Case { method, path: path.to_string(), body: body.map(str::to_string), headers: Vec::new(), status, code, says }
}

fn mig(body: serde_json::Value, status: u16, code: &'static str, says: &'static str) -> Case {
    case(Method::POST, "/api/v1/clusters/shop/migrations", Some(&body.to_string()), status, code, says)
}

both_stores! {
async fn every_refusal_changes_nothing() {
    let (b, _dir) = fresh(Opts::default()).await;
    setup(&b).await;
    let model = b.model().await;
    let epoch = model["epoch"].as_u64().unwrap();
    let (a1, a2, a4, a5, a6) = (addr(6001), addr(6002), addr(6004), addr(6005), addr(6006));
    let post = |path: &str, body: serde_json::Value, status, code, says| {
        case(Method::POST, path, Some(&body.to_string()), status, code, says)
    };
    let mut cases = vec![
        // Proxies.
        post(
            "/api/v1/proxies",
            json!({"address": "nohost", "control_address": "a:1", "node_address": "b:2"}),
            400,
            "invalid",
            "host:port",
        ),
        post(
            "/api/v1/proxies",
            json!({"address": "h:1", "control_address": "a:1", "node_address": "b:0"}),
            400,
            "invalid",
            "port",
        ),
        post("/api/v1/proxies", json!({"address": "h:1"}), 400, "invalid", "missing field"),
        post(
            "/api/v1/proxies",
            json!({"address": "h:1", "control_address": "a:1", "node_address": "b:2", "x": 1}),
            400,
            "invalid",
            "unknown field",
        ),
        post("/api/v1/proxies", json!([1, 2]), 400, "invalid", "JSON"),
        case(Method::POST, "/api/v1/proxies", Some("{bad"), 400, "invalid", "JSON"),
        case(Method::POST, "/api/v1/proxies", Some(""), 400, "invalid", "empty"),
        case(Method::DELETE, &format!("/api/v1/proxies/{a1}"), None, 409, "conflict", "free"),
        case(Method::DELETE, "/api/v1/proxies/127.0.0.1:1", None, 404, "not_found", "no proxy"),
        case(Method::PUT, &format!("/api/v1/proxies/{a6}/health"), Some(r#"{"failed":"yes"}"#), 400, "invalid", "JSON"),
        case(Method::GET, "/api/v1/proxies/127.0.0.1:1/config", None, 404, "not_found", "no proxy"),
        // Clusters.
        post("/api/v1/clusters", json!({"name": "bad name!", "proxies": 1}), 400, "invalid", "A-Z"),
        post("/api/v1/clusters", json!({"name": "a".repeat(65), "proxies": 1}), 400, "invalid", "64"),
        post("/api/v1/clusters", json!({"name": "", "proxies": 1}), 400, "invalid", "name"),
        post("/api/v1/clusters", json!({"name": "shop", "proxies": 1}), 409, "conflict", "already exists"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": 0}), 400, "invalid", "between"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": 4}), 409, "conflict", "only 3 are free"),
        post(
            "/api/v1/clusters",
            json!({"name": "new", "proxies": [a6, "127.0.0.1:1"]}),
            409,
            "conflict",
            "not registered",
        ),
        post("/api/v1/clusters", json!({"name": "new", "proxies": [a6, a1]}), 409, "conflict", "not free"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": [a6, a6]}), 400, "invalid", "twice"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": ["bad"]}), 400, "invalid", "host:port"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": []}), 400, "invalid", "between"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": -1}), 400, "invalid", "proxies"),
        post("/api/v1/clusters", json!({"name": "new", "proxies": "three"}), 400, "invalid", "proxies"),
        post("/api/v1/clusters", json!({"name": "new"}), 400, "invalid", "proxies"),
        case(Method::DELETE, "/api/v1/clusters/nope", None, 404, "not_found", "nope"),
        case(Method::DELETE, "/api/v1/clusters/shop", None, 409, "conflict", "force"),
        case(Method::GET, "/api/v1/clusters/nope", None, 404, "not_found", "nope"),
        case(Method::GET, "/api/v1/clusters/nope/migrations", None, 404, "not_found", "nope"),
        // Migrations.
        post(
            "/api/v1/clusters/nope/migrations",
            json!({"src": a1, "dst": a6, "slots": [[0, 1]]}),
            404,
            "not_found",
            "nope",
        ),
        mig(json!({"src": a1, "dst": a1, "slots": [[200, 300]]}), 400, "invalid", "different"),
        mig(json!({"src": a1, "dst": a6, "slots": [[200, 16384]]}), 400, "invalid", "0..16383"),
        mig(json!({"src": a1, "dst": a6, "slots": [[300, 200]]}), 400, "invalid", "start"),
        mig(json!({"src": a1, "dst": a6, "slots": []}), 400, "invalid", "empty"),
        mig(
            json!({"src": a1, "dst": a6, "slots": (0..1025).map(|i| [i * 2, i * 2]).collect::<Vec<_>>()}),
            400,
            "invalid",
            "at most 1024",
        ),
        mig(json!({"src": a1, "dst": a6, "slots": [[200, 300], [250, 400]]}), 400, "invalid", "overlap"),
        mig(json!({"src": a1, "dst": a6, "slots": [[-1, 5]]}), 400, "invalid", "JSON"),
        mig(json!({"src": a1, "dst": a6, "slots": [[1, 2, 3]]}), 400, "invalid", "JSON"),
        mig(json!({"src": a1, "dst": a6, "slots": [[6000, 6001]]}), 409, "conflict", "owned by"),
        mig(json!({"src": a1, "dst": a6, "slots": [[50, 60]]}), 409, "conflict", "m-1"),
        mig(json!({"src": a1, "dst": a6, "slots": [[90, 200]]}), 409, "conflict", "m-1"),
        mig(json!({"src": a1, "dst": a4, "slots": [[200, 300]]}), 409, "conflict", "other"),
        mig(json!({"src": a1, "dst": "127.0.0.1:1", "slots": [[200, 300]]}), 409, "conflict", "not registered"),
        mig(json!({"src": a6, "dst": a1, "slots": [[200, 300]]}), 409, "conflict", "not a node"),
        mig(json!({"src": a1, "dst": a2, "slots": [[200, 300]], "mode": "replication"}), 409, "conflict", "keys"),
        mig(
            json!({"src": a2, "dst": a5, "slots": [[6000, 6010]], "mode": "keys"}),
            409,
            "conflict",
            "one import at a time",
        ),
        mig(json!({"src": a1, "dst": a6, "slots": [[200, 300]], "mode": "fast"}), 400, "invalid", "variant"),
        mig(json!({"src": "bad", "dst": a6, "slots": [[200, 300]]}), 400, "invalid", "host:port"),
        mig(json!({"src": a1, "slots": [[200, 300]]}), 400, "invalid", "dst"),
        // Progress, commit, abort, fail.
        post(
            "/api/v1/clusters/shop/migrations/m-1/progress",
            json!({"phase": "warp"}),
            409,
            "conflict",
            "unknown phase",
        ),
        post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": 5}), 400, "invalid", "JSON"),
        post(
            "/api/v1/clusters/shop/migrations/m-1/progress",
            json!({"phase": "pending"}),
            409,
            "conflict",
            "backwards",
        ),
        post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "committed"}), 409, "conflict", "commit"),
        post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "failed"}), 409, "conflict", "fail"),
        post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "done"}), 409, "conflict", "committed"),
        post(
            "/api/v1/clusters/shop/migrations/m-1/progress",
            json!({"phase": "following", "progress": [1]}),
            400,
            "invalid",
            "object",
        ),
        post(
            "/api/v1/clusters/shop/migrations/m-1/progress",
            json!({"phase": "following", "at": "yesterday"}),
            400,
            "invalid",
            "RFC 3339",
        ),
        post(
            "/api/v1/clusters/shop/migrations/m-1/progress",
            json!({"phase": "following", "at": 5}),
            400,
            "invalid",
            "JSON",
        ),
        post("/api/v1/clusters/shop/migrations/m-99/progress", json!({"phase": "following"}), 404, "not_found", "m-99"),
        post("/api/v1/clusters/nope/migrations/m-1/progress", json!({"phase": "following"}), 404, "not_found", "nope"),
        post("/api/v1/clusters/other/migrations/m-1/progress", json!({"phase": "following"}), 404, "not_found", "m-1"),
        post("/api/v1/clusters/shop/migrations/m-1/commit", json!({}), 409, "conflict", "switched"),
        post("/api/v1/clusters/shop/migrations/m-1/commit", json!({"epoch": 3}), 409, "conflict", "stale"),
        post("/api/v1/clusters/shop/migrations/m-1/commit", json!({"epoch": "x"}), 400, "invalid", "JSON"),
        post("/api/v1/clusters/shop/migrations/m-7/commit", json!({}), 404, "not_found", "m-7"),
        post("/api/v1/clusters/shop/migrations/m-99/abort", json!({}), 404, "not_found", "m-99"),
        post("/api/v1/clusters/shop/migrations/m-1/fail", json!({}), 400, "invalid", "error"),
        case(Method::GET, "/api/v1/clusters/shop/migrations/m-99", None, 404, "not_found", "m-99"),
        // Scale.
        post("/api/v1/clusters/shop/scale", json!({"add": 0}), 400, "invalid", "between"),
        post("/api/v1/clusters/shop/scale", json!({"add": 4}), 409, "conflict", "free"),
        post("/api/v1/clusters/shop/scale", json!({"add": "x"}), 400, "invalid", "JSON"),
        post("/api/v1/clusters/nope/scale", json!({"add": 1}), 404, "not_found", "nope"),
        // Routes and methods.
        case(Method::GET, "/api/v1/nope", None, 404, "not_found", "openapi"),
        case(Method::PATCH, "/api/v1/clusters", None, 405, "method_not_allowed", "PATCH"),
        case(Method::GET, "/api/v1/epoch?after=x", None, 400, "invalid", "query"),
    ];
    // If-Match.
    let valid_cluster = json!({"name": "new", "proxies": 1}).to_string();
    let mut stale =
        case(Method::POST, "/api/v1/clusters", Some(&valid_cluster), 412, "epoch_mismatch", "current epoch");
    stale.headers.push(("if-match", "\"999\""));
    cases.push(stale);
    let mut garbage = case(Method::POST, "/api/v1/clusters", Some(&valid_cluster), 400, "invalid", "If-Match");
    garbage.headers.push(("if-match", "abc"));
    cases.push(garbage);
    let mut stale_delete = case(Method::DELETE, &format!("/api/v1/proxies/{a6}"), None, 412, "epoch_mismatch", "epoch");
    stale_delete.headers.push(("if-match", "1"));
    cases.push(stale_delete);

    for c in &cases {
        let answer = b.raw(c.method.clone(), &c.path, c.body.clone().map(String::into_bytes), &c.headers).await;
        assert_eq!(answer.status.as_u16(), c.status, "{} {} {:?}: {}", c.method, c.path, c.body, answer.body);
        let message = answer.expect_error(c.status, c.code);
        assert!(
            message.contains(c.says),
            "{} {} {:?}: message {message:?} should mention {:?}",
            c.method,
            c.path,
            c.body,
            c.says
        );
        assert_eq!(b.epoch().await, epoch, "{} {} changed the epoch", c.method, c.path);
    }
    assert_eq!(b.model().await, model, "a refusal changed the model");

    // The same If-Match, right: the change goes through.
    let right = format!("\"{epoch}\"");
    let ok = b
        .raw(Method::POST, "/api/v1/clusters", Some(valid_cluster.into_bytes()), &[("if-match", right.as_str())])
        .await;
    ok.expect(201);
    assert_eq!(b.epoch().await, epoch + 1);
}
}
