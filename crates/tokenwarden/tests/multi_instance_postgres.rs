//! Several wardens over one PostgreSQL database, each with its own `PgStore` pool as separate
//! processes would have: one upstream refresh per needed refresh, however many callers and
//! instances ask; a lease owner killed mid-refresh is taken over within 2 s however long its
//! lease (its liveness lock is gone), while an owner whose liveness is unknown keeps the
//! lease until it expires; a lost liveness connection is taken again without losing the
//! refresh in flight; the schedulers of three instances refresh every due connection exactly once; and a write on
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

/// A lease as long as a caller would never wait out: only liveness frees it in time.
const LONG_LEASE: Duration = Duration::from_secs(60);
/// Issue 9's target: another instance takes over a killed owner's refresh within 2 s.
const TAKEOVER: Duration = Duration::from_secs(2);

fn long_lease_warden(store: &Arc<PgStore>, provider: &Arc<FakeProvider>, id: &str) -> Warden {
    let store: Arc<dyn Store> = store.clone();
    Warden::builder(store)
        .provider(provider.clone())
        .instance_id(id)
        .refresh_config(RefreshConfig {
            lease_ttl: LONG_LEASE,
            // Room for a provider that answers slowly on purpose.
            attempt_timeout: Duration::from_secs(10),
            ..refresh_config()
        })
        .build()
        .expect("valid warden settings")
}

