//! Resource limits and graceful shutdown of the proxy (issue 22), against a real proxy in
//! front of a real redis-server: `--maxclients`, `--client-output-buffer-limit`,
//! `--client-query-buffer-limit`, `--timeout`, a bounded backend queue, and SIGTERM.

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use sluice_common::resp::{encode_command, parse_frame, Frame, Limits, ReplyCodec};
use sluice_harness::client::{call_ok, RespConn};
use sluice_harness::cluster::ProxyCluster;
use sluice_harness::wait_for;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const DEADLINE: Duration = Duration::from_secs(30);

/// The proxy's resident memory in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kb: u64 = line.split_whitespace().nth(1).context("VmRSS without a value")?.parse()?;
    Ok(kb * 1024)
}

/// How many file descriptors the process has open.
fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn error_text(f: &Frame) -> Option<String> {
    match f {
        Frame::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
        _ => None,
    }
}

/// Reads until the peer closes; the bytes read (an error such as a reset counts as closed).
async fn read_to_close<S: tokio::io::AsyncRead + Unpin + ?Sized>(stream: &mut S) -> Result<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => bail!("the connection was not closed within {DEADLINE:?} ({total} bytes read)"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(total),
            Ok(Ok(n)) => total += n as u64,
        }
    }
}

fn proxy_log_path(cluster: &ProxyCluster) -> std::path::PathBuf {
    cluster.dir.path().join(format!("proxy-{}.log", cluster.proxies[0].port))
}

