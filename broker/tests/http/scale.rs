//! Scale plans through real HTTP: `add` and `remove` even out the slots, at most
//! `--scale-concurrency` migrations run at once and never two sharing a proxy, the next steps
//! start in the transaction that records `done`, a failed step stops the plan, refusals change
//! nothing, and a plan survives SIGKILL.
//!
//! The coordinator's part is played by hand: each running migration is reported `switched`,
//! committed, and reported `done`, as the coordinator does.

use crate::harness::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// The migrations of `cluster` that have not ended, in creation order.
async fn unfinished(b: &Broker, cluster: &str) -> Vec<Value> {
    let list = b.get(&format!("/api/v1/clusters/{cluster}/migrations")).await.expect(200).clone();
    list["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !["done", "failed", "aborted"].contains(&m["phase"].as_str().unwrap()))
        .cloned()
        .collect()
}

/// At most `k` of them, and no proxy in two.
#[track_caller]
fn check_running(running: &[Value], k: usize) {
    assert!(running.len() <= k, "{} migrations running at once (K = {k}): {running:?}", running.len());
    let mut proxies = HashSet::new();
    for m in running {
        for side in ["src", "dst"] {
            let p = m[side].as_str().unwrap();
            assert!(proxies.insert(p.to_string()), "{p} is in two running migrations: {running:?}");
        }
    }
}

/// Plays the coordinator for one migration: switched, commit, done. Answers the `done` record.
async fn finish(b: &Broker, cluster: &str, id: &str) -> Value {
    let base = format!("/api/v1/clusters/{cluster}/migrations/{id}");
    b.post(&format!("{base}/progress"), json!({"phase": "switched"})).await.expect(200);
    b.post(&format!("{base}/commit"), json!({})).await.expect(200);
    b.post(&format!("{base}/progress"), json!({"phase": "done"})).await.expect(200).clone()
}

/// Slots each node owns (untagged or migrating), by proxy.
fn counts(view: &Value) -> BTreeMap<String, u64> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let owned = n["slots"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["tag"] != "importing")
                .map(|s| s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap() + 1)
                .sum();
            (n["proxy"].as_str().unwrap().to_string(), owned)
        })
        .collect()
}

/// Every node holds an even share: sizes differ by at most one, all 16384 slots owned, no tag left.
#[track_caller]
fn assert_even(view: &Value, nodes: usize) {
    let c = counts(view);
    assert_eq!(c.len(), nodes, "{c:?}");
    assert_eq!(c.values().sum::<u64>(), 16384, "{c:?}");
    let share = 16384 / nodes as u64;
    assert!(c.values().all(|n| *n == share || *n == share + 1), "uneven: {c:?}");
    for n in view["nodes"].as_array().unwrap() {
        assert!(n["slots"].as_array().unwrap().iter().all(|s| s.get("tag").is_none()), "tags left: {view}");
    }
}

/// Drives every migration of the cluster to `done`, oldest first, checking after each call
/// that the plan never runs more than `k` at once nor two sharing a proxy. Answers every
/// migration the cluster had, in creation order.
async fn drive(b: &Broker, cluster: &str, k: usize) -> Vec<Value> {
    for _ in 0..100 {
        let running = unfinished(b, cluster).await;
        check_running(&running, k);
        let Some(m) = running.first() else {
            let all = b.get(&format!("/api/v1/clusters/{cluster}/migrations")).await.expect(200).clone();
            return all["migrations"].as_array().unwrap().clone();
        };
        let id = m["id"].as_str().unwrap().to_string();
        let before = b.epoch().await;
        let done = finish(b, cluster, &id).await;
        assert_eq!(done["phase"], "done");
        // Switched: status (but a streamed migration's `switching` on the way: +1); commit: +1;
        // done (and the steps it starts): +1.
        let switching = if m["mode"] == "replication" || m["mode"] == "filtered" { 1 } else { 0 };
        assert_eq!(b.epoch().await, before + 2 + switching, "{id}");
    }
    panic!("the plan did not finish in 100 migrations");
}

