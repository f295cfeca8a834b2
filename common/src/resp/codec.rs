//! tokio-util codecs for both directions of a RESP connection.
//!
//! - [`CommandCodec`] decodes what a client sends into [`Command`]s (raw bytes + argument
//!   slices) and encodes raw reply bytes back.
//! - [`ReplyCodec`] decodes what a server answers into raw, complete reply frames.
//!
//! Both remember how many bytes the pending frame needs at least, so a big value arriving in
//! many reads is scanned once, not once per read. Neither allocates from a declared length.

use super::command::Command;
use super::parse::{measure, scan_command, split_inline, CommandScan, Limits, ProtocolError, Scan};
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// An error on a RESP connection: bad input or the socket itself.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes client commands.
#[derive(Debug)]
pub struct CommandCodec {
    limits: Limits,
    /// Bytes the buffer must hold before a new scan can succeed.
    need: usize,
    /// Argument positions of the command being scanned; reused between commands.
    offsets: Vec<(usize, usize)>,
}

impl CommandCodec {
    pub fn new(limits: Limits) -> Self {
        CommandCodec { limits, need: 0, offsets: Vec::new() }
    }
}

impl Default for CommandCodec {
    fn default() -> Self {
        CommandCodec::new(Limits::CLIENT)
    }
}

impl Decoder for CommandCodec {
    type Item = Command;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        loop {
            if buf.is_empty() || buf.len() < self.need {
                return Ok(None);
            }
            match scan_command(buf, &self.limits, &mut self.offsets)? {
                CommandScan::Incomplete(n) => {
                    self.need = n;
                    return Ok(None);
                }
                CommandScan::Multibulk { len } => {
                    self.need = 0;
                    let raw = buf.split_to(len).freeze();
                    if self.offsets.is_empty() {
                        continue; // `*0` is ignored, as Redis does
                    }
                    return Ok(Some(Command::from_ranges(raw, &self.offsets)));
                }
                CommandScan::Inline { len } => {
                    self.need = 0;
                    let line = buf.split_to(len);
                    if line.contains(&0) {
                        // Redis looks for the line's end with `strchr` and never finds it past
                        // a NUL: the connection stalls there. Refused instead, and said why.
                        return Err(ProtocolError("NUL byte in inline request".into()).into());
                    }
                    let args =
                        split_inline(&line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
                    if args.is_empty() {
                        continue; // an empty line is ignored
                    }
                    return Ok(Some(Command::new(args)));
                }
            }
        }
    }
}

impl Encoder<Bytes> for CommandCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Decodes server replies into raw frames (each `Bytes` is exactly one reply).
#[derive(Debug)]
pub struct ReplyCodec {
    limits: Limits,
    need: usize,
}

impl ReplyCodec {
    pub fn new(limits: Limits) -> Self {
        ReplyCodec { limits, need: 0 }
    }
}

impl Default for ReplyCodec {
    fn default() -> Self {
        ReplyCodec::new(Limits::SERVER)
    }
}

impl Decoder for ReplyCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        match measure(buf, &self.limits)? {
            Scan::Incomplete(n) => {
                self.need = n;
                Ok(None)
            }
            Scan::Complete(len) if len >= COPY_OUT => {
                self.need = 0;
                let reply = Bytes::copy_from_slice(&buf[..len]);
                buf.advance(len);
                Ok(Some(reply))
            }
            Scan::Complete(len) => {
                self.need = 0;
                Ok(Some(buf.split_to(len).freeze()))
            }
        }
    }
}

/// Replies at least this large are copied out of the read buffer rather than cut from it: a
/// cut keeps the whole buffer it was read into alive for as long as the reply waits for its
/// client, so the memory a slow client's replies pin would be a multiple of their size (and
/// not what `--client-output-buffer-limit` counts). Small replies are cut: their copy would
/// cost more than the buffer they share.
const COPY_OUT: usize = 16 * 1024;

impl Encoder<Bytes> for ReplyCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}
