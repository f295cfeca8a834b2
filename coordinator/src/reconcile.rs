//! The coordinator's decisions, as pure functions of what the broker and the proxies said:
//! which proxy needs a config push, and what to report about each migration.
//!
//! Nothing here remembers anything between rounds. Every decision compares what a proxy
//! reports with what the broker records and asks only for the difference, so running it
//! twice (the next round, or a second coordinator) asks for nothing more, and whatever was
//! already done by someone else is at worst refused by the broker as stale (409, benign).
//! The broker enforces the rules again (phases only forward, commit only from `switched`
//! and only with the migration's epoch); these functions keep the coordinator from asking
//! for what would be refused, so a refusal in the logs means a race, not a bug.

use serde_json::Value;
use sluice_common::api::{Migration, ProgressReport};
use sluice_common::model::{Epoch, MigrationPhase};
use sluice_proto::control::{MigrationTask, StatusReply};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use MigrationPhase::*;

/// What to do about one proxy's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushDecision {
    /// The proxy holds the config's epoch.
    UpToDate,
    /// The proxy is behind: push the config.
    Push { from: Epoch, to: Epoch },
    /// The proxy holds a newer epoch than the config read: this coordinator's read is old
    /// (another one pushed a newer config meanwhile). Never push backwards.
    ProxyAhead { proxy: Epoch, config: Epoch },
}

/// Compares the epoch a proxy holds with the epoch of the config the broker has for it.
pub fn push_decision(proxy_epoch: Epoch, config_epoch: Epoch) -> PushDecision {
    use std::cmp::Ordering;
    match proxy_epoch.cmp(&config_epoch) {
        Ordering::Less => PushDecision::Push { from: proxy_epoch, to: config_epoch },
        Ordering::Equal => PushDecision::UpToDate,
        Ordering::Greater => PushDecision::ProxyAhead { proxy: proxy_epoch, config: config_epoch },
    }
}

/// One proxy's view of one migration, read from its `Status.migrations`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    pub phase: MigrationPhase,
    /// A JSON object without `phase_times`, or `None` when the proxy gave none (or nothing
    /// else, or something that is not an object: the broker only takes objects, and a
    /// malformed progress is not worth dropping the phase for).
    pub progress: Option<Value>,
    pub error: Option<String>,
    /// When the task entered each phase, by the proxy's clock: the `phase_times` object of
    /// its progress. Entries whose phase or time cannot be read are left out.
    pub phase_times: BTreeMap<MigrationPhase, SystemTime>,
}

/// Reads a task. `Err` names an unknown phase.
pub fn parse_task(task: &MigrationTask) -> Result<TaskView, String> {
    let phase = parse_phase(&task.phase).ok_or_else(|| format!("unknown migration phase {:?}", task.phase))?;
    let mut progress = match task.progress_json.trim() {
        "" => None,
        text => serde_json::from_str::<Value>(text).ok().filter(Value::is_object),
    };
    let mut phase_times = BTreeMap::new();
    if let Some(Value::Object(fields)) = &mut progress {
        if let Some(times) = fields.remove("phase_times") {
            phase_times = parse_phase_times(&times);
        }
        if fields.is_empty() {
            progress = None;
        }
    }
    let error = Some(task.error.trim()).filter(|e| !e.is_empty()).map(str::to_string);
    Ok(TaskView { phase, progress, error, phase_times })
}

fn parse_phase(name: &str) -> Option<MigrationPhase> {
    name.trim().to_ascii_lowercase().parse().ok()
}

/// `{"starting": "<RFC 3339 UTC>", …}` → phase → time. What cannot be read is left out:
/// the broker would refuse a report with a malformed time, and the phase is worth more.
fn parse_phase_times(times: &Value) -> BTreeMap<MigrationPhase, SystemTime> {
    let Some(times) = times.as_object() else { return BTreeMap::new() };
    times
        .iter()
        .filter_map(|(name, at)| Some((parse_phase(name)?, humantime::parse_rfc3339(at.as_str()?.trim()).ok()?)))
        .collect()
}

/// What one proxy of a migration (its source or its destination) shows about it. A proxy
/// that answered also tells how far its garbage collector got (`clean_epoch` of its Status):
/// that counts after the commit, when the migration is no longer in the proxies' configs.
#[derive(Debug, Clone, PartialEq)]
pub enum Side {
    /// The proxy's Status did not answer this round: nothing is known.
    NoAnswer,
    /// It answered and lists no task for the migration.
    NoTask { clean_epoch: Epoch },
    /// It lists a task for the migration, at the migration's epoch, in the expected role.
    Task { task: TaskView, clean_epoch: Epoch },
    /// It lists something for the migration that cannot be taken at its word (another
    /// epoch, the wrong role, an unknown phase). Counts as not knowing.
    Unreadable(String),
}

impl Side {
    pub fn task(&self) -> Option<&TaskView> {
        match self {
            Side::Task { task, .. } => Some(task),
            _ => None,
        }
    }

    /// The proxy's `clean_epoch`, when it answered and what it says about the migration can
    /// be read.
    pub fn clean_epoch(&self) -> Option<Epoch> {
        match self {
            Side::NoTask { clean_epoch } | Side::Task { clean_epoch, .. } => Some(*clean_epoch),
            Side::NoAnswer | Side::Unreadable(_) => None,
        }
    }
}

/// What `proxy` (the migration's source when `is_source`) shows about `m`, from the Status
/// replies of the proxies that answered this round, keyed by proxy address. A source or
/// destination that has left the cluster since (a free proxy) is read the same way.
pub fn side(m: &Migration, is_source: bool, statuses: &HashMap<String, StatusReply>) -> Side {
    let proxy = if is_source { &m.src } else { &m.dst };
    let Some(status) = statuses.get(proxy) else { return Side::NoAnswer };
    let clean_epoch = status.clean_epoch;
    let mut tasks = status.migrations.iter().filter(|t| t.id == m.id);
    let Some(task) = tasks.next() else { return Side::NoTask { clean_epoch } };
    if tasks.next().is_some() {
        return Side::Unreadable(format!("{proxy} lists migration {} twice", m.id));
    }
    if task.epoch != m.epoch {
        return Side::Unreadable(format!(
            "{proxy} has migration {} at epoch {}, the broker at epoch {}",
            m.id, task.epoch, m.epoch
        ));
    }
    if task.is_source != is_source {
        let role = |s: bool| if s { "source" } else { "destination" };
        return Side::Unreadable(format!(
            "{proxy} runs migration {} as its {}, the broker has it as the {}",
            m.id,
            role(task.is_source),
            role(is_source)
        ));
    }
    match parse_task(task) {
        Ok(task) => Side::Task { task, clean_epoch },
        Err(e) => Side::Unreadable(format!("{proxy}, migration {}: {e}", m.id)),
    }
}

/// A migration committed by a broker that did not record `committed_epoch` yet (a record
/// older than the field) gets the global epoch read this round in its place: the commit
/// happened at or before it, so a proxy clean at that epoch is clean at the commit too. It
/// can only delay `done`, never bring it early. `None` when `m` needs no stand-in.
pub fn assume_committed_epoch(m: &Migration, global_epoch: Epoch) -> Option<Migration> {
    if m.phase < Committed || m.phase.is_final() || m.committed_epoch.is_some() {
        return None;
    }
    Some(Migration { committed_epoch: Some(global_epoch), ..m.clone() })
}

/// A call to make to the broker about one migration. A list of them is made in order.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationAction {
    /// `POST …/{id}/progress`.
    Progress(ProgressReport),
    /// `POST …/{id}/commit {"epoch"}`.
    Commit { epoch: Epoch },
    /// `POST …/{id}/fail {"error", "source_stopped_epoch"?}`: with the epoch, the source's
    /// confirmation that completes a stop of a fenced migration ([`confirm_stop`]).
    Fail { error: String, source_stopped_epoch: Option<Epoch> },
}

/// Whether `phase` may be sent with `POST …/progress` at all (the others have their own calls).
pub fn reportable(phase: MigrationPhase) -> bool {
    matches!(phase, Pending | Starting | Following | Switching | Switched | Cleaning | Done)
}

