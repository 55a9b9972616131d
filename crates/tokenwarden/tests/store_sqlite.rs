//! `SqliteStore` against the store conformance suite (on a file and in memory), plus what
//! only SQLite has: its pragmas, file creation, durability across a reopen, and the raw
//! database file never holding a plaintext token or connect flow secret.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sqlx::sqlite::SqlitePool;
use tempfile::TempDir;
use tokenwarden::connect::session::{
    ConnectSession, Finish, FlowSecrets, FlowStart, OpenOutcome, SessionError, SessionState,
};
use tokenwarden::connection::{ProviderName, UserId};
use tokenwarden::store::{SqliteStore, Store, StoreError};
use tokenwarden::{AccessToken, KeyRing, RefreshToken};
use tokenwarden_testkit::conformance::TestDb;
use tokenwarden_testkit::{sample_connection, test_keys};

type Factory = Box<dyn Fn(TestDb, Arc<KeyRing>) -> BoxFuture<'static, SqliteStore> + Send + Sync>;

/// One temporary directory per test; each `TestDb` is a file in it.
fn file_factory() -> Factory {
    let dir = Arc::new(TempDir::new().expect("temp dir"));
    Box::new(move |db, keys| {
        let dir = Arc::clone(&dir);
        Box::pin(async move {
            let url = file_url(&dir.path().join(format!("{}.db", db.name())));
            SqliteStore::connect(&url, keys).await.expect("connect")
        })
    })
}

/// `sqlite::memory:`; stores opened for the same `TestDb` share its one-connection pool.
fn memory_factory() -> Factory {
    let pools: Arc<Mutex<HashMap<TestDb, SqlitePool>>> = Arc::default();
    Box::new(move |db, keys| {
        let pools = Arc::clone(&pools);
        Box::pin(async move {
            let existing = pools.lock().expect("pools").get(&db).cloned();
            if let Some(pool) = existing {
                return SqliteStore::from_pool(pool, keys).await.expect("from pool");
            }
            let store = SqliteStore::connect("sqlite::memory:", keys)
                .await
                .expect("connect");
            pools
                .lock()
                .expect("pools")
                .insert(db, store.pool().clone());
            store
        })
    })
}

mod file {
    tokenwarden_testkit::store_conformance_tests!(super::file_factory());
}

mod memory {
    tokenwarden_testkit::store_conformance_tests!(super::memory_factory());
}

fn file_url(path: &Path) -> String {
    let path = path.to_str().expect("utf-8 temp path");
    assert!(path.starts_with('/'), "absolute path");
    format!("sqlite://{path}")
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::connect(&file_url(path), test_keys("k1", &["k1"]))
        .await
        .expect("connect")
}

#[tokio::test]
async fn file_database_uses_wal_and_full_sync() {
    let dir = TempDir::new().expect("temp dir");
    let store = open(&dir.path().join("tw.db")).await;
    let pool = store.pool();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .expect("pragma");
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .expect("pragma");
    assert_eq!(synchronous, 2, "synchronous=FULL");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .expect("pragma");
    assert_eq!(foreign_keys, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(pool)
        .await
        .expect("pragma");
    assert_eq!(busy, 5000);
}

#[tokio::test]
async fn creates_missing_parent_directories() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir
        .path()
        .join("not")
        .join("yet")
        .join("there")
        .join("tw.db");
    let store = open(&path).await;
    store.ping().await.expect("ping");
    assert!(path.is_file(), "database file created");
}

#[tokio::test]
async fn memory_databases_are_private() {
    let a = SqliteStore::connect("sqlite::memory:", test_keys("k1", &["k1"]))
        .await
        .expect("a");
    let b = SqliteStore::connect("sqlite::memory:", test_keys("k1", &["k1"]))
        .await
        .expect("b");
    let conn = sample_connection("u", "tiktok", "a");
    a.put(&conn).await.expect("put");
    assert!(a.get(conn.key()).await.expect("get").is_some());
    assert!(b.get(conn.key()).await.expect("get").is_none());
}

#[tokio::test]
async fn bad_url_is_an_error_that_does_not_echo_it() {
    let err = SqliteStore::connect("postgres://tw:hunter2@db/tw", test_keys("k1", &["k1"]))
        .await
        .expect_err("not sqlite");
    assert!(matches!(err, StoreError::Database(_)));
    assert!(!err.to_string().contains("hunter2"));
}

