//! Client compatibility (issue 8): cluster clients nobody here wrote do their normal work
//! through the proxies while a replication migration moves slots under them.
//!
//! Each test starts a whole deployment (`LocalCluster`: broker, coordinator, three nodes with
//! a proxy each, and a spare) whose proxies keep a migration `following` for at least
//! [`MIN_FOLLOW_MS`], then moves the upper half of the first proxy's slots to the spare. The
//! client works in *rounds*: a realistic mix with every answer checked and keys in the moving
//! slots every time. It runs while the destination follows, through the switch, the commit and
//! the cleanup, and until it has passed [`ROUNDS_AFTER_DONE`] more rounds after `done`. The
//! test fails on any error or wrong answer the client meets, and when the rounds did not
//! overlap the migration (none passed while it was following, too few after it).
//!
//! Clients: redis-py `RedisCluster` (sync and asyncio), valkey-glide and coredis
//! (`python/clients.py`), redis-rs cluster-async, `redis-cli -c` (with `--cluster check`) and
//! `redis-benchmark --cluster`; and Lua scripts called without pause across the switch.

use anyhow::{anyhow, bail, ensure, Context, Result};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncCommands, Value};
use sluice_common::model::{MigrationMode, MigrationPhase, SlotRange};
use sluice_common::slot::key_slot;
use sluice_harness::migration::{upper_half, MigrationWatch};
use sluice_harness::python::{clients_script, PythonEnv};
use sluice_harness::workload::{cluster_connection, slot_tag};
use sluice_harness::{LocalCluster, LocalSpec, MigrationCluster};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// How long the destination follows at least before the switch (`--min-follow-ms`): the
/// clients get that long to run against a migration that is `following`.
const MIN_FOLLOW_MS: u64 = 4_000;
/// The migration (little data, at least 4 s of following) must end within this.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(120);
/// Rounds a client must pass after the migration is `done`: the first may have started before.
const ROUNDS_AFTER_DONE: usize = 2;
/// A client's first round must pass within this (Python imports, topology discovery).
const FIRST_ROUND_DEADLINE: Duration = Duration::from_secs(60);
/// One round must never take this long.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// The deployment and the migration each test runs its client through.
struct Setup {
    cluster: LocalCluster,
    src: String,
    dst: String,
    slots: SlotRange,
}

async fn setup() -> Result<Setup> {
    let spec =
        LocalSpec { proxy_args: vec!["--min-follow-ms".into(), MIN_FOLLOW_MS.to_string()], ..LocalSpec::default() };
    let cluster = LocalCluster::start(spec).await?;
    let src = cluster.proxies[0].addr();
    let dst = cluster.proxies[cluster.spec.proxies].addr();
    let slots = upper_half(&cluster.view().await?, &src)?;
    eprintln!("plan: {src} gives slots {}-{} to the spare {dst}", slots.start, slots.end);
    Ok(Setup { cluster, src, dst, slots })
}

