//! The happy paths: registration, cluster creation, a migration from start to done, abort and
//! fail, scale-out, deletion, health reports, long polls.

use crate::harness::*;
use serde_json::{json, Value};

/// The `MigrationMeta` of a migration record, as proxy configs carry it.
fn c_meta(m: &Value) -> Value {
    let f = |k: &str| m[k].clone();
    json!({
        "id": f("id"), "epoch": f("epoch"), "cluster": f("cluster"),
        "src_proxy": f("src"), "src_node": f("src_node"), "dst_proxy": f("dst"), "dst_node": f("dst_node"),
        "slots": f("slots"), "mode": f("mode"),
    })
}

fn sizes(view: &Value) -> Vec<(u64, u64)> {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| {
            n["slots"].as_array().unwrap().iter().map(|s| (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap()))
        })
        .collect()
}

both_stores! {
async fn register_create_migrate_commit() {
    let (b, _dir) = fresh(Opts::default()).await;
    assert_eq!(b.epoch().await, 0);

    // Register: 201, then the same again: 200 and no epoch change.
    for (i, port) in (6001..=6004).enumerate() {
        let p = b.register(port).await;
        assert_eq!(p.expect(201)["state"], "free");
        assert_eq!(b.epoch().await, i as u64 + 1);
    }
    let again = b.register(6001).await;
    assert_eq!(again.expect(200)["address"], addr(6001));
    assert_eq!(b.epoch().await, 4);

    // Create: 16384 slots split evenly over three proxies, in address order.
    let created = b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await;
    let view = created.expect(201).clone();
    assert_eq!(b.epoch().await, 5);
    assert_eq!(view["epoch"], 5);
    let read = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(read, view);
    assert_eq!(read["name"], "shop");
    assert_eq!(sizes(&read), vec![(0, 5461), (5462, 10922), (10923, 16383)]);
    let proxies: Vec<&str> = read["nodes"].as_array().unwrap().iter().map(|n| n["proxy"].as_str().unwrap()).collect();
    assert_eq!(proxies, vec![addr(6001), addr(6002), addr(6003)]);
    assert_eq!(read["nodes"][0]["node"], addr(8001));
    assert_eq!(b.get("/api/v1/clusters").await.expect(200)["clusters"], json!(["shop"]));
    let list = b.get("/api/v1/proxies").await.expect(200).clone();
    let states: Vec<(&str, &str)> = list["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["state"].as_str().unwrap(), p["cluster"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(states, vec![("serving", "shop"), ("serving", "shop"), ("serving", "shop"), ("free", "-")]);

    // Migrate 0-1000 from 6001 to the free 6004: tags, dst joins, epoch bump.
    let m = b
        .post(
            "/api/v1/clusters/shop/migrations",
            json!({"src": addr(6001), "dst": addr(6004), "slots": [[0, 1000]], "mode": "auto"}),
        )
        .await;
    let m = m.expect(202).clone();
    assert_eq!(m["id"], "m-1");
    assert_eq!(m["epoch"], 6);
    assert_eq!(m["mode"], "replication", "auto into a free proxy resolves to replication");
    assert_eq!(m["phase"], "pending");
    assert_eq!(m["src_node"], addr(8001));
    assert_eq!(m["dst_node"], addr(8004));
    assert_eq!(m["slots"], json!([[0, 1000]]));
    assert!(m.get("committed_epoch").is_none(), "no committed_epoch before the commit: {m}");
    assert!(m["timestamps"]["pending"].as_str().is_some());
    assert_eq!(b.epoch().await, 6);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["epoch"], 6);
    assert_eq!(node_slots(&view, &addr(6001)).unwrap(), vec![tagged(0, 1000, "migrating", "m-1"), plain(1001, 5461)]);
    assert_eq!(node_slots(&view, &addr(6004)).unwrap(), vec![tagged(0, 1000, "importing", "m-1")]);
    assert_eq!(b.get(&format!("/api/v1/proxies/{}", addr(6004))).await.expect(200)["state"], "serving");

    // Both proxies' configs carry the cluster (the very same view) and the migration meta.
    for port in [6001, 6004] {
        let c = b.get(&format!("/api/v1/proxies/{}/config", addr(port))).await.expect(200).clone();
        assert_eq!(c["epoch"], 6);
        assert_eq!(c["proxy"], addr(port));
        assert_eq!(c["cluster"], view);
        assert_eq!(
            c["migrations"],
            json!([{
                "id": "m-1", "epoch": 6, "cluster": "shop",
                "src_proxy": addr(6001), "src_node": addr(8001),
                "dst_proxy": addr(6004), "dst_node": addr(8004),
                "slots": [[0, 1000]], "mode": "replication"
            }])
        );
    }
    let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6002))).await.expect(200).clone();
    assert_eq!(c["migrations"], json!([]));
    let all = b.get("/api/v1/configs").await.expect(200).clone();
    assert_eq!(all["epoch"], 6);
    assert_eq!(all["configs"].as_array().unwrap().len(), 4);
    assert_eq!(all["configs"][3]["config"]["cluster"], view);

    // Commit before the switch: refused.
    b.post("/api/v1/clusters/shop/migrations/m-1/commit", json!({})).await.expect_error(409, "conflict");

    // Progress up to switched: status only, except `switching`: from there the source may
    // promote the destination, which the configs say (one bump).
    for phase in ["starting", "following", "following", "switching", "switched"] {
        let r = b
            .post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": phase, "progress": {"lag": 0}}))
            .await;
        assert_eq!(r.expect(200)["phase"], phase);
        let bumped = matches!(phase, "switching" | "switched");
        assert_eq!(b.epoch().await, if bumped { 7 } else { 6 }, "after {phase}");
        let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6001))).await.expect(200).clone();
        assert_eq!(c["migrations"][0]["switch_allowed"].as_bool().unwrap_or(false), bumped, "{c}");
    }
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "following"}))
        .await
        .expect_error(409, "conflict");

    // A stale commit is refused; the right one moves the ranges and bumps the epoch.
    b.post("/api/v1/clusters/shop/migrations/m-1/commit", json!({"epoch": 5})).await.expect_error(409, "conflict");
    let c = b.post("/api/v1/clusters/shop/migrations/m-1/commit", json!({"epoch": 6})).await;
    let c = c.expect(200).clone();
    assert_eq!(c["phase"], "committed");
    assert_eq!(b.epoch().await, 8);
    assert_eq!(c["epoch"], 6, "the migration's epoch stays the one it started at");
    assert_eq!(c["committed_epoch"], 8, "the epoch the commit produced");
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["epoch"], 8);
    assert_eq!(node_slots(&view, &addr(6001)).unwrap(), vec![plain(1001, 5461)]);
    assert_eq!(node_slots(&view, &addr(6004)).unwrap(), vec![plain(0, 1000)]);
    // Committed, the migration still travels in both configs until done: the proxies delete
    // the keys of the slots they no longer own only for the migrations their config names.
    let mut meta = c_meta(&m);
    meta["switch_allowed"] = json!(true);
    for port in [6001, 6004] {
        let c = b.get(&format!("/api/v1/proxies/{}/config", addr(port))).await.expect(200).clone();
        assert_eq!((c["epoch"].clone(), c["cluster"].clone()), (json!(8), view.clone()));
        assert_eq!(c["migrations"], json!([meta]), "a committed migration stays in the configs until done");
    }

    // Committing again (with or without a body) is fine and changes nothing.
    for body in [None, Some(b"{\"epoch\":6}".to_vec())] {
        let again = b.raw(reqwest::Method::POST, "/api/v1/clusters/shop/migrations/m-1/commit", body, &[]).await;
        assert_eq!(again.expect(200)["phase"], "committed");
        assert_eq!(again.expect(200)["committed_epoch"], 8);
        assert_eq!(b.epoch().await, 8);
    }

    // Cleaning: status only. Done: the migration leaves both configs, which bumps the epoch
    // (the cluster view itself does not change); done again changes nothing.
    let r = b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "cleaning"})).await;
    assert_eq!(r.expect(200)["phase"], "cleaning");
    assert_eq!(b.epoch().await, 8);
    let all = b.get("/api/v1/configs").await.expect(200).clone();
    let with_m1: Vec<&str> = all["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["config"]["migrations"] == json!([meta]))
        .map(|e| e["proxy"]["address"].as_str().unwrap())
        .collect();
    assert_eq!(with_m1, vec![addr(6001), addr(6004)]);
    for _ in 0..2 {
        let r = b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "done"})).await;
        assert_eq!(r.expect(200)["phase"], "done");
        assert_eq!(b.epoch().await, 9);
    }
    for port in [6001, 6004] {
        let c = b.get(&format!("/api/v1/proxies/{}/config", addr(port))).await.expect(200).clone();
        assert_eq!((c["epoch"].clone(), c["migrations"].clone()), (json!(9), json!([])), "{port}");
        assert_eq!(c["cluster"], view, "the cluster view did not change: {port}");
    }
    let m = b.get("/api/v1/clusters/shop/migrations/m-1").await.expect(200).clone();
    for phase in ["pending", "starting", "following", "switching", "switched", "committed", "cleaning", "done"] {
        let ts = m["timestamps"][phase].as_str().unwrap_or_else(|| panic!("no timestamp for {phase}: {m}"));
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    }
    assert_eq!(m["progress"], json!({"lag": 0}));
    assert_eq!(m["committed_epoch"], 8, "kept through cleaning and done");
    let listed = b.get("/api/v1/clusters/shop/migrations").await.expect(200).clone();
    assert_eq!(listed["migrations"], json!([m]));
    assert_eq!(b.get("/api/v1/migrations").await.expect(200)["migrations"], json!([]));
    assert_eq!(b.get("/api/v1/migrations?all=true").await.expect(200)["migrations"], json!([m]));

    // Unknown migrations.
    b.post("/api/v1/clusters/shop/migrations/m-9/commit", json!({})).await.expect_error(404, "not_found");
    b.get("/api/v1/clusters/shop/migrations/nope").await.expect_error(404, "not_found");
}
}

