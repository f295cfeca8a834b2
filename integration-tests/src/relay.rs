//! A small fault-injecting TCP relay: it listens on a loopback port and passes every
//! connection through to a target (a proxy's redis-server), adding latency or cutting
//! connections when the test says so.
//!
//! The chaos test starts every proxy with `--node` at its relay (and `--node-announce` at the
//! real node, so replication and `MIGRATE` between nodes go straight node to node): every
//! command a proxy sends its own node, data path and migration control alike, crosses the
//! relay. Faults are applied only on command; the randomness (which connections to cut) comes
//! from the caller's seeded generator, so a run can be replayed.
//!
//! Faults:
//! - **latency**: every chunk read on either side is delivered `latency` later (in order: one
//!   queue per direction, so nothing is reordered).
//! - **drop**: chosen connections are reset (`SO_LINGER 0`): both sides see the connection
//!   die, and whatever the relay still queued is discarded, as on a broken network path.
//! - **refuse**: new connections are accepted and reset at once (the node "is down").
//!
//! A side that closes normally is passed on as a half-close after the queued data, as TCP
//! would.

use anyhow::{Context, Result};
use bytes::Bytes;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long the relay waits for its target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the relay did, for the test's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub accepted: u64,
    pub dropped: u64,
    pub refused: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct State {
    latency_us: AtomicU64,
    refusing: AtomicBool,
    next_id: AtomicU64,
    /// Live connections: dropping (or firing) the sender resets the connection.
    conns: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    accepted: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
}

impl State {
    fn conns(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }
}

/// A running relay; stops (and resets every connection) when dropped.
pub struct Relay {
    addr: String,
    target: String,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays every connection to `target`.
    pub async fn start(target: &str) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the relay")?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(State::default());
        let accept = tokio::spawn(accept_loop(listener, target.to_string(), state.clone()));
        Ok(Relay { addr, target: target.to_string(), state, accept })
    }

    /// Where clients of the relay connect.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Where the relay connects to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Delays every chunk, in both directions, by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.state.latency_us.store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// While set, new connections are reset as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Resets each live connection with probability `fraction` (drawn from `rng`, in
    /// connection order, so a seeded run cuts the same ones). Returns how many were cut.
    pub fn drop_connections(&self, fraction: f64, rng: &mut impl Rng) -> usize {
        let fraction = fraction.clamp(0.0, 1.0);
        let mut conns = self.state.conns();
        let ids: Vec<u64> = conns.keys().copied().collect();
        let mut cut = 0;
        for id in ids {
            if rng.random_bool(fraction) {
                if let Some(kill) = conns.remove(&id) {
                    let _ = kill.send(());
                    cut += 1;
                }
            }
        }
        self.state.dropped.fetch_add(cut as u64, Ordering::Relaxed);
        cut
    }

    /// Live connections now.
    pub fn connections(&self) -> usize {
        self.state.conns().len()
    }

    /// Back to a clean network: no latency, no refusing (live connections stay).
    pub fn heal(&self) {
        self.set_latency(Duration::ZERO);
        self.set_refusing(false);
    }

    pub fn stats(&self) -> RelayStats {
        let s = &self.state;
        RelayStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.conns().clear();
    }
}

async fn accept_loop(listener: TcpListener, target: String, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if state.refusing.load(Ordering::Relaxed) {
            state.refused.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            continue;
        }
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let (kill_tx, kill_rx) = oneshot::channel();
        state.conns().insert(id, kill_tx);
        tokio::spawn(serve(client, target.clone(), state.clone(), id, kill_rx));
    }
}

/// Makes the close of `stream` a reset, as a broken path would look.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn serve(mut client: TcpStream, target: String, state: Arc<State>, id: u64, mut kill: oneshot::Receiver<()>) {
    let _ = client.set_nodelay(true);
    // Bounded: a node that does not accept (its backlog full) is a node that is down.
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target));
    let upstream = tokio::select! {
        r = connect => r.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        _ = &mut kill => {
            reset(&client);
            return;
        }
    };
    let Ok(mut upstream) = upstream else {
        // The node is down: the client sees its connection reset.
        reset(&client);
        state.conns().remove(&id);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let killed = {
        let (client_r, client_w) = client.split();
        let (up_r, up_w) = upstream.split();
        let both = async {
            tokio::join!(pump(client_r, up_w, &state), pump(up_r, client_w, &state));
        };
        tokio::select! {
            _ = both => false,
            // Fired by drop_connections, or dropped with the relay: a reset either way.
            _ = &mut kill => true,
        }
    };
    if killed {
        // Whatever is still queued in `both` is gone with it, as on a broken path.
        reset(&client);
        reset(&upstream);
    }
    state.conns().remove(&id);
}

/// Copies one direction with the relay's latency, in order; on EOF, passes the half-close on
/// after everything queued.
async fn pump<R, W>(mut from: R, mut to: W, state: &State)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    state.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let due = Instant::now() + state.latency();
                    if tx.send((due, Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
