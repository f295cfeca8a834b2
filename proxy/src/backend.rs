//! Pipelined connections to a RESP server (the proxy's Redis node, or a peer proxy).
//!
//! Many client sessions share one connection: each request carries a reply slot, the writer
//! task batches whatever is queued into one `write`, and the reader task hands replies to the
//! slots in order. Redis answers a connection strictly in order, so the n-th reply belongs
//! to the n-th request. Batching is what lets the proxy keep up with direct access: Redis
//! reads fifty commands with one syscall instead of fifty.
//!
//! Each connection's request queue is bounded (`ConnectOptions::queue`): a sender waits for
//! room (backpressure) instead of piling requests up in memory. That cannot deadlock: the
//! writer task drains the queue into the socket, and the reader task always reads replies
//! and hands them over without waiting for anyone, so the node never stops reading us
//! because we stopped reading it.
//!
//! A request may carry the [`OutputBudget`] of the client it is for: the reader charges each
//! reply to it as it arrives, without ever waiting, so a client that does not read its replies
//! is cut off at its `--client-output-buffer-limit` instead of making the proxy hold them all,
//! and the other clients of the connection are not held up behind it.
//!
//! A request is written at most once. When a connection fails, every request on it gets an
//! error; nothing is replayed on the next connection.

use crate::options::OutputLimit;
use crate::socket::{ReadHalf, Socket, WriteHalf};
use crate::tls::Tls;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sluice_common::resp::{Command, Frame, Limits, Protocol, ReplyCodec};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Why a request got no reply from its backend. The texts carry no RESP prefix (logs,
/// migration errors and gRPC statuses show them as they are); [`BackendError::to_frame`]
/// adds `ERR sluice:` for a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach backend {addr}: {reason}")]
    Unreachable { addr: Arc<str>, reason: String },
    #[error("connection to backend {addr} lost; the command may or may not have run")]
    Lost { addr: Arc<str> },
    #[error("backend {addr} refused the connection setup: {reason}")]
    Handshake { addr: Arc<str>, reason: String },
    #[error("client output buffer limit reached; the connection is closed")]
    OutputLimit,
}

/// What one client's replies may hold in the proxy: bytes received for it and not yet
/// written to it, bounded as Redis bounds a client's output buffer
/// (`--client-output-buffer-limit`, [`OutputLimit`]: a hard limit and a soft limit with its
/// seconds). Charged by the backend reader as replies arrive and by the session's writer for
/// replies it makes itself; released by the writer once written.
///
/// Nobody ever waits in here for the client to read: the backend reader carries the replies
/// of every client of a node connection, and one client that does not read must not hold up
/// the others (issue 22). A reply that would take the client past its hard limit, or one
/// charged after it stayed above its soft limit too long, cuts the client off: `exceeded`
/// fires, its replies are dropped from then on, and its session closes the connection. A single
/// reply is let through when nothing else is held, however large.
///
/// What keeps the memory bounded for a client that reads slowly is back-pressure at the
/// source: its session sends nothing more to a node while [`OutputBudget::may_send`] says no
/// (held bytes over the soft limit, or the replies still due likely to take them there, by
/// the size of its recent replies), so what it holds is bounded by what it had already sent.
#[derive(Debug)]
pub struct OutputBudget {
    used: AtomicUsize,
    /// 0: no hard limit (both 0: no limit at all, see [`OutputBudget::unlimit`]).
    hard: AtomicUsize,
    /// 0: no soft limit.
    soft: AtomicUsize,
    soft_for: Duration,
    /// When `used` went above `soft` (in [`OutputBudget::mark`]s), 0 while it is not.
    over_since: AtomicU64,
    base: Instant,
    exceeded: CancellationToken,
    /// `exceeded` fired: the same answer without the token's lock, for checks on every reply.
    was_cut: AtomicBool,
    /// The client's writer is gone: its replies are dropped at once.
    closed: AtomicBool,
    /// Commands sent with this budget, and their replies read: the difference is what may
    /// still come (the session's window, [`OutputBudget::may_send`]).
    sent: AtomicUsize,
    answered: AtomicUsize,
    /// A decaying maximum of this client's reply sizes: what a reply still due may bring.
    reply_size: AtomicUsize,
    /// The session waits in [`OutputBudget::room`]: only then do charges and releases signal.
    waiting: AtomicBool,
    room: tokio::sync::Notify,
}

