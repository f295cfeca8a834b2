//! A cursor-based RESP parser over a byte slice.
//!
//! Two jobs, both without allocating per byte:
//! - [`measure`] finds where the first complete frame ends, validating it on the way. The proxy
//!   uses it to cut raw replies out of a backend's stream and pass them on untouched.
//! - [`scan_command`] cuts one client command (multibulk or inline) and records where its
//!   arguments are, so they can be handed out as zero-copy `Bytes` slices.
//!
//! When the input is incomplete both report how many bytes are needed at least, so a caller
//! waiting for a 100 MB value does not re-scan its buffer on every read.

use super::frame::Frame;
use bytes::Bytes;

/// Bounds on what a peer may send. A declared length is checked against these before we
/// wait for the data, and nothing is ever allocated from a declared length alone.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string (Redis: `proto-max-bulk-len`, 512 MB).
    pub max_bulk_len: usize,
    /// Most elements of one array.
    pub max_array_len: usize,
    /// Deepest nesting of aggregates.
    pub max_depth: usize,
    /// Longest type line or inline command (Redis: 64 KB).
    pub max_line_len: usize,
}

impl Limits {
    /// What a client may send: Redis's own defaults.
    pub const CLIENT: Limits = Limits {
        max_bulk_len: 512 * 1024 * 1024,
        // Redis refuses a multibulk count above `INT_MAX`; nothing is allocated from it.
        max_array_len: i32::MAX as usize,
        max_depth: 1,
        max_line_len: 64 * 1024,
    };
    /// What a Redis server may answer: larger lines (error texts, `INFO`), deep nesting.
    pub const SERVER: Limits = Limits {
        max_bulk_len: 1024 * 1024 * 1024,
        max_array_len: usize::MAX,
        max_depth: 128,
        max_line_len: 16 * 1024 * 1024,
    };
}

/// Malformed input. The text follows Redis's own `Protocol error: …` wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: impl Into<String>) -> ProtocolError {
        ProtocolError(msg.into())
    }
}

/// Result of looking at a buffer that may hold only part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first frame is complete and this many bytes long.
    Complete(usize),
    /// Not complete; at least this many bytes (in total) are needed before trying again.
    Incomplete(usize),
}

/// Internal step result: where the next frame starts, or how much input is needed.
enum Step {
    Next(usize),
    Need(usize),
}

macro_rules! step {
    ($e:expr) => {
        match $e? {
            Step::Next(p) => p,
            Step::Need(n) => return Ok(Step::Need(n)),
        }
    };
}

/// Finds the end of the line starting at `pos`; `Next` is the index of its `\r`.
fn line_end(buf: &[u8], pos: usize, limits: &Limits) -> Result<Step, ProtocolError> {
    let rest = &buf[pos.min(buf.len())..];
    match find_cr(rest) {
        Some(i) if i > limits.max_line_len => Err(ProtocolError::new("too big line")),
        Some(i) => {
            let cr = pos + i;
            match buf.get(cr + 1) {
                None => Ok(Step::Need(cr + 2)),
                Some(b'\n') => Ok(Step::Next(cr)),
                Some(_) => Err(ProtocolError::new("expected \\r\\n after line")),
            }
        }
        None if rest.len() > limits.max_line_len => Err(ProtocolError::new("too big line")),
        None => Ok(Step::Need(buf.len() + 1)),
    }
}

/// The first `\r` of `rest`. Nearly every line is a length or a short status (`$5`, `*3`,
/// `+OK`): a plain loop finds its end in a few steps, where a vectorised search costs more to
/// set up than it saves.
#[inline]
fn find_cr(rest: &[u8]) -> Option<usize> {
    const SHORT: usize = 16;
    match rest.iter().take(SHORT).position(|&c| c == b'\r') {
        Some(i) => Some(i),
        None if rest.len() <= SHORT => None,
        None => memchr::memchr(b'\r', &rest[SHORT..]).map(|i| i + SHORT),
    }
}

