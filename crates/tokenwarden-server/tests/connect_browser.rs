//! The connect flow end to end in a real browser (issue 11): Debian's chromium, driven by
//! playwright-core (`interop/browser/connect.mjs`), against the independent OpenID provider
//! in `interop/oidc-provider` (panva's oidc-provider: PKCE required, `iss` in every
//! authorization response, real login and consent pages with `INTERACTIVE=1`), and the real
//! tokenwarden server in-process.
//!
//! The browser opens the connect link, signs in and consents (or declines) at the provider,
//! and lands on the application's return URL. Then the connection must exist with the
//! OpenID `sub` as its account id, its access token must be one the provider's
//! introspection calls active, and it must refresh. Declining and reconnecting as another
//! account must leave nothing changed. No page the browser saw may show a token.
//!
//! Ignored (with the reason) unless `tw_browser` is set: chromium and the two npm packages
//! are installed (scripts/test and .ci/run install them).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use tokenwarden_server::{App, config};
use tokio::sync::oneshot;

const CLIENT_ID: &str = "tokenwarden-interop";
const CLIENT_SECRET: &str = "interop-client-secret-not-for-production";
const API_KEY: &str = common::API_KEY;

fn interop() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// The OpenID provider, killed on drop.
struct Op {
    child: Child,
    issuer: String,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_op(redirect_uri: &str) -> Op {
    let mut child = Command::new("node")
        .arg("server.mjs")
        .arg("0")
        .current_dir(interop().join("oidc-provider"))
        .env("INTERACTIVE", "1")
        .env("REDIRECT_URI", redirect_uri)
        .env("AT_TTL", "300")
        .env("RT_TTL", "600")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn `node server.mjs` (is Node.js on PATH?)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            if let Some(url) = line.strip_prefix("LISTENING ") {
                let _ = tx.send(url.trim().to_owned());
                break;
            }
        }
        lines.for_each(drop);
    });
    let issuer = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server.mjs did not print LISTENING within 20 s");
    Op { child, issuer }
}

/// What `connect.mjs` printed.
#[derive(Debug, serde::Deserialize)]
struct BrowserRun {
    final_url: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    texts: Vec<String>,
    error: Option<String>,
}

