//! The RDB format's constants and its smallest pieces: lengths and strings.
//!
//! Everything here works on a byte slice that may end early: a function either returns what
//! it read with the position just after it ([`Step::Ready`]), or the total buffer length it
//! needs before it can say more ([`Step::Need`]). Nothing allocates from a declared length;
//! declared lengths are checked against the caller's limit first.

use crate::lzf;
use bytes::Bytes;

/// Opcodes that may appear where a value type is expected (redis `src/rdb.h`).
pub mod opcode {
    /// A function library (Redis 7.0 GA and later): one string, the library's code.
    pub const FUNCTION2: u8 = 245;
    /// A function library as 7.0 release candidates wrote it: name, engine, description, code.
    pub const FUNCTION_PRE_GA: u8 = 246;
    /// Module data not tied to a key.
    pub const MODULE_AUX: u8 = 247;
    /// LRU idle time (seconds) of the next key.
    pub const IDLE: u8 = 248;
    /// LFU frequency (one byte) of the next key.
    pub const FREQ: u8 = 249;
    /// A string-string metadata field (`redis-ver`, `repl-id`, …).
    pub const AUX: u8 = 250;
    /// Sizes of the current database's main and expires tables.
    pub const RESIZEDB: u8 = 251;
    /// Expire time of the next key, milliseconds, 8 bytes little-endian.
    pub const EXPIRETIME_MS: u8 = 252;
    /// Expire time of the next key, seconds, 4 bytes little-endian.
    pub const EXPIRETIME: u8 = 253;
    /// The database of the keys that follow.
    pub const SELECTDB: u8 = 254;
    /// End of the RDB; an 8-byte checksum follows from version 5 on.
    pub const EOF: u8 = 255;
}

/// Value types: the byte before a key, and the first byte of a DUMP payload.
pub mod value_type {
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
}

/// The highest RDB version this crate reads (Redis 7.2). Redis 7.4 writes 12, with hash field
/// expiration types this reader does not walk.
pub const MAX_RDB_VERSION: u16 = 11;

/// A readable name for a value type, for logs and errors.
pub fn type_name(t: u8) -> &'static str {
    use value_type::*;
    match t {
        STRING => "string",
        LIST => "list (linked list)",
        SET => "set (hashtable)",
        ZSET => "zset (text scores)",
        HASH => "hash (hashtable)",
        ZSET_2 => "zset (binary scores)",
        MODULE_PRE_GA => "module value (pre-GA format)",
        MODULE_2 => "module value",
        HASH_ZIPMAP => "hash (zipmap)",
        LIST_ZIPLIST => "list (ziplist)",
        SET_INTSET => "set (intset)",
        ZSET_ZIPLIST => "zset (ziplist)",
        HASH_ZIPLIST => "hash (ziplist)",
        LIST_QUICKLIST => "list (quicklist of ziplists)",
        STREAM_LISTPACKS => "stream",
        HASH_LISTPACK => "hash (listpack)",
        ZSET_LISTPACK => "zset (listpack)",
        LIST_QUICKLIST_2 => "list (quicklist)",
        STREAM_LISTPACKS_2 => "stream (v2)",
        SET_LISTPACK => "set (listpack)",
        STREAM_LISTPACKS_3 => "stream (v3)",
        _ => "unknown",
    }
}

/// The module type name (9 characters) a module id carries in its top 54 bits; the low 10
/// bits are the module's encoding version. For messages about module data.
pub fn module_type_name(module_id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = module_id >> 10;
    let mut name = [0u8; 9];
    for slot in name.iter_mut().rev() {
        *slot = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// Result of looking at bytes that may be incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<T> {
    /// Read `T`; the next item starts at this position.
    Ready(T, usize),
    /// Incomplete: the buffer must hold at least this many bytes in total.
    Need(usize),
}

/// Why bytes could not be read, without the position (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    Corrupt(String),
    TooLarge(u64),
    Unsupported(u8, &'static str),
}

impl Bad {
    pub(crate) fn corrupt(what: impl Into<String>) -> Bad {
        Bad::Corrupt(what.into())
    }
}

/// Propagates `Need` out of the enclosing function.
macro_rules! ready {
    ($e:expr) => {
        match $e {
            Step::Ready(v, p) => (v, p),
            Step::Need(n) => return Ok(Step::Need(n)),
        }
    };
}
pub(crate) use ready;

/// A length field: either a plain length, or the marker of a specially encoded string
/// (`0xC0 | kind`: an 8/16/32-bit integer or an LZF-compressed string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    Plain(u64),
    Encoded(u8),
}

/// String encodings behind [`Length::Encoded`].
const ENC_INT8: u8 = 0;
const ENC_INT16: u8 = 1;
const ENC_INT32: u8 = 2;
const ENC_LZF: u8 = 3;

