//! The command table: for every Redis command, its arity, flags and where its keys are.
//!
//! A proxy passes hundreds of commands through untouched; it only needs to know where the
//! keys are to route them. The table is generated from Redis's own `COMMAND INFO`
//! (`scripts/gen-command-table.py`), and keys are found with Redis's key-spec algorithm,
//! so `EVAL`, `ZUNIONSTORE`, `XREAD … STREAMS`, `LMPOP` and friends route by their real keys.

pub mod spec;
mod table;

use sluice_common::resp::{parse_int, Command};
use smallvec::SmallVec;
pub use spec::{flags, BeginSearch, CommandSpec, FindKeys, KeySpec};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

/// Positions of the keys of a command (indices into its arguments).
pub type KeyPositions = SmallVec<[usize; 4]>;

/// Why the keys of a command could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("ERR value is not an integer or out of range")]
    BadNumKeys,
    #[error("ERR Number of keys can't be greater than number of args")]
    TooManyKeys,
    #[error("ERR Number of keys can't be negative")]
    NegativeNumKeys,
}

/// Finds the table entry for a command, descending into subcommands (`OBJECT ENCODING`).
pub fn lookup(cmd: &Command) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 64];
    let name = lower_into(cmd.name(), &mut buf)?;
    let spec = find(name)?;
    if !spec.has_subcommands {
        return Some(spec);
    }
    let Some(sub) = cmd.arg(1) else {
        return Some(spec); // arity check will refuse it
    };
    let mut full = [0u8; 64];
    let n = name.len();
    full[..n].copy_from_slice(name.as_bytes());
    full[n] = b'|';
    let sub = lower_into(sub, &mut full[n + 1..])?.len();
    let full = std::str::from_utf8(&full[..n + 1 + sub]).ok()?;
    find(full).or(Some(spec))
}

/// Every command of the table, in a fixed order ([`index`] gives a command's place).
pub fn all() -> &'static [CommandSpec] {
    table::COMMANDS
}

/// The spec of a *plain* command named `name` (as the client spelled it) with `argc`
/// arguments: one key, at argument 1, and nothing the proxy does with it but route it by that
/// key's slot (no subcommands, not blocking, not pub/sub or admin, not a command the proxy
/// answers, refuses or treats by name: see [`NOT_PLAIN`]). A session sends such commands on
/// as the client's own bytes when their slot is served here (`session::Session::take_plain`),
/// which is most of any workload; `None` sends a command the full way (`dispatch`).
pub fn plain(name: &[u8], argc: usize) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 32];
    let spec = find(lower_into(name, &mut buf)?)?;
    static PLAIN: OnceLock<Vec<bool>> = OnceLock::new();
    let table = PLAIN.get_or_init(|| table::COMMANDS.iter().map(has_plain_shape).collect());
    let is_plain = index(spec).and_then(|i| table.get(i).copied()).unwrap_or(false);
    (is_plain && argc >= 2 && spec.arity_ok(argc)).then_some(spec)
}

/// Commands with one key at argument 1 that the proxy still treats by name: `dispatch`
/// answers them, `transaction` holds them, `keyed::refusal` refuses them, or their keys are
/// not found by the key specs alone (`key_positions`). Never plain.
pub const NOT_PLAIN: &[&str] = &[
    "ping",
    "echo",
    "quit",
    "auth",
    "hello",
    "select",
    "reset",
    "readonly",
    "readwrite",
    "asking",
    "info",
    "scan",
    "keys",
    "dbsize",
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "move",
    "swapdb",
    "copy",
    "randomkey",
    "wait",
    "waitaof",
    "migrate",
    "sort",
    "sort_ro",
    "debug",
    "umctl",
];

fn has_plain_shape(spec: &CommandSpec) -> bool {
    let single_key_at_1 =
        matches!(spec.keys, [KeySpec { begin: BeginSearch::Index(1), find: FindKeys::Range { last_key: 0, .. }, .. }]);
    let special = flags::PUBSUB | flags::ADMIN | flags::BLOCKING | flags::MOVABLEKEYS;
    single_key_at_1 && !spec.has_subcommands && spec.flags & special == 0 && !NOT_PLAIN.contains(&spec.name)
}

