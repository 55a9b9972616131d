//! The store conformance suite: the one contract every [`Store`] backend is tested against.
//!
//! This module owns the checks that pin down the trait's semantics (round trips, replace,
//! compare-and-swap, listing and paging, counts, key usage, decryption failures, key rotation,
//! concurrent updates; the webhook outbox's in `outbox`), so that backends cannot drift apart. It contains no backend; each
//! backend's tests run it. It is test support code: checks panic on failure.
//!
//! # The factory
//!
//! Every check takes a factory `make(db, keys) -> impl Future<Output = S>` that opens a store
//! over the database named by `db`, sealing with `keys`:
//!
//! * a [`TestDb`] the factory has not seen before must give an **empty** database;
//! * two calls with the **same** `TestDb` must give stores over the **same** data (the key
//!   rotation checks open a second store with another key ring over what the first wrote).
//!
//! Each check makes its own fresh [`TestDb`] (unique across processes), so checks can run in
//! parallel against one server. How a backend maps a `TestDb` to a database:
//!
//! * SQLite file: a file `<tempdir>/<db.name()>.db`.
//! * SQLite in memory or an in-memory store: a map from `db.name()` to the shared state
//!   (for SQLite, a pool handed to [`SqliteStore::from_pool`]).
//! * PostgreSQL: a schema named `db.name()` (a valid unquoted identifier, ≤ 63 bytes):
//!   `CREATE SCHEMA IF NOT EXISTS`, then connect with `search_path` set to it and run the
//!   migrations there. Text keys must sort byte-wise (`COLLATE "C"`) to match the order
//!   checked here, which is [`ConnectionKey`]'s `Ord`.
//!
//! # Running it
//!
//! [`store_conformance_tests!`](crate::store_conformance_tests) generates one `#[tokio::test]`
//! per check, so failures are reported separately and checks run in parallel. The checks
//! are listed once, in `for_each_check!` below: a check added there runs on every backend
//! whose tests use the macro (memory, SQLite on a file and in memory, PostgreSQL), and a
//! unit test fails when a public check is missing from it.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tokenwarden::{KeyRing, store::MemoryStore};
//! # use tokenwarden_testkit::conformance::TestDb;
//! // A store for each `TestDb` (a real backend keeps a map so two calls share data).
//! fn memory(_db: TestDb, keys: Arc<KeyRing>) -> std::future::Ready<MemoryStore> {
//!     std::future::ready(MemoryStore::new(keys))
//! }
//! tokenwarden_testkit::store_conformance_tests!(memory);
//! ```
//!
//! A backend that needs set-up and clean-up around each check gives a runner instead,
//! `store_conformance_tests!(run_with = path::to::runner)`: an `async fn` that receives the
//! check as `FnOnce(factory) -> impl Future` and runs it between the two. Either form takes
//! outer attributes first (for example `#[cfg_attr(…, ignore = "…")]`), applied to every
//! generated test.
//!
//! Times in these checks are whole seconds: stores may keep only seconds.
//!
//! [`SqliteStore::from_pool`]: tokenwarden::store::SqliteStore::from_pool

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use time::OffsetDateTime;

use tokenwarden::connect::session::{
    ClaimOutcome, ConnectSession, Finish, FlowSecrets, FlowStart, OpenOutcome, SessionError,
    SessionState,
};
use tokenwarden::connection::{
    AccountId, Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, LastError,
    ProviderName, Tokens, UserId,
};
use tokenwarden::crypto::KeyRing;
use tokenwarden::secret::{AccessToken, RefreshToken};
use tokenwarden::store::{
    Claimed, DEFAULT_LIST_LIMIT, ListQuery, PutOutcome, QueueStats, Store, StoreError, reseal_all,
};

use crate::fixtures::{at, sample_connection, test_keys};

mod outbox;
pub use outbox::{
    concurrent_webhook_claims, concurrent_webhook_dispatch, outbox_connect_session_failed,
    outbox_connection_events, outbox_failed_writes_raise_nothing, outbox_off_writes_nothing,
    outbox_recent_connection_events, outbox_update_batch, outbox_update_batch_from,
    webhook_claim_and_finish, webhook_claim_per_endpoint_limit, webhook_dispatch,
    webhook_list_deliveries, webhook_purge, webhook_queue_stats, webhook_retry_delivery,
};

/// Names one test database; see the module docs for what a factory must do with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TestDb(String);

impl TestDb {
    /// A name no other check, test process or earlier run uses: `tw_<check>_<pid>_<time>_<n>`,
    /// lowercase ASCII, at most 63 bytes (a PostgreSQL identifier, a file name).
    pub fn fresh(check: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 & 0xffff_ffff_ffff;
        let check: String = check
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(20)
            .collect();
        Self(format!("tw_{check}_{:x}_{nanos:x}_{n}", std::process::id()))
    }

    /// The name: `[a-z0-9_]`, starting with a letter.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The one list of checks. Every use of the list goes through this macro, so the
/// per-backend tests and [`CHECKS`] cannot drift apart: it hands `__conformance_expand!` a
/// mode, that mode's `[arguments]` and every check's name.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_check {
    ($mode:tt [$($args:tt)*]) => {
        $crate::__conformance_expand! { $mode [$($args)*]
            round_trip,
            put_replaces,
            update_compare_and_swap,
            stale_update_after_put,
            delete,
            insert_if_absent,
            concurrent_inserts,
            list_filters_and_order,
            list_pagination,
            list_default_limit,
            list_bad_cursor,
            count_by_status,
            key_usage,
            missing_key,
            rotation_read,
            concurrent_updates,
            update_batch,
            concurrent_update_batches,
            leases,
            concurrent_leases,
            claim_due,
            concurrent_claims,
            queue,
            reseal,
            connect_sessions,
            concurrent_connect_claims,
            outbox_connection_events,
            outbox_off_writes_nothing,
            outbox_failed_writes_raise_nothing,
            outbox_update_batch,
            outbox_update_batch_from,
            outbox_connect_session_failed,
            outbox_recent_connection_events,
            webhook_dispatch,
            webhook_claim_and_finish,
            webhook_claim_per_endpoint_limit,
            webhook_retry_delivery,
            webhook_list_deliveries,
            webhook_queue_stats,
            webhook_purge,
            concurrent_webhook_claims,
            concurrent_webhook_dispatch,
        }
    };
}

