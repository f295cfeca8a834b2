//! What can go wrong reading an RDB stream.

/// An RDB that this reader cannot (or will not) read. Every variant is final: the reader keeps
/// returning it, since a byte stream cannot be resynchronised after a bad item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdbError {
    /// The first five bytes are not `REDIS`.
    #[error("not an RDB stream: expected the REDIS signature, got {0:?}")]
    BadSignature(String),
    /// A version this reader does not know the encodings of.
    #[error("RDB format version {0} is not supported (this reader handles versions 1 to 11, up to Redis 7.2)")]
    UnsupportedVersion(u32),
    /// A type or opcode byte this reader does not know, or refuses.
    #[error("unsupported RDB type {type_byte} at byte offset {offset}: {what}")]
    UnsupportedType { type_byte: u8, offset: u64, what: &'static str },
    /// Bytes that do not follow the format.
    #[error("corrupt RDB at byte offset {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    /// One item (a key with its value, an AUX field, a function) is bigger than allowed.
    #[error("RDB item at byte offset {offset} needs at least {size} bytes, more than the limit of {limit}")]
    TooLarge { offset: u64, size: u64, limit: usize },
    /// The trailing CRC64 does not match the bytes received.
    #[error("RDB checksum mismatch: the stream says {expected:#018x}, the bytes give {computed:#018x}")]
    Checksum { expected: u64, computed: u64 },
}
