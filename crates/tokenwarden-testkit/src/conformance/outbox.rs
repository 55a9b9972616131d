//! The webhook outbox's checks: events written with the changes that raise them (and only
//! with the outbox on), dispatching events into deliveries, claiming and finishing deliveries
//! under leases, listing, retrying and counting them, and claimers and dispatchers racing over
//! one database. Part of the one list in `conformance`, so every backend runs them.
//!
//! Events are observed the way the delivery worker will see them: dispatched to an endpoint
//! subscribed to everything, claimed, and read from their bodies.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};

use tokenwarden::connect::session::{Finish, SessionError};
use tokenwarden::connection::{
    AccountId, Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, LastError,
};
use tokenwarden::crypto::KeyRing;
use tokenwarden::secret::{AccessToken, RefreshToken};
use tokenwarden::store::{Store, StoreError};
use tokenwarden::webhooks::EventType;
use tokenwarden::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryQuery, DeliveryStatus, DeliveryView, NewEvent, Prior,
    WebhookQueueStats,
};

use super::{TestDb, insert_session, k1, sample_session, with_version};
use crate::fixtures::{at, sample_connection};

/// The endpoint [`drain`] dispatches to: subscribed to every event.
const ALL: &str = "all";

fn every_event() -> BTreeSet<EventType> {
    EventType::ALL.into_iter().collect()
}

fn subscribed(events: &[EventType]) -> BTreeSet<EventType> {
    events.iter().copied().collect()
}

/// Every endpoint name these checks use, each with `n` free slots (a claim's capacity).
fn caps(n: u32) -> Vec<(String, u32)> {
    [ALL, "a", "b", "c", "dead", "live", "slow", "ep"]
        .iter()
        .map(|name| ((*name).to_owned(), n))
        .collect()
}

/// Every event written since the last drain, as bodies, in the order written: dispatched to
/// one endpoint subscribed to everything, claimed and finished as delivered. Checks that each
/// body names its event's id and type, and holds none of the tokens the checks plant.
async fn drain<S: Store>(store: &S) -> Vec<Value> {
    let endpoints = [(ALL.to_owned(), every_event())];
    while store
        .dispatch_events(&endpoints, at(0), 1000)
        .await
        .expect("dispatch")
        > 0
    {}
    let claimed = store
        .claim_deliveries(at(0), "drain", at(60), 1000, &caps(1000))
        .await
        .expect("claim");
    let mut bodies = Vec::new();
    for delivery in &claimed {
        assert!(
            store
                .finish_delivery(
                    &delivery.id,
                    "drain",
                    &DeliveryOutcome::Delivered { status: 200 },
                    at(0)
                )
                .await
                .expect("finish"),
            "the drain holds its own lease"
        );
        assert!(
            !delivery.body.contains("-must-not-reach-a-webhook"),
            "a token in an event: {}",
            delivery.body
        );
        let body: Value = serde_json::from_str(&delivery.body).expect("a JSON body");
        assert_eq!(body["id"], json!(delivery.event_id), "the body's id");
        assert_eq!(
            body["type"],
            json!(delivery.kind.as_str()),
            "the body's type"
        );
        bodies.push(body);
    }
    bodies
}

fn types(bodies: &[Value]) -> Vec<&str> {
    bodies
        .iter()
        .map(|b| b["type"].as_str().expect("a type"))
        .collect()
}

/// `conn` at `stored`'s version with `failures` failures and `status`; with failures, a last
/// error says so.
fn outcome(
    conn: &Connection,
    stored: &ConnectionMeta,
    failures: u32,
    status: ConnectionStatus,
) -> Connection {
    let mut next = with_version(conn, stored);
    next.meta.consecutive_failures = failures;
    next.meta.status = status;
    next.meta.last_error = (failures > 0).then(|| LastError {
        code: "TOKEN_REFRESH_ERROR".into(),
        message: format!("temporarily_unavailable #{failures}"),
        provider_error: Some("temporarily_unavailable".into()),
        at: at(10),
    });
    next.meta.updated_at = at(10);
    next
}

async fn update<S: Store>(
    store: &S,
    conn: &Connection,
    stored: &ConnectionMeta,
    failures: u32,
    status: ConnectionStatus,
) -> ConnectionMeta {
    store
        .update(&outcome(conn, stored, failures, status))
        .await
        .expect("update")
}