/// What the list expands to; see [`store_conformance_tests!`](crate::store_conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_expand {
    (names [] $($check:ident),* $(,)?) => {
        &[$(stringify!($check)),*]
    };
    (factory [$attrs:tt $make:expr] $($check:ident),* $(,)?) => {
        $($crate::__conformance_expand! { test_with_factory $attrs [$make] $check })*
    };
    (runner [$attrs:tt $run:path] $($check:ident),* $(,)?) => {
        $($crate::__conformance_expand! { test_with_runner $attrs [$run] $check })*
    };
    (test_with_factory [$(#[$attr:meta])*] [$make:expr] $check:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $check() {
            let make = $make;
            $crate::conformance::$check(&make).await;
        }
    };
    (test_with_runner [$(#[$attr:meta])*] [$run:path] $check:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $check() {
            $run(|make| async move { $crate::conformance::$check(&make).await }).await;
        }
    };
}

/// Generates one `#[tokio::test]` per conformance check, named after it.
///
/// `store_conformance_tests!(make)`: `make` is an expression evaluated afresh in each test
/// that yields the factory (see the module docs). `store_conformance_tests!(run_with =
/// runner)`: `runner(check).await` runs each test, where `check` is
/// `FnOnce(factory) -> impl Future<Output = ()>`, so the runner can prepare a database before
/// and clean up after. Outer attributes given first are put on every test.
#[macro_export]
macro_rules! store_conformance_tests {
    ($(#[$attr:meta])* run_with = $run:path) => {
        $crate::__for_each_check!(runner [[$(#[$attr])*] $run]);
    };
    ($(#[$attr:meta])* $make:expr) => {
        $crate::__for_each_check!(factory [[$(#[$attr])*] $make]);
    };
}

/// The name of every check, in the order of the list that generates the tests.
pub const CHECKS: &[&str] = __for_each_check!(names []);

fn k1() -> Arc<KeyRing> {
    test_keys("k1", &["k1"])
}

/// `conn` as read back from a store that returned `stored`.
fn with_version(conn: &Connection, stored: &ConnectionMeta) -> Connection {
    let mut conn = conn.clone();
    conn.meta.version = stored.version;
    conn
}

fn assert_tokens(got: &Connection, want: &Connection) {
    assert_eq!(
        got.tokens.access_token.expose_secret(),
        want.tokens.access_token.expose_secret(),
        "access token of {}",
        want.meta.key
    );
    assert_eq!(
        got.tokens
            .refresh_token
            .as_ref()
            .map(RefreshToken::expose_secret),
        want.tokens
            .refresh_token
            .as_ref()
            .map(RefreshToken::expose_secret),
        "refresh token of {}",
        want.meta.key
    );
}

/// The keys of claimed rows, in the order returned; panics on a row that did not read back.
fn claimed_keys(claimed: &[Claimed]) -> Vec<ConnectionKey> {
    claimed
        .iter()
        .map(|c| {
            let conn = c
                .connection
                .as_ref()
                .unwrap_or_else(|e| panic!("claimed {} unreadable: {e:?}", c.key));
            assert_eq!(conn.key(), &c.key, "a claim carries its own row");
            c.key.clone()
        })
        .collect()
}

async fn must_get<S: Store>(store: &S, key: &ConnectionKey) -> Connection {
    store
        .get(key)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{key} is missing"))
}

/// Put/get round trip of every field: unicode ids, `None` expiry, any JSON metadata,
/// scopes, last error; `has_refresh_token` follows the tokens; missing keys are `None`.
pub async fn round_trip<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("round_trip"), k1()).await;
    store.ping().await.expect("ping");

    let mut full = sample_connection("ユーザー émile 👩‍💻", "tiktok", "账户:42 (main)");
    full.meta.consecutive_failures = 2;
    full.meta.last_error = Some(LastError {
        code: "TOKEN_REFRESH_ERROR".into(),
        message: "temporarily_unavailable — «retry»".into(),
        provider_error: Some("temporarily_unavailable ü".into()),
        at: at(-60),
    });
    let (meta, outcome) = store.put(&full).await.expect("put");
    assert_eq!(outcome, PutOutcome::Created);
    assert!(meta.version > 0, "versions are positive");
    assert_eq!(
        meta,
        with_version(&full, &meta).meta,
        "put returns the stored metadata"
    );
    let got = must_get(&store, full.key()).await;
    assert_eq!(got.meta, meta, "get returns what put stored");
    assert_tokens(&got, &full);

    let mut bare = sample_connection("user-1", "reddit", "t2_abc");
    bare.meta.expires_at = None;
    bare.meta.refresh_expires_at = None;
    bare.meta.last_refreshed_at = None;
    bare.meta.scopes = Vec::new();
    bare.meta.metadata = serde_json::Value::Null;
    bare.meta.token_type = "bearer".into();
    bare.tokens.refresh_token = None;
    // Deliberately inconsistent: the store must derive the flag from the tokens.
    bare.meta.has_refresh_token = true;
    let (meta, _) = store.put(&bare).await.expect("put bare");
    assert!(
        !meta.has_refresh_token,
        "has_refresh_token follows the stored refresh token"
    );
    let got = must_get(&store, bare.key()).await;
    assert_eq!(got.meta, meta);
    assert_eq!(got.meta.expires_at, None);
    assert_tokens(&got, &bare);

    for (i, metadata) in [
        json!("a string"),
        json!([1, 2.5, "three"]),
        json!(42),
        json!(true),
        json!({}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut conn = sample_connection("user-1", "reddit", &format!("meta-{i}"));
        conn.meta.metadata = metadata.clone();
        store.put(&conn).await.expect("put");
        assert_eq!(must_get(&store, conn.key()).await.meta.metadata, metadata);
    }

    let absent = ConnectionKey::parse("user-1", "reddit", "nobody").expect("key");
    assert!(store.get(&absent).await.expect("get absent").is_none());
    let shown = format!("{store:?}");
    assert!(
        !shown.contains(full.tokens.access_token.expose_secret()),
        "Debug leaks: {shown}"
    );
}

/// A put over an existing key replaces every field except `created_at`, reports
/// `Replaced` and moves the version past the old one.
pub async fn put_replaces<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("put_replaces"), k1()).await;
    let original = sample_connection("u", "tiktok", "a");
    let (first, outcome) = store.put(&original).await.expect("put");
    assert_eq!(outcome, PutOutcome::Created);

    let mut replacement = sample_connection("u", "tiktok", "a");
    replacement.meta.created_at = at(500);
    replacement.meta.issued_at = Some(at(1000));
    replacement.meta.updated_at = at(1000);
    replacement.meta.expires_at = None;
    replacement.meta.refresh_expires_at = None;
    replacement.meta.last_refreshed_at = None;
    replacement.meta.scopes = vec!["x".into()];
    replacement.meta.metadata = json!([1, 2]);
    replacement.meta.status = ConnectionStatus::NeedsReconnect;
    replacement.meta.consecutive_failures = 3;
    replacement.meta.last_error = Some(LastError {
        code: "TOKEN_EXPIRED".into(),
        message: "invalid_grant".into(),
        provider_error: None,
        at: at(900),
    });
    replacement.meta.token_type = "mac".into();
    replacement.meta.has_refresh_token = false;
    replacement.tokens = Tokens {
        access_token: AccessToken::new("replacement-access"),
        refresh_token: None,
    };

    let (second, outcome) = store.put(&replacement).await.expect("replace");
    assert_eq!(outcome, PutOutcome::Replaced);
    assert!(
        second.version > first.version,
        "replace moves the version forward"
    );
    assert_eq!(
        second.created_at, first.created_at,
        "replace keeps created_at"
    );
    let mut want = with_version(&replacement, &second).meta;
    want.created_at = first.created_at;
    assert_eq!(second, want, "every other field comes from the replacement");
    let got = must_get(&store, replacement.key()).await;
    assert_eq!(got.meta, second);
    assert_tokens(&got, &replacement);
}

/// `update` is compare-and-swap on the version: success bumps it by one, a stale version
/// is `Conflict`, a missing connection is `NotFound`.
pub async fn update_compare_and_swap<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("update_cas"), k1()).await;
    let conn = sample_connection("u", "reddit", "a");
    let (stored, _) = store.put(&conn).await.expect("put");

    let mut next = with_version(&conn, &stored);
    next.meta.status = ConnectionStatus::NeedsReconnect;
    next.meta.consecutive_failures = 1;
    next.meta.last_error = Some(LastError {
        code: "TOKEN_EXPIRED".into(),
        message: "invalid_grant".into(),
        provider_error: Some("invalid_grant".into()),
        at: at(60),
    });
    next.meta.expires_at = Some(at(7200));
    next.meta.last_refreshed_at = Some(at(60));
    next.meta.updated_at = at(60);
    next.tokens = Tokens {
        access_token: AccessToken::new("rotated-access"),
        refresh_token: Some(RefreshToken::new("rotated-refresh")),
    };
    let updated = store.update(&next).await.expect("update");
    assert_eq!(
        updated.version,
        stored.version + 1,
        "update bumps the version by one"
    );
    assert_eq!(updated, with_version(&next, &updated).meta);
    let got = must_get(&store, conn.key()).await;
    assert_eq!(got.meta, updated);
    assert_tokens(&got, &next);

    let err = store.update(&next).await.expect_err("stale version");
    assert!(matches!(err, StoreError::Conflict), "stale update: {err:?}");
    assert_eq!(
        must_get(&store, conn.key()).await.meta,
        updated,
        "a conflict writes nothing"
    );

    let missing = sample_connection("u", "reddit", "missing");
    let err = store.update(&missing).await.expect_err("missing");
    assert!(
        matches!(err, StoreError::NotFound),
        "missing update: {err:?}"
    );
    assert!(
        store.get(missing.key()).await.expect("get").is_none(),
        "update never creates"
    );
}

/// An update prepared before a put (replace) fails, and so does one prepared before a
/// delete and re-import: versions never repeat for a key.
pub async fn stale_update_after_put<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("stale_after_put"), k1()).await;
    let conn = sample_connection("u", "tiktok", "a");
    let (first, _) = store.put(&conn).await.expect("put");
    let in_flight = with_version(&conn, &first);

    let (second, _) = store.put(&conn).await.expect("re-import");
    let err = store.update(&in_flight).await.expect_err("stale after put");
    assert!(
        matches!(err, StoreError::Conflict),
        "update after replace: {err:?}"
    );

    // Push the version up, then delete and re-import: the new row must start above it.
    let third = store
        .update(&with_version(&conn, &second))
        .await
        .expect("update");
    let fourth = store
        .update(&with_version(&conn, &third))
        .await
        .expect("update");
    let before_delete = with_version(&conn, &fourth);
    assert!(store.delete(conn.key()).await.expect("delete"));
    let err = store.update(&before_delete).await.expect_err("deleted");
    assert!(
        matches!(err, StoreError::NotFound),
        "update after delete: {err:?}"
    );
    let (recreated, outcome) = store.put(&conn).await.expect("re-create");
    assert_eq!(outcome, PutOutcome::Created);
    assert!(
        recreated.version > fourth.version,
        "a re-created connection's version ({}) must exceed every earlier one ({})",
        recreated.version,
        fourth.version
    );
    let err = store
        .update(&before_delete)
        .await
        .expect_err("stale across delete");
    assert!(
        matches!(err, StoreError::Conflict),
        "update across delete: {err:?}"
    );
}

/// `delete` says whether there was something to delete and touches nothing else.
pub async fn delete<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("delete"), k1()).await;
    let gone = sample_connection("u", "tiktok", "gone");
    let kept = sample_connection("u", "tiktok", "kept");
    store.put(&gone).await.expect("put");
    store.put(&kept).await.expect("put");
    assert!(
        store.delete(gone.key()).await.expect("delete"),
        "first delete finds it"
    );
    assert!(
        !store.delete(gone.key()).await.expect("delete again"),
        "second finds nothing"
    );
    assert!(store.get(gone.key()).await.expect("get").is_none());
    assert_tokens(&must_get(&store, kept.key()).await, &kept);
    let page = store.list(&ListQuery::default()).await.expect("list");
    let keys: Vec<_> = page.items.iter().map(|m| m.key.clone()).collect();
    assert_eq!(keys, vec![kept.key().clone()]);
}

/// `insert_if_absent` creates a missing connection (as `put` would, version above every
/// deleted one) and never touches an existing one: it answers `None` and the stored tokens,
/// metadata and version stay as they were.
pub async fn insert_if_absent<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("insert_if_absent"), k1()).await;
    let first = sample_connection("_app", "client-app", "_app");
    let meta = store
        .insert_if_absent(&first)
        .await
        .expect("insert")
        .expect("absent, so inserted");
    assert!(meta.version > 0, "versions are positive");
    assert_eq!(
        meta,
        with_version(&first, &meta).meta,
        "returns the stored metadata"
    );
    let got = must_get(&store, first.key()).await;
    assert_eq!(got.meta, meta, "get returns what was inserted");
    assert_tokens(&got, &first);

    let mut second = sample_connection("_app", "client-app", "_app");
    second.tokens.access_token = AccessToken::new("a-different-access-token".to_owned());
    second.meta.scopes = vec!["other".to_owned()];
    let again = store.insert_if_absent(&second).await.expect("insert again");
    assert_eq!(again, None, "present, so not inserted");
    let got = must_get(&store, first.key()).await;
    assert_eq!(got.meta, meta, "the existing row is untouched");
    assert_tokens(&got, &first);

    assert!(store.delete(first.key()).await.expect("delete"));
    let meta_again = store
        .insert_if_absent(&second)
        .await
        .expect("insert after delete")
        .expect("deleted, so inserted");
    assert!(
        meta_again.version > meta.version,
        "a re-created row's version is above the deleted one's"
    );
    assert_tokens(&must_get(&store, second.key()).await, &second);
}

