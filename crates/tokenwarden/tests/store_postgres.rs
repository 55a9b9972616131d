//! `PgStore` against the store conformance suite, plus what only PostgreSQL has: durability
//! across pools, `claim_due` shared by concurrent claimers over `SKIP LOCKED`, ciphertexts
//! (connect flows included) in the table, schema isolation, change notifications, and errors
//! that keep secrets out.
//!
//! Needs `TOKENWARDEN_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`)
//! when built; without it every test is reported as ignored (see `build.rs`). Each test
//! works in schemas of its own (one per `TestDb`), so tests run in parallel against one
//! server. A test that passes drops the schemas it made (and only those); a failing one
//! leaves them for inspection.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokenwarden::connect::session::{
    ConnectSession, Finish, FlowSecrets, FlowStart, OpenOutcome, SessionState,
};
use tokenwarden::connection::{AccountId, ProviderName, UserId};
use tokenwarden::store::{Change, PgStore, Store, StoreError};
use tokenwarden::{AccessToken, ConnectionKey, KeyRing, RefreshToken};
use tokenwarden_testkit::conformance::TestDb;
use tokenwarden_testkit::{
    EVENTS_OF_A1_NEWEST_FIRST, at, events_before_migration_7, postgres_url, sample_connection,
    test_keys,
};

type Factory = Box<dyn Fn(TestDb, Arc<KeyRing>) -> BoxFuture<'static, PgStore> + Send + Sync>;

/// The schemas one test made, to drop when it passes.
type Made = Arc<Mutex<HashSet<String>>>;

/// One schema per `TestDb`; stores opened for the same `TestDb` share it.
fn factory(url: String, made: Made) -> Factory {
    Box::new(move |db, keys| {
        let url = url.clone();
        made.lock().expect("made").insert(db.name().to_owned());
        Box::pin(async move {
            PgStore::connect_in_schema(&url, db.name(), keys)
                .await
                .expect("connect")
        })
    })
}

/// Drops this test's own schemas (never anything else).
async fn drop_schemas(url: &str, names: impl IntoIterator<Item = String>) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    for name in names {
        assert!(name.starts_with("tw_"), "only test schemas");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )))
        .execute(&mut conn)
        .await
        .expect("drop schema");
    }
}

/// Runs one conformance check over schemas of its own, dropped when it passes.
async fn run_check<C, Fut>(check: C)
where
    C: FnOnce(Factory) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = postgres_url();
    let made = Made::default();
    check(factory(url.clone(), made.clone())).await;
    let names: Vec<String> = made.lock().expect("made").drain().collect();
    drop_schemas(&url, names).await;
}

mod conformance {
    tokenwarden_testkit::store_conformance_tests!(
        #[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
        run_with = super::run_check
    );
}

async fn store_in(url: &str, db: &TestDb) -> PgStore {
    PgStore::connect_in_schema(url, db.name(), test_keys("k1", &["k1"]))
        .await
        .expect("connect")
}

