//! The coordinator's settings: command-line flags, each also readable from a `SLUICE_*`
//! environment variable (flag wins), so the same binary runs from a shell, `sluice local` and
//! a container without a config file.

use clap::{Parser, ValueEnum};
use std::time::Duration;

/// Where the broker listens when nothing says otherwise (the broker's own default).
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:7799";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// sluice-coordinator: pushes each proxy the config the broker holds for it, reports proxy
/// failures and migration progress back. Stateless: run as many as you like.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-coordinator", version, about)]
pub struct Cli {
    /// Base URL of the broker's HTTP API
    #[arg(long, env = "SLUICE_BROKER", value_name = "URL", default_value = DEFAULT_BROKER)]
    pub broker: String,

    /// Bearer token for the broker's mutating calls (health, progress, commit, fail)
    #[arg(long, env = "SLUICE_API_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Longest time between two rounds; a new broker epoch starts a round at once
    #[arg(long, env = "SLUICE_COORDINATOR_INTERVAL_MS", value_name = "MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,

    /// Deadline of every gRPC call to a proxy (Status, SetConfig), connecting included
    #[arg(long, env = "SLUICE_COORDINATOR_RPC_TIMEOUT_MS", value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub rpc_timeout_ms: u64,

    /// Status calls that must fail in a row before a proxy is reported failed
    #[arg(long, env = "SLUICE_COORDINATOR_FAILURE_THRESHOLD", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub failure_threshold: u32,

    /// Longest wait between two attempts while the broker does not answer
    #[arg(long, env = "SLUICE_COORDINATOR_MAX_BACKOFF_MS", value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub max_backoff_ms: u64,

    /// How long a shard's master (its proxy, or its node) must be down without a break before
    /// the replica with the highest replication offset is promoted; 0: never fail over
    #[arg(long, env = "SLUICE_COORDINATOR_FAILOVER_AFTER_MS", value_name = "MS", default_value_t = 5000)]
    pub failover_after_ms: u64,

    /// How long the destination of a replication-mode migration in `switching` (its proxy,
    /// or its node) must be down without a break before the migration is stopped: its source
    /// is fenced, and the migration fails once the source confirms it promoted nothing (the
    /// slots stay on the source); 0: never
    #[arg(long, env = "SLUICE_COORDINATOR_FENCE_AFTER_MS", value_name = "MS", default_value_t = 30_000)]
    pub fence_after_ms: u64,

    /// This coordinator's name among the coordinators sharing the proxies (its heartbeat, and
    /// the rendezvous hash that picks which clusters it takes); default: generated per process
    #[arg(long, env = "SLUICE_COORDINATOR_ID", value_name = "ID")]
    pub id: Option<String>,

    /// How long this coordinator counts as live without a heartbeat; the others take over its
    /// proxies after that. It heartbeats every quarter of it
    #[arg(long, env = "SLUICE_COORDINATOR_HEARTBEAT_TTL_MS", value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub heartbeat_ttl_ms: u64,

    /// Calls to proxies (Status, SetConfig) in flight at once
    #[arg(long, env = "SLUICE_COORDINATOR_PUSH_CONCURRENCY", value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub push_concurrency: u32,

    /// Longest time between two Status calls to a proxy with nothing going on (no migration,
    /// no handover, no failure counted, its node healthy); busy proxies get one every round
    #[arg(long, env = "SLUICE_COORDINATOR_IDLE_STATUS_MS", value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub idle_status_ms: u64,

    /// Address to serve Prometheus metrics on (`GET /metrics`); none if absent
    #[arg(long, env = "SLUICE_COORDINATOR_METRICS", value_name = "HOST:PORT")]
    pub metrics: Option<String>,

    /// Log line format
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The settings the coordinator runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base URL, without a trailing `/`.
    pub broker: String,
    /// `None`: the broker's mutating calls are open (an empty token counts as none).
    pub api_token: Option<String>,
    pub interval: Duration,
    pub rpc_timeout: Duration,
    pub failure_threshold: u32,
    /// At least `interval`: backing off to less than the normal pace would make no sense.
    pub max_backoff: Duration,
    /// Zero: never fail over.
    pub failover_after: Duration,
    /// Zero: never stop a switching migration whose destination is down.
    pub fence_after: Duration,
    /// Where to serve `GET /metrics`; `None`: nowhere.
    pub metrics: Option<String>,
    pub log_format: LogFormat,
    /// The name this coordinator heartbeats under.
    pub id: String,
    pub heartbeat_ttl: Duration,
    /// Proxy calls in flight at once (at least 1).
    pub push_concurrency: usize,
    /// At least `interval`.
    pub idle_status: Duration,
}

