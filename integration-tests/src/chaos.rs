//! The machinery of the chaos test (issue 8, `tests/chaos.rs`): a seeded [`Driver`] that keeps
//! moving slots, aborting, scaling, killing and pausing processes and breaking the proxies'
//! links to their nodes ([`crate::relay`]) while writers run; an [`EpochMonitor`] that samples
//! every epoch throughout; and the counters the test's summary prints.
//!
//! Every random choice comes from one seeded generator, so a run's sequence of decisions is
//! replayable with `SLUICE_SEED` (the timing of the processes, of course, is not).

use crate::broker::BrokerClient;
use crate::local::{proxy_epoch, LocalCluster};
use crate::migration::{phase_name, ApiRefusal, MigrationCluster};
use crate::relay::Relay;
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sluice_common::api::{Migration, ProxyList, ProxyState, ScaleRequest};
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, NodeView, SlotRange};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How many examples of each kind of problem are kept for the report.
const EXAMPLES: usize = 20;

/// Counters by kind, printed sorted.
#[derive(Debug, Clone, Default)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    pub fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_default() += 1;
    }

    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(none)");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// Epochs
// ---------------------------------------------------------------------------------------------

/// What the [`EpochMonitor`] saw.
#[derive(Debug, Clone, Default)]
pub struct EpochLog {
    pub rounds: u64,
    pub broker_samples: u64,
    pub proxy_samples: u64,
    /// Samples of epoch 0 from a proxy restarted since it last had a config (allowed).
    pub fresh_starts: u64,
    pub first_broker_epoch: Option<u64>,
    pub last_broker_epoch: u64,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl EpochLog {
    fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            eprintln!("chaos: EPOCH VIOLATION: {what}");
            self.examples.push(what);
        }
    }
}

impl fmt::Display for EpochLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "epochs: {} rounds, {} broker and {} proxy samples, broker epoch {} -> {}, {} fresh starts at 0, {} violations",
            self.rounds,
            self.broker_samples,
            self.proxy_samples,
            self.first_broker_epoch.unwrap_or(0),
            self.last_broker_epoch,
            self.fresh_starts,
            self.violations
        )?;
        for e in &self.examples {
            write!(f, "\n    {e}")?;
        }
        Ok(())
    }
}

/// Samples the broker's epoch and every proxy's (`UMCTL GETEPOCH`) about every 100 ms and
/// checks that they only go forward.
///
/// What "forward" means here:
/// - The broker's epoch never decreases, across broker restarts too (it is stored in sled).
/// - A proxy serves with epoch 0 only before it has any config. A restarted proxy starts
///   at 0 again, so 0 is accepted from a proxy restarted since its last configured sample.
///   The driver bumps the proxy's *incarnation* before killing it; the monitor reads it
///   before and after each sample and drops samples during which it changed, so every
///   sample kept is known to come from one incarnation.
/// - Any non-zero epoch a proxy serves with is at least the highest one it served with
///   before — **across restarts too**: a restarted proxy must come back at the current
///   epoch, not at an older config (an old config could give it slots that have moved away
///   since, and it would serve them from a node that no longer has their keys).
/// - No proxy holds an epoch the broker has not produced (checked against a broker sample
///   taken after the proxy's).
pub struct EpochMonitor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<EpochLog>,
    /// Per proxy (index of [`LocalCluster::proxies`]): bumped before each kill.
    pub incarnations: Arc<Vec<AtomicU64>>,
}

