//! Captures every log line (TRACE level, JSON) across success and failure scenarios, plus
//! the Debug and Display forms of everything a caller can print, and asserts that no secret
//! appears in any of it: not the tokens, which go through import, refresh with rotation,
//! transient, configuration, breaker and permanent failures, and a decrypt failure (rows
//! written under a key the reading store does not have); nor the encryption keys.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::store::{MemoryStore, StoreError};
use tokenwarden::{BreakerConfig, Error, ErrorCode, FailureClass, KeyRing, RefreshOptions, Warden};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Imported (one, three), handed out by the provider (two).
const TOKENS: [&str; 6] = [
    "AT-SECRET-one",
    "RT-SECRET-one",
    "AT-SECRET-two",
    "RT-SECRET-two",
    "AT-SECRET-three",
    "RT-SECRET-three",
];

fn ring(id: &str, key: &str) -> Arc<KeyRing> {
    Arc::new(KeyRing::from_base64(id, [(id, key)]).expect("key ring"))
}

/// The error a read of an undecryptable row must give: a 500-class code whose cause is
/// the store's decrypt failure (not, say, "not found").
fn assert_decrypt_failure(result: Result<impl std::fmt::Debug, Error>, what: &str) -> Error {
    let err = result.expect_err(what);
    assert_eq!(err.code(), ErrorCode::GetTokenError, "{what}: {err:?}");
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<StoreError>());
    assert!(
        matches!(source, Some(StoreError::Decrypt)),
        "{what}: caused by a decrypt failure: {err:?}"
    );
    err
}

#[tokio::test(start_paused = true)]
async fn no_secret_reaches_logs_errors_or_debug_output() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut printed = String::new();

    let writing_key = KeyRing::generate_key_base64();
    let other_key = KeyRing::generate_key_base64();
    let store = MemoryStore::new(ring("k1", &writing_key));
    let provider = FakeProvider::new([
        transient(),
        ok("AT-SECRET-two", Some("RT-SECRET-two"), 3600),
        rejected(FailureClass::Transient, "server_error", 503),
        rejected(FailureClass::Configuration, "invalid_client", 401),
        rejected(FailureClass::Permanent, "invalid_grant", 400),
    ]);
    let clock = Arc::new(TokioClock::new(datetime!(2026-11-26 12:00 UTC)));
    let w = Warden::builder(Arc::new(store.sharing(ring("k1", &writing_key))))
        .provider(provider.clone())
        .clock(clock.clone())
        .breaker_config(BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(5),
        })
        .build()
        .expect("valid warden settings");
    let k = key("user", "acct");
    let req = import(
        "AT-SECRET-one",
        Some("RT-SECRET-one"),
        Some(datetime!(2026-11-26 11:00 UTC)),
    );
    printed += &format!("{req:?}");
    w.import(k.clone(), req).await.expect("import");

    // Retry then success with rotation.
    let grant = w.access_token(&k).await.expect("token");
    printed += &format!("{grant:?}");
    // Transient, configuration, breaker, permanent failures.
    for _ in 0..6 {
        tokio::time::advance(Duration::from_secs(7200)).await;
        match w
            .refresh_token(
                &k,
                RefreshOptions {
                    max_retries: Some(1),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(meta) => printed += &format!("{meta:?}"),
            Err(e) => printed += &format!("{e:?} {e}"),
        }
        match w.access_token(&k).await {
            Ok(g) => printed += &format!("{g:?}"),
            Err(e) => printed += &format!("{e:?} {e}"),
        }
    }
    let conn = w.store().get(&k).await.expect("get").expect("exists");
    printed += &format!("{conn:?} {:?}", conn.tokens);
    let presented = provider.presented.lock().expect("lock").clone();
    for rotated in ["RT-SECRET-one", "RT-SECRET-two"] {
        assert!(
            presented.iter().any(|p| p.as_deref() == Some(rotated)),
            "{rotated} went through a refresh: {} calls",
            presented.len()
        );
    }

    // A decrypt failure: a connection written under k1, read by a store that holds only k2,
    // on every path that reads its tokens.
    let k3 = key("user", "acct-3");
    let req = import(
        "AT-SECRET-three",
        Some("RT-SECRET-three"),
        Some(datetime!(2026-11-26 11:00 UTC)),
    );
    printed += &format!("{req:?}");
    w.import(k3.clone(), req).await.expect("import");
    let stored = w.store().get(&k3).await.expect("get").expect("exists");
    assert_eq!(
        stored.tokens.access_token.expose_secret(),
        "AT-SECRET-three"
    );
    let other = Warden::builder(Arc::new(store.sharing(ring("k2", &other_key))))
        .provider(provider.clone())
        .clock(clock)
        .build()
        .expect("valid warden settings");
    let calls_before = provider.calls();
    for e in [
        assert_decrypt_failure(other.access_token(&k3).await, "access token"),
        assert_decrypt_failure(
            other.refresh_token(&k3, RefreshOptions::default()).await,
            "forced refresh",
        ),
        assert_decrypt_failure(other.connection(&k3).await, "connection"),
        assert_decrypt_failure(other.access_token(&k).await, "rotated connection"),
    ] {
        printed += &format!("{e:?} {e}");
    }
    printed += &format!("{:?}", other.store().get(&k3).await);
    printed += &format!("{:?}", other.delete(&k3).await);
    assert_eq!(
        provider.calls(),
        calls_before,
        "nothing undecryptable reaches the provider"
    );

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("token refresh started"),
        "logging was captured: {logs}"
    );
    assert!(logs.contains("retrying token refresh"));
    assert!(logs.contains("token refresh failed"));
    assert!(provider.calls() >= 4);
    let keys = [writing_key.as_str(), other_key.as_str()];
    for secret in TOKENS.into_iter().chain(keys) {
        assert!(!logs.contains(secret), "{secret} leaked into logs");
        assert!(
            !printed.contains(secret),
            "{secret} leaked into Debug/Display output"
        );
    }
}