/// Checks that an item reaching `end` stays within `limit`; `end` is a position in a buffer
/// that starts with the item.
pub(crate) fn within(end: u64, limit: usize) -> Result<usize, Bad> {
    if end > limit as u64 {
        Err(Bad::TooLarge(end))
    } else {
        Ok(end as usize)
    }
}

/// `n` bytes at `pos`.
pub(crate) fn fixed<const N: usize>(buf: &[u8], pos: usize) -> Step<[u8; N]> {
    match buf.get(pos..pos + N) {
        Some(s) => {
            let mut a = [0u8; N];
            a.copy_from_slice(s);
            Step::Ready(a, pos + N)
        }
        None => Step::Need(pos + N),
    }
}

/// A length field: 6-bit, 14-bit, 32-bit (`0x80`) or 64-bit (`0x81`) big-endian, or the
/// `0xC0` marker of an encoded string.
pub(crate) fn read_length(buf: &[u8], pos: usize) -> Result<Step<Length>, Bad> {
    let Some(&first) = buf.get(pos) else {
        return Ok(Step::Need(pos + 1));
    };
    Ok(match first >> 6 {
        0 => Step::Ready(Length::Plain(u64::from(first & 0x3f)), pos + 1),
        1 => match buf.get(pos + 1) {
            Some(&second) => Step::Ready(Length::Plain(u64::from(first & 0x3f) << 8 | u64::from(second)), pos + 2),
            None => Step::Need(pos + 2),
        },
        2 => match first {
            0x80 => {
                let (b, p) = ready!(fixed::<4>(buf, pos + 1));
                Step::Ready(Length::Plain(u64::from(u32::from_be_bytes(b))), p)
            }
            0x81 => {
                let (b, p) = ready!(fixed::<8>(buf, pos + 1));
                Step::Ready(Length::Plain(u64::from_be_bytes(b)), p)
            }
            other => return Err(Bad::corrupt(format!("unknown length encoding byte {other:#04x}"))),
        },
        _ => Step::Ready(Length::Encoded(first & 0x3f), pos + 1),
    })
}

/// A plain length (a count, an id part, a database number): the string marker is an error.
pub(crate) fn read_count(buf: &[u8], pos: usize) -> Result<Step<u64>, Bad> {
    match read_length(buf, pos)? {
        Step::Ready(Length::Plain(n), p) => Ok(Step::Ready(n, p)),
        Step::Ready(Length::Encoded(_), _) => Err(Bad::corrupt("an encoded-string marker where a length belongs")),
        Step::Need(n) => Ok(Step::Need(n)),
    }
}

/// Where a string's bytes lie, once its header is read.
enum StringBody {
    Raw { start: usize, end: usize },
    Int { value: i64, end: usize },
    Lzf { start: usize, end: usize, raw_len: usize },
}

impl StringBody {
    fn end(&self) -> usize {
        match *self {
            StringBody::Raw { end, .. } | StringBody::Int { end, .. } | StringBody::Lzf { end, .. } => end,
        }
    }
}

/// Reads a string's header and checks its bytes are present (without looking at them).
fn string_body(buf: &[u8], pos: usize, limit: usize) -> Result<Step<StringBody>, Bad> {
    let (len, p) = ready!(read_length(buf, pos)?);
    let body = match len {
        Length::Plain(n) => {
            let end = within((p as u64).saturating_add(n), limit)?;
            StringBody::Raw { start: p, end }
        }
        Length::Encoded(ENC_INT8) => {
            let (b, end) = ready!(fixed::<1>(buf, p));
            StringBody::Int { value: i64::from(i8::from_le_bytes(b)), end }
        }
        Length::Encoded(ENC_INT16) => {
            let (b, end) = ready!(fixed::<2>(buf, p));
            StringBody::Int { value: i64::from(i16::from_le_bytes(b)), end }
        }
        Length::Encoded(ENC_INT32) => {
            let (b, end) = ready!(fixed::<4>(buf, p));
            StringBody::Int { value: i64::from(i32::from_le_bytes(b)), end }
        }
        Length::Encoded(ENC_LZF) => {
            let (compressed, p) = ready!(read_count(buf, p)?);
            let (raw_len, start) = ready!(read_count(buf, p)?);
            // The expanded size counts against the limit too: decoding keys allocates it.
            within(raw_len, limit)?;
            let end = within((start as u64).saturating_add(compressed), limit)?;
            StringBody::Lzf { start, end, raw_len: raw_len as usize }
        }
        Length::Encoded(other) => return Err(Bad::corrupt(format!("unknown string encoding {other}"))),
    };
    if buf.len() < body.end() {
        return Ok(Step::Need(body.end()));
    }
    let end = body.end();
    Ok(Step::Ready(body, end))
}

