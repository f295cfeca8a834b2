//! The sans-IO RDB reader: bytes in (a buffer the caller fills), [`Event`]s out.
//!
//! The reader consumes one whole item at a time from the front of the caller's buffer, so a
//! value is handed out as one zero-copy `Bytes` and nothing of an incomplete item is ever
//! consumed. While an item is incomplete it keeps a small resumable walk (see `walk.rs`) and
//! the buffer length it needs next ([`RdbReader::needed_hint`]), so a big value arriving in
//! many reads costs one pass, not one pass per read.

use crate::crc64::crc64;
use crate::error::RdbError;
use crate::event::{Entry, Event, Function};
use crate::format::{decode_count, decode_string, opcode as op, Bad, Step, MAX_RDB_VERSION};
use crate::walk::{value_tasks, Body, Task, Walk};
use bytes::{Bytes, BytesMut};

/// The default bound on one item (a key with its value, an AUX field, a function library):
/// Redis's own `proto-max-bulk-len`, the biggest value a client could have written.
pub const DEFAULT_MAX_ITEM_SIZE: usize = 512 * 1024 * 1024;

const SIGNATURE: &[u8; 5] = b"REDIS";

/// Incremental RDB parser. See [`RdbReader::next`] for the buffer contract.
#[derive(Debug)]
pub struct RdbReader {
    max_item_size: usize,
    state: State,
    version: u16,
    /// The database of the keys being read (SELECTDB).
    db: u64,
    /// Expire time, LRU and LFU read before the next key.
    attrs: KeyAttrs,
    /// The item being walked: its opcode and how far the walk got.
    walk: Option<(u8, Walk)>,
    /// `buf.len()` must reach this before trying again.
    hint: usize,
    /// CRC64 of every byte consumed so far (the EOF checksum covers all of them).
    crc: u64,
    consumed: u64,
    /// Set on the first error; every later call returns it again.
    failed: Option<RdbError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Done,
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyAttrs {
    expire_at_ms: Option<i64>,
    lru_idle: Option<u64>,
    lfu_freq: Option<u8>,
}

impl Default for RdbReader {
    fn default() -> Self {
        RdbReader::new()
    }
}

impl RdbReader {
    /// A reader for a stream that starts with the `REDIS` header, with the default item limit.
    pub fn new() -> RdbReader {
        RdbReader::with_max_item_size(DEFAULT_MAX_ITEM_SIZE)
    }

    /// A reader that refuses any item larger than `max_item_size` bytes, as soon as a declared
    /// length shows it would be (before the bytes arrive).
    pub fn with_max_item_size(max_item_size: usize) -> RdbReader {
        RdbReader {
            max_item_size,
            state: State::Header,
            version: 0,
            db: 0,
            attrs: KeyAttrs::default(),
            walk: None,
            hint: 0,
            crc: 0,
            consumed: 0,
            failed: None,
        }
    }

