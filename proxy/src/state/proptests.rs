//! Property tests of taking a config (issue 22): generated configs, near-valid ones mangled
//! (overlapping ranges, slots ≥ 16384, start > end, unknown or duplicate proxies, huge epochs)
//! and JSON with bytes changed, are taken only when they hold together; anything refused
//! leaves the proxy exactly as it was: the same table, the same overrides.

use super::testing::{config, configured_proxy, NoTasks, ME};
use super::*;
use proptest::prelude::*;
use sluice_common::model::{ReplicaView, SlotAssignment, SlotRange, SlotTag};

#[derive(Debug, Clone)]
enum Change {
    Range { node: usize, at: usize, start: u16, end: u16 },
    Add { node: usize, start: u16, end: u16, tag: Option<SlotTag> },
    DuplicateNode(usize),
    Proxy(String),
    NodeProxy { node: usize, proxy: String },
    Replica { node: usize, proxy: String },
    Epoch(u64),
    NoCluster,
    MigrationSlots { start: u16, end: u16 },
}

fn slot() -> impl Strategy<Value = u16> {
    prop_oneof![prop::sample::select(vec![0u16, 1, 5000, 5001, 6000, 16383, 16384, 40000, u16::MAX]), any::<u16>()]
}

fn proxy_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![ME, "127.0.0.1:6002", "127.0.0.1:6003", "127.0.0.1:6009", "", "ü:0"])
        .prop_map(String::from)
}

fn change() -> impl Strategy<Value = Change> {
    let tag = prop::option::of(prop::sample::select(vec![SlotTag::Migrating, SlotTag::Importing]));
    prop_oneof![
        (0..3usize, 0..3usize, slot(), slot()).prop_map(|(node, at, start, end)| Change::Range {
            node,
            at,
            start,
            end
        }),
        (0..3usize, slot(), slot(), tag).prop_map(|(node, start, end, tag)| Change::Add { node, start, end, tag }),
        (0..3usize).prop_map(Change::DuplicateNode),
        proxy_name().prop_map(Change::Proxy),
        (0..3usize, proxy_name()).prop_map(|(node, proxy)| Change::NodeProxy { node, proxy }),
        (0..3usize, proxy_name()).prop_map(|(node, proxy)| Change::Replica { node, proxy }),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(u64::MAX), any::<u64>()].prop_map(Change::Epoch),
        Just(Change::NoCluster),
        (slot(), slot()).prop_map(|(start, end)| Change::MigrationSlots { start, end }),
    ]
}

fn apply(c: &mut ProxyConfig, change: &Change) {
    let nodes = c.cluster.as_mut().map(|cl| &mut cl.nodes);
    match (change, nodes) {
        (Change::Range { node, at, start, end }, Some(nodes)) => {
            if let Some(a) = nodes.get_mut(*node).and_then(|n| n.slots.get_mut(*at)) {
                (a.start, a.end) = (*start, *end);
            }
        }
        (Change::Add { node, start, end, tag }, Some(nodes)) => {
            if let Some(n) = nodes.get_mut(*node) {
                let migration = tag.map(|_| "m-1".to_string());
                n.slots.push(SlotAssignment { start: *start, end: *end, tag: *tag, migration });
            }
        }
        (Change::DuplicateNode(i), Some(nodes)) => {
            if let Some(n) = nodes.get(*i).cloned() {
                nodes.push(n);
            }
        }
        (Change::NodeProxy { node, proxy }, Some(nodes)) => {
            if let Some(n) = nodes.get_mut(*node) {
                n.proxy = proxy.clone();
            }
        }
        (Change::Replica { node, proxy }, Some(nodes)) => {
            if let Some(n) = nodes.get_mut(*node) {
                n.replicas.push(ReplicaView {
                    proxy: proxy.clone(),
                    node: "r".into(),
                    peer: None,
                    former_master: false,
                });
            }
        }
        (Change::Proxy(p), _) => c.proxy = p.clone(),
        (Change::Epoch(e), _) => c.epoch = *e,
        (Change::NoCluster, _) => c.cluster = None,
        (Change::MigrationSlots { start, end }, _) => {
            if let Some(m) = c.migrations.first_mut() {
                m.slots = vec![SlotRange::new(*start, *end)];
            }
        }
        _ => {}
    }
}

