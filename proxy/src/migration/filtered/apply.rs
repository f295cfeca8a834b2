//! Writes a filtered migration's copy into the destination's node: the snapshot's keys as
//! `RESTORE … ABSTTL REPLACE`, then the stream's units, pipelined on one connection (so in
//! the stream's order) with a bounded number of replies outstanding (a slow destination
//! slows the reading of the stream: back-pressure down to the source node's replica output
//! buffer). It knows how far the destination has *applied* the source's stream: the offset
//! of the last unit whose reply is in, carried forward over the commands nothing was sent for.

use crate::backend::{BackendError, ConnectOptions, PipelinedConn};
use crate::migration::error::{refused, MigrationError};
use crate::state::Shared;
use bytes::{Bytes, BytesMut};
use sluice_common::resp::{encode_command, Protocol};
use sluice_rdb::Entry;
use std::collections::VecDeque;
use tokio::sync::oneshot;

/// Requests outstanding at most (a stream unit, or a batch of `RESTORE`s).
const WINDOW: usize = 256;

type Replies = oneshot::Receiver<Result<Vec<Bytes>, BackendError>>;

/// What was sent and is not answered yet, in order: the stream offset each reaches.
struct Sent {
    offset: u64,
    replies: Replies,
}

pub struct Applier {
    backend: PipelinedConn,
    window: VecDeque<Sent>,
    /// The stream offset up to which everything the destination must run has run.
    applied: u64,
    /// The offset reached by what was read, sent or skipped.
    read: u64,
    /// Keys restored from the snapshot.
    pub restored: u64,
    /// Stream units sent.
    pub units: u64,
    /// Snapshot `RESTORE`s not sent yet: they go in batches (one request, one reply slot).
    batch: BytesMut,
    batch_n: usize,
}

/// A batch of `RESTORE`s is sent once it holds this many, or this many bytes.
const BATCH_KEYS: usize = 128;
const BATCH_BYTES: usize = 256 * 1024;

impl Applier {
    /// A connection to the destination's node; `offset`: where the stream starts (the
    /// snapshot's offset).
    /// Connects to the destination's node, the connection named `name` there
    /// (`sluice-copy-<migration id>`), so a deletion of the copy can cut it off first.
    pub async fn connect(shared: &Shared, node: &str, name: &str, offset: u64) -> Result<Applier, MigrationError> {
        let opts = ConnectOptions {
            protocol: Protocol::Resp2,
            user: shared.opts.node_user.clone(),
            password: shared.opts.node_password.clone(),
            setup: vec![sluice_common::resp::Command::from_strs(&["CLIENT", "SETNAME", name])],
            connect_timeout: shared.opts.connect_timeout(),
            tls: None,
            queue: shared.opts.backend_queue,
        };
        let backend = PipelinedConn::connect(node, &opts).await?;
        Ok(Applier {
            backend,
            window: VecDeque::new(),
            applied: offset,
            read: offset,
            restored: 0,
            units: 0,
            batch: BytesMut::new(),
            batch_n: 0,
        })
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// `RESTORE key ttl payload ABSTTL REPLACE` of a snapshot entry (`rdb_version`: the
    /// snapshot's; source and destination run the same Redis).
    pub async fn restore(&mut self, entry: &Entry, rdb_version: u16) -> Result<(), MigrationError> {
        let ttl = entry.expire_at_ms.unwrap_or(0).max(0).to_string();
        let payload = entry.dump_payload(rdb_version);
        encode_command(
            &[&b"RESTORE"[..], &entry.key, ttl.as_bytes(), &payload, b"ABSTTL", b"REPLACE"],
            &mut self.batch,
        );
        self.restored += 1;
        self.batch_n += 1;
        if self.batch_n >= BATCH_KEYS || self.batch.len() >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the `RESTORE`s batched so far.
    pub async fn flush(&mut self) -> Result<(), MigrationError> {
        if self.batch_n == 0 {
            return Ok(());
        }
        let (data, n) = (self.batch.split().freeze(), std::mem::take(&mut self.batch_n));
        let offset = self.read;
        self.send(data, n, offset).await
    }

    /// A unit of the stream reaching `offset` (after every `RESTORE` batched before it).
    pub async fn unit(&mut self, data: Bytes, commands: usize, offset: u64) -> Result<(), MigrationError> {
        self.flush().await?;
        self.units += 1;
        self.send(data, commands, offset).await
    }

    /// Stream commands up to `offset` that the destination need not run.
    pub fn skip(&mut self, offset: u64) {
        self.read = self.read.max(offset);
        if self.window.is_empty() && self.batch_n == 0 {
            self.applied = self.read;
        }
    }

    async fn send(&mut self, data: Bytes, commands: usize, offset: u64) -> Result<(), MigrationError> {
        while self.window.len() >= WINDOW {
            self.settle_one().await?;
        }
        let replies = self
            .backend
            .send_many(data, commands)
            .await
            .map_err(|_| refused!("the connection to the destination node {} is closed", self.backend.addr()))?;
        self.read = self.read.max(offset);
        self.window.push_back(Sent { offset, replies });
        self.settle_ready()
    }

    /// Takes in every reply already there.
    pub fn settle_ready(&mut self) -> Result<(), MigrationError> {
        while let Some(front) = self.window.front_mut() {
            match front.replies.try_recv() {
                Ok(replies) => {
                    let offset = front.offset;
                    self.window.pop_front();
                    self.took(offset, replies)?;
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => return Err(self.lost()),
            }
        }
        if self.window.is_empty() && self.batch_n == 0 {
            self.applied = self.read;
        }
        Ok(())
    }

    /// Waits for the oldest outstanding reply (nothing when none is outstanding). Cancel-safe:
    /// the entry leaves the window only once its reply is in.
    pub async fn settle_one(&mut self) -> Result<(), MigrationError> {
        let Some(front) = self.window.front_mut() else { return Ok(()) };
        let replies = (&mut front.replies).await;
        let offset = front.offset;
        self.window.pop_front();
        let replies = replies.map_err(|_| self.lost())?;
        self.took(offset, replies)?;
        if self.window.is_empty() && self.batch_n == 0 {
            self.applied = self.read;
        }
        Ok(())
    }

    /// Waits until every reply is in (sending what is batched first).
    pub async fn settle_all(&mut self) -> Result<(), MigrationError> {
        self.flush().await?;
        while !self.window.is_empty() {
            self.settle_one().await?;
        }
        self.applied = self.read;
        Ok(())
    }

    /// A unit's replies. An error reply means the destination diverged from the source (the
    /// stream only carries commands that succeeded there); inside a `MULTI` unit the commands'
    /// own errors are in `EXEC`'s array, as they were on the source, and do not count.
    fn took(&mut self, offset: u64, replies: Result<Vec<Bytes>, BackendError>) -> Result<(), MigrationError> {
        let replies = replies?;
        if let Some(err) = replies.iter().find(|r| r.first() == Some(&b'-')) {
            return Err(refused!(
                "the destination node refused part of the copy: {}",
                String::from_utf8_lossy(err).trim_end()
            ));
        }
        self.applied = self.applied.max(offset);
        Ok(())
    }

    fn lost(&self) -> MigrationError {
        refused!("the connection to the destination node {} broke during the copy", self.backend.addr())
    }
}

/// Whatever is still queued for the destination goes nowhere once the copy is given up: a
/// `RESTORE` written after the copy's deletion would leave a key behind.
impl Drop for Applier {
    fn drop(&mut self) {
        self.backend.close();
    }
}