both_stores! {
async fn reported_phase_times_are_kept_in_order() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, [6001, 6002]).await;
    b.post("/api/v1/clusters", json!({"name": "c1", "proxies": [addr(6001)]})).await.expect(201);
    let m = b
        .post("/api/v1/clusters/c1/migrations", json!({"src": addr(6001), "dst": addr(6002), "slots": [[0, 10]]}))
        .await;
    let pending = m.expect(202)["timestamps"]["pending"].as_str().unwrap().to_string();
    let epoch = b.epoch().await;
    let progress = |phase: &str, at: &str| json!({"phase": phase, "at": at});
    // Before the creation (a proxy clock behind): the pending time. Far ahead: now.
    let r = b.post("/api/v1/clusters/c1/migrations/m-1/progress", progress("starting", "2000-01-01T00:00:00Z")).await;
    assert_eq!(r.expect(200)["timestamps"]["starting"], pending);
    let r = b.post("/api/v1/clusters/c1/migrations/m-1/progress", progress("following", "2999-01-01T00:00:00Z")).await;
    let following = r.expect(200)["timestamps"]["following"].as_str().unwrap().to_string();
    assert!(following >= pending && following.starts_with("20") && !following.starts_with("2999"), "{following}");
    // Status only: the epoch did not move.
    assert_eq!(b.epoch().await, epoch);
}
}

