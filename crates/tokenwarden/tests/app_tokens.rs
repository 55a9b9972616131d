//! Application tokens (client-credentials grant): `Warden::app_access_token`.
//!
//! Against a local fake token endpoint (wiremock on 127.0.0.1) through the real generic
//! engine: a cold start with 50 concurrent callers makes one token request; `invalid_client`
//! (and even `invalid_grant`) is a configuration error, never a reconnect; an outage opens
//! the breaker and the upstream requests stay bounded. On tokio's paused clock with a
//! scripted in-process provider: the token is obtained again before it expires, on demand
//! and by the scheduler, and the new one is served. Plus what a client-credentials provider
//! refuses (imports) and what it is not (a user-connection provider).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::TokioClock;
use tokenwarden::connection::ProviderName;
use tokenwarden::provider::{
    self, Grant, HttpClient, Provider, ProviderInfo, RefreshFailure, TokenResponse,
};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::MemoryStore;
use tokenwarden::{
    BreakerConfig, Connection, ConnectionKey, ConnectionStatus, ErrorCode, FailureClass,
    RefreshConfig, SchedulerConfig, Warden,
};
use tokio::sync::oneshot;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CLIENT_SECRET: &str = "app-client-secret-0001";

/// A client-credentials provider `app` whose token endpoint is the fake's `/token`.
fn app_provider(server: &MockServer) -> Arc<dyn Provider> {
    let config: provider::ProviderConfig = toml::from_str(&format!(
        r#"
        kind = "oauth2"
        grant = "client_credentials"
        client_id = "app-client"
        client_secret = "{CLIENT_SECRET}"
        token_url = "{}/token"
        scopes = ["read:all"]
        "#,
        server.uri()
    ))
    .expect("provider config");
    let http = HttpClient::new(Default::default()).expect("http client");
    provider::build("app".parse().expect("name"), &config, http).expect("provider builds")
}

fn token_answer(access: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
}

fn fast_retries() -> RefreshConfig {
    RefreshConfig {
        retry: RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..RefreshConfig::default()
    }
}

fn app_key() -> ConnectionKey {
    ConnectionKey::app("app".parse().expect("name"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_on_a_cold_start_make_one_token_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("scope=read%3Aall"))
        // Slow enough that every caller arrives while the one request is in flight.
        .respond_with(token_answer("app-token-1").set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    let store = memory_store();
    let warden = Warden::builder(store.clone())
        .provider(app_provider(&server))
        .build()
        .expect("warden");

    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let warden = warden.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                warden.app_access_token("app").await
            })
        })
        .collect();
    for caller in callers {
        let grant = caller.await.expect("join").expect("app token");
        assert_eq!(grant.access_token.expose_secret(), "app-token-1");
        assert_eq!(&*grant.token_type, "Bearer");
        assert!(grant.expires_at.is_some());
    }
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);

    // Stored (sealed) under the reserved key, and served from there afterwards.
    let meta = warden.connection(&app_key()).await.expect("stored");
    assert_eq!(meta.status, ConnectionStatus::Active);
    assert!(
        meta.next_refresh_at.is_some(),
        "the scheduler will renew it"
    );
    let again = warden.app_access_token("app").await.expect("again");
    assert_eq!(again.access_token.expose_secret(), "app-token-1");
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
    warden.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn invalid_client_is_a_configuration_error_never_a_reconnect() {
    for error in ["invalid_client", "invalid_grant"] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(serde_json::json!({"error": error})),
            )
            .mount(&server)
            .await;
        let warden = Warden::builder(memory_store())
            .provider(app_provider(&server))
            .refresh_config(fast_retries())
            .build()
            .expect("warden");

        let err = warden.app_access_token("app").await.expect_err(error);
        assert_eq!(err.code(), ErrorCode::TokenRefreshError, "{error}: {err:?}");
        assert_eq!(
            err.meta().failure,
            Some(FailureClass::Configuration),
            "{error}"
        );
        assert_eq!(err.meta().provider_error.as_deref(), Some(error));
        assert!(
            !err.reconnect(),
            "{error}: no user can reconnect an application"
        );
        // Not retried: the provider refused the client.
        assert_eq!(server.received_requests().await.expect("recorded").len(), 1);

        let meta = warden.connection(&app_key()).await.expect("row");
        assert_eq!(
            meta.status,
            ConnectionStatus::Active,
            "{error}: never needs_reconnect"
        );
        assert_eq!(meta.consecutive_failures, 1);
        assert!(
            meta.next_refresh_at.is_some(),
            "{error}: retried by the scheduler"
        );
        // A second request tries again (after its cooldown nothing is stuck).
        let err = warden.app_access_token("app").await.expect_err("again");
        assert_eq!(err.meta().failure, Some(FailureClass::Configuration));
        assert!(!err.reconnect());
    }
}