/// Parses a decimal integer exactly as Redis's `string2ll` does: no spaces, no `+`, no
/// leading zeros (`0` alone excepted), no `-0`, the whole `i64` range. Redis refuses
/// `*02`, `$-0` or a `numkeys` of `01`, so the proxy must not take them either.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!neg).then_some(0),
        [b'0', ..] => return None,
        _ if digits.len() > 19 => return None,
        _ => {}
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        // `i64::MIN` has no positive counterpart: negate in the unsigned domain.
        (v <= i64::MIN.unsigned_abs()).then(|| 0i64.wrapping_sub_unsigned(v))
    } else {
        i64::try_from(v).ok()
    }
}

/// Reads the integer on the line after the type byte at `pos`; returns (value, start of body).
fn header(buf: &[u8], pos: usize, limits: &Limits, what: &str) -> Result<Result<(i64, usize), usize>, ProtocolError> {
    if let Some(h) = digits_line(buf, pos + 1, limits) {
        return Ok(Ok(h));
    }
    match line_end(buf, pos + 1, limits)? {
        Step::Need(n) => Ok(Err(n)),
        Step::Next(cr) => {
            let v = parse_int(&buf[pos + 1..cr]).ok_or_else(|| ProtocolError::new(format!("invalid {what} length")))?;
            Ok(Ok((v, cr + 2)))
        }
    }
}

/// The line at `start` when it is what nearly every header is: 1 to 17 digits, no leading
/// zero, then `\r\n`; read in one pass (value, start of body). `None` for anything else, which
/// the general path (`line_end`, [`parse_int`]) reads, with the same result for these lines.
#[inline]
fn digits_line(buf: &[u8], start: usize, limits: &Limits) -> Option<(i64, usize)> {
    let mut v: i64 = 0;
    let mut i = start;
    while let Some(&c) = buf.get(i) {
        if !c.is_ascii_digit() || i - start >= 17 {
            break;
        }
        v = v * 10 + i64::from(c - b'0');
        i += 1;
    }
    let n = i - start;
    let leading_zero = n > 1 && buf[start] == b'0';
    let ends = buf.get(i) == Some(&b'\r') && buf.get(i + 1) == Some(&b'\n');
    (n > 0 && !leading_zero && ends && n <= limits.max_line_len).then_some((v, i + 2))
}

/// Measures the first frame of `buf` (a reply stream: any RESP2/RESP3 type).
pub fn measure(buf: &[u8], limits: &Limits) -> Result<Scan, ProtocolError> {
    match measure_at(buf, 0, 0, limits)? {
        Step::Next(end) => Ok(Scan::Complete(end)),
        Step::Need(n) => Ok(Scan::Incomplete(n)),
    }
}

/// Attributes (`|`) annotate the value that follows them. They are skipped in a loop, not by
/// recursion: a stream of attributes must not exhaust the stack (`|0\r\n` repeated).
fn measure_at(buf: &[u8], mut pos: usize, depth: usize, limits: &Limits) -> Result<Step, ProtocolError> {
    while buf.get(pos) == Some(&b'|') {
        pos = step!(measure_value(buf, pos, depth, limits));
    }
    measure_value(buf, pos, depth, limits)
}

/// Measures one value; an attribute map (`|`) is measured alone (see [`measure_at`]).
fn measure_value(buf: &[u8], pos: usize, depth: usize, limits: &Limits) -> Result<Step, ProtocolError> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(Step::Need(pos + 1));
    };
    match tag {
        b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
            let cr = step!(line_end(buf, pos + 1, limits));
            // The lines with a fixed form are checked as `parse_frame` checks them: what is
            // measured complete always parses.
            let text = &buf[pos + 1..cr];
            let valid = match tag {
                b':' => parse_int(text).is_some(),
                b'#' => text == b"t" || text == b"f",
                b'_' => text.is_empty(),
                _ => true,
            };
            if !valid {
                return Err(ProtocolError::new(format!("invalid '{}' line", char::from(tag))));
            }
            Ok(Step::Next(cr + 2))
        }
        b'$' | b'!' | b'=' => {
            let (len, body) = match header(buf, pos, limits, "bulk")? {
                Ok(h) => h,
                Err(n) => return Ok(Step::Need(n)),
            };
            if len == -1 && tag == b'$' {
                return Ok(Step::Next(body));
            }
            if len < 0 || len as u64 > limits.max_bulk_len as u64 {
                return Err(ProtocolError::new("invalid bulk length"));
            }
            let end = body + len as usize;
            if buf.len() < end + 2 {
                return Ok(Step::Need(end + 2));
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::new("bulk string not terminated by \\r\\n"));
            }
            Ok(Step::Next(end + 2))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if depth >= limits.max_depth {
                return Err(ProtocolError::new("nesting too deep"));
            }
            let (len, mut p) = match header(buf, pos, limits, "multibulk")? {
                Ok(h) => h,
                Err(n) => return Ok(Step::Need(n)),
            };
            if len == -1 && tag == b'*' {
                return Ok(Step::Next(p));
            }
            if len < 0 || len as u64 > limits.max_array_len as u64 {
                return Err(ProtocolError::new("invalid multibulk length"));
            }
            let items = if tag == b'%' || tag == b'|' { len as u64 * 2 } else { len as u64 };
            for _ in 0..items {
                p = step!(measure_at(buf, p, depth + 1, limits));
            }
            Ok(Step::Next(p))
        }
        other => Err(ProtocolError::new(format!("unexpected type byte '{}'", char::from(other).escape_default()))),
    }
}