both_stores! {
async fn a_node_left_without_slots_leaves_and_its_proxy_is_free() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, [6001, 6002]).await;
    b.post("/api/v1/clusters", json!({"name": "c1", "proxies": [addr(6002), addr(6001)]})).await.expect(201);
    let view = b.get("/api/v1/clusters/c1").await.expect(200).clone();
    assert_eq!(node_slots(&view, &addr(6002)).unwrap(), vec![plain(0, 8191)], "listed order decides the slots");
    let m = b
        .post(
            "/api/v1/clusters/c1/migrations",
            json!({"src": addr(6001), "dst": addr(6002), "slots": [[8192, 10000], [10001, 16383]], "mode": "keys"}),
        )
        .await;
    let m = m.expect(202).clone();
    assert_eq!(m["mode"], "keys");
    assert_eq!(m["slots"], json!([[8192, 10000], [10001, 16383]]));
    let view = b.get("/api/v1/clusters/c1").await.expect(200).clone();
    assert_eq!(node_slots(&view, &addr(6001)).unwrap(), vec![tagged(8192, 16383, "migrating", "m-1")]);
    b.post("/api/v1/clusters/c1/migrations/m-1/progress", json!({"phase": "switched"})).await.expect(200);
    let before = b.epoch().await;
    b.post("/api/v1/clusters/c1/migrations/m-1/commit", json!({})).await.expect(200);
    assert_eq!(b.epoch().await, before + 1);
    let view = b.get("/api/v1/clusters/c1").await.expect(200).clone();
    assert_eq!(view["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(node_slots(&view, &addr(6002)).unwrap(), vec![plain(0, 16383)], "adjacent ranges merge");
    let p = b.get(&format!("/api/v1/proxies/{}", addr(6001))).await.expect(200).clone();
    assert_eq!(p["state"], "free");
    assert_eq!(p["cluster"], Value::Null);
    // Free, its config has no cluster; the migration is still in it (the keys of the slots it
    // gave away are still on its node), and in the destination's, until done.
    let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6001))).await.expect(200).clone();
    assert!(c.get("cluster").is_none(), "a free proxy's config has no cluster: {c}");
    assert_eq!(c["migrations"], json!([c_meta(&m)]), "{c}");
    let d = b.get(&format!("/api/v1/proxies/{}/config", addr(6002))).await.expect(200).clone();
    assert_eq!(d["migrations"], json!([c_meta(&m)]), "{d}");
    let all = b.get("/api/v1/configs").await.expect(200).clone();
    let listed = all["configs"].as_array().unwrap().iter().find(|e| e["proxy"]["address"] == addr(6001)).unwrap();
    assert_eq!(listed["config"], c, "both calls compute the same config");
    assert_eq!(listed["proxy"]["state"], "free");
    for phase in ["cleaning", "done"] {
        b.post("/api/v1/clusters/c1/migrations/m-1/progress", json!({"phase": phase})).await.expect(200);
    }
    assert_eq!(b.epoch().await, before + 2, "done bumps the epoch");
    let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6001))).await.expect(200).clone();
    assert_eq!(c, json!({"epoch": before + 2, "proxy": addr(6001), "migrations": []}));
    // Now free, it can be deleted.
    b.delete(&format!("/api/v1/proxies/{}", addr(6001))).await.expect(200);
}
}

