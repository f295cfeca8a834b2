//! Migrations as the end-to-end tests drive and check them: the broker's migrations API
//! (`docs/broker-api.md`), watching a migration's phases, and the checks docs/design.md's
//! guarantees need (keys on the nodes that own their slots, every slot served).

use crate::broker::BrokerClient;
use crate::client::RespConn;
use crate::local::LocalCluster;
use crate::python::{PyReport, PyVerify};
use crate::workload::{cluster_connection, key_in_slot, VerifyReport, Workload, WorkloadReport};
use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::StreamExt;
use redis::AsyncCommands;
use sluice_common::api::{CreateMigration, Migration, MigrationList, ScalePlan, ScaleRequest};
use sluice_common::model::{ClusterView, MigrationMode, MigrationPhase, SlotRange};
use sluice_common::resp::Frame;
use sluice_common::slot::{key_slot, SLOT_COUNT};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

/// A non-2xx answer of the broker: `{"error":{"code","message"}}`.
#[derive(Debug, Clone)]
pub struct ApiRefusal {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl fmt::Display for ApiRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// POSTs `body` to `url`: the decoded 2xx answer, or the broker's refusal.
async fn post_json<T: serde::de::DeserializeOwned>(
    url: &str,
    body: &impl serde::Serialize,
) -> Result<std::result::Result<T, ApiRefusal>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let resp = http.post(url).json(body).send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("read the broker's answer")?;
    if status.is_success() {
        return Ok(Ok(serde_json::from_str(&text).with_context(|| format!("decode the broker's answer: {text}"))?));
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(Err(ApiRefusal {
        status: status.as_u16(),
        code: v["error"]["code"].as_str().unwrap_or_default().to_string(),
        message: v["error"]["message"].as_str().unwrap_or(&text).to_string(),
    }))
}

/// The migrations API and the end-of-test checks on a [`LocalCluster`]. A trait because
/// the deployment itself lives in `sluice-local` (what `sluice local` runs), which knows
/// nothing of tests; `LocalCluster` is its only implementation.
// The futures are only awaited on the concrete `LocalCluster`, whose auto traits (Send) the
// compiler sees: the bound the lint asks for would say nothing more.
#[allow(async_fn_in_trait)]
pub trait MigrationCluster {
    /// The deployment.
    fn local(&self) -> &LocalCluster;

    /// The cluster as the broker holds it now.
    async fn view(&self) -> Result<ClusterView> {
        let local = self.local();
        local.broker_client().cluster(&local.spec.cluster).await
    }

    /// `POST …/migrations`: the created migration (202), or the broker's refusal.
    async fn try_start_migration(
        &self,
        src: &str,
        dst: &str,
        slots: &[SlotRange],
        mode: MigrationMode,
    ) -> Result<std::result::Result<Migration, ApiRefusal>> {
        let body = CreateMigration { src: src.to_string(), dst: dst.to_string(), slots: slots.to_vec(), mode };
        post_json(&migrations_url(self.local()), &body).await
    }

    /// `POST …/migrations`, which must be accepted.
    async fn start_migration(
        &self,
        src: &str,
        dst: &str,
        slots: &[SlotRange],
        mode: MigrationMode,
    ) -> Result<Migration> {
        self.try_start_migration(src, dst, slots, mode)
            .await?
            .map_err(|r| anyhow!("the broker refused the migration {src} -> {dst} {slots:?}: {r}"))
    }

    /// `GET …/migrations/{id}`.
    async fn migration(&self, id: &str) -> Result<Migration> {
        let local = self.local();
        local.broker_client().get(&format!("/clusters/{}/migrations/{id}", local.spec.cluster)).await
    }

    /// `POST …/migrations/{id}/abort`.
    async fn abort_migration(&self, id: &str) -> Result<std::result::Result<Migration, ApiRefusal>> {
        post_json(&format!("{}/{id}/abort", migrations_url(self.local())), &serde_json::json!({})).await
    }

    /// `POST …/scale`: the plan (202), or the broker's refusal.
    async fn try_scale(&self, req: &ScaleRequest) -> Result<std::result::Result<ScalePlan, ApiRefusal>> {
        let local = self.local();
        post_json(&format!("{}/api/v1/clusters/{}/scale", local.broker.url(), local.spec.cluster), req).await
    }

