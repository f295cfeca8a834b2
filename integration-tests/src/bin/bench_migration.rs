//! Replication-mode migration benchmark (issue 5; run it with `bench/migration.sh`).
//!
//! A 2-proxy cluster and 1 spare (the `LocalCluster` harness, release binaries). Node A gets
//! 1,000,000 keys of 100 bytes, all in slots A serves, written straight into A's redis node
//! over one pipelined connection. Then, in the same run:
//!
//! 1. a plain `REPLICAOF` of node A into a fresh, empty redis-server, timed until
//!    `master_link_status:up` and `master_sync_in_progress:0` — the floor any replication-based
//!    move pays (with `repl-diskless-sync-delay 0` on A, as the migration's source sets it);
//! 2. a client load (a few redis-rs cluster clients doing SET/GET on the loaded keys, every
//!    command's latency and every error recorded) while half of A's slots move to the spare
//!    with `mode: replication`.
//!
//! It prints the seconds from the migration's creation to `switched`, `committed` and `done`
//! (the broker's phase timestamps), the longest client command during the migration (the
//! write pause), the client errors (must be 0), the plain REPLICAOF time and the ratio, next
//! to the goals: committed ≤ 2 × plain + 1 s, longest pause ≤ 100 ms. The last line is the
//! same as JSON (`RESULT {…}`). Exit code 1 when the migration did not reach `done` or a
//! client saw an error; missing a goal is reported, not fatal (the machine is shared).

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use sluice_common::model::{MigrationMode, MigrationPhase, SlotRange};
use sluice_common::resp::Frame;
use sluice_common::slot::key_slot;
use sluice_harness::client::RespConn;
use sluice_harness::migration::{phase_name, seconds_to, upper_half};
use sluice_harness::redis_node::RedisNode;
use sluice_harness::workload::{cluster_connection, error_class};
use sluice_harness::{wait_for, LocalCluster, LocalSpec};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "\
bench_migration: replication-mode slot migration under load vs a plain REPLICAOF

  --keys N            keys loaded into node A (default 1000000)
  --value-size B      bytes per value (default 100)
  --clients N         concurrent cluster clients during the migration (default 4)
  --rate R            commands/s over all clients, 0 = as fast as they go (default 5000)
  --plain-under-load  time the plain REPLICAOF under the same client load (default: idle)
  --deadline S        seconds the migration may take before the run fails (default 600)
  --data-dir DIR      keep every process's files and logs in DIR (default: a temporary dir)
  --seed N            seed of the clients' key choices (default: random, printed)

Binaries come from $SLUICE_BIN_DIR or the directory of this executable; extra sluice-proxy
flags from $BENCH_PROXY_ARGS (space-separated).";

#[derive(Debug, Clone)]
struct Options {
    keys: usize,
    value_size: usize,
    clients: usize,
    rate: u32,
    plain_under_load: bool,
    deadline: Duration,
    data_dir: Option<PathBuf>,
    seed: u64,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        keys: 1_000_000,
        value_size: 100,
        clients: 4,
        rate: 5_000,
        plain_under_load: false,
        deadline: Duration::from_secs(600),
        data_dir: None,
        seed: rand::random(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value\n\n{USAGE}"));
        match a.as_str() {
            "--keys" => o.keys = value("--keys")?.parse()?,
            "--value-size" => o.value_size = value("--value-size")?.parse()?,
            "--clients" => o.clients = value("--clients")?.parse()?,
            "--rate" => o.rate = value("--rate")?.parse()?,
            "--plain-under-load" => o.plain_under_load = true,
            "--deadline" => o.deadline = Duration::from_secs(value("--deadline")?.parse()?),
            "--data-dir" => o.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--seed" => o.seed = value("--seed")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench_migration: {e:#}");
            std::process::exit(2);
        }
    }
}

/// The value of key number `i`: its number, padded with `x` to `size` bytes.
fn value_of(i: usize, size: usize) -> String {
    let mut v = format!("{i:x<size$}");
    v.truncate(size);
    v
}

