//! A client's pipeline keeps its order through the proxy, whatever path each command takes.
//!
//! The regression tests are the three cases a user found (a write followed by `KEYS`, by
//! `SCAN`, by a blocking pop); the differential tests run seeded random pipelines through
//! the proxy and against a plain `redis-server` and compare them answer by answer
//! (`SLUICE_DIFF_PIPELINES` sets how many, `SLUICE_SEED` replays a run).

use anyhow::{bail, Context, Result};
use sluice_common::resp::Frame;
use sluice_harness::client::RespConn;
use sluice_harness::cluster::ProxyCluster;
use sluice_harness::differential::{first_difference, frame_to_json, Generator, Profile, Step};
use sluice_harness::python::{pipelines_script, PythonEnv};
use sluice_harness::redis_node::RedisNode;
use sluice_harness::workload::seed_from_env;
use std::process::Stdio;

const TIMES: usize = 200;

/// Redis checks the timeouts of blocked clients at `hz` (10 a second by default): a
/// `BLPOP k 0.001` on an empty key takes up to 100 ms. The differential runs use many.
const FAST_TIMEOUTS: [&str; 2] = ["--hz", "100"];

async fn fast_timeouts(cluster: &ProxyCluster) -> Result<()> {
    for node in &cluster.nodes {
        let reply = RespConn::connect(&node.addr()).await?.call(&["CONFIG", "SET", "hz", "100"]).await?;
        anyhow::ensure!(reply == Frame::ok(), "CONFIG SET hz answered {reply:?}");
    }
    Ok(())
}

