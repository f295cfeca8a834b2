//! Starts the real `sluice-broker` binary on a free port with a temp data dir and talks to it
//! over HTTP. The port is the one the broker itself reports (it binds port 0), so two tests
//! never race for a port; readiness is polled on `GET /api/v1/epoch` with a deadline.
//!
//! Every test runs on both stores: [`both_stores!`] makes a `sled` and an `etcd` test of one
//! body. In the etcd run the test has its own etcd ([`crate::etcd::Etcd`]), and a broker
//! started "in a data dir" uses the namespace named after that dir, so a restart in the same
//! dir finds the same metadata, as with sled.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::etcd::Etcd;

/// Runs the test body once per store: `mod <name> { fn sled(); fn etcd(); }`.
macro_rules! both_stores {
    ($(#[$attr:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            #[tokio::test]
            async fn sled() {
                $crate::harness::on_store($crate::harness::Kind::Sled, async $body).await
            }

            $(#[$attr])*
            #[tokio::test]
            async fn etcd() {
                $crate::harness::on_store($crate::harness::Kind::Etcd, async $body).await
            }
        }
    };
}

/// The brokers' `--etcd-timeout-ms` in tests: generous, so a slow fsync on a loaded machine
/// is not a 503 (an etcd that is down answers "connection refused" at once anyway).
pub const ETCD_TIMEOUT_MS: &str = "10000";

/// Which store a test body runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sled,
    Etcd,
}

/// The store of the running test body.
#[derive(Clone)]
pub enum Backend {
    Sled,
    Etcd(Arc<Etcd>),
}

tokio::task_local! {
    static BACKEND: Backend;
}

/// Runs `body` with brokers on `kind` (an etcd of its own for `Kind::Etcd`).
pub async fn on_store(kind: Kind, body: impl std::future::Future<Output = ()>) {
    let backend = match kind {
        Kind::Sled => Backend::Sled,
        Kind::Etcd => Backend::Etcd(Arc::new(Etcd::start().await)),
    };
    BACKEND.scope(backend, body).await
}

/// The store a broker started "in `data_dir`" uses, for opening it in the test itself.
pub fn store_spec(data_dir: &Path) -> sluice_broker::store::StoreSpec {
    match store_args(data_dir).as_slice() {
        [flag, dir] if flag == "--data-dir" => sluice_broker::store::StoreSpec::Sled(dir.into()),
        [_, spec, ..] => spec.parse().expect("the harness's own --store"),
        other => panic!("unexpected store flags {other:?}"),
    }
}

/// The store brokers started "in `data_dir`" use: `--data-dir`, or an etcd namespace named
/// after the dir.
fn store_args(data_dir: &Path) -> Vec<String> {
    match BACKEND.try_with(Backend::clone).unwrap_or(Backend::Sled) {
        Backend::Sled => vec!["--data-dir".into(), data_dir.display().to_string()],
        Backend::Etcd(etcd) => {
            let name: String = data_dir
                .display()
                .to_string()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
                .collect();
            let name = &name[name.len().saturating_sub(128)..];
            vec!["--store".into(), etcd.store(name), "--etcd-timeout-ms".into(), ETCD_TIMEOUT_MS.into()]
        }
    }
}

const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// How to start a broker beyond the defaults.
#[derive(Default, Clone)]
pub struct Opts {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

impl Opts {
    pub fn token(token: &str) -> Opts {
        Opts { args: vec!["--api-token".into(), token.into()], envs: Vec::new() }
    }
}

pub struct Broker {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    /// Bearer token sent with every request, if set.
    pub token: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

/// One answer: status and JSON body (`Value::Null` if the body was not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// The epoch in the `ETag` header, if any: the one a change committed at.
    pub etag: Option<u64>,
}

impl Answer {
    /// Asserts an API error with this status and the promised shape; answers the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let e = &self.body["error"];
        assert_eq!(e["code"], code, "body: {}", self.body);
        let message = e["message"].as_str().unwrap_or_default().to_string();
        assert!(!message.is_empty(), "error without message: {}", self.body);
        assert_eq!(self.body.as_object().map(|o| o.len()), Some(1), "extra fields: {}", self.body);
        message
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        &self.body
    }
}

impl Broker {
    /// Starts a broker on `data_dir` (see [`store_args`]).
    pub async fn start_in(data_dir: &Path, opts: Opts) -> Broker {
        Broker::start(store_args(data_dir), opts).await
    }

