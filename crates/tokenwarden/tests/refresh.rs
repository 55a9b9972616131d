//! The refresh engine end to end over an in-memory store and a scripted provider: the
//! seed's scenarios, single flight, degradation, classification and the circuit breaker.
//! Time is tokio's paused clock; the wall clock follows it (`TokioClock`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::Store as _;
use tokenwarden::{
    BreakerConfig, BreakerState, ConnectionKey, ConnectionStatus, ErrorCode, FailureClass,
    RefreshConfig, RefreshOptions, Warden,
};
use tokenwarden_testkit::FailingWrites;

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

fn warden(provider: Arc<FakeProvider>) -> Warden {
    warden_with(
        provider,
        BreakerConfig {
            failure_threshold: 100,
            open_for: Duration::from_secs(10),
        },
    )
}

fn warden_with(provider: Arc<FakeProvider>, breaker: BreakerConfig) -> Warden {
    Warden::builder(memory_store())
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .breaker_config(breaker)
        .build()
        .expect("valid warden settings")
}

fn secs(s: i64) -> time::Duration {
    time::Duration::seconds(s)
}

#[tokio::test(start_paused = true)]
async fn successful_forced_refresh_returns_updated_connection() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + secs(3600))),
    )
    .await
    .expect("import");

    let meta = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect("refresh");
    assert_eq!(provider.calls(), 1);
    assert_eq!(meta.expires_at, Some(T0 + secs(3600)));
    assert_eq!(meta.last_refreshed_at, Some(T0));
    assert_eq!(meta.status, ConnectionStatus::Active);
    let stored = w.store().get(&k).await.expect("get").expect("exists");
    assert_eq!(stored.tokens.access_token.expose_secret(), "at-2");
    assert_eq!(
        stored.tokens.refresh_token.expect("rt").expose_secret(),
        "rt-2"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_network_failures_with_backoff_then_succeeds() {
    let provider = FakeProvider::new([transient(), transient(), ok("at-2", None, 3600)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");

    let start = tokio::time::Instant::now();
    let grant = w.get_access_token("u1", "fake", "a1").await.expect("token");
    let waited = start.elapsed();
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 3);
    // Delays 1 s and 2 s, each jittered into [d/2, d].
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(3),
        "{waited:?}"
    );
    // The old refresh token is kept when none comes back.
    let stored = w.store().get(&k).await.expect("get").expect("exists");
    assert_eq!(
        stored.tokens.refresh_token.expect("rt").expose_secret(),
        "rt-1"
    );
}

#[tokio::test(start_paused = true)]
async fn fails_after_max_retries_and_keeps_tokens() {
    let provider = FakeProvider::new([transient()]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(10))))
        .await
        .expect("import");

    let start = tokio::time::Instant::now();
    let err = w.access_token(&k).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert!(!err.reconnect());
    assert_eq!(err.meta().attempts, 4);
    assert_eq!(err.meta().failure, Some(FailureClass::Transient));
    assert_eq!(provider.calls(), 4);
    // 1 + 2 + 4 s, jittered within [3.5 s, 7 s].
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(3500) && waited <= Duration::from_secs(7),
        "{waited:?}"
    );

    let stored = w.store().get(&k).await.expect("get").expect("exists");
    assert_eq!(stored.tokens.access_token.expose_secret(), "at-1");
    assert_eq!(
        stored.tokens.refresh_token.expect("rt").expose_secret(),
        "rt-1"
    );
    assert_eq!(stored.meta.status, ConnectionStatus::Active);
    assert_eq!(stored.meta.consecutive_failures, 1);
    let last = stored.meta.last_error.expect("last error kept");
    assert_eq!(last.code, "TOKEN_REFRESH_ERROR");
    assert!(
        last.message.contains("connection refused"),
        "{}",
        last.message
    );
}