/// A replication import goes only into an empty proxy: the first import of a destination
/// that was not a node; every later import into it is by filtered replication.
#[track_caller]
fn check_modes(migrations: &[Value], new_nodes: &[String]) {
    let mut seen: HashSet<&str> = HashSet::new();
    for m in migrations {
        let dst = m["dst"].as_str().unwrap();
        let first = seen.insert(dst);
        let expected = if first && new_nodes.iter().any(|p| p == dst) { "replication" } else { "filtered" };
        assert_eq!(m["mode"], expected, "{m}");
    }
}

both_stores! {
async fn add_two_to_three_evens_out_two_at_a_time() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6005).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    let plan = b.post("/api/v1/clusters/shop/scale", json!({"add": 2})).await.expect(202).clone();
    let started: Vec<&str> = plan["migrations"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(started, vec!["m-1", "m-2"]);
    check_running(&unfinished(&b, "shop").await, 2);

    // A commit does not start anything: the step still runs until done.
    let base = "/api/v1/clusters/shop/migrations/m-1";
    b.post(&format!("{base}/progress"), json!({"phase": "switched"})).await.expect(200);
    b.post(&format!("{base}/commit"), json!({})).await.expect(200);
    assert_eq!(unfinished(&b, "shop").await.len(), 2);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["scale"]["steps"][0]["phase"], "committed", "step phases follow the migrations");
    assert_eq!(view["scale"]["done"], 0);

    // Done: the next step (6002 → 6004, by filtered replication: 6004 holds data now) starts in the same
    // transaction, at the epoch of the done report.
    let e = b.epoch().await;
    b.post(&format!("{base}/progress"), json!({"phase": "done"})).await.expect(200);
    assert_eq!(b.epoch().await, e + 1);
    let m3 = b.get("/api/v1/clusters/shop/migrations/m-3").await.expect(200).clone();
    assert_eq!((m3["src"].as_str(), m3["dst"].as_str()), (Some(&*addr(6002)), Some(&*addr(6004))));
    assert_eq!((&m3["mode"], &m3["epoch"]), (&json!("filtered"), &json!(e + 1)));
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!((&view["scale"]["done"], &view["scale"]["total"]), (&json!(1), &json!(4)));
    assert_eq!(view["scale"]["steps"][0]["phase"], "done");
    assert_eq!(view["scale"]["steps"][2]["migration"], "m-3");

    // m-2 done: the last step (6002 → 6005) waits, 6002 is busy with m-3.
    finish(&b, "shop", "m-2").await;
    let running = unfinished(&b, "shop").await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["id"], "m-3");
    // m-3 done: it starts.
    finish(&b, "shop", "m-3").await;
    let running = unfinished(&b, "shop").await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!((running[0]["id"].as_str(), running[0]["mode"].as_str()), (Some("m-4"), Some("filtered")));

    let all = drive(&b, "shop", 2).await;
    assert_eq!(all.len(), 4);
    check_modes(&all, &[addr(6004), addr(6005)]);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_even(&view, 5);
    assert!(counts(&view).values().all(|n| (3276..=3277).contains(n)));
    let scale = &view["scale"];
    assert_eq!((scale["state"].as_str(), &scale["done"], &scale["total"]), (Some("done"), &json!(4), &json!(4)));
    assert!(scale["steps"].as_array().unwrap().iter().all(|s| s["phase"] == "done"));
    // The proxies' view is the plain cluster view: no `scale` in it.
    let config = b.get(&format!("/api/v1/proxies/{}/config", addr(6004))).await.expect(200).clone();
    let mut plain = view.clone();
    plain.as_object_mut().unwrap().remove("scale");
    assert_eq!(config["cluster"], plain);

    // Done: a new plan may start (nothing left to add, though).
    let msg = b.post("/api/v1/clusters/shop/scale", json!({"add": 1})).await.expect_error(409, "conflict");
    assert!(msg.contains("free"), "{msg}");
}
}