/// With the outbox on, each write raises what `connection_events` says, with the change:
/// an import is `created`; three transient failures raise one `refresh_failing`; a success
/// after them one `recovered`; a reschedule nothing; a permanent failure `needs_reconnect`
/// (not also `refresh_failing`); an import over it `reconnected`, a healthy re-import
/// nothing; a delete `deleted` with the last version. Bodies carry the connection's ids,
/// status, version and last error, never a token. Application-token rows raise nothing.
pub async fn outbox_connection_events<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("outbox_events"), k1()).await;
    store.set_outbox(true);
    let mut conn = sample_connection("ü user", "tiktok", "acct 1");
    conn.tokens.access_token = AccessToken::new("AT-must-not-reach-a-webhook");
    conn.tokens.refresh_token = Some(RefreshToken::new("RT-must-not-reach-a-webhook"));
    let (created, _) = store.put(&conn).await.expect("put");
    let bodies = drain(&store).await;
    assert_eq!(types(&bodies), ["connection.created"]);
    assert_eq!(
        bodies[0]["data"],
        json!({"user_id": "ü user", "provider": "tiktok", "account_id": "acct 1",
               "status": "active", "version": created.version}),
        "created"
    );
    let timestamp = bodies[0]["timestamp"].as_str().expect("timestamp");
    assert!(
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "RFC 3339: {timestamp}"
    );

    // Three transient failures: one event, at the first.
    let mut stored = created;
    for failures in 1..=3 {
        stored = update(&store, &conn, &stored, failures, ConnectionStatus::Active).await;
        let bodies = drain(&store).await;
        if failures == 1 {
            assert_eq!(types(&bodies), ["connection.refresh_failing"]);
            assert_eq!(bodies[0]["data"]["version"], json!(stored.version));
            assert_eq!(
                bodies[0]["data"]["error"],
                json!({"code": "TOKEN_REFRESH_ERROR", "message": "temporarily_unavailable #1",
                       "provider_error": "temporarily_unavailable"})
            );
        } else {
            assert_eq!(types(&bodies), Vec::<&str>::new(), "failure {failures}");
        }
    }
    // A success: one recovered; then a reschedule and another success: nothing.
    stored = update(&store, &conn, &stored, 0, ConnectionStatus::Active).await;
    let bodies = drain(&store).await;
    assert_eq!(types(&bodies), ["connection.recovered"]);
    assert_eq!(bodies[0]["data"]["version"], json!(stored.version));
    assert!(
        bodies[0]["data"].get("error").is_none(),
        "recovered: no error"
    );
    let mut rescheduled = outcome(&conn, &stored, 0, ConnectionStatus::Active);
    rescheduled.meta.next_refresh_at = Some(at(99_999));
    stored = store.update(&rescheduled).await.expect("reschedule");
    stored = update(&store, &conn, &stored, 0, ConnectionStatus::Active).await;
    assert_eq!(types(&drain(&store).await), Vec::<&str>::new());

    // A permanent failure.
    stored = update(&store, &conn, &stored, 1, ConnectionStatus::NeedsReconnect).await;
    let bodies = drain(&store).await;
    assert_eq!(types(&bodies), ["connection.needs_reconnect"]);
    assert_eq!(bodies[0]["data"]["status"], json!("needs_reconnect"));
    assert_eq!(bodies[0]["data"]["version"], json!(stored.version));
    assert_eq!(
        bodies[0]["data"]["error"]["code"],
        json!("TOKEN_REFRESH_ERROR")
    );

    // Reconnected by an import; a second import of a healthy connection raises nothing.
    let (reimported, _) = store.put(&conn).await.expect("reconnect");
    let bodies = drain(&store).await;
    assert_eq!(types(&bodies), ["connection.reconnected"]);
    assert_eq!(bodies[0]["data"]["version"], json!(reimported.version));
    assert_eq!(bodies[0]["data"]["status"], json!("active"));
    let (last, _) = store.put(&conn).await.expect("re-import");
    assert_eq!(types(&drain(&store).await), Vec::<&str>::new());

    assert!(store.delete(conn.key()).await.expect("delete"));
    assert!(!store.delete(conn.key()).await.expect("delete again"));
    let bodies = drain(&store).await;
    assert_eq!(types(&bodies), ["connection.deleted"], "once");
    assert_eq!(
        bodies[0]["data"],
        json!({"user_id": "ü user", "provider": "tiktok", "account_id": "acct 1",
               "status": "active", "version": last.version})
    );

    // An application token's row: created, failing, recovered, deleted, and never an event.
    let app = sample_connection("_app", "client-app", "_app");
    let stored = store
        .insert_if_absent(&app)
        .await
        .expect("insert")
        .expect("absent");
    let stored = update(&store, &app, &stored, 1, ConnectionStatus::Active).await;
    let stored = update(&store, &app, &stored, 0, ConnectionStatus::Active).await;
    update(&store, &app, &stored, 1, ConnectionStatus::NeedsReconnect).await;
    store.put(&app).await.expect("put app");
    assert!(store.delete(app.key()).await.expect("delete app"));
    assert_eq!(types(&drain(&store).await), Vec::<&str>::new(), "app rows");

    // insert_if_absent of a user's connection is a creation like any other.
    let other = sample_connection("ü user", "tiktok", "acct 2");
    store
        .insert_if_absent(&other)
        .await
        .expect("insert")
        .expect("absent");
    assert_eq!(types(&drain(&store).await), ["connection.created"]);

    let stats = store.webhook_queue_stats(at(0)).await.expect("stats");
    assert_eq!(stats.undispatched, 0);
    let page = store
        .list_deliveries(&DeliveryQuery::default())
        .await
        .expect("list");
    assert_eq!(page.items.len(), 7, "every event once");
}

/// With the outbox off (the default, and per handle), no write writes an event; switched
/// on, the next write does; switched off again, none.
pub async fn outbox_off_writes_nothing<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("outbox_off");
    let store = make(db.clone(), k1()).await;
    let conn = sample_connection("u", "tiktok", "off");
    let (stored, _) = store.put(&conn).await.expect("put");
    let stored = update(&store, &conn, &stored, 1, ConnectionStatus::Active).await;
    update(&store, &conn, &stored, 2, ConnectionStatus::NeedsReconnect).await;
    let (stored, _) = store.put(&conn).await.expect("reconnect");
    let failing = outcome(&conn, &stored, 1, ConnectionStatus::Active);
    let results = store.update_batch(&[failing]).await.expect("batch");
    assert!(results[0].is_ok(), "{results:?}");
    let app = sample_connection("_app", "client-app", "_app");
    store.insert_if_absent(&app).await.expect("insert");
    let session = sample_session("off", 600);
    insert_session(&store, &session).await;
    let failed = Finish::Failed(SessionError {
        code: "PROVIDER_ERROR".into(),
        message: "access_denied".into(),
    });
    assert!(
        store
            .finish_connect_session(&session.id, &failed, at(5))
            .await
            .expect("finish")
    );
    assert!(store.delete(conn.key()).await.expect("delete"));
    let nothing = WebhookQueueStats::default();
    assert_eq!(
        store.webhook_queue_stats(at(0)).await.expect("stats"),
        nothing,
        "nothing written with the outbox off"
    );
    assert!(drain(&store).await.is_empty());

    // Another handle's switch is its own.
    let other = make(db, k1()).await;
    other.set_outbox(true);
    store
        .put(&conn)
        .await
        .expect("put by the handle that is off");
    assert!(drain(&store).await.is_empty(), "this handle is still off");
    store.set_outbox(true);
    assert!(store.delete(conn.key()).await.expect("delete"));
    store.set_outbox(false);
    store.put(&conn).await.expect("put while off again");
    assert_eq!(types(&drain(&other).await), ["connection.deleted"]);
}

/// A write that does not happen writes no event: an update whose compare-and-swap fails
/// (`Conflict`), one of a deleted connection (`NotFound`), and the failed rows of a batch,
/// whose successful rows' events are written.
pub async fn outbox_failed_writes_raise_nothing<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("outbox_cas"), k1()).await;
    store.set_outbox(true);
    let conn = sample_connection("u", "tiktok", "cas");
    let (stored, _) = store.put(&conn).await.expect("put");
    let stale = outcome(&conn, &stored, 1, ConnectionStatus::Active);
    let (replaced, _) = store.put(&conn).await.expect("re-import");
    drain(&store).await;

    let err = store.update(&stale).await.expect_err("stale");
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    let missing = outcome(
        &sample_connection("u", "tiktok", "missing"),
        &replaced,
        1,
        ConnectionStatus::NeedsReconnect,
    );
    let err = store.update(&missing).await.expect_err("missing");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(types(&drain(&store).await), Vec::<&str>::new());

    // A batch: the stale row and the missing one fail, the fresh one raises its event.
    let fresh = outcome(&conn, &replaced, 1, ConnectionStatus::Active);
    let results = store
        .update_batch(&[stale.clone(), fresh, missing])
        .await
        .expect("batch");
    assert!(
        matches!(results[0], Err(StoreError::Conflict)),
        "{results:?}"
    );
    assert!(results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(StoreError::NotFound)),
        "{results:?}"
    );
    assert_eq!(types(&drain(&store).await), ["connection.refresh_failing"]);
}

