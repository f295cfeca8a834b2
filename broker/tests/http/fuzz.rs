//! Garbage at every mutating endpoint: random bytes, random JSON, truncated and oversized
//! bodies, mangled paths and headers. Every answer must be a 4xx in the API's error shape
//! (never a 5xx, never a dropped connection) and the model must not move.
//!
//! Deterministic: a fixed-seed generator, so a failure reproduces.

use crate::harness::*;
use reqwest::Method;
use serde_json::{json, Map, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const KEYS: &[&str] = &[
    "name",
    "proxies",
    "address",
    "control_address",
    "node_address",
    "src",
    "dst",
    "slots",
    "mode",
    "phase",
    "progress",
    "error",
    "epoch",
    "add",
    "failed",
    "reason",
    "",
    "__proto__",
    "nom",
];

fn random_string(rng: &mut Rng) -> String {
    let pool = [
        "shop",
        "127.0.0.1:6001",
        "127.0.0.1:6004",
        "replication",
        "keys",
        "auto",
        "switched",
        "m-1",
        "",
        " ",
        "\u{0}",
        "ü",
        "%",
        "::",
        "{}",
        "9999999999999999999999",
        "-1",
    ];
    if rng.chance(50) {
        rng.pick(&pool).to_string()
    } else {
        (0..rng.below(12)).map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('?')).collect()
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!(*rng.pick(&[0.5, -1.0, 1e300, 16383.0, 16384.0])),
        4 => Value::String(random_string(rng)),
        5 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Object(random_object(rng, depth + 1)),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for _ in 0..rng.below(5) {
        m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
    }
    m
}

/// A body no endpoint can accept.
fn garbage_body(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    loop {
        let body: Vec<u8> = match rng.below(8) {
            // Random bytes that are not JSON at all.
            0 => (0..1 + rng.below(200)).map(|_| rng.next() as u8).collect(),
            // A JSON value that is not an object.
            1 => {
                let mut v = random_value(rng, 0);
                if v.is_object() {
                    v = Value::Array(vec![v]);
                }
                v.to_string().into_bytes()
            }
            // A random object that always holds a field no request type has.
            2 => {
                let mut m = random_object(rng, 0);
                m.insert("zz_fuzz".into(), random_value(rng, 1));
                Value::Object(m).to_string().into_bytes()
            }
            // A valid body, truncated.
            3 => {
                let full = valid.to_string().into_bytes();
                full[..1 + rng.below(full.len() - 1)].to_vec()
            }
            // A valid body with one field of the wrong type (and the unknown field).
            4 => {
                let mut v = valid.clone();
                if let Some(m) = v.as_object_mut() {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    if !keys.is_empty() {
                        let k = rng.pick(&keys).clone();
                        m.insert(k, random_value(rng, 1));
                    }
                    m.insert("zz_fuzz".into(), Value::Null);
                }
                v.to_string().into_bytes()
            }
            // Deep nesting.
            5 => format!("{{\"slots\":{}{}}}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            // Invalid UTF-8 inside a string.
            6 => [&b"{\"name\":\""[..], &[0xff, 0xfe, 0xc0][..], &b"\",\"proxies\":1}"[..]].concat(),
            // Too large (rarely: each one is a megabyte).
            7 if rng.chance(20) => {
                let mut b = b"{\"zz_fuzz\":\"".to_vec();
                b.extend(std::iter::repeat_n(b'a', (1 << 20) + 10));
                b.extend(b"\"}");
                b
            }
            _ => b"\x00garbage".to_vec(),
        };
        let blank = body.iter().all(u8::is_ascii_whitespace);
        let parses_as_object = serde_json::from_slice::<Value>(&body)
            .is_ok_and(|v| v.as_object().is_some_and(|m| !m.contains_key("zz_fuzz")));
        if !blank && !parses_as_object {
            return body;
        }
    }
}

/// A path segment that names nothing (it always holds a `~`).
fn garbage_segment(rng: &mut Rng) -> String {
    let raw = format!("~{}", random_string(rng));
    let mut out = String::new();
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else if rng.chance(10) {
            out.push_str("%ZZ");
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if rng.chance(10) {
        out.push_str("%FF%FE");
    }
    out
}

both_stores! {
async fn garbage_gets_4xx_and_changes_nothing() {
    let (b, _dir) = fresh(Opts::default()).await;
    register_all(&b, 6001..=6006).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    b.post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6004), "slots": [[0, 10]]}))
        .await
        .expect(202);
    let model = b.model().await;
    let epoch = model["epoch"].as_u64().unwrap();

    // (method, path template, a valid body, whether real names may fill the template).
    // DELETE ignores the body, so it only ever gets names that do not exist.
    let routes: Vec<(Method, &str, Value, bool)> = vec![
        (Method::POST, "/api/v1/proxies", registration(6010), true),
        (Method::DELETE, "/api/v1/proxies/{address}", Value::Null, false),
        (Method::PUT, "/api/v1/proxies/{address}/health", json!({"failed": true}), true),
        (Method::POST, "/api/v1/clusters", json!({"name": "n", "proxies": 1}), true),
        (Method::DELETE, "/api/v1/clusters/{name}", Value::Null, false),
        (Method::POST, "/api/v1/clusters/{name}/scale", json!({"add": 1}), true),
        (
            Method::POST,
            "/api/v1/clusters/{name}/migrations",
            json!({"src": addr(6002), "dst": addr(6005), "slots": [[6000, 6001]], "mode": "auto"}),
            true,
        ),
        (Method::POST, "/api/v1/clusters/{name}/migrations/{id}/progress", json!({"phase": "starting"}), true),
        (Method::POST, "/api/v1/clusters/{name}/migrations/{id}/commit", json!({"epoch": epoch}), true),
        (Method::POST, "/api/v1/clusters/{name}/migrations/{id}/abort", json!({"error": "x"}), true),
        (Method::POST, "/api/v1/clusters/{name}/migrations/{id}/fail", json!({"error": "x"}), true),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..400 {
        let (method, template, valid, real_ok) = rng.pick(&routes).clone();
        let real = real_ok && rng.chance(60);
        let mut path = template.to_string();
        for (param, real_value) in
            [("{address}", addr(6001)), ("{name}", "shop".to_string()), ("{id}", "m-1".to_string())]
        {
            let value = if real { real_value } else { garbage_segment(&mut rng) };
            path = path.replace(param, &value);
        }
        let mut method = method;
        if rng.chance(5) {
            // A mangled path or method: no route, or the wrong method.
            path = format!("/api/v1/{}/{}", garbage_segment(&mut rng), garbage_segment(&mut rng));
            method = rng.pick(&[Method::POST, Method::PUT, Method::DELETE, Method::PATCH]).clone();
        }
        let body = if method == Method::DELETE && rng.chance(50) { None } else { Some(garbage_body(&mut rng, &valid)) };
        // The body must be refused on its own: real names get garbage bodies only, and an
        // If-Match that is garbage or stale is refused too.
        let if_match = match rng.below(6) {
            0 => Some("\"not-an-epoch\"".to_string()),
            1 => Some(format!("\"{}\"", epoch + 1)),
            2 => Some(format!("\"{epoch}\"")),
            _ => None,
        };
        let headers: Vec<(&str, &str)> = if_match.as_deref().map(|v| vec![("if-match", v)]).unwrap_or_default();
        let answer = b.raw(method.clone(), &path, body.clone(), &headers).await;
        let status = answer.status.as_u16();
        assert!(
            (400..500).contains(&status),
            "#{i} {method} {path} {:?} → {status} {}",
            body.as_ref().map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()),
            answer.body
        );
        assert!(answer.body["error"]["code"].is_string(), "#{i} {method} {path}: not the error shape: {}", answer.body);
        *seen.entry(status).or_insert(0) += 1;
    }
    eprintln!("fuzz statuses: {seen:?}");
    assert_eq!(b.model().await, model, "garbage changed the model");
    // The mix really exercised several refusals.
    for status in [400, 404, 412, 413] {
        assert!(seen.contains_key(&status), "no {status} in {seen:?}");
    }
}
}