both_stores! {
async fn remove_two_from_five_evens_out_and_frees_them() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6005).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 5})).await.expect(201);
    let e = b.epoch().await;
    let leaving = [addr(6002), addr(6004)];
    let plan = b.post("/api/v1/clusters/shop/scale", json!({"remove": leaving})).await.expect(202).clone();
    assert_eq!(b.epoch().await, e + 1);
    let p = &plan["plan"];
    assert_eq!((p["kind"].as_str(), p["state"].as_str()), (Some("remove"), Some("running")));
    assert_eq!(p["proxies"], json!(leaving));
    let steps = p["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| leaving.contains(&s["src"].as_str().unwrap().to_string())), "{steps:?}");
    assert!(steps.iter().all(|s| !leaving.contains(&s["dst"].as_str().unwrap().to_string())), "{steps:?}");
    let pairs: HashSet<(&str, &str)> =
        steps.iter().map(|s| (s["src"].as_str().unwrap(), s["dst"].as_str().unwrap())).collect();
    assert_eq!(pairs.len(), steps.len(), "one migration per pair");
    assert_eq!(plan["migrations"].as_array().unwrap().len(), 2);
    assert!(plan["migrations"].as_array().unwrap().iter().all(|m| m["mode"] == "filtered"));

    let all = drive(&b, "shop", 2).await;
    assert_eq!(all.len(), steps.len());
    assert!(all.iter().all(|m| m["mode"] == "filtered"));
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_even(&view, 3);
    let nodes: Vec<String> = counts(&view).into_keys().collect();
    assert_eq!(nodes, vec![addr(6001), addr(6003), addr(6005)]);
    assert_eq!(view["scale"]["state"], "done");
    let proxies = b.get("/api/v1/proxies").await.expect(200).clone();
    for p in proxies["proxies"].as_array().unwrap() {
        if leaving.contains(&p["address"].as_str().unwrap().to_string()) {
            assert_eq!((p["state"].as_str(), &p["cluster"]), (Some("free"), &Value::Null), "{p}");
        }
    }
    // And they can be taken again.
    b.post("/api/v1/clusters/shop/scale", json!({"add": 2})).await.expect(202);
    drive(&b, "shop", 2).await;
    assert_even(&b.get("/api/v1/clusters/shop").await.expect(200).clone(), 5);
}
}