impl EpochMonitor {
    pub fn start(broker: BrokerClient, proxies: Vec<String>) -> EpochMonitor {
        let incarnations: Arc<Vec<AtomicU64>> = Arc::new(proxies.iter().map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn(sample(broker, proxies, incarnations.clone(), stop.clone()));
        EpochMonitor { stop, handle, incarnations }
    }

    /// Marks proxy `i` as about to be killed.
    pub fn new_incarnation(&self, i: usize) {
        if let Some(n) = self.incarnations.get(i) {
            n.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub async fn stop(self) -> Result<EpochLog> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.context("the epoch monitor panicked")
    }
}

async fn broker_epoch(broker: &BrokerClient) -> Option<u64> {
    tokio::time::timeout(Duration::from_secs(1), broker.epoch()).await.ok().and_then(Result::ok)
}

async fn sample(
    broker: BrokerClient,
    proxies: Vec<String>,
    incarnations: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
) -> EpochLog {
    let mut log = EpochLog::default();
    // Per proxy: the highest epoch served with, and the incarnation of the last configured sample.
    let mut highest = vec![0u64; proxies.len()];
    let mut configured_in: Vec<Option<u64>> = vec![None; proxies.len()];
    while !stop.load(Ordering::SeqCst) {
        log.rounds += 1;
        if let Some(b) = broker_epoch(&broker).await {
            log.broker_samples += 1;
            log.first_broker_epoch.get_or_insert(b);
            if b < log.last_broker_epoch {
                log.violation(format!("the broker's epoch went back from {} to {b}", log.last_broker_epoch));
            }
            log.last_broker_epoch = log.last_broker_epoch.max(b);
        }
        let answers = futures::future::join_all(proxies.iter().enumerate().map(|(i, p)| {
            let incarnations = &incarnations;
            async move {
                let before = incarnations[i].load(Ordering::SeqCst);
                let answer = tokio::time::timeout(Duration::from_millis(500), proxy_epoch(p)).await;
                let after = incarnations[i].load(Ordering::SeqCst);
                (before, answer, after)
            }
        }))
        .await;
        let mut seen = Vec::new();
        for (i, (before, answer, after)) in answers.into_iter().enumerate() {
            let Ok(Ok(epoch)) = answer else { continue };
            // A kill between the two reads: the answer may come from either process.
            if before != after {
                continue;
            }
            let incarnation = after;
            log.proxy_samples += 1;
            if epoch == 0 {
                match configured_in[i] {
                    Some(inc) if inc == incarnation => log.violation(format!(
                        "proxy {} answered epoch 0 after serving with epoch {}, without a restart",
                        proxies[i], highest[i]
                    )),
                    _ => log.fresh_starts += 1,
                }
                continue;
            }
            if epoch < highest[i] {
                let restarted = configured_in[i] != Some(incarnation);
                log.violation(format!(
                    "proxy {} serves with epoch {epoch} after epoch {}{}",
                    proxies[i],
                    highest[i],
                    if restarted { " (it was restarted in between and took an older config)" } else { "" }
                ));
            }
            highest[i] = highest[i].max(epoch);
            configured_in[i] = Some(incarnation);
            seen.push((i, epoch));
        }
        if !seen.is_empty() {
            if let Some(b) = broker_epoch(&broker).await {
                for (i, epoch) in seen {
                    if epoch > b {
                        log.violation(format!("proxy {} holds epoch {epoch}, beyond the broker's {b}", proxies[i]));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log
}

// ---------------------------------------------------------------------------------------------
// Migrations as the driver sees them
// ---------------------------------------------------------------------------------------------

/// Every migration the broker listed while the test ran, with the last phase seen; phases
/// must only go forward between two looks.
#[derive(Debug, Default, Clone)]
pub struct MigrationLog {
    pub seen: BTreeMap<u64, Migration>,
    pub backwards: Vec<String>,
}

fn migration_number(id: &str) -> u64 {
    id.trim_start_matches("m-").parse().unwrap_or(u64::MAX)
}

impl MigrationLog {
    pub fn update(&mut self, list: Vec<Migration>) {
        for m in list {
            let n = migration_number(&m.id);
            if let Some(prev) = self.seen.get(&n) {
                if m.phase < prev.phase && self.backwards.len() < EXAMPLES {
                    self.backwards.push(format!(
                        "migration {} went back from {} to {}",
                        m.id,
                        phase_name(prev.phase),
                        phase_name(m.phase)
                    ));
                }
            }
            self.seen.insert(n, m);
        }
    }

    /// The migrations that had not ended at the last look.
    pub fn running(&self) -> Vec<&Migration> {
        self.seen.values().filter(|m| !m.phase.is_final()).collect()
    }

    /// How many ended in each final phase, and how many had not ended, by mode.
    pub fn outcomes(&self) -> Tally {
        let mut t = Tally::default();
        for m in self.seen.values() {
            let phase = if m.phase.is_final() { phase_name(m.phase) } else { "unfinished".into() };
            t.add(format!("{phase} ({})", mode_name(m.mode)));
        }
        t
    }

    pub fn count(&self, phase: MigrationPhase) -> usize {
        self.seen.values().filter(|m| m.phase == phase).count()
    }
}

pub fn mode_name(mode: MigrationMode) -> String {
    mode.as_str().to_string()
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// Bounds of the driver's choices.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// SIGSTOP of a proxy or the coordinator lasts this long: longer than the coordinator's
    /// failure detection (`--failure-threshold` 3 Status calls of at most 500 ms + 200 ms).
    pub pause: (Duration, Duration),
    /// At most this many proxies are down or stopped at once.
    pub max_proxy_faults: usize,
    /// A proxy or the coordinator stays dead this long before it is restarted.
    pub down: (Duration, Duration),
    /// Largest slot range of one migration the driver starts.
    pub max_range: usize,
    /// Between two actions.
    pub idle: (Duration, Duration),
    /// Abort replication-mode migrations too (keys-mode ones are always tried: the broker
    /// refuses them). The broker accepts an abort while its record says the switch has not
    /// started, but its record lags the proxies: the switch may already have happened, and
    /// the abort then hands the slots back to a source without the writes the destination
    /// took (a known race, see the test's documentation); `false` leaves that race out.
    pub abort_replication: bool,
    /// SIGKILL and SIGSTOP the Redis nodes of shards with replicas (and of replicas): for a
    /// cluster with a replica per shard. A killed master's node is restarted (empty) only
    /// once its shard has failed over, and no migration or scale starts while a node fault is
    /// on: a failover waits for the migrations of its shard, so a dead master there would
    /// stall both (ARCHITECTURE.md, "Replicas and failover").
    pub node_faults: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            pause: (Duration::from_millis(2_500), Duration::from_millis(5_000)),
            max_proxy_faults: 2,
            down: (Duration::ZERO, Duration::from_millis(2_500)),
            max_range: 1_500,
            idle: (Duration::from_millis(150), Duration::from_millis(1_200)),
            abort_replication: true,
            node_faults: false,
        }
    }
}

/// Something the driver has to undo later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    ResumeProxy(usize),
    RestartProxy(usize),
    ResumeCoordinator,
    RestartCoordinator,
    StopSecondCoordinator,
    RestartBroker,
    HealRelay(usize),
    /// Restart node `i` (SIGKILLed) once its proxy is no longer a shard's master.
    RestartNode(usize),
    ResumeNode(usize),
}

/// The actions, with their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    MigrateKeys,
    MigrateToFree,
    Abort,
    Scale,
    KillProxy,
    PauseProxy,
    KillCoordinator,
    PauseCoordinator,
    SecondCoordinator,
    KillBroker,
    RelayLatency,
    RelayDrop,
    RelayOutage,
    KillNode,
    PauseNode,
}

const ACTIONS: [(Action, u32); 15] = [
    (Action::MigrateKeys, 22),
    (Action::MigrateToFree, 7),
    (Action::Abort, 8),
    (Action::Scale, 5),
    (Action::KillProxy, 6),
    (Action::PauseProxy, 5),
    (Action::KillCoordinator, 4),
    (Action::PauseCoordinator, 4),
    (Action::SecondCoordinator, 3),
    (Action::KillBroker, 3),
    (Action::RelayLatency, 5),
    (Action::RelayDrop, 6),
    (Action::RelayOutage, 3),
    (Action::KillNode, 5),
    (Action::PauseNode, 4),
];

/// The random driver. It owns nothing of the cluster (every call gets it) but the relays
/// between the proxies and their nodes, through which it breaks those links.
pub struct Driver {
    rng: StdRng,
    opts: ChaosOptions,
    /// Relay `i` stands between proxy `i` and its node ([`crate::local::start_with_relays`]).
    pub relays: Vec<Relay>,
    undo: Vec<(Instant, Undo)>,
    /// What the driver asked the broker, and how it answered, by kind.
    pub operations: Tally,
    /// Faults injected, by kind.
    pub faults: Tally,
    /// Calls that failed (not refusals: the broker down, a timeout …), by kind.
    pub errors: Tally,
    pub error_examples: Vec<String>,
    pub migrations: MigrationLog,
    /// Migrations the driver itself started (the rest came from scale plans).
    pub started: Vec<String>,
    since: Instant,
}

impl Driver {
    pub fn new(seed: u64, opts: ChaosOptions, relays: Vec<Relay>) -> Driver {
        Driver {
            rng: StdRng::seed_from_u64(seed),
            opts,
            relays,
            undo: Vec::new(),
            operations: Tally::default(),
            faults: Tally::default(),
            errors: Tally::default(),
            error_examples: Vec::new(),
            migrations: MigrationLog::default(),
            started: Vec::new(),
            since: Instant::now(),
        }
    }

    /// Counts a fault and logs it with the time since the driver started.
    fn fault(&mut self, kind: &str, detail: impl fmt::Display) {
        self.faults.add(kind);
        self.log(format!("{kind} {detail}"));
    }

    /// Logs with the time since the driver started and the wall clock (UTC), to line the
    /// driver's faults up with the processes' logs and the workload's key histories.
    fn log(&self, what: impl fmt::Display) {
        let wall = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        eprintln!("chaos: [{:7.2}s {wall}] {what}", self.since.elapsed().as_secs_f64());
    }

    fn error(&mut self, kind: &str, e: impl fmt::Display) {
        self.errors.add(kind);
        if self.error_examples.len() < EXAMPLES {
            self.error_examples.push(format!("{kind}: {e}"));
        }
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            return lo;
        }
        Duration::from_millis(self.rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64))
    }

    fn later(&mut self, after: Duration, what: Undo) {
        self.undo.push((Instant::now() + after, what));
    }

    fn pending(&self, what: Undo) -> bool {
        self.undo.iter().any(|(_, u)| *u == what)
    }

    fn proxy_faulted(&self, i: usize) -> bool {
        self.pending(Undo::ResumeProxy(i)) || self.pending(Undo::RestartProxy(i))
    }

    fn proxy_faults(&self) -> usize {
        self.undo.iter().filter(|(_, u)| matches!(u, Undo::ResumeProxy(_) | Undo::RestartProxy(_))).count()
    }

    fn coordinator_faulted(&self) -> bool {
        self.pending(Undo::ResumeCoordinator) || self.pending(Undo::RestartCoordinator)
    }

    fn broker_down(&self) -> bool {
        self.pending(Undo::RestartBroker)
    }

    fn node_faulted(&self) -> bool {
        self.undo.iter().any(|(_, u)| matches!(u, Undo::RestartNode(_) | Undo::ResumeNode(_)))
    }

    /// Looks at the broker's migrations (skipped while the broker is down).
    pub async fn poll_migrations(&mut self, cluster: &LocalCluster) {
        if self.broker_down() {
            return;
        }
        match cluster.all_migrations().await {
            Ok(list) => self.migrations.update(list),
            Err(e) => self.error("list migrations", e),
        }
    }

    /// Carries out what is due.
    pub async fn run_due(&mut self, cluster: &mut LocalCluster) -> Result<()> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = self.undo.drain(..).partition(|(at, _)| *at <= now);
        self.undo = keep;
        for (_, what) in due {
            self.carry_out(cluster, what, false).await?;
        }
        Ok(())
    }

