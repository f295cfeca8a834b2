//! Finding where an item ends without decoding it, resumably.
//!
//! A value is walked as a small stack of [`Task`]s ("skip a string", "read a count, then skip
//! this body that many times", …). A task either completes (the position advances, the stack
//! changes) or reports how many bytes it needs, leaving the walk exactly as it was. So when a
//! 300 MB hash with millions of fields arrives in 64 KB reads, each read only walks the new
//! fields instead of re-walking the value from its start.

use crate::format::{read_count, ready, skip_string, value_type as vt, within, Bad, Step};

/// One thing left to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// A plain length.
    Len,
    /// A string in any encoding.
    Str,
    /// A fixed number of raw bytes (ids, binary doubles, millisecond times).
    Bytes(u8),
    /// A zset score of the old text format: a length byte, or 253..=255 for nan/±inf alone.
    Score,
    /// A count, then `body` that many times.
    Count(Body),
    /// `body` this many more times.
    Repeat(u64, Body),
    /// A length; when non-zero, `body` once (the optional description of old functions).
    IfNonZero(Body),
    /// Module opcodes (`len` opcode, then its operand) up to the EOF opcode 0.
    ModuleOps,
    /// Remembers the current position: where a key's value starts.
    Mark,
}

/// What repeats inside a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    Str,
    StrPair,
    /// Old zset: member, text score.
    ZsetPair,
    /// Zset with binary scores: member, 8-byte double.
    Zset2Pair,
    /// A quicklist v2 node: its container kind (plain or packed), then the node's bytes.
    QuicklistNode,
    /// A stream consumer group's pending entry: id, delivery time, delivery count.
    Pel,
    /// A consumer's pending entry: the id alone (the rest is in the group's PEL).
    PelId,
    /// A consumer group, stream type 15: name, last id, PEL, consumers.
    Group1,
    /// A consumer group, type 19: adds the entries-read counter.
    Group2,
    /// A consumer group, type 21: as type 19, its consumers carry an active time.
    Group3,
    /// A consumer, types 15/19: name, seen time, PEL ids.
    Consumer1,
    /// A consumer, type 21: name, seen time, active time, PEL ids.
    Consumer3,
}

impl Body {
    fn tasks(self) -> &'static [Task] {
        use Task::*;
        match self {
            Body::Str => &[Str],
            Body::StrPair => &[Str, Str],
            Body::ZsetPair => &[Str, Score],
            Body::Zset2Pair => &[Str, Bytes(8)],
            Body::QuicklistNode => &[Len, Str],
            Body::Pel => &[Bytes(16), Bytes(8), Len],
            Body::PelId => &[Bytes(16)],
            Body::Group1 => &[Str, Len, Len, Count(Body::Pel), Count(Body::Consumer1)],
            Body::Group2 => &[Str, Len, Len, Len, Count(Body::Pel), Count(Body::Consumer1)],
            Body::Group3 => &[Str, Len, Len, Len, Count(Body::Pel), Count(Body::Consumer3)],
            Body::Consumer1 => &[Str, Bytes(8), Count(Body::PelId)],
            Body::Consumer3 => &[Str, Bytes(8), Bytes(8), Count(Body::PelId)],
        }
    }
}

/// The tasks that skip a value of type `t` (after its type byte and key). Follows
/// `rdbLoadObject` in redis `src/rdb.c`.
pub(crate) fn value_tasks(t: u8) -> Result<&'static [Task], Bad> {
    use Task::*;
    Ok(match t {
        vt::STRING => &[Str],
        vt::LIST | vt::SET | vt::LIST_QUICKLIST => &[Count(Body::Str)],
        vt::ZSET => &[Count(Body::ZsetPair)],
        vt::HASH => &[Count(Body::StrPair)],
        vt::ZSET_2 => &[Count(Body::Zset2Pair)],
        vt::MODULE_2 => &[Len, ModuleOps],
        // Ziplists, listpacks, intsets, zipmaps: one blob each.
        vt::HASH_ZIPMAP
        | vt::LIST_ZIPLIST
        | vt::SET_INTSET
        | vt::ZSET_ZIPLIST
        | vt::HASH_ZIPLIST
        | vt::HASH_LISTPACK
        | vt::ZSET_LISTPACK
        | vt::SET_LISTPACK => &[Str],
        vt::LIST_QUICKLIST_2 => &[Count(Body::QuicklistNode)],
        // Listpacks (master id, listpack), then length and last id, then the groups.
        vt::STREAM_LISTPACKS => &[Count(Body::StrPair), Len, Len, Len, Count(Body::Group1)],
        // ... plus first id, max deleted id and entries added.
        vt::STREAM_LISTPACKS_2 => &[Count(Body::StrPair), Len, Len, Len, Len, Len, Len, Len, Len, Count(Body::Group2)],
        vt::STREAM_LISTPACKS_3 => &[Count(Body::StrPair), Len, Len, Len, Len, Len, Len, Len, Len, Count(Body::Group3)],
        vt::MODULE_PRE_GA => {
            return Err(Bad::Unsupported(t, "module values of the Redis 4.0 release-candidate format"))
        }
        22..=25 => return Err(Bad::Unsupported(t, "hashes with field expiration (Redis 7.4 and later)")),
        _ => return Err(Bad::Unsupported(t, "not a known value type or opcode")),
    })
}

