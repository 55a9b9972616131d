//! Online key rotation on PostgreSQL, end to end with the binary: a server keeps serving
//! every token while `keys rotate` runs beside it, a rotation killed halfway is finished by
//! running it again, and once the old key is removed from the configuration every token is
//! still served.
//!
//! Needs `TOKENWARDEN_TEST_POSTGRES_URL` when built; without it the test is reported as
//! ignored (see `build.rs`).
//! It works in a schema of its own and drops it when it passes.

#[path = "common/binary.rs"]
mod binary;
#[path = "common/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CONNECTIONS: usize = 60;
const API_KEY: &str = "rotation-pg-api-key-0123456789";

fn write_config(path: &Path, database_url: &str, active: &str, keys: &[(&str, &str)]) {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, k)| format!("{id} = \"{k}\""))
        .collect();
    let text = format!(
        r#"
listen = "127.0.0.1:0"
database_url = "{database_url}"

[encryption]
active_key = "{active}"
keys = {{ {} }}

[auth]
api_keys = ["{API_KEY}"]

[scheduler]
enabled = false

[server]
shutdown_timeout_seconds = 0

[providers.fake]
kind = "oauth2"
client_id = "rotation-client"
client_secret = "rotation-client-secret"
token_url = "http://127.0.0.1:9/token"
"#,
        keys.join(", ")
    );
    std::fs::write(path, text).expect("write config");
}

/// `tokenwarden --config <config> <args>`, without the developer's environment.
fn command(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKENWARDEN_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

fn run(config: &Path, args: &[&str]) -> Output {
    let output = command(config, args).output().expect("runs");
    assert!(
        output.status.success(),
        "tokenwarden {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Ciphertexts per key id, from `keys status` (`<id>\t<count>\t…` lines).
fn key_counts(config: &Path) -> Vec<(String, u64)> {
    let status = run(config, &["keys", "status"]);
    String::from_utf8_lossy(&status.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let id = fields.next()?;
            let count = fields.next()?.parse().ok()?;
            Some((id.to_owned(), count))
        })
        .collect()
}

fn count_of(counts: &[(String, u64)], id: &str) -> u64 {
    counts.iter().find(|(k, _)| k == id).map_or(0, |(_, n)| *n)
}

fn token_url(base: &str, i: usize) -> String {
    format!("{base}/v1/users/user-{i}/connections/fake/acct-{i}/access-token")
}

/// Asks for every token once; each must be served, unchanged.
async fn all_served(http: &reqwest::Client, base: &str) {
    for i in 0..CONNECTIONS {
        let response = http
            .get(token_url(base, i))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "connection {i}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            body["access_token"],
            format!("access-{i}"),
            "connection {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn rotation_while_serving_interrupted_and_resumed_then_old_key_removed() {
    let url = postgres::url();
    let schema = format!(
        "tw_rotation_{}_{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000
    );
    let database_url = postgres::schema_url(&url, &schema).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tokenwarden.toml");
    let k1 = tokenwarden::KeyRing::generate_key_base64();
    let k2 = tokenwarden::KeyRing::generate_key_base64();
    let http = reqwest::Client::new();

    // Everything sealed under k1.
    write_config(&config, &database_url, "k1", &[("k1", &k1)]);
    let server = binary::start(
        dir.path(),
        &["--config", config.to_str().expect("utf-8"), "serve"],
        &[],
    );
    let base = format!("http://{}", server.addr);
    for i in 0..CONNECTIONS {
        let response = http
            .put(format!(
                "{base}/v1/users/user-{i}/connections/fake/acct-{i}"
            ))
            .bearer_auth(API_KEY)
            .json(&json!({
                "access_token": format!("access-{i}"),
                "refresh_token": format!("refresh-{i}"),
                "expires_in": 86_400,
            }))
            .send()
            .await
            .expect("import");
        assert_eq!(response.status(), 201, "import {i}");
    }
    server.stop();

    // k2 becomes active, k1 stays readable; the server serves throughout the rotation.
    write_config(&config, &database_url, "k2", &[("k1", &k1), ("k2", &k2)]);
    let server = binary::start(
        dir.path(),
        &["--config", config.to_str().expect("utf-8"), "serve"],
        &[],
    );
    let base = format!("http://{}", server.addr);
    let serving = Arc::new(AtomicBool::new(true));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (http, base) = (http.clone(), base.clone());
        let (serving, served, failed) = (serving.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while serving.load(Ordering::SeqCst) {
                i = (i + 7) % CONNECTIONS;
                let ok = match http
                    .get(token_url(&base, i))
                    .bearer_auth(API_KEY)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|b| b["access_token"] == format!("access-{i}")),
                    _ => false,
                };
                let counter = if ok { &served } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // A rotation killed halfway: a row in the middle (in key order) is held locked, so the
    // rotation stops there with the rows before it done, and is killed while it waits.
    let mut lock = {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&database_url)
            .await
            .expect("connect");
        sqlx::query("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        let held: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM connections WHERE user_id = 'user-5' FOR UPDATE")
                .fetch_optional(&mut conn)
                .await
                .expect("lock a row");
        assert!(held.is_some(), "user-5 exists");
        conn
    };
    let mut interrupted = command(&config, &["keys", "rotate", "--batch-size", "4"])
        .spawn()
        .expect("rotate starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_of(&key_counts(&config), "k2") == 0 {
        assert!(Instant::now() < deadline, "the rotation never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    interrupted.kill().expect("SIGKILL");
    interrupted.wait().expect("reap");
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("release the row");
    let midway = key_counts(&config);
    assert!(
        count_of(&midway, "k1") > 0 && count_of(&midway, "k2") > 0,
        "the rotation was interrupted halfway: {midway:?}"
    );
    // ...is finished by running it again, which touches only what is left.
    run(&config, &["keys", "rotate"]);
    let after = key_counts(&config);
    assert_eq!(
        count_of(&after, "k1"),
        0,
        "nothing left under k1: {after:?}"
    );
    assert_eq!(
        count_of(&after, "k2"),
        2 * CONNECTIONS as u64,
        "every access and refresh token under k2: {after:?}"
    );
    all_served(&http, &base).await;
    serving.store(false, Ordering::SeqCst);
    reader.await.expect("reader");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a token was not served during the rotation ({} served; midway {midway:?})",
        served.load(Ordering::Relaxed)
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    server.stop();

    // k1 removed from the configuration: every token is still served.
    write_config(&config, &database_url, "k2", &[("k2", &k2)]);
    let server = binary::start(
        dir.path(),
        &["--config", config.to_str().expect("utf-8"), "serve"],
        &[],
    );
    all_served(&http, &format!("http://{}", server.addr)).await;
    server.stop();
    eprintln!(
        "rotation on PostgreSQL: {} tokens served during it, ciphertexts midway {midway:?}",
        served.load(Ordering::Relaxed)
    );
    postgres::drop_schema(&url, &schema).await;
}
