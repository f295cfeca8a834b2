//! What both runs share: loading keys straight into a redis node, the client load that runs
//! during a migration (every command's latency and every error recorded), and the figures.

use crate::Options;
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use sluice_harness::wait_for;
use sluice_harness::workload::{cluster_connection, error_class};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of key number `i`: its number, padded with `x` to `size` bytes.
pub fn value_of(i: usize, size: usize) -> String {
    let mut v = format!("{i:x<size$}");
    v.truncate(size);
    v
}

/// `key:0`, `key:1`, … : the benchmark's keys, numbered from 0.
pub fn key_name(n: u64) -> String {
    format!("key:{n}")
}

/// Writes `SET key value` for the keys `which` (indexes into `keys`) straight into the redis
/// node at `addr`, pipelined on one connection (a writer and a reader running at once), and
/// checks every reply is `+OK`. Works on a cluster-mode node too, as long as it serves the
/// keys' slots.
pub async fn load_node(addr: &str, keys: &[String], which: &[usize], value_size: usize) -> Result<()> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let expected = which.len() * b"+OK\r\n".len();
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
    for &i in which {
        let k = &keys[i];
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

/// What the client load recorded.
#[derive(Default)]
pub struct LoadRecord {
    /// (start of the command since the bench's t0 in µs, latency in µs).
    pub ops: Vec<(u64, u64)>,
    /// (start since t0 in µs, error class, message).
    pub errors: Vec<(u64, String, String)>,
    /// Keys the clients created (acknowledged `SET`s of new keys).
    pub created: u64,
}

/// Runs until `stop`: SET/GET (half each) on random loaded keys, `rate` commands/s over all
/// clients (0: unthrottled). A share `new_keys` of the SETs creates a new key instead, so
/// the final key count proves no key was lost or left twice.
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
    let mut next_new = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = &mut tick {
            t.tick().await;
        }
        let i = rng.random_range(0..keys.len());
        let start = Instant::now();
        let r = if rng.random_bool(0.5) {
            if rng.random_bool(opts.new_keys) {
                let key = format!("new:{}:{n}:{next_new}", opts.seed);
                next_new += 1;
                let r = conn.set::<_, _, ()>(&key, value_of(i, opts.value_size)).await;
                rec.created += u64::from(r.is_ok());
                r
            } else {
                conn.set::<_, _, ()>(&keys[i], value_of(i, opts.value_size)).await
            }
        } else {
            conn.get::<_, Option<String>>(&keys[i]).await.map(|_| ())
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
pub struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<LoadRecord>>>,
}

impl Load {
    pub fn start(urls: &[String], keys: &Arc<Vec<String>>, opts: &Options, t0: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let tasks = (0..opts.clients)
            .map(|n| {
                tokio::spawn(client_task(urls.to_vec(), keys.clone(), opts.clone(), n, t0, stop.clone(), ops.clone()))
            })
            .collect();
        Load { stop, ops, tasks }
    }

    /// Starts the load and waits until it runs (100 commands).
    pub async fn start_running(urls: &[String], keys: &Arc<Vec<String>>, opts: &Options, t0: Instant) -> Result<Load> {
        let load = Load::start(urls, keys, opts, t0);
        load.wait_ops(100, Duration::from_secs(30)).await?;
        Ok(load)
    }

    pub async fn wait_ops(&self, more: u64, timeout: Duration) -> Result<()> {
        let target = self.ops.load(Ordering::Relaxed) + more;
        let ops = self.ops.clone();
        wait_for("the client load to make progress", timeout, || {
            let n = ops.load(Ordering::Relaxed);
            async move { Ok((n >= target).then_some(())) }
        })
        .await
    }

    pub async fn finish(self) -> Result<LoadRecord> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadRecord::default();
        for t in self.tasks {
            let r = t.await??;
            all.ops.extend(r.ops);
            all.errors.extend(r.errors);
            all.created += r.created;
        }
        all.ops.sort_unstable();
        all.errors.sort_by_key(|e| e.0);
        Ok(all)
    }
}

/// The client commands of a time window (µs since t0), and the ones before it.
pub struct Window {
    /// Latencies of the commands started in the window, sorted.
    pub during: Vec<u64>,
    /// The longest command started before the window.
    pub max_before: u64,
    /// The longest command in the window: (start since t0 µs, latency µs).
    pub worst: Option<(u64, u64)>,
    /// Window start (µs since t0).
    pub from: u64,
}

impl Window {
    pub fn of(record: &LoadRecord, from: Duration, to: Duration) -> Window {
        let (a, b) = (from.as_micros() as u64, to.as_micros() as u64);
        let inside = || record.ops.iter().filter(move |(at, _)| *at >= a && *at <= b);
        let mut during: Vec<u64> = inside().map(|(_, l)| *l).collect();
        during.sort_unstable();
        let max_before = record.ops.iter().filter(|(at, _)| *at < a).map(|(_, l)| *l).max().unwrap_or(0);
        let worst = inside().max_by_key(|(_, l)| *l).copied();
        Window { during, max_before, worst, from: a }
    }

    pub fn max(&self) -> u64 {
        self.during.last().copied().unwrap_or(0)
    }

    /// The clients' figures of a `RESULT` line: latencies in and before the window, the
    /// errors and the keys the clients created.
    pub fn result_figures(&self, record: &LoadRecord) -> serde_json::Value {
        serde_json::json!({
            "max_latency_ms": ms(self.max()),
            "max_latency_before_ms": ms(self.max_before),
            "p99_ms": ms(self.p(0.99)),
            "ops_during": self.during.len(),
            "client_errors": record.errors.len(),
            "keys_created": record.created,
        })
    }

    pub fn p(&self, p: f64) -> u64 {
        percentile(&self.during, p)
    }

    /// "N; p50 …, p99 …, p99.9 …".
    pub fn summary(&self) -> String {
        format!(
            "{}; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            self.during.len(),
            ms(self.p(0.5)),
            ms(self.p(0.99)),
            ms(self.p(0.999))
        )
    }

    /// " (started X s after the window's start)" for the longest command.
    pub fn worst_when(&self, what: &str) -> String {
        self.worst
            .map(|(at, _)| format!(" (started {:.2}s after {what})", at.saturating_sub(self.from) as f64 / 1e6))
            .unwrap_or_default()
    }
}

/// Errors by class.
pub fn error_classes(record: &LoadRecord) -> BTreeMap<String, u64> {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (_, class, _) in &record.errors {
        *errors.entry(class.clone()).or_default() += 1;
    }
    errors
}

/// Prints the first few errors with when they happened.
pub fn print_errors(record: &LoadRecord) {
    for (at, _, msg) in record.errors.iter().take(10) {
        println!("      at {:.3}s: {msg}", *at as f64 / 1e6);
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// `label:` padded, then the value: the benchmark's report lines.
pub fn line(label: &str, value: impl std::fmt::Display) {
    println!("  {:<46} {value}", format!("{label}:"));
}

pub fn fmt_s(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into())
}
