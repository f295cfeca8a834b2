//! Coordinators at scale (issue 16): several real coordinators split simulated proxies (the
//! control services of `sluice_harness::fleet`, registered with a real broker) among
//! themselves, every proxy is looked after by exactly one of them, and when one stops its
//! share is taken over and keeps getting the broker's changes; a change sends whole configs
//! only to the proxies whose config it changed, and the epoch alone to the others.

use anyhow::{bail, Context, Result};
use sluice_common::api::CoordinatorList;
use sluice_common::model::ClusterView;
use sluice_harness::bins::binary;
use sluice_harness::broker::BrokerProcess;
use sluice_harness::fleet::Fleet;
use sluice_harness::ports::free_port;
use sluice_harness::process::ChildProcess;
use sluice_harness::wait_for;
use std::path::Path;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// A coordinator with its id and metrics address.
struct Coordinator {
    process: ChildProcess,
    metrics: String,
}

fn start_coordinator(dir: &Path, broker: &str, id: &str) -> Result<Coordinator> {
    let metrics = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--broker",
        broker,
        "--id",
        id,
        "--metrics",
        &metrics,
        "--heartbeat-ttl-ms",
        "1000",
        "--idle-status-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dir.join(format!("{id}.log"));
    let process = ChildProcess::spawn(id, &binary("sluice-coordinator")?, &args, &log)?;
    Ok(Coordinator { process, metrics })
}

/// `sluice_coordinator_proxies` of a coordinator: how many proxies it looked after at its last
/// round; `None` while it does not answer.
async fn proxies_gauge(metrics: &str) -> Option<u64> {
    metric(metrics, "sluice_coordinator_proxies").await
}

/// One sample of a coordinator's metrics (`name` with its labels, as the text shows it);
/// `None` while it does not answer or has not shown it yet.
async fn metric(metrics: &str, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{metrics}/metrics")).await.ok()?.text().await.ok()?;
    let line = text.lines().find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))?;
    line.rsplit(' ').next()?.parse::<f64>().ok().map(|v| v as u64)
}

const FULL: &str = r#"sluice_coordinator_push_calls_total{kind="full"}"#;
const EPOCH_ONLY: &str = r#"sluice_coordinator_push_calls_total{kind="epoch_only"}"#;

/// Issue 16: every proxy config has a version (its content apart from the epoch). A change
/// that alters the configs of 2 proxies out of 12 sends those 2 their whole config and the
/// other 10 only the new epoch (`AdvanceEpoch`), and every proxy holds the broker's epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sends_whole_configs_only_to_the_proxies_it_concerns() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("sluice-cp-").tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &dir.path().join("broker"), None).await?;
    let client = broker.client();
    let fleet = Fleet::start(12, &client).await?;
    let addresses = fleet.addresses();
    let (pair, members) = addresses.split_at(2);
    for (i, chunk) in members.chunks(5).enumerate() {
        client.create_cluster(&format!("c{i}"), chunk.to_vec()).await?;
    }
    let coordinator = start_coordinator(dir.path(), &broker.url(), "coord")?;
    fleet.wait_all(client.epoch().await?, Instant::now(), DEADLINE).await?;
    let m = coordinator.metrics.clone();
    // Every push of the convergence counted (a push is counted once its answer is in).
    wait_for("the coordinator's metrics", DEADLINE, || {
        let m = m.clone();
        async move { Ok(metric(&m, FULL).await.filter(|n| *n >= 12).map(|_| ())) }
    })
    .await?;
    let before: Vec<(u64, u64)> =
        fleet.proxies.iter().map(|p| (p.set_config_calls(), p.advance_epoch_calls())).collect();
    let (full_before, epoch_only_before) =
        (metric(&m, FULL).await.unwrap_or(0), metric(&m, EPOCH_ONLY).await.unwrap_or(0));

    // The two free proxies form a cluster: their configs change, the other ten only see the
    // global epoch move.
    let started = Instant::now();
    let view: ClusterView = client.create_cluster("pair", pair.to_vec()).await?;
    fleet.wait_all(view.epoch, started, DEADLINE).await?;
    let epoch = client.epoch().await?;
    assert_eq!(epoch, view.epoch, "nothing else changed meanwhile");
    wait_for("both kinds of push counted", DEADLINE, || {
        let m = m.clone();
        async move {
            let (full, epoch_only) = (metric(&m, FULL).await.unwrap_or(0), metric(&m, EPOCH_ONLY).await.unwrap_or(0));
            Ok((full >= full_before + 2 && epoch_only >= epoch_only_before + 10).then_some(()))
        }
    })
    .await?;
    for (p, (set_before, advance_before)) in fleet.proxies.iter().zip(&before) {
        let (set, advanced) = (p.set_config_calls() - set_before, p.advance_epoch_calls() - advance_before);
        if pair.contains(&p.address) {
            assert_eq!((set, advanced), (1, 0), "{} joined a cluster: one whole config, nothing else", p.address);
        } else {
            assert_eq!((set, advanced), (0, 1), "{}'s config did not change: only the epoch", p.address);
        }
        assert_eq!(p.epoch(), epoch, "{} holds the broker's epoch", p.address);
    }
    assert_eq!(metric(&m, FULL).await, Some(full_before + 2), "whole configs: the two proxies concerned");
    assert_eq!(metric(&m, EPOCH_ONLY).await, Some(epoch_only_before + 10), "the epoch alone: the ten others");

    // A proxy whose config was changed behind the coordinator's back is never advanced over
    // it: whichever it learns first (its Status, or an AdvanceEpoch refused for the version),
    // it gets the broker's whole config.
    let odd = &fleet.proxies[5];
    let broker_config = odd.config().context("a config")?;
    odd.replace_config(sluice_common::model::ProxyConfig::free(odd.address.clone(), broker_config.epoch));
    let started = Instant::now();
    client.delete("/clusters/pair").await?;
    let epoch = client.epoch().await?;
    fleet.wait_all(epoch, started, DEADLINE).await?;
    let held = odd.config().context("a config")?;
    assert_eq!(held, sluice_common::model::ProxyConfig { epoch, ..broker_config }, "the broker's config again");
    Ok(())
}

