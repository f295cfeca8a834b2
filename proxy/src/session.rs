//! One client connection: read commands, route each one, write replies in order.
//!
//! The reading side (this `Session`) decides what to do with every command and queues a
//! [`Pending`] reply for it right away, without waiting for the backend; the writing side
//! (`reply_writer`) resolves the pending replies strictly in the order they were queued.
//! That is how a pipeline keeps its order while its commands are in flight together.
//!
//! Commands normally share the proxy's pooled connection to the node ("shared lane").
//! Blocking commands and `WATCH` need a connection of their own ("private lane"); commands
//! for other proxies travel on connections to them.
//!
//! **Ordering.** Every command of a session reaches a backend through [`Session::send`] (or
//! the batch, which is sent through it too), and that is where the order of a pipeline is
//! kept: commands batched earlier are sent first, and a command for a different connection
//! than the one the session's previous commands took waits until every reply queued so far
//! is in (a *barrier*). A node answers one connection in order but reads two connections in
//! no defined order, so "sent earlier" is only enough on the same connection.

use crate::ack::AckCheck;
use crate::backend::{BackendError, BackendPool, ConnId, OutputBudget, PipelinedConn, ReplyResult};
use crate::command::{flags, CommandSpec};
use crate::metrics::{BatchTally, Metrics, ReplyPath};
use crate::route::Route;
use crate::socket::{ReadHalf, Socket, WriteHalf};
use crate::state::{Routed, Shared};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use sluice_common::resp::{
    scan_command, CodecError, Command, CommandCodec, CommandScan, Frame, Limits, Protocol, ProtocolError,
};
use sluice_common::slot::key_slot;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Decoder;

mod client_state;
pub use client_state::ClientLib;

/// A reply that will be written to the client once it is known, in queue order.
pub enum Pending {
    /// Already encoded.
    Ready(Bytes),
    /// A raw reply from a backend, passed through unchanged.
    Reply(oneshot::Receiver<ReplyResult>),
    /// The raw replies of a batch of commands sent together, passed through unchanged (with
    /// `--ack-replicas`, a `WAIT` reply behind them decides whether the writes' stay).
    Batch(oneshot::Receiver<Result<Vec<Bytes>, BackendError>>, usize, Option<AckCheck>),
    /// The raw replies of a batch handed over one by one as they arrive (no `--ack-replicas`
    /// check): written on as they come, so a batch of large replies is never held whole.
    Stream(mpsc::UnboundedReceiver<ReplyResult>, usize),
    /// Anything that needs work after the backend answered (merges, filters).
    Future(BoxFuture<'static, Bytes>),
    /// Write what is queued, then close the connection (`QUIT`, protocol errors).
    Close,
}

/// The transaction a client has open (`transaction.rs` carries it out).
#[derive(Debug, Default)]
pub enum TxState {
    #[default]
    None,
    /// After `MULTI` without `WATCH`: commands are held here until `EXEC`.
    Queued { commands: Vec<Command>, slot: Option<u16>, dirty: bool },
    /// After `WATCH`: commands go to the private connection.
    Watching { slot: Option<u16>, in_multi: bool, dirty: bool },
}

impl TxState {
    /// Marks an open transaction as doomed (a command in it was refused).
    pub fn mark_dirty(&mut self) {
        match self {
            TxState::Queued { dirty, .. } => *dirty = true,
            TxState::Watching { in_multi: true, dirty, .. } => *dirty = true,
            _ => {}
        }
    }

    pub fn is_watching(&self) -> bool {
        matches!(self, TxState::Watching { .. })
    }

    pub fn in_multi(&self) -> bool {
        matches!(self, TxState::Queued { .. } | TxState::Watching { in_multi: true, .. })
    }
}

/// Replies the writer has resolved, so the reader can wait for its in-flight commands.
pub struct Progress {
    completed: AtomicU64,
    closed: AtomicBool,
    notify: Notify,
    /// When the latest reply was resolved, in milliseconds since `base` (for `--timeout`).
    done_at_ms: AtomicU64,
    base: Instant,
    /// Whether `done_at_ms` is kept: only with `--timeout` (a clock read per reply otherwise).
    timed: bool,
}

impl Progress {
    fn new(timed: bool) -> Progress {
        Progress {
            completed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
            done_at_ms: AtomicU64::new(0),
            base: Instant::now(),
            timed,
        }
    }