    /// `GET /api/v1/migrations?all=true`: every migration the broker still lists, of every
    /// cluster, ended ones included (a cluster keeps its last 100 ended ones).
    async fn all_migrations(&self) -> Result<Vec<Migration>> {
        Ok(self.local().broker_client().get::<MigrationList>("/migrations?all=true").await?.migrations)
    }

    /// `GET /api/v1/migrations`: the migrations that have not ended, of every cluster.
    async fn running_migrations(&self) -> Result<Vec<Migration>> {
        Ok(self.local().broker_client().get::<MigrationList>("/migrations").await?.migrations)
    }

    /// A watch on migration `id` that records every phase it sees.
    fn watch_migration(&self, id: &str) -> MigrationWatch {
        MigrationWatch {
            broker: self.local().broker_client(),
            path: format!("/clusters/{}/migrations/{id}", self.local().spec.cluster),
            id: id.to_string(),
            started: Instant::now(),
            samples: Vec::new(),
            last: None,
            polls: 0,
        }
    }

    /// Polls migration `id` every 5 ms until `pred` holds on its record; fails after `timeout`
    /// naming the phases seen.
    async fn wait_migration_phase(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl FnMut(&Migration) -> bool,
    ) -> Result<Migration> {
        self.watch_migration(id).until("the migration phase", timeout, pred).await
    }

    /// Stops the writers and checks what a user would: no error and no wrong read while they
    /// ran, every acknowledged write (and TTL) read back, the sum of DBSIZE over every node
    /// equal to the live keys, every key on the node that owns its slot. Returns what it
    /// found, for a test's own further checks.
    async fn check_nothing_lost_or_misplaced(&self, workload: &mut Workload) -> Result<NothingLost> {
        self.check_nothing_lost_or_misplaced_with(workload, &CheckOptions::default()).await
    }

    /// [`MigrationCluster::check_nothing_lost_or_misplaced`], for a situation that differs as
    /// `options` says (other nodes, client errors expected from a fault).
    async fn check_nothing_lost_or_misplaced_with(
        &self,
        workload: &mut Workload,
        options: &CheckOptions,
    ) -> Result<NothingLost> {
        // A no-op that returns the same report when the test stopped the writers already.
        let report = workload.stop().await?;
        eprintln!("{report}");
        if !options.tolerate_client_errors {
            ensure!(report.total_errors() == 0, "the client saw errors:\n{report}");
        }
        ensure!(report.wrong_reads == 0, "the client read wrong values:\n{report}");
        let verify = workload.verify().await?;
        eprintln!("{verify}");
        ensure!(verify.mismatches == 0, "acknowledged writes were lost:\n{verify}");
        ensure!(verify.ttl_mismatches == 0, "TTLs are wrong:\n{verify}");
        let placement = nodes_hold_live_keys(self.local(), options, verify.live_keys).await?;
        Ok(NothingLost { report, verify, placement })
    }

    /// The same checks over the report of redis-py's `workload.py` (stopped by the test): no
    /// error, no wrong read, its read-back found every acknowledged write and TTL, and the
    /// nodes hold exactly its live keys, each on its owner. Returns its read-back.
    async fn check_py_nothing_lost_or_misplaced<'r>(
        &self,
        report: &'r PyReport,
        options: &CheckOptions,
    ) -> Result<&'r PyVerify> {
        if !options.tolerate_client_errors {
            ensure!(
                report.total_errors() == 0,
                "redis-py saw errors: {:?} {:#?}",
                report.errors,
                report.error_examples
            );
        }
        ensure!(report.wrong_reads == 0, "redis-py read wrong values: {:#?}", report.wrong_read_examples);
        let Some(verify) = &report.verify else {
            bail!("workload.py could not read its keys back: {:?}", report.verify_error)
        };
        ensure!(verify.mismatches == 0, "acknowledged writes were lost: {:#?}", verify.examples);
        ensure!(verify.ttl_mismatches == 0, "TTLs are wrong: {:#?}", verify.examples);
        nodes_hold_live_keys(self.local(), options, verify.live_keys).await?;
        Ok(verify)
    }

    /// Reads every key of the redis nodes at `nodes` directly (`SCAN`) and checks that the
    /// broker's current view gives its slot to that node (untagged or migrating: the serving
    /// side).
    async fn check_keys_on_owners(&self, nodes: &[String]) -> Result<Placement> {
        let view = self.view().await?;
        let owners = slot_owner_nodes(&view);
        let mut placement = Placement::default();
        for addr in nodes {
            let addr = addr.clone();
            let keys = node_keys(&addr).await?;
            placement.per_node.push((addr.clone(), keys.len()));
            for k in keys {
                placement.keys += 1;
                let slot = key_slot(k.as_bytes());
                let owner = owners[usize::from(slot)].as_deref();
                if owner != Some(addr.as_str()) {
                    placement.misplaced += 1;
                    if placement.examples.len() < 20 {
                        placement.examples.push(format!(
                            "{k} (slot {slot}) is on node {addr}, but the slot belongs to {}",
                            owner.unwrap_or("nobody")
                        ));
                    }
                }
            }
        }
        Ok(placement)
    }
}