/// How many commands [`lookup`] can answer: those of [`all`], then the few the proxy answers
/// although the table lacks them.
pub fn count() -> usize {
    table::COMMANDS.len() + ANSWERED_HERE.len()
}

/// Where `spec` (as [`lookup`] answers it) sits among the [`count`] commands: its place in
/// [`all`], or after them for one the table lacks. For per-command arrays such as the
/// metrics' counters. Anything else answers `None`.
pub fn index(spec: &CommandSpec) -> Option<usize> {
    let place = |slice: &[CommandSpec]| {
        let first = slice.as_ptr() as usize;
        let offset = (spec as *const CommandSpec as usize).checked_sub(first)?;
        let i = offset / std::mem::size_of::<CommandSpec>();
        (offset % std::mem::size_of::<CommandSpec>() == 0 && i < slice.len()).then_some(i)
    };
    place(table::COMMANDS).or_else(|| place(ANSWERED_HERE).map(|i| table::COMMANDS.len() + i))
}

/// Looks a lower-case name up in a hash index of the table (built on first use): this runs
/// for every command, and a binary search costs a dozen string compares.
fn find(name: &str) -> Option<&'static CommandSpec> {
    type Index = HashMap<&'static str, &'static CommandSpec, BuildHasherDefault<Fnv>>;
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX
        .get_or_init(|| table::COMMANDS.iter().map(|c| (c.name, c)).collect())
        .get(name)
        .copied()
        .or_else(|| ANSWERED_HERE.iter().find(|c| c.name == name))
}

/// Subcommands newer than the generated table (Redis 7.0's) that the proxy answers itself
/// (`connection_commands.rs`): Redis 7.2 clients send `CLIENT SETINFO` on every new connection
/// (redis-py, Jedis, go-redis) and `CLIENT NO-TOUCH` is a per-connection flag. They are not in
/// [`all`]; [`index`] places them after it.
static ANSWERED_HERE: &[CommandSpec] = &[
    CommandSpec {
        name: "client|no-touch",
        arity: 3,
        flags: flags::NOSCRIPT | flags::LOADING | flags::STALE,
        keys: &[],
        has_subcommands: false,
    },
    CommandSpec {
        name: "client|setinfo",
        arity: 4,
        flags: flags::NOSCRIPT | flags::LOADING | flags::STALE,
        keys: &[],
        has_subcommands: false,
    },
];

/// FNV-1a: fast for the short keys of the command index (no attacker chooses the table's keys,
/// and a lookup of an unknown name costs one probe).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Lower-cases `src` into `buf`; `None` if it does not fit or is not UTF-8.
fn lower_into<'a>(src: &[u8], buf: &'a mut [u8]) -> Option<&'a str> {
    let dst = buf.get_mut(..src.len())?;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_ascii_lowercase();
    }
    std::str::from_utf8(dst).ok()
}

/// `DEBUG OBJECT key` and `DEBUG DIGEST-VALUE key…` name keys; Redis's table gives `DEBUG` none
/// (it is one command with free-form arguments), so they would run on whatever node.
fn debug_keys(cmd: &Command) -> KeyPositions {
    let args = cmd.args();
    match args.get(1) {
        Some(sub) if sub.eq_ignore_ascii_case(b"object") => (2..args.len().min(3)).collect(),
        Some(sub) if sub.eq_ignore_ascii_case(b"digest-value") => (2..args.len()).collect(),
        _ => KeyPositions::new(),
    }
}