    /// Ends every fault now: processes resumed or restarted, the second coordinator stopped,
    /// relays healed.
    pub async fn heal_all(&mut self, cluster: &mut LocalCluster) -> Result<()> {
        let all: Vec<Undo> = self.undo.drain(..).map(|(_, u)| u).collect();
        for what in all {
            self.carry_out(cluster, what, true).await?;
        }
        for r in &self.relays {
            r.heal();
        }
        Ok(())
    }

    /// Undoes a fault. `healing`: the run is over, so a killed master's node waits (bounded)
    /// for its shard's failover instead of being put off.
    async fn carry_out(&mut self, cluster: &mut LocalCluster, what: Undo, healing: bool) -> Result<()> {
        if let Undo::RestartNode(i) = what {
            if !self.master_failed_over(cluster, i, healing).await {
                if !healing {
                    self.operations.add("node restart put off: its shard has not failed over");
                    self.later(Duration::from_secs(1), what);
                    return Ok(());
                }
                // The run is over and the shard never failed over: restart it anyway (its
                // keys are gone; the end-of-test check will say so).
                self.error("failover", format!("proxy {i}'s shard did not fail over within a minute"));
            }
        }
        self.log(format!("{what:?}"));
        match what {
            Undo::ResumeProxy(i) => cluster.proxies[i].process().resume(),
            Undo::RestartProxy(i) => cluster.restart_proxy(i).await.with_context(|| format!("restart proxy {i}"))?,
            Undo::ResumeCoordinator => cluster.coordinators[0].resume(),
            Undo::RestartCoordinator => cluster.coordinators[0].restart().context("restart the coordinator")?,
            Undo::StopSecondCoordinator => {
                while cluster.coordinators.len() > 1 {
                    // Dropping the process kills it (SIGKILL): the second one gets no goodbye.
                    cluster.coordinators.pop();
                }
            }
            Undo::RestartBroker => cluster.broker.restart().await.context("restart the broker")?,
            Undo::HealRelay(i) => self.relays[i].heal(),
            Undo::RestartNode(i) => cluster.nodes[i].restart().await.with_context(|| format!("restart node {i}"))?,
            Undo::ResumeNode(i) => cluster.nodes[i].process().resume(),
        }
        Ok(())
    }