fn migrations_url(cluster: &LocalCluster) -> String {
    format!("{}/api/v1/clusters/{}/migrations", cluster.broker.url(), cluster.spec.cluster)
}

impl MigrationCluster for LocalCluster {
    fn local(&self) -> &LocalCluster {
        self
    }
}

/// The nodes `options` names (every node started by default) hold exactly `live_keys`
/// (sum of `DBSIZE`), each key on the node that owns its slot.
async fn nodes_hold_live_keys(cluster: &LocalCluster, options: &CheckOptions, live_keys: usize) -> Result<Placement> {
    let nodes = options.nodes.clone().unwrap_or_else(|| cluster.node_addrs());
    let mut total = 0;
    for addr in &nodes {
        let node = cluster.nodes.iter().find(|n| &n.addr() == addr).ok_or_else(|| anyhow!("no node {addr} here"))?;
        total += node.dbsize().await?;
    }
    ensure!(total == live_keys as i64, "sum of DBSIZE over the nodes {nodes:?} {total}, live keys {live_keys}");
    let placement = cluster.check_keys_on_owners(&nodes).await?;
    eprintln!("{placement}");
    ensure!(placement.misplaced == 0, "{placement}");
    Ok(placement)
}

/// How a test's situation differs from the plain one the shared check assumes.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// The redis nodes whose keys must add up to the live keys, each on its owner; every node
    /// started when `None`. A test whose destination left the cluster names the cluster's
    /// nodes: whatever a failed or aborted import copied is not served, and not counted.
    pub nodes: Option<Vec<String>>,
    /// A fault (a killed proxy) cut client connections: the errors it caused are expected
    /// and not counted. Wrong reads, lost writes and wrong TTLs still are.
    pub tolerate_client_errors: bool,
}

/// What the shared check found (each part already checked).
#[derive(Debug, Clone)]
pub struct NothingLost {
    pub report: WorkloadReport,
    pub verify: VerifyReport,
    pub placement: Placement,
}

/// Where keys are, from [`MigrationCluster::check_keys_on_owners`].
#[derive(Debug, Default, Clone)]
pub struct Placement {
    /// Keys on all nodes together.
    pub keys: usize,
    /// (node address, keys on it).
    pub per_node: Vec<(String, usize)>,
    /// Keys on a node that does not own their slot.
    pub misplaced: usize,
    pub examples: Vec<String>,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} keys on the nodes {:?}, {} misplaced", self.keys, self.per_node, self.misplaced)?;
        for e in &self.examples {
            write!(f, "\n    {e}")?;
        }
        Ok(())
    }
}

/// For each slot, the redis node (address) of the proxy serving it in `view`: the range held
/// untagged or `migrating` (an `importing` range is not served yet).
pub fn slot_owner_nodes(view: &ClusterView) -> Vec<Option<String>> {
    let mut owners = vec![None; usize::from(SLOT_COUNT)];
    for n in &view.nodes {
        for a in &n.slots {
            if a.tag != Some(sluice_common::model::SlotTag::Importing) {
                for s in a.range().slots() {
                    owners[usize::from(s)] = Some(n.node.clone());
                }
            }
        }
    }
    owners
}

