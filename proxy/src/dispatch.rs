//! What each command of a client does: checks that apply to every command (known,
//! authenticated, arity, subcommands), transactions first, then the module that serves it.
//! Everything not answered by the proxy itself goes to [`keyed`], which routes by slot.

use crate::command;
use crate::session::{noauth, Flow, Session};
use crate::{cluster, connection_commands, info, keyed, node_level, slot_keys, transaction};
use sluice_common::resp::{Command, Frame};

/// Decides what to do with one command and queues its reply.
pub async fn handle(s: &mut Session, cmd: Command) -> Flow {
    let found = command::lookup(&cmd);
    s.shared().metrics.command(found);
    let Some(spec) = found else {
        let err = unknown_command(&cmd);
        return s.reply_error_in_tx(err).await;
    };
    if !s.is_authenticated() && !matches!(spec.name, "auth" | "hello" | "quit" | "reset") {
        return s.reply(noauth()).await;
    }
    if spec.has_subcommands && cmd.len() > 1 {
        let err = Frame::error(format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            String::from_utf8_lossy(cmd.arg(1).map(|a| &a[..]).unwrap_or(b"")),
            spec.name.to_ascii_uppercase()
        ));
        return s.reply_error_in_tx(err).await;
    }
    if !spec.arity_ok(cmd.len()) {
        let err = Frame::error(format!("ERR wrong number of arguments for '{}' command", spec.name));
        return s.reply_error_in_tx(err).await;
    }
    if let Some(flow) = transaction::intercept(s, &cmd, spec).await {
        return flow;
    }
    match spec.name {
        "ping" | "echo" | "quit" | "auth" | "hello" | "select" | "reset" | "readonly" | "readwrite" | "asking" => {
            connection_commands::handle(s, cmd, spec).await
        }
        name if name.starts_with("client|") || name == "acl|whoami" => connection_commands::handle(s, cmd, spec).await,
        "cluster|countkeysinslot" | "cluster|getkeysinslot" => slot_keys::handle(s, cmd).await,
        name if name.starts_with("cluster|") => {
            let reply = cluster::handle(s.shared(), &cmd, spec);
            s.reply(reply).await
        }
        "info" => info::handle(s, cmd).await,
        "config|get" => node_level::config_get(s, cmd).await,
        "scan" | "keys" => keyed::scan(s, cmd, spec).await,
        "dbsize" => keyed::dbsize(s, cmd).await,
        "eval" | "eval_ro" | "script|load" => {
            let body = if spec.name == "script|load" { cmd.arg(2) } else { cmd.arg(1) };
            if let Some(body) = body {
                s.shared().scripts.remember(body);
            }
            keyed::handle(s, cmd, spec).await
        }
        _ => keyed::handle(s, cmd, spec).await,
    }
}

fn unknown_command(cmd: &Command) -> Frame {
    let mut msg = format!("ERR unknown command '{}', with args beginning with: ", String::from_utf8_lossy(cmd.name()));
    for a in cmd.args().iter().skip(1).take(16) {
        msg.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    Frame::error(msg)
}