/// The most commands a client's first request carries while nothing is known of its replies'
/// size: a client whose first pipeline asks for huge replies makes the node send that much on
/// a connection other clients share before the proxy can tell.
pub const FIRST_BATCH: usize = 16;

/// The least a reply still due is reckoned to weigh: small replies so far (a `+OK`) say nothing
/// of the next ones (a pipeline of large `GET`s), and reckoned at their own size they would
/// let batches of hundreds of large replies go before the first of them is charged. Reckoned
/// at this, what a client has in flight before its estimate catches up stays a bounded
/// multiple of its soft limit; with the default limit (`64mb`) a session's batch still takes
/// the most commands a batch may hold.
const SIZE_FLOOR: usize = 128 * 1024;

/// How often a session waiting for room, or a writer blocked on a client, looks again at
/// the soft limit's clock (a wait for room also ends on a signal).
const SOFT_CHECK: Duration = Duration::from_millis(100);

impl OutputBudget {
    pub fn new(limit: OutputLimit) -> OutputBudget {
        OutputBudget {
            used: AtomicUsize::new(0),
            hard: AtomicUsize::new(limit.hard),
            soft: AtomicUsize::new(limit.soft),
            soft_for: limit.soft_for,
            over_since: AtomicU64::new(0),
            base: Instant::now(),
            exceeded: CancellationToken::new(),
            was_cut: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            sent: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            reply_size: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            room: tokio::sync::Notify::new(),
        }
    }

