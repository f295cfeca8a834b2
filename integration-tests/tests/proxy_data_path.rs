//! The proxy data path end to end: real redis-server nodes, real sluice-proxy processes
//! configured with `UMCTL SETDB`, real clients (redis-rs cluster client, redis-cli, raw RESP).

use anyhow::Result;
use futures::StreamExt;
use redis::AsyncCommands;
use sluice_common::resp::{parse_frame, Frame, Limits, ReplyCodec};
use sluice_common::slot::key_slot;
use sluice_harness::client::{call, RespConn};
use sluice_harness::cluster::ProxyCluster;
use sluice_harness::redis_node::RedisNode;
use sluice_harness::wait_for;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bulk(f: &Frame) -> Option<String> {
    f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn err_text(f: &Frame) -> String {
    match f {
        Frame::Error(e) => String::from_utf8_lossy(e).into_owned(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A key whose slot is owned by proxy `owner` of `cluster`, made from `prefix`.
fn key_owned_by(cluster: &ProxyCluster, owner: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}:{i}"))
        .find(|k| cluster.owner_of(key_slot(k.as_bytes())) == owner)
        .expect("some key lands on every owner")
}

async fn cluster_connection(cluster: &ProxyCluster) -> Result<redis::cluster_async::ClusterConnection> {
    let client = redis::cluster::ClusterClient::new(cluster.urls())?;
    Ok(client.get_async_connection().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_writes_and_reads_20000_keys_over_all_slots() -> Result<()> {
    let cluster = ProxyCluster::start(3, &[]).await?;
    let conn = cluster_connection(&cluster).await?;
    let n = 20_000;
    let mut slots_seen = std::collections::HashSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let writes = chunk.iter().map(|i| {
            let mut c = conn.clone();
            async move { c.set::<_, _, ()>(format!("key:{i}"), format!("value-{i}")).await }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        slots_seen.extend(chunk.iter().map(|i| key_slot(format!("key:{i}").as_bytes())));
    }
    assert!(slots_seen.len() > 11_000, "keys spread over most slots ({})", slots_seen.len());
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let reads = chunk.iter().map(|i| {
            let mut c = conn.clone();
            async move { (i, c.get::<_, Option<String>>(format!("key:{i}")).await) }
        });
        for (i, r) in futures::future::join_all(reads).await {
            assert_eq!(r?, Some(format!("value-{i}")), "key:{i}");
        }
    }
    // Every node holds exactly the keys of its own slots.
    assert_eq!(cluster.total_keys().await?, n as i64);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut c = RespConn::connect(&node.addr()).await?;
        let Frame::Array(keys) = c.call(&["KEYS", "*"]).await? else { panic!("KEYS") };
        for k in keys {
            let k = bulk(&k).unwrap_or_default();
            assert_eq!(cluster.owner_of(key_slot(k.as_bytes())), i, "{k} is on node {i}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_gets_moved_and_follows_it() -> Result<()> {
    let cluster = ProxyCluster::start(3, &[]).await?;
    let key = key_owned_by(&cluster, 2, "cli");
    let port0 = cluster.proxies[0].port.to_string();
    let cli = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("redis-cli").args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(cli(&["-c", "-p", &port0, "SET", &key, "hello"])?, "OK");
    assert_eq!(cli(&["-c", "-p", &port0, "GET", &key])?, "hello");
    let slot = key_slot(key.as_bytes());
    let plain = cli(&["-p", &port0, "GET", &key])?;
    assert_eq!(plain, format!("MOVED {slot} {}", cluster.proxies[2].addr()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slots_shards_and_nodes_agree_with_the_config() -> Result<()> {
    let cluster = ProxyCluster::start(3, &[]).await?;
    let view = cluster.cluster_view(1);
    let expected: Vec<(i64, i64, String)> =
        view.nodes.iter().map(|n| (i64::from(n.slots[0].start), i64::from(n.slots[0].end), n.proxy.clone())).collect();
    for proxy in cluster.proxy_addrs() {
        // CLUSTER SLOTS
        let Frame::Array(entries) = call(&proxy, &["CLUSTER", "SLOTS"]).await? else { panic!("SLOTS") };
        let mut got = Vec::new();
        for e in entries {
            let Frame::Array(parts) = e else { panic!("entry") };
            let Frame::Array(node) = &parts[2] else { panic!("node") };
            let addr = format!("{}:{}", bulk(&node[0]).unwrap(), node[1].as_integer().unwrap());
            got.push((parts[0].as_integer().unwrap(), parts[1].as_integer().unwrap(), addr));
        }
        got.sort();
        assert_eq!(got, expected, "CLUSTER SLOTS of {proxy}");

        // CLUSTER SHARDS
        let Frame::Array(shards) = call(&proxy, &["CLUSTER", "SHARDS"]).await? else { panic!("SHARDS") };
        assert_eq!(shards.len(), 3);
        for (shard, (start, end, addr)) in shards.iter().zip(&expected) {
            let Frame::Array(kv) = shard else { panic!("shard") };
            let ranges: Vec<i64> = match &kv[1] {
                Frame::Array(r) => r.iter().filter_map(Frame::as_integer).collect(),
                other => panic!("{other:?}"),
            };
            assert_eq!(ranges, vec![*start, *end]);
            let Frame::Array(nodes) = &kv[3] else { panic!("nodes") };
            let Frame::Array(node) = &nodes[0] else { panic!("node") };
            let fields: Vec<String> =
                node.iter().map(|f| bulk(f).unwrap_or_else(|| format!("{:?}", f.as_integer()))).collect();
            let port = addr.rsplit(':').next().unwrap();
            assert!(fields.contains(&format!("Some({port})")), "{fields:?} has port {port}");
        }

        // CLUSTER NODES: one line per node, myself flagged, slots as configured.
        let text = bulk(&call(&proxy, &["CLUSTER", "NODES"]).await?).unwrap();
        let mut lines: Vec<(i64, i64, String, bool)> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let addr = f[1].split('@').next().unwrap().to_string();
                let (s, e) = f[8].split_once('-').unwrap();
                (s.parse().unwrap(), e.parse().unwrap(), addr, f[2].contains("myself"))
            })
            .collect();
        lines.sort();
        assert_eq!(lines.iter().map(|l| (l.0, l.1, l.2.clone())).collect::<Vec<_>>(), expected);
        assert_eq!(lines.iter().filter(|l| l.3).map(|l| l.2.clone()).collect::<Vec<_>>(), vec![proxy.clone()]);

        let info = bulk(&call(&proxy, &["CLUSTER", "INFO"]).await?).unwrap();
        assert!(info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384"), "{info}");
        let myid = bulk(&call(&proxy, &["CLUSTER", "MYID"]).await?).unwrap();
        assert!(text.contains(&format!("{myid} {proxy}@")), "MYID {myid} names {proxy} in {text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keyslot_equals_redis_own_answer() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let dir = cluster.dir.path().join("native");
    let conf = dir.join("nodes.conf").display().to_string();
    let native = RedisNode::start(&dir, &["--cluster-enabled", "yes", "--cluster-config-file", &conf]).await?;
    let mut via_proxy = RespConn::connect(&cluster.proxies[0].addr()).await?;
    let mut redis = RespConn::connect(&native.addr()).await?;
    let mut keys: Vec<String> = (0..500).map(|i| format!("user:{i}")).collect();
    keys.extend(["", "{}", "{", "}", "{a}b", "a{b}c", "a{}{b}", "{{x}}", "tag{x}{y}"].map(String::from));
    for k in keys {
        let ours = via_proxy.call(&["CLUSTER", "KEYSLOT", k.as_str()]).await?;
        let theirs = redis.call(&["CLUSTER", "KEYSLOT", k.as_str()]).await?;
        assert_eq!(ours, theirs, "CLUSTER KEYSLOT {k:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_conflicting_setdb_is_refused_and_changes_nothing() -> Result<()> {
    let mut cluster = ProxyCluster::start(2, &[]).await?;
    cluster.configure(5).await?;
    let proxy = cluster.proxies[0].addr();
    let stale = serde_json::to_string(&cluster.config(0, 4))?;
    let err = err_text(&call(&proxy, &["UMCTL", "SETDB", stale.as_str()]).await?);
    assert!(err.contains("epoch 4") && err.contains("epoch 5"), "names both epochs: {err}");
    let mut conflicting = cluster.config(0, 5);
    conflicting.cluster.as_mut().unwrap().name = "other".into();
    let err = err_text(&call(&proxy, &["UMCTL", "SETDB", serde_json::to_string(&conflicting)?.as_str()]).await?);
    assert!(err.contains("conflict"), "{err}");
    // The same config again is fine (idempotent).
    let same = serde_json::to_string(&cluster.config(0, 5))?;
    assert_eq!(call(&proxy, &["UMCTL", "SETDB", same.as_str()]).await?, Frame::ok());
    let err = err_text(&call(&proxy, &["UMCTL", "SETDB", "{not json"]).await?);
    assert!(err.contains("invalid config JSON"), "{err}");
    assert_eq!(call(&proxy, &["UMCTL", "GETEPOCH"]).await?, Frame::Integer(5));
    let name = bulk(&call(&proxy, &["UMCTL", "INFOMGR"]).await?).unwrap();
    assert!(name.contains("\"cluster\":\"test\""), "{name}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_across_slots_of_one_proxy_returns_values_in_order() -> Result<()> {
    let cluster = ProxyCluster::start(3, &[]).await?;
    let proxy = cluster.proxies[1].addr();
    let keys: Vec<String> =
        (0..).map(|i| format!("m:{i}")).filter(|k| cluster.owner_of(key_slot(k.as_bytes())) == 1).take(20).collect();
    let slots: std::collections::HashSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert!(slots.len() > 10, "keys in many slots");
    let mut c = RespConn::connect(&proxy).await?;
    let mut mset = vec!["MSET".to_string()];
    for k in &keys {
        mset.push(k.clone());
        mset.push(format!("v-{k}"));
    }
    assert_eq!(c.call(&mset).await?, Frame::ok());
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    mget.insert(3, format!("m:missing:{{{}}}", keys[0])); // a missing key, in between
    let Frame::Array(values) = c.call(&mget).await? else { panic!("MGET") };
    let mut expected: Vec<Option<String>> = keys.iter().map(|k| Some(format!("v-{k}"))).collect();
    expected.insert(2, None);
    let got: Vec<Option<String>> = values.iter().map(bulk).collect();
    assert_eq!(got, expected);
    let mut del = vec!["DEL".to_string()];
    del.extend(keys.iter().cloned());
    assert_eq!(c.call(&del).await?, Frame::Integer(20));
    // Keys of two proxies in one command: CROSSSLOT, like Redis Cluster.
    let other = key_owned_by(&cluster, 2, "x");
    let err = err_text(&c.call(&["MGET", keys[0].as_str(), other.as_str()]).await?);
    assert!(err.starts_with("CROSSSLOT"), "{err}");
    // Non-splittable multi-key commands across slots: CROSSSLOT.
    let err = err_text(&c.call(&["SUNION", keys[0].as_str(), keys[1].as_str()]).await?);
    assert!(err.starts_with("CROSSSLOT"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_10000_mixed_commands_answers_in_order() -> Result<()> {
    let cluster = ProxyCluster::start(3, &[]).await?;
    let local =
        |i: usize| (0..).map(|j| format!("p:{i}:{j}")).find(|k| cluster.owner_of(key_slot(k.as_bytes())) == 0).unwrap();
    let foreign = key_owned_by(&cluster, 1, "far");
    let foreign_slot = key_slot(foreign.as_bytes());
    let mut out = bytes::BytesMut::new();
    let mut expected = Vec::new();
    for i in 0..10_000usize {
        let key = local((i / 6) % 200);
        let (args, want): (Vec<String>, Frame) = match i % 6 {
            0 => (vec!["SET".into(), key.clone(), format!("v{i}")], Frame::ok()),
            1 => (vec!["GET".into(), key.clone()], Frame::bulk(format!("v{}", i - 1))),
            2 => (vec!["INCR".into(), format!("{{{key}}}:n")], Frame::Integer(0)), // counted below
            3 => (vec!["ECHO".into(), format!("e{i}")], Frame::bulk(format!("e{i}"))),
            4 => (
                vec!["GET".into(), foreign.clone()],
                Frame::error(format!("MOVED {foreign_slot} {}", cluster.proxies[1].addr())),
            ),
            _ => (vec!["PING".into()], Frame::simple("PONG")),
        };
        sluice_common::resp::encode_command(&args, &mut out);
        expected.push(want);
    }
    // Each INCR answers how often its counter was incremented so far.
    let mut counters = std::collections::HashMap::new();
    for (i, want) in expected.iter_mut().enumerate() {
        if i % 6 == 2 {
            let n = counters.entry((i / 6) % 200).or_insert(0i64);
            *n += 1;
            *want = Frame::Integer(*n);
        }
    }
    // Write the whole pipeline while reading replies, as a pipelining client does.
    let stream = tokio::net::TcpStream::connect(cluster.proxies[0].addr()).await?;
    let (rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move { wr.write_all(&out).await.map(|_| wr) });
    let mut replies = tokio_util::codec::FramedRead::new(rd, ReplyCodec::default());
    for (i, want) in expected.iter().enumerate() {
        let raw = tokio::time::timeout(Duration::from_secs(30), replies.next()).await?.expect("a reply")?;
        let (got, _) = parse_frame(&raw, &Limits::SERVER)?;
        assert_eq!(&got, want, "reply {i}");
    }
    writer.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_error_and_others_keep_being_served() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let proxy = cluster.proxies[0].addr();
    let mut bystander = RespConn::connect(&proxy).await?;
    assert_eq!(bystander.call(&["SET", "a", "1"]).await?, Frame::ok());

    for (input, want) in [
        (&b"*1\r\n+PING\r\n"[..], "ERR Protocol error: expected '$', got '+'"),
        (&b"*1\r\n$4294967296\r\n"[..], "ERR Protocol error: invalid bulk length"),
        (&b"*abc\r\n"[..], "ERR Protocol error: invalid multibulk length"),
    ] {
        let mut bad = RespConn::connect(&proxy).await?;
        bad.stream().write_all(input).await?;
        let reply = err_text(&bad.read_reply().await?);
        assert!(reply.starts_with(want), "{reply:?} for {:?}", String::from_utf8_lossy(input));
        // The proxy closes that connection, as Redis does.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), bad.stream().read_to_end(&mut rest)).await??;
        assert_eq!(n, 0, "connection closed after the error");
    }
    // A declared 512 MB bulk that never arrives costs no memory.
    let pid = cluster.proxies[0].pid().expect("proxy running");
    let mut holders = Vec::new();
    for _ in 0..20 {
        let mut h = RespConn::connect(&proxy).await?;
        h.stream().write_all(b"*2\r\n$3\r\nGET\r\n$536870912\r\nabc").await?;
        holders.push(h);
    }
    assert_eq!(bystander.call(&["GET", "a"]).await?, Frame::bulk("1"));
    let rss_kb = rss_kb(pid);
    assert!(rss_kb < 200 * 1024, "proxy RSS {rss_kb} kB after 20 huge bulk headers");
    Ok(())
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_wait_without_stalling_other_clients() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let proxy = cluster.proxies[0].addr();
    // A timeout is honoured.
    let mut c = RespConn::connect(&proxy).await?;
    assert_eq!(c.call(&["BLPOP", "empty", "0.1"]).await?, Frame::NullArray);
    assert_eq!(c.call(&["XREAD", "BLOCK", "100", "STREAMS", "nostream", "$"]).await?, Frame::NullArray);

    // A client blocked forever does not stall the others.
    let blocked = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut b = RespConn::connect(&proxy).await?;
            b.call(&["BLPOP", "queue", "0"]).await
        })
    };
    let mut other = RespConn::connect(&proxy).await?;
    for i in 0..200 {
        assert_eq!(other.call(&["SET", &format!("k{i}"), "v"]).await?, Frame::ok());
    }
    assert!(!blocked.is_finished(), "BLPOP still waits");
    assert_eq!(other.call(&["RPUSH", "queue", "job"]).await?, Frame::Integer(1));
    let got = tokio::time::timeout(Duration::from_secs(5), blocked).await???;
    assert_eq!(got, Frame::Array(vec![Frame::bulk("queue"), Frame::bulk("job")]));

    // BLMOVE and BZPOPMIN too.
    assert_eq!(other.call(&["RPUSH", "{q}src", "x"]).await?, Frame::Integer(1));
    assert_eq!(other.call(&["BLMOVE", "{q}src", "{q}dst", "LEFT", "RIGHT", "1"]).await?, Frame::bulk("x"));
    assert_eq!(other.call(&["ZADD", "z", "1", "m"]).await?, Frame::Integer(1));
    let Frame::Array(z) = other.call(&["BZPOPMIN", "z", "1"]).await? else { panic!("BZPOPMIN") };
    assert_eq!(bulk(&z[1]), Some("m".into()));

    // A client that leaves while blocked frees its node connection.
    let node = cluster.nodes[0].addr();
    let count_clients = || async {
        let text = bulk(&call(&node, &["CLIENT", "LIST"]).await?).unwrap_or_default();
        anyhow::Ok(text.lines().filter(|l| l.contains("cmd=blpop")).count())
    };
    let mut leaver = RespConn::connect(&proxy).await?;
    leaver.stream().write_all(b"*3\r\n$5\r\nBLPOP\r\n$5\r\nnever\r\n$1\r\n0\r\n").await?;
    wait_for("the BLPOP to reach the node", Duration::from_secs(5), || async {
        Ok((count_clients().await? == 1).then_some(()))
    })
    .await?;
    drop(leaver);
    wait_for("the node to forget the blocked client", Duration::from_secs(5), || async {
        Ok((count_clients().await? == 0).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_and_transactions_follow_slot_rules() -> Result<()> {
    let cluster = ProxyCluster::start(3, &[]).await?;
    let mut conn = cluster_connection(&cluster).await?;
    // EVAL routes by its keys, on any proxy.
    for i in 0..30 {
        let key = format!("script:{i}");
        let r: String = redis::cmd("EVAL")
            .arg("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])")
            .arg(1)
            .arg(&key)
            .arg(format!("s{i}"))
            .query_async(&mut conn)
            .await?;
        assert_eq!(r, format!("s{i}"));
    }
    let proxy = cluster.proxies[0].addr();
    let local = key_owned_by(&cluster, 0, "tx");
    let foreign = key_owned_by(&cluster, 1, "tx");
    let mut c = RespConn::connect(&proxy).await?;
    let err = err_text(&c.call(&["EVAL", "return 1", "1", foreign.as_str()]).await?);
    assert!(err.starts_with("MOVED"), "{err}");
    assert_eq!(c.call(&["EVAL", "return 7", "0"]).await?, Frame::Integer(7));

    // MULTI/EXEC within one slot.
    let a = format!("{{{local}}}:a");
    let b = format!("{{{local}}}:b");
    assert_eq!(c.call(&["MULTI"]).await?, Frame::ok());
    assert_eq!(c.call(&["SET", a.as_str(), "1"]).await?, Frame::simple("QUEUED"));
    assert_eq!(c.call(&["INCR", b.as_str()]).await?, Frame::simple("QUEUED"));
    assert_eq!(c.call(&["EXEC"]).await?, Frame::Array(vec![Frame::ok(), Frame::Integer(1)]));

    // Across slots: the offending command is refused and EXEC aborts; nothing ran.
    let other_local = (0..)
        .map(|i| format!("txo:{i}"))
        .find(|k| cluster.owner_of(key_slot(k.as_bytes())) == 0 && key_slot(k.as_bytes()) != key_slot(local.as_bytes()))
        .unwrap();
    assert_eq!(c.call(&["MULTI"]).await?, Frame::ok());
    assert_eq!(c.call(&["SET", a.as_str(), "2"]).await?, Frame::simple("QUEUED"));
    let err = err_text(&c.call(&["SET", other_local.as_str(), "x"]).await?);
    assert!(err.starts_with("CROSSSLOT"), "{err}");
    let err = err_text(&c.call(&["EXEC"]).await?);
    assert!(err.starts_with("EXECABORT"), "{err}");
    assert_eq!(c.call(&["GET", a.as_str()]).await?, Frame::bulk("1"));
    assert_eq!(c.call(&["MULTI"]).await?, Frame::ok());
    let err = err_text(&c.call(&["GET", foreign.as_str()]).await?);
    assert!(err.starts_with("MOVED"), "{err}");
    assert_eq!(c.call(&["DISCARD"]).await?, Frame::ok());

    // WATCH: a concurrent change aborts the transaction (EXEC answers nil).
    assert_eq!(c.call(&["WATCH", a.as_str()]).await?, Frame::ok());
    let mut rival = RespConn::connect(&proxy).await?;
    assert_eq!(rival.call(&["SET", a.as_str(), "rival"]).await?, Frame::ok());
    assert_eq!(c.call(&["MULTI"]).await?, Frame::ok());
    assert_eq!(c.call(&["SET", a.as_str(), "mine"]).await?, Frame::simple("QUEUED"));
    assert_eq!(c.call(&["EXEC"]).await?, Frame::NullArray);
    assert_eq!(c.call(&["GET", a.as_str()]).await?, Frame::bulk("rival"));
    // Without interference the watched transaction runs.
    assert_eq!(c.call(&["WATCH", a.as_str()]).await?, Frame::ok());
    assert_eq!(c.call(&["MULTI"]).await?, Frame::ok());
    assert_eq!(c.call(&["SET", a.as_str(), "mine"]).await?, Frame::simple("QUEUED"));
    assert_eq!(c.call(&["EXEC"]).await?, Frame::Array(vec![Frame::ok()]));
    assert_eq!(c.call(&["GET", a.as_str()]).await?, Frame::bulk("mine"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_and_keys_only_show_keys_of_owned_slots() -> Result<()> {
    let cluster = ProxyCluster::start(2, &[]).await?;
    let proxy = cluster.proxies[0].addr();
    let mut c = RespConn::connect(&proxy).await?;
    let mine: Vec<String> =
        (0..).map(|i| format!("own:{i}")).filter(|k| cluster.owner_of(key_slot(k.as_bytes())) == 0).take(50).collect();
    for k in &mine {
        assert_eq!(c.call(&["SET", k.as_str(), "1"]).await?, Frame::ok());
    }
    // Garbage: keys of proxy 1's slots sitting on node 0 (as a migration leaves them).
    let mut node0 = RespConn::connect(&cluster.nodes[0].addr()).await?;
    for i in 0..50 {
        let k = key_owned_by(&cluster, 1, &format!("garbage{i}"));
        assert_eq!(node0.call(&["SET", k.as_str(), "x"]).await?, Frame::ok());
    }
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Frame::Array(parts) = c.call(&["SCAN", cursor.as_str(), "COUNT", "17"]).await? else { panic!("SCAN") };
        cursor = bulk(&parts[0]).unwrap();
        let Frame::Array(keys) = &parts[1] else { panic!("keys") };
        seen.extend(keys.iter().filter_map(bulk));
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    let mut want = mine.clone();
    want.sort();
    assert_eq!(seen, want);
    let Frame::Array(keys) = c.call(&["KEYS", "*"]).await? else { panic!("KEYS") };
    assert_eq!(keys.len(), 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_node_dies_clients_get_errors_and_the_proxy_reconnects() -> Result<()> {
    let mut cluster = ProxyCluster::start(1, &[]).await?;
    let proxy = cluster.proxies[0].addr();
    let mut c = RespConn::connect(&proxy).await?;
    assert_eq!(c.call(&["SET", "k", "1"]).await?, Frame::ok());
    cluster.nodes[0].kill();
    let err = err_text(&c.call(&["GET", "k"]).await?);
    assert!(err.contains("sluice") && err.contains("backend"), "{err}");
    cluster.nodes[0].restart().await?;
    wait_for("the proxy to reconnect", Duration::from_secs(10), || {
        let proxy = proxy.clone();
        async move { Ok(matches!(call(&proxy, &["SET", "k", "2"]).await?, Frame::Simple(_)).then_some(())) }
    })
    .await?;
    // The same client connection works again too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.call(&["GET", "k"]).await? != Frame::bulk("2") {
        assert!(std::time::Instant::now() < deadline, "the first client is served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_mode_serves_clients_that_do_not_follow_moved() -> Result<()> {
    let cluster = ProxyCluster::start(3, &["--redirect", "forward"]).await?;
    let client = redis::Client::open(format!("redis://{}/", cluster.proxies[0].addr()))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = (0..300).map(|i| format!("fwd:{i}")).collect();
    for k in &keys {
        conn.set::<_, _, ()>(k, format!("v-{k}")).await?;
    }
    let owners: std::collections::HashSet<usize> =
        keys.iter().map(|k| cluster.owner_of(key_slot(k.as_bytes()))).collect();
    assert_eq!(owners.len(), 3, "keys on all three proxies");
    let values: Vec<Option<String>> = conn.mget(&keys).await?;
    assert_eq!(values, keys.iter().map(|k| Some(format!("v-{k}"))).collect::<Vec<_>>());
    let deleted: i64 = conn.del(&keys[..100]).await?;
    assert_eq!(deleted, 100);
    assert_eq!(cluster.total_keys().await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_guards_every_command() -> Result<()> {
    let cluster = ProxyCluster::start(1, &["--requirepass", "s3cret"]).await?;
    let proxy = cluster.proxies[0].addr();
    let mut c = RespConn::connect(&proxy).await?;
    assert!(err_text(&c.call(&["GET", "a"]).await?).starts_with("NOAUTH"));
    assert!(err_text(&c.call(&["UMCTL", "GETEPOCH"]).await?).starts_with("NOAUTH"));
    assert!(err_text(&c.call(&["AUTH", "wrong"]).await?).starts_with("WRONGPASS"));
    assert_eq!(c.call(&["AUTH", "s3cret"]).await?, Frame::ok());
    assert_eq!(c.call(&["UMCTL", "GETEPOCH"]).await?, Frame::Integer(0));
    let mut h = RespConn::connect(&proxy).await?;
    let Frame::Map(hello) = h.call(&["HELLO", "3", "AUTH", "default", "s3cret"]).await? else { panic!("HELLO map") };
    assert!(hello.contains(&(Frame::bulk("proto"), Frame::Integer(3))));
    Ok(())
}

/// `RESET` gives the connection back as a new client's: no transaction (its queued writes
/// never run), RESP2 again, no name, and with `--requirepass` not authenticated; the
/// library a client declared stays, as in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_the_connection_to_a_new_clients_state() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let mut c = RespConn::connect(&cluster.proxies[0].addr()).await?;
    assert_eq!(c.call(&["HSET", "h", "f", "v"]).await?, Frame::Integer(1));
    let Frame::Map(_) = c.call(&["HELLO", "3", "SETNAME", "tester"]).await? else { panic!("HELLO 3 answers a map") };
    assert_eq!(c.call(&["CLIENT", "SETINFO", "lib-name", "mylib"]).await?, Frame::ok());
    assert_eq!(c.call(&["MULTI"]).await?, Frame::ok());
    assert_eq!(c.call(&["SET", "a", "1"]).await?, Frame::simple("QUEUED"));
    assert_eq!(c.call(&["RESET"]).await?, Frame::simple("RESET"));

    assert!(err_text(&c.call(&["EXEC"]).await?).contains("EXEC without MULTI"));
    assert_eq!(c.call(&["GET", "a"]).await?, Frame::Null, "the discarded transaction's SET never ran");
    assert_eq!(c.call(&["HGETALL", "h"]).await?, Frame::Array(vec![Frame::bulk("f"), Frame::bulk("v")]), "RESP2 again");
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await?, Frame::Null);
    let line = bulk(&c.call(&["CLIENT", "INFO"]).await?).unwrap();
    assert!(line.contains(" name= ") && line.contains(" resp=2 ") && line.contains(" lib-name=mylib "), "{line}");

    let guarded = ProxyCluster::start(1, &["--requirepass", "s3cret"]).await?;
    let mut g = RespConn::connect(&guarded.proxies[0].addr()).await?;
    assert_eq!(g.call(&["AUTH", "s3cret"]).await?, Frame::ok());
    assert_eq!(g.call(&["PING"]).await?, Frame::simple("PONG"));
    assert_eq!(g.call(&["RESET"]).await?, Frame::simple("RESET"));
    assert!(err_text(&g.call(&["PING"]).await?).starts_with("NOAUTH"), "RESET deauthenticates");
    assert_eq!(g.call(&["AUTH", "s3cret"]).await?, Frame::ok());
    assert_eq!(g.call(&["PING"]).await?, Frame::simple("PONG"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_clients_get_resp3_replies() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let mut c = RespConn::connect(&cluster.proxies[0].addr()).await?;
    assert_eq!(c.call(&["HSET", "h", "f", "v"]).await?, Frame::Integer(1));
    assert_eq!(c.call(&["HGETALL", "h"]).await?, Frame::Array(vec![Frame::bulk("f"), Frame::bulk("v")]));
    let Frame::Map(_) = c.call(&["HELLO", "3"]).await? else { panic!("HELLO 3 answers a map") };
    assert_eq!(c.call(&["HGETALL", "h"]).await?, Frame::Map(vec![(Frame::bulk("f"), Frame::bulk("v"))]));
    assert_eq!(c.call(&["GET", "missing"]).await?, Frame::Null);
    let Frame::Array(shards) = c.call(&["CLUSTER", "SHARDS"]).await? else { panic!("SHARDS") };
    assert!(matches!(shards[0], Frame::Map(_)), "RESP3 shards are maps: {shards:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_are_answered_by_the_proxy() -> Result<()> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let mut c = RespConn::connect(&cluster.proxies[0].addr()).await?;
    assert_eq!(c.call(&["PING"]).await?, Frame::simple("PONG"));
    assert_eq!(c.call(&["SELECT", "0"]).await?, Frame::ok());
    assert!(err_text(&c.call(&["SELECT", "1"]).await?).contains("not allowed in cluster mode"));
    assert_eq!(c.call(&["CLIENT", "SETNAME", "tester"]).await?, Frame::ok());
    assert_eq!(c.call(&["CLIENT", "GETNAME"]).await?, Frame::bulk("tester"));
    let Frame::Integer(id) = c.call(&["CLIENT", "ID"]).await? else { panic!("CLIENT ID") };
    let line = bulk(&c.call(&["CLIENT", "INFO"]).await?).unwrap();
    assert!(line.contains(&format!("id={id} ")) && line.contains("name=tester"), "{line}");
    assert_eq!(c.call(&["READONLY"]).await?, Frame::ok());
    assert_eq!(c.call(&["READWRITE"]).await?, Frame::ok());
    let info = bulk(&c.call(&["INFO"]).await?).unwrap();
    assert!(info.contains("cluster_enabled:1") && info.contains("sluice_epoch:1"), "{info}");
    assert!(info.contains(&format!("tcp_port:{}\r\n", cluster.proxies[0].port)), "the proxy's port: {info}");
    assert_eq!(
        c.call(&["CONFIG", "GET", "maxmemory"]).await?,
        Frame::Array(vec![Frame::bulk("maxmemory"), Frame::bulk("0")])
    );
    assert!(err_text(&c.call(&["SHUTDOWN"]).await?).contains("is refused"));
    assert!(err_text(&c.call(&["SUBSCRIBE", "ch"]).await?).contains("pub/sub"));
    assert!(err_text(&c.call(&["NOSUCHCOMMAND"]).await?).starts_with("ERR unknown command"));
    assert!(err_text(&c.call(&["GET"]).await?).contains("wrong number of arguments"));
    let Frame::Array(_) = c.call(&["COMMAND", "INFO", "GET"]).await? else { panic!("COMMAND") };
    assert_eq!(c.call(&["QUIT"]).await?, Frame::ok());
    Ok(())
}
