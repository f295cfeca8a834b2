//! The broker's API for people: each command is one call (or a few reads), its answer turned
//! into a table or a line, its refusal into the broker's own message.

use crate::watch;
use anyhow::{bail, Context, Result};
use sluice_common::api::{
    ClusterDetail, CreateMigration, FailoverRequest, Migration, MigrationList, ProxyList, ProxyState, ScalePlan,
    ScaleRequest, ScaleState, StopRequest,
};
use sluice_common::model::{MigrationMode, NodeView, SlotAssignment, SlotRange, SlotTag};
use sluice_common::slot::SLOT_COUNT;
use sluice_local::BrokerClient;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Slot ranges as given on the command line.
pub type Slots = Vec<SlotRange>;

/// `0-2730`, `42`, `0-99,200-299`: every range inside 0..16383, start ≤ end.
pub fn parse_slots(text: &str) -> Result<Slots, String> {
    let slot = |s: &str| -> Result<u16, String> {
        let n: u32 = s.trim().parse().map_err(|_| format!("{s:?} is not a slot number"))?;
        u16::try_from(n)
            .ok()
            .filter(|&n| n < SLOT_COUNT)
            .ok_or_else(|| format!("slot {n} is out of range: slots are 0..{}", SLOT_COUNT - 1))
    };
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => SlotRange::new(slot(a)?, slot(b)?),
            None => {
                let s = slot(part)?;
                SlotRange::new(s, s)
            }
        };
        if range.start > range.end {
            return Err(format!("{part:?}: the first slot is after the last"));
        }
        ranges.push(range);
    }
    Ok(ranges)
}

/// The broker, and which cluster a command means.
pub struct Api {
    client: BrokerClient,
}

impl Api {
    pub fn new(url: &str, token: Option<String>) -> Api {
        Api { client: BrokerClient::new(url).with_token(token) }
    }

