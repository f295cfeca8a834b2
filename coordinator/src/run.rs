//! The loop: one round after another, each reading the broker, probing every proxy in
//! parallel, pushing configs to the proxies that are behind, reporting health and migration
//! progress; between rounds a long poll on the broker's epoch, so a change reaches the
//! proxies at once while a quiet cluster costs one request per interval.
//!
//! A round keeps nothing that the next one needs to be correct: what it remembers (failure
//! counts, which warnings were already logged, when progress was last sent) only makes it
//! quieter or slower to act, never wrong. That is what lets any number of coordinators run.

use crate::broker_client::{BrokerClient, BrokerError};
use crate::config::Settings;
use crate::config_cache::ConfigCache;
use crate::failover::FailoverTracker;
use crate::fence::FenceTracker;
use crate::health::{HealthAction, HealthTracker, Probe};
use crate::metrics::{Metrics, PushKind, PushResult};
use crate::proxy_client::{ProxyClients, RpcError};
use crate::quiet::LogOnce;
use crate::reconcile::{self, MigrationAction, PushDecision, Side};
use crate::share::{self, Share};
use crate::trace;
use futures::future::join_all;
use futures::StreamExt;
use sluice_common::api::{ConfigsResponse, HealthReport, Migration, ProxyConfigEntry, ProxyState};
use sluice_common::model::{ClusterView, Epoch};
use sluice_proto::control::StatusReply;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// A report that only refreshes a migration's progress (same phase) is sent at most this
/// often: each one is a flushed write on the broker. Phase changes go at once.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("setting up the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on --metrics {addr}: {source}")]
    MetricsListen { addr: String, source: std::io::Error },
}

/// What one round did, for tests and debug logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundSummary {
    /// The global epoch the configs were read at.
    pub epoch: Epoch,
    /// Proxies registered.
    pub proxies: usize,
    /// This coordinator's proxies whose last Status answered (this round's for the busy
    /// ones, at most `--idle-status-ms` old for the idle ones).
    pub answered: usize,
    /// SetConfig calls that changed a proxy's config.
    pub pushed: usize,
    /// AdvanceEpoch calls that moved a proxy to the epoch (its config was the same but for
    /// the epoch).
    pub advanced: usize,
    /// Health reports the broker accepted.
    pub health_reports: usize,
    /// Migration calls (progress, commit, fail) the broker accepted.
    pub migration_reports: usize,
    /// Failovers the broker made at this coordinator's request.
    pub failovers: usize,
}

/// One coordinator: its clients and its (disposable) memory.
pub struct Coordinator {
    settings: Settings,
    broker: BrokerClient,
    proxies: ProxyClients,
    health: HealthTracker,
    failover: FailoverTracker,
    fence: FenceTracker,
    quiet: LogOnce,
    /// When progress was last sent per migration (`cluster/id`).
    progress_sent: HashMap<String, Instant>,
    /// Since when the broker has not answered, if it does not.
    broker_down_since: Option<Instant>,
    metrics: Arc<Metrics>,
    /// The configs and migrations last read, reused while the epoch stands.
    cache: ConfigCache,
    /// What each proxy was last seen holding, by address.
    seen: HashMap<String, Seen>,
    /// The coordinators sharing the proxies, and when this one last said it is live.
    share: Share,
    heartbeat_at: Option<Instant>,
}

/// What this coordinator last saw of one proxy. Only ever makes it skip a call it would have
/// made: a proxy it knows nothing about gets a Status call.
#[derive(Debug, Default)]
struct Seen {
    /// The epoch the proxy holds, from its last Status or SetConfig answer; `None`: unknown.
    held: Option<Epoch>,
    /// The version of the config it holds (`ProxyConfig::version`), from the same answers;
    /// `None`: unknown, so the next push sends the whole config.
    version: Option<String>,
    /// Its last Status answer and when; dropped when a Status call got no answer.
    status: Option<(Instant, StatusReply)>,
}

/// Runs the coordinator until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), CoordinatorError> {
    let coordinator = Coordinator::new(settings)?;
    if let Some(addr) = &coordinator.settings.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| CoordinatorError::MetricsListen { addr: addr.clone(), source })?;
        tracing::info!(metrics = %addr, "metrics serving");
        let metrics = coordinator.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, metrics).await {
                tracing::error!(error = %e, "metrics service stopped");
            }
        });
    }
    coordinator.run_until(shutdown).await;
    Ok(())
}

