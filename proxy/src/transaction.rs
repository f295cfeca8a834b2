//! `MULTI`/`EXEC`/`DISCARD`/`WATCH`/`UNWATCH` through the proxy.
//!
//! Without `WATCH`, the proxy holds the queued commands itself and sends
//! `MULTI … EXEC` as one unit on the shared connection: nothing else can slip in between,
//! and no connection is tied up while the client builds its transaction.
//!
//! `WATCH` must run on the connection that later runs `EXEC`, so a watching session moves to
//! a private connection until `EXEC`, `DISCARD` or `UNWATCH`. If that connection breaks,
//! the transaction fails rather than running without its watch.
//!
//! As in Redis Cluster, every key of a transaction must be in one slot served here; a
//! command that breaks the rule gets `CROSSSLOT`/`MOVED` and dooms the transaction.

use crate::ack::AckCheck;
use crate::command;
use crate::command::{flags, CommandSpec};
use crate::keyed::{self, Gate};
use crate::route::PullTarget;
use crate::session::{error_bytes, Flow, Lane, Pending, Session, To, TxState};
use bytes::{Bytes, BytesMut};
use sluice_common::resp::{Command, Frame};

/// Commands the proxy answers itself; only `PING` and `ECHO` of them may be queued.
fn answered_by_proxy(name: &str) -> bool {
    matches!(
        name,
        "ping"
            | "echo"
            | "quit"
            | "auth"
            | "hello"
            | "select"
            | "reset"
            | "readonly"
            | "readwrite"
            | "asking"
            | "info"
            | "scan"
            | "keys"
            | "config|get"
    ) || name.starts_with("client|")
        || name.starts_with("cluster|")
}

fn execabort() -> Frame {
    Frame::error("EXECABORT Transaction discarded because of previous errors.")
}

/// Handles transaction commands and commands issued inside a transaction. `None` means the
/// command is not the transaction's business and takes the normal path.
pub async fn intercept(s: &mut Session, cmd: &Command, spec: &'static CommandSpec) -> Option<Flow> {
    let name = spec.name;
    if matches!(name, "quit" | "reset") {
        return None;
    }
    let flow = match name {
        "multi" => match s.tx_mut() {
            TxState::None => {
                *s.tx_mut() = TxState::Queued { commands: Vec::new(), slot: None, dirty: false };
                s.reply(Frame::ok()).await
            }
            TxState::Watching { in_multi: in_multi @ false, .. } => {
                *in_multi = true;
                s.send_to_node(Lane::Private, cmd.raw().clone(), false).await
            }
            _ => s.reply(Frame::error("ERR MULTI calls can not be nested")).await,
        },
        "exec" => exec(s).await,
        "discard" => match std::mem::take(s.tx_mut()) {
            TxState::Queued { .. } => s.reply(Frame::ok()).await,
            TxState::Watching { in_multi: true, .. } => finish_private(s, cmd.raw().clone(), None, false).await,
            other => {
                *s.tx_mut() = other;
                s.reply(Frame::error("ERR DISCARD without MULTI")).await
            }
        },
        "watch" => watch(s, cmd, spec).await,
        "unwatch" => match s.tx() {
            TxState::None => s.reply(Frame::ok()).await,
            TxState::Watching { in_multi: false, .. } => {
                *s.tx_mut() = TxState::None;
                finish_private(s, cmd.raw().clone(), None, false).await
            }
            TxState::Watching { .. } => s.send_to_node(Lane::Private, cmd.raw().clone(), false).await,
            TxState::Queued { .. } => queue(s, cmd, spec).await,
        },
        _ => match s.tx() {
            TxState::None => return None,
            TxState::Queued { .. } => queue(s, cmd, spec).await,
            TxState::Watching { .. } if answered_by_proxy(name) && !s.tx().in_multi() => return None,
            TxState::Watching { .. } => in_watch(s, cmd, spec).await,
        },
    };
    Some(flow)
}

/// Checks that a command may join the transaction; the slot it touches, if any.
fn admit(s: &Session, cmd: &Command, spec: &'static CommandSpec, tx_slot: Option<u16>) -> Result<Option<u16>, Frame> {
    if s.tx().in_multi() {
        if answered_by_proxy(spec.name) && !matches!(spec.name, "ping" | "echo") {
            return Err(Frame::error(format!(
                "ERR sluice: '{}' cannot be used inside MULTI through the proxy",
                spec.name
            )));
        }
        if spec.has(flags::NO_MULTI) {
            return Err(Frame::error("ERR Command not allowed inside a transaction"));
        }
    }
    let slot = keyed::local_slot(s, cmd, spec)?;
    match (tx_slot, slot) {
        (Some(a), Some(b)) if a != b => Err(Frame::error("CROSSSLOT Keys in request don't hash to the same slot")),
        _ => Ok(slot),
    }
}

