//! The coordinator's broker client and its decisions against the real `sluice-broker` binary
//! (no proxies: their control addresses are closed ports). The end-to-end tests with real
//! proxies live in `integration-tests/`.
//!
//! The broker binary is looked up next to this test executable (`target/<profile>/`); build
//! it first with `cargo build -p sluice-broker` (`cargo test --workspace` does).

use serde_json::{json, Value};
use sluice_common::api::{HealthReport, Migration, ProgressReport, ProxyState};
use sluice_common::model::MigrationPhase::{self, *};
use sluice_coordinator::reconcile::{self, MigrationAction, Side, TaskView};
use sluice_coordinator::{BrokerClient, Coordinator, Settings};
use sluice_proto::control::{MigrationTask, StatusReply};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

const TOKEN: &str = "s3cret";
const DEADLINE: Duration = Duration::from_secs(20);

struct Broker {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("sluice-broker{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing: run `cargo build -p sluice-broker` first", bin.display());
    bin
}

impl Broker {
    /// Starts the broker on a port it picks, with `TOKEN`, and waits for its `listening` line.
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(broker_binary());
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--log-format", "json", "--api-token", TOKEN])
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sluice-broker");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        // Reads stderr to the end: a full pipe would block the broker.
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
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the broker did not report its address");
            }
        };
        let http = reqwest::Client::builder().timeout(DEADLINE).build().expect("http client");
        Broker { child, base: format!("http://{addr}"), http, _dir: dir }
    }

    fn client(&self) -> BrokerClient {
        BrokerClient::new(&self.base, Some(TOKEN.to_string())).expect("client")
    }

    /// A mutating call made by the test itself (as an operator would), expecting 2xx.
    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let body: Value = r.json().await.expect("json");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Registers a proxy `127.0.0.1:<port>` whose control address is a closed port.
    async fn register(&self, port: u16) -> String {
        let address = format!("127.0.0.1:{port}");
        let body = json!({"address": address, "control_address": closed_port(), "node_address": format!("127.0.0.1:{}", port + 1000)});
        self.post("/api/v1/proxies", body).await;
        address
    }
}

/// A local address nothing listens on (bound, then released).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

#[tokio::test]
async fn configs_are_read_and_health_is_reported() {
    let broker = Broker::start();
    let client = broker.client();
    let p1 = broker.register(16001).await;
    let p2 = broker.register(16002).await;
    let p3 = broker.register(16003).await;
    broker.post("/api/v1/clusters", json!({"name": "shop", "proxies": [p1, p2]})).await;

    let configs = client.configs().await.expect("configs");
    let epoch = client.epoch().await.expect("epoch");
    assert_eq!(configs.epoch, epoch);
    assert_eq!(configs.configs.len(), 3);
    let by_address = |a: &str| configs.configs.iter().find(|e| e.proxy.address == a).expect("listed").clone();
    let e1 = by_address(&p1);
    assert_eq!(e1.config.epoch, epoch);
    assert_eq!(e1.config.proxy, p1);
    assert_eq!(e1.config.cluster.as_ref().map(|c| c.name.as_str()), Some("shop"));
    assert_eq!(e1.proxy.state, ProxyState::Serving);
    assert!(!e1.proxy.control_address.is_empty());
    let e3 = by_address(&p3);
    assert_eq!(e3.proxy.state, ProxyState::Free);
    assert_eq!(e3.config.cluster, None);

    // Failed, with the reason; status only, the epoch does not move.
    let report = HealthReport { failed: true, reason: Some("no answer".into()) };
    let info = client.set_health(&p2, &report).await.expect("mark failed");
    assert_eq!(info.state, ProxyState::Failed);
    assert_eq!(info.failure.as_deref(), Some("no answer"));
    let configs = client.configs().await.expect("configs");
    assert_eq!(configs.epoch, epoch);
    assert_eq!(configs.configs.iter().find(|e| e.proxy.address == p2).map(|e| e.proxy.state), Some(ProxyState::Failed));
    // Twice is harmless.
    client.set_health(&p2, &report).await.expect("mark failed again");

    let info = client.set_health(&p2, &HealthReport { failed: false, reason: None }).await.expect("recovered");
    assert_eq!(info.state, ProxyState::Serving);
    assert_eq!(info.failure, None);
    let proxies = client.proxies().await.expect("proxies");
    assert!(proxies.iter().all(|p| p.state != ProxyState::Failed), "{proxies:?}");

    // What the loop needs to tell apart.
    let err = client.set_health("127.0.0.1:1", &report).await.expect_err("unknown proxy");
    assert!(err.is_not_found(), "{err}");
    let anonymous = BrokerClient::new(&broker.base, None).expect("client");
    let err = anonymous.set_health(&p2, &report).await.expect_err("no token");
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(!err.is_outage());
    let nowhere = BrokerClient::new(&format!("http://{}", closed_port()), None).expect("client");
    let err = nowhere.configs().await.expect_err("nothing listens");
    assert!(err.is_outage(), "{err}");
}