/// Opens `connect_url` in chromium and clicks through as `user` (declining when `deny`).
async fn browse(connect_url: &str, return_prefix: &str, user: &str, deny: bool) -> BrowserRun {
    let screenshot = std::env::temp_dir().join(format!(
        "tokenwarden-connect-{}-{}.png",
        user,
        if deny { "deny" } else { "allow" }
    ));
    let mut command = Command::new("node");
    command
        .arg(interop().join("browser/connect.mjs"))
        .args([
            "--url",
            connect_url,
            "--return",
            return_prefix,
            "--user",
            user,
        ])
        .arg("--screenshot")
        .arg(&screenshot)
        .args(["--timeout-ms", "30000"]);
    if deny {
        command.arg("--deny");
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run node connect.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let run: BrowserRun = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "connect.mjs printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(run.error.is_none(), "browser run failed: {run:?}");
    run
}

struct Setup {
    op: Op,
    base: String,
    return_url: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        // The return URL: a page the application would show.
        let landing = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let return_url = format!("http://{}/done", landing.local_addr().expect("addr"));
        tokio::spawn(async move {
            let router = axum::Router::new().route(
                "/done",
                axum::routing::get(|| async { "Back in the application." }),
            );
            let _ = axum::serve(landing, router).await;
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let op = start_op(&format!("{base}/connect/callback"));
        let dir = tempfile::tempdir().expect("tempdir");
        let key = tokenwarden::KeyRing::generate_key_base64();
        let text = format!(
            r#"
listen = "127.0.0.1:0"
public_url = "{base}"
database_url = "sqlite://{db}"

[encryption]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[auth]
api_keys = ["{API_KEY}"]

[scheduler]
enabled = false

[connect]
return_urls = ["{return_url}"]

[providers.op]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
auth_method = "client_secret_basic"
scopes = ["openid"]
"#,
            db = dir.path().join("tw.db").display(),
            issuer = op.issuer,
        );
        let table: toml::Table = text.parse().expect("config parses");
        let config = config::from_table(table).expect("config deserializes");
        config.validate().expect("config is valid");
        let app = App::build(config, tokenwarden_server::telemetry::metrics_handle())
            .await
            .expect("app builds (discovery included)");
        let (tx, rx) = oneshot::channel();
        tokio::spawn(tokenwarden_server::run(listener, app, async move {
            let _ = rx.await;
        }));
        Setup {
            op,
            base,
            return_url,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            _dir: dir,
        }
    }

    async fn create_session(&self, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}/v1/connect/sessions", self.base))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("create session");
        assert_eq!(response.status().as_u16(), 201, "create session");
        response.json().await.expect("json")
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn introspect(&self, token: &str) -> Value {
        self.client
            .post(format!("{}/token/introspection", self.op.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection")
            .json()
            .await
            .expect("introspection json")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn query_of(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param(url: &str, name: &str) -> Option<String> {
    query_of(url)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tw_browser),
    ignore = "needs chromium and npm ci in interop/browser and interop/oidc-provider"
)]
async fn a_user_connects_declines_and_cannot_reconnect_as_someone_else_in_a_real_browser() {
    let setup = Setup::start().await;
    let connections = "/v1/users/alice/connections/op";

    // 1. Connect: sign in as interop-user-1 and allow.
    let session = setup
        .create_session(
            json!({"user_id": "alice", "provider": "op", "return_url": setup.return_url}),
        )
        .await;
    let run = browse(
        session["connect_url"].as_str().expect("connect_url"),
        &setup.return_url,
        "interop-user-1",
        false,
    )
    .await;
    let landed = run.final_url.clone().expect("final url");
    assert!(landed.starts_with(&setup.return_url), "{landed}");
    assert_eq!(
        param(&landed, "status").as_deref(),
        Some("completed"),
        "{landed}"
    );
    assert_eq!(
        param(&landed, "session_id"),
        session["id"].as_str().map(str::to_owned)
    );
    // The return URL carries nothing else: no code, state or token.
    assert_eq!(query_of(&landed).len(), 2, "{landed}");
    // The provider saw an authorization request with PKCE, state and nonce: its login page
    // was reached through our redirect (the browser's first document after the link).
    assert!(
        run.urls.iter().any(|u| u.starts_with(&setup.op.issuer)),
        "{:?}",
        run.urls
    );

    let (status, view) = setup
        .get(&format!(
            "/v1/connect/sessions/{}",
            session["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["account_id"], "interop-user-1", "the OpenID sub");
    assert_eq!(view["connection"]["status"], "active", "{view}");

    let (status, token) = setup
        .get(&format!("{connections}/interop-user-1/access-token"))
        .await;
    assert_eq!(status, 200, "{token}");
    let access = token["access_token"].as_str().expect("token").to_owned();
    let introspected = setup.introspect(&access).await;
    assert_eq!(introspected["active"], true, "{introspected}");
    assert_eq!(introspected["sub"], "interop-user-1");
    for text in &run.texts {
        assert!(!text.contains(&access), "a page showed the access token");
    }

    // It refreshes: a forced refresh gets a new token the provider accepts.
    let refreshed = setup
        .client
        .post(format!(
            "{}{connections}/interop-user-1/refresh",
            setup.base
        ))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("refresh");
    assert_eq!(refreshed.status().as_u16(), 200);
    let (_, token) = setup
        .get(&format!("{connections}/interop-user-1/access-token"))
        .await;
    let renewed = token["access_token"].as_str().expect("token").to_owned();
    assert_ne!(renewed, access, "the refresh gave a new token");
    assert_eq!(setup.introspect(&renewed).await["active"], true);

    // 2. Declined consent: back to the application with ACCESS_DENIED; nothing stored.
    let session = setup
        .create_session(json!({"user_id": "bob", "provider": "op", "return_url": setup.return_url}))
        .await;
    let run = browse(
        session["connect_url"].as_str().expect("connect_url"),
        &setup.return_url,
        "bob-at-provider",
        true,
    )
    .await;
    let landed = run.final_url.expect("final url");
    assert_eq!(
        param(&landed, "status").as_deref(),
        Some("failed"),
        "{landed}"
    );
    assert_eq!(param(&landed, "error").as_deref(), Some("ACCESS_DENIED"));
    let (status, list) = setup.get("/v1/connections?user_id=bob").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["items"],
        json!([]),
        "a declined consent stores nothing"
    );
    let (_, view) = setup
        .get(&format!(
            "/v1/connect/sessions/{}",
            session["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["error"]["code"], "ACCESS_DENIED");

    // 3. Reconnect as another account: ACCOUNT_MISMATCH, the connection unchanged.
    let session = setup
        .create_session(json!({
            "user_id": "alice", "provider": "op", "account_id": "interop-user-1",
            "return_url": format!("{}?tab=connections", setup.return_url),
        }))
        .await;
    assert_eq!(session["reconnect"], true);
    let run = browse(
        session["connect_url"].as_str().expect("connect_url"),
        &setup.return_url,
        "someone-else",
        false,
    )
    .await;
    let landed = run.final_url.expect("final url");
    assert_eq!(
        param(&landed, "tab").as_deref(),
        Some("connections"),
        "the app's query is kept"
    );
    assert_eq!(
        param(&landed, "error").as_deref(),
        Some("ACCOUNT_MISMATCH"),
        "{landed}"
    );
    let (_, token) = setup
        .get(&format!("{connections}/interop-user-1/access-token"))
        .await;
    assert_eq!(
        token["access_token"].as_str(),
        Some(renewed.as_str()),
        "unchanged"
    );
    let (_, list) = setup.get("/v1/connections?user_id=alice").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");

    // 4. A successful reconnect as the same account replaces the token.
    let session = setup
        .create_session(json!({
            "user_id": "alice", "provider": "op", "account_id": "interop-user-1",
            "return_url": setup.return_url,
        }))
        .await;
    let run = browse(
        session["connect_url"].as_str().expect("connect_url"),
        &setup.return_url,
        "interop-user-1",
        false,
    )
    .await;
    let landed = run.final_url.expect("final url");
    assert_eq!(
        param(&landed, "status").as_deref(),
        Some("completed"),
        "{landed}"
    );
    let (_, token) = setup
        .get(&format!("{connections}/interop-user-1/access-token"))
        .await;
    let reconnected = token["access_token"].as_str().expect("token");
    assert_ne!(reconnected, renewed);
    assert_eq!(setup.introspect(reconnected).await["active"], true);
}
