//! Acknowledged changes survive SIGKILL, and the epoch never goes back across restarts.

use crate::harness::*;
use serde_json::json;

both_stores! {
async fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut b = Broker::start_in(&data, Opts::default()).await;
    register_all(&b, 6001..=6004).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);

    // A change, acknowledged, then SIGKILL at once.
    let m = b
        .post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6004), "slots": [[0, 99]]}))
        .await
        .expect(202)
        .clone();
    b.kill();
    let mut b = Broker::start_in(&data, Opts::default()).await;
    assert_eq!(b.epoch().await, 6, "the acknowledged epoch is back");
    assert_eq!(b.get("/api/v1/clusters/shop/migrations/m-1").await.expect(200), &m);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["epoch"], 6);
    assert_eq!(node_slots(&view, &addr(6004)).unwrap(), vec![tagged(0, 99, "importing", "m-1")]);

    // A status report (no epoch bump) is durable too.
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "following", "progress": {"lag": 3}}))
        .await
        .expect(200);
    b.kill();
    let mut b = Broker::start_in(&data, Opts::default()).await;
    let m = b.get("/api/v1/clusters/shop/migrations/m-1").await.expect(200).clone();
    assert_eq!(m["phase"], "following");
    assert_eq!(m["progress"], json!({"lag": 3}));
    assert_eq!(b.epoch().await, 6);
    // So is `switching`, which allows the switch (a bump: the configs say so).
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "switched"})).await.expect(200);
    b.kill();
    let mut b = Broker::start_in(&data, Opts::default()).await;
    assert_eq!(b.get("/api/v1/clusters/shop/migrations/m-1").await.expect(200)["phase"], "switched");
    assert_eq!(b.epoch().await, 7);
    let config = b.get(&format!("/api/v1/proxies/{}/config", addr(6001))).await.expect(200).clone();
    assert_eq!(config["migrations"][0]["switch_allowed"], true, "{config}");

    // Epochs keep climbing across kills: each acknowledged change is the previous epoch + 1.
    let mut last = b.epoch().await;
    for port in 6005..=6008 {
        let model = b.model().await;
        b.register(port).await.expect(201);
        b.kill();
        b = Broker::start_in(&data, Opts::default()).await;
        let now = b.epoch().await;
        assert_eq!(now, last + 1, "epoch went from {last} to {now} across a restart");
        last = now;
        let after = b.model().await;
        assert_eq!(after["clusters"], model["clusters"]);
        assert!(after["proxies"]["proxies"].as_array().unwrap().iter().any(|p| p["address"] == addr(port)));
    }
    // The commit after a restart still bumps from where it was.
    let c = b.post("/api/v1/clusters/shop/migrations/m-1/commit", json!({"epoch": 6})).await;
    assert_eq!(c.expect(200)["phase"], "committed");
    assert_eq!(b.epoch().await, last + 1);
    let model = b.model().await;
    b.kill();
    let b = Broker::start_in(&data, Opts::default()).await;
    assert_eq!(b.model().await, model, "the whole model is back as it was");
    // Migration ids are not reused after a restart.
    let m = b
        .post(
            "/api/v1/clusters/shop/migrations",
            json!({"src": addr(6002), "dst": addr(6005), "slots": [[6000, 6001]]}),
        )
        .await;
    assert_eq!(m.expect(202)["id"], "m-2");
}
}