/// The positions of every key of `cmd`, in argument order, by Redis's key-spec rules.
pub fn key_positions(cmd: &Command, spec: &CommandSpec) -> Result<KeyPositions, KeysError> {
    let args = cmd.args();
    let argc = args.len();
    let mut keys = KeyPositions::new();
    if spec.name == "sort" || spec.name == "sort_ro" {
        return Ok(sort_keys(cmd));
    }
    if spec.name == "debug" {
        return Ok(debug_keys(cmd));
    }
    for ks in spec.keys {
        let first = match ks.begin {
            BeginSearch::Index(i) => i,
            BeginSearch::Keyword { keyword, start_from } => match find_keyword(args, keyword, start_from) {
                Some(i) => i + 1,
                None => continue,
            },
            BeginSearch::Unknown => continue,
        };
        let (first, last, step) = match ks.find {
            FindKeys::Range { last_key, step, limit } => {
                let last = if last_key >= 0 {
                    first as isize + last_key
                } else if limit <= 1 {
                    argc as isize + last_key
                } else {
                    first as isize + ((argc as isize - first as isize) / limit as isize + last_key)
                };
                (first, last, step.max(1))
            }
            FindKeys::KeyNum { key_num_index, first_key, step } => {
                let Some(raw) = args.get(first + key_num_index) else {
                    continue;
                };
                let n = parse_int(raw).ok_or(KeysError::BadNumKeys)?;
                if n < 0 {
                    return Err(KeysError::NegativeNumKeys);
                }
                let start = first + first_key;
                let step = step.max(1);
                if n == 0 {
                    continue;
                }
                // Checked: a `numkeys` near `i64::MAX` overflowed here (a panic in a debug
                // build, a negative `last` and no keys at all in a release one).
                let last = (n - 1)
                    .checked_mul(step as i64)
                    .and_then(|span| span.checked_add(start as i64))
                    .filter(|&last| last < argc as i64)
                    .ok_or(KeysError::TooManyKeys)?;
                (start, last as isize, step)
            }
            FindKeys::Unknown => continue,
        };
        let mut i = first as isize;
        while i <= last {
            if i as usize >= argc {
                // Arity checks keep well-formed commands from getting here; an incomplete
                // spec (MIGRATE's KEYS) simply ends.
                break;
            }
            keys.push(i as usize);
            i += step as isize;
        }
    }
    Ok(keys)
}

/// Redis's `begin_search` keyword rule: forward from `start_from`, or backwards from the end.
fn find_keyword(args: &[bytes::Bytes], keyword: &str, start_from: isize) -> Option<usize> {
    let argc = args.len() as isize;
    let (start, end) = if start_from > 0 { (start_from, argc - 1) } else { (argc + start_from, 1) };
    let mut i = start;
    loop {
        if i >= argc || i < 1 {
            return None;
        }
        if args[i as usize].eq_ignore_ascii_case(keyword.as_bytes()) {
            return Some(i as usize);
        }
        if i == end {
            return None;
        }
        i += if start <= end { 1 } else { -1 };
    }
}