both_stores! {
async fn refusals_change_nothing() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6005).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    b.post("/api/v1/clusters", json!({"name": "other", "proxies": 1})).await.expect(201);
    let model = b.model().await;
    let a = |p: u16| addr(p);
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"add": 2}), 409, "conflict", "only 1 are free"),
        (json!({"add": 0}), 400, "invalid", "between"),
        (json!({}), 400, "invalid", "exactly one"),
        (json!({"add": 1, "remove": [a(6001)]}), 400, "invalid", "exactly one"),
        (json!({"remove": []}), 400, "invalid", "no proxy"),
        (json!({"remove": [a(6001), a(6001)]}), 400, "invalid", "twice"),
        (json!({"remove": ["nope"]}), 400, "invalid", "host:port"),
        (json!({"remove": [a(6999)]}), 400, "invalid", "not registered"),
        (json!({"remove": [a(6004)]}), 400, "invalid", "not a node"),
        (json!({"remove": [a(6005)]}), 400, "invalid", "not a node"),
        (json!({"remove": [a(6001), a(6002), a(6003)]}), 400, "invalid", "every node"),
        (json!({"remove": a(6001)}), 400, "invalid", "JSON"),
        (json!({"add": 1, "nodes": 3}), 400, "invalid", "unknown field"),
    ];
    for (body, status, code, says) in &cases {
        let msg = b.post("/api/v1/clusters/shop/scale", body.clone()).await.expect_error(*status, code);
        assert!(msg.contains(says), "{body}: {msg:?} should mention {says:?}");
    }
    let msg = b.post("/api/v1/clusters/nope/scale", json!({"add": 1})).await.expect_error(404, "not_found");
    assert!(msg.contains("nope"), "{msg}");
    let msg = b.post("/api/v1/clusters/other/scale", json!({"remove": [a(6004)]})).await.expect_error(400, "invalid");
    assert!(msg.contains("every node"), "{msg}");
    // A failed proxy in the plan.
    b.put(&format!("/api/v1/proxies/{}/health", a(6002)), json!({"failed": true})).await.expect(200);
    let msg = b.post("/api/v1/clusters/shop/scale", json!({"remove": [a(6002)]})).await.expect_error(409, "conflict");
    assert!(msg.contains("failed"), "{msg}");
    b.put(&format!("/api/v1/proxies/{}/health", a(6002)), json!({"failed": false})).await.expect(200);
    assert_eq!(b.model().await, model, "a refused scale changed the model");

    // A migration of the cluster running: no plan.
    b.post("/api/v1/clusters/shop/migrations", json!({"src": a(6001), "dst": a(6002), "slots": [[0, 9]]}))
        .await
        .expect(202);
    let model = b.model().await;
    let msg = b.post("/api/v1/clusters/shop/scale", json!({"remove": [a(6003)]})).await.expect_error(409, "conflict");
    assert!(msg.contains("m-1"), "{msg}");
    assert_eq!(b.model().await, model);
    finish(&b, "shop", "m-1").await;

    // One plan at a time: a second one while the first runs is refused, whatever it asks.
    let plan = b.post("/api/v1/clusters/shop/scale", json!({"remove": [a(6003)]})).await.expect(202).clone();
    let id = plan["plan"]["id"].as_str().unwrap().to_string();
    let model = b.model().await;
    for body in [json!({"remove": [a(6001)]}), json!({"add": 1})] {
        let msg = b.post("/api/v1/clusters/shop/scale", body.clone()).await.expect_error(409, "conflict");
        assert!(msg.contains(&id) || msg.contains("running"), "{body}: {msg}");
    }
    assert_eq!(b.model().await, model);
}
}

both_stores! {
async fn a_failed_step_stops_the_plan_and_a_new_one_can_start() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6005).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    b.post("/api/v1/clusters/shop/scale", json!({"add": 2})).await.expect(202);
    // m-2 (6003 → 6005) is aborted: the plan fails; 6005 leaves again; m-1 goes on.
    b.post("/api/v1/clusters/shop/migrations/m-2/abort", json!({"error": "operator says no"})).await.expect(200);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    let scale = &view["scale"];
    assert_eq!(scale["state"], "failed");
    let error = scale["error"].as_str().unwrap();
    assert!(error.contains("m-2") && error.contains("aborted") && error.contains("operator says no"), "{error}");
    assert_eq!(scale["steps"][1]["phase"], "aborted");
    assert_eq!(counts(&view).len(), 4, "6005 left with its only import");
    // Its reservation is gone with the plan: 6005 is free again.
    let p5 = b.get(&format!("/api/v1/proxies/{}", addr(6005))).await.expect(200).clone();
    assert_eq!(p5["state"], "free");
    assert!(p5.get("reserved_for").is_none(), "{p5}");
    // m-1 finishes; nothing else starts.
    finish(&b, "shop", "m-1").await;
    assert!(unfinished(&b, "shop").await.is_empty());
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!((&view["scale"]["state"], &view["scale"]["done"]), (&json!("failed"), &json!(1)));
    // The operator starts again from where the slots are: 4 nodes + 1.
    let plan = b.post("/api/v1/clusters/shop/scale", json!({"add": 1})).await.expect(202).clone();
    assert_eq!(plan["plan"]["proxies"], json!([addr(6005)]));
    drive(&b, "shop", 2).await;
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_even(&view, 5);
    assert_eq!(view["scale"]["state"], "done");
}
}

