//! Scale planning: which slots move from which node to which, so that every node of the
//! resulting cluster holds an even share of the 16384 slots (sizes differ by at most one).
//!
//! Pure functions of the slot layout; [`crate::ops`] turns the moves into a stored plan and
//! starts its migrations a few at a time.
//!
//! How the moves are chosen, and why:
//! - Targets: `16384 / n` for each of the `n` nodes that stay (joining ones included), and the
//!   `16384 % n` extra slots go to the staying nodes that hold the most now (they then give one
//!   slot less), so fewer slots move.
//! - Givers are the leaving nodes (everything they hold) and the staying nodes above their
//!   target (the excess); receivers are the staying nodes below it. A node is never both, so
//!   every move takes slots its source owns when the plan is made: the moves are independent
//!   of each other and can run in any order.
//! - Both lists are sorted by amount (largest first) and paired off greedily: each move takes
//!   as much as the pair allows, so every (source, destination) pair appears once and there are
//!   at most givers + receivers − 1 moves. With sorted lists a joining node is mostly fed by one
//!   source (one replication import); when it needs two, the second is a keys import.
//! - A giver gives the upper part of its ranges (highest slots first), so what it keeps stays
//!   contiguous where it was.
//! - The moves are listed largest first: the scheduler starts them in that order, so the first
//!   import into an empty node (the one that runs by replication, which copies the whole
//!   source anyway) is the largest one it gets.

use sluice_common::model::SlotRange;
use sluice_common::slot::SLOT_COUNT;

/// One planned migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub src: String,
    pub dst: String,
    /// Sorted, non-overlapping ranges, all owned by `src` when the plan is made.
    pub slots: Vec<SlotRange>,
}