impl Coordinator {
    pub fn new(settings: Settings) -> Result<Coordinator, CoordinatorError> {
        let broker = BrokerClient::new(&settings.broker, settings.api_token.clone())?;
        let settings_id = settings.id.clone();
        Ok(Coordinator {
            proxies: ProxyClients::new(settings.rpc_timeout),
            health: HealthTracker::new(settings.failure_threshold),
            failover: FailoverTracker::default(),
            fence: FenceTracker::default(),
            settings,
            broker,
            quiet: LogOnce::new(),
            progress_sent: HashMap::new(),
            broker_down_since: None,
            metrics: Arc::new(Metrics::new()?),
            cache: ConfigCache::default(),
            seen: HashMap::new(),
            share: Share::new(settings_id),
            heartbeat_at: None,
        })
    }

    /// Rounds until `shutdown` completes. A round under way is finished first (its calls
    /// are bounded by `--rpc-timeout-ms`), so the proxies are left with what the round
    /// decided and its reports reach the broker; a wait between rounds is cut short.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(
            broker = %self.settings.broker,
            interval_ms = self.settings.interval.as_millis() as u64,
            rpc_timeout_ms = self.settings.rpc_timeout.as_millis() as u64,
            failure_threshold = self.settings.failure_threshold,
            "coordinator started"
        );
        let mut backoff = Backoff::new(self.settings.interval, self.settings.max_backoff);
        // The epoch the last long poll answered: the configs read before are reused if it is
        // theirs.
        let mut known_epoch: Option<Epoch> = None;
        loop {
            let (round, stopping) = self.round_or_stop(known_epoch.take(), shutdown.as_mut()).await;
            if stopping {
                break;
            }
            let wait = match round {
                Ok(summary) => {
                    self.broker_answered();
                    backoff.reset();
                    tracing::debug!(?summary, "round done");
                    let Some((polled, wait)) = self.poll_epoch(summary.epoch, shutdown.as_mut(), &mut backoff).await
                    else {
                        break;
                    };
                    known_epoch = polled;
                    wait
                }
                Err(e) => {
                    self.broker_failed(&e);
                    backoff.next_delay()
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        self.leave().await;
        tracing::info!("coordinator stopped");
    }

    /// One round, counted in the metrics; `true` with it when `shutdown` completed meanwhile
    /// (the round was finished first).
    async fn round_or_stop(
        &mut self,
        epoch: Option<Epoch>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> (Result<RoundSummary, BrokerError>, bool) {
        let started = Instant::now();
        let mut stopping = false;
        let round = {
            let round = self.round_at(epoch);
            tokio::pin!(round);
            tokio::select! {
                biased;
                r = &mut round => r,
                () = &mut shutdown => {
                    tracing::info!("stopping after the current round");
                    stopping = true;
                    round.await
                }
            }
        };
        match &round {
            Ok(summary) => self.metrics.round(summary, started.elapsed()),
            Err(_) => self.metrics.broker_unreachable(),
        }
        (round, stopping)
    }

    /// The long poll after a round read at `epoch`: the epoch the broker answered (if it did)
    /// and how long to wait before the next round; `None` when `shutdown` completed.
    async fn poll_epoch(
        &mut self,
        epoch: Epoch,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
        backoff: &mut Backoff,
    ) -> Option<(Option<Epoch>, Duration)> {
        let started = Instant::now();
        let polled = tokio::select! {
            biased;
            () = &mut shutdown => return None,
            r = self.broker.wait_epoch(epoch, self.settings.interval) => r,
        };
        Some(match polled {
            // The epoch moved: go at once.
            Ok(now) if now > epoch => (Some(now), Duration::ZERO),
            // The poll timed out, as it should after an interval; a broker that answered
            // early without news must not make the loop spin.
            Ok(now) => (Some(now), self.settings.interval.saturating_sub(started.elapsed())),
            Err(e) => {
                self.broker_failed(&e);
                (None, backoff.next_delay())
            }
        })
    }

    /// Leaves the coordinators: the others take this one's clusters over now instead of when
    /// its heartbeat expires.
    async fn leave(&self) {
        if self.heartbeat_at.is_none() {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(1), self.broker.leave(self.share.me())).await {
            Ok(Ok(())) => tracing::debug!(id = self.share.me(), "left the coordinators"),
            Ok(Err(e)) => tracing::debug!(error = %e, "could not deregister; the heartbeat expires by itself"),
            Err(_) => tracing::debug!("deregistering timed out; the heartbeat expires by itself"),
        }
    }

    /// Says this coordinator is live (every quarter of the heartbeat's lifetime) and takes the
    /// list of live ones. A broker that refuses or does not know the call leaves this
    /// coordinator alone with everything, which is safe (see [`crate::share`]).
    async fn heartbeat(&mut self) {
        let ttl = self.settings.heartbeat_ttl;
        if self.heartbeat_at.is_some_and(|t| t.elapsed() < ttl / 4) {
            return;
        }
        let live = match self.broker.heartbeat(self.share.me(), ttl).await {
            Ok(live) => {
                self.quiet.clear("heartbeat", "");
                self.heartbeat_at = Some(Instant::now());
                live
            }
            Err(e) => {
                if self.quiet.first("heartbeat", "", &e.to_string()) {
                    tracing::warn!(error = %e, "coordinator heartbeat refused; taking every proxy");
                }
                self.heartbeat_at = None;
                Vec::new()
            }
        };
        if self.share.set_live(live) {
            tracing::info!(id = self.share.me(), coordinators = ?self.share.live(), "coordinators sharing the proxies changed");
        }
    }

    /// One round. `Err` only when the broker could not be read: then nothing was done.
    pub async fn round(&mut self) -> Result<RoundSummary, BrokerError> {
        self.round_at(None).await
    }

    /// One round, the broker's epoch being `epoch` if known (then configs read at it are
    /// reused). `Err` only when the broker could not be read: then nothing was done.
    pub async fn round_at(&mut self, epoch: Option<Epoch>) -> Result<RoundSummary, BrokerError> {
        let result = self.round_inner(epoch).await;
        if result.is_err() {
            self.cache.clear();
        }
        result
    }

    async fn round_inner(&mut self, epoch: Option<Epoch>) -> Result<RoundSummary, BrokerError> {
        self.heartbeat().await;
        let (configs, migrations) = self.read_broker(epoch).await?;
        self.forget_the_gone(&configs, &migrations);
        let mine: Vec<&ProxyConfigEntry> = configs.configs.iter().filter(|e| self.share.owns(share::key(e))).collect();
        let mut summary = RoundSummary { epoch: configs.epoch, proxies: mine.len(), ..RoundSummary::default() };

        let now = Instant::now();
        let plans: Vec<(&ProxyConfigEntry, Call)> = mine.iter().map(|e| (*e, self.call_for(e, now))).collect();
        let probed: Vec<Probed<'_>> = {
            let (clients, metrics) = (&self.proxies, &*self.metrics);
            // Collected first: a closure inside the stream would make this future's type
            // higher-ranked, which `tokio::spawn` cannot take.
            let calls: Vec<_> = plans.into_iter().map(|(entry, call)| probe(clients, metrics, entry, call)).collect();
            futures::stream::iter(calls).buffer_unordered(self.settings.push_concurrency).collect().await
        };
        let health_actions = self.take_probes(probed, &mut summary);

        // What the decisions below read: the last answer of each of this coordinator's
        // proxies (this round's for the busy ones, at most --idle-status-ms old otherwise).
        let statuses: HashMap<String, StatusReply> = mine
            .iter()
            .filter_map(|e| {
                let (_, status) = self.seen.get(&e.proxy.address)?.status.as_ref()?;
                Some((e.proxy.address.clone(), status.clone()))
            })
            .collect();
        summary.answered = statuses.len();
        let migrations: Vec<Migration> =
            migrations.iter().filter(|m| self.share.owns(share::cluster_key(&m.cluster))).cloned().collect();

        summary.health_reports = self.report_health(health_actions).await;
        summary.migration_reports = self.report_migrations(&migrations, &statuses, configs.epoch).await;
        summary.failovers = self.fail_over(&configs, &statuses).await;
        Ok(summary)
    }

    /// The configs (reused while the broker's epoch is `epoch`) and the migrations (see
    /// [`ConfigCache::migrations_at`]).
    async fn read_broker(
        &mut self,
        epoch: Option<Epoch>,
    ) -> Result<(Arc<ConfigsResponse>, Arc<Vec<Migration>>), BrokerError> {
        let configs = match self.cache.configs_at(epoch) {
            Some(c) => c,
            None => {
                let read = self.broker.configs().await?;
                self.cache.set_configs(read)
            }
        };
        let now = Instant::now();
        let migrations = match self.cache.migrations_at(configs.epoch, now) {
            Some(m) => m,
            None => {
                let read = self.broker.migrations().await?;
                self.cache.set_migrations(read, configs.epoch, now)
            }
        };
        Ok((configs, migrations))
    }

    /// Remembers what each proxy answered this round (counted in `summary`) and decides the
    /// health reports it calls for.
    fn take_probes(&mut self, probed: Vec<Probed<'_>>, summary: &mut RoundSummary) -> Vec<(String, HealthAction)> {
        let mut health_actions = Vec::new();
        let now = Instant::now();
        for p in probed {
            self.log_push(&p);
            if let Some(PushOutcome::Applied { changed: true, kind, .. }) = &p.push {
                match kind {
                    PushKind::Full => summary.pushed += 1,
                    PushKind::EpochOnly => summary.advanced += 1,
                }
            }
            let address = p.entry.proxy.address.as_str();
            let control = p.entry.proxy.control_address.as_str();
            let broker_failed = self.cache.state(address, p.entry.proxy.state) == ProxyState::Failed;
            let seen = self.seen.entry(address.to_string()).or_default();
            match &p.push {
                Some(PushOutcome::Applied { held, version, .. }) => {
                    (seen.held, seen.version) = (Some(*held), version.clone())
                }
                Some(_) => (seen.held, seen.version) = (None, None),
                None => {}
            }
            let Some(status) = p.status else { continue };
            let action = match &status {
                Ok(_) => self.health.observe(address, control, Probe::Answered, broker_failed),
                Err(why) => {
                    let action = self.health.observe(address, control, Probe::Failed(why), broker_failed);
                    tracing::debug!(proxy = address, control, failures = self.health.failures(address), error = %why, "status call failed");
                    action
                }
            };
            if let Some(action) = action {
                health_actions.push((address.to_string(), action));
            }
            let seen = self.seen.entry(address.to_string()).or_default();
            match status {
                Ok(status) => {
                    if p.push.is_none() {
                        seen.held = Some(status.epoch);
                        seen.version = known_version(&status.config_version);
                    }
                    seen.status = Some((now, status.clone()));
                    self.log_node_health(address, &status);
                }
                Err(_) => (seen.held, seen.version, seen.status) = (None, None, None),
            }
        }
        health_actions
    }

    /// Asks for the failovers that are due (see [`crate::failover`]), each conditioned on the
    /// epoch of this round's configs; answers how many the broker made.
    async fn fail_over(&mut self, configs: &ConfigsResponse, statuses: &HashMap<String, StatusReply>) -> usize {
        let mut clusters: Vec<&ClusterView> = Vec::new();
        for c in configs.configs.iter().filter_map(|e| e.config.cluster.as_ref()) {
            if !self.share.owns(share::cluster_key(&c.name)) {
                continue;
            }
            if !clusters.iter().any(|k| k.name == c.name) {
                clusters.push(c);
            }
        }
        let mut decisions = self.failover.decide(&clusters, statuses, self.settings.failover_after, Instant::now());
        decisions.extend(FailoverTracker::handovers_due(&clusters, statuses, configs.epoch));
        let mut made = 0;
        for d in decisions {
            match self.broker.failover(&d.cluster, &d.request, configs.epoch).await {
                Ok(_) => {
                    made += 1;
                    tracing::warn!(
                        cluster = %d.cluster,
                        master = %d.request.master,
                        promoted = d.request.promote.as_deref().unwrap_or(""),
                        reason = d.request.reason.as_deref().unwrap_or(""),
                        "failover made"
                    );
                    self.failover.forget(&d.request.master);
                }
                // Another coordinator (or another change) came first; the next round decides again.
                Err(e) if e.status() == Some(412) || e.is_conflict() => {
                    tracing::debug!(cluster = %d.cluster, master = %d.request.master, error = %e, "failover not made");
                }
                Err(e) => {
                    tracing::warn!(cluster = %d.cluster, master = %d.request.master, error = %e, "failover request failed")
                }
            }
        }
        made
    }

    /// What to ask `entry`'s proxy this round. A busy proxy (a migration or a handover in its
    /// config, a failure being counted, its node not answering) gets a Status call every
    /// round, as do proxies this coordinator knows nothing about; an idle one every
    /// `--idle-status-ms`, and in between only the SetConfig it needs when the epoch moves.
    fn call_for(&self, entry: &ProxyConfigEntry, now: Instant) -> Call {
        let address = entry.proxy.address.as_str();
        let Some(seen) = self.seen.get(address) else { return Call::Status };
        let (Some(held), Some((at, status))) = (seen.held, &seen.status) else { return Call::Status };
        let busy = !entry.config.migrations.is_empty()
            || entry.config.cluster.as_ref().is_some_and(|c| c.nodes.iter().any(|n| n.handover.is_some()))
            || self.health.failures(address) > 0
            || self.cache.state(address, entry.proxy.state) == ProxyState::Failed
            || !status.node_healthy
            || status.handover_ready_epoch != 0
            || !status.migrations.is_empty();
        // Each proxy's idle period is shortened by its own share of up to half the period, so
        // proxies first asked in the same round drift apart: otherwise every idle Status comes
        // due in one round, and a change arriving then waits for a thousand calls.
        let spread = (share::weight(address, "") >> 11) as f64 / (1u64 << 53) as f64;
        let skew = self.settings.idle_status.mul_f64(spread / 2.0);
        if busy || now.duration_since(*at) + skew >= self.settings.idle_status {
            Call::Status
        } else if held < entry.config.epoch {
            Call::Push { held, version: seen.version.clone() }
        } else {
            Call::Nothing
        }
    }

    /// Drops what is remembered about proxies and migrations the broker no longer lists.
    fn forget_the_gone(&mut self, configs: &ConfigsResponse, migrations: &[Migration]) {
        let addresses: HashSet<&str> = configs.configs.iter().map(|e| e.proxy.address.as_str()).collect();
        let controls: HashSet<&str> = configs.configs.iter().map(|e| e.proxy.control_address.as_str()).collect();
        self.health.retain(|a| addresses.contains(a));
        self.seen.retain(|a, _| addresses.contains(a.as_str()));
        self.proxies.retain(|c| controls.contains(c));
        let keys: HashSet<String> = migrations.iter().map(migration_key).collect();
        self.progress_sent.retain(|k, _| keys.contains(k));
        let live: HashSet<String> = keys.into_iter().chain(addresses.iter().map(|a| a.to_string())).collect();
        self.quiet.retain_subjects(&live);
    }

    /// Logs a failed push once per distinct failure (the push is retried every round);
    /// successful pushes were logged as they happened, in [`probe`].
    fn log_push(&mut self, p: &Probed<'_>) {
        let proxy = p.entry.proxy.address.as_str();
        match &p.push {
            None => {}
            Some(PushOutcome::Failed { from, to, error }) => {
                if self.quiet.first("push", proxy, &format!("{to} {error}")) {
                    tracing::warn!(proxy, from_epoch = from, to_epoch = to, %error, "config push failed; retrying every round");
                } else {
                    tracing::debug!(proxy, to_epoch = to, %error, "config push failed again");
                }
            }
            Some(_) => {
                self.quiet.clear("push", proxy);
            }
        }
    }

    fn log_node_health(&mut self, proxy: &str, status: &StatusReply) {
        match self.health.node_health_changed(proxy, status.node_healthy) {
            Some(false) => {
                tracing::warn!(proxy, node = %status.node, error = %status.node_error, "proxy's node does not answer")
            }
            Some(true) => tracing::info!(proxy, node = %status.node, "proxy's node answers again"),
            None => {}
        }
    }

    /// Sends the health reports, in parallel; answers how many the broker took.
    async fn report_health(&mut self, actions: Vec<(String, HealthAction)>) -> usize {
        let broker = &self.broker;
        let results = join_all(actions.into_iter().map(|(address, action)| async move {
            let report = match &action {
                HealthAction::MarkFailed { reason } => HealthReport { failed: true, reason: Some(reason.clone()) },
                HealthAction::MarkRecovered => HealthReport { failed: false, reason: None },
            };
            let result = broker.set_health(&address, &report).await;
            (address, action, result)
        }))
        .await;
        let mut accepted = 0;
        for (proxy, action, result) in results {
            match result {
                Ok(info) => {
                    accepted += 1;
                    self.cache.set_state(&proxy, info.state);
                    self.quiet.clear("health", &proxy);
                    match action {
                        HealthAction::MarkFailed { reason } => {
                            tracing::info!(proxy = %proxy, %reason, "proxy reported failed")
                        }
                        HealthAction::MarkRecovered => tracing::info!(proxy = %proxy, "proxy reported recovered"),
                    }
                }
                Err(e) if e.is_not_found() => tracing::debug!(proxy = %proxy, "proxy deregistered meanwhile"),
                Err(e) => {
                    if self.quiet.first("health", &proxy, &e.to_string()) {
                        tracing::warn!(proxy = %proxy, error = %e, "health report failed; retrying every round");
                    }
                }
            }
        }
        accepted
    }

    /// Decides and sends the migration reports; answers how many calls the broker took.
    /// `epoch`: the global epoch the configs were read at.
    async fn report_migrations(
        &mut self,
        migrations: &[Migration],
        statuses: &HashMap<String, StatusReply>,
        epoch: Epoch,
    ) -> usize {
        let now = Instant::now();
        let fence_due: HashMap<String, String> = self
            .fence
            .decide(migrations, statuses, self.settings.fence_after, now)
            .into_iter()
            .map(|(m, why)| (migration_key(m), why))
            .collect();
        let mut plans = Vec::new();
        for m in migrations {
            let key = migration_key(m);
            let sides = [(true, reconcile::side(m, true, statuses)), (false, reconcile::side(m, false, statuses))];
            for (is_source, side) in &sides {
                if let Side::Unreadable(why) = side {
                    let subject = if *is_source { "task-src" } else { "task-dst" };
                    if self.quiet.first(subject, &key, why) {
                        tracing::warn!(migration = %m.id, cluster = %m.cluster, %why, "cannot read a proxy's migration task");
                    }
                }
            }
            let due = self.progress_sent.get(&key).is_none_or(|t| now.duration_since(*t) >= PROGRESS_EVERY);
            let mut actions = match reconcile::assume_committed_epoch(m, epoch) {
                Some(with_epoch) => reconcile::decide(&with_epoch, &sides[0].1, &sides[1].1, due),
                None => reconcile::decide(m, &sides[0].1, &sides[1].1, due),
            };
            if let Some(source_epoch) = reconcile::confirm_stop(m, statuses) {
                let error = format!("{} stopped its switch attempts without promoting {}", m.src, m.dst_node);
                actions.push(MigrationAction::Fail { error, source_stopped_epoch: Some(source_epoch) });
            } else if let Some(reason) = fence_due.get(&key) {
                actions.push(MigrationAction::Fail { error: reason.clone(), source_stopped_epoch: None });
            }
            if !actions.is_empty() {
                plans.push((m, actions));
            }
        }
        let broker = &self.broker;
        let results = join_all(
            plans.into_iter().map(|(m, actions)| execute(broker, m, actions).instrument(trace::migration_span(m))),
        )
        .await;

        let mut accepted = 0;
        for (m, done) in results {
            let key = migration_key(m);
            for (action, result) in done {
                match result {
                    Ok(after) => {
                        accepted += 1;
                        self.quiet.clear("migration", &key);
                        log_migration_report(m, &action, &after);
                        if matches!(action, MigrationAction::Progress(_)) {
                            self.progress_sent.insert(key.clone(), now);
                        }
                    }
                    Err(e) if e.is_conflict() || e.is_not_found() => {
                        // Someone else was faster (another coordinator, an operator's abort,
                        // a deleted cluster): this round's read is old. The next one is not.
                        tracing::debug!(migration = %m.id, cluster = %m.cluster, error = %e, "migration report refused as stale");
                    }
                    Err(e) => {
                        if self.quiet.first("migration", &key, &e.to_string()) {
                            tracing::warn!(migration = %m.id, cluster = %m.cluster, error = %e, "migration report failed; retrying every round");
                        }
                    }
                }
            }
        }
        accepted
    }

    fn broker_failed(&mut self, e: &BrokerError) {
        if self.broker_down_since.is_none() {
            self.broker_down_since = Some(Instant::now());
            if e.is_outage() {
                tracing::warn!(broker = %self.broker.base(), error = %e, "broker unavailable; proxies keep their configs, retrying");
            } else {
                tracing::warn!(broker = %self.broker.base(), error = %e, "broker refuses the coordinator's reads; retrying");
            }
        } else {
            tracing::debug!(error = %e, "broker still unavailable");
        }
    }

    fn broker_answered(&mut self) {
        if let Some(since) = self.broker_down_since.take() {
            tracing::info!(broker = %self.broker.base(), down_ms = since.elapsed().as_millis() as u64, "broker available again");
        }
    }
}

fn migration_key(m: &Migration) -> String {
    format!("{}/{}", m.cluster, m.id)
}

/// Makes one migration's calls in order; the first refusal ends the list (a commit after a
/// refused `switched` report would be refused too).
async fn execute<'m>(
    broker: &BrokerClient,
    m: &'m Migration,
    actions: Vec<MigrationAction>,
) -> (&'m Migration, Vec<(MigrationAction, Result<Migration, BrokerError>)>) {
    let mut done = Vec::new();
    for action in actions {
        let result = match &action {
            MigrationAction::Progress(r) => broker.report_progress(&m.cluster, &m.id, r).await,
            MigrationAction::Commit { epoch } => broker.commit(&m.cluster, &m.id, *epoch).await,
            MigrationAction::Fail { error, source_stopped_epoch } => {
                broker.fail(&m.cluster, &m.id, error, *source_stopped_epoch).await
            }
        };
        let refused = result.is_err();
        done.push((action, result));
        if refused {
            break;
        }
    }
    (m, done)
}