/// Events written before migration 7 get their connection from their bodies when it runs:
/// the schema is taken back to before it, events are written as they were then, and a new
/// pool migrates again.
#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn migration_7_finds_the_connection_of_older_events() {
    let url = postgres_url();
    let db = TestDb::fresh("migration_7");
    let store = store_in(&url, &db).await;
    for sql in [
        "DROP INDEX webhook_events_by_connection",
        "ALTER TABLE webhook_events DROP COLUMN user_id, DROP COLUMN provider, \
         DROP COLUMN account_id",
        "DELETE FROM _sqlx_migrations WHERE version = 7",
    ] {
        sqlx::query(sql)
            .execute(store.pool())
            .await
            .expect("back to before migration 7");
    }
    let events = events_before_migration_7();
    for (n, event) in events.iter().enumerate() {
        sqlx::query(
            "INSERT INTO webhook_events (id, type, body, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&event.id)
        .bind(event.kind.as_str())
        .bind(&event.body)
        .bind(i64::try_from(n).expect("n") * 1000)
        .execute(store.pool())
        .await
        .expect("insert as before migration 7");
    }
    store.close().await;
    let store = store_in(&url, &db).await;
    let key = ConnectionKey::parse("u ü", "reddit", "a 1").expect("key");
    let listed: Vec<String> = store
        .recent_connection_events(&key, 10)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        listed,
        EVENTS_OF_A1_NEWEST_FIRST.map(|i| events[i].id.clone()),
        "newest first, the others left out"
    );
    store.close().await;
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn a_committed_write_is_read_by_a_new_pool() {
    let url = postgres_url();
    let db = TestDb::fresh("durable");
    let conn = sample_connection("ünïcode user", "reddit", "acct");
    let updated = {
        let store = store_in(&url, &db).await;
        let (meta, _) = store.put(&conn).await.expect("put");
        let mut next = conn.clone();
        next.meta.version = meta.version;
        next.tokens.access_token = AccessToken::new("after-refresh");
        let updated = store.update(&next).await.expect("update");
        // Closed at once, as in a process exiting right after the write returned.
        store.close().await;
        updated
    };
    let reopened = store_in(&url, &db).await;
    let got = reopened
        .get(conn.key())
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(got.meta, updated);
    assert_eq!(got.tokens.access_token.expose_secret(), "after-refresh");
    // Migrations ran once: a third pool over the schema is a no-op too.
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(reopened.pool())
        .await
        .expect("migrations table in the schema");
    let migrations = tokenwarden::store::postgres::migrator().iter().count();
    assert_eq!(
        applied,
        i64::try_from(migrations).expect("count"),
        "each migration recorded once"
    );
    reopened.close().await;
    let again = store_in(&url, &db).await;
    assert_eq!(
        again
            .get(conn.key())
            .await
            .expect("get")
            .expect("there")
            .meta,
        updated
    );
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn four_claimers_over_200_due_rows_get_disjoint_complete_shares() {
    let url = postgres_url();
    let db = TestDb::fresh("claim_200");
    let seed = store_in(&url, &db).await;
    for i in 0..200 {
        let mut conn = sample_connection("u", "tiktok", &format!("due-{i:03}"));
        conn.meta.next_refresh_at = Some(at(i));
        seed.put(&conn).await.expect("put");
    }
    // Four instances, each with its own pool, as separate processes would have.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let store = store_in(&url, &db).await;
        tasks.push(tokio::spawn(async move {
            let owner = format!("claimer-{i}");
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due(at(1000), 9, &owner, at(2000))
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    // The store lives on with its claims: dropped, its process would be
                    // gone and the others would take its rows over.
                    return (owner, mine, store);
                }
                mine.extend(batch.into_iter().map(|c| c.key));
            }
        }));
    }
    let mut all: Vec<ConnectionKey> = Vec::new();
    let mut shares = Vec::new();
    let mut alive = Vec::new();
    for task in tasks {
        let (owner, mine, store) = task.await.expect("task");
        shares.push((owner, mine.clone()));
        all.extend(mine);
        alive.push(store);
    }
    let distinct: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(distinct.len(), all.len(), "a connection was claimed twice");
    assert_eq!(all.len(), 200, "every due connection claimed");
    // The database agrees: each row is leased to the claimer that got it.
    for (owner, mine) in shares {
        for key in mine {
            let leased: Option<String> = sqlx::query_scalar(
                "SELECT lease_owner FROM connections \
                 WHERE user_id = $1 AND provider = $2 AND account_id = $3",
            )
            .bind(key.user_id.as_str())
            .bind(key.provider.as_str())
            .bind(key.account_id.as_str())
            .fetch_one(seed.pool())
            .await
            .expect("lease owner");
            assert_eq!(leased.as_deref(), Some(owner.as_str()), "{key}");
        }
    }
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn claim_due_skips_rows_locked_by_another_transaction_instead_of_waiting() {
    let url = postgres_url();
    let db = TestDb::fresh("skip_locked");
    let store = store_in(&url, &db).await;
    for i in 0..3 {
        let mut conn = sample_connection("u", "tiktok", &format!("row-{i}"));
        conn.meta.next_refresh_at = Some(at(i));
        store.put(&conn).await.expect("put");
    }
    // Another session holds row-0's row lock (as a claimer mid-statement would).
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM connections WHERE account_id = 'row-0' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    let claimed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.claim_due(at(100), 10, "a", at(200)),
    )
    .await
    .expect("claim_due must not wait for the lock")
    .expect("claim");
    let accounts: Vec<&str> = claimed.iter().map(|c| c.key.account_id.as_str()).collect();
    assert_eq!(
        accounts,
        ["row-1", "row-2"],
        "earliest first, locked row skipped"
    );
    tx.rollback().await.expect("rollback");
    let claimed = store
        .claim_due(at(100), 10, "b", at(200))
        .await
        .expect("claim");
    let accounts: Vec<&str> = claimed.iter().map(|c| c.key.account_id.as_str()).collect();
    assert_eq!(accounts, ["row-0"]);
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn the_table_holds_no_plaintext_secret() {
    let url = postgres_url();
    let db = TestDb::fresh("no_plaintext");
    let store = store_in(&url, &db).await;
    let mut conn = sample_connection("plaintext-check-user", "tiktok", "acct");
    let access = "AT-5f0c2b9e-plaintext-must-not-hit-disk";
    let refresh = "RT-9d41aa07-plaintext-must-not-hit-disk";
    conn.tokens.access_token = AccessToken::new(access);
    conn.tokens.refresh_token = Some(RefreshToken::new(refresh));
    let (meta, _) = store.put(&conn).await.expect("put");
    let mut next = conn.clone();
    next.meta.version = meta.version;
    next.tokens.access_token = AccessToken::new(format!("{access}-2"));
    store.update(&next).await.expect("update");

    // Every column of the row as text (bytea as hex and as raw bytes read as text).
    let (row, access_raw, refresh_raw): (String, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT c::text, access_token, refresh_token FROM connections AS c \
         WHERE user_id = 'plaintext-check-user'",
    )
    .fetch_one(store.pool())
    .await
    .expect("row");
    assert!(row.contains("plaintext-check-user"), "sanity: the row");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for secret in [access, refresh] {
        assert!(!row.contains(secret), "plaintext in the row");
        assert!(!row.contains(&hex(secret)), "plaintext (as hex) in the row");
        for raw in [&access_raw, &refresh_raw] {
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext in a ciphertext column"
            );
        }
    }
    let (access_text, refresh_text): (String, String) = sqlx::query_as(
        "SELECT access_token::text, refresh_token::text FROM connections \
         WHERE user_id = 'plaintext-check-user'",
    )
    .fetch_one(store.pool())
    .await
    .expect("as text");
    for secret in [access, refresh] {
        assert!(!access_text.contains(secret) && !refresh_text.contains(secret));
        assert!(!access_text.contains(&hex(secret)) && !refresh_text.contains(&hex(secret)));
    }
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn schemas_are_isolated() {
    let url = postgres_url();
    let (db_a, db_b) = (TestDb::fresh("iso_a"), TestDb::fresh("iso_b"));
    let a = store_in(&url, &db_a).await;
    let b = store_in(&url, &db_b).await;
    let conn = sample_connection("u", "tiktok", "a");
    a.put(&conn).await.expect("put");
    assert!(a.get(conn.key()).await.expect("get").is_some());
    assert!(b.get(conn.key()).await.expect("get").is_none());
    assert_eq!(
        b.list(&Default::default()).await.expect("list").items.len(),
        0
    );
    // Deleting in one schema moves only that schema's version floor (the trigger is pinned
    // to its own schema).
    assert!(a.delete(conn.key()).await.expect("delete"));
    let floor = |store: &PgStore| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT max_deleted_version FROM store_state")
                .fetch_one(&pool)
                .await
                .expect("floor")
        }
    };
    assert!(floor(&a).await > 0);
    assert_eq!(floor(&b).await, 0);
    drop_schemas(&url, [db_a.name().to_owned(), db_b.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn the_same_schema_can_be_opened_concurrently() {
    let url = postgres_url();
    let db = TestDb::fresh("concurrent_open");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (url, db) = (url.clone(), db.clone());
            tokio::spawn(async move { store_in(&url, &db).await })
        })
        .collect();
    for open in opens {
        open.await.expect("task").ping().await.expect("ping");
    }
    drop_schemas(&url, [db.name().to_owned()]).await;
}

