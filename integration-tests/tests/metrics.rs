//! Prometheus metrics of a real deployment, scraped as Prometheus would: the proxies count
//! what clients did (commands by name, replies by result, latency, bytes), say the state they
//! hold (config epoch, slots, clients, backend connections) and a migration's phase and
//! progress while it runs; the broker's gauges follow the metadata.

use anyhow::{anyhow, ensure, Result};
use sluice_common::model::{MigrationMode, SlotRange};
use sluice_common::slot::key_slot;
use sluice_harness::workload::cluster_connection;
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster};
use std::time::Duration;

async fn scrape(url: &str) -> Result<String> {
    let resp = reqwest::get(url).await?;
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    Ok(resp.text().await?)
}

/// The value of the sample named exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn at_least(text: &str, series: &str, min: f64) -> Result<()> {
    let v = sample(text, series).ok_or_else(|| anyhow!("no {series} in:\n{text}"))?;
    ensure!(v >= min, "{series} is {v}, expected at least {min}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_and_broker_export_what_clients_and_migrations_do() -> Result<()> {
    let spec = LocalSpec { proxy_args: vec!["--min-follow-ms".into(), "8000".into()], ..LocalSpec::default() };
    let cluster = LocalCluster::start(spec).await?;
    let first = &cluster.proxies[0];
    let metrics_url = format!("http://{}/metrics", first.metrics.as_deref().ok_or_else(|| anyhow!("no --metrics"))?);

    // Clients: a cluster client writes and reads 300 keys; a plain connection to the first
    // proxy asks for a key of another proxy's slot (MOVED) and sends an unknown command.
    let mut conn = cluster_connection(&cluster.urls(), Duration::from_secs(10)).await?;
    for i in 0..300 {
        let () = redis::cmd("SET").arg(format!("m:{i}")).arg(i).query_async(&mut conn).await?;
        let v: i64 = redis::cmd("GET").arg(format!("m:{i}")).query_async(&mut conn).await?;
        ensure!(v == i, "GET m:{i} answered {v}");
    }
    let elsewhere = (0..).map(|i| format!("x{i}")).find(|k| key_slot(k.as_bytes()) > 10922).unwrap_or_default();
    let mut plain =
        redis::Client::open(format!("redis://{}/", first.addr()))?.get_multiplexed_async_connection().await?;
    let moved = redis::cmd("GET").arg(&elsewhere).query_async::<Option<String>>(&mut plain).await;
    ensure!(moved.is_err_and(|e| e.code() == Some("MOVED")), "GET {elsewhere} on the first proxy is MOVED");
    let unknown = redis::cmd("NOSUCHCOMMAND").query_async::<()>(&mut plain).await;
    ensure!(unknown.is_err(), "an unknown command is refused");

    // Exactly what a client sent is counted: 120 SETs and 80 GETs on the first proxy's slots.
    let before = scrape(&metrics_url).await?;
    let mine: Vec<String> =
        (0..).map(|i| format!("own{i}")).filter(|k| key_slot(k.as_bytes()) <= 5461).take(120).collect();
    for k in &mine {
        let () = redis::cmd("SET").arg(k).arg("v").query_async(&mut plain).await?;
    }
    for k in &mine[..80] {
        let _: String = redis::cmd("GET").arg(k).query_async(&mut plain).await?;
    }
    let after = scrape(&metrics_url).await?;
    for (command, sent) in [("set", 120.0), ("get", 80.0)] {
        let series = format!(r#"sluice_proxy_commands_total{{command="{command}"}}"#);
        let counted = sample(&after, &series).unwrap_or(0.0) - sample(&before, &series).unwrap_or(0.0);
        ensure!(counted == sent, "{command}: {sent} sent, {counted} counted");
    }

    let text = scrape(&metrics_url).await?;
    at_least(&text, r#"sluice_proxy_commands_total{command="set"}"#, 50.0)?;
    at_least(&text, r#"sluice_proxy_commands_total{command="get"}"#, 51.0)?;
    at_least(&text, r#"sluice_proxy_commands_total{command="unknown"}"#, 1.0)?;
    at_least(&text, r#"sluice_proxy_replies_total{result="ok"}"#, 100.0)?;
    at_least(&text, r#"sluice_proxy_replies_total{result="moved"}"#, 1.0)?;
    at_least(&text, r#"sluice_proxy_replies_total{result="error"}"#, 1.0)?;
    at_least(&text, r#"sluice_proxy_reply_duration_seconds_count{path="batch"}"#, 50.0)?;
    at_least(&text, r#"sluice_proxy_client_bytes_total{direction="in"}"#, 1000.0)?;
    at_least(&text, r#"sluice_proxy_client_bytes_total{direction="out"}"#, 500.0)?;
    at_least(&text, "sluice_proxy_backend_connections", 1.0)?;
    at_least(&text, "sluice_proxy_connected_clients", 1.0)?;
    let epoch = cluster.broker_client().epoch().await? as f64;
    ensure!(sample(&text, "sluice_proxy_config_epoch") == Some(epoch), "the proxy's epoch is the broker's");
    ensure!(sample(&text, "sluice_proxy_slots_served") == Some(5462.0), "the first proxy serves 0-5461");

    // A migration out of the first proxy: its phase and progress show while it follows.
    let spare = cluster.proxies[3].addr();
    let m =
        cluster.start_migration(&first.addr(), &spare, &[SlotRange::new(0, 99)], MigrationMode::Replication).await?;
    let following = format!(r#"sluice_proxy_migration_phase{{migration="{}",phase="following",role="source"}}"#, m.id);
    let lag = format!(r#"sluice_proxy_migration_progress{{field="lag_bytes",migration="{}",role="source"}}"#, m.id);
    let url = metrics_url.clone();
    wait_for("the source to export the migration following", Duration::from_secs(30), || {
        let (url, following, lag) = (url.clone(), following.clone(), lag.clone());
        async move {
            let text = scrape(&url).await?;
            Ok((sample(&text, &following) == Some(1.0) && sample(&text, &lag).is_some()).then_some(()))
        }
    })
    .await?;
    // While it follows, the destination's replication offset rises with the source's writes.
    let spare_url = format!("http://{}/metrics", cluster.proxies[3].metrics.as_deref().unwrap_or_default());
    let offset =
        format!(r#"sluice_proxy_migration_progress{{field="offset",migration="{}",role="destination"}}"#, m.id);
    let first_offset = {
        let (url, offset) = (spare_url.clone(), offset.clone());
        wait_for("the destination to export its offset", Duration::from_secs(30), || {
            let (url, offset) = (url.clone(), offset.clone());
            async move { Ok(sample(&scrape(&url).await?, &offset)) }
        })
        .await?
    };
    for k in &mine {
        let () = redis::cmd("SET").arg(k).arg("w".repeat(100)).query_async(&mut plain).await?;
    }
    wait_for("the destination's offset to rise", Duration::from_secs(30), || {
        let (url, offset) = (spare_url.clone(), offset.clone());
        async move { Ok(sample(&scrape(&url).await?, &offset).filter(|&o| o > first_offset)) }
    })
    .await?;
    let broker_url = format!("{}/metrics", cluster.broker.url());
    let text = scrape(&broker_url).await?;
    let running = ["pending", "starting", "following", "switching", "switched", "committed", "cleaning"]
        .iter()
        .filter_map(|p| sample(&text, &format!(r#"sluice_broker_migrations{{mode="replication",phase="{p}"}}"#)))
        .sum::<f64>();
    ensure!(running == 1.0, "the broker counts one running replication migration:\n{text}");

    // The coordinator pushed every proxy its configs and read their status.
    let coordinator_url = format!("http://{}/metrics", cluster.coordinator_metrics[0]);
    let text = scrape(&coordinator_url).await?;
    at_least(&text, r#"sluice_coordinator_pushes_total{result="applied"}"#, 4.0)?;
    at_least(&text, "sluice_coordinator_push_duration_seconds_count", 4.0)?;
    at_least(&text, r#"sluice_coordinator_rounds_total{result="ok"}"#, 1.0)?;
    at_least(&text, "sluice_coordinator_proxies_answering", 4.0)?;
    Ok(())
}