#[tokio::test]
async fn an_outage_opens_the_breaker_and_upstream_requests_stay_bounded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(serde_json::json!({"error": "server_error"})),
        )
        .mount(&server)
        .await;
    let warden = Warden::builder(memory_store())
        .provider(app_provider(&server))
        .refresh_config(fast_retries())
        .breaker_config(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(30),
        })
        .build()
        .expect("warden");

    // The first caller tries 1 + 2 times; the third failure opens the breaker.
    let first = warden.app_access_token("app").await.expect_err("outage");
    assert_eq!(first.code(), ErrorCode::TokenRefreshError);
    assert_eq!(server.received_requests().await.expect("recorded").len(), 3);

    // 200 more callers, 50 at a time: all answered at once by the open breaker.
    for _ in 0..4 {
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let warden = warden.clone();
                tokio::spawn(async move { warden.app_access_token("app").await })
            })
            .collect();
        for caller in callers {
            let err = caller.await.expect("join").expect_err("breaker open");
            assert_eq!(err.code(), ErrorCode::TokenRefreshError);
            assert!(err.is_circuit_open(), "{err:?}");
            assert!(err.retry_after().is_some_and(|d| d > Duration::ZERO));
            assert!(!err.reconnect());
        }
    }
    assert_eq!(
        server.received_requests().await.expect("recorded").len(),
        3,
        "no storm: the open breaker keeps every caller off the provider"
    );
}

#[tokio::test]
async fn only_client_credentials_providers_have_application_tokens() {
    let server = MockServer::start().await;
    let user_provider: Arc<dyn Provider> = FakeProvider::new([ok("at", Some("rt"), 3600)]);
    let warden = Warden::builder(memory_store())
        .provider(app_provider(&server))
        .provider(user_provider)
        .build()
        .expect("warden");

    let err = warden.app_access_token("nope").await.expect_err("unknown");
    assert_eq!(err.code(), ErrorCode::UnknownProvider);
    let err = warden
        .app_access_token("Not A Name")
        .await
        .expect_err("bad");
    assert_eq!(err.code(), ErrorCode::UnknownProvider);
    let err = warden
        .app_access_token("fake")
        .await
        .expect_err("user grant");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert!(err.message().contains("fake"), "{}", err.message());
    assert_eq!(err.meta().provider.as_deref(), Some("fake"));

    // An application provider has no user connections to import.
    let err = warden
        .import(
            ConnectionKey::parse("u", "app", "a").expect("key"),
            import("at", Some("rt"), None),
        )
        .await
        .expect_err("import refused");
    assert_eq!(err.code(), ErrorCode::InvalidRequest);
    assert!(
        err.message().starts_with("provider: app "),
        "{}",
        err.message()
    );
    assert!(
        server
            .received_requests()
            .await
            .expect("recorded")
            .is_empty()
    );
}

#[tokio::test]
async fn the_reserved_key_is_the_same_token_and_a_deleted_one_is_obtained_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_answer("app-token-1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_answer("app-token-2"))
        .mount(&server)
        .await;
    let warden = Warden::builder(memory_store())
        .provider(app_provider(&server))
        .build()
        .expect("warden");
    // Asked for by its key (the user routes), before and after the app route made it.
    let by_key = warden.access_token(&app_key()).await.expect("by key");
    assert_eq!(by_key.access_token.expose_secret(), "app-token-1");
    let by_app = warden.app_access_token("app").await.expect("by app");
    assert_eq!(by_app.access_token.expose_secret(), "app-token-1");
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
    // Deleting it only drops the stored token (nothing revoked); the next request gets one.
    assert!(warden.delete(&app_key()).await.expect("delete"));
    let fresh = warden.app_access_token("app").await.expect("fresh");
    assert_eq!(fresh.access_token.expose_secret(), "app-token-2");
    assert_eq!(server.received_requests().await.expect("recorded").len(), 2);
}

