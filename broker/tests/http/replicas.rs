//! Shards with replicas: creation takes free proxies as replicas, they are members of the
//! cluster (not free, in the configs, freed with it), and migrations name masters only.

use crate::harness::*;
use serde_json::{json, Value};

fn replicas_of(view: &Value, master: &str) -> Vec<String> {
    let node = view["nodes"].as_array().unwrap().iter().find(|n| n["proxy"] == master).unwrap();
    node["replicas"]
        .as_array()
        .map(|r| r.iter().map(|r| r["proxy"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

both_stores! {
async fn a_cluster_with_one_replica_per_shard_takes_free_proxies_as_replicas() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6007).await;
    let view = b.post("/api/v1/clusters", json!({"name": "c", "proxies": 3, "replicas": 1})).await.expect(201).clone();
    let masters: Vec<String> =
        view["nodes"].as_array().unwrap().iter().map(|n| n["proxy"].as_str().unwrap().to_string()).collect();
    assert_eq!(masters, vec![addr(6001), addr(6002), addr(6003)]);
    assert_eq!(replicas_of(&view, &addr(6001)), vec![addr(6004)]);
    assert_eq!(replicas_of(&view, &addr(6003)), vec![addr(6006)]);
    let node = &view["nodes"][0]["replicas"][0];
    assert_eq!(node["node"], format!("127.0.0.1:{}", 6004 + 2000), "the replica's node travels with it: {view}");
    for (port, state) in [(6004, "serving"), (6007, "free")] {
        let p = b.get(&format!("/api/v1/proxies/{}", addr(port))).await.expect(200).clone();
        assert_eq!(p["state"], state, "{p}");
    }
    // A replica's config carries the cluster it is a member of.
    let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6005))).await.expect(200).clone();
    assert_eq!(c["cluster"]["name"], "c", "{c}");
    // Migrations move slots between masters: a replica is neither src nor dst.
    for body in [
        json!({"src": addr(6004), "dst": addr(6007), "slots": [[0, 10]]}),
        json!({"src": addr(6001), "dst": addr(6005), "slots": [[0, 10]]}),
    ] {
        let msg = b.post("/api/v1/clusters/c/migrations", body).await.expect_error(409, "conflict");
        assert!(msg.contains("is a replica of the shard of"), "{msg}");
    }
    // Deleting the cluster frees replicas too.
    let deleted = b.delete("/api/v1/clusters/c").await.expect(200).clone();
    assert_eq!(deleted["freed"].as_array().unwrap().len(), 6, "{deleted}");
    let p = b.get(&format!("/api/v1/proxies/{}", addr(6006))).await.expect(200).clone();
    assert_eq!(p["state"], "free");
}
}

both_stores! {
async fn too_few_free_proxies_for_the_replicas_is_a_conflict_that_changes_nothing() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6005).await;
    let before = b.epoch().await;
    let msg = b
        .post("/api/v1/clusters", json!({"name": "c", "proxies": 3, "replicas": 1}))
        .await
        .expect_error(409, "conflict");
    assert!(msg.contains("needs 6 free proxies"), "{msg}");
    let msg = b
        .post("/api/v1/clusters", json!({"name": "c", "proxies": [addr(6001), addr(6002), addr(6003)], "replicas": 1}))
        .await
        .expect_error(409, "conflict");
    assert!(msg.contains("replicas per shard"), "{msg}");
    let msg = b
        .post("/api/v1/clusters", json!({"name": "c", "proxies": 1, "replicas": 9}))
        .await
        .expect_error(400, "invalid");
    assert!(msg.contains("replicas must be between 0 and 5"), "{msg}");
    assert_eq!(b.epoch().await, before, "nothing changed");
    assert_eq!(b.get("/api/v1/clusters").await.expect(200)["clusters"], json!([]));
}
}

both_stores! {
async fn failover_promotes_a_replica_and_fences_the_former_master_once() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6006).await;
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": 3, "replicas": 1})).await.expect(201);
    let epoch = b.epoch().await;
    let stale = format!("\"{}\"", epoch - 1);
    let current = format!("\"{epoch}\"");
    let body = json!({"master": addr(6001), "reason": "master unreachable for 5s"}).to_string().into_bytes();
    let refused =
        b.raw(reqwest::Method::POST, "/api/v1/clusters/c/failover", Some(body.clone()), &[("If-Match", &stale)]).await;
    refused.expect_error(412, "epoch_mismatch");
    let view = b
        .raw(reqwest::Method::POST, "/api/v1/clusters/c/failover", Some(body.clone()), &[("If-Match", &current)])
        .await
        .expect(200)
        .clone();
    assert_eq!(view["nodes"][0]["proxy"], addr(6004), "the replica is the master now: {view}");
    assert_eq!(view["nodes"][0]["node"], format!("127.0.0.1:{}", 6004 + 2000));
    assert_eq!(view["nodes"][0]["slots"], json!([{"start": 0, "end": 5461}]), "the slots stay with the shard");
    assert_eq!(
        view["nodes"][0]["replicas"],
        json!([{"proxy": addr(6001), "node": format!("127.0.0.1:{}", 6001 + 2000), "former_master": true}])
    );
    assert_eq!(b.epoch().await, epoch + 1, "one epoch");
    // A second coordinator with the same view is refused: its epoch is gone.
    let again =
        b.raw(reqwest::Method::POST, "/api/v1/clusters/c/failover", Some(body), &[("If-Match", &current)]).await;
    again.expect_error(412, "epoch_mismatch");
    // The former master is the replica now, in its config too.
    let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6001))).await.expect(200).clone();
    assert_eq!(c["cluster"]["nodes"][0]["replicas"][0]["former_master"], true, "{c}");
    // Refusals change nothing.
    let before = b.epoch().await;
    for (body, want) in [
        (json!({"master": addr(6001)}), "is a replica of the shard of"),
        (json!({"master": addr(6002), "promote": addr(6006)}), "is not a replica of the shard of"),
        (json!({"master": "127.0.0.1:6999"}), "is not a master of cluster"),
    ] {
        let msg = b.post("/api/v1/clusters/c/failover", body).await.expect_error(409, "conflict");
        assert!(msg.contains(want), "{msg}");
    }
    b.post("/api/v1/clusters/c/migrations", json!({"src": addr(6002), "dst": addr(6003), "slots": [[6000, 6010]]}))
        .await
        .expect(202);
    let after_migration = b.epoch().await;
    let msg = b.post("/api/v1/clusters/c/failover", json!({"master": addr(6002)})).await.expect_error(409, "conflict");
    assert!(msg.contains("a failover waits until it has ended"), "{msg}");
    assert_eq!(b.epoch().await, after_migration);
    assert_eq!(after_migration, before + 1, "only the migration moved the epoch");
}
}

