//! Command-line options of `sluice-proxy`.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// What to do with a command for a slot another proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Redirect {
    /// Answer `MOVED <slot> <proxy>`, as a Redis Cluster node does.
    Moved,
    /// Send it on to that proxy and relay the answer (for clients that do not follow MOVED).
    Forward,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-proxy", version, about = "RESP proxy in front of one Redis node, emulating Redis Cluster")]
pub struct ProxyOptions {
    /// Address to serve clients on.
    #[arg(long, env = "SLUICE_PROXY_LISTEN", default_value = "127.0.0.1:6001")]
    pub listen: String,
    /// The client-facing address: what clients are told (`MOVED`, `CLUSTER SLOTS`) and this
    /// proxy's identity in the broker. Defaults to --listen.
    #[arg(long, env = "SLUICE_PROXY_ANNOUNCE")]
    pub announce: Option<String>,
    /// Where the other proxies reach this proxy's data port (migration switch, forwarding),
    /// when that differs from --announce: e.g. a service name on a container network while
    /// clients use a port published on the host. Defaults to --announce.
    #[arg(long, env = "SLUICE_PROXY_PEER_ANNOUNCE")]
    pub peer_announce: Option<String>,
    /// The Redis node this proxy fronts.
    #[arg(long, env = "SLUICE_PROXY_NODE", default_value = "127.0.0.1:7001")]
    pub node: String,
    /// The node's address as other nodes reach it (for replication during migrations).
    /// Defaults to --node.
    #[arg(long, env = "SLUICE_PROXY_NODE_ANNOUNCE")]
    pub node_announce: Option<String>,
    /// Address of the gRPC control service (SetConfig, TmpSwitch, Status); none if absent.
    #[arg(long, env = "SLUICE_PROXY_CONTROL")]
    pub control: Option<String>,
    /// Address to serve Prometheus metrics on (`GET /metrics`, plain HTTP); none if absent.
    #[arg(long, env = "SLUICE_PROXY_METRICS")]
    pub metrics: Option<String>,
    /// The control address others should use. Defaults to --control.
    #[arg(long, env = "SLUICE_PROXY_CONTROL_ANNOUNCE")]
    pub control_announce: Option<String>,
    /// The broker to register with on start (e.g. http://127.0.0.1:7799); retried until it answers.
    #[arg(long, env = "SLUICE_BROKER")]
    pub broker: Option<String>,
    /// Bearer token for the broker's mutating calls.
    #[arg(long, env = "SLUICE_API_TOKEN")]
    pub api_token: Option<String>,
    /// The node's ACL user the proxy's own connections authenticate as (`AUTH user pass`;
    /// also `MIGRATE … AUTH2`). Absent: the node's default user (`AUTH pass`).
    #[arg(long, env = "SLUICE_NODE_USER", requires = "node_password")]
    pub node_user: Option<String>,
    /// Password of the Redis node (sent as AUTH).
    #[arg(long, env = "SLUICE_NODE_PASSWORD")]
    pub node_password: Option<String>,
    /// Password clients must give with AUTH or HELLO … AUTH.
    #[arg(long, env = "SLUICE_PROXY_REQUIREPASS")]
    pub requirepass: Option<String>,
    /// Serve clients with TLS only, with this PEM certificate (chain); needs --tls-key. The
    /// peer proxies are then dialled with TLS too (see --tls-ca).
    #[arg(long, env = "SLUICE_PROXY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SLUICE_PROXY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) trusted when dialling peer proxies with TLS. Defaults to the last
    /// certificate of --tls-cert (the certificate itself when it is self-signed).
    #[arg(long, env = "SLUICE_PROXY_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// MOVED for slots of other proxies, or forward to them.
    #[arg(long, env = "SLUICE_PROXY_REDIRECT", value_enum, default_value = "moved")]
    pub redirect: Redirect,
    /// Shared connections to the node per protocol (RESP2/RESP3).
    #[arg(long, env = "SLUICE_PROXY_BACKEND_CONNECTIONS", default_value_t = 2)]
    pub backend_connections: usize,
    /// Most replies a single client may have outstanding before the proxy stops reading from it.
    #[arg(long, default_value_t = 1024)]
    pub pipeline_depth: usize,
    /// Largest bulk string a client may send, in bytes (Redis: proto-max-bulk-len).
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    pub max_bulk_len: usize,
    /// Worker threads. One is usually fastest: Redis itself runs on one core, and a single
    /// thread avoids waking tasks across cores.
    #[arg(long, env = "SLUICE_PROXY_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Timeout for connecting to the node or a peer proxy, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub connect_timeout_ms: u64,
    /// Largest replication lag (bytes, as the source node sees its replica) at which the
    /// source starts the switch.
    #[arg(long, env = "SLUICE_SWITCH_MAX_LAG_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub switch_max_lag_bytes: u64,
    /// Longest write pause of a switch, in milliseconds: past it the switch is abandoned
    /// (the slots stay on the source) and tried again later.
    #[arg(long, env = "SLUICE_SWITCH_PAUSE_MS", default_value_t = 1000)]
    pub switch_pause_ms: u64,
    /// How long the destination must have followed (replica online) before the source
    /// starts the switch, in milliseconds. 0: as soon as the lag is small.
    #[arg(long, env = "SLUICE_MIN_FOLLOW_MS", default_value_t = 0)]
    pub min_follow_ms: u64,
    /// Switch attempts before the migration fails.
    #[arg(long, env = "SLUICE_SWITCH_ATTEMPTS", default_value_t = 5)]
    pub switch_attempts: u32,
    /// A migration that has not switched after this many seconds fails.
    #[arg(long, env = "SLUICE_MIGRATION_TIMEOUT_SECS", default_value_t = 3600)]
    pub migration_timeout_secs: u64,
    /// Keys per `MIGRATE` batch of a keys-mode migration. `MIGRATE` blocks the source node
    /// while the batch travels: 1,000 keys of 100 bytes take a few milliseconds (bench:
    /// longest client command 15-25 ms under load), and fewer, larger batches move keys
    /// faster (1,000,000 keys, half the slots of one node: 1.96 s with 1,000 per batch,
    /// 2.13 s with 500, 2.53 s with 100). Lower it for large values.
    #[arg(long, env = "SLUICE_KEYS_BATCH", default_value_t = 1000)]
    pub keys_batch: usize,
    /// `MIGRATE` batches in flight at once (pipelined) in a keys-mode migration.
    #[arg(long, env = "SLUICE_KEYS_CONCURRENCY", default_value_t = 4)]
    pub keys_concurrency: usize,
    /// Most keys moved per second by a keys-mode migration (0: as fast as it goes), to bound
    /// the migration's load on the nodes.
    #[arg(long, env = "SLUICE_KEYS_PER_SEC", default_value_t = 0)]
    pub keys_per_sec: u64,
    /// `SCAN … COUNT` of a keys-mode migration's passes over the source node. Larger than the
    /// garbage collector's: the pass is on the migration's critical path, and one `SCAN` of
    /// 10,000 keys blocks the node about as long as one `MIGRATE` batch.
    #[arg(long, env = "SLUICE_KEYS_SCAN_COUNT", default_value_t = 10_000)]
    pub keys_scan_count: u64,
    /// `MIGRATE` timeout in milliseconds (Redis's own: the longest pause in the transfer).
    #[arg(long, env = "SLUICE_KEYS_MIGRATE_TIMEOUT_MS", default_value_t = 60_000)]
    pub keys_migrate_timeout_ms: u64,
    /// Most garbage keys (of slots served elsewhere) deleted per second.
    #[arg(long, env = "SLUICE_GC_KEYS_PER_SEC", default_value_t = 50_000)]
    pub gc_keys_per_sec: u64,
    /// `SCAN … COUNT` of the garbage collector.
    #[arg(long, env = "SLUICE_GC_SCAN_COUNT", default_value_t = 1000)]
    pub gc_scan_count: u64,
    /// Acknowledge a client's write only once this many of the shard's replicas have it (at
    /// most the replicas online; `WAIT` behind every write). 0: as soon as the master has it.
    #[arg(long, env = "SLUICE_PROXY_ACK_REPLICAS", default_value_t = 0)]
    pub ack_replicas: usize,
    /// How long a write waits for its replicas (`--ack-replicas`) before it is answered
    /// `NOREPLICAS`, in milliseconds.
    #[arg(long, env = "SLUICE_PROXY_ACK_TIMEOUT_MS", default_value_t = 1000)]
    pub ack_timeout_ms: u64,
    /// Pass `DEBUG`, `PFDEBUG` and `PFSELFTEST` through to the node (refused otherwise: they
    /// can stop or crash it). The node's own `enable-debug-command` still applies.
    #[arg(long, env = "SLUICE_PROXY_ALLOW_DEBUG")]
    pub allow_debug: bool,
    /// Most clients connected at once (Redis: `maxclients`). Past it a new client is told
    /// `-ERR max number of clients reached` and closed.
    #[arg(long, env = "SLUICE_PROXY_MAXCLIENTS", default_value_t = 10_000)]
    pub maxclients: usize,
    /// Close a client idle for this many seconds (0: never; Redis: `timeout`). A client
    /// waiting for a reply (a blocked `BLPOP`) is not idle.
    #[arg(long, env = "SLUICE_PROXY_TIMEOUT", default_value_t = 0)]
    pub timeout: u64,
    /// Most bytes read from a client and not yet parsed into a command (Redis:
    /// `client-query-buffer-limit`, 1gb there). Lower here: one command with Redis's largest
    /// bulk string (512mb) still fits. Units as Redis's (`64mb`, `1gb`, plain bytes).
    #[arg(long, env = "SLUICE_PROXY_CLIENT_QUERY_BUFFER_LIMIT", default_value = "576mb", value_parser = parse_bytes)]
    pub client_query_buffer_limit: usize,
    /// What a client's replies may hold in the proxy (received from the node, not yet written
    /// to the client), as Redis's `client-output-buffer-limit normal <hard> <soft> <seconds>`:
    /// `"HARD SOFT SECONDS"`, or one size `S`, short for `"2S S 1"`. A client past the hard
    /// limit, or past the soft limit for longer than the seconds, is closed; `0` (or
    /// `"0 0 0"`): no limit, Redis's default for normal clients. Redis keeps replies in its own
    /// memory anyway; a proxy would hold a second copy for a client that does not read, so it
    /// is bounded here by default.
    #[arg(long, env = "SLUICE_PROXY_CLIENT_OUTPUT_BUFFER_LIMIT", default_value = "64mb", value_parser = OutputLimit::parse)]
    pub client_output_buffer_limit: OutputLimit,
    /// Most requests queued for one node (or peer) connection before senders wait.
    #[arg(long, env = "SLUICE_PROXY_BACKEND_QUEUE", default_value_t = 4096)]
    pub backend_queue: usize,
    /// On SIGTERM/SIGINT: how long in-flight commands (and a migration switch under way) may
    /// take before the proxy exits anyway, in milliseconds.
    #[arg(long, env = "SLUICE_PROXY_SHUTDOWN_TIMEOUT_MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Why a size flag does not parse (clap shows the text after the flag name).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("unknown unit {unit:?} in {text:?} (use b, k, kb, m, mb, g or gb)")]
    Unit { unit: String, text: String },
    #[error("{0:?} is not a size (e.g. 64mb)")]
    NotASize(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// A size in Redis's notation: plain bytes, `k`/`m`/`g` (powers of 1000) or `kb`/`mb`/`gb`
/// (powers of 1024), case-insensitive.
pub fn parse_bytes(text: &str) -> Result<usize, SizeError> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: usize = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        other => return Err(SizeError::Unit { unit: other.to_string(), text: text.to_string() }),
    };
    let n: usize = digits.parse().map_err(|_| SizeError::NotASize(text.to_string()))?;
    n.checked_mul(unit).ok_or_else(|| SizeError::TooLarge(text.to_string()))
}

