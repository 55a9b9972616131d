//! Issue 9, finding 7, end to end with the real binary: a restart never stalls refreshes.
//!
//! - SQLite serves one instance: a second `tokenwarden serve` on the same file fails at
//!   once, naming the file, while CLI commands still work beside the running one.
//! - `kill -9` of `serve` while it refreshes a connection, then a restart: the connection's
//!   token is refreshed and answered at once, not after the dead process's lease (60 s here).
//! - Two `serve` processes on PostgreSQL: killing the one that refreshes a connection lets a
//!   caller waiting on the other get the refreshed token within 2 s (needs
//!   `TOKENWARDEN_TEST_POSTGRES_URL`).
//!
//! The provider (wiremock) never answers the first refresh, so the killed process is
//! certainly mid-refresh, holding the lease; later refreshes are answered at once.

#[path = "common/binary.rs"]
mod binary;
#[path = "common/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "restart-test-api-key-0123456789";
/// Longer than any deadline below: a caller that waits for it fails the test.
const LEASE_S: u64 = 60;
/// The SQLite target is 1 s from start; the deadline is looser for a busy machine.
const RESTART_DEADLINE: Duration = Duration::from_secs(5);
/// Issue 9's target for a takeover across instances.
const TAKEOVER: Duration = Duration::from_secs(2);

