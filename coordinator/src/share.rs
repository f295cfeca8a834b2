//! Several coordinators split the proxies among themselves instead of all polling all.
//!
//! Each coordinator heartbeats `PUT /api/v1/coordinators/{id}` and gets the live ones back;
//! a share key goes to the coordinator with the highest rendezvous weight (highest random
//! weight of key × coordinator id), so when one stops answering only its keys move, each to
//! the live coordinator that is next by weight, and every coordinator computes the same split
//! without talking to the others.
//!
//! The key is the proxy's cluster, not the proxy: a cluster's failover and migration
//! decisions need the Status of all its proxies at once (a master and its replicas, a
//! migration's source and destination), so one coordinator must see them all. A free proxy
//! that is the source or destination of a migration goes with that migration's cluster; any
//! other free proxy is its own key.
//!
//! Being wrong is safe either way: two coordinators that both take a cluster (one's list is a
//! heartbeat old) do what the design already allows (stateless, idempotent, commits
//! conditioned on the epoch), and a coordinator that cannot heartbeat takes everything.

use sluice_common::api::ProxyConfigEntry;

/// The share key of one proxy (see the module doc).
pub fn key(entry: &ProxyConfigEntry) -> &str {
    if let Some(c) = &entry.config.cluster {
        return &c.name;
    }
    match entry.config.migrations.first() {
        Some(m) => &m.cluster,
        None => &entry.proxy.address,
    }
}

/// The share key of a cluster's own decisions (failover, migrations).
pub fn cluster_key(cluster: &str) -> &str {
    cluster
}

/// The rendezvous weight of `key` on `coordinator`: FNV-1a of both (kept apart by a byte no
/// name holds) through the splitmix64 finaliser, so similar names get unrelated weights.
pub fn weight(key: &str, coordinator: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(std::iter::once(0xff)).chain(coordinator.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Which live coordinators there are, and who this one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    me: String,
    /// The live coordinators (this one among them), as the broker answered the last heartbeat;
    /// empty when it is unknown: then this coordinator takes everything.
    live: Vec<String>,
}

impl Share {
    pub fn new(me: impl Into<String>) -> Share {
        Share { me: me.into(), live: Vec::new() }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn live(&self) -> &[String] {
        &self.live
    }

    /// Takes the broker's list; answers whether the split changed. A list without this
    /// coordinator (its heartbeat expired meanwhile) counts as unknown.
    pub fn set_live(&mut self, mut live: Vec<String>) -> bool {
        live.sort();
        live.dedup();
        if !live.contains(&self.me) {
            live.clear();
        }
        let changed = live != self.live;
        self.live = live;
        changed
    }

    /// Whether this coordinator takes `key`.
    pub fn owns(&self, key: &str) -> bool {
        if self.live.len() <= 1 {
            return true;
        }
        let best = self.live.iter().max_by_key(|c| (weight(key, c), c.as_str()));
        best.is_some_and(|c| *c == self.me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(me: &str, live: &[&str]) -> Share {
        let mut s = Share::new(me);
        s.set_live(live.iter().map(|c| c.to_string()).collect());
        s
    }

    #[test]
    fn alone_or_unknown_takes_everything() {
        assert!(Share::new("a").owns("shop"));
        assert!(share("a", &["a"]).owns("shop"));
        assert!(share("a", &["b", "c"]).owns("shop"), "a list without me is no list");
    }

    #[test]
    fn every_key_has_exactly_one_owner_and_the_split_is_even() {
        let ids = ["c-1", "c-2", "c-3", "c-4"];
        let shares: Vec<Share> = ids.iter().map(|me| share(me, &ids)).collect();
        let mut counts = [0usize; 4];
        for k in 0..4000 {
            let key = format!("cluster-{k}");
            let owners: Vec<usize> = (0..4).filter(|i| shares[*i].owns(&key)).collect();
            assert_eq!(owners.len(), 1, "{key}: {owners:?}");
            counts[owners[0]] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven split: {counts:?}");
        }
    }

    #[test]
    fn a_coordinator_that_leaves_moves_only_its_own_keys() {
        let all = ["c-1", "c-2", "c-3"];
        let before: Vec<Share> = all.iter().map(|me| share(me, &all)).collect();
        let after: Vec<Share> = all[..2].iter().map(|me| share(me, &all[..2])).collect();
        for k in 0..2000 {
            let key = format!("127.0.0.1:{k}");
            for i in 0..2 {
                if before[i].owns(&key) {
                    assert!(after[i].owns(&key), "{key} moved away from {}", all[i]);
                }
            }
            assert!(after.iter().any(|s| s.owns(&key)), "{key} has no owner after c-3 left");
        }
    }
}