/// Logs inside the migration's span, which names it (`trace::migration_span`).
fn log_migration_report(m: &Migration, action: &MigrationAction, after: &Migration) {
    let _span = trace::migration_span(m).entered();
    match action {
        MigrationAction::Progress(r) if r.phase != m.phase => tracing::info!(
            from = ?m.phase, phase = ?r.phase, at = ?r.at, progress = ?r.progress,
            error = ?r.error, "migration phase reported"
        ),
        MigrationAction::Progress(r) if r.error.is_some() => tracing::info!(
            phase = ?r.phase, error = ?r.error, "migration error reported"
        ),
        MigrationAction::Progress(r) => {
            tracing::debug!(phase = ?r.phase, progress = ?r.progress, "migration progress reported")
        }
        MigrationAction::Commit { epoch } => tracing::info!(
            migration_epoch = epoch, phase = ?after.phase, "migration committed"
        ),
        MigrationAction::Fail { error, source_stopped_epoch: None } if !after.phase.is_final() => {
            tracing::warn!(%error, "migration stopped while switching: its source is fenced")
        }
        MigrationAction::Fail { error, .. } => {
            tracing::info!(%error, phase = ?after.phase, "migration reported failed")
        }
    }
}

/// What one proxy showed this round.
struct Probed<'a> {
    entry: &'a ProxyConfigEntry,
    /// The Status reply, or why there is none (for the failure report); `None`: not asked.
    status: Option<Result<StatusReply, String>>,
    push: Option<PushOutcome>,
}