/// `update_batch` writes the events of each row it writes, distinct keys or not: a key
/// written twice in one batch is judged against the row its first write left (a second
/// failure raises nothing), a conflicting write raises nothing.
pub async fn outbox_update_batch<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("outbox_batch"), k1()).await;
    store.set_outbox(true);
    let mut stored = Vec::new();
    let conns: Vec<Connection> = (0..5)
        .map(|i| sample_connection("u", "tiktok", &format!("batch-{i}")))
        .collect();
    for conn in &conns {
        stored.push(store.put(conn).await.expect("put").0);
    }
    // Row 3 is failing already, so its success below recovers it.
    stored[3] = update(&store, &conns[3], &stored[3], 2, ConnectionStatus::Active).await;
    // Row 4 needs a reconnect already, so failing for good again raises nothing.
    stored[4] = update(
        &store,
        &conns[4],
        &stored[4],
        1,
        ConnectionStatus::NeedsReconnect,
    )
    .await;
    drain(&store).await;

    let batch = [
        outcome(&conns[0], &stored[0], 1, ConnectionStatus::Active),
        outcome(&conns[1], &stored[1], 1, ConnectionStatus::NeedsReconnect),
        outcome(&conns[2], &stored[2], 0, ConnectionStatus::Active),
        outcome(&conns[3], &stored[3], 0, ConnectionStatus::Active),
        outcome(&conns[4], &stored[4], 2, ConnectionStatus::NeedsReconnect),
    ];
    let results = store.update_batch(&batch).await.expect("batch");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let bodies = drain(&store).await;
    let mut raised: Vec<(&str, &str)> = bodies
        .iter()
        .map(|b| {
            (
                b["data"]["account_id"].as_str().expect("account"),
                b["type"].as_str().expect("type"),
            )
        })
        .collect();
    raised.sort_unstable();
    assert_eq!(
        raised,
        [
            ("batch-0", "connection.refresh_failing"),
            ("batch-1", "connection.needs_reconnect"),
            ("batch-3", "connection.recovered"),
        ]
    );
    for body in &bodies {
        let i: usize = body["data"]["account_id"].as_str().expect("account")[6..]
            .parse()
            .expect("index");
        let written = results[i].as_ref().expect("written");
        assert_eq!(body["data"]["version"], json!(written.version), "row {i}");
    }

    // The same key twice: the second failure continues the first's episode; a stale third
    // write conflicts.
    let first = results[2].as_ref().expect("written").clone();
    let once = outcome(&conns[2], &first, 1, ConnectionStatus::Active);
    let mut twice = outcome(&conns[2], &first, 2, ConnectionStatus::Active);
    twice.meta.version = first.version + 1;
    let results = store
        .update_batch(&[once.clone(), twice, once])
        .await
        .expect("batch");
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(
        matches!(results[2], Err(StoreError::Conflict)),
        "{results:?}"
    );
    let bodies = drain(&store).await;
    assert_eq!(types(&bodies), ["connection.refresh_failing"]);
    assert_eq!(
        bodies[0]["data"]["version"],
        json!(results[0].as_ref().expect("written").version)
    );
}

/// `update_batch_from` raises what `update_batch` would, judged on the prior states the
/// caller passes (the rows as read at the versions written): a batch of healthy successes
/// writes its rows and no event; in a mixed batch a first failure raises `refresh_failing`, a
/// permanent one `needs_reconnect`, a success after failures `recovered`, each with the
/// version written, while continued failures raise nothing and a stale row (`Conflict`) or a
/// missing one (`NotFound`) neither writes nor raises anything.
pub async fn outbox_update_batch_from<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    use ConnectionStatus::{Active, NeedsReconnect};
    let store = make(TestDb::fresh("outbox_batch_from"), k1()).await;
    store.set_outbox(true);
    let conns: Vec<Connection> = (0..6)
        .map(|i| sample_connection("u", "tiktok", &format!("from-{i}")))
        .collect();
    let mut stored = Vec::new();
    for conn in &conns {
        stored.push(store.put(conn).await.expect("put").0);
    }
    stored[3] = update(&store, &conns[3], &stored[3], 2, Active).await;
    stored[4] = update(&store, &conns[4], &stored[4], 1, NeedsReconnect).await;
    drain(&store).await;

    let quiet = [
        outcome(&conns[0], &stored[0], 0, Active),
        outcome(&conns[1], &stored[1], 0, Active),
    ];
    let was = [Prior::of(&stored[0]), Prior::of(&stored[1])];
    let results = store.update_batch_from(&quiet, &was).await.expect("batch");
    for (i, result) in results.into_iter().enumerate() {
        let written = result.expect("written");
        assert_eq!(written.version, stored[i].version + 1, "row {i}");
        let read = store.get(conns[i].key()).await.expect("get").expect("row");
        assert_eq!(read.meta.version, written.version, "row {i} is written");
        stored[i] = written;
    }
    assert_eq!(types(&drain(&store).await), Vec::<&str>::new());

    // Row 5 is read, then imported again by someone else: the refresh's write is stale.
    let stale = outcome(&conns[5], &stored[5], 1, Active);
    let stale_was = Prior::of(&stored[5]);
    store.put(&conns[5]).await.expect("re-import");
    let missing_conn = sample_connection("u", "tiktok", "from-missing");
    let missing = outcome(&missing_conn, &stored[5], 1, NeedsReconnect);
    drain(&store).await;
    let batch = [
        outcome(&conns[0], &stored[0], 1, Active),
        outcome(&conns[1], &stored[1], 1, NeedsReconnect),
        outcome(&conns[2], &stored[2], 0, Active),
        outcome(&conns[3], &stored[3], 0, Active),
        outcome(&conns[4], &stored[4], 2, NeedsReconnect),
        stale,
        missing,
    ];
    let mut was: Vec<Prior> = stored[..5].iter().map(Prior::of).collect();
    was.extend([stale_was, stale_was]);
    let results = store.update_batch_from(&batch, &was).await.expect("batch");
    assert!(results[..5].iter().all(Result::is_ok), "{results:?}");
    assert!(
        matches!(results[5], Err(StoreError::Conflict)),
        "{results:?}"
    );
    assert!(
        matches!(results[6], Err(StoreError::NotFound)),
        "{results:?}"
    );
    let bodies = drain(&store).await;
    let mut raised: Vec<(&str, &str, i64)> = bodies
        .iter()
        .map(|b| {
            (
                b["data"]["account_id"].as_str().expect("account"),
                b["type"].as_str().expect("type"),
                b["data"]["version"].as_i64().expect("version"),
            )
        })
        .collect();
    raised.sort_unstable();
    let version = |i: usize| results[i].as_ref().expect("written").version;
    assert_eq!(
        raised,
        [
            ("from-0", "connection.refresh_failing", version(0)),
            ("from-1", "connection.needs_reconnect", version(1)),
            ("from-3", "connection.recovered", version(3)),
        ]
    );
    assert!(
        store.get(missing_conn.key()).await.expect("get").is_none(),
        "a missing row is not created"
    );
}

