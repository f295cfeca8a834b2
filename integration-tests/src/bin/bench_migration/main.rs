//! Slot migration benchmarks (issues 5 and 6; run them with `bench/migration.sh`). Release
//! binaries in `LocalCluster`s; a few redis-rs cluster clients run SET/GET on the loaded keys
//! while the slots move, every command's latency and every error recorded.
//!
//! - `--mode replication` ([`replication`]): half of a loaded node's slots move into an empty
//!   spare by replication, against a plain `REPLICAOF` of the same node in the same run.
//! - `--mode keys` ([`keys`]): half of a node's slots move to another node that holds data
//!   too, key by key, against `redis-cli --cluster reshard` moving the same slots holding the
//!   same keys on a native 2-node Redis Cluster the benchmark starts itself ([`native`](sluice_harness::native)).
//! - `--mode filtered` ([`filtered`]): the same move as keys mode by slot-filtered
//!   replication, against keys mode, a plain `REPLICAOF` and reshard on the same data.
//! - `--mode both` (the default): replication, then keys.
//!
//! Each run prints its figures next to its goals, then the same as one JSON line
//! (`RESULT {…}`). Exit code 1 when a migration did not reach `done`, a client saw an error,
//! or the keys do not add up afterwards (lost or left behind); missing a goal is reported, not
//! fatal (the machine is shared). Exit code 2 when the benchmark itself could not run.

mod filtered;
mod keys;
mod load;
mod replication;

use anyhow::{anyhow, bail, Result};
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
bench_migration: slot migration under load — replication mode vs a plain REPLICAOF, keys mode
vs redis-cli --cluster reshard on a native Redis Cluster

  --mode M            replication, keys, filtered or both (default both: replication, then
                      keys); filtered: into a node with data, against keys mode, a plain
                      REPLICAOF and redis-cli --cluster reshard on the same data
  --keys N            keys loaded (default 1000000): replication: all into node A; keys:
                      spread over both nodes by slot, as a cluster holds them
  --value-size B      bytes per value (default 100)
  --clients N         concurrent cluster clients during the migration (default 4)
  --rate R            commands/s over all clients, 0 = as fast as they go (default 5000)
  --new-keys P        share of the clients' SETs that create a new key (default 0.1)
  --plain-under-load  replication: time the plain REPLICAOF under the same client load
  --native-under-load keys: run the reshard under the same client load (default: idle)
  --deadline S        seconds a migration (or the reshard) may take before the run fails
                      (default 600)
  --data-dir DIR      keep every process's files and logs in DIR/<mode> (default: temporary)
  --seed N            seed of the clients' key choices (default: random, printed)

Binaries come from $SLUICE_BIN_DIR or the directory of this executable; extra sluice-proxy
flags from $BENCH_PROXY_ARGS (space-separated); redis-server and redis-cli from PATH.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replication,
    Keys,
    Filtered,
    Both,
}

#[derive(Debug, Clone)]
pub struct Options {
    mode: Mode,
    pub keys: usize,
    pub value_size: usize,
    pub clients: usize,
    pub rate: u32,
    pub new_keys: f64,
    pub plain_under_load: bool,
    pub native_under_load: bool,
    pub deadline: Duration,
    pub data_dir: Option<PathBuf>,
    pub seed: u64,
}

impl Options {
    /// Prints the `RESULT` line `bench/migration.sh` collects: the run's shape and how it
    /// ended, as every mode reports them, then the mode's own `figures` (JSON objects).
    pub fn print_result(
        &self,
        mode: &str,
        (slots_moved, keys_moved): (usize, usize),
        phase: sluice_common::model::MigrationPhase,
        figures: &[serde_json::Value],
    ) {
        let mut result = serde_json::json!({
            "mode": mode,
            "keys": self.keys,
            "value_size": self.value_size,
            "slots_moved": slots_moved,
            "keys_moved": keys_moved,
            "clients": self.clients,
            "rate": self.rate,
            "phase": sluice_harness::migration::phase_name(phase),
        });
        if let Some(all) = result.as_object_mut() {
            all.extend(
                figures.iter().filter_map(serde_json::Value::as_object).flatten().map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        println!("RESULT {result}");
    }

    /// Where a run keeps its files: `<data-dir>/<run>`, or a temporary directory.
    pub fn data_dir_for(&self, run: &str) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join(run))
    }

    /// Extra sluice-proxy flags from `$BENCH_PROXY_ARGS`.
    pub fn proxy_args() -> Vec<String> {
        std::env::var("BENCH_PROXY_ARGS").unwrap_or_default().split_whitespace().map(str::to_string).collect()
    }

    /// "N redis-rs cluster clients, R cmd/s (…)": the load, for the report.
    pub fn load_text(&self) -> String {
        format!(
            "{} redis-rs cluster clients, {} (half GET, half SET on the loaded keys; {:.0}% of the SETs create a \
             new key)",
            self.clients,
            if self.rate > 0 { format!("{} cmd/s", self.rate) } else { "unthrottled".into() },
            self.new_keys * 100.0
        )
    }
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        mode: Mode::Both,
        keys: 1_000_000,
        value_size: 100,
        clients: 4,
        rate: 5_000,
        new_keys: 0.1,
        plain_under_load: false,
        native_under_load: false,
        deadline: Duration::from_secs(600),
        data_dir: None,
        seed: rand::random(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value\n\n{USAGE}"));
        match a.as_str() {
            "--mode" => {
                o.mode = match value("--mode")?.as_str() {
                    "replication" => Mode::Replication,
                    "keys" => Mode::Keys,
                    "filtered" => Mode::Filtered,
                    "both" => Mode::Both,
                    other => bail!("--mode {other:?}: replication, keys, filtered or both\n\n{USAGE}"),
                }
            }
            "--keys" => o.keys = value("--keys")?.parse()?,
            "--value-size" => o.value_size = value("--value-size")?.parse()?,
            "--clients" => o.clients = value("--clients")?.parse()?,
            "--rate" => o.rate = value("--rate")?.parse()?,
            "--new-keys" => o.new_keys = value("--new-keys")?.parse()?,
            "--plain-under-load" => o.plain_under_load = true,
            "--native-under-load" => o.native_under_load = true,
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
    if !(0.0..=1.0).contains(&o.new_keys) {
        bail!("--new-keys is a share: 0 to 1");
    }
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let run = async {
        let opts = parse_args()?;
        let mut ok = true;
        if matches!(opts.mode, Mode::Replication | Mode::Both) {
            ok &= replication::run(&opts).await?;
        }
        if matches!(opts.mode, Mode::Keys | Mode::Both) {
            ok &= keys::run(&opts).await?;
        }
        if opts.mode == Mode::Filtered {
            ok &= filtered::run(&opts).await?;
        }
        anyhow::Ok(ok)
    };
    match run.await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench_migration: {e:#}");
            std::process::exit(2);
        }
    }
}