    fn complete(&self, n: u64) {
        self.completed.fetch_add(n, Ordering::Release);
        if self.timed {
            self.done_at_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// How long ago the latest reply was resolved.
    fn since_done(&self) -> Duration {
        self.base.elapsed().saturating_sub(Duration::from_millis(self.done_at_ms.load(Ordering::Relaxed)))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Decides what each command of a session does and queues its reply. The layers above
/// the session plug in here (`dispatch` for ordinary commands, `UMCTL` at the top), so this
/// module imports none of them.
pub trait Commands: Send + Sync + 'static {
    fn handle(&self, s: &mut Session, cmd: Command) -> impl std::future::Future<Output = Flow> + Send;
}

/// What the session does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// Which connection a command to the local node travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Shared,
    Private,
}

/// Where a command of a session goes.
pub enum To {
    /// This proxy's node.
    Node(Lane),
    /// Another proxy; `blocking` takes a connection of the session's own, so a blocking
    /// command cannot hold up what other clients forward there.
    Peer { pool: Arc<BackendPool>, blocking: bool },
}

impl To {
    /// The proxy known to clients as `proxy`.
    pub fn peer(shared: &Shared, proxy: &str, blocking: bool) -> To {
        To::Peer { pool: shared.peer_pool(proxy), blocking }
    }
}

/// Most commands read ahead while waiting at a lane switch (to notice a client that leaves).
const MAX_BACKLOG: usize = 1024;

/// A batch of pass-through commands is sent once it holds this many bytes or commands.
const MAX_BATCH_BYTES: usize = 64 * 1024;
const MAX_BATCH_COMMANDS: usize = 256;

/// One client connection's state. Its fields are private: what the command modules may
/// change (protocol, credentials, name, transaction) goes through methods that keep the
/// connections in step with it (a new protocol or user takes new node connections).
pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    addr: Option<SocketAddr>,
    local_addr: Option<SocketAddr>,
    created: Instant,
    protocol: Protocol,
    authenticated: bool,
    /// The node's ACL user this client authenticated as (`users.rs`): its commands go to the
    /// node on that user's connections. `None`: the default user, the proxy's connections.
    user: Option<crate::users::User>,
    name: Option<Bytes>,
    /// `CLIENT SETINFO lib-name|lib-ver` (Redis 7.2), shown by `CLIENT INFO`.
    lib: ClientLib,
    /// `READONLY` was sent: reads of a replica's master's slots are served by the replica.
    readonly: bool,
    /// This connection comes from another proxy forwarding to us: never forward again.
    is_peer: bool,
    tx: TxState,
    reader: ClientInput,
    backlog: VecDeque<Result<Command, CodecError>>,
    /// Each reply with what it keeps alive and when it was queued (for the latency metrics).
    replies: mpsc::Sender<(Pending, Guards, Instant)>,
    progress: Arc<Progress>,
    dispatched: u64,
    /// The connection this session's latest commands were sent on (see the module doc).
    last_conn: Option<ConnId>,
    node: Option<PipelinedConn>,
    private: Option<PipelinedConn>,
    /// A connection of this session's own to another proxy (for forwarded blocking commands).
    private_peer: Option<(String, PipelinedConn)>,
    /// The private connection that held this session's WATCH broke.
    private_lost: bool,
    /// The client disconnected while the session waited at a lane switch.
    client_gone: bool,
    /// Pass-through commands for the shared lane, not sent yet: everything the client
    /// pipelined is sent as one request with one reply slot (see [`Session::flush_batch`]).
    batch: BytesMut,
    /// A batch of one command is that command's own bytes, sent as they came from the client:
    /// a client waiting for each reply (no pipeline) costs no copy and no buffer. A second
    /// command moves them into `batch`.
    batch_first: Option<Bytes>,
    batch_len: usize,
    /// Most commands in this batch: [`MAX_BATCH_COMMANDS`], fewer when the client's replies
    /// are large ([`OutputBudget::batch_room`]).
    batch_cap: usize,
    /// Commands on migrating slots in the batch (see [`InFlight`]).
    batch_inflight: usize,
    /// The positions of the batch's writes (for `--ack-replicas`).
    batch_writes: Vec<u16>,
    /// Commands on migrating slots counted but not yet tied to a queued reply.
    unattributed: usize,
    /// The route table the command being handled was routed to our node with (see
    /// [`Routed`]), until it is tied to a queued reply or joins the batch.
    routed: Option<Routed>,
    /// The batch's: its first command's, the oldest table of the batch.
    batch_routed: Option<Routed>,
    /// What this client's replies may hold in the proxy (`--client-output-buffer-limit`).
    budget: Arc<OutputBudget>,
    /// Resolves when the session must stop reading (the proxy shuts down, or the client's
    /// replies passed its output limit): one wait for the session's life, not one per read.
    stopping: Pin<Box<dyn Future<Output = Stop> + Send>>,
}

/// What a queued reply keeps alive until it is in.
#[derive(Default)]
pub struct Guards {
    _inflight: Option<InFlight>,
    _routed: Option<Routed>,
}

/// Counts commands on migrating slots between the moment they are routed to this proxy's
/// node and the moment their reply is in: a switch waits until none is left, so the offset
/// it reads covers them all. Released when the reply has been taken by the writer.
pub struct InFlight {
    shared: Arc<Shared>,
    n: usize,
}

/// Commands counted in flight ([`Session::enter_migrating`]) but not yet tied to a queued
/// reply are released when the session ends without queueing one (the client left, the
/// proxy shut down): a count left behind would hold every later switch of this proxy.
impl Drop for Session {
    fn drop(&mut self) {
        let n = self.unattributed + self.batch_inflight;
        if n > 0 {
            drop(InFlight { shared: self.shared.clone(), n });
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.shared.inflight.fetch_sub(self.n, Ordering::SeqCst) == self.n {
            self.shared.inflight_zero.notify_waiters();
        }
    }
}

/// Serves one client until it leaves; `commands` decides what each command does.
/// `addr` and `local_addr` are the TCP connection's (read before a TLS handshake).
pub async fn serve<C: Commands>(
    stream: Socket,
    addr: Option<SocketAddr>,
    local_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    commands: Arc<C>,
    slot: ClientSlot,
) {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(shared.opts.pipeline_depth.max(1));
    let progress = Arc::new(Progress::new(shared.opts.timeout > 0));
    let budget = Arc::new(OutputBudget::new(shared.opts.client_output_buffer_limit));
    let id = shared.next_client_id();
    tracing::Span::current().record("id", id);
    let writer = tokio::spawn(reply_writer(wr, rx, progress.clone(), shared.clone(), budget.clone(), (id, addr)));
    let limits = Limits { max_bulk_len: shared.opts.max_bulk_len, ..Limits::CLIENT };
    let authenticated = shared.opts.requirepass.is_none();
    let (shutdown, exceeded) = (shared.shutdown.clone(), budget.exceeded().clone());
    let stopping = Box::pin(async move {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Stop::Shutdown,
            _ = exceeded.cancelled() => Stop::OutputLimit,
        }
    });
    let mut session = Session {
        shared: shared.clone(),
        id,
        addr,
        local_addr,
        created: Instant::now(),
        protocol: Protocol::Resp2,
        authenticated,
        user: None,
        name: None,
        lib: ClientLib::default(),
        readonly: false,
        is_peer: false,
        tx: TxState::default(),
        reader: ClientInput {
            rd,
            buf: BytesMut::with_capacity(16 * 1024),
            codec: CommandCodec::new(limits),
            limits,
            scan: Vec::new(),
            done: false,
            read: 0,
            max_buffered: shared.opts.client_query_buffer_limit,
        },
        backlog: VecDeque::new(),
        replies: tx,
        progress,
        dispatched: 0,
        last_conn: None,
        node: None,
        private: None,
        private_peer: None,
        private_lost: false,
        client_gone: false,
        batch: BytesMut::new(),
        batch_first: None,
        batch_len: 0,
        batch_cap: MAX_BATCH_COMMANDS,
        batch_inflight: 0,
        batch_writes: Vec::new(),
        unattributed: 0,
        routed: None,
        batch_routed: None,
        budget,
        stopping,
    };
    session.run(&*commands).await;
    drop(session);
    let _ = writer.await;
    drop(slot);
}

/// Takes a client's place among `--maxclients`; `None` when every place is taken (then
/// [`refuse`] the client).
pub fn admit(shared: &Arc<Shared>) -> Option<ClientSlot> {
    let max = shared.opts.maxclients;
    shared
        .connected_clients
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
        .is_ok()
        .then(|| ClientSlot(shared.clone()))
}

/// Answers a client past `--maxclients` as Redis does and closes it: the connection is
/// dropped right away, so refused clients cost nothing beyond this.
pub async fn refuse(stream: Socket) {
    let (_, mut wr) = stream.into_split();
    let _ = write_and_flush(&mut wr, b"-ERR max number of clients reached\r\n").await;
    let _ = wr.shutdown().await;
}

/// Writes `buf` and flushes: TLS may hold records until then (a no-op on plain TCP).
async fn write_and_flush(wr: &mut WriteHalf, buf: &[u8]) -> std::io::Result<()> {
    wr.write_all(buf).await?;
    wr.flush().await
}

/// A client's place among `--maxclients`, given back when its session ends.
pub struct ClientSlot(Arc<Shared>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.connected_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a session stops reading its client, other than the client leaving.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// `--timeout`: nothing read and nothing outstanding for that long.
    Idle,
    /// The proxy is shutting down (SIGTERM).
    Shutdown,
    /// The client's replies passed `--client-output-buffer-limit` (the writer logs it).
    OutputLimit,
}

impl Session {
    async fn run<C: Commands>(&mut self, commands: &C) {
        while !self.client_gone {
            // Whatever the client already sent is handled before anything is sent on, so a
            // pipeline travels to the node as one batch.
            loop {
                if self.take_plain() {
                    if self.batch_is_full() && self.flush_batch().await == Flow::Close {
                        return;
                    }
                    continue;
                }
                let Some(item) = self.buffered() else { break };
                if self.step(Some(item), commands).await == Flow::Close {
                    self.flush_batch().await;
                    return;
                }
            }
            if self.client_gone || self.flush_batch().await == Flow::Close {
                break;
            }
            match self.more_or_stop().await {
                Ok(None) => self.shared.metrics.bytes_in(std::mem::take(&mut self.reader.read)),
                Ok(Some(end)) => {
                    // The end of input (or a read error): what was read before it is handled.
                    if self.step(end, commands).await == Flow::Close {
                        break;
                    }
                }
                Err(why) => {
                    self.stop(why).await;
                    return;
                }
            }
        }
        self.flush_batch().await;
    }

