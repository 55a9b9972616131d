//! The dashboard (`/ui`, issue 14) in a real browser: Debian's chromium, driven by
//! playwright-core (`interop/browser/dashboard.mjs`), against the real server in-process.
//!
//! The server is seeded through its API: healthy connections at one provider, two that need
//! their users (the provider refused the grant), one failing at a provider whose breaker is
//! open, and webhook deliveries to an endpoint that failed them. The browser then signs in
//! with a wrong key (refused) and the right one, reads the connections, filters them to
//! `needs_reconnect`, opens one (its last error and events), creates a reconnect link,
//! retries a failed delivery, reads the providers' breakers, and signs out. Everything it
//! reported is checked here, and through the API: the link's session exists, the retried
//! delivery was sent again. Every request the page made stayed on the server's origin,
//! carried the key only to `/v1`, and never asked for a token; no page showed one; the
//! page broke no rule of its Content Security Policy. Screenshots are kept under the target
//! directory (`test-artifacts/dashboard*.png`).
//!
//! Ignored (with the reason) unless `tw_chromium` is set: chromium and `npm ci` in
//! `interop/browser` (scripts/test and .ci/run install both).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenwarden_server::{App, config};
use tokio::sync::oneshot;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "dashboard-test-key-0123456789abcdef";
const WRONG_KEY: &str = "dashboard-wrong-key-0123456789abcdef";
const RETURN_URL: &str = "https://app.example.com/connected";
/// Planted in every stored token: no page may show it.
const TOKEN_MARK: &str = "tok-secret-never-on-a-page";

/// Where test artifacts go: `$CARGO_TARGET_DIR/test-artifacts`, or beside this test binary's
/// `debug` directory when the variable is not set.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("test binary path");
            // target/debug/deps/dashboard_browser-…: three levels up is the target dir.
            exe.ancestors()
                .nth(3)
                .expect("the binary sits in target/<profile>/deps")
                .to_path_buf()
        });
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts");
    dir
}

struct Server {
    base: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    _upstream: MockServer,
    _receivers: (MockServer, MockServer),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// Three providers on one fake token server: `github` refreshes, `reddit` refuses every
/// grant (`invalid_grant`), `tiktok` is down (503) and its breaker opens at the first
/// failure. Two webhook endpoints: `app` takes everything; `down` takes
/// `connection.needs_reconnect` and answers its first two requests 503 with a Retry-After
/// far beyond `retry_for_seconds`, which fails them at once, and 200 after that.
async fn start() -> Server {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/github/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": format!("{TOKEN_MARK}-refreshed"),
            "token_type": "Bearer",
            "expires_in": 3600,
        })))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/reddit/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/tiktok/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&upstream)
        .await;
    let app_receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app_receiver)
        .await;
    let down_receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "3600"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&down_receiver)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&down_receiver)
        .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = tokenwarden::KeyRing::generate_key_base64();
    let secret = tokenwarden::webhooks::WebhookSecret::generate();
    let secret = secret.expose_secret();
    let mut text = format!(
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

[breaker]
failure_threshold = 1
open_seconds = 3600

[connect]
return_urls = ["{RETURN_URL}"]

[webhooks]
retry_for_seconds = 60
max_retry_after_seconds = 3600

[webhooks.endpoints.app]
url = "{app}/hooks"
secret = "{secret}"

[webhooks.endpoints.down]
url = "{down}/hooks"
secret = "{secret}"
events = ["connection.needs_reconnect"]
"#,
        db = dir.path().join("tw.db").display(),
        app = app_receiver.uri(),
        down = down_receiver.uri(),
    );
    for provider in ["github", "reddit", "tiktok"] {
        text.push_str(&format!(
            "\n[providers.{provider}]\nkind = \"oauth2\"\nclient_id = \"{provider}-client\"\n\
             client_secret = \"{provider}-client-secret\"\n\
             token_url = \"{}/{provider}/token\"\n\
             authorization_url = \"https://auth.example.com/{provider}/authorize\"\n",
            upstream.uri()
        ));
    }
    let table: toml::Table = text.parse().expect("config parses");
    let config = config::from_table(table).expect("config deserializes");
    config.validate().expect("config is valid");
    let app = App::build(config, tokenwarden_server::telemetry::metrics_handle())
        .await
        .expect("app builds");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(tokenwarden_server::run(listener, app, async move {
        let _ = rx.await;
    }));
    Server {
        base,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        _dir: dir,
        _upstream: upstream,
        _receivers: (app_receiver, down_receiver),
    }
}