#[tokio::test]
async fn the_long_poll_wakes_on_a_new_epoch() {
    let broker = Broker::start();
    let client = broker.client();
    let epoch = client.epoch().await.expect("epoch");

    let started = Instant::now();
    assert_eq!(client.wait_epoch(epoch, Duration::from_millis(150)).await.expect("poll"), epoch);
    assert!(started.elapsed() >= Duration::from_millis(100), "answered after {:?}", started.elapsed());

    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.wait_epoch(epoch, Duration::from_secs(15)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    broker.register(16011).await;
    let woke = waiter.await.expect("join").expect("poll");
    assert_eq!(woke, epoch + 1);
    assert!(started.elapsed() < Duration::from_secs(5), "woke after {:?}", started.elapsed());
}

#[tokio::test]
async fn rounds_report_unreachable_proxies_once() {
    let broker = Broker::start();
    let p1 = broker.register(16021).await;
    let p2 = broker.register(16022).await;
    broker.post("/api/v1/clusters", json!({"name": "shop", "proxies": 1})).await;

    let mut settings = Settings::new(&broker.base);
    settings.api_token = Some(TOKEN.into());
    settings.rpc_timeout = Duration::from_millis(300);
    settings.failure_threshold = 2;
    let mut coordinator = Coordinator::new(settings).expect("coordinator");

    let first = coordinator.round().await.expect("round 1");
    assert_eq!((first.proxies, first.answered, first.pushed, first.health_reports), (2, 0, 0, 0));
    let second = coordinator.round().await.expect("round 2");
    assert_eq!(second.health_reports, 2, "both reach the threshold");
    let third = coordinator.round().await.expect("round 3");
    assert_eq!(third.health_reports, 0, "the broker already shows them failed");
    assert_eq!(third.epoch, first.epoch, "health reports do not move the epoch");

    let proxies = broker.client().proxies().await.expect("proxies");
    for address in [&p1, &p2] {
        let p = proxies.iter().find(|p| &p.address == address).expect("listed");
        assert_eq!(p.state, ProxyState::Failed);
        let reason = p.failure.as_deref().unwrap_or_default();
        assert!(reason.contains(&p.control_address) && reason.contains("2 status calls"), "{reason}");
    }

    // A second coordinator, fresh: it counts on its own, and has nothing to add.
    let mut settings = Settings::new(&broker.base);
    settings.api_token = Some(TOKEN.into());
    settings.failure_threshold = 1;
    let mut other = Coordinator::new(settings).expect("coordinator");
    assert_eq!(other.round().await.expect("round").health_reports, 0);
}

#[tokio::test]
async fn the_loop_marks_unreachable_proxies_failed_and_stops_on_request() {
    let broker = Broker::start();
    let p1 = broker.register(16031).await;
    let mut settings = Settings::new(&broker.base);
    settings.api_token = Some(TOKEN.into());
    settings.interval = Duration::from_millis(50);
    settings.rpc_timeout = Duration::from_millis(200);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice_coordinator::run(settings, async {
        let _ = stopped.await;
    }));

    let client = broker.client();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let proxies = client.proxies().await.expect("proxies");
        if proxies.iter().any(|p| p.address == p1 && p.state == ProxyState::Failed) {
            break;
        }
        assert!(Instant::now() < deadline, "never marked failed: {proxies:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").expect("join").expect("run");
}