    /// No limit from now on: for a connection from another proxy, whose reader never stops
    /// reading and which carries the replies of many clients (each bounded on that proxy).
    pub fn unlimit(&self) {
        self.hard.store(0, Ordering::Relaxed);
        self.soft.store(0, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    fn is_limited(&self) -> bool {
        self.hard.load(Ordering::Relaxed) != 0 || self.soft.load(Ordering::Relaxed) != 0
    }

    /// Cut off, or its writer gone: nothing more is kept for the client.
    fn is_cut(&self) -> bool {
        self.is_exceeded() || self.closed.load(Ordering::Acquire)
    }

    /// Whether the client was cut off ([`OutputBudget::exceeded`] fired).
    pub fn is_exceeded(&self) -> bool {
        self.was_cut.load(Ordering::Acquire)
    }

    fn cut(&self) {
        self.was_cut.store(true, Ordering::Release);
        self.exceeded.cancel();
        self.room.notify_waiters();
    }

    /// Now, in milliseconds since `base`, plus one (0 stands for "not above the soft limit").
    fn mark(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Held bytes above the soft limit for longer than its seconds: the client is cut off
    /// (`true`). The first call that sees them above starts the clock.
    fn soft_expired(&self) -> bool {
        let soft = self.soft.load(Ordering::Relaxed);
        if soft == 0 || self.used.load(Ordering::SeqCst) <= soft {
            return false;
        }
        let now = self.mark();
        match self.over_since.load(Ordering::SeqCst) {
            0 => {
                let _ = self.over_since.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
                false
            }
            since if now.saturating_sub(since) > self.soft_for.as_millis() as u64 => {
                self.cut();
                true
            }
            _ => false,
        }
    }

    /// Counts `n` more bytes held for the client, without waiting. `false` (nothing counted,
    /// the client cut off) past the hard limit or after too long above the soft one: the
    /// bytes should be dropped.
    pub fn charge(&self, n: usize) -> bool {
        if !self.is_limited() {
            return true;
        }
        if self.is_cut() {
            return false;
        }
        let hard = self.hard.load(Ordering::Relaxed);
        let fits = |u: usize| (hard == 0 || u == 0 || u.saturating_add(n) <= hard).then_some(u + n);
        let counted = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, fits).is_ok();
        if counted && !self.soft_expired() {
            return true;
        }
        if counted {
            self.used.fetch_sub(n, Ordering::SeqCst);
        }
        self.cut();
        false
    }

    /// [`OutputBudget::charge`] for a reply read from a node, which also answers one command
    /// sent with this budget and tells what the next replies may weigh.
    pub fn charge_reply(&self, n: usize) -> bool {
        if !self.is_limited() {
            return true;
        }
        let size = self.reply_size.load(Ordering::Relaxed);
        self.reply_size.store(n.max(size - size / 8), Ordering::Relaxed);
        let fits = self.charge(n);
        self.answered(1);
        fits
    }

    /// `n` commands are about to be sent with this budget.
    pub fn sending(&self, n: usize) {
        if self.is_limited() {
            self.sent.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// `n` replies to commands sent with this budget were read (or will never come).
    pub fn answered(&self, n: usize) {
        if self.is_limited() {
            self.answered.fetch_add(n, Ordering::SeqCst);
            self.signal();
        }
    }

    /// Wakes a session waiting for room.
    fn signal(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.room.notify_waiters();
        }
    }

    /// `n` bytes charged earlier were written (or dropped).
    pub fn release(&self, n: usize) {
        if n == 0 || !self.is_limited() {
            return;
        }
        let before = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| Some(u.saturating_sub(n)));
        let left = before.unwrap_or(0).saturating_sub(n);
        if left <= self.soft.load(Ordering::Relaxed) {
            self.over_since.store(0, Ordering::SeqCst);
        }
        self.signal();
    }

    /// The client's writer is gone: nothing more is kept for it.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.room.notify_waiters();
    }

    /// What the session's sends are bounded by: the soft limit, the hard one without it.
    fn bound(&self) -> usize {
        match self.soft.load(Ordering::Relaxed) {
            0 => self.hard.load(Ordering::Relaxed),
            soft => soft,
        }
    }

    /// Whether the session may send another request now: held bytes within the soft limit
    /// (the hard one without it), and what is still due likely to fit too, at the size of the
    /// client's recent replies. Only a client never answered yet waits for its first request
    /// to answer; after that it never waits for a reply only to learn its size: a request whose
    /// node stopped answering (a SIGSTOPped master) must not hold back the client's next ones,
    /// which a failover answers. Always `true` without a limit, and once the client is cut off
    /// (its session stops anyway).
    pub fn may_send(&self) -> bool {
        if !self.is_limited() || self.is_cut() {
            return true;
        }
        let bound = self.bound();
        let used = self.used.load(Ordering::SeqCst);
        if used > bound {
            return false;
        }
        let answered = self.answered.load(Ordering::SeqCst);
        let due = self.sent.load(Ordering::SeqCst).saturating_sub(answered);
        if due == 0 {
            return true;
        }
        match self.reply_size.load(Ordering::Relaxed) {
            // Nothing answered yet: the first request (`FIRST_BATCH` commands at most) says
            // what this client's replies weigh before more go.
            0 => false,
            size => used.saturating_add(due.saturating_mul(size.max(SIZE_FLOOR))) <= bound,
        }
    }

    /// How many commands the session may batch into one request: as many as the room left
    /// takes at the size of the client's recent replies, at least one; [`FIRST_BATCH`] before
    /// any reply was seen.
    pub fn batch_room(&self) -> usize {
        if !self.is_limited() {
            return usize::MAX;
        }
        match self.reply_size.load(Ordering::Relaxed) {
            0 => FIRST_BATCH,
            size => (self.bound().saturating_sub(self.used()) / size.max(SIZE_FLOOR)).max(1),
        }
    }

    /// Resolves once [`OutputBudget::may_send`] says yes, or the client is cut off (also when
    /// it stays above its soft limit too long meanwhile).
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if self.may_send() || self.soft_expired() {
                break;
            }
            let _ = tokio::time::timeout(SOFT_CHECK, notified).await;
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Resolves when the client is cut off for staying above its soft limit too long: for a
    /// writer blocked on a client that does not read (no reply may come to be charged).
    pub async fn soft_limit_expired(&self) {
        if self.soft.load(Ordering::Relaxed) == 0 {
            return std::future::pending().await;
        }
        while !self.soft_expired() {
            let left = match self.over_since.load(Ordering::SeqCst) {
                0 => SOFT_CHECK,
                since => (self.soft_for + Duration::from_millis(since)).saturating_sub(self.base.elapsed()),
            };
            tokio::time::sleep(left.clamp(Duration::from_millis(1), SOFT_CHECK)).await;
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit a log line names: the hard one, else the soft one.
    pub fn limit(&self) -> usize {
        self.hard.load(Ordering::Relaxed).max(self.soft.load(Ordering::Relaxed))
    }

    /// Fires once the client was cut off.
    pub fn exceeded(&self) -> &CancellationToken {
        &self.exceeded
    }
}

impl BackendError {
    /// The error as a reply frame for the client, with the `ERR sluice:` prefix.
    pub fn to_frame(&self) -> Frame {
        Frame::error(format!("ERR sluice: {self}"))
    }
}

pub type ReplyResult = Result<Bytes, BackendError>;

/// Where the replies of one request go.
enum Sink {
    One(oneshot::Sender<ReplyResult>),
    /// A request made of `n` commands (a `MULTI … EXEC` unit); every reply is delivered.
    Many {
        n: usize,
        got: Vec<Bytes>,
        /// Replies read so far (`got` is emptied once the client's budget is exceeded).
        seen: usize,
        tx: oneshot::Sender<Result<Vec<Bytes>, BackendError>>,
    },
    /// `n` replies delivered one by one (see [`Stream`]).
    Stream {
        n: usize,
        seen: usize,
        tx: Stream,
    },
    /// Replies still to read and drop (the rest of a stream cut at the client's limit).
    Skip(usize),
}

/// A batch whose replies are handed over one by one as they arrive: the client's writer
/// passes each on at once, so a large batch is never held whole (nor charged whole to the
/// client's budget while the client reads).
type Stream = mpsc::UnboundedSender<ReplyResult>;

/// A reply slot and the budget of the client it is for (none: the proxy's own requests).
struct Pending {
    sink: Sink,
    budget: Option<Arc<OutputBudget>>,
}

struct Request {
    data: Bytes,
    pending: Pending,
}

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub protocol: Protocol,
    /// Sent as `AUTH [user] password` on connect.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Extra commands sent on connect (e.g. `UMCTL PEER` towards another proxy).
    pub setup: Vec<Command>,
    pub connect_timeout: Duration,
    /// Dial with TLS (peer proxies when `--tls-cert` is set); plain TCP when `None`.
    pub tls: Option<Arc<Tls>>,
    /// Most requests queued for the writer (senders wait for room beyond it).
    pub queue: usize,
}

/// The default of [`ConnectOptions::queue`] for the proxy's own connections.
pub const DEFAULT_QUEUE: usize = 4096;

/// A handle to one pipelined connection. Cheap to clone.
#[derive(Clone)]
pub struct PipelinedConn {
    tx: mpsc::Sender<Request>,
    addr: Arc<str>,
    id: ConnId,
    stop: CancellationToken,
}

/// Which connection a request travels on, unique for the life of the process. A session
/// compares it with the connection its earlier commands took (see `session::Session::send`):
/// a node answers one connection in order, but two connections in no defined order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(u64);

impl ConnId {
    /// A fresh id, also for work that opens a connection of its own.
    pub fn next() -> ConnId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl PipelinedConn {
    /// Connects, runs the setup commands and starts the reader and writer tasks.
    pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<PipelinedConn, BackendError> {
        let addr: Arc<str> = Arc::from(addr);
        let unreachable = |reason: String| BackendError::Unreachable { addr: addr.clone(), reason };
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(&*addr))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", opts.connect_timeout)))?
            .map_err(|e| unreachable(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| unreachable(e.to_string()))?;
        let socket = match &opts.tls {
            None => Socket::Plain(stream),
            Some(tls) => tokio::time::timeout(opts.connect_timeout, tls.connect(&addr, stream))
                .await
                .map_err(|_| unreachable(format!("no TLS handshake within {:?}", opts.connect_timeout)))?
                .map_err(|e| unreachable(format!("TLS handshake: {e}")))?,
        };
        let (rd, mut wr) = socket.into_split();
        let mut reader = FramedRead::new(rd, ReplyCodec::new(Limits::SERVER));

        let mut setup = Vec::new();
        match (&opts.user, &opts.password) {
            (Some(user), Some(pass)) => setup.push(Command::from_strs(&["AUTH", user.as_str(), pass.as_str()])),
            (None, Some(pass)) => setup.push(Command::from_strs(&["AUTH", pass.as_str()])),
            _ => {}
        }
        if opts.protocol == Protocol::Resp3 {
            setup.push(Command::from_strs(&["HELLO", "3"]));
        }
        setup.extend(opts.setup.iter().cloned());
        for cmd in &setup {
            let handshake = |reason: String| BackendError::Handshake { addr: addr.clone(), reason };
            let exchange = async {
                wr.write_all(cmd.raw()).await.map_err(|e| handshake(e.to_string()))?;
                wr.flush().await.map_err(|e| handshake(e.to_string()))?;
                match reader.next().await {
                    Some(Ok(reply)) if reply.first() == Some(&b'-') => {
                        Err(handshake(String::from_utf8_lossy(&reply[1..]).trim_end().to_string()))
                    }
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(handshake(e.to_string())),
                    None => Err(handshake("connection closed".into())),
                }
            };
            tokio::time::timeout(opts.connect_timeout, exchange)
                .await
                .map_err(|_| handshake(format!("no answer within {:?}", opts.connect_timeout)))??;
        }

        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(write_loop(rx, wr, pending_tx, stop.clone(), addr.clone()));
        crate::metrics::BACKEND_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(read_loop(reader, pending_rx, stop.clone(), addr.clone()));
        Ok(PipelinedConn { tx, addr, id: ConnId::next(), stop })
    }

    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.stop.is_cancelled()
    }

    /// Closes the connection now: every request in flight on it gets an error (even one the
    /// node has answered but whose reply was not read yet), and nothing more is sent on it.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Queues one request, waiting for room in the queue if it is full. `Err` (with the
    /// data back) if the connection is closed, in which case nothing was sent.
    async fn enqueue(&self, data: Bytes, pending: Pending) -> Result<(), Bytes> {
        // Counted before its reply can be read; taken back if nothing is sent.
        if let Some(b) = &pending.budget {
            b.sending(pending.sink.replies());
        }
        let unsent = |r: Request| {
            if let Some(b) = &r.pending.budget {
                b.answered(r.pending.sink.replies());
            }
            r.data
        };
        let request = Request { data, pending };
        // The common case takes no wait and no permit.
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(r)) => Err(unsent(r)),
            Err(mpsc::error::TrySendError::Full(r)) => self.tx.send(r).await.map_err(|e| unsent(e.0)),
        }
    }