/// Parses one complete frame from `bytes` (which must hold it: call [`measure`] first).
/// Attributes are dropped; the reply they annotate is returned.
pub fn parse_frame(bytes: &Bytes, limits: &Limits) -> Result<(Frame, usize), ProtocolError> {
    parse_at(bytes, 0, 0, limits)
}

/// Parses the value at `pos`, dropping the attributes before it (in a loop: see [`measure_at`]).
fn parse_at(b: &Bytes, mut pos: usize, depth: usize, limits: &Limits) -> Result<(Frame, usize), ProtocolError> {
    while b.get(pos) == Some(&b'|') {
        pos = parse_value(b, pos, depth, limits)?.1;
    }
    parse_value(b, pos, depth, limits)
}

/// Parses one value; an attribute map (`|`) is returned as a map (see [`parse_at`]).
fn parse_value(b: &Bytes, pos: usize, depth: usize, limits: &Limits) -> Result<(Frame, usize), ProtocolError> {
    let incomplete = || ProtocolError::new("incomplete frame");
    let tag = *b.get(pos).ok_or_else(incomplete)?;
    let line = |b: &Bytes| -> Result<(Bytes, usize), ProtocolError> {
        match line_end(b, pos + 1, limits)? {
            Step::Next(cr) => Ok((b.slice(pos + 1..cr), cr + 2)),
            Step::Need(_) => Err(incomplete()),
        }
    };
    let count = |b: &Bytes| -> Result<(i64, usize), ProtocolError> {
        let (l, next) = line(b)?;
        let n = parse_int(&l).ok_or_else(|| ProtocolError::new("invalid length"))?;
        Ok((n, next))
    };
    match tag {
        b'+' => line(b).map(|(l, n)| (Frame::Simple(l), n)),
        b'-' => line(b).map(|(l, n)| (Frame::Error(l), n)),
        b':' => {
            let (l, n) = line(b)?;
            let i = parse_int(&l).ok_or_else(|| ProtocolError::new("invalid integer"))?;
            Ok((Frame::Integer(i), n))
        }
        b',' => line(b).map(|(l, n)| (Frame::Double(l), n)),
        b'(' => line(b).map(|(l, n)| (Frame::BigNumber(l), n)),
        b'_' => match line(b)? {
            (l, n) if l.is_empty() => Ok((Frame::Null, n)),
            _ => Err(ProtocolError::new("invalid null")),
        },
        b'#' => {
            let (l, n) = line(b)?;
            match &l[..] {
                b"t" => Ok((Frame::Boolean(true), n)),
                b"f" => Ok((Frame::Boolean(false), n)),
                _ => Err(ProtocolError::new("invalid boolean")),
            }
        }
        b'$' | b'!' | b'=' => {
            let (len, body) = count(b)?;
            parse_blob(b, tag, len, body, limits)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if depth >= limits.max_depth {
                return Err(ProtocolError::new("nesting too deep"));
            }
            let (len, body) = count(b)?;
            parse_aggregate(b, tag, len, body, depth, limits)
        }
        other => Err(ProtocolError::new(format!("unexpected type byte '{}'", char::from(other).escape_default()))),
    }
}