/// `--client-output-buffer-limit`: Redis's `client-output-buffer-limit` for the normal class.
/// A client is closed at once when its held replies reach `hard`, or when they stay above
/// `soft` for longer than `soft_for`; either limit is off at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: usize,
    pub soft: usize,
    pub soft_for: Duration,
}

/// Why `--client-output-buffer-limit` does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutputLimitError {
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("{0:?} is not a number of seconds")]
    Seconds(String),
    #[error("expected SIZE or \"HARD SOFT SECONDS\" (as Redis's client-output-buffer-limit), got {0:?}")]
    Shape(String),
}

impl OutputLimit {
    /// No limit: for a connection from another proxy (its own clients are bounded there).
    pub const NONE: OutputLimit = OutputLimit { hard: 0, soft: 0, soft_for: Duration::ZERO };

    /// `"HARD SOFT SECONDS"` as Redis writes it, or one size `S` for `"2S S 1"`.
    pub fn parse(text: &str) -> Result<OutputLimit, OutputLimitError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words[..] {
            [size] => {
                let soft = parse_bytes(size)?;
                let hard = soft.checked_mul(2).ok_or_else(|| SizeError::TooLarge(size.to_string()))?;
                Ok(OutputLimit { hard, soft, soft_for: Duration::from_secs(1) })
            }
            [hard, soft, seconds] => Ok(OutputLimit {
                hard: parse_bytes(hard)?,
                soft: parse_bytes(soft)?,
                soft_for: Duration::from_secs(seconds.parse().map_err(|_| OutputLimitError::Seconds(seconds.into()))?),
            }),
            _ => Err(OutputLimitError::Shape(text.to_string())),
        }
    }

    /// Whether any limit applies.
    pub fn is_set(&self) -> bool {
        self.hard != 0 || self.soft != 0
    }
}

