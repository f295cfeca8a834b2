//! The replication stream after the snapshot: commands in order, the offset as the master
//! counts it, acks that keep the link online, and a clean stop on drop.

mod common;

use common::{Client, RedisServer};
use sluice_rdb::{Event, LinkError, LinkOptions, ReplCommand, ReplicaLink};
use std::time::Duration;
use tokio::time::timeout;

async fn source(diskless: bool, extra: &[&str]) -> RedisServer {
    let mut args = vec!["--repl-diskless-sync", if diskless { "yes" } else { "no" }, "--repl-diskless-sync-delay", "0"];
    args.extend_from_slice(extra);
    RedisServer::start(&args).await
}

/// Reads the snapshot to its end, returning its entry count.
async fn drain_snapshot(link: &mut ReplicaLink) -> usize {
    let mut entries = 0;
    while let Some(event) = link.next_event().await.expect("snapshot") {
        if matches!(event, Event::Entry(_)) {
            entries += 1;
        }
    }
    entries
}

async fn next(link: &mut ReplicaLink) -> ReplCommand {
    timeout(Duration::from_secs(5), link.next_command()).await.expect("a command within 5 s").expect("a command")
}

/// Reads commands (skipping PINGs) until the link's offset reaches `target`.
async fn read_until(link: &mut ReplicaLink, target: u64) -> Vec<ReplCommand> {
    let mut got = Vec::new();
    while link.offset() < target {
        let cmd = next(link).await;
        assert_eq!(cmd.offset, link.offset());
        if cmd.name() != "PING" {
            got.push(cmd);
        }
    }
    got
}

async fn master_offset(c: &mut Client) -> u64 {
    c.info_field("replication", "master_repl_offset").await.and_then(|v| v.parse().ok()).expect("master_repl_offset")
}

fn slave0(info: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix("slave0:").map(str::to_string))
}

fn field<'a>(slave: &'a str, name: &str) -> Option<&'a str> {
    slave.split(',').find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

async fn commands_in_order(diskless: bool) {
    let server = source(diskless, &[]).await;
    let mut c = server.client().await;
    c.ok(&["SET", "before", "snapshot"]).await;

    let mut link = ReplicaLink::connect(&server.addr(), None, 7001).await.expect("link");
    assert_eq!(drain_snapshot(&mut link).await, 1);
    assert_eq!(link.offset(), link.initial_offset());
    assert!(matches!(link.next_event().await, Ok(None)));

    c.ok(&["SET", "k1", "v"]).await;
    c.ok(&["INCR", "counter"]).await;
    c.ok(&["DEL", "k1"]).await;
    c.ok(&["EXPIRE", "counter", "100"]).await;
    c.ok(&["HSET", "h", "f", "v"]).await;
    c.ok(&["MULTI"]).await;
    c.ok(&["SET", "a", "1"]).await;
    c.ok(&["INCR", "a"]).await;
    c.ok(&["EXEC"]).await;
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])";
    c.ok(&["EVAL", script, "2", "e1", "e2", "val"]).await;
    c.ok(&["SELECT", "3"]).await;
    c.ok(&["SET", "x", "y"]).await;

    let target = master_offset(&mut c).await;
    let got = read_until(&mut link, target).await;
    assert_eq!(link.offset(), target, "offset equals master_repl_offset once caught up");
    let names: Vec<String> = got.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "SELECT",
            "SET",
            "INCR",
            "DEL",
            "PEXPIREAT",
            "HSET",
            "MULTI",
            "SET",
            "INCR",
            "EXEC",
            "MULTI",
            "SET",
            "INCR",
            "EXEC",
            "SELECT",
            "SET"
        ],
        "{got:?}"
    );
    assert_eq!(got[0].args[1], "0");
    assert_eq!(got[1].args[1..], ["k1", "v"]);
    assert_eq!(got[11].args[1..], ["e1", "val"]);
    assert_eq!(got[14].args[1], "3");
    assert_eq!(got[15].args[1..], ["x", "y"]);
    // Offsets add up byte for byte.
    let consumed: usize = got.iter().map(|c| c.raw_len).sum();
    assert!(consumed as u64 <= target - link.initial_offset());
    for cmd in &got {
        assert_eq!(cmd.raw_len, cmd.raw.len());
    }
}