    /// `--cluster`, or the broker's only cluster.
    pub async fn cluster_name(&self, given: Option<String>) -> Result<String> {
        if let Some(name) = given {
            return Ok(name);
        }
        let names = self.client.clusters().await?;
        match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("the broker holds no cluster yet (POST /api/v1/clusters, or `sluice local`)"),
            _ => bail!("the broker holds several clusters ({}): say which with --cluster", names.join(", ")),
        }
    }

    pub async fn status(&self, cluster: Option<String>) -> Result<()> {
        let name = self.cluster_name(cluster).await?;
        let epoch = self.client.epoch().await?;
        let detail: ClusterDetail = self.client.get(&format!("/clusters/{name}")).await?;
        let proxies = self.client.proxies().await?;
        let migrations: MigrationList = self.client.get(&format!("/clusters/{name}/migrations")).await?;
        print!("{}", status_text(&name, epoch, &detail, &proxies, &migrations.migrations));
        Ok(())
    }

    pub async fn migrate(
        &self,
        cluster: Option<String>,
        src: String,
        dst: String,
        slots: Slots,
        mode: MigrationMode,
        wait: bool,
    ) -> Result<()> {
        let name = self.cluster_name(cluster).await?;
        let req = CreateMigration { src, dst, slots, mode };
        let m: Migration = self.client.post(&format!("/clusters/{name}/migrations"), &req).await?;
        println!("{} started: {} → {}, slots {}, mode {}", m.id, m.src, m.dst, ranges_text(&m.slots), m.mode.as_str());
        if wait {
            let ended = watch::follow(&self.client, &name, &[m.id]).await?;
            ensure_done(&ended)?;
        }
        Ok(())
    }

    pub async fn migrations(&self, cluster: Option<String>, all: bool, follow: bool) -> Result<()> {
        let name = self.cluster_name(cluster).await?;
        let list: MigrationList = self.client.get(&format!("/clusters/{name}/migrations")).await?;
        let shown: Vec<&Migration> = list.migrations.iter().filter(|m| all || !m.phase.is_final()).collect();
        if follow {
            let running: Vec<String> = shown.iter().filter(|m| !m.phase.is_final()).map(|m| m.id.clone()).collect();
            if running.is_empty() {
                println!("no migration is running in cluster {name}");
                return Ok(());
            }
            watch::follow(&self.client, &name, &running).await?;
            return Ok(());
        }
        if shown.is_empty() {
            println!("no migration {} in cluster {name}", if all { "on record" } else { "is running" });
        }
        for m in shown {
            println!("{}", migration_line(m));
        }
        Ok(())
    }

    pub async fn abort(&self, cluster: Option<String>, id: String) -> Result<()> {
        let name = self.cluster_name(cluster).await?;
        let req =
            StopRequest { error: Some("aborted by the operator (sluice abort)".into()), ..StopRequest::default() };
        let m: Migration = self.client.post(&format!("/clusters/{name}/migrations/{id}/abort"), &req).await?;
        match m.stopping {
            Some(_) => println!("{id} is switching: its source is fenced; it ends once the source confirms"),
            None => println!("{}", migration_line(&m)),
        }
        Ok(())
    }

    pub async fn scale(&self, cluster: Option<String>, req: ScaleRequest, wait: bool) -> Result<()> {
        let name = self.cluster_name(cluster).await?;
        let plan: ScalePlan = self.client.post(&format!("/clusters/{name}/scale"), &req).await?;
        let p = &plan.plan;
        println!("scale plan {} ({} step{}):", p.id, p.total, if p.total == 1 { "" } else { "s" });
        for s in &p.steps {
            println!("  {} → {}  slots {}", s.src, s.dst, ranges_text(&s.slots));
        }
        if !wait {
            return Ok(());
        }
        // Steps start a few at a time: follow each as it starts, until the plan ends.
        let mut followed = Vec::new();
        loop {
            let detail: ClusterDetail = self.client.get(&format!("/clusters/{name}")).await?;
            let Some(record) = detail.scale.filter(|r| r.id == p.id) else {
                bail!("the scale plan {} is no longer on record", p.id);
            };
            let started: Vec<String> =
                record.steps.iter().filter_map(|s| s.migration.clone()).filter(|id| !followed.contains(id)).collect();
            if !started.is_empty() {
                ensure_done(&watch::follow(&self.client, &name, &started).await?)?;
                followed.extend(started);
                continue;
            }
            match record.state {
                ScaleState::Running => tokio::time::sleep(Duration::from_millis(200)).await,
                ScaleState::Done => {
                    println!("scale plan {} done: {} of {} steps", record.id, record.done, record.total);
                    return Ok(());
                }
                ScaleState::Failed => {
                    bail!("scale plan {} failed: {}", record.id, record.error.unwrap_or_default())
                }
            }
        }
    }

    pub async fn failover(
        &self,
        cluster: Option<String>,
        master: String,
        promote: Option<String>,
        graceful: bool,
    ) -> Result<()> {
        let name = self.cluster_name(cluster).await?;
        let req = FailoverRequest {
            master: master.clone(),
            promote,
            reason: Some("asked for by the operator (sluice failover)".into()),
            graceful,
            cancel: false,
        };
        let view: sluice_common::model::ClusterView =
            self.client.post(&format!("/clusters/{name}/failover"), &req).await?;
        if let Some(shard) = view.nodes.iter().find(|n| n.proxy == master && n.handover.is_some()) {
            println!(
                "{master} hands its shard over to {} once that replica has every write (sluice status shows when)",
                shard.handover.as_deref().unwrap_or_default()
            );
        } else if let Some(shard) = view.shard_of_replica(&master) {
            println!("{} is the shard's master now; {master} becomes its replica (epoch {})", shard.proxy, view.epoch);
        } else {
            println!("failover done at epoch {}", view.epoch);
        }
        Ok(())
    }
}

/// Fails unless every migration ended `done`.
fn ensure_done(ended: &[Migration]) -> Result<()> {
    let bad: Vec<String> = ended
        .iter()
        .filter(|m| m.phase != sluice_common::model::MigrationPhase::Done)
        .map(|m| format!("{} {}: {}", m.id, phase_name(m), m.error.as_deref().unwrap_or("no reason given")))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        bail!("{}", bad.join("; "))
    }
}

pub fn phase_name(m: &Migration) -> String {
    m.phase.as_str().to_string()
}

pub fn ranges_text(ranges: &[SlotRange]) -> String {
    ranges.iter().map(SlotRange::to_string).collect::<Vec<_>>().join(",")
}

/// One migration in one line.
pub fn migration_line(m: &Migration) -> String {
    let mut line = format!(
        "{}  {:<9}  {} → {}  slots {}  mode {}",
        m.id,
        phase_name(m),
        m.src,
        m.dst,
        ranges_text(&m.slots),
        m.mode.as_str()
    );
    if let Some(e) = &m.error {
        let _ = write!(line, "  ({e})");
    }
    line
}

