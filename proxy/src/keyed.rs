//! Routing of ordinary commands by the slots of their keys.
//!
//! One slot served here: to the node, untouched. One slot served by a peer: `MOVED` (or
//! forwarded with `--redirect forward`). Keys in several slots: `CROSSSLOT`, as Redis
//! Cluster answers, except for the commands [`multikey`] knows how to split and merge.
//! Keyless commands run on this proxy's node, unless they cannot be served correctly
//! through a proxy; those get a clear error (see [`refusal`]).

use crate::command::{self, flags, CommandSpec, KeyPositions};
use crate::migration::node::{self, migrate_command, NodeError};
use crate::multikey::{self, MergeKind};
use crate::node_level;
use crate::route::{Peer, PullTarget, Route, RouteTable};
use crate::session::{is_blocking, Flow, Lane, Pending, Session, To};
use crate::state::Shared;
use bytes::Bytes;
use sluice_common::resp::{parse_frame, Command, Frame, Limits};
use sluice_common::slot::key_slot;
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn crossslot() -> Frame {
    Frame::error("CROSSSLOT Keys in request don't hash to the same slot")
}

/// For what cannot follow a slot while a keys-mode migration moves it (a `WATCH`).
pub fn tryagain() -> Frame {
    Frame::error("TRYAGAIN sluice: the slot is being migrated, try again shortly")
}

pub fn clusterdown() -> Frame {
    Frame::error("CLUSTERDOWN Hash slot not served")
}

/// Waits for the route table to change while a switch holds one of `slots`. A hold lasts at
/// most a switch's pause budget; one that outlives twice that plus a margin means a task is
/// stuck, and the client gets `TRYAGAIN` (which cluster clients retry) rather than waiting
/// past its own timeout. `since` is when this command first found a slot held.
async fn wait_while_held(
    s: &mut Session,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    since: &mut Option<Instant>,
    slots: &[u16],
) -> Result<(), Frame> {
    let limit = s.shared().opts.switch_pause() * 2 + HOLD_MARGIN;
    let since = *since.get_or_insert_with(Instant::now);
    s.flush().await;
    let left = limit.saturating_sub(since.elapsed());
    if left.is_zero() || tokio::time::timeout(left, changes.changed()).await.is_err() {
        tracing::warn!(?slots, waited = ?since.elapsed(), "a slot stayed held past the switch bound; answering TRYAGAIN");
        return Err(Frame::error("TRYAGAIN sluice: the slot is being switched to another proxy; retry"));
    }
    Ok(())
}

/// See [`wait_while_held`].
const HOLD_MARGIN: Duration = Duration::from_secs(3);

pub fn moved(slot: u16, peer: &Peer) -> Frame {
    Frame::error(format!("MOVED {slot} {}", peer.proxy))
}

/// Commands that cannot be served correctly through a proxy, and why.
pub fn refusal(cmd: &Command, spec: &CommandSpec, shared: &Shared) -> Option<Frame> {
    let name = spec.name;
    if spec.has(flags::PUBSUB) {
        return Some(Frame::error(format!("ERR sluice: pub/sub ('{name}') is not supported through the proxy")));
    }
    if spec.has(flags::ADMIN) {
        return node_level::refusal(cmd, name, shared);
    }
    let msg = match name {
        "move" => "ERR MOVE is not allowed in cluster mode",
        "swapdb" => "ERR SWAPDB is not allowed in cluster mode",
        "copy" if cmd.args().iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"db")) => {
            "ERR Copying to another database is not allowed in cluster mode"
        }
        "randomkey" => {
            "ERR sluice: RANDOMKEY is not supported through the proxy (it could name a key of another proxy)"
        }
        "wait" | "waitaof" => {
            "ERR sluice: WAIT is not supported through the proxy (nodes have no replicas of their own)"
        }
        "migrate" => "ERR sluice: MIGRATE is reserved for sluice's own slot migrations",
        _ if name.starts_with("client|") => "ERR sluice: this CLIENT subcommand is not supported through the proxy",
        "sort" | "sort_ro" if sort_uses_patterns(cmd) => {
            "ERR sluice: SORT with BY or GET patterns is not supported in cluster mode"
        }
        _ => return None,
    };
    Some(Frame::error(msg))
}

