//! Editing a node's slot assignments: tagging ranges for a migration, and clearing the tags
//! at its commit or abort. Every edit ends with [`normalize`], so a node's list is always
//! sorted by start and never holds two adjacent pieces that could be one.

use sluice_common::model::{ClusterView, SlotAssignment, SlotRange, SlotTag};
use sluice_common::slot::SLOT_COUNT;

/// Sorts by start and merges neighbours with the same tag and migration.
pub fn normalize(slots: &mut Vec<SlotAssignment>) {
    slots.sort_by_key(|a| (a.start, a.end));
    let mut out: Vec<SlotAssignment> = Vec::with_capacity(slots.len());
    for a in slots.drain(..) {
        match out.last_mut() {
            Some(prev)
                if u32::from(prev.end) + 1 == u32::from(a.start)
                    && prev.tag == a.tag
                    && prev.migration == a.migration =>
            {
                prev.end = a.end;
            }
            _ => out.push(a),
        }
    }
    *slots = out;
}

/// Tags the part of the node's untagged ranges inside `range` as migrating for migration `id`.
/// The caller has checked that every slot of `range` is owned untagged by this node.
pub fn tag_migrating(slots: &mut Vec<SlotAssignment>, range: SlotRange, id: &str) {
    let mut out = Vec::with_capacity(slots.len() + 2);
    for a in slots.drain(..) {
        if a.tag.is_some() || !a.range().overlaps(&range) {
            out.push(a);
            continue;
        }
        if a.start < range.start {
            out.push(SlotAssignment::plain(SlotRange::new(a.start, range.start - 1)));
        }
        out.push(SlotAssignment {
            start: a.start.max(range.start),
            end: a.end.min(range.end),
            tag: Some(SlotTag::Migrating),
            migration: Some(id.to_string()),
        });
        if a.end > range.end {
            out.push(SlotAssignment::plain(SlotRange::new(range.end + 1, a.end)));
        }
    }
    *slots = out;
    normalize(slots);
}

/// Adds `range` as importing for migration `id`.
pub fn tag_importing(slots: &mut Vec<SlotAssignment>, range: SlotRange, id: &str) {
    slots.push(SlotAssignment {
        start: range.start,
        end: range.end,
        tag: Some(SlotTag::Importing),
        migration: Some(id.to_string()),
    });
    normalize(slots);
}

fn is(a: &SlotAssignment, tag: SlotTag, id: &str) -> bool {
    a.tag == Some(tag) && a.migration.as_deref() == Some(id)
}

/// Turns the ranges tagged `tag` for migration `id` back into plain ownership.
pub fn untag(slots: &mut Vec<SlotAssignment>, tag: SlotTag, id: &str) {
    for a in slots.iter_mut().filter(|a| is(a, tag, id)) {
        a.tag = None;
        a.migration = None;
    }
    normalize(slots);
}

/// Drops the ranges tagged `tag` for migration `id`.
pub fn drop_tagged(slots: &mut Vec<SlotAssignment>, tag: SlotTag, id: &str) {
    slots.retain(|a| !is(a, tag, id));
    normalize(slots);
}

/// The untagged ranges of a node.
pub fn untagged(slots: &[SlotAssignment]) -> Vec<SlotRange> {
    slots.iter().filter(|a| a.tag.is_none()).map(SlotAssignment::range).collect()
}

/// Who owns a slot: the node index and the assignment (untagged or migrating) covering it.
pub type Owner<'a> = Option<(usize, &'a SlotAssignment)>;

/// For each slot, its owner. Importing ranges own nothing (the source serves them until the
/// switch). Assignments that fall outside 0..16383 are ignored here; the API never stores one.
pub fn owners(cluster: &ClusterView) -> Vec<Owner<'_>> {
    let mut out: Vec<Owner<'_>> = vec![None; usize::from(SLOT_COUNT)];
    for (i, node) in cluster.nodes.iter().enumerate() {
        for a in node.slots.iter().filter(|a| a.tag != Some(SlotTag::Importing)) {
            if a.range().validate().is_err() {
                continue;
            }
            for s in a.range().slots() {
                out[usize::from(s)] = Some((i, a));
            }
        }
    }
    out
}

/// Number of slots in a list of ranges.
pub fn count(ranges: &[SlotRange]) -> usize {
    ranges.iter().map(SlotRange::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(a: u16, b: u16) -> SlotAssignment {
        SlotAssignment::plain(SlotRange::new(a, b))
    }

    #[test]
    fn tagging_splits_and_untagging_merges_back() {
        let mut s = vec![plain(0, 5461)];
        tag_migrating(&mut s, SlotRange::new(100, 200), "m-1");
        assert_eq!(s.len(), 3);
        assert_eq!((s[1].start, s[1].end, s[1].tag), (100, 200, Some(SlotTag::Migrating)));
        untag(&mut s, SlotTag::Migrating, "m-1");
        assert_eq!(s, vec![plain(0, 5461)]);
    }

    #[test]
    fn tagging_spans_adjacent_pieces() {
        let mut s = vec![plain(0, 10), plain(11, 20)];
        normalize(&mut s);
        assert_eq!(s, vec![plain(0, 20)]);
        let mut s = vec![
            plain(0, 10),
            SlotAssignment { tag: Some(SlotTag::Importing), migration: Some("m-9".into()), ..plain(11, 12) },
            plain(13, 20),
        ];
        tag_migrating(&mut s, SlotRange::new(5, 15), "m-2");
        let tagged: Vec<_> = s.iter().filter(|a| a.migration.as_deref() == Some("m-2")).collect();
        assert_eq!(tagged.len(), 2);
        drop_tagged(&mut s, SlotTag::Migrating, "m-2");
        assert_eq!(untagged(&s), vec![SlotRange::new(0, 4), SlotRange::new(16, 20)]);
    }

    #[test]
    fn the_upper_end_is_safe() {
        let mut s = vec![plain(0, 16383)];
        tag_migrating(&mut s, SlotRange::new(8192, 16383), "m-1");
        assert_eq!(
            s,
            vec![
                plain(0, 8191),
                SlotAssignment { tag: Some(SlotTag::Migrating), migration: Some("m-1".into()), ..plain(8192, 16383) }
            ]
        );
    }
}
