//! Webhook delivery end to end in one process (issue 12): the changes a warden makes become
//! events in the store's outbox, and the delivery loop sends them to local receivers
//! (wiremock), retried with growing gaps under one `webhook-id`, honouring `Retry-After`,
//! while a hanging endpoint does not hold up a healthy one. Time is a manual clock; rounds are
//! driven by hand and awaited with `settle`, never slept on.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use time::OffsetDateTime;
use tokenwarden::clock::{Clock, ManualClock};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::{MemoryStore, Store};
use tokenwarden::webhooks::delivery::RetrySchedule;
use tokenwarden::webhooks::outbox::{DeliveryQuery, DeliveryStatus};
use tokenwarden::webhooks::worker::{WebhookConfig, Webhooks};
use tokenwarden::webhooks::{EndpointConfig, EventType, WebhookSecret};
use tokenwarden::{BreakerConfig, FailureClass, RefreshConfig, RefreshOptions, Warden};
use url::Url;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn endpoint(name: &str, server: &MockServer, timeout: Duration) -> EndpointConfig {
    EndpointConfig::new(
        name,
        Url::parse(&format!("{}/hooks", server.uri())).expect("url"),
        vec![WebhookSecret::generate()],
        EventType::ALL.into_iter().collect::<BTreeSet<_>>(),
        timeout,
    )
    .expect("endpoint")
}

struct Setup {
    store: Arc<MemoryStore>,
    warden: Warden,
    webhooks: Webhooks,
    clock: ManualClock,
    provider: Arc<FakeProvider>,
}

fn setup(endpoints: Vec<EndpointConfig>, breaker_threshold: u32) -> Setup {
    setup_with(endpoints, breaker_threshold, Duration::from_secs(60))
}

fn setup_with(
    endpoints: Vec<EndpointConfig>,
    breaker_threshold: u32,
    breaker_open_for: Duration,
) -> Setup {
    let store = memory_store();
    let clock = ManualClock::new(OffsetDateTime::now_utc());
    let webhooks = Webhooks::new(
        store.clone(),
        WebhookConfig {
            endpoints,
            schedule: RetrySchedule::default(),
            keep: tokenwarden::webhooks::worker::DEFAULT_KEEP,
        },
        Arc::new(clock.clone()),
        "instance-1",
    )
    .expect("webhooks");
    let provider = FakeProvider::new([ok("unused", None, 3600)]);
    let warden = one_attempt_warden(
        store.clone(),
        &provider,
        breaker_threshold,
        breaker_open_for,
    )
    .circuit_changes(webhooks.circuit_changes())
    .build()
    .expect("warden");
    Setup {
        store,
        warden,
        webhooks,
        clock,
        provider,
    }
}

/// A warden over `store` and `provider` whose refreshes are one attempt each, with the
/// given breaker.
fn one_attempt_warden(
    store: Arc<dyn Store>,
    provider: &Arc<FakeProvider>,
    breaker_threshold: u32,
    breaker_open_for: Duration,
) -> tokenwarden::WardenBuilder {
    Warden::builder(store)
        .provider(provider.clone())
        .refresh_config(RefreshConfig {
            retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..RefreshConfig::default()
        })
        .breaker_config(BreakerConfig {
            failure_threshold: breaker_threshold,
            open_for: breaker_open_for,
        })
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("json body"))
        .collect()
}

fn types(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["type"].as_str().expect("type").to_owned())
        .collect()
}

/// Rounds until nothing is due: a round claims at most an endpoint's free slots (4).
async fn round(webhooks: &Webhooks) {
    for _ in 0..10 {
        webhooks.round().await.expect("round");
        webhooks.settle().await;
        if !webhooks.has_due_work().await {
            return;
        }
    }
    panic!("still work due after 10 rounds");
}

