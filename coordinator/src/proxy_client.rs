//! gRPC clients for the proxies' control service, one channel per control address.
//!
//! Channels are created lazily (nothing is dialled until the first call) and every call,
//! connecting included, runs under the same deadline, so one proxy that hangs costs the
//! round at most that deadline and never delays the calls to the others, which run in
//! parallel. After a call fails for want of an answer the channel is dropped and the next
//! call dials afresh: a restarted proxy (same address, new process) is reached at once
//! instead of through a connection that tonic still believes in.

use sluice_proto::control::{
    AdvanceEpochReply, AdvanceEpochRequest, SetConfigReply, SetConfigRequest, StatusReply, StatusRequest,
};
use sluice_proto::ProxyControlClient;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("control address {address:?} is not usable: {why}")]
    BadAddress { address: String, why: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{code:?}: {message}")]
    Status { code: Code, message: String },
}

impl RpcError {
    /// FAILED_PRECONDITION on SetConfig: the proxy holds a newer epoch (or the same epoch with
    /// another config). Another coordinator was faster, or this one read an old config.
    pub fn is_stale_config(&self) -> bool {
        matches!(self, RpcError::Status { code: Code::FailedPrecondition, .. })
    }

    /// UNIMPLEMENTED: a proxy that predates the call (`AdvanceEpoch`).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, RpcError::Status { code: Code::Unimplemented, .. })
    }

    /// Whether the proxy did not answer at all (as opposed to answering with an error): no
    /// connection, a reset, a deadline.
    pub fn is_no_answer(&self) -> bool {
        match self {
            RpcError::Timeout(_) => true,
            RpcError::Status { code, .. } => {
                matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
            }
            RpcError::BadAddress { .. } => false,
        }
    }
}

impl From<tonic::Status> for RpcError {
    fn from(s: tonic::Status) -> Self {
        // Transport errors ("tcp connect error") keep the cause in the source chain.
        let mut message = s.message().to_string();
        let mut source = std::error::Error::source(&s);
        while let Some(e) = source {
            let text = e.to_string();
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = e.source();
        }
        RpcError::Status { code: s.code(), message }
    }
}

/// The control clients of every proxy the coordinator talks to.
#[derive(Debug)]
pub struct ProxyClients {
    timeout: Duration,
    channels: Mutex<HashMap<String, ProxyControlClient<Channel>>>,
}

impl ProxyClients {
    pub fn new(timeout: Duration) -> ProxyClients {
        ProxyClients { timeout, channels: Mutex::new(HashMap::new()) }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `Status` of the proxy at `control`.
    pub async fn status(&self, control: &str) -> Result<StatusReply, RpcError> {
        let mut client = self.client(control)?;
        let result = tokio::time::timeout(self.timeout, client.status(StatusRequest {})).await;
        self.finish(control, result).map(tonic::Response::into_inner)
    }

    /// `SetConfig` on the proxy at `control`.
    pub async fn set_config(&self, control: &str, epoch: u64, config_json: String) -> Result<SetConfigReply, RpcError> {
        let mut client = self.client(control)?;
        let result =
            tokio::time::timeout(self.timeout, client.set_config(SetConfigRequest { epoch, config_json })).await;
        self.finish(control, result).map(tonic::Response::into_inner)
    }

    /// `AdvanceEpoch` on the proxy at `control`: the config it holds, at `epoch`, if that
    /// config has `config_version`.
    pub async fn advance_epoch(
        &self,
        control: &str,
        epoch: u64,
        config_version: String,
    ) -> Result<AdvanceEpochReply, RpcError> {
        let mut client = self.client(control)?;
        let request = AdvanceEpochRequest { epoch, config_version };
        let result = tokio::time::timeout(self.timeout, client.advance_epoch(request)).await;
        self.finish(control, result).map(tonic::Response::into_inner)
    }

    /// Drops the channels of control addresses no longer registered.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|address, _| keep(address));
    }

    /// How many channels are open (or ready to be dialled).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProxyControlClient<Channel>>> {
        // A panic while holding this lock leaves nothing half-done in a map of channels.
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client for `control`, created on first use. A clone shares the channel, so no
    /// lock is held across a call.
    fn client(&self, control: &str) -> Result<ProxyControlClient<Channel>, RpcError> {
        let mut channels = self.lock();
        if let Some(c) = channels.get(control) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(control, self.timeout)?;
        let client = ProxyControlClient::new(endpoint.connect_lazy());
        channels.insert(control.to_string(), client.clone());
        Ok(client)
    }

    fn finish<T>(
        &self,
        control: &str,
        result: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, RpcError> {
        let err = match result {
            Ok(Ok(reply)) => return Ok(reply),
            // tonic's own deadline (the same one, sent along as grpc-timeout) may fire first.
            Ok(Err(status)) if status.code() == Code::Cancelled && status.message().contains("Timeout expired") => {
                RpcError::Timeout(self.timeout)
            }
            Ok(Err(status)) => RpcError::from(status),
            Err(_) => RpcError::Timeout(self.timeout),
        };
        if err.is_no_answer() {
            self.lock().remove(control);
        }
        Err(err)
    }
}

/// The endpoint of a control address (`host:port`, as registered with the broker).
fn endpoint(control: &str, timeout: Duration) -> Result<Endpoint, RpcError> {
    let bad = |why: String| RpcError::BadAddress { address: control.to_string(), why };
    if control.is_empty() || control.contains('/') {
        return Err(bad("expected host:port".to_string()));
    }
    Ok(Endpoint::from_shared(format!("http://{control}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_host_and_port() {
        assert!(endpoint("127.0.0.1:7001", Duration::from_millis(10)).is_ok());
        assert!(endpoint("[::1]:7001", Duration::from_millis(10)).is_ok());
        assert!(endpoint("", Duration::from_millis(10)).is_err());
        assert!(endpoint("http://x:1", Duration::from_millis(10)).is_err());
    }

    #[test]
    fn error_kinds() {
        let stale = RpcError::Status { code: Code::FailedPrecondition, message: "epoch 7 < 9".into() };
        assert!(stale.is_stale_config());
        assert!(!stale.is_no_answer());
        assert!(RpcError::Timeout(Duration::from_millis(5)).is_no_answer());
        assert!(RpcError::Status { code: Code::Unavailable, message: "tcp connect error".into() }.is_no_answer());
        assert!(!RpcError::Status { code: Code::InvalidArgument, message: "bad".into() }.is_no_answer());
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_and_the_channel_is_dropped() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let clients = ProxyClients::new(Duration::from_millis(300));
        let control = format!("127.0.0.1:{port}");
        let err = clients.status(&control).await.expect_err("nothing listens");
        assert!(err.is_no_answer(), "{err}");
        assert!(clients.is_empty(), "the failed channel is not kept");
    }

    #[tokio::test]
    async fn a_hung_peer_costs_at_most_the_timeout() {
        // Accepts connections and never answers: the HTTP/2 handshake never completes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let control = listener.local_addr().expect("addr").to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let clients = ProxyClients::new(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = clients.status(&control).await.expect_err("never answers");
        assert!(err.is_no_answer(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        hold.abort();
    }
}
