//! The proxy's Prometheus metrics: what its data path counts as it goes (commands by name,
//! replies by result, latency by the path a reply took, bytes, backend connections). The
//! values that describe a state (the config epoch, clients, slots, migrations) are set by the
//! exporter (`exporter.rs`) at each scrape, so they can never be stale.
//!
//! Counting is on only with `--metrics`. The data path then pays an atomic add or two per
//! command: a command's counter is resolved once (`OnceLock` per table entry), never looked up
//! by label on the hot path.

use crate::command::{self, CommandSpec};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// PipelinedConn connections open in this process (the node's pool, private lanes, peers,
/// migration links): kept by `backend.rs` as connections open and close.
pub static BACKEND_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// The path a reply took, for the latency histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyPath {
    /// Answered by the proxy itself (`PING`, `CLUSTER …`, `MOVED`, refusals).
    Proxy,
    /// Batched with the client's other commands to the node (the usual path).
    Batch,
    /// Sent on its own: a blocking command, a peer, a transaction, a private lane.
    Single,
    /// Worked on after the node answered: split multi-key commands, `SCAN`, `INFO`.
    Merged,
}

impl ReplyPath {
    const ALL: [ReplyPath; 4] = [ReplyPath::Proxy, ReplyPath::Batch, ReplyPath::Single, ReplyPath::Merged];

    fn name(self) -> &'static str {
        match self {
            ReplyPath::Proxy => "proxy",
            ReplyPath::Batch => "batch",
            ReplyPath::Single => "single",
            ReplyPath::Merged => "merged",
        }
    }
}

/// What a reply said, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Moved,
    Ask,
    TryAgain,
}

impl Outcome {
    const ALL: [Outcome; 5] = [Outcome::Ok, Outcome::Error, Outcome::Moved, Outcome::Ask, Outcome::TryAgain];

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Moved => "moved",
            Outcome::Ask => "ask",
            Outcome::TryAgain => "tryagain",
        }
    }

    fn of(reply: &[u8]) -> Outcome {
        match reply.first() {
            Some(b'-') | Some(b'!') => {
                let text = &reply[1..];
                if text.starts_with(b"MOVED ") {
                    Outcome::Moved
                } else if text.starts_with(b"ASK ") {
                    Outcome::Ask
                } else if text.starts_with(b"TRYAGAIN") {
                    Outcome::TryAgain
                } else {
                    Outcome::Error
                }
            }
            _ => Outcome::Ok,
        }
    }
}

/// Every metric of the proxy, in one registry.
pub struct Metrics {
    /// Off without `--metrics`: the data path then counts nothing (one branch per call).
    enabled: bool,
    registry: Registry,
    commands: IntCounterVec,
    /// One counter per command table entry, resolved on first use.
    by_command: Box<[OnceLock<IntCounter>]>,
    unknown: IntCounter,
    replies: [IntCounter; 5],
    latency: [Histogram; 4],
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    backend_connections: IntGauge,
    /// Set at each scrape.
    pub epoch: IntGauge,
    pub clients: IntGauge,
    pub slots: IntGauge,
    pub migration_phase: IntGaugeVec,
    pub migration_progress: GaugeVec,
}

/// The outcomes and bytes of a batch's replies, added up locally and counted once.
#[derive(Default)]
pub struct BatchTally {
    counts: [u64; Outcome::ALL.len()],
    bytes: u64,
}

impl BatchTally {
    pub fn add(&mut self, reply: &[u8]) {
        self.counts[Outcome::of(reply) as usize] += 1;
        self.bytes += reply.len() as u64;
    }
}