    /// Reads the next event from the front of `buf`.
    ///
    /// Returns `Ok(Some(event))` and removes exactly that item's bytes from `buf`, or
    /// `Ok(None)` when `buf` does not hold a whole item yet (nothing is removed; append more
    /// and call again; between such calls the caller may only *append* to `buf`). After
    /// [`Event::Eof`] it returns `Ok(None)` forever and never touches bytes after the RDB.
    /// Errors are final: the same error comes back on every later call.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.advance(buf);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.walk = None;
        }
        result
    }

    /// The buffer length [`RdbReader::next`] needs before it can make progress: calling it
    /// with less is a cheap no-op, so a caller can read until `buf.len()` reaches this.
    pub fn needed_hint(&self) -> usize {
        self.hint
    }

    /// The RDB format version, once the header has been read.
    pub fn version(&self) -> Option<u16> {
        (self.state != State::Header).then_some(self.version)
    }

    /// Whether the EOF item (and its checksum) has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes consumed from the stream so far, checksum included.
    pub fn bytes_consumed(&self) -> u64 {
        self.consumed
    }

    /// The item size limit this reader enforces.
    pub fn max_item_size(&self) -> usize {
        self.max_item_size
    }

    fn advance(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        loop {
            if buf.len() < self.hint {
                return Ok(None);
            }
            match self.state {
                State::Done => return Ok(None),
                State::Header => return self.header(buf),
                State::Body => {}
            }
            let Some(&opcode) = buf.first() else {
                self.hint = 1;
                return Ok(None);
            };
            if opcode == op::EOF {
                return self.eof(buf);
            }
            let limit = self.max_item_size;
            let item_offset = self.consumed;
            if self.walk.is_none() {
                // The opcode alone says whether the item is known: refuse it before waiting.
                let walk = start_walk(opcode).map_err(|b| rdb_error(b, item_offset, limit))?;
                self.walk = Some((opcode, walk));
            }
            let Some((_, walk)) = self.walk.as_mut() else {
                return Ok(None);
            };
            match walk.run(buf, limit) {
                Err((_, bad @ Bad::TooLarge(_))) => return Err(rdb_error(bad, item_offset, limit)),
                Err((pos, bad)) => return Err(rdb_error(bad, item_offset + pos as u64, limit)),
                Ok(Step::Need(n)) => {
                    self.hint = n;
                    return Ok(None);
                }
                Ok(Step::Ready((), end)) => {
                    let mark = walk.mark();
                    self.walk = None;
                    let item = self.consume(buf, end);
                    let event = self.finish(opcode, &item, mark).map_err(|b| rdb_error(b, item_offset, limit))?;
                    if let Some(event) = event {
                        return Ok(Some(event));
                    }
                    // An expire/LRU/LFU attribute: it belongs to the next key, read on.
                }
            }
        }
    }

    fn header(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        // Refuse a wrong signature as soon as its first bytes are visible.
        let seen = buf.len().min(SIGNATURE.len());
        if buf[..seen] != SIGNATURE[..seen] {
            return Err(RdbError::BadSignature(String::from_utf8_lossy(&buf[..buf.len().min(9)]).into_owned()));
        }
        if buf.len() < 9 {
            self.hint = 9;
            return Ok(None);
        }
        let digits = &buf[5..9];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(RdbError::Corrupt {
                offset: 5,
                what: format!("version {:?} is not four digits", String::from_utf8_lossy(digits)),
            });
        }
        let version = digits.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
        if version == 0 || version > u32::from(MAX_RDB_VERSION) {
            return Err(RdbError::UnsupportedVersion(version));
        }
        self.consume(buf, 9);
        self.version = version as u16;
        self.state = State::Body;
        Ok(Some(Event::Header { version: self.version }))
    }

    fn eof(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, RdbError> {
        let with_checksum = self.version >= 5;
        let need = if with_checksum { 9 } else { 1 };
        if buf.len() < need {
            self.hint = need;
            return Ok(None);
        }
        self.consume(buf, 1);
        let computed = self.crc;
        let mut checksum = 0;
        if with_checksum {
            let raw = buf.split_to(8);
            self.consumed += 8;
            let mut le = [0u8; 8];
            le.copy_from_slice(&raw);
            checksum = u64::from_le_bytes(le);
            if checksum != 0 && checksum != computed {
                return Err(RdbError::Checksum { expected: checksum, computed });
            }
        }
        self.state = State::Done;
        Ok(Some(Event::Eof { checksum }))
    }

    /// Removes a complete item from the front of `buf`, adding it to the running checksum.
    fn consume(&mut self, buf: &mut BytesMut, n: usize) -> Bytes {
        let item = buf.split_to(n).freeze();
        self.crc = crc64(self.crc, &item);
        self.consumed += n as u64;
        self.hint = 0;
        item
    }

    /// Turns a complete item into its event (`None` for key attributes, which are kept).
    fn finish(&mut self, opcode: u8, item: &Bytes, mark: usize) -> Result<Option<Event>, Bad> {
        let limit = self.max_item_size;
        let event = match opcode {
            op::EXPIRETIME => {
                let secs = i32::from_le_bytes(array(item, 1)?);
                self.attrs.expire_at_ms = Some(i64::from(secs) * 1000);
                return Ok(None);
            }
            op::EXPIRETIME_MS => {
                self.attrs.expire_at_ms = Some(i64::from_le_bytes(array(item, 1)?));
                return Ok(None);
            }
            op::IDLE => {
                self.attrs.lru_idle = Some(decode_count(item, 1)?.0);
                return Ok(None);
            }
            op::FREQ => {
                self.attrs.lfu_freq = Some(array::<1>(item, 1)?[0]);
                return Ok(None);
            }
            op::SELECTDB => {
                self.db = decode_count(item, 1)?.0;
                Event::SelectDb { db: self.db }
            }
            op::RESIZEDB => {
                let (db_size, p) = decode_count(item, 1)?;
                let (expires_size, _) = decode_count(item, p)?;
                Event::ResizeDb { db_size, expires_size }
            }
            op::AUX => {
                let (key, p) = decode_string(item, 1, limit)?;
                let (value, _) = decode_string(item, p, limit)?;
                Event::Aux { key, value }
            }
            op::MODULE_AUX => {
                let (module_id, p) = decode_count(item, 1)?;
                let (when_opcode, p) = decode_count(item, p)?;
                let (when, _) = decode_count(item, p)?;
                if when_opcode != 2 {
                    return Err(Bad::corrupt(format!("module aux data with 'when' opcode {when_opcode}, expected 2")));
                }
                Event::ModuleAux { module_id, when }
            }
            op::FUNCTION2 => {
                let (code, _) = decode_string(item, 1, limit)?;
                Event::Function(Function { opcode, raw: item.slice(1..), code: Some(code) })
            }
            op::FUNCTION_PRE_GA => Event::Function(Function { opcode, raw: item.slice(1..), code: None }),
            value_type => {
                let (key, _) = decode_string(item, 1, limit)?;
                let attrs = std::mem::take(&mut self.attrs);
                Event::Entry(Entry {
                    db: self.db,
                    key,
                    expire_at_ms: attrs.expire_at_ms,
                    value_type,
                    value: item.slice(mark..),
                    lru_idle: attrs.lru_idle,
                    lfu_freq: attrs.lfu_freq,
                })
            }
        };
        Ok(Some(event))
    }
}