/// The upper half (⌊len/2⌋ slots) of the largest untagged range `proxy` holds in `view` —
/// what the broker's scale-out takes too.
pub fn upper_half(view: &ClusterView, proxy: &str) -> Result<SlotRange> {
    let node = view.nodes.iter().find(|n| n.proxy == proxy).ok_or_else(|| anyhow!("{proxy} is not in the cluster"))?;
    let range = node
        .slots
        .iter()
        .filter(|a| a.tag.is_none())
        .map(|a| a.range())
        .max_by_key(SlotRange::len)
        .ok_or_else(|| anyhow!("{proxy} holds no untagged slot"))?;
    if range.len() < 2 {
        bail!("{proxy}'s largest range {range:?} cannot be halved");
    }
    Ok(SlotRange::new(range.end - (range.len() / 2) as u16 + 1, range.end))
}

/// Every key on a redis node, by `SCAN` straight against the node.
pub async fn node_keys(addr: &str) -> Result<Vec<String>> {
    let mut c = RespConn::connect(addr).await?;
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    loop {
        let reply = c.call(&["SCAN", cursor.as_str(), "COUNT", "1000"]).await?;
        let Frame::Array(parts) = reply else { bail!("SCAN on {addr} answered {reply:?}") };
        let (Some(next), Some(Frame::Array(batch))) = (parts.first(), parts.get(1)) else {
            bail!("SCAN on {addr}: unexpected reply shape")
        };
        cursor = next.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        keys.extend(batch.iter().filter_map(|k| k.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())));
        if cursor == "0" {
            return Ok(keys);
        }
    }
}

/// Through a fresh cluster client: one key in each of the 16384 slots is written, read back
/// and deleted. Fails naming the slots that did not work.
pub async fn check_every_slot_served(urls: &[String], name: &str) -> Result<()> {
    let conn = cluster_connection(urls, Duration::from_secs(10)).await?;
    let failures: Vec<String> = futures::stream::iter(0..SLOT_COUNT)
        .map(|slot| {
            let mut c = conn.clone();
            async move {
                let key = key_in_slot(slot, name);
                let value = format!("slot-{slot}");
                let r: redis::RedisResult<Option<String>> = async {
                    c.set::<_, _, ()>(&key, &value).await?;
                    let v = c.get(&key).await?;
                    c.del::<_, ()>(&key).await?;
                    Ok(v)
                }
                .await;
                match r {
                    Ok(Some(v)) if v == value => None,
                    Ok(other) => Some(format!("slot {slot}: read back {other:?}")),
                    Err(e) => Some(format!("slot {slot}: {e}")),
                }
            }
        })
        .buffer_unordered(128)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    if !failures.is_empty() {
        bail!("{} of 16384 slots are not served: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    }
    Ok(())
}

/// One phase as a watch saw it.
#[derive(Debug, Clone)]
pub struct PhaseSample {
    pub phase: MigrationPhase,
    /// Since the watch was made.
    pub at: Duration,
}

/// Polls one migration and keeps the sequence of phases seen (a new sample each time the
/// phase differs from the previous poll, so a backwards step shows).
pub struct MigrationWatch {
    broker: BrokerClient,
    path: String,
    pub id: String,
    started: Instant,
    pub samples: Vec<PhaseSample>,
    pub last: Option<Migration>,
    pub polls: u64,
}

impl MigrationWatch {
    /// One GET of the record.
    pub async fn poll(&mut self) -> Result<Migration> {
        let m: Migration = self.broker.get(&self.path).await?;
        self.polls += 1;
        if self.samples.last().map(|s| s.phase) != Some(m.phase) {
            self.samples.push(PhaseSample { phase: m.phase, at: self.started.elapsed() });
        }
        self.last = Some(m.clone());
        Ok(m)
    }

    /// Polls every 5 ms until `pred` holds; fails after `timeout` with the phases seen. A
    /// broker that does not answer for a poll is retried until the deadline.
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Migration) -> bool,
    ) -> Result<Migration> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            match self.poll().await {
                Ok(m) if pred(&m) => return Ok(m),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                let last = self.last.as_ref().map(|m| format!("{m:?}")).unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what} of migration {}: phases seen {}; last record {last}; \
                     last error {last_err:?}",
                    self.id,
                    self.seen()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Until the migration has ended (`done`, `failed` or `aborted`).
    pub async fn until_final(&mut self, timeout: Duration) -> Result<Migration> {
        self.until("the end", timeout, |m| m.phase.is_final()).await
    }

    /// The phases seen, in order of observation.
    pub fn phases(&self) -> Vec<MigrationPhase> {
        self.samples.iter().map(|s| s.phase).collect()
    }

    /// The phases seen with when, for messages.
    pub fn seen(&self) -> String {
        let parts: Vec<String> =
            self.samples.iter().map(|s| format!("{} at {:.3}s", phase_name(s.phase), s.at.as_secs_f64())).collect();
        parts.join(" → ")
    }

    /// The phases seen never went backwards (each sample is a later phase than the one before).
    pub fn check_order(&self) -> Result<()> {
        for w in self.samples.windows(2) {
            if w[1].phase <= w[0].phase {
                bail!("migration {} went from {:?} back to {:?}: {}", self.id, w[0].phase, w[1].phase, self.seen());
            }
        }
        Ok(())
    }
}