/// Everything in the database file and its WAL/shared-memory companions.
fn raw_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(content) = std::fs::read(&name) {
            bytes.extend(content);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn database_file_never_holds_plaintext_tokens() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("tw.db");
    let store = open(&path).await;
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

    let bytes = raw_bytes(&path);
    assert!(
        contains(&bytes, "plaintext-check-user"),
        "sanity: the row is in these files"
    );
    assert!(
        !contains(&bytes, access),
        "access token in the database file"
    );
    assert!(
        !contains(&bytes, refresh),
        "refresh token in the database file"
    );

    store.close().await;
    let bytes = raw_bytes(&path);
    assert!(
        !contains(&bytes, access) && !contains(&bytes, refresh),
        "after checkpoint"
    );
}

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("data").join("tw.db");
    let conn = sample_connection("ünïcode user", "reddit", "acct");
    let updated = {
        let store = open(&path).await;
        let (meta, _) = store.put(&conn).await.expect("put");
        let mut next = conn.clone();
        next.meta.version = meta.version;
        next.tokens.access_token = AccessToken::new("after-refresh");
        store.update(&next).await.expect("update")
        // Dropped without close(), as in a crash after the write returned.
    };
    let reopened = open(&path).await;
    let got = reopened
        .get(conn.key())
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(got.meta, updated);
    assert_eq!(got.tokens.access_token.expose_secret(), "after-refresh");
    // Migrations ran once; a third open is a no-op too.
    drop(reopened);
    let again = open(&path).await;
    assert_eq!(
        again
            .get(conn.key())
            .await
            .expect("get")
            .expect("there")
            .meta,
        updated
    );
}

#[tokio::test]
async fn database_errors_are_never_not_found() {
    let store = SqliteStore::connect("sqlite::memory:", test_keys("k1", &["k1"]))
        .await
        .expect("connect");
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
}

#[tokio::test]
async fn tampered_or_moved_ciphertexts_fail_to_decrypt() {
    let store = SqliteStore::connect("sqlite::memory:", test_keys("k1", &["k1"]))
        .await
        .expect("connect");
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
    sqlx::query("UPDATE connections SET access_token = X'0102' WHERE account_id = 'a'")
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
}

/// A pending connect session for the raw-storage tests, with its link's token hash.
fn connect_session(id: &str) -> ConnectSession {
    let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(1_780_000_000 + s).expect("time");
    ConnectSession {
        id: id.to_owned(),
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
    }
}

/// Finishes session `id` as failed at `now`; it must have been open.
async fn fail_session(store: &SqliteStore, id: &str, now: time::OffsetDateTime) {
    let finish = Finish::Failed(SessionError {
        code: "provider_error".to_owned(),
        message: "no".to_owned(),
    });
    assert!(
        store
            .finish_connect_session(id, &finish, now)
            .await
            .expect("finish")
    );
}

#[tokio::test]
async fn connect_flow_secrets_are_sealed_and_erased_when_the_session_finishes() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("tw.db");
    let store = open(&path).await;
    let session = connect_session("cs_rawflowcheck00000000000");
    let verifier = "PKCE-3b7e61d2-verifier-must-not-hit-disk";
    let nonce = "NONCE-8c02f4a9-must-not-hit-disk";
    let flow = FlowStart {
        state_hash: "state-hash-raw".to_owned(),
        browser_hash: "browser-hash-raw".to_owned(),
        secrets: FlowSecrets {
            code_verifier: Some(verifier.to_owned()),
            nonce: Some(nonce.to_owned()),
        },
    };
    store
        .insert_connect_session(&session, "token-hash-raw")
        .await
        .expect("insert");
    let now = session.created_at + time::Duration::seconds(10);
    assert!(matches!(
        store
            .open_connect_session("token-hash-raw", now, &flow)
            .await
            .expect("open"),
        OpenOutcome::Opened(_)
    ));

    let (sealed, key_id): (Vec<u8>, String) =
        sqlx::query_as("SELECT flow, flow_key_id FROM connect_sessions WHERE id = ?")
            .bind(&session.id)
            .fetch_one(store.pool())
            .await
            .expect("raw flow");
    assert!(!sealed.is_empty(), "sanity: a sealed flow is stored");
    for secret in [verifier, nonce] {
        assert!(!contains(&sealed, secret), "plaintext in the flow column");
    }
    assert_eq!(key_id, "k1", "the envelope's key id");
    let bytes = raw_bytes(&path);
    assert!(
        contains(&bytes, "flow-check-user"),
        "sanity: the row is here"
    );
    assert!(
        !contains(&bytes, verifier) && !contains(&bytes, nonce),
        "plaintext in the database files"
    );

    fail_session(&store, &session.id, now).await;
    let (sealed, key_id): (Option<Vec<u8>>, Option<String>) =
        sqlx::query_as("SELECT flow, flow_key_id FROM connect_sessions WHERE id = ?")
            .bind(&session.id)
            .fetch_one(store.pool())
            .await
            .expect("raw flow");
    assert_eq!((sealed, key_id), (None, None), "erased at finish");
}

/// `PRAGMA data_version` on the store's writer connection: it moves when, and only when,
/// another connection has committed a change since this connection last looked.
async fn data_version(store: &SqliteStore) -> i64 {
    store
        .with_writer(async |db| {
            sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(db)
                .await
                .expect("data_version")
        })
        .await
        .expect("the writer")
}

