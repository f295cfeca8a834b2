//! `CLUSTER COUNTKEYSINSLOT slot` and `CLUSTER GETKEYSINSLOT slot count`, which resharding
//! tools and some clients send to a node to see the keys of one slot.
//!
//! The node behind a proxy is not in cluster mode and keeps no per-slot index, so the keys of
//! a slot this proxy shows (it serves it, or replicates the master that does: what `SCAN`
//! shows) are found by a whole `SCAN` of the node filtered by slot, the walk the garbage
//! collector uses ([`node::KeyScan`]). That costs a pass over the node's keyspace where a
//! native node answers at once, which is acceptable for these rare, administrative commands.
//! For any other slot the answer is a native node's for a slot it does not hold: 0, or an
//! empty array; keys a migration left behind stay invisible, as they do to `SCAN`.
//! Arguments are checked as Redis 7.0 checks them, with its error text.

use crate::migration::node::{self, NodeError};
use crate::session::{Flow, Pending, Session};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::{parse_int, Command, Frame};
use sluice_common::slot::{key_slot, SLOT_COUNT};
use std::sync::Arc;

/// Keys per `SCAN` step.
const SCAN_COUNT: u64 = 1000;

/// What the client asked for, once its arguments are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Count(u16),
    Keys(u16, usize),
}

/// Redis's checks (`clusterCommand`): the count is parsed before the slot, both must be
/// integers, and the slot within 0..16383.
fn parse(cmd: &Command, get_keys: bool) -> Result<Wanted, Frame> {
    let int = |b: &Bytes| parse_int(b).ok_or_else(|| Frame::error("ERR value is not an integer or out of range"));
    let args = cmd.args();
    if get_keys {
        let count = int(&args[3])?;
        let slot = int(&args[2])?;
        match (u16::try_from(slot), usize::try_from(count)) {
            (Ok(slot), Ok(count)) if slot < SLOT_COUNT => Ok(Wanted::Keys(slot, count)),
            _ => Err(Frame::error("ERR Invalid slot or number of keys")),
        }
    } else {
        match u16::try_from(int(&args[2])?) {
            Ok(slot) if slot < SLOT_COUNT => Ok(Wanted::Count(slot)),
            _ => Err(Frame::error("ERR Invalid slot")),
        }
    }
}

pub async fn handle(s: &mut Session, cmd: Command) -> Flow {
    let get_keys = cmd.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"getkeysinslot"));
    let wanted = match parse(&cmd, get_keys) {
        Ok(w) => w,
        Err(e) => return s.reply(e).await,
    };
    let slot = match wanted {
        Wanted::Count(slot) | Wanted::Keys(slot, _) => slot,
    };
    if !s.shared().routes().shows_keys_of(slot) {
        let none = match wanted {
            Wanted::Count(_) => Frame::Integer(0),
            Wanted::Keys(..) => Frame::Array(Vec::new()),
        };
        return s.reply(none).await;
    }
    s.own_connection().await;
    let shared = s.shared().clone();
    let protocol = s.protocol();
    let fut = async move {
        let limit = match wanted {
            Wanted::Count(_) => usize::MAX,
            Wanted::Keys(_, n) => n,
        };
        match keys_of_slot(&shared, slot, limit, get_keys).await {
            Ok((n, _)) if !get_keys => Frame::Integer(n as i64),
            Ok((_, keys)) => Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
            Err(e) => Frame::error(format!("ERR sluice: cannot scan the node for slot {slot}: {e}")),
        }
        .to_bytes(protocol)
    };
    s.push(Pending::Future(Box::pin(fut))).await
}

/// How many keys of `slot` the node holds (up to `limit`), and, with `collect`, which.
/// A key `SCAN` shows twice (the node rehashed meanwhile) is counted once.
async fn keys_of_slot(
    shared: &Arc<Shared>,
    slot: u16,
    limit: usize,
    collect: bool,
) -> Result<(usize, Vec<Bytes>), NodeError> {
    let conn = node::connect(shared, &shared.opts.node).await?;
    let mut scan = conn.scan_all(SCAN_COUNT);
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::new();
    while seen.len() < limit {
        let Some(batch) = scan.next_batch().await? else { break };
        for k in batch.into_iter().filter(|k| key_slot(k) == slot) {
            if seen.len() < limit && seen.insert(k.clone()) && collect {
                keys.push(k);
            }
        }
    }
    Ok((seen.len(), keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        Command::from_strs(args)
    }

    #[test]
    fn arguments_are_checked_as_redis_does() {
        let count = |slot| parse(&cmd(&["CLUSTER", "COUNTKEYSINSLOT", slot]), false);
        assert_eq!(count("0"), Ok(Wanted::Count(0)));
        assert_eq!(count("16383"), Ok(Wanted::Count(16383)));
        assert_eq!(count("16384"), Err(Frame::error("ERR Invalid slot")));
        assert_eq!(count("-1"), Err(Frame::error("ERR Invalid slot")));
        assert_eq!(count("x"), Err(Frame::error("ERR value is not an integer or out of range")));
        let keys = |slot, n| parse(&cmd(&["CLUSTER", "GETKEYSINSLOT", slot, n]), true);
        assert_eq!(keys("5", "10"), Ok(Wanted::Keys(5, 10)));
        assert_eq!(keys("5", "0"), Ok(Wanted::Keys(5, 0)));
        assert_eq!(keys("5", "-1"), Err(Frame::error("ERR Invalid slot or number of keys")));
        assert_eq!(keys("16384", "1"), Err(Frame::error("ERR Invalid slot or number of keys")));
        // The count is parsed first, as Redis does.
        assert_eq!(keys("x", "y"), Err(Frame::error("ERR value is not an integer or out of range")));
        assert_eq!(keys("99999", "y"), Err(Frame::error("ERR value is not an integer or out of range")));
    }
}