/// A name unique enough among the coordinators of one broker: the process id and the time it
/// started.
pub fn generated_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("coordinator-{}-{nanos:09}", std::process::id())
}

impl Settings {
    /// Settings for `broker` with every other value at its default (tests, embedding).
    /// Built directly, not through clap, so the caller's environment does not leak in.
    pub fn new(broker: impl Into<String>) -> Settings {
        Settings {
            broker: broker.into().trim_end_matches('/').to_string(),
            api_token: None,
            interval: Duration::from_millis(200),
            rpc_timeout: Duration::from_millis(500),
            failure_threshold: 3,
            max_backoff: Duration::from_secs(2),
            failover_after: Duration::from_secs(5),
            fence_after: Duration::from_secs(30),
            metrics: None,
            log_format: LogFormat::Text,
            id: generated_id(),
            heartbeat_ttl: Duration::from_millis(3000),
            push_concurrency: 256,
            idle_status: Duration::from_millis(1000),
        }
    }
}

impl From<Cli> for Settings {
    fn from(cli: Cli) -> Settings {
        let interval = Duration::from_millis(cli.interval_ms);
        Settings {
            broker: cli.broker.trim_end_matches('/').to_string(),
            api_token: cli.api_token.filter(|t| !t.is_empty()),
            interval,
            rpc_timeout: Duration::from_millis(cli.rpc_timeout_ms),
            failure_threshold: cli.failure_threshold.max(1),
            max_backoff: Duration::from_millis(cli.max_backoff_ms).max(interval),
            failover_after: Duration::from_millis(cli.failover_after_ms),
            fence_after: Duration::from_millis(cli.fence_after_ms),
            metrics: cli.metrics.filter(|m| !m.is_empty()),
            log_format: cli.log_format,
            id: cli.id.filter(|i| !i.is_empty()).unwrap_or_else(generated_id),
            heartbeat_ttl: Duration::from_millis(cli.heartbeat_ttl_ms),
            push_concurrency: cli.push_concurrency.max(1) as usize,
            idle_status: Duration::from_millis(cli.idle_status_ms).max(interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Settings::from(Cli::parse_from(["sluice-coordinator", "--broker", DEFAULT_BROKER]));
        let defaults = Settings { id: s.id.clone(), ..Settings::new(DEFAULT_BROKER) };
        assert_eq!(s, defaults, "Settings::new matches the flag defaults");
        assert!(s.id.starts_with("coordinator-"), "{}", s.id);
        assert_eq!(s.push_concurrency, 256);
        assert_eq!(s.broker, DEFAULT_BROKER);
        assert_eq!(s.api_token, None);
        assert_eq!(s.interval, Duration::from_millis(200));
        assert_eq!(s.rpc_timeout, Duration::from_millis(500));
        assert_eq!(s.failure_threshold, 3);
        assert_eq!(s.max_backoff, Duration::from_secs(2));
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_are_read_and_normalised() {
        let s = Settings::from(Cli::parse_from([
            "sluice-coordinator",
            "--broker",
            "http://b:1/",
            "--api-token",
            "",
            "--interval-ms",
            "5000",
            "--max-backoff-ms",
            "100",
            "--failure-threshold",
            "5",
            "--log-format",
            "json",
        ]));
        assert_eq!(s.broker, "http://b:1");
        assert_eq!(s.api_token, None, "an empty token counts as none");
        assert_eq!(s.max_backoff, Duration::from_secs(5), "backoff never below the interval");
        assert_eq!(s.failure_threshold, 5);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(Cli::try_parse_from(["sluice-coordinator", "--failure-threshold", "0"]).is_err());
        assert!(Cli::try_parse_from(["sluice-coordinator", "--interval-ms", "0"]).is_err());
        assert!(Cli::try_parse_from(["sluice-coordinator", "--log-format", "xml"]).is_err());
    }
}