impl ProxyOptions {
    /// The address this proxy is known by.
    pub fn announce(&self) -> &str {
        self.announce.as_deref().unwrap_or(&self.listen)
    }

    /// The address registered with the broker for the other proxies to use.
    pub fn peer_announce(&self) -> &str {
        self.peer_announce.as_deref().unwrap_or(self.announce())
    }

    /// The node address registered with the broker.
    pub fn node_announce(&self) -> &str {
        self.node_announce.as_deref().unwrap_or(&self.node)
    }

    /// The control address registered with the broker.
    pub fn control_announce(&self) -> Option<&str> {
        self.control_announce.as_deref().or(self.control.as_deref())
    }

    pub fn switch_pause(&self) -> Duration {
        Duration::from_millis(self.switch_pause_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, OutputLimit};
    use std::time::Duration;

    #[test]
    fn output_limits_as_redis_writes_them_or_one_size() {
        let limit = |hard, soft, secs| Ok(OutputLimit { hard, soft, soft_for: Duration::from_secs(secs) });
        assert_eq!(OutputLimit::parse("64mb"), limit(128 << 20, 64 << 20, 1));
        assert_eq!(OutputLimit::parse("256mb 64mb 60"), limit(256 << 20, 64 << 20, 60));
        assert_eq!(OutputLimit::parse("0 0 0"), limit(0, 0, 0));
        assert!(!OutputLimit::parse("0").expect("0 parses").is_set());
        assert!(OutputLimit::parse("32mb 0 0").expect("hard only parses").is_set());
        for bad in ["", "1mb 2mb", "1mb 2mb 3 4", "1mb 2mb x", "1mb 2mb -1", "12xb"] {
            assert!(OutputLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_in_redis_units() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("4k"), Ok(4000));
        assert_eq!(parse_bytes("4KB"), Ok(4096));
        assert_eq!(parse_bytes("64mb"), Ok(64 << 20));
        assert_eq!(parse_bytes("1gb"), Ok(1 << 30));
        assert_eq!(parse_bytes("2m"), Ok(2_000_000));
        for bad in ["", "mb", "12xb", "-1", "1.5mb", "99999999999999999999gb"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
