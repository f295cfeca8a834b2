//! A writer workload for cluster clients that proves docs/design.md's migration guarantee: *every
//! acknowledged write is readable afterwards with its last value*.
//!
//! The key space is partitioned across W writer tasks: key `i` belongs to writer `i % W`, and
//! a writer runs one command at a time. So every key has exactly one writer and its expected
//! state is exact — no races between writers to reason about. Each writer does a steady random
//! mix of `SET` (on string keys; the value names the key and a sequence number), `INCR` (on
//! counter keys), `GET` (checked against the model: a read during a migration must be right
//! too), `DEL` and optionally `EXPIRE` with a long TTL.
//!
//! Any error the client surfaces is counted (the redis-rs cluster client follows `MOVED` by
//! itself, so a `MOVED` that reaches the workload is an error too). A write that failed has an
//! unknown outcome: the model then keeps every state the key may be in, and the next
//! acknowledged command on that key settles it. Without client errors the model is exact.
//!
//! Key `i` carries a hash tag that puts it in slot `i * 7919 % 16384`, so 50,000 keys cover
//! every slot three or four times and a few thousand spread over all nodes.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;
use sluice_common::slot::{key_slot, SLOT_COUNT};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinHandle;

/// The TTL `EXPIRE` sets: long enough that nothing expires during a test (issue 6 checks that
/// TTLs survive a migration).
pub const LONG_TTL_SECS: i64 = 100_000;

/// How many examples of each kind of problem a report keeps.
const EXAMPLES: usize = 20;

/// How many of its last commands a key's [`History`] keeps.
const HISTORY: usize = 10;

/// For every slot, a short hash tag (the decimal text of the smallest number hashing there):
/// `{tag}` in a key puts the key in that slot.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); usize::from(SLOT_COUNT)];
        let mut missing = usize::from(SLOT_COUNT);
        let mut n = 0u64;
        while missing > 0 {
            let text = n.to_string();
            let slot = usize::from(key_slot(text.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = text;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot % SLOT_COUNT)]
}

/// A key in `slot`, with `name` after the tag.
pub fn key_in_slot(slot: u16, name: &str) -> String {
    format!("{{{}}}:{name}", slot_tag(slot))
}

/// A seed for a test's randomness: `SLUICE_SEED` if set (to replay a run), else a random one.
pub fn seed_from_env() -> u64 {
    std::env::var("SLUICE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

/// What the workload does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Keys in the model (50,000 for the migration tests).
    pub keys: usize,
    /// Writer tasks; each owns the keys `i` with `i % writers == w`.
    pub writers: usize,
    /// Seed of every random choice (printed at start).
    pub seed: u64,
    /// Commands per second over all writers; as fast as the cluster answers when absent.
    pub rate: Option<u32>,
    /// First part of every key name, so several workloads can share a cluster.
    pub prefix: String,
    /// Mix `EXPIRE key LONG_TTL_SECS` in, and check TTLs in `verify`.
    pub expire: bool,
    /// Write every key once before the writers start (so a migration has data to move).
    pub prefill: bool,
    /// Answers that a client resend explains count as `client_resends` instead of wrong
    /// reads: an `INCR` more than one above the model, a `DEL` that finds no key. Only for
    /// tests that cut client connections on purpose: the redis-rs cluster client resends a
    /// command whose connection dropped, so a command that reached the node before the cut
    /// is applied twice by the *client*.
    pub tolerate_client_resends: bool,
    /// Per-command bound of the cluster client (a command that takes longer is an error).
    pub response_timeout: Duration,
}

impl WorkloadConfig {
    /// `keys` keys, 8 writers, 2,000 commands/s, the seed from [`seed_from_env`].
    pub fn new(keys: usize) -> WorkloadConfig {
        WorkloadConfig {
            keys,
            writers: 8,
            seed: seed_from_env(),
            rate: Some(2_000),
            prefix: "wl".into(),
            expire: true,
            prefill: true,
            tolerate_client_resends: false,
            response_timeout: Duration::from_secs(10),
        }
    }

    /// Key `i`: in slot [`key_number_slot`]`(i)`; every fourth key is a counter.
    pub fn key(&self, i: usize) -> String {
        let kind = if is_counter(i) { "n" } else { "s" };
        format!("{}:{{{}}}:{kind}{i}", self.prefix, slot_tag(key_number_slot(i)))
    }
}

/// The slot of key number `i`: `i * 7919 mod 16384`. 7919 is odd, so any 16384 consecutive
/// key numbers hit every slot once, and a few thousand keys spread over all nodes.
pub fn key_number_slot(i: usize) -> u16 {
    ((i as u64 * 7919) % u64::from(SLOT_COUNT)) as u16
}

fn is_counter(i: usize) -> bool {
    i % 4 == 3
}

/// A state a key can be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Absent,
    Str(String),
    Int(i64),
}