#[tokio::test]
async fn each_change_is_announced_once_failing_per_episode_and_one_recovered() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let s = setup(
        vec![endpoint("app", &receiver, Duration::from_secs(5))],
        100,
    );
    let k = key("u1", "acct");
    s.warden
        .import(
            k.clone(),
            import("access-secret-1", Some("refresh-secret-1"), None),
        )
        .await
        .expect("import");

    // Three failed refreshes in a row: one episode, one refresh_failing.
    s.provider.script([transient()]);
    for _ in 0..3 {
        s.warden
            .refresh_token(&k, RefreshOptions::default())
            .await
            .expect_err("transient failure");
    }
    // The first success after them: one recovered.
    s.provider
        .script([ok("access-secret-2", Some("refresh-secret-2"), 3600)]);
    s.warden
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect("refreshed");
    s.warden
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect("refreshed again: nothing to announce");
    // The grant is refused for good: needs_reconnect, not another refresh_failing.
    s.provider
        .script([rejected(FailureClass::Permanent, "invalid_grant", 400)]);
    s.warden
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("permanent");
    s.warden.delete(&k).await.expect("delete");

    round(&s.webhooks).await;
    // Up to 4 attempts run at once, so arrival order is not event order: put them in the
    // order of the connection's versions (a delete carries the last version the row had).
    let mut bodies = bodies(&receiver).await;
    bodies.sort_by_key(|b| {
        (
            b["data"]["version"].as_i64().expect("version"),
            b["type"] == "connection.deleted",
        )
    });
    assert_eq!(
        types(&bodies),
        [
            "connection.created",
            "connection.refresh_failing",
            "connection.recovered",
            "connection.needs_reconnect",
            "connection.deleted",
        ]
    );
    let versions: Vec<i64> = bodies
        .iter()
        .map(|b| b["data"]["version"].as_i64().expect("version"))
        .collect();
    // Versions grow with each change; a delete carries the last version the row had.
    assert!(
        versions[..4].windows(2).all(|w| w[0] < w[1]) && versions[4] == versions[3],
        "versions: {versions:?}"
    );
    assert_eq!(bodies[1]["data"]["status"], "active");
    assert_eq!(bodies[1]["data"]["error"]["code"], "TOKEN_REFRESH_ERROR");
    assert_eq!(bodies[3]["data"]["status"], "needs_reconnect");
    assert_eq!(
        bodies[3]["data"]["error"]["provider_error"],
        "invalid_grant"
    );
    for body in &bodies {
        assert_eq!(body["data"]["user_id"], "u1");
        let text = body.to_string();
        for secret in ["access-secret", "refresh-secret"] {
            assert!(!text.contains(secret), "a token in {text}");
        }
    }
    // Delivered once each: another round sends nothing new.
    round(&s.webhooks).await;
    assert_eq!(
        receiver.received_requests().await.expect("recorded").len(),
        5
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_later_and_later_under_one_id() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let s = setup(
        vec![endpoint("app", &receiver, Duration::from_secs(5))],
        100,
    );
    s.warden
        .import(key("u1", "acct"), import("a", Some("r"), None))
        .await
        .expect("import");

    let pending = |store: Arc<MemoryStore>| async move {
        let page = store
            .list_deliveries(&DeliveryQuery::default())
            .await
            .expect("list");
        assert_eq!(page.items.len(), 1);
        page.items[0].clone()
    };
    let start = Clock::now(&s.clock);
    round(&s.webhooks).await;
    let first = pending(s.store.clone()).await;
    assert_eq!((first.status, first.attempts), (DeliveryStatus::Pending, 1));
    assert_eq!(first.last_status, Some(500));
    let gap1 = first.next_attempt_at.expect("next") - start;
    assert!(
        gap1 >= time::Duration::milliseconds(2500) && gap1 <= time::Duration::seconds(5),
        "{gap1}"
    );

    // Not due yet: nothing is sent.
    round(&s.webhooks).await;
    assert_eq!(
        receiver.received_requests().await.expect("recorded").len(),
        1
    );

    s.clock.set(first.next_attempt_at.expect("next"));
    let second_at = Clock::now(&s.clock);
    round(&s.webhooks).await;
    let second = pending(s.store.clone()).await;
    assert_eq!(second.attempts, 2);
    let gap2 = second.next_attempt_at.expect("next") - second_at;
    assert!(
        gap2 >= time::Duration::seconds(5) && gap2 <= time::Duration::seconds(10),
        "the gap grows: {gap2}"
    );

    s.clock.set(second.next_attempt_at.expect("next"));
    round(&s.webhooks).await;
    let done = pending(s.store.clone()).await;
    assert_eq!((done.status, done.attempts), (DeliveryStatus::Delivered, 3));

    let requests = receiver.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 3);
    let ids: BTreeSet<String> = requests
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().expect("ascii").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the event's id");
    assert_eq!(ids.first(), Some(&done.event_id));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .up_to_n_times(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    let s = setup(
        vec![endpoint("app", &receiver, Duration::from_secs(5))],
        100,
    );
    s.warden
        .import(key("u1", "acct"), import("a", Some("r"), None))
        .await
        .expect("import");
    let start = Clock::now(&s.clock);
    round(&s.webhooks).await;
    let page = s
        .store
        .list_deliveries(&DeliveryQuery::default())
        .await
        .expect("list");
    let next = page.items[0].next_attempt_at.expect("pending");
    // Outbox times are kept to the millisecond.
    assert!(
        next - start >= time::Duration::milliseconds(29_999),
        "{}",
        next - start
    );

    s.clock.advance(Duration::from_secs(20));
    round(&s.webhooks).await;
    assert_eq!(
        receiver.received_requests().await.expect("recorded").len(),
        1
    );
    s.clock.set(next);
    round(&s.webhooks).await;
    assert_eq!(
        receiver.received_requests().await.expect("recorded").len(),
        2
    );
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_hold_up_a_healthy_one() {
    let hanging = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&hanging)
        .await;
    let healthy = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&healthy)
        .await;
    let s = setup(
        vec![
            endpoint("hanging", &hanging, Duration::from_secs(3)),
            endpoint("healthy", &healthy, Duration::from_secs(3)),
        ],
        100,
    );
    for n in 0..6 {
        s.warden
            .import(
                key("u1", &format!("acct-{n}")),
                import("a", Some("r"), None),
            )
            .await
            .expect("import");
    }
    s.webhooks.round().await.expect("round");
    // The healthy endpoint's six deliveries go out in rounds of its free slots while every
    // slot of the hanging one stays taken; no round waits for the hanging attempts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let delivered = s
            .store
            .list_deliveries(&DeliveryQuery {
                endpoint: Some("healthy".to_owned()),
                status: Some(DeliveryStatus::Delivered),
                ..DeliveryQuery::default()
            })
            .await
            .expect("list")
            .items
            .len();
        if delivered == 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the healthy endpoint got {delivered} of 6 within 2 s"
        );
        s.webhooks.round().await.expect("round");
        tokio::task::yield_now().await;
    }
    // Exactly the hanging endpoint's four slots are claimed: its other two deliveries are
    // still due (unclaimed), whatever the timing of the requests already on their way.
    s.webhooks.round().await.expect("round");
    let stats = s
        .store
        .webhook_queue_stats(Clock::now(&s.clock))
        .await
        .expect("stats");
    assert_eq!(
        (stats.pending, stats.due),
        (6, 2),
        "six pending for the hanging endpoint, four of them claimed"
    );
    s.webhooks.settle().await;
}