both_stores! {
async fn the_plan_survives_sigkill_and_reserves_its_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let one = Opts { args: vec!["--scale-concurrency".into(), "1".into()], envs: Vec::new() };
    let mut b = Broker::start_in(&data, one.clone()).await;
    register_all(&b, 6001..=6006).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    let plan = b.post("/api/v1/clusters/shop/scale", json!({"add": 2})).await.expect(202).clone();
    assert_eq!(plan["migrations"].as_array().unwrap().len(), 1, "K = 1");

    // 6005 is reserved until its step starts: listed free, with the cluster that reserved it,
    // but nobody else can take it.
    let p5 = b.get(&format!("/api/v1/proxies/{}", addr(6005))).await.expect(200).clone();
    assert_eq!((p5["state"].as_str(), p5["reserved_for"].as_str()), (Some("free"), Some("shop")), "{p5}");
    let model = b.model().await;
    let msg =
        b.post("/api/v1/clusters", json!({"name": "x", "proxies": [addr(6005)]})).await.expect_error(409, "conflict");
    assert!(msg.contains("scale plan"), "{msg}");
    let msg = b.post("/api/v1/clusters", json!({"name": "x", "proxies": 2})).await.expect_error(409, "conflict");
    assert!(msg.contains("only 1 are free"), "{msg}");
    let msg = b.delete(&format!("/api/v1/proxies/{}", addr(6005))).await.expect_error(409, "conflict");
    assert!(msg.contains("reserved"), "{msg}");
    let msg = b
        .post(
            "/api/v1/clusters/shop/migrations",
            json!({"src": addr(6002), "dst": addr(6005), "slots": [[6000, 6001]]}),
        )
        .await
        .expect_error(409, "conflict");
    assert!(msg.contains("reserved"), "{msg}");
    assert_eq!(b.model().await, model, "refusals changed the model");

    // Mid-way: m-1 done, m-2 started; SIGKILL.
    finish(&b, "shop", "m-1").await;
    check_running(&unfinished(&b, "shop").await, 1);
    b.post("/api/v1/clusters/shop/migrations/m-2/progress", json!({"phase": "starting"})).await.expect(200);
    let model = b.model().await;
    assert_eq!(model["clusters"]["shop"]["view"]["scale"]["done"], 1);
    b.kill();
    // The concurrency comes from the environment this time.
    let env = Opts { args: Vec::new(), envs: vec![("SLUICE_SCALE_CONCURRENCY".into(), "1".into())] };
    let mut b = Broker::start_in(&data, env.clone()).await;
    assert_eq!(b.model().await, model, "the plan and its migrations are back as they were");
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["scale"]["steps"][1]["phase"], "starting");

    // Again mid-way, then to the end.
    finish(&b, "shop", "m-2").await;
    let model = b.model().await;
    b.kill();
    let b = Broker::start_in(&data, env).await;
    assert_eq!(b.model().await, model);
    let all = drive(&b, "shop", 1).await;
    check_modes(&all, &[addr(6004), addr(6005)]);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_even(&view, 5);
    assert_eq!((&view["scale"]["state"], &view["scale"]["done"]), (&json!("done"), &json!(4)));
    let p5 = b.get(&format!("/api/v1/proxies/{}", addr(6005))).await.expect(200).clone();
    assert_eq!((p5["state"].as_str(), p5["cluster"].as_str()), (Some("serving"), Some("shop")));
    // Deleting the cluster drops its plan.
    b.delete("/api/v1/clusters/shop").await.expect(200);
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 1})).await.expect(201);
    assert!(b.get("/api/v1/clusters/shop").await.expect(200).get("scale").is_none());
}
}