    /// More input from the client, unless the session must stop first: idle past
    /// `--timeout` (a client waiting for a reply, e.g. a blocked `BLPOP`, is not idle), the
    /// proxy shutting down, or the client's output limit passed.
    ///
    /// `Ok(None)`: more bytes were read; `Ok(Some(end))`: nothing more will come, `end` says
    /// how the input ended (`None`: closed; an I/O error).
    async fn more_or_stop(&mut self) -> Result<Option<Option<Result<Command, CodecError>>>, Stop> {
        let idle = Duration::from_secs(self.shared.opts.timeout);
        let started = Instant::now();
        let mut wait = idle;
        loop {
            let timer = async {
                if wait.is_zero() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(wait).await;
            };
            // A stop first: a client that never pauses still sees the proxy shut down.
            tokio::select! {
                biased;
                why = &mut self.stopping => return Err(why),
                more = self.reader.read_more() => return Ok(more),
                _ = timer => {
                    if self.is_peer || self.progress.completed.load(Ordering::Acquire) < self.dispatched {
                        // Waiting for a reply (blocked): not idle; look again a timeout later.
                        wait = idle;
                        continue;
                    }
                    // Quiet since the last command read and the last reply written.
                    let quiet = self.progress.since_done().min(started.elapsed());
                    if quiet >= idle {
                        return Err(Stop::Idle);
                    }
                    wait = idle - quiet;
                }
            }
        }
    }

    /// Ends the session for `why`: whatever is queued is still answered (and, on shutdown,
    /// the batch still sent), then the connection is closed.
    async fn stop(&mut self, why: Stop) {
        match why {
            Stop::Idle => {
                tracing::info!(client = self.id, addr = ?self.addr, timeout_secs = self.shared.opts.timeout, "closing an idle client (--timeout)")
            }
            Stop::Shutdown => tracing::debug!(client = self.id, "closing a client: the proxy is shutting down"),
            Stop::OutputLimit => return,
        }
        if self.flush_batch().await == Flow::Continue {
            let _ = self.enqueue(Pending::Close, 0).await;
        }
    }

    /// The next command already read from the client, without reading more.
    fn buffered(&mut self) -> Option<Result<Command, CodecError>> {
        match self.backlog.pop_front() {
            Some(item) => Some(item),
            None => self.reader.decode_buffered(),
        }
    }

    async fn step<C: Commands>(&mut self, next: Option<Result<Command, CodecError>>, commands: &C) -> Flow {
        match next {
            None => Flow::Close,
            Some(Ok(cmd)) => commands.handle(self, cmd).await,
            Some(Err(CodecError::Protocol(e))) => {
                // Like Redis: say what was wrong, then close the connection.
                tracing::debug!(client = self.id, error = %e, "protocol error from client");
                let _ = self.reply(Frame::error(format!("ERR {e}"))).await;
                let _ = self.push(Pending::Close).await;
                Flow::Close
            }
            Some(Err(CodecError::Io(_))) => Flow::Close,
        }
    }

    /// An error reply for a rejected command; inside a transaction it also dooms the
    /// transaction (Redis answers `EXECABORT` at `EXEC`).
    pub async fn reply_error_in_tx(&mut self, err: Frame) -> Flow {
        self.tx.mark_dirty();
        self.reply(err).await
    }

    /// Queues a reply the proxy computed itself.
    pub async fn reply(&mut self, frame: Frame) -> Flow {
        let bytes = frame.to_bytes(self.protocol);
        self.push(Pending::Ready(bytes)).await
    }

    /// Queues a pending reply; `Close` if the client is gone. A batch of commands queued
    /// before it goes first, so replies keep their order.
    pub async fn push(&mut self, pending: Pending) -> Flow {
        if self.flush_batch().await == Flow::Close {
            return Flow::Close;
        }
        self.enqueue(pending, 1).await
    }

    async fn enqueue(&mut self, pending: Pending, replies: u64) -> Flow {
        let n = std::mem::take(&mut self.unattributed);
        self.enqueue_counted(pending, replies, n).await
    }

    async fn enqueue_counted(&mut self, pending: Pending, replies: u64, inflight: usize) -> Flow {
        let routed = self.routed.take();
        self.enqueue_guarded(pending, replies, inflight, routed).await
    }

