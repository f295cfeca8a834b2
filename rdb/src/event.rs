//! What the reader hands out: one [`Event`] per item of the RDB.

use crate::crc64::crc64;
use bytes::{BufMut, Bytes, BytesMut};

/// One item of an RDB stream, in the order of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `REDIS` and the format version (Redis 7.0 writes 10, 7.2 writes 11).
    Header { version: u16 },
    /// A metadata field (`redis-ver`, `repl-id`, `repl-offset`, `aof-base`, …), decoded.
    Aux { key: Bytes, value: Bytes },
    /// The keys that follow belong to this database.
    SelectDb { db: u64 },
    /// Sizing hint for the current database.
    ResizeDb { db_size: u64, expires_size: u64 },
    /// A function library (Redis 7.0+).
    Function(Function),
    /// Module data not tied to a key, skipped: it can only be loaded by the module.
    ModuleAux { module_id: u64, when: u64 },
    /// A key and its value.
    Entry(Entry),
    /// The end of the RDB. `checksum` is the CRC64 the stream carried (verified when it is
    /// non-zero); 0 when the server runs `rdbchecksum no` or the version predates checksums.
    Eof { checksum: u64 },
}

/// A key with its value, the value kept exactly as the RDB encodes it so that it can be
/// written elsewhere with `RESTORE` without ever being decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The database the key lives in (the last SELECTDB before it; 0 when there was none).
    pub db: u64,
    pub key: Bytes,
    /// Absolute Unix time in milliseconds (what `RESTORE … ABSTTL` takes), if the key expires.
    pub expire_at_ms: Option<i64>,
    /// The RDB value type byte ([`crate::value_type`]).
    pub value_type: u8,
    /// The value's bytes as encoded in the RDB, without the type byte.
    pub value: Bytes,
    /// LRU idle time in seconds, when the server's maxmemory policy is an LRU one.
    pub lru_idle: Option<u64>,
    /// LFU counter, when the server's maxmemory policy is an LFU one.
    pub lfu_freq: Option<u8>,
}

impl Entry {
    /// The `DUMP`/`RESTORE` payload of this value: type byte, value bytes, `rdb_version` as 2
    /// bytes little-endian, then the CRC64 of all that as 8 bytes little-endian (redis
    /// `createDumpPayload`). `RESTORE` refuses payloads whose version is above its own, so pass
    /// the version of the server being restored into; for a server of the same version as the
    /// source, the RDB's own version.
    pub fn dump_payload(&self, rdb_version: u16) -> Bytes {
        wrap_payload(&[&[self.value_type], &self.value], rdb_version)
    }
}

/// A function library as the RDB stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// [`crate::opcode::FUNCTION2`], or [`crate::opcode::FUNCTION_PRE_GA`] from a 7.0 release
    /// candidate.
    pub opcode: u8,
    /// The bytes after the opcode, as encoded in the RDB.
    pub raw: Bytes,
    /// The library's code (`#!lua name=…` and the body), decoded, for `FUNCTION2`; `None` for
    /// the pre-GA format, whose parts are stored separately.
    pub code: Option<Bytes>,
}

impl Function {
    /// A `FUNCTION RESTORE` payload holding this one library: the same framing as a key's
    /// DUMP payload (redis `functionDumpCommand`). Several libraries may be restored one at a
    /// time, or their payloads' bodies concatenated with [`wrap_payload`].
    pub fn dump_payload(&self, rdb_version: u16) -> Bytes {
        wrap_payload(&[&[self.opcode], &self.raw], rdb_version)
    }
}

/// Frames `parts` the way DUMP does: the parts, the 2-byte version, the CRC64 of everything
/// before it. Public for building a multi-library `FUNCTION RESTORE` payload.
pub fn wrap_payload(parts: &[&[u8]], rdb_version: u16) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(len + 10);
    for p in parts {
        out.put_slice(p);
    }
    out.put_u16_le(rdb_version);
    let crc = crc64(0, &out);
    out.put_u64_le(crc);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_payload_layout() {
        let e = Entry {
            db: 0,
            key: Bytes::from_static(b"k"),
            expire_at_ms: None,
            value_type: 0,
            value: Bytes::from_static(b"\x03abc"),
            lru_idle: None,
            lfu_freq: None,
        };
        let p = e.dump_payload(10);
        assert_eq!(&p[..7], b"\x00\x03abc\x0a\x00");
        assert_eq!(p.len(), 15);
        let crc = u64::from_le_bytes(p[7..].try_into().unwrap());
        assert_eq!(crc, crc64(0, &p[..7]));
    }
}