// ---------------------------------------------------------------------------------------
// On tokio's paused clock, with a scripted provider that has the client-credentials grant.

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

/// [`FakeProvider`] as a client-credentials provider. The fake refuses connections without a
/// refresh token (`check_refreshable`), which an application token must never be asked for.
#[derive(Debug)]
struct AppFake(Arc<FakeProvider>);

#[async_trait]
impl Provider for AppFake {
    fn name(&self) -> &ProviderName {
        self.0.name()
    }
    fn info(&self) -> ProviderInfo {
        self.0.info()
    }
    fn grant(&self) -> Grant {
        Grant::ClientCredentials
    }
    fn check_refreshable(
        &self,
        conn: &Connection,
        now: OffsetDateTime,
    ) -> Result<(), provider::NotRefreshable> {
        self.0.check_refreshable(conn, now)
    }
    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure> {
        self.0.refresh(conn).await
    }
}

fn paused_warden(store: Arc<MemoryStore>, fake: &Arc<FakeProvider>) -> Warden {
    Warden::builder(store)
        .provider(Arc::new(AppFake(Arc::clone(fake))))
        .clock(Arc::new(TokioClock::new(T0)))
        .scheduler_config(SchedulerConfig {
            max_idle: Duration::from_secs(1),
            ..SchedulerConfig::default()
        })
        .build()
        .expect("warden")
}

fn fake_key() -> ConnectionKey {
    ConnectionKey::app("fake".parse().expect("name"))
}

