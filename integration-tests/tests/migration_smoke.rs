//! A quick end-to-end replication migration: keys written before it read back after it,
//! and the nodes hold exactly the live keys once it is done.

use anyhow::Result;
use redis::AsyncCommands;
use sluice_harness::{LocalCluster, LocalSpec};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_migration_moves_half_a_node_to_the_spare() -> Result<()> {
    let cluster = LocalCluster::start(LocalSpec::default()).await?;
    let broker = cluster.broker_client();
    let client = redis::cluster::ClusterClient::builder(cluster.urls()).retries(10).build()?;
    let mut conn = client.get_async_connection().await?;
    for i in 0..5000 {
        conn.set::<_, _, ()>(format!("k:{i}"), i).await?;
    }
    let src = cluster.proxies[0].addr();
    let dst = cluster.proxies[3].addr();
    let body = serde_json::json!({"src": src, "dst": dst, "slots": [[2731, 5461]], "mode": "replication"});
    let m: serde_json::Value = broker.post("/clusters/local/migrations", &body).await?;
    let id = m["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut phases = Vec::new();
    let mut i = 5000;
    loop {
        let m: serde_json::Value = broker.get(&format!("/clusters/local/migrations/{id}")).await?;
        let phase = m["phase"].as_str().unwrap_or_default().to_string();
        if phases.last() != Some(&phase) {
            eprintln!("phase {phase}: {}", m);
            phases.push(phase.clone());
        }
        if phase == "done" || phase == "failed" || phase == "aborted" {
            break;
        }
        assert!(Instant::now() < deadline, "migration stuck in {phase}");
        // Traffic during the migration.
        conn.set::<_, _, ()>(format!("k:{}", i % 7000), i).await?;
        i += 1;
    }
    assert_eq!(phases.last().map(String::as_str), Some("done"), "{phases:?}");
    let mut expected = std::collections::HashMap::new();
    for k in 0..5000 {
        expected.insert(k, k);
    }
    for j in 5000..i {
        expected.insert(j % 7000, j);
    }
    for (k, v) in &expected {
        let got: Option<usize> = conn.get(format!("k:{k}")).await?;
        assert_eq!(got, Some(*v), "k:{k}");
    }
    assert_eq!(cluster.total_keys().await?, expected.len() as i64);
    Ok(())
}