    async fn enqueue_guarded(
        &mut self,
        pending: Pending,
        replies: u64,
        inflight: usize,
        routed: Option<Routed>,
    ) -> Flow {
        self.dispatched += replies;
        let guards = Guards {
            _inflight: (inflight > 0).then(|| InFlight { shared: self.shared.clone(), n: inflight }),
            _routed: routed,
        };
        match self.replies.send((pending, guards, Instant::now())).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// Sends raw command bytes to this proxy's node on `lane` and queues the reply. On the
    /// shared lane the command joins the batch, sent when the client's input is drained.
    /// `write`: the command may change data, so with `--ack-replicas` its reply waits for
    /// replicas (never for a command queued inside a `MULTI` on the node: `EXEC` waits).
    pub async fn send_to_node(&mut self, lane: Lane, data: Bytes, write: bool) -> Flow {
        if lane == Lane::Shared && !self.client_gone {
            let routed = self.routed.take();
            if self.batch_routed.is_none() {
                self.batch_routed = routed;
            }
            if write {
                self.batch_writes.push(self.batch_len as u16);
            }
            self.join_batch(data, 1);
            self.batch_inflight += std::mem::take(&mut self.unattributed);
            if self.batch_is_full() {
                return self.flush_batch().await;
            }
            return Flow::Continue;
        }
        let ack = self.ack_check(write.then(|| vec![0]));
        let Some(ack) = ack else {
            return match self.send_counted(&To::Node(lane), data).await {
                Ok(rx) => self.push(Pending::Reply(rx)).await,
                Err(e) => self.reply(e.to_frame()).await,
            };
        };
        let mut both = BytesMut::from(&data[..]);
        both.extend_from_slice(&ack.wait_command());
        self.flush().await;
        let budget = Some(self.budget.clone());
        let sent = self
            .send_in_order(&To::Node(lane), both.freeze(), |b, d| {
                let budget = budget.clone();
                async move { b.send_many_for(d, 2, budget).await }
            })
            .await;
        match sent {
            Ok(rx) => self.push(Pending::Batch(rx, 1, Some(ack))).await,
            Err(e) => self.reply(e.to_frame()).await,
        }
    }

    /// Adds `n` commands (`data`, written back to back) to the batch (the caller noted the
    /// places of those that may write in `batch_writes`).
    fn join_batch(&mut self, data: Bytes, n: usize) {
        if self.batch_len == 0 {
            self.batch_cap = self.budget.batch_room().min(MAX_BATCH_COMMANDS);
            self.batch_first = Some(data);
        } else {
            if let Some(first) = self.batch_first.take() {
                self.batch.extend_from_slice(&first);
            }
            self.batch.extend_from_slice(&data);
        }
        self.batch_len += n;
    }

    /// Room left in the batch: (commands, bytes). A new batch takes its size from the
    /// client's output budget when its first command joins ([`OutputBudget::batch_room`]).
    fn batch_room(&self) -> (usize, usize) {
        let cap = match self.batch_len {
            0 => self.budget.batch_room().min(MAX_BATCH_COMMANDS),
            _ => self.batch_cap,
        };
        let bytes = self.batch.len() + self.batch_first.as_ref().map_or(0, Bytes::len);
        (cap.saturating_sub(self.batch_len), MAX_BATCH_BYTES.saturating_sub(bytes))
    }

    fn batch_is_full(&self) -> bool {
        let (commands, bytes) = self.batch_room();
        self.batch_len > 0 && (commands == 0 || bytes == 0)
    }

    /// Moves the plain commands at the head of the client's input into the batch, as the
    /// client's own bytes: commands with one key whose slot is served here and not migrating,
    /// from a client in its plain state (authenticated, no transaction, not `READONLY`).
    /// They are neither decoded into a [`Command`] nor dispatched: that is what the full way
    /// ([`Commands::handle`]) would do with them, and it is most of any workload. Stops at
    /// the first command that is not plain (or not complete); `false` if none was taken.
    fn take_plain(&mut self) -> bool {
        if !self.backlog.is_empty() || self.client_gone || !self.authenticated || self.readonly {
            return false;
        }
        if !matches!(self.tx, TxState::None) || self.routed.is_some() || self.unattributed > 0 {
            return false;
        }
        let routes = self.shared.routes();
        let noted_here = self.batch_routed.is_none();
        if noted_here {
            // As `keyed::plan_counted` does: the batch is noted with the table its commands
            // are routed with, and that table is still current once noted.
            self.batch_routed = Some(Routed::new(&routes));
            if !Arc::ptr_eq(&routes, &self.shared.routes()) {
                self.batch_routed = None;
                return false;
            }
        }
        let (room, room_bytes) = self.batch_room();
        let input = &mut self.reader;
        let (mut len, mut n) = (0, 0);
        while n < room {
            let rest = &input.buf[len..];
            let size = match scan_command(rest, &input.limits, &mut input.scan) {
                Ok(CommandScan::Multibulk { len }) => len,
                _ => break,
            };
            if size > input.max_buffered || (n > 0 && len + size > room_bytes) {
                break;
            }
            let arg = |i: usize| input.scan.get(i).map(|&(s, e)| &rest[s..e]);
            let (Some(name), Some(key)) = (arg(0), arg(1)) else { break };
            let Some(spec) = crate::command::plain(name, input.scan.len()) else { break };
            let slot = key_slot(key);
            if !matches!(routes.route_for(slot, self.is_peer), Route::Local) || routes.is_migrating(slot) {
                break;
            }
            self.shared.metrics.command(Some(spec));
            if spec.may_write() {
                self.batch_writes.push((self.batch_len + n) as u16);
            }
            len += size;
            n += 1;
        }
        if n == 0 {
            if noted_here {
                self.batch_routed = None;
            }
            return false;
        }
        let data = self.reader.buf.split_to(len).freeze();
        self.join_batch(data, n);
        true
    }

    /// What `--ack-replicas` asks of a request whose writes are at `writes` (none: nothing).
    pub fn ack_check(&self, writes: Option<Vec<u16>>) -> Option<AckCheck> {
        let writes = writes.filter(|w| !w.is_empty())?;
        let need = self.shared.ack_replicas();
        (need > 0).then(|| AckCheck { need, timeout_ms: self.shared.opts.ack_timeout_ms, writes })
    }

    /// Sends what is batched now (before waiting for something).
    pub async fn flush(&mut self) {
        if self.flush_batch().await == Flow::Close {
            self.client_gone = true;
        }
    }

    /// Sends the batched commands as one request; their replies come back together.
    async fn flush_batch(&mut self) -> Flow {
        if self.batch_len == 0 {
            return Flow::Continue;
        }
        let n = std::mem::take(&mut self.batch_len);
        let inflight = std::mem::take(&mut self.batch_inflight);
        let routed = self.batch_routed.take();
        // Kept (with its buffer) unless `--ack-replicas` needs it.
        let writes = if self.shared.ack_replicas() > 0 {
            std::mem::take(&mut self.batch_writes)
        } else {
            self.batch_writes.clear();
            Vec::new()
        };
        let ack = self.ack_check(Some(writes));
        let data = match (self.batch_first.take(), &ack) {
            (Some(only), None) => only,
            (first, ack) => {
                if let Some(first) = first {
                    self.batch.extend_from_slice(&first);
                }
                if let Some(ack) = ack {
                    self.batch.extend_from_slice(&ack.wait_command());
                }
                self.batch.split().freeze()
            }
        };
        let sent_n = n + usize::from(ack.is_some());
        let budget = Some(self.budget.clone());
        // One reply (or a `WAIT` that decides them all): nothing to gain from streaming, and
        // a oneshot is cheaper than a channel.
        let sent = if ack.is_some() || n == 1 {
            self.send_in_order(&To::Node(Lane::Shared), data, |b, d| {
                let budget = budget.clone();
                async move { b.send_many_for(d, sent_n, budget).await }
            })
            .await
            .map(|rx| Pending::Batch(rx, n, ack))
        } else {
            self.send_in_order(&To::Node(Lane::Shared), data, |b, d| {
                let budget = budget.clone();
                async move { b.send_stream_for(d, n, budget).await }
            })
            .await
            .map(|rx| Pending::Stream(rx, n))
        };
        let pending = match sent {
            Ok(pending) => pending,
            Err(e) => {
                let err = e.to_frame().to_bytes(self.protocol);
                let mut all = BytesMut::with_capacity(err.len() * n);
                for _ in 0..n {
                    all.extend_from_slice(&err);
                }
                Pending::Ready(all.freeze())
            }
        };
        self.enqueue_guarded(pending, n as u64, inflight, routed).await
    }

    /// Notes that the command being handled was routed to our node with `table` (see
    /// [`Routed`]); its queued reply (or the batch it joins) keeps that counted.
    pub fn routed_with(&mut self, table: &crate::route::RouteTable) {
        self.routed = Some(Routed::new(table));
    }

    pub fn forget_routed(&mut self) {
        self.routed = None;
    }

    /// Counts a command on a migrating slot as in flight, then checks again that the slots
    /// are still served here: a switch that held them in between waits for this command, or
    /// this command sees the hold. `false` (nothing counted) when the table changed.
    pub fn enter_migrating(&mut self, slots: &[u16]) -> bool {
        self.shared.inflight.fetch_add(1, Ordering::SeqCst);
        let routes = self.shared.routes();
        if slots.iter().all(|&s| matches!(routes.route(s), crate::route::Route::Local)) {
            self.unattributed += 1;
            true
        } else {
            drop(InFlight { shared: self.shared.clone(), n: 1 });
            false
        }
    }

    /// Sends one command to `to`; the receiver yields its reply. The caller queues a
    /// [`Pending`] for it (or awaits it) before the session reads on.
    ///
    /// This and the batch are the only ways a session's commands reach a backend, so this is
    /// where the order of a pipeline is kept (see the module doc).
    pub async fn send(&mut self, to: &To, data: Bytes) -> Result<oneshot::Receiver<ReplyResult>, BackendError> {
        self.flush().await;
        self.send_in_order(to, data, |b, d| async move { b.send(d).await }).await
    }

    /// [`Session::send`] for a reply queued as it comes ([`Pending::Reply`]): it counts
    /// against the client's `--client-output-buffer-limit` from its arrival on.
    pub async fn send_counted(&mut self, to: &To, data: Bytes) -> Result<oneshot::Receiver<ReplyResult>, BackendError> {
        self.flush().await;
        let budget = Some(self.budget.clone());
        self.send_in_order(to, data, |b, d| {
            let budget = budget.clone();
            async move { b.send_for(d, budget).await }
        })
        .await
    }

    /// Sends `n` commands written back to back (a `MULTI … EXEC` unit) to `to`; all their
    /// replies come back together. Ordered like [`Session::send`].
    pub async fn send_many(
        &mut self,
        to: &To,
        data: Bytes,
        n: usize,
    ) -> Result<oneshot::Receiver<Result<Vec<Bytes>, BackendError>>, BackendError> {
        self.flush().await;
        self.send_in_order(to, data, |b, d| async move { b.send_many(d, n).await }).await
    }

    /// Sends raw command bytes to this proxy's node and queues the reply `present` makes of
    /// the node's raw answer once it is in (`INFO`, `CONFIG GET`, `SCAN`: answers the proxy
    /// adjusts). A node that cannot be reached gives the usual error reply.
    pub async fn send_and_present(
        &mut self,
        data: Bytes,
        present: impl FnOnce(Bytes) -> Bytes + Send + 'static,
    ) -> Flow {
        let rx = match self.send(&To::Node(Lane::Shared), data).await {
            Ok(rx) => rx,
            Err(e) => return self.reply(e.to_frame()).await,
        };
        let protocol = self.protocol;
        let fut = async move {
            match rx.await {
                Ok(Ok(raw)) => present(raw),
                Ok(Err(e)) => error_bytes(&e, protocol),
                Err(_) => Frame::error("ERR sluice: reply lost").to_bytes(protocol),
            }
        };
        self.push(Pending::Future(Box::pin(fut))).await
    }

    /// For a reply that does its I/O on a connection of its own when the writer reaches it,
    /// i.e. after every earlier reply is in: commands read after it wait until it is done.
    pub async fn own_connection(&mut self) {
        self.flush().await;
        self.last_conn = Some(ConnId::next());
    }

    /// Sends on the connection for `to` once the order allows: a different connection than
    /// the previous commands' first waits for all their replies.
    async fn send_in_order<R, F>(
        &mut self,
        to: &To,
        data: Bytes,
        send: impl Fn(PipelinedConn, Bytes) -> F,
    ) -> Result<R, BackendError>
    where
        F: std::future::Future<Output = Result<R, Bytes>>,
    {
        if !self.budget.may_send() {
            self.output_room().await;
        }
        let mut data = data;
        for _ in 0..2 {
            let backend = self.backend_for(to).await?;
            if self.last_conn != Some(backend.id()) {
                self.barrier().await;
                self.last_conn = Some(backend.id());
            }
            if self.client_gone {
                break;
            }
            match send(backend, data).await {
                Ok(r) => return Ok(r),
                Err(back) => {
                    // Closed before anything was sent: safe to use a fresh connection.
                    data = back;
                    self.forget(to);
                }
            }
        }
        let addr = match to {
            To::Node(_) => self.shared.node.addr(),
            To::Peer { pool, .. } => pool.addr(),
        };
        Err(BackendError::Lost { addr: Arc::from(addr) })
    }

    async fn backend_for(&mut self, to: &To) -> Result<PipelinedConn, BackendError> {
        match to {
            To::Node(Lane::Shared) => self.shared_backend().await,
            To::Node(Lane::Private) => self.private_backend().await,
            To::Peer { pool, blocking: true } => self.private_peer(pool).await,
            To::Peer { pool, blocking: false } => pool.get(self.protocol, self.id).await,
        }
    }

    /// Forgets a connection found closed.
    fn forget(&mut self, to: &To) {
        match to {
            To::Node(Lane::Shared) => self.node = None,
            To::Node(Lane::Private) => self.drop_private(),
            To::Peer { blocking: true, .. } => self.private_peer = None,
            To::Peer { blocking: false, .. } => {}
        }
    }

    /// The node connections this client's commands take: its ACL user's, else the proxy's.
    fn node_pool(&self) -> &BackendPool {
        self.user.as_ref().map_or(&self.shared.node, |u| &u.pool)
    }

    async fn shared_backend(&mut self) -> Result<PipelinedConn, BackendError> {
        if let Some(b) = &self.node {
            if !b.is_closed() {
                return Ok(b.clone());
            }
        }
        let b = self.node_pool().get(self.protocol, self.id).await?;
        self.node = Some(b.clone());
        Ok(b)
    }

    async fn private_backend(&mut self) -> Result<PipelinedConn, BackendError> {
        if let Some(b) = &self.private {
            if !b.is_closed() {
                return Ok(b.clone());
            }
            // The connection that held WATCH state is gone; a new one would not hold it.
            self.drop_private();
        }
        if self.private_lost {
            return Err(BackendError::Lost { addr: Arc::from(self.shared.node.addr()) });
        }
        let b = self.node_pool().private(self.protocol).await?;
        self.private = Some(b.clone());
        Ok(b)
    }

    /// Forgets the private connection. If a transaction depended on it (WATCH), the
    /// transaction can no longer be trusted and fails instead of running unwatched.
    pub fn drop_private(&mut self) {
        self.private = None;
        if self.tx.is_watching() {
            self.private_lost = true;
        }
    }

    /// This session's own connection to the proxy of `pool` (for blocking commands).
    async fn private_peer(&mut self, pool: &BackendPool) -> Result<PipelinedConn, BackendError> {
        if let Some((addr, b)) = &self.private_peer {
            if addr == pool.addr() && !b.is_closed() {
                return Ok(b.clone());
            }
        }
        let b = pool.private(self.protocol).await?;
        self.private_peer = Some((pool.addr().to_string(), b.clone()));
        Ok(b)
    }

    /// Before a fresh `WATCH`: a broken private connection from earlier may be replaced.
    pub fn prepare_private_for_watch(&mut self) {
        if self.private.as_ref().is_some_and(PipelinedConn::is_closed) {
            self.private = None;
        }
        self.private_lost = false;
    }

    /// Drops the connection handles so the next command picks ones for the new protocol.
    /// Replies still due on the old ones are waited for by the next send (another connection).
    pub fn reset_backends(&mut self) {
        self.node = None;
        self.private = None;
        self.private_lost = false;
    }

    /// Waits until every reply queued so far has come in. Meanwhile keeps reading from the
    /// client (into a backlog), so a client that disconnects while, say, `BLPOP key 0`
    /// blocks is noticed and its private connection closed.
    async fn barrier(&mut self) {
        loop {
            if self.client_gone
                || self.progress.completed.load(Ordering::Acquire) >= self.dispatched
                || self.progress.closed.load(Ordering::Acquire)
            {
                return;
            }
            let notified = self.progress.notify.notified();
            tokio::select! {
                _ = notified => {}
                _ = self.budget.exceeded().cancelled() => {
                    self.client_gone = true;
                    return;
                }
                next = self.reader.next(), if self.backlog.len() < MAX_BACKLOG => match next {
                    Some(item) => self.backlog.push_back(item),
                    None => {
                        // The client left: nobody waits for these replies any more.
                        self.private = None;
                        self.client_gone = true;
                        return;
                    }
                },
            }
        }
    }

    /// Back-pressure at the source: while the client's replies held in the proxy are over its
    /// output limit, or those still due would take them there ([`OutputBudget::may_send`]),
    /// nothing more of it is sent, so what the proxy holds for it stays bounded by what it had
    /// already sent. Only this client waits (never a backend reader); it reads ahead meanwhile
    /// (like [`Session::barrier`]). The wait ends when the client read enough, or when it is
    /// cut off (past its hard limit, or above its soft limit too long).
    async fn output_room(&mut self) {
        let budget = self.budget.clone();
        let room = budget.room();
        tokio::pin!(room);
        let mut eof = false;
        loop {
            tokio::select! {
                _ = &mut room => break,
                next = self.reader.next(), if !eof && self.backlog.len() < MAX_BACKLOG => match next {
                    Some(item) => self.backlog.push_back(item),
                    // The client may still read what it asked for: wait on.
                    None => eof = true,
                },
            }
        }
        if budget.is_exceeded() {
            self.client_gone = true;
        }
    }

    /// The client's protocol-specific encoding of a frame.
    pub fn encode(&self, frame: &Frame) -> Bytes {
        frame.to_bytes(self.protocol)
    }

    /// This connection comes from another proxy (`UMCTL PEER`): never forwarded again, never
    /// closed as idle (a pooled connection may rest between commands), and not bound by
    /// `--client-output-buffer-limit` (that proxy reads its replies at once; each of its
    /// clients is bounded there).
    pub fn mark_peer(&mut self) {
        self.is_peer = true;
        self.budget.unlimit();
    }

    /// Whether commands for other proxies' slots are forwarded (never for peer connections,
    /// nor for an ACL user's: the peer would run them as itself, not as that user).
    pub fn forwards(&self) -> bool {
        !self.is_peer && self.user.is_none() && self.shared.opts.redirect == crate::options::Redirect::Forward
    }
}

/// The client's side of the connection: its socket and what was read but not decoded yet.
struct ClientInput {
    rd: ReadHalf,
    buf: BytesMut,
    codec: CommandCodec,
    /// The codec's limits, for scanning plain commands in `buf` (see `Session::take_plain`).
    limits: Limits,
    /// Argument positions of the command scanned last; reused between commands.
    scan: Vec<(usize, usize)>,
    /// End of input or an error was reported: nothing more will come.
    done: bool,
    /// Bytes read since the session last counted them in the metrics.
    read: usize,
    /// `--client-query-buffer-limit`: most bytes read and not yet parsed.
    max_buffered: usize,
}

impl ClientInput {
    /// The next command, reading from the socket as needed; `None` at the end of input.
    /// Cancel-safe: an interrupted read loses nothing.
    async fn next(&mut self) -> Option<Result<Command, CodecError>> {
        loop {
            if let Some(item) = self.decode_buffered() {
                return Some(item);
            }
            if let Some(end) = self.read_more().await {
                return end;
            }
        }
    }