impl Value {
    /// `INCR` applied to this state (`None`: `INCR` would fail).
    fn incremented(&self) -> Option<Value> {
        match self {
            Value::Absent => Some(Value::Int(1)),
            Value::Int(n) => Some(Value::Int(n + 1)),
            Value::Str(_) => None,
        }
    }

    fn exists(&self) -> bool {
        !matches!(self, Value::Absent)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Absent => write!(f, "(absent)"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Int(n) => write!(f, "{n}"),
        }
    }
}

/// Whether a key has a TTL, as far as the acknowledged commands tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    None,
    Set,
    Unknown,
}

/// One command the workload sent on a key: when (on the workload's clock), what, and what
/// came back.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the command was sent, since the workload's start (prefill: zero).
    pub sent: Duration,
    /// How long the answer took.
    pub took: Duration,
    /// The command (`SET …#12`, `DEL`, …).
    pub command: String,
    /// The answer, or the error (an unknown outcome).
    pub outcome: String,
}

/// The last few (10) commands on one key, so a verify mismatch can be lined up with what
/// happened to the key's slot in the process logs (a lost `DEL`, a value that came back).
#[derive(Debug, Clone, Default)]
pub struct History {
    events: VecDeque<Event>,
    /// Commands that fell off the front.
    dropped: u64,
}

impl History {
    fn push(&mut self, e: Event) {
        if self.events.len() == HISTORY {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(e);
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// One line per command, each with the wall clock (UTC) of its start, given the
    /// workload's start by the wall clock.
    pub fn render(&self, wall_start: SystemTime) -> String {
        let mut out = String::new();
        if self.dropped > 0 {
            out.push_str(&format!("\n        ({} earlier commands not kept)", self.dropped));
        }
        for e in &self.events {
            let wall = humantime::format_rfc3339_millis(wall_start + e.sent);
            out.push_str(&format!(
                "\n        {:>9.3}s ({wall}) {} -> {} [{} ms]",
                e.sent.as_secs_f64(),
                e.command,
                e.outcome,
                e.took.as_millis()
            ));
        }
        out
    }
}

/// What the workload knows about one key.
#[derive(Debug, Clone)]
pub struct KeyModel {
    /// Every state the key may be in: exactly one after an acknowledged command, more after
    /// writes whose outcome the client could not learn (an error). Never empty.
    pub possible: Vec<Value>,
    pub ttl: Ttl,
    /// The last commands sent on the key (printed for a mismatch).
    pub history: History,
}

impl KeyModel {
    fn absent() -> KeyModel {
        KeyModel { possible: vec![Value::Absent], ttl: Ttl::None, history: History::default() }
    }

    fn certain(v: Value, ttl: Ttl) -> KeyModel {
        KeyModel { possible: vec![v], ttl, history: History::default() }
    }

    /// Settles the key to exactly `v` (an acknowledged command), keeping its history.
    fn settle(&mut self, v: Value, ttl: Ttl) {
        self.possible = vec![v];
        self.ttl = ttl;
    }

    pub fn is_certain(&self) -> bool {
        self.possible.len() == 1
    }

    fn allows(&self, v: &Value) -> bool {
        self.possible.contains(v)
    }

    fn add_possible(&mut self, v: Value) {
        if !self.possible.contains(&v) {
            self.possible.push(v);
        }
    }

    fn expected(&self) -> String {
        let all: Vec<String> = self.possible.iter().map(Value::to_string).collect();
        all.join(" or ")
    }
}

/// Command kinds, in report order.
const KINDS: [&str; 5] = ["GET", "SET", "INCR", "DEL", "EXPIRE"];

/// Counters shared by the writers while they run.
struct Shared {
    stop: AtomicBool,
    started: Instant,
    /// `started` by the wall clock (histories print UTC, to line up with the logs).
    wall_started: SystemTime,
    ops: [AtomicU64; KINDS.len()],
    errors_total: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    error_examples: Mutex<Vec<String>>,
    wrong: AtomicU64,
    wrong_examples: Mutex<Vec<String>>,
    reapplied: AtomicU64,
    max_latency_us: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            started: Instant::now(),
            wall_started: SystemTime::now(),
            ops: Default::default(),
            errors_total: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            error_examples: Mutex::new(Vec::new()),
            wrong: AtomicU64::new(0),
            wrong_examples: Mutex::new(Vec::new()),
            reapplied: AtomicU64::new(0),
            max_latency_us: AtomicU64::new(0),
        }
    }

