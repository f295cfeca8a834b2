//! `sluice local` as a user runs it: the binary starts, prints commands, the printed
//! commands work as printed, and SIGTERM stops every process it started.

use anyhow::{bail, Result};
use sluice_harness::bins::binary;
use sluice_harness::ports::{free_base_port, free_port};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn children_of(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

#[test]
fn sluice_local_prints_commands_that_work_and_stops_everything() -> Result<()> {
    let base = free_base_port(4);
    let broker_port = free_port();
    let mut child = Command::new(binary("sluice")?)
        .args(["local", "--base-port", &base.to_string(), "--broker-port", &broker_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut commands = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_try = false;
    while Instant::now() < deadline {
        let Some(line) = lines.next() else { bail!("sluice local exited before printing its commands") };
        let line = line?;
        println!("{line}");
        if line.starts_with("Try:") {
            in_try = true;
        } else if in_try && line.trim().is_empty() {
            break;
        } else if in_try {
            commands.push(line.trim().to_string());
        }
    }
    assert_eq!(commands.len(), 3, "three example commands: {commands:?}");
    let children = children_of(child.id());
    assert!(children.len() >= 10, "broker, coordinator, 4 nodes and 4 proxies: {children:?}");

    let run = |cmd: &str| -> Result<String> {
        let out = Command::new("sh").arg("-c").arg(cmd).output()?;
        assert!(out.status.success(), "{cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(run(&commands[0])?, "OK", "{}", commands[0]);
    let cluster: serde_json::Value = serde_json::from_str(&run(&commands[1])?)?;
    assert_eq!(cluster["name"], "local");
    assert_eq!(cluster["nodes"].as_array().map(Vec::len), Some(3));
    let migration: serde_json::Value = serde_json::from_str(&run(&commands[2])?)?;
    assert_eq!(migration["phase"], "pending", "{migration}");

    // SIGTERM: sluice stops, and so does every process it started.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait()?;
    assert!(status.success(), "sluice local exits cleanly on SIGTERM: {status}");
    for pid in children {
        let gone = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
        {
            assert!(Instant::now() < gone, "child {pid} still running after sluice local stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
