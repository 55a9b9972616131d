//! The seed's integration scenarios end to end: the real engine, the SQLite store and the
//! generic OAuth 2.0 adapter talking HTTP to fake token endpoints on 127.0.0.1.

mod common;
#[path = "common/fake_oauth.rs"]
mod fake_oauth;

use std::sync::Arc;
use std::time::Duration;

use common::import;
use fake_oauth::RotatingServer;
use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, HttpSettings};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::SqliteStore;
use tokenwarden::{
    BreakerConfig, ConnectionKey, ConnectionStatus, ErrorCode, FailureClass, KeyRing,
    RefreshConfig, RefreshOptions, Warden,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Env {
    warden: Warden,
    key: ConnectionKey,
    _dir: tempfile::TempDir,
}

fn fast_retries() -> RefreshConfig {
    RefreshConfig {
        retry: RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        },
        ..RefreshConfig::default()
    }
}

async fn env(token_url: &str, refresh: RefreshConfig, breaker: BreakerConfig) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(
        KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])
            .expect("keys"),
    );
    let url = format!("sqlite://{}/tw.db", dir.path().display());
    let store = Arc::new(SqliteStore::connect(&url, keys).await.expect("store"));
    let config: provider::ProviderConfig = toml::from_str(&format!(
        "kind = \"oauth2\"\nclient_id = \"cid\"\nclient_secret = \"client-secret-xyz\"\ntoken_url = \"{token_url}\""
    ))
    .expect("config");
    let http = HttpClient::new(HttpSettings {
        request_timeout: Duration::from_secs(2),
        ..HttpSettings::default()
    })
    .expect("http");
    let provider = provider::build("acme".parse().expect("name"), &config, http).expect("provider");
    let warden = Warden::builder(store)
        .provider(provider)
        .refresh_config(refresh)
        .breaker_config(breaker)
        .build()
        .expect("valid warden settings");
    let key = ConnectionKey::parse("user-1", "acme", "acct-1").expect("key");
    Env {
        warden,
        key,
        _dir: dir,
    }
}

/// An environment over `server`'s token endpoint with one expired connection imported
/// (`at-1`, `rt-1`).
async fn with_expired_connection(server: &MockServer) -> Env {
    let e = env(
        &format!("{}/token", server.uri()),
        fast_retries(),
        no_breaker(),
    )
    .await;
    e.warden
        .import(e.key.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");
    e
}

fn no_breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 1000,
        open_for: Duration::from_secs(1),
    }
}

fn expired() -> Option<OffsetDateTime> {
    Some(OffsetDateTime::now_utc() - time::Duration::minutes(5))
}

fn ok_body(access: &str, refresh: Option<&str>) -> serde_json::Value {
    let mut body =
        serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600});
    if let Some(rt) = refresh {
        body["refresh_token"] = rt.into();
    }
    body
}

async fn stored_tokens(w: &Warden, key: &ConnectionKey) -> (String, Option<String>) {
    let conn = w.store().get(key).await.expect("get").expect("exists");
    (
        conn.tokens.access_token.expose_secret().to_owned(),
        conn.tokens
            .refresh_token
            .map(|t| t.expose_secret().to_owned()),
    )
}

#[tokio::test]
async fn successful_refresh_over_http() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=rt-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("at-2", Some("rt-2"))))
        .expect(1)
        .mount(&server)
        .await;
    let e = with_expired_connection(&server).await;
    let grant = e.warden.access_token(&e.key).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(
        stored_tokens(&e.warden, &e.key).await,
        ("at-2".into(), Some("rt-2".into()))
    );
}