both_stores! {
async fn a_graceful_failover_marks_the_shard_until_the_swap_or_a_cancel() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6004).await;
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": 2, "replicas": 1})).await.expect(201);
    let before = b.epoch().await;
    let ask = json!({"master": addr(6001), "promote": addr(6003), "graceful": true});
    let view = b.post("/api/v1/clusters/c/failover", ask.clone()).await.expect(200).clone();
    assert_eq!(view["nodes"][0]["proxy"], addr(6001), "nothing swapped yet: {view}");
    assert_eq!(view["nodes"][0]["handover"], addr(6003));
    assert_eq!(b.epoch().await, before + 1);
    b.post("/api/v1/clusters/c/failover", ask).await.expect(200);
    assert_eq!(b.epoch().await, before + 1, "asking again changes nothing");
    let msg = b
        .post("/api/v1/clusters/c/failover", json!({"master": addr(6001), "graceful": true, "promote": addr(6004)}))
        .await
        .expect_error(409, "conflict");
    assert!(msg.contains("is not a replica of the shard"), "{msg}");
    // Cancelled: the master keeps the shard.
    let view =
        b.post("/api/v1/clusters/c/failover", json!({"master": addr(6001), "cancel": true})).await.expect(200).clone();
    assert!(view["nodes"][0].get("handover").is_none(), "{view}");
    let msg = b
        .post("/api/v1/clusters/c/failover", json!({"master": addr(6001), "cancel": true}))
        .await
        .expect_error(409, "conflict");
    assert!(msg.contains("no graceful failover"), "{msg}");
    // Asked again, then completed by the swap (what the coordinator sends once the master is ready).
    b.post("/api/v1/clusters/c/failover", json!({"master": addr(6001), "promote": addr(6003), "graceful": true}))
        .await
        .expect(200);
    let view = b
        .post("/api/v1/clusters/c/failover", json!({"master": addr(6001), "promote": addr(6003)}))
        .await
        .expect(200)
        .clone();
    assert_eq!(view["nodes"][0]["proxy"], addr(6003));
    assert!(view["nodes"][0].get("handover").is_none(), "the swap ends the handover: {view}");
}
}

both_stores! {
async fn a_scale_out_with_replicas_gives_each_new_shard_its_replicas() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6007).await;
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": 2, "replicas": 1})).await.expect(201);
    // Refused, and nothing changes: replicas with remove, too many, too few free proxies.
    let before = b.model().await;
    b.post("/api/v1/clusters/c/scale", json!({"remove": [addr(6001)], "replicas": 1}))
        .await
        .expect_error(400, "invalid");
    b.post("/api/v1/clusters/c/scale", json!({"add": 1, "replicas": 9})).await.expect_error(400, "invalid");
    let msg = b.post("/api/v1/clusters/c/scale", json!({"add": 2, "replicas": 1})).await.expect_error(409, "conflict");
    assert!(msg.contains("needs 4 free proxies") && msg.contains("only 3"), "{msg}");
    assert_eq!(b.model().await, before);

    let plan = b.post("/api/v1/clusters/c/scale", json!({"add": 1, "replicas": 1})).await.expect(202).clone();
    assert_eq!(plan["plan"]["proxies"], json!([addr(6005)]));
    // The first step made 6005 a node: its replica joined with it, so the plan holds no more.
    assert!(plan["plan"].get("replicas").is_none(), "{plan}");
    let view = b.get("/api/v1/clusters/c").await.expect(200).clone();
    assert_eq!(replicas_of(&view, &addr(6005)), vec![addr(6006)]);
    let replica = b.get(&format!("/api/v1/proxies/{}", addr(6006))).await.expect(200).clone();
    assert_eq!(replica["state"], "serving", "{replica}");
    let spare = b.get(&format!("/api/v1/proxies/{}", addr(6007))).await.expect(200).clone();
    assert_eq!(spare["state"], "free", "{spare}");
    let config = b.get(&format!("/api/v1/proxies/{}/config", addr(6006))).await.expect(200).clone();
    assert_eq!(config["cluster"]["name"], "c", "the replica's config has the cluster: {config}");
}
}