    /// Whether proxy `i` is no shard's master any more (its shard failed over), so its node
    /// may come back: empty, it becomes a replica of the new master. Restarted empty while
    /// its proxy still serves the shard, it would serve an empty node. `wait`: poll up to a
    /// minute (a failover needs the coordinator, which may have been down).
    async fn master_failed_over(&mut self, cluster: &LocalCluster, i: usize, wait: bool) -> bool {
        let proxy = cluster.proxies[i].addr();
        let deadline = Instant::now() + if wait { Duration::from_secs(60) } else { Duration::ZERO };
        loop {
            match cluster.view().await {
                Ok(view) if !view.nodes.iter().any(|n| n.proxy == proxy) => return true,
                Ok(_) => {}
                Err(e) => self.error("read the cluster", e),
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sleeps `self.opts.idle` in short slices, carrying out what falls due.
    pub async fn idle(&mut self, cluster: &mut LocalCluster) -> Result<()> {
        let until = Instant::now() + self.between(self.opts.idle);
        while Instant::now() < until {
            self.run_due(cluster).await?;
            tokio::time::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100))).await;
        }
        Ok(())
    }

    /// One random action.
    pub async fn step(&mut self, cluster: &mut LocalCluster, monitor: &EpochMonitor) -> Result<()> {
        match self.pick_action() {
            Action::MigrateKeys => self.migrate(cluster, false).await,
            Action::MigrateToFree => self.migrate(cluster, true).await,
            Action::Abort => self.abort_one(cluster).await,
            Action::Scale => self.scale(cluster).await,
            Action::KillProxy => self.kill_proxy(cluster, monitor),
            Action::PauseProxy => self.pause_proxy(cluster),
            action @ (Action::KillCoordinator
            | Action::PauseCoordinator
            | Action::SecondCoordinator
            | Action::KillBroker) => self.control_plane_fault(cluster, action)?,
            action @ (Action::RelayLatency | Action::RelayDrop | Action::RelayOutage) => self.relay_fault(action),
            Action::KillNode => self.node_fault(cluster, true).await,
            Action::PauseNode => self.node_fault(cluster, false).await,
        }
        Ok(())
    }

