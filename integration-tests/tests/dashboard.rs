//! The broker's web dashboard in a real headless Chromium (Debian's `chromium`, which
//! `scripts/test.sh` installs): the page loads from the broker, shows every proxy of the
//! cluster and a migration moving through its phases to `done`, and a screenshot of it is
//! written to `target/dashboard.png`.

use anyhow::{anyhow, bail, ensure, Context, Result};
use sluice_common::model::{MigrationMode, MigrationPhase, SlotRange};
use sluice_harness::bins::{bin_dir, which};
use sluice_harness::{wait_for, LocalCluster, LocalSpec, MigrationCluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn chromium() -> Result<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|n| which(n)).ok_or_else(|| {
        anyhow!("no chromium on PATH: install it (Debian: apt-get install chromium; scripts/test.sh does)")
    })
}

/// Runs headless Chromium on `url` with `args`; lets the page's scripts run for a few seconds
/// of virtual time first. Answers stdout.
async fn headless(url: &str, args: &[&str]) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(chromium()?);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--virtual-time-budget=5000")
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("chromium did not finish within 60 s")??;
    ensure!(out.status.success(), "chromium failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The page as Chromium rendered it, after its scripts ran.
async fn dom(url: &str) -> Result<String> {
    headless(url, &["--dump-dom"]).await
}

/// `data-phase` of the migration row `id`, if the page shows one.
fn shown_phase(dom: &str, id: &str) -> Option<String> {
    let row = dom.find(&format!(r#"data-migration="{id}""#))?;
    let rest = &dom[row..dom.len().min(row + 200)];
    let at = rest.find(r#"data-phase=""#)? + r#"data-phase=""#.len();
    Some(rest[at..].split('"').next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_proxies_and_a_migration_reaching_done() -> Result<()> {
    chromium()?;
    let spec = LocalSpec { proxy_args: vec!["--min-follow-ms".into(), "4000".into()], ..LocalSpec::default() };
    let cluster = LocalCluster::start(spec).await?;
    let url = format!("{}/", cluster.broker.url());

    let page = dom(&url).await?;
    for p in &cluster.proxies {
        ensure!(page.contains(&format!(r#"data-proxy="{}""#, p.addr())), "the page shows proxy {}", p.addr());
    }
    ensure!(page.contains(r#"data-cluster="local""#), "the page shows the cluster");
    ensure!(page.contains("16384 of 16384 slots served"), "the page counts the served slots");

    let (src, dst) = (cluster.proxies[0].addr(), cluster.proxies[3].addr());
    let m = cluster.start_migration(&src, &dst, &[SlotRange::new(0, 999)], MigrationMode::Replication).await?;
    // While it runs: the page shows it in a phase before `done`.
    let running = dom(&url).await?;
    let phase = shown_phase(&running, &m.id).ok_or_else(|| anyhow!("the page does not show {}", m.id))?;
    ensure!(phase != "done", "{} is shown done while it needs 4 s of following", m.id);

    let end = cluster.watch_migration(&m.id).until_final(Duration::from_secs(60)).await?;
    ensure!(end.phase == MigrationPhase::Done, "the migration ended {:?}", end.phase);
    let url2 = url.clone();
    let id = m.id.clone();
    wait_for("the page to show the migration done", Duration::from_secs(30), || {
        let (url, id) = (url2.clone(), id.clone());
        async move { Ok((shown_phase(&dom(&url).await?, &id).as_deref() == Some("done")).then_some(())) }
    })
    .await?;

    let shot = screenshot_path()?;
    headless(&url, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,1000"]).await?;
    let size = std::fs::metadata(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?.len();
    ensure!(size > 10_000, "the screenshot {} is only {size} bytes", shot.display());
    eprintln!("dashboard screenshot: {}", shot.display());
    Ok(())
}

/// `target/dashboard.png`: next to the profile directory the binaries are in.
fn screenshot_path() -> Result<PathBuf> {
    let bins = bin_dir()?;
    let target = bins.parent().map(Path::to_path_buf).unwrap_or(bins);
    if !target.is_dir() {
        bail!("no target directory at {}", target.display());
    }
    Ok(target.join("dashboard.png"))
}