impl Move {
    pub fn len(&self) -> usize {
        self.slots.iter().map(SlotRange::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The slot count each staying node ends with, in the order of `counts` (current counts of
/// the staying nodes, in cluster order, joining nodes last with 0).
pub fn targets(counts: &[usize]) -> Vec<usize> {
    let n = counts.len().max(1);
    let total = usize::from(SLOT_COUNT);
    let (base, extra) = (total / n, total % n);
    let mut order: Vec<usize> = (0..counts.len()).collect();
    // Most slots first; ties keep the cluster order.
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    let mut out = vec![base; counts.len()];
    for &i in order.iter().take(extra) {
        out[i] += 1;
    }
    out
}

/// Plans the moves that leave every staying node with an even share.
///
/// `nodes`: every node of the cluster with the ranges it owns (sorted), in cluster order;
/// `joining`: proxies that join with no slot; `leaving`: nodes (of `nodes`) that give all their
/// slots away. `max_ranges`: the most ranges one migration may list (a move that would list
/// more is split into several moves of the same pair, which then run one after the other).
pub fn plan(
    nodes: &[(String, Vec<SlotRange>)],
    joining: &[String],
    leaving: &[String],
    max_ranges: usize,
) -> Vec<Move> {
    let count = |ranges: &[SlotRange]| ranges.iter().map(SlotRange::len).sum::<usize>();
    // Staying nodes (cluster order, then the joining ones) with their current counts.
    let staying: Vec<(&str, usize)> = nodes
        .iter()
        .filter(|(p, _)| !leaving.contains(p))
        .map(|(p, r)| (p.as_str(), count(r)))
        .chain(joining.iter().map(|p| (p.as_str(), 0)))
        .collect();
    let counts: Vec<usize> = staying.iter().map(|(_, c)| *c).collect();
    let targets = targets(&counts);

    // (proxy, amount, ranges it can give from the top) and (proxy, amount).
    let mut givers: Vec<(&str, usize, Vec<SlotRange>)> = Vec::new();
    let mut receivers: Vec<(&str, usize)> = Vec::new();
    for (p, ranges) in nodes {
        if leaving.contains(p) {
            givers.push((p.as_str(), count(ranges), ranges.clone()));
        }
    }
    for ((p, have), want) in staying.iter().zip(&targets) {
        if have > want {
            let ranges = nodes.iter().find(|(n, _)| n == p).map(|(_, r)| r.clone()).unwrap_or_default();
            givers.push((p, have - want, ranges));
        } else if have < want {
            receivers.push((p, want - have));
        }
    }
    // Largest first; the sort is stable, so ties keep the order above.
    givers.sort_by_key(|g| std::cmp::Reverse(g.1));
    receivers.sort_by_key(|r| std::cmp::Reverse(r.1));

    let mut moves = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < givers.len() && j < receivers.len() {
        let amount = givers[i].1.min(receivers[j].1);
        if amount > 0 {
            let slots = take_top(&mut givers[i].2, amount);
            for chunk in slots.chunks(max_ranges.max(1)) {
                moves.push(Move {
                    src: givers[i].0.to_string(),
                    dst: receivers[j].0.to_string(),
                    slots: chunk.to_vec(),
                });
            }
        }
        givers[i].1 -= amount;
        receivers[j].1 -= amount;
        if givers[i].1 == 0 {
            i += 1;
        }
        if receivers[j].1 == 0 {
            j += 1;
        }
    }
    // Largest first (stable: equal sizes keep the pairing order).
    moves.sort_by_key(|m| std::cmp::Reverse(m.len()));
    moves
}

/// Takes the `n` highest slots of `ranges` (sorted ascending) off its end; answers them sorted.
fn take_top(ranges: &mut Vec<SlotRange>, mut n: usize) -> Vec<SlotRange> {
    let mut out = Vec::new();
    while n > 0 {
        let Some(last) = ranges.last_mut() else { break };
        if last.len() <= n {
            n -= last.len();
            out.push(*last);
            ranges.pop();
        } else {
            // n < len <= 16384, so the cut is inside the range.
            let start = last.end - (n as u16 - 1);
            out.push(SlotRange::new(start, last.end));
            last.end = start - 1;
            n = 0;
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::model::split_slots_evenly;
    use std::collections::BTreeMap;

    fn even(n: usize) -> Vec<(String, Vec<SlotRange>)> {
        split_slots_evenly(n).into_iter().enumerate().map(|(i, r)| (format!("p{i}"), vec![r])).collect()
    }

    /// Applies the moves and answers each staying node's slot count; checks that every move
    /// takes slots its source owned from the start and that no slot is lost or doubled.
    fn apply(nodes: &[(String, Vec<SlotRange>)], joining: &[String], moves: &[Move]) -> BTreeMap<String, usize> {
        let mut owner: Vec<Option<String>> = vec![None; 16384];
        for (p, ranges) in nodes {
            for r in ranges {
                for s in r.slots() {
                    owner[usize::from(s)] = Some(p.clone());
                }
            }
        }
        let before = owner.clone();
        for m in moves {
            assert!(!m.slots.is_empty());
            for r in &m.slots {
                for s in r.slots() {
                    assert_eq!(before[usize::from(s)].as_deref(), Some(m.src.as_str()), "slot {s} of {m:?}");
                    assert_eq!(owner[usize::from(s)].as_deref(), Some(m.src.as_str()), "slot {s} moved twice");
                    owner[usize::from(s)] = Some(m.dst.clone());
                }
            }
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for p in joining {
            counts.insert(p.clone(), 0);
        }
        for o in owner {
            *counts.entry(o.expect("every slot has an owner")).or_default() += 1;
        }
        counts
    }

    fn assert_even(counts: &BTreeMap<String, usize>, n: usize) {
        assert_eq!(counts.len(), n, "{counts:?}");
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 16384);
    }

    fn pairs_are_unique(moves: &[Move]) {
        let mut seen = std::collections::HashSet::new();
        for m in moves {
            assert!(seen.insert((m.src.clone(), m.dst.clone())), "pair twice: {moves:?}");
        }
    }

    #[test]
    fn three_plus_two() {
        let nodes = even(3);
        let joining = vec!["n1".to_string(), "n2".to_string()];
        let moves = plan(&nodes, &joining, &[], 1024);
        let counts = apply(&nodes, &joining, &moves);
        assert_even(&counts, 5);
        assert!(counts.values().all(|c| (3276..=3277).contains(c)), "{counts:?}");
        pairs_are_unique(&moves);
        assert_eq!(moves.len(), 4, "{moves:?}");
        // Each giver gives the top of its range, in one piece per move.
        assert_eq!(moves[0], Move { src: "p0".into(), dst: "n1".into(), slots: vec![SlotRange::new(3277, 5461)] });
        assert!(moves.iter().all(|m| m.slots.len() == 1));
        // Largest first.
        assert!(moves.windows(2).all(|w| w[0].len() >= w[1].len()));
    }

    #[test]
    fn doubling_is_one_move_per_new_node() {
        let nodes = even(2);
        let joining = vec!["n1".to_string(), "n2".to_string()];
        let moves = plan(&nodes, &joining, &[], 1024);
        assert_eq!(
            moves,
            vec![
                Move { src: "p0".into(), dst: "n1".into(), slots: vec![SlotRange::new(4096, 8191)] },
                Move { src: "p1".into(), dst: "n2".into(), slots: vec![SlotRange::new(12288, 16383)] },
            ]
        );
        for (n, add) in [(3, 3), (4, 4), (1, 1), (1, 3), (5, 2), (7, 1)] {
            let nodes = even(n);
            let joining: Vec<String> = (0..add).map(|i| format!("n{i}")).collect();
            let moves = plan(&nodes, &joining, &[], 1024);
            assert_even(&apply(&nodes, &joining, &moves), n + add);
            pairs_are_unique(&moves);
            if add == n {
                assert_eq!(moves.len(), n, "{n}+{add}: {moves:?}");
            }
        }
    }

    #[test]
    fn removing_spreads_the_leavers_over_the_rest() {
        let nodes = even(5);
        let leaving = vec!["p1".to_string(), "p3".to_string()];
        let moves = plan(&nodes, &[], &leaving, 1024);
        let counts = apply(&nodes, &[], &moves);
        assert_eq!(counts.get("p1"), None);
        assert_eq!(counts.get("p3"), None);
        assert_even(&counts, 3);
        pairs_are_unique(&moves);
        assert!(moves.iter().all(|m| !leaving.contains(&m.dst)));
        for n in 2..9 {
            for leave in 1..n {
                let nodes = even(n);
                let leaving: Vec<String> = (0..leave).map(|i| format!("p{}", (i * 3) % n)).collect();
                let mut leaving_unique = leaving.clone();
                leaving_unique.sort();
                leaving_unique.dedup();
                let moves = plan(&nodes, &[], &leaving_unique, 1024);
                let counts = apply(&nodes, &[], &moves);
                assert_even(&counts, n - leaving_unique.len());
                pairs_are_unique(&moves);
            }
        }
    }

    #[test]
    fn uneven_fragmented_layouts_even_out() {
        // Node a holds many small ranges, b one big one, c little.
        let mut a = Vec::new();
        let mut start = 0u16;
        while start < 8000 {
            a.push(SlotRange::new(start, start + 9));
            start += 20;
        }
        let mut b = vec![];
        let mut c = vec![];
        let mut s = 10u16;
        while s < 8000 {
            c.push(SlotRange::new(s, s + 9));
            s += 20;
        }
        b.push(SlotRange::new(8000, 16383));
        let nodes = vec![("a".to_string(), a), ("b".to_string(), b), ("c".to_string(), c)];
        let joining = vec!["d".to_string()];
        let moves = plan(&nodes, &joining, &[], 1024);
        assert_even(&apply(&nodes, &joining, &moves), 4);
        // A tiny range limit splits a move into several of the same pair, still exact.
        let moves = plan(&nodes, &joining, &[], 3);
        assert!(moves.iter().all(|m| m.slots.len() <= 3));
        assert_even(&apply(&nodes, &joining, &moves), 4);
    }

    #[test]
    fn already_even_moves_nothing() {
        assert!(plan(&even(4), &[], &[], 1024).is_empty());
    }

    #[test]
    fn extra_slots_go_to_the_fullest() {
        assert_eq!(targets(&[5462, 5461, 5461, 0, 0]), vec![3277, 3277, 3277, 3277, 3276]);
        assert_eq!(targets(&[0, 10, 0]), vec![5461, 5462, 5461]);
    }
}
