//! ACL users passed through to the node (`AUTH user pass`, `HELLO … AUTH user pass`).
//!
//! The proxy does not know the node's users: it checks the credentials with an `AUTH` on a
//! connection of its own to the node, then serves that client over node connections
//! authenticated as that user, so the node's ACL rules (`-set`, key patterns, …) apply to
//! that client's commands exactly. Those connections form a pool per credential, created on
//! the first successful `AUTH` and shared by every client of that user; only credentials the
//! node accepted get a pool. The proxy's own connections (migrations, health, clients of the
//! default user) authenticate with `--node-user`/`--node-password`.

use crate::backend::{BackendError, BackendPool, ConnectOptions, PipelinedConn};
use crate::options::ProxyOptions;
use sluice_common::resp::Protocol;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A client's user: its name and the node connections authenticated as it.
#[derive(Clone)]
pub struct User {
    pub name: Arc<str>,
    pub pool: Arc<BackendPool>,
}

/// Why a user could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The node refused the credentials; its own error (`WRONGPASS …`), for the client.
    #[error("{0}")]
    Refused(String),
    #[error("ERR sluice: cannot check the credentials with the node: {0}")]
    Node(BackendError),
}

/// The pools of the users authenticated so far, by credential.
#[derive(Default)]
pub struct Users {
    pools: Mutex<HashMap<(String, String), Arc<BackendPool>>>,
}

impl Users {
    /// Checks `user`/`pass` with the node (a connection of its own, closed after), then the
    /// user's pool, created on first use.
    pub async fn authenticate(&self, opts: &ProxyOptions, user: &str, pass: &str) -> Result<User, AuthError> {
        let connect = ConnectOptions {
            protocol: Protocol::Resp2,
            user: Some(user.to_string()),
            password: Some(pass.to_string()),
            setup: Vec::new(),
            connect_timeout: opts.connect_timeout(),
            tls: None,
            queue: opts.backend_queue,
        };
        match PipelinedConn::connect(&opts.node, &connect).await {
            Ok(check) => check.close(),
            // The node's answer to AUTH (WRONGPASS, a disabled user) goes to the client as is.
            Err(BackendError::Handshake { reason, .. }) => return Err(AuthError::Refused(reason)),
            Err(e) => return Err(AuthError::Node(e)),
        }
        let key = (user.to_string(), pass.to_string());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools
            .entry(key)
            .or_insert_with(|| Arc::new(BackendPool::new(opts.node.clone(), connect, opts.backend_connections)))
            .clone();
        Ok(User { name: Arc::from(user), pool })
    }

    /// Closes every user's node connections (a failover: see `BackendPool::close_all`).
    pub async fn close_all(&self) {
        let pools: Vec<Arc<BackendPool>> =
            self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for pool in pools {
            pool.close_all().await;
        }
    }
}