/// Every kind of write runs on the store's one writer connection, so SQLite never sees
/// another connection's change and keeps that connection's page cache from write to write.
#[tokio::test]
async fn every_write_runs_on_the_one_writer_connection() {
    use tokenwarden::webhooks::EventType;
    use tokenwarden::webhooks::outbox::{DeliveryOutcome, NewEvent, Prior};
    use tokenwarden_testkit::at;

    let dir = TempDir::new().expect("temp dir");
    let url = file_url(&dir.path().join("tw.db"));
    // A row sealed under an older key, for the reseal below to rewrite.
    let old = SqliteStore::connect(&url, test_keys("k1", &["k1"]))
        .await
        .expect("connect");
    old.put(&sample_connection("u0", "tiktok", "old-key"))
        .await
        .expect("put under k1");
    old.close().await;
    let store = SqliteStore::connect(&url, test_keys("k2", &["k1", "k2"]))
        .await
        .expect("connect");
    store.set_outbox(true);
    let before = data_version(&store).await;

    let mut a = sample_connection("u1", "tiktok", "a");
    let mut b = sample_connection("u1", "tiktok", "b");
    a.meta = store.put(&a).await.expect("put a").0;
    b.meta = store.put(&b).await.expect("put b").0;
    a.meta = store.put(&a).await.expect("replace a").0;
    a.meta = store.update(&a).await.expect("update a");
    let mut written = store
        .update_batch(&[a.clone(), b.clone()])
        .await
        .expect("batch")
        .into_iter();
    a.meta = written.next().expect("a").expect("a written");
    b.meta = written.next().expect("b").expect("b written");
    let was = [Prior::of(&a.meta), Prior::of(&b.meta)];
    a.meta.consecutive_failures = 1;
    b.meta.consecutive_failures = 1;
    let written = store
        .update_batch_from(&[a.clone(), b.clone()], &was)
        .await
        .expect("batch from");
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    assert!(
        store
            .try_lease(a.key(), "w", at(0), at(60))
            .await
            .expect("lease")
    );
    assert!(
        store
            .renew_lease(a.key(), "w", at(90))
            .await
            .expect("renew")
    );
    store.release_lease(a.key(), "w").await.expect("release");
    assert!(
        !store
            .claim_due(at(1_000_000), 10, "w", at(1_000_060))
            .await
            .expect("claim due")
            .is_empty()
    );
    assert!(
        store
            .insert_if_absent(&sample_connection("u2", "tiktok", "c"))
            .await
            .expect("insert if absent")
            .is_some()
    );
    let session = connect_session("cs_writercheck000000000000");
    store
        .insert_connect_session(&session, "writer-check-hash")
        .await
        .expect("insert session");
    let flow = FlowStart {
        state_hash: "writer-check-state".to_owned(),
        browser_hash: "writer-check-browser".to_owned(),
        secrets: FlowSecrets {
            code_verifier: Some("writer-check-verifier".to_owned()),
            nonce: None,
        },
    };
    let now = session.created_at + time::Duration::seconds(10);
    assert!(matches!(
        store
            .open_connect_session("writer-check-hash", now, &flow)
            .await
            .expect("open session"),
        OpenOutcome::Opened(_)
    ));
    assert!(matches!(
        store
            .claim_connect_callback("writer-check-state", Some("writer-check-browser"), now)
            .await
            .expect("claim callback"),
        tokenwarden::connect::session::ClaimOutcome::Claimed(..)
    ));
    fail_session(&store, &session.id, now).await;
    let after_expiry = session.expires_at + time::Duration::seconds(1);
    assert_eq!(
        store
            .purge_connect_sessions(after_expiry)
            .await
            .expect("purge sessions"),
        1
    );
    assert_eq!(
        store.reseal_batch(None, 10).await.expect("reseal").resealed,
        1
    );

    store
        .insert_events(&[NewEvent::new(
            EventType::WebhookTest,
            at(0),
            serde_json::json!({}),
        )])
        .await
        .expect("insert events");
    let endpoints = [("ep".to_owned(), EventType::ALL.into_iter().collect())];
    assert!(
        store
            .dispatch_events(&endpoints, at(0), 100)
            .await
            .expect("dispatch")
            > 0
    );
    let claimed = store
        .claim_deliveries(at(0), "w", at(60), 100, &[("ep".to_owned(), 100)])
        .await
        .expect("claim deliveries");
    let failed = DeliveryOutcome::Failed {
        status: Some(500),
        error: "HTTP 500".to_owned(),
    };
    assert!(
        store
            .finish_delivery(&claimed[0].id, "w", &failed, at(1))
            .await
            .expect("finish")
    );
    assert!(
        store
            .retry_delivery(&claimed[0].id, at(2))
            .await
            .expect("retry")
            .is_some()
    );
    store
        .purge_webhook_events(at(1_000_000), 100)
        .await
        .expect("purge events");
    assert!(store.delete(b.key()).await.expect("delete"));

    assert_eq!(
        data_version(&store).await,
        before,
        "a write ran on a connection other than the writer"
    );
    // And the check sees a write made elsewhere.
    // (A real change: SQLite writes nothing for a row rewritten with the same bytes.)
    sqlx::query("UPDATE connections SET metadata = '{}'")
        .execute(store.pool())
        .await
        .expect("write on the read pool");
    assert_ne!(data_version(&store).await, before);
}
