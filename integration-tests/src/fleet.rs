//! Simulated proxies for control-plane tests and benchmarks: N lightweight gRPC
//! `ProxyControl` servers in one process, each on its own loopback port, that register with
//! the broker like real proxies, take configs (whole, or the epoch alone over the config
//! version they hold) by the proxy's epoch rules and answer Status,
//! so a thousand of them fit a small machine. They have no data port and no Redis node: only
//! the control plane (broker → coordinators → proxies) is exercised.
//!
//! Each records when it took each epoch, so the time from a broker change to every proxy
//! holding the new epoch can be measured, and where its Status calls came from, so a test can
//! see which coordinator looks after it.

use crate::broker::BrokerClient;
use anyhow::{Context, Result};
use sluice_common::api::{ProxyInfo, RegisterProxy};
use sluice_common::model::{Epoch, ProxyConfig};
use sluice_proto::control::{
    AdvanceEpochReply, AdvanceEpochRequest, SetConfigReply, SetConfigRequest, StatusReply, StatusRequest,
    TmpSwitchReply, TmpSwitchRequest,
};
use sluice_proto::{ProxyControl, ProxyControlServer};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// One simulated proxy: what it holds and what it saw.
#[derive(Debug)]
pub struct SimProxy {
    /// Its client-facing name (the broker's key). Nothing listens there.
    pub address: String,
    /// Where its gRPC control service listens.
    pub control: String,
    state: Mutex<Held>,
    status_calls: AtomicU64,
    set_config_calls: AtomicU64,
    advance_epoch_calls: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    config: Option<ProxyConfig>,
    /// Every epoch taken, with when.
    taken: Vec<(Epoch, Instant)>,
    /// Remote addresses of Status calls since the last [`SimProxy::take_status_callers`].
    status_callers: HashSet<SocketAddr>,
}

impl SimProxy {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch it holds (0 before its first config).
    pub fn epoch(&self) -> Epoch {
        self.lock().config.as_ref().map_or(0, |c| c.epoch)
    }

    /// When it first held `epoch` or a later one.
    pub fn reached(&self, epoch: Epoch) -> Option<Instant> {
        self.lock().taken.iter().find(|(e, _)| *e >= epoch).map(|(_, t)| *t)
    }

    pub fn status_calls(&self) -> u64 {
        self.status_calls.load(Ordering::Relaxed)
    }

    pub fn set_config_calls(&self) -> u64 {
        self.set_config_calls.load(Ordering::Relaxed)
    }

    pub fn advance_epoch_calls(&self) -> u64 {
        self.advance_epoch_calls.load(Ordering::Relaxed)
    }

    /// The config it holds.
    pub fn config(&self) -> Option<ProxyConfig> {
        self.lock().config.clone()
    }

    /// Replaces the config held behind the coordinators' backs (as an operator's `UMCTL
    /// SETDB` of another content at the same epoch would).
    pub fn replace_config(&self, config: ProxyConfig) {
        self.lock().config = Some(config);
    }

    /// The version of the config held, as a real proxy says it ("" before the first).
    fn version(held: &Held) -> String {
        held.config.as_ref().map(ProxyConfig::version).unwrap_or_default()
    }

    /// Where its Status calls came from since the last call of this (one address per
    /// coordinator connection).
    pub fn take_status_callers(&self) -> HashSet<SocketAddr> {
        std::mem::take(&mut self.lock().status_callers)
    }

    /// The proxy's rules (proxy/src/state.rs `apply_config`): older refused, the same again
    /// unchanged, the same epoch with another config refused, newer taken.
    fn set_config(&self, req: SetConfigRequest) -> Result<SetConfigReply, Status> {
        let config: ProxyConfig = serde_json::from_str(&req.config_json)
            .map_err(|e| Status::invalid_argument(format!("config is not a ProxyConfig: {e}")))?;
        if config.epoch != req.epoch {
            return Err(Status::invalid_argument(format!("epoch {} but the config says {}", req.epoch, config.epoch)));
        }
        if config.proxy != self.address {
            return Err(Status::invalid_argument(format!("config for {}, this is {}", config.proxy, self.address)));
        }
        let mut held = self.lock();
        let epoch = held.config.as_ref().map_or(0, |c| c.epoch);
        if config.epoch < epoch {
            return Err(Status::failed_precondition(format!("epoch {} is older than the held {epoch}", config.epoch)));
        }
        if config.epoch == epoch {
            return match &held.config {
                Some(c) if *c == config => {
                    Ok(SetConfigReply { epoch, changed: false, config_version: Self::version(&held) })
                }
                _ => Err(Status::failed_precondition(format!("another config at the held epoch {epoch}"))),
            };
        }
        held.taken.push((config.epoch, Instant::now()));
        held.config = Some(config);
        Ok(SetConfigReply { epoch: req.epoch, changed: true, config_version: Self::version(&held) })
    }

    /// The proxy's `AdvanceEpoch` (proxy/src/state.rs `advance_epoch`): the held config at a
    /// newer epoch if its version is the one named, by the same epoch rules; else nothing.
    fn advance_epoch(&self, req: AdvanceEpochRequest) -> Result<AdvanceEpochReply, Status> {
        let mut held = self.lock();
        let version = Self::version(&held);
        let Some(config) = held.config.as_mut().filter(|_| version == req.config_version) else {
            let epoch = held.config.as_ref().map_or(0, |c| c.epoch);
            return Ok(AdvanceEpochReply { epoch, changed: false, matched: false, config_version: version });
        };
        if req.epoch < config.epoch {
            return Err(Status::failed_precondition(format!(
                "epoch {} is older than the held {}",
                req.epoch, config.epoch
            )));
        }
        let changed = req.epoch > config.epoch;
        config.epoch = req.epoch;
        if changed {
            held.taken.push((req.epoch, Instant::now()));
        }
        Ok(AdvanceEpochReply { epoch: req.epoch, changed, matched: true, config_version: version })
    }