    /// Now on the workload's clock, and by the wall clock (UTC, to line up with the logs).
    fn at(&self) -> String {
        let wall = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        format!("{:.3}s ({wall})", self.started.elapsed().as_secs_f64())
    }

    fn op(&self, kind: usize, latency: Duration) {
        self.ops[kind].fetch_add(1, Ordering::Relaxed);
        self.max_latency_us.fetch_max(latency.as_micros() as u64, Ordering::Relaxed);
    }

    fn error(&self, kind: usize, key: &str, e: &redis::RedisError) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        let class = error_class(e);
        *lock(&self.errors).entry(class).or_default() += 1;
        let mut ex = lock(&self.error_examples);
        if ex.len() < EXAMPLES {
            ex.push(format!("at {}: {} {key}: {e}", self.at(), KINDS[kind]));
        }
    }

    fn wrong(&self, what: String) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        let mut ex = lock(&self.wrong_examples);
        if ex.len() < EXAMPLES {
            ex.push(format!("at {}: {what}", self.at()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A short class for an error the client surfaced: the server's error code (`MOVED`,
/// `CLUSTERDOWN`, `TRYAGAIN` …) or what went wrong on the connection.
pub fn error_class(e: &redis::RedisError) -> String {
    if let Some(code) = e.code() {
        return code.to_string();
    }
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_connection_dropped() {
        "connection dropped".into()
    } else if e.is_io_error() {
        "io".into()
    } else {
        format!("{:?}", e.kind())
    }
}

/// What the writers did, from [`Workload::stop`].
#[derive(Debug, Clone)]
pub struct WorkloadReport {
    pub seed: u64,
    pub elapsed: Duration,
    /// Commands that got an answer (error replies included), by kind.
    pub ops: BTreeMap<&'static str, u64>,
    /// Errors the client surfaced, by class.
    pub errors: BTreeMap<String, u64>,
    pub error_examples: Vec<String>,
    /// Answers that contradict the model (a `GET`, `INCR`, `DEL` or `EXPIRE` that shows a
    /// write was lost, came back, or a value is wrong).
    pub wrong_reads: u64,
    pub wrong_read_examples: Vec<String>,
    /// Answers explained by a client resend (counted only with `tolerate_client_resends`).
    pub client_resends: u64,
    /// Keys whose state is still uncertain (a write failed and nothing settled it yet).
    pub uncertain_keys: usize,
    /// The longest single command, as the workload timed it.
    pub max_latency: Duration,
}

impl WorkloadReport {
    pub fn total_ops(&self) -> u64 {
        self.ops.values().sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload (seed {}): {} commands in {:.1}s {:?}; longest {:?}",
            self.seed,
            self.total_ops(),
            self.elapsed.as_secs_f64(),
            self.ops,
            self.max_latency
        )?;
        writeln!(f, "  errors: {} {:?}", self.total_errors(), self.errors)?;
        for e in &self.error_examples {
            writeln!(f, "    {e}")?;
        }
        writeln!(f, "  wrong reads: {}", self.wrong_reads)?;
        for e in &self.wrong_read_examples {
            writeln!(f, "    {e}")?;
        }
        write!(
            f,
            "  answers explained by client resends: {}; uncertain keys: {}",
            self.client_resends, self.uncertain_keys
        )
    }
}

/// What [`Workload::verify`] found reading every key back.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub keys_checked: usize,
    /// Keys whose value is not one the model allows (a lost or resurrected write).
    pub mismatches: usize,
    /// Keys whose TTL contradicts the model (only with `expire`).
    pub ttl_mismatches: usize,
    pub examples: Vec<String>,
    /// Keys that should exist (the model, with uncertain keys settled by what was read).
    pub live_keys: usize,
    /// Keys whose state was uncertain before the read.
    pub uncertain_keys: usize,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verify: {} keys checked, {} live, {} value mismatches, {} TTL mismatches, {} were uncertain",
            self.keys_checked, self.live_keys, self.mismatches, self.ttl_mismatches, self.uncertain_keys
        )?;
        for e in &self.examples {
            write!(f, "\n    {e}")?;
        }
        Ok(())
    }
}

