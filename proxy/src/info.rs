//! `INFO`: the node's own report, adjusted so clients see a cluster node, plus a `# Sluice`
//! section with the proxy's state.

use crate::session::{Flow, Session};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::{parse_frame, Command, Frame, Limits};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub async fn handle(s: &mut Session, cmd: Command) -> Flow {
    let shared = s.shared.clone();
    let protocol = s.protocol;
    let wants_sluice = cmd.len() == 1
        || cmd.args()[1..]
            .iter()
            .any(|a| ["sluice", "all", "everything", "default"].iter().any(|w| a.eq_ignore_ascii_case(w.as_bytes())));
    s.send_and_present(cmd.raw().clone(), move |raw| {
        let text = match parse_frame(&raw, &Limits::SERVER) {
            Ok((frame, _)) if frame.is_error() => return raw,
            Ok((frame, _)) => frame.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned()),
            Err(_) => None,
        };
        let Some(text) = text else { return raw };
        let mut text = rewrite(&text, &shared);
        if wants_sluice {
            text.push_str(&sluice_section(&shared));
        }
        Frame::Verbatim(Bytes::from_static(b"txt"), Bytes::from(text)).to_bytes(protocol)
    })
    .await
}

/// Presents the node as a cluster node and counts the proxy's clients, not its connections.
fn rewrite(info: &str, shared: &Shared) -> String {
    let clients = shared.connected_clients.load(Ordering::Relaxed);
    info.lines()
        .map(|line| {
            if line.starts_with("redis_mode:") {
                "redis_mode:cluster".to_string()
            } else if line.starts_with("cluster_enabled:") {
                "cluster_enabled:1".to_string()
            } else if line.starts_with("connected_clients:") {
                format!("connected_clients:{clients}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

fn sluice_section(shared: &Arc<Shared>) -> String {
    let routes = shared.routes();
    let cluster = routes.cluster().map(|c| c.name.as_str()).unwrap_or("");
    format!(
        "\r\n# Sluice\r\nsluice_version:{}\r\nsluice_epoch:{}\r\nsluice_cluster:{cluster}\r\nsluice_proxy:{}\r\n\
         sluice_node:{}\r\nsluice_uptime_in_seconds:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        routes.epoch(),
        shared.me(),
        shared.opts.node,
        shared.started.elapsed().as_secs(),
    )
}