    fn status(&self, from: Option<SocketAddr>) -> StatusReply {
        let mut held = self.lock();
        if let Some(from) = from {
            held.status_callers.insert(from);
        }
        let epoch = held.config.as_ref().map_or(0, |c| c.epoch);
        let cluster = held.config.as_ref().and_then(|c| c.cluster.as_ref()).map(|c| c.name.clone()).unwrap_or_default();
        StatusReply {
            proxy: self.address.clone(),
            node: self.address.clone(),
            epoch,
            cluster,
            node_healthy: true,
            node_error: String::new(),
            dbsize: 0,
            connected_clients: 0,
            migrations: Vec::new(),
            // Nothing to collect: a simulated node holds no keys.
            clean_epoch: epoch,
            repl_role: "master".into(),
            repl_offset: 0,
            master_link_up: false,
            handover_ready_epoch: 0,
            config_version: Self::version(&held),
        }
    }
}

struct Service(Arc<SimProxy>);

#[tonic::async_trait]
impl ProxyControl for Service {
    async fn set_config(&self, request: Request<SetConfigRequest>) -> Result<Response<SetConfigReply>, Status> {
        self.0.set_config_calls.fetch_add(1, Ordering::Relaxed);
        self.0.set_config(request.into_inner()).map(Response::new)
    }

    async fn advance_epoch(
        &self,
        request: Request<AdvanceEpochRequest>,
    ) -> Result<Response<AdvanceEpochReply>, Status> {
        self.0.advance_epoch_calls.fetch_add(1, Ordering::Relaxed);
        self.0.advance_epoch(request.into_inner()).map(Response::new)
    }

    async fn tmp_switch(&self, _: Request<TmpSwitchRequest>) -> Result<Response<TmpSwitchReply>, Status> {
        Err(Status::unimplemented("a simulated proxy takes part in no migration"))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.0.status_calls.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(self.0.status(request.remote_addr())))
    }
}

/// N simulated proxies serving in this process; dropped, they stop.
pub struct Fleet {
    pub proxies: Vec<Arc<SimProxy>>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

impl Fleet {
    /// Starts `n` control services on free loopback ports and registers each with the broker
    /// (address `127.0.0.1:<control port>`, the same for its node: nothing dials either).
    pub async fn start(n: usize, broker: &BrokerClient) -> Result<Fleet> {
        let mut fleet = Fleet { proxies: Vec::with_capacity(n), servers: Vec::with_capacity(n) };
        for _ in 0..n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a control port")?;
            let control = listener.local_addr()?.to_string();
            let proxy = Arc::new(SimProxy {
                address: control.clone(),
                control,
                state: Mutex::new(Held::default()),
                status_calls: AtomicU64::new(0),
                set_config_calls: AtomicU64::new(0),
                advance_epoch_calls: AtomicU64::new(0),
            });
            let service = ProxyControlServer::new(Service(proxy.clone()));
            fleet.servers.push(tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(e) =
                    tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await
                {
                    eprintln!("a simulated proxy stopped: {e}");
                }
            }));
            fleet.proxies.push(proxy);
        }
        // Registered a few at a time: each registration is a flushed write on the broker.
        for chunk in fleet.proxies.chunks(32) {
            let calls = chunk.iter().map(|p| {
                let body = RegisterProxy {
                    address: p.address.clone(),
                    control_address: p.control.clone(),
                    node_address: p.address.clone(),
                    peer_address: None,
                };
                async move { broker.post::<ProxyInfo>("/proxies", &body).await }
            });
            for r in futures::future::join_all(calls).await {
                r.context("registering a simulated proxy")?;
            }
        }
        Ok(fleet)
    }

    pub fn addresses(&self) -> Vec<String> {
        self.proxies.iter().map(|p| p.address.clone()).collect()
    }

    /// How many hold `epoch` or a later one.
    pub fn holding(&self, epoch: Epoch) -> usize {
        self.proxies.iter().filter(|p| p.epoch() >= epoch).count()
    }

    /// Waits until every proxy holds `epoch` or later; the time each took from `since`.
    pub async fn wait_all(&self, epoch: Epoch, since: Instant, timeout: Duration) -> Result<Vec<Duration>> {
        let deadline = Instant::now() + timeout;
        loop {
            let reached: Vec<Option<Instant>> = self.proxies.iter().map(|p| p.reached(epoch)).collect();
            if reached.iter().all(Option::is_some) {
                return Ok(reached.into_iter().flatten().map(|t| t.saturating_duration_since(since)).collect());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "after {timeout:?} only {} of {} simulated proxies hold epoch {epoch}",
                    self.holding(epoch),
                    self.proxies.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Status, SetConfig and AdvanceEpoch calls answered so far, over all proxies.
    pub fn calls(&self) -> Calls {
        Calls {
            status: self.proxies.iter().map(|p| p.status_calls()).sum(),
            set_config: self.proxies.iter().map(|p| p.set_config_calls()).sum(),
            advance_epoch: self.proxies.iter().map(|p| p.advance_epoch_calls()).sum(),
        }
    }
}

/// Control calls the fleet answered, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub status: u64,
    /// Whole configs.
    pub set_config: u64,
    /// Epoch-only updates.
    pub advance_epoch: u64,
}
