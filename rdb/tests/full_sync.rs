//! Full sync from a real redis-server holding every type in every encoding Redis 7.0 writes,
//! restored into a second server with RESTORE … ABSTTL REPLACE, then compared key by key.

mod common;

use bytes::Bytes;
use common::{Client, RedisServer};
use sluice_common::resp::Frame;
use sluice_rdb::{value_type as vt, Event, ReplicaLink, Transfer};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Deterministic pseudo-random bytes (incompressible for LZF).
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

async fn populate(c: &mut Client) {
    // Strings: embstr, int, negative int, int64-as-text, raw, LZF-compressible, incompressible.
    c.ok(&["SET", "str:small", "hello"]).await;
    c.ok(&["SET", "str:int", "12345"]).await;
    c.ok(&["SET", "str:int8", "-7"]).await;
    c.ok(&["SET", "str:int32", "2000000000"]).await;
    c.ok(&["SET", "str:int64", "12345678901234"]).await;
    c.ok(&["SET", "str:embstr", &"e".repeat(40)]).await;
    c.ok(&["SET", "str:lzf", &"b".repeat(100)]).await;
    c.ok(&["SET", "str:bigcomp", &"abc".repeat(50_000)]).await;
    c.ok(&[b"SET".as_slice(), b"str:noise", &noise(200_000, 7)]).await;
    c.ok(&[b"SET".as_slice(), b"str:empty", b""]).await;
    // Keys that the RDB encodes: as an integer, LZF-compressed, binary.
    c.ok(&["SET", "12345", "int-key"]).await;
    c.ok(&["SET", "-1", "negative-int-key"]).await;
    c.ok(&["SET", &format!("long:{}", "x".repeat(100)), "lzf-key"]).await;
    c.ok(&[b"SET".as_slice(), b"bin\x00\xff\r\nkey", b"v"]).await;

    // Lists (all quicklists in 7.0): one listpack node, many nodes, plain nodes.
    c.ok(&["RPUSH", "list:small", "a", "b", "c", "1", "2", "300000"]).await;
    let many: Vec<String> = (0..20_000).map(|i| format!("element-{i}")).collect();
    for chunk in many.chunks(1000) {
        let mut args = vec!["RPUSH", "list:big"];
        args.extend(chunk.iter().map(String::as_str));
        c.ok(&args).await;
    }
    c.ok(&["DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000"]).await;
    c.ok(&[b"RPUSH".as_slice(), b"list:plain", b"small", &noise(10_000, 3), b"tiny", &vec![b'z'; 20_000]]).await;

    // Sets: intset, hashtable of strings, hashtable of many integers.
    c.ok(&["SADD", "set:int", "1", "2", "3", "100000", "-5"]).await;
    c.ok(&["SADD", "set:str", "a", "b", "c"]).await;
    let ints: Vec<String> = (0..600).map(|i| i.to_string()).collect();
    let mut args = vec!["SADD", "set:bigint"];
    args.extend(ints.iter().map(String::as_str));
    c.ok(&args).await;

    // Hashes: listpack, hashtable by count, hashtable by value size.
    c.ok(&["HSET", "hash:small", "f1", "v1", "f2", "2"]).await;
    let fields: Vec<String> = (0..300).flat_map(|i| [format!("field{i}"), format!("value{i}")]).collect();
    let mut args = vec!["HSET", "hash:big"];
    args.extend(fields.iter().map(String::as_str));
    c.ok(&args).await;
    c.ok(&["HSET", "hash:longval", "f", &"v".repeat(100)]).await;

    // Sorted sets: listpack (with infinities), skiplist by count, skiplist by member size.
    c.ok(&["ZADD", "zset:small", "1", "a", "2.5", "b", "-inf", "c", "+inf", "d"]).await;
    let members: Vec<String> = (0..200).flat_map(|i| [format!("{}.25", i), format!("m{i}")]).collect();
    let mut args = vec!["ZADD", "zset:big"];
    args.extend(members.iter().map(String::as_str));
    c.ok(&args).await;
    c.ok(&["ZADD", "zset:longmember", "3.14159", &"m".repeat(100)]).await;

    // Streams: several listpacks, deleted entries, two groups, pending entries, consumers.
    for i in 0..250 {
        c.ok(&["XADD", "stream:s", "*", "field", &format!("value{i}"), "n", &i.to_string()]).await;
    }
    c.ok(&["XGROUP", "CREATE", "stream:s", "g1", "0"]).await;
    c.ok(&["XREADGROUP", "GROUP", "g1", "alice", "COUNT", "5", "STREAMS", "stream:s", ">"]).await;
    c.ok(&["XREADGROUP", "GROUP", "g1", "bob", "COUNT", "3", "STREAMS", "stream:s", ">"]).await;
    let pending = c.ok(&["XPENDING", "stream:s", "g1", "-", "+", "1"]).await;
    if let Frame::Array(entries) = pending {
        if let Some(Frame::Array(first)) = entries.first() {
            if let Some(id) = first.first().and_then(|f| f.as_bytes()) {
                c.ok(&[b"XACK".as_slice(), b"stream:s", b"g1", id]).await;
            }
        }
    }
    let ids = c.ok(&["XRANGE", "stream:s", "-", "+", "COUNT", "20"]).await;
    if let Frame::Array(entries) = ids {
        for e in entries.iter().skip(10).step_by(3) {
            if let Frame::Array(parts) = e {
                if let Some(id) = parts.first().and_then(|f| f.as_bytes()) {
                    c.ok(&[b"XDEL".as_slice(), b"stream:s", id]).await;
                }
            }
        }
    }
    c.ok(&["XGROUP", "CREATE", "stream:s", "g2", "$"]).await;
    c.ok(&["XGROUP", "CREATECONSUMER", "stream:s", "g2", "carol"]).await;
    // A stream whose only entry was deleted: no listpacks at all.
    c.ok(&["XADD", "stream:empty", "1-1", "f", "v"]).await;
    c.ok(&["XDEL", "stream:empty", "1-1"]).await;

    // Expiring keys (absolute times restored with ABSTTL).
    c.ok(&["SET", "ttl:str", "v", "PX", "100000"]).await;
    c.ok(&["EXPIRE", "list:small", "1000"]).await;
    c.ok(&["PEXPIREAT", "hash:small", &(now_ms() + 500_000).to_string()]).await;

    // Other databases.
    c.ok(&["SELECT", "1"]).await;
    c.ok(&["SET", "a", "1"]).await;
    c.ok(&["HSET", "h", "f", "v"]).await;
    c.ok(&["SELECT", "7"]).await;
    c.ok(&["RPUSH", "l", "x"]).await;
    c.ok(&["EXPIRE", "l", "5000"]).await;
    c.ok(&["SELECT", "0"]).await;

    // A function library (its code is long enough to be LZF-compressed).
    let lib = "#!lua name=mylib\nredis.register_function('myfunc', function(keys, args) return 'hello from mylib' end)";
    c.ok(&["FUNCTION", "LOAD", lib]).await;
}

