//! Several wardens over one PostgreSQL database, each with its own `PgStore` pool as separate
//! processes would have: one upstream refresh per needed refresh, however many callers and
//! instances ask; a crashed lease owner is taken over once its lease expires; the
//! schedulers of three instances refresh every due connection exactly once; and a write on
//! one instance reaches the others' caches and schedulers by notification.
//!
//! These run on real time (the database is real I/O), with short latencies and leases so
//! each takes a few seconds at most. They need `TOKENWARDEN_TEST_POSTGRES_URL` when built;
//! without it they are reported as ignored (see `build.rs`). Each test uses a schema of its
//! own and drops it when it passes.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use time::OffsetDateTime;
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::{PgStore, Store};
use tokenwarden::{KeyRing, RefreshConfig, SchedulerConfig, Warden};
use tokenwarden_testkit::conformance::TestDb;
use tokenwarden_testkit::postgres_url;
use tokio::sync::oneshot;

/// `n` stores over one schema, each with a pool of its own.
async fn stores_over(url: &str, db: &TestDb, keys: &Arc<KeyRing>, n: usize) -> Vec<Arc<PgStore>> {
    let mut stores = Vec::new();
    for _ in 0..n {
        let store = PgStore::connect_in_schema(url, db.name(), Arc::clone(keys))
            .await
            .expect("connect");
        stores.push(Arc::new(store));
    }
    stores
}

/// Drops a test's own schema (never anything else).
async fn drop_schema(url: &str, db: &TestDb) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", db.name());
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("drop schema");
}

/// Short attempts and no retries: a lease of `lease_for` = 0.5 s + 5 s margin.
fn refresh_config() -> RefreshConfig {
    RefreshConfig {
        attempt_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
        ..RefreshConfig::default()
    }
}

fn warden(store: &Arc<PgStore>, provider: &Arc<FakeProvider>, id: &str) -> Warden {
    let store: Arc<dyn Store> = store.clone();
    Warden::builder(store)
        .provider(provider.clone())
        .instance_id(id)
        .refresh_config(refresh_config())
        .build()
        .expect("valid warden settings")
}

