//! Differential testing of the proxy against a plain `redis-server`: a seeded generator of
//! random pipelines over a small key space, and the comparison of two runs answer by answer.
//!
//! The generator mixes every family of commands the proxy handles on a path of its own:
//! single-key reads and writes (batched), multi-key commands within one slot and across
//! slots (split and merged), node-level commands (`KEYS`, `SCAN`, `DBSIZE`, `INFO`,
//! `CONFIG GET`, `OBJECT`, `MEMORY USAGE`),
//! blocking commands with short timeouts (a private connection), `MULTI`/`EXEC`/`WATCH`,
//! `EVAL`, and commands the proxy answers itself (`PING`, `ECHO`, `CLUSTER KEYSLOT`). A
//! pipeline that mixes them is exactly what broke the proxy's ordering once: every path
//! must keep the client's order.
//!
//! Answers are compared as JSON values ([`frame_to_json`]) after a [`Check`] that removes
//! what legitimately differs between two servers (the order of a set's members, a TTL's
//! last second).

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sluice_common::resp::Frame;

/// Which families a run may use.
#[derive(Debug, Clone)]
pub struct Profile {
    /// `KEYS`, `SCAN`, `DBSIZE`, `INFO`, and multi-key commands across slots: only where one
    /// node holds every key (a one-proxy cluster), or a client merges them.
    pub node_level: bool,
    /// `MULTI`/`EXEC`/`WATCH`/`DISCARD` blocks.
    pub transactions: bool,
    /// Commands the proxy answers itself (`CLUSTER KEYSLOT` needs a cluster-mode reference).
    pub proxy_answered: bool,
    /// Unknown commands and wrong arities: a cluster client refuses to route them itself.
    /// Also `XREAD`, whose keys a cluster client asks the server for (`COMMAND GETKEYS`).
    pub raw_only: bool,
    /// Hash tags: every key has one, so keys of one tag share a slot.
    pub tags: Vec<String>,
}

impl Profile {
    /// Everything, for a one-proxy cluster compared with a plain node.
    pub fn one_node() -> Profile {
        Profile { node_level: true, transactions: true, proxy_answered: true, raw_only: true, tags: tags(4) }
    }

    /// What a cluster client's pipeline can carry: commands of one slot each.
    pub fn cluster_client() -> Profile {
        Profile { node_level: false, transactions: false, proxy_answered: false, raw_only: false, tags: tags(9) }
    }
}

fn tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

/// How an answer is compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Exact,
    /// An array whose order is the server's hash order (`KEYS`, `SMEMBERS`, …).
    Unordered,
    /// Field/value pairs in hash order (`HGETALL`): a flat array or a map.
    Pairs,
    /// `[cursor, keys]` of a `SCAN` that covers the whole (small) key space.
    Scan,
    /// A TTL: any positive number of seconds is the same.
    Ttl,
    /// A size in bytes (`MEMORY USAGE`): any positive number is the same, since allocation
    /// sizes follow each server's own rehashing, not only the commands it ran.
    Size,
    /// `INFO keyspace`: only the key and expiry counts of `db0`.
    Keyspace,
    /// The reply of `EXEC`: one check per queued command.
    Exec(Vec<Check>),
    /// Not compared (the reply is the proxy's own by design, e.g. `HELLO`).
    Ignore,
}

/// One command of a pipeline and how its answer is compared.
#[derive(Debug, Clone)]
pub struct Step {
    pub args: Vec<String>,
    pub check: Check,
    /// Answered by a cluster-mode node in the reference run (`CLUSTER …`).
    pub cluster_only: bool,
}

impl Step {
    fn new(args: Vec<String>, check: Check) -> Step {
        Step { args, check, cluster_only: false }
    }
}

const TYPES: [&str; 6] = ["str", "list", "hash", "set", "zset", "stream"];

/// A seeded pipeline generator. The same seed and profile give the same pipelines.
pub struct Generator {
    rng: StdRng,
    profile: Profile,
    /// The last stream id used per stream key, so most `XADD`s succeed.
    stream_ids: std::collections::HashMap<String, u64>,
}