    /// An action drawn by its weight in [`ACTIONS`].
    fn pick_action(&mut self) -> Action {
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        for (a, w) in ACTIONS {
            if pick < w {
                return a;
            }
            pick -= w;
        }
        Action::MigrateKeys
    }

    /// A coordinator killed, paused or doubled, or the broker killed; undone later. Only one
    /// such fault of the coordinator and one of the broker at a time.
    fn control_plane_fault(&mut self, cluster: &mut LocalCluster, action: Action) -> Result<()> {
        match action {
            Action::KillCoordinator if !self.coordinator_faulted() => {
                cluster.coordinators[0].kill();
                self.fault("coordinator SIGKILL", "");
                let after = self.between(self.opts.down);
                self.later(after, Undo::RestartCoordinator);
            }
            Action::PauseCoordinator if !self.coordinator_faulted() => {
                cluster.coordinators[0].pause();
                let after = self.between(self.opts.pause);
                self.fault("coordinator SIGSTOP", format!("for {after:?}"));
                self.later(after, Undo::ResumeCoordinator);
            }
            Action::SecondCoordinator if cluster.coordinators.len() == 1 => {
                cluster.start_coordinator()?;
                let after = self.between((Duration::from_secs(5), Duration::from_secs(20)));
                self.fault("second coordinator", format!("for {after:?}"));
                self.later(after, Undo::StopSecondCoordinator);
            }
            Action::KillBroker if !self.broker_down() => {
                cluster.broker.kill();
                let after = self.between((Duration::from_millis(200), Duration::from_millis(3_000)));
                self.fault("broker SIGKILL", format!("down for {after:?}"));
                self.later(after, Undo::RestartBroker);
            }
            _ => {}
        }
        Ok(())
    }

    /// Latency, reset connections or an outage on a random relay (between a proxy and its
    /// node); latency and outages are healed later.
    fn relay_fault(&mut self, action: Action) {
        let i = self.rng.random_range(0..self.relays.len());
        match action {
            Action::RelayLatency => {
                let ms = self.rng.random_range(1..=40);
                self.relays[i].set_latency(Duration::from_millis(ms));
                let after = self.between((Duration::from_secs(2), Duration::from_secs(10)));
                self.fault("relay latency", format!("#{i}: {ms} ms for {after:?}"));
                self.later(after, Undo::HealRelay(i));
            }
            Action::RelayDrop => {
                let fraction = self.rng.random_range(0.3..=1.0);
                // Its own generator: how many draws it takes depends on the live connections.
                let mut cuts = StdRng::seed_from_u64(self.rng.random());
                let cut = self.relays[i].drop_connections(fraction, &mut cuts);
                if cut > 0 {
                    self.fault("relay connections reset", format!("#{i}: {cut}"));
                }
            }
            _ => {
                self.relays[i].set_refusing(true);
                let mut cuts = StdRng::seed_from_u64(self.rng.random());
                self.relays[i].drop_connections(1.0, &mut cuts);
                let after = self.between((Duration::from_millis(300), Duration::from_millis(2_000)));
                self.fault("relay outage", format!("#{i} for {after:?}"));
                self.later(after, Undo::HealRelay(i));
            }
        }
    }

    fn pick_proxy(&mut self, cluster: &LocalCluster) -> Option<usize> {
        if self.proxy_faults() >= self.opts.max_proxy_faults {
            return None;
        }
        let candidates: Vec<usize> = (0..cluster.proxies.len()).filter(|&i| !self.proxy_faulted(i)).collect();
        candidates.choose(&mut self.rng).copied()
    }

