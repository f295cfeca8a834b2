//! The Lua scripts clients ran through this proxy, so a migration can take them along.
//!
//! Redis keeps scripts (`SCRIPT LOAD`, `EVAL`) in a per-node cache that neither replication
//! nor `MIGRATE` copies. A client that runs `EVALSHA` on a slot after it moved would get
//! `NOSCRIPT` from the destination's node, although its script was loaded "in the cluster".
//! The proxy remembers the bodies it passed (bounded: the oldest are forgotten first) and the
//! source of a migration loads them into the destination's node before the slots move.
//! A proxy restarted since a script was loaded does not know it: such a client gets
//! `NOSCRIPT` once, as it would after a resharding of a native Redis Cluster, and cluster
//! clients answer that by loading the script again.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// At most this many scripts are remembered.
const MAX_SCRIPTS: usize = 4096;
/// At most this many bytes of script bodies are remembered.
const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
pub struct Scripts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Body by lowercase hex SHA1 (the name `EVALSHA` uses).
    bodies: HashMap<String, Bytes>,
    /// Insertion order, oldest first, for forgetting.
    order: VecDeque<String>,
    bytes: usize,
}

/// The SHA1 Redis names a script by.
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

impl Scripts {
    /// Remembers a script body seen in `EVAL`/`EVAL_RO`/`SCRIPT LOAD`.
    pub fn remember(&self, body: &Bytes) {
        if body.len() > MAX_BYTES / 4 {
            return;
        }
        let sha = sha1_hex(body);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.bodies.contains_key(&sha) {
            return;
        }
        inner.bytes += body.len();
        inner.bodies.insert(sha.clone(), body.clone());
        inner.order.push_back(sha);
        while inner.order.len() > MAX_SCRIPTS || inner.bytes > MAX_BYTES {
            let Some(old) = inner.order.pop_front() else { break };
            if let Some(b) = inner.bodies.remove(&old) {
                inner.bytes -= b.len();
            }
        }
    }

    /// Every remembered body, oldest first.
    pub fn all(&self) -> Vec<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.order.iter().filter_map(|sha| inner.bodies.get(sha).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_scripts_like_redis_and_forgets_the_oldest() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this.
        assert_eq!(sha1_hex(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let s = Scripts::default();
        for i in 0..MAX_SCRIPTS + 10 {
            s.remember(&Bytes::from(format!("return {i}")));
        }
        s.remember(&Bytes::from("return 20"));
        let all = s.all();
        assert_eq!(all.len(), MAX_SCRIPTS);
        assert_eq!(all[0], Bytes::from("return 10"), "the ten oldest are forgotten");
        assert_eq!(all.last(), Some(&Bytes::from(format!("return {}", MAX_SCRIPTS + 9))));
    }
}