both_stores! {
async fn abort_and_fail_put_everything_back() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6004).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    let original = b.get("/api/v1/clusters/shop").await.expect(200).clone();

    let mk = |dst: u16, range: [u64; 2]| json!({"src": addr(6001), "dst": addr(dst), "slots": [range]});
    b.post("/api/v1/clusters/shop/migrations", mk(6003, [100, 200])).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "following"})).await.expect(200);
    let e = b.epoch().await;
    let a = b.post("/api/v1/clusters/shop/migrations/m-1/abort", json!({"error": "operator changed their mind"})).await;
    let a = a.expect(200).clone();
    assert_eq!(a["phase"], "aborted");
    assert_eq!(a["error"], "operator changed their mind");
    assert!(a["timestamps"]["aborted"].is_string());
    assert_eq!(b.epoch().await, e + 1);
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["nodes"], original["nodes"], "the slots are back on src, the dst left");
    assert_eq!(b.get(&format!("/api/v1/proxies/{}", addr(6003))).await.expect(200)["state"], "free");
    // Abort again: 200, nothing changes. Progress after the end: 409.
    b.post("/api/v1/clusters/shop/migrations/m-1/abort", json!({})).await.expect(200);
    assert_eq!(b.epoch().await, e + 1);
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "switched"}))
        .await
        .expect_error(409, "conflict");

    // The fail variant records the error.
    b.post("/api/v1/clusters/shop/migrations", mk(6003, [100, 200])).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-2/fail", json!({})).await.expect_error(400, "invalid");
    let f = b.post("/api/v1/clusters/shop/migrations/m-2/fail", json!({"error": "dst DBSIZE is 7, not 0"})).await;
    let f = f.expect(200).clone();
    assert_eq!(f["phase"], "failed");
    assert_eq!(f["error"], "dst DBSIZE is 7, not 0");
    assert_eq!(b.get("/api/v1/clusters/shop").await.expect(200)["nodes"], original["nodes"]);

    // After the switch there is no way back.
    b.post("/api/v1/clusters/shop/migrations", mk(6004, [0, 10])).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-3/progress", json!({"phase": "switched"})).await.expect(200);
    let before = b.model().await;
    b.post("/api/v1/clusters/shop/migrations/m-3/abort", json!({})).await.expect_error(409, "conflict");
    b.post("/api/v1/clusters/shop/migrations/m-3/fail", json!({"error": "x"})).await.expect_error(409, "conflict");
    assert_eq!(b.model().await, before);
}
}

