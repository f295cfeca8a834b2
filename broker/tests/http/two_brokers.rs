//! Two brokers on one etcd: of conflicting changes sent to both at once exactly one wins and
//! the epoch climbs by one per win whichever broker took it; each broker follows the other's
//! changes; a broker SIGKILLed mid-request loses nothing acknowledged; etcd SIGKILLed and
//! restarted loses nothing acknowledged, the brokers answer 503 meanwhile and reconnect.

use crate::etcd::Etcd;
use crate::harness::*;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn store_flags(etcd: &Etcd) -> Vec<String> {
    vec!["--store".into(), etcd.store("two"), "--etcd-timeout-ms".into(), ETCD_TIMEOUT_MS.into()]
}

async fn two(etcd: &Etcd) -> (Broker, Broker) {
    let store = store_flags(etcd);
    (Broker::start(store.clone(), Opts::default()).await, Broker::start(store, Opts::default()).await)
}

/// Waits until `b` has followed the metadata up to `epoch`.
async fn caught_up(b: &Broker, epoch: u64) {
    let deadline = Instant::now() + DEADLINE;
    while b.epoch().await < epoch {
        assert!(Instant::now() < deadline, "broker {} stayed below epoch {epoch}; logs:\n{}", b.base, b.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until both brokers serve the same epoch, and answers it. With no change in flight
/// that is the newest one: the broker that made the last change serves it before it answers,
/// and the other follows. (A broker's reads come from memory, so right after a change through
/// one broker the other may show the previous epoch for a moment.)
async fn settle(a: &Broker, b: &Broker) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (ea, eb) = (a.epoch().await, b.epoch().await);
        if ea == eb {
            return ea;
        }
        assert!(Instant::now() < deadline, "the brokers stayed apart: epochs {ea} and {eb}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The registered proxies' addresses, as `b` lists them.
async fn proxies(b: &Broker) -> BTreeSet<String> {
    b.get("/api/v1/proxies").await.expect(200)["proxies"]
        .as_array()
        .expect("proxies")
        .iter()
        .map(|p| p["address"].as_str().expect("address").to_string())
        .collect()
}

/// Registers `port` through `b` conditioned on `b`'s epoch: (port, answer).
async fn register_if_match(b: &Broker, port: u16) -> (u16, Answer) {
    let epoch = b.epoch().await;
    let tag = format!("\"{epoch}\"");
    let body = registration(port).to_string().into_bytes();
    (port, b.raw(Method::POST, "/api/v1/proxies", Some(body), &[("if-match", tag.as_str())]).await)
}

#[tokio::test]
async fn conditioned_changes_on_two_brokers_exactly_one_wins_each_epoch() {
    let etcd = Etcd::start().await;
    let (a, b) = two(&etcd).await;
    let e0 = a.epoch().await;
    // Six writers, three per broker, each registering proxies conditioned on the epoch its
    // broker shows: several race for every epoch.
    let writer = |broker: &'static str, id: u16| {
        let (a, b) = (&a, &b);
        async move {
            let mut out = Vec::new();
            for i in 0..8 {
                let target = if broker == "a" { a } else { b };
                out.push(register_if_match(target, 7000 + id * 100 + i).await);
            }
            out
        }
    };
    let answers: Vec<(u16, Answer)> =
        join_all([writer("a", 0), writer("a", 1), writer("a", 2), writer("b", 3), writer("b", 4), writer("b", 5)])
            .await
            .into_iter()
            .flatten()
            .collect();
    let mut won = Vec::new();
    let mut lost = 0;
    for (port, answer) in &answers {
        match answer.status.as_u16() {
            201 => won.push((answer.etag.expect("a change answers its epoch"), *port)),
            _ => {
                answer.expect_error(412, "epoch_mismatch");
                lost += 1;
            }
        }
    }
    won.sort();
    let epochs: Vec<u64> = won.iter().map(|(e, _)| *e).collect();
    let expected: Vec<u64> = (e0 + 1..=e0 + won.len() as u64).collect();
    assert_eq!(epochs, expected, "every epoch won exactly once, one after the other ({lost} lost)");
    assert!(!won.is_empty() && lost > 0, "the writers raced: {} won, {lost} lost", won.len());
    let final_epoch = e0 + won.len() as u64;
    assert_eq!(settle(&a, &b).await, final_epoch);
    let registered: BTreeSet<String> = won.iter().map(|(_, p)| addr(*p)).collect();
    assert_eq!(proxies(&a).await, registered);
    assert_eq!(a.model().await, b.model().await, "both brokers serve the same model");
}

#[tokio::test]
async fn conflicting_migrations_and_commits_on_two_brokers() {
    let etcd = Etcd::start().await;
    let (a, b) = two(&etcd).await;
    register_all(&a, 6001..=6008).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 2})).await.expect(201);
    let brokers = [&a, &b];
    for round in 0..3 {
        let epoch = settle(&a, &b).await;
        // Six migrations of the same slots to six free proxies, through both brokers at once.
        let answers = join_all((6003..=6008).enumerate().map(|(i, dst)| {
            brokers[i % 2].post(
                "/api/v1/clusters/shop/migrations",
                json!({"src": addr(6001), "dst": addr(dst), "slots": [[10, 20]]}),
            )
        }))
        .await;
        let won: Vec<&Answer> = answers.iter().filter(|a| a.status == 202).collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        for answer in answers.iter().filter(|a| a.status != 202) {
            answer.expect_error(409, "conflict");
        }
        assert_eq!(won[0].etag, Some(epoch + 1), "round {round}");
        assert_eq!(settle(&a, &b).await, epoch + 1);
        let id = won[0].body["id"].as_str().expect("id").to_string();
        // Both brokers abort it twice at once: one change in all.
        let path = format!("/api/v1/clusters/shop/migrations/{id}/abort");
        let answers = join_all((0..4).map(|i| brokers[i % 2].post(&path, json!({})))).await;
        assert!(answers.iter().all(|a| a.status == 200), "round {round}: {answers:?}");
        assert!(answers.iter().all(|a| a.body["phase"] == "aborted"), "{answers:?}");
        // Every change answers the epoch it read from etcd or committed: one abort bumped.
        assert_eq!(answers.iter().filter_map(|a| a.etag).max(), Some(epoch + 2), "round {round}: {answers:?}");
        assert_eq!(settle(&a, &b).await, epoch + 2, "round {round}: one abort");
    }
    // And a commit sent to both: one bump.
    let epoch = settle(&a, &b).await;
    let m = a
        .post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6003), "slots": [[0, 5]]}))
        .await
        .expect(202)
        .clone();
    let id = m["id"].as_str().expect("id");
    b.post(&format!("/api/v1/clusters/shop/migrations/{id}/progress"), json!({"phase": "switched"})).await.expect(200);
    assert_eq!(settle(&a, &b).await, epoch + 2);
    let path = format!("/api/v1/clusters/shop/migrations/{id}/commit");
    let answers = join_all((0..4).map(|i| brokers[i % 2].post(&path, json!({"epoch": epoch + 1})))).await;
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert_eq!(answers.iter().filter_map(|a| a.etag).max(), Some(epoch + 3), "{answers:?}");
    assert_eq!(settle(&a, &b).await, epoch + 3);
    assert_eq!(a.model().await, b.model().await);
}