/// A connect session that ends failed or expired writes `connect_session.failed` with its
/// ids and error (the account only when the application named one); a completed one, and a
/// second finish, write nothing.
pub async fn outbox_connect_session_failed<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("outbox_sessions"), k1()).await;
    store.set_outbox(true);
    let plain = sample_session("failing", 600);
    let mut named = sample_session("expiring", 600);
    named.account_id = Some(AccountId::parse("acct 9").expect("account"));
    let done = sample_session("completing", 600);
    for session in [&plain, &named, &done] {
        insert_session(&store, session).await;
    }
    let denied = SessionError {
        code: "PROVIDER_ERROR".into(),
        message: "access_denied".into(),
    };
    let expired = SessionError {
        code: "SESSION_EXPIRED".into(),
        message: "the link expired".into(),
    };
    let finish = |id: &str, how: Finish, now: i64| {
        let store = &store;
        let id = id.to_owned();
        async move {
            store
                .finish_connect_session(&id, &how, at(now))
                .await
                .expect("finish")
        }
    };
    assert!(finish(&plain.id, Finish::Failed(denied.clone()), 5).await);
    assert!(finish(&named.id, Finish::Expired(expired.clone()), 6).await);
    let completed = Finish::Completed {
        account_id: AccountId::parse("acct 1").expect("account"),
    };
    assert!(finish(&done.id, completed, 7).await);
    assert!(!finish(&plain.id, Finish::Failed(denied.clone()), 8).await);
    let bodies = drain(&store).await;
    assert_eq!(
        types(&bodies),
        ["connect_session.failed", "connect_session.failed"]
    );
    assert_eq!(
        bodies[0]["data"],
        json!({"session_id": plain.id, "user_id": "connect user ü", "provider": "reddit",
               "error": {"code": "PROVIDER_ERROR", "message": "access_denied"}})
    );
    assert_eq!(
        bodies[1]["data"],
        json!({"session_id": named.id, "user_id": "connect user ü", "provider": "reddit",
               "account_id": "acct 9",
               "error": {"code": "SESSION_EXPIRED", "message": "the link expired"}})
    );
    assert_eq!(
        bodies[0]["timestamp"],
        json!("2026-05-28T20:26:45Z"),
        "at the finish"
    );
}

/// One connection's recent events: every `connection.*` event it raised and the failure of
/// a reconnect session that named it, newest first (in the order written), each with its id,
/// type, time and exact body; never another connection's (keys differing in one part
/// each), a provider event, a test event or a session that named no account. `limit`
/// takes the newest, 0 means the default; delivering changes nothing; writes with the
/// outbox off add nothing; a connection deleted and created again lists both lives.
pub async fn outbox_recent_connection_events<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("outbox_history"), k1()).await;
    store.set_outbox(true);
    let conn = sample_connection("connect user ü", "reddit", "acct 9");
    let (stored, _) = store.put(&conn).await.expect("put");
    let stored = update(&store, &conn, &stored, 1, ConnectionStatus::Active).await;
    update(&store, &conn, &stored, 2, ConnectionStatus::NeedsReconnect).await;
    // Neighbours: another account, user and provider, each differing in one part only.
    for (user, provider, account) in [
        ("connect user ü", "reddit", "acct 8"),
        ("connect user", "reddit", "acct 9"),
        ("connect user ü", "tiktok", "acct 9"),
    ] {
        store
            .put(&sample_connection(user, provider, account))
            .await
            .expect("put neighbour");
    }
    // A reconnect session for it fails; a session naming no account fails too.
    let mut reconnect = sample_session("history-reconnect", 600);
    reconnect.account_id = Some(AccountId::parse("acct 9").expect("account"));
    let plain = sample_session("history-plain", 600);
    for session in [&reconnect, &plain] {
        insert_session(&store, session).await;
        let failed = Finish::Failed(SessionError {
            code: "PROVIDER_ERROR".into(),
            message: "access_denied".into(),
        });
        assert!(
            store
                .finish_connect_session(&session.id, &failed, at(20))
                .await
                .expect("finish")
        );
    }
    store
        .insert_events(&[
            event(EventType::ProviderCircuitOpened, 21),
            event(EventType::WebhookTest, 22).only_to("a"),
        ])
        .await
        .expect("insert");

    let history = store
        .recent_connection_events(conn.key(), 10)
        .await
        .expect("history");
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "connect_session.failed",
            "connection.needs_reconnect",
            "connection.refresh_failing",
            "connection.created",
        ],
        "newest first"
    );
    for event in &history {
        let body: Value = serde_json::from_str(&event.body).expect("a JSON body");
        assert_eq!(body["id"], json!(event.id), "the body's id");
        assert_eq!(body["type"], json!(event.kind.as_str()));
        assert_eq!(body["data"]["account_id"], json!("acct 9"));
        assert_eq!(body["data"]["user_id"], json!("connect user ü"));
        let timestamp = body["timestamp"].as_str().expect("timestamp");
        let parsed =
            time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        assert_eq!(
            event.created_at, parsed,
            "created_at is the body's timestamp"
        );
    }
    assert_eq!(history[0].created_at, at(20), "the session's finish");

    let newest = store
        .recent_connection_events(conn.key(), 2)
        .await
        .expect("limit");
    assert_eq!(newest, history[..2], "a limit keeps the newest");
    assert_eq!(
        store
            .recent_connection_events(conn.key(), 0)
            .await
            .expect("default"),
        history,
        "0 is the default page"
    );
    let neighbour = ConnectionKey::parse("connect user ü", "reddit", "acct 8").expect("key");
    let theirs = store
        .recent_connection_events(&neighbour, 10)
        .await
        .expect("neighbour");
    assert_eq!(
        theirs.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["connection.created"]
    );
    let nobody = ConnectionKey::parse("nobody", "reddit", "acct 9").expect("key");
    assert!(
        store
            .recent_connection_events(&nobody, 10)
            .await
            .expect("nobody")
            .is_empty()
    );

    // Delivering them changes nothing.
    assert_eq!(drain(&store).await.len(), 9, "every event once");
    assert_eq!(
        store
            .recent_connection_events(conn.key(), 10)
            .await
            .expect("after delivery"),
        history
    );

    // With the outbox off, nothing is added; deleted and created again, both lives show.
    store.set_outbox(false);
    store.put(&conn).await.expect("put while off");
    assert_eq!(
        store
            .recent_connection_events(conn.key(), 10)
            .await
            .expect("off"),
        history
    );
    store.set_outbox(true);
    assert!(store.delete(conn.key()).await.expect("delete"));
    store.put(&conn).await.expect("create again");
    let lives = store
        .recent_connection_events(conn.key(), 3)
        .await
        .expect("lives");
    assert_eq!(
        lives.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        [
            "connection.created",
            "connection.deleted",
            "connect_session.failed"
        ]
    );
}

/// An event for `insert_events`, with its own `data`.
fn event(kind: EventType, n: i64) -> NewEvent {
    NewEvent::new(kind, at(n), json!({"n": n}))
}

/// Every delivery's id, oldest first.
async fn delivery_ids<S: Store>(store: &S) -> Vec<String> {
    all_deliveries(store)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect()
}