fn expired() -> Option<OffsetDateTime> {
    Some(OffsetDateTime::now_utc() - time::Duration::seconds(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn three_instances_and_120_callers_make_one_upstream_call() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_callers");
    let stores = stores_over(&url, &db, &key_ring(), 3).await;
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_millis(300);
    let wardens: Vec<Warden> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| warden(store, &provider, &format!("instance-{i}")))
        .collect();
    let k = key("u", "a");
    let (imported, _) = wardens[0]
        .import(k.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");

    let started = Instant::now();
    let tasks: Vec<_> = (0..120)
        .map(|n| {
            let w = wardens[n % 3].clone();
            let k = k.clone();
            tokio::spawn(async move { w.access_token(&k).await })
        })
        .collect();
    for task in tasks {
        let grant = task.await.expect("join").expect("token");
        assert_eq!(grant.access_token.expose_secret(), "at-2");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(provider.calls(), 1, "exactly one upstream refresh");
    assert_eq!(
        provider.presented.lock().expect("lock").as_slice(),
        [Some("rt-1".to_owned())]
    );
    // One commit: the version moved once, and the lease was released with it.
    let stored = stores[2].get(&k).await.expect("get").expect("there");
    assert_eq!(stored.meta.version, imported.version + 1);
    assert_eq!(stored.tokens.access_token.expose_secret(), "at-2");
    let now = OffsetDateTime::now_utc();
    assert!(
        stores[1]
            .try_lease(&k, "someone-else", now, now + Duration::from_secs(60))
            .await
            .expect("lease"),
        "the lease is free after the refresh"
    );
    drop_schema(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn a_dead_owners_lease_expires_and_another_instance_completes_the_refresh() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_takeover");
    let stores = stores_over(&url, &db, &key_ring(), 2).await;
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let survivor = warden(&stores[1], &provider, "survivor");
    let k = key("u", "a");
    survivor
        .import(k.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");
    // Another instance took the lease through its own pool, then died (kill -9) before
    // calling the provider or writing anything.
    const LEASE: Duration = Duration::from_secs(3);
    let now = OffsetDateTime::now_utc();
    assert!(
        stores[0]
            .try_lease(&k, "crashed", now, now + LEASE)
            .await
            .expect("lease")
    );
    stores[0].close().await;

    let started = Instant::now();
    let waiting = {
        let survivor = survivor.clone();
        let k = k.clone();
        tokio::spawn(async move { survivor.access_token(&k).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        provider.calls(),
        0,
        "nobody refreshes while the lease is held"
    );
    let grant = waiting.await.expect("join").expect("token after takeover");
    let waited = started.elapsed();
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1);
    // Leases are stored in whole seconds, so expiry comes up to a second early.
    assert!(
        waited >= LEASE - Duration::from_secs(1) && waited < LEASE + Duration::from_secs(2),
        "{waited:?}"
    );
    drop_schema(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn three_schedulers_refresh_60_due_connections_exactly_once() {
    let url = postgres_url();
    const CONNECTIONS: usize = 60;
    let db = TestDb::fresh("mi_scheduler");
    let stores = stores_over(&url, &db, &key_ring(), 3).await;
    let provider = FakeProvider::new([ok("at-new", Some("rt-new"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_millis(20);
    let wardens: Vec<Warden> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let store: Arc<dyn Store> = store.clone();
            Warden::builder(store)
                .provider(provider.clone())
                .instance_id(format!("scheduler-{i}"))
                .refresh_config(refresh_config())
                .scheduler_config(SchedulerConfig {
                    // Small batches so the three instances interleave their claims.
                    batch_size: 7,
                    concurrency: 4,
                    max_idle: Duration::from_millis(500),
                    ..SchedulerConfig::default()
                })
                .build()
                .expect("valid warden settings")
        })
        .collect();
    for i in 0..CONNECTIONS {
        let refresh = format!("rt-{i}");
        wardens[i % 3]
            .import(
                key("u", &format!("acct-{i:02}")),
                import(&format!("at-{i}"), Some(&refresh), expired()),
            )
            .await
            .expect("import");
    }

    let mut running = Vec::new();
    for w in &wardens {
        let (stop, stopped) = oneshot::channel::<()>();
        let w = w.clone();
        let task = tokio::spawn(async move {
            w.run_scheduler(async {
                let _ = stopped.await;
            })
            .await;
        });
        running.push((stop, task));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (provider.calls() as usize) < CONNECTIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a duplicate the chance to show up before stopping.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for (stop, task) in running {
        let _ = stop.send(());
        task.await.expect("scheduler task");
    }

    assert_eq!(provider.calls() as usize, CONNECTIONS, "one refresh each");
    let presented = provider.presented.lock().expect("lock").clone();
    let distinct: HashSet<_> = presented.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        presented.len(),
        "a refresh token was used twice"
    );
    let want: HashSet<_> = (0..CONNECTIONS).map(|i| Some(format!("rt-{i}"))).collect();
    assert_eq!(distinct, want, "every connection's own refresh token, once");
    for i in 0..CONNECTIONS {
        let conn = stores[0]
            .get(&key("u", &format!("acct-{i:02}")))
            .await
            .expect("get")
            .expect("there");
        assert_eq!(conn.tokens.access_token.expose_secret(), "at-new");
        assert!(
            conn.meta
                .next_refresh_at
                .is_some_and(|at| at > OffsetDateTime::now_utc()),
            "rescheduled into the future"
        );
    }
    drop_schema(&url, &db).await;
}

/// A warden whose cached tokens are trusted for a minute and whose scheduler naps for one:
/// only a change notification can make it notice another instance's write sooner.
fn slow_to_notice(store: &Arc<PgStore>, provider: &Arc<FakeProvider>, id: &str) -> Warden {
    let store: Arc<dyn Store> = store.clone();
    Warden::builder(store)
        .provider(provider.clone())
        .instance_id(id)
        .refresh_config(RefreshConfig {
            cache_ttl: Duration::from_secs(60),
            ..refresh_config()
        })
        .scheduler_config(SchedulerConfig {
            max_idle: Duration::from_secs(60),
            ..SchedulerConfig::default()
        })
        .build()
        .expect("valid warden settings")
}

/// Waits (up to `within`) until `check` holds, polling every 20 ms; how long it took.
async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn a_refresh_on_another_instance_replaces_the_cached_token_at_once() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_notify_cache");
    let stores = stores_over(&url, &db, &key_ring(), 2).await;
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let reader = slow_to_notice(&stores[0], &provider, "reader");
    let refresher = slow_to_notice(&stores[1], &provider, "refresher");
    let k = key("u", "a");
    let valid = Some(OffsetDateTime::now_utc() + time::Duration::hours(1));
    refresher
        .import(k.clone(), import("at-1", Some("rt-1"), valid))
        .await
        .expect("import");
    // The reader caches at-1 (trusted for a minute).
    let first = reader.access_token(&k).await.expect("token");
    assert_eq!(first.access_token.expose_secret(), "at-1");

    // Some providers kill the old access token on refresh: the reader must not keep it.
    refresher
        .refresh_token(&k, tokenwarden::RefreshOptions::default())
        .await
        .expect("forced refresh");
    assert_eq!(provider.calls(), 1);
    let noticed = eventually(Duration::from_secs(10), || {
        let reader = reader.clone();
        let k = k.clone();
        async move {
            reader
                .access_token(&k)
                .await
                .is_ok_and(|g| g.access_token.expose_secret() == "at-2")
        }
    })
    .await;
    let noticed = noticed.expect("the reader still serves the replaced token");
    assert!(noticed < Duration::from_secs(5), "{noticed:?}");
    assert_eq!(
        provider.calls(),
        1,
        "the reader read the new token, not refreshed"
    );

    // A delete elsewhere: the cached token goes too.
    refresher.delete(&k).await.expect("delete");
    let gone = eventually(Duration::from_secs(10), || {
        let reader = reader.clone();
        let k = k.clone();
        async move { reader.access_token(&k).await.is_err() }
    })
    .await;
    assert!(
        gone.is_some(),
        "the reader still serves a deleted connection"
    );
    drop_schema(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn an_import_on_another_instance_wakes_the_scheduler() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_notify_sched");
    let stores = stores_over(&url, &db, &key_ring(), 2).await;
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let scheduling = slow_to_notice(&stores[0], &provider, "scheduling");
    let importing = slow_to_notice(&stores[1], &provider, "importing");
    let (stop, stopped) = oneshot::channel::<()>();
    let runner = {
        let scheduling = scheduling.clone();
        tokio::spawn(async move {
            scheduling
                .run_scheduler(async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    // Nothing is scheduled: the loop goes to sleep for max_idle (a minute).
    tokio::time::sleep(Duration::from_millis(300)).await;
    importing
        .import(key("u", "due"), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");
    let refreshed = eventually(Duration::from_secs(10), || {
        let provider = provider.clone();
        async move { provider.calls() == 1 }
    })
    .await;
    let _ = stop.send(());
    runner.await.expect("scheduler");
    let refreshed = refreshed.expect("the sleeping scheduler never noticed the import");
    assert!(refreshed < Duration::from_secs(5), "{refreshed:?}");
    drop_schema(&url, &db).await;
}
