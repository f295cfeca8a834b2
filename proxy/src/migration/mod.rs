//! Migrations as this proxy carries them out (seeds: slots-migration.md, partition-move.md).
//!
//! Every migration in the proxy's config in which it is the source or the destination gets a
//! [`Task`]: [`source::run`] or [`destination::run`]. Tasks report their phase in `Status`;
//! the coordinator turns that into the broker's record and commits after the switch. The
//! broker's commit removes the migration from the config; the tasks then wait until the
//! garbage collector ([`gc`]) has deleted the keys their node no longer serves, and end.

pub mod destination;
pub mod error;
pub mod filtered;
pub mod gc;
pub mod keys_mode;
pub mod leftover;
pub mod node;
pub mod source;

use crate::migration::error::{refused, MigrationError};
use crate::state::{MigrationTasks, Shared};
use bytes::Bytes;
use sluice_common::model::{MigrationMeta, MigrationMode, MigrationPhase, ProxyConfig, SlotRange};
use sluice_common::resp::Command;
use sluice_common::slot::SLOT_COUNT;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

pub use sluice_common::model::MigrationPhase as Phase;

/// How long an ended task stays listed in `Status`, so every coordinator sees how it ended.
const KEEP_ENDED: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Destination => "destination",
        }
    }
}

/// Where a migration stands in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Its slots are tagged migrating/importing: not committed yet.
    Tagged,
    /// Committed (tags cleared, slots moved), still named in the config: garbage to delete.
    Committed,
    /// No longer in the config: done, or aborted/failed before the switch.
    Gone,
}

fn stage_in(config: &ProxyConfig, id: &str) -> Stage {
    if !config.migrations.iter().any(|m| m.id == id) {
        Stage::Gone
    } else if config.is_tagged(id) {
        Stage::Tagged
    } else {
        Stage::Committed
    }
}

#[derive(Debug, Clone)]
struct TaskStatus {
    phase: Phase,
    progress: serde_json::Map<String, serde_json::Value>,
    error: Option<String>,
    ended_at: Option<Instant>,
}

/// One migration as this proxy runs it.
pub struct Task {
    pub meta: MigrationMeta,
    pub role: Role,
    status: Mutex<TaskStatus>,
    /// Where the migration stands in the config; only moves forward.
    stage: watch::Sender<Stage>,
    /// Whether the broker has recorded `switching` (`switch_allowed` in the config); only
    /// goes from false to true.
    switch_allowed: watch::Sender<bool>,
    /// Whether the broker fenced the source (`fenced` in the config: a stop was asked for
    /// while switching): no further switch attempt. Only goes from false to true.
    fenced: watch::Sender<bool>,
    /// Serialises `TmpSwitch` calls on the destination.
    pub switch_lock: tokio::sync::Mutex<()>,
    /// On a filtered destination: switch attempts up to this number are refused (the source
    /// asked whether they switched, and they had not: [`filtered::switched_or_refuse`]).
    refused_up_to: std::sync::atomic::AtomicU64,
    /// On a replication destination: the source node's replication id, seen while our node
    /// followed it in this run of the task (the promotion makes it our node's previous id).
    source_replid: Mutex<Option<String>>,
    /// The garbage collector's count of deleted keys when the task started.
    pub gc_deleted_at_start: u64,
}

/// What `Status` lists per task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskReport {
    pub id: String,
    pub epoch: u64,
    pub phase: Phase,
    pub progress: serde_json::Value,
    pub error: Option<String>,
    pub is_source: bool,
}

impl Task {
    fn new(meta: MigrationMeta, role: Role, gc_deleted_at_start: u64) -> Task {
        Task {
            gc_deleted_at_start,
            switch_allowed: watch::channel(meta.switch_allowed).0,
            fenced: watch::channel(meta.fenced).0,
            meta,
            role,
            status: Mutex::new(TaskStatus {
                phase: Phase::Pending,
                progress: serde_json::Map::new(),
                error: None,
                ended_at: None,
            }),
            stage: watch::channel(Stage::Tagged).0,
            switch_lock: tokio::sync::Mutex::new(()),
            refused_up_to: std::sync::atomic::AtomicU64::new(0),
            source_replid: Mutex::new(None),
        }
    }