both_stores! {
async fn a_stop_while_switching_fences_the_source_and_ends_only_once_it_confirms() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6003).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    let original = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    let mk = || json!({"src": addr(6001), "dst": addr(6003), "slots": [[100, 200]]});

    // Following: the coordinator's fail (a proxy's report) ends it.
    b.post("/api/v1/clusters/shop/migrations", mk()).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "following"})).await.expect(200);
    let e = b.epoch().await;
    let f = b.post("/api/v1/clusters/shop/migrations/m-1/fail", json!({"error": "dst not ready"})).await;
    let f = f.expect(200).clone();
    assert_eq!((f["phase"].as_str(), f["error"].as_str()), (Some("failed"), Some("dst not ready")));
    assert!(f.get("committed_epoch").is_none(), "{f}");
    assert_eq!(b.epoch().await, e + 1);
    assert_eq!(b.get("/api/v1/clusters/shop").await.expect(200)["nodes"], original["nodes"]);
    // Aborting or failing an ended migration: 200, no change (whichever ended it).
    let ended = b.model().await;
    let a = b.post("/api/v1/clusters/shop/migrations/m-1/abort", json!({})).await;
    assert_eq!(a.expect(200)["phase"], "failed");
    let again = b.post("/api/v1/clusters/shop/migrations/m-1/fail", json!({"error": "again"})).await;
    assert_eq!(again.expect(200)["error"], "dst not ready");
    assert_eq!(b.model().await, ended);

    // Before the switch an abort goes through; failing it afterwards is a no-op.
    b.post("/api/v1/clusters/shop/migrations", mk()).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-2/progress", json!({"phase": "following"})).await.expect(200);
    assert_eq!(b.post("/api/v1/clusters/shop/migrations/m-2/abort", json!({})).await.expect(200)["phase"], "aborted");
    let ended = b.model().await;
    let f = b.post("/api/v1/clusters/shop/migrations/m-2/fail", json!({"error": "late"})).await;
    assert_eq!(f.expect(200)["phase"], "aborted");
    assert_eq!(b.model().await, ended);

    // Switching: the broker allowed the switch, the source may be promoting the destination.
    // A stop fences the source first (202, one bump, `fenced` in both configs) and ends the
    // migration only with the source's confirmation from a fenced config.
    b.post("/api/v1/clusters/shop/migrations", mk()).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-3/progress", json!({"phase": "switching"})).await.expect(200);
    let e = b.epoch().await;
    let body = json!({"error": "operator changed their mind"});
    let a = b.post("/api/v1/clusters/shop/migrations/m-3/abort", body).await.expect(202).clone();
    assert_eq!(a["phase"], "switching");
    assert_eq!(a["stopping"], json!({"epoch": e + 1, "phase": "aborted", "reason": "operator changed their mind"}));
    assert_eq!(b.epoch().await, e + 1);
    for proxy in [addr(6001), addr(6003)] {
        let config = b.get(&format!("/api/v1/proxies/{proxy}/config")).await.expect(200).clone();
        let meta = &config["migrations"][0];
        assert_eq!((meta["id"].as_str(), &meta["fenced"]), (Some("m-3"), &json!(true)), "{config}");
    }
    // Asking again, failing, or a confirmation from a config older than the fence: no change.
    let fenced = b.model().await;
    b.post("/api/v1/clusters/shop/migrations/m-3/abort", json!({})).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-3/fail", json!({"error": "x"})).await.expect(202);
    let early = json!({"error": "x", "source_stopped_epoch": e});
    assert_eq!(b.post("/api/v1/clusters/shop/migrations/m-3/fail", early).await.expect(202)["phase"], "switching");
    assert_eq!(b.model().await, fenced, "calls before the source's confirmation change nothing");
    // Confirmed: it ends as first asked, with the first reason; the slots stay on the source.
    let confirmed = json!({"error": "x", "source_stopped_epoch": e + 1});
    let f = b.post("/api/v1/clusters/shop/migrations/m-3/fail", confirmed).await.expect(200).clone();
    assert_eq!((f["phase"].as_str(), f["error"].as_str()), (Some("aborted"), Some("operator changed their mind")));
    assert_eq!(b.epoch().await, e + 2);
    assert_eq!(b.get("/api/v1/clusters/shop").await.expect(200)["nodes"], original["nodes"]);

    // A switch that completes after the fence wins: the migration is committed.
    b.post("/api/v1/clusters/shop/migrations", mk()).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-4/progress", json!({"phase": "switching"})).await.expect(200);
    b.post("/api/v1/clusters/shop/migrations/m-4/fail", json!({"error": "dst down"})).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-4/progress", json!({"phase": "switched"})).await.expect(200);
    let c = b.post("/api/v1/clusters/shop/migrations/m-4/commit", json!({})).await.expect(200).clone();
    assert_eq!(c["phase"], "committed");
    let confirmed = json!({"error": "late", "source_stopped_epoch": b.epoch().await});
    b.post("/api/v1/clusters/shop/migrations/m-4/fail", confirmed).await.expect_error(409, "conflict");
    let config = b.get(&format!("/api/v1/proxies/{}/config", addr(6003))).await.expect(200).clone();
    assert!(config["migrations"][0].get("fenced").is_none(), "a committed migration is not fenced: {config}");

    // Switched and later: neither.
    let other = json!({"src": addr(6001), "dst": addr(6003), "slots": [[300, 400]]});
    b.post("/api/v1/clusters/shop/migrations", other).await.expect(202);
    b.post("/api/v1/clusters/shop/migrations/m-5/progress", json!({"phase": "switched"})).await.expect(200);
    let before = b.model().await;
    let msg = b.post("/api/v1/clusters/shop/migrations/m-5/abort", json!({})).await.expect_error(409, "conflict");
    assert!(msg.contains("promoted") && msg.contains("can no longer be aborted"), "{msg}");
    b.post("/api/v1/clusters/shop/migrations/m-5/fail", json!({"error": "x"})).await.expect_error(409, "conflict");
    assert_eq!(b.model().await, before);
    let c = b.post("/api/v1/clusters/shop/migrations/m-5/commit", json!({})).await.expect(200).clone();
    assert_eq!(c["committed_epoch"], b.epoch().await);
    b.post("/api/v1/clusters/shop/migrations/m-5/abort", json!({})).await.expect_error(409, "conflict");
    b.post("/api/v1/clusters/shop/migrations/m-5/fail", json!({"error": "x"})).await.expect_error(409, "conflict");
}
}