/// A command after `MULTI` (no `WATCH`): checked, held, answered `QUEUED`.
async fn queue(s: &mut Session, cmd: &Command, spec: &'static CommandSpec) -> Flow {
    let tx_slot = match s.tx() {
        TxState::Queued { slot, .. } => *slot,
        _ => None,
    };
    match admit(s, cmd, spec, tx_slot) {
        Ok(slot) => {
            if let TxState::Queued { commands, slot: tx_slot, .. } = s.tx_mut() {
                commands.push(cmd.clone());
                *tx_slot = tx_slot.or(slot);
            }
            s.reply(Frame::simple("QUEUED")).await
        }
        Err(e) => s.reply_error_in_tx(e).await,
    }
}

/// A command while watching: checked, then sent to the private connection.
async fn in_watch(s: &mut Session, cmd: &Command, spec: &'static CommandSpec) -> Flow {
    let watch_slot = match s.tx() {
        TxState::Watching { slot, .. } => *slot,
        _ => None,
    };
    let checked = match admit(s, cmd, spec, watch_slot) {
        Ok(Some(slot)) => match keyed::gate(s, &[slot]).await {
            Ok(Gate::Here) => Ok(()),
            Ok(Gate::Pull(_)) => Err(keyed::tryagain()),
            Err(e) => Err(e),
        },
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match checked {
        Ok(()) => s.send_to_node(Lane::Private, cmd.raw().clone(), !s.tx().in_multi() && spec.may_write()).await,
        Err(e) => s.reply_error_in_tx(e).await,
    }
}

async fn watch(s: &mut Session, cmd: &Command, spec: &'static CommandSpec) -> Flow {
    if s.tx().in_multi() {
        return s.reply_error_in_tx(Frame::error("ERR WATCH inside MULTI is not allowed")).await;
    }
    let watch_slot = match s.tx() {
        TxState::Watching { slot, .. } => *slot,
        _ => None,
    };
    let slot = match admit(s, cmd, spec, watch_slot) {
        Ok(slot) => slot,
        Err(e) => return s.reply(e).await,
    };
    if let Some(slot) = slot {
        match keyed::gate(s, &[slot]).await {
            Ok(Gate::Here) => {}
            // A watch on a slot whose keys are moving could not tell a change: try later.
            Ok(Gate::Pull(_)) => return s.reply(keyed::tryagain()).await,
            Err(e) => return s.reply(e).await,
        }
    }
    if !s.tx().is_watching() {
        s.prepare_private_for_watch();
    }
    *s.tx_mut() = TxState::Watching { slot: watch_slot.or(slot), in_multi: false, dirty: false };
    s.send_to_node(Lane::Private, cmd.raw().clone(), false).await
}

async fn exec(s: &mut Session) -> Flow {
    match std::mem::take(s.tx_mut()) {
        TxState::None => s.reply(Frame::error("ERR EXEC without MULTI")).await,
        TxState::Watching { in_multi: false, slot, dirty } => {
            *s.tx_mut() = TxState::Watching { in_multi: false, slot, dirty };
            s.reply(Frame::error("ERR EXEC without MULTI")).await
        }
        TxState::Watching { dirty: true, .. } => {
            // The node holds an open MULTI: discard it, and tell the client why.
            let discard = Command::from_strs(&["DISCARD"]);
            finish_private(s, discard.raw().clone(), Some(execabort()), false).await
        }
        TxState::Watching { slot, .. } => {
            if let Some(slot) = slot {
                let refusal = match keyed::gate(s, &[slot]).await {
                    Ok(Gate::Here) => None,
                    Ok(Gate::Pull(_)) => Some(keyed::tryagain()),
                    Err(e) => Some(e),
                };
                if let Some(e) = refusal {
                    let discard = Command::from_strs(&["DISCARD"]);
                    return finish_private(s, discard.raw().clone(), Some(e), false).await;
                }
            }
            let exec = Command::from_strs(&["EXEC"]);
            finish_private(s, exec.raw().clone(), None, true).await
        }
        TxState::Queued { dirty: true, .. } => s.reply(execabort()).await,
        TxState::Queued { commands, .. } if commands.is_empty() => s.reply(Frame::Array(Vec::new())).await,
        TxState::Queued { commands, slot, .. } => {
            let mut pull_target = None;
            if let Some(slot) = slot {
                match keyed::gate(s, &[slot]).await {
                    Ok(Gate::Here) => {}
                    Ok(Gate::Pull(t)) => pull_target = Some(t),
                    Err(e) => {
                        let why = String::from_utf8_lossy(e.as_bytes().map(|b| &b[..]).unwrap_or(b"")).into_owned();
                        return s.reply(Frame::error(format!("EXECABORT Transaction discarded: {why}"))).await;
                    }
                }
            }
            let mut data = BytesMut::new();
            data.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
            for c in &commands {
                data.extend_from_slice(c.raw());
            }
            data.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
            let n = commands.len() + 2;
            let protocol = s.protocol();
            if let Some(target) = pull_target {
                return exec_at_destination(s, &target, &commands, data.freeze(), n).await;
            }
            // The replies are QUEUED…, then EXEC's (at n - 1), which waits for replicas.
            let writes = commands.iter().any(|c| command::lookup(c).is_some_and(|spec| spec.may_write()));
            let ack = s.ack_check(writes.then(|| vec![(n - 1) as u16]));
            if let Some(ack) = &ack {
                data.extend_from_slice(&ack.wait_command());
            }
            let sent = n + usize::from(ack.is_some());
            match s.send_many(&To::Node(Lane::Shared), data.freeze(), sent).await {
                Ok(rx) => s.push(exec_reply(rx, protocol, ack)).await,
                Err(e) => s.reply(e.to_frame()).await,
            }
        }
    }
}

/// A transaction on a slot a keys-mode migration is moving: its keys are pulled to the
/// destination, which runs the whole `MULTI … EXEC` unit.
async fn exec_at_destination(
    s: &mut Session,
    target: &PullTarget,
    commands: &[Command],
    unit: Bytes,
    n: usize,
) -> Flow {
    let mut keys = Vec::new();
    for c in commands {
        if let Some(spec) = command::lookup(c) {
            if let Ok(positions) = command::key_positions(c, spec) {
                keys.extend(positions.iter().map(|&i| c.args()[i].clone()));
            }
        }
    }
    if let Err(e) = keyed::pull(s, target, &keys).await {
        return s.reply(e).await;
    }
    let protocol = s.protocol();
    match s.send_many(&To::peer(s.shared(), &target.proxy, false), unit, n).await {
        Ok(rx) => s.push(exec_reply(rx, protocol, None)).await,
        Err(e) => s.reply(e.to_frame()).await,
    }
}

/// The client's answer to a `MULTI … EXEC` unit: the reply of its `EXEC`.
fn exec_reply(
    rx: tokio::sync::oneshot::Receiver<Result<Vec<Bytes>, crate::backend::BackendError>>,
    protocol: sluice_common::resp::Protocol,
    ack: Option<AckCheck>,
) -> Pending {
    Pending::Future(Box::pin(async move {
        match rx.await {
            Ok(Ok(mut replies)) => {
                if let Some(ack) = &ack {
                    ack.apply(&mut replies);
                }
                replies.pop().unwrap_or_default()
            }
            Ok(Err(e)) => error_bytes(&e, protocol),
            Err(_) => Frame::error("ERR sluice: transaction reply lost").to_bytes(protocol),
        }
    }))
}

/// Sends the last command of a watched transaction (EXEC, DISCARD, UNWATCH) on the private
/// connection and leaves the transaction. With `answer`, the client gets that instead of
/// the node's reply. A lost private connection fails the transaction.
/// `exec`: the command is `EXEC`, which runs the queued writes (with `--ack-replicas` its
/// reply waits for replicas).
async fn finish_private(s: &mut Session, data: Bytes, answer: Option<Frame>, exec: bool) -> Flow {
    *s.tx_mut() = TxState::None;
    let lost = s.take_watch_lost();
    if lost {
        return s.reply(Frame::error("EXECABORT Transaction discarded: the connection holding WATCH was lost")).await;
    }
    match answer {
        None => s.send_to_node(Lane::Private, data, exec).await,
        Some(frame) => match s.send(&To::Node(Lane::Private), data).await {
            Ok(rx) => {
                let bytes = s.encode(&frame);
                let fut = async move {
                    let _ = rx.await;
                    bytes
                };
                s.push(Pending::Future(Box::pin(fut))).await
            }
            Err(e) => s.reply(e.to_frame()).await,
        },
    }
}