    /// Queues one command. `Err` (with the data back) if the connection is already closed,
    /// in which case nothing was sent and the caller may use another connection.
    pub async fn send(&self, data: Bytes) -> Result<oneshot::Receiver<ReplyResult>, Bytes> {
        self.send_for(data, None).await
    }

    /// [`PipelinedConn::send`] for a client whose replies count against `budget`.
    pub async fn send_for(
        &self,
        data: Bytes,
        budget: Option<Arc<OutputBudget>>,
    ) -> Result<oneshot::Receiver<ReplyResult>, Bytes> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(data, Pending { sink: Sink::One(tx), budget }).await?;
        Ok(rx)
    }

    /// Queues `n` commands written back to back (a transaction); all `n` replies come back.
    pub async fn send_many(
        &self,
        data: Bytes,
        n: usize,
    ) -> Result<oneshot::Receiver<Result<Vec<Bytes>, BackendError>>, Bytes> {
        self.send_many_for(data, n, None).await
    }

    /// [`PipelinedConn::send_many`] for a client whose replies count against `budget`.
    pub async fn send_many_for(
        &self,
        data: Bytes,
        n: usize,
        budget: Option<Arc<OutputBudget>>,
    ) -> Result<oneshot::Receiver<Result<Vec<Bytes>, BackendError>>, Bytes> {
        let (tx, rx) = oneshot::channel();
        let sink = Sink::Many { n, got: Vec::with_capacity(n), seen: 0, tx };
        self.enqueue(data, Pending { sink, budget }).await?;
        Ok(rx)
    }

    /// `n` commands written back to back whose replies are handed over one by one as they
    /// arrive, charged to `budget`. After an error (the connection lost, the budget exceeded)
    /// nothing more comes.
    pub async fn send_stream_for(
        &self,
        data: Bytes,
        n: usize,
        budget: Option<Arc<OutputBudget>>,
    ) -> Result<mpsc::UnboundedReceiver<ReplyResult>, Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.enqueue(data, Pending { sink: Sink::Stream { n, seen: 0, tx }, budget }).await?;
        Ok(rx)
    }

    /// Sends one command and waits for its reply.
    pub async fn call(&self, cmd: &Command) -> ReplyResult {
        let lost = || BackendError::Lost { addr: self.addr.clone() };
        let rx = self.send(cmd.raw().clone()).await.map_err(|_| lost())?;
        rx.await.map_err(|_| lost())?
    }
}

