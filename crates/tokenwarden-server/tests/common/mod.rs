//! Test support: start the real app in-process on 127.0.0.1:0 with a fresh SQLite file and
//! fake providers (wiremock token endpoints), and talk to it over HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokenwarden_server::{App, config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const API_KEY: &str = "test-api-key-0123456789abcdef";
pub const CLIENT_SECRET: &str = "client-secret-never-logged-42";

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    /// The fake provider behind the `fake` provider (oauth2 kind).
    pub provider: MockServer,
    pub dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// The test configuration as TOML: one oauth2 provider `fake` whose token URL is `token_url`,
/// short retry delays, and a low breaker threshold.
pub fn config_toml(dir: &TempDir, token_url: &str, extra: &str) -> String {
    config_toml_with(dir, token_url, extra, false)
}

pub fn config_toml_with(dir: &TempDir, token_url: &str, extra: &str, scheduler: bool) -> String {
    config_toml_full(dir, token_url, "", extra, scheduler)
}

/// [`config_toml_with`] with `top` (top-level keys such as `public_url`) before the first
/// section.
pub fn config_toml_full(
    dir: &TempDir,
    token_url: &str,
    top: &str,
    extra: &str,
    scheduler: bool,
) -> String {
    let db = dir.path().join("test.db");
    let key = tokenwarden::KeyRing::generate_key_base64();
    format!(
        r#"
listen = "127.0.0.1:0"
database_url = "sqlite://{db}"
{top}

[encryption]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[auth]
api_keys = ["{API_KEY}"]

[refresh]
max_retries = 2
initial_delay_ms = 1
max_delay_ms = 5

[breaker]
failure_threshold = 3
open_seconds = 30

[server]
max_body_bytes = 4096

[scheduler]
# Request-driven tests count upstream calls; the scheduler test turns it on.
enabled = {scheduler}

[providers.fake]
kind = "oauth2"
client_id = "client-id-1"
client_secret = "{CLIENT_SECRET}"
token_url = "{token_url}"
{extra}
"#,
        db = db.display()
    )
}

pub async fn spawn() -> TestApp {
    spawn_with("").await
}

pub async fn spawn_with(extra: &str) -> TestApp {
    spawn_full(extra, false).await
}

pub async fn spawn_with_scheduler() -> TestApp {
    spawn_full("", true).await
}

/// Starts the app for the connect flow: `top` holds top-level keys (after the
/// `public_url`, which is the address the app listens on, so connect links and the
/// redirect URI reach it) and `extra` is appended inside `[providers.fake]` as with
/// [`spawn_with`] (start it with a section header to add sections, `[connect]` among them).
pub async fn spawn_connect(top: &str, extra: &str) -> TestApp {
    spawn_inner(top, extra, false).await
}

async fn spawn_full(extra: &str, scheduler: bool) -> TestApp {
    spawn_inner("", extra, scheduler).await
}

async fn spawn_inner(top: &str, extra: &str, scheduler: bool) -> TestApp {
    let provider = MockServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Bound first: the configuration's public_url is the address actually listened on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let top = format!("public_url = \"http://{addr}\"\n{top}");
    let text = config_toml_full(
        &dir,
        &format!("{}/token", provider.uri()),
        &top,
        extra,
        scheduler,
    );
    let table: toml::Table = text.parse().expect("test config parses");
    let config = config::from_table(table).expect("test config deserializes");
    config.validate().expect("test config is valid");
    let app = App::build(config, tokenwarden_server::telemetry::metrics_handle())
        .await
        .expect("app builds");
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(tokenwarden_server::run(listener, app, async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        provider,
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn conn(&self, user: &str, account: &str) -> String {
        self.url(&format!("/v1/users/{user}/connections/fake/{account}"))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(API_KEY)
    }

    /// `GET path` with the API key, its body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json body")
    }

    pub async fn import(&self, user: &str, account: &str, body: Value) -> reqwest::Response {
        self.client
            .put(self.conn(user, account))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn access_token(&self, user: &str, account: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/access-token", self.conn(user, account)))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("request")
    }

    pub async fn refresh(
        &self,
        user: &str,
        account: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/refresh", self.conn(user, account)))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request")
    }

    /// Answers token requests with a fresh token (and a rotated refresh token).
    pub async fn provider_ok(&self, access: &str, refresh: &str) {
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": refresh,
            })))
            .mount(&self.provider)
            .await;
    }

    /// Answers token requests with an OAuth error.
    pub async fn provider_error(&self, status: u16, error: &str) {
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"error": error})))
            .mount(&self.provider)
            .await;
    }

    /// Runs `statement` on the app's SQLite file, beside the running server.
    pub async fn sql(&self, statement: &str) {
        let db = self.dir.path().join("test.db");
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("open");
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&pool)
            .await
            .expect("statement");
        pool.close().await;
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }
}

/// Waits (bounded) until the delivery log, filtered by `query`, lists `n` deliveries.
pub async fn wait_for_deliveries(
    app: &TestApp,
    query: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list: Value = app
            .get_json(&format!("/v1/webhooks/deliveries?{query}"))
            .await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= n {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} deliveries ({query}) within {within:?}: {list}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The error object of a response, asserting its status.
pub async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().await.expect("json error body");
    body["error"].clone()
}

/// An expired token with a refresh token.
pub fn expired_import() -> Value {
    json!({
        "access_token": "old-access-token-secret",
        "refresh_token": "old-refresh-token-secret",
        "expires_at": "2020-01-01T00:00:00Z",
        "scopes": ["read"],
    })
}

/// A log sink for [`capture_logs`].
#[derive(Clone)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test process from now on, at TRACE, in the server's JSON format
/// (the `log` crate's records too), for tests that no secret reaches a log. Wiremock's own
/// lines are left out: it prints the requests it receives, which carry the secrets the fakes
/// are given on purpose.
pub fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = std::sync::Arc::default();
        let sink = Capture(buffer.clone());
        tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(tokenwarden_server::telemetry::JsonFields)
            .event_format(tokenwarden_server::telemetry::JsonLines)
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace,wiremock=off"))
            .with_writer(move || sink.clone())
            .try_init()
            .expect("the only subscriber of this test process");
        buffer
    })
    .clone()
}