/// SIGTERM (the shutdown future) during a round: the round is finished first, so what it
/// decided reaches the broker. Here the round is stuck in a Status call to a proxy that accepts
/// the connection and never answers; the stop comes while it waits, and the failure report of
/// that same round must still be made (failure threshold 1) before the loop returns.
#[tokio::test]
async fn a_stop_during_a_round_lets_the_round_finish() {
    let broker = Broker::start();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let control = silent.local_addr().expect("addr").to_string();
    let address = "127.0.0.1:16041".to_string();
    let body = json!({"address": address, "control_address": control, "node_address": "127.0.0.1:17041"});
    broker.post("/api/v1/proxies", body).await;

    let mut settings = Settings::new(&broker.base);
    settings.api_token = Some(TOKEN.into());
    settings.failure_threshold = 1;
    settings.rpc_timeout = Duration::from_millis(1500);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sluice_coordinator::run(settings, async {
        let _ = stopped.await;
    }));
    // The round's Status call has reached the silent proxy: stop now.
    let (held, _) = tokio::time::timeout(DEADLINE, silent.accept()).await.expect("a Status call").expect("accept");
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, task).await.expect("stops").expect("join").expect("run");
    drop(held);
    let proxies = broker.client().proxies().await.expect("proxies");
    let p = proxies.iter().find(|p| p.address == address).expect("listed");
    assert_eq!(p.state, ProxyState::Failed, "the interrupted round's report was not made: {p:?}");
}

fn task(phase: MigrationPhase) -> Side {
    Side::Task { task: TaskView { phase, progress: None, error: None, phase_times: BTreeMap::new() }, clean_epoch: 0 }
}

fn with(phase: MigrationPhase, progress: Value) -> Side {
    Side::Task {
        task: TaskView { phase, progress: Some(progress), error: None, phase_times: BTreeMap::new() },
        clean_epoch: 0,
    }
}

/// `side` with its proxy's garbage clean at `clean_epoch`.
fn clean(side: Side, clean_epoch: u64) -> Side {
    match side {
        Side::Task { task, .. } => Side::Task { task, clean_epoch },
        Side::NoTask { .. } => Side::NoTask { clean_epoch },
        other => other,
    }
}

/// What the proxies report at each step of a replication migration (source, destination),
/// and the phase the broker must show once the coordinator's calls went through. The
/// proxies' clean epochs after the commit are relative to the epoch the commit produces,
/// `committed`.
fn script(committed: u64) -> Vec<(Side, Side, MigrationPhase)> {
    vec![
        (task(Pending), task(Starting), Starting),
        (task(Following), with(Following, json!({"lag_bytes": 120})), Following),
        (with(Following, json!({"lag_bytes": 5})), task(Following), Following),
        (task(Switching), task(Following), Switching),
        // The destination is promoted: its word commits.
        (task(Switching), task(Switched), Committed),
        (clean(task(Cleaning), committed - 1), clean(Side::NoTask { clean_epoch: 0 }, committed - 1), Cleaning),
        (with(Cleaning, json!({"keys_deleted": 4})), with(Cleaning, json!({"keys_deleted": 6})), Cleaning),
        (
            clean(with(Done, json!({"keys_deleted": 10})), committed),
            with(Cleaning, json!({"keys_deleted": 7})),
            Cleaning,
        ),
        (Side::NoTask { clean_epoch: committed }, clean(task(Done), committed + 1), Done),
    ]
}

async fn execute(client: &BrokerClient, m: &Migration, actions: &[MigrationAction]) -> Vec<Result<Migration, String>> {
    let mut out = Vec::new();
    for a in actions {
        let r = match a {
            MigrationAction::Progress(r) => client.report_progress(&m.cluster, &m.id, r).await,
            MigrationAction::Commit { epoch } => client.commit(&m.cluster, &m.id, *epoch).await,
            MigrationAction::Fail { error, source_stopped_epoch } => {
                client.fail(&m.cluster, &m.id, error, *source_stopped_epoch).await
            }
        };
        out.push(r.map_err(|e| e.to_string()));
    }
    out
}

async fn record(client: &BrokerClient, id: &str) -> Migration {
    let path_all = client.migrations().await.expect("migrations");
    match path_all.into_iter().find(|m| m.id == id) {
        Some(m) => m,
        None => panic!("migration {id} is not running"),
    }
}