#[tokio::test]
async fn provider_breaker_changes_are_announced() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    // Open for a millisecond: the next refresh after it is the probe that closes it.
    let s = setup_with(
        vec![endpoint("app", &receiver, Duration::from_secs(5))],
        1,
        Duration::from_millis(1),
    );
    let k = key("u1", "acct");
    s.warden
        .import(k.clone(), import("a", Some("r"), None))
        .await
        .expect("import");
    s.provider.script([transient()]);
    s.warden
        .refresh_token(&k, RefreshOptions::default())
        .await
        .expect_err("fails and opens the breaker");
    s.provider.script([ok("a2", Some("r2"), 3600)]);
    // Refused while open (at most a millisecond), then the probe succeeds and closes it.
    while s
        .warden
        .refresh_token(&k, RefreshOptions::default())
        .await
        .is_err()
    {
        tokio::task::yield_now().await;
    }
    round(&s.webhooks).await;
    let bodies = bodies(&receiver).await;
    let opened: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "provider.circuit_opened")
        .collect();
    assert_eq!(opened.len(), 1, "{bodies:?}");
    assert_eq!(opened[0]["data"]["provider"], "fake");
    assert_eq!(opened[0]["data"]["state"], "open");
    let closed: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["type"] == "provider.circuit_closed")
        .collect();
    assert_eq!(closed.len(), 1, "{bodies:?}");
    assert_eq!(closed[0]["data"]["state"], "closed");
}