/// Reads the whole snapshot from `source` and restores it into `target`; returns the value
/// types seen and the number of keys restored.
async fn sync_into(link: &mut ReplicaLink, target: &mut Client) -> (BTreeSet<u8>, usize, usize) {
    let mut types = BTreeSet::new();
    let mut keys = 0;
    let mut functions = 0;
    let mut db = 0;
    let mut version = None;
    let mut seen_eof = false;
    while let Some(event) = link.next_event().await.expect("snapshot") {
        match event {
            Event::Header { version: v } => version = Some(v),
            Event::Entry(e) => {
                if e.db != db {
                    target.ok(&["SELECT", &e.db.to_string()]).await;
                    db = e.db;
                }
                let payload = e.dump_payload(version.expect("header first"));
                let ttl = e.expire_at_ms.unwrap_or(0).to_string();
                target.ok(&[b"RESTORE".as_slice(), &e.key, ttl.as_bytes(), &payload, b"ABSTTL", b"REPLACE"]).await;
                types.insert(e.value_type);
                keys += 1;
            }
            Event::Function(f) => {
                assert!(f.code.as_ref().is_some_and(|c| c.starts_with(b"#!lua name=mylib")), "{f:?}");
                target.ok(&[b"FUNCTION".as_slice(), b"RESTORE", &f.dump_payload(version.expect("header"))]).await;
                functions += 1;
            }
            Event::Eof { checksum } => {
                assert_ne!(checksum, 0, "rdbchecksum is on: the stream carries a checksum");
                seen_eof = true;
            }
            _ => {}
        }
    }
    assert!(seen_eof);
    assert!(link.is_streaming());
    target.ok(&["SELECT", "0"]).await;
    (types, keys, functions)
}