    /// Reads more from the socket. `None` once something was read; `Some(end)` when nothing
    /// more will come: `end` is `None` at the end of input, or the read error. Cancel-safe.
    async fn read_more(&mut self) -> Option<Option<Result<Command, CodecError>>> {
        if self.done {
            return Some(None);
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.rd.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.done = true;
                Some(None)
            }
            Ok(n) => {
                self.read += n;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Some(Err(CodecError::Io(e))))
            }
        }
    }

    /// `--client-query-buffer-limit` passed by `len` bytes read and not yet run: like Redis,
    /// the client is closed (after an error reply), with a line in the log saying why.
    fn too_long(&mut self, len: usize) -> CodecError {
        tracing::warn!(
            buffered = len,
            limit = self.max_buffered,
            "closing a client: its query buffer passed --client-query-buffer-limit"
        );
        self.done = true;
        self.buf.clear();
        CodecError::Protocol(ProtocolError("query buffer limit exceeded (--client-query-buffer-limit)".into()))
    }

    /// The next command among the bytes already read, if there is a complete one.
    fn decode_buffered(&mut self) -> Option<Result<Command, CodecError>> {
        if self.done && self.buf.is_empty() {
            return None;
        }
        match self.codec.decode(&mut self.buf) {
            Ok(Some(cmd)) if cmd.raw().len() <= self.max_buffered => Some(Ok(cmd)),
            Ok(Some(cmd)) => Some(Err(self.too_long(cmd.raw().len()))),
            Ok(None) if self.buf.len() > self.max_buffered => Some(Err(self.too_long(self.buf.len()))),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                self.buf.clear();
                Some(Err(e))
            }
        }
    }
}