/// Largest batch written with one call; past it, the writer flushes and goes on.
const MAX_BATCH: usize = 256 * 1024;

async fn write_loop(
    mut rx: mpsc::Receiver<Request>,
    mut wr: WriteHalf,
    pending: mpsc::UnboundedSender<Pending>,
    stop: CancellationToken,
    addr: Arc<str>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // One wait for the stop, registered once (not once per request).
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    'outer: loop {
        let first = tokio::select! {
            biased;
            _ = &mut stopped => None,
            r = rx.recv() => r,
        };
        let Some(mut req) = first else { break };
        loop {
            // The sink is queued before the bytes go out, so a reply never beats its sink.
            if let Err(unsent) = pending.send(req.pending) {
                unsent.0.fail(&BackendError::Lost { addr: addr.clone() });
                break 'outer;
            }
            if req.data.len() >= MAX_BATCH {
                if !buf.is_empty() && wr.write_all(&buf).await.is_err() {
                    break 'outer;
                }
                buf.clear();
                if wr.write_all(&req.data).await.is_err() {
                    break 'outer;
                }
            } else {
                buf.extend_from_slice(&req.data);
            }
            if buf.len() >= MAX_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => req = next,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
        }
        // TLS may hold the last records until flushed (nothing to do for plain TCP).
        if wr.flush().await.is_err() {
            break;
        }
    }
    stop.cancel();
    // What was queued and never written fails here (its client's budget hears of it too).
    rx.close();
    while let Ok(req) = rx.try_recv() {
        req.pending.fail(&BackendError::Lost { addr: addr.clone() });
    }
}