/// SORT's BY/GET patterns read other keys, which may live anywhere (`GET #` is fine).
fn sort_uses_patterns(cmd: &Command) -> bool {
    let args = cmd.args();
    args.iter().enumerate().skip(2).any(|(i, a)| {
        let next = args.get(i + 1).map(|b| &b[..]);
        (a.eq_ignore_ascii_case(b"by") && next.is_some_and(|n| !n.eq_ignore_ascii_case(b"nosort")))
            || (a.eq_ignore_ascii_case(b"get") && next != Some(b"#"))
    })
}

/// The single slot of a command's keys, if it has keys: `CROSSSLOT` if they span slots.
fn single_slot(cmd: &Command, keys: &KeyPositions) -> Result<Option<u16>, Frame> {
    same_slot(keys.iter().map(|&i| key_slot(&cmd.args()[i])))
}

/// The one slot all of `slots` are in (`None` for no slot): `CROSSSLOT` if they differ.
fn same_slot(slots: impl IntoIterator<Item = u16>) -> Result<Option<u16>, Frame> {
    let mut slot = None;
    for s in slots {
        match slot {
            None => slot = Some(s),
            Some(prev) if prev != s => return Err(crossslot()),
            _ => {}
        }
    }
    Ok(slot)
}

/// For commands that must run here as a whole (transactions): the slot of their keys if it
/// is served here, or the error a Redis Cluster node would give.
pub fn local_slot(s: &Session, cmd: &Command, spec: &CommandSpec) -> Result<Option<u16>, Frame> {
    if let Some(err) = refusal(cmd, spec, s.shared()) {
        return Err(err);
    }
    let keys = command::key_positions(cmd, spec).map_err(|e| Frame::error(e.to_string()))?;
    let slot = single_slot(cmd, &keys)?;
    if let Some(slot) = slot {
        check_local(s, slot)?;
    }
    Ok(slot)
}

/// `Ok` if this proxy serves `slot` (held slots and slots a keys-mode migration is moving
/// away included: they are still this proxy's to answer), else `MOVED`/`CLUSTERDOWN`.
pub fn check_local(s: &Session, slot: u16) -> Result<(), Frame> {
    let routes = s.shared().routes();
    match routes.route_for(slot, s.is_peer()) {
        Route::Local | Route::Held | Route::Pull(_) => Ok(()),
        Route::Peer(p) => Err(moved(slot, p)),
        Route::Unserved => Err(clusterdown()),
    }
}

/// Where the keys of one command go, decided on one route table.
pub enum Plan {
    /// All served here; `migrating` when any of the slots is being moved away.
    Local {
        migrating: bool,
    },
    /// A switch holds one of the slots: wait for the table to change.
    Held,
    /// All served by one other proxy (`slot`: the first key's).
    Peer(Peer, u16),
    /// All in slots a keys-mode migration moves away: pull the keys, run at the destination.
    Pull(PullTarget),
    /// Spread over several proxies: (destination, key ordinals) per destination.
    Spread(Vec<(Dest, Vec<usize>)>),
    Unserved,
}

/// Where each key of a multi-key command goes.
pub enum Dest {
    Local,
    Peer(Peer),
    Pull(PullTarget),
}

fn plan(routes: &RouteTable, slots: &[u16], from_peer: bool) -> Plan {
    // Nearly always every key is served here: that answer needs no per-destination lists.
    let mut migrating = false;
    let all_local = slots.iter().all(|&slot| {
        let local = matches!(routes.route_for(slot, from_peer), Route::Local);
        migrating |= local && routes.is_migrating(slot);
        local
    });
    if all_local {
        return Plan::Local { migrating };
    }
    let mut dests: Vec<(Dest, Vec<usize>)> = Vec::new();
    let mut migrating = false;
    let mut first_foreign = None;
    for (ordinal, &slot) in slots.iter().enumerate() {
        let dest = match routes.route_for(slot, from_peer) {
            Route::Held => return Plan::Held,
            Route::Unserved => return Plan::Unserved,
            Route::Local => {
                migrating |= routes.is_migrating(slot);
                Dest::Local
            }
            Route::Peer(p) => {
                first_foreign.get_or_insert(slot);
                Dest::Peer(p.clone())
            }
            Route::Pull(t) => Dest::Pull(t.clone()),
        };
        let found = dests.iter_mut().find(|(d, _)| match (d, &dest) {
            (Dest::Local, Dest::Local) => true,
            (Dest::Peer(a), Dest::Peer(b)) => a.proxy == b.proxy,
            (Dest::Pull(a), Dest::Pull(b)) => a.migration == b.migration,
            _ => false,
        });
        match found {
            Some((_, ords)) => ords.push(ordinal),
            None => dests.push((dest, vec![ordinal])),
        }
    }
    match (dests.len(), dests.pop()) {
        (_, None) | (1, Some((Dest::Local, _))) => Plan::Local { migrating },
        (1, Some((Dest::Peer(p), _))) => Plan::Peer(p, first_foreign.unwrap_or(0)),
        (1, Some((Dest::Pull(t), _))) => Plan::Pull(t),
        (_, Some(last)) => {
            dests.push(last);
            Plan::Spread(dests)
        }
    }
}

