//! `CLUSTER COUNTKEYSINSLOT`/`GETKEYSINSLOT`, `CLIENT SETINFO` and the `CONFIG GET` keys
//! clients ask for, through two proxies and a native two-node cluster holding the same keys.

use super::{config_pairs, shape, text, text_of_error, Compare, Pair};
use anyhow::{ensure, Result};
use sluice_common::model::{split_slots_evenly, SlotRange};
use sluice_common::resp::Frame;
use sluice_common::slot::key_slot;
use sluice_harness::client::{call_ok, RespConn};
use sluice_harness::cluster::ProxyCluster;
use sluice_harness::native::NativeCluster;
use std::collections::BTreeSet;

/// The keys both sides hold: 40 tags with 0 to 4 keys each, and 200 plain keys.
fn keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..40).flat_map(|t| (0..t % 5).map(move |j| format!("{{tag{t}}}:{j}"))).collect();
    keys.extend((0..200).map(|i| format!("plain:{i}")));
    keys
}

fn owner(ranges: &[SlotRange], slot: u16) -> usize {
    ranges.iter().position(|r| r.contains(slot)).unwrap_or(0)
}

fn sorted(f: &Frame) -> Result<BTreeSet<String>> {
    match f {
        Frame::Array(items) => Ok(items.iter().map(text).collect()),
        other => anyhow::bail!("expected an array, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_keys_client_setinfo_and_config_get_answer_as_a_native_cluster_node_does() -> Result<()> {
    let cluster = ProxyCluster::start(2, &[]).await?;
    let ranges = split_slots_evenly(2);
    let native = NativeCluster::start(&cluster.dir.path().join("native"), &[vec![ranges[0]], vec![ranges[1]]]).await?;
    let mut pairs = Vec::new();
    for i in 0..2 {
        pairs.push(Pair {
            proxy: RespConn::connect(&cluster.proxies[i].addr()).await?,
            native: RespConn::connect(&native.nodes[i].addr()).await?,
        });
    }
    let keys = keys();
    for k in &keys {
        let (p, n) = pairs[owner(&ranges, key_slot(k.as_bytes()))].both(&["SET", k, "v"]).await?;
        ensure!(p == Frame::ok() && n == Frame::ok(), "SET {k}: {p:?} / {n:?}");
    }
    // A key of proxy 1's slot left on proxy 0's node (as a migration leaves garbage): proxy
    // 0 does not show it, as a native node holds no key of a slot it does not serve.
    let stray = keys.iter().find(|k| owner(&ranges, key_slot(k.as_bytes())) == 1 && k.starts_with('{'));
    let stray = stray.ok_or_else(|| anyhow::anyhow!("a tagged key of proxy 1"))?;
    call_ok(&cluster.nodes[0].addr(), &["SET", stray, "garbage"]).await?;
    let mut slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
    slots.extend([0, 1, 8191, 8192, 16383]);
    for (i, pair) in pairs.iter_mut().enumerate() {
        for slot in &slots {
            let s = slot.to_string();
            // Owned or not, with keys or without: the same count and the same keys.
            pair.check(&["CLUSTER", "COUNTKEYSINSLOT", &s], Compare::Exact).await?;
            pair.check(&["CLUSTER", "GETKEYSINSLOT", &s, "0"], Compare::Exact).await?;
            let (p, n) = pair.both(&["CLUSTER", "GETKEYSINSLOT", &s, "1000"]).await?;
            ensure!(sorted(&p)? == sorted(&n)?, "node {i} GETKEYSINSLOT {s}: {p:?} vs {n:?}");
            // At most `count` of them.
            let all = sorted(&n)?;
            let (p, n) = pair.both(&["CLUSTER", "GETKEYSINSLOT", &s, "2"]).await?;
            let (p, n) = (sorted(&p)?, sorted(&n)?);
            ensure!(p.len() == n.len() && p.is_subset(&all), "node {i} GETKEYSINSLOT {s} 2: {p:?} vs {n:?}");
        }
        let counted: i64 = {
            let mut sum = 0;
            for slot in &slots {
                if let Frame::Integer(n) = pair.proxy.call(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]).await? {
                    sum += n;
                }
            }
            sum
        };
        let served = keys.iter().filter(|k| owner(&ranges, key_slot(k.as_bytes())) == i).count() as i64;
        ensure!(counted == served, "proxy {i} counted {counted} keys of its slots, {served} were written");
    }
    // Bad arguments: Redis's words.
    let bad: [&[&str]; 10] = [
        &["CLUSTER", "COUNTKEYSINSLOT", "16384"],
        &["CLUSTER", "COUNTKEYSINSLOT", "-1"],
        &["CLUSTER", "COUNTKEYSINSLOT", "abc"],
        &["CLUSTER", "COUNTKEYSINSLOT"],
        &["CLUSTER", "GETKEYSINSLOT", "16384", "1"],
        &["CLUSTER", "GETKEYSINSLOT", "1", "-1"],
        &["CLUSTER", "GETKEYSINSLOT", "abc", "1"],
        &["CLUSTER", "GETKEYSINSLOT", "1", "abc"],
        &["CLUSTER", "GETKEYSINSLOT", "abc", "-1"],
        &["CLUSTER", "GETKEYSINSLOT", "1"],
    ];
    for args in bad {
        let (p, n) = pairs[0].both(args).await?;
        ensure!(p.is_error() && p == n, "{}: the proxy answered {p:?}, a native node {n:?}", args.join(" "));
    }
    // A key of the other node: MOVED from both (the addresses differ).
    let (p, n) = pairs[0].both(&["OBJECT", "ENCODING", stray]).await?;
    ensure!(shape(&p) == "error MOVED" && shape(&n) == "error MOVED", "{p:?} / {n:?}");
    // CONFIG GET of what cluster clients and agents ask for.
    let params: [&[&str]; 8] = [
        &["CONFIG", "GET", "cluster-enabled"],
        &["CONFIG", "GET", "databases"],
        &["CONFIG", "GET", "maxclients", "timeout", "tcp-keepalive"],
        &["CONFIG", "GET", "appendonly", "save"],
        &["CONFIG", "GET", "maxmemory*"],
        &["CONFIG", "GET", "cluster-require-full-coverage", "cluster-node-timeout"],
        &["CONFIG", "GET", "cluster-allow-reads-when-down"],
        &["CONFIG", "GET", "lua-time-limit", "busy-reply-threshold"],
    ];
    for args in params {
        pairs[0].check(args, Compare::Config).await?;
    }
    // OBJECT: its keyless forms run on the node, bad forms get the node's error.
    pairs[0].check(&["OBJECT", "HELP"], Compare::Exact).await?;
    pairs[0].check(&["OBJECT", "ENCODING"], Compare::Exact).await?;
    let (p, n) = pairs[0].both(&["OBJECT", "NOSUCH", "k"]).await?;
    ensure!(p.is_error() && shape(&p) == shape(&n), "OBJECT NOSUCH: {p:?} / {n:?}");
    let enabled = config_pairs(&pairs[0].proxy.call(&["CONFIG", "GET", "cluster-enabled"]).await?);
    ensure!(enabled == vec![("cluster-enabled".into(), "yes".into())], "{enabled:?}");
    client_setinfo(&mut pairs[0]).await
}

/// `CLIENT SETINFO` (Redis 7.2): compared with the native node when it knows the command,
/// else with Redis 7.2's documented answers.
async fn client_setinfo(pair: &mut Pair) -> Result<()> {
    let native_knows = !pair.native.call(&["CLIENT", "SETINFO", "lib-name", "probe"]).await?.is_error();
    let steps: [(&[&str], Option<&str>); 8] = [
        (&["CLIENT", "SETINFO", "lib-name", "redis-py"], None),
        (&["CLIENT", "SETINFO", "LIB-VER", "5.0.1"], None),
        (&["CLIENT", "SETINFO", "lib-foo", "1"], Some("ERR Unrecognized option 'lib-foo'")),
        (
            &["CLIENT", "SETINFO", "lib-name", "two words"],
            Some("ERR lib-name cannot contain spaces, newlines or special characters."),
        ),
        (
            &["CLIENT", "SETINFO", "Lib-Ver", "1\n2"],
            Some("ERR Lib-Ver cannot contain spaces, newlines or special characters."),
        ),
        (&["CLIENT", "SETINFO", "lib-name"], Some("ERR wrong number of arguments for 'client|setinfo' command")),
        (
            &["CLIENT", "SETINFO", "lib-name", "a", "b"],
            Some("ERR wrong number of arguments for 'client|setinfo' command"),
        ),
        (&["CLIENT", "SETINFO", "lib-ver", "7.2"], None),
    ];
    for (args, error) in steps {
        let p = pair.proxy.call(args).await?;
        if native_knows {
            let n = pair.native.call(args).await?;
            ensure!(p == n, "{}: the proxy answered {p:?}, a native node {n:?}", args.join(" "));
        }
        match error {
            None => ensure!(p == Frame::ok(), "{}: {p:?}", args.join(" ")),
            Some(e) => ensure!(text_of_error(&p)? == e, "{}: {p:?}", args.join(" ")),
        }
    }
    // The refused values set nothing; the accepted ones show in CLIENT INFO.
    let info = text(&pair.proxy.call(&["CLIENT", "INFO"]).await?);
    ensure!(info.trim_end().ends_with("lib-name=redis-py lib-ver=7.2"), "CLIENT INFO: {info}");
    if native_knows {
        let n = text(&pair.native.call(&["CLIENT", "INFO"]).await?);
        ensure!(n.trim_end().ends_with("lib-name=redis-py lib-ver=7.2"), "native CLIENT INFO: {n}");
    }
    // An empty value clears it.
    ensure!(pair.proxy.call(&["CLIENT", "SETINFO", "lib-ver", ""]).await? == Frame::ok(), "clearing lib-ver");
    let info = text(&pair.proxy.call(&["CLIENT", "INFO"]).await?);
    ensure!(info.trim_end().ends_with("lib-name=redis-py lib-ver="), "CLIENT INFO: {info}");
    Ok(())
}