/// Compares every key of every database between the two servers.
async fn compare(source: &mut Client, target: &mut Client) -> usize {
    let mut identical_dumps = 0;
    for db in 0..16 {
        let db = db.to_string();
        source.ok(&["SELECT", &db]).await;
        target.ok(&["SELECT", &db]).await;
        assert_eq!(source.int(&["DBSIZE"]).await, target.int(&["DBSIZE"]).await, "DBSIZE of db {db}");
        for key in source.list(&["KEYS", "*"]).await {
            let k = key.as_ref();
            let what = format!("db {db} key {:?}", String::from_utf8_lossy(k));
            let t = source.bulk(&[b"TYPE".as_slice(), k]).await;
            assert_eq!(t, target.bulk(&[b"TYPE".as_slice(), k]).await, "TYPE of {what}");
            let enc = source.bulk(&[b"OBJECT".as_slice(), b"ENCODING", k]).await;
            assert_eq!(enc, target.bulk(&[b"OBJECT".as_slice(), b"ENCODING", k]).await, "encoding of {what}");
            let (sp, tp) = (source.int(&[b"PTTL".as_slice(), k]).await, target.int(&[b"PTTL".as_slice(), k]).await);
            assert!(sp == tp || (sp > 0 && tp > 0 && (sp - tp).abs() < 3000), "PTTL of {what}: {sp} vs {tp}");
            let (sd, td) = (source.bulk(&[b"DUMP".as_slice(), k]).await, target.bulk(&[b"DUMP".as_slice(), k]).await);
            if sd == td {
                identical_dumps += 1;
                continue;
            }
            // Hashtables iterate in an order that depends on the process's hash seed: compare
            // contents instead.
            assert_eq!(enc.as_deref(), Some(b"hashtable".as_slice()), "DUMP of {what} differs");
            match t.as_deref() {
                Some(b"set") => {
                    let mut a = source.list(&[b"SMEMBERS".as_slice(), k]).await;
                    let mut b = target.list(&[b"SMEMBERS".as_slice(), k]).await;
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "members of {what}");
                }
                Some(b"hash") => {
                    let pairs = |v: Vec<Bytes>| -> BTreeMap<Bytes, Bytes> {
                        v.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()
                    };
                    let a = pairs(source.list(&[b"HGETALL".as_slice(), k]).await);
                    let b = pairs(target.list(&[b"HGETALL".as_slice(), k]).await);
                    assert_eq!(a, b, "fields of {what}");
                }
                other => panic!("DUMP of {what} ({other:?}) differs"),
            }
        }
    }
    source.ok(&["SELECT", "0"]).await;
    target.ok(&["SELECT", "0"]).await;
    identical_dumps
}

async fn full_sync(diskless: bool) {
    let mode = if diskless { "yes" } else { "no" };
    let source = RedisServer::start(&[
        "--repl-diskless-sync",
        mode,
        "--repl-diskless-sync-delay",
        "0",
        "--enable-debug-command",
        "yes",
        "--rdbcompression",
        "yes",
    ])
    .await;
    let target = RedisServer::start(&[]).await;
    let mut src = source.client().await;
    let mut dst = target.client().await;
    populate(&mut src).await;

    let mut link = ReplicaLink::connect(&source.addr(), None, 7777).await.expect("replica link");
    assert_eq!(matches!(link.transfer(), Transfer::Diskless { .. }), diskless, "{:?}", link.transfer());
    let (types, keys, functions) = sync_into(&mut link, &mut dst).await;
    assert_eq!(link.rdb_version(), Some(10), "redis 7.0 writes RDB version 10");

    let expected_types = [
        vt::STRING,
        vt::LIST_QUICKLIST_2,
        vt::SET_INTSET,
        vt::SET,
        vt::HASH_LISTPACK,
        vt::HASH,
        vt::ZSET_LISTPACK,
        vt::ZSET_2,
        vt::STREAM_LISTPACKS_2,
    ];
    assert_eq!(types, expected_types.into_iter().collect(), "value types seen");
    let mut total = 0;
    for db in ["0", "1", "7"] {
        src.ok(&["SELECT", db]).await;
        total += src.int(&["DBSIZE"]).await as usize;
    }
    src.ok(&["SELECT", "0"]).await;
    assert_eq!(keys, total);
    assert_eq!(functions, 1);

    let identical = compare(&mut src, &mut dst).await;
    // Everything but the hashtable sets and hashes must be byte-identical.
    assert!(identical >= keys - 4, "{identical} of {keys} DUMPs identical");
    assert_eq!(src.ok(&["FUNCTION", "LIST", "WITHCODE"]).await, dst.ok(&["FUNCTION", "LIST", "WITHCODE"]).await);
    assert_eq!(dst.bulk(&["FCALL", "myfunc", "0"]).await.as_deref(), Some(b"hello from mylib".as_slice()));
}

#[tokio::test]
async fn full_sync_diskless() {
    full_sync(true).await;
}

#[tokio::test]
async fn full_sync_disk_based() {
    full_sync(false).await;
}