/// The ids of the migrations in each proxy's config, as the coordinator reads them.
async fn config_migrations(client: &BrokerClient, proxies: &[&str]) -> Vec<Vec<String>> {
    let configs = client.configs().await.expect("configs");
    proxies
        .iter()
        .map(|p| {
            let entry = configs.configs.iter().find(|e| e.proxy.address == *p).expect("listed");
            assert_eq!(entry.config.epoch, configs.epoch);
            entry.config.migrations.iter().map(|m| m.id.clone()).collect()
        })
        .collect()
}

#[tokio::test]
async fn migration_decisions_hold_against_the_real_broker() {
    let broker = Broker::start();
    let client = broker.client();
    let p1 = broker.register(16041).await;
    let p2 = broker.register(16042).await;
    let spare = broker.register(16043).await;
    broker.post("/api/v1/clusters", json!({"name": "shop", "proxies": [p1, p2]})).await;
    let created = broker
        .post("/api/v1/clusters/shop/migrations", json!({"src": p1, "dst": spare, "slots": [[0, 100]], "mode": "auto"}))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    let migration_epoch = created["epoch"].as_u64().expect("epoch");

    let mut m = record(&client, &id).await;
    assert_eq!((m.phase, m.epoch, m.committed_epoch), (Pending, migration_epoch, None));
    // Nothing else changes the epoch meanwhile: `switching` (which allows the switch in the
    // configs) produces the next one, the commit the one after.
    let committed = client.epoch().await.expect("epoch") + 2;
    let mut commits = 0;
    for (src, dst, expected) in script(committed) {
        // Each step runs twice, as a second coordinator (or the next round) would: the
        // second time asks for nothing, or for something the broker takes again harmlessly.
        for attempt in 0..2 {
            let actions = reconcile::decide(&m, &src, &dst, true);
            commits += actions.iter().filter(|a| matches!(a, MigrationAction::Commit { .. })).count();
            for r in execute(&client, &m, &actions).await {
                assert!(r.is_ok(), "step to {expected:?}, attempt {attempt}: {actions:?}: {r:?}");
            }
            if expected == Done {
                // Ended: the work list no longer has it.
                assert!(client.migrations().await.expect("migrations").iter().all(|x| x.id != id));
                break;
            }
            m = record(&client, &id).await;
            if attempt == 0 || expected != Committed {
                assert_eq!(m.phase, expected, "attempt {attempt}");
            } else {
                // Right after the commit, proxies that still show the switch have not
                // cleaned at the commit's epoch: the next round reports cleaning.
                assert_eq!(m.phase, Cleaning, "attempt {attempt}");
            }
            if expected >= Committed {
                assert_eq!(m.committed_epoch, Some(committed));
                // Committed, the migration stays in both proxies' configs until done.
                assert_eq!(config_migrations(&client, &[&p1, &spare]).await, vec![vec![id.clone()], vec![id.clone()]]);
            }
            let bumps_left = u64::from(expected < Committed) + u64::from(expected < Switching);
            assert_eq!(client.epoch().await.expect("epoch"), committed - bumps_left, "{expected:?}");
        }
    }
    assert_eq!(commits, 1, "the commit is asked for once");
    // Done took the migration out of both configs, with one epoch bump of its own.
    assert_eq!(client.epoch().await.expect("epoch"), committed + 1);
    assert_eq!(config_migrations(&client, &[&p1, &spare]).await, vec![Vec::<String>::new(), Vec::new()]);
    let all = broker.http.get(format!("{}/api/v1/clusters/shop/migrations/{id}", broker.base)).send().await;
    let done: Migration = all.expect("get").json().await.expect("json");
    assert_eq!((done.phase, done.committed_epoch), (Done, Some(committed)));
    assert_eq!(done.progress, Some(json!({"keys_deleted": 17})), "the last count, summed over both proxies");
    for phase in [Pending, Starting, Following, Switching, Switched, Committed, Cleaning, Done] {
        assert!(done.timestamps.get(phase).is_some(), "no timestamp for {phase:?}: {done:?}");
    }

    // What the broker refuses, as the loop classifies it: stale, hence benign.
    let report = |phase| ProgressReport { phase, progress: None, error: None, at: None };
    let again = broker
        .post("/api/v1/clusters/shop/migrations", json!({"src": p1, "dst": p2, "slots": [[200, 300]], "mode": "keys"}))
        .await;
    let id2 = again["id"].as_str().expect("id").to_string();
    let epoch2 = again["epoch"].as_u64().expect("epoch");
    client.report_progress("shop", &id2, &report(Switching)).await.expect("forward");
    let err = client.report_progress("shop", &id2, &report(Starting)).await.expect_err("backwards");
    assert!(err.is_conflict(), "{err}");
    let err = client.commit("shop", &id2, epoch2).await.expect_err("not switched");
    assert!(err.is_conflict(), "{err}");
    let switched = client.report_progress("shop", &id2, &report(Switched)).await.expect("switched");
    assert_eq!(switched.phase, Switched);
    let err = client.commit("shop", &id2, epoch2 - 1).await.expect_err("wrong epoch");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(client.commit("shop", &id2, epoch2).await.expect("commit").phase, Committed);
    assert_eq!(client.commit("shop", &id2, epoch2).await.expect("commit again").phase, Committed);
    let err = client.report_progress("shop", "m-999", &report(Starting)).await.expect_err("unknown");
    assert!(err.is_not_found(), "{err}");

    // A failed task fails a migration that has not switched; twice is harmless.
    let third = broker
        .post(
            "/api/v1/clusters/shop/migrations",
            json!({"src": p2, "dst": p1, "slots": [[9000, 9100]], "mode": "keys"}),
        )
        .await;
    let id3 = third["id"].as_str().expect("id").to_string();
    let m3 = record(&client, &id3).await;
    let failed = Side::Task {
        task: TaskView {
            phase: Failed,
            progress: None,
            error: Some("MIGRATE refused".into()),
            phase_times: BTreeMap::new(),
        },
        clean_epoch: 0,
    };
    let actions = reconcile::decide(&m3, &Side::NoAnswer, &failed, true);
    assert_eq!(actions, vec![MigrationAction::Fail { error: "MIGRATE refused".into(), source_stopped_epoch: None }]);
    for _ in 0..2 {
        for r in execute(&client, &m3, &actions).await {
            let after = r.expect("fail");
            assert_eq!((after.phase, after.error.as_deref()), (Failed, Some("MIGRATE refused")));
        }
    }
}

