//! The persistent retry queue survives a restart: a scheduled refresh that failed is queued
//! in the SQLite file, the whole app (warden, scheduler, store, pool) is dropped, and a new
//! one over the same file performs the queued retry. Real time, short delays.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::{SqliteStore, Store};
use tokenwarden::{KeyRing, RefreshConfig, SchedulerConfig, Warden};

struct App {
    warden: Warden,
    store: Arc<SqliteStore>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(url: &str, keys: Arc<KeyRing>, provider: Arc<FakeProvider>) -> App {
    let store = Arc::new(SqliteStore::connect(url, keys).await.expect("store"));
    let warden = Warden::builder(store.clone())
        .provider(provider)
        .refresh_config(RefreshConfig {
            retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..RefreshConfig::default()
        })
        .scheduler_config(SchedulerConfig {
            initial_retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(1),
            max_idle: Duration::from_millis(200),
            ..SchedulerConfig::default()
        })
        .build()
        .expect("valid warden settings");
    let (stop, rx) = tokio::sync::oneshot::channel();
    let w = warden.clone();
    let task = tokio::spawn(async move {
        w.run_scheduler(async {
            let _ = rx.await;
        })
        .await;
    });
    App {
        warden,
        store,
        stop,
        task,
    }
}

/// Generous: after five failures in a row the breaker opens for 10 s and defers the queued
/// retry by that much, which the new app then honours.
async fn wait_for(mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queued_retry_happens_after_the_app_is_recreated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/queue.db", dir.path().display());
    let keys = key_ring();
    let provider = FakeProvider::new([transient()]);
    let k = key("u", "a");

    let app = start(&url, keys.clone(), provider.clone()).await;
    let soon = Some(OffsetDateTime::now_utc() + time::Duration::seconds(30));
    app.warden
        .import(k.clone(), import("at-1", Some("rt-1"), soon))
        .await
        .expect("import");
    // The scheduler tries, fails, and queues retries with backoff in the database.
    wait_for(async || {
        app.warden
            .connection(&k)
            .await
            .expect("meta")
            .consecutive_failures
            >= 2
    })
    .await;
    let queued = app.warden.connection(&k).await.expect("meta");
    assert!(queued.next_refresh_at.is_some(), "a retry is queued");
    // Tear the whole app down.
    let _ = app.stop.send(());
    app.task.await.expect("scheduler stops");
    app.store.close().await;
    drop(app.warden);

    // The provider recovers; a new app over the same file picks the retry up.
    provider.script([ok("at-2", Some("rt-2"), 3600)]);
    let calls_before = provider.calls();
    let app = start(&url, keys, provider.clone()).await;
    wait_for(async || {
        app.warden
            .connection(&k)
            .await
            .expect("meta")
            .last_refreshed_at
            .is_some()
    })
    .await;
    let meta = app.warden.connection(&k).await.expect("meta");
    assert_eq!(meta.consecutive_failures, 0);
    assert!(provider.calls() > calls_before);
    let stored = app.store.get(&k).await.expect("get").expect("exists");
    assert_eq!(
        stored.tokens.refresh_token.expect("rt").expose_secret(),
        "rt-2"
    );
    let _ = app.stop.send(());
    app.task.await.expect("scheduler stops");
}