/// [`plan`] with the current table; when it sends the command to our node and `count`, the
/// session notes the table it was routed with ([`crate::state::Routed`]). `None`: the table
/// changed while it was noted (possible with several threads): plan again.
fn plan_counted(s: &mut Session, slots: &[u16], count: bool) -> Option<Plan> {
    // Guards, not owned pointers: this runs for every command, and a guard costs no
    // reference count (nothing here waits while holding one).
    let routes = s.shared().routes();
    let decision = plan(&routes, slots, s.is_peer());
    if count && matches!(decision, Plan::Local { .. }) {
        s.routed_with(&routes);
        if !Arc::ptr_eq(&routes, &s.shared().routes()) {
            s.forget_routed();
            return None;
        }
    }
    Some(decision)
}

/// Where a transaction's commands run.
pub enum Gate {
    /// On this proxy's node.
    Here,
    /// At the destination of a keys-mode migration, once the keys were pulled there.
    Pull(PullTarget),
}

/// Waits until none of `slots` is held by a switch, then checks they are all served here
/// (counting the command as in flight when a slot is migrating). For transactions.
pub async fn gate(s: &mut Session, slots: &[u16]) -> Result<Gate, Frame> {
    let mut held_since = None;
    loop {
        let mut changes = s.shared().route_changes();
        let Some(decision) = plan_counted(s, slots, true) else { continue };
        match decision {
            Plan::Held => wait_while_held(s, &mut changes, &mut held_since, slots).await?,
            Plan::Local { migrating: false } => return Ok(Gate::Here),
            Plan::Local { migrating: true } => {
                if s.enter_migrating(slots) {
                    return Ok(Gate::Here);
                }
            }
            Plan::Pull(t) => return Ok(Gate::Pull(t)),
            Plan::Peer(p, slot) => return Err(moved(slot, &p)),
            Plan::Spread(_) => return Err(crossslot()),
            Plan::Unserved => return Err(clusterdown()),
        }
    }
}

/// Moves `keys` (those the node still has) to the destination of a keys-mode migration:
/// `MIGRATE … KEYS` is atomic on the node, so afterwards every one of them lives at the
/// destination (or nowhere), and a command sent there sees them all.
pub async fn pull(s: &mut Session, target: &PullTarget, keys: &[Bytes]) -> Result<(), Frame> {
    if keys.is_empty() {
        return Ok(());
    }
    let cmd = migrate_command(s.shared(), &target.node, keys);
    let rx = s.send(&To::Node(Lane::Shared), cmd.raw().clone()).await.map_err(|e| e.to_frame())?;
    let raw = match rx.await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Err(e.to_frame()),
        Err(_) => return Err(Frame::error("ERR sluice: reply lost")),
    };
    match parse_frame(&raw, &Limits::SERVER) {
        Ok((Frame::Simple(_), _)) => Ok(()),
        Ok((f, _)) if f.is_error() => Err(f),
        Ok((f, _)) => Err(Frame::error(format!("ERR sluice: MIGRATE answered {f:?}"))),
        Err(e) => Err(Frame::error(format!("ERR sluice: {e}"))),
    }
}

