//! Property tests of routing by slot (issue 22): any argument vector through what
//! `dispatch`/`keyed` decide before any I/O (lookup, arity, refusal, key finding, slot, the
//! plan over a route table with every kind of route) gets an answer or a clear error, never a
//! panic; and a plan sends every key somewhere, once.

use super::*;
use crate::state::testing::shared_configured_proxy;
use proptest::prelude::*;
use sluice_common::slot::SLOT_COUNT;

fn argument() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "0", "1", "2", "-1", "9223372036854775807", "01", "STREAMS", "KEYS", "STORE", "BY", "GET", "#", "nosort",
            "LIMIT", "db", "{a}x", "{b}y", "key:1", "key:2", "key:3", "",
        ])
        .prop_map(|s: &str| Bytes::copy_from_slice(s.as_bytes())),
        2 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let names = command::all().iter().map(|c| c.name).collect::<Vec<_>>();
    let name = prop_oneof![
        4 => prop::sample::select(names).prop_map(|n| n.split('|').map(|p| Bytes::copy_from_slice(p.as_bytes())).collect()),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(|b| vec![Bytes::from(b)]),
    ];
    (name, prop::collection::vec(argument(), 0..10)).prop_map(|(mut args, rest): (Vec<Bytes>, _)| {
        args.extend(rest);
        Command::new(args)
    })
}

fn is_error_line(f: &Frame) -> bool {
    matches!(f, Frame::Error(e) if !e.is_empty() && !e.contains(&b'\r') && !e.contains(&b'\n'))
}

/// Checks a plan against the table it was made with.
fn check_plan(routes: &RouteTable, slots: &[u16], from_peer: bool, plan: &Plan) -> Result<(), TestCaseError> {
    let route = |s: u16| routes.route_for(s, from_peer);
    match plan {
        Plan::Held => prop_assert!(slots.iter().any(|&s| route(s) == Route::Held)),
        Plan::Unserved => prop_assert!(slots.iter().any(|&s| route(s) == Route::Unserved)),
        Plan::Local { .. } => prop_assert!(slots.iter().all(|&s| route(s) == Route::Local)),
        Plan::Peer(p, slot) => {
            prop_assert!(slots.contains(slot));
            prop_assert!(slots.iter().all(|&s| matches!(route(s), Route::Peer(q) if q.proxy == p.proxy)));
        }
        Plan::Pull(t) => prop_assert!(slots.iter().all(|&s| matches!(route(s), Route::Pull(u) if u == t))),
        Plan::Spread(dests) => {
            prop_assert!(dests.len() > 1);
            let mut ordinals: Vec<usize> = dests.iter().flat_map(|(_, o)| o.iter().copied()).collect();
            ordinals.sort_unstable();
            prop_assert_eq!(ordinals, (0..slots.len()).collect::<Vec<_>>(), "every key goes somewhere, once");
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_command_is_routed_or_refused(cmd in command(), from_peer in any::<bool>()) {
        let (_, shared) = shared_configured_proxy();
        let routes = shared.routes_full();
        let Some(spec) = command::lookup(&cmd) else {
            return Ok(()); // `dispatch` answers "unknown command"
        };
        if (spec.has_subcommands && cmd.len() > 1) || !spec.arity_ok(cmd.len()) {
            return Ok(()); // `dispatch` answers before routing
        }
        if let Some(refused) = refusal(&cmd, spec, shared) {
            prop_assert!(is_error_line(&refused), "{:?}", refused);
            return Ok(());
        }
        let keys = match command::key_positions(&cmd, spec) {
            Ok(keys) => keys,
            Err(e) => {
                prop_assert!(e.to_string().starts_with("ERR "));
                return Ok(());
            }
        };
        let slots: Vec<u16> = keys.iter().map(|&i| key_slot(&cmd.args()[i])).collect();
        match single_slot(&cmd, &keys) {
            Ok(Some(slot)) => prop_assert!(slots.iter().all(|&s| s == slot)),
            Ok(None) => prop_assert!(keys.is_empty()),
            Err(e) => {
                prop_assert!(is_error_line(&e));
                prop_assert!(slots.windows(2).any(|w| w[0] != w[1]));
            }
        }
        let decided = plan(&routes, &slots, from_peer);
        check_plan(&routes, &slots, from_peer, &decided)?;
        // A split command's parts hold the keys (and MSET's values) of their destination.
        if let (Plan::Spread(dests), Some(kind)) = (&decided, multikey::merge_kind(spec.name)) {
            for (_, ordinals) in dests {
                let positions: Vec<usize> = ordinals.iter().map(|&o| keys[o]).collect();
                let part = multikey::sub_command(&cmd, kind, &positions);
                prop_assert_eq!(part.name(), cmd.name());
            }
        }
    }

    #[test]
    fn any_slots_get_a_plan(slots in prop::collection::vec(0..SLOT_COUNT, 0..20), from_peer in any::<bool>()) {
        let (_, shared) = shared_configured_proxy();
        let routes = shared.routes_full();
        check_plan(&routes, &slots, from_peer, &plan(&routes, &slots, from_peer))?;
    }
}
