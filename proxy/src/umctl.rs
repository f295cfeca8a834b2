//! `UMCTL …`: the proxy's control commands on its data port, for operators with redis-cli
//! (the names come from the seed design).
//!
//! - `UMCTL SETDB <json>`: take a [`ProxyConfig`] (the JSON the broker serves per proxy).
//! - `UMCTL GETEPOCH`: the epoch of the config held, as an integer.
//! - `UMCTL INFOMGR`: the proxy's state as JSON.
//! - `UMCTL PEER`: marks this connection as another proxy's (never forwarded again).

use crate::session::{Flow, Session};
use crate::state::Applied;
use bytes::Bytes;
use sluice_common::model::ProxyConfig;
use sluice_common::resp::{Command, Frame};
use std::sync::atomic::Ordering;

pub async fn handle(s: &mut Session, cmd: Command) -> Flow {
    let sub = cmd.arg(1).map(|a| String::from_utf8_lossy(a).to_ascii_uppercase()).unwrap_or_default();
    let reply = match (sub.as_str(), cmd.len()) {
        ("SETDB", 3) => setdb(s, &cmd.args()[2]),
        ("GETEPOCH", 2) => Frame::Integer(s.shared.epoch() as i64),
        ("INFOMGR", 2) => infomgr(s),
        ("PEER", 2) => {
            s.is_peer = true;
            Frame::ok()
        }
        ("SETDB" | "GETEPOCH" | "INFOMGR" | "PEER", _) => {
            Frame::error(format!("ERR wrong number of arguments for 'umctl|{}' command", sub.to_ascii_lowercase()))
        }
        _ => Frame::error(format!("ERR sluice: unknown UMCTL subcommand '{sub}'; try SETDB <json>, GETEPOCH, INFOMGR")),
    };
    s.reply(reply).await
}

fn setdb(s: &Session, json: &Bytes) -> Frame {
    let config: ProxyConfig = match serde_json::from_slice(json) {
        Ok(c) => c,
        Err(e) => return Frame::error(format!("ERR sluice: invalid config JSON: {e}")),
    };
    match s.shared.apply_config(config) {
        Ok(Applied::Updated { .. }) | Ok(Applied::Unchanged) => Frame::ok(),
        Err(e) => Frame::error(e.to_string()),
    }
}

fn infomgr(s: &Session) -> Frame {
    let routes = s.shared.routes();
    let status = serde_json::json!({
        "proxy": s.shared.me(),
        "node": s.shared.opts.node,
        "epoch": routes.epoch(),
        "cluster": routes.cluster().map(|c| c.name.clone()),
        "slots_served": (0..16384u16).filter(|&slot| routes.is_local(slot)).count(),
        "connected_clients": s.shared.connected_clients.load(Ordering::Relaxed),
        "migrations": routes.config.migrations,
    });
    Frame::bulk(status.to_string())
}
