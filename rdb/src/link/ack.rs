//! The ack writer: `REPLCONF ACK <offset>` on the link's write half, every interval and
//! whenever the link asks for one.
//!
//! It runs as its own task so acks keep going while the link's owner is slow to read: the
//! master disconnects a replica that has not acked for `repl-timeout` (60 s), and a diskless
//! master only starts the command stream once the first ack after the RDB arrives. The offset
//! is shared through an atomic the link updates as commands are consumed.

use super::error::LinkError;
use bytes::BytesMut;
use sluice_common::resp::encode_command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

/// Ack period until the master's stream starts (see [`run`]).
const STARTUP_ACK_INTERVAL: Duration = Duration::from_millis(100);

/// Sends acks until a write fails or times out (the task is aborted when the link is dropped).
/// The first ack goes out at once. Until the offset first moves, acks go out every 100 ms: a
/// diskless master starts the stream on the first ack that arrives *after* it has reaped its
/// RDB child, which our first ack (sent the moment the RDB ended) can precede.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    mut write: W,
    offset: Arc<AtomicU64>,
    wake: Arc<Notify>,
    every: Duration,
    write_timeout: Duration,
) -> Result<(), LinkError> {
    let initial = offset.load(Ordering::Acquire);
    let mut msg = BytesMut::with_capacity(64);
    loop {
        let current = offset.load(Ordering::Acquire);
        msg.clear();
        encode_command(&[b"REPLCONF".as_slice(), b"ACK", current.to_string().as_bytes()], &mut msg);
        match timeout(write_timeout, write.write_all(&msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(LinkError::Timeout("writing REPLCONF ACK")),
        }
        let pause = if current == initial { every.min(STARTUP_ACK_INTERVAL) } else { every };
        tokio::select! {
            _ = sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn acks_at_once_then_on_demand_and_on_every_tick() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let offset = Arc::new(AtomicU64::new(100));
        let wake = Arc::new(Notify::new());
        let every = Duration::from_millis(300);
        let task = tokio::spawn(run(ours, offset.clone(), wake.clone(), every, Duration::from_secs(5)));
        let mut buf = vec![0u8; 4096];
        let n = theirs.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$3\r\n100\r\n");
        // Before the offset moves: fast acks.
        let t = tokio::time::Instant::now();
        let n = theirs.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"$3\r\n100\r\n"));
        assert!(t.elapsed() < every, "startup acks come every 100 ms");
        offset.store(12345, Ordering::Release);
        wake.notify_one();
        let n = theirs.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"$5\r\n12345\r\n"));
        // Nothing asks for this one: the interval sends it.
        let t = tokio::time::Instant::now();
        let n = theirs.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"$5\r\n12345\r\n"));
        assert!(t.elapsed() >= every - Duration::from_millis(20), "{:?}", t.elapsed());
        drop(theirs);
        let stopped = task.await.unwrap();
        assert!(stopped.is_err());
    }
}
