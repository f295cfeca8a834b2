//! What all sessions of one proxy share: options, the routing table, backend pools.

use crate::backend::{BackendPool, ConnectOptions};
use crate::options::ProxyOptions;
use crate::route::RouteTable;
use arc_swap::{ArcSwap, Guard};
use sluice_common::model::{Epoch, ModelError, ProxyConfig};
use sluice_common::resp::Command;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why a config was not taken. Nothing changes when one is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("ERR sluice: stale config: epoch {offered} is older than epoch {held} held by this proxy")]
    Stale { offered: Epoch, held: Epoch },
    #[error("ERR sluice: config conflict: epoch {epoch} is already held with a different config")]
    Conflict { epoch: Epoch },
    #[error("ERR sluice: config is for proxy {config_for}, this proxy is {me}")]
    WrongProxy { config_for: String, me: String },
    #[error("ERR sluice: invalid config: {0}")]
    Invalid(String),
}

impl From<ModelError> for ConfigError {
    fn from(e: ModelError) -> Self {
        ConfigError::Invalid(e.to_string())
    }
}

/// What applying a config did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A newer config replaced the old one.
    Updated { from: Epoch, to: Epoch },
    /// The same config at the same epoch: nothing to do.
    Unchanged,
}

pub struct Shared {
    pub opts: ProxyOptions,
    routes: ArcSwap<RouteTable>,
    /// Serialises config changes (checks and swap happen as one step).
    config_lock: Mutex<()>,
    pub node: BackendPool,
    peers: Mutex<HashMap<String, Arc<BackendPool>>>,
    next_client_id: AtomicU64,
    pub connected_clients: AtomicUsize,
    pub started: Instant,
}

impl Shared {
    pub fn new(opts: ProxyOptions) -> Shared {
        let connect = ConnectOptions {
            protocol: Default::default(),
            password: opts.node_password.clone(),
            setup: Vec::new(),
            connect_timeout: opts.connect_timeout(),
        };
        let node = BackendPool::new(opts.node.clone(), connect, opts.backend_connections);
        Shared {
            routes: ArcSwap::from_pointee(RouteTable::empty(opts.announce())),
            config_lock: Mutex::new(()),
            node,
            peers: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            connected_clients: AtomicUsize::new(0),
            started: Instant::now(),
            opts,
        }
    }

    /// The current routing table (lock-free).
    pub fn routes(&self) -> Guard<Arc<RouteTable>> {
        self.routes.load()
    }

    pub fn epoch(&self) -> Epoch {
        self.routes.load().epoch()
    }

    pub fn me(&self) -> &str {
        self.opts.announce()
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a config if its epoch is newer than the one held; the same config again is a
    /// no-op; anything older, different at the same epoch, or for another proxy is refused.
    pub fn apply_config(&self, config: ProxyConfig) -> Result<Applied, ConfigError> {
        let _guard = self.config_lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.routes.load();
        let held = current.epoch();
        if config.proxy != self.me() {
            return Err(ConfigError::WrongProxy { config_for: config.proxy, me: self.me().to_string() });
        }
        if config.epoch < held {
            return Err(ConfigError::Stale { offered: config.epoch, held });
        }
        if config.epoch == held {
            return if *current.config == config {
                Ok(Applied::Unchanged)
            } else {
                Err(ConfigError::Conflict { epoch: held })
            };
        }
        let table = RouteTable::build(config)?;
        let to = table.epoch();
        self.routes.store(Arc::new(table));
        tracing::info!(from = held, to, "epoch changed");
        Ok(Applied::Updated { from: held, to })
    }

    /// The shared connections to another proxy (for `--redirect forward`). Those
    /// connections announce themselves with `UMCTL PEER`, so the peer never forwards back.
    pub fn peer_pool(&self, proxy: &str) -> Arc<BackendPool> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry(proxy.to_string())
            .or_insert_with(|| {
                let connect = ConnectOptions {
                    protocol: Default::default(),
                    password: self.opts.requirepass.clone(),
                    setup: vec![Command::from_strs(&["UMCTL", "PEER"])],
                    connect_timeout: self.opts.connect_timeout(),
                };
                Arc::new(BackendPool::new(proxy, connect, 1))
            })
            .clone()
    }
}