/// A cluster connection for `urls` as the workload uses it.
pub async fn cluster_connection(urls: &[String], response_timeout: Duration) -> Result<ClusterConnection> {
    let client = redis::cluster::ClusterClient::builder(urls.to_vec())
        .response_timeout(response_timeout)
        .connection_timeout(Duration::from_secs(2))
        .build()?;
    client.get_async_connection().await.context("connect the cluster client")
}

/// Running writers; [`Workload::stop`] then [`Workload::verify`].
pub struct Workload {
    pub config: WorkloadConfig,
    urls: Vec<String>,
    shared: Arc<Shared>,
    writers: Vec<JoinHandle<Vec<KeyModel>>>,
    /// The model, indexed by key number; filled by `stop`.
    model: Vec<KeyModel>,
    report: Option<WorkloadReport>,
}

impl Workload {
    /// Prefills (if configured) and starts the writers against the cluster behind `urls`.
    pub async fn start(config: WorkloadConfig, urls: &[String]) -> Result<Workload> {
        if config.writers == 0 || config.keys < config.writers {
            bail!("a workload needs at least one writer and one key per writer");
        }
        eprintln!(
            "workload: {} keys, {} writers, rate {:?}/s, seed {} (replay with SLUICE_SEED={})",
            config.keys, config.writers, config.rate, config.seed, config.seed
        );
        let conn = cluster_connection(urls, config.response_timeout).await?;
        let mut model = vec![KeyModel::absent(); config.keys];
        if config.prefill {
            prefill(&config, &conn, &mut model).await?;
        }
        let shared = Arc::new(Shared::new());
        let mut writers = Vec::new();
        for w in 0..config.writers {
            let own: Vec<(usize, KeyModel)> =
                (w..config.keys).step_by(config.writers).map(|i| (i, model[i].clone())).collect();
            let writer = Writer {
                config: config.clone(),
                conn: conn.clone(),
                shared: shared.clone(),
                rng: StdRng::seed_from_u64(config.seed.wrapping_add((w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))),
                keys: own,
                seq: 0,
            };
            writers.push(tokio::spawn(writer.run()));
        }
        Ok(Workload { config, urls: urls.to_vec(), shared, writers, model, report: None })
    }

    /// The proxies [`Workload::verify`] connects to (the cluster's members may have changed
    /// since the start: scale-outs, nodes that gave all their slots away).
    pub fn set_urls(&mut self, urls: &[String]) {
        self.urls = urls.to_vec();
    }