/// What to ask one proxy this round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// Status, then SetConfig if it is behind.
    Status,
    /// It was seen holding `held` (of config version `version`, if known), older than its
    /// config: push straight away (one call per proxy when the epoch moves, not two).
    Push { held: Epoch, version: Option<String> },
    /// Nothing: it holds its config and its last Status is recent enough.
    Nothing,
}

enum PushOutcome {
    /// The proxy took the config or the epoch (`changed`: it was new to it); it now holds
    /// `held`, of config version `version` (if it said).
    Applied {
        changed: bool,
        held: Epoch,
        version: Option<String>,
        kind: PushKind,
    },
    /// FAILED_PRECONDITION: the proxy holds a newer config than this round read.
    Stale {
        message: String,
    },
    Failed {
        from: Epoch,
        to: Epoch,
        error: String,
    },
}

/// A version a proxy reported; an empty one (no config yet, or a proxy that predates
/// versions) is unknown.
fn known_version(version: &str) -> Option<String> {
    (!version.is_empty()).then(|| version.to_string())
}

/// Status, then a push if the proxy is behind (or only one of them, as `call` says). Every
/// call is bounded by the RPC timeout.
async fn probe<'a>(clients: &ProxyClients, metrics: &Metrics, entry: &'a ProxyConfigEntry, call: Call) -> Probed<'a> {
    let control = entry.proxy.control_address.as_str();
    match call {
        Call::Nothing => return Probed { entry, status: None, push: None },
        Call::Push { held, version } => {
            let push = push(clients, metrics, entry, held, version.as_deref()).await;
            return Probed { entry, status: None, push };
        }
        Call::Status => {}
    }
    let status = match clients.status(control).await {
        Ok(s) if !s.proxy.is_empty() && s.proxy != entry.proxy.address => {
            // Another proxy on this control address (a stale registration, a reused port):
            // this one is not there, and the other must not get its config.
            Err(format!("control address {control} is answered by proxy {}", s.proxy))
        }
        Ok(s) => Ok(s),
        Err(e) => Err(e.to_string()),
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            metrics.status_failed();
            return Probed { entry, status: Some(Err(e)), push: None };
        }
    };
    let push = push(clients, metrics, entry, status.epoch, Some(status.config_version.as_str())).await;
    Probed { entry, status: Some(Ok(status)), push }
}

