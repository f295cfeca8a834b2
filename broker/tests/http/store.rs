//! The store itself, without HTTP, on both stores: changes survive reopening it, and a
//! refused change writes nothing.

use crate::harness::*;
use sluice_broker::error::ApiError;
use sluice_broker::store::Store;
use sluice_common::api::RegisterProxy;
use sluice_common::model::Epoch;
use std::path::Path;
use std::time::{Duration, Instant};

fn register(store: &Store, port: u16) -> Epoch {
    let req = RegisterProxy {
        address: format!("127.0.0.1:{port}"),
        control_address: format!("127.0.0.1:{}", port + 1000),
        node_address: format!("127.0.0.1:{}", port + 2000),
        peer_address: None,
    };
    let (_, state) = store.mutate(None, |t| t.register_proxy(req)).unwrap();
    state.epoch
}

/// Opens the store of `dir` (sled's flusher thread may keep the file lock a moment after a
/// drop: tried again until a deadline).
fn open(dir: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let etcd_timeout = Duration::from_millis(ETCD_TIMEOUT_MS.parse().expect("ms"));
        match Store::open_spec_with(&store_spec(dir), etcd_timeout) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

both_stores! {
async fn changes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        assert_eq!(register(&store, 6001), 1);
        assert_eq!(register(&store, 6002), 2);
        // Re-registering the same proxy changes nothing.
        assert_eq!(register(&store, 6002), 2);
    }
    let store = open(dir.path());
    let s = store.snapshot();
    assert_eq!(s.epoch, 2);
    assert_eq!(s.proxies.len(), 2);
}
}

both_stores! {
async fn a_refused_change_writes_nothing_and_if_match_guards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    register(&store, 6001);
    let err = store.mutate(Some(7), |t| t.delete_proxy("127.0.0.1:6001")).unwrap_err();
    assert_eq!(err.code, "epoch_mismatch");
    let err = store
        .mutate(None, |t| {
            t.bump();
            Err::<(), _>(ApiError::conflict("no"))
        })
        .unwrap_err();
    assert_eq!(err.code, "conflict");
    assert_eq!(store.snapshot().epoch, 1);
    store.mutate(Some(1), |t| t.delete_proxy("127.0.0.1:6001")).unwrap();
    assert_eq!(store.snapshot().epoch, 2);
    assert!(store.snapshot().proxies.is_empty());
    // Reopened, the store holds exactly that.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.snapshot().epoch, 2);
    assert!(store.snapshot().proxies.is_empty());
}
}

#[test]
fn a_bad_store_is_a_clear_error_at_start() {
    for (args, says) in [
        (vec!["--store", "etcd://no-port"], "missing :port"),
        (vec!["--store", "redis://h:1"], "expected sled:DIR or etcd://"),
        (vec!["--store", "etcd://h:2379/a/b"], "namespace"),
        (vec!["--store", "sled:/tmp/a", "--data-dir", "/tmp/b"], "name two places"),
        (vec!["--store", "etcd://h:2379", "--data-dir", "/tmp/b"], "drop the data dir"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-broker"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("SLUICE_DATA_DIR")
            .env_remove("SLUICE_STORE")
            .env_remove("SLUICE_CONFIG")
            .output()
            .expect("run sluice-broker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
