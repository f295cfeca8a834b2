//! `sluice`: the operator's command.
//!
//! `sluice local` starts a whole deployment on this machine: the broker (sled data in
//! `--data-dir`), a coordinator, redis-server nodes from PATH and a sluice-proxy in front of
//! each (they register with the broker), creates the cluster `local` through the broker's
//! API, waits until every proxy holds the broker's epoch, prints how to connect, and stops
//! every child on Ctrl-C or SIGTERM.
//!
//! The other commands are the broker's API for people ([`admin`]): `status`, `migrate`,
//! `migrations [--watch]`, `abort`, `scale`, `failover`, against `--broker`
//! (`SLUICE_BROKER`) with `SLUICE_API_TOKEN` for changes.

mod admin;
mod local;
mod watch;

use anyhow::Result;
use clap::{Parser, Subcommand};
use sluice_common::model::MigrationMode;
use sluice_local::LocalSpec;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluice", version, about = "sluice: Redis Cluster from plain redis-server nodes")]
struct Cli {
    /// The broker's HTTP address.
    #[arg(long, global = true, env = "SLUICE_BROKER", default_value = "http://127.0.0.1:7799")]
    broker: String,
    /// The broker's API token (its `--api-token`), sent with every change.
    #[arg(long, global = true, env = "SLUICE_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run broker, coordinator, redis-server nodes and proxies on this machine until Ctrl-C.
    Local {
        /// Proxies in the cluster, each in front of its own redis-server.
        #[arg(long, default_value_t = 3)]
        proxies: usize,
        /// Replica proxies per shard (each with its own redis-server replicating the master's).
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// Extra free proxies (with their redis-server) to scale out into.
        #[arg(long, default_value_t = 1)]
        spare: usize,
        /// Port of the first proxy; the others follow; control ports are 10000 above.
        #[arg(long, default_value_t = 6001)]
        base_port: u16,
        /// Port of the broker's HTTP API.
        #[arg(long, default_value_t = 7799)]
        broker_port: u16,
        /// Where the broker's data, node files and logs go (kept); a temporary directory,
        /// removed at exit, when absent.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        // The doc comment is clap's help text, so its brackets stay unescaped for `--help`.
        #[allow(rustdoc::broken_intra_doc_links)]
        /// The broker's metadata store, when not sled in the data dir: an etcd you run,
        /// etcd://HOST:PORT[,HOST:PORT…][/NAMESPACE] (see docs/broker-api.md)
        #[arg(long, value_name = "SPEC")]
        store: Option<String>,
    },
    /// The cluster at a glance: its shards, their slots, replicas and state, and the epoch.
    Status {
        /// The cluster; may be left out when the broker has only one.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Move slots from one proxy to another.
    Migrate {
        #[arg(long)]
        cluster: Option<String>,
        /// The proxy that owns the slots now.
        #[arg(long)]
        src: String,
        /// The proxy that takes them: a node of the cluster or a free proxy.
        #[arg(long)]
        dst: String,
        /// Slots: `0-2730`, `42`, or several separated by commas (`0-99,200-299`).
        #[arg(long, value_parser = admin::parse_slots)]
        slots: admin::Slots,
        #[arg(long, value_enum, default_value_t = Mode::Auto)]
        mode: Mode,
        /// Follow the migration until it ends, with a progress bar; fails unless it is `done`.
        #[arg(long)]
        wait: bool,
    },
    /// The migrations: those not ended, or all with `--all`.
    Migrations {
        #[arg(long)]
        cluster: Option<String>,
        /// Ended ones too.
        #[arg(long)]
        all: bool,
        /// Follow them live (a progress bar each) until every one has ended.
        #[arg(long)]
        watch: bool,
    },
    /// Abort a migration (before its switch it ends `aborted`; while `switching` once the
    /// source confirms it promoted nothing).
    Abort {
        /// The migration's id (`m-7`).
        id: String,
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Add free proxies to the cluster, or remove nodes from it; the slots move.
    Scale {
        #[arg(long)]
        cluster: Option<String>,
        /// Follow the plan's migrations until the plan ends.
        #[arg(long)]
        wait: bool,
        #[command(subcommand)]
        action: ScaleAction,
    },
    /// Promote a replica of a shard (graceful: hold the writes until the replica has them all).
    Failover {
        #[arg(long)]
        cluster: Option<String>,
        /// The shard's master now.
        #[arg(long)]
        master: String,
        /// The replica to promote; the first healthy one when left out.
        #[arg(long)]
        promote: Option<String>,
        /// Lose no write: the master holds the shard's writes until the replica caught up.
        #[arg(long)]
        graceful: bool,
    },
}

#[derive(Subcommand)]
enum ScaleAction {
    /// N free proxies join; each takes its share of the slots.
    Add {
        n: u64,
        /// Replicas per new shard (free proxies too).
        #[arg(long, default_value_t = 0)]
        replicas: u64,
    },
    /// These nodes hand all their slots to the others and leave.
    Remove {
        #[arg(required = true)]
        proxies: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Auto,
    Replication,
    Filtered,
    Keys,
}

impl From<Mode> for MigrationMode {
    fn from(m: Mode) -> MigrationMode {
        match m {
            Mode::Auto => MigrationMode::Auto,
            Mode::Replication => MigrationMode::Replication,
            Mode::Filtered => MigrationMode::Filtered,
            Mode::Keys => MigrationMode::Keys,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let api = || admin::Api::new(&cli.broker, cli.token.clone());
    match cli.command {
        Command::Local { proxies, replicas, spare, base_port, broker_port, data_dir, store } => {
            let spec = LocalSpec {
                proxies,
                replicas,
                spare,
                base_port: Some(base_port),
                broker_port: Some(broker_port),
                broker_store: store,
                data_dir,
                ..LocalSpec::default()
            };
            local::local(spec).await
        }
        Command::Status { cluster } => api().status(cluster).await,
        Command::Migrate { cluster, src, dst, slots, mode, wait } => {
            api().migrate(cluster, src, dst, slots, mode.into(), wait).await
        }
        Command::Migrations { cluster, all, watch } => api().migrations(cluster, all, watch).await,
        Command::Abort { id, cluster } => api().abort(cluster, id).await,
        Command::Scale { cluster, wait, action } => {
            let req = match action {
                ScaleAction::Add { n, replicas } => sluice_common::api::ScaleRequest {
                    add: Some(n),
                    remove: None,
                    replicas: (replicas > 0).then_some(replicas),
                },
                ScaleAction::Remove { proxies } => {
                    sluice_common::api::ScaleRequest { add: None, remove: Some(proxies), replicas: None }
                }
            };
            api().scale(cluster, req, wait).await
        }
        Command::Failover { cluster, master, promote, graceful } => {
            api().failover(cluster, master, promote, graceful).await
        }
    }
}