/// Delivered events are kept for `keep` (7 days by default), then a round deletes them with
/// their deliveries.
#[tokio::test]
async fn delivered_events_are_deleted_once_older_than_keep() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let s = setup(
        vec![endpoint("app", &receiver, Duration::from_secs(5))],
        100,
    );
    s.warden
        .import(key("u1", "acct"), import("access-secret-1", None, None))
        .await
        .expect("import");
    round(&s.webhooks).await;
    let listed = || async {
        s.store
            .list_deliveries(&DeliveryQuery::default())
            .await
            .expect("list")
            .items
    };
    let delivered = listed().await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].status, DeliveryStatus::Delivered);

    let keep = tokenwarden::webhooks::worker::DEFAULT_KEEP;
    s.clock.advance(keep - Duration::from_secs(60));
    round(&s.webhooks).await;
    assert_eq!(listed().await.len(), 1, "kept until `keep` has passed");
    s.clock.advance(Duration::from_secs(11 * 60));
    round(&s.webhooks).await;
    assert!(listed().await.is_empty(), "deleted after `keep`");
    assert_eq!(
        s.store
            .webhook_queue_stats(s.clock.now())
            .await
            .expect("stats")
            .delivered,
        0
    );
}

/// Refreshes that overlap are written in batches, whose events the store decides from the
/// rows as the refresh loop read them (`Store::update_batch_from`), without reading them
/// again: on SQLite, 20 connections failing together raise one `refresh_failing` each,
/// failing again raises nothing, and succeeding together one `recovered` each. The first
/// write of each round is held in the store until every refresh has its answer, so the
/// others queue behind it and go out as one batch.
#[tokio::test]
async fn batched_refresh_writes_raise_each_connections_events_once() {
    const N: usize = 20;
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = tokenwarden::store::SqliteStore::connect(
        &format!("sqlite://{}/hooks.db", dir.path().display()),
        key_ring(),
    )
    .await
    .expect("sqlite");
    let store = Arc::new(tokenwarden_testkit::FailingWrites::new(sqlite));
    store.set_outbox(true);
    let provider = FakeProvider::new([ok("unused", None, 3600)]);
    let warden = one_attempt_warden(store.clone(), &provider, 1000, Duration::from_secs(60))
        .build()
        .expect("warden");
    let warden = Arc::new(warden);
    let keys: Vec<_> = (0..N).map(|i| key("u1", &format!("acct-{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        warden
            .import(
                k.clone(),
                import(&format!("access-{i}"), Some(&format!("refresh-{i}")), None),
            )
            .await
            .expect("import");
    }

    for (round, answer) in [transient(), transient(), ok("access-new", None, 3600)]
        .into_iter()
        .enumerate()
    {
        provider.script([answer]);
        let calls_before = provider.calls();
        store.hold_next_write();
        let mut refreshes = tokio::task::JoinSet::new();
        for k in &keys {
            let (warden, k) = (warden.clone(), k.clone());
            refreshes
                .spawn(async move { warden.refresh_token(&k, RefreshOptions::default()).await });
        }
        // Each refresh queues its write as soon as it has its answer (no await in between).
        while provider.calls() < calls_before + N as u32 || !store.is_holding() {
            tokio::task::yield_now().await;
        }
        let writes_before = store.writes().len();
        store.release_held();
        let results = refreshes.join_all().await;
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            if round == 2 { N } else { 0 },
            "round {round}"
        );
        assert!(
            store.writes()[writes_before..]
                .iter()
                .any(|(kind, rows)| *kind == "batch" && *rows > 1),
            "round {round} wrote a batch: {:?}",
            &store.writes()[writes_before..]
        );
    }
    for k in &keys {
        let events = store.recent_connection_events(k, 10).await.expect("events");
        let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "connection.recovered",
                "connection.refresh_failing",
                "connection.created"
            ],
            "{k:?}"
        );
    }
}
