//! RESP2/RESP3: the frame type, the parser and the tokio-util codecs.

mod codec;
mod command;
mod frame;
mod parse;

pub use codec::{CodecError, CommandCodec, ReplyCodec};
pub use command::Command;
pub use frame::{encode_command, Frame, Protocol};
pub use parse::{
    measure, parse_frame, parse_int, scan_command, split_inline, CommandScan, Limits, ProtocolError, Scan,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