    /// Starts a broker with these store flags.
    pub async fn start(store: Vec<String>, opts: Opts) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-broker"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .args(&store)
            .arg("--log-format")
            .arg("json")
            .args(&opts.args)
            .envs(opts.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sluice-broker");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["fields"]["message"] == "listening" {
                            if let (Some(tx), Some(addr)) = (tx.take(), v["fields"]["addr"].as_str()) {
                                let _ = tx.send(addr.to_string());
                            }
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(STARTUP_DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("broker did not report its address; logs:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        let token = opts.args.iter().position(|a| a == "--api-token").and_then(|i| opts.args.get(i + 1)).cloned();
        let broker = Broker {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap(),
            token,
            logs,
        };
        broker.wait_ready().await;
        broker
    }

    /// Polls `GET /api/v1/epoch` until it answers 200, or fails at the deadline.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(r) = self.client.get(format!("{}/api/v1/epoch", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "broker never answered; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// SIGKILL, and wait until the process is gone (its sled lock with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The broker's process id (to SIGKILL it while requests are in flight).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a request with an optional raw body and extra headers.
    pub async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Answer {
        self.try_raw(method, path, body, headers).await.expect("request")
    }

    /// [`Broker::raw`], with the transport error (a broker killed mid-request) as an error.
    pub async fn try_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, reqwest::Error> {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{}", self.base, path) };
        let mut req = self.client.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let etag =
            resp.headers().get("etag").and_then(|v| v.to_str().ok()).and_then(|v| v.trim_matches('"').parse().ok());
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body, etag })
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.raw(Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.raw(Method::PUT, path, Some(body.to_string().into_bytes()), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.raw(Method::DELETE, path, None, &[]).await
    }

    pub async fn epoch(&self) -> u64 {
        self.get("/api/v1/epoch").await.expect(200)["epoch"].as_u64().expect("epoch")
    }

    /// Registers `127.0.0.1:<port>` with control port +1000 and node port +2000.
    pub async fn register(&self, port: u16) -> Answer {
        self.post("/api/v1/proxies", registration(port)).await
    }

    /// Everything a client can read, in one value: for "nothing changed" checks.
    pub async fn model(&self) -> Value {
        let epoch = self.epoch().await;
        let proxies = self.get("/api/v1/proxies").await.expect(200).clone();
        let names: Vec<String> = self.get("/api/v1/clusters").await.expect(200)["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let mut clusters = serde_json::Map::new();
        for name in &names {
            let view = self.get(&format!("/api/v1/clusters/{name}")).await.expect(200).clone();
            let migrations = self.get(&format!("/api/v1/clusters/{name}/migrations")).await.expect(200).clone();
            clusters.insert(name.clone(), json!({"view": view, "migrations": migrations}));
        }
        let configs = self.get("/api/v1/configs").await.expect(200).clone();
        json!({"epoch": epoch, "proxies": proxies, "clusters": clusters, "configs": configs})
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

pub fn registration(port: u16) -> Value {
    json!({
        "address": addr(port),
        "control_address": addr(port + 1000),
        "node_address": addr(port + 2000),
    })
}

/// A broker in a fresh temp dir (kept alive as long as the returned guard).
pub async fn fresh(opts: Opts) -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start_in(&dir.path().join("data"), opts).await;
    (broker, dir)
}

/// Registers the proxies on `ports` (all answering 201).
pub async fn register_all(b: &Broker, ports: impl IntoIterator<Item = u16>) {
    for p in ports {
        b.register(p).await.expect(201);
    }
}

/// One slot assignment as (start, end, tag, migration).
pub type Slots = (u64, u64, Option<String>, Option<String>);

/// The slots of a node in a cluster view.
pub fn node_slots(view: &Value, proxy: &str) -> Option<Vec<Slots>> {
    let node = view["nodes"].as_array()?.iter().find(|n| n["proxy"] == proxy)?;
    Some(
        node["slots"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["start"].as_u64().unwrap(),
                    s["end"].as_u64().unwrap(),
                    s["tag"].as_str().map(str::to_string),
                    s["migration"].as_str().map(str::to_string),
                )
            })
            .collect(),
    )
}

pub fn plain(start: u64, end: u64) -> Slots {
    (start, end, None, None)
}

pub fn tagged(start: u64, end: u64, tag: &str, id: &str) -> Slots {
    (start, end, Some(tag.to_string()), Some(id.to_string()))
}
