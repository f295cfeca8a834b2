//! Why a migration step failed, by kind, so a caller can decide what to do: retry a node or
//! backend error that may pass, fail the migration on a refusal, report a timeout. The
//! texts are the ones logs, `Status` and the broker's migration record show; they carry no
//! RESP prefix (a `UMCTL` reply adds `ERR sluice:` where it is built).

use crate::backend::BackendError;
use crate::broker::BrokerError;
use crate::migration::node::NodeError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A control command to a Redis node failed: refused, not answered in time, or no connection.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A data connection (to a node or a peer proxy) failed.
    #[error(transparent)]
    PipelinedConn(#[from] BackendError),
    /// `what` did not answer within `after`.
    #[error("no answer from {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    /// The broker could not be asked, or its answer could not be read.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A decision against going on, with its reason: a state that does not allow the step,
    /// a peer's refusal, an answer that makes no sense, a stream the filter cannot split.
    #[error("{0}")]
    Refused(String),
}

impl MigrationError {
    /// The connection to a peer or node could not be set up: nothing was sent over it.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            MigrationError::PipelinedConn(BackendError::Unreachable { .. })
                | MigrationError::Node(NodeError::PipelinedConn(BackendError::Unreachable { .. }))
        )
    }
}

/// `MigrationError::Refused` with a `format!` text.
macro_rules! refused {
    ($($arg:tt)*) => {
        $crate::migration::error::MigrationError::Refused(format!($($arg)*))
    };
}
pub(crate) use refused;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_stay_as_callers_and_the_broker_see_them() {
        let t = MigrationError::Timeout { what: "127.0.0.1:7001".into(), after: Duration::from_secs(2) };
        assert_eq!(t.to_string(), "no answer from 127.0.0.1:7001 within 2s");
        let r = refused!("commands on the moving slots still in flight after the write pause");
        assert_eq!(r.to_string(), "commands on the moving slots still in flight after the write pause");
        let lost = MigrationError::from(BackendError::Lost { addr: "n:1".into() });
        assert_eq!(lost.to_string(), BackendError::Lost { addr: "n:1".into() }.to_string());
    }

    #[test]
    fn only_a_connection_never_set_up_is_unreachable() {
        let unreachable = BackendError::Unreachable { addr: "n:1".into(), reason: "refused".into() };
        assert!(MigrationError::from(unreachable.clone()).is_unreachable());
        assert!(MigrationError::from(NodeError::from(unreachable)).is_unreachable());
        assert!(!MigrationError::from(BackendError::Lost { addr: "n:1".into() }).is_unreachable());
        // A peer's refusal that quotes "cannot reach" reached the peer: not unreachable.
        assert!(!refused!("the destination refused: cannot reach backend n:1").is_unreachable());
    }
}