fn assignment_text(a: &SlotAssignment) -> String {
    let range = a.range().to_string();
    match (a.tag, &a.migration) {
        (Some(SlotTag::Migrating), Some(id)) => format!("{range} (migrating, {id})"),
        (Some(SlotTag::Importing), Some(id)) => format!("{range} (importing, {id})"),
        (Some(SlotTag::Migrating), None) => format!("{range} (migrating)"),
        (Some(SlotTag::Importing), None) => format!("{range} (importing)"),
        (None, _) => range,
    }
}

fn slot_count(n: &NodeView) -> usize {
    n.slots.iter().filter(|a| a.tag != Some(SlotTag::Importing)).map(|a| a.range().len()).sum()
}

/// The text of `sluice status`: a table of shards, then free proxies and running migrations.
pub fn status_text(
    name: &str,
    epoch: u64,
    detail: &ClusterDetail,
    proxies: &ProxyList,
    migrations: &[Migration],
) -> String {
    let state_of: BTreeMap<&str, ProxyState> = proxies.proxies.iter().map(|p| (p.address.as_str(), p.state)).collect();
    let state = |addr: &str| match state_of.get(addr) {
        Some(ProxyState::Failed) => "FAILED",
        Some(ProxyState::Serving) => "ok",
        Some(ProxyState::Free) => "free",
        None => "unregistered",
    };
    let mut rows: Vec<[String; 6]> = vec![["SHARD", "PROXY", "NODE", "SLOTS", "STATE", "ROLE"].map(str::to_string)];
    for (i, n) in detail.cluster.nodes.iter().enumerate() {
        let slots = if n.slots.is_empty() {
            "-".to_string()
        } else {
            n.slots.iter().map(assignment_text).collect::<Vec<_>>().join(" ")
        };
        let role = match &n.handover {
            Some(to) => format!("master, handing over to {to}"),
            None => "master".to_string(),
        };
        rows.push([
            (i + 1).to_string(),
            n.proxy.clone(),
            n.node.clone(),
            format!("{} ({slots})", slot_count(n)),
            state(&n.proxy).to_string(),
            role,
        ]);
        for r in &n.replicas {
            let role = if r.former_master { "replica (former master)" } else { "replica" };
            rows.push([
                String::new(),
                r.proxy.clone(),
                r.node.clone(),
                String::new(),
                state(&r.proxy).to_string(),
                role.to_string(),
            ]);
        }
    }
    let mut out = String::new();
    let covered: usize = detail.cluster.nodes.iter().map(slot_count).sum();
    let _ = writeln!(
        out,
        "cluster {name}  epoch {epoch} (cluster changed at {})  {covered} of {SLOT_COUNT} slots served",
        detail.cluster.epoch
    );
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let free: Vec<&str> =
        proxies.proxies.iter().filter(|p| p.state == ProxyState::Free).map(|p| p.address.as_str()).collect();
    if !free.is_empty() {
        let _ = writeln!(out, "free proxies: {}", free.join(", "));
    }
    let running: Vec<&Migration> = migrations.iter().filter(|m| !m.phase.is_final()).collect();
    if !running.is_empty() {
        let _ = writeln!(out, "migrations:");
        for m in running {
            let _ = writeln!(out, "  {}", migration_line(m));
        }
    }
    if let Some(plan) = detail.scale.as_ref().filter(|p| p.state == ScaleState::Running) {
        let _ = writeln!(out, "scale plan {}: {} of {} steps done", plan.id, plan.done, plan.total);
    }
    out
}

/// Reads the answer of a call that may take a moment, with what it was for in the error.
pub async fn get_migration(client: &BrokerClient, cluster: &str, id: &str) -> Result<Migration> {
    client.get(&format!("/clusters/{cluster}/migrations/{id}")).await.with_context(|| format!("reading {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_parse_or_say_what_is_wrong() {
        assert_eq!(parse_slots("0-2730"), Ok(vec![SlotRange::new(0, 2730)]));
        assert_eq!(parse_slots("42"), Ok(vec![SlotRange::new(42, 42)]));
        assert_eq!(parse_slots("0-9, 20-29"), Ok(vec![SlotRange::new(0, 9), SlotRange::new(20, 29)]));
        assert!(parse_slots("0-16384").unwrap_err().contains("out of range"));
        assert!(parse_slots("10-5").unwrap_err().contains("after the last"));
        assert!(parse_slots("a-b").unwrap_err().contains("not a slot number"));
        assert!(parse_slots("").is_err());
    }
}