/// A config as JSON, with some bytes changed, inserted or removed.
fn mangled_json() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, any::<u8>());
    prop::collection::vec(edit, 1..4).prop_map(|edits| {
        let mut json = serde_json::to_vec(&config(2)).unwrap_or_default();
        for (at, kind, byte) in edits {
            let i = at.index(json.len() + 1);
            match kind {
                0 if i < json.len() => json[i] = byte,
                1 => json.insert(i, byte),
                _ if i < json.len() => {
                    json.remove(i);
                }
                _ => {}
            }
        }
        json
    })
}

thread_local! {
    /// A proxy that has refused every config offered so far: reused until one is taken (a
    /// fresh proxy per case is slow), which also checks that refusals add up to nothing.
    static UNTOUCHED: std::cell::RefCell<Option<(tokio::runtime::Runtime, Arc<Shared>)>> = const { std::cell::RefCell::new(None) };
}

/// Offers `candidate` to a proxy holding `config(1)` and an override; checks the outcome.
fn offer(candidate: ProxyConfig) -> Result<(), TestCaseError> {
    let (rt, shared) = UNTOUCHED.with(|u| u.borrow_mut().take()).unwrap_or_else(configured_proxy);
    let before = shared.routes_full();
    let valid = candidate.validate().is_ok();
    let fits = candidate.proxy == ME && candidate.epoch > 1;
    let result = rt.block_on(shared.apply_config(candidate.clone(), &NoTasks));
    match result {
        Ok(Applied::Updated { to, .. }) => {
            prop_assert!(valid && fits, "took {:?}", candidate);
            prop_assert_eq!(to, candidate.epoch);
            prop_assert_eq!(&*shared.routes().config, &candidate);
        }
        Ok(Applied::Unchanged) => prop_assert_eq!(&candidate, &*before.config),
        Err(e) => {
            prop_assert!(!valid || !fits, "refused a good config: {}", e);
            // The text is for logs, gRPC and (prefixed by UMCTL SETDB) RESP: no prefix of its own.
            prop_assert!(!e.to_string().starts_with("ERR"), "{}", e);
            prop_assert!(Arc::ptr_eq(&before, &shared.routes_full()), "a refused config changed the table");
            prop_assert!(shared.has_override("m-2"), "a refused config dropped an override");
            UNTOUCHED.with(|u| *u.borrow_mut() = Some((rt, shared)));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn a_config_is_taken_whole_or_not_at_all(changes in prop::collection::vec(change(), 0..4)) {
        let mut candidate = config(2);
        for c in &changes {
            apply(&mut candidate, c);
        }
        offer(candidate)?;
    }

    #[test]
    fn mangled_json_is_refused_or_taken_whole(json in mangled_json()) {
        match serde_json::from_slice::<ProxyConfig>(&json) {
            Ok(candidate) => offer(candidate)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// Regression: a config that failed validation had already dropped the overrides it would
/// replace (here a switch's hold), so the next table rebuild lost them.
#[test]
fn a_refused_config_keeps_the_overrides() {
    let mut bad = config(2);
    if let Some(c) = bad.cluster.as_mut() {
        c.nodes[1].slots.push(SlotAssignment::plain(SlotRange::new(0, 10))); // owned twice
    }
    let (rt, shared) = configured_proxy();
    let err = rt.block_on(shared.apply_config(bad, &NoTasks)).expect_err("slot 0 owned twice");
    assert!(err.to_string().contains("owned by both"), "{err}");
    assert!(shared.has_override("m-2"));
    assert_eq!(shared.routes().route(150), crate::route::Route::Held);
}
