//! SQLite serves one instance, and a restart after a crash refreshes at once (issue 9,
//! finding 7): a second instance on the same file is refused with a message naming it, a
//! tool (the CLI) still opens it, and the next instance frees the leases a dead one left, so
//! a caller of a connection that was mid-refresh at the crash is not kept waiting for the
//! lease to expire.
//!
//! The crash is simulated in process: an instance takes leases and is dropped without
//! releasing them, which is what `kill -9` leaves in the file (the operating system drops
//! the instance lock with the process; dropping the store drops it too). The server's
//! `tests/crash.rs` and `tests/restart_takeover.rs` do the same with real `kill -9`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::{Role, SqliteStore, Store, StoreError};
use tokenwarden::{KeyRing, RefreshConfig, Warden};

/// Far longer than the tests' deadlines: waiting for a lease to expire fails them.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// How long a caller may take to get its refreshed token after the restart; without the
/// fix it waits for the lease (up to `LEASE_TTL`) and this deadline fails the test.
const PROMPTLY: Duration = Duration::from_secs(10);

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/tw.db", dir.path().display())
}

async fn open(url: &str, keys: &Arc<KeyRing>, role: Role) -> Result<SqliteStore, StoreError> {
    SqliteStore::connect_as(url, Arc::clone(keys), role).await
}

fn warden(store: Arc<SqliteStore>, provider: &Arc<FakeProvider>) -> Warden {
    Warden::builder(store)
        .provider(provider.clone())
        .refresh_config(RefreshConfig {
            lease_ttl: LEASE_TTL,
            retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..RefreshConfig::default()
        })
        .build()
        .expect("valid warden settings")
}

fn expired() -> Option<OffsetDateTime> {
    Some(OffsetDateTime::now_utc() - time::Duration::seconds(5))
}

async fn lease_owner(store: &SqliteStore, user: &str) -> Option<String> {
    sqlx::query_scalar("SELECT lease_owner FROM connections WHERE user_id = ?")
        .bind(user)
        .fetch_one(store.pool())
        .await
        .expect("read lease")
}

#[tokio::test]
async fn a_second_instance_on_one_file_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url(&dir);
    let keys = key_ring();
    let first = open(&url, &keys, Role::Instance).await.expect("first");

    let err = open(&url, &keys, Role::Instance)
        .await
        .expect_err("a second instance must not open the file");
    let database = dir.path().join("tw.db");
    match &err {
        StoreError::InUse {
            database: named,
            holder,
            ..
        } => {
            assert_eq!(named, &database);
            assert_eq!(*holder, Some(std::process::id()), "names the holder's pid");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&database.display().to_string()),
        "{message}"
    );
    assert!(message.contains("already served"), "{message}");
    assert!(message.contains("PostgreSQL"), "says what to do: {message}");

    // A tool (the CLI) works beside the instance.
    let tool = open(&url, &keys, Role::Tool).await.expect("tool");
    tool.ping().await.expect("tool reads");

    // Once the instance is gone, the next one opens.
    drop(first);
    open(&url, &keys, Role::Instance)
        .await
        .expect("the file is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_refreshes_what_a_dead_one_was_refreshing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url(&dir);
    let keys = key_ring();
    let k = key("u", "a");

    // The instance that dies: it imports the connection and is mid-refresh (holding the
    // connection's lease, the provider never answering) when it is killed. It runs on a
    // runtime of its own, dropped at the "kill": its tasks stop where they are, nothing is
    // released or committed, and its store (with the instance lock) goes with them.
    let dying = {
        let (url, keys, k) = (url.clone(), Arc::clone(&keys), k.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let store = Arc::new(open(&url, &keys, Role::Instance).await.expect("instance"));
                let stuck = FakeProvider::new([ok("at-lost", Some("rt-lost"), 3600)]);
                *stuck.latency.lock().expect("lock") = Duration::from_secs(3600);
                let dying = warden(Arc::clone(&store), &stuck);
                dying
                    .import(k.clone(), import("at-1", Some("rt-1"), expired()))
                    .await
                    .expect("import");
                tokio::spawn(async move { dying.access_token(&k).await });
                let deadline = tokio::time::Instant::now() + PROMPTLY;
                while stuck.calls() == 0 {
                    assert!(tokio::time::Instant::now() < deadline, "never started");
                    tokio::task::yield_now().await;
                }
                assert!(
                    lease_owner(&store, "u").await.is_some(),
                    "leased mid-refresh"
                );
            });
            drop(runtime);
        })
    };
    dying.join().expect("the dying instance ran");
    let tool = open(&url, &keys, Role::Tool).await.expect("tool");
    assert!(
        lease_owner(&tool, "u").await.is_some(),
        "the crash left its lease"
    );

    let store = Arc::new(open(&url, &keys, Role::Instance).await.expect("restart"));
    assert_eq!(lease_owner(&store, "u").await, None, "freed at open");
    let provider = FakeProvider::new([ok("at-2", Some("rt-2"), 3600)]);
    let restarted = warden(store, &provider);
    let grant = tokio::time::timeout(PROMPTLY, restarted.access_token(&k))
        .await
        .expect("the restarted instance waited for the dead one's lease")
        .expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(provider.calls(), 1);
    assert_eq!(
        provider.presented.lock().expect("lock").as_slice(),
        [Some("rt-1".to_owned())]
    );
}

#[tokio::test]
async fn an_instance_frees_only_leases_of_instances_not_of_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url(&dir);
    let keys = key_ring();
    let now = OffsetDateTime::now_utc();
    {
        let instance = open(&url, &keys, Role::Instance).await.expect("instance");
        for user in ["by-instance", "by-tool"] {
            let mut conn = tokenwarden_testkit::sample_connection(user, "fake", "a");
            conn.meta.next_refresh_at = Some(now);
            instance.put(&conn).await.expect("put");
        }
        let k = tokenwarden::ConnectionKey::parse("by-instance", "fake", "a").expect("key");
        assert!(
            instance
                .try_lease(&k, "instance-1", now, now + LEASE_TTL)
                .await
                .expect("lease")
        );
        // A CLI command refreshing beside the instance.
        let tool = open(&url, &keys, Role::Tool).await.expect("tool");
        let k = tokenwarden::ConnectionKey::parse("by-tool", "fake", "a").expect("key");
        assert!(
            tool.try_lease(&k, "cli-1", now, now + LEASE_TTL)
                .await
                .expect("lease")
        );
    }
    let next = open(&url, &keys, Role::Instance).await.expect("next");
    assert_eq!(lease_owner(&next, "by-instance").await, None, "freed");
    assert_eq!(
        lease_owner(&next, "by-tool").await.as_deref(),
        Some("cli-1"),
        "a tool's lease is left to expire: the tool may still be refreshing"
    );
    // And the scheduler finds the freed connection due at once.
    let claimed = next
        .claim_due(now, 10, "instance-2", now + LEASE_TTL)
        .await
        .expect("claim");
    let users: Vec<&str> = claimed.iter().map(|c| c.key.user_id.as_str()).collect();
    assert_eq!(users, ["by-instance"]);
}