/// A Status reply listing one task for `m` with this phase and progress (`phase_times` inside),
/// read the way a round reads it.
fn from_proxy(m: &Migration, is_source: bool, phase: &str, progress: Value, clean_epoch: u64) -> Side {
    let proxy = if is_source { &m.src } else { &m.dst };
    let task = MigrationTask {
        id: m.id.clone(),
        epoch: m.epoch,
        phase: phase.into(),
        progress_json: progress.to_string(),
        error: String::new(),
        is_source,
    };
    let status = StatusReply { proxy: proxy.clone(), migrations: vec![task], clean_epoch, ..Default::default() };
    reconcile::side(m, is_source, &HashMap::from([(proxy.clone(), status)]))
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `from + (to - from) * n / 4`.
fn between(from: SystemTime, to: SystemTime, n: u32) -> SystemTime {
    from + to.duration_since(from).unwrap_or_default() * n / 4
}

#[tokio::test]
async fn phases_faster_than_a_round_get_the_proxies_times() {
    let broker = Broker::start();
    let client = broker.client();
    let p1 = broker.register(16051).await;
    let spare = broker.register(16052).await;
    broker.post("/api/v1/clusters", json!({"name": "shop", "proxies": [p1]})).await;
    let created =
        broker.post("/api/v1/clusters/shop/migrations", json!({"src": p1, "dst": spare, "slots": [[0, 100]]})).await;
    let id = created["id"].as_str().expect("id").to_string();
    let m = record(&client, &id).await;
    let pending = humantime::parse_rfc3339(m.timestamps.get(Pending).expect("pending")).expect("rfc3339");
    // `switching` bumps the epoch once, the commit once more.
    let committed = client.epoch().await.expect("epoch") + 2;
    let run = |m: Migration, src: Side, dst: Side| {
        let client = client.clone();
        async move {
            let actions = reconcile::decide(&m, &src, &dst, true);
            for r in execute(&client, &m, &actions).await {
                assert!(r.is_ok(), "{actions:?}: {r:?}");
            }
            actions
        }
    };

    // Round 1 sees both proxies following already: starting, then following, each with the
    // earlier of the two proxies' times.
    let now = SystemTime::now();
    let x: Vec<SystemTime> = (0..4).map(|n| between(pending, now, n)).collect();
    let times = |a: SystemTime, b: SystemTime| json!({"starting": stamp(a), "following": stamp(b)});
    let src = from_proxy(&m, true, "following", json!({"lag_bytes": 120, "phase_times": times(x[2], x[2])}), 0);
    let dst = from_proxy(&m, false, "following", json!({"phase_times": times(x[1], x[3])}), 0);
    let actions = run(m.clone(), src, dst).await;
    assert_eq!(actions.len(), 2, "{actions:?}");
    let m = record(&client, &id).await;
    assert_eq!(m.phase, Following);
    assert_eq!(m.timestamps.get(Starting), Some(stamp(x[1]).as_str()));
    assert_eq!(m.timestamps.get(Following), Some(stamp(x[2]).as_str()));
    assert_eq!(m.progress, Some(json!({"lag_bytes": 120})), "phase_times is not forwarded");

    // Round 2: the source switches, the destination already switched (its clock an hour
    // ahead): switching, switched (at the broker's now, not in the future), commit.
    let y = SystemTime::now();
    let ahead = y + Duration::from_secs(3600);
    let src_times = json!({"starting": stamp(x[2]), "following": stamp(x[2]), "switching": stamp(y)});
    let dst_times = json!({"starting": stamp(x[1]), "following": stamp(x[3]), "switched": stamp(ahead)});
    let src = from_proxy(&m, true, "switching", json!({"phase_times": src_times}), 0);
    let dst = from_proxy(&m, false, "switched", json!({"phase_times": dst_times}), 0);
    let actions = run(m.clone(), src, dst).await;
    assert_eq!(actions.len(), 3, "{actions:?}");
    let after_commit = SystemTime::now();
    let m = record(&client, &id).await;
    assert_eq!((m.phase, m.committed_epoch), (Committed, Some(committed)));
    assert_eq!(m.timestamps.get(Switching), Some(stamp(y).as_str()));
    let switched = m.timestamps.get(Switched).expect("switched");
    assert!(switched < stamp(after_commit + Duration::from_millis(1)).as_str(), "{switched} is in the future");

    // Round 3: both proxies cleaned and are done: cleaning (the first to start), done (the
    // last to finish), the migration out of both configs with one more epoch.
    let z: Vec<SystemTime> = (0..4).map(|_| SystemTime::now()).collect();
    let done = |c: SystemTime, d: SystemTime| json!({"keys_deleted": 1, "phase_times": {"cleaning": stamp(c), "done": stamp(d)}});
    let src = from_proxy(&m, true, "done", done(z[1], z[3]), committed);
    let dst = from_proxy(&m, false, "done", done(z[0], z[2]), committed);
    let stale = m.clone();
    let actions = run(m.clone(), src.clone(), dst.clone()).await;
    assert_eq!(actions.len(), 2, "{actions:?}");
    let all = broker.http.get(format!("{}/api/v1/clusters/shop/migrations/{id}", broker.base)).send().await;
    let m: Migration = all.expect("get").json().await.expect("json");
    assert_eq!(m.phase, Done);
    assert_eq!(m.timestamps.get(Cleaning), Some(stamp(z[0]).as_str()));
    assert_eq!(m.timestamps.get(Done), Some(stamp(z[3]).as_str()));
    assert_eq!(m.progress, Some(json!({"keys_deleted": 2})));
    assert_eq!(client.epoch().await.expect("epoch"), committed + 1);
    assert_eq!(config_migrations(&client, &[&p1, &spare]).await, vec![Vec::<String>::new(), Vec::new()]);

    // Every phase has its timestamp, in order.
    let order = [Pending, Starting, Following, Switching, Switched, Committed, Cleaning, Done];
    let stamps: Vec<&str> = order.iter().map(|p| m.timestamps.get(*p).expect("every phase")).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");

    // A second coordinator that read the broker before round 3: its first report is stale.
    let actions = reconcile::decide(&stale, &src, &dst, true);
    let results = execute(&client, &stale, &actions[..1]).await;
    assert!(results[0].as_ref().is_err_and(|e| e.contains("409")), "{results:?}");
    assert_eq!(client.epoch().await.expect("epoch"), committed + 1);
}
