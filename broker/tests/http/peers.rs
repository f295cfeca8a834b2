//! Peer addresses: where the other proxies reach a proxy when that is not its client-facing
//! address (containers with published ports). Registered with the proxy, carried by the
//! cluster view's node entry (and so by every config), never in place of `proxy`.

use crate::harness::*;
use serde_json::{json, Value};

fn with_peer(port: u16, peer: &str) -> Value {
    let mut r = registration(port);
    r["peer_address"] = json!(peer);
    r
}

/// The node entry of `proxy` in a cluster view.
fn node<'a>(view: &'a Value, proxy: &str) -> &'a Value {
    view["nodes"].as_array().unwrap().iter().find(|n| n["proxy"] == proxy).expect("node in view")
}

both_stores! {
async fn a_registered_peer_address_is_in_the_cluster_view_and_the_configs() {
    let (mut b, dir) = fresh(Opts::default()).await;
    let p = b.post("/api/v1/proxies", with_peer(6001, "proxy1:6001")).await;
    assert_eq!(p.expect(201)["peer_address"], "proxy1:6001");
    b.register(6002).await.expect(201);
    // A peer address equal to the address says nothing: stored, and shown, as absent.
    let p = b.post("/api/v1/proxies", with_peer(6003, &addr(6003))).await;
    assert!(p.expect(201).get("peer_address").is_none(), "{}", p.body);
    b.post("/api/v1/proxies", with_peer(6004, "proxy4:6004")).await.expect(201);
    let listed = b.get(&format!("/api/v1/proxies/{}", addr(6001))).await;
    assert_eq!(listed.expect(200)["peer_address"], "proxy1:6001");

    let view = b.post("/api/v1/clusters", json!({"name": "c", "proxies": [addr(6001), addr(6002)]})).await;
    let view = view.expect(201).clone();
    assert_eq!(node(&view, &addr(6001))["peer"], "proxy1:6001");
    assert!(node(&view, &addr(6002)).get("peer").is_none(), "no peer address, no field: {view}");
    assert_eq!(b.get("/api/v1/clusters/c").await.expect(200), &view);
    let config = b.get(&format!("/api/v1/proxies/{}/config", addr(6002))).await.expect(200).clone();
    assert_eq!(config["cluster"], view, "the other proxies learn it from their config");

    // A free destination joins with its peer address.
    let m = b
        .post("/api/v1/clusters/c/migrations", json!({"src": addr(6001), "dst": addr(6004), "slots": [[0, 100]]}))
        .await;
    m.expect(202);
    let view = b.get("/api/v1/clusters/c").await.expect(200).clone();
    assert_eq!(node(&view, &addr(6004))["peer"], "proxy4:6004");

    // A serving proxy may change where it is reached (not its node): one bump, which the
    // cluster's view records, and the configs carry the new address.
    let e = b.epoch().await;
    let again = b.post("/api/v1/proxies", with_peer(6002, "proxy2:6002")).await;
    assert_eq!(again.expect(200)["peer_address"], "proxy2:6002");
    assert_eq!(b.epoch().await, e + 1);
    let view = b.get("/api/v1/clusters/c").await.expect(200).clone();
    assert_eq!(node(&view, &addr(6002))["peer"], "proxy2:6002");
    assert_eq!(view["epoch"], e + 1);
    let config = b.get(&format!("/api/v1/proxies/{}/config", addr(6001))).await.expect(200).clone();
    assert_eq!(config["cluster"], view);
    // The same again changes nothing.
    b.post("/api/v1/proxies", with_peer(6002, "proxy2:6002")).await.expect(200);
    assert_eq!(b.epoch().await, e + 1);

    // Checked like every address.
    let before = b.model().await;
    b.post("/api/v1/proxies", with_peer(6005, "no port")).await.expect_error(400, "invalid");
    assert_eq!(b.model().await, before);

    // Stored: the same after a restart.
    b.kill();
    let b = Broker::start_in(&dir.path().join("data"), Opts::default()).await;
    assert_eq!(b.model().await, before);
}
}