/// The connections the dashboard shows, and what became of each.
async fn seed(server: &Server) {
    let import = |expired: bool| {
        let mut body = json!({
            "access_token": format!("{TOKEN_MARK}-access"),
            "refresh_token": format!("{TOKEN_MARK}-refresh"),
            "scopes": ["read", "write"],
            "metadata": {"team": "<b>ops</b>"},
        });
        if expired {
            body["expires_at"] = json!("2020-01-01T00:00:00Z");
        } else {
            body["expires_in"] = json!(3600);
        }
        body
    };
    for (user, provider, account, expired) in [
        ("alice", "github", "gh-alice", false),
        ("carol", "github", "gh-carol", false),
        ("alice", "reddit", "rd-alice", true),
        ("dave", "reddit", "rd-dave", true),
        ("erin", "tiktok", "tt-erin", false),
    ] {
        let (status, view) = server
            .call(
                reqwest::Method::PUT,
                &format!("/v1/users/{user}/connections/{provider}/{account}"),
                Some(import(expired)),
            )
            .await;
        assert_eq!(status, 201, "{view}");
    }
    for (user, provider, account, want) in [
        ("alice", "reddit", "rd-alice", 409),
        ("dave", "reddit", "rd-dave", 409),
        ("erin", "tiktok", "tt-erin", 502),
    ] {
        let (status, error) = server
            .call(
                reqwest::Method::POST,
                &format!("/v1/users/{user}/connections/{provider}/{account}/refresh"),
                Some(json!({"max_retries": 0})),
            )
            .await;
        assert_eq!(status, want, "{error}");
    }
    // The two needs_reconnect events have failed at `down`.
    wait_until(Duration::from_secs(15), "two failed deliveries", || async {
        let (_, list) = server.get("/v1/webhooks/deliveries?status=failed").await;
        list["items"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
}

/// Polls `done` (bounded by `within`) until it holds.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn column(rows: &Value, n: usize) -> Vec<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| row[n].as_str().expect("cell").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tw_chromium),
    ignore = "needs chromium and npm ci in interop/browser"
)]
async fn an_operator_finds_and_handles_what_needs_attention_in_a_real_browser() {
    let server = start().await;
    seed(&server).await;
    let (_, before) = server.get("/v1/webhooks/deliveries?status=failed").await;
    let (_, needing) = server
        .get("/v1/users/alice/connections/reddit/rd-alice")
        .await;
    let last_error = needing["last_error"]["message"]
        .as_str()
        .expect("a last error")
        .to_owned();

    let artifacts = artifacts_dir();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/browser/dashboard.mjs");
    let mut command = Command::new("node");
    command
        .arg(script)
        .args(["--url", &server.url("/ui/")])
        .args(["--key", API_KEY, "--wrong-key", WRONG_KEY])
        .args([
            "--open",
            "alice/reddit/rd-alice",
            "--return-url",
            RETURN_URL,
        ])
        .arg("--artifacts")
        .arg(&artifacts)
        .args(["--timeout-ms", "45000"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run node dashboard.mjs (is Node.js on PATH?)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = stdout.lines().last().unwrap_or_default();
    let run: Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "dashboard.mjs printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    for shot in run["screenshots"].as_array().into_iter().flatten() {
        println!("screenshot: {}", shot.as_str().unwrap_or_default());
    }
    // The error alone: the whole result holds the single-use connect link.
    assert!(
        run["error"].is_null(),
        "the browser walk failed: {}",
        run["error"]
    );
    assert!(
        output.status.success(),
        "dashboard.mjs exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let steps = &run["steps"];

    // A wrong key is refused; nothing opens and nothing is kept.
    let wrong = &steps["wrong_key"];
    assert!(
        wrong["status"]
            .as_str()
            .is_some_and(|s| s.contains("refused")),
        "{wrong}"
    );
    assert_eq!(wrong["nav_visible"], false);
    assert_eq!(wrong["stored_keys"], 0);

    // Every seeded connection is listed.
    let listed = column(&steps["connections"]["rows"], 2);
    for account in ["gh-alice", "gh-carol", "rd-alice", "rd-dave", "tt-erin"] {
        assert!(
            listed.iter().any(|a| a == account),
            "{account} in {listed:?}"
        );
    }
    assert_eq!(listed.len(), 5);

    // Filtered: exactly the two that need their users.
    let needs = &steps["needs_reconnect"]["rows"];
    let mut accounts = column(needs, 2);
    accounts.sort();
    assert_eq!(accounts, ["rd-alice", "rd-dave"]);
    assert!(
        column(needs, 3).iter().all(|s| s == "needs reconnect"),
        "{needs}"
    );

    // One connection: why, and what happened to it.
    let detail = &steps["connection"];
    assert_eq!(detail["heading"], "alice · reddit · rd-alice");
    let text = detail["text"].as_str().expect("text");
    assert!(text.contains(&last_error), "{last_error} in {text}");
    assert!(
        text.contains("<b>ops</b>"),
        "metadata shown as text: {text}"
    );
    let events = column(&detail["events"], 1);
    assert_eq!(
        events,
        ["connection.needs_reconnect", "connection.created"],
        "newest first"
    );

    // The reconnect link: the form was filled from the connection, the session exists.
    assert_eq!(
        steps["connect_form"],
        json!({"user_id": "alice", "provider": "reddit", "account_id": "rd-alice"})
    );
    let link = steps["connect"]["link"].as_str().expect("link");
    assert!(link.starts_with(&server.url("/connect/")), "{link}");
    let session_id = steps["connect"]["session"].as_str().expect("session");
    let (status, session) = server
        .get(&format!("/v1/connect/sessions/{session_id}"))
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user_id"], "alice");
    assert_eq!(session["provider"], "reddit");
    assert_eq!(session["account_id"], "rd-alice");
    assert_eq!(session["status"], "pending");

    // The retried delivery was one of the failed ones, and it was sent again.
    let failed_ids: Vec<String> = before["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(column(&steps["deliveries"]["failed"], 0), failed_ids);
    let retried = steps["deliveries"]["retried"].as_str().expect("retried");
    assert!(failed_ids.iter().any(|id| id == retried), "{retried}");
    wait_until(
        Duration::from_secs(15),
        "the retried delivery delivered",
        || async {
            let (_, list) = server.get("/v1/webhooks/deliveries?endpoint=down").await;
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["id"] == retried && d["status"] == "delivered" && d["attempts"] == 2)
        },
    )
    .await;

    // Providers with their breakers: tiktok's is open.
    let providers = &steps["providers"]["rows"];
    let breaker: Vec<(String, String)> = column(providers, 0)
        .into_iter()
        .zip(column(providers, 4))
        .collect();
    assert_eq!(
        breaker,
        [
            ("github".to_owned(), "closed".to_owned()),
            ("reddit".to_owned(), "closed".to_owned()),
            ("tiktok".to_owned(), "open".to_owned()),
        ]
    );

    // A reload keeps the session; signing out forgets the key.
    assert_eq!(steps["reload"]["nav_visible"], true);
    assert_eq!(steps["reload"]["local_storage"], 0);
    assert_eq!(steps["reload"]["cookies"], "");
    assert_eq!(steps["sign_out"]["stored_keys"], Value::Null);
    assert_eq!(steps["sign_out"]["nav_visible"], false);

    // Every request stayed on this origin; the key went only to /v1, never for a token.
    let requests = run["requests"].as_array().expect("requests");
    assert!(requests.len() > 10, "{requests:?}");
    for request in requests {
        let url = request["url"].as_str().expect("url");
        assert!(
            url.starts_with(&format!("{}/", server.base)),
            "left the origin: {url}"
        );
        assert!(!url.contains("access-token"), "asked for a token: {url}");
        match request["auth"].as_str() {
            None => assert!(url.starts_with(&server.url("/ui/")), "no key: {url}"),
            Some("key") => assert!(url.starts_with(&server.url("/v1/")), "key sent to {url}"),
            Some("wrong-key") => assert_eq!(url, server.url("/v1/providers")),
            Some(other) => panic!("an unexpected Authorization ({other}) to {url}"),
        }
    }
    // The browser reports the refused key's 401 as a failed load; nothing else went wrong
    // (a Content Security Policy violation would be a console error too).
    for problem in run["problems"].as_array().expect("problems") {
        let problem = problem.as_str().unwrap_or_default();
        assert!(
            problem.contains("status of 401"),
            "the page had a problem: {problem}"
        );
    }
    assert!(!stdout.contains(TOKEN_MARK), "a token reached a page");
    assert!(!stdout.contains(API_KEY), "the key was printed");
    for shot in ["dashboard.png", "dashboard-connection.png"] {
        let file = artifacts.join(shot);
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 1000),
            "{}",
            file.display()
        );
    }
}