both_stores! {
async fn scale_out_answers_the_plan_and_its_first_migrations() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6005).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    let e = b.epoch().await;
    let plan = b.post("/api/v1/clusters/shop/scale", json!({"add": 2})).await;
    let plan = plan.expect(202).clone();
    assert_eq!(b.epoch().await, e + 1, "a scale plan and its first migrations are one metadata change");
    assert_eq!(plan["epoch"], e + 1);
    let p = &plan["plan"];
    assert_eq!(p["id"], format!("scale-{}", e + 1));
    assert_eq!((p["kind"].as_str(), p["state"].as_str()), (Some("add"), Some("running")));
    assert_eq!(p["proxies"], json!([addr(6004), addr(6005)]));
    assert_eq!((p["done"].as_u64(), p["total"].as_u64()), (Some(0), Some(4)));
    // 5462/5461/5461 → 3277 ×4 + 3276: each old node gives the top of its range; the new ones
    // take from two sources each. Largest first.
    let steps: Vec<(String, String, Value)> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["src"].as_str().unwrap().into(), s["dst"].as_str().unwrap().into(), s["slots"].clone()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (addr(6001), addr(6004), json!([[3277, 5461]])),
            (addr(6003), addr(6005), json!([[14200, 16383]])),
            (addr(6002), addr(6004), json!([[9831, 10922]])),
            (addr(6002), addr(6005), json!([[8739, 9830]])),
        ]
    );
    // The default --scale-concurrency is 2: the first two steps started, by replication.
    let ms = plan["migrations"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    for (m, step) in ms.iter().zip(p["steps"].as_array().unwrap()) {
        assert_eq!((&m["src"], &m["dst"], &m["slots"]), (&step["src"], &step["dst"], &step["slots"]));
        assert_eq!(step["migration"], m["id"]);
        assert_eq!(step["phase"], "pending");
        assert_eq!(m["mode"], "replication");
        assert_eq!(m["phase"], "pending");
        assert_eq!(m["epoch"], e + 1);
    }
    assert!(p["steps"][2].get("migration").is_none() && p["steps"][2].get("phase").is_none());
    let view = b.get("/api/v1/clusters/shop").await.expect(200).clone();
    assert_eq!(view["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(view["scale"], *p, "GET shows the plan");
    assert_eq!(node_slots(&view, &addr(6005)).unwrap(), vec![tagged(14200, 16383, "importing", "m-2")]);

    // No free proxy left.
    let before = b.model().await;
    let msg = b.post("/api/v1/clusters/shop/scale", json!({"add": 1})).await.expect_error(409, "conflict");
    assert!(msg.contains("free"), "{msg}");
    assert_eq!(b.model().await, before);
}
}

both_stores! {
async fn delete_cluster_frees_proxies_and_waits_for_migrations() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6003).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    b.post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6003), "slots": [[0, 5]]}))
        .await
        .expect(202);
    let before = b.model().await;
    let msg = b.delete("/api/v1/clusters/shop").await.expect_error(409, "conflict");
    assert!(msg.contains("m-1") && msg.contains("force"), "{msg}");
    assert_eq!(b.model().await, before);
    b.delete("/api/v1/clusters/shop?force=maybe").await.expect_error(400, "invalid");
    let e = b.epoch().await;
    let d = b.delete("/api/v1/clusters/shop?force=true").await.expect(200).clone();
    assert_eq!(d["deleted"], "shop");
    assert_eq!(d["epoch"], e + 1);
    assert_eq!(d["freed"], json!([addr(6001), addr(6002), addr(6003)]));
    let proxies = b.get("/api/v1/proxies").await.expect(200).clone();
    assert!(proxies["proxies"].as_array().unwrap().iter().all(|p| p["state"] == "free"));
    assert_eq!(b.get("/api/v1/clusters").await.expect(200)["clusters"], json!([]));
    b.get("/api/v1/clusters/shop").await.expect_error(404, "not_found");
    // The name can be used again; migration ids are never reused.
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    assert_eq!(b.get("/api/v1/clusters/shop/migrations").await.expect(200)["migrations"], json!([]));
    let m = b
        .post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6003), "slots": [[0, 5]]}))
        .await;
    assert_eq!(m.expect(202)["id"], "m-2");
}
}