#[tokio::test(start_paused = true)]
async fn custom_retry_options_are_honoured() {
    let provider = FakeProvider::new([transient()]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), None))
        .await
        .expect("import");
    let opts = RefreshOptions {
        max_retries: Some(5),
        initial_delay: Some(Duration::from_millis(100)),
        max_delay: Some(Duration::from_millis(300)),
    };
    let start = tokio::time::Instant::now();
    let err = w.refresh_token(&k, opts).await.expect_err("fails");
    assert_eq!(err.meta().attempts, 6);
    assert_eq!(provider.calls(), 6);
    // 100+200+300+300+300 = 1200 ms at most, half of that at least.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited <= Duration::from_millis(1200),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn auto_refreshes_expired_token_and_serves_fresh_from_then_on() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(60))))
        .await
        .expect("import");
    let grant = w.access_token(&k).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(grant.expires_at, Some(T0 + secs(3600)));
    for _ in 0..10 {
        let again = w.access_token(&k).await.expect("token");
        assert_eq!(again.access_token.expose_secret(), "at-2");
    }
    assert_eq!(provider.calls(), 1, "fresh tokens need no upstream call");
}

#[tokio::test(start_paused = true)]
async fn token_without_expiry_is_never_refreshed_on_demand() {
    let provider = FakeProvider::new([ok("at-2", None, 3600)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), None))
        .await
        .expect("import");
    tokio::time::advance(Duration::from_secs(86_400 * 400)).await;
    assert_eq!(
        w.access_token(&k)
            .await
            .expect("token")
            .access_token
            .expose_secret(),
        "at-1"
    );
    assert_eq!(provider.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn graceful_degradation_serves_unexpired_token_when_refresh_fails() {
    let provider = FakeProvider::new([transient()]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    // Inside the blocking window: the caller waits for the refresh, which fails.
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 + secs(59))))
        .await
        .expect("import");
    let grant = w.access_token(&k).await.expect("degraded token");
    assert_eq!(grant.access_token.expose_secret(), "at-1");
    assert_eq!(provider.calls(), 4);
    let meta = w.connection(&k).await.expect("meta");
    assert_eq!(meta.consecutive_failures, 1, "the failure is recorded");
    assert_eq!(meta.status, ConnectionStatus::Active);
}

#[tokio::test(start_paused = true)]
async fn token_inside_threshold_is_served_at_once_while_refresh_runs() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_secs(2);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + secs(200))),
    )
    .await
    .expect("import");

    let start = tokio::time::Instant::now();
    let grant = w.access_token(&k).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-1");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no waiting for the background refresh"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(provider.calls(), 1);
    assert_eq!(
        w.access_token(&k)
            .await
            .expect("token")
            .access_token
            .expose_secret(),
        "at-2"
    );
}