async fn read_loop(
    mut reader: FramedRead<ReadHalf, ReplyCodec>,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    stop: CancellationToken,
    addr: Arc<str>,
) {
    let mut current: Option<Pending> = None;
    // One wait for the stop, registered once (not once per reply).
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // The stop first: a connection closed delivers no reply read after it.
        let frame = tokio::select! {
            biased;
            _ = &mut stopped => None,
            f = reader.next() => f,
        };
        let Some(Ok(reply)) = frame else { break };
        let Some(next) = current.take().or_else(|| pending.try_recv().ok()) else {
            // A reply nobody asked for: the stream is out of step; drop it.
            tracing::warn!(backend = %addr, "unexpected reply from backend; closing the connection");
            break;
        };
        current = next.deliver(reply);
    }
    stop.cancel();
    crate::metrics::BACKEND_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    pending.close();
    let lost = BackendError::Lost { addr: addr.clone() };
    for p in current.into_iter().chain(std::iter::from_fn(|| pending.try_recv().ok())) {
        p.fail(&lost);
    }
}

impl Pending {
    /// Hands `reply` to its sink, charged to the client's budget without waiting (a reply
    /// for a client cut off is dropped here, not kept). What is left when more replies are
    /// due to this request.
    fn deliver(self, reply: Bytes) -> Option<Pending> {
        let Pending { sink, budget } = self;
        let fits = match (&budget, &sink) {
            (None, _) => true,
            // Dropped anyway: never charged.
            (Some(b), Sink::Skip(_)) => {
                b.answered(1);
                true
            }
            (Some(b), _) => b.charge_reply(reply.len()),
        };
        let sink = sink.take(reply, fits, budget.as_deref())?;
        Some(Pending { sink, budget })
    }

    /// The connection is gone: the request gets `lost`, and its budget what it held back.
    fn fail(self, lost: &BackendError) {
        let Pending { sink, budget } = self;
        if let Some(b) = &budget {
            if let Sink::Many { got, .. } = &sink {
                b.release(got.iter().map(Bytes::len).sum());
            }
            b.answered(sink.replies());
        }
        match sink {
            Sink::One(tx) => {
                let _ = tx.send(Err(lost.clone()));
            }
            Sink::Many { tx, .. } => {
                let _ = tx.send(Err(lost.clone()));
            }
            Sink::Stream { tx, .. } => {
                let _ = tx.send(Err(lost.clone()));
            }
            Sink::Skip(_) => {}
        }
    }
}

impl Sink {
    /// Replies still due to this sink.
    fn replies(&self) -> usize {
        match self {
            Sink::One(_) => 1,
            Sink::Many { n, seen, .. } | Sink::Stream { n, seen, .. } => n - seen,
            Sink::Skip(left) => *left,
        }
    }