/// Brings a proxy holding `held` (of config version `version`) to its config if it is behind:
/// only the epoch when it holds the config's version already, else the whole config; what
/// came of it.
async fn push(
    clients: &ProxyClients,
    metrics: &Metrics,
    entry: &ProxyConfigEntry,
    held: Epoch,
    version: Option<&str>,
) -> Option<PushOutcome> {
    let proxy = entry.proxy.address.as_str();
    let (from, to) = match reconcile::push_decision(held, entry.config.epoch) {
        PushDecision::Push { from, to } => (from, to),
        PushDecision::ProxyAhead { proxy: held, config } => {
            tracing::debug!(proxy, held_epoch = held, config_epoch = config, "proxy is ahead of the config read");
            return None;
        }
        PushDecision::UpToDate => return None,
    };
    let same_config = !entry.config_version.is_empty() && version == Some(entry.config_version.as_str());
    let advanced = if same_config { advance_epoch(clients, metrics, entry, from, to).await } else { None };
    let outcome = match advanced {
        Some(outcome) => outcome,
        None => set_config(clients, metrics, entry, from, to).await,
    };
    // Logged here, as it happens: the round goes on until its slowest proxy answers.
    match &outcome {
        PushOutcome::Applied { changed: true, held, kind: PushKind::Full, .. } => {
            let migrations = trace::migration_ids(&entry.config);
            tracing::info!(proxy, from_epoch = from, to_epoch = to, held_epoch = held, %migrations, "config pushed")
        }
        PushOutcome::Applied { changed: true, held, kind: PushKind::EpochOnly, .. } => {
            tracing::debug!(
                proxy,
                from_epoch = from,
                to_epoch = to,
                held_epoch = held,
                "epoch pushed, config unchanged"
            )
        }
        PushOutcome::Applied { .. } => tracing::debug!(proxy, epoch = to, "proxy already held the config"),
        PushOutcome::Stale { message } => {
            tracing::debug!(proxy, epoch = to, %message, "proxy holds a newer config; nothing to push")
        }
        PushOutcome::Failed { .. } => {}
    }
    Some(outcome)
}