impl Generator {
    pub fn new(seed: u64, profile: Profile) -> Generator {
        Generator { rng: StdRng::seed_from_u64(seed), profile, stream_ids: Default::default() }
    }

    /// One pipeline of 1 to 50 commands.
    pub fn pipeline(&mut self) -> Vec<Step> {
        let len = self.rng.random_range(1..=50);
        let mut steps = Vec::with_capacity(len + 8);
        while steps.len() < len {
            if self.profile.transactions && self.rng.random_bool(0.06) {
                self.transaction(&mut steps);
            } else {
                steps.push(self.command());
            }
        }
        steps
    }

    fn tag(&mut self) -> String {
        self.profile.tags.choose(&mut self.rng).cloned().unwrap_or_default()
    }

    /// A key of type `ty` with hash tag `tag`; now and then one of another type (`WRONGTYPE`).
    fn key_in(&mut self, tag: &str, ty: &str) -> String {
        let ty = if self.rng.random_bool(0.03) { TYPES.choose(&mut self.rng).copied().unwrap_or(ty) } else { ty };
        format!("{{{tag}}}{ty}:{}", self.rng.random_range(0..3))
    }

    fn key(&mut self, ty: &str) -> String {
        let tag = self.tag();
        self.key_in(&tag, ty)
    }