/// A token endpoint that resets the first `failures` connections, then answers 200.
async fn flaky_endpoint(failures: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < failures {
                drop(socket); // connection reset / closed without an answer
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let body = ok_body("at-2", None).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/token"), seen)
}

#[tokio::test]
async fn retries_network_failures_then_succeeds() {
    let (url, seen) = flaky_endpoint(2).await;
    let e = env(&url, fast_retries(), no_breaker()).await;
    e.warden
        .import(e.key.clone(), import("at-1", Some("rt-1"), expired()))
        .await
        .expect("import");
    let grant = e.warden.access_token(&e.key).await.expect("token");
    assert_eq!(grant.access_token.expose_secret(), "at-2");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    // No refresh token came back: the old one is kept.
    assert_eq!(
        stored_tokens(&e.warden, &e.key).await.1.as_deref(),
        Some("rt-1")
    );
}

#[tokio::test]
async fn fails_after_max_retries_and_preserves_the_connection() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("<html>down</html>"))
        .expect(4)
        .mount(&server)
        .await;
    let e = with_expired_connection(&server).await;
    let err = e.warden.access_token(&e.key).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert_eq!(err.meta().attempts, 4);
    assert!(!err.reconnect());
    assert_eq!(
        stored_tokens(&e.warden, &e.key).await,
        ("at-1".into(), Some("rt-1".into()))
    );
    let meta = e.warden.connection(&e.key).await.expect("meta");
    assert_eq!(meta.status, ConnectionStatus::Active);
    assert_eq!(meta.last_error.expect("kept").code, "TOKEN_REFRESH_ERROR");
}

#[tokio::test]
async fn graceful_degradation_over_http() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let e = env(
        &format!("{}/token", server.uri()),
        fast_retries(),
        no_breaker(),
    )
    .await;
    let soon = Some(OffsetDateTime::now_utc() + time::Duration::seconds(20));
    e.warden
        .import(e.key.clone(), import("at-1", Some("rt-1"), soon))
        .await
        .expect("import");
    let grant = e
        .warden
        .access_token(&e.key)
        .await
        .expect("still-valid token");
    assert_eq!(grant.access_token.expose_secret(), "at-1");
    assert_eq!(
        e.warden
            .connection(&e.key)
            .await
            .expect("meta")
            .consecutive_failures,
        1
    );
}

#[tokio::test]
async fn rotation_chain_against_a_reuse_detecting_server() {
    let server = MockServer::start().await;
    let fake = RotatingServer::new("rt-0");
    fake.mount(&server).await;
    let e = env(
        &format!("{}/token", server.uri()),
        fast_retries(),
        no_breaker(),
    )
    .await;
    e.warden
        .import(e.key.clone(), import("at-0", Some("rt-0"), expired()))
        .await
        .expect("import");
    for n in 1..=5 {
        let meta = e
            .warden
            .refresh_token(&e.key, RefreshOptions::default())
            .await
            .expect("refresh");
        assert_eq!(meta.status, ConnectionStatus::Active);
        assert_eq!(
            stored_tokens(&e.warden, &e.key).await.1,
            Some(format!("rt-gen-{n}"))
        );
    }
    let state = fake.state.lock().expect("lock");
    assert_eq!(state.calls, 5);
    assert_eq!(state.reuse_detected, 0);
    assert!(!state.revoked);
}

#[tokio::test]
async fn two_hundred_concurrent_callers_one_upstream_call() {
    let server = MockServer::start().await;
    let mut fake = RotatingServer::new("rt-0");
    fake.latency = Duration::from_millis(200);
    fake.mount(&server).await;
    let e = env(
        &format!("{}/token", server.uri()),
        fast_retries(),
        no_breaker(),
    )
    .await;
    e.warden
        .import(e.key.clone(), import("at-0", Some("rt-0"), expired()))
        .await
        .expect("import");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let w = e.warden.clone();
        let k = e.key.clone();
        tasks.push(tokio::spawn(async move { w.access_token(&k).await }));
    }
    for t in tasks {
        assert_eq!(
            t.await
                .expect("join")
                .expect("token")
                .access_token
                .expose_secret(),
            "at-gen-1"
        );
    }
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(ok_body("at-2", None)))
        .expect(1)
        .mount(&server)
        .await;
    let e = with_expired_connection(&server).await;
    let start = std::time::Instant::now();
    e.warden.access_token(&e.key).await.expect("token");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited as told: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn invalid_grant_one_call_and_needs_reconnect() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let e = with_expired_connection(&server).await;
    let err = e.warden.access_token(&e.key).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::TokenExpired);
    assert!(err.reconnect());
    let meta = e.warden.connection(&e.key).await.expect("kept");
    assert_eq!(meta.status, ConnectionStatus::NeedsReconnect);
    assert_eq!(
        stored_tokens(&e.warden, &e.key).await.1.as_deref(),
        Some("rt-1")
    );
}