/// Skips one string, in any encoding.
pub(crate) fn skip_string(buf: &[u8], pos: usize, limit: usize) -> Result<Step<()>, Bad> {
    let (_, end) = ready!(string_body(buf, pos, limit)?);
    Ok(Step::Ready((), end))
}

/// Decodes one string of a complete item: plain strings are zero-copy slices of `item`,
/// integers are formatted the way Redis would, LZF strings are expanded.
pub(crate) fn decode_string(item: &Bytes, pos: usize, limit: usize) -> Result<(Bytes, usize), Bad> {
    match string_body(item, pos, limit)? {
        Step::Ready(StringBody::Raw { start, end }, _) => Ok((item.slice(start..end), end)),
        Step::Ready(StringBody::Int { value, end }, _) => Ok((Bytes::from(value.to_string()), end)),
        Step::Ready(StringBody::Lzf { start, end, raw_len }, _) => {
            let out = lzf::decompress(&item[start..end], raw_len).map_err(Bad::corrupt)?;
            Ok((Bytes::from(out), end))
        }
        Step::Need(_) => Err(Bad::corrupt("string runs past the end of its item")),
    }
}

/// A plain length of a complete item.
pub(crate) fn decode_count(item: &[u8], pos: usize) -> Result<(u64, usize), Bad> {
    match read_count(item, pos)? {
        Step::Ready(n, p) => Ok((n, p)),
        Step::Need(_) => Err(Bad::corrupt("length runs past the end of its item")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_in_every_encoding() {
        assert_eq!(read_length(&[0x05], 0).unwrap(), Step::Ready(Length::Plain(5), 1));
        assert_eq!(read_length(&[0x41, 0x02], 0).unwrap(), Step::Ready(Length::Plain(0x102), 2));
        assert_eq!(read_length(&[0x41], 0).unwrap(), Step::Need(2));
        assert_eq!(read_length(&[0x80, 0, 1, 0, 0], 0).unwrap(), Step::Ready(Length::Plain(65536), 5));
        assert_eq!(read_length(&[0x80, 0, 1], 0).unwrap(), Step::Need(5));
        assert_eq!(read_length(&[0x81, 0, 0, 0, 1, 0, 0, 0, 0], 0).unwrap(), Step::Ready(Length::Plain(1 << 32), 9));
        assert_eq!(read_length(&[0xc3], 0).unwrap(), Step::Ready(Length::Encoded(3), 1));
        assert!(read_length(&[0x82], 0).is_err());
        assert_eq!(read_length(&[], 0).unwrap(), Step::Need(1));
    }

    #[test]
    fn strings_in_every_encoding() {
        let limit = 1 << 20;
        let item = Bytes::from_static(&[0x03, b'a', b'b', b'c']);
        assert_eq!(decode_string(&item, 0, limit).unwrap(), (Bytes::from_static(b"abc"), 4));
        let item = Bytes::from_static(&[0xc0, 0xfe]);
        assert_eq!(decode_string(&item, 0, limit).unwrap().0, "-2");
        let item = Bytes::from_static(&[0xc1, 0x39, 0x30]);
        assert_eq!(decode_string(&item, 0, limit).unwrap().0, "12345");
        let item = Bytes::from_static(&[0xc2, 0x15, 0xcd, 0x5b, 0x07]);
        assert_eq!(decode_string(&item, 0, limit).unwrap().0, "123456789");
        // LZF: 5 compressed bytes expanding to "abcabcabc".
        let item = Bytes::from_static(&[0xc3, 0x06, 0x09, 2, b'a', b'b', b'c', (4 << 5), 2]);
        assert_eq!(decode_string(&item, 0, limit).unwrap(), (Bytes::from_static(b"abcabcabc"), 9));
        assert!(decode_string(&Bytes::from_static(&[0xc4]), 0, limit).is_err());
    }

    #[test]
    fn declared_lengths_are_checked_before_waiting() {
        // 0x80 + 100000: far beyond a 1000-byte limit, with none of the bytes present.
        assert_eq!(skip_string(&[0x80, 0, 1, 0x86, 0xa0], 0, 1000), Err(Bad::TooLarge(100005)));
        // LZF whose expanded size is over the limit.
        assert_eq!(skip_string(&[0xc3, 0x02, 0x80, 0, 1, 0, 0], 0, 1000), Err(Bad::TooLarge(65536)));
        assert_eq!(skip_string(&[0x05, b'a'], 0, 1000), Ok(Step::Need(6)));
    }

    #[test]
    fn module_names_decode() {
        // Build the id of "mymodule1" version 3 by hand, the way RedisModule_CreateDataType does.
        let charset = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut id: u64 = 0;
        for c in b"mymodule1" {
            id = id << 6 | charset.iter().position(|x| x == c).unwrap() as u64;
        }
        id = id << 10 | 3;
        assert_eq!(module_type_name(id), "mymodule1");
    }
}