    fn value(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(-5..100).to_string(),
            1 => String::new(),
            _ => format!("v{}", self.rng.random_range(0..20)),
        }
    }

    fn member(&mut self) -> String {
        format!("m{}", self.rng.random_range(0..6))
    }

    /// Any command outside a transaction.
    fn command(&mut self) -> Step {
        let mut families: Vec<fn(&mut Generator) -> Step> =
            vec![Generator::string, Generator::list, Generator::hash, Generator::set, Generator::zset];
        families.extend([Generator::stream, Generator::expiry, Generator::same_slot, Generator::blocking]);
        families.push(Generator::script);
        if self.profile.raw_only {
            families.push(Generator::errors);
        }
        if self.profile.node_level {
            families.extend([Generator::node_level, Generator::cross_slot]);
        }
        if self.profile.proxy_answered {
            families.push(Generator::proxy_answered);
        }
        let family = families.choose(&mut self.rng).copied().unwrap_or(Generator::string);
        family(self)
    }

    /// A command that may be queued in a transaction on keys of `tag`.
    fn in_transaction(&mut self, tag: &str) -> Step {
        let saved = std::mem::replace(&mut self.profile.tags, vec![tag.to_string()]);
        let families: [fn(&mut Generator) -> Step; 7] = [
            Generator::string,
            Generator::list,
            Generator::hash,
            Generator::set,
            Generator::zset,
            Generator::expiry,
            Generator::same_slot,
        ];
        let family = families.choose(&mut self.rng).copied().unwrap_or(Generator::string);
        let step = family(self);
        self.profile.tags = saved;
        step
    }

    fn transaction(&mut self, steps: &mut Vec<Step>) {
        let tag = self.tag();
        if self.rng.random_bool(0.4) {
            let key = self.key_in(&tag, "str");
            steps.push(Step::new(args(&["WATCH", &key]), Check::Exact));
            if self.rng.random_bool(0.5) {
                steps.push(Step::new(args(&["GET", &key]), Check::Exact));
            }
            if self.rng.random_bool(0.3) {
                // Written after WATCH by the same client: EXEC answers nil.
                steps.push(Step::new(args(&["SET", &key, "w"]), Check::Exact));
            }
        }
        steps.push(Step::new(args(&["MULTI"]), Check::Exact));
        let mut queued = Vec::new();
        for _ in 0..self.rng.random_range(0..6) {
            let step = self.in_transaction(&tag);
            queued.push(step.check.clone());
            steps.push(Step::new(step.args, Check::Exact));
        }
        if self.rng.random_bool(0.1) {
            // Refused while queueing: EXEC answers EXECABORT.
            steps.push(Step::new(args(&["GET"]), Check::Exact));
        }
        if self.rng.random_bool(0.15) {
            steps.push(Step::new(args(&["DISCARD"]), Check::Exact));
        } else {
            steps.push(Step::new(args(&["EXEC"]), Check::Exec(queued)));
        }
    }

    fn string(&mut self) -> Step {
        let k = self.key("str");
        let v = self.value();
        let a = match self.rng.random_range(0..10) {
            0 | 1 => vec!["SET", &k, &v],
            2 => vec!["SET", &k, &v, "NX"],
            3 | 4 => vec!["GET", &k],
            5 => vec!["INCR", &k],
            6 => vec!["APPEND", &k, &v],
            7 => vec!["GETDEL", &k],
            8 => vec!["STRLEN", &k],
            _ => vec!["INCRBY", &k, "3"],
        };
        Step::new(args(&a), Check::Exact)
    }

    fn list(&mut self) -> Step {
        let k = self.key("list");
        let v = self.value();
        let (a, check) = match self.rng.random_range(0..8) {
            0 | 1 => (vec!["RPUSH", &k, &v], Check::Exact),
            2 => (vec!["LPUSH", &k, &v, "x"], Check::Exact),
            3 => (vec!["LPOP", &k], Check::Exact),
            4 => (vec!["RPOP", &k], Check::Exact),
            5 => (vec!["LRANGE", &k, "0", "-1"], Check::Exact),
            6 => (vec!["LLEN", &k], Check::Exact),
            _ => (vec!["LREM", &k, "0", &v], Check::Exact),
        };
        Step::new(args(&a), check)
    }

    fn hash(&mut self) -> Step {
        let k = self.key("hash");
        let f = self.member();
        let v = self.value();
        let (a, check) = match self.rng.random_range(0..7) {
            0 | 1 => (vec!["HSET", &k, &f, &v], Check::Exact),
            2 => (vec!["HGET", &k, &f], Check::Exact),
            3 => (vec!["HDEL", &k, &f], Check::Exact),
            4 => (vec!["HLEN", &k], Check::Exact),
            5 => (vec!["HGETALL", &k], Check::Pairs),
            _ => (vec!["HINCRBY", &k, &f, "2"], Check::Exact),
        };
        Step::new(args(&a), check)
    }

    fn set(&mut self) -> Step {
        let k = self.key("set");
        let m = self.member();
        let (a, check) = match self.rng.random_range(0..6) {
            0 | 1 => (vec!["SADD", &k, &m], Check::Exact),
            2 => (vec!["SREM", &k, &m], Check::Exact),
            3 => (vec!["SCARD", &k], Check::Exact),
            4 => (vec!["SISMEMBER", &k, &m], Check::Exact),
            _ => (vec!["SMEMBERS", &k], Check::Unordered),
        };
        Step::new(args(&a), check)
    }

    fn zset(&mut self) -> Step {
        let k = self.key("zset");
        let m = self.member();
        let score = self.rng.random_range(0..10).to_string();
        let a = match self.rng.random_range(0..6) {
            0 | 1 => vec!["ZADD", &k, &score, &m],
            2 => vec!["ZINCRBY", &k, "1.5", &m],
            3 => vec!["ZREM", &k, &m],
            4 => vec!["ZCARD", &k],
            _ => vec!["ZRANGE", &k, "0", "-1", "WITHSCORES"],
        };
        Step::new(args(&a), Check::Exact)
    }

    fn stream(&mut self) -> Step {
        let k = self.key("stream");
        let a = match self.rng.random_range(0..4) {
            0 | 1 => {
                let last = self.stream_ids.entry(k.clone()).or_insert(0);
                // Mostly a new id; sometimes an old one (an error on both sides).
                let id = if self.rng.random_bool(0.9) { *last + 1 } else { *last };
                *last = (*last).max(id);
                args(&["XADD", &k, &format!("{id}-1"), "f", "v"])
            }
            2 => args(&["XLEN", &k]),
            _ => args(&["XRANGE", &k, "-", "+"]),
        };
        Step::new(a, Check::Exact)
    }

    fn expiry(&mut self) -> Step {
        let k = self.key("str");
        let (a, check) = match self.rng.random_range(0..6) {
            0 => (args(&["SET", &k, "e", "EX", "100000"]), Check::Exact),
            1 => (args(&["EXPIRE", &k, "100000"]), Check::Exact),
            2 => (args(&["PERSIST", &k]), Check::Exact),
            3 => (args(&["TTL", &k]), Check::Ttl),
            4 => (args(&["EXISTS", &k]), Check::Exact),
            _ => (args(&["TYPE", &k]), Check::Exact),
        };
        Step::new(a, check)
    }

    /// Commands with several keys of one slot (one tag).
    fn same_slot(&mut self) -> Step {
        let tag = self.tag();
        let (a, b) = (self.key_in(&tag, "str"), self.key_in(&tag, "str"));
        let (la, lb) = (self.key_in(&tag, "list"), self.key_in(&tag, "list"));
        let (sa, sb) = (self.key_in(&tag, "set"), self.key_in(&tag, "set"));
        let v = self.value();
        let (cmd, check) = match self.rng.random_range(0..8) {
            0 => (args(&["MSET", &a, &v, &b, "x"]), Check::Exact),
            1 => (args(&["MGET", &a, &b]), Check::Exact),
            2 => (args(&["RPOPLPUSH", &la, &lb]), Check::Exact),
            3 => (args(&["LMOVE", &la, &lb, "LEFT", "RIGHT"]), Check::Exact),
            4 => (args(&["SUNIONSTORE", &sa, &sa, &sb]), Check::Exact),
            5 => (args(&["SINTER", &sa, &sb]), Check::Unordered),
            6 => (args(&["DEL", &a, &la]), Check::Exact),
            _ => (args(&["RENAME", &a, &b]), Check::Exact),
        };
        Step::new(cmd, check)
    }

    /// Multi-key commands whose keys may lie in several slots.
    fn cross_slot(&mut self) -> Step {
        let n = self.rng.random_range(2..5);
        let keys: Vec<String> = (0..n).map(|_| self.key("str")).collect();
        let name =
            ["MGET", "DEL", "EXISTS", "UNLINK", "TOUCH", "MSET"].choose(&mut self.rng).copied().unwrap_or("MGET");
        let mut a = vec![name.to_string()];
        for k in keys {
            a.push(k);
            if name == "MSET" {
                a.push(self.value());
            }
        }
        Step::new(a, Check::Exact)
    }

    /// Blocking commands with short timeouts (1 ms: an empty key answers nil after it on
    /// both sides): on a private connection through the proxy.
    fn blocking(&mut self) -> Step {
        let tag = self.tag();
        let (la, lb) = (self.key_in(&tag, "list"), self.key_in(&tag, "list"));
        let z = self.key_in(&tag, "zset");
        let s = self.key_in(&tag, "stream");
        let a = match self.rng.random_range(0..5) {
            0 | 1 => args(&["BLPOP", &la, "0.001"]),
            2 => args(&["BRPOP", &la, &lb, "0.001"]),
            3 => args(&["BLMOVE", &la, &lb, "LEFT", "RIGHT", "0.001"]),
            _ if self.profile.raw_only && self.rng.random_bool(0.5) => {
                args(&["XREAD", "COUNT", "5", "BLOCK", "1", "STREAMS", &s, "0"])
            }
            _ => args(&["BZPOPMIN", &z, "0.001"]),
        };
        Step::new(a, Check::Exact)
    }

    fn script(&mut self) -> Step {
        let tag = self.tag();
        let (a, b) = (self.key_in(&tag, "str"), self.key_in(&tag, "str"));
        let v = self.value();
        let cmd = match self.rng.random_range(0..3) {
            0 => args(&["EVAL", "return redis.call('GET', KEYS[1])", "1", &a]),
            1 => args(&[
                "EVAL",
                "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('EXISTS', KEYS[2])",
                "2",
                &a,
                &b,
                &v,
            ]),
            _ => args(&["EVAL", "return ARGV[1]", "0", &v]),
        };
        Step::new(cmd, Check::Exact)
    }

    /// Errors both sides must give alike.
    fn errors(&mut self) -> Step {
        let k = self.key("str");
        let a = match self.rng.random_range(0..3) {
            0 => args(&["GET"]),
            1 => args(&["NOSUCHCOMMAND", &k]),
            _ => args(&["SET", &k, "v", "EX", "notanumber"]),
        };
        Step::new(a, Check::Exact)
    }

    fn node_level(&mut self) -> Step {
        let tag = self.tag();
        let ty = TYPES.choose(&mut self.rng).copied().unwrap_or("str");
        let key = self.key_in(&tag, ty);
        let (a, check) = match self.rng.random_range(0..8) {
            0 => (args(&["KEYS", "*"]), Check::Unordered),
            1 => (args(&["KEYS", &format!("{{{tag}}}*")]), Check::Unordered),
            2 => (args(&["SCAN", "0", "MATCH", "*", "COUNT", "100000"]), Check::Scan),
            3 => (args(&["DBSIZE"]), Check::Exact),
            4 => (args(&["CONFIG", "GET", "maxmemory"]), Check::Exact),
            5 => (args(&["OBJECT", "ENCODING", &key]), Check::Exact),
            6 => (args(&["MEMORY", "USAGE", &key]), Check::Size),
            _ => (args(&["INFO", "keyspace"]), Check::Keyspace),
        };
        Step::new(a, check)
    }

    fn proxy_answered(&mut self) -> Step {
        let k = self.key("str");
        match self.rng.random_range(0..4) {
            0 => Step::new(args(&["PING"]), Check::Exact),
            1 => Step::new(args(&["PING", &k]), Check::Exact),
            2 => Step::new(args(&["ECHO", &k]), Check::Exact),
            _ => Step { args: args(&["CLUSTER", "KEYSLOT", &k]), check: Check::Exact, cluster_only: true },
        }
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A reply as JSON: strings as text, errors as `{"error": …}`, simple strings as `"+…"`.
pub fn frame_to_json(frame: &Frame) -> Value {
    let text = |b: &[u8]| Value::String(String::from_utf8_lossy(b).into_owned());
    match frame {
        Frame::Simple(s) => Value::String(format!("+{}", String::from_utf8_lossy(s))),
        Frame::Error(e) | Frame::BlobError(e) => serde_json::json!({ "error": String::from_utf8_lossy(e) }),
        Frame::Integer(i) => Value::from(*i),
        Frame::Bulk(b) | Frame::Verbatim(_, b) => text(b),
        Frame::Double(d) | Frame::BigNumber(d) => text(d),
        Frame::Null | Frame::NullArray => Value::Null,
        Frame::Boolean(b) => Value::Bool(*b),
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            Value::Array(items.iter().map(frame_to_json).collect())
        }
        Frame::Map(pairs) => {
            Value::Array(pairs.iter().flat_map(|(k, v)| [frame_to_json(k), frame_to_json(v)]).collect())
        }
    }
}

