//! Which store the broker keeps its metadata in: `--store sled:DIR` or
//! `--store etcd://HOST:PORT[,HOST:PORT…][/NAMESPACE]`, parsed and checked before anything
//! is opened, so a typo is a clear error at start and never a half-open store.

use crate::state::check_address;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The namespace when the etcd address names none.
pub const DEFAULT_ETCD_NAMESPACE: &str = "default";

/// Where the metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A sled database in this directory: one broker, no other process needed.
    Sled(PathBuf),
    /// An etcd cluster: several brokers may share it.
    Etcd(EtcdSpec),
}

/// An etcd cluster and the namespace of this deployment in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// `host:port` of each member the client may talk to.
    pub endpoints: Vec<String>,
    /// The deployment's name in etcd: its keys are `sluice/<namespace>/…`, so deployments
    /// sharing one etcd never see each other's keys.
    pub namespace: String,
}

impl EtcdSpec {
    /// The prefix of every key of this deployment (ends with `/`, so no namespace's keys are
    /// a prefix of another's).
    pub fn prefix(&self) -> String {
        format!("sluice/{}/", self.namespace)
    }

    /// The endpoints as URLs for the client.
    pub fn urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| format!("http://{e}")).collect()
    }
}

impl fmt::Display for EtcdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}/{}", self.endpoints.join(","), self.namespace)
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Sled(dir) => write!(f, "sled:{}", dir.display()),
            StoreSpec::Etcd(e) => e.fmt(f),
        }
    }
}

/// Namespaces: `[A-Za-z0-9_.-]{1,128}`, not `.` or `..`.
fn valid_namespace(ns: &str) -> bool {
    (1..=128).contains(&ns.len())
        && ns != "."
        && ns != ".."
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreSpec, String> {
        if let Some(dir) = s.strip_prefix("sled:") {
            if dir.is_empty() {
                return Err("--store sled:DIR needs a directory after \"sled:\"".into());
            }
            return Ok(StoreSpec::Sled(PathBuf::from(dir)));
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            return Err(format!("--store {s:?}: expected sled:DIR or etcd://HOST:PORT[,HOST:PORT…][/NAMESPACE]"));
        };
        let (hosts, namespace) = match rest.split_once('/') {
            Some((hosts, ns)) => (hosts, ns),
            None => (rest, DEFAULT_ETCD_NAMESPACE),
        };
        if !valid_namespace(namespace) {
            return Err(format!(
                "--store {s:?}: the namespace {namespace:?} must be 1 to 128 of [A-Za-z0-9_.-] (one path segment)"
            ));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            check_address("--store etcd endpoint", host).map_err(|e| format!("--store {s:?}: {e}"))?;
            if !endpoints.iter().any(|e| e == host) {
                endpoints.push(host.to_string());
            }
        }
        Ok(StoreSpec::Etcd(EtcdSpec { endpoints, namespace: namespace.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!("sled:/var/lib/b".parse(), Ok(StoreSpec::Sled(PathBuf::from("/var/lib/b"))));
        let spec: StoreSpec = "etcd://10.0.0.1:2379,etcd-b:2379/prod".parse().unwrap();
        let StoreSpec::Etcd(e) = spec else { panic!("not etcd") };
        assert_eq!(e.endpoints, vec!["10.0.0.1:2379", "etcd-b:2379"]);
        assert_eq!(e.prefix(), "sluice/prod/");
        assert_eq!(e.urls()[0], "http://10.0.0.1:2379");
        let StoreSpec::Etcd(e) = "etcd://[::1]:2379".parse().unwrap() else { panic!("not etcd") };
        assert_eq!(e.namespace, DEFAULT_ETCD_NAMESPACE);
        assert_eq!(e.to_string(), "etcd://[::1]:2379/default");
    }

    #[test]
    fn refuses_what_it_cannot_use_and_says_why() {
        for (bad, why) in [
            ("sled:", "directory"),
            ("/data", "expected sled:DIR"),
            ("etcd://", "not a valid host:port"),
            ("etcd://h", "missing :port"),
            ("etcd://h:2379,", "not a valid host:port"),
            ("etcd://h:0", "port"),
            ("etcd://h:2379/", "namespace"),
            ("etcd://h:2379/a/b", "namespace"),
            ("etcd://h:2379/..", "namespace"),
            ("http://h:2379", "expected sled:DIR"),
        ] {
            let err = bad.parse::<StoreSpec>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