/// The body of a blob (`$`, `!`, `=`) of declared length `len` starting at `body`.
fn parse_blob(b: &Bytes, tag: u8, len: i64, body: usize, limits: &Limits) -> Result<(Frame, usize), ProtocolError> {
    if len == -1 && tag == b'$' {
        return Ok((Frame::Null, body));
    }
    if len < 0 || len as u64 > limits.max_bulk_len as u64 {
        return Err(ProtocolError::new("invalid bulk length"));
    }
    let end = body + len as usize;
    if b.len() < end + 2 {
        return Err(ProtocolError::new("incomplete frame"));
    }
    if &b[end..end + 2] != b"\r\n" {
        return Err(ProtocolError::new("bulk string not terminated by \\r\\n"));
    }
    let data = b.slice(body..end);
    let frame = match tag {
        b'$' => Frame::Bulk(data),
        b'!' => Frame::BlobError(data),
        _ if data.len() >= 4 && data[3] == b':' => Frame::Verbatim(data.slice(..3), data.slice(4..)),
        _ => Frame::Verbatim(Bytes::from_static(b"txt"), data),
    };
    Ok((frame, end + 2))
}

/// The elements of an aggregate (`*`, `~`, `>`, `%`, `|`) of declared count `len` starting at
/// `p`; `depth` is the aggregate's own (its depth was checked).
fn parse_aggregate(
    b: &Bytes,
    tag: u8,
    len: i64,
    mut p: usize,
    depth: usize,
    limits: &Limits,
) -> Result<(Frame, usize), ProtocolError> {
    if len == -1 && tag == b'*' {
        return Ok((Frame::NullArray, p));
    }
    if len < 0 || len as u64 > limits.max_array_len as u64 {
        return Err(ProtocolError::new("invalid multibulk length"));
    }
    let len = len as usize;
    if tag == b'%' || tag == b'|' {
        // Reserved for what the input can hold at most (a value takes 3 bytes at least), never
        // for the declared count alone.
        let mut pairs = Vec::with_capacity(len.min(b.len().saturating_sub(p) / 6));
        for _ in 0..len {
            let (k, next) = parse_at(b, p, depth + 1, limits)?;
            let (v, next) = parse_at(b, next, depth + 1, limits)?;
            pairs.push((k, v));
            p = next;
        }
        return Ok((Frame::Map(pairs), p));
    }
    let mut items = Vec::with_capacity(len.min(b.len().saturating_sub(p) / 3));
    for _ in 0..len {
        let (f, next) = parse_at(b, p, depth + 1, limits)?;
        items.push(f);
        p = next;
    }
    let frame = match tag {
        b'~' => Frame::Set(items),
        b'>' => Frame::Push(items),
        _ => Frame::Array(items),
    };
    Ok((frame, p))
}

/// Where one client command lies in the buffer.
#[derive(Debug)]
pub enum CommandScan {
    /// A multibulk command of `len` bytes; [`scan_command`]'s `args` now holds (start, end) of
    /// each argument.
    Multibulk { len: usize },
    /// An inline command line of `len` bytes (including its line ending).
    Inline { len: usize },
    /// Not complete yet: at least this many bytes are needed.
    Incomplete(usize),
}