/// Writes `SET key value` for every key straight into the redis node at `addr`, pipelined on
/// one connection (a writer and a reader running at once), and checks every reply is `+OK`.
async fn load_node(addr: &str, keys: &[String], value_size: usize) -> Result<()> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let expected = keys.len() * b"+OK\r\n".len();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while total < expected {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                bail!("the node closed the connection after {} replies", total / 5);
            }
            if let Some(p) = buf[..n].iter().position(|b| *b == b'-') {
                let end = buf[p..n].iter().position(|b| *b == b'\r').map_or(n, |e| p + e);
                bail!("the node answered an error: {}", String::from_utf8_lossy(&buf[p..end]));
            }
            total += n;
        }
        Ok(())
    });
    let mut out = Vec::with_capacity(1 << 21);
    for (i, k) in keys.iter().enumerate() {
        let v = value_of(i, value_size);
        write!(out, "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len())?;
        if out.len() >= 1 << 20 {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    reader.await??;
    Ok(())
}

/// `INFO replication` of a node, as `field -> value`.
async fn replication_info(addr: &str) -> Result<BTreeMap<String, String>> {
    let reply = RespConn::connect(addr).await?.call(&["INFO", "replication"]).await?;
    let text = match &reply {
        Frame::Bulk(b) | Frame::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
        other => bail!("INFO replication answered {other:?}"),
    };
    Ok(text.lines().filter_map(|l| l.trim().split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

/// A fresh empty redis-server replicating `master` until it is in sync: the time that takes.
async fn plain_replicaof(dir: &std::path::Path, master: &RedisNode, expect_keys: i64) -> Result<Duration> {
    // Redis waits `repl-diskless-sync-delay` (5 s by default) for more replicas before a
    // diskless full sync; the migration's source sets it to 0, so the plain run does too.
    let reply =
        RespConn::connect(&master.addr()).await?.call(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]).await?;
    if !matches!(reply, Frame::Simple(_)) {
        bail!("CONFIG SET repl-diskless-sync-delay 0 answered {reply:?}");
    }
    let mut replica = RedisNode::start(&dir.join("plain-replica"), &[]).await?;
    let addr = replica.addr();
    let port = master.port.to_string();
    let started = Instant::now();
    let reply = RespConn::connect(&addr).await?.call(&["REPLICAOF", "127.0.0.1", port.as_str()]).await?;
    if !matches!(reply, Frame::Simple(_)) {
        bail!("REPLICAOF answered {reply:?}");
    }
    let took = wait_for("the plain replica to be in sync", Duration::from_secs(600), || {
        let addr = addr.clone();
        async move {
            let info = replication_info(&addr).await?;
            let up = info.get("master_link_status").map(String::as_str) == Some("up");
            let syncing = info.get("master_sync_in_progress").map(String::as_str) != Some("0");
            Ok((up && !syncing).then(|| started.elapsed()))
        }
    })
    .await?;
    let n = replica.dbsize().await?;
    if n != expect_keys {
        bail!("the plain replica holds {n} keys, not {expect_keys}");
    }
    replica.kill();
    Ok(took)
}

/// What the client load recorded.
#[derive(Default)]
struct LoadRecord {
    /// (start of the command since the bench's t0 in µs, latency in µs).
    ops: Vec<(u64, u64)>,
    /// (start since t0 in µs, error class, message).
    errors: Vec<(u64, String, String)>,
}

/// Runs until `stop`: SET/GET (half each) on random loaded keys, `rate` commands/s over
/// all clients (0: unthrottled).
async fn client_task(
    urls: Vec<String>,
    keys: Arc<Vec<String>>,
    opts: Options,
    n: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
    done_ops: Arc<AtomicU64>,
) -> Result<LoadRecord> {
    let mut conn = cluster_connection(&urls, Duration::from_secs(10)).await?;
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_add(n as u64));
    let mut tick = (opts.rate > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(opts.clients as f64 / f64::from(opts.rate)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut rec = LoadRecord::default();
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = &mut tick {
            t.tick().await;
        }
        let i = rng.random_range(0..keys.len());
        let key = &keys[i];
        let start = Instant::now();
        let r = if rng.random_bool(0.5) {
            conn.set::<_, _, ()>(key, value_of(i, opts.value_size)).await
        } else {
            conn.get::<_, Option<String>>(key).await.map(|_| ())
        };
        let at = start.duration_since(t0).as_micros() as u64;
        rec.ops.push((at, start.elapsed().as_micros() as u64));
        done_ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = r {
            rec.errors.push((at, error_class(&e), e.to_string()));
        }
    }
    Ok(rec)
}

/// The client load: `clients` tasks; `stop` ends them, then `finish` gathers their records.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<LoadRecord>>>,
}

impl Load {
    fn start(urls: &[String], keys: &Arc<Vec<String>>, opts: &Options, t0: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let tasks = (0..opts.clients)
            .map(|n| {
                tokio::spawn(client_task(urls.to_vec(), keys.clone(), opts.clone(), n, t0, stop.clone(), ops.clone()))
            })
            .collect();
        Load { stop, ops, tasks }
    }

    async fn wait_ops(&self, more: u64, timeout: Duration) -> Result<()> {
        let target = self.ops.load(Ordering::Relaxed) + more;
        let ops = self.ops.clone();
        wait_for("the client load to make progress", timeout, || {
            let n = ops.load(Ordering::Relaxed);
            async move { Ok((n >= target).then_some(())) }
        })
        .await
    }

    async fn finish(self) -> Result<LoadRecord> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadRecord::default();
        for t in self.tasks {
            let r = t.await??;
            all.ops.extend(r.ops);
            all.errors.extend(r.errors);
        }
        all.ops.sort_unstable();
        all.errors.sort_by_key(|e| e.0);
        Ok(all)
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

async fn run() -> Result<bool> {
    let opts = parse_args()?;
    let proxy_args: Vec<String> =
        std::env::var("BENCH_PROXY_ARGS").unwrap_or_default().split_whitespace().map(str::to_string).collect();
    eprintln!("bench_migration: starting a 2-proxy cluster and 1 spare (seed {})", opts.seed);
    let spec = LocalSpec { proxies: 2, spare: 1, data_dir: opts.data_dir.clone(), proxy_args, ..LocalSpec::default() };
    let cluster = LocalCluster::start(spec).await?;
    let src = cluster.proxies[0].addr();
    let dst = cluster.proxies[2].addr();
    let view = cluster.view().await?;
    let a_slots: Vec<SlotRange> = view
        .nodes
        .iter()
        .find(|n| n.proxy == src)
        .map(|n| n.slots.iter().map(|a| a.range()).collect())
        .unwrap_or_default();
    let moving = upper_half(&view, &src)?;

    // 1,000,000 keys `key:N` whose slots A serves, straight into A's node.
    let mut keys = Vec::with_capacity(opts.keys);
    let mut n = 0u64;
    while keys.len() < opts.keys {
        let k = format!("key:{n}");
        let slot = key_slot(k.as_bytes());
        if a_slots.iter().any(|r| r.contains(slot)) {
            keys.push(k);
        }
        n += 1;
    }
    let moving_keys = keys.iter().filter(|k| moving.contains(key_slot(k.as_bytes()))).count();
    let node_a = &cluster.nodes[0];
    let started = Instant::now();
    load_node(&node_a.addr(), &keys, opts.value_size).await?;
    let load_time = started.elapsed();
    let loaded = node_a.dbsize().await?;
    if loaded != opts.keys as i64 {
        bail!("node A holds {loaded} keys after the load, not {}", opts.keys);
    }
    eprintln!(
        "loaded {} keys of {} B into node A in {:.1}s ({:.0} keys/s); {} of them in the moving slots {}-{}",
        opts.keys,
        opts.value_size,
        load_time.as_secs_f64(),
        opts.keys as f64 / load_time.as_secs_f64(),
        moving_keys,
        moving.start,
        moving.end
    );

    let keys = Arc::new(keys);
    let t0 = Instant::now();
    let urls = cluster.urls();
    let mut load = None;
    if opts.plain_under_load {
        let l = Load::start(&urls, &keys, &opts, t0);
        l.wait_ops(100, Duration::from_secs(30)).await?;
        load = Some(l);
    }
    let plain = plain_replicaof(&cluster.dir, node_a, opts.keys as i64).await?;
    eprintln!(
        "plain REPLICAOF of node A: {:.2}s ({})",
        plain.as_secs_f64(),
        if opts.plain_under_load { "under load" } else { "idle" }
    );

    let load = match load {
        Some(l) => l,
        None => {
            let l = Load::start(&urls, &keys, &opts, t0);
            l.wait_ops(100, Duration::from_secs(30)).await?;
            l
        }
    };
    // A baseline of the load before the migration.
    load.wait_ops(u64::from(opts.rate.max(1000)), Duration::from_secs(60)).await?;

    let mig_start = t0.elapsed();
    let m = cluster.start_migration(&src, &dst, &[moving], MigrationMode::Replication).await?;
    eprintln!("migration {} created: {src} -> {dst}, slots {}-{}", m.id, moving.start, moving.end);
    let mut watch = cluster.watch_migration(&m.id);
    let end = watch.until_final(opts.deadline).await;
    let mig_end = t0.elapsed();
    // Some traffic after the end too, then stop.
    let after = load.wait_ops(u64::from(opts.rate.max(1000)) / 2, Duration::from_secs(30)).await;
    let record = load.finish().await?;
    let end = end?;
    after?;
    eprintln!("phases seen: {}", watch.seen());

    let (a, b) = (mig_start.as_micros() as u64, mig_end.as_micros() as u64);
    let mut during: Vec<u64> = record.ops.iter().filter(|(at, _)| *at >= a && *at <= b).map(|(_, l)| *l).collect();
    let before: Vec<u64> = record.ops.iter().filter(|(at, _)| *at < a).map(|(_, l)| *l).collect();
    let worst = record.ops.iter().filter(|(at, _)| *at >= a && *at <= b).max_by_key(|(_, l)| *l).copied();
    during.sort_unstable();
    let max_before = before.iter().copied().max().unwrap_or(0);
    let max_during = during.last().copied().unwrap_or(0);

    let to_switched = seconds_to(&end, MigrationPhase::Switched);
    let to_committed = seconds_to(&end, MigrationPhase::Committed);
    let to_done = seconds_to(&end, MigrationPhase::Done);
    let plain_s = plain.as_secs_f64();
    let goal_commit = 2.0 * plain_s + 1.0;
    let fmt_s = |v: Option<f64>| v.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (_, class, _) in &record.errors {
        *errors.entry(class.clone()).or_default() += 1;
    }
    let total_keys = cluster.total_keys().await?;

    println!();
    println!(
        "sluice replication-mode migration: {} keys x {} B on node A, slots {}-{} ({} slots, {} keys) to a spare",
        opts.keys,
        opts.value_size,
        moving.start,
        moving.end,
        moving.len(),
        moving_keys
    );
    println!(
        "load: {} redis-rs cluster clients, {} (half SET, half GET on the loaded keys)",
        opts.clients,
        if opts.rate > 0 { format!("{} cmd/s", opts.rate) } else { "unthrottled".into() }
    );
    let line = |label: &str, value: String| println!("  {:<46} {value}", format!("{label}:"));
    let ended =
        format!("{}{}", phase_name(end.phase), end.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
    line("migration ended", ended);
    line("seconds to switched", fmt_s(to_switched));
    line("seconds to committed", fmt_s(to_committed));
    line("seconds to done", fmt_s(to_done));
    let plain_label =
        if opts.plain_under_load { "plain REPLICAOF (under the same load)" } else { "plain REPLICAOF (idle)" };
    line(plain_label, format!("{plain_s:.2}s"));
    let ratio = to_committed.map(|c| c / plain_s);
    line(
        "committed / plain",
        format!(
            "{}   goal: committed <= 2 x plain + 1 s = {goal_commit:.2}s: {}",
            ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
            verdict(to_committed.is_some_and(|c| c <= goal_commit))
        ),
    );
    line(
        "client commands during the migration",
        format!(
            "{}; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            during.len(),
            ms(percentile(&during, 0.5)),
            ms(percentile(&during, 0.99)),
            ms(percentile(&during, 0.999))
        ),
    );
    let when = worst
        .map(|(at, _)| format!(" (started {:.2}s after the migration's creation)", (at - a) as f64 / 1e6))
        .unwrap_or_default();
    line(
        "longest client command during the migration",
        format!("{:.1} ms{when}   goal: <= 100 ms: {}", ms(max_during), verdict(max_during <= 100_000)),
    );
    line("longest client command before it (baseline)", format!("{:.1} ms", ms(max_before)));
    line("client errors (must be 0)", format!("{} {errors:?}", record.errors.len()));
    for (at, _, msg) in record.errors.iter().take(10) {
        println!("      at {:.3}s: {msg}", *at as f64 / 1e6);
    }
    line("keys on all nodes after", format!("{total_keys} (must be {}: no garbage once done)", opts.keys));
    let result = serde_json::json!({
        "keys": opts.keys,
        "value_size": opts.value_size,
        "slots_moved": moving.len(),
        "keys_moved": moving_keys,
        "clients": opts.clients,
        "rate": opts.rate,
        "phase": phase_name(end.phase),
        "to_switched_s": to_switched,
        "to_committed_s": to_committed,
        "to_done_s": to_done,
        "plain_replicaof_s": plain_s,
        "plain_under_load": opts.plain_under_load,
        "ratio_committed_plain": ratio,
        "max_latency_ms": ms(max_during),
        "max_latency_before_ms": ms(max_before),
        "p99_ms": ms(percentile(&during, 0.99)),
        "ops_during": during.len(),
        "client_errors": record.errors.len(),
        "keys_after": total_keys,
    });
    println!("RESULT {result}");

    let ok = end.phase == MigrationPhase::Done && record.errors.is_empty() && total_keys == opts.keys as i64;
    if !ok {
        eprintln!("bench_migration: FAILED (the migration must reach done, with 0 client errors and no garbage)");
    }
    Ok(ok)
}