/// What to tell the broker about `m`, given its source's and its destination's view.
///
/// `progress_due`: whether a report that only refreshes progress (same phase) may be sent
/// this round; the caller throttles those, phase changes always go at once.
///
/// Before the commit:
/// 1. the source or the destination reports `switched` (or later), or the broker already
///    has `switched` → record `switched` if the broker has not, then commit with the
///    migration's epoch. The destination's word is enough: it reports `switched` once its
///    node is promoted and it serves the slots, and after a restart of the source it may be
///    the only one that knows. A recorded `switched` came from a proxy's word, and nothing
///    but the commit can follow it.
/// 2. a task reports `failed` (and no one `switched`) → fail the migration with its error,
///    before `switching` only: from `switching` on the broker takes no `fail`, the error
///    is recorded instead and the proxies keep trying.
/// 3. otherwise the most advanced phase either proxy reports, if ahead of the broker.
///
/// After the commit the migration is in no proxy's config any more; each proxy's garbage
/// collector deletes the keys of slots other nodes serve and reports the config epoch of its
/// last complete pass as `clean_epoch`. The migration is `done` when both its source and its
/// destination answer with `clean_epoch >= committed_epoch` and neither lists a task for it
/// in another phase than `done` (a proxy that does not answer, or whose task cannot be read,
/// blocks `done`: nothing is guessed); otherwise it is `cleaning` once either lists a task
/// `cleaning` (or `failed`) or answers with an older `clean_epoch`. The progress is the sum
/// of the tasks' `keys_deleted`. From `committed` straight to `done`, `cleaning` is reported
/// first, so every phase has its timestamp.
///
/// Phases never go backwards: a proxy behind the broker (another coordinator reported for
/// the faster proxy, or this round's read is old) leads to no phase report.
///
/// Every phase has its timestamp, in order, even one that both proxies went through between
/// two rounds: before moving the broker from its phase to a later one (or failing it), every
/// phase strictly between the two that a task entered (its `phase_times`; `cleaning` always,
/// as said above) is reported first, in order, with the time the first task entered it as
/// `at`; then the phase itself, with its time if a task has one (for `done`, the later of
/// the two proxies', and only when both list it). No phase that no task entered is
/// invented: keys mode skips `following`.
pub fn decide(m: &Migration, src: &Side, dst: &Side, progress_due: bool) -> Vec<MigrationAction> {
    let current = m.phase;
    if current.is_final() {
        return Vec::new();
    }
    let tasks: Vec<&TaskView> = [src, dst].into_iter().filter_map(Side::task).collect();
    let failed = tasks.iter().find(|t| t.phase == Failed);
    let failure =
        failed.map(|f| f.error.clone().unwrap_or_else(|| format!("a proxy reported migration {} failed", m.id)));
    let new_error = |e: Option<String>| e.filter(|e| m.error.as_ref() != Some(e));

    let (target, progress, error) = if current < Committed {
        let switched = tasks.iter().find(|t| t.phase >= Switched && !matches!(t.phase, Failed | Aborted));
        if switched.is_some() || current == Switched {
            let error = new_error(switched.and_then(|t| t.error.clone()).or(failure));
            let progress = switched.and_then(|t| t.progress.clone());
            let mut actions = Vec::new();
            if current < Switched {
                actions = forward(current, Switched, &tasks, entered(&tasks, Switched), progress, error);
            } else if error.is_some() {
                actions.push(report(Switched, progress, error, None));
            }
            actions.push(MigrationAction::Commit { epoch: m.epoch });
            return actions;
        }
        if let Some(error) = failure.clone().filter(|_| current < Switching) {
            // The record shows how far the migration got before it failed. From `switching`
            // on the broker takes no `fail` (the source may have promoted the destination):
            // the failure is kept as the migration's error and the proxies retry.
            let mut actions = passed_through(current, Switching, &tasks);
            actions.push(MigrationAction::Fail { error, source_stopped_epoch: None });
            return actions;
        }
        match most_advanced_before_commit(src, dst) {
            // A proxy behind the broker has no news but a failure to record.
            Some((phase, _)) if phase < current => (current, None, failure),
            Some((phase, task)) => (phase, task.progress.clone(), failure.or_else(|| task.error.clone())),
            None => (current, None, failure),
        }
    } else {
        let phase = after_commit(m, src, dst);
        let error = failure.or_else(|| tasks.iter().find_map(|t| t.error.clone()));
        if phase < current {
            // Behind the broker: no phase news, and no progress under an older phase; an
            // error is still worth recording.
            (current, None, error)
        } else {
            (phase, keys_deleted(src, dst), error)
        }
    };

    if !reportable(target) {
        return Vec::new();
    }
    let error = new_error(error);
    if target == current {
        let fresh_progress = progress_due && progress.is_some() && progress != m.progress;
        if !fresh_progress && error.is_none() {
            return Vec::new();
        }
        return vec![report(target, progress, error, None)];
    }
    let at = if target == Done { done_at(src, dst) } else { entered(&tasks, target) };
    forward(current, target, &tasks, at, progress, error)
}

/// The source's confirmation that completes a stop of a fenced migration: the epoch of the
/// config its proxy holds, when that is at least the fence's and it lists the migration's task
/// (at its epoch, as the source) as `failed`. A source task fails only without having promoted
/// the destination's node (one that promoted ends `switched`), and a proxy holding a fenced
/// config starts no switch attempt, so from then on nobody promotes it.
pub fn confirm_stop(m: &Migration, statuses: &HashMap<String, StatusReply>) -> Option<Epoch> {
    let stopping = m.stopping.as_ref().filter(|_| m.phase == Switching)?;
    let status = statuses.get(&m.src).filter(|s| s.epoch >= stopping.epoch)?;
    let Side::Task { task, .. } = side(m, true, statuses) else { return None };
    (task.phase == Failed).then_some(status.epoch)
}

fn report(
    phase: MigrationPhase,
    progress: Option<Value>,
    error: Option<String>,
    at: Option<SystemTime>,
) -> MigrationAction {
    let at = at.map(|t| humantime::format_rfc3339_millis(t).to_string());
    MigrationAction::Progress(ProgressReport { phase, progress, error, at })
}

/// The reports that move the broker's record from `current` forward to `target`: the phases
/// passed through on the way ([`passed_through`]), then `target` with its progress, error
/// and time.
fn forward(
    current: MigrationPhase,
    target: MigrationPhase,
    tasks: &[&TaskView],
    at: Option<SystemTime>,
    progress: Option<Value>,
    error: Option<String>,
) -> Vec<MigrationAction> {
    let mut actions = passed_through(current, target, tasks);
    actions.push(report(target, progress, error, at));
    actions
}

/// The phases strictly between `current` and `target`, in order, that a task entered, each
/// with the time the first task entered it; after the commit `cleaning` always (the broker's
/// own step between `committed` and `done`, with a time if a task has one).
fn passed_through(current: MigrationPhase, target: MigrationPhase, tasks: &[&TaskView]) -> Vec<MigrationAction> {
    [Starting, Following, Switching, Switched, Cleaning]
        .into_iter()
        .filter(|p| current < *p && *p < target)
        .filter_map(|p| {
            let at = entered(tasks, p);
            (at.is_some() || p == Cleaning).then(|| report(p, None, None, at))
        })
        .collect()
}

/// When the migration entered `phase` as its tasks tell: the earliest time either lists.
fn entered(tasks: &[&TaskView], phase: MigrationPhase) -> Option<SystemTime> {
    tasks.iter().filter_map(|t| t.phase_times.get(&phase).copied()).min()
}

/// When the migration was done as its tasks tell: done once both proxies are, so the later
/// time, and only when both list one (a proxy without a task does not say when it was clean).
fn done_at(src: &Side, dst: &Side) -> Option<SystemTime> {
    let src = src.task()?.phase_times.get(&Done)?;
    let dst = dst.task()?.phase_times.get(&Done)?;
    Some(*src.max(dst))
}