/// Every delivery, oldest first.
async fn all_deliveries<S: Store>(store: &S) -> Vec<DeliveryView> {
    let mut all = Vec::new();
    let mut query = DeliveryQuery {
        limit: 1000,
        ..DeliveryQuery::default()
    };
    loop {
        let page = store.list_deliveries(&query).await.expect("list");
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    all.reverse();
    all
}

/// `dispatch_events` takes events oldest first, up to its limit, and gives each one pending
/// delivery, due now, per endpoint subscribed to its type, or to its one endpoint when it
/// names one (if that endpoint is given); dispatching again adds nothing. `insert_events`
/// refuses an id twice and then writes nothing of the call.
pub async fn webhook_dispatch<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_dispatch"), k1()).await;
    let endpoints = [
        (
            "a".to_owned(),
            subscribed(&[EventType::ConnectionCreated, EventType::ConnectionDeleted]),
        ),
        ("b".to_owned(), every_event()),
        (
            "c".to_owned(),
            subscribed(&[EventType::ProviderCircuitOpened]),
        ),
    ];
    assert_eq!(
        store
            .dispatch_events(&endpoints, at(0), 10)
            .await
            .expect("dispatch"),
        0,
        "nothing to dispatch"
    );
    let events = [
        event(EventType::ConnectionCreated, 1),
        event(EventType::ProviderCircuitOpened, 2),
        event(EventType::WebhookTest, 3).only_to("c"),
        event(EventType::WebhookTest, 4).only_to("gone"),
        event(EventType::ProviderCircuitClosed, 5),
    ];
    // insert_events writes whatever the outbox switch says (it is off here).
    store.insert_events(&events[..2]).await.expect("insert");
    store.insert_events(&events[2..]).await.expect("insert");
    let err = store
        .insert_events(&[event(EventType::ConnectionDeleted, 6), events[0].clone()])
        .await
        .expect_err("a duplicate id");
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert_eq!(
        store
            .webhook_queue_stats(at(0))
            .await
            .expect("stats")
            .undispatched,
        5,
        "the refused call wrote nothing"
    );

    assert_eq!(
        store
            .dispatch_events(&endpoints, at(20), 2)
            .await
            .expect("dispatch"),
        2,
        "the limit"
    );
    let first: Vec<(String, String)> = all_deliveries(&store)
        .await
        .into_iter()
        .map(|d| (d.event_id, d.endpoint))
        .collect();
    let mut want = vec![
        (events[0].id.clone(), "a".to_owned()),
        (events[0].id.clone(), "b".to_owned()),
        (events[1].id.clone(), "b".to_owned()),
        (events[1].id.clone(), "c".to_owned()),
    ];
    let mut got = first.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the two oldest, fanned out by subscription");

    assert_eq!(
        store
            .dispatch_events(&endpoints, at(30), 10)
            .await
            .expect("dispatch"),
        3
    );
    for _ in 0..2 {
        assert_eq!(
            store
                .dispatch_events(&endpoints, at(40), 10)
                .await
                .expect("dispatch"),
            0,
            "dispatching again adds nothing"
        );
    }
    let all = all_deliveries(&store).await;
    let later: Vec<(&str, &str)> = all[4..]
        .iter()
        .map(|d| (d.event_id.as_str(), d.endpoint.as_str()))
        .collect();
    let mut later_sorted = later.clone();
    later_sorted.sort_unstable();
    let mut want = vec![(events[2].id.as_str(), "c"), (events[4].id.as_str(), "b")];
    want.sort_unstable();
    assert_eq!(
        later_sorted, want,
        "webhook.test only to its endpoint (c subscribes to nothing of it; `gone` is not \
         configured), circuit_closed only to b"
    );
    assert_eq!(all.len(), 6, "nothing twice");
    for d in &all {
        let due = if d.created_at == at(20) {
            at(20)
        } else {
            at(30)
        };
        assert_eq!(
            (
                d.status,
                d.attempts,
                d.next_attempt_at,
                d.created_at,
                d.updated_at
            ),
            (DeliveryStatus::Pending, 0, Some(due), due, due),
            "{d:?}"
        );
        assert_eq!(d.first_attempt_at, None);
        assert_eq!((d.last_status, d.last_error.as_deref()), (None, None));
        let kind = events
            .iter()
            .find(|e| e.id == d.event_id)
            .expect("its event")
            .kind;
        assert_eq!(d.kind, kind, "a delivery carries its event's type");
        assert_eq!(
            store.delivery(&d.id).await.expect("delivery").as_ref(),
            Some(d),
            "read by id"
        );
    }
    assert_eq!(store.delivery("dlv_unknown").await.expect("delivery"), None);
    let claimed = store
        .claim_deliveries(at(40), "w", at(100), 10, &caps(10))
        .await
        .expect("claim");
    for c in &claimed {
        let event = events.iter().find(|e| e.id == c.event_id).expect("event");
        assert_eq!(c.body, event.body, "the exact body written");
    }
    assert_eq!(claimed.len(), 6);
}

/// Deliveries for `events` events to `endpoint`, dispatched at `at(now)`.
async fn deliveries_for<S: Store>(store: &S, endpoint: &str, events: usize, now: i64) {
    let batch: Vec<NewEvent> = (0..events)
        .map(|_| event(EventType::ConnectionCreated, now))
        .collect();
    store.insert_events(&batch).await.expect("insert");
    let endpoints = [(endpoint.to_owned(), every_event())];
    let mut dispatched = 0;
    while dispatched < events {
        let n = store
            .dispatch_events(&endpoints, at(now), 1000)
            .await
            .expect("dispatch");
        assert!(n > 0, "the events were dispatched");
        dispatched += usize::try_from(n).expect("count");
    }
}

fn ids(claimed: &[ClaimedDelivery]) -> Vec<&str> {
    claimed.iter().map(|c| c.id.as_str()).collect()
}

async fn must_delivery<S: Store>(store: &S, id: &str) -> DeliveryView {
    store
        .delivery(id)
        .await
        .expect("delivery")
        .unwrap_or_else(|| panic!("delivery {id} is missing"))
}