    /// Commands answered so far.
    pub fn ops_so_far(&self) -> u64 {
        self.shared.ops.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }

    /// Errors the client surfaced so far.
    pub fn errors_so_far(&self) -> u64 {
        self.shared.errors_total.load(Ordering::Relaxed)
    }

    /// Wrong reads so far.
    pub fn wrong_reads_so_far(&self) -> u64 {
        self.shared.wrong.load(Ordering::Relaxed)
    }

    /// Stops the writers (each finishes its current command) and reports what they did.
    pub async fn stop(&mut self) -> Result<WorkloadReport> {
        if let Some(r) = &self.report {
            return Ok(r.clone());
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for (w, handle) in self.writers.drain(..).enumerate() {
            let keys = handle.await.context("a writer task panicked")?;
            for (j, k) in keys.into_iter().enumerate() {
                self.model[w + j * self.config.writers] = k;
            }
        }
        let s = &self.shared;
        let report = WorkloadReport {
            seed: self.config.seed,
            elapsed: s.started.elapsed(),
            ops: KINDS.iter().zip(&s.ops).map(|(k, n)| (*k, n.load(Ordering::Relaxed))).collect(),
            errors: lock(&s.errors).clone(),
            error_examples: lock(&s.error_examples).clone(),
            wrong_reads: s.wrong.load(Ordering::Relaxed),
            wrong_read_examples: lock(&s.wrong_examples).clone(),
            client_resends: s.reapplied.load(Ordering::Relaxed),
            uncertain_keys: self.model.iter().filter(|k| !k.is_certain()).count(),
            max_latency: Duration::from_micros(s.max_latency_us.load(Ordering::Relaxed)),
        };
        self.report = Some(report.clone());
        Ok(report)
    }

    /// The model after `stop` (empty states before it).
    pub fn model(&self) -> &[KeyModel] {
        &self.model
    }

    /// Reads every key of the model back through a fresh cluster connection (many commands in
    /// flight) and compares. Uncertain keys are settled by what is read, if it is one of their
    /// possible states. Call after [`Workload::stop`].
    pub async fn verify(&mut self) -> Result<VerifyReport> {
        if self.report.is_none() {
            bail!("verify needs the writers stopped first (Workload::stop)");
        }
        let conn = cluster_connection(&self.urls, self.config.response_timeout).await?;
        let expire = self.config.expire;
        let config = &self.config;
        let reads = futures::stream::iter(0..self.config.keys)
            .map(|i| {
                let mut c = conn.clone();
                let key = config.key(i);
                async move {
                    let value: Option<String> = c.get(&key).await.with_context(|| format!("GET {key}"))?;
                    let ttl: Option<i64> =
                        if expire { Some(c.ttl(&key).await.with_context(|| format!("TTL {key}"))?) } else { None };
                    Ok::<_, anyhow::Error>((i, key, value, ttl))
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
        let mut report = VerifyReport {
            keys_checked: 0,
            mismatches: 0,
            ttl_mismatches: 0,
            examples: Vec::new(),
            live_keys: 0,
            uncertain_keys: self.model.iter().filter(|k| !k.is_certain()).count(),
        };
        for r in reads {
            let (i, key, value, ttl) = r?;
            report.keys_checked += 1;
            let model = &mut self.model[i];
            let read = parse_value(i, value.as_deref());
            if !model.allows(&read) {
                report.mismatches += 1;
                if report.examples.len() < EXAMPLES {
                    let slot = key_slot(key.as_bytes());
                    let history = model.history.render(self.shared.wall_started);
                    report.examples.push(format!(
                        "{key}: read {read}, expected {} (slot {slot}); its last commands:{history}",
                        model.expected()
                    ));
                }
            } else {
                model.possible = vec![read.clone()];
            }
            if read.exists() {
                report.live_keys += 1;
            }
            if let Some(ttl) = ttl {
                let ok = match (read.exists(), model.ttl) {
                    (false, _) => ttl == -2,
                    (true, Ttl::None) => ttl == -1,
                    (true, Ttl::Set) => ttl > 0,
                    (true, Ttl::Unknown) => ttl == -1 || ttl > 0,
                };
                if !ok {
                    report.ttl_mismatches += 1;
                    if report.examples.len() < EXAMPLES {
                        let history = model.history.render(self.shared.wall_started);
                        report.examples.push(format!(
                            "{key}: TTL {ttl}, model says {:?} (value {read}); its last commands:{history}",
                            model.ttl
                        ));
                    }
                }
            }
        }
        Ok(report)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &self.writers {
            w.abort();
        }
    }
}

/// A command's answer as a history shows it: the value, or the error and its class.
fn outcome<T: fmt::Debug>(r: &redis::RedisResult<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("ERROR ({}) {e}", error_class(e)),
    }
}

fn parse_value(i: usize, v: Option<&str>) -> Value {
    match v {
        None => Value::Absent,
        Some(s) if is_counter(i) => s.parse().map(Value::Int).unwrap_or_else(|_| Value::Str(s.to_string())),
        Some(s) => Value::Str(s.to_string()),
    }
}

/// Writes every key once (strings: sequence 0; counters: a random start), many at a time.
async fn prefill(config: &WorkloadConfig, conn: &ClusterConnection, model: &mut [KeyModel]) -> Result<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let values: Vec<Value> = (0..config.keys)
        .map(|i| {
            if is_counter(i) {
                Value::Int(rng.random_range(0..1_000))
            } else {
                Value::Str(format!("{}#0", config.key(i)))
            }
        })
        .collect();
    let results = futures::stream::iter(values.iter().enumerate())
        .map(|(i, v)| {
            let mut c = conn.clone();
            let key = config.key(i);
            async move {
                let r = match v {
                    Value::Int(n) => c.set::<_, _, ()>(&key, *n).await,
                    Value::Str(s) => c.set::<_, _, ()>(&key, s).await,
                    Value::Absent => Ok(()),
                };
                r.with_context(|| format!("prefill SET {key}"))
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    for (m, v) in model.iter_mut().zip(values) {
        let command = format!("prefill SET {v}");
        *m = KeyModel::certain(v, Ttl::None);
        m.history.push(Event { sent: Duration::ZERO, took: Duration::ZERO, command, outcome: "Ok".into() });
    }
    eprintln!("workload: prefilled {} keys in {:?}", config.keys, started.elapsed());
    Ok(())
}

/// One writer: its keys, its connection handle, its random stream.
struct Writer {
    config: WorkloadConfig,
    conn: ClusterConnection,
    shared: Arc<Shared>,
    rng: StdRng,
    /// (key number, model) of the keys this writer owns.
    keys: Vec<(usize, KeyModel)>,
    seq: u64,
}

/// Weights of the mix: GET, write (SET or INCR by key type), DEL, EXPIRE.
const W_GET: u32 = 40;
const W_WRITE: u32 = 40;
const W_DEL: u32 = 12;
const W_EXPIRE: u32 = 8;

impl Writer {
    async fn run(mut self) -> Vec<KeyModel> {
        let mut tick = self.config.rate.filter(|r| *r > 0).map(|r| {
            let period = Duration::from_secs_f64(self.config.writers as f64 / f64::from(r));
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        while !self.shared.stop.load(Ordering::Relaxed) {
            if let Some(t) = &mut tick {
                t.tick().await;
            }
            self.step().await;
        }
        self.keys.into_iter().map(|(_, m)| m).collect()
    }

    /// One operation on one of this writer's keys, drawn by the weights above, and its
    /// answer checked against the key's model.
    async fn step(&mut self) {
        let j = self.rng.random_range(0..self.keys.len());
        let i = self.keys[j].0;
        let key = self.config.key(i);
        let total = W_GET + W_WRITE + W_DEL + if self.config.expire { W_EXPIRE } else { 0 };
        let pick = self.rng.random_range(0..total);
        self.seq += 1;
        let mut c = self.conn.clone();
        let started = Instant::now();
        let sent = self.shared.started.elapsed();
        let (command, outcome) = if pick < W_GET {
            let r: redis::RedisResult<Option<String>> = c.get(&key).await;
            self.shared.op(0, started.elapsed());
            let outcome = outcome(&r);
            self.check_get(j, &key, r);
            ("GET".to_string(), outcome)
        } else if pick < W_GET + W_WRITE && !is_counter(i) {
            let value = format!("{key}#{}", self.seq);
            let r: redis::RedisResult<()> = c.set(&key, &value).await;
            self.shared.op(1, started.elapsed());
            let outcome = outcome(&r);
            self.check_set(j, &key, value, r);
            (format!("SET #{}", self.seq), outcome)
        } else if pick < W_GET + W_WRITE {
            let r: redis::RedisResult<i64> = c.incr(&key, 1).await;
            self.shared.op(2, started.elapsed());
            let outcome = outcome(&r);
            self.check_incr(j, &key, r);
            ("INCR".to_string(), outcome)
        } else if pick < W_GET + W_WRITE + W_DEL {
            let r: redis::RedisResult<i64> = c.del(&key).await;
            self.shared.op(3, started.elapsed());
            let outcome = outcome(&r);
            self.check_del(j, &key, r);
            ("DEL".to_string(), outcome)
        } else {
            let r: redis::RedisResult<i64> = c.expire(&key, LONG_TTL_SECS).await;
            self.shared.op(4, started.elapsed());
            let outcome = outcome(&r);
            self.check_expire(j, &key, r);
            (format!("EXPIRE {LONG_TTL_SECS}"), outcome)
        };
        let took = started.elapsed();
        self.keys[j].1.history.push(Event { sent, took, command, outcome });
    }

    /// A GET must read a value the model allows; either way the read is what the key holds.
    fn check_get(&mut self, j: usize, key: &str, r: redis::RedisResult<Option<String>>) {
        let i = self.keys[j].0;
        match r {
            Ok(v) => {
                let read = parse_value(i, v.as_deref());
                let model = &mut self.keys[j].1;
                if !model.allows(&read) {
                    let expected = model.expected();
                    self.shared.wrong(format!("GET {key} read {read}, expected {expected}"));
                }
                model.possible = vec![read];
            }
            Err(e) => self.shared.error(0, key, &e),
        }
    }

    /// A SET that failed may or may not have been applied.
    fn check_set(&mut self, j: usize, key: &str, value: String, r: redis::RedisResult<()>) {
        let model = &mut self.keys[j].1;
        match r {
            Ok(()) => model.settle(Value::Str(value), Ttl::None),
            Err(e) => {
                self.shared.error(1, key, &e);
                model.add_possible(Value::Str(value));
                model.ttl = Ttl::Unknown;
            }
        }
    }

    /// An INCR must answer one more than a value the model allows (more, when resends are
    /// tolerated, is counted as reapplied).
    fn check_incr(&mut self, j: usize, key: &str, r: redis::RedisResult<i64>) {
        let tolerate = self.config.tolerate_client_resends;
        let model = &mut self.keys[j].1;
        match r {
            Ok(n) => {
                let got = Value::Int(n);
                let expected: Vec<Value> = model.possible.iter().filter_map(Value::incremented).collect();
                if !expected.contains(&got) {
                    let above = model.possible.iter().any(|p| match p {
                        Value::Absent => n > 1,
                        Value::Int(m) => n > m + 1,
                        Value::Str(_) => false,
                    });
                    if tolerate && above {
                        self.shared.reapplied.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let want: Vec<String> = expected.iter().map(Value::to_string).collect();
                        self.shared.wrong(format!("INCR {key} answered {n}, expected {}", want.join(" or ")));
                    }
                }
                if !model.is_certain() {
                    model.ttl = Ttl::Unknown;
                }
                model.possible = vec![got];
            }
            Err(e) => {
                self.shared.error(2, key, &e);
                let next: Vec<Value> = model.possible.iter().filter_map(Value::incremented).collect();
                for v in next {
                    model.add_possible(v);
                }
            }
        }
    }

    /// A DEL must find the key when the model says it exists, and not find it when it says not.
    fn check_del(&mut self, j: usize, key: &str, r: redis::RedisResult<i64>) {
        let model = &mut self.keys[j].1;
        match r {
            Ok(n) => {
                let existed = n > 0;
                if !model.possible.iter().any(|p| p.exists() == existed) {
                    if !existed && self.config.tolerate_client_resends {
                        self.shared.reapplied.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let expected = model.expected();
                        let what = if existed { "deleted a key" } else { "found no key" };
                        self.shared.wrong(format!("DEL {key} {what}, expected {expected}"));
                    }
                }
                model.settle(Value::Absent, Ttl::None);
            }
            Err(e) => {
                self.shared.error(3, key, &e);
                model.add_possible(Value::Absent);
                model.ttl = Ttl::Unknown;
            }
        }
    }

    /// An EXPIRE must find the key exactly when the model says it exists.
    fn check_expire(&mut self, j: usize, key: &str, r: redis::RedisResult<i64>) {
        let model = &mut self.keys[j].1;
        match r {
            Ok(n) => {
                let existed = n > 0;
                if !model.possible.iter().any(|p| p.exists() == existed) {
                    let expected = model.expected();
                    let what = if existed { "found the key" } else { "found no key" };
                    self.shared.wrong(format!("EXPIRE {key} {what}, expected {expected}"));
                }
                if existed {
                    model.possible.retain(Value::exists);
                    model.ttl = Ttl::Set;
                } else {
                    model.settle(Value::Absent, Ttl::None);
                }
                if model.possible.is_empty() {
                    // Contradiction already counted; keep the model usable.
                    model.possible = vec![Value::Absent];
                    model.ttl = Ttl::Unknown;
                }
            }
            Err(e) => {
                self.shared.error(4, key, &e);
                model.ttl = Ttl::Unknown;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_tags_cover_every_slot() {
        for slot in 0..SLOT_COUNT {
            assert_eq!(key_slot(key_in_slot(slot, "x").as_bytes()), slot);
        }
        let c = WorkloadConfig::new(50_000);
        assert_eq!(key_slot(c.key(16_385).as_bytes()), 7919);
        let slots: std::collections::HashSet<u16> = (0..50_000).map(|i| key_slot(c.key(i).as_bytes())).collect();
        assert_eq!(slots.len(), usize::from(SLOT_COUNT));
    }

    #[test]
    fn a_history_keeps_the_last_commands_and_says_how_many_it_dropped() {
        let mut h = History::default();
        for n in 0..HISTORY + 2 {
            let sent = Duration::from_millis(n as u64 * 1500);
            h.push(Event { sent, took: Duration::from_millis(3), command: format!("SET #{n}"), outcome: "Ok".into() });
        }
        assert_eq!(h.events().count(), HISTORY);
        let text = h.render(std::time::UNIX_EPOCH);
        assert!(text.contains("(2 earlier commands not kept)"), "{text}");
        assert!(!text.contains("SET #1 ") && text.contains("SET #2 ") && text.contains("SET #11 "), "{text}");
        assert!(text.contains("16.500s (1970-01-01T00:00:16.500Z) SET #11 -> Ok [3 ms]"), "{text}");
    }

    #[test]
    fn incr_after_an_unknown_outcome_accepts_both() {
        let mut m = KeyModel::certain(Value::Int(4), Ttl::None);
        for v in m.possible.clone().iter().filter_map(Value::incremented) {
            m.add_possible(v);
        }
        assert!(m.allows(&Value::Int(4)) && m.allows(&Value::Int(5)) && !m.allows(&Value::Int(6)));
    }
}
