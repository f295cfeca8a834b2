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
use sluice_common::resp::{parse_int, Command, Frame};

pub async fn handle(s: &mut Session, cmd: Command, control: &Control) -> Flow {
    let sub = cmd.arg(1).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
    let args = cmd.args();
    let reply = match (sub.as_str(), args.len()) {
        ("SETDB", 3) => match control.set_config_json(&args[2]).await {
            Ok(_) => Frame::ok(),
            Err(e) => Frame::error(e.to_string()),
        },
        ("GETEPOCH", 2) => Frame::Integer(s.shared.epoch() as i64),
        ("INFOMGR", 2) => {
            let status = status::collect(&s.shared).await;
            let mut json = serde_json::to_value(&status).unwrap_or_default();
            json["migrations"] = serde_json::to_value(control.migrations.reports()).unwrap_or_default();
            json["clean_epoch"] = s.shared.gc.clean_epoch.load(std::sync::atomic::Ordering::SeqCst).into();
            Frame::bulk(json.to_string())
        }
        ("SWITCHED", 5) => {
            let id = String::from_utf8_lossy(&args[2]).into_owned();
            let number = |a: &[u8]| parse_int(a).filter(|n| *n >= 0).map(|n| n as u64);
            match (number(&args[3]), number(&args[4])) {
                (Some(epoch), Some(attempt)) => match control.switched(&id, epoch, attempt).await {
                    Ok(yes) => Frame::Integer(i64::from(yes)),
                    Err(e) => Frame::error(format!("ERR sluice: {e}")),
                },
                _ => Frame::error("ERR sluice: the epoch and the attempt must be non-negative integers"),
            }
        }
        ("TMPSWITCH", 5 | 6) | ("READY", 4) => {
            let id = String::from_utf8_lossy(&args[2]).into_owned();
            match parse_int(&args[3]).filter(|n| *n >= 0) {
                Some(epoch) => {
                    let done = if sub == "READY" {
                        control.ready(&id, epoch as u64).await
                    } else {
                        let attempt = parse_int(&args[4]).filter(|n| *n >= 0).unwrap_or(0) as u64;
                        control.tmp_switch(&id, epoch as u64, attempt).await
                    };
                    match done {
                        Ok(()) => Frame::ok(),
                        Err(e) => Frame::error(format!("ERR sluice: {e}")),
                    }
                }
                None => Frame::error("ERR sluice: the epoch must be a non-negative integer"),
            }
        }
        ("PEER", 2) => {
            s.mark_peer();
            Frame::ok()
        }
        ("SETDB" | "GETEPOCH" | "INFOMGR" | "TMPSWITCH" | "READY" | "SWITCHED" | "PEER", _) => {
            Frame::error(format!("ERR wrong number of arguments for 'umctl|{}' command", sub.to_ascii_lowercase()))
        }
        _ => Frame::error(format!(
            "ERR sluice: unknown UMCTL subcommand '{sub}'; try SETDB <json>, GETEPOCH, INFOMGR, TMPSWITCH <id> <epoch> <offset|attempt> [budget-ms], READY <id> <epoch>, SWITCHED <id> <epoch> <attempt>"
        )),
    };
    s.reply(reply).await
}
