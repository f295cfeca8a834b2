//! A plain `redis-server` (cluster mode off) on a loopback port.

use crate::bins::redis_server;
use crate::client::RespConn;
use crate::process::{start_listening, ChildProcess};
use crate::wait::wait_for;
use anyhow::{bail, Result};
use sluice_common::resp::Frame;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct RedisNode {
    pub port: u16,
    pub dir: PathBuf,
    process: ChildProcess,
}

impl RedisNode {
    /// Starts a node with its files in `dir`, on a free port, and waits until it answers.
    pub async fn start(dir: &Path, extra_args: &[&str]) -> Result<RedisNode> {
        std::fs::create_dir_all(dir)?;
        let args = |port: u16| {
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                dir.display().to_string(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--daemonize".into(),
                "no".into(),
                "--protected-mode".into(),
                "no".into(),
                "--loglevel".into(),
                "warning".into(),
            ];
            args.extend(extra_args.iter().map(|a| a.to_string()));
            args
        };
        let (port, process) = start_listening(
            "redis-server",
            &redis_server()?,
            None,
            args,
            |port| dir.join(format!("redis-{port}.log")),
            |port| async move { ping(&format!("127.0.0.1:{port}")).await },
        )
        .await?;
        Ok(RedisNode { port, dir: dir.to_path_buf(), process })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the node's memory is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the node again on the same port (empty: nothing is persisted).
    pub async fn restart(&mut self) -> Result<()> {
        self.process.restart()?;
        let addr = self.addr();
        wait_for("restarted redis-server", Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { Ok(ping(&addr).await.then_some(())) }
        })
        .await
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// `DBSIZE` of the node itself.
    pub async fn dbsize(&self) -> Result<i64> {
        let mut c = RespConn::connect(&self.addr()).await?;
        match c.call(&["DBSIZE"]).await? {
            Frame::Integer(n) => Ok(n),
            other => bail!("DBSIZE answered {other:?}"),
        }
    }
}

/// Whether the node answers (`NOAUTH` counts: a node that requires a user is up).
async fn ping(addr: &str) -> bool {
    match RespConn::connect(addr).await {
        Ok(mut c) => match c.call(&["PING"]).await {
            Ok(Frame::Simple(_)) => true,
            Ok(Frame::Error(e)) => e.starts_with(b"NOAUTH"),
            _ => false,
        },
        Err(_) => false,
    }
}
