//! `UMCTL …`: the proxy's control commands on its data port, for operators with redis-cli
//! (the names come from the seed design). They run the same code as the gRPC service.
//!
//! - `UMCTL SETDB <json>`: take a [`ProxyConfig`](sluice_common::model::ProxyConfig).
//! - `UMCTL GETEPOCH`: the epoch of the config held, as an integer.
//! - `UMCTL INFOMGR`: the proxy's state as JSON (what gRPC `Status` reports).
//! - `UMCTL TMPSWITCH <migration-id> <epoch> <offset> [budget-ms]`: the temporary switch of a
//!   migration (sent by its source proxy to its destination): serve the slots. In replication
//!   mode the source has promoted the destination's node first; offset and budget are kept
//!   for compatibility and not used.
//!   In filtered mode the third argument is the source's attempt number (see
//!   `migration::filtered`).
//! - `UMCTL READY <migration-id> <epoch>`: whether this destination follows the source of a
//!   replication-mode migration (the source asks before it promotes our node).
//! - `UMCTL SWITCHED <migration-id> <epoch> <attempt>`: whether the destination of a filtered
//!   migration serves its slots (1/0); a 0 refuses that switch attempt and older ones for good.
//! - `UMCTL PEER`: marks this connection as another proxy's (never forwarded again).

use crate::control::Control;
use crate::session::{Flow, Session};
use crate::status;
use bytes::Bytes;
use sluice_common::resp::{parse_int, Command, Frame};

/// One `UMCTL` request, its arguments checked ([`parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    SetDb(&'a [u8]),
    GetEpoch,
    InfoMgr,
    TmpSwitch { id: String, epoch: u64, attempt: u64 },
    Ready { id: String, epoch: u64 },
    Switched { id: String, epoch: u64, attempt: u64 },
    Peer,
}

/// A non-negative integer argument, or the error naming it.
fn number(arg: &[u8], what: &str) -> Result<u64, Frame> {
    parse_int(arg)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| Frame::error(format!("ERR sluice: the {what} must be a non-negative integer")))
}

/// Reads `UMCTL`'s arguments (`args[0]` is `UMCTL`): the request, or the error to answer.
/// Separate from running it so that any argument vector can be checked without a proxy.
pub fn parse(args: &[Bytes]) -> Result<Request<'_>, Frame> {
    let sub = args.get(1).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
    let id = || String::from_utf8_lossy(&args[2]).into_owned();
    match (sub.as_str(), args.len()) {
        ("SETDB", 3) => Ok(Request::SetDb(&args[2])),
        ("GETEPOCH", 2) => Ok(Request::GetEpoch),
        ("INFOMGR", 2) => Ok(Request::InfoMgr),
        ("SWITCHED", 5) => match (number(&args[3], "epoch"), number(&args[4], "attempt")) {
            (Ok(epoch), Ok(attempt)) => Ok(Request::Switched { id: id(), epoch, attempt }),
            _ => Err(Frame::error("ERR sluice: the epoch and the attempt must be non-negative integers")),
        },
        ("TMPSWITCH", 5 | 6) => {
            let epoch = number(&args[3], "epoch")?;
            // The offset (replication mode, unused) or the attempt (filtered mode).
            let attempt = number(&args[4], "offset or attempt")?;
            if let Some(budget) = args.get(5) {
                number(budget, "budget")?;
            }
            Ok(Request::TmpSwitch { id: id(), epoch, attempt })
        }
        ("READY", 4) => Ok(Request::Ready { id: id(), epoch: number(&args[3], "epoch")? }),
        ("PEER", 2) => Ok(Request::Peer),
        ("SETDB" | "GETEPOCH" | "INFOMGR" | "TMPSWITCH" | "READY" | "SWITCHED" | "PEER", _) => Err(Frame::error(
            format!("ERR wrong number of arguments for 'umctl|{}' command", sub.to_ascii_lowercase()),
        )),
        _ => Err(Frame::error(format!(
            "ERR sluice: unknown UMCTL subcommand '{sub}'; try SETDB <json>, GETEPOCH, INFOMGR, TMPSWITCH <id> <epoch> <offset|attempt> [budget-ms], READY <id> <epoch>, SWITCHED <id> <epoch> <attempt>"
        ))),
    }
}