/// `url` with `search_path` set through the URL's own `options` parameter, as an operator
/// would put a deployment in a schema of its own.
fn url_in_schema(url: &str, schema: &str) -> String {
    let mut url = url::Url::parse(url).expect("test URL");
    url.query_pairs_mut()
        .append_pair("options", &format!("-c search_path={schema}"));
    url.into()
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn the_backend_chooser_opens_postgres_urls() {
    let url = postgres_url();
    // Never the shared default schema: create a schema of its own, then point the URL at it.
    let db = TestDb::fresh("chooser");
    store_in(&url, &db).await.close().await;
    let store =
        tokenwarden::store::connect(&url_in_schema(&url, db.name()), test_keys("k1", &["k1"]))
            .await
            .expect("connect");
    store.ping().await.expect("ping");
    let conn = sample_connection("u", "tiktok", "a");
    store.put(&conn).await.expect("put");
    assert!(format!("{store:?}").starts_with("PgStore"));
    // The write landed in that schema.
    let same = store_in(&url, &db).await;
    assert!(same.get(conn.key()).await.expect("get").is_some());
    let postgresql = url.replacen("postgres://", "postgresql://", 1);
    tokenwarden::store::connect(
        &url_in_schema(&postgresql, db.name()),
        test_keys("k1", &["k1"]),
    )
    .await
    .expect("postgresql:// too")
    .ping()
    .await
    .expect("ping");
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn errors_and_debug_never_show_the_password() {
    let url = postgres_url();
    // A role that does not exist on the real server (trust auth may accept any password),
    // and a URL that does not parse.
    let mut wrong = url::Url::parse(&url).expect("test URL");
    wrong.set_username("nobody_tw").expect("user");
    wrong
        .set_password(Some("hunter2-secret"))
        .expect("password");
    for bad in [
        wrong.as_str(),
        "postgres://tw:hunter2-secret@db:notaport/tw",
    ] {
        let err = PgStore::connect(bad, test_keys("k1", &["k1"]))
            .await
            .expect_err("cannot connect");
        assert!(matches!(err, StoreError::Database(_)), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }
    // Nothing listens on port 1: the reason comes back at once, not a pool timeout.
    let started = std::time::Instant::now();
    let err = PgStore::connect(
        "postgres://tw:hunter2-secret@127.0.0.1:1/tw",
        test_keys("k1", &["k1"]),
    )
    .await
    .expect_err("nothing listens");
    let shown = format!("{err}");
    assert!(
        shown.to_lowercase().contains("refused") && !shown.contains("hunter2-secret"),
        "{shown}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let db = TestDb::fresh("debug");
    let store = store_in(&url, &db).await;
    let shown = format!("{store:?}");
    assert!(
        !shown.contains(&url) && !shown.contains("127.0.0.1"),
        "{shown}"
    );
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn database_errors_are_never_not_found() {
    let url = postgres_url();
    let db = TestDb::fresh("db_errors");
    let store = store_in(&url, &db).await;
    let conn = sample_connection("u", "tiktok", "a");
    sqlx::query("DROP TABLE connections")
        .execute(store.pool())
        .await
        .expect("drop");
    let err = store.get(conn.key()).await.expect_err("no table");
    assert!(matches!(err, StoreError::Database(_)), "get: {err:?}");
    let err = store.update(&conn).await.expect_err("no table");
    assert!(matches!(err, StoreError::Database(_)), "update: {err:?}");
    let err = store.delete(conn.key()).await.expect_err("no table");
    assert!(matches!(err, StoreError::Database(_)), "delete: {err:?}");
    let err = store
        .try_lease(conn.key(), "a", at(0), at(1))
        .await
        .expect_err("no table");
    assert!(matches!(err, StoreError::Database(_)), "try_lease: {err:?}");
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn tampered_or_moved_ciphertexts_fail_to_decrypt() {
    let url = postgres_url();
    let db = TestDb::fresh("tamper");
    let store = store_in(&url, &db).await;
    let a = sample_connection("u", "tiktok", "a");
    let b = sample_connection("u", "tiktok", "b");
    store.put(&a).await.expect("put a");
    store.put(&b).await.expect("put b");
    // Move a's sealed refresh token into b's row: the associated data binds it to a.
    sqlx::query(
        "UPDATE connections SET refresh_token = \
         (SELECT refresh_token FROM connections WHERE account_id = 'a') WHERE account_id = 'b'",
    )
    .execute(store.pool())
    .await
    .expect("swap");
    let err = store.get(b.key()).await.expect_err("moved ciphertext");
    assert!(matches!(err, StoreError::Decrypt), "{err:?}");
    sqlx::query("UPDATE connections SET access_token = '\\x0102'::bytea WHERE account_id = 'a'")
        .execute(store.pool())
        .await
        .expect("tamper");
    let err = store.get(a.key()).await.expect_err("tampered");
    assert!(matches!(err, StoreError::Decrypt), "{err:?}");
    assert_eq!(
        store
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn nul_in_provider_text_does_not_fail_a_write() {
    let url = postgres_url();
    let db = TestDb::fresh("nul_text");
    let store = store_in(&url, &db).await;
    let mut conn = sample_connection("u", "tiktok", "nul");
    conn.meta.token_type = "Bea\0rer".into();
    conn.meta.metadata = serde_json::json!({"odd": "a\u{0}b"});
    let (meta, _) = store.put(&conn).await.expect("put with NUL");
    let got = store.get(conn.key()).await.expect("get").expect("there");
    assert_eq!(got.meta, meta, "what put reports is what get reads");
    assert_eq!(got.meta.token_type, "Bea\u{FFFD}rer");
    assert_eq!(
        got.meta.metadata, conn.meta.metadata,
        "JSON keeps NUL escaped"
    );
    drop_schemas(&url, [db.name().to_owned()]).await;
}

/// The next change report, within a few seconds.
async fn next_change(changes: &mut tokio::sync::broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(10), changes.recv())
        .await
        .expect("a change report within 10 s")
        .expect("the feed is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn writes_elsewhere_are_reported_with_their_version_and_nothing_else_is() {
    let url = postgres_url();
    let (db, other_db) = (TestDb::fresh("changes"), TestDb::fresh("changes_other"));
    let (watcher, writer) = (store_in(&url, &db).await, store_in(&url, &db).await);
    let elsewhere = store_in(&url, &other_db).await;
    let mut changes = watcher.changes().expect("PostgreSQL reports changes");
    // Listening starts with "anything may have changed" (nothing was heard before).
    assert_eq!(next_change(&mut changes).await, Change::All);

    let conn = sample_connection("u", "tiktok", "watched");
    let key = conn.key().clone();
    // Another schema's writes are not this store's business.
    elsewhere.put(&conn).await.expect("put elsewhere");
    let (created, _) = writer.put(&conn).await.expect("put");
    assert_eq!(
        next_change(&mut changes).await,
        Change::Connection {
            key: key.clone(),
            version: Some(created.version),
            next_refresh_at: conn.meta.next_refresh_at,
        },
        "an import is reported (and the other schema's was not)"
    );

    // Leases and claims change no token: not reported. The refresh after them is.
    let now = at(0);
    assert!(
        writer
            .try_lease(&key, "w", now, at(100))
            .await
            .expect("lease")
    );
    writer.release_lease(&key, "w").await.expect("release");
    writer
        .claim_due(at(1_000_000), 10, "w", at(1_000_100))
        .await
        .expect("claim");
    let mut refreshed = conn.clone();
    refreshed.meta.version = created.version;
    refreshed.tokens.access_token = AccessToken::new("rotated");
    let updated = writer.update(&refreshed).await.expect("update");
    assert_eq!(
        next_change(&mut changes).await,
        Change::Connection {
            key: key.clone(),
            version: Some(updated.version),
            next_refresh_at: conn.meta.next_refresh_at,
        }
    );
    // A batch reports each row; a failed compare-and-swap reports nothing.
    refreshed.meta.version = updated.version;
    let results = writer
        .update_batch(&[refreshed.clone(), refreshed.clone()])
        .await
        .expect("batch");
    assert!(results[0].is_ok() && matches!(results[1], Err(StoreError::Conflict)));
    assert_eq!(
        next_change(&mut changes).await,
        Change::Connection {
            key: key.clone(),
            version: Some(updated.version + 1),
            next_refresh_at: conn.meta.next_refresh_at,
        }
    );
    assert!(writer.delete(&key).await.expect("delete"));
    assert_eq!(
        next_change(&mut changes).await,
        Change::Connection {
            key,
            version: None,
            next_refresh_at: None
        },
        "a delete is reported without a version"
    );
    assert!(
        matches!(
            changes.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "nothing else was reported"
    );
    drop((watcher, writer, elsewhere));
    drop_schemas(&url, [db.name().to_owned(), other_db.name().to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn dropped_database_connections_are_replaced_and_change_reports_resume() {
    let url = postgres_url();
    let db = TestDb::fresh("blip");
    // A name of its own in pg_stat_activity, so only this store's sessions are killed.
    let app = format!("tw_blip_{}_{}", std::process::id(), db.name().len());
    let separator = if url.contains('?') { '&' } else { '?' };
    let watcher = PgStore::connect_in_schema(
        &format!("{url}{separator}application_name={app}"),
        db.name(),
        test_keys("k1", &["k1"]),
    )
    .await
    .expect("connect");
    let writer = store_in(&url, &db).await;
    let mut changes = watcher.changes().expect("changes");
    assert_eq!(next_change(&mut changes).await, Change::All);
    let conn = sample_connection("u", "tiktok", "blip");
    let (created, _) = writer.put(&conn).await.expect("put");
    assert!(matches!(
        next_change(&mut changes).await,
        Change::Connection { .. }
    ));
    assert!(watcher.get(conn.key()).await.expect("get").is_some());

    // A failover, as the store sees it: every one of its sessions ends at once.
    let killed: i64 = sqlx::query_scalar(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_one(writer.pool())
    .await
    .expect("terminate");
    assert!(
        killed >= 2,
        "the pool's and the listener's sessions: {killed}"
    );

    // Reads work again on new sessions, and the listener says it may have missed changes...
    let got = watcher
        .get(conn.key())
        .await
        .expect("a new session after the kill");
    assert_eq!(got.expect("there").meta.version, created.version);
    assert_eq!(next_change(&mut changes).await, Change::All);
    // ...then reports changes again.
    let mut refreshed = conn.clone();
    refreshed.meta.version = created.version;
    let updated = writer.update(&refreshed).await.expect("update");
    loop {
        match next_change(&mut changes).await {
            Change::All => continue,
            Change::Connection { key, version, .. } => {
                assert_eq!(&key, conn.key());
                assert_eq!(version, Some(updated.version));
                break;
            }
        }
    }
    drop((watcher, writer));
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn closing_a_listening_store_does_not_wait_for_its_listener() {
    let url = postgres_url();
    let db = TestDb::fresh("close_listening");
    let store = store_in(&url, &db).await;
    let mut changes = store.changes().expect("changes");
    assert_eq!(next_change(&mut changes).await, Change::All, "listening");
    // The listener holds one of the pool's connections; a graceful shutdown closes the pool
    // and must not hang on it.
    tokio::time::timeout(std::time::Duration::from_secs(10), store.close())
        .await
        .expect("the pool closes although a listener was using it");
    drop(store);
    assert!(
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(10), changes.recv()).await,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed))
        ),
        "the feed ends with the store"
    );
    drop_schemas(&url, [db.name().to_owned()]).await;
}

#[tokio::test]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn connect_flow_secrets_are_sealed_and_erased_when_the_session_finishes() {
    let url = postgres_url();
    let db = TestDb::fresh("flow_sealed");
    let store = store_in(&url, &db).await;
    let session = ConnectSession {
        id: "cs_rawflowcheck00000000000".to_owned(),
        user_id: UserId::parse("flow-check-user").expect("user"),
        provider: ProviderName::parse("reddit").expect("provider"),
        account_id: None,
        reconnect: false,
        return_url: "https://app.example/back".to_owned(),
        scopes: Vec::new(),
        state: SessionState::Pending,
        error: None,
        connected_account_id: None,
        created_at: at(0),
        expires_at: at(600),
        opened_at: None,
        finished_at: None,
    };
    let verifier = "PKCE-3b7e61d2-verifier-must-not-hit-disk";
    let flow = FlowStart {
        state_hash: "state-hash-raw".to_owned(),
        browser_hash: "browser-hash-raw".to_owned(),
        secrets: FlowSecrets {
            code_verifier: Some(verifier.to_owned()),
            nonce: None,
        },
    };
    store
        .insert_connect_session(&session, "token-hash-raw")
        .await
        .expect("insert");
    assert!(matches!(
        store
            .open_connect_session("token-hash-raw", at(10), &flow)
            .await
            .expect("open"),
        OpenOutcome::Opened(_)
    ));
    let (row, sealed, key_id): (String, Vec<u8>, String) = sqlx::query_as(
        "SELECT s::text, flow, flow_key_id FROM connect_sessions AS s WHERE id = $1",
    )
    .bind(&session.id)
    .fetch_one(store.pool())
    .await
    .expect("raw flow");
    assert!(row.contains("flow-check-user"), "sanity: the row");
    let hex: String = verifier.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !row.contains(verifier) && !row.contains(&hex),
        "plaintext in the row"
    );
    assert!(
        !sealed
            .windows(verifier.len())
            .any(|w| w == verifier.as_bytes()),
        "plaintext in the flow column"
    );
    assert_eq!(key_id, "k1", "the envelope's key id");

    let finish = Finish::Completed {
        account_id: AccountId::parse("acct").expect("account"),
    };
    assert!(
        store
            .finish_connect_session(&session.id, &finish, at(20))
            .await
            .expect("finish")
    );
    let erased: (Option<Vec<u8>>, Option<String>) =
        sqlx::query_as("SELECT flow, flow_key_id FROM connect_sessions WHERE id = $1")
            .bind(&session.id)
            .fetch_one(store.pool())
            .await
            .expect("raw flow");
    assert_eq!(erased, (None, None), "erased at finish");
    drop_schemas(&url, [db.name().to_owned()]).await;
}

/// A TCP relay on a port of its own in front of the database, so the sockets of the store
/// under test are told from every other test's by their peer port.
async fn relay_to(url: &str) -> (String, u16) {
    let mut parsed = url::Url::parse(url).expect("url");
    let target = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    parsed.set_host(Some("127.0.0.1")).expect("host");
    parsed.set_port(Some(port)).expect("port");
    (parsed.to_string(), port)
}

/// sqlx 0.9.0 leaves Nagle's algorithm on; the store's pools turn it off on every connection
/// they open (a statement over 16 KiB would otherwise wait 40 ms for a delayed ACK).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn the_pool_connections_have_tcp_nodelay() {
    use tokenwarden::store::postgres::nodelay::set_on_connections_to;
    let url = postgres_url();
    let (relayed, port) = relay_to(&url).await;
    let db = TestDb::fresh("nodelay");
    let store = store_in(&relayed, &db).await;
    // Several connections at once, so the pool opens more than its first.
    let conn = sample_connection("u", "tiktok", "a");
    let gets: Vec<_> = (0..6).map(|_| store.get(conn.key())).collect();
    for got in futures::future::join_all(gets).await {
        assert!(got.expect("get").is_none());
    }
    assert!(
        store.pool().size() > 1,
        "the pool opened several connections"
    );
    assert_eq!(
        set_on_connections_to(port).expect("inspect"),
        0,
        "every connection of the store's pool already has TCP_NODELAY"
    );
    // A connection made without the store's pool is found and changed: the check above
    // could see the store's sockets.
    use sqlx::Connection as _;
    let plain = sqlx::PgConnection::connect(&relayed)
        .await
        .expect("connect");
    assert_eq!(set_on_connections_to(port).expect("set"), 1);
    plain.close().await.expect("close");
    drop(store);
    drop_schemas(&url, [db.name().to_owned()]).await;
}

/// Waits until `n` sessions named `application_name` wait for a lock (polling
/// `pg_stat_activity`; other tests' sessions have other names).
async fn wait_for_lock_waiters(url: &str, application_name: &str, n: i64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(application_name)
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_activity");
        if waiting >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} of {n} sessions waiting"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A connection deleted and imported again at the same moment: the import, waiting for the
/// delete, starts the new row above the deleted row's version, so a refresh that read the
/// deleted row cannot write its tokens over the new grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn an_import_racing_a_delete_starts_above_the_deleted_version() {
    let url = postgres_url();
    let db = TestDb::fresh("delete_import_race");
    let name = db.name().to_owned();
    let mut named = url::Url::parse(&url).expect("test URL");
    named
        .query_pairs_mut()
        .append_pair("application_name", &name);
    let store = Arc::new(store_in(named.as_str(), &db).await);
    // With the outbox on a delete writes its event before it commits: holding the events
    // table holds the delete between its DELETE and its COMMIT.
    store.set_outbox(true);
    let mut old = sample_connection("u", "tiktok", "a");
    old.meta = store.put(&old).await.expect("put").0;
    for _ in 0..3 {
        old.meta = store.update(&old).await.expect("update");
    }

    let mut blocker = store.pool().begin().await.expect("begin");
    sqlx::query("LOCK TABLE webhook_events IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let deleting = tokio::spawn({
        let (store, key) = (Arc::clone(&store), old.key().clone());
        async move { store.delete(&key).await }
    });
    wait_for_lock_waiters(&url, &name, 1).await;
    let importing = tokio::spawn({
        let store = Arc::clone(&store);
        let new = sample_connection("u", "tiktok", "a");
        async move { store.put(&new).await }
    });
    // The import waits for the delete (for its row, or for the key's lock).
    wait_for_lock_waiters(&url, &name, 2).await;
    blocker.rollback().await.expect("rollback");

    assert!(deleting.await.expect("task").expect("delete"), "deleted");
    let (new, outcome) = importing.await.expect("task").expect("import");
    assert_eq!(outcome, tokenwarden::store::PutOutcome::Created);
    assert!(
        new.version > old.meta.version,
        "the new row's version {} must start above the deleted row's {}",
        new.version,
        old.meta.version
    );
    // A refresh that read the deleted row finds it gone.
    let stale = store.update(&old).await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    drop_schemas(&url, [name]).await;
}