/// A walk in progress over one item at the start of a buffer.
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    pos: usize,
    mark: usize,
    /// Tasks left; the last is done next.
    stack: Vec<Task>,
}

impl Walk {
    /// A walk of `tasks` starting at `pos` (just after the item's opcode byte).
    pub(crate) fn new(pos: usize, tasks: &[Task]) -> Walk {
        let mut stack = Vec::with_capacity(16);
        stack.extend(tasks.iter().rev());
        Walk { pos, mark: pos, stack }
    }

    /// The position the last [`Task::Mark`] recorded.
    pub(crate) fn mark(&self) -> usize {
        self.mark
    }

    /// Walks as far as `buf` allows. `Ready` carries the item's end; on error, the position
    /// of the task that failed comes with it.
    pub(crate) fn run(&mut self, buf: &[u8], limit: usize) -> Result<Step<()>, (usize, Bad)> {
        while let Some(&task) = self.stack.last() {
            let pos = self.pos;
            match self.step(task, buf, limit) {
                Ok(Step::Ready((), _)) => {}
                Ok(Step::Need(n)) => {
                    within(n as u64, limit).map_err(|e| (pos, e))?;
                    return Ok(Step::Need(n));
                }
                Err(e) => return Err((pos, e)),
            }
        }
        Ok(Step::Ready((), self.pos))
    }

    /// Does the top task, or leaves everything as it was when the bytes are not there yet.
    fn step(&mut self, task: Task, buf: &[u8], limit: usize) -> Result<Step<()>, Bad> {
        let pos = self.pos;
        match task {
            Task::Len => {
                let (_, p) = ready!(read_count(buf, pos)?);
                self.advance_pop(p, limit)?;
            }
            Task::Str => {
                let ((), p) = ready!(skip_string(buf, pos, limit)?);
                self.advance_pop(p, limit)?;
            }
            Task::Bytes(n) => {
                let end = within(pos as u64 + u64::from(n), limit)?;
                if buf.len() < end {
                    return Ok(Step::Need(end));
                }
                self.advance_pop(end, limit)?;
            }
            Task::Score => {
                let Some(&len) = buf.get(pos) else {
                    return Ok(Step::Need(pos + 1));
                };
                let end = if len >= 253 { pos + 1 } else { within(pos as u64 + 1 + u64::from(len), limit)? };
                if buf.len() < end {
                    return Ok(Step::Need(end));
                }
                self.advance_pop(end, limit)?;
            }
            Task::Count(body) => {
                let (n, p) = ready!(read_count(buf, pos)?);
                self.pos = within(p as u64, limit)?;
                self.replace_top(Task::Repeat(n, body));
            }
            Task::Repeat(0, _) => {
                self.stack.pop();
            }
            Task::Repeat(n, body) => {
                self.replace_top(Task::Repeat(n - 1, body));
                self.stack.extend(body.tasks().iter().rev());
            }
            Task::IfNonZero(body) => {
                let (n, p) = ready!(read_count(buf, pos)?);
                self.advance_pop(p, limit)?;
                if n != 0 {
                    self.stack.extend(body.tasks().iter().rev());
                }
            }
            Task::ModuleOps => {
                let (op, p) = ready!(read_count(buf, pos)?);
                let operand = match op {
                    0 => None,
                    1 | 2 => Some(Task::Len),
                    3 => Some(Task::Bytes(4)),
                    4 => Some(Task::Bytes(8)),
                    5 => Some(Task::Str),
                    other => return Err(Bad::corrupt(format!("unknown module data opcode {other}"))),
                };
                self.pos = within(p as u64, limit)?;
                match operand {
                    None => {
                        self.stack.pop();
                    }
                    Some(t) => self.stack.push(t),
                }
            }
            Task::Mark => {
                self.mark = pos;
                self.stack.pop();
            }
        }
        Ok(Step::Ready((), self.pos))
    }

    fn advance_pop(&mut self, to: usize, limit: usize) -> Result<(), Bad> {
        self.pos = within(to as u64, limit)?;
        self.stack.pop();
        Ok(())
    }

    fn replace_top(&mut self, task: Task) {
        if let Some(top) = self.stack.last_mut() {
            *top = task;
        }
    }
}