#[tokio::test]
async fn a_long_poll_on_one_broker_wakes_on_the_others_change() {
    let etcd = Etcd::start().await;
    let (a, b) = two(&etcd).await;
    let e = b.epoch().await;
    let path = format!("/api/v1/epoch?after={e}&timeout_ms=20000");
    let poll = b.get(&path);
    let change = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.register(6001).await.expect(201);
    };
    let (answer, ()) = tokio::join!(poll, change);
    assert_eq!(answer.expect(200)["epoch"], e + 1);
}

/// Registers `count` proxies from `base` on, one after the other, until the broker is gone;
/// answers the acknowledged ports (and keeps `acked_count` at their number).
async fn write(broker: &Broker, base: u16, count: u16, acked_count: Option<&AtomicUsize>) -> Vec<u16> {
    let mut acked = Vec::new();
    for port in base..base + count {
        let body = Some(registration(port).to_string().into_bytes());
        match broker.try_raw(Method::POST, "/api/v1/proxies", body, &[]).await {
            Ok(answer) if answer.status == 201 => acked.push(port),
            Ok(answer) => panic!("registering {port}: {answer:?}"),
            Err(_) => break, // its broker is gone
        }
        if let Some(c) = acked_count {
            c.store(acked.len(), Ordering::SeqCst);
        }
    }
    acked
}

