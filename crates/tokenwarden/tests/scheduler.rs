//! The proactive refresh scheduler and the persistent retry queue, on tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::store::{MemoryStore, Store};
use tokenwarden::{BreakerConfig, ConnectionStatus, FailureClass, SchedulerConfig, Warden};
use tokio::sync::oneshot;

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

struct Running {
    warden: Warden,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("scheduler task");
    }
}

fn start(store: Arc<MemoryStore>, provider: Arc<FakeProvider>, breaker: BreakerConfig) -> Running {
    let warden = Warden::builder(store)
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .breaker_config(breaker)
        .scheduler_config(SchedulerConfig {
            batch_size: 50,
            ..SchedulerConfig::default()
        })
        .build()
        .expect("valid warden settings");
    let (tx, rx) = oneshot::channel();
    let w = warden.clone();
    let task = tokio::spawn(async move {
        w.run_scheduler(async {
            let _ = rx.await;
        })
        .await;
    });
    Running {
        warden,
        stop: Some(tx),
        task,
    }
}

fn no_breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 10_000,
        open_for: Duration::from_secs(1),
    }
}

#[tokio::test(start_paused = true)]
async fn due_token_is_refreshed_ahead_of_the_threshold_without_any_caller() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let run = start(memory_store(), provider.clone(), no_breaker());
    let k = key("u", "a");
    let mut req = import("at-1", Some("rt-1"), Some(T0 + time::Duration::hours(1)));
    req.issued_at = Some(T0);
    run.warden.import(k.clone(), req).await.expect("import");

    // 49 minutes in: not yet (lead is 10 minutes, minus up to 2 minutes of jitter).
    tokio::time::sleep(Duration::from_secs(47 * 60)).await;
    assert_eq!(provider.calls(), 0);
    // By 50 minutes it has happened: before the 5-minute on-demand threshold.
    tokio::time::sleep(Duration::from_secs(3 * 60 + 1)).await;
    assert_eq!(provider.calls(), 1);
    let meta = run.warden.connection(&k).await.expect("meta");
    assert!(meta.last_refreshed_at.expect("refreshed") <= T0 + time::Duration::minutes(50));
    // And the next one is scheduled an hour after that.
    assert!(meta.next_refresh_at.expect("scheduled") > T0 + time::Duration::minutes(90));
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_connections_that_expire_together() {
    let store = memory_store();
    let w = Warden::builder(store.clone())
        .provider(FakeProvider::new([ok("x", None, 3600)]))
        .clock(Arc::new(TokioClock::new(T0)))
        .build()
        .expect("valid warden settings");
    for i in 0..1000 {
        let mut req = import("at", Some("rt"), Some(T0 + time::Duration::hours(1)));
        req.issued_at = Some(T0);
        w.import(key(&format!("user-{i}"), "a"), req)
            .await
            .expect("import");
    }
    let page = store
        .list(&tokenwarden::store::ListQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list");
    let mut due: Vec<i64> = page
        .items
        .iter()
        .map(|m| (m.next_refresh_at.expect("scheduled") - T0).whole_milliseconds() as i64)
        .collect();
    due.sort_unstable();
    let spread = due[due.len() - 1] - due[0];
    assert!(
        spread >= 100_000,
        "spread over at least 100 s, got {spread} ms"
    );
    // No second holds more than 2% of them.
    let mut per_second = std::collections::HashMap::<i64, u32>::new();
    for d in &due {
        *per_second.entry(d / 1000).or_default() += 1;
    }
    let max = per_second.values().copied().max().expect("values");
    assert!(max <= 20, "{max} connections due in one second");
}

#[tokio::test(start_paused = true)]
async fn the_provider_rate_limit_is_never_exceeded() {
    let provider = FakeProvider::new([ok("at-2", None, 86_400)]);
    *provider.rate_limit.lock().expect("lock") = Some(5);
    let run = start(memory_store(), provider.clone(), no_breaker());
    for i in 0..40 {
        let k = key(&format!("u{i}"), "a");
        run.warden
            .import(
                k,
                import("at-1", Some("rt-1"), Some(T0 + time::Duration::seconds(30))),
            )
            .await
            .expect("import");
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(provider.calls(), 40, "all were refreshed");
    let times = provider.call_times.lock().expect("lock").clone();
    for window in times.windows(6) {
        assert!(
            window[5] - window[0] >= Duration::from_secs(1),
            "6 calls within one second"
        );
    }
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_defers_work_instead_of_hammering() {
    let provider = FakeProvider::new([transient()]);
    let run = start(
        memory_store(),
        provider.clone(),
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        },
    );
    for i in 0..50 {
        let k = key(&format!("u{i}"), "a");
        run.warden
            .import(
                k,
                import("at-1", Some("rt-1"), Some(T0 + time::Duration::seconds(60))),
            )
            .await
            .expect("import");
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    // 5 failures open it, then at most one probe per 30 s (10 in 300 s).
    let calls = provider.calls();
    assert!(
        calls <= 5 + 11,
        "{calls} upstream calls while the provider was down"
    );
    assert!(calls >= 6, "probes still go out: {calls}");

    // The provider comes back: everything gets refreshed.
    provider.script([ok("at-2", Some("rt-2"), 3600)]);
    tokio::time::sleep(Duration::from_secs(1200)).await;
    let page = run.warden.list(&Default::default()).await.expect("list");
    assert_eq!(page.items.len(), 50);
    for m in &page.items {
        assert_eq!(m.status, ConnectionStatus::Active);
        assert!(m.last_refreshed_at.is_some(), "{} was refreshed", m.key);
    }
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn queued_retries_back_off_persist_and_survive_a_restart() {
    let store = memory_store();
    let provider = FakeProvider::new([transient()]);
    let run = start(store.clone(), provider.clone(), no_breaker());
    let k = key("u", "a");
    run.warden
        .import(
            k.clone(),
            import("at-1", Some("rt-1"), Some(T0 + time::Duration::seconds(30))),
        )
        .await
        .expect("import");
    tokio::time::sleep(Duration::from_secs(40)).await;
    let first = run.warden.connection(&k).await.expect("meta");
    assert!(first.consecutive_failures >= 1);
    let failures_before = first.consecutive_failures;
    let next = first
        .next_refresh_at
        .expect("a retry is queued in the store");
    run.stop().await;

    // "Restart": a new warden over the same store, with the provider healthy again.
    provider.script([ok("at-2", Some("rt-2"), 3600)]);
    let calls_before = provider.calls();
    let run = start(store.clone(), provider.clone(), no_breaker());
    tokio::time::sleep(Duration::from_secs(700)).await;
    assert!(
        provider.calls() > calls_before,
        "the queued retry ran after the restart"
    );
    let meta = run.warden.connection(&k).await.expect("meta");
    assert!(meta.last_refreshed_at.is_some_and(|at| at >= next));
    assert_eq!(meta.consecutive_failures, 0);
    assert!(failures_before >= 1);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_delays_grow_between_queued_attempts() {
    let provider = FakeProvider::new([transient()]);
    let run = start(memory_store(), provider.clone(), no_breaker());
    let k = key("u", "a");
    run.warden
        .import(
            k.clone(),
            import("at-1", Some("rt-1"), Some(T0 + time::Duration::hours(10))),
        )
        .await
        .expect("import");
    // Force it due now.
    run.warden
        .refresh_token(&k, Default::default())
        .await
        .expect_err("fails");
    tokio::time::sleep(Duration::from_secs(3000)).await;
    let times = provider.call_times.lock().expect("lock").clone();
    // Group calls into refreshes (4 attempts each, seconds apart) and check the gaps grow.
    let mut starts = vec![times[0]];
    for w in times.windows(2) {
        if w[1] - w[0] > Duration::from_secs(20) {
            starts.push(w[1]);
        }
    }
    assert!(
        starts.len() >= 4,
        "several queued retries: {}",
        starts.len()
    );
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.last().expect("gap") > gaps.first().expect("gap"),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(600 + 60)),
        "capped: {gaps:?}"
    );
    let meta = run.warden.connection(&k).await.expect("meta");
    assert_eq!(
        meta.status,
        ConnectionStatus::Active,
        "transient failures never mark reconnect"
    );
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_ends_the_retries() {
    let provider = FakeProvider::new([rejected(FailureClass::Permanent, "invalid_grant", 400)]);
    let run = start(memory_store(), provider.clone(), no_breaker());
    let k = key("u", "a");
    run.warden
        .import(
            k.clone(),
            import("at-1", Some("rt-1"), Some(T0 + time::Duration::seconds(30))),
        )
        .await
        .expect("import");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(provider.calls(), 1);
    let meta = run.warden.connection(&k).await.expect("meta");
    assert_eq!(meta.status, ConnectionStatus::NeedsReconnect);
    assert_eq!(meta.next_refresh_at, None);
    run.stop().await;
}
