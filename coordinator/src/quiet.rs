//! Says a repeated problem once. The loop retries everything every round (every 200 ms by
//! default); a proxy that keeps refusing its config or a report the broker keeps refusing
//! would otherwise fill the log with the same line five times a second.

use std::collections::{HashMap, HashSet};

/// The last message logged per (kind, subject): a subject is a proxy address or a migration.
#[derive(Debug, Default, Clone)]
pub struct LogOnce {
    last: HashMap<(&'static str, String), String>,
}

impl LogOnce {
    pub fn new() -> LogOnce {
        LogOnce::default()
    }

    /// True when `message` is news for (`kind`, `subject`): the first time, or different from
    /// the last one. The caller logs it loudly then, quietly otherwise.
    pub fn first(&mut self, kind: &'static str, subject: &str, message: &str) -> bool {
        let key = (kind, subject.to_string());
        if self.last.get(&key).is_some_and(|m| m == message) {
            return false;
        }
        self.last.insert(key, message.to_string());
        true
    }

    /// The problem is over; true when there was one (worth an "ok again" line).
    pub fn clear(&mut self, kind: &'static str, subject: &str) -> bool {
        self.last.remove(&(kind, subject.to_string())).is_some()
    }

    /// Forgets subjects that are gone (deregistered proxies, ended migrations).
    pub fn retain_subjects(&mut self, live: &HashSet<String>) {
        self.last.retain(|(_, subject), _| live.contains(subject));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_once_until_cleared() {
        let mut q = LogOnce::new();
        assert!(q.first("push", "a", "refused"));
        assert!(!q.first("push", "a", "refused"));
        assert!(q.first("push", "b", "refused"), "per subject");
        assert!(q.first("health", "a", "refused"), "per kind");
        assert!(q.first("push", "a", "another"), "a new message is news");
        assert!(q.clear("push", "a"));
        assert!(!q.clear("push", "a"));
        assert!(q.first("push", "a", "another"));
    }

    #[test]
    fn gone_subjects_are_forgotten() {
        let mut q = LogOnce::new();
        q.first("push", "a", "x");
        q.first("push", "b", "x");
        q.retain_subjects(&HashSet::from(["b".to_string()]));
        assert!(q.first("push", "a", "x"));
        assert!(!q.first("push", "b", "x"));
    }
}
