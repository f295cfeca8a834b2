//! The broker's API fuzzed in-process (issue 22): generated bodies (arbitrary JSON values,
//! near-valid requests with one field made wrong, random bytes, truncated requests) and path
//! parameters (slot-range-like strings, huge numbers, unicode, encoded slashes) go through
//! the real axum router (`tower::ServiceExt::oneshot`) over a real sled store holding a
//! cluster and a migration. Every answer must be a 4xx with the API's JSON error, never a 5xx
//! or a panic, and the epoch and the served model must not move.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use sluice_broker::api::{router, AppState};
use sluice_broker::store::Store;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower::ServiceExt;

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Sends one request through the router; answers the status and the body as JSON (or text).
async fn call(app: &Router, method: Method, path: &str, body: Vec<u8>, if_match: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(v) = if_match {
        req = req.header("if-match", v);
    }
    let req = req.body(Body::from(body)).expect("a request");
    let response = app.clone().oneshot(req).await.expect("the router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body)
}

/// A broker's router over a fresh store: six proxies, cluster `shop` on three, migration
/// `m-1` of slots 0-10 from 6001 to 6004.
async fn broker(dir: &std::path::Path) -> (Router, Arc<Store>) {
    let store = Arc::new(Store::open(dir).expect("a store"));
    let app = router(AppState::new(store.clone(), None).expect("the API's state"));
    for port in 6001..=6006 {
        let body =
            json!({"address": addr(port), "control_address": addr(port + 1000), "node_address": addr(port + 2000)});
        let (status, answer) = call(&app, Method::POST, "/api/v1/proxies", body.to_string().into(), None).await;
        assert!(status.is_success(), "{status} {answer}");
    }
    let (status, answer) =
        call(&app, Method::POST, "/api/v1/clusters", json!({"name": "shop", "proxies": 3}).to_string().into(), None)
            .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let migration = json!({"src": addr(6001), "dst": addr(6004), "slots": [[0, 10]]});
    let (status, answer) =
        call(&app, Method::POST, "/api/v1/clusters/shop/migrations", migration.to_string().into(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["id"], "m-1", "{answer}");
    (app, store)
}

/// A route: method, path template, a valid body, and values that make each field wrong.
struct Route {
    method: Method,
    path: &'static str,
    valid: Value,
    wrong: Vec<(&'static str, Vec<Value>)>,
}

fn routes() -> Vec<Route> {
    let r = |method, path, valid, wrong| Route { method, path, valid, wrong };
    // Wrong for every field; `null` only where the field is required (an optional one takes it).
    let types = || vec![json!(null), json!(-7), json!([]), json!({}), json!(true)];
    let with = |mut extra: Vec<Value>| {
        extra.extend(types());
        extra
    };
    vec![
        r(
            Method::POST,
            "/api/v1/proxies",
            json!({"address": addr(6010), "control_address": addr(7010), "node_address": addr(8010)}),
            vec![
                ("address", types()),
                ("control_address", types()),
                ("node_address", types()),
                ("peer_address", vec![json!(1), json!([]), json!({}), json!(true)]),
            ],
        ),
        r(
            Method::PUT,
            "/api/v1/proxies/{address}/health",
            json!({"failed": true}),
            vec![
                ("failed", vec![json!("yes"), json!(1), json!(null), json!([])]),
                ("reason", vec![json!(1), json!([])]),
            ],
        ),
        r(
            Method::POST,
            "/api/v1/clusters",
            json!({"name": "n", "proxies": 1}),
            vec![
                (
                    "name",
                    with(vec![json!(""), json!("a b"), json!("x".repeat(65)), json!("ü"), json!("../x"), json!("a/b")]),
                ),
                (
                    "proxies",
                    with(vec![json!(-1), json!("x"), json!(1.5), json!(100000), json!(["nope:1"]), json!([1])]),
                ),
                ("replicas", with(vec![json!(-1), json!("x"), json!(1e30), json!(100000)])),
            ],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/scale",
            json!({"add": 1}),
            vec![
                ("add", with(vec![json!(-1), json!("x"), json!(1.5), json!(100000), json!(HUGE)])),
                ("remove", vec![json!(["nope:1"]), json!("x"), json!([1]), json!(1), json!({})]),
                ("replicas", vec![json!(-1), json!("x")]),
            ],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/migrations",
            json!({"src": addr(6002), "dst": addr(6005), "slots": [[6000, 6001]], "mode": "auto"}),
            vec![
                ("src", with(vec![json!("nope:1"), json!(""), json!(addr(6005))])),
                ("dst", with(vec![json!("nope:1"), json!(""), json!(addr(6002))])),
                (
                    "slots",
                    with(vec![
                        json!([[0, 16384]]),
                        json!([[-1, 5]]),
                        json!([[6001, 6000]]),
                        json!("6000-6001"),
                        json!([["6000-", 6001]]),
                        json!([[6000]]),
                        json!([[6000, 6001, 6002]]),
                        json!([[6000, 1e30]]),
                        json!([[6000, HUGE]]),
                        json!([[16384, 16384]]),
                        json!([[6000, 6001], [6001, 6002]]),
                        json!([[0, 10]]),
                    ]),
                ),
                ("mode", with(vec![json!("fast"), json!("")])),
            ],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/migrations/{id}/progress",
            json!({"phase": "starting"}),
            vec![("phase", vec![json!("nope"), json!(""), json!(1), json!(null)]), ("at", vec![json!(1), json!([])])],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/migrations/{id}/commit",
            json!({"epoch": 1}),
            vec![("epoch", vec![json!(-1), json!("x"), json!(1.5), json!(HUGE)])],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/migrations/{id}/abort",
            json!({"error": "x"}),
            vec![
                ("error", vec![json!(1), json!([]), json!({})]),
                ("source_stopped_epoch", vec![json!(-1), json!("x")]),
            ],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/migrations/{id}/fail",
            json!({"error": "x"}),
            vec![("error", vec![json!(1), json!([])]), ("source_stopped_epoch", vec![json!(-1), json!(1.5)])],
        ),
        r(
            Method::POST,
            "/api/v1/clusters/{name}/failover",
            json!({"master": addr(6002)}),
            vec![
                ("master", with(vec![json!("nope:1"), json!("")])),
                ("promote", vec![json!("nope:1"), json!(1)]),
                ("graceful", vec![json!("yes"), json!(1)]),
            ],
        ),
        r(Method::DELETE, "/api/v1/proxies/{address}", Value::Null, Vec::new()),
        r(Method::DELETE, "/api/v1/clusters/{name}", Value::Null, Vec::new()),
        r(Method::GET, "/api/v1/proxies/{address}", Value::Null, Vec::new()),
        r(Method::GET, "/api/v1/proxies/{address}/config", Value::Null, Vec::new()),
        r(Method::GET, "/api/v1/clusters/{name}", Value::Null, Vec::new()),
        r(Method::GET, "/api/v1/clusters/{name}/migrations/{id}", Value::Null, Vec::new()),
    ]
}

/// Stands for the number 99999999999999999999 (beyond `u64`, which a `Value` cannot hold): it
/// is written into the body's text in its place.
const HUGE: &str = "__huge__";

/// Path parameters that name nothing (already percent-encoded).
const GARBAGE_PARAMS: &[&str] = &[
    "0-",
    "16384",
    "-1",
    "0-16383",
    "99999999999999999999",
    "%C3%BC",
    "%FF%FE",
    "..",
    "a%2Fb",
    "%00",
    "%20",
    "nope",
    "m-99999999999999999999",
    "127.0.0.1:99999",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![0.5, -1.0, 1e300, 16383.0, 16384.0]).prop_map(|f| json!(f)),
        prop::sample::select(vec!["shop", "m-1", "127.0.0.1:6001", "0-", "16384", "-1", "ü", "", "starting", "keys"])
            .prop_map(|s| json!(s)),
        ".{0,8}".prop_map(Value::String),
    ];
    let keys = prop::sample::select(vec![
        "name", "proxies", "address", "src", "dst", "slots", "mode", "phase", "epoch", "add", "failed", "master", "",
    ]);
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// How the body of a case is made.
#[derive(Debug, Clone)]
enum BodyKind {
    /// Any JSON; an object always gets a field no request has.
    Json(Value),
    /// The route's valid body with field `field` (an index) set to wrong value `value`.
    NearValid {
        field: prop::sample::Index,
        value: prop::sample::Index,
    },
    Bytes(Vec<u8>),
    /// The route's valid body cut short.
    Truncated(prop::sample::Index),
}

fn body_kind() -> impl Strategy<Value = BodyKind> {
    prop_oneof![
        2 => json_value().prop_map(BodyKind::Json),
        3 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(field, value)| BodyKind::NearValid { field, value }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(BodyKind::Bytes),
        1 => any::<prop::sample::Index>().prop_map(BodyKind::Truncated),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    route: prop::sample::Index,
    /// Per path parameter: a real name (`None`) or garbage.
    params: [Option<prop::sample::Index>; 3],
    body: BodyKind,
    if_match: Option<&'static str>,
}

fn case() -> impl Strategy<Value = Case> {
    let param = prop::option::weighted(0.4, any::<prop::sample::Index>());
    let if_match =
        prop::option::weighted(0.2, prop::sample::select(vec!["\"x\"", "\"99999999999999999999\"", "\"0\"", "*", ""]));
    (any::<prop::sample::Index>(), [param.clone(), param.clone(), param], body_kind(), if_match)
        .prop_map(|(route, params, body, if_match)| Case { route, params, body, if_match })
}

/// The body a case sends, or `None` when the case would be a valid request (skipped).
fn body_of(route: &Route, kind: &BodyKind) -> Option<Vec<u8>> {
    let bytes = match kind {
        BodyKind::Json(v) => {
            let mut v = v.clone();
            if let Value::Object(m) = &mut v {
                m.insert("zz_fuzz".into(), Value::Null);
            }
            v.to_string().into_bytes()
        }
        BodyKind::NearValid { field, value } => {
            if route.wrong.is_empty() {
                return Some(b"{\"zz_fuzz\":1}".to_vec());
            }
            let (name, values) = &route.wrong[field.index(route.wrong.len())];
            let mut body: Map<String, Value> = route.valid.as_object().cloned().unwrap_or_default();
            body.insert(name.to_string(), values[value.index(values.len())].clone());
            Value::Object(body).to_string().replace(&format!("\"{HUGE}\""), "99999999999999999999").into_bytes()
        }
        BodyKind::Bytes(b) => b.clone(),
        BodyKind::Truncated(at) => {
            let full = route.valid.to_string().into_bytes();
            full[..at.index(full.len())].to_vec()
        }
    };
    // A blank body is an empty request where the body is optional (commit, abort, fail).
    let optional = ["/commit", "/abort", "/fail"].iter().any(|end| route.path.ends_with(end));
    if optional && bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    // Random bytes that happen to be a request object are not garbage.
    let is_object = serde_json::from_slice::<Value>(&bytes)
        .is_ok_and(|v| v.as_object().is_some_and(|m| !m.contains_key("zz_fuzz")));
    let near_valid = matches!(kind, BodyKind::NearValid { .. }) && !route.wrong.is_empty();
    (near_valid || !is_object).then_some(bytes)
}

#[test]
fn garbage_requests_get_a_json_4xx_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (app, store) = rt.block_on(broker(dir.path()));
    let epoch = store.snapshot().epoch;
    let model = rt.block_on(async {
        let configs = call(&app, Method::GET, "/api/v1/configs", Vec::new(), None).await.1;
        let migrations = call(&app, Method::GET, "/api/v1/migrations", Vec::new(), None).await.1;
        (configs, migrations)
    });
    let routes = routes();
    let statuses = RefCell::new(BTreeMap::new());
    let sent = RefCell::new(Vec::<String>::new());
    // No shrinking: the store is shared by the cases, so after a failure every case would fail
    // and the input reported would not be the one that broke it.
    let mut runner = TestRunner::new(Config { max_shrink_iters: 0, ..Config::default() });
    let result = runner.run(&case(), |case| {
        let route = &routes[case.route.index(routes.len())];
        let mut path = route.path.to_string();
        let mut all_real = true;
        for (i, (param, real)) in
            [("{address}", addr(6001)), ("{name}", "shop".into()), ("{id}", "m-1".into())].into_iter().enumerate()
        {
            let value = match &case.params[i] {
                Some(g) if path.contains(param) => {
                    all_real = false;
                    GARBAGE_PARAMS[g.index(GARBAGE_PARAMS.len())].to_string()
                }
                _ => real,
            };
            path = path.replace(param, &value);
        }
        if all_real && matches!(route.method, Method::DELETE | Method::GET) {
            return Ok(()); // a real name: a valid request
        }
        let Some(body) = body_of(route, &case.body) else {
            return Ok(());
        };
        let (status, answer) = rt.block_on(call(&app, route.method.clone(), &path, body.clone(), case.if_match));
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        prop_assert!(
            status.is_client_error(),
            "{} {} {:?} ({:?}) → {} {}",
            route.method,
            path,
            shown,
            case.body,
            status,
            answer
        );
        prop_assert!(
            answer["error"]["code"].is_string(),
            "not the error shape: {} {} → {}",
            route.method,
            path,
            answer
        );
        let now = store.snapshot().epoch;
        sent.borrow_mut().push(format!("{} {} {:?} → {} epoch {now}", route.method, path, shown, status));
        prop_assert_eq!(now, epoch, "the epoch moved; the requests sent: {:#?}", sent.borrow());
        *statuses.borrow_mut().entry(status.as_u16()).or_insert(0usize) += 1;
        Ok::<(), TestCaseError>(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let after = rt.block_on(async {
        let configs = call(&app, Method::GET, "/api/v1/configs", Vec::new(), None).await.1;
        let migrations = call(&app, Method::GET, "/api/v1/migrations", Vec::new(), None).await.1;
        (configs, migrations)
    });
    assert_eq!(after, model, "garbage changed the model");
    let statuses = statuses.into_inner();
    eprintln!("{} cases; statuses of the requests sent: {statuses:?}", runner.config().cases);
    for status in [400, 404] {
        assert!(statuses.contains_key(&status), "no {status} in {statuses:?}");
    }
}

#[test]
fn garbage_queries_get_a_json_400() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let (app, store) = rt.block_on(broker(dir.path()));
    let epoch = store.snapshot().epoch;
    for after in ["-1", "x", "99999999999999999999", "1.5", "", "%FF", "0-"] {
        let (status, answer) =
            rt.block_on(call(&app, Method::GET, &format!("/api/v1/epoch?after={after}"), Vec::new(), None));
        assert_eq!(status, StatusCode::BAD_REQUEST, "after={after}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    assert_eq!(store.snapshot().epoch, epoch);
}
