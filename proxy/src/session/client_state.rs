//! What a client's connection is: who it is (id, addresses, name, library), how it talks
//! (protocol), whom it runs as (authentication, ACL user), and the transaction it has open.
//!
//! The command modules change this only through the methods here, because some of it must
//! stay in step with the session's node connections: replies pass through untouched, so a
//! new protocol or a new ACL user takes new connections (see [`Session::reset_backends`]).

use super::{Session, TxState};
use crate::state::Shared;
use crate::users::User;
use bytes::Bytes;
use sluice_common::resp::Protocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The client library a connection declared (`CLIENT SETINFO`); empty until it does.
#[derive(Debug, Clone, Default)]
pub struct ClientLib {
    pub name: Option<Bytes>,
    pub version: Option<Bytes>,
}

impl Session {
    /// The proxy's state every command of this session routes with.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The client's id (`CLIENT ID`), unique in this proxy.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's end of the TCP connection.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The proxy's end of the TCP connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// How long the client has been connected.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// The protocol the client speaks (and the session's node connections with it).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// `HELLO` switched protocols: replies pass through untouched, so the node connections
    /// must speak the new one too; the next command takes fresh ones.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        if protocol != self.protocol {
            self.protocol = protocol;
            self.reset_backends();
        }
    }

    /// Whether the client may run commands (no `--requirepass`, or it authenticated).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The client authenticated as `user` (`None`: the default user). A session that changes
    /// users takes that user's node connections from its next command on (after a barrier:
    /// see [`Session::send`]).
    pub fn authenticate(&mut self, user: Option<User>) {
        self.authenticated = true;
        let changes = self.user.is_some() || user.is_some();
        self.user = user;
        if changes {
            self.reset_backends();
        }
    }

    /// The ACL user the client runs as, as Redis names it (`ACL WHOAMI`, `CLIENT INFO`).
    pub fn user_name(&self) -> &str {
        self.user.as_ref().map_or("default", |u| &u.name)
    }

    /// `CLIENT SETNAME`'s name, if any.
    pub fn name(&self) -> Option<&Bytes> {
        self.name.as_ref()
    }

    pub fn set_name(&mut self, name: Option<Bytes>) {
        self.name = name;
    }

    /// `CLIENT SETINFO`'s library name and version.
    pub fn lib(&self) -> &ClientLib {
        &self.lib
    }

    pub fn lib_mut(&mut self) -> &mut ClientLib {
        &mut self.lib
    }

    /// Whether `READONLY` is on: reads of a replica's master's slots are served here.
    pub fn is_readonly(&self) -> bool {
        self.readonly
    }

    /// `READONLY` (`true`) or `READWRITE` (`false`).
    pub fn set_readonly(&mut self, readonly: bool) {
        self.readonly = readonly;
    }

    /// Whether this connection comes from another proxy (see [`Session::mark_peer`]).
    pub fn is_peer(&self) -> bool {
        self.is_peer
    }

    /// The transaction the client has open (`transaction.rs` carries it out).
    pub fn tx(&self) -> &TxState {
        &self.tx
    }

    pub fn tx_mut(&mut self) -> &mut TxState {
        &mut self.tx
    }

    /// Whether the private connection that held this session's `WATCH` broke since the watch
    /// began; clears the mark, for the transaction that ends now (it fails if so).
    pub fn take_watch_lost(&mut self) -> bool {
        std::mem::take(&mut self.private_lost)
    }

    /// `RESET`: the connection as a new client's — no transaction, RESP2, no name,
    /// `READWRITE`, the default user (authenticated only without `--requirepass`), fresh node
    /// connections. The library fields stay, as in Redis: they still describe the client.
    pub fn reset(&mut self) {
        self.tx = TxState::None;
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.readonly = false;
        self.authenticated = self.shared.opts.requirepass.is_none();
        self.user = None;
        self.reset_backends();
    }
}