async fn live_coordinators(broker: &str) -> Result<Vec<String>> {
    let list: CoordinatorList = reqwest::get(format!("{broker}/api/v1/coordinators")).await?.json().await?;
    Ok(list.coordinators.into_iter().map(|c| c.id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_split_the_proxies_and_take_over_the_share_of_one_that_stops() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("sluice-cp-").tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &dir.path().join("broker"), None).await?;
    let client = broker.client();
    let fleet = Fleet::start(42, &client).await?;
    let addresses = fleet.addresses();
    let (spares, members) = addresses.split_at(2);
    for (i, chunk) in members.chunks(4).enumerate() {
        client.create_cluster(&format!("c{i}"), chunk.to_vec()).await?;
    }
    let mut a = start_coordinator(dir.path(), &broker.url(), "coord-a")?;
    let b = start_coordinator(dir.path(), &broker.url(), "coord-b")?;
    let epoch = client.epoch().await?;
    fleet.wait_all(epoch, Instant::now(), DEADLINE).await?;

    // Both live, each looking after a part, together all of them.
    let url = broker.url();
    wait_for("both coordinators to share the proxies", DEADLINE, || {
        let (url, ma, mb) = (url.clone(), a.metrics.clone(), b.metrics.clone());
        async move {
            let live = live_coordinators(&url).await?;
            let (pa, pb) = (proxies_gauge(&ma).await, proxies_gauge(&mb).await);
            Ok((live == ["coord-a", "coord-b"]
                && matches!((pa, pb), (Some(x), Some(y)) if x > 0 && y > 0 && x + y == 42))
            .then_some(()))
        }
    })
    .await?;

    // Every proxy gets its Status calls from one coordinator only: one connection each.
    let started = Instant::now();
    loop {
        for p in &fleet.proxies {
            p.take_status_callers();
        }
        // A window of several idle Status periods (300 ms).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let callers: Vec<usize> = fleet.proxies.iter().map(|p| p.take_status_callers().len()).collect();
        if callers.iter().all(|n| *n == 1) {
            break;
        }
        if started.elapsed() > DEADLINE {
            bail!("Status callers per proxy never settled to one each: {callers:?}");
        }
    }

    // One coordinator dies without a word: once its heartbeat expires the other takes
    // everything, and a change reaches every proxy.
    a.process.kill();
    wait_for("coord-b to take every proxy", DEADLINE, || {
        let (url, mb) = (url.clone(), b.metrics.clone());
        async move {
            let live = live_coordinators(&url).await?;
            Ok((live == ["coord-b"] && proxies_gauge(&mb).await == Some(42)).then_some(()))
        }
    })
    .await?;
    let started = Instant::now();
    let view: ClusterView = client.create_cluster("late", spares.to_vec()).await?;
    let took = fleet.wait_all(view.epoch, started, DEADLINE).await.context("the change after the takeover")?;
    eprintln!("after the takeover a change reached all 42 proxies in {:?}", took.iter().max());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_heartbeats_are_checked_and_expire() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("sluice-cp-").tempdir()?;
    let broker = BrokerProcess::start(dir.path(), &dir.path().join("broker"), None).await?;
    let url = broker.url();
    let http = reqwest::Client::new();
    let epoch = broker.client().epoch().await?;

    for (path, body, why) in [
        ("/api/v1/coordinators/bad%2Fid", "{}", "a bad id"),
        ("/api/v1/coordinators/c1", r#"{"ttl_ms": 5}"#, "a ttl below 100 ms"),
        ("/api/v1/coordinators/c1", r#"{"ttl_ms": 1000, "x": 1}"#, "an unknown field"),
    ] {
        let r = http.put(format!("{url}{path}")).body(body).send().await?;
        assert_eq!(r.status().as_u16(), 400, "{why}: {}", r.text().await?);
    }
    assert!(live_coordinators(&url).await?.is_empty(), "refused heartbeats record nothing");

    let r = http.put(format!("{url}/api/v1/coordinators/c1")).body(r#"{"ttl_ms": 300}"#).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let list: CoordinatorList = r.json().await?;
    assert_eq!(list.coordinators.len(), 1);
    assert_eq!(list.coordinators[0].id, "c1");
    let r = http.put(format!("{url}/api/v1/coordinators/c2")).send().await?;
    assert_eq!(r.status().as_u16(), 200, "no body: the default lifetime");
    // Longer than the wait below can take.
    let r = http.put(format!("{url}/api/v1/coordinators/c2")).body(r#"{"ttl_ms": 60000}"#).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(live_coordinators(&url).await?, ["c1", "c2"]);
    assert_eq!(broker.client().epoch().await?, epoch, "heartbeats are not metadata");

    wait_for("c1's heartbeat to expire", DEADLINE, || {
        let url = url.clone();
        async move { Ok((live_coordinators(&url).await? == ["c2"]).then_some(())) }
    })
    .await?;
    let r = http.delete(format!("{url}/api/v1/coordinators/c2")).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(live_coordinators(&url).await?.is_empty());
    let r = http.delete(format!("{url}/api/v1/coordinators/c2")).send().await?;
    assert_eq!(r.status().as_u16(), 404, "gone already");
    Ok(())
}