/// `value` with what [`Check`] does not compare taken out.
pub fn normalize(check: &Check, value: Value) -> Value {
    let sorted = |mut items: Vec<Value>| {
        items.sort_by_key(|v| v.to_string());
        Value::Array(items)
    };
    match (check, value) {
        (Check::Ignore, _) => Value::Null,
        (Check::Unordered, Value::Array(items)) => sorted(items),
        (Check::Pairs, Value::Array(items)) => {
            let pairs = items.chunks(2).map(|p| Value::Array(p.to_vec())).collect();
            sorted(pairs)
        }
        (Check::Scan, Value::Array(mut parts)) if parts.len() == 2 => {
            if let Some(Value::Array(keys)) = parts.pop() {
                parts.push(sorted(keys));
            }
            Value::Array(parts)
        }
        (Check::Ttl | Check::Size, Value::Number(n)) if n.as_i64().is_some_and(|t| t > 0) => Value::from(1),
        (Check::Keyspace, Value::String(info)) => {
            let db0 = info
                .lines()
                .find(|l| l.starts_with("db0:"))
                .map(|l| l.split(',').filter(|part| !part.starts_with("avg_ttl")).collect::<Vec<_>>().join(","));
            db0.map_or(Value::Null, Value::String)
        }
        (Check::Exec(checks), Value::Array(items)) if checks.len() == items.len() => {
            Value::Array(checks.iter().zip(items).map(|(c, v)| normalize(c, v)).collect())
        }
        (_, v) => v,
    }
}