/// Runs an instance on a runtime of its own until `until` says it is mid-work, then kills
/// it: the runtime is dropped, its tasks stop where they are and its connections close
/// without a goodbye, as with `kill -9`.
fn run_then_kill<F>(work: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<()>
where
    F: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(work());
        drop(runtime);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn an_owner_killed_mid_refresh_is_taken_over_within_2_s() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_takeover");
    let keys = key_ring();
    let survivor_store = stores_over(&url, &db, &keys, 1).await.remove(0);
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let survivor = long_lease_warden(&survivor_store, &provider, "survivor");
    let k = key("u", "a");
    survivor
        .import(k.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");

    // The victim starts refreshing (its provider never answers)...
    let (victim_running, victim_called) = oneshot::channel::<()>();
    let (kill, killed) = oneshot::channel::<()>();
    let victim = {
        let (url, db, keys, k) = (url.clone(), db.clone(), Arc::clone(&keys), k.clone());
        run_then_kill(move || async move {
            let store = stores_over(&url, &db, &keys, 1).await.remove(0);
            let stuck = FakeProvider::new([ok("at-lost", Some("rt-lost"), 3600)]);
            *stuck.latency.lock().expect("lock") = Duration::from_secs(3600);
            let victim = long_lease_warden(&store, &stuck, "victim");
            tokio::spawn(async move { victim.access_token(&k).await });
            while stuck.calls() == 0 {
                tokio::task::yield_now().await;
            }
            let _ = victim_running.send(());
            let _ = killed.await;
        })
    };
    tokio::time::timeout(Duration::from_secs(10), victim_called)
        .await
        .expect("the victim never called its provider")
        .expect("victim thread");
    // ...while a caller on the survivor waits for it...
    let waiting = {
        let survivor = survivor.clone();
        let k = k.clone();
        tokio::spawn(async move { survivor.access_token(&k).await })
    };
    // ...and is killed.
    let _ = kill.send(());
    tokio::task::spawn_blocking(move || victim.join())
        .await
        .expect("join")
        .expect("victim thread");
    let killed_at = Instant::now();

    let grant = tokio::time::timeout(TAKEOVER, waiting)
        .await
        .expect("the survivor waited for the dead victim's lease")
        .expect("join")
        .expect("token after takeover");
    eprintln!("taken over {:?} after the kill", killed_at.elapsed());
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1, "the survivor refreshed once");
    assert_eq!(
        provider.presented.lock().expect("lock").as_slice(),
        [Some("rt-1".to_owned())]
    );
    drop_schema(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn a_lease_whose_owner_never_registered_waits_for_its_expiry() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_unregistered");
    let stores = stores_over(&url, &db, &key_ring(), 1).await;
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let survivor = warden(&stores[0], &provider, "survivor");
    let k = key("u", "a");
    survivor
        .import(k.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");
    // A process of an older version (no liveness lock, no registration) holds the lease:
    // nobody can tell whether it is alive, so the lease holds until it expires.
    const LEASE: Duration = Duration::from_secs(3);
    // The clock starts before the lease's expiry is computed, so the time spent setting the
    // lease up counts as waiting too (it cannot make the wait look shorter than it was).
    let started = Instant::now();
    let until = OffsetDateTime::now_utc() + LEASE;
    sqlx::query("UPDATE connections SET lease_owner = 'older-version', lease_until = $1")
        .bind(until.unix_timestamp())
        .execute(stores[0].pool())
        .await
        .expect("lease by hand");

    let grant = survivor.access_token(&k).await.expect("token after expiry");
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

/// Whether `owner`'s liveness lock is held, and by which backend.
async fn lock_holder(store: &PgStore, owner: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks AS l JOIN lease_owners AS o ON l.objid::bigint = o.lock_key \
         WHERE o.owner = $1 AND l.locktype = 'advisory' AND l.classid = 1953983606 \
           AND l.objsubid = 2 AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(owner)
    .fetch_optional(store.pool())
    .await
    .expect("read pg_locks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn the_scheduler_claims_rows_whose_owner_is_gone_and_a_takeover_commits_once() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_gone_claims");
    let keys = key_ring();
    let stores = stores_over(&url, &db, &keys, 3).await;
    let now = OffsetDateTime::now_utc();
    let due = now - time::Duration::seconds(30);
    let mut conn = tokenwarden_testkit::sample_connection("u", "fake", "a");
    conn.meta.next_refresh_at = Some(due);
    let (stored, _) = stores[1].put(&conn).await.expect("put");
    conn.meta.version = stored.version;
    let until = now + LONG_LEASE;

    // stores[0] claims it for "dead", alive for now: nobody else gets it.
    let claimed = stores[0]
        .claim_due(now, 10, "dead", until)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert!(lock_holder(&stores[0], "dead").await.is_some());
    assert!(
        stores[1]
            .claim_due(now, 10, "alive", until)
            .await
            .expect("claim")
            .is_empty(),
        "a live owner's lease holds"
    );
    let next = stores[1].next_due().await.expect("next_due");
    assert_eq!(
        next.map(|t| t.unix_timestamp()),
        Some(until.unix_timestamp())
    );

    // Its process dies: the scheduler sees the row due now and claims it.
    stores[0].close().await;
    let reclaimed = eventually(Duration::from_secs(5), || {
        let store = Arc::clone(&stores[1]);
        async move {
            store
                .next_due()
                .await
                .expect("next_due")
                .is_some_and(|t| t <= now)
        }
    })
    .await;
    assert!(
        reclaimed.is_some(),
        "next_due still waits for the dead owner's lease"
    );
    let claimed = stores[1]
        .claim_due(now, 10, "alive", until)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1, "the scheduler takes the dead owner's row");

    // The dead owner's late commit and the new owner's race on the version: one wins.
    let mut theirs = conn.clone();
    theirs.tokens.access_token = tokenwarden::AccessToken::new("at-alive");
    stores[1]
        .update(&theirs)
        .await
        .expect("the new owner commits");
    let mut late = conn.clone();
    late.tokens.access_token = tokenwarden::AccessToken::new("at-dead");
    assert!(
        matches!(
            stores[2].update(&late).await,
            Err(tokenwarden::store::StoreError::Conflict)
        ),
        "a second commit of the same refresh must not land"
    );
    let now_stored = stores[2]
        .get(conn.key())
        .await
        .expect("get")
        .expect("there");
    assert_eq!(now_stored.tokens.access_token.expose_secret(), "at-alive");
    assert_eq!(now_stored.meta.version, stored.version + 1);
    drop_schema(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn a_lost_liveness_connection_is_taken_again_and_the_refresh_still_commits() {
    let url = postgres_url();
    let db = TestDb::fresh("mi_liveness_lost");
    let stores = stores_over(&url, &db, &key_ring(), 2).await;
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_millis(1500);
    let owner = long_lease_warden(&stores[0], &provider, "owner");
    let other_provider = FakeProvider::new([ok("at-other", Some("rt-other"), 3600)]);
    let other = long_lease_warden(&stores[1], &other_provider, "other");
    let k = key("u", "a");
    owner
        .import(k.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");
    let refreshing = {
        let owner = owner.clone();
        let k = k.clone();
        tokio::spawn(async move { owner.access_token(&k).await })
    };
    let started = eventually(Duration::from_secs(5), || {
        let provider = provider.clone();
        async move { provider.calls() == 1 }
    })
    .await;
    assert!(started.is_some(), "the owner never called its provider");

    // A database restart or a proxy cuts the liveness connection mid-refresh.
    let old = lock_holder(&stores[1], "owner").await.expect("held");
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_one(stores[1].pool())
        .await
        .expect("terminate");
    assert!(cut);
    let retaken = eventually(Duration::from_secs(5), || {
        let store = Arc::clone(&stores[1]);
        async move {
            lock_holder(&store, "owner")
                .await
                .is_some_and(|pid| pid != old)
        }
    })
    .await;
    assert!(retaken.is_some(), "the owner did not take its lock again");

    // The refresh in flight commits its rotated grant through the pool...
    let grant = refreshing.await.expect("join").expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    let stored = stores[1].get(&k).await.expect("get").expect("there");
    assert_eq!(
        stored
            .tokens
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        Some("rt-2".to_owned()),
        "the rotated refresh token was stored"
    );
    // ...and the owner is alive again: a lease it takes now is not taken over.
    let now = OffsetDateTime::now_utc();
    assert!(
        stores[0]
            .try_lease(&k, "owner", now, now + LONG_LEASE)
            .await
            .expect("lease")
    );
    assert!(
        !stores[1]
            .try_lease(&k, "other", now, now + LONG_LEASE)
            .await
            .expect("lease"),
        "a live owner's lease was taken over"
    );
    stores[0].release_lease(&k, "owner").await.expect("release");
    let seen = other.access_token(&k).await.expect("token");
    assert_eq!(seen.access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1);
    assert_eq!(other_provider.calls(), 0, "nobody refreshed twice");
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