    /// Takes one reply (`fits`: charged to `budget`, else to be dropped); the sink for the
    /// replies still due, if any.
    fn take(self, reply: Bytes, fits: bool, budget: Option<&OutputBudget>) -> Option<Sink> {
        match self {
            Sink::One(tx) => {
                let _ = tx.send(if fits { Ok(reply) } else { Err(BackendError::OutputLimit) });
                None
            }
            Sink::Many { n, mut got, seen, tx } => {
                if fits && seen == got.len() {
                    got.push(reply);
                } else if let Some(b) = budget {
                    // Past the limit: what this request kept so far goes too.
                    b.release(got.iter().map(Bytes::len).sum::<usize>() + if fits { reply.len() } else { 0 });
                    got = Vec::new();
                }
                let seen = seen + 1;
                if seen < n {
                    return Some(Sink::Many { n, got, seen, tx });
                }
                let _ = tx.send(if seen == got.len() { Ok(got) } else { Err(BackendError::OutputLimit) });
                None
            }
            Sink::Stream { n, seen, tx } => {
                let _ = tx.send(if fits { Ok(reply) } else { Err(BackendError::OutputLimit) });
                let seen = seen + 1;
                (seen < n).then(|| if fits { Sink::Stream { n, seen, tx } } else { Sink::Skip(n - seen) })
            }
            Sink::Skip(left) => (left > 1).then(|| Sink::Skip(left - 1)),
        }
    }
}

/// A few shared connections to one backend, per protocol, reconnected on demand.
pub struct BackendPool {
    addr: String,
    opts: ConnectOptions,
    size: usize,
    resp2: Vec<Slot>,
    resp3: Vec<Slot>,
    /// How to close the sessions' private connections, so [`BackendPool::close_all`] reaches
    /// them too. Only the tokens: a connection still closes when its session drops it.
    privates: std::sync::Mutex<Vec<CancellationToken>>,
}

#[derive(Default)]
struct Slot {
    conn: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    backend: Option<PipelinedConn>,
    /// When the last connect failed: for a short while callers fail fast instead of
    /// queueing behind another connect attempt.
    failed: Option<(Instant, BackendError)>,
}

/// How long a failed connect is remembered before the next attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