    fn kill_proxy(&mut self, cluster: &mut LocalCluster, monitor: &EpochMonitor) {
        let Some(i) = self.pick_proxy(cluster) else { return };
        monitor.new_incarnation(i);
        cluster.proxies[i].process().kill();
        let after = self.between(self.opts.down);
        self.fault("proxy SIGKILL", format!("#{i} {} down for {after:?}", cluster.proxies[i].addr()));
        self.later(after, Undo::RestartProxy(i));
    }

    fn pause_proxy(&mut self, cluster: &mut LocalCluster) {
        let Some(i) = self.pick_proxy(cluster) else { return };
        cluster.proxies[i].process().pause();
        let after = self.between(self.opts.pause);
        self.fault("proxy SIGSTOP", format!("#{i} {} for {after:?}", cluster.proxies[i].addr()));
        self.later(after, Undo::ResumeProxy(i));
    }

    /// SIGKILL (`kill`) or SIGSTOP a Redis node: a replica's at any time, a master's only
    /// when its shard has a replica whose proxy is up, no migration involves the shard and no
    /// scale plan runs (its failover would wait for them; no new one starts meanwhile). One node fault at a time: a second one could take
    /// a shard's only copy.
    async fn node_fault(&mut self, cluster: &mut LocalCluster, kill: bool) {
        if !self.opts.node_faults || self.broker_down() || self.node_faulted() {
            return;
        }
        let detail: Result<sluice_common::api::ClusterDetail> =
            cluster.broker_client().get(&format!("/clusters/{}", cluster.spec.cluster)).await;
        let (detail, running) = match (detail, cluster.running_migrations().await) {
            (Ok(d), Ok(r)) => (d, r),
            (Err(e), _) | (_, Err(e)) => return self.error("read the cluster", e),
        };
        let no_plan = detail.scale.as_ref().is_none_or(|p| p.state != sluice_common::api::ScaleState::Running);
        let quiet = |proxy: &str| no_plan && !running.iter().any(|m| m.src == proxy || m.dst == proxy);
        let index = |proxy: &str| cluster.proxies.iter().position(|p| p.addr() == proxy);
        let mut candidates: Vec<(usize, &str)> = Vec::new();
        for shard in &detail.cluster.nodes {
            let replicas: Vec<usize> = shard.replicas.iter().filter_map(|r| index(&r.proxy)).collect();
            candidates.extend(replicas.iter().filter(|&&r| !self.proxy_faulted(r)).map(|&r| (r, "replica")));
            // A master's node only while a replica is up and in sync: losing a master whose
            // replica is still copying is the double fault nothing survives (README "Faults").
            let mut replica_up = false;
            for &r in &replicas {
                if !self.proxy_faulted(r) && synced_replica(&cluster.nodes[r].addr()).await {
                    replica_up = true;
                }
            }
            let quiet = quiet(&shard.proxy);
            if let Some(m) = index(&shard.proxy).filter(|&m| quiet && replica_up && !self.proxy_faulted(m)) {
                candidates.push((m, "master"));
            }
        }
        // A master's node when one may go (a failover follows), more often than not: the
        // rarer and the more interesting fault.
        let masters: Vec<(usize, &str)> = candidates.iter().copied().filter(|(_, r)| *r == "master").collect();
        let pool = if !masters.is_empty() && self.rng.random_bool(0.7) { &masters } else { &candidates };
        let Some(&(i, role)) = pool.choose(&mut self.rng) else {
            return self.operations.add("node fault skipped: no candidate");
        };
        let node = cluster.nodes[i].addr();
        if kill {
            cluster.nodes[i].kill();
            let after = self.between(self.opts.down);
            self.fault(&format!("{role} node SIGKILL"), format!("#{i} {node} down for at least {after:?}"));
            self.later(after, Undo::RestartNode(i));
        } else {
            cluster.nodes[i].process().pause();
            let after = self.between((Duration::from_secs(2), Duration::from_secs(8)));
            self.fault(&format!("{role} node SIGSTOP"), format!("#{i} {node} for {after:?}"));
            self.later(after, Undo::ResumeNode(i));
        }
    }