/// The client's side of the output: its socket, what is gathered for the next write, and how
/// much of that counts against the client's output budget.
struct ClientOutput {
    wr: WriteHalf,
    out: BytesMut,
    /// Bytes in `out` charged to the budget, released once written.
    held: usize,
    budget: Arc<OutputBudget>,
}

/// What is gathered is written once it holds this much; a larger reply is written on its own.
const FLUSH_AT: usize = 64 * 1024;

/// The writer stops: the client is gone, or was cut off at its output limit.
struct Gone;

/// A reply resolved by the writer, to be passed on to the client.
struct Resolved {
    bytes: Bytes,
    /// Bytes of `bytes` already charged to the budget (by the backend's reader).
    charged: usize,
    replies: u64,
    path: ReplyPath,
}

impl Resolved {
    /// Replies the writer gathered already as it resolved them (a batch's).
    fn gathered(n: usize) -> Resolved {
        Resolved { bytes: Bytes::new(), charged: 0, replies: n as u64, path: ReplyPath::Batch }
    }
}

impl ClientOutput {
    /// Writes `buf`; `false` if the client is gone or was cut off meanwhile: a client that does
    /// not read would otherwise keep the write waiting for ever, so a write blocked while
    /// the client stays above its soft limit too long cuts it off too.
    async fn write_all(&mut self, direct: Option<&[u8]>) -> bool {
        if self.budget.is_exceeded() {
            return false;
        }
        let buf = direct.unwrap_or(&self.out);
        // The write first: when the socket takes it at once (nearly always), the waits for a
        // cut-off are never polled, so they cost no registration.
        tokio::select! {
            biased;
            r = write_and_flush(&mut self.wr, buf) => r.is_ok(),
            _ = self.budget.exceeded().cancelled() => false,
            _ = self.budget.soft_limit_expired() => false,
        }
    }