/// The walk that finds the end of the item starting with `opcode` (the walk starts after it).
fn start_walk(opcode: u8) -> Result<Walk, Bad> {
    use Task::*;
    let (first, then): (&[Task], &[Task]) = match opcode {
        op::EXPIRETIME => (&[Bytes(4)], &[]),
        op::EXPIRETIME_MS => (&[Bytes(8)], &[]),
        op::IDLE => (&[Len], &[]),
        op::FREQ => (&[Bytes(1)], &[]),
        op::SELECTDB => (&[Len], &[]),
        op::RESIZEDB => (&[Len, Len], &[]),
        op::AUX => (&[Str, Str], &[]),
        // Module id, the `when` opcode (always 2, "unsigned") and value, then module data.
        op::MODULE_AUX => (&[Len, Len, Len, ModuleOps], &[]),
        op::FUNCTION2 => (&[Str], &[]),
        // Name, engine, optional description, code (redis 7.0 `rdbFunctionLoad`).
        op::FUNCTION_PRE_GA => (&[Str, Str, IfNonZero(Body::Str), Str], &[]),
        // A key: its name, then its value.
        t => (&[Str, Mark], value_tasks(t)?),
    };
    let mut tasks = Vec::with_capacity(first.len() + then.len());
    tasks.extend_from_slice(first);
    tasks.extend_from_slice(then);
    Ok(Walk::new(1, &tasks))
}

fn array<const N: usize>(item: &[u8], pos: usize) -> Result<[u8; N], Bad> {
    match crate::format::fixed::<N>(item, pos) {
        Step::Ready(a, _) => Ok(a),
        Step::Need(_) => Err(Bad::corrupt("item shorter than its fields")),
    }
}

fn rdb_error(bad: Bad, offset: u64, limit: usize) -> RdbError {
    match bad {
        Bad::Corrupt(what) => RdbError::Corrupt { offset, what },
        Bad::TooLarge(size) => RdbError::TooLarge { offset, size, limit },
        Bad::Unsupported(type_byte, what) => RdbError::UnsupportedType { type_byte, offset, what },
    }
}

#[cfg(test)]
mod tests;