/// `purge_webhook_events` deletes, oldest first and up to its limit, the dispatched events
/// written before the cut-off whose deliveries all finished before it, and those deliveries;
/// an undispatched event, an event with a pending delivery, and one whose failed delivery
/// was retried by hand after the cut-off stay, and what stays can still be delivered.
pub async fn webhook_purge<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_purge"), k1()).await;
    deliveries_for(&store, "ep", 5, 10).await;
    let claimed = store
        .claim_deliveries(at(10), "a", at(60), 10, &caps(10))
        .await
        .expect("claim");
    let d: Vec<String> = claimed.iter().map(|c| c.id.clone()).collect();
    assert_eq!(d.len(), 5);
    let ok = DeliveryOutcome::Delivered { status: 200 };
    let fail = DeliveryOutcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    let later = DeliveryOutcome::Retry {
        at: at(1_000),
        status: Some(503),
        error: "HTTP 503".into(),
    };
    for (id, outcome) in [(&d[0], &ok), (&d[1], &ok), (&d[2], &fail), (&d[3], &fail)] {
        assert!(
            store
                .finish_delivery(id, "a", outcome, at(20))
                .await
                .expect("finish")
        );
    }
    assert!(
        store
            .finish_delivery(&d[4], "a", &later, at(20))
            .await
            .expect("finish")
    );
    // d3 is sent again by hand at 200 and fails again at 210.
    store
        .retry_delivery(&d[3], at(200))
        .await
        .expect("retry")
        .expect("known");
    let again = store
        .claim_deliveries(at(200), "a", at(260), 10, &caps(10))
        .await
        .expect("claim");
    assert_eq!(ids(&again), [d[3].as_str()]);
    assert!(
        store
            .finish_delivery(&d[3], "a", &fail, at(210))
            .await
            .expect("finish")
    );
    // Written before the cut-off but never dispatched.
    store
        .insert_events(&[event(EventType::ConnectionDeleted, 10)])
        .await
        .expect("insert");

    assert_eq!(
        store.purge_webhook_events(at(100), 2).await.expect("purge"),
        2,
        "the limit"
    );
    assert_eq!(
        delivery_ids(&store).await,
        [d[2].clone(), d[3].clone(), d[4].clone()],
        "oldest first"
    );
    assert_eq!(
        store
            .purge_webhook_events(at(100), 10)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        delivery_ids(&store).await,
        [d[3].clone(), d[4].clone()],
        "a failed delivery goes once it is older than the cut-off"
    );
    assert_eq!(
        store
            .purge_webhook_events(at(100), 10)
            .await
            .expect("purge"),
        0,
        "retried after the cut-off, pending, undispatched: all stay"
    );
    assert_eq!(
        store
            .purge_webhook_events(at(300), 10)
            .await
            .expect("purge"),
        1
    );
    assert_eq!(
        delivery_ids(&store).await,
        [d[4].clone()],
        "a pending delivery stays"
    );
    let stats = store.webhook_queue_stats(at(1_000)).await.expect("stats");
    assert_eq!((stats.pending, stats.undispatched), (1, 1));
    let due = store
        .claim_deliveries(at(1_000), "a", at(1_060), 10, &caps(10))
        .await
        .expect("claim");
    assert_eq!(ids(&due), [d[4].as_str()]);
    assert!(!due[0].body.is_empty(), "its event is still there");
}

/// Claiming takes due, pending, unleased (or expired) deliveries earliest first, up to the
/// limit, leased to the claimer; only the lease holder finishes one, once; each outcome
/// writes what the trait says; an expired lease can be claimed by another, which takes the
/// finish away from the first.
pub async fn webhook_claim_and_finish<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_claim"), k1()).await;
    deliveries_for(&store, "ep", 2, 20).await;
    deliveries_for(&store, "ep", 1, 10).await;
    let all = all_deliveries(&store).await;
    let (d1, d2, d0) = (&all[0].id, &all[1].id, &all[2].id);
    assert!(
        store
            .claim_deliveries(at(9), "a", at(100), 10, &caps(10))
            .await
            .expect("claim")
            .is_empty(),
        "nothing due yet"
    );
    let claimed = store
        .claim_deliveries(at(20), "a", at(50), 2, &caps(10))
        .await
        .expect("claim");
    assert_eq!(
        ids(&claimed),
        [d0, d1],
        "earliest due first, then by id; the limit"
    );
    assert_eq!(
        (claimed[0].attempts, claimed[0].first_attempt_at),
        (0, None)
    );
    assert_eq!(claimed[0].endpoint, "ep");
    assert_eq!(claimed[0].kind, EventType::ConnectionCreated);
    assert_eq!(
        ids(&store
            .claim_deliveries(at(20), "b", at(55), 10, &caps(10))
            .await
            .expect("claim")),
        [d2],
        "leased ones are not claimed again"
    );
    assert!(
        store
            .claim_deliveries(at(20), "a", at(50), 10, &caps(10))
            .await
            .expect("claim")
            .is_empty(),
        "nor by their holder"
    );

    // Only the holder finishes.
    let before = must_delivery(&store, d0).await;
    let retry = DeliveryOutcome::Retry {
        at: at(100),
        status: Some(503),
        error: "HTTP 503".into(),
    };
    assert!(
        !store
            .finish_delivery(d0, "b", &retry, at(21))
            .await
            .expect("finish"),
        "not the holder"
    );
    assert!(
        !store
            .finish_delivery("dlv_00000000000000000000f", "a", &retry, at(21))
            .await
            .expect("finish"),
        "unknown"
    );
    assert_eq!(
        must_delivery(&store, d0).await,
        before,
        "a refused finish writes nothing"
    );
    assert!(
        store
            .finish_delivery(d0, "a", &retry, at(21))
            .await
            .expect("finish")
    );
    let after = must_delivery(&store, d0).await;
    assert_eq!(
        (after.status, after.attempts, after.next_attempt_at),
        (DeliveryStatus::Pending, 1, Some(at(100)))
    );
    assert_eq!(
        (after.last_status, after.last_error.as_deref()),
        (Some(503), Some("HTTP 503"))
    );
    assert_eq!(
        (after.first_attempt_at, after.updated_at, after.created_at),
        (Some(at(21)), at(21), at(10))
    );
    assert!(
        !store
            .finish_delivery(d0, "a", &retry, at(22))
            .await
            .expect("finish"),
        "the lease was released: finished once"
    );

    // d1's lease (a's, until 50) expires; b claims it and a can no longer finish it.
    assert!(
        store
            .claim_deliveries(at(49), "b", at(200), 10, &caps(10))
            .await
            .expect("claim")
            .is_empty(),
        "d1 is leased until 50, d2 until 55, d0 due at 100"
    );
    assert_eq!(
        ids(&store
            .claim_deliveries(at(50), "b", at(200), 10, &caps(10))
            .await
            .expect("claim")),
        [d1],
        "an expired lease is claimed again"
    );
    let delivered = DeliveryOutcome::Delivered { status: 204 };
    assert!(
        !store
            .finish_delivery(d1, "a", &delivered, at(51))
            .await
            .expect("finish"),
        "a lost the lease"
    );
    // b's lease on d2 expired at 55, but nobody took it since: b still holds it.
    assert!(
        store
            .finish_delivery(d2, "b", &delivered, at(60))
            .await
            .expect("finish"),
        "an expired lease nobody took is still the holder's"
    );
    let d2_view = must_delivery(&store, d2).await;
    assert_eq!(
        (
            d2_view.status,
            d2_view.attempts,
            d2_view.next_attempt_at,
            d2_view.last_status,
            d2_view.last_error
        ),
        (DeliveryStatus::Delivered, 1, None, Some(204), None)
    );

    let failed = DeliveryOutcome::Failed {
        status: None,
        error: "timed out after 10 s".into(),
    };
    assert!(
        store
            .finish_delivery(d1, "b", &failed, at(61))
            .await
            .expect("finish")
    );
    let d1_view = must_delivery(&store, d1).await;
    assert_eq!(
        (
            d1_view.status,
            d1_view.attempts,
            d1_view.next_attempt_at,
            d1_view.last_status,
            d1_view.last_error.as_deref()
        ),
        (
            DeliveryStatus::Failed,
            1,
            None,
            None,
            Some("timed out after 10 s")
        )
    );

    // d0 is due again at 100; its second attempt keeps the first attempt's time.
    let claimed = store
        .claim_deliveries(at(100), "a", at(130), 10, &caps(10))
        .await
        .expect("claim");
    assert_eq!(
        ids(&claimed),
        [d0],
        "delivered and failed ones are never claimed"
    );
    assert_eq!(
        (claimed[0].attempts, claimed[0].first_attempt_at),
        (1, Some(at(21)))
    );
    assert!(
        store
            .finish_delivery(
                d0,
                "a",
                &DeliveryOutcome::Delivered { status: 200 },
                at(101)
            )
            .await
            .expect("finish")
    );
    let d0_view = must_delivery(&store, d0).await;
    assert_eq!(
        (
            d0_view.status,
            d0_view.attempts,
            d0_view.last_status,
            d0_view.last_error,
            d0_view.first_attempt_at
        ),
        (DeliveryStatus::Delivered, 2, Some(200), None, Some(at(21)))
    );
    assert!(
        store
            .claim_deliveries(at(10_000), "c", at(10_100), 10, &caps(10))
            .await
            .expect("claim")
            .is_empty()
    );
}

