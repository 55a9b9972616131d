//! Several wardens (instances) over one shared store: exactly one upstream refresh per
//! needed refresh, and a crashed lease owner is taken over after its lease expires.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::store::Store;
use tokenwarden::{RefreshConfig, Warden};
use tokenwarden_testkit::FailingWrites;

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

fn instance(store: Arc<dyn Store>, provider: Arc<FakeProvider>, id: &str) -> Warden {
    Warden::builder(store)
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .instance_id(id)
        .refresh_config(RefreshConfig {
            attempt_timeout: Duration::from_secs(2),
            ..RefreshConfig::default()
        })
        .build()
        .expect("valid warden settings")
}

#[tokio::test(start_paused = true)]
async fn three_instances_and_150_callers_make_one_upstream_call() {
    let store: Arc<dyn Store> = memory_store();
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_millis(300);
    let instances: Vec<Warden> = (0..3)
        .map(|i| instance(store.clone(), provider.clone(), &format!("i{i}")))
        .collect();
    let k = key("u", "a");
    instances[0]
        .import(
            k.clone(),
            import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(5))),
        )
        .await
        .expect("import");

    let mut tasks = Vec::new();
    for n in 0..150 {
        let w = instances[n % 3].clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move { w.access_token(&k).await }));
    }
    for t in tasks {
        let grant = t.await.expect("join").expect("token");
        assert_eq!(grant.access_token.expose_secret(), "at-2");
    }
    assert_eq!(provider.calls(), 1);
    assert_eq!(
        provider.presented.lock().expect("lock").as_slice(),
        [Some("rt-1".to_owned())]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_owners_lease_expires_and_another_instance_completes_the_refresh() {
    let store: Arc<dyn Store> = memory_store();
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let w = instance(store.clone(), provider.clone(), "survivor");
    let k = key("u", "a");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(5))),
    )
    .await
    .expect("import");
    // An instance took the lease and died (kill -9) before finishing.
    let lease_until = T0 + time::Duration::seconds(20);
    assert!(
        store
            .try_lease(&k, "crashed", T0, lease_until)
            .await
            .expect("lease")
    );

    let start = tokio::time::Instant::now();
    let grant = w.access_token(&k).await.expect("token after takeover");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "{waited:?}"
    );
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_live_owners_result_is_shared_with_waiting_instances() {
    let store: Arc<dyn Store> = memory_store();
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_secs(1);
    let a = instance(store.clone(), provider.clone(), "a");
    let b = instance(store.clone(), provider.clone(), "b");
    let k = key("u", "a");
    a.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(5))),
    )
    .await
    .expect("import");
    let (ra, rb) = tokio::join!(a.access_token(&k), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.access_token(&k).await
    });
    assert_eq!(ra.expect("a").access_token.expose_secret(), "at-2");
    assert_eq!(rb.expect("b").access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1);
}

/// A refresh that outlasts its lease (slow provider) keeps it by renewal: another instance
/// asking meanwhile waits for the result instead of taking over and refreshing again, and
/// the lease is free once the refresh is done.
#[tokio::test(start_paused = true)]
async fn a_refresh_longer_than_its_lease_keeps_it_by_renewal() {
    const LEASE: Duration = Duration::from_secs(3);
    let store: Arc<dyn Store> = memory_store();
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    // Three leases long: without renewal, the lease would lapse twice mid-refresh.
    *provider.latency.lock().expect("lock") = LEASE * 3;
    let slow = |id: &str| {
        Warden::builder(store.clone())
            .provider(provider.clone())
            .clock(Arc::new(TokioClock::new(T0)))
            .instance_id(id)
            .refresh_config(RefreshConfig {
                attempt_timeout: Duration::from_secs(30),
                lease_ttl: LEASE,
                ..RefreshConfig::default()
            })
            .build()
            .expect("valid warden settings")
    };
    let (a, b) = (slow("a"), slow("b"));
    let k = key("u", "a");
    a.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(5))),
    )
    .await
    .expect("import");
    let (ra, rb) = tokio::join!(a.access_token(&k), async {
        // Well past the first lease's expiry.
        tokio::time::sleep(LEASE * 2).await;
        b.access_token(&k).await
    });
    assert_eq!(ra.expect("a").access_token.expose_secret(), "at-2");
    assert_eq!(rb.expect("b").access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1, "b waited for a's refresh");
    // Just after the refresh (9 s in), before any lease taken during it could lapse.
    let now = T0 + time::Duration::seconds(10);
    assert!(
        store
            .try_lease(&k, "c", now, now + time::Duration::seconds(3))
            .await
            .expect("lease"),
        "the lease is free after the refresh"
    );
}

/// A caller waiting for another instance's refresh gets the result when the owner commits
/// (the store reports the change), not at its next look at the database.
#[tokio::test(start_paused = true)]
async fn a_waiting_instance_is_answered_when_the_owner_commits() {
    let store: Arc<dyn Store> = memory_store();
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_secs(1);
    let a = instance(store.clone(), provider.clone(), "a");
    let b = instance(store.clone(), provider.clone(), "b");
    let k = key("u", "a");
    a.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(5))),
    )
    .await
    .expect("import");
    let started = tokio::time::Instant::now();
    let (ra, rb) = tokio::join!(
        async {
            let grant = a.access_token(&k).await;
            (grant, started.elapsed())
        },
        async {
            // Off the 50 ms polling grid: a poll would answer at 1,010 ms, not 1,000.
            tokio::time::sleep(Duration::from_millis(110)).await;
            let grant = b.access_token(&k).await;
            (grant, started.elapsed())
        }
    );
    assert_eq!(ra.0.expect("a").access_token.expose_secret(), "at-2");
    assert_eq!(rb.0.expect("b").access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1);
    assert_eq!(
        ra.1,
        Duration::from_secs(1),
        "a commits after the provider's second"
    );
    assert_eq!(rb.1, ra.1, "b is answered at a's commit");
}

/// A read that comes back after another instance's refresh was reported is not cached: the
/// next ask reads the new token instead of serving the replaced one for `cache_ttl`.
#[tokio::test(start_paused = true)]
async fn a_read_overtaken_by_a_reported_refresh_is_not_cached() {
    let store = Arc::new(FailingWrites::new(tokenwarden::store::MemoryStore::new(
        key_ring(),
    )));
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let a = instance(store.clone(), provider.clone(), "a");
    let b = instance(store.clone(), provider.clone(), "b");
    let k = key("u", "a");
    let valid = Some(T0 + time::Duration::hours(1));
    a.import(k.clone(), import("at-1", Some("rt-1"), valid))
        .await
        .expect("import");
    // a reads at-1, and the answer is slow to come back...
    store.hold_next_read();
    let slow_read = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move { a.access_token(&k).await })
    };
    while !store.is_holding() {
        tokio::task::yield_now().await;
    }
    // ...while b refreshes (the provider revokes at-1) and the change is reported.
    b.refresh_token(&k, tokenwarden::RefreshOptions::default())
        .await
        .expect("refresh on b");
    tokio::time::sleep(Duration::from_millis(1)).await;
    store.release_held();
    let late = slow_read.await.expect("join").expect("token");
    assert_eq!(
        late.access_token.expose_secret(),
        "at-1",
        "read before the refresh"
    );
    let next = a.access_token(&k).await.expect("token");
    assert_eq!(
        next.access_token.expose_secret(),
        "at-2",
        "the late read was not cached"
    );
    assert_eq!(provider.calls(), 1);
}
