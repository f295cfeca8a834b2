//! A whole deployment as `sluice local` runs it: broker, coordinator, redis-server nodes and
//! self-registering proxies, all real processes on loopback, driven by the redis-rs cluster
//! client and the broker's HTTP API.

use anyhow::Result;
use redis::AsyncCommands;
use sluice_common::api::ProxyState;
use sluice_harness::local::proxy_epoch;
use sluice_harness::{wait_for, LocalCluster, LocalSpec};
use std::time::{Duration, Instant};

async fn cluster_connection(urls: Vec<String>) -> Result<redis::cluster_async::ClusterConnection> {
    let client = redis::cluster::ClusterClient::builder(urls).retries(10).build()?;
    Ok(client.get_async_connection().await?)
}

/// Writes `n` keys with `prefix` and reads them back, 500 at a time.
async fn write_and_read(conn: &redis::cluster_async::ClusterConnection, prefix: &str, n: usize) -> Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let writes = chunk.iter().map(|i| {
            let mut c = conn.clone();
            async move { c.set::<_, _, ()>(format!("{prefix}:{i}"), i).await }
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
    }
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let reads = chunk.iter().map(|i| {
            let mut c = conn.clone();
            async move { (*i, c.get::<_, Option<usize>>(format!("{prefix}:{i}")).await) }
        });
        for (i, r) in futures::future::join_all(reads).await {
            assert_eq!(r?, Some(i), "{prefix}:{i}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_comes_up_serves_clients_and_follows_the_broker() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec::default()).await?;
    let broker = cluster.broker_client();
    // Every proxy holds the broker's epoch.
    let epoch = broker.epoch().await?;
    for p in &cluster.proxies {
        assert_eq!(proxy_epoch(&p.addr()).await?, epoch, "proxy {}", p.addr());
    }
    let proxies = broker.proxies().await?.proxies;
    assert_eq!(proxies.iter().filter(|p| p.state == ProxyState::Serving).count(), 3);
    assert_eq!(proxies.iter().filter(|p| p.state == ProxyState::Free).count(), 1);

    let conn = cluster_connection(cluster.urls()).await?;
    write_and_read(&conn, "first", 10_000).await?;
    assert_eq!(cluster.total_keys().await?, 10_000);

    // Metadata changes reach every proxy within 2 s: delete the cluster, create it again
    // with the spare instead of the first proxy.
    broker.delete_cluster("local").await?;
    let started = Instant::now();
    let e1 = cluster.wait_converged(Duration::from_secs(2)).await?;
    assert!(e1 > epoch, "the epoch moved forward ({epoch} -> {e1})");
    let members: Vec<String> = cluster.proxies[1..].iter().map(|p| p.addr()).collect();
    broker.create_cluster("local", members.clone()).await?;
    let e2 = cluster.wait_converged(Duration::from_secs(2)).await?;
    assert!(e2 > e1);
    eprintln!("two metadata changes reached every proxy in {:?}", started.elapsed());
    let view = broker.cluster("local").await?;
    assert_eq!(view.nodes.iter().map(|n| n.proxy.clone()).collect::<Vec<_>>(), members);
    // The first proxy is free now and serves nothing; clients of the new topology work.
    let mut first = redis::Client::open(format!("redis://{}/", cluster.proxies[0].addr()))?
        .get_multiplexed_async_connection()
        .await?;
    let err = first.get::<_, Option<String>>("anything").await.expect_err("a free proxy serves no slot");
    assert!(err.to_string().to_lowercase().contains("clusterdown"), "{err}");
    let urls: Vec<String> = members.iter().map(|a| format!("redis://{a}/")).collect();
    let conn = cluster_connection(urls).await?;
    write_and_read(&conn, "second", 2_000).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_is_marked_failed_and_comes_back_to_its_config() -> Result<()> {
    let mut cluster = LocalCluster::start(LocalSpec { spare: 0, ..LocalSpec::default() }).await?;
    let broker = cluster.broker_client();
    let victim = cluster.proxies[1].addr();
    cluster.proxies[1].process().kill();
    wait_for("the broker to mark the killed proxy failed", Duration::from_secs(15), || {
        let broker = broker.clone();
        let victim = victim.clone();
        async move {
            let proxies = broker.proxies().await?.proxies;
            Ok(proxies.iter().any(|p| p.address == victim && p.state == ProxyState::Failed).then_some(()))
        }
    })
    .await?;
    // Restarted with the same flags, it registers again, gets its config and epoch back.
    cluster.proxies[1].process().restart()?;
    let epoch = cluster.wait_converged(Duration::from_secs(15)).await?;
    assert_eq!(proxy_epoch(&victim).await?, epoch);
    wait_for("the broker to see the proxy healthy again", Duration::from_secs(15), || {
        let broker = broker.clone();
        let victim = victim.clone();
        async move {
            let proxies = broker.proxies().await?.proxies;
            Ok(proxies.iter().any(|p| p.address == victim && p.state == ProxyState::Serving).then_some(()))
        }
    })
    .await?;
    let conn = cluster_connection(cluster.urls()).await?;
    write_and_read(&conn, "back", 1_000).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_working_while_the_broker_is_down_and_the_coordinator_recovers() -> Result<()> {
    let mut cluster = LocalCluster::start(LocalSpec::default()).await?;
    let conn = cluster_connection(cluster.urls()).await?;
    write_and_read(&conn, "before", 1_000).await?;

    cluster.broker.kill();
    // Five seconds of traffic without the broker: not a single error.
    let until = Instant::now() + Duration::from_secs(5);
    let mut ops = 0u64;
    let mut c = conn.clone();
    while Instant::now() < until {
        let key = format!("during:{}", ops % 5_000);
        c.set::<_, _, ()>(&key, ops).await?;
        let v: u64 = c.get(&key).await?;
        assert_eq!(v, ops);
        ops += 1;
    }
    assert!(ops > 100, "traffic flowed ({ops} round trips)");

    cluster.broker.restart().await?;
    // The coordinator picks up again: a change made now reaches every proxy.
    let broker = cluster.broker_client();
    let before = broker.epoch().await?;
    broker.delete_cluster("local").await?;
    broker.create_cluster("local", cluster.cluster_proxies()).await?;
    let after = cluster.wait_converged(Duration::from_secs(10)).await?;
    assert!(after >= before + 2);
    write_and_read(&conn, "after", 1_000).await?;
    Ok(())
}