#[tokio::test]
async fn a_broker_killed_mid_request_loses_nothing_acknowledged() {
    let etcd = Etcd::start().await;
    let (a, b) = two(&etcd).await;
    let pid = a.pid();
    // Writers on both brokers; `a` is SIGKILLed while its writer's requests are in flight.
    let acked_on_a = AtomicUsize::new(0);
    let kill = async {
        let deadline = Instant::now() + DEADLINE;
        while acked_on_a.load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline, "a acknowledged nothing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -KILL {pid}");
    };
    let (on_a, on_b, ()) = tokio::join!(write(&a, 8000, 1000, Some(&acked_on_a)), write(&b, 9000, 40, None), kill);
    assert!(on_a.len() >= 5 && on_a.len() < 1000, "a was killed mid-way: {} acknowledged", on_a.len());
    assert_eq!(on_b.len(), 40, "b kept answering");
    drop(a);
    // A broker started again on the same etcd sees every acknowledged change, and the epoch
    // counts exactly the changes present: nothing was half done.
    let a = Broker::start(store_flags(&etcd), Opts::default()).await;
    let present = proxies(&a).await;
    for port in on_a.iter().chain(&on_b) {
        assert!(present.contains(&addr(*port)), "acknowledged {port} is missing");
    }
    assert_eq!(a.epoch().await, present.len() as u64);
    caught_up(&b, present.len() as u64).await;
    assert_eq!(a.model().await, b.model().await);
}

#[tokio::test]
async fn etcd_killed_and_restarted_loses_nothing_and_the_brokers_reconnect() {
    let mut etcd = Etcd::start().await;
    let (a, b) = two(&etcd).await;
    register_all(&a, 6001..=6004).await;
    b.post("/api/v1/clusters", json!({"name": "shop", "proxies": 3})).await.expect(201);
    let epoch = settle(&a, &b).await;
    assert_eq!(epoch, 5);
    let model = a.model().await;

    etcd.kill();
    // Reads answer the last state; changes answer 503 with a clear error and change nothing.
    for broker in [&a, &b] {
        assert_eq!(broker.model().await, model);
        let message = broker.register(6005).await.expect_error(503, "store_unavailable");
        assert!(message.contains("unreachable") || message.contains("did not confirm"), "{message}");
        assert!(message.contains("etcd://"), "{message}");
    }

    etcd.restart().await;
    // Both reconnect by themselves: a change through each succeeds once etcd answers.
    let deadline = Instant::now() + DEADLINE;
    for (next, broker) in (6005..).zip([&a, &b]) {
        loop {
            let answer = broker.register(next).await;
            // 200: an earlier try whose commit got no answer did commit.
            if answer.status == 201 || answer.status == 200 {
                break;
            }
            answer.expect_error(503, "store_unavailable");
            assert!(Instant::now() < deadline, "broker {} never reconnected; logs:\n{}", broker.base, broker.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Nothing acknowledged was lost, and the epoch went on from where it was.
    let after = a.model().await;
    assert_eq!(after["clusters"], model["clusters"]);
    assert_eq!(settle(&a, &b).await, epoch + 2, "two registrations since");
    let present = proxies(&a).await;
    assert!((6001..=6006).all(|p| present.contains(&addr(p))), "{present:?}");
    // And each broker follows the other's changes again (the watch is back).
    a.post("/api/v1/clusters/shop/migrations", json!({"src": addr(6001), "dst": addr(6005), "slots": [[0, 9]]}))
        .await
        .expect(202);
    caught_up(&b, epoch + 3).await;
    let m: Value = b.get("/api/v1/clusters/shop/migrations/m-1").await.expect(200).clone();
    assert_eq!(m["dst"], addr(6005));
    assert_eq!(a.model().await, b.model().await);
}
