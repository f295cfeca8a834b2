//! ACL users passed through the proxy (issue 17): nodes whose default user is off and which
//! know three users (`sluice`, the proxies' own, `--node-user`; `writer`; `reader`, without
//! `+@write`). A client's `AUTH user pass` (or `HELLO 3 AUTH …`) is checked by the node and
//! its commands then run there as that user: the reader's `SET` gets the node's `NOPERM`,
//! its `GET` works; a wrong password gets `WRONGPASS`; `ACL WHOAMI` names the user; a
//! client that does not authenticate is the default user (the proxy's connections), and
//! `--requirepass` still guards the default user. Migrations (replication mode, then keys
//! mode with `MIGRATE … AUTH2`, then filtered replication) run between nodes that require a user, and every key reads
//! back through a cluster client authenticated as `writer`.

use anyhow::{bail, Context, Result};
use redis::AsyncCommands;
use sluice_common::model::{MigrationMode, MigrationPhase, SlotRange};
use sluice_common::resp::Frame;
use sluice_common::slot::key_slot;
use sluice_harness::client::RespConn;
use sluice_harness::migration::upper_half;
use sluice_harness::{LocalCluster, LocalSpec, MigrationCluster};
use sluice_local::ProxyProcess;
use std::time::Duration;

/// redis-server arguments: the users, and the credentials replication into the node uses.
fn node_args() -> Vec<String> {
    let line = "--user default off \
                --user sluice on >sluicepw ~* &* +@all \
                --user writer on >writepw ~* &* +@all \
                --user reader on >readpw ~* &* -@all +@read +@connection \
                --masteruser sluice --masterauth sluicepw";
    line.split_whitespace().map(String::from).collect()
}

fn proxy_args() -> Vec<String> {
    ["--node-user", "sluice", "--node-password", "sluicepw"].iter().map(|s| s.to_string()).collect()
}

async fn call(c: &mut RespConn, args: &[&str]) -> Result<Frame> {
    c.call(args).await
}