    /// The span every log line about this migration runs in: its task, and the control calls
    /// (TmpSwitch, READY, SWITCHED) that act on it, so `grep id=m-7` follows one migration
    /// through this proxy's log (and the broker's and the coordinator's, which use the same
    /// span name and field).
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!("migration", id = %self.meta.id, role = %self.role.as_str())
    }

    fn status(&self) -> std::sync::MutexGuard<'_, TaskStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.status().phase
    }

    /// Moves to `phase` (never backwards; an ended task stays ended) and logs the change once.
    /// When each phase was entered is reported in `progress.phase_times`.
    pub fn set_phase(&self, phase: Phase) {
        let mut st = self.status();
        if st.phase.is_final() || phase <= st.phase {
            return;
        }
        // The id and role come from the task's span (`Task::span`), which every caller runs in.
        tracing::info!(from = ?st.phase, to = ?phase, "migration phase");
        st.phase = phase;
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let times = st.progress.entry("phase_times").or_insert_with(|| serde_json::json!({}));
        if let Some(times) = times.as_object_mut() {
            times.insert(phase_name(phase), now.into());
        }
        if phase.is_final() {
            st.ended_at = Some(Instant::now());
        }
    }

    pub fn set_progress(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.status().progress.insert(key.to_string(), value.into());
    }

    /// Records a problem that did not end the task (the last one is reported).
    pub fn note_error(&self, error: impl std::fmt::Display) {
        self.status().error = Some(error.to_string());
    }

    /// Ends the task as failed.
    pub fn fail(&self, error: impl std::fmt::Display) {
        let error = error.to_string();
        tracing::warn!(error = %error, "migration failed");
        self.status().error = Some(error);
        self.set_phase(Phase::Failed);
    }

    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    /// Whether the migration left the config before its commit (aborted or failed).
    pub fn is_gone(&self) -> bool {
        self.stage() == Stage::Gone
    }

    /// Waits until the migration is committed, or has left the config; returns which.
    pub async fn wait_untagged(&self) -> Stage {
        let mut rx = self.stage.subscribe();
        let stage = match rx.wait_for(|s| *s != Stage::Tagged).await {
            Ok(s) => *s,
            Err(_) => Stage::Gone,
        };
        stage
    }

    /// Whether the source may promote the destination's node: the broker has recorded
    /// `switching`, so nothing but the commit ends the migration any more.
    pub fn switch_allowed(&self) -> bool {
        *self.switch_allowed.borrow()
    }

    /// Whether the broker fenced the source: it asks for no further switch attempt and ends
    /// the migration once the source confirms (by failing its task) that it promoted nothing.
    pub fn fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Waits until the switch is allowed or the migration left the config; false after `limit`.
    pub async fn wait_switch_allowed(&self, limit: Duration) -> bool {
        let mut allowed = self.switch_allowed.subscribe();
        let mut stage = self.stage.subscribe();
        let wait = async {
            tokio::select! {
                r = allowed.wait_for(|a| *a) => r.is_ok(),
                _ = stage.wait_for(|s| *s == Stage::Gone) => false,
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    pub fn refused_attempts(&self) -> u64 {
        self.refused_up_to.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn refuse_attempts_up_to(&self, attempt: u64) {
        self.refused_up_to.fetch_max(attempt, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_source_replid(&self, id: &str) {
        *self.source_replid.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.to_string());
    }

    pub fn source_replid(&self) -> Option<String> {
        self.source_replid.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the migration leaves the config.
    pub async fn wait_gone(&self) {
        let mut rx = self.stage.subscribe();
        let _ = rx.wait_for(|s| *s == Stage::Gone).await;
    }

    fn report(&self) -> TaskReport {
        let st = self.status();
        TaskReport {
            id: self.meta.id.clone(),
            epoch: self.meta.epoch,
            phase: st.phase,
            progress: serde_json::Value::Object(st.progress.clone()),
            error: st.error.clone(),
            is_source: self.role == Role::Source,
        }
    }
}

/// The tasks of this proxy, by migration id.
#[derive(Default)]
pub struct Migrations {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl Migrations {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots whose keys on this node are garbage by the config's word: what committed
    /// migrations moved away from here, and, on the destination of a replication, every slot
    /// (the node was empty before it copied the source). The collector still spares every
    /// slot served, imported or held here.
    pub fn garbage_ranges(config: &ProxyConfig, me: &str) -> Vec<SlotRange> {
        config
            .migrations
            .iter()
            .filter(|m| stage_in(config, &m.id) == Stage::Committed)
            .flat_map(|m| {
                // A keys-mode source has none: MIGRATE deleted each key it moved, and its task
                // switched only after a full pass found none left in the slots.
                if m.src_proxy == me && m.mode.is_streamed() {
                    m.slots.clone()
                } else if m.dst_proxy == me && m.mode == MigrationMode::Replication {
                    vec![SlotRange::new(0, SLOT_COUNT - 1)]
                } else {
                    Vec::new()
                }
            })
            .collect()
    }

    /// Starts tasks for new migrations, tells tasks whose migration left the config, and
    /// forgets tasks that ended long ago. A free proxy with no migration checks its node for
    /// a copy a migration left behind ([`leftover`]).
    fn start_and_tell(&self, shared: &Arc<Shared>, config: &ProxyConfig) {
        let me = shared.me();
        let mut tasks = self.tasks();
        for meta in &config.migrations {
            if tasks.contains_key(&meta.id) {
                continue;
            }
            let role = if meta.src_proxy == me {
                Role::Source
            } else if meta.dst_proxy == me {
                Role::Destination
            } else {
                continue;
            };
            let deleted = shared.gc.deleted.load(std::sync::atomic::Ordering::Relaxed);
            let task = Arc::new(Task::new(meta.clone(), role, deleted));
            tasks.insert(meta.id.clone(), task.clone());
            spawn(shared.clone(), task, stage_in(config, &meta.id) == Stage::Committed);
        }
        for (id, task) in tasks.iter() {
            if config.migrations.iter().any(|m| &m.id == id && m.switch_allowed) {
                task.switch_allowed.send_if_modified(|a| !std::mem::replace(a, true));
            }
            if config.migrations.iter().any(|m| &m.id == id && m.fenced) {
                task.fenced.send_if_modified(|f| !std::mem::replace(f, true));
            }
            let stage = stage_in(config, id);
            task.stage.send_if_modified(|s| {
                let forward = stage > *s;
                if forward {
                    *s = stage;
                }
                forward
            });
        }
        tasks.retain(|_, t| t.status().ended_at.is_none_or(|at| at.elapsed() < KEEP_ENDED));
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.tasks().get(id).cloned()
    }

    pub fn reports(&self) -> Vec<TaskReport> {
        let mut out: Vec<TaskReport> = self.tasks().values().map(|t| t.report()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// Runs `task` as a tokio task of its own, inside the task's span (`Task::span`).
/// `committed`: the migration was committed before this task existed (the proxy restarted),
/// so only cleaning is left.
fn spawn(shared: Arc<Shared>, task: Arc<Task>, committed: bool) {
    let span = task.span();
    let m = &task.meta;
    span.in_scope(|| {
let slots: Vec<String> = m.slots.iter().map(ToString::to_string).collect();
        tracing::info!(mode = %m.mode.as_str(), slots = %slots.join(","), src = %m.src_proxy, dst = %m.dst_proxy, migration_epoch = m.epoch, committed, "migration task started")
    });
    if committed {
        task.stage.send_replace(Stage::Committed);
        span.in_scope(|| task.set_phase(Phase::Committed));
        tokio::spawn(async move { gc::clean(&shared, &task).await }.instrument(span));
        return;
    }
    match (task.meta.mode, task.role) {
        (MigrationMode::Keys, Role::Source) => {
            tokio::spawn(keys_mode::run_source(shared, task).instrument(span));
        }
        (MigrationMode::Keys, Role::Destination) => {
            tokio::spawn(keys_mode::run_destination(shared, task).instrument(span));
        }
        (MigrationMode::Auto, _) => {
            // The broker resolves `auto` when it creates a migration; never seen here.
            let unresolved = async move {
                task.fail("the broker sent mode auto unresolved");
                shared.set_override(&task.meta.id, None).await;
            };
            tokio::spawn(unresolved.instrument(span));
        }
        (MigrationMode::Replication, Role::Source) => {
            tokio::spawn(source::run(shared, task).instrument(span));
        }
        (MigrationMode::Replication, Role::Destination) => {
            tokio::spawn(destination::run(shared, task).instrument(span));
        }
        (MigrationMode::Filtered, Role::Source) => {
            tokio::spawn(filtered::run_source(shared, task).instrument(span));
        }
        (MigrationMode::Filtered, Role::Destination) => {
            tokio::spawn(filtered::run_destination(shared, task).instrument(span));
        }
    }
}

impl MigrationTasks for Migrations {
    /// Tagged migrations of `config` in which `me` is the source and that have no task yet.
    fn new_sources(&self, config: &ProxyConfig, me: &str) -> Vec<MigrationMeta> {
        let tasks = self.tasks();
        config
            .migrations
            .iter()
            .filter(|m| m.src_proxy == me && !tasks.contains_key(&m.id) && config.is_tagged(&m.id))
            .cloned()
            .collect()
    }

    fn reconcile(&self, shared: &Arc<Shared>, config: &ProxyConfig) {
        self.start_and_tell(shared, config);
        if config.cluster.is_none() && config.migrations.is_empty() {
            tokio::spawn(leftover::clean(shared.clone()));
        }
    }
}

/// Tells the broker that the destination's node no longer holds the copy of this import,
/// which ended before its switch: a keys-mode import of those slots into that node waits
/// for it (it would make the copy's keys live again). Retries a while; logs the outcome.
pub async fn report_copy_deleted(shared: &Shared, task: &Task) {
    let broker = match crate::broker::Broker::new(&shared.opts) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(migration = %task.meta.id, error = %e, "the deleted copy is not reported");
            return;
        }
    };
    for attempt in 1..=10u32 {
        match broker.report_copy_deleted(&task.meta.cluster, &task.meta.id).await {
            Ok(_) => {
                tracing::info!(migration = %task.meta.id, "reported the copy at the destination deleted");
                return;
            }
            Err(e @ crate::broker::BrokerError::Refused { status: 404 | 409, .. }) => {
                tracing::info!(migration = %task.meta.id, error = %e, "the broker takes no report of the deleted copy");
                return;
            }
            Err(e) => {
                tracing::warn!(migration = %task.meta.id, attempt, error = %e, "cannot report the deleted copy yet");
                tokio::time::sleep((Duration::from_millis(250) * attempt).min(Duration::from_secs(3))).await;
            }
        }
    }
}

/// After the switch: wait for the commit, then for the keys the migration left on this node
/// to be deleted by the garbage collector.
pub async fn after_switch(shared: &Arc<Shared>, task: &Arc<Task>) -> Result<(), MigrationError> {
    if task.wait_untagged().await == Stage::Gone {
        // Left the config without a commit after the switch: the broker refuses that, so
        // this only happens if the migration was deleted with its cluster.
        tracing::warn!("migration left the config after the switch without a commit");
        return Ok(());
    }
    task.set_phase(Phase::Committed);
    gc::clean(shared, task).await;
    Ok(())
}

/// Sends `UMCTL <args…>` to the migration's destination proxy (on the peer connection)
/// and returns its answer; an error reply, a broken connection or no answer within
/// `timeout` is an `Err` that says which.
pub async fn call_destination(
    shared: &Shared,
    meta: &MigrationMeta,
    args: &[&str],
    timeout: Duration,
) -> Result<sluice_common::resp::Frame, MigrationError> {
    use sluice_common::resp::{parse_frame, Frame, Limits};
    let mut parts = vec!["UMCTL"];
    parts.extend_from_slice(args);
    let cmd = Command::from_strs(&parts);
    let pool = shared.peer_pool(&meta.dst_proxy);
    let call = async {
        let backend = pool.get(Default::default(), 0).await?;
        let raw = backend.call(&cmd).await?;
        match parse_frame(&raw, &Limits::SERVER) {
            Ok((f, _)) if f.is_error() => Err(refused!(
                "the destination refused: {}",
                f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
            )),
            Ok((f, _)) => Ok::<Frame, MigrationError>(f),
            Err(e) => Err(refused!("{e}")),
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(MigrationError::Timeout { what: meta.dst_proxy.clone(), after: timeout }))
}

/// The phase names of the broker, for `Status`.
pub fn phase_name(phase: MigrationPhase) -> String {
    phase.as_str().to_string()
}

/// Loads the Lua scripts clients ran through this proxy into the destination's node, so an
/// `EVALSHA` still finds its script once the slots have moved (see [`crate::scripts`]).
/// Best effort: a failure is noted on the task, and a client that gets `NOSCRIPT` loads the
/// script again, as it would after a resharding of a native Redis Cluster.
pub async fn carry_scripts(shared: &Shared, task: &Task) {
    let bodies = shared.scripts.all();
    if bodies.is_empty() {
        return;
    }
    let loaded = async {
        let node = node::connect(shared, &task.meta.dst_node).await?;
        for body in &bodies {
            let cmd = Command::new(vec![Bytes::from_static(b"SCRIPT"), Bytes::from_static(b"LOAD"), body.clone()]);
            node.call_command(&cmd).await?;
        }
        Ok::<_, MigrationError>(())
    };
    match loaded.await {
        Ok(()) => task.set_progress("scripts_loaded", bodies.len()),
        Err(e) => task.note_error(format!("could not load the scripts into the destination node: {e}")),
    }
}