both_stores! {
async fn health_reports_are_status_only() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6002).await;
    let e = b.epoch().await;
    let p = b
        .put(&format!("/api/v1/proxies/{}/health", addr(6002)), json!({"failed": true, "reason": "no PONG for 5s"}))
        .await;
    let p = p.expect(200).clone();
    assert_eq!(p["state"], "failed");
    assert_eq!(p["failure"], "no PONG for 5s");
    assert_eq!(b.epoch().await, e, "a failure report does not bump the epoch");
    let listed = b.get("/api/v1/proxies").await.expect(200).clone();
    assert_eq!(listed["proxies"][1]["state"], "failed");
    // A failed proxy is not free: a two-proxy cluster cannot be made.
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": 2})).await.expect_error(409, "conflict");
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": [addr(6002)]})).await.expect_error(409, "conflict");
    b.put(&format!("/api/v1/proxies/{}/health", addr(6002)), json!({"failed": false})).await.expect(200);
    assert_eq!(b.epoch().await, e);
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": 2})).await.expect(201);
    b.put("/api/v1/proxies/127.0.0.1:1/health", json!({"failed": true})).await.expect_error(404, "not_found");
}
}

both_stores! {
async fn epoch_long_poll_wakes_on_a_change() {
    let (b, _dir) = fresh(Opts::default()).await;
    let quick = b.get("/api/v1/epoch?after=0&timeout_ms=10").await.expect(200).clone();
    assert_eq!(quick["epoch"], 0);
    let started = std::time::Instant::now();
    let (poll, _) = tokio::join!(b.get("/api/v1/epoch?after=0&timeout_ms=10000"), async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        b.register(6001).await.expect(201);
    });
    assert_eq!(poll.expect(200)["epoch"], 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
}

both_stores! {
async fn reregistration_updates_a_free_proxy_but_not_a_serving_node() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, [6001, 6002]).await;
    let e = b.epoch().await;
    let mut moved = registration(6002);
    moved["node_address"] = json!("127.0.0.1:9999");
    assert_eq!(b.post("/api/v1/proxies", moved.clone()).await.expect(200)["node_address"], "127.0.0.1:9999");
    assert_eq!(b.epoch().await, e + 1);
    b.post("/api/v1/clusters", json!({"name": "c", "proxies": [addr(6001)]})).await.expect(201);
    let before = b.model().await;
    let mut moved = registration(6001);
    moved["node_address"] = json!("127.0.0.1:9998");
    b.post("/api/v1/proxies", moved).await.expect_error(409, "conflict");
    assert_eq!(b.model().await, before);
}
}

