//! A connection to a Redis node as its replica: full sync, then the command stream.
//!
//! ```text
//! connect ── handshake ── PSYNC ? -1 ── +FULLRESYNC ── $len / $EOF:mark
//!   next_event()*   the RDB, one item at a time, read only as fast as the caller asks
//!   next_command()* the replication stream, offset tracked as Redis counts it
//!   ack task        REPLCONF ACK <offset> every second on the write half
//! ```
//!
//! Memory stays bounded by one item plus one read chunk: bytes are read only when the item
//! being parsed needs them, so a slow caller slows the socket (and so the master) down rather
//! than filling our memory. The master's own limits apply meanwhile: a diskless master drops
//! a replica whose transfer stalls for `repl-timeout`, and any master drops one whose output
//! buffer passes `client-output-buffer-limit replica`.

mod ack;
mod error;
mod handshake;

pub use error::LinkError;
pub use handshake::Transfer;

use crate::event::Event;
use crate::reader::{RdbReader, DEFAULT_MAX_ITEM_SIZE};
use bytes::{Bytes, BytesMut};
use handshake::{fill, handshake, strip_mark, EOF_MARK_LEN};
use sluice_common::resp::{CodecError, CommandCodec, Limits};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::Decoder;

/// Tuning of a [`ReplicaLink`]. The defaults follow Redis's own replica.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// TCP connect, and each handshake reply before PSYNC.
    pub connect_timeout: Duration,
    /// Longest silence from the master after PSYNC (Redis's `repl-timeout`, 60 s). The master
    /// sends a newline every second while it prepares the RDB and PINGs every 10 s after.
    pub read_timeout: Duration,
    /// How often `REPLCONF ACK` is sent once the stream has started (Redis: every second).
    /// Between the end of the RDB and the first byte of the stream, acks go every 100 ms.
    pub ack_interval: Duration,
    /// Most bytes read from the socket at once.
    pub read_chunk: usize,
    /// Largest RDB item or command argument accepted.
    pub max_item_size: usize,
    /// Whether acks report the offset received so far (a replica's behaviour). `false`: every
    /// ack reports the offset of the snapshot, so the link stays a connected replica but never
    /// counts for a client's `WAIT` (a copy that is not one of the shard's replicas must not
    /// acknowledge a write for it).
    pub ack_received: bool,
    /// The ACL user the password belongs to (`AUTH user password`); `None`: the default user.
    pub user: Option<String>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            ack_interval: Duration::from_secs(1),
            read_chunk: 64 * 1024,
            max_item_size: DEFAULT_MAX_ITEM_SIZE,
            ack_received: true,
            user: None,
        }
    }
}

/// One command of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplCommand {
    /// The command's arguments, name first (zero-copy slices of `raw`).
    pub args: Vec<Bytes>,
    /// The command's multibulk encoding (the master's own bytes: it only sends multibulk).
    pub raw: Bytes,
    /// Stream bytes this command accounted for: its own, plus any empty line or `*0` the
    /// master sent before it (Redis counts those in the offset too).
    pub raw_len: usize,
    /// The replication offset just after this command.
    pub offset: u64,
}

impl ReplCommand {
    /// The command name in upper case.
    pub fn name(&self) -> String {
        self.args.first().map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default()
    }
}

/// A replica connection to one Redis node. Dropping it stops the ack task and closes the
/// connection.
#[derive(Debug)]
pub struct ReplicaLink {
    read: OwnedReadHalf,
    /// Held until the stream starts, then owned by the ack task.
    write: Option<OwnedWriteHalf>,
    buf: BytesMut,
    options: LinkOptions,
    replid: String,
    initial_offset: u64,
    transfer: Transfer,
    rdb: RdbReader,
    /// The RDB has been read to its end (and its framing checked).
    streaming: bool,
    codec: CommandCodec,
    /// The offset as of the last command handed out; mirrored into `shared_offset`.
    offset: u64,
    /// Bytes decoded but not yet attributed to a command (empty lines, `*0`).
    unattributed: usize,
    shared_offset: Arc<AtomicU64>,
    ack_now: Arc<Notify>,
    acker: Option<JoinHandle<Result<(), LinkError>>>,
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        if let Some(task) = &self.acker {
            task.abort();
        }
    }
}

impl ReplicaLink {
    /// Connects to `addr` (`host:port`) and asks for a full sync, with default options.
    /// `listening_port` is what the master shows for this replica in `INFO replication`.
    pub async fn connect(addr: &str, password: Option<&str>, listening_port: u16) -> Result<ReplicaLink, LinkError> {
        ReplicaLink::connect_with(addr, password, listening_port, LinkOptions::default()).await
    }

    /// [`ReplicaLink::connect`] with explicit options. Returns once the master has announced
    /// the RDB (`+FULLRESYNC` and the `$` line); the RDB is then read by [`Self::next_event`].
    pub async fn connect_with(
        addr: &str,
        password: Option<&str>,
        listening_port: u16,
        options: LinkOptions,
    ) -> Result<ReplicaLink, LinkError> {
        let mut stream = match timeout(options.connect_timeout, TcpStream::connect(addr)).await {
            Ok(connected) => connected?,
            Err(_) => return Err(LinkError::Timeout("connecting")),
        };
        stream.set_nodelay(true)?;
        let mut buf = BytesMut::with_capacity(options.read_chunk);
        let sync = handshake(
            &mut stream,
            &mut buf,
            options.user.as_deref(),
            password,
            listening_port,
            options.connect_timeout,
            options.read_timeout,
        )
        .await?;
        let (read, write) = stream.into_split();
        let limits = Limits { max_bulk_len: options.max_item_size, ..Limits::CLIENT };
        Ok(ReplicaLink {
            read,
            write: Some(write),
            buf,
            rdb: RdbReader::with_max_item_size(options.max_item_size),
            options,
            replid: sync.replid,
            initial_offset: sync.offset,
            transfer: sync.transfer,
            streaming: false,
            codec: CommandCodec::new(limits),
            offset: sync.offset,
            unattributed: 0,
            shared_offset: Arc::new(AtomicU64::new(sync.offset)),
            ack_now: Arc::new(Notify::new()),
            acker: None,
        })
    }