/// Of 16 concurrent `insert_if_absent` calls for one key, exactly one inserts, and the
/// stored row is that one's.
pub async fn concurrent_inserts<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = Arc::new(make(TestDb::fresh("concurrent_inserts"), k1()).await);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut conn = sample_connection("_app", "client-app", "_app");
            conn.tokens.access_token = AccessToken::new(format!("access-token-{i}"));
            tokio::spawn(async move {
                let inserted = store.insert_if_absent(&conn).await.expect("insert");
                inserted.map(|_| conn)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.extend(task.await.expect("task"));
    }
    assert_eq!(winners.len(), 1, "exactly one insert wins");
    assert_tokens(
        &must_get(store.as_ref(), winners[0].key()).await,
        &winners[0],
    );
}

const LIST_USERS: [&str; 6] = ["alice", "bob", "Zoë", "ユーザー", "user 10", "user2"];
const LIST_PROVIDERS: [&str; 2] = ["reddit", "tiktok"];
const LIST_ACCOUNTS: [&str; 2] = ["a1", "a2"];

/// Stores 24 connections; reddit `a2` ones need reconnecting, tiktok `a1` ones have no
/// refresh token. Returns them sorted by key.
async fn seed_list<S: Store>(store: &S) -> Vec<ConnectionMeta> {
    let mut stored = Vec::new();
    for user in LIST_USERS {
        for provider in LIST_PROVIDERS {
            for account in LIST_ACCOUNTS {
                let mut conn = sample_connection(user, provider, account);
                if (provider, account) == ("reddit", "a2") {
                    conn.meta.status = ConnectionStatus::NeedsReconnect;
                }
                if (provider, account) == ("tiktok", "a1") {
                    conn.tokens.refresh_token = None;
                }
                stored.push(store.put(&conn).await.expect("put").0);
            }
        }
    }
    stored.sort_by(|a, b| a.key.cmp(&b.key));
    stored
}

fn keys_of(items: &[ConnectionMeta]) -> Vec<ConnectionKey> {
    items.iter().map(|m| m.key.clone()).collect()
}

/// Every page of `query` (at most 100), checking each page's size.
async fn all_pages<S: Store>(store: &S, query: &ListQuery) -> Vec<ConnectionMeta> {
    let mut query = query.clone();
    let mut items = Vec::new();
    for _ in 0..100 {
        let page = store.list(&query).await.expect("list page");
        assert!(
            page.items.len() <= query.effective_limit() as usize,
            "page exceeds its limit"
        );
        if page.next_cursor.is_some() {
            assert!(
                !page.items.is_empty(),
                "an empty page must not carry a cursor"
            );
        }
        items.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return items,
        }
    }
    panic!("pagination did not end");
}

/// `list` filters by provider, user and status (alone and combined), orders by key, returns
/// the same metadata as `get`, and sets no cursor on a final, partial page.
pub async fn list_filters_and_order<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("list_filters"), k1()).await;
    let empty = store.list(&ListQuery::default()).await.expect("list empty");
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());

    let all = seed_list(&store).await;
    let page = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(
        page.items, all,
        "everything, ordered by (user_id, provider, account_id)"
    );
    assert!(page.next_cursor.is_none(), "no cursor after the last page");
    for meta in &page.items {
        assert_eq!(
            must_get(&store, &meta.key).await.meta,
            *meta,
            "list agrees with get"
        );
    }
    assert!(all.iter().any(|m| !m.has_refresh_token) && all.iter().any(|m| m.has_refresh_token));

    let reddit = ProviderName::parse("reddit").expect("provider");
    let zoe = UserId::parse("Zoë").expect("user");
    type Keep = Box<dyn Fn(&ConnectionMeta) -> bool>;
    let cases: Vec<(ListQuery, Keep)> = vec![
        (
            ListQuery {
                provider: Some(reddit.clone()),
                ..ListQuery::default()
            },
            Box::new(|m| m.key.provider.as_str() == "reddit"),
        ),
        (
            ListQuery {
                user_id: Some(zoe.clone()),
                ..ListQuery::default()
            },
            Box::new(|m| m.key.user_id.as_str() == "Zoë"),
        ),
        (
            ListQuery {
                status: Some(ConnectionStatus::NeedsReconnect),
                ..ListQuery::default()
            },
            Box::new(|m| m.status == ConnectionStatus::NeedsReconnect),
        ),
        (
            ListQuery {
                status: Some(ConnectionStatus::Active),
                ..ListQuery::default()
            },
            Box::new(|m| m.status == ConnectionStatus::Active),
        ),
        (
            ListQuery {
                provider: Some(reddit),
                user_id: Some(zoe),
                status: Some(ConnectionStatus::Active),
                ..ListQuery::default()
            },
            Box::new(|m| {
                m.key.provider.as_str() == "reddit"
                    && m.key.user_id.as_str() == "Zoë"
                    && m.status == ConnectionStatus::Active
            }),
        ),
        (
            ListQuery {
                user_id: Some(UserId::parse("nobody").expect("user")),
                ..ListQuery::default()
            },
            Box::new(|_| false),
        ),
    ];
    for (query, keep) in cases {
        let want: Vec<_> = all.iter().filter(|m| keep(m)).cloned().collect();
        let got = store.list(&query).await.expect("filtered list");
        assert_eq!(keys_of(&got.items), keys_of(&want), "filter {query:?}");
        assert!(got.next_cursor.is_none());
    }
}