    /// Writes what is gathered, if anything.
    async fn flush(&mut self) -> Result<(), Gone> {
        if self.out.is_empty() {
            return Ok(());
        }
        if !self.write_all(None).await {
            return Err(Gone);
        }
        self.out.clear();
        self.budget.release(std::mem::take(&mut self.held));
        Ok(())
    }

    /// Adds a reply whose `charged` bytes count against the budget already.
    fn gather(&mut self, bytes: &[u8], charged: usize) {
        self.out.extend_from_slice(bytes);
        self.held += charged;
    }

    /// The next queued reply; before waiting for one, the client gets what is gathered.
    async fn next<T>(&mut self, rx: &mut mpsc::Receiver<T>) -> Option<T> {
        match rx.try_recv() {
            Ok(item) => Some(item),
            Err(mpsc::error::TryRecvError::Empty) => {
                self.flush().await.ok()?;
                rx.recv().await
            }
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        }
    }

    /// Waits for a backend's answer, letting the client have what is ready first.
    async fn answer<T>(
        &mut self,
        mut rx: oneshot::Receiver<Result<T, BackendError>>,
    ) -> Result<Result<T, BackendError>, Gone> {
        match rx.try_recv() {
            Ok(r) => Ok(r),
            Err(oneshot::error::TryRecvError::Closed) => Ok(Err(lost())),
            Err(oneshot::error::TryRecvError::Empty) => {
                self.flush().await?;
                Ok(rx.await.unwrap_or_else(|_| Err(lost())))
            }
        }
    }

    /// Resolves a queued reply (all but [`Pending::Close`], which the writer's loop handles).
    async fn resolve(&mut self, item: Pending, metrics: &Metrics, queued: Instant) -> Result<Resolved, Gone> {
        let resolved = match item {
            Pending::Ready(bytes) => Resolved { bytes, charged: 0, replies: 1, path: ReplyPath::Proxy },
            Pending::Batch(rx, n, ack) => self.batch(rx, n, ack, metrics, queued).await?,
            Pending::Stream(rx, n) => self.stream(rx, n, metrics, queued).await?,
            Pending::Reply(rx) => match self.answer(rx).await? {
                Ok(bytes) => Resolved { charged: bytes.len(), bytes, replies: 1, path: ReplyPath::Single },
                Err(e) => Resolved {
                    bytes: e.to_frame().to_bytes(Protocol::Resp2),
                    charged: 0,
                    replies: 1,
                    path: ReplyPath::Single,
                },
            },
            Pending::Future(f) => {
                self.flush().await?;
                Resolved { bytes: f.await, charged: 0, replies: 1, path: ReplyPath::Merged }
            }
            Pending::Close => return Err(Gone),
        };
        Ok(resolved)
    }

