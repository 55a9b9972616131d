//! Captures every log line (TRACE level, JSON) across success and failure scenarios, plus
//! the Debug and Display forms of everything a caller can print, and asserts that no token
//! appears in any of it.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::{BreakerConfig, FailureClass, RefreshOptions, Warden};

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

const SECRETS: [&str; 6] = [
    "AT-SECRET-one",
    "RT-SECRET-one",
    "AT-SECRET-two",
    "RT-SECRET-two",
    "AT-SECRET-three",
    "RT-SECRET-three",
];

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

    let provider = FakeProvider::new([
        transient(),
        ok("AT-SECRET-two", Some("RT-SECRET-two"), 3600),
        rejected(FailureClass::Transient, "server_error", 503),
        rejected(FailureClass::Configuration, "invalid_client", 401),
        rejected(FailureClass::Permanent, "invalid_grant", 400),
    ]);
    let w = Warden::builder(memory_store())
        .provider(provider.clone())
        .clock(Arc::new(TokioClock::new(datetime!(2026-11-26 12:00 UTC))))
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
    // A decrypt failure.
    let other = Warden::builder(Arc::new(tokenwarden::store::MemoryStore::new(key_ring())))
        .build()
        .expect("valid warden settings");
    printed += &format!("{:?}", other.connection(&k).await);

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("token refresh started"),
        "logging was captured: {logs}"
    );
    assert!(logs.contains("retrying token refresh"));
    assert!(logs.contains("token refresh failed"));
    assert!(provider.calls() >= 4);
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} leaked into logs");
        assert!(
            !printed.contains(secret),
            "{secret} leaked into Debug/Display output"
        );
    }
}