/// Keyset pagination visits every item once in order, with and without filters, for
/// several page sizes (0 means the default, huge sizes are clamped), and a cursor stays
/// valid after the item it points at is deleted.
pub async fn list_pagination<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("list_pagination"), k1()).await;
    let all = seed_list(&store).await;
    for limit in [1, 5, 7, 23, 24, 25, 0, 5000] {
        let got = all_pages(
            &store,
            &ListQuery {
                limit,
                ..ListQuery::default()
            },
        )
        .await;
        assert_eq!(
            keys_of(&got),
            keys_of(&all),
            "limit {limit}: no duplicates, no gaps"
        );
    }
    let page = store
        .list(&ListQuery {
            limit: 5,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page.items.len(),
        5,
        "a page holds `limit` items when more exist"
    );
    assert!(
        page.next_cursor.is_some(),
        "a full page with more to come has a cursor"
    );

    let tiktok = ProviderName::parse("tiktok").expect("provider");
    let query = ListQuery {
        provider: Some(tiktok),
        limit: 4,
        ..ListQuery::default()
    };
    let got = all_pages(&store, &query).await;
    let want: Vec<_> = all
        .iter()
        .filter(|m| m.key.provider.as_str() == "tiktok")
        .cloned()
        .collect();
    assert_eq!(keys_of(&got), keys_of(&want), "filtered pagination");

    let first = store
        .list(&ListQuery {
            limit: 6,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let last_seen = first.items.last().expect("a full first page").key.clone();
    assert!(store.delete(&last_seen).await.expect("delete"));
    let rest = all_pages(
        &store,
        &ListQuery {
            limit: 6,
            cursor: first.next_cursor,
            ..ListQuery::default()
        },
    )
    .await;
    assert_eq!(
        keys_of(&rest),
        keys_of(&all[6..]),
        "a cursor survives deleting its item"
    );
}

/// A limit of 0 means pages of [`DEFAULT_LIST_LIMIT`] (100) items.
///
/// [`DEFAULT_LIST_LIMIT`]: DEFAULT_LIST_LIMIT
pub async fn list_default_limit<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("list_default_limit"), k1()).await;
    let mut keys = Vec::new();
    for i in 0..=DEFAULT_LIST_LIMIT {
        let conn = sample_connection("bulk", "reddit", &format!("acct-{i:04}"));
        store.put(&conn).await.expect("put");
        keys.push(conn.key().clone());
    }
    let page = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(
        page.items.len(),
        DEFAULT_LIST_LIMIT as usize,
        "default page size"
    );
    assert!(page.next_cursor.is_some(), "one more item follows");
    let got = all_pages(&store, &ListQuery::default()).await;
    assert_eq!(keys_of(&got), keys);
}

/// A cursor the store did not make is `BadCursor`, not an empty page or a database error.
pub async fn list_bad_cursor<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("list_bad_cursor"), k1()).await;
    seed_list(&store).await;
    for cursor in [
        "not a cursor!".to_owned(),
        URL_SAFE_NO_PAD.encode("{}"),
        URL_SAFE_NO_PAD.encode("[1,2,3]"),
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x00]),
    ] {
        let query = ListQuery {
            cursor: Some(cursor.clone()),
            ..ListQuery::default()
        };
        let err = store.list(&query).await.expect_err("bad cursor");
        assert!(
            matches!(err, StoreError::BadCursor),
            "cursor {cursor:?}: {err:?}"
        );
    }
}

fn count_of(counts: &[(ConnectionStatus, u64)], status: ConnectionStatus) -> u64 {
    let matching: Vec<u64> = counts
        .iter()
        .filter(|(s, _)| *s == status)
        .map(|(_, n)| *n)
        .collect();
    assert!(matching.len() <= 1, "{status:?} listed twice: {counts:?}");
    matching.first().copied().unwrap_or(0)
}

/// `count_by_status` counts connections per status (a missing status counts as zero).
pub async fn count_by_status<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("count_by_status"), k1()).await;
    let counts = store.count_by_status().await.expect("count empty");
    assert_eq!(count_of(&counts, ConnectionStatus::Active), 0);
    assert_eq!(count_of(&counts, ConnectionStatus::NeedsReconnect), 0);

    let all = seed_list(&store).await;
    let counts = store.count_by_status().await.expect("count");
    assert_eq!(count_of(&counts, ConnectionStatus::Active), 18);
    assert_eq!(count_of(&counts, ConnectionStatus::NeedsReconnect), 6);

    let meta = all
        .iter()
        .find(|m| m.status == ConnectionStatus::Active)
        .expect("an active one");
    let mut conn = must_get(&store, &meta.key).await;
    conn.meta.status = ConnectionStatus::NeedsReconnect;
    store.update(&conn).await.expect("update");
    let counts = store.count_by_status().await.expect("count");
    assert_eq!(count_of(&counts, ConnectionStatus::Active), 17);
    assert_eq!(count_of(&counts, ConnectionStatus::NeedsReconnect), 7);
}

async fn usage<S: Store>(store: &S) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for entry in store.key_usage().await.expect("key usage") {
        assert!(
            map.insert(entry.key_id.clone(), entry.ciphertexts)
                .is_none(),
            "key id twice"
        );
    }
    map.retain(|_, n| *n > 0);
    map
}

fn usage_of(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// `key_usage` counts ciphertexts (access and refresh tokens) per key id, following
/// writes under a newer key, re-seals on update, and deletes.
pub async fn key_usage<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("key_usage");
    let old = make(db.clone(), k1()).await;
    assert_eq!(usage(&old).await, usage_of(&[]));
    let a = sample_connection("u", "tiktok", "a");
    let mut b = sample_connection("u", "tiktok", "b");
    b.tokens.refresh_token = None;
    old.put(&a).await.expect("put a");
    old.put(&b).await.expect("put b");
    assert_eq!(usage(&old).await, usage_of(&[("k1", 3)]));

    let new = make(db, test_keys("k2", &["k1", "k2"])).await;
    new.put(&sample_connection("u", "reddit", "c"))
        .await
        .expect("put c");
    assert_eq!(usage(&new).await, usage_of(&[("k1", 3), ("k2", 2)]));

    let current = must_get(&new, a.key()).await;
    new.update(&current).await.expect("re-seal a");
    assert_eq!(usage(&new).await, usage_of(&[("k1", 1), ("k2", 4)]));
    assert!(new.delete(b.key()).await.expect("delete b"));
    assert_eq!(usage(&old).await, usage_of(&[("k2", 4)]));
}

/// Reading with a key ring that lacks the sealing key is `Decrypt` (never `None`), while
/// listing, counting and other rows keep working.
pub async fn missing_key<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("missing_key");
    let writer = make(db.clone(), k1()).await;
    let conn = sample_connection("u", "tiktok", "sealed-k1");
    let (stored, _) = writer.put(&conn).await.expect("put");

    let reader = make(db, test_keys("k2", &["k2"])).await;
    let err = reader.get(conn.key()).await.expect_err("cannot decrypt");
    assert!(
        matches!(err, StoreError::Decrypt),
        "get without the key: {err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(conn.tokens.access_token.expose_secret()));

    let page = reader
        .list(&ListQuery::default())
        .await
        .expect("list without the key");
    assert_eq!(page.items, vec![stored], "listing never decrypts");
    assert_eq!(
        count_of(
            &reader.count_by_status().await.expect("count"),
            ConnectionStatus::Active
        ),
        1
    );
    let own = sample_connection("u", "tiktok", "sealed-k2");
    reader.put(&own).await.expect("put under k2");
    assert_tokens(&must_get(&reader, own.key()).await, &own);
    assert_tokens(&must_get(&writer, conn.key()).await, &conn);

    // A claim takes both rows; the one that does not open says so without failing the other.
    let due = conn.meta.next_refresh_at.expect("scheduled") + time::Duration::seconds(1);
    let claimed = reader
        .claim_due(due, 10, "reader", due + time::Duration::seconds(60))
        .await
        .expect("claim without the key");
    assert_eq!(claimed.len(), 2, "both rows claimed");
    for c in &claimed {
        if &c.key == conn.key() {
            assert!(
                matches!(c.connection, Err(StoreError::Decrypt)),
                "{:?}",
                c.connection.as_ref().err()
            );
        } else {
            assert_eq!(&c.key, own.key());
            assert_tokens(c.connection.as_ref().expect("opens under k2"), &own);
        }
    }
}

