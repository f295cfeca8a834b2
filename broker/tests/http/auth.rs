//! `--api-token`: every mutating call needs the bearer token; reads stay open. And where the
//! token comes from: flag over environment over config file.

use crate::harness::*;
use reqwest::Method;
use serde_json::json;

both_stores! {
async fn a_token_guards_every_mutating_call() {
    let (mut b, _dir) = fresh(Opts::token("s3cret")).await;
    register_all(&b, 6001..=6003).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    let model = b.model().await;

    let calls: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::POST, "/api/v1/proxies".into(), Some(registration(6009))),
        (Method::DELETE, format!("/api/v1/proxies/{}", addr(6003)), None),
        (Method::PUT, format!("/api/v1/proxies/{}/health", addr(6003)), Some(json!({"failed": true}))),
        (Method::POST, "/api/v1/clusters".into(), Some(json!({"name": "x", "proxies": 1}))),
        (Method::DELETE, "/api/v1/clusters/shop".into(), None),
        (Method::POST, "/api/v1/clusters/shop/scale".into(), Some(json!({"add": 1}))),
        (
            Method::POST,
            "/api/v1/clusters/shop/migrations".into(),
            Some(json!({"src": addr(6001), "dst": addr(6003), "slots": [[0, 1]]})),
        ),
        (Method::POST, "/api/v1/clusters/shop/migrations/m-1/progress".into(), Some(json!({"phase": "starting"}))),
        (Method::POST, "/api/v1/clusters/shop/migrations/m-1/commit".into(), Some(json!({}))),
        (Method::POST, "/api/v1/clusters/shop/migrations/m-1/abort".into(), Some(json!({}))),
        (Method::POST, "/api/v1/clusters/shop/migrations/m-1/fail".into(), Some(json!({"error": "x"}))),
    ];
    for token in [None, Some("wrong"), Some("s3cret2"), Some("")] {
        b.token = token.map(str::to_string);
        for (method, path, body) in &calls {
            let answer = b.raw(method.clone(), path, body.as_ref().map(|v| v.to_string().into_bytes()), &[]).await;
            answer.expect_error(401, "unauthorized");
        }
    }
    // Another scheme is no bearer token.
    b.token = None;
    let basic = b
        .raw(
            Method::POST,
            "/api/v1/proxies",
            Some(registration(6009).to_string().into_bytes()),
            &[("authorization", "Basic czNjcmV0")],
        )
        .await;
    basic.expect_error(401, "unauthorized");
    // Reads need no token.
    for path in ["/api/v1/epoch", "/api/v1/proxies", "/api/v1/clusters/shop", "/api/v1/configs", "/api/v1/openapi.json"]
    {
        b.get(path).await.expect(200);
    }
    assert_eq!(b.model().await, model, "a refused call changed something");

    // The scheme is case-insensitive.
    let ok = b
        .raw(
            Method::POST,
            "/api/v1/proxies",
            Some(registration(6009).to_string().into_bytes()),
            &[("authorization", "bearer s3cret")],
        )
        .await;
    ok.expect(201);
}
}

/// Answers whether `token` is accepted by the broker (a re-registration: 200/201 vs 401).
async fn accepts(b: &mut Broker, token: &str) -> bool {
    b.token = Some(token.to_string());
    let a = b.register(6001).await;
    match a.status.as_u16() {
        200 | 201 => true,
        401 => false,
        other => panic!("unexpected {other}: {}", a.body),
    }
}

both_stores! {
async fn token_precedence_is_flag_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "api_token = \"from-file\"\nlog_format = \"text\"\n").unwrap();
    let config = vec!["--config".to_string(), file.display().to_string()];

    let mut b = Broker::start_in(&dir.path().join("d1"), Opts { args: config.clone(), envs: vec![] }).await;
    assert!(accepts(&mut b, "from-file").await);
    assert!(!accepts(&mut b, "from-env").await);
    drop(b);

    let env = vec![("SLUICE_API_TOKEN".to_string(), "from-env".to_string())];
    let mut b = Broker::start_in(&dir.path().join("d2"), Opts { args: config.clone(), envs: env.clone() }).await;
    assert!(accepts(&mut b, "from-env").await);
    assert!(!accepts(&mut b, "from-file").await);
    drop(b);

    let mut args = config.clone();
    args.extend(["--api-token".to_string(), "from-flag".to_string()]);
    let mut b = Broker::start_in(&dir.path().join("d3"), Opts { args, envs: env }).await;
    assert!(accepts(&mut b, "from-flag").await);
    assert!(!accepts(&mut b, "from-env").await);
}
}