/// A claim takes at most each endpoint's capacity, and nothing of an endpoint it does not
/// list (or lists with no free slot): the backlog of a dead endpoint (due first) leaves room
/// for the others.
pub async fn webhook_claim_per_endpoint_limit<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_per_endpoint"), k1()).await;
    deliveries_for(&store, "dead", 10, 1).await;
    deliveries_for(&store, "live", 3, 2).await;
    deliveries_for(&store, "slow", 1, 3).await;
    let endpoints = |claimed: &[ClaimedDelivery]| {
        let mut e: Vec<String> = claimed.iter().map(|c| c.endpoint.clone()).collect();
        e.sort();
        e
    };
    let first = store
        .claim_deliveries(at(10), "a", at(100), 5, &caps(2))
        .await
        .expect("claim");
    assert_eq!(endpoints(&first), ["dead", "dead", "live", "live", "slow"]);
    let second = store
        .claim_deliveries(at(10), "b", at(100), 3, &caps(2))
        .await
        .expect("claim");
    assert_eq!(endpoints(&second), ["dead", "dead", "live"]);
    let third = store
        .claim_deliveries(at(10), "c", at(100), 100, &caps(1))
        .await
        .expect("claim");
    assert_eq!(endpoints(&third), ["dead"]);
    let none = store
        .claim_deliveries(at(10), "d", at(100), 100, &caps(0))
        .await
        .expect("claim");
    assert!(none.is_empty(), "no free slot, nothing claimed");
    let unlisted = store
        .claim_deliveries(at(10), "d", at(100), 100, &[("live".to_owned(), 10)])
        .await
        .expect("claim");
    assert!(
        unlisted.is_empty(),
        "dead is not listed, live has nothing left"
    );
    let rest = store
        .claim_deliveries(at(10), "e", at(100), 100, &caps(100))
        .await
        .expect("claim");
    assert_eq!(endpoints(&rest), ["dead"; 5]);
}

/// `retry_delivery` makes a failed delivery pending and due at once, keeping its attempts
/// and last error; anything else comes back unchanged, an unknown id as `None`.
pub async fn webhook_retry_delivery<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_retry"), k1()).await;
    deliveries_for(&store, "ep", 3, 0).await;
    let claimed = store
        .claim_deliveries(at(0), "a", at(60), 10, &caps(10))
        .await
        .expect("claim");
    let (failed, delivered, pending) = (&claimed[0].id, &claimed[1].id, &claimed[2].id);
    let fail = DeliveryOutcome::Failed {
        status: Some(410),
        error: "HTTP 410".into(),
    };
    assert!(
        store
            .finish_delivery(failed, "a", &fail, at(1))
            .await
            .expect("finish")
    );
    let ok = DeliveryOutcome::Delivered { status: 200 };
    assert!(
        store
            .finish_delivery(delivered, "a", &ok, at(1))
            .await
            .expect("finish")
    );

    let before = must_delivery(&store, failed).await;
    let retried = store
        .retry_delivery(failed, at(500))
        .await
        .expect("retry")
        .expect("known");
    let mut want = before.clone();
    want.status = DeliveryStatus::Pending;
    want.next_attempt_at = Some(at(500));
    want.updated_at = at(500);
    assert_eq!(retried, want, "pending, due now, attempts and error kept");
    assert_eq!(must_delivery(&store, failed).await, want, "as stored");

    for id in [delivered, pending] {
        let view = must_delivery(&store, id).await;
        assert_eq!(
            store.retry_delivery(id, at(600)).await.expect("retry"),
            Some(view),
            "not failed: unchanged"
        );
    }
    assert_eq!(
        store
            .retry_delivery("dlv_0000000000000000000aa", at(600))
            .await
            .expect("retry"),
        None
    );
    // Due at 500, lease free: claimable again, its attempts carried on.
    assert!(
        store
            .claim_deliveries(at(499), "b", at(900), 10, &caps(10))
            .await
            .expect("claim")
            .iter()
            .all(|c| c.id != *failed),
        "not before it is due"
    );
    let again = store
        .claim_deliveries(at(500), "b", at(900), 10, &caps(10))
        .await
        .expect("claim");
    let again = again
        .iter()
        .find(|c| c.id == *failed)
        .expect("claimed again");
    assert_eq!((again.attempts, again.first_attempt_at), (1, Some(at(1))));
}