/// After a rotation (active key k2, k1 still held), old ciphertexts still open; an update
/// re-seals under k2, which a ring holding only k1 can no longer open.
pub async fn rotation_read<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("rotation_read");
    let old = make(db.clone(), k1()).await;
    let conn = sample_connection("u", "reddit", "rotating");
    old.put(&conn).await.expect("put under k1");

    let rotated = make(db, test_keys("k2", &["k1", "k2"])).await;
    let current = must_get(&rotated, conn.key()).await;
    assert_tokens(&current, &conn);
    rotated.update(&current).await.expect("re-seal");
    assert_eq!(usage(&rotated).await, usage_of(&[("k2", 2)]));
    assert_tokens(&must_get(&rotated, conn.key()).await, &conn);
    let err = old.get(conn.key()).await.expect_err("k1-only ring");
    assert!(
        matches!(err, StoreError::Decrypt),
        "old ring after re-seal: {err:?}"
    );
}

/// Many concurrent updates from the same version: exactly one wins, the rest are
/// `Conflict`, and the winner's write is what is stored.
pub async fn concurrent_updates<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    const WRITERS: usize = 16;
    let store = Arc::new(make(TestDb::fresh("concurrent_updates"), k1()).await);
    let conn = sample_connection("u", "tiktok", "contended");
    let (stored, _) = store.put(&conn).await.expect("put");

    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut mine = with_version(&conn, &stored);
            mine.tokens.access_token = AccessToken::new(format!("writer-{i}"));
            mine.meta.consecutive_failures = u32::try_from(i).expect("small");
            tokio::spawn(async move { (i, store.update(&mine).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, result) = task.await.expect("task");
        match result {
            Ok(meta) => winners.push((i, meta)),
            Err(StoreError::Conflict) => {}
            Err(other) => panic!("writer {i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one compare-and-swap wins");
    let (winner, meta) = &winners[0];
    assert_eq!(meta.version, stored.version + 1);
    let got = must_get(store.as_ref(), conn.key()).await;
    assert_eq!(got.meta, *meta);
    assert_eq!(
        got.tokens.access_token.expose_secret(),
        format!("writer-{winner}")
    );
}

/// A batch of compare-and-swap writes: each row gets its own answer, in order; a conflict
/// or a missing row does not stop the others; two writes to one key apply in order; each
/// written row's lease is released; the batch's writes are all readable afterwards.
pub async fn update_batch<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("update_batch"), k1()).await;
    let [a, b, c] = ["a", "b", "c"].map(|acct| sample_connection("u", "reddit", acct));
    let mut stored = Vec::new();
    for conn in [&a, &b, &c] {
        stored.push(store.put(conn).await.expect("put").0);
    }
    assert!(
        store
            .try_lease(a.key(), "me", at(0), at(100))
            .await
            .expect("lease")
    );

    let mut a1 = with_version(&a, &stored[0]);
    a1.tokens.access_token = AccessToken::new("a-first");
    let mut a2 = a1.clone();
    a2.meta.version = stored[0].version + 1;
    a2.tokens.access_token = AccessToken::new("a-second");
    let mut b_stale = with_version(&b, &stored[1]);
    b_stale.meta.version = stored[1].version + 7;
    b_stale.tokens.access_token = AccessToken::new("b-stale");
    let missing = sample_connection("u", "reddit", "missing");
    let mut c1 = with_version(&c, &stored[2]);
    c1.tokens.access_token = AccessToken::new("c-new");
    c1.meta.consecutive_failures = 3;

    // Out of key order on purpose: answers must come back in the order asked.
    let batch = [c1.clone(), b_stale, a1, missing.clone(), a2.clone()];
    let results = store.update_batch(&batch).await.expect("batch commits");
    assert_eq!(results.len(), batch.len(), "one answer per row");
    let c_meta = results[0].as_ref().expect("c written");
    assert_eq!(c_meta.version, stored[2].version + 1);
    assert!(
        matches!(results[1], Err(StoreError::Conflict)),
        "stale b: {:?}",
        results[1]
    );
    assert_eq!(
        results[2].as_ref().expect("first write of a").version,
        stored[0].version + 1
    );
    assert!(
        matches!(results[3], Err(StoreError::NotFound)),
        "missing: {:?}",
        results[3]
    );
    let a_meta = results[4]
        .as_ref()
        .expect("second write of a, after the first");
    assert_eq!(a_meta.version, stored[0].version + 2);

    let got_a = must_get(&store, a.key()).await;
    assert_eq!(got_a.meta, *a_meta);
    assert_tokens(&got_a, &a2);
    let got_c = must_get(&store, c.key()).await;
    assert_eq!(got_c.meta, *c_meta);
    assert_eq!(got_c.meta.consecutive_failures, 3);
    assert_tokens(&got_c, &c1);
    assert_tokens(&must_get(&store, b.key()).await, &b);
    assert!(store.get(missing.key()).await.expect("get").is_none());
    assert!(
        store
            .try_lease(a.key(), "other", at(10), at(110))
            .await
            .expect("lease"),
        "the batch's write released the lease"
    );
    assert!(
        store
            .update_batch(&[])
            .await
            .expect("empty batch")
            .is_empty(),
        "an empty batch answers nothing"
    );

    // Distinct keys (backends may write these in one statement): the same per-row answers.
    let mut c2 = got_c.clone();
    c2.tokens.access_token = AccessToken::new("c-again");
    c2.meta.next_refresh_at = Some(at(9000));
    let mut b_stale = with_version(&b, &stored[1]);
    b_stale.meta.version += 3;
    let results = store
        .update_batch(&[missing.clone(), c2.clone(), b_stale])
        .await
        .expect("batch commits");
    assert!(
        matches!(results[0], Err(StoreError::NotFound)),
        "{:?}",
        results[0]
    );
    let c2_meta = results[1].as_ref().expect("c written again");
    assert_eq!(c2_meta.version, c_meta.version + 1);
    assert!(
        matches!(results[2], Err(StoreError::Conflict)),
        "{:?}",
        results[2]
    );
    let got_c = must_get(&store, c.key()).await;
    assert_eq!(got_c.meta, *c2_meta);
    assert_eq!(got_c.meta.next_refresh_at, Some(at(9000)));
    assert_tokens(&got_c, &c2);
    assert_tokens(&must_get(&store, b.key()).await, &b);
}

/// Several batches at once over the same rows, listed in different orders (as refreshes
/// finishing on several instances would): every batch commits, each row's compare-and-swap
/// lets at most one write per version win, and nothing deadlocks.
pub async fn concurrent_update_batches<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    const ROWS: usize = 8;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 5;
    let store = Arc::new(make(TestDb::fresh("concurrent_batches"), k1()).await);
    let conns: Vec<Connection> = (0..ROWS)
        .map(|i| sample_connection("u", "tiktok", &format!("row{i}")))
        .collect();
    let mut initial = 0;
    for conn in &conns {
        initial += store.put(conn).await.expect("put").0.version;
    }
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            let conns = conns.clone();
            tokio::spawn(async move {
                let mut wins = 0i64;
                for _ in 0..ROUNDS {
                    let mut batch = Vec::new();
                    for conn in &conns {
                        let mut mine = must_get(store.as_ref(), conn.key()).await;
                        mine.tokens.access_token = AccessToken::new(format!("writer-{w}"));
                        batch.push(mine);
                    }
                    if w % 2 == 1 {
                        batch.reverse();
                    }
                    let results = store
                        .update_batch(&batch)
                        .await
                        .unwrap_or_else(|e| panic!("writer {w}: batch failed: {e:?}"));
                    for result in results {
                        match result {
                            Ok(_) => wins += 1,
                            Err(StoreError::Conflict) => {}
                            Err(other) => panic!("writer {w}: {other:?}"),
                        }
                    }
                }
                wins
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += task.await.expect("writer");
    }
    let mut versions = 0;
    for conn in &conns {
        versions += must_get(store.as_ref(), conn.key()).await.meta.version;
    }
    // Every win moved one row's version by exactly one; a lost compare-and-swap moved none.
    assert_eq!(wins, versions - initial, "wins and version bumps agree");
    assert!(
        wins >= i64::try_from(ROUNDS).expect("small"),
        "some writes won"
    );
}