#[tokio::test(start_paused = true)]
async fn rotation_chain_uses_each_returned_refresh_token() {
    let provider = FakeProvider::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
        ok("at-4", None, 3600),
        ok("at-5", Some("rt-5"), 3600),
    ]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");
    for expected in ["at-2", "at-3", "at-4", "at-5"] {
        let grant = w.access_token(&k).await.expect("token");
        assert_eq!(grant.access_token.expose_secret(), expected);
        // Jump past expiry.
        tokio::time::advance(Duration::from_secs(3601)).await;
    }
    let presented = provider.presented.lock().expect("lock").clone();
    let presented: Vec<_> = presented
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    assert_eq!(presented, ["rt-1", "rt-2", "rt-3", "rt-3"]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_sets_the_delay_and_is_capped() {
    let throttled = |secs| {
        Step::Fail(
            tokenwarden::provider::RefreshFailure::new(
                FailureClass::Transient,
                tokenwarden::provider::FailureKind::Rejected {
                    status: 429,
                    error: "rate_limited".into(),
                    description: None,
                },
            )
            .with_retry_after(Some(Duration::from_secs(secs))),
        )
    };
    let provider = FakeProvider::new([throttled(7), throttled(600), ok("at-2", None, 3600)]);
    let w = Warden::builder(memory_store())
        .provider(provider.clone())
        .clock(Arc::new(TokioClock::new(T0)))
        .refresh_config(RefreshConfig {
            max_retry_after: Duration::from_secs(30),
            ..RefreshConfig::default()
        })
        .build()
        .expect("valid warden settings");
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), None))
        .await
        .expect("import");
    let start = tokio::time::Instant::now();
    w.refresh_token(&k, RefreshOptions::default())
        .await
        .expect("refresh");
    assert_eq!(start.elapsed(), Duration::from_secs(7 + 30));
    assert_eq!(provider.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_makes_one_call_and_marks_needs_reconnect() {
    let provider = FakeProvider::new([rejected(FailureClass::Permanent, "invalid_grant", 400)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");

    let err = w.access_token(&k).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::TokenExpired);
    assert!(err.reconnect());
    assert_eq!(err.meta().provider_error.as_deref(), Some("invalid_grant"));
    assert_eq!(provider.calls(), 1, "no retry on a permanent failure");
    let stored = w
        .store()
        .get(&k)
        .await
        .expect("get")
        .expect("nothing deleted");
    assert_eq!(stored.meta.status, ConnectionStatus::NeedsReconnect);
    assert_eq!(
        stored.tokens.refresh_token.expect("kept").expose_secret(),
        "rt-1"
    );

    // Later callers get the same answer without calling the provider again.
    let again = w.access_token(&k).await.expect_err("still fails");
    assert_eq!(again.code(), ErrorCode::TokenExpired);
    assert!(again.reconnect());
    assert_eq!(provider.calls(), 1);

    // Re-importing (the user reconnected) makes it active again.
    w.import(
        k.clone(),
        import("at-9", Some("rt-9"), Some(T0 + secs(3600))),
    )
    .await
    .expect("import");
    assert_eq!(
        w.access_token(&k)
            .await
            .expect("token")
            .access_token
            .expose_secret(),
        "at-9"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_client_is_a_configuration_error_that_never_marks_the_user() {
    let provider =
        FakeProvider::new([rejected(FailureClass::Configuration, "invalid_client", 401)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");
    let err = w.access_token(&k).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert!(!err.reconnect());
    assert_eq!(err.meta().failure, Some(FailureClass::Configuration));
    assert_eq!(provider.calls(), 1);
    assert_eq!(
        w.connection(&k).await.expect("meta").status,
        ConnectionStatus::Active
    );
}

#[tokio::test(start_paused = true)]
async fn missing_refresh_token_on_expired_token() {
    let provider = FakeProvider::new([ok("x", None, 1)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", None, Some(T0 - secs(1))))
        .await
        .expect("import");
    let err = w.access_token(&k).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::NoRefreshToken);
    assert!(err.reconnect());
    assert_eq!(provider.calls(), 0);
    assert_eq!(
        w.connection(&k).await.expect("meta").status,
        ConnectionStatus::NeedsReconnect
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_connection_is_account_not_found() {
    let w = warden(FakeProvider::new([ok("x", None, 1)]));
    let err = w
        .get_access_token("nobody", "fake", "none")
        .await
        .expect_err("missing");
    assert_eq!(err.code(), ErrorCode::AccountNotFound);
    assert!(!err.reconnect());
    let err = w
        .get_access_token("bad/user", "fake", "a")
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
}

#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_callers_share_one_upstream_call() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_millis(500);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let w = w.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move { w.access_token(&k).await }));
    }
    for t in tasks {
        let grant = t.await.expect("join").expect("token");
        assert_eq!(grant.access_token.expose_secret(), "at-2");
    }
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn forced_refresh_joins_a_refresh_in_flight() {
    let provider = FakeProvider::new([
        ok("at-2", Some("rt-2"), 3600),
        ok("at-3", Some("rt-3"), 3600),
    ]);
    *provider.latency.lock().expect("lock") = Duration::from_millis(500);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");
    let (a, b) = tokio::join!(
        w.access_token(&k),
        w.refresh_token(&k, RefreshOptions::default())
    );
    assert_eq!(a.expect("token").access_token.expose_secret(), "at-2");
    assert_eq!(
        b.expect("refresh").version,
        w.connection(&k).await.expect("meta").version
    );
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fails_fast_and_recovers() {
    let provider = FakeProvider::new([transient()]);
    let w = warden_with(
        provider.clone(),
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        },
    );
    let name = "fake".parse().expect("name");
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), None))
        .await
        .expect("import");
    let policy = RefreshOptions {
        max_retries: Some(10),
        initial_delay: Some(Duration::from_millis(10)),
        max_delay: Some(Duration::from_millis(10)),
    };

    // The caller is cut off in the middle of its retries once the breaker opens.
    let err = w.refresh_token(&k, policy).await.expect_err("fails");
    assert_eq!(provider.calls(), 5);
    assert!(err.is_circuit_open());
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert!(
        err.retry_after()
            .is_some_and(|d| d <= Duration::from_secs(10))
    );
    assert!(matches!(
        w.breaker_state(&name),
        Some(BreakerState::Open { .. })
    ));

    // While open, nobody calls the provider.
    for _ in 0..20 {
        let err = w
            .refresh_token(&k, RefreshOptions::default())
            .await
            .expect_err("open");
        assert!(err.is_circuit_open());
    }
    assert_eq!(provider.calls(), 5);

    // After open_for, one probe goes through; its success closes the breaker.
    tokio::time::advance(Duration::from_secs(10)).await;
    provider.script([ok("at-2", None, 3600)]);
    w.refresh_token(&k, RefreshOptions::default())
        .await
        .expect("probe succeeds");
    assert_eq!(provider.calls(), 6);
    assert_eq!(
        w.breaker_state(&name),
        Some(BreakerState::Closed {
            consecutive_failures: 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_are_not_refreshed_on_every_request() {
    // A 60 s token: the threshold shrinks to 30 s instead of always refreshing.
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 60)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(1))))
        .await
        .expect("import");
    assert_eq!(
        w.access_token(&k)
            .await
            .expect("token")
            .access_token
            .expose_secret(),
        "at-2"
    );
    for _ in 0..25 {
        tokio::time::advance(Duration::from_secs(1)).await;
        w.access_token(&k).await.expect("token");
    }
    assert_eq!(
        provider.calls(),
        1,
        "25 s into a 60 s token no refresh is needed"
    );
    let _ = RetryPolicy::default();
}

#[tokio::test(start_paused = true)]
async fn the_token_cache_stays_bounded() {
    let w = Warden::builder(memory_store())
        .provider(FakeProvider::new([ok("x", None, 3600)]))
        .clock(Arc::new(TokioClock::new(T0)))
        .refresh_config(RefreshConfig {
            cache_max_entries: 10,
            ..RefreshConfig::default()
        })
        .build()
        .expect("valid warden settings");
    for i in 0..50 {
        let k = key(&format!("u{i}"), "a");
        w.import(k.clone(), import(&format!("at-{i}"), Some("rt"), None))
            .await
            .expect("import");
        assert_eq!(
            w.access_token(&k)
                .await
                .expect("token")
                .access_token
                .expose_secret(),
            format!("at-{i}")
        );
        assert!(w.cached_tokens() <= 10, "{} cached", w.cached_tokens());
    }
    assert!(w.cached_tokens() >= 1);
}

/// A warden over a store whose writes can be made to fail, and the store.
fn warden_over_failing_writes(
    provider: Arc<FakeProvider>,
) -> (Warden, Arc<FailingWrites<tokenwarden::store::MemoryStore>>) {
    let store = Arc::new(FailingWrites::new(tokenwarden::store::MemoryStore::new(
        key_ring(),
    )));
    let warden = Warden::builder(store.clone())
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .build()
        .expect("valid warden settings");
    (warden, store)
}

#[tokio::test(start_paused = true)]
async fn a_database_blip_at_commit_is_retried_and_the_rotated_token_kept() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let (w, store) = warden_over_failing_writes(provider.clone());
    let k = key("u", "a");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + secs(3600))),
    )
    .await
    .expect("import");
    // The provider rotates the grant; the first two attempts to store the result fail.
    store.fail_next_writes(2);
    let started = tokio::time::Instant::now();
    let meta = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect("the refresh survives two failed commits");
    assert_eq!(store.failed(), 2);
    assert_eq!(provider.calls(), 1, "the provider is not asked again");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(500),
        "waited 100 ms, then 400 ms"
    );
    let stored = store.get(&k).await.expect("get").expect("there");
    assert_eq!(
        stored
            .tokens
            .refresh_token
            .expect("rotated")
            .expose_secret(),
        "rt-2"
    );
    assert_eq!(stored.meta.version, meta.version);
    let grant = w.access_token(&k).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
}