fn text(f: &Frame) -> String {
    match f {
        Frame::Simple(b) | Frame::Bulk(b) | Frame::Error(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

async fn expect(c: &mut RespConn, args: &[&str], want: &str) -> Result<()> {
    let got = call(c, args).await?;
    if text(&got) != want {
        bail!("{args:?} answered {got:?}, expected {want:?}");
    }
    Ok(())
}

async fn expect_error(c: &mut RespConn, args: &[&str], prefix: &str) -> Result<()> {
    match call(c, args).await? {
        Frame::Error(e) if e.starts_with(prefix.as_bytes()) => Ok(()),
        other => bail!("{args:?} answered {other:?}, expected an error starting with {prefix}"),
    }
}

/// Keys `acl:{i}` whose slots `proxy` serves, `n` of them.
async fn keys_of(cluster: &LocalCluster, proxy: &str, n: usize) -> Result<Vec<String>> {
    let view = cluster.view().await?;
    let ranges: Vec<SlotRange> = view
        .nodes
        .iter()
        .find(|x| x.proxy == proxy)
        .context("no such proxy")?
        .slots
        .iter()
        .map(|a| a.range())
        .collect();
    Ok((0..100_000)
        .map(|i| format!("acl:{i}"))
        .filter(|k| ranges.iter().any(|r| r.contains(key_slot(k.as_bytes()))))
        .take(n)
        .collect())
}

async fn migrate(cluster: &LocalCluster, src: &str, dst: &str, slots: SlotRange, mode: MigrationMode) -> Result<()> {
    let m = cluster.start_migration(src, dst, &[slots], mode).await?;
    let done = cluster.watch_migration(&m.id).until_final(Duration::from_secs(120)).await?;
    if done.phase != MigrationPhase::Done {
        bail!("the {mode:?} migration {src} -> {dst} ended {:?}: {:?}", done.phase, done.error);
    }
    cluster.wait_converged(Duration::from_secs(30)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_pass_through_to_the_node() -> Result<()> {
    let spec =
        LocalSpec { proxies: 2, spare: 1, node_args: node_args(), proxy_args: proxy_args(), ..LocalSpec::default() };
    let cluster = LocalCluster::start(spec).await?;
    let proxy = cluster.proxies[0].addr();

    // The node itself refuses a client that does not authenticate.
    let mut direct = RespConn::connect(&cluster.nodes[0].addr()).await?;
    expect_error(&mut direct, &["GET", "x"], "NOAUTH").await?;

    let keys = keys_of(&cluster, &proxy, 50).await?;

    // A writer writes; ACL WHOAMI names it.
    let mut writer = RespConn::connect(&proxy).await?;
    expect(&mut writer, &["AUTH", "writer", "writepw"], "OK").await?;
    expect(&mut writer, &["ACL", "WHOAMI"], "writer").await?;
    for k in &keys {
        expect(&mut writer, &["SET", k, &format!("v-{k}")], "OK").await?;
    }

    // A reader: GET works, SET is the node's NOPERM, nothing changed.
    let mut reader = RespConn::connect(&proxy).await?;
    expect(&mut reader, &["AUTH", "reader", "readpw"], "OK").await?;
    expect(&mut reader, &["ACL", "WHOAMI"], "reader").await?;
    expect(&mut reader, &["GET", &keys[0]], &format!("v-{}", keys[0])).await?;
    expect_error(&mut reader, &["SET", &keys[0], "overwritten"], "NOPERM").await?;
    expect(&mut writer, &["GET", &keys[0]], &format!("v-{}", keys[0])).await?;

    // HELLO 3 AUTH as the reader: RESP3, same rules.
    let mut hello = RespConn::connect(&proxy).await?;
    match call(&mut hello, &["HELLO", "3", "AUTH", "reader", "readpw"]).await? {
        Frame::Map(_) => {}
        other => bail!("HELLO 3 AUTH reader answered {other:?}"),
    }
    expect(&mut hello, &["ACL", "WHOAMI"], "reader").await?;
    expect_error(&mut hello, &["SET", &keys[1], "x"], "NOPERM").await?;
    expect(&mut hello, &["GET", &keys[1]], &format!("v-{}", keys[1])).await?;

    // Wrong credentials: WRONGPASS, and the client stays who it was.
    expect_error(&mut reader, &["AUTH", "reader", "nope"], "WRONGPASS").await?;
    expect_error(&mut reader, &["AUTH", "nobody", "readpw"], "WRONGPASS").await?;
    expect(&mut reader, &["ACL", "WHOAMI"], "reader").await?;
    expect_error(&mut reader, &["SET", &keys[0], "x"], "NOPERM").await?;
    let mut fresh = RespConn::connect(&proxy).await?;
    expect_error(&mut fresh, &["HELLO", "3", "AUTH", "writer", "nope"], "WRONGPASS").await?;

    // The default user (no AUTH, no --requirepass): the proxy's connections (--node-user).
    let mut default = RespConn::connect(&proxy).await?;
    expect(&mut default, &["ACL", "WHOAMI"], "default").await?;
    expect(&mut default, &["SET", &keys[2], "by-default"], "OK").await?;
    expect_error(&mut default, &["AUTH", "somepass"], "ERR AUTH <password> called without any password").await?;
    // A user can go back to the default user's connections with RESET.
    expect(&mut reader, &["RESET"], "RESET").await?;
    expect(&mut reader, &["ACL", "WHOAMI"], "default").await?;
    expect(&mut reader, &["SET", &keys[2], &format!("v-{}", keys[2])], "OK").await?;

    // --requirepass guards the default user as before; ACL users are an alternative to it.
    let guarded_args = ["--requirepass", "proxypw", "--node-user", "sluice", "--node-password", "sluicepw"];
    let guarded = ProxyProcess::start(&cluster.dir, &cluster.nodes[0].addr(), &guarded_args).await?;
    let mut g = RespConn::connect(&guarded.addr()).await?;
    expect_error(&mut g, &["ACL", "WHOAMI"], "NOAUTH").await?;
    expect_error(&mut g, &["AUTH", "wrong"], "WRONGPASS").await?;
    expect(&mut g, &["AUTH", "proxypw"], "OK").await?;
    expect(&mut g, &["ACL", "WHOAMI"], "default").await?;
    expect(&mut g, &["AUTH", "default", "proxypw"], "OK").await?;
    let mut g2 = RespConn::connect(&guarded.addr()).await?;
    expect(&mut g2, &["AUTH", "reader", "readpw"], "OK").await?;
    expect(&mut g2, &["ACL", "WHOAMI"], "reader").await?;
    drop(guarded);

    // Migrations between nodes that require a user: replication mode into the spare (the
    // spare's node replicates as --masteruser), then keys mode on to the second proxy
    // (MIGRATE … AUTH2 sluice), then filtered replication back to the first.
    let src = proxy.clone();
    let spare = cluster.proxies[cluster.spec.proxies].addr();
    let slots = upper_half(&cluster.view().await?, &src)?;
    migrate(&cluster, &src, &spare, slots, MigrationMode::Replication).await?;
    let other = cluster.proxies[1].addr();
    migrate(&cluster, &spare, &other, slots, MigrationMode::Keys).await?;
    // Filtered replication back into the first node (which holds data): the source proxy's
    // replica link to its own node and its RESTOREs into the destination authenticate as
    // --node-user.
    migrate(&cluster, &other, &src, slots, MigrationMode::Filtered).await?;
    let other = src.clone();

    // Every key reads back through a cluster client authenticated as the writer, and the
    // reader still gets NOPERM for writes on the moved slots, back on the first proxy.
    let urls: Vec<String> = cluster.cluster_proxies().iter().map(|a| format!("redis://writer:writepw@{a}/")).collect();
    let client = redis::cluster::ClusterClient::builder(urls).response_timeout(Duration::from_secs(10)).build()?;
    let mut conn = client.get_async_connection().await.context("cluster client as writer")?;
    let mut moved = 0;
    for k in &keys {
        let v: Option<String> = conn.get(k).await?;
        let want = format!("v-{k}");
        if v.as_deref() != Some(want.as_str()) {
            bail!("{k} reads {v:?} after the migrations, expected {want}");
        }
        if slots.contains(key_slot(k.as_bytes())) {
            moved += 1;
        }
    }
    if moved == 0 {
        bail!("none of the test's keys was in the migrated slots {slots:?}");
    }
    let moved_key = keys.iter().find(|k| slots.contains(key_slot(k.as_bytes()))).context("a moved key")?;
    let mut reader = RespConn::connect(&other).await?;
    expect(&mut reader, &["AUTH", "reader", "readpw"], "OK").await?;
    expect(&mut reader, &["GET", moved_key], &format!("v-{moved_key}")).await?;
    expect_error(&mut reader, &["SET", moved_key, "x"], "NOPERM").await?;
    Ok(())
}
