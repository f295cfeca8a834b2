//! The metadata as key-value records: the layout every key-value store keeps it in (sled, and
//! etcd under its namespace's prefix),
//! the writes that turn one state into the next, and the state read back from the records.
//!
//! Keys (values are JSON unless said otherwise):
//! - `meta/epoch` → the global epoch, u64 big-endian
//! - `meta/next_migration` → the next migration number, u64 big-endian
//! - `proxy/<address>` → [`ProxyRecord`]
//! - `cluster/<name>` → [`ClusterView`]
//! - `migration/<number, 20 digits>` → [`Migration`]
//! - `scale/<cluster>` → [`ScalePlanRecord`], the cluster's last scale plan

use crate::error::StoreError;
use crate::state::{ProxyRecord, State};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_common::api::{Migration, ScalePlanRecord};
use sluice_common::model::ClusterView;
use std::collections::BTreeMap;

/// The epoch's record. etcd's store also rewrites it with every change (even one that keeps
/// the epoch), so its mod revision names the last change of all: the one its transactions
/// compare.
pub const EPOCH_KEY: &str = "meta/epoch";
const NEXT_MIGRATION_KEY: &str = "meta/next_migration";
const PROXY_PREFIX: &str = "proxy/";
const CLUSTER_PREFIX: &str = "cluster/";
const MIGRATION_PREFIX: &str = "migration/";
const SCALE_PREFIX: &str = "scale/";

/// One write of a transaction: a key and its new value, or `None` to remove it.
pub type Op = (String, Option<Vec<u8>>);

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode { key: key.to_string(), reason: e.to_string() })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })
}

fn decode_u64(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn migration_key(number: u64) -> String {
    format!("{MIGRATION_PREFIX}{number:020}")
}

/// The write of the epoch record.
pub fn epoch_op(epoch: u64) -> Op {
    (EPOCH_KEY.to_string(), Some(epoch.to_be_bytes().to_vec()))
}

/// The writes that turn `old` into `new`, record by record.
pub fn diff(old: &State, new: &State) -> Result<Vec<Op>, StoreError> {
    let mut ops = Vec::new();
    if old.epoch != new.epoch {
        ops.push(epoch_op(new.epoch));
    }
    if old.next_migration != new.next_migration {
        ops.push((NEXT_MIGRATION_KEY.to_string(), Some(new.next_migration.to_be_bytes().to_vec())));
    }
    diff_map(&mut ops, &old.proxies, &new.proxies, |k| format!("{PROXY_PREFIX}{k}"))?;
    diff_map(&mut ops, &old.clusters, &new.clusters, |k| format!("{CLUSTER_PREFIX}{k}"))?;
    diff_map(&mut ops, &old.migrations, &new.migrations, |k| migration_key(*k))?;
    diff_map(&mut ops, &old.scales, &new.scales, |k| format!("{SCALE_PREFIX}{k}"))?;
    Ok(ops)
}

fn diff_map<K: Ord, V: PartialEq + Serialize>(
    ops: &mut Vec<Op>,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> String,
) -> Result<(), StoreError> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let key = key(k);
            let bytes = encode(&key, v)?;
            ops.push((key, Some(bytes)));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(k)) {
        ops.push((key(k), None));
    }
    Ok(())
}

/// The state the records hold, read in any order; a record this broker does not know is
/// skipped with a warning, one it cannot read is an error.
pub fn load<K, V>(records: impl IntoIterator<Item = Result<(K, V), StoreError>>) -> Result<State, StoreError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut state = State::default();
    for item in records {
        let (k, v) = item?;
        let v = v.as_ref();
        let key = String::from_utf8(k.as_ref().to_vec())
            .map_err(|_| StoreError::Corrupt { key: format!("{:?}", k.as_ref()), reason: "key is not UTF-8".into() })?;
        if key == EPOCH_KEY {
            state.epoch = decode_u64(&key, v)?;
        } else if key == NEXT_MIGRATION_KEY {
            state.next_migration = decode_u64(&key, v)?;
        } else if let Some(address) = key.strip_prefix(PROXY_PREFIX) {
            let rec: ProxyRecord = decode(&key, v)?;
            state.proxies.insert(address.to_string(), rec);
        } else if let Some(name) = key.strip_prefix(CLUSTER_PREFIX) {
            let view: ClusterView = decode(&key, v)?;
            state.clusters.insert(name.to_string(), view);
        } else if let Some(number) = key.strip_prefix(MIGRATION_PREFIX) {
            let number: u64 = number
                .parse()
                .map_err(|_| StoreError::Corrupt { key: key.clone(), reason: "bad migration number".into() })?;
            let m: Migration = decode(&key, v)?;
            state.migrations.insert(number, m);
        } else if let Some(name) = key.strip_prefix(SCALE_PREFIX) {
            let plan: ScalePlanRecord = decode(&key, v)?;
            state.scales.insert(name.to_string(), plan);
        } else {
            tracing::warn!(key, "ignoring an unknown key in the metadata store");
        }
    }
    // Belt and braces: the epoch never goes below anything it already stamped.
    let stamped = state
        .clusters
        .values()
        .map(|c| c.epoch)
        .chain(state.migrations.values().map(|m| m.epoch))
        .chain(state.scales.values().map(|p| p.epoch))
        .max()
        .unwrap_or(0);
    state.epoch = state.epoch.max(stamped);
    let highest = state.migrations.keys().next_back().copied().unwrap_or(0);
    state.next_migration = state.next_migration.max(highest + 1);
    Ok(state)
}