#[tokio::test(start_paused = true)]
async fn a_database_outage_at_commit_gives_up_after_its_retries() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let (w, store) = warden_over_failing_writes(provider.clone());
    let k = key("u", "a");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + secs(3600))),
    )
    .await
    .expect("import");
    store.fail_next_writes(1000);
    let err = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("the store never comes back");
    assert_eq!(err.code(), ErrorCode::GetTokenError);
    assert_eq!(store.failed(), 4, "one attempt and three retries");
    assert_eq!(provider.calls(), 1);
    let stored = store.get(&k).await.expect("get").expect("there");
    assert_eq!(
        stored.tokens.refresh_token.expect("kept").expose_secret(),
        "rt-1",
        "nothing was written"
    );
}

fn instagram_warden() -> (Warden, ConnectionKey) {
    let config: tokenwarden::provider::ProviderConfig = toml::from_str(
        r#"kind = "instagram"
        refresh_url = "http://127.0.0.1:9/never-called""#,
    )
    .expect("config");
    let http = tokenwarden::provider::HttpClient::new(Default::default()).expect("http");
    let provider = tokenwarden::provider::build("instagram".parse().expect("name"), &config, http)
        .expect("provider");
    let w = Warden::builder(memory_store())
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .build()
        .expect("valid warden settings");
    let k = ConnectionKey::parse("u1", "instagram", "ig-1").expect("key");
    (w, k)
}