    /// A batch whose replies come together: gathered (with `--ack-replicas`, as its `WAIT`
    /// decides), counted in the metrics once for the whole batch.
    async fn batch(
        &mut self,
        rx: oneshot::Receiver<Result<Vec<Bytes>, BackendError>>,
        n: usize,
        ack: Option<AckCheck>,
        metrics: &Metrics,
        queued: Instant,
    ) -> Result<Resolved, Gone> {
        match self.answer(rx).await? {
            Ok(mut all) => {
                let held: usize = all.iter().map(Bytes::len).sum();
                if let Some(ack) = &ack {
                    ack.apply(&mut all);
                }
                for b in &all {
                    self.gather(b, 0);
                }
                self.held += held;
                metrics.batch(all.iter().map(|b| &b[..]), queued.elapsed());
            }
            Err(e) => {
                let err = e.to_frame().to_bytes(Protocol::Resp2);
                for _ in 0..n {
                    self.gather(&err, 0);
                }
                metrics.batch(std::iter::repeat_n(&err[..], n), queued.elapsed());
            }
        }
        Ok(Resolved::gathered(n))
    }

    /// A batch whose replies come one by one: each is passed on as it comes, so a batch of
    /// large replies is never held whole.
    async fn stream(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<ReplyResult>,
        n: usize,
        metrics: &Metrics,
        queued: Instant,
    ) -> Result<Resolved, Gone> {
        let mut tally = BatchTally::default();
        // After an error nothing more comes: the rest of the batch gets it too.
        let mut failed: Option<Bytes> = None;
        for _ in 0..n {
            if let Some(err) = &failed {
                tally.add(err);
                self.gather(err, 0);
                continue;
            }
            match self.streamed(&mut rx).await? {
                Ok(b) => {
                    tally.add(&b);
                    self.gather(&b, b.len());
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                Err(err) => {
                    tally.add(&err);
                    self.gather(&err, 0);
                    failed = Some(err);
                }
            }
        }
        metrics.batch_done(tally, queued.elapsed());
        Ok(Resolved::gathered(n))
    }

    /// The next reply of a streamed batch (an error as its reply bytes).
    async fn streamed(&mut self, rx: &mut mpsc::UnboundedReceiver<ReplyResult>) -> Result<Result<Bytes, Bytes>, Gone> {
        let next = match rx.try_recv() {
            Ok(r) => r,
            Err(mpsc::error::TryRecvError::Disconnected) => Err(lost()),
            Err(mpsc::error::TryRecvError::Empty) => {
                self.flush().await?;
                rx.recv().await.unwrap_or_else(|| Err(lost()))
            }
        };
        Ok(next.map_err(|e| e.to_frame().to_bytes(Protocol::Resp2)))
    }

    /// Passes a resolved reply on: charged if the proxy made it (the client is cut off if it
    /// does not fit), counted, then gathered, or written on its own when large.
    async fn pass_on(
        &mut self,
        r: Resolved,
        progress: &Progress,
        metrics: &Metrics,
        queued: Instant,
    ) -> Result<(), Gone> {
        let Resolved { bytes, charged, replies, path } = r;
        if charged == 0 && !bytes.is_empty() && !self.budget.charge(bytes.len()) {
            return Err(Gone);
        }
        if self.budget.is_exceeded() {
            return Err(Gone);
        }
        let charged = if charged == 0 { bytes.len() } else { charged };
        progress.complete(replies);
        // A batch counted its replies as it resolved them.
        if path != ReplyPath::Batch {
            metrics.replies(path, &bytes, replies, queued.elapsed());
        }
        if bytes.len() < FLUSH_AT {
            self.gather(&bytes, charged);
            return if self.out.len() >= FLUSH_AT { self.flush().await } else { Ok(()) };
        }
        self.flush().await?;
        if !self.write_all(Some(&bytes)).await {
            return Err(Gone);
        }
        self.budget.release(charged);
        Ok(())
    }
}

/// Writes replies in queue order, batching whatever is ready into one write. Replies from a
/// backend were charged to the client's budget as they arrived; those the proxy makes are
/// charged here. A client cut off at its limit is closed, with a log line saying why.
async fn reply_writer(
    wr: WriteHalf,
    mut rx: mpsc::Receiver<(Pending, Guards, Instant)>,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
    budget: Arc<OutputBudget>,
    (client, addr): (u64, Option<SocketAddr>),
) {
    let metrics = &shared.metrics;
    let mut o = ClientOutput { wr, out: BytesMut::with_capacity(16 * 1024), held: 0, budget: budget.clone() };
    // The guards go once the reply is in (at the end of each round).
    while let Some((item, _guards, queued)) = o.next(&mut rx).await {
        let resolved = match item {
            Pending::Close => {
                let _ = o.flush().await;
                let _ = o.wr.shutdown().await;
                progress.complete(1);
                break;
            }
            item => o.resolve(item, metrics, queued).await,
        };
        let Ok(resolved) = resolved else { break };
        if o.pass_on(resolved, &progress, metrics, queued).await.is_err() {
            break;
        }
    }
    if budget.is_exceeded() {
        tracing::warn!(
            client,
            addr = ?addr,
            limit = budget.limit(),
            "closing a client: its unread replies passed --client-output-buffer-limit"
        );
    }
    budget.close();
    progress.close();
}

fn lost() -> BackendError {
    BackendError::Lost { addr: Arc::from("node") }
}

pub fn noauth() -> Frame {
    Frame::error("NOAUTH Authentication required.")
}

/// The reply bytes for a failed backend call `e`, in the client's `protocol` (used by
/// handlers that post-process replies).
pub fn error_bytes(e: &BackendError, protocol: Protocol) -> Bytes {
    e.to_frame().to_bytes(protocol)
}

/// Whether a command blocks on the node (needs a private connection). `XREAD` and
/// `XREADGROUP` are flagged blocking but only block with the `BLOCK` option.
pub fn is_blocking(cmd: &Command, spec: &CommandSpec) -> bool {
    if !spec.has(flags::BLOCKING) {
        return false;
    }
    match spec.name {
        "xread" | "xreadgroup" => cmd.args().iter().skip(1).any(|a| a.eq_ignore_ascii_case(b"block")),
        _ => true,
    }
}