/// The API name of a phase.
pub fn phase_name(p: MigrationPhase) -> String {
    p.as_str().to_string()
}

/// Checks that `m.timestamps` has an entry for each of `phases`, each a valid RFC 3339 time,
/// in that order (equal times allowed: the broker keeps milliseconds). Returns the times.
pub fn check_timestamps(m: &Migration, phases: &[MigrationPhase]) -> Result<Vec<SystemTime>> {
    let mut times = Vec::new();
    for &p in phases {
        let text = m.timestamps.get(p).ok_or_else(|| {
            anyhow!("migration {} has no timestamp for phase {}: {:?}", m.id, phase_name(p), m.timestamps)
        })?;
        let t = humantime::parse_rfc3339(text)
            .with_context(|| format!("timestamp of {} is not RFC 3339: {text:?}", phase_name(p)))?;
        if let Some(prev) = times.last() {
            if t < *prev {
                bail!(
                    "migration {}: phase {} is timestamped before the phase before it: {:?}",
                    m.id,
                    phase_name(p),
                    m.timestamps
                );
            }
        }
        times.push(t);
    }
    Ok(times)
}

/// Seconds from the `pending` timestamp to `phase`'s (None when either is missing).
pub fn seconds_to(m: &Migration, phase: MigrationPhase) -> Option<f64> {
    let start = humantime::parse_rfc3339(m.timestamps.get(MigrationPhase::Pending)?).ok()?;
    let at = humantime::parse_rfc3339(m.timestamps.get(phase)?).ok()?;
    Some(at.duration_since(start).unwrap_or_default().as_secs_f64())
}

/// `DBSIZE` of each node, by address.
pub async fn dbsizes(cluster: &LocalCluster) -> Result<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for n in &cluster.nodes {
        out.insert(n.addr(), n.dbsize().await?);
    }
    Ok(out)
}

/// What proxy `proxy` reports of its task for migration `id` (`UMCTL INFOMGR`): phase,
/// progress, error; `None` when it lists none.
pub async fn proxy_task(proxy: &str, id: &str) -> Result<Option<serde_json::Value>> {
    let reply = crate::client::call(proxy, &["UMCTL", "INFOMGR"]).await?;
    let Some(json) = reply.as_bytes() else { bail!("UMCTL INFOMGR answered {reply:?}") };
    let status: serde_json::Value = serde_json::from_slice(json)?;
    let tasks = status["migrations"].as_array().cloned().unwrap_or_default();
    Ok(tasks.into_iter().find(|t| t["id"] == id))
}

/// [`check_every_slot_served`] until it passes, each attempt with a fresh cluster client and
/// bounded to 30 s, for at most `deadline` (after a failover, while clients learn the new
/// topology). Bounded because one redis-rs attempt was seen never to finish a slot's command
/// although its response timeout is 10 s; a fresh client then serves every slot. Answers how
/// many attempts it took.
pub async fn wait_every_slot_served(urls: &[String], name: &str, deadline: Duration) -> Result<u32> {
    let mut attempts = 0;
    crate::wait_for("every slot to be served", deadline, || {
        attempts += 1;
        let urls = urls.to_vec();
        let attempt = attempts;
        async move {
            match tokio::time::timeout(Duration::from_secs(30), check_every_slot_served(&urls, name)).await {
                Ok(Ok(())) => Ok(Some(attempt)),
                Ok(Err(e)) => {
                    eprintln!("slot check: {e}");
                    Ok(None)
                }
                Err(_) => {
                    eprintln!("slot check: an attempt did not finish within 30 s");
                    Ok(None)
                }
            }
        }
    })
    .await
}
