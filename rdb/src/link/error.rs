//! What can end a replica link.

use crate::error::RdbError;

/// Why a [`crate::ReplicaLink`] failed. Every error is final for the link: drop it and
/// connect again (a new full sync).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o error on the replication link: {0}")]
    Io(#[from] std::io::Error),
    /// The master sent something the replication protocol does not allow there.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// The snapshot itself could not be read.
    #[error(transparent)]
    Rdb(#[from] RdbError),
    /// `AUTH` was refused (or the server demands a password that was not given).
    #[error("authentication refused by the master: {0}")]
    Auth(String),
    /// The master answered a handshake step with an error (`-LOADING`, `-NOMASTERLINK`, …).
    #[error("the master refused {step}: {message}")]
    Refused { step: &'static str, message: String },
    /// Nothing arrived (or could be written) for longer than the configured timeout.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The master closed the connection.
    #[error("the master closed the connection while {0}")]
    Closed(&'static str),
    /// `next_command` was called before the snapshot was read to its end.
    #[error("the snapshot has not been read to its end yet: call next_event until it returns None")]
    SnapshotPending,
}