/// SetConfig: the whole config.
async fn set_config(
    clients: &ProxyClients,
    metrics: &Metrics,
    entry: &ProxyConfigEntry,
    from: Epoch,
    to: Epoch,
) -> PushOutcome {
    let sent = Instant::now();
    let outcome = match serde_json::to_string(&entry.config) {
        Err(e) => PushOutcome::Failed { from, to, error: format!("config not serialisable: {e}") },
        Ok(json) => match clients.set_config(&entry.proxy.control_address, to, json).await {
            Ok(reply) => PushOutcome::Applied {
                changed: reply.changed,
                held: reply.epoch,
                version: known_version(&reply.config_version),
                kind: PushKind::Full,
            },
            Err(e) => refused(e, from, to),
        },
    };
    metrics.push(push_result(&outcome), PushKind::Full, sent.elapsed());
    outcome
}

/// AdvanceEpoch: only the epoch, the proxy holding the config's version already. `None` when
/// the whole config must follow: the proxy holds another version after all (another
/// coordinator pushed meanwhile, it restarted), or it predates the call.
async fn advance_epoch(
    clients: &ProxyClients,
    metrics: &Metrics,
    entry: &ProxyConfigEntry,
    from: Epoch,
    to: Epoch,
) -> Option<PushOutcome> {
    let sent = Instant::now();
    let outcome = match clients.advance_epoch(&entry.proxy.control_address, to, entry.config_version.clone()).await {
        Ok(reply) if reply.matched => PushOutcome::Applied {
            changed: reply.changed,
            held: reply.epoch,
            version: known_version(&reply.config_version),
            kind: PushKind::EpochOnly,
        },
        Ok(_) => {
            metrics.epoch_only_mismatch();
            return None;
        }
        Err(e) if e.is_unimplemented() => return None,
        Err(e) => refused(e, from, to),
    };
    metrics.push(push_result(&outcome), PushKind::EpochOnly, sent.elapsed());
    Some(outcome)
}

/// A push the proxy refused or did not answer.
fn refused(e: RpcError, from: Epoch, to: Epoch) -> PushOutcome {
    if e.is_stale_config() {
        PushOutcome::Stale { message: e.to_string() }
    } else {
        PushOutcome::Failed { from, to, error: e.to_string() }
    }
}

fn push_result(outcome: &PushOutcome) -> PushResult {
    match outcome {
        PushOutcome::Applied { changed: true, .. } => PushResult::Applied,
        PushOutcome::Applied { .. } => PushResult::Unchanged,
        PushOutcome::Stale { .. } => PushResult::Stale,
        PushOutcome::Failed { .. } => PushResult::Failed,
    }
}

/// Doubling waits while the broker does not answer, from the interval up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff { initial, max, next: initial }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn backoff_cap_is_never_below_the_start() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(500));
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
