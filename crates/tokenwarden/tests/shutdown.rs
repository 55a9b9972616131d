//! The warden owns every task it starts and drains them at shutdown (issue 9): a background
//! refresh, or a refresh whose caller went away, still commits its rotated grant before
//! `shutdown` returns.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::Warden;
use tokenwarden::clock::TokioClock;
use tokenwarden::store::Store as _;

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

fn warden(provider: Arc<FakeProvider>) -> (Warden, Arc<tokenwarden::store::MemoryStore>) {
    let store = memory_store();
    let w = Warden::builder(store.clone())
        .provider(provider)
        .clock(Arc::new(TokioClock::new(T0)))
        .build()
        .expect("valid warden settings");
    (w, store)
}

fn stored_refresh_token(conn: &tokenwarden::Connection) -> String {
    conn.tokens
        .refresh_token
        .as_ref()
        .expect("refresh token")
        .expose_secret()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_background_refresh_to_commit() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_secs(3);
    let (w, store) = warden(provider.clone());
    let k = key("u1", "a1");
    // Inside the 5-minute threshold but comfortably valid: answered at once, refreshed in
    // the background.
    let expires = T0 + time::Duration::seconds(200);
    w.import(k.clone(), import("at-1", Some("rt-1"), Some(expires)))
        .await
        .expect("import");
    let grant = w.access_token(&k).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-1", "served at once");

    assert!(w.shutdown(Duration::from_secs(30)).await, "drained in time");
    assert_eq!(provider.calls(), 1);
    let stored = store.get(&k).await.expect("get").expect("exists");
    assert_eq!(
        stored_refresh_token(&stored),
        "rt-2",
        "the rotated grant was committed before shutdown returned"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_refresh_whose_caller_went_away() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_secs(3);
    let (w, store) = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(1))),
    )
    .await
    .expect("import");
    // The caller gives up after a second (an HTTP client hanging up).
    let gave_up = tokio::time::timeout(Duration::from_secs(1), w.access_token(&k)).await;
    assert!(gave_up.is_err(), "the refresh outlived its caller");

    assert!(w.shutdown(Duration::from_secs(30)).await, "drained in time");
    let stored = store.get(&k).await.expect("get").expect("exists");
    assert_eq!(stored_refresh_token(&stored), "rt-2");
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_at_its_deadline() {
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    *provider.latency.lock().expect("lock") = Duration::from_secs(3600);
    let (w, _store) = warden(provider.clone());
    let k = key("u1", "a1");
    w.import(
        k.clone(),
        import("at-1", Some("rt-1"), Some(T0 - time::Duration::seconds(1))),
    )
    .await
    .expect("import");
    let _ = tokio::time::timeout(Duration::from_secs(1), w.access_token(&k)).await;
    assert!(
        !w.shutdown(Duration::from_secs(5)).await,
        "a refresh still running at the deadline is reported"
    );
}
