//! Splitting a multi-key command by destination and merging the answers in key order.
//!
//! Only for the commands whose meaning survives a split: `MGET` (values in key order),
//! `MSET` (OK when every part is OK), and the counting ones `DEL`, `UNLINK`, `EXISTS`,
//! `TOUCH` (sum of the parts). Everything else spanning slots answers `CROSSSLOT`.

use crate::backend::ReplyResult;
use bytes::Bytes;
use sluice_common::resp::{parse_frame, Command, Frame, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeKind {
    /// One value per key, in key order.
    Mget,
    /// Key/value pairs; every part must answer OK.
    Mset,
    /// An integer per part, added up.
    Sum,
}

pub fn merge_kind(name: &str) -> Option<MergeKind> {
    match name {
        "mget" => Some(MergeKind::Mget),
        "mset" => Some(MergeKind::Mset),
        "del" | "unlink" | "exists" | "touch" => Some(MergeKind::Sum),
        _ => None,
    }
}

/// The part of `cmd` holding the keys at `positions` (and, for MSET, their values).
pub fn sub_command(cmd: &Command, kind: MergeKind, positions: &[usize]) -> Command {
    let args = cmd.args();
    let mut out: Vec<Bytes> = Vec::with_capacity(1 + positions.len() * 2);
    out.push(args[0].clone());
    for &p in positions {
        out.push(args[p].clone());
        if kind == MergeKind::Mset {
            if let Some(v) = args.get(p + 1) {
                out.push(v.clone());
            }
        }
    }
    Command::new(out)
}

/// Merges the parts' replies. Each part lists the ordinals (0-based key numbers) it held.
/// Any error of a part is the answer (the first one, in part order).
pub fn merge(kind: MergeKind, parts: Vec<(Vec<usize>, ReplyResult)>, total_keys: usize) -> Frame {
    let mut values: Vec<Frame> = vec![Frame::Null; if kind == MergeKind::Mget { total_keys } else { 0 }];
    let mut sum = 0i64;
    for (ordinals, reply) in parts {
        let raw = match reply {
            Ok(raw) => raw,
            Err(e) => return e.to_frame(),
        };
        let frame = match parse_frame(&raw, &Limits::SERVER) {
            Ok((f, _)) => f,
            Err(e) => return Frame::error(format!("ERR sluice: bad reply from backend: {e}")),
        };
        if frame.is_error() {
            return frame;
        }
        match (kind, frame) {
            (MergeKind::Mget, Frame::Array(items)) if items.len() == ordinals.len() => {
                for (o, item) in ordinals.into_iter().zip(items) {
                    if let Some(slot) = values.get_mut(o) {
                        *slot = item;
                    }
                }
            }
            (MergeKind::Mset, Frame::Simple(_)) => {}
            (MergeKind::Sum, Frame::Integer(n)) => sum += n,
            (_, other) => return Frame::error(format!("ERR sluice: unexpected reply from backend: {other:?}")),
        }
    }
    match kind {
        MergeKind::Mget => Frame::Array(values),
        MergeKind::Mset => Frame::ok(),
        MergeKind::Sum => Frame::Integer(sum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::resp::Protocol;

    fn raw(f: Frame) -> ReplyResult {
        Ok(f.to_bytes(Protocol::Resp2))
    }

    #[test]
    fn mget_parts_come_back_in_key_order() {
        let cmd = Command::from_strs(&["MGET", "a", "b", "c", "d"]);
        let sub = sub_command(&cmd, MergeKind::Mget, &[2, 4]);
        assert_eq!(sub, Command::from_strs(&["MGET", "b", "d"]));
        let parts = vec![
            (vec![1, 3], raw(Frame::Array(vec![Frame::bulk("B"), Frame::Null]))),
            (vec![0, 2], raw(Frame::Array(vec![Frame::bulk("A"), Frame::bulk("C")]))),
        ];
        assert_eq!(
            merge(MergeKind::Mget, parts, 4),
            Frame::Array(vec![Frame::bulk("A"), Frame::bulk("B"), Frame::bulk("C"), Frame::Null])
        );
    }

    #[test]
    fn mset_keeps_values_with_their_keys() {
        let cmd = Command::from_strs(&["MSET", "a", "1", "b", "2", "c", "3"]);
        assert_eq!(sub_command(&cmd, MergeKind::Mset, &[1, 5]), Command::from_strs(&["MSET", "a", "1", "c", "3"]));
        let ok = vec![(vec![0], raw(Frame::ok())), (vec![1], raw(Frame::ok()))];
        assert_eq!(merge(MergeKind::Mset, ok, 2), Frame::ok());
    }

    #[test]
    fn counts_add_up_and_errors_win() {
        let parts = vec![(vec![0], raw(Frame::Integer(2))), (vec![1], raw(Frame::Integer(1)))];
        assert_eq!(merge(MergeKind::Sum, parts, 3), Frame::Integer(3));
        let parts = vec![(vec![0], raw(Frame::Integer(2))), (vec![1], raw(Frame::error("ERR boom")))];
        assert!(merge(MergeKind::Sum, parts, 2).is_error());
    }
}