fn proxy_log(cluster: &ProxyCluster) -> String {
    std::fs::read_to_string(proxy_log_path(cluster)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxclients_refuses_the_next_client_like_redis_and_admits_again_after_one_leaves() -> Result<()> {
    let mut cluster = ProxyCluster::start(1, &["--maxclients", "5"]).await?;
    let addr = cluster.proxies[0].addr();
    let pid = cluster.proxies[0].process().pid().context("proxy pid")?;
    // The readiness checks' connections may still be closing: wait until 5 are admitted.
    let mut admitted = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while admitted.len() < 5 {
        assert!(std::time::Instant::now() < deadline, "only {} clients admitted", admitted.len());
        match ping_or_refused(&addr).await? {
            Some(c) => admitted.push(c),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // The sixth: Redis's error, then the connection is closed.
    let mut sixth = RespConn::connect(&addr).await?;
    let reply = sixth.read_reply().await?;
    assert_eq!(error_text(&reply).as_deref(), Some("ERR max number of clients reached"), "{reply:?}");
    assert!(sixth.read_reply().await.is_err(), "the refused connection stays open");
    // The admitted ones keep being served.
    for c in &mut admitted {
        assert_eq!(c.call(&["SET", "k", "v"]).await?, Frame::Simple("OK".into()));
    }
    // One leaves: a new client gets its place.
    drop(admitted.pop());
    let mut again = wait_for("a client admitted after one left", DEADLINE, || {
        let addr = addr.clone();
        async move { ping_or_refused(&addr).await }
    })
    .await?;
    assert_eq!(again.call(&["GET", "k"]).await?, Frame::Bulk("v".into()));

    // 1000 refused connections cost nothing that stays: memory and descriptors stay flat.
    let (rss_before, fds_before) = (rss(pid)?, open_fds(pid)?);
    for round in 0..20 {
        let refused = (0..50).map(|_| {
            let addr = addr.clone();
            async move {
                let mut c = RespConn::connect(&addr).await?;
                let reply = c.read_reply().await?;
                anyhow::ensure!(
                    error_text(&reply).as_deref() == Some("ERR max number of clients reached"),
                    "refused with {reply:?}"
                );
                anyhow::ensure!(c.read_reply().await.is_err(), "a refused connection stayed open");
                Ok(())
            }
        });
        for r in futures::future::join_all(refused).await {
            r.with_context(|| format!("round {round}"))?;
        }
    }
    let info = again.call(&["INFO", "clients"]).await?;
    let info = String::from_utf8_lossy(info.as_bytes().context("INFO is a bulk string")?).into_owned();
    assert!(info.contains("connected_clients:5\r\n"), "{info}");
    let fds = wait_for("descriptors of refused clients closed", DEADLINE, || async {
        let fds = open_fds(pid)?;
        Ok((fds <= fds_before + 4).then_some(fds))
    })
    .await?;
    let grown = rss(pid)?.saturating_sub(rss_before);
    // A refused client that stayed would hold a socket, its buffers and two tasks (tens of
    // KiB each): 1000 of them would pass this.
    assert!(grown < 16 << 20, "RSS grew by {grown} bytes over 1000 refused clients (fds {fds_before} -> {fds})");
    Ok(())
}

/// Sends `PING` on a new connection: `Some(conn)` if it was answered `PONG`, `None` if the
/// proxy refused the client with Redis's error (and closed it); anything else fails.
async fn ping_or_refused(addr: &str) -> Result<Option<RespConn>> {
    let mut c = RespConn::connect(addr).await?;
    match c.call(&["PING"]).await {
        Ok(Frame::Simple(s)) if &s[..] == b"PONG" => Ok(Some(c)),
        Ok(reply) if error_text(&reply).as_deref() == Some("ERR max number of clients reached") => Ok(None),
        // The refusal can arrive before the PING is written, and the close with it.
        Err(_) => Ok(None),
        Ok(reply) => bail!("PING answered {reply:?}"),
    }
}

/// 2,000 clients against `--maxclients 1000`: 1,000 are served, the other 1,000 get Redis's
/// error, and the proxy's memory grows by what 1,000 sessions hold, nothing for the refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_against_maxclients_1000_half_are_served_half_refused() -> Result<()> {
    const MAX: usize = 1000;
    let mut cluster = ProxyCluster::start(1, &["--maxclients", "1000"]).await?;
    let addr = cluster.proxies[0].addr();
    let pid = cluster.proxies[0].process().pid().context("proxy pid")?;
    let rss_start = rss(pid)?;
    // The first 1,000, 100 at a time (the readiness checks' connections may still be closing:
    // a refused one is tried again until 1,000 are in).
    let mut admitted = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    while admitted.len() < MAX {
        assert!(std::time::Instant::now() < deadline, "only {} clients admitted", admitted.len());
        let want = (MAX - admitted.len()).min(100);
        let batch = futures::future::join_all((0..want).map(|_| ping_or_refused(&addr))).await;
        for c in batch {
            admitted.extend(c?);
        }
    }
    let rss_admitted = rss(pid)?;
    // The next 1,000: every one refused.
    for round in 0..10 {
        let batch = futures::future::join_all((0..100).map(|_| ping_or_refused(&addr))).await;
        for c in batch {
            anyhow::ensure!(c?.is_none(), "round {round}: a client past --maxclients {MAX} was served");
        }
    }
    // The 1,000 admitted are all served.
    for (i, c) in admitted.iter_mut().enumerate() {
        let key = format!("max:{i}");
        assert_eq!(c.call(&["SET", key.as_str(), "v"]).await?, Frame::Simple("OK".into()));
    }
    let rss_end = rss(pid)?;
    eprintln!(
        "maxclients: RSS {} MiB at start, {} MiB with {MAX} clients, {} MiB after {MAX} more refused",
        rss_start >> 20,
        rss_admitted >> 20,
        rss_end >> 20
    );
    let refused_cost = rss_end.saturating_sub(rss_admitted);
    assert!(refused_cost < 16 << 20, "RSS grew by {refused_cost} bytes over {MAX} refused clients");
    let per_client = rss_admitted.saturating_sub(rss_start) / MAX as u64;
    assert!(per_client < 256 << 10, "each admitted client holds {per_client} bytes of RSS");
    Ok(())
}

/// A client that reads is served a pipeline of replies far larger than its limits, hard one
/// included: its session sends the next batch to the node only once the client has read
/// enough (back-pressure at the source), so the proxy never holds much for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_gets_a_pipeline_of_replies_far_larger_than_its_output_limit() -> Result<()> {
    const HARD: u64 = 96 << 20;
    const VALUE: usize = 256 << 10;
    const GETS: usize = 1024;
    // The soft limit's seconds are generous: a loaded machine may read slowly.
    let mut cluster = ProxyCluster::start(1, &["--client-output-buffer-limit", "96mb 16mb 10"]).await?;
    let addr = cluster.proxies[0].addr();
    let pid = cluster.proxies[0].process().pid().context("proxy pid")?;
    let mut client = RespConn::connect(&addr).await?;
    let value = vec![b'v'; VALUE];
    assert_eq!(client.call(&[&b"SET"[..], b"big", &value]).await?, Frame::Simple("OK".into()));
    let baseline = rss(pid)?;
    // 256 MiB of replies to one pipeline (batches of 256 commands, 64 MiB of replies each),
    // read as they come: only what the client has not read yet counts, so it is served in
    // full.
    let mut out = BytesMut::new();
    for _ in 0..GETS {
        encode_command(&["GET", "big"], &mut out);
    }
    let stream = client.stream();
    stream.write_all(&out).await?;
    let one = format!("${VALUE}\r\n").len() + VALUE + 2;
    let expected = (GETS * one) as u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut peak = baseline;
    while total < expected {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed after {total} of {expected} bytes:\n{}", proxy_log(&cluster));
        total += n as u64;
        peak = peak.max(rss(pid)?);
    }
    assert_eq!(total, expected);
    assert!(!proxy_log(&cluster).contains("--client-output-buffer-limit"), "{}", proxy_log(&cluster));
    let grown = peak.saturating_sub(baseline);
    eprintln!("a reading client: {} MiB served, the proxy's RSS grew by {} MiB at most", total >> 20, grown >> 20);
    assert!(grown < HARD + (64 << 20), "the proxy's RSS grew by {grown} bytes (hard limit {HARD})");
    Ok(())
}

/// Issue 22: one client pipelines 1 GiB of `GET big` (1 MiB each) and never reads. It is cut
/// off (`16mb` stands for hard 32 MiB, soft 16 MiB for 1 s: its first request brings 16 MiB,
/// nothing more is sent for it, and it stays above the soft limit), the proxy's RSS grows by
/// less than the hard limit plus 64 MiB, and the bystanders, whose commands share the greedy
/// client's node connection (`--backend-connections 1`), keep their normal latency: nothing
/// waits for the greedy client to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_cut_off_at_its_output_limit_while_others_keep_their_latency() -> Result<()> {
    const HARD: u64 = 32 << 20;
    const VALUE: usize = 1 << 20;
    const GETS: usize = 1024;
    const BYSTANDERS: usize = 4;
    // Pairs each bystander times once the greedy client is gone, at least.
    const PAIRS: usize = 100;
    let args = ["--client-output-buffer-limit", "16mb", "--backend-connections", "1"];
    let mut cluster = ProxyCluster::start(1, &args).await?;
    let addr = cluster.proxies[0].addr();
    let pid = cluster.proxies[0].process().pid().context("proxy pid")?;
    let value = vec![b'x'; VALUE];
    assert_eq!(call_ok(&addr, &[&b"SET"[..], b"big", &value]).await?, Frame::Simple("OK".into()));
    let mut bystanders = Vec::new();
    for _ in 0..BYSTANDERS {
        bystanders.push(RespConn::connect(&addr).await?);
    }
    let quiet = bystander_latencies(&mut bystanders[0], "quiet", PAIRS, || true).await?;
    let baseline = rss(pid)?;

    // The greedy client writes its 1024 GETs and never reads.
    let mut greedy = TcpStream::connect(&addr).await?;
    let mut out = BytesMut::new();
    for _ in 0..GETS {
        encode_command(&["GET", "big"], &mut out);
    }
    let gone = Arc::new(AtomicBool::new(false));
    let log = proxy_log_path(&cluster);
    let flood = tokio::spawn({
        let gone = gone.clone();
        async move {
            greedy.write_all(&out).await?;
            // It reads nothing until the proxy says it cut the client off; what it can read
            // then is what was in flight.
            wait_for("the greedy client cut off", DEADLINE, || async {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                Ok(log.contains("--client-output-buffer-limit").then_some(()))
            })
            .await?;
            let read = read_to_close(&mut greedy).await;
            gone.store(true, Ordering::Release);
            read
        }
    });
    // The proxy's memory, sampled every few milliseconds until the greedy client is gone.
    let sampler = tokio::spawn({
        let gone = gone.clone();
        async move {
            let mut peak = baseline;
            while !gone.load(Ordering::Acquire) {
                peak = peak.max(rss(pid)?);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<u64, anyhow::Error>(peak.max(rss(pid)?))
        }
    });
    // Meanwhile the bystanders go on, each until the greedy client is gone and it has timed
    // PAIRS more pairs.
    let timed = bystanders.iter_mut().enumerate().map(|(i, conn)| {
        let gone = gone.clone();
        let mut after = 0;
        async move {
            bystander_latencies(conn, &format!("b{i}"), usize::MAX, move || {
                after += usize::from(gone.load(Ordering::Acquire));
                after <= PAIRS
            })
            .await
        }
    });
    let mut latencies = Vec::new();
    for l in futures::future::join_all(timed).await {
        latencies.extend(l?);
    }
    let read = flood.await??;
    let peak = sampler.await??;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "output limit: the greedy client read {} MiB before being cut off; RSS grew by {} MiB at most; \
         {BYSTANDERS} bystanders' SET+GET during the flood: {} pairs, p50 {:?}, p99 {:?}, max {:?} \
         (quiet: p50 {:?}, max {:?})",
        read >> 20,
        grown >> 20,
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        quiet[quiet.len() / 2],
        quiet[quiet.len() - 1],
    );
    // Cut off at once: what it read was under the hard limit, plus the sockets' buffers.
    assert!(read < HARD + (32 << 20), "the greedy client read {read} bytes: it was not cut off at its limit");
    assert!(grown < HARD + (64 << 20), "the proxy's RSS grew by {grown} bytes (hard limit {HARD})");
    // Debug build, shared machine: wide margins (the head-of-line wait behind the greedy
    // client this guards against took the max past 1 s).
    assert!(at(0.99) < Duration::from_millis(100), "bystanders' p99 {:?}", at(0.99));
    assert!(at(1.0) < Duration::from_millis(500), "bystanders' max {:?}", at(1.0));
    // And the proxy goes on serving the value to a client that reads.
    let reply = call_ok(&addr, &["GET", "big"]).await?;
    assert_eq!(reply.as_bytes().map(|b| b.len()), Some(VALUE));
    Ok(())
}

/// Times `SET`+`GET` pairs on `conn` (keys named after `name`), at most `max` of them, while
/// `more()` says so; the times, sorted.
async fn bystander_latencies(
    conn: &mut RespConn,
    name: &str,
    max: usize,
    mut more: impl FnMut() -> bool,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    while times.len() < max && more() {
        let key = format!("bystander:{name}:{}", times.len());
        let started = std::time::Instant::now();
        assert_eq!(conn.call(&["SET", key.as_str(), "1"]).await?, Frame::Simple("OK".into()));
        assert_eq!(conn.call(&["GET", key.as_str()]).await?, Frame::Bulk("1".into()));
        times.push(started.elapsed());
        anyhow::ensure!(times.len() < 1_000_000, "the flood never ended");
    }
    times.sort();
    Ok(times)
}

/// The soft limit: a client whose unread replies stay above it (and under the hard limit) is
/// cut off once its seconds have passed, though no further reply comes to be charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_above_its_soft_output_limit_is_cut_off_after_its_seconds() -> Result<()> {
    const VALUE: usize = 1 << 20;
    let cluster = ProxyCluster::start(1, &["--client-output-buffer-limit", "256mb 4mb 1"]).await?;
    let addr = cluster.proxies[0].addr();
    let value = vec![b's'; VALUE];
    assert_eq!(call_ok(&addr, &[&b"SET"[..], b"big", &value]).await?, Frame::Simple("OK".into()));
    // 16 MiB of replies, unread: above the soft limit, far under the hard one.
    let mut client = TcpStream::connect(&addr).await?;
    let mut out = BytesMut::new();
    for _ in 0..16 {
        encode_command(&["GET", "big"], &mut out);
    }
    let started = std::time::Instant::now();
    client.write_all(&out).await?;
    wait_for("the client cut off at its soft limit", DEADLINE, || async {
        Ok(proxy_log(&cluster).contains("--client-output-buffer-limit").then_some(()))
    })
    .await?;
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(1), "cut off after {after:?}, before its soft limit's second");
    read_to_close(&mut client).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_larger_than_the_query_buffer_limit_closes_the_client_and_is_not_run() -> Result<()> {
    let cluster = ProxyCluster::start(1, &["--client-query-buffer-limit", "1mb"]).await?;
    let addr = cluster.proxies[0].addr();
    let mut client = TcpStream::connect(&addr).await?;
    // A SET whose value (2 MB) is within proto-max-bulk-len but past the query buffer limit.
    let mut out = BytesMut::new();
    encode_command(&[&b"SET"[..], b"huge", &vec![b'y'; 2_000_000]], &mut out);
    let writer = tokio::spawn(async move {
        // The proxy may close before all is written: a failed write is expected.
        let _ = client.write_all(&out).await;
        client
    });
    let mut client = writer.await?;
    let mut buf = BytesMut::new();
    let mut codec = ReplyCodec::new(Limits::SERVER);
    let reply = loop {
        if let Some(raw) = codec.decode(&mut buf)? {
            break Some(parse_frame(&raw, &Limits::SERVER)?.0);
        }
        match tokio::time::timeout(DEADLINE, client.read_buf(&mut buf)).await? {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    if let Some(reply) = reply {
        let text = error_text(&reply).unwrap_or_default();
        assert!(text.contains("query buffer limit"), "{reply:?}");
    }
    read_to_close(&mut client).await?;
    assert!(proxy_log(&cluster).contains("--client-query-buffer-limit"), "{}", proxy_log(&cluster));
    assert_eq!(call_ok(&cluster.nodes[0].addr(), &["EXISTS", "huge"]).await?, Frame::Integer(0));
    // A command under the limit is served.
    let mut ok = RespConn::connect(&addr).await?;
    let value = vec![b'z'; 500_000];
    assert_eq!(ok.call(&[&b"SET"[..], b"fits", &value]).await?, Frame::Simple("OK".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_closed_but_a_blocked_one_is_not() -> Result<()> {
    let cluster = ProxyCluster::start(1, &["--timeout", "1"]).await?;
    let addr = cluster.proxies[0].addr();
    // Blocked first, so it has waited longer than the idle one when that one is closed.
    let mut blocked = RespConn::connect(&addr).await?;
    let mut out = BytesMut::new();
    encode_command(&["BLPOP", "queue", "0"], &mut out);
    blocked.stream().write_all(&out).await?;
    let mut idle = RespConn::connect(&addr).await?;
    assert_eq!(idle.call(&["PING"]).await?, Frame::Simple("PONG".into()));
    let closed = read_to_close(idle.stream()).await?;
    assert_eq!(closed, 0, "the idle client got something before being closed");
    assert!(proxy_log(&cluster).contains("closing an idle client"), "{}", proxy_log(&cluster));
    // The blocked client is still there and gets its element.
    assert_eq!(call_ok(&addr, &["LPUSH", "queue", "job"]).await?, Frame::Integer(1));
    let reply = blocked.read_reply().await?;
    assert_eq!(reply, Frame::Array(vec![Frame::Bulk("queue".into()), Frame::Bulk("job".into())]));
    // Once answered, it is idle like any other.
    read_to_close(blocked.stream()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_through_a_backend_queue_of_one_are_answered_in_order() -> Result<()> {
    let cluster = ProxyCluster::start(1, &["--backend-queue", "1", "--backend-connections", "1"]).await?;
    let addr = cluster.proxies[0].addr();
    let clients = (0..4).map(|c| {
        let addr = addr.clone();
        async move {
            let mut conn = RespConn::connect(&addr).await?;
            let key = format!("counter:{c}");
            let mut expected = 0;
            for _ in 0..10 {
                let commands: Vec<Vec<&str>> = (0..500).map(|_| vec!["INCR", key.as_str()]).collect();
                for reply in conn.pipeline(&commands).await? {
                    expected += 1;
                    anyhow::ensure!(reply == Frame::Integer(expected), "client {c}: {reply:?}, expected {expected}");
                }
            }
            Ok(())
        }
    });
    for r in futures::future::join_all(clients).await {
        r?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_what_is_in_flight_and_exits_zero() -> Result<()> {
    let mut cluster = ProxyCluster::start(1, &["--shutdown-timeout-ms", "5000"]).await?;
    let addr = cluster.proxies[0].addr();
    let node = cluster.nodes[0].addr();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    // A client pipelining INCRs until the proxy closes its connection.
    let client = tokio::spawn({
        let answered = answered.clone();
        async move {
            let mut conn = RespConn::connect(&addr).await?;
            let mut expected = 0i64;
            loop {
                let mut out = BytesMut::new();
                for _ in 0..100 {
                    encode_command(&["INCR", "counter"], &mut out);
                }
                if conn.stream().write_all(&out).await.is_err() {
                    return Ok::<i64, anyhow::Error>(expected);
                }
                for _ in 0..100 {
                    match conn.read_reply().await {
                        Ok(Frame::Integer(n)) => {
                            expected += 1;
                            anyhow::ensure!(n == expected, "INCR answered {n}, expected {expected}");
                            answered.store(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(other) => bail!("INCR answered {other:?}"),
                        Err(_) => return Ok(expected),
                    }
                }
            }
        }
    });
    wait_for("INCRs answered", DEADLINE, || async {
        Ok((answered.load(std::sync::atomic::Ordering::Relaxed) >= 2000).then_some(()))
    })
    .await?;
    cluster.proxies[0].process().terminate();
    let last = tokio::time::timeout(DEADLINE, client).await.context("the client was never closed")???;
    let status = wait_for("the proxy exits", DEADLINE, || {
        let status = cluster.proxies[0].process().exit_status();
        async move { Ok(status) }
    })
    .await?;
    assert!(status.success(), "the proxy exited with {status}");
    let log = proxy_log(&cluster);
    assert!(log.contains("shutting down") && log.contains("sluice-proxy stopped"), "{log}");
    // Every INCR the node ran was answered: the proxy stopped reading at the signal and answered
    // all it had read (a command it never read never ran), so the counter is the last answer.
    let in_node = match call_ok(&node, &["GET", "counter"]).await? {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).parse::<i64>()?,
        other => bail!("GET counter answered {other:?}"),
    };
    assert!(last >= 2000 && in_node == last, "answered up to {last}, the node holds {in_node}");
    Ok(())
}
