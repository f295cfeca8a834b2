//! The `Frame` type: one decoded RESP2/RESP3 value.
//!
//! The proxy forwards most replies as raw bytes and never builds a `Frame` for them.
//! Frames are built for what the proxy answers itself (CLUSTER, HELLO, …) and for the few
//! replies it has to look into (merging a split `MGET`, filtering `SCAN`).

use bytes::{BufMut, Bytes, BytesMut};

/// Which protocol a client speaks. Chosen by `HELLO`; RESP2 until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// One RESP value. RESP3-only types are downgraded when encoded for a RESP2 client,
/// the same way Redis does it (maps become flat arrays, booleans integers, …).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    /// A null bulk string (`$-1` in RESP2, `_` in RESP3).
    Null,
    /// A null array (`*-1` in RESP2, `_` in RESP3).
    NullArray,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    /// Kept as text so `inf`, `-inf` and `nan` survive a round trip unchanged.
    Double(Bytes),
    Boolean(bool),
    BigNumber(Bytes),
    /// The three-letter format, then the text (`txt`, `mkd`).
    Verbatim(Bytes, Bytes),
    BlobError(Bytes),
    Push(Vec<Frame>),
}

impl Frame {
    pub fn ok() -> Frame {
        Frame::Simple(Bytes::from_static(b"OK"))
    }

    pub fn simple(s: impl Into<Bytes>) -> Frame {
        Frame::Simple(s.into())
    }

    /// An error reply; `msg` should start with the error code (`ERR`, `MOVED`, …).
    pub fn error(msg: impl Into<String>) -> Frame {
        // Error lines cannot contain CR/LF: replace them so the frame stays valid.
        let msg: String = msg.into().chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
        Frame::Error(Bytes::from(msg))
    }

    pub fn bulk(b: impl Into<Bytes>) -> Frame {
        Frame::Bulk(b.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Frame::Error(_) | Frame::BlobError(_))
    }

    /// Bytes of a string-like frame, if it is one.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Frame::Simple(b) | Frame::Bulk(b) | Frame::Error(b) | Frame::BigNumber(b) => Some(b),
            Frame::Verbatim(_, b) => Some(b),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Frame::Integer(i) => Some(*i),
            Frame::Bulk(b) | Frame::Simple(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// Encodes for a client speaking `proto`.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        let v3 = proto == Protocol::Resp3;
        match self {
            Frame::Simple(s) => line(out, b'+', s),
            Frame::Error(s) => line(out, b'-', s),
            Frame::Integer(i) => int_line(out, b':', *i),
            Frame::Bulk(b) => blob(out, b'$', b),
            Frame::Null if v3 => out.put_slice(b"_\r\n"),
            Frame::Null => out.put_slice(b"$-1\r\n"),
            Frame::NullArray if v3 => out.put_slice(b"_\r\n"),
            Frame::NullArray => out.put_slice(b"*-1\r\n"),
            Frame::Array(items) => aggregate(out, b'*', items, proto),
            Frame::Set(items) => aggregate(out, if v3 { b'~' } else { b'*' }, items, proto),
            Frame::Push(items) => aggregate(out, if v3 { b'>' } else { b'*' }, items, proto),
            Frame::Map(pairs) => {
                if v3 {
                    int_line(out, b'%', pairs.len() as i64);
                } else {
                    int_line(out, b'*', pairs.len() as i64 * 2);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Frame::Double(d) if v3 => line(out, b',', d),
            Frame::Double(d) => blob(out, b'$', d),
            Frame::Boolean(b) if v3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Frame::Boolean(b) => int_line(out, b':', i64::from(*b)),
            Frame::BigNumber(n) if v3 => line(out, b'(', n),
            Frame::BigNumber(n) => blob(out, b'$', n),
            Frame::Verbatim(fmt, text) if v3 => {
                int_line(out, b'=', (fmt.len() + 1 + text.len()) as i64);
                out.put_slice(fmt);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Frame::Verbatim(_, text) => blob(out, b'$', text),
            Frame::BlobError(e) if v3 => blob(out, b'!', e),
            // A blob error may hold line ends; a RESP2 error line may not (see `Frame::error`).
            Frame::BlobError(e) if e.iter().any(|&c| c == b'\r' || c == b'\n') => {
                let text: Vec<u8> = e.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }).collect();
                line(out, b'-', &text)
            }
            Frame::BlobError(e) => line(out, b'-', e),
        }
    }

    /// Convenience: encode into a fresh buffer.
    pub fn to_bytes(&self, proto: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(proto, &mut out);
        out.freeze()
    }
}

fn line(out: &mut BytesMut, tag: u8, s: &[u8]) {
    out.reserve(s.len() + 3);
    out.put_u8(tag);
    out.put_slice(s);
    out.put_slice(b"\r\n");
}

fn int_line(out: &mut BytesMut, tag: u8, i: i64) {
    let mut buf = itoa::Buffer::new();
    line(out, tag, buf.format(i).as_bytes());
}

fn blob(out: &mut BytesMut, tag: u8, b: &[u8]) {
    int_line(out, tag, b.len() as i64);
    out.reserve(b.len() + 2);
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

fn aggregate(out: &mut BytesMut, tag: u8, items: &[Frame], proto: Protocol) {
    int_line(out, tag, items.len() as i64);
    for item in items {
        item.encode(proto, out);
    }
}

/// Encodes a command (an array of bulk strings), the form every Redis server accepts.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    int_line(out, b'*', args.len() as i64);
    for a in args {
        blob(out, b'$', a.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp3_types_downgrade_for_resp2_clients() {
        let map = Frame::Map(vec![(Frame::bulk("a"), Frame::Integer(1))]);
        assert_eq!(&map.to_bytes(Protocol::Resp2)[..], b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(&map.to_bytes(Protocol::Resp3)[..], b"%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(&Frame::Boolean(true).to_bytes(Protocol::Resp2)[..], b":1\r\n");
        assert_eq!(&Frame::Null.to_bytes(Protocol::Resp3)[..], b"_\r\n");
        assert_eq!(&Frame::NullArray.to_bytes(Protocol::Resp2)[..], b"*-1\r\n");
    }

    #[test]
    fn error_text_cannot_break_the_frame() {
        let e = Frame::error("ERR bad\r\nthing");
        assert_eq!(&e.to_bytes(Protocol::Resp2)[..], b"-ERR bad  thing\r\n");
    }
}
