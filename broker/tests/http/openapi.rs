//! The OpenAPI document lists exactly the routes the router serves.

use crate::harness::*;
use std::collections::BTreeSet;

both_stores! {
async fn openapi_lists_every_served_route() {
    let (b, _dir) = fresh(Opts::default()).await;
    let doc = b.get("/api/v1/openapi.json").await.expect(200).clone();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no response"
            );
            if method != "get" {
                assert!(op["security"].is_array(), "{method} {path} does not document the bearer token");
            }
        }
    }
    let served: BTreeSet<(String, String)> =
        sluice_broker::api::served_routes().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in openapi.json: {undocumented:?}");
    assert!(unserved.is_empty(), "in openapi.json but not served: {unserved:?}");
    // Every served route really answers (no fallback 404/405 for the route itself).
    for (method, path) in &served {
        let concrete = path.replace("{address}", "127.0.0.1:1").replace("{name}", "x").replace("{id}", "m-1");
        let a = b.raw(method.parse().unwrap(), &concrete, Some(b"{}".to_vec()), &[]).await;
        assert_ne!(a.status.as_u16(), 405, "{method} {path}");
        if a.status.as_u16() == 404 {
            let msg = a.body["error"]["message"].as_str().unwrap_or_default();
            assert!(!msg.starts_with("no route"), "{method} {path} is not routed: {msg}");
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
}