/// Refresh leases: exclusive, re-entrant for their owner, free again after expiry or
/// release, renewed only by their holder, released by a successful update (and not taken
/// again by a renewal after it), and `NotFound` for a missing connection.
pub async fn leases<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("leases"), k1()).await;
    let conn = sample_connection("u", "tiktok", "leased");
    let (stored, _) = store.put(&conn).await.expect("put");
    let key = conn.key();
    assert!(
        store
            .try_lease(key, "a", at(0), at(100))
            .await
            .expect("lease")
    );
    assert!(
        !store
            .try_lease(key, "b", at(50), at(150))
            .await
            .expect("held by a")
    );
    assert!(
        store
            .try_lease(key, "a", at(50), at(150))
            .await
            .expect("re-entrant")
    );
    // Only the owner releases.
    store.release_lease(key, "b").await.expect("no-op");
    assert!(
        !store
            .try_lease(key, "b", at(60), at(160))
            .await
            .expect("still a's")
    );
    // Expiry frees it.
    assert!(
        store
            .try_lease(key, "b", at(150), at(250))
            .await
            .expect("expired")
    );
    store.release_lease(key, "b").await.expect("release");
    assert!(
        store
            .try_lease(key, "c", at(160), at(260))
            .await
            .expect("released")
    );
    // Renewal extends only the holder's own lease.
    assert!(
        store.renew_lease(key, "c", at(400)).await.expect("renew"),
        "the holder renews"
    );
    assert!(
        !store
            .try_lease(key, "e", at(300), at(500))
            .await
            .expect("renewed until 400"),
        "the renewed lease still holds after its first expiry"
    );
    assert!(
        !store.renew_lease(key, "e", at(900)).await.expect("renew"),
        "someone else cannot renew it"
    );
    // A successful update ends the refresh and releases the lease...
    store
        .update(&with_version(&conn, &stored))
        .await
        .expect("update");
    // ...and a renewal racing that update does not take the lease again.
    assert!(
        !store.renew_lease(key, "c", at(800)).await.expect("renew"),
        "a released lease is not renewed"
    );
    assert!(
        store
            .try_lease(key, "d", at(170), at(270))
            .await
            .expect("released by update")
    );
    let missing = ConnectionKey::parse("nobody", "tiktok", "none").expect("key");
    assert!(matches!(
        store.try_lease(&missing, "a", at(0), at(1)).await,
        Err(StoreError::NotFound)
    ));
}

/// Many instances asking for one lease at once: exactly one gets it.
pub async fn concurrent_leases<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = Arc::new(make(TestDb::fresh("concurrent_leases"), k1()).await);
    let conn = sample_connection("u", "tiktok", "contended-lease");
    store.put(&conn).await.expect("put");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            let key = conn.key().clone();
            tokio::spawn(async move {
                store
                    .try_lease(&key, &format!("instance-{i}"), at(0), at(60))
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        won += usize::from(task.await.expect("task").expect("lease"));
    }
    assert_eq!(won, 1);
}

/// `claim_due` takes due, active, unleased connections earliest first, up to the limit,
/// leasing them; `next_due` reports the earliest claimable time.
pub async fn claim_due<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("claim_due"), k1()).await;
    assert_eq!(store.next_due().await.expect("next_due"), None);
    assert!(
        store
            .claim_due(at(0), 10, "a", at(60))
            .await
            .expect("claim")
            .is_empty()
    );
    let mut keys = Vec::new();
    let mut conns = Vec::new();
    for (i, due) in [
        (0, Some(30)),
        (1, Some(10)),
        (2, Some(20)),
        (3, Some(500)),
        (4, None),
    ] {
        let mut conn = sample_connection("u", "tiktok", &format!("acct-{i}"));
        conn.meta.next_refresh_at = due.map(at);
        let (stored, _) = store.put(&conn).await.expect("put");
        keys.push(conn.key().clone());
        conns.push(with_version(&conn, &stored));
    }
    let mut reconnect = sample_connection("u", "tiktok", "needs-reconnect");
    reconnect.meta.status = ConnectionStatus::NeedsReconnect;
    reconnect.meta.next_refresh_at = Some(at(0));
    store.put(&reconnect).await.expect("put");

    assert_eq!(store.next_due().await.expect("next_due"), Some(at(10)));
    // Someone else holds acct-2.
    assert!(
        store
            .try_lease(&keys[2], "other", at(0), at(1000))
            .await
            .expect("lease")
    );
    let claimed = store
        .claim_due(at(100), 1, "a", at(160))
        .await
        .expect("claim");
    assert_eq!(
        claimed_keys(&claimed),
        vec![keys[1].clone()],
        "earliest first, limit respected"
    );
    // The row comes back whole, as stored, so a refresh needs no second read.
    let got = claimed[0].connection.as_ref().expect("readable");
    let mut want = must_get(&store, &keys[1]).await;
    assert_eq!(got.meta, want.meta);
    assert_eq!(got.meta.next_refresh_at, Some(at(10)));
    assert_eq!(got.meta.version, conns[1].meta.version);
    want.tokens = conns[1].tokens.clone();
    assert_tokens(got, &want);
    let claimed = store
        .claim_due(at(100), 10, "a", at(160))
        .await
        .expect("claim");
    assert_eq!(
        claimed_keys(&claimed),
        vec![keys[0].clone()],
        "leased, future, unscheduled and inactive skipped"
    );
    assert!(
        store
            .claim_due(at(100), 10, "b", at(160))
            .await
            .expect("claim")
            .is_empty()
    );
    // Claimable again once the lease expires: acct-1 at 160, acct-2 (other's) at 1000.
    assert_eq!(store.next_due().await.expect("next_due"), Some(at(160)));
    let mut later = store
        .claim_due(at(600), 10, "b", at(700))
        .await
        .expect("claim");
    assert_eq!(
        claimed_keys(&later),
        vec![keys[1].clone(), keys[0].clone(), keys[3].clone()],
        "earliest due first"
    );
    later.clear();
}

/// Several claimers at once never get the same connection, and together get all of them.
pub async fn concurrent_claims<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = Arc::new(make(TestDb::fresh("concurrent_claims"), k1()).await);
    for i in 0..60 {
        let mut conn = sample_connection("u", "tiktok", &format!("due-{i:02}"));
        conn.meta.next_refresh_at = Some(at(i));
        store.put(&conn).await.expect("put");
    }
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim_due(at(1000), 7, &format!("claimer-{i}"), at(2000))
                        .await
                        .expect("claim");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    let mut all = claimed_keys(&all);
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "no connection claimed twice");
    assert_eq!(total, 60, "every due connection claimed");
}

/// Queue sizes: scheduled, due now and retrying, over active connections only.
pub async fn queue<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = make(TestDb::fresh("queue"), k1()).await;
    assert_eq!(
        store.queue_stats(at(0)).await.expect("stats"),
        QueueStats::default()
    );
    for (i, due, failures) in [
        (0, Some(10), 0),
        (1, Some(20), 2),
        (2, Some(500), 1),
        (3, None, 0),
    ] {
        let mut conn = sample_connection("u", "reddit", &format!("q-{i}"));
        conn.meta.next_refresh_at = due.map(at);
        conn.meta.consecutive_failures = failures;
        store.put(&conn).await.expect("put");
    }
    let stats = store.queue_stats(at(100)).await.expect("stats");
    assert_eq!(
        stats,
        QueueStats {
            scheduled: 3,
            due_now: 2,
            retrying: 2
        }
    );
}

/// Key rotation: everything written under k1 is re-sealed under k2 in batches, resumably,
/// without touching versions; then a ring without k1 reads everything, and a ciphertext
/// whose key is gone is reported, not lost.
pub async fn reseal<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("reseal");
    let old = make(db.clone(), k1()).await;
    let mut conns = Vec::new();
    for i in 0..7 {
        let mut conn = sample_connection("u", "tiktok", &format!("r-{i}"));
        if i % 3 == 0 {
            conn.tokens.refresh_token = None;
        }
        let (meta, _) = old.put(&conn).await.expect("put");
        conns.push(with_version(&conn, &meta));
    }
    let rotating = make(db.clone(), test_keys("k2", &["k1", "k2"])).await;
    // Interrupted after one batch of 3...
    let first = rotating.reseal_batch(None, 3).await.expect("batch");
    assert_eq!((first.scanned, first.resealed, first.failed), (3, 3, 0));
    assert!(first.last.is_some());
    // ...and resumed from scratch: only what is left is touched.
    let mut seen = 0;
    let summary = reseal_all(&rotating, 2, |b| seen += b.scanned)
        .await
        .expect("rotation");
    assert_eq!(summary.resealed, 4);
    assert_eq!(seen, 4);
    assert_eq!(usage(&rotating).await, usage_of(&[("k2", 11)]));
    // Versions untouched: a refresh prepared before the rotation still commits.
    rotating
        .update(&conns[0])
        .await
        .expect("update with pre-rotation version");
    let only_new = make(db, test_keys("k2", &["k2"])).await;
    for conn in &conns {
        assert_tokens(&must_get(&only_new, conn.key()).await, conn);
    }
    // Nothing left to do.
    assert_eq!(
        reseal_all(&only_new, 10, |_| {})
            .await
            .expect("again")
            .resealed,
        0
    );
}