fn pipelines_from_env(default: usize) -> usize {
    std::env::var("SLUICE_DIFF_PIPELINES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

async fn one_proxy() -> Result<(ProxyCluster, RespConn)> {
    let cluster = ProxyCluster::start(1, &[]).await?;
    let conn = RespConn::connect(&cluster.proxies[0].addr()).await?;
    Ok((cluster, conn))
}

fn cmds(list: &[&[&str]]) -> Vec<Vec<String>> {
    list.iter().map(|c| c.iter().map(|a| a.to_string()).collect()).collect()
}

fn keys_of(frame: &Frame) -> Vec<String> {
    let items = match frame {
        Frame::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    items.iter().filter_map(|f| f.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sees_the_write_just_before_it_in_a_pipeline() -> Result<()> {
    let (_cluster, mut conn) = one_proxy().await?;
    for i in 0..TIMES {
        let k = format!("k{i}");
        let replies = conn.pipeline(&cmds(&[&["SET", &k, "v"], &["KEYS", &k]])).await?;
        assert_eq!(keys_of(&replies[1]), vec![k.clone()], "round {i}: KEYS after SET in one pipeline");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_sees_the_write_just_before_it_in_a_pipeline() -> Result<()> {
    let (_cluster, mut conn) = one_proxy().await?;
    for i in 0..TIMES {
        let k = format!("k{i}");
        let replies =
            conn.pipeline(&cmds(&[&["SET", &k, "v"], &["SCAN", "0", "MATCH", &k, "COUNT", "100000"]])).await?;
        let Frame::Array(parts) = &replies[1] else { bail!("round {i}: SCAN answered {:?}", replies[1]) };
        assert_eq!(parts.len(), 2, "round {i}: SCAN answers [cursor, keys]");
        assert_eq!(keys_of(&parts[1]), vec![k.clone()], "round {i}: SCAN after SET in one pipeline");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_pop_after_a_delete_in_a_pipeline_finds_nothing() -> Result<()> {
    let (cluster, mut conn) = one_proxy().await?;
    fast_timeouts(&cluster).await?;
    for i in 0..TIMES {
        let replies = conn.pipeline(&cmds(&[&["RPUSH", "q", "a"]])).await?;
        assert_eq!(replies[0], Frame::Integer(1), "round {i}: RPUSH");
        let replies = conn.pipeline(&cmds(&[&["DEL", "q"], &["BLPOP", "q", "0.05"]])).await?;
        assert_eq!(replies[0], Frame::Integer(1), "round {i}: DEL deletes the list");
        assert!(
            matches!(replies[1], Frame::NullArray | Frame::Null),
            "round {i}: BLPOP after DEL in one pipeline popped {:?}",
            replies[1]
        );
    }
    Ok(())
}

/// The reference side of a one-node run: a plain node for data, and a cluster-mode node for
/// the `CLUSTER` commands a plain node refuses.
struct Reference {
    plain: RespConn,
    cluster_node: RespConn,
}

impl Reference {
    async fn run(&mut self, steps: &[Step]) -> Result<Vec<Frame>> {
        let plain: Vec<Vec<String>> = steps.iter().filter(|s| !s.cluster_only).map(|s| s.args.clone()).collect();
        let cluster: Vec<Vec<String>> = steps.iter().filter(|s| s.cluster_only).map(|s| s.args.clone()).collect();
        let mut plain = self.plain.pipeline(&plain).await?.into_iter();
        let mut cluster = self.cluster_node.pipeline(&cluster).await?.into_iter();
        let mut out = Vec::with_capacity(steps.len());
        for s in steps {
            let next = if s.cluster_only { cluster.next() } else { plain.next() };
            out.push(next.context("a reply per command")?);
        }
        Ok(out)
    }
}

/// Random pipelines through a one-proxy cluster and against a plain `redis-server`, answer
/// by answer, over connections in RESP2 and in RESP3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_answer_as_a_plain_redis_does() -> Result<()> {
    let seed = seed_from_env();
    let pipelines = pipelines_from_env(2_000);
    eprintln!("differential: {pipelines} pipelines, seed {seed} (replay with SLUICE_SEED={seed})");
    let (cluster, _) = one_proxy().await?;
    fast_timeouts(&cluster).await?;
    let plain = RedisNode::start(&cluster.dir.path().join("reference"), &FAST_TIMEOUTS).await?;
    let cluster_node = RedisNode::start(
        &cluster.dir.path().join("reference-cluster"),
        &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
    )
    .await?;
    let mut generator = Generator::new(seed, Profile::one_node());
    let (mut proxy, mut reference) = (None, None);
    let mut commands = 0;
    for index in 0..pipelines {
        if index % 250 == 0 {
            // A new connection pair every 250 pipelines, every other one in RESP3.
            let mut p = RespConn::connect(&cluster.proxies[0].addr()).await?;
            let mut r = Reference {
                plain: RespConn::connect(&plain.addr()).await?,
                cluster_node: RespConn::connect(&cluster_node.addr()).await?,
            };
            if (index / 250) % 2 == 1 {
                for c in [&mut p, &mut r.plain, &mut r.cluster_node] {
                    c.call(&["HELLO", "3"]).await?;
                }
            }
            proxy = Some(p);
            reference = Some(r);
        }
        let (Some(p), Some(r)) = (proxy.as_mut(), reference.as_mut()) else { bail!("connections") };
        let steps = generator.pipeline();
        commands += steps.len();
        let args: Vec<Vec<String>> = steps.iter().map(|s| s.args.clone()).collect();
        let got: Vec<_> = p.pipeline(&args).await?.iter().map(frame_to_json).collect();
        let want: Vec<_> = r.run(&steps).await?.iter().map(frame_to_json).collect();
        if let Some(report) = first_difference(seed, index, &steps, &got, &want) {
            bail!("{report}");
        }
    }
    eprintln!("differential: {pipelines} pipelines, {commands} commands, no difference");
    Ok(())
}

/// The same generator (commands of one slot each) through redis-py's `RedisCluster`
/// pipelines against a 3-proxy cluster; the expected answers come from one plain
/// `redis-server` given the same pipelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_through_a_cluster_client_answer_as_one_plain_redis_does() -> Result<()> {
    let seed = seed_from_env();
    let pipelines = pipelines_from_env(1_000);
    eprintln!("differential (cluster client): {pipelines} pipelines, seed {seed} (replay with SLUICE_SEED={seed})");
    let env = PythonEnv::ensure_async().await?;
    let cluster = ProxyCluster::start(3, &[]).await?;
    fast_timeouts(&cluster).await?;
    let plain = RedisNode::start(&cluster.dir.path().join("reference"), &FAST_TIMEOUTS).await?;
    let mut generator = Generator::new(seed, Profile::cluster_client());
    let all: Vec<Vec<Step>> = (0..pipelines).map(|_| generator.pipeline()).collect();
    let input = cluster.dir.path().join("pipelines.jsonl");
    let mut lines = String::new();
    for steps in &all {
        let args: Vec<&Vec<String>> = steps.iter().map(|s| &s.args).collect();
        lines.push_str(&serde_json::to_string(&args)?);
        lines.push('\n');
    }
    std::fs::write(&input, lines)?;
    let out = tokio::process::Command::new(&env.python)
        .arg(pipelines_script())
        .args(["--nodes", &cluster.proxy_addrs().join(",")])
        .args(["--reference", &plain.addr()])
        .arg("--input")
        .arg(&input)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("pipelines.py exited with {}", out.status);
    }
    let results: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(results.len(), pipelines, "one result per pipeline");
    for (index, (steps, result)) in all.iter().zip(&results).enumerate() {
        if let Some(failed) = result.get("failed") {
            bail!("pipeline {index} of seed {seed} failed as a whole: {failed}\n{steps:#?}");
        }
        let list = |k: &str| result.get(k).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        if let Some(report) = first_difference(seed, index, steps, &list("got"), &list("want")) {
            bail!("{report}");
        }
    }
    // The cluster holds what the reference holds.
    let total = cluster.total_keys().await?;
    assert_eq!(total, plain.dbsize().await?, "the nodes together hold as many keys as the reference");
    Ok(())
}