/// Listing: newest first, every filter, pages joined by cursors, a foreign cursor refused.
pub async fn webhook_list_deliveries<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_list"), k1()).await;
    let endpoints = [
        ("a".to_owned(), every_event()),
        ("b".to_owned(), subscribed(&[EventType::ConnectionDeleted])),
    ];
    let kinds = [
        EventType::ConnectionCreated,
        EventType::ConnectionDeleted,
        EventType::ConnectionCreated,
        EventType::ConnectionDeleted,
        EventType::ProviderCircuitOpened,
    ];
    for (n, kind) in kinds.into_iter().enumerate() {
        let n = i64::try_from(n).expect("n");
        store
            .insert_events(&[event(kind, n)])
            .await
            .expect("insert");
        store
            .dispatch_events(&endpoints, at(n), 10)
            .await
            .expect("dispatch");
    }
    // 7 deliveries: a ×5, b ×2. Fail the oldest of a's.
    let claimed = store
        .claim_deliveries(at(0), "w", at(60), 1, &caps(1))
        .await
        .expect("claim");
    let fail = DeliveryOutcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    assert!(
        store
            .finish_delivery(&claimed[0].id, "w", &fail, at(1))
            .await
            .expect("finish")
    );
    let all = store
        .list_deliveries(&DeliveryQuery::default())
        .await
        .expect("list");
    assert_eq!(all.items.len(), 7);
    assert_eq!(all.next_cursor, None, "one page");
    let ids: Vec<&str> = all.items.iter().map(|d| d.id.as_str()).collect();
    let mut newest_first = ids.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, newest_first, "newest first, by id");
    assert!(
        all.items
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "ids sort by creation"
    );

    let list = |query: DeliveryQuery| {
        let store = &store;
        async move { store.list_deliveries(&query).await.expect("list").items }
    };
    let failed = list(DeliveryQuery {
        status: Some(DeliveryStatus::Failed),
        ..DeliveryQuery::default()
    })
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, claimed[0].id);
    let pending = list(DeliveryQuery {
        status: Some(DeliveryStatus::Pending),
        ..DeliveryQuery::default()
    })
    .await;
    assert_eq!(pending.len(), 6);
    let to_b = list(DeliveryQuery {
        endpoint: Some("b".into()),
        ..DeliveryQuery::default()
    })
    .await;
    assert_eq!(to_b.len(), 2);
    assert!(to_b.iter().all(|d| d.endpoint == "b"));
    let deleted_to_a = list(DeliveryQuery {
        kind: Some(EventType::ConnectionDeleted),
        endpoint: Some("a".into()),
        status: Some(DeliveryStatus::Pending),
        ..DeliveryQuery::default()
    })
    .await;
    assert_eq!(deleted_to_a.len(), 2);
    assert!(
        deleted_to_a
            .iter()
            .all(|d| d.kind == EventType::ConnectionDeleted && d.endpoint == "a")
    );
    assert!(
        list(DeliveryQuery {
            endpoint: Some("nobody".into()),
            ..DeliveryQuery::default()
        })
        .await
        .is_empty()
    );

    // Pages of 2 (of the 6 pending): 2, 2, 2, no cursor after the last.
    let mut query = DeliveryQuery {
        status: Some(DeliveryStatus::Pending),
        limit: 2,
        ..DeliveryQuery::default()
    };
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list_deliveries(&query).await.expect("page");
        pages += 1;
        assert!(page.items.len() <= 2);
        paged.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, pending, "pages join into the whole list");

    for bad in ["", "not a cursor", "ZGx2X3Nob3J0"] {
        let err = store
            .list_deliveries(&DeliveryQuery {
                cursor: Some(bad.to_owned()),
                ..DeliveryQuery::default()
            })
            .await
            .expect_err(bad);
        assert!(matches!(err, StoreError::BadCursor), "{bad:?}: {err:?}");
    }
    let connection_cursor =
        tokenwarden::store::encode_cursor(&ConnectionKey::parse("u", "tiktok", "a").expect("key"));
    let err = store
        .list_deliveries(&DeliveryQuery {
            cursor: Some(connection_cursor),
            ..DeliveryQuery::default()
        })
        .await
        .expect_err("a connection cursor");
    assert!(matches!(err, StoreError::BadCursor), "{err:?}");
}

/// Queue sizes: pending, due (claimable now), failed, delivered, undispatched.
pub async fn webhook_queue_stats<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("webhook_stats"), k1()).await;
    assert_eq!(
        store.webhook_queue_stats(at(0)).await.expect("stats"),
        WebhookQueueStats::default()
    );
    deliveries_for(&store, "ep", 5, 0).await;
    store
        .insert_events(&[event(EventType::ProviderCircuitClosed, 0)])
        .await
        .expect("insert");
    let claimed = store
        .claim_deliveries(at(0), "w", at(30), 3, &caps(10))
        .await
        .expect("claim");
    let finish = |i: usize, outcome: DeliveryOutcome| {
        let (store, id) = (&store, claimed[i].id.clone());
        async move {
            assert!(
                store
                    .finish_delivery(&id, "w", &outcome, at(1))
                    .await
                    .expect("finish")
            );
        }
    };
    finish(0, DeliveryOutcome::Delivered { status: 200 }).await;
    finish(
        1,
        DeliveryOutcome::Failed {
            status: Some(404),
            error: "HTTP 404".into(),
        },
    )
    .await;
    // Pending: the retried one (due at 100) and the two never claimed (due, free).
    finish(
        2,
        DeliveryOutcome::Retry {
            at: at(100),
            status: None,
            error: "connection refused".into(),
        },
    )
    .await;
    let stats = |now| {
        let store = &store;
        async move { store.webhook_queue_stats(at(now)).await.expect("stats") }
    };
    assert_eq!(
        stats(1).await,
        WebhookQueueStats {
            pending: 3,
            due: 2,
            failed: 1,
            delivered: 1,
            undispatched: 1,
        }
    );
    let relaunched = store
        .claim_deliveries(at(1), "x", at(30), 10, &caps(10))
        .await
        .expect("claim");
    assert_eq!(relaunched.len(), 2);
    assert_eq!(stats(1).await.due, 0, "leased");
    assert_eq!(stats(30).await.due, 2, "leases expired");
    assert_eq!(stats(100).await.due, 3, "and the retry is due");
}

/// Two stores over one database claim 200 deliveries at once: each is claimed exactly once.
pub async fn concurrent_webhook_claims<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("concurrent_wh_claims");
    let stores = [
        Arc::new(make(db.clone(), k1()).await),
        Arc::new(make(db, k1()).await),
    ];
    deliveries_for(stores[0].as_ref(), "a", 100, 0).await;
    deliveries_for(stores[0].as_ref(), "b", 100, 0).await;
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let owner = format!("claimer-{i}");
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim_deliveries(at(0), &owner, at(600), 7, &caps(5))
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|c| c.id));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    let total = all.len();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), total, "no delivery claimed twice");
    assert_eq!(total, 200, "every delivery claimed");
}

/// Two stores over one database dispatch 200 events at once: each event is dispatched by
/// exactly one of them, and fanned out once.
pub async fn concurrent_webhook_dispatch<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("concurrent_wh_dispatch");
    let stores = [
        Arc::new(make(db.clone(), k1()).await),
        Arc::new(make(db, k1()).await),
    ];
    let events: Vec<NewEvent> = (0..200)
        .map(|n| event(EventType::ConnectionCreated, n))
        .collect();
    stores[0].insert_events(&events).await.expect("insert");
    let endpoints = vec![
        ("a".to_owned(), every_event()),
        ("b".to_owned(), every_event()),
    ];
    let tasks: Vec<_> = stores
        .iter()
        .map(|store| {
            let (store, endpoints) = (Arc::clone(store), endpoints.clone());
            tokio::spawn(async move {
                let mut dispatched = 0;
                loop {
                    let n = store
                        .dispatch_events(&endpoints, at(0), 7)
                        .await
                        .expect("dispatch");
                    if n == 0 {
                        return dispatched;
                    }
                    dispatched += n;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    assert_eq!(
        total, 200,
        "each event dispatched by exactly one dispatcher"
    );
    let stats = stores[1].webhook_queue_stats(at(0)).await.expect("stats");
    assert_eq!(
        (stats.undispatched, stats.pending),
        (0, 400),
        "fanned out once"
    );
    let mut seen = HashSet::new();
    for d in all_deliveries(stores[1].as_ref()).await {
        assert!(
            seen.insert((d.event_id, d.endpoint)),
            "one per event and endpoint"
        );
    }
    assert_eq!(seen.len(), 400);
    // The bodies are the events' own.
    let claimed = stores[1]
        .claim_deliveries(at(0), "w", at(60), 1000, &caps(1000))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 400);
    for c in &claimed {
        let event = events.iter().find(|e| e.id == c.event_id).expect("event");
        assert_eq!(c.body, event.body);
    }
}
