//! A `sluice-proxy` process on a loopback port, started and waited for until it answers.

use crate::bins::binary;
use crate::client::RespConn;
use crate::process::{start_listening, ChildProcess};
use crate::tls::{set_tls, ClientTls};
use anyhow::Result;
use sluice_common::resp::Frame;
use std::path::Path;

/// A `sluice-proxy` process.
pub struct ProxyProcess {
    pub port: u16,
    pub node: String,
    /// Where it serves Prometheus metrics (`--metrics`), when it was given one.
    pub metrics: Option<String>,
    process: ChildProcess,
}

impl ProxyProcess {
    /// Starts a proxy for `node` on a free port and waits until it answers PING.
    pub async fn start(dir: &Path, node: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        ProxyProcess::start_on(dir, None, node, extra_args).await
    }

    /// Like [`ProxyProcess::start`], on `port` if given (no retry on another port then).
    pub async fn start_on(dir: &Path, port: Option<u16>, node: &str, extra_args: &[&str]) -> Result<ProxyProcess> {
        let needs_auth = extra_args.contains(&"--requirepass");
        // With --tls-cert the port speaks TLS only: trust --tls-ca, else the certificate.
        let flag = |name: &str| extra_args.iter().position(|a| *a == name).and_then(|i| extra_args.get(i + 1));
        let tls = match flag("--tls-ca").or(flag("--tls-cert")).filter(|_| flag("--tls-cert").is_some()) {
            Some(ca) => Some(ClientTls::trusting(Path::new(ca))?),
            None => None,
        };
        let args = |port: u16| {
            let mut args: Vec<String> =
                vec!["--listen".into(), format!("127.0.0.1:{port}"), "--node".into(), node.to_string()];
            args.extend(extra_args.iter().map(|a| a.to_string()));
            args
        };
        let (port, process) = start_listening(
            "sluice-proxy",
            &binary("sluice-proxy")?,
            port,
            args,
            |port| dir.join(format!("proxy-{port}.log")),
            |port| {
                let tls = tls.clone();
                async move { answers(&format!("127.0.0.1:{port}"), needs_auth, tls.as_ref()).await }
            },
        )
        .await?;
        set_tls(&format!("127.0.0.1:{port}"), tls);
        let metrics = extra_args.iter().position(|a| *a == "--metrics").and_then(|i| extra_args.get(i + 1));
        Ok(ProxyProcess { port, node: node.to_string(), metrics: metrics.map(|m| m.to_string()), process })
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

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        set_tls(&self.addr(), None);
    }
}

/// Whether something answers RESP on `addr` (NOAUTH counts: the proxy is up).
async fn answers(addr: &str, needs_auth: bool, tls: Option<&ClientTls>) -> bool {
    match RespConn::connect_with(addr, tls).await {
        Ok(mut c) => match c.call(&["PING"]).await {
            Ok(Frame::Simple(_)) => true,
            Ok(Frame::Error(e)) => needs_auth && e.starts_with(b"NOAUTH"),
            _ => false,
        },
        Err(_) => false,
    }
}
