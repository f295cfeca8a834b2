//! `UMCTL …`: the proxy's control commands on its data port, for operators with redis-cli
//! (the names come from the seed design). They run the same code as the gRPC service.
//!
//! - `UMCTL SETDB <json>`: take a [`ProxyConfig`](sluice_common::model::ProxyConfig).
//! - `UMCTL GETEPOCH`: the epoch of the config held, as an integer.
//! - `UMCTL INFOMGR`: the proxy's state as JSON (what gRPC `Status` reports).
//! - `UMCTL TMPSWITCH <migration-id> <epoch> <offset> [budget-ms]`: the temporary switch of a
//!   migration (sent by its source proxy to its destination).
//! - `UMCTL PEER`: marks this connection as another proxy's (never forwarded again).

use crate::control;
use crate::session::{Flow, Session};
use crate::status;
use sluice_common::resp::{parse_int, Command, Frame};

pub async fn handle(s: &mut Session, cmd: Command) -> Flow {
    let sub = cmd.arg(1).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
    let args = cmd.args();
    let reply = match (sub.as_str(), args.len()) {
        ("SETDB", 3) => match control::set_config_json(&s.shared, &args[2]).await {
            Ok(_) => Frame::ok(),
            Err(e) => Frame::error(e.to_string()),
        },
        ("GETEPOCH", 2) => Frame::Integer(s.shared.epoch() as i64),
        ("INFOMGR", 2) => {
            let status = status::collect(&s.shared).await;
            let mut json = serde_json::to_value(&status).unwrap_or_default();
            json["migrations"] = serde_json::to_value(s.shared.migrations.reports()).unwrap_or_default();
            json["clean_epoch"] = s.shared.gc.clean_epoch.load(std::sync::atomic::Ordering::SeqCst).into();
            Frame::bulk(json.to_string())
        }
        ("TMPSWITCH", 5 | 6) => {
            let id = String::from_utf8_lossy(&args[2]).into_owned();
            let number = |i: usize| args.get(i).and_then(|a| parse_int(a)).filter(|n| *n >= 0).map(|n| n as u64);
            let budget = match args.get(5) {
                None => Some(s.shared.opts.switch_pause()),
                Some(_) => number(5).map(std::time::Duration::from_millis),
            };
            match (number(3), number(4), budget) {
                (Some(epoch), Some(offset), Some(budget)) => {
                    match control::tmp_switch(&s.shared, &id, epoch, offset, budget).await {
                        Ok(()) => Frame::ok(),
                        Err(e) => Frame::error(format!("ERR sluice: {e}")),
                    }
                }
                _ => Frame::error("ERR sluice: epoch, offset and budget must be non-negative integers"),
            }
        }
        ("PEER", 2) => {
            s.is_peer = true;
            Frame::ok()
        }
        ("SETDB" | "GETEPOCH" | "INFOMGR" | "TMPSWITCH" | "PEER", _) => {
            Frame::error(format!("ERR wrong number of arguments for 'umctl|{}' command", sub.to_ascii_lowercase()))
        }
        _ => Frame::error(format!(
            "ERR sluice: unknown UMCTL subcommand '{sub}'; try SETDB <json>, GETEPOCH, INFOMGR, TMPSWITCH <id> <epoch> <offset> [budget-ms]"
        )),
    };
    s.reply(reply).await
}
