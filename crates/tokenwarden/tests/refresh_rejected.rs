//! `Warden::refresh_rejected`: what the proxy calls when a provider's API answers 401. One
//! refresh per refused token, whoever else was refused with it and whenever their 401 came;
//! no second refresh of a token refreshed moments ago. Time is tokio's paused clock; the wall
//! clock follows it (`TokioClock`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::{AccessToken, ErrorCode, FailureClass, Warden};

const T0: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);

fn warden(provider: Arc<FakeProvider>) -> Warden {
    Warden::builder(memory_store())
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .build()
        .expect("valid warden settings")
}

fn token(value: &str) -> AccessToken {
    AccessToken::new(value)
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_refreshed_once_and_later_refusals_get_the_stored_one() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600), ok("at-3", None, 3600)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    // Far from expiry: nothing but the API's 401 says it is dead.
    let expires = T0 + time::Duration::hours(1);
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(expires)))
        .await
        .expect("import");

    // Ten callers refused with at-1 at once: one refresh. The provider takes 200 ms (paused
    // clock: no real wait), and all ten start together, so they overlap it.
    *provider.latency.lock().expect("lock") = Duration::from_millis(200);
    let start = Arc::new(tokio::sync::Barrier::new(10));
    let calls = (0..10).map(|_| {
        let (w, k, start) = (w.clone(), k.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            w.refresh_rejected(&k, &token("at-1")).await
        })
    });
    for call in calls.collect::<Vec<_>>() {
        let grant = call
            .await
            .expect("task")
            .expect("refreshed")
            .expect("a token");
        assert_eq!(grant.access_token.expose_secret(), "at-2");
    }
    assert_eq!(provider.calls(), 1);
    *provider.latency.lock().expect("lock") = Duration::ZERO;

    // A 401 with at-1 arriving after that refresh finished: the stored token, no refresh,
    // even once the 10 s guard is long past.
    tokio::time::advance(Duration::from_secs(60)).await;
    let late = w
        .refresh_rejected(&k, &token("at-1"))
        .await
        .expect("answered")
        .expect("a token");
    assert_eq!(late.access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1);

    // at-2 refused in its turn, a minute after it was issued: refreshed.
    let next = w
        .refresh_rejected(&k, &token("at-2"))
        .await
        .expect("answered")
        .expect("a token");
    assert_eq!(next.access_token.expose_secret(), "at-3");
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_refreshed_moments_ago_is_not_refreshed_again() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600), ok("at-3", None, 3600)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + time::Duration::hours(1))),
    )
    .await
    .expect("import");
    w.refresh_rejected(&k, &token("at-1"))
        .await
        .expect("refreshed");
    assert_eq!(provider.calls(), 1);

    // The API refuses the new token too, 3 s later: it refuses it for another reason.
    tokio::time::advance(Duration::from_secs(3)).await;
    let again = w
        .refresh_rejected(&k, &token("at-2"))
        .await
        .expect("answered");
    assert!(again.is_none(), "no other token to try");
    assert_eq!(provider.calls(), 1, "no second refresh");

    // Past the guard, the same refusal refreshes.
    tokio::time::advance(Duration::from_secs(10)).await;
    let later = w
        .refresh_rejected(&k, &token("at-2"))
        .await
        .expect("answered")
        .expect("a token");
    assert_eq!(later.access_token.expose_secret(), "at-3");
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_grant_refused_for_good_asks_for_a_reconnect() {
    let provider = FakeProvider::new([rejected(FailureClass::Permanent, "invalid_grant", 400)]);
    let w = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 + time::Duration::hours(1))),
    )
    .await
    .expect("import");
    let error = w
        .refresh_rejected(&k, &token("at-1"))
        .await
        .expect_err("refused");
    assert_eq!(error.code(), ErrorCode::TokenRefreshError);
    assert!(error.reconnect());
    assert_eq!(error.meta().failure, Some(FailureClass::Permanent));
    let stored = w.store().get(&k).await.expect("get").expect("kept");
    assert_eq!(
        stored.tokens.access_token.expose_secret(),
        "at-1",
        "nothing blanked"
    );

    // Refused again: the connection already needs a reconnect; the provider is not called.
    let error = w
        .refresh_rejected(&k, &token("at-1"))
        .await
        .expect_err("refused");
    assert!(error.reconnect());
    assert_eq!(provider.calls(), 1);
}