/// A pending connect session `cs_<tag>…` (22 characters after `cs_`) for user `u` at
/// reddit, created at `at(0)` and expiring at `at(expires)`; its link's token hash is
/// [`token_hash`]`(tag)`.
fn sample_session(tag: &str, expires: i64) -> ConnectSession {
    ConnectSession {
        id: format!("cs_{tag:_<22}"),
        user_id: UserId::parse("connect user ü").expect("user"),
        provider: ProviderName::parse("reddit").expect("provider"),
        account_id: None,
        reconnect: false,
        return_url: "https://app.example/connected?from=tw".to_owned(),
        scopes: vec!["identity".to_owned(), "read".to_owned()],
        state: SessionState::Pending,
        error: None,
        connected_account_id: None,
        created_at: at(0),
        expires_at: at(expires),
        opened_at: None,
        finished_at: None,
    }
}

fn token_hash(tag: &str) -> String {
    format!("token-hash-{tag}")
}

/// What a browser opening `tag`'s link writes; `n` tells several openers apart. The
/// verifier and nonce are distinctive strings a test can look for in raw storage.
fn flow_start(tag: &str, n: usize) -> FlowStart {
    FlowStart {
        state_hash: format!("state-hash-{tag}-{n}"),
        browser_hash: format!("browser-hash-{tag}-{n}"),
        secrets: FlowSecrets {
            code_verifier: Some(format!("pkce-verifier-{tag}-{n}-must-stay-sealed")),
            nonce: Some(format!("oidc-nonce-{tag}-{n}")),
        },
    }
}

async fn must_session<S: Store>(store: &S, id: &str) -> ConnectSession {
    store
        .connect_session(id)
        .await
        .expect("connect_session")
        .unwrap_or_else(|| panic!("connect session {id} is missing"))
}

/// Opens `session`'s link with `flow` at `at(now)`; panics unless it was opened, and checks
/// the session it returns.
async fn must_open<S: Store>(
    store: &S,
    session: &ConnectSession,
    now: i64,
    flow: &FlowStart,
) -> ConnectSession {
    let tag = &session.id;
    let opened = match store
        .open_connect_session(&token_hash(tag), at(now), flow)
        .await
        .expect("open")
    {
        OpenOutcome::Opened(opened) => opened,
        other => panic!("open {tag}: {other:?}"),
    };
    let mut want = session.clone();
    want.state = SessionState::Opened;
    want.opened_at = Some(at(now));
    assert_eq!(opened, want, "the opened session as returned");
    assert_eq!(
        must_session(store, tag).await,
        want,
        "the opened session as stored"
    );
    opened
}

/// `session` inserted with its link's token hash being `token_hash(&session.id)`.
async fn insert_session<S: Store>(store: &S, session: &ConnectSession) {
    store
        .insert_connect_session(session, &token_hash(&session.id))
        .await
        .unwrap_or_else(|e| panic!("insert {}: {e:?}", session.id));
}

async fn claim<S: Store>(
    store: &S,
    flow: &FlowStart,
    browser_hash: Option<&str>,
    now: i64,
) -> ClaimOutcome {
    store
        .claim_connect_callback(&flow.state_hash, browser_hash, at(now))
        .await
        .expect("claim")
}