#[tokio::test]
async fn invalid_client_is_configuration_and_keeps_the_user() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "invalid_client"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let e = with_expired_connection(&server).await;
    let err = e.warden.access_token(&e.key).await.expect_err("fails");
    assert_eq!(err.code(), ErrorCode::TokenRefreshError);
    assert_eq!(err.meta().failure, Some(FailureClass::Configuration));
    assert!(!err.reconnect());
    assert_eq!(
        e.warden.connection(&e.key).await.expect("meta").status,
        ConnectionStatus::Active
    );
}

/// A token endpoint that answers every request with `raw` bytes (or, with `drip`, one byte
/// every 100 ms), then closes.
async fn raw_endpoint(raw: Vec<u8>, drip: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let raw = Arc::new(raw);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let raw = raw.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                if drip {
                    for b in raw.iter() {
                        if socket.write_all(&[*b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } else {
                    let _ = socket.write_all(&raw).await;
                }
            });
        }
    });
    format!("http://{addr}/token")
}

fn http_200(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Issue 5's garbage answers: each is a typed, retryable error and the stored connection is
/// left exactly as it was.
#[tokio::test]
async fn garbage_answers_give_typed_errors_and_leave_the_connection_untouched() {
    let huge = {
        let mut body = b"{\"access_token\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
        body.extend_from_slice(b"\"}");
        body
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "truncated json",
            http_200(br#"{"access_token": "at-x", "expires_"#),
            false,
        ),
        (
            "wrong types",
            http_200(br#"{"access_token": 42, "expires_in": "soon"}"#),
            false,
        ),
        (
            "negative expires_in",
            http_200(br#"{"access_token": "at-x", "expires_in": -5}"#),
            false,
        ),
        (
            "huge expires_in",
            http_200(br#"{"access_token": "at-x", "expires_in": 1e300}"#),
            false,
        ),
        (
            "empty access token",
            http_200(br#"{"access_token": ""}"#),
            false,
        ),
        (
            "html",
            http_200(b"<html><body>Service Unavailable</body></html>"),
            false,
        ),
        ("megabytes", http_200(&huge), false),
        (
            "not http",
            b"garbage garbage garbage\r\n\r\n".to_vec(),
            false,
        ),
        ("reset", Vec::new(), false),
        (
            "slow drip",
            http_200(br#"{"access_token": "at-x", "expires_in": 3600}"#),
            true,
        ),
    ];
    for (name, raw, drip) in cases {
        let url = raw_endpoint(raw, drip).await;
        let mut refresh = fast_retries();
        refresh.retry.max_retries = 1;
        let e = env(&url, refresh, no_breaker()).await;
        let (before, _) = e
            .warden
            .import(e.key.clone(), import("at-1", Some("rt-1"), expired()))
            .await
            .expect("import");
        let err = e
            .warden
            .refresh_token(&e.key, RefreshOptions::default())
            .await
            .expect_err(name);
        assert_eq!(err.code(), ErrorCode::TokenRefreshError, "{name}: {err:?}");
        assert_eq!(
            err.meta().failure,
            Some(FailureClass::Transient),
            "{name}: {err:?}"
        );
        assert!(!err.reconnect(), "{name}");
        let after = e
            .warden
            .store()
            .get(&e.key)
            .await
            .expect("get")
            .expect(name);
        assert_eq!(after.tokens.access_token.expose_secret(), "at-1", "{name}");
        assert_eq!(
            after
                .tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret()),
            Some("rt-1"),
            "{name}"
        );
        assert_eq!(after.meta.expires_at, before.expires_at, "{name}");
        assert_eq!(after.meta.status, ConnectionStatus::Active, "{name}");
    }
}