pub async fn handle(s: &mut Session, cmd: Command, control: &Control) -> Flow {
    let reply = match parse(cmd.args()) {
        Err(e) => e,
        Ok(Request::SetDb(json)) => match control.set_config_json(json).await {
            Ok(_) => Frame::ok(),
            Err(e) => Frame::error(format!("ERR sluice: {e}")),
        },
        Ok(Request::GetEpoch) => Frame::Integer(s.shared().epoch() as i64),
        Ok(Request::InfoMgr) => {
            let status = status::collect(s.shared()).await;
            let mut json = serde_json::to_value(&status).unwrap_or_default();
            json["migrations"] = serde_json::to_value(control.migrations.reports()).unwrap_or_default();
            json["clean_epoch"] = s.shared().gc.clean_epoch.load(std::sync::atomic::Ordering::SeqCst).into();
            Frame::bulk(json.to_string())
        }
        Ok(Request::Switched { id, epoch, attempt }) => match control.switched(&id, epoch, attempt).await {
            Ok(yes) => Frame::Integer(i64::from(yes)),
            Err(e) => Frame::error(format!("ERR sluice: {e}")),
        },
        Ok(Request::TmpSwitch { id, epoch, attempt }) => match control.tmp_switch(&id, epoch, attempt).await {
            Ok(()) => Frame::ok(),
            Err(e) => Frame::error(format!("ERR sluice: {e}")),
        },
        Ok(Request::Ready { id, epoch }) => match control.ready(&id, epoch).await {
            Ok(()) => Frame::ok(),
            Err(e) => Frame::error(format!("ERR sluice: {e}")),
        },
        Ok(Request::Peer) => {
            s.mark_peer();
            Frame::ok()
        }
    };
    s.reply(reply).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args(a: &[&[u8]]) -> Vec<Bytes> {
        a.iter().map(|x| Bytes::copy_from_slice(x)).collect()
    }

    fn arg() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            prop::sample::select(vec![
                "setdb",
                "GETEPOCH",
                "InfoMgr",
                "TMPSWITCH",
                "ready",
                "SWITCHED",
                "peer",
                "m-1",
                "0",
                "7",
                "-1",
                "-0",
                "01",
                "18446744073709551615",
                "9223372036854775807",
                "9223372036854775808",
                "{}",
                "",
            ])
            .prop_map(|s: &str| Bytes::copy_from_slice(s.as_bytes())),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
        ]
    }

    proptest! {
        /// Any argument vector: a request whose numbers are the arguments' own, or an error
        /// reply (one line, `ERR …`); never a panic.
        #[test]
        fn any_arguments_give_a_request_or_an_error(rest in prop::collection::vec(arg(), 0..7)) {
            let mut all = args(&[b"UMCTL"]);
            all.extend(rest);
            match parse(&all) {
                Ok(Request::TmpSwitch { epoch, attempt, .. }) | Ok(Request::Switched { epoch, attempt, .. }) => {
                    prop_assert_eq!(Some(epoch as i64), parse_int(&all[3]));
                    prop_assert_eq!(Some(attempt as i64), parse_int(&all[4]));
                }
                Ok(Request::Ready { epoch, .. }) => prop_assert_eq!(Some(epoch as i64), parse_int(&all[3])),
                Ok(_) => {}
                Err(Frame::Error(e)) => {
                    prop_assert!(e.starts_with(b"ERR "), "{:?}", e);
                    prop_assert!(!e.contains(&b'\r') && !e.contains(&b'\n'));
                }
                Err(other) => prop_assert!(false, "not an error reply: {:?}", other),
            }
        }
    }

    #[test]
    fn numbers_are_checked_not_defaulted() {
        assert_eq!(
            parse(&args(&[b"UMCTL", b"tmpswitch", b"m-1", b"3", b"2"])),
            Ok(Request::TmpSwitch { id: "m-1".into(), epoch: 3, attempt: 2 })
        );
        // A malformed attempt used to be read as attempt 0.
        assert!(parse(&args(&[b"UMCTL", b"TMPSWITCH", b"m-1", b"3", b"x"])).is_err());
        assert!(parse(&args(&[b"UMCTL", b"TMPSWITCH", b"m-1", b"3", b"0", b"-5"])).is_err());
        assert!(parse(&args(&[b"UMCTL", b"READY", b"m-1", b"-1"])).is_err());
        assert!(parse(&args(&[b"UMCTL"])).is_err());
        assert_eq!(parse(&args(&[b"UMCTL", b"setdb", b"{}"])), Ok(Request::SetDb(b"{}")));
    }
}