/// Routes an ordinary command.
pub async fn handle(s: &mut Session, cmd: Command, spec: &'static CommandSpec) -> Flow {
    if let Some(err) = refusal(&cmd, spec, s.shared()) {
        return s.reply(err).await;
    }
    let keys = match command::key_positions(&cmd, spec) {
        Ok(k) => k,
        Err(e) => return s.reply(Frame::error(e.to_string())).await,
    };
    let lane = if is_blocking(&cmd, spec) { Lane::Private } else { Lane::Shared };
    let slots: SmallVec<[u16; 4]> = keys.iter().map(|&i| key_slot(&cmd.args()[i])).collect();
    // The slots are hashed once: CRC16 of every key is a good part of routing a command.
    let kind = match same_slot(slots.iter().copied()) {
        Ok(_) => None,
        Err(crossslot) => match multikey::merge_kind(spec.name) {
            Some(kind) => Some(kind),
            None => return s.reply(crossslot).await,
        },
    };
    if s.is_readonly() && spec.has(flags::READONLY) && !slots.is_empty() && reads_from_replica(s.shared(), &slots) {
        return s.send_to_node(lane, cmd.raw().clone(), false).await;
    }
    // A command that waited for a switch is forwarded to the slot's new proxy: the client
    // never learns a switch happened.
    let mut waited = false;
    let mut held_since = None;
    loop {
        let mut changes = s.shared().route_changes();
        let blocking = lane == Lane::Private;
        // Blocking commands are not counted: they may wait for as long as their timeout.
        let Some(decision) = plan_counted(s, &slots, !blocking) else { continue };
        match decision {
            Plan::Held => {
                waited = true;
                if let Err(e) = wait_while_held(s, &mut changes, &mut held_since, &slots).await {
                    return s.reply(e).await;
                }
            }
            Plan::Local { migrating } => {
                if migrating && !s.enter_migrating(&slots) {
                    continue;
                }
                return s.send_to_node(lane, cmd.raw().clone(), spec.may_write()).await;
            }
            Plan::Pull(target) => {
                let key_args: Vec<Bytes> = keys.iter().map(|&i| cmd.args()[i].clone()).collect();
                return match pull(s, &target, &key_args).await {
                    Ok(()) => forward(s, &target.proxy, cmd.raw().clone(), blocking).await,
                    Err(e) => s.reply(e).await,
                };
            }
            Plan::Peer(peer, _) if waited || s.forwards() => {
                return forward(s, &peer.proxy, cmd.raw().clone(), blocking).await
            }
            Plan::Peer(peer, slot) => return s.reply(moved(slot, &peer)).await,
            Plan::Unserved => return s.reply(clusterdown()).await,
            Plan::Spread(dests) => {
                let only_ours = dests.iter().all(|(d, _)| !matches!(d, Dest::Peer(_)));
                return match kind {
                    Some(kind) if waited || only_ours || s.forwards() => {
                        split(s, &cmd, kind, &keys, &slots, dests).await
                    }
                    _ => s.reply(crossslot()).await,
                };
            }
        }
    }
}

/// Whether a `READONLY` client's read of `slots` is served by this replica's node: the slots
/// are its master's (and not migrating) and the node follows the master. Otherwise it goes
/// where a write would (`MOVED` to the master), as on a Redis Cluster replica.
fn reads_from_replica(shared: &Shared, slots: &[u16]) -> bool {
    let routes = shared.routes();
    routes.replica_of.is_some()
        && slots.iter().all(|&slot| routes.replica_reads(slot))
        && shared.replica_synced.load(std::sync::atomic::Ordering::Acquire)
}