impl Setup {
    /// The last lines of the migrating proxies' and the coordinator's logs, for failures.
    fn logs(&self) -> String {
        let tail = |file: String| {
            let text = std::fs::read_to_string(self.cluster.dir.join(&file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!("---- {file} ----\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
        };
        let proxy_log = |addr: &str| tail(format!("proxy-{}.log", addr.rsplit(':').next().unwrap_or_default()));
        [proxy_log(&self.src), proxy_log(&self.dst), tail("coordinator-0.log".into())].join("\n")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client working in rounds in the background: when each round passed, and how it ended
/// (the task's result: a summary, or the first failure).
struct Rounds {
    name: String,
    passed: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    /// A child process that stops on SIGTERM after its round.
    pid: Option<u32>,
    task: JoinHandle<Result<String>>,
}

impl Rounds {
    /// Runs `round(n)` for n = 0, 1, … until stopped; the first error ends it.
    fn looping<F, Fut>(name: &str, mut round: F) -> Rounds
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send,
    {
        let passed: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (passed, stop) = (passed.clone(), stop.clone());
            async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::timeout(ROUND_DEADLINE, round(n))
                        .await
                        .map_err(|_| anyhow!("round {n} took longer than {ROUND_DEADLINE:?}"))?
                        .with_context(|| format!("round {n}"))?;
                    lock(&passed).push(Instant::now());
                    n += 1;
                }
                Ok(format!("{n} rounds"))
            }
        });
        Rounds { name: name.to_string(), passed, stop, pid: None, task }
    }

    /// `python/clients.py --client <client>` against the cluster's proxies.
    fn python(env: &PythonEnv, client: &str, setup: &Setup) -> Result<Rounds> {
        let mut child = Command::new(&env.python)
            .arg("-u")
            .arg(clients_script())
            .args(["--client", client])
            .args(["--nodes", &setup.cluster.cluster_proxies().join(",")])
            .args(["--moving", &format!("{}-{}", setup.slots.start, setup.slots.end)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", clients_script().display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
        let passed: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let name = client.to_string();
        let task = tokio::spawn({
            let passed = passed.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                let (mut error, mut summary) = (None, None);
                while let Some(line) = lines.next_line().await? {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    if v.get("round").is_some() {
                        lock(&passed).push(Instant::now());
                    } else if let Some(e) = v.get("error") {
                        error = Some(e.as_str().unwrap_or_default().to_string());
                    } else if let Some(s) = v.get("summary") {
                        summary = Some(s.to_string());
                    }
                }
                let status = child.wait().await?;
                let rounds = lock(&passed).len();
                if let Some(e) = error {
                    bail!("{name} failed after {rounds} rounds: {e}");
                }
                ensure!(status.success(), "clients.py --client {name} exited with {status} after {rounds} rounds");
                summary.ok_or_else(|| anyhow!("clients.py --client {name} printed no summary"))
            }
        });
        Ok(Rounds { name: client.to_string(), passed, stop: Arc::default(), pid, task })
    }

    fn passed(&self) -> Vec<Instant> {
        lock(&self.passed).clone()
    }

    /// Waits until `n` rounds passed after `since` (in all when `None`); fails at once if the
    /// client ended.
    async fn wait_rounds_after(&mut self, since: Option<Instant>, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.passed().iter().filter(|&&t| since.is_none_or(|s| t > s)).count() >= n {
                return Ok(());
            }
            if self.task.is_finished() {
                return Err(self.ended_early().await);
            }
            ensure!(Instant::now() < deadline, "{}: {n} rounds did not pass within {timeout:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The error of a client that stopped by itself.
    async fn ended_early(&mut self) -> anyhow::Error {
        match (&mut self.task).await {
            Ok(Ok(summary)) => anyhow!("{} stopped by itself: {summary}", self.name),
            // A redis-rs error once read as nothing at all in CI (an empty message): say all
            // it carries.
            Ok(Err(e)) => match e.downcast_ref::<redis::RedisError>() {
                Some(re) => anyhow!(
                    "{e:#} (redis-rs error {re:?}: kind {:?}, code {:?}, detail {:?})",
                    re.kind(),
                    re.code(),
                    re.detail()
                ),
                None => e,
            },
            Err(e) => anyhow!("{} panicked: {e}", self.name),
        }
    }

    /// Stops after the round in progress; its summary.
    async fn finish(self, timeout: Duration) -> Result<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(pid) = self.pid {
            // SAFETY: kill(2) on our own child, which the task has not reaped before it ends.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        tokio::time::timeout(timeout, self.task)
            .await
            .map_err(|_| anyhow!("{} did not stop within {timeout:?}", self.name))?
            .map_err(|e| anyhow!("{} panicked: {e}", self.name))?
    }
}

/// A migration run with a client working through it.
struct MigrationRun<'a> {
    setup: &'a Setup,
    rounds: Rounds,
    watch: MigrationWatch,
    following_at: Instant,
}

impl<'a> MigrationRun<'a> {
    /// Waits for the client's first round, starts the migration and waits until the
    /// destination follows.
    async fn start(setup: &'a Setup, mut rounds: Rounds) -> Result<MigrationRun<'a>> {
        let t0 = Instant::now();
        rounds.wait_rounds_after(None, 1, FIRST_ROUND_DEADLINE).await?;
        eprintln!("{}: first round passed after {:.1}s", rounds.name, t0.elapsed().as_secs_f64());
        let c = &setup.cluster;
        let m = c.start_migration(&setup.src, &setup.dst, &[setup.slots], MigrationMode::Replication).await?;
        let mut watch = c.watch_migration(&m.id);
        let m = watch.until("following", Duration::from_secs(30), |m| m.phase >= MigrationPhase::Following).await?;
        ensure!(m.phase == MigrationPhase::Following, "the migration passed following too fast: {}", watch.seen());
        Ok(MigrationRun { setup, rounds, watch, following_at: Instant::now() })
    }

    /// Waits until the migration is done and the client has passed its rounds after it;
    /// stops the client and checks that its rounds overlapped the migration and that every
    /// key ended on the node serving its slot.
    async fn finish(mut self) -> Result<String> {
        let deadline = Instant::now() + MIGRATION_DEADLINE;
        let mut switch_at = None;
        let end = loop {
            let m = self.watch.poll().await?;
            if switch_at.is_none() && m.phase >= MigrationPhase::Switching {
                switch_at = Some(Instant::now());
            }
            if m.phase.is_final() {
                break m;
            }
            if self.rounds.task.is_finished() {
                let e = self.rounds.ended_early().await;
                return Err(e.context(format!("during the migration (phases {})", self.watch.seen())));
            }
            ensure!(
                Instant::now() < deadline,
                "the migration did not end within {MIGRATION_DEADLINE:?}: phases {}; last record {m:?}\n{}",
                self.watch.seen(),
                self.setup.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let done_at = Instant::now();
        eprintln!("{}: phases {}", self.rounds.name, self.watch.seen());
        ensure!(
            end.phase == MigrationPhase::Done,
            "the migration ended {:?}: {:?}\n{}",
            end.phase,
            end.error,
            self.setup.logs()
        );
        self.rounds.wait_rounds_after(Some(done_at), ROUNDS_AFTER_DONE, 4 * ROUND_DEADLINE).await?;
        let passed = self.rounds.passed();
        let name = self.rounds.name.clone();
        let summary = self.rounds.finish(ROUND_DEADLINE).await?;
        let switch_at = switch_at.unwrap_or(done_at);
        let following = passed.iter().filter(|&&t| t > self.following_at && t < switch_at).count();
        let through = passed.iter().filter(|&&t| t >= switch_at && t <= done_at).count();
        let after = passed.iter().filter(|&&t| t > done_at).count();
        let report = format!(
            "{name}: {} rounds passed ({following} while following, {through} from the switch to done, {after} after \
             done); {summary}",
            passed.len()
        );
        eprintln!("{report}");
        ensure!(following >= 1, "no round passed while the destination was following: {report}");
        ensure!(after >= ROUNDS_AFTER_DONE, "{report}");

        let c = &self.setup.cluster;
        c.wait_converged(Duration::from_secs(15)).await?;
        let placement = c.check_keys_on_owners(&c.node_addrs()).await?;
        ensure!(placement.misplaced == 0, "keys left on nodes that do not serve their slots: {placement}");
        Ok(report)
    }
}

/// Runs `clients.py --client <client>` through a migration.
async fn python_client(client: &str) -> Result<()> {
    let env = PythonEnv::ensure_async().await?;
    let setup = setup().await?;
    let rounds = Rounds::python(&env, client, &setup)?;
    MigrationRun::start(&setup, rounds).await?.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_cluster_client_works_through_a_migration() -> Result<()> {
    python_client("redis-py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_asyncio_cluster_client_works_through_a_migration() -> Result<()> {
    python_client("redis-py-async").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_glide_cluster_client_works_through_a_migration() -> Result<()> {
    python_client("glide").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coredis_cluster_client_works_through_a_migration() -> Result<()> {
    python_client("coredis").await
}

// ------------------------------------------------------------------------------------------
// redis-rs cluster-async

/// `n` key names under `base` in the moving slots, spread over them.
fn moving_keys(base: &str, moving: SlotRange, n: usize, round: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let slot = moving.start + ((i as u64 * 997 + round * 31) % moving.len() as u64) as u16;
            format!("{base}:m{i}{{{}}}", slot_tag(slot))
        })
        .collect()
}

fn check<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<()> {
    ensure!(got == want, "{what}: got {got:?}, expected {want:?}");
    Ok(())
}

/// The masters in `CLUSTER SLOTS`, as (host, port).
async fn masters(conn: &mut ClusterConnection) -> Result<BTreeSet<(String, u16)>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut out = BTreeSet::new();
    let Value::Array(ranges) = reply else { bail!("CLUSTER SLOTS answered {reply:?}") };
    for r in ranges {
        let Value::Array(parts) = r else { bail!("a CLUSTER SLOTS entry is not an array") };
        let node: (String, u16) = match parts.get(2) {
            Some(Value::Array(n)) if n.len() >= 2 => {
                (redis::from_redis_value(n[0].clone())?, redis::from_redis_value(n[1].clone())?)
            }
            other => bail!("a CLUSTER SLOTS entry has no master: {other:?}"),
        };
        out.insert(node);
    }
    Ok(out)
}

/// SCAN on every master (each routed by address), as an application does it with redis-rs.
async fn scan_cluster(conn: &mut ClusterConnection, pattern: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for (host, port) in masters(conn).await? {
        let mut cursor = "0".to_string();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(&cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(200);
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
            let (next, batch): (String, Vec<String>) = redis::from_redis_value(conn.route_command(cmd, route).await?)?;
            keys.extend(batch);
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(keys)
}

async fn redis_rs_round(conn: &mut ClusterConnection, r: u64, moving: SlotRange) -> Result<()> {
    let base = format!("rs:{r}");
    let mut created = BTreeSet::new();
    let mut keys: Vec<String> = (0..16).map(|i| format!("{base}:s{i}")).collect();
    keys.extend(moving_keys(&base, moving, 8, r));
    for k in &keys {
        let () = conn.set(k, format!("{k}=1")).await?;
    }
    for k in &keys {
        check(&format!("GET {k}"), conn.get::<_, Option<String>>(k).await?, Some(format!("{k}=1")))?;
    }
    created.extend(keys.iter().cloned());

    // MSET/MGET across slots: the client splits them by slot and merges the answers.
    let pairs: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), format!("{k}=2"))).collect();
    let () = conn.mset(&pairs).await?;
    let mut with_missing = keys.clone();
    with_missing.push(format!("{base}:missing"));
    let mut want: Vec<Option<String>> = keys.iter().map(|k| Some(format!("{k}=2"))).collect();
    want.push(None);
    check("MGET", conn.mget::<_, Vec<Option<String>>>(&with_missing).await?, want)?;

    // Counters, a hash and a list, in the moving slots too.
    let m = moving_keys(&format!("{base}:x"), moving, 3, r);
    let (counter, hash, list) = (&m[0], &m[1], &m[2]);
    check("INCRBY", conn.incr::<_, _, i64>(counter, 5).await?, 5)?;
    check("INCRBY again", conn.incr::<_, _, i64>(counter, 10).await?, 15)?;
    let fields: Vec<(String, String)> = (0..10).map(|i| (format!("f{i}"), i.to_string())).collect();
    let () = conn.hset_multiple(hash, &fields).await?;
    check("HINCRBY", conn.hincr::<_, _, _, i64>(hash, "f3", 5).await?, 8)?;
    let mut want: HashMap<String, String> = fields.into_iter().collect();
    want.insert("f3".into(), "8".into());
    check("HGETALL", conn.hgetall::<_, HashMap<String, String>>(hash).await?, want)?;
    let items: Vec<String> = (0..20).map(|i| format!("i{i}")).collect();
    check("RPUSH", conn.rpush::<_, _, i64>(list, &items).await?, 20)?;
    check("LRANGE", conn.lrange::<_, Vec<String>>(list, 0, -1).await?, items)?;
    check("LPOP", conn.lpop::<_, Option<String>>(list, None).await?, Some("i0".into()))?;
    created.extend(m.iter().cloned());

    // A sorted set, a queue (BLPOP: a blocking command, which the proxy serves on a connection
    // of its own) and a Lua script (EVALSHA, EVAL when the node does not know it yet).
    let m = moving_keys(&format!("{base}:y"), moving, 3, r);
    let (zset, queue, lua) = (&m[0], &m[1], &m[2]);
    check("ZADD", conn.zadd_multiple::<_, _, _, i64>(zset, &[(1, "a"), (2, "b"), (3, "c")]).await?, 3)?;
    check("ZINCRBY", conn.zincr::<_, _, _, f64>(zset, "a", 5).await?, 6.0)?;
    let want = vec![("b".to_string(), 2.0), ("c".to_string(), 3.0), ("a".to_string(), 6.0)];
    check("ZRANGE WITHSCORES", conn.zrange_withscores::<_, Vec<(String, f64)>>(zset, 0, -1).await?, want)?;
    check("RPUSH queue", conn.rpush::<_, _, i64>(queue, &["j1", "j2"]).await?, 2)?;
    check("BLPOP", conn.blpop::<_, Option<(String, String)>>(queue, 1.0).await?, Some((queue.clone(), "j1".into())))?;
    check(
        "BLPOP again",
        conn.blpop::<_, Option<(String, String)>>(queue, 1.0).await?,
        Some((queue.clone(), "j2".into())),
    )?;
    check("BLPOP empty", conn.blpop::<_, Option<(String, String)>>(queue, 0.05).await?, None)?;
    let script = redis::Script::new("return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}");
    let got: (String, String, i64) = script.key(lua).arg(3).invoke_async(conn).await?;
    check("script", got, (lua.clone(), "3".into(), 3))?;
    created.extend([zset.clone(), lua.clone()]);

    // A pipeline and a transaction: redis-rs sends a cluster pipeline to one node, so its keys
    // share a slot (a moving one in odd rounds).
    let slot =
        if r.is_multiple_of(2) { key_slot(base.as_bytes()) } else { moving.start + (r % moving.len() as u64) as u16 };
    let pkeys: Vec<String> = (0..8).map(|i| format!("{base}:p{i}{{{}}}", slot_tag(slot))).collect();
    let mut pipe = redis::pipe();
    for (i, k) in pkeys.iter().enumerate() {
        pipe.set(k, i).ignore().incr(k, 100).get(k);
    }
    let got: Vec<(i64, String)> = pipe.query_async(conn).await?;
    let want: Vec<(i64, String)> = (0..pkeys.len() as i64).map(|i| (i + 100, (i + 100).to_string())).collect();
    check("pipeline", got, want)?;
    let (a, b) = (&pkeys[0], &pkeys[1]);
    let mut tx = redis::pipe();
    tx.atomic().incr(a, 1).incr(b, 2).set(a, "t").ignore().get(a);
    let got: (i64, i64, String) = transaction_following_moved(conn, &tx, a).await?;
    check("MULTI/EXEC", got, (101, 103, "t".to_string()))?;
    created.extend(pkeys);

    // EXPIRE/TTL.
    for k in keys.iter().take(2).chain(keys.iter().rev().take(2)) {
        check(&format!("EXPIRE {k}"), conn.expire::<_, bool>(k, 1000).await?, true)?;
        let ttl: i64 = conn.ttl(k).await?;
        ensure!((995..=1000).contains(&ttl), "TTL {k}: got {ttl}, expected 995..1000");
    }

    // SCAN every master: keys of slots that moved during the iteration may be missed, others not.
    let found: BTreeSet<String> = scan_cluster(conn, &format!("{base}:*")).await?.into_iter().collect();
    let extra: Vec<&String> = found.difference(&created).collect();
    ensure!(extra.is_empty(), "SCAN found keys never written: {extra:?}");
    let lost: Vec<&String> = created.difference(&found).filter(|k| !moving.contains(key_slot(k.as_bytes()))).collect();
    ensure!(lost.is_empty(), "SCAN missed keys outside the moving slots: {lost:?}");

    // EXISTS/DEL across slots (split by the client).
    let all: Vec<&String> = created.iter().collect();
    check("EXISTS", conn.exists::<_, usize>(&all).await?, all.len())?;
    check("DEL", conn.del::<_, usize>(&all).await?, all.len())?;
    check("EXISTS after DEL", conn.exists::<_, usize>(&all).await?, 0)?;
    Ok(())
}

/// Runs a transaction as an application on a Redis Cluster must: a `MULTI` sent to a node
/// whose slot has just moved away gets `MOVED` for each queued command and `EXECABORT` for
/// `EXEC` (nothing ran), and redis-rs does not retry an aborted transaction by itself; it
/// rebuilds its slot map only after a `MOVED` reply of its own (one inside `EXECABORT` does
/// not count), so a command on the transaction's `key` is sent first (its `MOVED` makes the
/// client learn the new owner), then the transaction again, within a deadline, until it
/// reaches the slot's owner. Any other error fails.
async fn transaction_following_moved<T: redis::FromRedisValue>(
    conn: &mut ClusterConnection,
    tx: &redis::Pipeline,
    key: &str,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = match tx.query_async::<T>(conn).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let aborted_by_moves = err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort)
            && err.clone().into_server_errors().is_some_and(|errs| {
                !errs.is_empty() && errs.iter().all(|(_, e)| e.kind() == Some(redis::ServerErrorKind::Moved))
            });
        if !aborted_by_moves || Instant::now() >= deadline {
            return Err(err.into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _: bool = redis::cmd("EXISTS").arg(key).query_async(conn).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_cluster_async_client_works_through_a_migration() -> Result<()> {
    let setup = setup().await?;
    let conn = cluster_connection(&setup.cluster.urls(), Duration::from_secs(10)).await?;
    let moving = setup.slots;
    let rounds = Rounds::looping("redis-rs", move |r| {
        let mut conn = conn.clone();
        async move { redis_rs_round(&mut conn, r, moving).await }
    });
    MigrationRun::start(&setup, rounds).await?.finish().await?;
    Ok(())
}

/// A Lua script loaded before the migration, called without pause on keys of the moving slots
/// through redis-rs's script helper (`EVALSHA`; on `NOSCRIPT`, `SCRIPT LOAD` on every master it
/// knows and `EVALSHA` again). Redis 7 carries no scripts in replication, so the destination
/// node starts without them; a client must still never see `NOSCRIPT` twice in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_scripts_keep_working_through_a_migration() -> Result<()> {
    let setup = setup().await?;
    let mut conn = cluster_connection(&setup.cluster.urls(), Duration::from_secs(10)).await?;
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let sha = script.prepare_invoke().load_async(&mut conn).await?;
    ensure!(sha == script.get_hash(), "SCRIPT LOAD answered {sha}");
    let moving = setup.slots;
    let keys = moving_keys("lua", moving, 32, 0);
    let rounds = Rounds::looping("redis-rs scripts", move |r| {
        let (mut conn, script, keys) = (conn.clone(), script.clone(), keys.clone());
        async move {
            for k in &keys {
                let n: i64 = script.key(k).arg(1).invoke_async(&mut conn).await.with_context(|| format!("on {k}"))?;
                check(&format!("script on {k}"), n, r as i64 + 1)?;
            }
            Ok(())
        }
    });
    MigrationRun::start(&setup, rounds).await?.finish().await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// redis-cli -c

/// An expected line of redis-cli's output.
enum Line {
    Is(String),
    /// A TTL just set to 1000.
    Ttl,
}

fn host_port(addr: &str) -> Result<(&str, &str)> {
    addr.rsplit_once(':').ok_or_else(|| anyhow!("{addr} is not host:port"))
}

/// Runs `redis-cli <args>` with `input` on stdin; its stdout without redirection notices.
async fn redis_cli(args: &[&str], input: &str) -> Result<Vec<String>> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start redis-cli (Debian: apt-get install redis-tools)")?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "redis-cli {args:?} exited with {}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout.lines().filter(|l| !l.starts_with("-> Redirected")).map(str::to_string).collect())
}

async fn redis_cli_round(proxies: &[String], r: u64, moving: SlotRange) -> Result<()> {
    let entry = &proxies[r as usize % proxies.len()];
    let (host, port) = host_port(entry)?;
    let base = format!("cli:{r}");
    let mut keys: Vec<String> = (0..6).map(|i| format!("{base}:s{i}")).collect();
    keys.extend(moving_keys(&base, moving, 4, r));

    // One redis-cli -c session fed on stdin: it follows MOVED itself, command by command.
    let mut script = String::new();
    let mut want = Vec::new();
    let mut cmd = |line: String, answers: Vec<Line>| {
        script.push_str(&line);
        script.push('\n');
        want.extend(answers);
    };
    let is = |s: &str| Line::Is(s.to_string());
    for (i, k) in keys.iter().enumerate() {
        cmd(format!("SET {k} v{i}"), vec![is("OK")]);
        cmd(format!("GET {k}"), vec![is(&format!("v{i}"))]);
        cmd(format!("INCRBY {k}:n {}", i + 1), vec![is(&(i + 1).to_string())]);
        cmd(format!("HSET {k}:h f1 a f2 b"), vec![is("2")]);
        cmd(format!("HGET {k}:h f2"), vec![is("b")]);
        cmd(format!("RPUSH {k}:l x y z"), vec![is("3")]);
        cmd(format!("LRANGE {k}:l 0 -1"), vec![is("x"), is("y"), is("z")]);
        cmd(format!("EXPIRE {k} 1000"), vec![is("1")]);
        cmd(format!("TTL {k}"), vec![Line::Ttl]);
    }
    // A sorted set, a queue (BLPOP) and a Lua script, in a moving slot.
    let y = moving_keys(&format!("{base}:y"), moving, 1, r).remove(0);
    cmd(format!("ZADD {y}:z 1 a 2 b 3 c"), vec![is("3")]);
    cmd(format!("ZINCRBY {y}:z 5 a"), vec![is("6")]);
    cmd(format!("ZRANGE {y}:z 0 -1 WITHSCORES"), ["b", "2", "c", "3", "a", "6"].into_iter().map(is).collect());
    cmd(format!("RPUSH {y}:q j1"), vec![is("1")]);
    cmd(format!("BLPOP {y}:q 1"), vec![is(&format!("{y}:q")), is("j1")]);
    cmd(format!("BLPOP {y}:q 0.05"), vec![is("")]);
    cmd(format!("EVAL \"return redis.call('INCRBY', KEYS[1], ARGV[1])\" 1 {y}:lua 3"), vec![is("3")]);
    cmd(format!("DEL {y}:z {y}:lua"), vec![is("2")]);
    // Multi-key commands on one slot (a moving one) go to one node unsplit.
    let tag = slot_tag(moving.start + (r % moving.len() as u64) as u16);
    cmd(format!("MSET {base}:{{{tag}}}a 1 {base}:{{{tag}}}b 2"), vec![is("OK")]);
    cmd(format!("MGET {base}:{{{tag}}}a {base}:{{{tag}}}b {base}:{{{tag}}}c"), vec![is("1"), is("2"), is("")]);
    cmd(format!("DEL {base}:{{{tag}}}a {base}:{{{tag}}}b"), vec![is("2")]);
    for k in &keys {
        for key in [k.clone(), format!("{k}:n"), format!("{k}:h"), format!("{k}:l")] {
            cmd(format!("DEL {key}"), vec![is("1")]);
        }
        cmd(format!("EXISTS {k}"), vec![is("0")]);
    }
    let got = redis_cli(&["-c", "-h", host, "-p", port], &script).await?;
    let mismatch = || format!("redis-cli -c -p {port} answered:\n{}\nto:\n{script}", got.join("\n"));
    ensure!(got.len() == want.len(), "{} lines, expected {}: {}", got.len(), want.len(), mismatch());
    for (g, w) in got.iter().zip(&want) {
        let ok = match w {
            Line::Is(s) => g == s,
            Line::Ttl => g.parse::<i64>().is_ok_and(|t| (995..=1000).contains(&t)),
        };
        ensure!(ok, "{g:?} where {} was expected: {}", if let Line::Is(s) = w { s } else { "a TTL" }, mismatch());
    }

    // One command per invocation, written through one proxy and read through another.
    let k = &keys[keys.len() - 1];
    let other = &proxies[(r as usize + 1) % proxies.len()];
    let (host2, port2) = host_port(other)?;
    check("SET", redis_cli(&["-c", "-h", host, "-p", port, "SET", k, "argv"], "").await?, vec!["OK".into()])?;
    check("GET", redis_cli(&["-c", "-h", host2, "-p", port2, "GET", k], "").await?, vec!["argv".into()])?;
    check("DEL", redis_cli(&["-c", "-h", host2, "-p", port2, "DEL", k], "").await?, vec!["1".into()])?;
    Ok(())
}

/// `redis-cli --cluster check`: every node agrees, every slot is covered.
async fn cluster_check(entry: &str) -> Result<String> {
    let out = Command::new("redis-cli").args(["--cluster", "check", entry]).output().await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "redis-cli --cluster check {entry} exited with {}:\n{text}", out.status);
    for ok in ["[OK] All nodes agree about slots configuration.", "[OK] All 16384 slots covered."] {
        ensure!(text.contains(ok), "redis-cli --cluster check {entry} did not say {ok:?}:\n{text}");
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_cluster_mode_works_through_a_migration() -> Result<()> {
    let setup = setup().await?;
    let proxies = setup.cluster.cluster_proxies();
    // Keys that stay: the rounds delete theirs, so after the migration these are all there is.
    const KEPT: usize = 300;
    let script: String = (0..KEPT).map(|i| format!("SET kept:{i} v{i}\n")).collect();
    let entry = proxies[1].clone();
    let (host, port) = host_port(&entry)?;
    let answers = redis_cli(&["-c", "-h", host, "-p", port], &script).await?;
    ensure!(answers.len() == KEPT && answers.iter().all(|a| a == "OK"), "SET kept:*: {answers:?}");
    let moving = setup.slots;
    let rounds = Rounds::looping("redis-cli -c", move |r| {
        let proxies = proxies.clone();
        async move { redis_cli_round(&proxies, r, moving).await }
    });
    let run = MigrationRun::start(&setup, rounds).await?;
    // While the destination follows, the topology is the old one, seen alike by every proxy.
    let text = cluster_check(&setup.src).await?;
    ensure!(text.contains(&setup.dst), "the joining proxy is listed:\n{text}");
    run.finish().await?;

    // Done: four masters, the moved slots on the new one; the keys redis-cli counts (DBSIZE
    // through each proxy) are exactly the kept ones, and so are the nodes' (no garbage left).
    let text = cluster_check(&setup.dst).await?;
    let slots = format!("slots:[{}-{}] ({} slots) master", setup.slots.start, setup.slots.end, setup.slots.len());
    ensure!(text.contains(&slots), "the destination holds {slots}:\n{text}");
    ensure!(text.contains(&format!("[OK] {KEPT} keys in 4 masters.")), "{KEPT} keys in 4 masters:\n{text}");
    check("sum of DBSIZE over the nodes", setup.cluster.total_keys().await?, KEPT as i64)?;
    let script: String = (0..KEPT).map(|i| format!("GET kept:{i}\n")).collect();
    let values = redis_cli(&["-c", "-h", host, "-p", port], &script).await?;
    check("GET kept:*", values, (0..KEPT).map(|i| format!("v{i}")).collect::<Vec<_>>())?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// redis-benchmark --cluster

/// One `redis-benchmark --cluster -t set,get -n 20000 -P 4` run: it must accept the topology
/// (`CLUSTER NODES` at start, `CLUSTER SLOTS` after a `MOVED`) and finish without an error
/// (it exits at the first error that is not a redirection). Its stdout.
async fn benchmark_round(proxies: &[String], r: u64) -> Result<String> {
    let (host, port) = host_port(&proxies[r as usize % proxies.len()])?;
    let args = ["-h", host, "-p", port, "--cluster", "-t", "set,get", "-n", "20000", "-r", "100000", "-P", "4", "-q"];
    let out = Command::new("redis-benchmark")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("start redis-benchmark (Debian: apt-get install redis-tools)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results: Vec<&str> =
        stdout.split(['\r', '\n']).map(str::trim).filter(|l| l.contains("requests per second")).collect();
    let finished = ["SET:", "GET:"].iter().all(|t| results.iter().any(|l| l.starts_with(t)));
    ensure!(
        out.status.success() && finished && !stdout.contains("Error") && !stderr.contains("Error"),
        "redis-benchmark {args:?} exited with {} (results {results:?}):\n{stdout}\n{stderr}",
        out.status
    );
    Ok(stdout)
}

/// redis-benchmark (7.0) sends each client's keys to one slot of its node (the node's first)
/// and exits when a slot moves to a master it did not know at start (a joining master has no
/// slots then, so it is skipped) — on a native Redis Cluster as here. So it runs whole runs
/// back to back across the migration, each reading the topology anew: the runs while the
/// destination follows see it as a master without slots; the runs after `done` must use the
/// four masters, the new one serving the moved slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_cluster_mode_works_through_a_migration() -> Result<()> {
    let setup = setup().await?;
    let proxies = setup.cluster.cluster_proxies();
    let outputs: Arc<Mutex<Vec<String>>> = Arc::default();
    let rounds = Rounds::looping("redis-benchmark --cluster", {
        let outputs = outputs.clone();
        move |r| {
            let (proxies, outputs) = (proxies.clone(), outputs.clone());
            async move {
                let out = benchmark_round(&proxies, r).await?;
                lock(&outputs).push(out);
                Ok(())
            }
        }
    });
    MigrationRun::start(&setup, rounds).await?.finish().await?;
    let outputs = lock(&outputs).clone();
    let last = outputs.last().ok_or_else(|| anyhow!("no run"))?;
    ensure!(
        last.contains("Cluster has 4 master nodes") && last.contains(&setup.dst),
        "the last run (after done) uses the four masters, {} among them:\n{last}",
        setup.dst
    );
    Ok(())
}