impl Metrics {
    pub fn new(enabled: bool) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("sluice_proxy".into()), None)?;
        let commands = IntCounterVec::new(
            Opts::new("commands_total", "Commands clients sent, by name (subcommands as container|sub)"),
            &["command"],
        )?;
        let replies_vec = IntCounterVec::new(
            Opts::new("replies_total", "Replies written to clients, by result: ok, error, moved, ask, tryagain"),
            &["result"],
        )?;
        let latency_vec = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "reply_duration_seconds",
                "From a command's reply being queued to it being ready for the client, by the path it took",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 10.0,
            ]),
            &["path"],
        )?;
        let bytes = IntCounterVec::new(Opts::new("client_bytes_total", "Bytes from and to clients"), &["direction"])?;
        let backend_connections =
            IntGauge::new("backend_connections", "Connections open to Redis nodes and peer proxies")?;
        let epoch = IntGauge::new("config_epoch", "The epoch of the config the proxy holds")?;
        let clients = IntGauge::new("connected_clients", "Client connections open")?;
        let slots = IntGauge::new("slots_served", "Slots this proxy serves now")?;
        let migration_phase = IntGaugeVec::new(
            Opts::new("migration_phase", "1 for the phase each migration task of this proxy is in"),
            &["migration", "role", "phase"],
        )?;
        let migration_progress = GaugeVec::new(
            Opts::new(
                "migration_progress",
                "The numbers a migration task reports (lag_bytes, keys_moved, keys_deleted, offset, …)",
            ),
            &["migration", "role", "field"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(replies_vec.clone()))?;
        registry.register(Box::new(latency_vec.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(backend_connections.clone()))?;
        registry.register(Box::new(epoch.clone()))?;
        registry.register(Box::new(clients.clone()))?;
        registry.register(Box::new(slots.clone()))?;
        registry.register(Box::new(migration_phase.clone()))?;
        registry.register(Box::new(migration_progress.clone()))?;
        Ok(Metrics {
            enabled,
            by_command: (0..command::count()).map(|_| OnceLock::new()).collect(),
            unknown: commands.with_label_values(&["unknown"]),
            replies: Outcome::ALL.map(|o| replies_vec.with_label_values(&[o.name()])),
            latency: ReplyPath::ALL.map(|p| latency_vec.with_label_values(&[p.name()])),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            commands,
            registry,
            backend_connections,
            epoch,
            clients,
            slots,
            migration_phase,
            migration_progress,
        })
    }

    /// A command the client sent (`None`: not in the table).
    pub fn command(&self, spec: Option<&CommandSpec>) {
        if !self.enabled {
            return;
        }
        let counter = spec.and_then(|s| {
            let i = command::index(s)?;
            let cell = self.by_command.get(i)?;
            Some(cell.get_or_init(|| self.commands.with_label_values(&[s.name])))
        });
        counter.unwrap_or(&self.unknown).inc();
    }

    /// `n` replies (concatenated in `bytes`, all of one kind: a batch that failed as a whole
    /// repeats one error) that took `path` and waited `waited` since they were queued.
    pub fn replies(&self, path: ReplyPath, bytes: &[u8], n: u64, waited: Duration) {
        if !self.enabled {
            return;
        }
        self.replies[Outcome::of(bytes) as usize].inc_by(n);
        self.latency[path as usize].observe(waited.as_secs_f64());
        self.bytes_out.inc_by(bytes.len() as u64);
    }

    /// The replies of one batch, counted once for the batch (not an atomic add per reply).
    pub fn batch<'a>(&self, replies: impl IntoIterator<Item = &'a [u8]>, waited: Duration) {
        if !self.enabled {
            return;
        }
        let mut tally = BatchTally::default();
        for r in replies {
            tally.add(r);
        }
        self.batch_done(tally, waited);
    }

    /// A batch whose replies were tallied one by one as they were written.
    pub fn batch_done(&self, tally: BatchTally, waited: Duration) {
        if !self.enabled {
            return;
        }
        for (counter, n) in self.replies.iter().zip(tally.counts) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        self.bytes_out.inc_by(tally.bytes);
        self.latency[ReplyPath::Batch as usize].observe(waited.as_secs_f64());
    }

    pub fn bytes_in(&self, n: usize) {
        if !self.enabled || n == 0 {
            return;
        }
        self.bytes_in.inc_by(n as u64);
    }

    /// The text format of everything (the state gauges as the exporter last set them).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.backend_connections.set(BACKEND_CONNECTIONS.load(Ordering::Relaxed));
        sluice_common::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::resp::Command;

    #[test]
    fn commands_replies_and_latency_are_counted() {
        let m = Metrics::new(true).expect("registry");
        let get = command::lookup(&Command::from_strs(&["GET", "k"]));
        let info = command::lookup(&Command::from_strs(&["CLIENT", "INFO"]));
        m.command(get);
        m.command(get);
        m.command(info);
        m.command(None);
        m.replies(ReplyPath::Proxy, b"-MOVED 3999 127.0.0.1:6381\r\n", 1, Duration::from_micros(20));
        m.replies(ReplyPath::Single, b"-ERR no\r\n", 1, Duration::from_millis(2));
        m.batch([&b"+OK\r\n"[..], &b"-TRYAGAIN slot held\r\n"[..]], Duration::from_micros(300));
        m.bytes_in(10);
        let text = m.render().expect("render");
        for line in [
            r#"sluice_proxy_commands_total{command="get"} 2"#,
            r#"sluice_proxy_commands_total{command="client|info"} 1"#,
            r#"sluice_proxy_commands_total{command="unknown"} 1"#,
            r#"sluice_proxy_replies_total{result="moved"} 1"#,
            r#"sluice_proxy_replies_total{result="error"} 1"#,
            r#"sluice_proxy_replies_total{result="ok"} 1"#,
            r#"sluice_proxy_replies_total{result="tryagain"} 1"#,
            r#"sluice_proxy_reply_duration_seconds_count{path="batch"} 1"#,
            r#"sluice_proxy_client_bytes_total{direction="in"} 10"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        // Commands never sent make no series.
        assert!(!text.contains(r#"command="set""#), "{text}");

        // Without --metrics nothing is counted.
        let off = Metrics::new(false).expect("registry");
        off.command(get);
        off.batch([&b"+OK\r\n"[..]], Duration::from_micros(1));
        let text = off.render().expect("render");
        assert!(!text.contains(r#"command="get""#), "{text}");
        assert!(text.contains(r#"sluice_proxy_replies_total{result="ok"} 0"#), "{text}");
    }

    #[test]
    fn every_table_entry_has_its_own_index() {
        for (i, spec) in command::all().iter().enumerate() {
            assert_eq!(command::index(spec), Some(i), "{}", spec.name);
        }
        // The commands the table lacks come after it, each with its own place.
        let setinfo = command::lookup(&Command::from_strs(&["CLIENT", "SETINFO", "lib-name", "x"])).expect("known");
        let no_touch = command::lookup(&Command::from_strs(&["CLIENT", "NO-TOUCH", "on"])).expect("known");
        let extra = [command::index(setinfo), command::index(no_touch)];
        assert!(extra.iter().all(|i| i.is_some_and(|i| i >= command::all().len() && i < command::count())));
        assert_ne!(extra[0], extra[1]);
        let m = Metrics::new(true).expect("registry");
        m.command(Some(setinfo));
        let text = m.render().expect("render");
        assert!(text.contains(r#"sluice_proxy_commands_total{command="client|setinfo"} 1"#), "{text}");
        let elsewhere = CommandSpec { name: "x", arity: 1, flags: 0, keys: &[], has_subcommands: false };
        assert_eq!(command::index(&elsewhere), None);
    }
}