#[tokio::test]
async fn commands_in_order_diskless() {
    commands_in_order(true).await;
}

#[tokio::test]
async fn commands_in_order_disk_based() {
    commands_in_order(false).await;
}

#[tokio::test]
async fn acks_keep_the_link_online_and_drop_closes_it() {
    let server = source(true, &[]).await;
    let mut c = server.client().await;
    let mut link = ReplicaLink::connect(&server.addr(), None, 7002).await.expect("link");
    drain_snapshot(&mut link).await;
    c.ok(&["SET", "k", "v"]).await;
    let target = master_offset(&mut c).await;
    read_until(&mut link, target).await;

    // The caller now reads nothing for 3 s: the ack task alone keeps the master informed.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let info = String::from_utf8_lossy(&c.bulk(&["INFO", "replication"]).await.unwrap_or_default()).into_owned();
    let slave = slave0(&info).unwrap_or_else(|| panic!("no replica in {info}"));
    assert_eq!(field(&slave, "state"), Some("online"), "{slave}");
    assert_eq!(field(&slave, "port"), Some("7002"), "{slave}");
    let lag: u64 = field(&slave, "lag").and_then(|l| l.parse().ok()).expect("lag");
    assert!(lag <= 1, "lag {lag}: acks are not flowing ({slave})");
    let acked: u64 = field(&slave, "offset").and_then(|o| o.parse().ok()).expect("offset");
    assert_eq!(acked, link.offset(), "{slave}");

    drop(link);
    let mut gone = false;
    for _ in 0..100 {
        if c.info_field("replication", "connected_slaves").await.as_deref() == Some("0") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the master still lists the replica after the link was dropped");
}

#[tokio::test]
async fn getack_is_answered_at_once() {
    // WAIT makes the master send REPLCONF GETACK; the link must ack without waiting for its
    // next tick, which is set 60 s away here.
    let server = source(true, &[]).await;
    let mut c = server.client().await;
    let options = LinkOptions { ack_interval: Duration::from_secs(60), ..LinkOptions::default() };
    let mut link = ReplicaLink::connect_with(&server.addr(), None, 7003, options).await.expect("link");
    drain_snapshot(&mut link).await;
    // Get past the start of the stream (when acks go every 100 ms).
    c.ok(&["SET", "k0", "v"]).await;
    let target = master_offset(&mut c).await;
    read_until(&mut link, target).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // WAIT waits for this client's own last write.
    let wait = tokio::spawn(async move {
        c.ok(&["SET", "k", "v"]).await;
        c.int(&["WAIT", "1", "2000"]).await
    });
    let mut saw_getack = false;
    while !saw_getack {
        let cmd = next(&mut link).await;
        saw_getack = cmd.name() == "REPLCONF" && cmd.args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"));
    }
    let acked = timeout(Duration::from_secs(3), wait).await.expect("WAIT returns").expect("WAIT task");
    assert_eq!(acked, 1);
}

#[tokio::test]
async fn authentication() {
    let server = source(true, &["--requirepass", "s3cret"]).await;
    let err = ReplicaLink::connect(&server.addr(), Some("wrong"), 1).await.unwrap_err();
    assert!(matches!(err, LinkError::Auth(_)), "{err}");
    let err = ReplicaLink::connect(&server.addr(), None, 1).await.unwrap_err();
    assert!(matches!(err, LinkError::Auth(ref m) if m.contains("NOAUTH")), "{err}");
    let mut link = ReplicaLink::connect(&server.addr(), Some("s3cret"), 1).await.expect("link");
    drain_snapshot(&mut link).await;
    assert!(link.is_streaming());
    assert!(matches!(ReplicaLink::connect("127.0.0.1:1", None, 1).await, Err(LinkError::Io(_))));
}