/// Forwarding a command whose keys live on several proxies: each destination gets its
/// share, the answers are merged in key order.
async fn split(
    s: &mut Session,
    cmd: &Command,
    kind: MergeKind,
    keys: &KeyPositions,
    slots: &[u16],
    dests: Vec<(Dest, Vec<usize>)>,
) -> Flow {
    let mut parts = Vec::with_capacity(dests.len());
    for (dest, ordinals) in dests {
        let positions: Vec<usize> = ordinals.iter().map(|&o| keys[o]).collect();
        let sub = multikey::sub_command(cmd, kind, &positions);
        let rx = match dest {
            Dest::Local => {
                let local: Vec<u16> = ordinals.iter().map(|&o| slots[o]).collect();
                if local.iter().any(|&sl| s.shared().routes().is_migrating(sl)) && !s.enter_migrating(&local) {
                    // The table changed under us: the client retries on the answer.
                    return s.reply(Frame::error("TRYAGAIN sluice: slots are being switched")).await;
                }
                s.send(&To::Node(Lane::Shared), sub.raw().clone()).await
            }
            Dest::Peer(p) => s.send(&To::peer(s.shared(), &p.proxy, false), sub.raw().clone()).await,
            Dest::Pull(t) => {
                let key_args: Vec<Bytes> = positions.iter().map(|&i| cmd.args()[i].clone()).collect();
                if let Err(e) = pull(s, &t, &key_args).await {
                    return s.reply(e).await;
                }
                s.send(&To::peer(s.shared(), &t.proxy, false), sub.raw().clone()).await
            }
        };
        match rx {
            Ok(rx) => parts.push((ordinals, rx)),
            Err(e) => return s.reply(e.to_frame()).await,
        }
    }
    let protocol = s.protocol();
    let total = keys.len();
    let fut = async move {
        let mut results = Vec::with_capacity(parts.len());
        for (ordinals, rx) in parts {
            let reply = match rx.await {
                Ok(r) => r,
                Err(_) => return Frame::error("ERR sluice: reply lost").to_bytes(protocol),
            };
            results.push((ordinals, reply));
        }
        multikey::merge(kind, results, total).to_bytes(protocol)
    };
    s.push(Pending::Future(Box::pin(fut))).await
}

/// Forwards a whole command to the proxy that serves its slot and relays the answer.
async fn forward(s: &mut Session, proxy: &str, data: Bytes, blocking: bool) -> Flow {
    match s.send_counted(&To::peer(s.shared(), proxy, blocking), data).await {
        Ok(rx) => s.push(Pending::Reply(rx)).await,
        Err(e) => s.reply(e.to_frame()).await,
    }
}

/// `DBSIZE`: the node's own count while no migration involves this proxy. During one the node
/// may hold keys of slots served elsewhere (a replica's copy, keys waiting for the garbage
/// collector), so the keys of the slots served here are counted with `SCAN` instead.
pub async fn dbsize(s: &mut Session, cmd: Command) -> Flow {
    if s.shared().routes().config.migrations.is_empty() {
        return s.send_to_node(Lane::Shared, cmd.raw().clone(), false).await;
    }
    s.own_connection().await;
    let shared = s.shared().clone();
    let protocol = s.protocol();
    let fut = async move {
        match count_served_keys(&shared).await {
            Ok(n) => Frame::Integer(n),
            Err(e) => Frame::error(format!("ERR sluice: cannot count the keys: {e}")),
        }
        .to_bytes(protocol)
    };
    s.push(Pending::Future(Box::pin(fut))).await
}

async fn count_served_keys(shared: &Arc<Shared>) -> Result<i64, NodeError> {
    let node = node::connect(shared, &shared.opts.node).await?;
    let mut scan = node.scan_all(1000);
    let mut n = 0;
    while let Some(keys) = scan.next_batch().await? {
        let routes = shared.routes();
        n += keys.iter().filter(|k| routes.holds_live_keys(key_slot(k))).count() as i64;
    }
    Ok(n)
}

/// `SCAN` and `KEYS`: run on the node, then drop every key of a slot this proxy does not
/// serve (keys a migration left behind stay invisible).
pub async fn scan(s: &mut Session, cmd: Command, spec: &'static CommandSpec) -> Flow {
    let shared = s.shared().clone();
    let protocol = s.protocol();
    let is_scan = spec.name == "scan";
    s.send_and_present(cmd.raw().clone(), move |raw| {
        let Ok((frame, _)) = parse_frame(&raw, &Limits::SERVER) else {
            return raw;
        };
        let routes = shared.routes();
        let keep = |keys: Vec<Frame>| -> Vec<Frame> {
            keys.into_iter().filter(|k| k.as_bytes().is_some_and(|b| routes.shows_keys_of(key_slot(b)))).collect()
        };
        let filtered = match (is_scan, frame) {
            (true, Frame::Array(mut parts)) if parts.len() == 2 => {
                let keys = match parts.pop() {
                    Some(Frame::Array(keys)) | Some(Frame::Set(keys)) => keys,
                    _ => return raw,
                };
                parts.push(Frame::Array(keep(keys)));
                Frame::Array(parts)
            }
            (false, Frame::Array(keys)) | (false, Frame::Set(keys)) => Frame::Array(keep(keys)),
            _ => return raw,
        };
        filtered.to_bytes(protocol)
    })
    .await
}

#[cfg(test)]
mod proptests;
