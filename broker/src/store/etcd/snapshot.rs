//! The etcd calls of the store: the whole state read at one revision, the epoch record's
//! revision alone, and the conditional commit. Every call is bounded by the store's timeout
//! (`--etcd-timeout-ms`), and etcd's errors are sorted into "unreachable" (503, try again
//! later) and the rest.

use crate::error::StoreError;
use crate::state::State;
use crate::store::records::{self, Op, EPOCH_KEY};
use crate::store::spec::EtcdSpec;
use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A connection to etcd and what every call needs with it.
pub(super) struct Conn {
    pub client: Client,
    pub spec: EtcdSpec,
    /// The longest one call may take.
    pub timeout: Duration,
}

/// The largest answer read: the whole state comes in one range read.
const MAX_MESSAGE: usize = 256 << 20;

/// etcd's default `--max-txn-ops`: a change writing more records is refused by etcd.
pub const MAX_TXN_OPS: usize = 128;

/// The state as of one etcd revision.
#[derive(Debug, Clone)]
pub(super) struct Loaded {
    pub state: Arc<State>,
    /// The mod revision of the epoch record (0: none yet), which every change rewrites.
    pub epoch_rev: i64,
    /// The store's revision this state was read at (or committed as).
    pub revision: i64,
}

/// What a commit did.
#[derive(Debug)]
pub(super) enum Commit {
    /// Written, at this revision.
    Done { revision: i64 },
    /// The compare failed: another change committed since the state was read.
    Lost,
}

/// Sorts an etcd error: transport trouble and gRPC's "unavailable"-like codes mean etcd
/// could not be asked or did not decide; anything else is an answer.
pub(super) fn classify(store: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let reason = e.to_string();
    let unavailable = match &e {
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::Internal
        ),
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable { store: store.to_string(), reason }
    } else {
        StoreError::Etcd { store: store.to_string(), reason }
    }
}

/// `f`, within the connection's timeout.
async fn bounded<T>(
    conn: &Conn,
    what: &str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(conn.timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&conn.spec.to_string(), e)),
        Err(_) => Err(StoreError::Unavailable {
            store: conn.spec.to_string(),
            reason: format!("{what} got no answer within {} ms", conn.timeout.as_millis()),
        }),
    }
}

fn kv(client: &Client) -> KvClient {
    client.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

fn revision_of(spec: &EtcdSpec, header: Option<&etcd_client::ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Etcd { store: spec.to_string(), reason: "an answer without a header".into() })
}

/// The whole state of the namespace, read at one revision (linearizable).
pub(super) async fn read(conn: &Conn) -> Result<Loaded, StoreError> {
    let spec = &conn.spec;
    let prefix = spec.prefix();
    let mut kv = kv(&conn.client);
    let resp =
        bounded(conn, "reading the metadata", kv.get(prefix.as_bytes(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = revision_of(spec, resp.header())?;
    let epoch_key = format!("{prefix}{EPOCH_KEY}");
    let epoch_rev = resp.kvs().iter().find(|kv| kv.key() == epoch_key.as_bytes()).map_or(0, |kv| kv.mod_revision());
    let records = resp.kvs().iter().map(|kv| {
        let key = kv.key().strip_prefix(prefix.as_bytes()).unwrap_or(kv.key());
        Ok::<_, StoreError>((key, kv.value()))
    });
    let state = records::load(records)?;
    Ok(Loaded { state: Arc::new(state), epoch_rev, revision })
}

/// The mod revision of the epoch record now (linearizable; 0: there is none).
pub(super) async fn epoch_revision(conn: &Conn) -> Result<i64, StoreError> {
    let key = format!("{}{EPOCH_KEY}", conn.spec.prefix());
    let mut kv = kv(&conn.client);
    let resp = bounded(conn, "reading the epoch", kv.get(key.as_bytes(), None)).await?;
    Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// Writes `ops` in one transaction, if the epoch record's mod revision is still `epoch_rev`.
pub(super) async fn commit(conn: &Conn, epoch_rev: i64, ops: Vec<Op>) -> Result<Commit, StoreError> {
    let spec = &conn.spec;
    if ops.len() > MAX_TXN_OPS {
        return Err(StoreError::Etcd {
            store: spec.to_string(),
            reason: format!(
                "this change writes {} records, more than etcd's default --max-txn-ops of {MAX_TXN_OPS}; \
                 nothing was written",
                ops.len()
            ),
        });
    }
    let prefix = spec.prefix();
    let writes: Vec<TxnOp> = ops
        .into_iter()
        .map(|(key, value)| {
            let key = format!("{prefix}{key}");
            match value {
                Some(v) => TxnOp::put(key, v, None),
                None => TxnOp::delete(key, None),
            }
        })
        .collect();
    let epoch_key = format!("{prefix}{EPOCH_KEY}");
    let txn = Txn::new().when([Compare::mod_revision(epoch_key, CompareOp::Equal, epoch_rev)]).and_then(writes);
    let mut kv = kv(&conn.client);
    let resp = bounded(conn, "the commit", kv.txn(txn)).await?;
    if !resp.succeeded() {
        return Ok(Commit::Lost);
    }
    Ok(Commit::Done { revision: revision_of(spec, resp.header())? })
}