/// The most advanced phase before the commit that either proxy reports (`failed`/`aborted`
/// excluded), with the task that reports it; the source wins a tie, as the one that drives
/// the migration and measures its progress.
fn most_advanced_before_commit<'a>(src: &'a Side, dst: &'a Side) -> Option<(MigrationPhase, &'a TaskView)> {
    let mut best: Option<(MigrationPhase, &TaskView)> = None;
    for t in [src, dst].into_iter().filter_map(Side::task) {
        if matches!(t.phase, Failed | Aborted) {
            continue;
        }
        let phase = t.phase.min(Switched);
        if best.is_none_or(|(b, _)| phase > b) {
            best = Some((phase, t));
        }
    }
    best
}

/// The phase a committed migration is in, as far as its two proxies show: `done`,
/// `cleaning`, or `committed` when nothing says more.
fn after_commit(m: &Migration, src: &Side, dst: &Side) -> MigrationPhase {
    let clean = |side: &Side| match (side.clean_epoch(), m.committed_epoch) {
        (Some(c), Some(committed)) => c >= committed,
        _ => false,
    };
    let nothing_left = |side: &Side| side.task().is_none_or(|t| t.phase == Done);
    let both_answered = src.clean_epoch().is_some() && dst.clean_epoch().is_some();
    if both_answered && [src, dst].into_iter().all(|s| clean(s) && nothing_left(s)) {
        return Done;
    }
    let working = |side: &Side| {
        side.task().is_some_and(|t| matches!(t.phase, Cleaning | Failed))
            || (side.clean_epoch().is_some() && !clean(side))
    };
    if working(src) || working(dst) {
        Cleaning
    } else {
        Committed
    }
}