/// Scans one client command. For a multibulk command the argument positions are pushed into
/// `args` (cleared first), so the caller can slice them out of the frozen buffer.
pub fn scan_command(buf: &[u8], limits: &Limits, args: &mut Vec<(usize, usize)>) -> Result<CommandScan, ProtocolError> {
    args.clear();
    let Some(&first) = buf.first() else {
        return Ok(CommandScan::Incomplete(1));
    };
    if first != b'*' {
        return match memchr::memchr(b'\n', buf) {
            Some(i) if i > limits.max_line_len => Err(ProtocolError::new("too big inline request")),
            Some(i) => Ok(CommandScan::Inline { len: i + 1 }),
            None if buf.len() > limits.max_line_len => Err(ProtocolError::new("too big inline request")),
            None => Ok(CommandScan::Incomplete(buf.len() + 1)),
        };
    }
    let (count, mut p) = match header(buf, 0, limits, "multibulk")? {
        Ok(h) => h,
        Err(n) => return Ok(CommandScan::Incomplete(n)),
    };
    if count > limits.max_array_len as i64 {
        return Err(ProtocolError::new("invalid multibulk length"));
    }
    for _ in 0..count.max(0) {
        if p >= buf.len() {
            return Ok(CommandScan::Incomplete(p + 1));
        }
        // The line first, then its type byte, in Redis's order: a header that is not a bulk
        // one is refused once its line is complete (Redis waits for the line until then).
        let (len, body) = match buf[p] {
            b'$' => match header(buf, p, limits, "bulk")? {
                Ok(h) => h,
                Err(n) => return Ok(CommandScan::Incomplete(n)),
            },
            other => match line_end(buf, p, limits)? {
                Step::Need(n) => return Ok(CommandScan::Incomplete(n)),
                Step::Next(_) => {
                    let got = char::from(other).escape_default();
                    return Err(ProtocolError::new(format!("expected '$', got '{got}'")));
                }
            },
        };
        if len < 0 || len as u64 > limits.max_bulk_len as u64 {
            return Err(ProtocolError::new("invalid bulk length"));
        }
        let end = body + len as usize;
        if buf.len() < end + 2 {
            return Ok(CommandScan::Incomplete(end + 2));
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::new("bulk string not terminated by \\r\\n"));
        }
        args.push((body, end));
        p = end + 2;
    }
    Ok(CommandScan::Multibulk { len: p })
}

/// C's `isspace`, which Redis skips between inline arguments (Rust's `is_ascii_whitespace`
/// lacks the vertical tab).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The value of a hex digit (the caller checked it is one).
fn hex_value(c: u8) -> u8 {
    char::from(c).to_digit(16).unwrap_or(0) as u8
}

/// Splits an inline command line into arguments exactly as Redis's `sdssplitargs` does, so
/// the proxy forwards what Redis itself would have run: arguments are separated by blanks
/// (C's `isspace`); an unquoted argument ends only at a space, tab, CR or LF (a vertical tab
/// or form feed belongs to it), and a quote inside it opens a quoted part (`a"b c"` is
/// `ab c`); `"..."` takes `\xHH` and `\n \r \t \b \a` escapes (any other escaped byte is
/// itself), `'...'` only `\'`; a closing quote must be followed by a blank or the end. The line
/// ends at its first NUL byte, as Redis's C string does. `None` when the quotes do not balance.
pub fn split_inline(line: &[u8]) -> Option<Vec<Bytes>> {
    let line = match memchr::memchr(0, line) {
        Some(nul) => &line[..nul],
        None => line,
    };
    // The byte at `i`, with the end of the line read as C's terminating NUL.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(out);
        }
        let mut cur = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(i);
            if in_double {
                if c == b'\\' && at(i + 1) == b'x' && at(i + 2).is_ascii_hexdigit() && at(i + 3).is_ascii_hexdigit() {
                    cur.push(hex_value(at(i + 2)) << 4 | hex_value(at(i + 3)));
                    i += 4;
                    continue;
                } else if c == b'\\' && at(i + 1) != 0 {
                    cur.push(match at(i + 1) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                    continue;
                } else if c == b'"' {
                    return_none_unless_blank_follows(at(i + 1))?;
                    i += 1;
                    break;
                } else if c == 0 {
                    return None; // unterminated quotes
                }
                cur.push(c);
            } else if in_single {
                if c == b'\\' && at(i + 1) == b'\'' {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                } else if c == b'\'' {
                    return_none_unless_blank_follows(at(i + 1))?;
                    i += 1;
                    break;
                } else if c == 0 {
                    return None;
                }
                cur.push(c);
            } else {
                match c {
                    0 => break,
                    b' ' | b'\n' | b'\r' | b'\t' => {
                        i += 1;
                        break;
                    }
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => cur.push(c),
                }
            }
            i += 1;
        }
        out.push(Bytes::from(cur));
    }
}

/// A closing quote must be followed by a blank or the end of the line (`next` is 0 there).
fn return_none_unless_blank_follows(next: u8) -> Option<()> {
    (next == 0 || is_space(next)).then_some(())
}