impl BackendPool {
    pub fn new(addr: impl Into<String>, opts: ConnectOptions, size: usize) -> BackendPool {
        let size = size.max(1);
        BackendPool {
            addr: addr.into(),
            opts,
            size,
            resp2: (0..size).map(|_| Slot::default()).collect(),
            resp3: (0..size).map(|_| Slot::default()).collect(),
            privates: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A live shared connection for `protocol`; `key` spreads sessions over the pool (a
    /// session always uses the same one, which keeps its commands in order).
    pub async fn get(&self, protocol: Protocol, key: u64) -> Result<PipelinedConn, BackendError> {
        let slots = if protocol == Protocol::Resp3 { &self.resp3 } else { &self.resp2 };
        let slot = &slots[(key % self.size as u64) as usize];
        let mut state = slot.conn.lock().await;
        if let Some(b) = &state.backend {
            if !b.is_closed() {
                return Ok(b.clone());
            }
        }
        if let Some((at, err)) = &state.failed {
            if at.elapsed() < RECONNECT_BACKOFF {
                // Another connection of the pool may be up again already.
                let err = err.clone();
                drop(state);
                return self.any_live(slots).await.ok_or(err);
            }
        }
        let opts = ConnectOptions { protocol, ..self.opts.clone() };
        match PipelinedConn::connect(&self.addr, &opts).await {
            Ok(b) => {
                state.backend = Some(b.clone());
                state.failed = None;
                Ok(b)
            }
            Err(e) => {
                tracing::warn!(backend = %self.addr, error = %e, "backend connect failed");
                state.backend = None;
                state.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Any live connection among `slots` (skipping those being connected right now).
    async fn any_live(&self, slots: &[Slot]) -> Option<PipelinedConn> {
        for slot in slots {
            if let Ok(state) = slot.conn.try_lock() {
                if let Some(b) = state.backend.as_ref().filter(|b| !b.is_closed()) {
                    return Some(b.clone());
                }
            }
        }
        None
    }

    /// A new connection used by one session only (blocking commands, `WATCH`).
    pub async fn private(&self, protocol: Protocol) -> Result<PipelinedConn, BackendError> {
        let b = PipelinedConn::connect(&self.addr, &ConnectOptions { protocol, ..self.opts.clone() }).await?;
        let mut privates = self.privates.lock().unwrap_or_else(|p| p.into_inner());
        privates.retain(|stop| !stop.is_cancelled());
        privates.push(b.stop.clone());
        Ok(b)
    }

    /// Closes every connection of the pool, shared and private: what is in flight fails, and
    /// the next request opens a new connection. For a proxy whose node stopped being its
    /// shard's master (a failover): no reply its node gives from then on reaches a client as
    /// an acknowledgement.
    pub async fn close_all(&self) {
        for slot in self.resp2.iter().chain(&self.resp3) {
            if let Some(b) = slot.conn.lock().await.backend.take() {
                b.close();
            }
        }
        for stop in self.privates.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{OutputBudget, FIRST_BATCH};
    use crate::options::OutputLimit;
    use std::time::Duration;

    const MB: usize = 1 << 20;

    fn budget(hard: usize, soft: usize, soft_for: Duration) -> OutputBudget {
        OutputBudget::new(OutputLimit { hard, soft, soft_for })
    }

    #[test]
    fn past_the_hard_limit_the_client_is_cut_off_and_nothing_more_is_counted() {
        let b = budget(4 * MB, 0, Duration::ZERO);
        // A single reply fits when nothing else is held, however large.
        assert!(b.charge(10 * MB));
        b.release(10 * MB);
        assert!(b.charge(3 * MB));
        assert!(!b.exceeded().is_cancelled());
        assert!(!b.charge(2 * MB), "3 + 2 MiB passes the 4 MiB hard limit");
        assert!(b.exceeded().is_cancelled());
        assert_eq!(b.used(), 3 * MB, "the refused reply is not counted");
        assert!(!b.charge(1), "after the cut every reply is dropped");
    }

    #[test]
    fn above_the_soft_limit_for_longer_than_its_seconds_the_client_is_cut_off() {
        let b = budget(0, MB, Duration::ZERO);
        assert!(b.charge(2 * MB), "the first charge above the soft limit starts its clock");
        std::thread::sleep(Duration::from_millis(3));
        assert!(!b.charge(1), "still above it, past its time");
        assert!(b.exceeded().is_cancelled());

        // Back under the soft limit, the clock starts again.
        let b = budget(0, MB, Duration::ZERO);
        assert!(b.charge(2 * MB));
        b.release(2 * MB);
        std::thread::sleep(Duration::from_millis(3));
        assert!(b.charge(2 * MB));
        assert!(!b.exceeded().is_cancelled());
    }

    #[test]
    fn the_session_sends_within_what_the_replies_due_may_bring() {
        let b = budget(32 * MB, 16 * MB, Duration::from_secs(60));
        // Nothing known of the replies yet: a small first request, then wait for it.
        assert_eq!(b.batch_room(), FIRST_BATCH);
        assert!(b.may_send());
        b.sending(FIRST_BATCH);
        assert!(!b.may_send(), "nothing answered yet: the first request says what replies weigh");
        // Its replies are 1 MiB each: 15 more due would bring 15 MiB on top of the 1 held.
        assert!(b.charge_reply(MB));
        assert!(b.may_send());
        assert!(b.charge_reply(MB));
        assert!(b.charge_reply(MB));
        // 3 MiB held, 13 due: 16 MiB, the soft limit: still fine; room for 13 commands.
        assert!(b.may_send());
        assert_eq!(b.batch_room(), 13);
        b.sending(1);
        assert!(!b.may_send(), "14 MiB due on 3 held: over the soft limit");
        for _ in 0..14 {
            assert!(b.charge_reply(MB));
        }
        // 17 MiB held, nothing due: over the soft limit, the session waits for the client.
        assert!(!b.may_send());
        b.release(2 * MB);
        assert!(b.may_send());
        // Replies that never come (a connection lost) count as answered.
        b.sending(4);
        b.answered(4);
        assert!(b.may_send());
    }

    #[test]
    fn without_a_limit_nothing_is_counted_and_everything_may_go() {
        let b = OutputBudget::new(OutputLimit::NONE);
        b.sending(1000);
        assert!(b.charge_reply(usize::MAX / 2));
        assert!(b.may_send());
        assert_eq!(b.batch_room(), usize::MAX);
        let b = budget(MB, MB, Duration::ZERO);
        b.unlimit();
        assert!(b.charge(10 * MB) && b.charge(10 * MB) && b.may_send());
    }
}
