//! A client command: its arguments, and the exact bytes to forward.

use super::frame::encode_command;
use bytes::{Bytes, BytesMut};

/// A command's arguments. A `Vec`, not a small inline array: a command is moved through
/// several async frames on its way, and a larger `Command` costs more in copies there than
/// the one allocation it saves (measured with callgrind, issue 17).
type Args = Vec<Bytes>;

/// One command as a client sent it. `raw` is the multibulk encoding (the client's own bytes
/// when it sent multibulk), so a command routed unchanged is forwarded without re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    raw: Bytes,
    args: Args,
}

impl Command {
    /// Builds a command from arguments, encoding it. `args` must not be empty.
    pub fn new(args: Vec<Bytes>) -> Command {
        let mut buf = BytesMut::new();
        encode_command(&args, &mut buf);
        Command { raw: buf.freeze(), args }
    }

    /// Builds a command from raw multibulk bytes and the argument slices cut from them.
    pub fn from_parts(raw: Bytes, args: Vec<Bytes>) -> Command {
        Command { raw, args }
    }

    /// Builds a command from raw multibulk bytes and the (start, end) of each argument in them.
    pub fn from_ranges(raw: Bytes, ranges: &[(usize, usize)]) -> Command {
        let args = ranges.iter().map(|&(s, e)| raw.slice(s..e)).collect();
        Command { raw, args }
    }

    /// Convenience for code and tests: `Command::from_strs(&["GET", "k"])`.
    pub fn from_strs<S: AsRef<[u8]>>(args: &[S]) -> Command {
        Command::new(args.iter().map(|a| Bytes::copy_from_slice(a.as_ref())).collect())
    }

    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn args(&self) -> &[Bytes] {
        &self.args
    }

    pub fn arg(&self, i: usize) -> Option<&Bytes> {
        self.args.get(i)
    }

    /// The command name (first argument), as sent.
    pub fn name(&self) -> &[u8] {
        self.args.first().map(|a| &a[..]).unwrap_or(b"")
    }

    /// The command name in upper case, for logs and table lookups.
    pub fn name_upper(&self) -> String {
        String::from_utf8_lossy(self.name()).to_ascii_uppercase()
    }

    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}
