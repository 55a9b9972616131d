//! The seed's property tests (100+ cases each) over the real engine: connection state
//! preserved after a refresh, data preserved on failure, and attempt counting. The backoff
//! and threshold properties live beside their code (`refresh::policy`, `connection`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::{BreakerConfig, ConnectionStatus, FailureClass, RefreshOptions, Warden};

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(f);
}

fn warden(provider: Arc<FakeProvider>) -> Warden {
    Warden::builder(memory_store())
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .breaker_config(BreakerConfig {
            failure_threshold: 1000,
            open_for: Duration::from_secs(1),
        })
        .build()
        .expect("valid warden settings")
}

fn failure_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(transient()),
        Just(rejected(FailureClass::Permanent, "invalid_grant", 400)),
        Just(rejected(FailureClass::Configuration, "invalid_client", 401)),
        Just(rejected(FailureClass::Transient, "server_error", 503)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Seed property 1: a refresh keeps the connection's identity and everything the
    /// provider did not change.
    #[test]
    fn connection_state_preserved_after_refresh(
        user in "[a-zA-Z0-9@._-]{1,40}", account in "[a-zA-Z0-9:._-]{1,40}",
        scopes in proptest::collection::vec("[a-z:.]{1,12}", 0..5),
        handle in "\\PC{0,30}", rotate in any::<bool>(), expires_in in 1u64..10_000_000,
    ) {
        run(async move {
            let provider = FakeProvider::new([ok("new-at", rotate.then_some("new-rt"), expires_in)]);
            let w = warden(provider);
            let k = tokenwarden::ConnectionKey::parse(&user, "fake", &account).expect("key");
            let mut req = import("old-at", Some("old-rt"), Some(T0 - time::Duration::seconds(1)));
            req.scopes = scopes.clone();
            req.metadata = serde_json::json!({"handle": handle});
            let (before, _) = w.import(k.clone(), req).await.expect("import");
            tokio::time::advance(Duration::from_secs(5)).await;
            let after = w.refresh_token(&k, RefreshOptions::default()).await.expect("refresh");
            assert_eq!(after.key, before.key);
            assert_eq!(after.scopes, scopes);
            assert_eq!(after.metadata, before.metadata);
            assert_eq!(after.created_at, before.created_at);
            assert_eq!(after.status, ConnectionStatus::Active);
            assert!(after.version > before.version);
            let now = T0 + Duration::from_secs(5);
            assert_eq!(after.expires_at, Some(now + Duration::from_secs(expires_in)));
            let stored = w.store().get(&k).await.expect("get").expect("exists");
            assert_eq!(stored.tokens.access_token.expose_secret(), "new-at");
            let rt = stored.tokens.refresh_token.expect("refresh token kept");
            assert_eq!(rt.expose_secret(), if rotate { "new-rt" } else { "old-rt" });
        });
    }

    /// Seed property 3: a failed refresh leaves tokens, expiry, scopes and metadata as
    /// they were and deletes nothing.
    #[test]
    fn data_preserved_on_refresh_failure(step in failure_step(), expires_offset in -5000i64..5000) {
        run(async move {
            let provider = FakeProvider::new([step]);
            let w = warden(provider);
            let k = key("u", "a");
            let expires = T0 + time::Duration::seconds(expires_offset);
            let (before, _) = w.import(k.clone(), import("at-1", Some("rt-1"), Some(expires))).await.expect("import");
            let opts = RefreshOptions { max_retries: Some(2), initial_delay: Some(Duration::from_millis(5)), max_delay: Some(Duration::from_millis(5)) };
            assert!(w.refresh_token(&k, opts).await.is_err());
            let _ = w.access_token(&k).await;
            let stored = w.store().get(&k).await.expect("get").expect("never deleted");
            assert_eq!(stored.tokens.access_token.expose_secret(), "at-1");
            assert_eq!(stored.tokens.refresh_token.expect("kept").expose_secret(), "rt-1");
            assert_eq!(stored.meta.expires_at, before.expires_at);
            assert_eq!(stored.meta.scopes, before.scopes);
            assert_eq!(stored.meta.metadata, before.metadata);
            assert!(stored.meta.consecutive_failures >= 1);
            assert!(stored.meta.last_error.is_some());
        });
    }

    /// Seed property 5: attempts = failures before success + 1, bounded by max_retries + 1;
    /// permanent and configuration failures stop at once.
    #[test]
    fn attempt_counting(transient_failures in 0u32..8, max_retries in 0u32..6,
                        then_permanent in any::<bool>()) {
        run(async move {
            let mut steps: Vec<Step> = (0..transient_failures).map(|_| transient()).collect();
            steps.push(if then_permanent {
                rejected(FailureClass::Permanent, "invalid_grant", 400)
            } else {
                ok("at-2", None, 3600)
            });
            let provider = FakeProvider::new(steps);
            let w = warden(provider.clone());
            let k = key("u", "a");
            w.import(k.clone(), import("at-1", Some("rt-1"), None)).await.expect("import");
            let opts = RefreshOptions { max_retries: Some(max_retries), initial_delay: Some(Duration::from_millis(1)), max_delay: Some(Duration::from_millis(8)) };
            let result = w.refresh_token(&k, opts).await;
            let expected_calls = (transient_failures + 1).min(max_retries + 1);
            assert_eq!(provider.calls(), expected_calls);
            let reached_end = transient_failures <= max_retries;
            match result {
                Ok(_) => assert!(reached_end && !then_permanent),
                Err(e) => {
                    assert_eq!(e.meta().attempts, expected_calls);
                    assert!(!reached_end || then_permanent);
                    assert_eq!(e.reconnect(), reached_end && then_permanent);
                }
            }
        });
    }
}