/// Connect sessions, every step of the flow: insert and read back every field; open once
/// (a second open, an expired link and an unknown token change nothing); claim the callback
/// once, only from the opening browser and before expiry (refusals change nothing, and come
/// in the order unknown, used, other browser, expired); the claim hands out exactly the
/// secrets given at open; finish once; purge by expiry; the secrets survive a reopened store
/// and a ring without their key is `Decrypt` without burning the session.
pub async fn connect_sessions<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let db = TestDb::fresh("connect_sessions");
    let store = make(db.clone(), k1()).await;

    // Insert and read back: no account, then an account to reconnect with no scopes.
    let plain = sample_session("plain", 600);
    let mut named = sample_session("named", 600);
    named.account_id = Some(AccountId::parse("acct ü-1").expect("acct"));
    named.reconnect = true;
    named.scopes = Vec::new();
    named.return_url = "https://app.example/back".to_owned();
    for session in [&plain, &named] {
        insert_session(&store, session).await;
        assert_eq!(
            &must_session(&store, &session.id).await,
            session,
            "round trip"
        );
    }
    assert_eq!(
        store.connect_session("cs_unknown").await.expect("get"),
        None
    );

    // Ids and token hashes are unique; the error does not repeat the token hash.
    let mut same_id = sample_session("plain", 900);
    same_id.scopes = vec!["other".to_owned()];
    let err = store
        .insert_connect_session(&same_id, &token_hash("another"))
        .await
        .expect_err("duplicate id");
    assert!(
        matches!(err, StoreError::Database(_)),
        "duplicate id: {err:?}"
    );
    let same_token = sample_session("other", 900);
    let err = store
        .insert_connect_session(&same_token, &token_hash(&plain.id))
        .await
        .expect_err("duplicate token hash");
    assert!(
        matches!(err, StoreError::Database(_)),
        "duplicate token: {err:?}"
    );
    assert!(
        !format!("{err} {err:?}").contains(&token_hash(&plain.id)),
        "the error names no token hash: {err}"
    );
    assert_eq!(
        must_session(&store, &plain.id).await,
        plain,
        "left untouched"
    );
    assert_eq!(
        store.connect_session(&same_token.id).await.expect("get"),
        None
    );

    // Open: once. A second browser gets AlreadyOpened and writes nothing.
    let mut plain_flow = flow_start("plain", 0);
    plain_flow.secrets.nonce = None;
    let opened = must_open(&store, &plain, 10, &plain_flow).await;
    let second = flow_start("plain", 1);
    match store
        .open_connect_session(&token_hash(&plain.id), at(11), &second)
        .await
        .expect("open again")
    {
        OpenOutcome::AlreadyOpened(s) => assert_eq!(s, opened, "as opened the first time"),
        other => panic!("second open: {other:?}"),
    }
    assert!(
        matches!(
            claim(&store, &second, Some(&second.browser_hash), 12).await,
            ClaimOutcome::Unknown
        ),
        "the second open's state was not written"
    );
    assert!(matches!(
        store
            .open_connect_session("no-such-token-hash", at(10), &flow_start("nobody", 0))
            .await
            .expect("open unknown"),
        OpenOutcome::Unknown
    ));

    // An expired link (expiry is reached at `expires_at`) is not opened.
    let late = sample_session("late", 100);
    insert_session(&store, &late).await;
    match store
        .open_connect_session(&token_hash(&late.id), at(100), &flow_start("late", 0))
        .await
        .expect("open expired")
    {
        OpenOutcome::Expired(s) => assert_eq!(s, late),
        other => panic!("expired open: {other:?}"),
    }
    assert_eq!(must_session(&store, &late.id).await, late, "still pending");

    // Claim: not from another browser or without the cookie (the session stays opened)...
    let named_flow = flow_start("named", 0);
    let named_opened = must_open(&store, &named, 20, &named_flow).await;
    for browser in [Some("browser-hash-someone-else"), None] {
        match claim(&store, &named_flow, browser, 30).await {
            ClaimOutcome::OtherBrowser(s) => assert_eq!(s, named_opened, "{browser:?}"),
            other => panic!("claim from {browser:?}: {other:?}"),
        }
    }
    assert_eq!(must_session(&store, &named.id).await, named_opened);
    assert!(matches!(
        store
            .claim_connect_callback("no-such-state-hash", Some("b"), at(30))
            .await
            .expect("claim unknown"),
        ClaimOutcome::Unknown
    ));
    // ...then from the right one, once, with the very secrets given at open.
    let claimed = match claim(&store, &named_flow, Some(&named_flow.browser_hash), 31).await {
        ClaimOutcome::Claimed(s, secrets) => {
            assert_eq!(secrets, named_flow.secrets, "the secrets given at open");
            s
        }
        other => panic!("claim: {other:?}"),
    };
    let mut exchanging = named_opened.clone();
    exchanging.state = SessionState::Exchanging;
    assert_eq!(claimed, exchanging);
    assert_eq!(must_session(&store, &named.id).await, exchanging);
    // A replay is Used, from any browser (used comes before other browser).
    for browser in [Some(named_flow.browser_hash.as_str()), Some("x"), None] {
        match claim(&store, &named_flow, browser, 32).await {
            ClaimOutcome::Used(s) => assert_eq!(s, exchanging),
            other => panic!("replayed claim from {browser:?}: {other:?}"),
        }
    }

    // Expiry: an opened session past expires_at is not claimed and stays opened; another
    // browser is told so first.
    let short = sample_session("short", 50);
    insert_session(&store, &short).await;
    let short_flow = flow_start("short", 0);
    let short_opened = must_open(&store, &short, 10, &short_flow).await;
    match claim(&store, &short_flow, Some(&short_flow.browser_hash), 50).await {
        ClaimOutcome::Expired(s) => assert_eq!(s, short_opened),
        other => panic!("expired claim: {other:?}"),
    }
    assert!(matches!(
        claim(&store, &short_flow, Some("x"), 50).await,
        ClaimOutcome::OtherBrowser(_)
    ));
    assert_eq!(must_session(&store, &short.id).await, short_opened);

    // Finish: completed once; a second finish changes nothing; a claim after it is Used.
    let acct = AccountId::parse("reddit-account-7").expect("account");
    let completed = Finish::Completed {
        account_id: acct.clone(),
    };
    assert!(
        store
            .finish_connect_session(&named.id, &completed, at(40))
            .await
            .expect("finish")
    );
    let mut done = exchanging.clone();
    done.state = SessionState::Completed;
    done.connected_account_id = Some(acct);
    done.finished_at = Some(at(40));
    assert_eq!(must_session(&store, &named.id).await, done);
    let failed = SessionError {
        code: "access_denied".to_owned(),
        message: "the user declined (ü)".to_owned(),
    };
    assert!(
        !store
            .finish_connect_session(&named.id, &Finish::Failed(failed.clone()), at(41))
            .await
            .expect("finish again"),
        "already finished"
    );
    assert_eq!(must_session(&store, &named.id).await, done, "unchanged");
    assert!(matches!(
        claim(&store, &named_flow, Some(&named_flow.browser_hash), 42).await,
        ClaimOutcome::Used(_)
    ));
    // Failed keeps its error; an opened session's state is then used up too.
    assert!(
        store
            .finish_connect_session(&plain.id, &Finish::Failed(failed.clone()), at(43))
            .await
            .expect("fail")
    );
    let mut plain_failed = opened.clone();
    plain_failed.state = SessionState::Failed;
    plain_failed.error = Some(failed.clone());
    plain_failed.finished_at = Some(at(43));
    assert_eq!(must_session(&store, &plain.id).await, plain_failed);
    assert!(matches!(
        claim(&store, &plain_flow, Some(&plain_flow.browser_hash), 44).await,
        ClaimOutcome::Used(_)
    ));
    // A pending one can expire; an unknown one does not finish.
    let expired = Finish::Expired(SessionError {
        code: "session_expired".to_owned(),
        message: "the link was not opened in time".to_owned(),
    });
    assert!(
        store
            .finish_connect_session(&late.id, &expired, at(200))
            .await
            .expect("expire")
    );
    assert_eq!(
        must_session(&store, &late.id).await.state,
        SessionState::Expired
    );
    assert!(
        !store
            .finish_connect_session("cs_unknown", &completed, at(200))
            .await
            .expect("finish unknown")
    );

    // Purge: only sessions that expired before the cut (short at 50, late at 100; plain
    // and named at 600 stay, finished or not).
    assert_eq!(
        store.purge_connect_sessions(at(50)).await.expect("purge"),
        0
    );
    assert_eq!(
        store.purge_connect_sessions(at(101)).await.expect("purge"),
        2
    );
    for (session, kept) in [
        (&short, false),
        (&late, false),
        (&plain, true),
        (&named, true),
    ] {
        assert_eq!(
            store
                .connect_session(&session.id)
                .await
                .expect("get")
                .is_some(),
            kept,
            "{} after the purge",
            session.id
        );
    }

    // Keys: a ring without the sealing key cannot open the flow (Decrypt), and the session
    // is not burnt; a store reopened with the key gets the secrets.
    let kept = sample_session("keys", 600);
    insert_session(&store, &kept).await;
    let kept_flow = flow_start("keys", 0);
    let kept_opened = must_open(&store, &kept, 10, &kept_flow).await;
    let other_ring = make(db.clone(), test_keys("k2", &["k2"])).await;
    let err = other_ring
        .claim_connect_callback(&kept_flow.state_hash, Some(&kept_flow.browser_hash), at(20))
        .await
        .expect_err("cannot open the flow");
    assert!(matches!(err, StoreError::Decrypt), "wrong ring: {err:?}");
    assert_eq!(
        must_session(&store, &kept.id).await,
        kept_opened,
        "still opened"
    );
    drop(store);
    let reopened = make(db, k1()).await;
    match claim(&reopened, &kept_flow, Some(&kept_flow.browser_hash), 21).await {
        ClaimOutcome::Claimed(s, secrets) => {
            assert_eq!(s.id, kept.id);
            assert_eq!(secrets, kept_flow.secrets, "the secrets, after a reopen");
        }
        other => panic!("claim after reopen: {other:?}"),
    }
}

/// Of 16 browsers opening one link at once, exactly one opens it (the rest are told it was
/// opened) and its flow is the stored one; of 16 callbacks with that state at once, exactly
/// one claims it and gets the secrets (the rest are `Used`).
pub async fn concurrent_connect_claims<F, Fut, S>(make: &F)
where
    F: Fn(TestDb, Arc<KeyRing>) -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    const RACERS: usize = 16;
    let store = Arc::new(make(TestDb::fresh("concurrent_connect"), k1()).await);
    let session = sample_session("race", 600);
    insert_session(store.as_ref(), &session).await;

    let opens: Vec<_> = (0..RACERS)
        .map(|n| {
            let store = Arc::clone(&store);
            let token = token_hash(&session.id);
            tokio::spawn(async move {
                let flow = flow_start("race", n);
                let outcome = store
                    .open_connect_session(&token, at(10), &flow)
                    .await
                    .expect("open");
                (flow, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in opens {
        match task.await.expect("task") {
            (flow, OpenOutcome::Opened(_)) => winners.push(flow),
            (_, OpenOutcome::AlreadyOpened(s)) => assert_eq!(s.state, SessionState::Opened),
            (_, other) => panic!("concurrent open: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one open wins");
    let flow = winners.remove(0);

    let claims: Vec<_> = (0..RACERS)
        .map(|_| {
            let store = Arc::clone(&store);
            let (state, browser) = (flow.state_hash.clone(), flow.browser_hash.clone());
            tokio::spawn(async move {
                store
                    .claim_connect_callback(&state, Some(&browser), at(20))
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for task in claims {
        match task.await.expect("task") {
            ClaimOutcome::Claimed(_, secrets) => claimed.push(secrets),
            ClaimOutcome::Used(_) => {}
            other => panic!("concurrent claim: {other:?}"),
        }
    }
    assert_eq!(claimed.len(), 1, "exactly one claim wins");
    assert_eq!(claimed[0], flow.secrets, "the winning open's secrets");
    assert_eq!(
        must_session(store.as_ref(), &session.id).await.state,
        SessionState::Exchanging
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every public `async fn` here (and in `outbox`) is a check: one missing from the list
    /// would run on no backend, so the list and the checks in these files must name the same
    /// set.
    #[test]
    fn the_list_names_every_public_check() {
        let defined: BTreeSet<&str> = include_str!("conformance.rs")
            .lines()
            .chain(include_str!("conformance/outbox.rs").lines())
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .map(|rest| rest.split(['<', '(']).next().unwrap_or(rest))
            .collect();
        let listed: BTreeSet<&str> = super::CHECKS.iter().copied().collect();
        assert_eq!(listed.len(), super::CHECKS.len(), "a check is listed twice");
        assert!(
            defined.len() >= 20,
            "the scan found the checks: {defined:?}"
        );
        assert_eq!(
            defined, listed,
            "checks defined vs listed in `__for_each_check!`"
        );
    }
}
