//! Writers are serialised: of concurrent updates conditioned on the same epoch, exactly one wins.

use crate::harness::*;
use futures::future::join_all;
use reqwest::Method;
use serde_json::json;

both_stores! {
async fn concurrent_if_match_updates_exactly_one_wins() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6030).await;
    for round in 0..4 {
        let epoch = b.epoch().await;
        let tag = format!("\"{epoch}\"");
        let headers = [("if-match", tag.as_str())];
        let bodies: Vec<Vec<u8>> =
            (0..6).map(|i| json!({"name": format!("c{round}-{i}"), "proxies": 1}).to_string().into_bytes()).collect();
        let answers =
            join_all(bodies.into_iter().map(|body| b.raw(Method::POST, "/api/v1/clusters", Some(body), &headers)))
                .await;
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
        statuses.sort();
        assert_eq!(statuses, vec![201, 412, 412, 412, 412, 412], "round {round}: {answers:?}");
        for a in answers.iter().filter(|a| a.status == 412) {
            a.expect_error(412, "epoch_mismatch");
        }
        assert_eq!(b.epoch().await, epoch + 1);
        let clusters = b.get("/api/v1/clusters").await.expect(200)["clusters"].as_array().unwrap().len();
        assert_eq!(clusters, round + 1);
    }
}
}

both_stores! {
async fn concurrent_conflicting_migrations_exactly_one_wins() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6010).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    let epoch = b.epoch().await;
    let answers = join_all((6003..=6008).map(|dst| {
        b.post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(dst), "slots": [[10, 20]]}))
    }))
    .await;
    let won = answers.iter().filter(|a| a.status == 202).count();
    assert_eq!(won, 1, "{answers:?}");
    for a in answers.iter().filter(|a| a.status != 202) {
        a.expect_error(409, "conflict");
    }
    assert_eq!(b.epoch().await, epoch + 1);
    // And two coordinators committing the same migration at once: one bump in all (after
    // the one of `switching`, passed on the way to `switched`).
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "switched"})).await.expect(200);
    assert_eq!(b.epoch().await, epoch + 2);
    let answers =
        join_all((0..4).map(|_| b.post("/api/v1/clusters/shop/migrations/m-1/commit", json!({"epoch": epoch + 1}))))
            .await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert_eq!(b.epoch().await, epoch + 3);
}
}
