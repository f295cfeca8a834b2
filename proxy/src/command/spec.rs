//! The shape of one command-table entry: what Redis's `COMMAND INFO` reports.

/// Command flags (a subset of Redis's, those the proxy acts on).
pub mod flags {
    pub const WRITE: u32 = 1 << 0;
    pub const READONLY: u32 = 1 << 1;
    pub const DENYOOM: u32 = 1 << 2;
    pub const ADMIN: u32 = 1 << 3;
    pub const PUBSUB: u32 = 1 << 4;
    pub const NOSCRIPT: u32 = 1 << 5;
    pub const BLOCKING: u32 = 1 << 6;
    pub const LOADING: u32 = 1 << 7;
    pub const STALE: u32 = 1 << 8;
    pub const FAST: u32 = 1 << 9;
    pub const MOVABLEKEYS: u32 = 1 << 10;
    pub const NO_MULTI: u32 = 1 << 11;
    pub const NO_MANDATORY_KEYS: u32 = 1 << 12;
    pub const ALLOW_BUSY: u32 = 1 << 13;
}

/// Where the search for keys begins (Redis key specs, `begin_search`).
#[derive(Debug, Clone, Copy)]
pub enum BeginSearch {
    /// At this argument index.
    Index(usize),
    /// After this keyword, searched from `start_from` (negative: from the end, backwards).
    Keyword { keyword: &'static str, start_from: isize },
    /// Only Redis's own code knows (SORT's BY/GET patterns).
    Unknown,
}

/// How keys are found from the begin position (Redis key specs, `find_keys`).
#[derive(Debug, Clone, Copy)]
pub enum FindKeys {
    /// Keys up to `last_key` (relative to begin; negative: from the end), every `step`
    /// arguments; `limit` > 1 means only 1/limit of the remaining arguments are keys.
    Range {
        last_key: isize,
        step: usize,
        limit: usize,
    },
    /// The argument at `key_num_index` (relative to begin) holds the number of keys, which
    /// start at `first_key` (relative to begin), every `step` arguments.
    KeyNum {
        key_num_index: usize,
        first_key: usize,
        step: usize,
    },
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub begin: BeginSearch,
    pub find: FindKeys,
    /// The spec may not find every key (e.g. MIGRATE's KEYS keyword may be a value).
    pub incomplete: bool,
}

/// One command (or `container|subcommand`).
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// Lower-case name; subcommands are `container|sub`.
    pub name: &'static str,
    /// Redis's arity: exact argument count if positive, minimum if negative (name included).
    pub arity: i32,
    pub flags: u32,
    pub keys: &'static [KeySpec],
    /// A container command (CLIENT, OBJECT, …): look up `name|sub` for the real entry.
    pub has_subcommands: bool,
}

impl CommandSpec {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Whether the command may change data: Redis flags it `write`, or it runs a script or
    /// function that may (`EVAL`, `EVALSHA`, `FCALL`; the `_RO` variants may not).
    pub fn may_write(&self) -> bool {
        self.has(flags::WRITE) || matches!(self.name, "eval" | "evalsha" | "fcall")
    }

    /// Whether `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}
