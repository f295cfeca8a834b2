//! A `sluice-proxy` process on a loopback port, started and waited for until it answers.

use crate::bins::binary;
use crate::client::RespConn;
use crate::ports::free_port;
use crate::process::ChildProcess;
use crate::wait::wait_for;
use anyhow::{bail, Result};
use sluice_common::resp::Frame;
use std::path::Path;
use std::time::Duration;

/// A `sluice-proxy` process.
pub struct ProxyProcess {
    pub port: u16,
    pub node: String,
    process: ChildProcess,
}

impl ProxyProcess {
    /// Starts a proxy for `node` on a free port and waits until it answers PING.
    pub async fn start(dir: &Path, node: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        ProxyProcess::start_on(dir, None, node, extra_args).await
    }

    /// Like [`ProxyProcess::start`], on `port` if given (no retry on another port then).
    pub async fn start_on(dir: &Path, port: Option<u16>, node: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        let bin = binary("sluice-proxy")?;
        let mut last = None;
        for _ in 0..if port.is_some() { 1 } else { 5 } {
            let port = port.unwrap_or_else(free_port);
            let addr = format!("127.0.0.1:{port}");
            let mut args: Vec<String> = vec!["--listen".into(), addr.clone(), "--node".into(), node.to_string()];
            args.extend(extra_args.iter().map(|a| a.to_string()));
            let log = dir.join(format!("proxy-{port}.log"));
            let mut process = ChildProcess::spawn(&format!("proxy-{port}"), &bin, &args, &log)?;
            let needs_auth = extra_args.contains(&"--requirepass");
            let up = wait_for("sluice-proxy to answer", Duration::from_secs(10), || {
                let addr = addr.clone();
                let running = process.is_running();
                async move {
                    if !running {
                        bail!("sluice-proxy exited (port {port} taken?)");
                    }
                    Ok(answers(&addr, needs_auth).await.then_some(()))
                }
            })
            .await;
            match up {
                Ok(()) => return Ok(ProxyProcess { port, node: node.to_string(), process }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sluice-proxy did not start")))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// Whether something answers RESP on `addr` (NOAUTH counts: the proxy is up).
async fn answers(addr: &str, needs_auth: bool) -> bool {
    match RespConn::connect(addr).await {
        Ok(mut c) => match c.call(&["PING"]).await {
            Ok(Frame::Simple(_)) => true,
            Ok(Frame::Error(e)) => needs_auth && e.starts_with(b"NOAUTH"),
            _ => false,
        },
        Err(_) => false,
    }
}
