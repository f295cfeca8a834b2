//! Limits a bad or greedy client meets (issue 22): every mutating route needs the token (the
//! list comes from the router itself, so a new route cannot be forgotten), bodies past 1 MiB
//! are refused with 413, and mutating calls past `--max-concurrent-changes` get 503 `busy`.
//! Each refusal changes nothing.

use crate::harness::*;
use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

/// A route's path with its parameters filled in with things that exist.
fn concrete(path: &str, migration: &str) -> String {
    path.replace("{address}", &addr(6003)).replace("{name}", "shop").replace("{id}", migration)
}

#[tokio::test]
async fn every_mutating_route_of_the_router_needs_the_token() {
    let (mut b, _dir) = fresh(Opts::token("s3cret")).await;
    b.token = Some("s3cret".into());
    register_all(&b, 6001..=6004).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    let m = b
        .post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6004), "slots": [[0, 10]]}))
        .await
        .expect(202)
        .clone();
    let id = m["id"].as_str().expect("migration id").to_string();
    let model = b.model().await;
    let epoch = b.epoch().await;

    let routes = sluice_broker::api::served_routes();
    let mut mutating = 0;
    for token in [None, Some("wrong")] {
        b.token = token.map(str::to_string);
        for (method, path) in &routes {
            let url = concrete(path, &id);
            let method: Method = method.parse().expect("a method");
            let answer = b.raw(method.clone(), &url, Some(b"{}".to_vec()), &[]).await;
            if method == Method::GET {
                assert_ne!(answer.status.as_u16(), 401, "a read needs no token: GET {path}");
            } else {
                answer.expect_error(401, "unauthorized");
                mutating += 1;
            }
            assert_eq!(b.epoch().await, epoch, "{method} {path} without the token moved the epoch");
        }
    }
    // The router serves 12 mutating routes today; the walk must have seen them all.
    assert!(mutating >= 2 * 12, "only {mutating} mutating calls walked: {routes:?}");
    assert_eq!(b.model().await, model, "a refused call changed something");
}

#[tokio::test]
async fn a_body_past_one_mib_is_refused_with_413_and_changes_nothing() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6002).await;
    let model = b.model().await;
    // A valid JSON object, padded past the limit with whitespace.
    let mut body = serde_json::to_vec(&json!({"name": "big", "proxies": 1})).expect("json");
    body.splice(1..1, std::iter::repeat_n(b' ', sluice_broker::api::BODY_LIMIT));
    let answer = b.raw(Method::POST, "/api/v1/clusters", Some(body), &[]).await;
    let message = answer.expect_error(413, "payload_too_large");
    assert!(message.contains(&sluice_broker::api::BODY_LIMIT.to_string()), "{message}");
    assert_eq!(b.model().await, model, "a refused body changed something");
    // Just under the limit is read and served.
    let mut body = serde_json::to_vec(&json!({"name": "small", "proxies": 1})).expect("json");
    body.splice(1..1, std::iter::repeat_n(b' ', sluice_broker::api::BODY_LIMIT - body.len()));
    b.raw(Method::POST, "/api/v1/clusters", Some(body), &[]).await.expect(201);
}

#[tokio::test]
async fn mutating_calls_past_the_concurrency_bound_get_503_and_change_nothing() {
    let opts = Opts { args: vec!["--max-concurrent-changes".into(), "1".into()], envs: Vec::new() };
    let (b, _dir) = fresh(opts).await;
    // Bursts of registrations of new proxies until one meets a busy broker; every answer is
    // either a registration or the promised 503, and exactly the registered ones exist.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut registered = 0usize;
    let mut busy = 0usize;
    let mut port = 10_000u16;
    while busy == 0 {
        assert!(Instant::now() < deadline, "no call was ever refused as busy with --max-concurrent-changes 1");
        let ports: Vec<u16> = (port..port + 32).collect();
        port += 32;
        let answers = join_all(ports.iter().map(|p| b.register(*p))).await;
        for a in &answers {
            match a.status.as_u16() {
                201 => registered += 1,
                503 => {
                    let message = a.expect_error(503, "busy");
                    assert!(message.contains("--max-concurrent-changes"), "{message}");
                    busy += 1;
                }
                other => panic!("unexpected {other}: {}", a.body),
            }
        }
    }
    let listed = b.get("/api/v1/proxies").await.expect(200)["proxies"].as_array().expect("proxies").len();
    assert_eq!(listed, registered, "a refused registration was kept, or an accepted one lost");
    assert_eq!(b.epoch().await as usize, registered, "one epoch per registration, none for a refusal");
    // Reads are not bounded by it.
    let reads = join_all((0..32).map(|_| b.get("/api/v1/proxies"))).await;
    assert!(reads.iter().all(|a| a.status == 200));
}