/// The first answer of `got` that differs from `want` after its check, with a report that
/// names the seed and prints the pipeline.
pub fn first_difference(seed: u64, index: usize, steps: &[Step], got: &[Value], want: &[Value]) -> Option<String> {
    if got.len() != want.len() {
        return Some(report(seed, index, steps, got, want, format!("{} answers, expected {}", got.len(), want.len())));
    }
    for (i, step) in steps.iter().enumerate() {
        let (g, w) = (normalize(&step.check, got[i].clone()), normalize(&step.check, want[i].clone()));
        if g != w {
            let why = format!("command {i} ({}) answered {g}, expected {w}", step.args.join(" "));
            return Some(report(seed, index, steps, got, want, why));
        }
    }
    None
}

fn report(seed: u64, index: usize, steps: &[Step], got: &[Value], want: &[Value], why: String) -> String {
    let mut out = format!("pipeline {index} of seed {seed} (replay: SLUICE_SEED={seed}): {why}\n");
    for (i, step) in steps.iter().enumerate() {
        let g = got.get(i).map(Value::to_string).unwrap_or_default();
        let w = want.get(i).map(Value::to_string).unwrap_or_default();
        let mark = if g == w { " " } else { "!" };
        out.push_str(&format!("{mark} {i:>2} {:<60} got {g}  expected {w}\n", step.args.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_pipelines() {
        let mut a = Generator::new(7, Profile::one_node());
        let mut b = Generator::new(7, Profile::one_node());
        for _ in 0..50 {
            let (pa, pb) = (a.pipeline(), b.pipeline());
            assert_eq!(pa.iter().map(|s| &s.args).collect::<Vec<_>>(), pb.iter().map(|s| &s.args).collect::<Vec<_>>());
            assert!(!pa.is_empty() && pa.len() <= 58);
        }
    }

    #[test]
    fn checks_ignore_only_what_they_name() {
        let keys = |v: &[&str]| Value::Array(v.iter().map(|s| Value::from(*s)).collect());
        assert_eq!(normalize(&Check::Unordered, keys(&["b", "a"])), normalize(&Check::Unordered, keys(&["a", "b"])));
        assert_ne!(normalize(&Check::Exact, keys(&["b", "a"])), normalize(&Check::Exact, keys(&["a", "b"])));
        assert_ne!(normalize(&Check::Unordered, keys(&["a"])), normalize(&Check::Unordered, keys(&["a", "a"])));
        assert_eq!(normalize(&Check::Ttl, Value::from(99)), normalize(&Check::Ttl, Value::from(100)));
        assert_ne!(normalize(&Check::Ttl, Value::from(-1)), normalize(&Check::Ttl, Value::from(100)));
        let pairs = |v: &[&str]| keys(v);
        assert_eq!(
            normalize(&Check::Pairs, pairs(&["f", "1", "g", "2"])),
            normalize(&Check::Pairs, pairs(&["g", "2", "f", "1"]))
        );
        assert_ne!(
            normalize(&Check::Pairs, pairs(&["f", "1", "g", "2"])),
            normalize(&Check::Pairs, pairs(&["f", "2", "g", "1"]))
        );
        let info = |s: &str| Value::from(format!("# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl={s}\r\n"));
        assert_eq!(normalize(&Check::Keyspace, info("5")), normalize(&Check::Keyspace, info("7")));
    }
}