    /// The master's replication id from `+FULLRESYNC`.
    pub fn replid(&self) -> &str {
        &self.replid
    }

    /// The offset the snapshot corresponds to (from `+FULLRESYNC`).
    pub fn initial_offset(&self) -> u64 {
        self.initial_offset
    }

    /// The replication offset of everything handed out so far: the initial offset plus every
    /// command-stream byte consumed. Equals the master's `master_repl_offset` once caught up.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How the master frames the RDB.
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    /// The snapshot's RDB version, once its header has been read.
    pub fn rdb_version(&self) -> Option<u16> {
        self.rdb.version()
    }

    /// Whether the snapshot is over and [`Self::next_command`] may be called.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// The next item of the snapshot, reading from the socket only when it needs bytes.
    /// The last item is [`Event::Eof`]; by the time it is returned the RDB's framing has been
    /// checked and acks have started. After it, `Ok(None)`.
    pub async fn next_event(&mut self) -> Result<Option<Event>, LinkError> {
        if self.streaming {
            return Ok(None);
        }
        loop {
            if self.buf.len() >= self.rdb.needed_hint() {
                if let Some(event) = self.rdb.next(&mut self.buf)? {
                    self.check_within_transfer(0)?;
                    if matches!(event, Event::Eof { .. }) {
                        self.end_snapshot().await?;
                    }
                    return Ok(Some(event));
                }
                // Fail fast when a sized RDB's next item cannot fit in what is left of it.
                self.check_within_transfer(self.rdb.needed_hint())?;
            }
            self.fill("reading the RDB").await?;
        }
    }

    /// The next command of the replication stream. `REPLCONF GETACK` is handed out like any
    /// command, and also answered with an immediate ack.
    pub async fn next_command(&mut self) -> Result<ReplCommand, LinkError> {
        if !self.streaming {
            return Err(LinkError::SnapshotPending);
        }
        loop {
            self.check_acker().await?;
            let before = self.buf.len();
            let decoded = self.codec.decode(&mut self.buf);
            let used = before - self.buf.len();
            if used > 0 {
                self.unattributed += used;
                self.offset += used as u64;
                if self.options.ack_received {
                    self.shared_offset.store(self.offset, Ordering::Release);
                }
            }
            match decoded {
                Ok(Some(cmd)) => {
                    let is_getack = cmd.len() >= 2
                        && cmd.name().eq_ignore_ascii_case(b"REPLCONF")
                        && cmd.args()[1].eq_ignore_ascii_case(b"GETACK");
                    if is_getack {
                        self.ack_now.notify_one();
                    }
                    return Ok(ReplCommand {
                        args: cmd.args().to_vec(),
                        raw: cmd.raw().clone(),
                        raw_len: std::mem::take(&mut self.unattributed),
                        offset: self.offset,
                    });
                }
                Ok(None) => self.fill("waiting for the replication stream").await?,
                Err(CodecError::Protocol(e)) => return Err(LinkError::Protocol(e.to_string())),
                Err(CodecError::Io(e)) => return Err(e.into()),
            }
        }
    }

    async fn fill(&mut self, what: &'static str) -> Result<(), LinkError> {
        fill(&mut self.read, &mut self.buf, self.options.read_chunk, self.options.read_timeout, what).await
    }

    /// For a `$len` transfer: the reader must not reach past `len` (`ahead` = buffer length
    /// it waits for, measured from what it has consumed).
    fn check_within_transfer(&self, ahead: usize) -> Result<(), LinkError> {
        if let Transfer::Disk { len } = self.transfer {
            let reach = self.rdb.bytes_consumed() + ahead as u64;
            if reach > len {
                return Err(LinkError::Protocol(format!(
                    "the RDB's items run to byte {reach}, past the {len} bytes the master announced"
                )));
            }
        }
        Ok(())
    }

    /// Checks the RDB's end against its framing, then starts the stream and the acks.
    async fn end_snapshot(&mut self) -> Result<(), LinkError> {
        match self.transfer {
            Transfer::Disk { len } => {
                if self.rdb.bytes_consumed() != len {
                    return Err(LinkError::Protocol(format!(
                        "the RDB ended after {} bytes, the master announced {len}",
                        self.rdb.bytes_consumed()
                    )));
                }
            }
            Transfer::Diskless { mark } => {
                while self.buf.len() < EOF_MARK_LEN {
                    self.fill("reading the end of the diskless RDB").await?;
                }
                strip_mark(&mut self.buf, &mark)?;
            }
        }
        self.streaming = true;
        if let Some(write) = self.write.take() {
            let task = ack::run(
                write,
                self.shared_offset.clone(),
                self.ack_now.clone(),
                self.options.ack_interval,
                self.options.read_timeout,
            );
            self.acker = Some(tokio::spawn(task));
        }
        Ok(())
    }

    /// Surfaces a failure of the ack task (a dead connection) on the reading side.
    async fn check_acker(&mut self) -> Result<(), LinkError> {
        let Some(task) = self.acker.take_if(|t| t.is_finished()) else {
            return Ok(());
        };
        match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(LinkError::Protocol("the ack task stopped".into())),
            Err(e) => Err(LinkError::Protocol(format!("the ack task failed: {e}"))),
        }
    }
}
