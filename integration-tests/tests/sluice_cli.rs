//! The `sluice` CLI against a real `sluice local`, as an operator types it: `status`, `migrate
//! --wait`, `migrations`, `scale add --wait`, `abort`, and the errors a person meets (a bad
//! slot range, a refused change, a broker that does not answer, a missing token).

use anyhow::{anyhow, bail, ensure, Result};
use sluice_common::slot::key_slot;
use sluice_harness::bins::binary;
use sluice_harness::ports::{free_base_port, free_port};
use sluice_harness::process::ChildProcess;
use sluice_harness::workload::cluster_connection;
use sluice_harness::{wait_for, BrokerClient};
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `sluice <args>` against `broker`, with `token` in `SLUICE_API_TOKEN` when given.
async fn sluice(broker: &str, token: Option<&str>, args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(binary("sluice")?);
    cmd.args(args).env("SLUICE_BROKER", broker).env_remove("SLUICE_API_TOKEN").kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("SLUICE_API_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await??;
    eprintln!(
        "$ sluice {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sluice local` running as a user starts it; SIGTERM (which stops everything it started)
/// when dropped, also when the test fails half-way.
struct SluiceLocal {
    child: std::process::Child,
    broker: String,
    base: u16,
}

impl SluiceLocal {
    /// Starts `sluice local` with 3 proxies and 2 spares and waits until it says it is up.
    fn start() -> Result<SluiceLocal> {
        let base = free_base_port(5);
        let broker_port = free_port();
        let mut child = std::process::Command::new(binary("sluice")?)
            .args([
                "local",
                "--spare",
                "2",
                "--base-port",
                &base.to_string(),
                "--broker-port",
                &broker_port.to_string(),
            ])
            .env_remove("SLUICE_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let local = SluiceLocal { child, broker: format!("http://127.0.0.1:{broker_port}"), base };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("sluice local: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("sluice local is up") => return Ok(local),
                Ok(_) => {}
                Err(_) => bail!("sluice local did not say it is up within 90 s"),
            }
        }
    }

    fn proxy(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.base + i)
    }
}

impl Drop for SluiceLocal {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_the_cluster_moves_slots_and_scales_out() -> Result<()> {
    let local = tokio::task::spawn_blocking(SluiceLocal::start).await??;
    let url = local.broker.clone();
    let broker = BrokerClient::new(&url);
    let (a, spare1, spare2) = (local.proxy(0), local.proxy(3), local.proxy(4));

    let out = sluice(&url, None, &["status"]).await?;
    ensure!(out.status.success(), "status failed: {}", stderr(&out));
    let text = stdout(&out);
    ensure!(text.contains("cluster local") && text.contains("16384 of 16384 slots served"), "{text}");
    ensure!(text.contains(&a) && text.contains("0-5461"), "the first shard and its slots: {text}");
    let free = text.lines().find(|l| l.starts_with("free proxies: ")).unwrap_or_default();
    ensure!(free.contains(&spare1) && free.contains(&spare2), "both spares are free: {text}");

    // A migration into a spare, followed to its end; the data moves with it.
    let urls: Vec<String> = (0..3).map(|i| format!("redis://{}/", local.proxy(i))).collect();
    let mut conn = cluster_connection(&urls, Duration::from_secs(10)).await?;
    let moving: Vec<String> =
        (0..).map(|i| format!("k{i}")).filter(|k| key_slot(k.as_bytes()) < 100).take(20).collect();
    for k in &moving {
        redis::cmd("SET").arg(k).arg(format!("{k}=v")).exec_async(&mut conn).await?;
    }
    let out = sluice(&url, None, &["migrate", "--src", &a, "--dst", &spare1, "--slots", "0-99", "--wait"]).await?;
    ensure!(out.status.success(), "migrate --wait failed: {}", stderr(&out));
    let text = stdout(&out);
    ensure!(text.contains("m-1 started") && text.contains("m-1  done"), "{text}");
    let view = broker.cluster("local").await?;
    ensure!(
        view.nodes.iter().any(|n| n.proxy == spare1 && n.slots.iter().any(|s| s.start == 0 && s.end == 99)),
        "the spare serves 0-99 after the migration: {view:?}"
    );
    let out = sluice(&url, None, &["status"]).await?;
    ensure!(stdout(&out).contains(&spare1) && stdout(&out).contains("100 (0-99)"), "{}", stdout(&out));
    let out = sluice(&url, None, &["migrations", "--all"]).await?;
    ensure!(stdout(&out).contains("m-1  done") && stdout(&out).contains("slots 0-99"), "{}", stdout(&out));
    let out = sluice(&url, None, &["migrations"]).await?;
    ensure!(stdout(&out).contains("no migration is running"), "{}", stdout(&out));

    // Refusals say what the broker said, and change nothing.
    let epoch = broker.epoch().await?;
    let out = sluice(&url, None, &["migrate", "--src", &a, "--dst", &spare2, "--slots", "0-50"]).await?;
    ensure!(!out.status.success() && stderr(&out).contains("409"), "a slot a no longer owns: {}", stderr(&out));
    let out = sluice(&url, None, &["migrate", "--src", &a, "--dst", &spare2, "--slots", "200-16384"]).await?;
    ensure!(!out.status.success() && stderr(&out).contains("out of range"), "{}", stderr(&out));
    let out = sluice(&url, None, &["abort", "m-99"]).await?;
    ensure!(!out.status.success() && stderr(&out).contains("404"), "{}", stderr(&out));
    ensure!(broker.epoch().await? == epoch, "a refused command changed the metadata");

    // A scale-out into the last spare, followed until the plan is done.
    let out = sluice(&url, None, &["scale", "--wait", "add", "1"]).await?;
    ensure!(out.status.success(), "scale add failed: {}", stderr(&out));
    ensure!(stdout(&out).contains("done"), "{}", stdout(&out));
    let view = broker.cluster("local").await?;
    ensure!(view.nodes.len() == 5, "five nodes after the scale-out: {view:?}");
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query_async(&mut conn).await?;
        ensure!(v.as_deref() == Some(format!("{k}=v").as_str()), "{k} read back after the moves: {v:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_clearly_when_the_broker_does_not_answer_or_wants_a_token() -> Result<()> {
    let out = sluice(&format!("http://127.0.0.1:{}", free_port()), None, &["status"]).await?;
    ensure!(!out.status.success() && stderr(&out).contains("does not answer"), "{}", stderr(&out));

    let dir = tempfile::tempdir()?;
    let port = free_port();
    let args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--api-token".into(),
        "s3cret".into(),
    ];
    let _broker = ChildProcess::spawn("broker", &binary("sluice-broker")?, &args, &dir.path().join("broker.log"))?;
    let url = format!("http://127.0.0.1:{port}");
    let client = BrokerClient::new(&url);
    wait_for("the broker to answer", Duration::from_secs(15), || {
        let client = client.clone();
        async move { Ok(client.epoch().await.ok()) }
    })
    .await?;
    let authorized = BrokerClient::new(&url).with_token(Some("s3cret".into()));
    for p in [7001, 7002] {
        let reg = serde_json::json!({"address": format!("127.0.0.1:{p}"), "control_address": format!("127.0.0.1:{}", p + 1000), "node_address": format!("127.0.0.1:{}", p + 2000)});
        authorized.post::<serde_json::Value>("/proxies", &reg).await?;
    }
    authorized.create_cluster("shop", vec!["127.0.0.1:7001".into()]).await?;
    let migrate = ["migrate", "--src", "127.0.0.1:7001", "--dst", "127.0.0.1:7002", "--slots", "0-9"];
    let out = sluice(&url, None, &migrate).await?;
    ensure!(!out.status.success() && stderr(&out).contains("401"), "{}", stderr(&out));
    let out = sluice(&url, Some("s3cret"), &migrate).await?;
    ensure!(out.status.success(), "with SLUICE_API_TOKEN: {}", stderr(&out));
    ensure!(stdout(&out).contains("m-1 started"), "{}", stdout(&out));
    // Reads need no token; the only cluster is found without --cluster.
    let out = sluice(&url, None, &["migrations"]).await?;
    ensure!(stdout(&out).contains("m-1  pending"), "{}", stdout(&out));
    Ok(())
}