    /// Starts a migration of a random range: between two nodes (keys mode, or auto which
    /// resolves to keys), or to a free proxy (replication, or auto which resolves to it).
    async fn migrate(&mut self, cluster: &LocalCluster, to_free: bool) {
        if self.broker_down() {
            self.operations.add("migration skipped: broker down");
            return;
        }
        if self.node_faulted() {
            return self.operations.add("migration skipped: a node fault is on");
        }
        let broker = cluster.broker_client();
        let (view, proxies) = match tokio::try_join!(cluster.view(), broker.proxies()) {
            Ok(v) => v,
            Err(e) => return self.error("read the cluster", e),
        };
        let sources: Vec<&NodeView> = view.nodes.iter().filter(|n| n.slots.iter().any(|a| a.tag.is_none())).collect();
        let Some(src) = sources.choose(&mut self.rng).copied() else {
            return self.operations.add("migration skipped: nothing to move");
        };
        let Some(dst) = self.pick_destination(&view, &proxies, src, to_free) else {
            return self.operations.add(if to_free {
                "migration skipped: no free proxy"
            } else {
                "migration skipped: one node"
            });
        };
        let ranges = self.pick_ranges(&view, src);
        let mode = match (to_free, self.rng.random_range(0..3)) {
            (true, 0) => MigrationMode::Replication,
            (false, 0) => MigrationMode::Keys,
            (_, 1) => MigrationMode::Filtered,
            _ => MigrationMode::Auto,
        };
        let kind = if to_free { "to a free proxy" } else { "between nodes" };
        match cluster.try_start_migration(&src.proxy, &dst, &ranges, mode).await {
            Ok(Ok(m)) => self.migration_started(cluster, &m, kind, &ranges).await,
            Ok(Err(refusal)) => self.refused(&format!("migration {kind}"), &refusal),
            Err(e) => self.error("start a migration", e),
        }
    }

    /// Where a migration from `src` goes: a free proxy, or another node of the cluster.
    fn pick_destination(
        &mut self,
        view: &ClusterView,
        proxies: &ProxyList,
        src: &NodeView,
        to_free: bool,
    ) -> Option<String> {
        let candidates: Vec<&str> = if to_free {
            proxies
                .proxies
                .iter()
                .filter(|p| p.state == ProxyState::Free && p.reserved_for.is_none())
                .map(|p| p.address.as_str())
                .collect()
        } else {
            view.nodes.iter().filter(|n| n.proxy != src.proxy).map(|n| n.proxy.as_str()).collect()
        };
        candidates.choose(&mut self.rng).map(|s| s.to_string())
    }

    /// One range (sometimes two) of `src`'s untagged slots, in slot order: usually a part of
    /// no more than `max_range` slots, sometimes a whole range (a node giving away everything
    /// leaves the cluster), but never the last node's last slots.
    fn pick_ranges(&mut self, view: &ClusterView, src: &NodeView) -> Vec<SlotRange> {
        let untagged: Vec<SlotRange> = src.slots.iter().filter(|a| a.tag.is_none()).map(|a| a.range()).collect();
        let held: usize = src.slots.iter().map(|a| a.range().len()).sum();
        let mut ranges = Vec::new();
        let count = if untagged.len() > 1 && self.rng.random_bool(0.2) { 2 } else { 1 };
        let mut pool = untagged;
        for _ in 0..count {
            let k = self.rng.random_range(0..pool.len());
            let r = pool.remove(k);
            let whole = self.rng.random_bool(0.1) && (view.nodes.len() > 2 || r.len() < held);
            let sub = if whole {
                r
            } else {
                let len = self.rng.random_range(1..=r.len().min(self.opts.max_range)) as u16;
                let start = self.rng.random_range(r.start..=r.end + 1 - len);
                SlotRange::new(start, start + len - 1)
            };
            ranges.push(sub);
        }
        ranges.sort_by_key(|r| r.start);
        ranges
    }

    /// Records a migration the broker accepted; now and then aborts it right away, while it
    /// is `pending` at the broker.
    async fn migration_started(&mut self, cluster: &LocalCluster, m: &Migration, kind: &str, ranges: &[SlotRange]) {
        self.operations.add(format!("migration started {kind} ({})", mode_name(m.mode)));
        self.started.push(m.id.clone());
        let slots: usize = ranges.iter().map(SlotRange::len).sum();
        self.log(format!("{} {} -> {} {:?} ({slots} slots, {})", m.id, m.src, m.dst, ranges, mode_name(m.mode)));
        let abortable = self.opts.abort_replication || m.mode != MigrationMode::Replication;
        if self.rng.random_bool(0.15) && abortable {
            self.abort(cluster, &m.id).await;
        }
    }

    fn refused(&mut self, what: &str, r: &ApiRefusal) {
        self.operations.add(format!("{what} refused ({} {})", r.status, r.code));
    }