#[tokio::test(start_paused = true)]
async fn issue_9_forced_refresh_of_a_young_instagram_token_is_too_early_not_a_failure() {
    let (w, k) = instagram_warden();
    // Issued an hour ago (60-day lifetime, 59 days and 23 hours left).
    let mut request = import("IGQVJ-young", None, Some(T0 + secs(60 * 86_400 - 3600)));
    request.issued_at = Some(T0 - secs(3600));
    w.import(k.clone(), request).await.expect("import");

    let err = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("too early");
    assert_eq!(err.code(), ErrorCode::RefreshTooEarly, "{err:?}");
    assert!(!err.reconnect());
    // Ready 24 h after issue: 23 h from now.
    let wait = err.retry_after().expect("a retry-after hint");
    assert!(
        (Duration::from_secs(23 * 3600 - 60)..=Duration::from_secs(23 * 3600)).contains(&wait),
        "{wait:?}"
    );
    let meta = w.connection(&k).await.expect("connection");
    assert_eq!(meta.status, ConnectionStatus::Active);
    assert_eq!(meta.consecutive_failures, 0, "not a failure");
}

#[tokio::test(start_paused = true)]
async fn issue_9_forced_refresh_of_an_expired_revoked_grant_is_token_expired() {
    let provider = FakeProvider::new([rejected(FailureClass::Permanent, "invalid_grant", 400)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(T0 - secs(10))))
        .await
        .expect("import");

    // Both routes agree: the forced refresh...
    let err = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), ErrorCode::TokenExpired, "{err:?}");
    assert!(err.reconnect());
    assert_eq!(err.meta().provider_error.as_deref(), Some("invalid_grant"));
    // ...and the token request that follows.
    let err = w.access_token(&k).await.expect_err("needs reconnect");
    assert_eq!(err.code(), ErrorCode::TokenExpired, "{err:?}");
    assert!(err.reconnect());
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn forced_refresh_of_a_revoked_grant_still_valid_asks_to_reconnect() {
    let provider = FakeProvider::new([rejected(FailureClass::Permanent, "invalid_grant", 400)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + secs(3600))),
    )
    .await
    .expect("import");
    let err = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError, "{err:?}");
    assert_eq!(err.meta().failure, Some(FailureClass::Permanent));
    assert!(err.reconnect());
}

#[tokio::test(start_paused = true)]
async fn a_refresh_error_carries_the_provider_failure_as_its_source() {
    let provider =
        FakeProvider::new([rejected(FailureClass::Configuration, "invalid_client", 401)]);
    let w = warden(provider);
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + secs(3600))),
    )
    .await
    .expect("import");
    let err = w
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("refused");
    let failure = err.provider_failure().expect("the provider's failure");
    assert!(
        matches!(&failure.kind, tokenwarden::provider::FailureKind::Rejected { error, status: 401, .. } if error == "invalid_client"),
        "{failure:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
}