/// SORT's keys: the sorted key and the `STORE` destination (Redis's `sortGetKeys`).
fn sort_keys(cmd: &Command) -> KeyPositions {
    let mut keys = KeyPositions::new();
    let args = cmd.args();
    if args.len() < 2 {
        return keys; // no key (the arity check refuses it): never an index past the end
    }
    keys.push(1);
    let mut i = 2;
    let mut store = None;
    while i < args.len() {
        let a = &args[i];
        let skip = if a.eq_ignore_ascii_case(b"limit") {
            2
        } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
            1
        } else if a.eq_ignore_ascii_case(b"store") {
            if i + 1 < args.len() {
                store = Some(i + 1);
            }
            1
        } else {
            0
        };
        i += skip + 1;
    }
    keys.extend(store);
    keys
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(args: &[&str]) -> Vec<String> {
        let cmd = Command::from_strs(args);
        let spec = lookup(&cmd).expect("known command");
        key_positions(&cmd, spec)
            .expect("keys")
            .into_iter()
            .map(|i| String::from_utf8_lossy(&cmd.args()[i]).into_owned())
            .collect()
    }

    #[test]
    fn keys_are_found_like_redis_finds_them() {
        assert_eq!(keys_of(&["GET", "a"]), ["a"]);
        assert_eq!(keys_of(&["mset", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(keys_of(&["DEL", "a", "b", "c"]), ["a", "b", "c"]);
        assert_eq!(keys_of(&["BLPOP", "a", "b", "0"]), ["a", "b"]);
        assert_eq!(keys_of(&["EVAL", "return 1", "2", "a", "b", "x"]), ["a", "b"]);
        assert!(keys_of(&["EVAL", "return 1", "0"]).is_empty());
        assert_eq!(keys_of(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]), ["d", "a", "b"]);
        assert_eq!(keys_of(&["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]), ["s1", "s2"]);
        assert_eq!(keys_of(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s1", ">"]), ["s1"]);
        assert_eq!(keys_of(&["LMPOP", "2", "a", "b", "LEFT"]), ["a", "b"]);
        assert_eq!(keys_of(&["OBJECT", "ENCODING", "k"]), ["k"]);
        assert_eq!(keys_of(&["SORT", "k", "LIMIT", "0", "1", "STORE", "d"]), ["k", "d"]);
        assert_eq!(keys_of(&["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"]), ["g", "d"]);
        assert!(keys_of(&["PING"]).is_empty());
        assert_eq!(keys_of(&["DEBUG", "OBJECT", "k"]), ["k"]);
        assert_eq!(keys_of(&["DEBUG", "DIGEST-VALUE", "a", "b"]), ["a", "b"]);
        assert!(keys_of(&["DEBUG", "SLEEP", "0"]).is_empty());
        assert!(keys_of(&["DEBUG", "OBJECT"]).is_empty());
    }

    #[test]
    fn bad_numkeys_is_an_error_not_a_guess() {
        let cmd = Command::from_strs(&["EVAL", "return 1", "5", "a"]);
        let spec = lookup(&cmd).unwrap();
        assert_eq!(key_positions(&cmd, spec), Err(KeysError::TooManyKeys));
        let cmd = Command::from_strs(&["EVAL", "return 1", "x", "a"]);
        assert_eq!(key_positions(&cmd, spec), Err(KeysError::BadNumKeys));
    }

    #[test]
    fn plain_commands_are_single_key_commands_routed_by_that_key_alone() {
        let plain = |args: &[&str]| plain(args[0].as_bytes(), args.len()).map(|s| s.name);
        assert_eq!(plain(&["GET", "k"]), Some("get"));
        assert_eq!(plain(&["set", "k", "v", "EX", "10"]), Some("set"));
        assert_eq!(plain(&["HSET", "h", "f", "v"]), Some("hset"));
        assert_eq!(plain(&["incr", "k"]), Some("incr"));
        // Wrong arity: the full path answers the error.
        assert_eq!(plain(&["GET", "k", "extra"]), None);
        assert_eq!(plain(&["SET", "k"]), None);
        // Several keys, blocking, subcommands, transactions, refusals, scripts, pub/sub.
        for args in [
            &["MGET", "a", "b"][..],
            &["DEL", "a"],
            &["BLPOP", "a", "0"],
            &["OBJECT", "ENCODING", "k"],
            &["WATCH", "k"],
            &["MOVE", "k", "1"],
            &["SORT", "k"],
            &["EVALSHA", "abc", "1", "k"],
            &["SUBSCRIBE", "c"],
            &["PUBLISH", "c", "m"],
            &["COPY", "a", "b"],
            &["RENAME", "a", "b"],
            &["UMCTL", "x"],
            &["NOSUCHCOMMAND", "k"],
        ] {
            assert_eq!(plain(args), None, "{args:?}");
        }
        for name in NOT_PLAIN {
            assert!(super::plain(name.as_bytes(), 2).is_none() && super::plain(name.as_bytes(), 3).is_none(), "{name}");
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_knows_subcommands() {
        let cmd = Command::from_strs(&["client", "SetName", "x"]);
        assert_eq!(lookup(&cmd).unwrap().name, "client|setname");
        assert!(lookup(&Command::from_strs(&["NOPE"])).is_none());
        assert!(lookup(&Command::from_strs(&["get"])).unwrap().has(flags::READONLY));
        assert!(lookup(&Command::from_strs(&["BLPOP"])).unwrap().has(flags::BLOCKING));
    }
}