    async fn abort_one(&mut self, cluster: &LocalCluster) {
        let abort_replication = self.opts.abort_replication;
        let running: Vec<String> = self
            .migrations
            .running()
            .iter()
            .filter(|m| abort_replication || m.mode != MigrationMode::Replication)
            .map(|m| m.id.clone())
            .collect();
        let Some(id) = running.choose(&mut self.rng).cloned() else {
            return self.operations.add("abort skipped: nothing running");
        };
        if self.broker_down() {
            return self.operations.add("abort skipped: broker down");
        }
        self.abort(cluster, &id).await;
    }

    async fn abort(&mut self, cluster: &LocalCluster, id: &str) {
        match cluster.abort_migration(id).await {
            Ok(Ok(m)) if m.phase == MigrationPhase::Aborted => {
                self.log(format!("{id} aborted"));
                self.operations.add("abort accepted")
            }
            Ok(Ok(m)) if m.stopping.is_some() && !m.phase.is_final() => {
                self.log(format!("{id} abort while {}: its source is fenced", phase_name(m.phase)));
                self.operations.add("abort while switching (source fenced)")
            }
            Ok(Ok(m)) => self.operations.add(format!("abort of an ended migration ({})", phase_name(m.phase))),
            Ok(Err(r)) => self.refused("abort", &r),
            Err(e) => self.error("abort", e),
        }
    }

    /// A scale-out by one free proxy, or a scale-in by one node (the broker refuses while a
    /// migration of the cluster runs: that is counted, and is most of the time).
    async fn scale(&mut self, cluster: &LocalCluster) {
        if self.broker_down() {
            return self.operations.add("scale skipped: broker down");
        }
        if self.node_faulted() {
            return self.operations.add("scale skipped: a node fault is on");
        }
        let broker = cluster.broker_client();
        let (view, proxies) = match tokio::try_join!(cluster.view(), broker.proxies()) {
            Ok(v) => v,
            Err(e) => return self.error("read the cluster", e),
        };
        let free = proxies.proxies.iter().filter(|p| p.state == ProxyState::Free).count();
        let add = free > 0 && (view.nodes.len() <= 2 || self.rng.random_bool(0.5));
        let req = if add {
            // With node faults on (a cluster with replicas), the new shard gets a replica too
            // when two proxies are free.
            let replicas = (self.opts.node_faults && free >= 2).then_some(1);
            ScaleRequest { add: Some(1), replicas, ..ScaleRequest::default() }
        } else if view.nodes.len() > 2 {
            let leaving = view.nodes.choose(&mut self.rng).map(|n| n.proxy.clone()).unwrap_or_default();
            ScaleRequest { remove: Some(vec![leaving]), ..ScaleRequest::default() }
        } else {
            return self.operations.add("scale skipped: nothing to do");
        };
        let kind = if add { "scale add" } else { "scale remove" };
        match cluster.try_scale(&req).await {
            Ok(Ok(plan)) => {
                self.log(format!(
                    "{kind} {:?}: {} steps, started {:?}",
                    plan.plan.proxies,
                    plan.plan.total,
                    plan.migrations.iter().map(|m| m.id.as_str()).collect::<Vec<_>>()
                ));
                self.operations.add(format!("{kind} accepted"))
            }
            Ok(Err(r)) => self.refused(kind, &r),
            Err(e) => self.error("scale", e),
        }
    }
}

/// Until no migration is running and no scale plan of `cluster` is: the ids still running
/// at the deadline otherwise (with their records).
pub async fn wait_migrations_ended(cluster: &LocalCluster, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last: Vec<Migration> = Vec::new();
    let mut last_err = None;
    loop {
        match cluster.running_migrations().await {
            Ok(running) if running.is_empty() => {
                let detail: sluice_common::api::ClusterDetail =
                    cluster.broker_client().get(&format!("/clusters/{}", cluster.spec.cluster)).await?;
                let plan_running =
                    detail.scale.as_ref().is_some_and(|p| p.state == sluice_common::api::ScaleState::Running);
                if !plan_running {
                    return Ok(());
                }
            }
            Ok(running) => last = running,
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            let lines: Vec<String> = last
                .iter()
                .map(|m| {
                    format!(
                        "{} {} -> {} {:?} {} phase {} progress {:?} error {:?}",
                        m.id,
                        m.src,
                        m.dst,
                        m.slots,
                        mode_name(m.mode),
                        phase_name(m.phase),
                        m.progress,
                        m.error
                    )
                })
                .collect();
            anyhow::bail!(
                "migrations still running after {timeout:?} (last error {last_err:?}):\n  {}",
                lines.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the node at `addr` is a replica in sync with its master (link up, no sync running).
async fn synced_replica(addr: &str) -> bool {
    match crate::client::call(addr, &["INFO", "replication"]).await {
        Ok(f) => {
            let text = f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            text.contains("role:slave")
                && text.contains("master_link_status:up")
                && text.contains("master_sync_in_progress:0")
        }
        Err(_) => false,
    }
}