both_stores! {
async fn a_filtered_migration_moves_slots_into_a_node_and_switches_like_replication() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6003).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    // Into a node that holds data (replication would refuse it).
    let body = json!({"src": addr(6001), "dst": addr(6002), "slots": [[0, 100]]});
    let m = b.post("/api/v1/clusters/shop/migrations", body.clone()).await.expect(202).clone();
    assert_eq!(m["mode"], "filtered", "auto into a node that holds slots resolves to filtered");
    // One streamed import per destination at a time.
    let again = json!({"src": addr(6003), "dst": addr(6002), "slots": [[12000, 12100]], "mode": "filtered"});
    let msg = b.post("/api/v1/clusters/shop/migrations", again).await.expect_error(409, "conflict");
    assert!(msg.contains("one import at a time"), "{msg}");
    // Before switching an abort ends it; from switching on the configs allow the switch.
    let e = b.epoch().await;
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "switching"})).await.expect(200);
    assert_eq!(b.epoch().await, e + 1, "switching allows the switch: one bump");
    let c = b.get(&format!("/api/v1/proxies/{}/config", addr(6002))).await.expect(200).clone();
    assert_eq!(c["migrations"][0]["switch_allowed"], json!(true), "{c}");
    assert_eq!(b.post("/api/v1/clusters/shop/migrations/m-1/abort", json!({})).await.expect(202)["phase"], "switching");
    b.post("/api/v1/clusters/shop/migrations/m-1/progress", json!({"phase": "switched"})).await.expect(200);
    let c = b.post("/api/v1/clusters/shop/migrations/m-1/commit", json!({})).await.expect(200).clone();
    assert_eq!(c["phase"], "committed");
}
}