fn write_config(dir: &Path, database_url: &str, token_url: &str) -> PathBuf {
    let key = tokenwarden::KeyRing::generate_key_base64();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
database_url = "{database_url}"

[encryption]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[auth]
api_keys = ["{API_KEY}"]

[refresh]
max_retries = 0
lease_seconds = {LEASE_S}

[scheduler]
enabled = false

[server]
shutdown_timeout_seconds = 0

[providers.fake]
kind = "oauth2"
client_id = "restart-client"
client_secret = "restart-client-secret"
token_url = "{token_url}"
"#
    );
    let path = dir.join("tokenwarden.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `serve`, killed when dropped so a failing test leaves no process behind.
struct Server(Option<binary::Running>);

impl Server {
    fn addr(&self) -> &str {
        &self.running().addr
    }

    fn pid(&self) -> u32 {
        self.running().child.id()
    }

    fn running(&self) -> &binary::Running {
        self.0.as_ref().expect("running")
    }

    fn kill_9(&mut self) {
        let running = self.0.as_mut().expect("running");
        running.child.kill().expect("SIGKILL");
        running.child.wait().expect("reap");
        self.0 = None;
    }

    /// Stops it with SIGTERM; all its output.
    fn stop(mut self) -> String {
        self.0.take().expect("running").stop()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = &mut self.0 {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

async fn start(dir: &Path, config: &Path) -> Server {
    let dir = dir.to_owned();
    let config = config.to_str().expect("utf-8 path").to_owned();
    let running = tokio::task::spawn_blocking(move || {
        binary::start(
            &dir,
            &["serve", "--config", &config],
            &[("RUST_LOG", "warn,tokenwarden=info,tokenwarden_server=info")],
        )
    })
    .await
    .expect("start task");
    Server(Some(running))
}

/// Runs `tokenwarden <args>` to its end: exit status and all output. A command still
/// running after 30 s is killed and fails the test.
async fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
    command
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKENWARDEN_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tokenwarden {args:?} did not end");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let output = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A token endpoint that never answers the first refresh and answers the rest at once.
async fn provider() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-lost", "expires_in": 3600}))
                .set_delay(Duration::from_secs(3600)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-2",
            "refresh_token": "rt-2",
            "token_type": "Bearer",
            "expires_in": 3600,
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// Waits until the provider has received `n` refresh requests.
async fn provider_received(server: &MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received = server.received_requests().await.map_or(0, |r| r.len());
        if received >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the provider saw {received} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn conn_url(base: &str) -> String {
    format!("{base}/v1/users/u-1/connections/fake/acct-1")
}

async fn import_expired(http: &reqwest::Client, base: &str) {
    let response = http
        .put(conn_url(base))
        .bearer_auth(API_KEY)
        .json(&json!({
            "access_token": "at-1",
            "refresh_token": "rt-1",
            "expires_at": "2020-01-01T00:00:00Z",
        }))
        .send()
        .await
        .expect("import");
    assert_eq!(response.status().as_u16(), 201);
}

/// Asks for the access token; the token or what went wrong.
async fn access_token(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let response = http
        .get(format!("{}/access-token", conn_url(base)))
        .bearer_auth(API_KEY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_one_sqlite_file_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tw.db");
    let config = write_config(
        dir.path(),
        &format!("sqlite://{}", db.display()),
        "http://127.0.0.1:9/token",
    );
    let running = start(dir.path(), &config).await;
    let config_arg = config.to_str().expect("utf-8");

    let started = Instant::now();
    let (ok, output) = run(dir.path(), &["serve", "--config", config_arg]).await;
    assert!(
        !ok,
        "a second serve on one SQLite file must fail:\n{output}"
    );
    assert!(
        output.contains(&db.display().to_string()) && output.contains("already served"),
        "the message names the file and says why:\n{output}"
    );
    assert!(
        output.contains(&format!("pid {}", running.pid())),
        "and which process holds it:\n{output}"
    );
    assert!(!output.contains("\"listening\""), "{output}");
    eprintln!("second serve refused after {:?}", started.elapsed());

    // The CLI works beside the running instance.
    let (ok, output) = run(dir.path(), &["connections", "list", "--config", config_arg]).await;
    assert!(ok, "connections list beside serve:\n{output}");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_mid_refresh_a_restarted_serve_refreshes_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tw.db");
    let provider = provider().await;
    let config = write_config(
        dir.path(),
        &format!("sqlite://{}", db.display()),
        &format!("{}/token", provider.uri()),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let mut first = start(dir.path(), &config).await;
    let base = format!("http://{}", first.addr());
    import_expired(&http, &base).await;
    let hanging = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { access_token(&http, &base).await })
    };
    provider_received(&provider, 1).await;
    first.kill_9();
    assert!(hanging.await.expect("join").is_err(), "its caller lost it");

    let restarted = Instant::now();
    let second = start(dir.path(), &config).await;
    let base = format!("http://{}", second.addr());
    let token = tokio::time::timeout(RESTART_DEADLINE, access_token(&http, &base))
        .await
        .expect("the restarted server waited for the dead one's lease")
        .expect("token");
    eprintln!(
        "refreshed token {:?} after the restart began",
        restarted.elapsed()
    );
    assert_eq!(token, "at-2");
    provider_received(&provider, 2).await;
    let output = second.stop();
    assert!(
        output.contains("freed the refresh leases a previous instance left behind"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn killing_the_lease_owner_lets_the_other_instance_answer_within_2_s() {
    let url = postgres::url();
    let schema = format!("tw_takeover_{}", std::process::id());
    let database_url = postgres::schema_url(&url, &schema).await;
    let provider = provider().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &database_url,
        &format!("{}/token", provider.uri()),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let survivor = start(dir.path(), &config).await;
    let mut victim = start(dir.path(), &config).await;
    let (survivor_base, victim_base) = (
        format!("http://{}", survivor.addr()),
        format!("http://{}", victim.addr()),
    );
    import_expired(&http, &survivor_base).await;

    // The victim refreshes (the provider holds its answer), a caller waits on the survivor.
    let hanging = {
        let http = http.clone();
        tokio::spawn(async move { access_token(&http, &victim_base).await })
    };
    provider_received(&provider, 1).await;
    let waiting = {
        let http = http.clone();
        let base = survivor_base.clone();
        tokio::spawn(async move { access_token(&http, &base).await })
    };
    victim.kill_9();
    let killed = Instant::now();
    assert!(hanging.await.expect("join").is_err());

    let token = tokio::time::timeout(TAKEOVER, waiting)
        .await
        .expect("the survivor waited for the killed owner's lease")
        .expect("join")
        .expect("token");
    eprintln!("survivor answered {:?} after the kill", killed.elapsed());
    assert_eq!(token, "at-2");
    provider_received(&provider, 2).await;
    let output = survivor.stop();
    assert!(
        output.contains("took over a refresh lease whose owner is gone"),
        "{output}"
    );
    postgres::drop_schema(&url, &schema).await;
}