#[tokio::test(start_paused = true)]
async fn the_token_is_obtained_again_on_demand_before_it_expires() {
    let fake = FakeProvider::new([
        ok("app-1", None, 3600),
        ok("app-2", None, 3600),
        ok("app-3", None, 3600),
    ]);
    let warden = paused_warden(memory_store(), &fake);
    let first = warden.app_access_token("fake").await.expect("first");
    assert_eq!(first.access_token.expose_secret(), "app-1");
    assert_eq!(first.expires_at, Some(T0 + time::Duration::hours(1)));

    // 54 minutes in: inside the 5-minute threshold but not about to expire: the caller gets
    // the current token at once while it is renewed in the background.
    tokio::time::advance(Duration::from_secs(56 * 60)).await;
    let during = warden.app_access_token("fake").await.expect("during");
    assert_eq!(during.access_token.expose_secret(), "app-1");
    warden.shutdown(Duration::from_secs(5)).await;
    assert_eq!(fake.calls(), 2, "renewed in the background");
    let renewed = warden.app_access_token("fake").await.expect("renewed");
    assert_eq!(renewed.access_token.expose_secret(), "app-2");
    assert!(renewed.expires_at > first.expires_at);

    // 30 s before the new one expires, a caller waits for the next one and gets it.
    let expiry = renewed.expires_at.expect("expiry");
    let wait = expiry - time::Duration::seconds(30) - (T0 + time::Duration::minutes(56));
    tokio::time::advance(Duration::try_from(wait).expect("positive")).await;
    let waited = warden.app_access_token("fake").await.expect("waited");
    assert_eq!(waited.access_token.expose_secret(), "app-3");
    assert_eq!(fake.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_scheduler_obtains_the_token_again_before_it_expires() {
    let fake = FakeProvider::new([ok("app-1", None, 3600), ok("app-2", None, 3600)]);
    let warden = paused_warden(memory_store(), &fake);
    let (stop, stopped) = oneshot::channel::<()>();
    let scheduler = {
        let warden = warden.clone();
        tokio::spawn(async move {
            warden
                .run_scheduler(async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    let first = warden.app_access_token("fake").await.expect("first");
    assert_eq!(first.access_token.expose_secret(), "app-1");

    // 47 minutes in: not due yet (a 10-minute lead, minus up to 2 minutes of jitter).
    tokio::time::advance(Duration::from_secs(47 * 60)).await;
    tokio::task::yield_now().await;
    assert_eq!(fake.calls(), 1);
    // By 50 minutes the scheduler has renewed it, with no caller asking.
    tokio::time::sleep(Duration::from_secs(3 * 60 + 1)).await;
    assert_eq!(fake.calls(), 2);
    let meta = warden.connection(&fake_key()).await.expect("row");
    assert!(meta.last_refreshed_at.expect("renewed") <= T0 + time::Duration::minutes(50));
    assert!(meta.next_refresh_at.expect("next") > T0 + time::Duration::minutes(90));
    // The new token is what callers get.
    let served = warden.app_access_token("fake").await.expect("served");
    assert_eq!(served.access_token.expose_secret(), "app-2");
    assert_eq!(fake.calls(), 2);
    let _ = stop.send(());
    scheduler.await.expect("scheduler");
}

#[tokio::test(start_paused = true)]
async fn a_permanent_refusal_keeps_the_row_active_and_scheduled() {
    let fake = FakeProvider::new([
        rejected(FailureClass::Permanent, "invalid_grant", 400),
        ok("app-1", None, 3600),
    ]);
    let store = memory_store();
    let warden = paused_warden(store, &fake);
    let err = warden.app_access_token("fake").await.expect_err("refused");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert_eq!(err.meta().failure, Some(FailureClass::Configuration));
    assert!(!err.reconnect());
    let meta = warden.connection(&fake_key()).await.expect("row");
    assert_eq!(meta.status, ConnectionStatus::Active);
    assert!(meta.next_refresh_at.is_some());
    // Once the operator fixed it, the next request succeeds.
    tokio::time::advance(Duration::from_secs(120)).await;
    let grant = warden.app_access_token("fake").await.expect("fixed");
    assert_eq!(grant.access_token.expose_secret(), "app-1");
}

// ---------------------------------------------------------------------------------------
// Two instances over one PostgreSQL database.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn two_instances_over_one_postgres_database_share_one_token() {
    use tokenwarden::store::{PgStore, Store};
    use tokenwarden_testkit::conformance::TestDb;

    let url = tokenwarden_testkit::postgres_url();
    let db = TestDb::fresh("app_tokens");
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_answer("shared-app-token").set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    let keys = key_ring();
    let mut wardens = Vec::new();
    for i in 0..2 {
        // A pool and a provider of its own, as a separate process would have.
        let store = PgStore::connect_in_schema(&url, db.name(), Arc::clone(&keys))
            .await
            .expect("connect");
        let store: Arc<dyn Store> = Arc::new(store);
        let warden = Warden::builder(store)
            .provider(app_provider(&server))
            .instance_id(format!("instance-{i}"))
            .build()
            .expect("warden");
        wardens.push(warden);
    }

    // A cold start: nothing stored; 25 callers on each instance at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let callers: Vec<_> = (0..50)
        .map(|n| {
            let warden = wardens[n % 2].clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                warden.app_access_token("app").await
            })
        })
        .collect();
    for caller in callers {
        let grant = caller.await.expect("join").expect("app token");
        assert_eq!(grant.access_token.expose_secret(), "shared-app-token");
    }
    assert_eq!(
        server.received_requests().await.expect("recorded").len(),
        1,
        "one upstream request for both instances"
    );
    // Stored once, sealed, and read back by either instance.
    for warden in &wardens {
        let meta = warden.connection(&app_key()).await.expect("row");
        assert_eq!(meta.status, ConnectionStatus::Active);
        assert!(meta.last_refreshed_at.is_some());
        let grant = warden.app_access_token("app").await.expect("again");
        assert_eq!(grant.access_token.expose_secret(), "shared-app-token");
    }
    assert_eq!(server.received_requests().await.expect("recorded").len(), 1);
    for warden in &wardens {
        warden.shutdown(Duration::from_secs(5)).await;
    }
    drop(wardens);

    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", db.name());
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("drop schema");
}