/// The garbage deleted so far: the sum of the `keys_deleted` the tasks report, as the
/// progress object `{"keys_deleted": n}`; `None` when no task reports it.
fn keys_deleted(src: &Side, dst: &Side) -> Option<Value> {
    let counts: Vec<u64> = [src, dst]
        .into_iter()
        .filter_map(Side::task)
        .filter_map(|t| t.progress.as_ref()?.get("keys_deleted")?.as_u64())
        .collect();
    if counts.is_empty() {
        return None;
    }
    Some(serde_json::json!({ "keys_deleted": counts.iter().fold(0u64, |a, n| a.saturating_add(*n)) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_common::api::PhaseTimestamps;
    use sluice_common::model::{MigrationMode, SlotRange};

    const SRC: &str = "127.0.0.1:6001";
    const DST: &str = "127.0.0.1:6004";
    /// The epoch the commit of `migration()` produced (its `epoch` is 6).
    const COMMITTED: Epoch = 7;

    fn migration(phase: MigrationPhase) -> Migration {
        Migration {
            id: "m-1".into(),
            epoch: 6,
            committed_epoch: matches!(phase, Committed | Cleaning | Done).then_some(COMMITTED),
            cluster: "shop".into(),
            src: SRC.into(),
            src_node: "127.0.0.1:7001".into(),
            dst: DST.into(),
            dst_node: "127.0.0.1:7004".into(),
            slots: vec![SlotRange::new(0, 1000)],
            mode: MigrationMode::Replication,
            phase,
            error: None,
            progress: None,
            timestamps: PhaseTimestamps::default(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            stopping: None,
            copy_deleted: false,
        }
    }

    fn view(task: TaskView) -> Side {
        Side::Task { task, clean_epoch: 0 }
    }

    fn task(phase: MigrationPhase) -> Side {
        view(TaskView { phase, progress: None, error: None, phase_times: BTreeMap::new() })
    }

    fn task_with(phase: MigrationPhase, progress: Value) -> Side {
        view(TaskView { phase, progress: Some(progress), error: None, phase_times: BTreeMap::new() })
    }

    fn failed_task(error: &str) -> Side {
        view(TaskView { phase: Failed, progress: None, error: Some(error.into()), phase_times: BTreeMap::new() })
    }

    /// A proxy that answered and lists no task, with its garbage clean at `clean_epoch`.
    fn no_task(clean_epoch: Epoch) -> Side {
        Side::NoTask { clean_epoch }
    }

    /// `side` with its proxy's garbage clean at `clean_epoch`.
    fn clean(side: Side, clean_epoch: Epoch) -> Side {
        match side {
            Side::Task { task, .. } => Side::Task { task, clean_epoch },
            Side::NoTask { .. } => Side::NoTask { clean_epoch },
            other => other,
        }
    }

    fn cleaning_with(keys_deleted: u64) -> Side {
        task_with(Cleaning, json!({ "keys_deleted": keys_deleted }))
    }

    fn keys(phase: MigrationPhase, keys_deleted: u64) -> MigrationAction {
        MigrationAction::Progress(ProgressReport {
            phase,
            progress: Some(json!({ "keys_deleted": keys_deleted })),
            error: None,
            at: None,
        })
    }

    fn progress(phase: MigrationPhase) -> MigrationAction {
        MigrationAction::Progress(ProgressReport { phase, progress: None, error: None, at: None })
    }

    /// `secs` seconds after 2026-01-01T10:00:00Z, a proxy's clock.
    fn time(secs: u64) -> SystemTime {
        humantime::parse_rfc3339("2026-01-01T10:00:00Z").expect("valid") + std::time::Duration::from_secs(secs)
    }

    /// `time(secs)` as reported to the broker.
    fn stamp(secs: u64) -> String {
        humantime::format_rfc3339_millis(time(secs)).to_string()
    }

    /// `side` whose task entered these phases at these times.
    fn timed(side: Side, times: &[(MigrationPhase, u64)]) -> Side {
        match side {
            Side::Task { mut task, clean_epoch } => {
                task.phase_times = times.iter().map(|(p, t)| (*p, time(*t))).collect();
                Side::Task { task, clean_epoch }
            }
            other => other,
        }
    }

    /// A report of `phase` entered at `time(secs)`.
    fn at(phase: MigrationPhase, secs: u64) -> MigrationAction {
        MigrationAction::Progress(ProgressReport { phase, progress: None, error: None, at: Some(stamp(secs)) })
    }

    // ---- pushes ----

    #[test]
    fn only_a_proxy_behind_gets_a_push() {
        assert_eq!(push_decision(0, 5), PushDecision::Push { from: 0, to: 5 });
        assert_eq!(push_decision(4, 5), PushDecision::Push { from: 4, to: 5 });
        assert_eq!(push_decision(5, 5), PushDecision::UpToDate);
        assert_eq!(push_decision(6, 5), PushDecision::ProxyAhead { proxy: 6, config: 5 });
    }

    // ---- reading tasks ----

    fn raw(id: &str, epoch: u64, phase: &str, is_source: bool) -> MigrationTask {
        MigrationTask {
            id: id.into(),
            epoch,
            phase: phase.into(),
            progress_json: String::new(),
            error: String::new(),
            is_source,
        }
    }

    fn statuses(entries: Vec<(&str, Vec<MigrationTask>)>) -> HashMap<String, StatusReply> {
        entries
            .into_iter()
            .map(|(p, migrations)| (p.to_string(), StatusReply { proxy: p.into(), migrations, ..Default::default() }))
            .collect()
    }

    #[test]
    fn a_fenced_stop_is_confirmed_only_by_a_failed_source_task_holding_the_fence() {
        use sluice_common::api::StopIntent;
        let mut m = migration(Switching);
        let with = |epoch: u64, phase: &str| {
            let mut s = statuses(vec![(SRC, vec![raw("m-1", 6, phase, true)])]);
            s.get_mut(SRC).expect("src").epoch = epoch;
            s
        };
        assert_eq!(confirm_stop(&m, &with(9, "failed")), None, "not fenced");
        m.stopping = Some(StopIntent { epoch: 9, phase: Failed, reason: "dst down".into() });
        assert_eq!(confirm_stop(&m, &with(9, "failed")), Some(9));
        assert_eq!(confirm_stop(&m, &with(11, "failed")), Some(11));
        assert_eq!(confirm_stop(&m, &with(8, "failed")), None, "a config older than the fence");
        assert_eq!(confirm_stop(&m, &with(9, "switching")), None, "still trying");
        assert_eq!(confirm_stop(&m, &with(9, "switched")), None, "the switch won");
        assert_eq!(confirm_stop(&m, &HashMap::new()), None, "no answer");
        let dst_only = statuses(vec![(DST, vec![raw("m-1", 6, "failed", false)])]);
        assert_eq!(confirm_stop(&m, &dst_only), None, "only the source can say it promoted nothing");
        m.phase = Switched;
        assert_eq!(confirm_stop(&m, &with(9, "failed")), None, "switched: only the commit");
    }

    #[test]
    fn tasks_are_parsed() {
        let mut t = raw("m-1", 6, "Following", true);
        t.progress_json = r#"{"lag_bytes":120}"#.into();
        t.error = "  ".into();
        let v = parse_task(&t).expect("parses");
        assert_eq!(v.phase, Following);
        assert_eq!(v.progress, Some(json!({"lag_bytes":120})));
        assert_eq!(v.error, None);
        t.progress_json = "[1,2]".into();
        assert_eq!(parse_task(&t).expect("parses").progress, None, "only objects are progress");
        t.progress_json = "{not json".into();
        assert_eq!(parse_task(&t).expect("parses").progress, None);
        assert!(parse_task(&raw("m-1", 6, "teleporting", true)).is_err());
    }

    #[test]
    fn sides_match_id_epoch_and_role() {
        let m = migration(Following);
        let st = statuses(vec![
            (SRC, vec![raw("m-0", 6, "done", true), raw("m-1", 6, "following", true)]),
            (DST, vec![raw("m-1", 5, "following", false)]),
        ]);
        assert_eq!(side(&m, true, &st), task(Following));
        assert!(matches!(side(&m, false, &st), Side::Unreadable(e) if e.contains("epoch 5")));

        let st = statuses(vec![(SRC, vec![raw("m-1", 6, "following", false)]), (DST, vec![])]);
        assert!(matches!(side(&m, true, &st), Side::Unreadable(e) if e.contains("destination")));
        assert_eq!(side(&m, false, &st), no_task(0));

        let st = statuses(vec![(DST, vec![raw("m-1", 6, "warping", false)])]);
        assert_eq!(side(&m, true, &st), Side::NoAnswer);
        assert!(matches!(side(&m, false, &st), Side::Unreadable(e) if e.contains("warping")));
    }

    // ---- before the commit ----

    #[test]
    fn phases_are_reported_forward() {
        let m = migration(Pending);
        assert_eq!(decide(&m, &task(Starting), &Side::NoAnswer, false), vec![progress(Starting)]);
        // Keys mode skips following: a jump forward is fine.
        assert_eq!(decide(&m, &task(Switching), &task(Starting), false), vec![progress(Switching)]);
        // The destination may be ahead (it reports following while the source still starts).
        assert_eq!(decide(&m, &task(Starting), &task(Following), false), vec![progress(Following)]);
    }

    #[test]
    fn never_backwards() {
        for broker in [Starting, Following, Switching, Switched] {
            let m = migration(broker);
            // At `switched` the only thing left to ask for is the commit.
            let expected = if broker == Switched { vec![MigrationAction::Commit { epoch: 6 }] } else { vec![] };
            for proxy in [Pending, Starting, Following, Switching] {
                if proxy < broker {
                    assert_eq!(decide(&m, &task(proxy), &task(proxy), true), expected, "{broker:?} <- {proxy:?}");
                    assert_eq!(
                        decide(&m, &task_with(proxy, json!({"x":1})), &Side::NoAnswer, true),
                        expected,
                        "no progress under an older phase either"
                    );
                }
            }
        }
        for broker in [Committed, Cleaning] {
            let m = migration(broker);
            for proxy in [Pending, Starting, Following, Switching, Switched] {
                let actions = decide(&m, &task(proxy), &task(proxy), true);
                assert!(
                    actions.iter().all(|a| matches!(a, MigrationAction::Progress(r) if r.phase >= broker)),
                    "{broker:?} <- {proxy:?}: {actions:?}"
                );
            }
        }
        let m = migration(Cleaning);
        assert_eq!(decide(&m, &task(Switched), &task(Switched), true), vec![]);
    }

    #[test]
    fn nothing_to_say_when_the_broker_already_knows() {
        let m = migration(Following);
        assert_eq!(decide(&m, &task(Following), &task(Following), true), vec![]);
        assert_eq!(decide(&m, &Side::NoAnswer, &Side::NoAnswer, true), vec![]);
        assert_eq!(decide(&m, &no_task(0), &no_task(0), true), vec![]);
    }

    #[test]
    fn progress_is_refreshed_only_when_due_and_changed() {
        let mut m = migration(Following);
        let src = task_with(Following, json!({"lag_bytes": 10}));
        assert_eq!(decide(&m, &src, &Side::NoAnswer, false), vec![], "not due");
        let report =
            ProgressReport { phase: Following, progress: Some(json!({"lag_bytes": 10})), error: None, at: None };
        assert_eq!(decide(&m, &src, &Side::NoAnswer, true), vec![MigrationAction::Progress(report)]);
        m.progress = Some(json!({"lag_bytes": 10}));
        assert_eq!(decide(&m, &src, &Side::NoAnswer, true), vec![], "unchanged");
        // A phase change goes at once, with its progress, due or not.
        let m = migration(Starting);
        assert_eq!(
            decide(&m, &src, &Side::NoAnswer, false),
            vec![MigrationAction::Progress(ProgressReport {
                phase: Following,
                progress: Some(json!({"lag_bytes": 10})),
                error: None,
                at: None
            })]
        );
    }

    #[test]
    fn the_source_progress_wins_a_tie() {
        let m = migration(Starting);
        let actions = decide(
            &m,
            &task_with(Following, json!({"from":"src"})),
            &task_with(Following, json!({"from":"dst"})),
            true,
        );
        assert_eq!(
            actions,
            vec![MigrationAction::Progress(ProgressReport {
                phase: Following,
                progress: Some(json!({"from":"src"})),
                error: None,
                at: None
            })]
        );
    }

    #[test]
    fn a_non_fatal_error_is_recorded_once() {
        let mut m = migration(Following);
        let src = view(TaskView {
            phase: Following,
            progress: None,
            error: Some("lag growing".into()),
            phase_times: BTreeMap::new(),
        });
        let expected = ProgressReport { phase: Following, progress: None, error: Some("lag growing".into()), at: None };
        assert_eq!(decide(&m, &src, &Side::NoAnswer, false), vec![MigrationAction::Progress(expected)]);
        m.error = Some("lag growing".into());
        assert_eq!(decide(&m, &src, &Side::NoAnswer, false), vec![]);
    }

    #[test]
    fn commit_when_either_side_says_switched() {
        let m = migration(Switching);
        // Nobody switched yet: no commit, whatever the source's phase.
        for src in [Pending, Starting, Following, Switching] {
            let actions = decide(&m, &task(src), &task(Following), true);
            assert!(!actions.iter().any(|a| matches!(a, MigrationAction::Commit { .. })), "src {src:?}: {actions:?}");
        }
        // The source switched.
        assert_eq!(
            decide(&m, &task(Switched), &Side::NoAnswer, true),
            vec![progress(Switched), MigrationAction::Commit { epoch: 6 }]
        );
        // The destination switched (promoted, serving the slots): its word is enough, whether
        // the source still says switching, lost its task in a restart, or does not answer.
        for src in [task(Switching), no_task(0), Side::NoAnswer, Side::Unreadable("restarted".into())] {
            assert_eq!(
                decide(&m, &src, &task(Switched), false),
                vec![progress(Switched), MigrationAction::Commit { epoch: 6 }],
                "src {src:?}"
            );
        }
        // The report of `switched` carries the progress of the side that says so.
        let actions = decide(&m, &task(Switching), &task_with(Switched, json!({"promoted": true})), false);
        assert_eq!(
            actions,
            vec![
                MigrationAction::Progress(ProgressReport {
                    phase: Switched,
                    progress: Some(json!({"promoted": true})),
                    error: None,
                    at: None
                }),
                MigrationAction::Commit { epoch: 6 }
            ]
        );
    }

    #[test]
    fn a_recorded_switch_is_committed_whatever_the_proxies_show_now() {
        // `switched` in the broker came from a proxy's word; only the commit can follow it.
        let m = migration(Switched);
        for (src, dst) in [
            (Side::NoAnswer, Side::NoAnswer),
            (no_task(0), no_task(0)),
            (task(Switching), Side::NoAnswer),
            (task(Following), task(Following)),
        ] {
            assert_eq!(decide(&m, &src, &dst, true), vec![MigrationAction::Commit { epoch: 6 }], "{src:?} {dst:?}");
        }
    }

    #[test]
    fn switched_is_recorded_before_the_commit() {
        // Whatever the broker has before the switch, the report of `switched` comes first:
        // the broker commits only from `switched`.
        for broker in [Pending, Starting, Following, Switching] {
            let actions = decide(&migration(broker), &task(Switched), &task(Following), false);
            assert_eq!(actions, vec![progress(Switched), MigrationAction::Commit { epoch: 6 }], "{broker:?}");
        }
        let actions = decide(&migration(Switched), &task(Switched), &task(Switched), false);
        assert_eq!(actions, vec![MigrationAction::Commit { epoch: 6 }]);
    }

    #[test]
    fn the_commit_carries_the_migration_epoch() {
        let mut m = migration(Switched);
        m.epoch = 41;
        assert_eq!(decide(&m, &task(Switched), &Side::NoAnswer, false), vec![MigrationAction::Commit { epoch: 41 }]);
    }

    #[test]
    fn no_commit_once_committed() {
        for broker in [Committed, Cleaning, Done] {
            let actions = decide(&migration(broker), &task(Switched), &task(Switched), true);
            assert!(!actions.iter().any(|a| matches!(a, MigrationAction::Commit { .. })), "{broker:?}: {actions:?}");
        }
    }

    #[test]
    fn a_failed_task_fails_the_migration_before_the_switch() {
        for broker in [Pending, Starting, Following] {
            let m = migration(broker);
            assert_eq!(
                decide(&m, &task(Following), &failed_task("dst DBSIZE is 12, not 0"), false),
                vec![MigrationAction::Fail { error: "dst DBSIZE is 12, not 0".into(), source_stopped_epoch: None }],
                "{broker:?}"
            );
        }
        let m = migration(Following);
        match decide(
            &m,
            &view(TaskView { phase: Failed, progress: None, error: None, phase_times: BTreeMap::new() }),
            &Side::NoAnswer,
            false,
        )
        .as_slice()
        {
            [MigrationAction::Fail { error, .. }] => assert!(error.contains("m-1"), "{error}"),
            other => panic!("expected a fail, got {other:?}"),
        }
    }

    #[test]
    fn no_fail_once_switching_is_recorded_only_the_error() {
        // The broker allowed the switch: the source may have promoted the destination.
        let m = migration(Switching);
        for src in [task(Following), task(Switching), Side::NoAnswer] {
            let actions = decide(&m, &src, &failed_task("dst lost its node"), false);
            let error =
                ProgressReport { phase: Switching, progress: None, error: Some("dst lost its node".into()), at: None };
            assert_eq!(actions, vec![MigrationAction::Progress(error)], "{src:?}");
        }
        let mut m = migration(Switching);
        m.error = Some("dst lost its node".into());
        assert_eq!(decide(&m, &task(Switching), &failed_task("dst lost its node"), false), vec![]);
    }

    #[test]
    fn no_fail_once_the_destination_serves() {
        // The destination switched: failing would give the slots back without the writes it
        // took. The source's error is recorded with `switched`, and the migration commits.
        let m = migration(Switching);
        let actions = decide(&m, &failed_task("src lost its node"), &task(Switched), false);
        assert_eq!(
            actions,
            vec![
                MigrationAction::Progress(ProgressReport {
                    phase: Switched,
                    progress: None,
                    error: Some("src lost its node".into()),
                    at: None
                }),
                MigrationAction::Commit { epoch: 6 }
            ]
        );
        let m = migration(Switched);
        let actions = decide(&m, &Side::NoAnswer, &failed_task("late"), false);
        assert!(!actions.iter().any(|a| matches!(a, MigrationAction::Fail { .. })), "{actions:?}");
        assert_eq!(actions.last(), Some(&MigrationAction::Commit { epoch: 6 }));
        // Recorded once.
        let mut m = migration(Switched);
        m.error = Some("late".into());
        assert_eq!(
            decide(&m, &Side::NoAnswer, &failed_task("late"), false),
            vec![MigrationAction::Commit { epoch: 6 }]
        );
    }

    #[test]
    fn a_switched_source_outranks_a_failed_destination() {
        // The destination's error is recorded with the switch.
        let actions = decide(&migration(Switching), &task(Switched), &failed_task("oops"), false);
        let switched = ProgressReport { phase: Switched, progress: None, error: Some("oops".into()), at: None };
        assert_eq!(actions, vec![MigrationAction::Progress(switched), MigrationAction::Commit { epoch: 6 }]);
    }

    #[test]
    fn ended_migrations_are_left_alone() {
        for broker in [Done, Failed, Aborted] {
            assert_eq!(decide(&migration(broker), &task(Switched), &failed_task("x"), true), vec![]);
        }
    }

    // ---- after the commit ----

    #[test]
    fn the_proxies_have_not_cleaned_yet() {
        let m = migration(Committed);
        // Both answer, neither has run a garbage pass at the commit's epoch: cleaning.
        assert_eq!(decide(&m, &no_task(6), &no_task(6), true), vec![progress(Cleaning)]);
        assert_eq!(decide(&m, &task(Switched), &task(Switched), true), vec![progress(Cleaning)]);
        // One clean, the other not (or still listing its task before done).
        assert_eq!(decide(&m, &no_task(COMMITTED), &no_task(6), true), vec![progress(Cleaning)]);
        assert_eq!(decide(&m, &clean(task(Cleaning), COMMITTED), &no_task(COMMITTED), true), vec![progress(Cleaning)]);
        // Nobody answers: nothing known, nothing reported.
        assert_eq!(decide(&m, &Side::NoAnswer, &Side::NoAnswer, true), vec![]);
        // Cleaning already recorded: nothing new.
        assert_eq!(decide(&migration(Cleaning), &no_task(6), &no_task(6), true), vec![]);
    }

    #[test]
    fn done_once_both_are_clean_at_the_commit_epoch() {
        let m = migration(Cleaning);
        for (src, dst) in [
            (no_task(COMMITTED), no_task(COMMITTED)),
            (no_task(COMMITTED + 3), no_task(COMMITTED)),
            (clean(task(Done), COMMITTED), no_task(COMMITTED + 1)),
            (clean(task(Done), COMMITTED), clean(task(Done), COMMITTED)),
        ] {
            assert_eq!(decide(&m, &src, &dst, false), vec![progress(Done)], "{src:?} {dst:?}");
        }
        // A clean epoch below the commit's is not clean, whatever the task says.
        assert_eq!(decide(&m, &clean(task(Done), 6), &no_task(COMMITTED), true), vec![]);
        // A task in a phase before done is not done, clean epoch or not; nor a failed one
        // (whose error is recorded).
        for phase in [Switched, Cleaning, Failed] {
            let actions = decide(&m, &clean(task(phase), COMMITTED), &no_task(COMMITTED), true);
            assert!(
                actions.iter().all(|a| matches!(a, MigrationAction::Progress(r) if r.phase == Cleaning)),
                "{phase:?}: {actions:?}"
            );
        }
        // From committed straight to done: cleaning is recorded first, so every phase has
        // its timestamp.
        assert_eq!(
            decide(&migration(Committed), &no_task(COMMITTED), &no_task(COMMITTED), false),
            vec![progress(Cleaning), progress(Done)]
        );
    }

    #[test]
    fn an_unreachable_proxy_blocks_done() {
        for broker in [Committed, Cleaning] {
            let m = migration(broker);
            for unknown in [Side::NoAnswer, Side::Unreadable("m-1 at epoch 5".into())] {
                let clean_side = no_task(COMMITTED);
                for (src, dst) in [(&unknown, &clean_side), (&clean_side, &unknown)] {
                    let actions = decide(&m, src, dst, true);
                    assert!(
                        !actions.iter().any(|a| matches!(a, MigrationAction::Progress(r) if r.phase == Done)),
                        "{broker:?}: {src:?} {dst:?}: {actions:?}"
                    );
                }
            }
        }
        // The other proxy still working is reported as cleaning.
        let m = migration(Committed);
        assert_eq!(decide(&m, &Side::NoAnswer, &cleaning_with(4), true), vec![keys(Cleaning, 4)]);
    }

    #[test]
    fn a_proxy_that_left_the_cluster_still_counts() {
        // The source gave all its slots away: it is a free proxy now, with no cluster in its
        // Status, and its clean epoch is read like any other.
        let m = migration(Cleaning);
        let mut st = statuses(vec![(SRC, vec![]), (DST, vec![])]);
        for (proxy, clean_epoch) in [(SRC, 6), (DST, COMMITTED)] {
            let s = st.get_mut(proxy).expect("listed");
            s.clean_epoch = clean_epoch;
            s.cluster = if proxy == SRC { String::new() } else { "shop".into() };
        }
        assert_eq!(side(&m, true, &st), no_task(6));
        assert_eq!(decide(&m, &side(&m, true, &st), &side(&m, false, &st), true), vec![]);
        st.get_mut(SRC).expect("listed").clean_epoch = COMMITTED;
        assert_eq!(decide(&m, &side(&m, true, &st), &side(&m, false, &st), true), vec![progress(Done)]);
        // Not answering at all (not even listed among the statuses) blocks done.
        st.remove(SRC);
        assert_eq!(decide(&m, &side(&m, true, &st), &side(&m, false, &st), true), vec![]);
    }

    #[test]
    fn cleaning_progress_sums_the_keys_deleted() {
        let m = migration(Committed);
        let actions = decide(&m, &clean(cleaning_with(10), 6), &clean(cleaning_with(3), 6), true);
        assert_eq!(actions, vec![keys(Cleaning, 13)]);
        // A side without the count (or not listing its task) adds nothing.
        assert_eq!(decide(&m, &cleaning_with(10), &task(Cleaning), true), vec![keys(Cleaning, 10)]);
        assert_eq!(decide(&m, &no_task(6), &cleaning_with(7), true), vec![keys(Cleaning, 7)]);
        assert_eq!(
            decide(&m, &clean(task_with(Done, json!({"keys_deleted": 2})), COMMITTED), &cleaning_with(5), true),
            vec![keys(Cleaning, 7)]
        );
        // Refreshed when due and changed; the final count goes with done.
        let mut m = migration(Cleaning);
        m.progress = Some(json!({"keys_deleted": 13}));
        assert_eq!(decide(&m, &cleaning_with(10), &cleaning_with(3), true), vec![]);
        assert_eq!(decide(&m, &cleaning_with(20), &cleaning_with(3), false), vec![], "not due");
        assert_eq!(decide(&m, &cleaning_with(20), &cleaning_with(3), true), vec![keys(Cleaning, 23)]);
        let done = |n| clean(task_with(Done, json!({ "keys_deleted": n })), COMMITTED);
        assert_eq!(decide(&m, &done(20), &done(5), false), vec![keys(Done, 25)]);
    }

    #[test]
    fn a_failed_cleanup_is_recorded_not_done() {
        let m = migration(Cleaning);
        let actions = decide(&m, &clean(failed_task("UNLINK refused"), COMMITTED), &no_task(COMMITTED), false);
        assert_eq!(
            actions,
            vec![MigrationAction::Progress(ProgressReport {
                phase: Cleaning,
                progress: None,
                error: Some("UNLINK refused".into()),
                at: None
            })]
        );
        let m = migration(Committed);
        assert_eq!(
            decide(&m, &failed_task("UNLINK refused"), &Side::NoAnswer, false),
            vec![MigrationAction::Progress(ProgressReport {
                phase: Cleaning,
                progress: None,
                error: Some("UNLINK refused".into()),
                at: None
            })]
        );
    }

    #[test]
    fn a_record_without_committed_epoch_waits_for_the_current_epoch() {
        let mut m = migration(Cleaning);
        m.committed_epoch = None;
        // Without a stand-in nothing can be clean.
        assert_eq!(decide(&m, &no_task(COMMITTED), &no_task(COMMITTED), true), vec![]);
        let with = assume_committed_epoch(&m, 12).expect("needs a stand-in");
        assert_eq!(with.committed_epoch, Some(12));
        assert_eq!(decide(&with, &no_task(COMMITTED), &no_task(12), true), vec![]);
        assert_eq!(decide(&with, &no_task(12), &no_task(13), true), vec![progress(Done)]);
        // Only committed, unended records without the field get one.
        assert_eq!(assume_committed_epoch(&migration(Cleaning), 12), None);
        assert_eq!(assume_committed_epoch(&migration(Switched), 12), None);
        let mut done = migration(Done);
        done.committed_epoch = None;
        assert_eq!(assume_committed_epoch(&done, 12), None);
    }

    #[test]
    fn only_reportable_phases_are_reported() {
        let all = [Pending, Starting, Following, Switching, Switched, Committed, Cleaning, Done, Failed, Aborted];
        let sides: Vec<Side> = all
            .iter()
            .map(|p| task(*p))
            .chain([
                Side::NoAnswer,
                no_task(0),
                no_task(COMMITTED),
                clean(task(Done), COMMITTED),
                Side::Unreadable("x".into()),
                failed_task("e"),
            ])
            .collect();
        for broker in all {
            for s in &sides {
                for d in &sides {
                    for a in decide(&migration(broker), s, d, true) {
                        if let MigrationAction::Progress(r) = a {
                            assert!(reportable(r.phase), "{broker:?} {s:?} {d:?}: {r:?}");
                            assert!(r.phase >= broker, "backwards: {broker:?} {s:?} {d:?}: {r:?}");
                        }
                    }
                }
            }
        }
    }

    // ---- phases passed between two rounds ----

    #[test]
    fn phase_times_are_read_and_stripped_from_the_progress() {
        let mut t = raw("m-1", 6, "following", true);
        t.progress_json = format!(
            r#"{{"lag_bytes":7,"phase_times":{{"starting":"{}","Following":" {} ","teleporting":"{}","switching":"soon","switched":3}}}}"#,
            stamp(1),
            stamp(2),
            stamp(3)
        );
        let v = parse_task(&t).expect("parses");
        assert_eq!(v.progress, Some(json!({"lag_bytes": 7})), "phase_times is not forwarded");
        let expected: BTreeMap<MigrationPhase, SystemTime> = [(Starting, time(1)), (Following, time(2))].into();
        assert_eq!(v.phase_times, expected, "unknown phases and unreadable times are left out");
        // Nothing but the times: no progress at all.
        t.progress_json = format!(r#"{{"phase_times":{{"starting":"{}"}}}}"#, stamp(1));
        let v = parse_task(&t).expect("parses");
        assert_eq!((v.progress, v.phase_times.len()), (None, 1));
        t.progress_json = r#"{"phase_times":[1]}"#.into();
        assert_eq!(parse_task(&t).expect("parses").phase_times, BTreeMap::new());
    }

    #[test]
    fn phases_passed_between_two_rounds_are_reported_in_order_with_their_times() {
        let m = migration(Pending);
        // The source went through starting and following and is switching; the destination
        // started earlier than the source (the earliest time counts) and follows.
        let src =
            timed(task_with(Switching, json!({"lag_bytes": 0})), &[(Starting, 3), (Following, 5), (Switching, 9)]);
        let dst = timed(task(Following), &[(Starting, 2), (Following, 6)]);
        let switching = ProgressReport {
            phase: Switching,
            progress: Some(json!({"lag_bytes": 0})),
            error: None,
            at: Some(stamp(9)),
        };
        assert_eq!(
            decide(&m, &src, &dst, false),
            vec![at(Starting, 2), at(Following, 5), MigrationAction::Progress(switching.clone())]
        );
        // Only the phases after the broker's: from following, none in between.
        assert_eq!(decide(&migration(Following), &src, &dst, false), vec![MigrationAction::Progress(switching)]);
        // No times at all: the target alone, as before.
        assert_eq!(decide(&m, &task(Switching), &task(Following), false), vec![progress(Switching)]);
    }

    #[test]
    fn no_phase_is_invented() {
        // Keys mode skips following: neither task entered it, so it is not reported.
        let m = migration(Pending);
        let src = timed(task(Switching), &[(Starting, 1), (Switching, 4)]);
        let dst = timed(task(Starting), &[(Starting, 2)]);
        assert_eq!(decide(&m, &src, &dst, false), vec![at(Starting, 1), at(Switching, 4)]);
        // A task that lists the target without a time for it: the broker's clock.
        let src = timed(task(Switching), &[(Starting, 1)]);
        assert_eq!(decide(&m, &src, &Side::NoAnswer, false), vec![at(Starting, 1), progress(Switching)]);
    }

    #[test]
    fn the_phases_before_a_switch_go_before_switched_and_the_commit() {
        let m = migration(Starting);
        let src = timed(task(Switching), &[(Starting, 1), (Following, 3), (Switching, 7)]);
        let dst =
            timed(task_with(Switched, json!({"promoted": true})), &[(Starting, 2), (Following, 2), (Switched, 8)]);
        let switched = ProgressReport {
            phase: Switched,
            progress: Some(json!({"promoted": true})),
            error: None,
            at: Some(stamp(8)),
        };
        assert_eq!(
            decide(&m, &src, &dst, false),
            vec![
                at(Following, 2),
                at(Switching, 7),
                MigrationAction::Progress(switched),
                MigrationAction::Commit { epoch: 6 }
            ]
        );
        // Once switched is recorded: only the commit.
        assert_eq!(decide(&migration(Switched), &src, &dst, false), vec![MigrationAction::Commit { epoch: 6 }]);
    }

    #[test]
    fn a_failure_shows_how_far_the_migration_got() {
        let m = migration(Pending);
        let src = timed(task(Following), &[(Starting, 1), (Following, 4)]);
        let dst = timed(failed_task("replication broke"), &[(Starting, 2)]);
        assert_eq!(
            decide(&m, &src, &dst, false),
            vec![
                at(Starting, 1),
                at(Following, 4),
                MigrationAction::Fail { error: "replication broke".into(), source_stopped_epoch: None }
            ]
        );
        // Never to switching: `fail` is refused from switching on (the switch is allowed).
        let src = timed(failed_task("not ready"), &[(Starting, 1), (Following, 3), (Switching, 4), (Switched, 5)]);
        assert_eq!(
            decide(&migration(Starting), &src, &Side::NoAnswer, false),
            vec![at(Following, 3), MigrationAction::Fail { error: "not ready".into(), source_stopped_epoch: None }]
        );
    }

    #[test]
    fn cleaning_and_done_carry_the_proxies_times() {
        let m = migration(Committed);
        let both_done = |s: u64, d: u64| {
            (
                clean(timed(task(Done), &[(Cleaning, 3), (Done, s)]), COMMITTED),
                clean(timed(task(Done), &[(Cleaning, 2), (Done, d)]), COMMITTED),
            )
        };
        // Cleaning when the first proxy started; done when the last one finished.
        let (src, dst) = both_done(9, 7);
        assert_eq!(decide(&m, &src, &dst, false), vec![at(Cleaning, 2), at(Done, 9)]);
        assert_eq!(decide(&migration(Cleaning), &src, &dst, false), vec![at(Done, 9)]);
        // A proxy clean without a task does not say when: the broker's clock for done.
        let dst = no_task(COMMITTED);
        assert_eq!(decide(&m, &src, &dst, false), vec![at(Cleaning, 3), progress(Done)]);
        // Cleaning is reported on the way to done even when no task lists it, as before.
        assert_eq!(
            decide(&m, &no_task(COMMITTED), &no_task(COMMITTED), false),
            vec![progress(Cleaning), progress(Done)]
        );
        // Cleaning itself, with the time the first task started it.
        let src = timed(cleaning_with(4), &[(Cleaning, 5)]);
        let dst = timed(cleaning_with(1), &[(Cleaning, 4)]);
        let expected = ProgressReport {
            phase: Cleaning,
            progress: Some(json!({"keys_deleted": 5})),
            error: None,
            at: Some(stamp(4)),
        };
        assert_eq!(decide(&m, &src, &dst, false), vec![MigrationAction::Progress(expected)]);
    }

    #[test]
    fn a_progress_refresh_carries_no_time() {
        let mut m = migration(Following);
        m.progress = Some(json!({"lag_bytes": 10}));
        let src = timed(task_with(Following, json!({"lag_bytes": 3})), &[(Starting, 1), (Following, 2)]);
        assert_eq!(
            decide(&m, &src, &Side::NoAnswer, true),
            vec![MigrationAction::Progress(ProgressReport {
                phase: Following,
                progress: Some(json!({"lag_bytes": 3})),
                error: None,
                at: None
            })]
        );
    }

    // ---- repeated and concurrent coordinators ----

    /// The broker's migration rules (docs/broker-api.md), as far as a report can hit them.
    #[derive(Debug, Clone, PartialEq)]
    struct ModelBroker {
        m: Migration,
        epoch_bumps: u32,
        /// The phases entered, in order, with the `at` each was reported with.
        entered: Vec<(MigrationPhase, Option<String>)>,
    }

    #[derive(Debug, PartialEq)]
    enum Refusal {
        Conflict,
    }

    impl ModelBroker {
        fn apply(&mut self, action: &MigrationAction) -> Result<(), Refusal> {
            let current = self.m.phase;
            match action {
                MigrationAction::Progress(r) => {
                    if r.phase != current {
                        if !reportable(r.phase) || current.is_final() || r.phase < current {
                            return Err(Refusal::Conflict);
                        }
                        if r.phase >= Cleaning && current < Committed {
                            return Err(Refusal::Conflict);
                        }
                        if r.phase < Committed && current >= Committed {
                            return Err(Refusal::Conflict);
                        }
                        self.m.phase = r.phase;
                        self.entered.push((r.phase, r.at.clone()));
                        if r.phase == Done {
                            // Out of the proxies' configs.
                            self.epoch_bumps += 1;
                        }
                    }
                    if r.progress.is_some() {
                        self.m.progress = r.progress.clone();
                    }
                    if r.error.is_some() {
                        self.m.error = r.error.clone();
                    }
                }
                MigrationAction::Commit { epoch } => {
                    if *epoch != self.m.epoch {
                        return Err(Refusal::Conflict);
                    }
                    match current {
                        Switched => {
                            self.m.phase = Committed;
                            self.m.committed_epoch = Some(COMMITTED);
                            self.epoch_bumps += 1;
                            self.entered.push((Committed, None));
                        }
                        Committed | Cleaning | Done => {}
                        _ => return Err(Refusal::Conflict),
                    }
                }
                MigrationAction::Fail { error, .. } => match current {
                    Pending | Starting | Following | Switching => {
                        self.m.phase = Failed;
                        self.m.error = Some(error.clone());
                        self.epoch_bumps += 1;
                        self.entered.push((Failed, None));
                    }
                    Failed | Aborted => {}
                    _ => return Err(Refusal::Conflict),
                },
            }
            Ok(())
        }

        /// Runs one coordinator's decision on `snapshot` (possibly stale) against the broker;
        /// a refusal stops that coordinator's list, as the real loop does.
        fn run(&mut self, actions: &[MigrationAction]) -> Vec<Result<(), Refusal>> {
            let mut out = Vec::new();
            for a in actions {
                let r = self.apply(a);
                let refused = r.is_err();
                out.push(r);
                if refused {
                    break;
                }
            }
            out
        }
    }

    fn broker(phase: MigrationPhase) -> ModelBroker {
        ModelBroker { m: migration(phase), epoch_bumps: 0, entered: Vec::new() }
    }

    /// What the proxies report at each step of a replication migration, source then
    /// destination, after which the broker must show the phase at the end of the row.
    fn script() -> Vec<(Side, Side, MigrationPhase)> {
        vec![
            (task(Pending), task(Starting), Starting),
            (task(Following), task(Following), Following),
            (task_with(Following, json!({"lag_bytes": 5})), task(Following), Following),
            (task(Switching), task(Following), Switching),
            // The destination is promoted: its word commits.
            (task(Switching), task(Switched), Committed),
            // The proxies took the committed config; no garbage pass at its epoch yet.
            (no_task(6), no_task(6), Cleaning),
            (cleaning_with(5), clean(task(Cleaning), 6), Cleaning),
            (clean(task_with(Done, json!({"keys_deleted": 10})), COMMITTED), cleaning_with(3), Cleaning),
            (no_task(COMMITTED), clean(task(Done), COMMITTED + 1), Done),
        ]
    }

    /// A migration faster than the rounds: the proxies went through several phases between
    /// two reads, and say when by their `phase_times`.
    fn timed_script() -> Vec<(Side, Side, MigrationPhase)> {
        vec![
            (
                timed(task(Following), &[(Starting, 1), (Following, 3)]),
                timed(task(Following), &[(Starting, 2), (Following, 2)]),
                Following,
            ),
            (
                timed(task(Switching), &[(Starting, 1), (Following, 3), (Switching, 5)]),
                timed(task(Switched), &[(Starting, 2), (Following, 2), (Switched, 6)]),
                Committed,
            ),
            (timed(cleaning_with(5), &[(Cleaning, 8)]), no_task(6), Cleaning),
            (
                clean(timed(task(Done), &[(Cleaning, 8), (Done, 10)]), COMMITTED),
                clean(timed(task(Done), &[(Cleaning, 9), (Done, 12)]), COMMITTED),
                Done,
            ),
        ]
    }

    fn scripts() -> [Vec<(Side, Side, MigrationPhase)>; 2] {
        [script(), timed_script()]
    }

    #[test]
    fn a_whole_migration_driven_by_reports() {
        for script in scripts() {
            let mut b = broker(Pending);
            for (src, dst, expected) in script {
                let actions = decide(&b.m, &src, &dst, true);
                assert!(b.run(&actions).iter().all(Result::is_ok), "{actions:?} refused at {:?}", b.m.phase);
                assert_eq!(b.m.phase, expected);
            }
            assert_eq!(b.epoch_bumps, 2, "the commit, and done");
            let phases: Vec<MigrationPhase> = b.entered.iter().map(|(p, _)| *p).collect();
            assert_eq!(phases, vec![Starting, Following, Switching, Switched, Committed, Cleaning, Done]);
        }
    }

    #[test]
    fn a_fast_migration_shows_every_phase_with_the_proxies_times() {
        let mut b = broker(Pending);
        for (src, dst, _) in timed_script() {
            b.run(&decide(&b.m, &src, &dst, true));
        }
        let expected = [
            (Starting, Some(1)),
            (Following, Some(2)),
            (Switching, Some(5)),
            (Switched, Some(6)),
            (Committed, None),
            (Cleaning, Some(8)),
            (Done, Some(12)),
        ];
        let expected: Vec<(MigrationPhase, Option<String>)> =
            expected.into_iter().map(|(p, t)| (p, t.map(stamp))).collect();
        assert_eq!(b.entered, expected);
    }

    #[test]
    fn repeating_a_round_is_harmless() {
        for script in scripts() {
            repeating_a_round_is_harmless_in(script);
        }
    }

    fn repeating_a_round_is_harmless_in(script: Vec<(Side, Side, MigrationPhase)>) {
        let mut b = broker(Pending);
        for (src, dst, expected) in script {
            for _ in 0..3 {
                let actions = decide(&b.m, &src, &dst, true);
                assert!(b.run(&actions).iter().all(Result::is_ok), "{actions:?}");
            }
            // The same view again may take one more step (right after the commit, proxies
            // that still show the switch are not clean: cleaning), never a step back.
            assert!(b.m.phase >= expected, "{:?} < {expected:?}", b.m.phase);
            assert!(b.m.phase <= Cleaning.max(expected), "{:?} after {expected:?}", b.m.phase);
            // Once applied, the same view asks for nothing more.
            assert_eq!(decide(&b.m, &src, &dst, true), vec![], "at {expected:?}");
        }
        assert_eq!(b.m.phase, Done);
        assert_eq!(b.epoch_bumps, 2);
    }

    #[test]
    fn two_coordinators_on_the_same_snapshot_are_harmless() {
        // Both read the broker and the proxies at the same moment and act one after the
        // other: the second one's calls are repeats (accepted, no change) or stale (409),
        // and the result is what one coordinator alone would have produced.
        for (src, dst, _) in scripts().into_iter().flatten() {
            for start in [Pending, Starting, Following, Switching, Switched, Committed, Cleaning] {
                let mut alone = broker(start);
                let actions = decide(&alone.m, &src, &dst, true);
                alone.run(&actions);

                let mut both = broker(start);
                let snapshot = both.m.clone();
                let a = decide(&snapshot, &src, &dst, true);
                let b = decide(&snapshot, &src, &dst, true);
                both.run(&a);
                both.run(&b);
                assert_eq!(both, alone, "start {start:?}, src {src:?}, dst {dst:?}");
            }
        }
    }

    #[test]
    fn a_stale_coordinator_cannot_move_the_broker_back() {
        // Coordinator B read the broker and the proxies before A's reports went through
        // (and the proxies moved on since): nothing B asks for moves a phase backwards, and
        // its commit is either a repeat or refused.
        for script in scripts() {
            a_stale_coordinator_cannot_move_the_broker_back_in(script);
        }
    }

    fn a_stale_coordinator_cannot_move_the_broker_back_in(script: Vec<(Side, Side, MigrationPhase)>) {
        for (i, (old_src, old_dst, _)) in script.iter().enumerate() {
            let mut b = broker(Pending);
            let stale_snapshot = b.m.clone();
            // A drives the migration further, to every later point of the script.
            for (src, dst, _) in &script[..=i] {
                let actions = decide(&b.m, src, dst, true);
                b.run(&actions);
            }
            for later in script.iter().skip(i) {
                let mut b2 = b.clone();
                let before = b2.m.phase;
                let actions = decide(&b2.m, &later.0, &later.1, true);
                b2.run(&actions);
                let after_a = b2.m.phase;
                let stale = decide(&stale_snapshot, old_src, old_dst, true);
                b2.run(&stale);
                assert!(
                    b2.m.phase >= after_a && after_a >= before,
                    "stale {stale:?} moved {after_a:?} to {:?}",
                    b2.m.phase
                );
                assert!(b2.epoch_bumps <= 1 + u32::from(b2.m.phase == Done), "{:?}", b2.entered);
                assert!(b2.entered.windows(2).all(|w| w[0].0 < w[1].0), "entered in order: {:?}", b2.entered);
            }
        }
    }

    #[test]
    fn fail_and_commit_never_both_happen() {
        // Whatever two coordinators see (one a failed task, the other a switched source),
        // the broker ends either failed or committed, never first one and then the other.
        let views = [
            (failed_task("x"), task(Following)),
            (task(Switched), task(Switched)),
            (task(Following), failed_task("y")),
            (task(Switching), task(Switched)),
        ];
        for start in [Pending, Following, Switching, Switched] {
            for (s1, d1) in &views {
                for (s2, d2) in &views {
                    let mut b = broker(start);
                    let snapshot = b.m.clone();
                    let first = decide(&snapshot, s1, d1, true);
                    let second = decide(&snapshot, s2, d2, true);
                    b.run(&first);
                    b.run(&second);
                    assert!(b.epoch_bumps <= 1, "{start:?}: {first:?} then {second:?} → {:?}", b.m.phase);
                }
            }
        }
    }
}
