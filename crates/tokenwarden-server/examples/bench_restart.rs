//! Restart benchmark (issue 9, finding 7): how soon a `tokenwarden serve` restarted after a
//! `kill -9` during refreshes answers a refreshed token for a connection that was
//! mid-refresh at the kill, next to how soon it is ready at all, in the same run.
//!
//! ```text
//! cargo build --release -p tokenwarden-server --bin tokenwarden --example bench_restart
//! BENCH_ROUNDS=3 target/release/examples/bench_restart [CONNECTIONS] [IN_FLIGHT]
//! ```
//!
//! Each round: a SQLite database with `CONNECTIONS` (default 100,000) connections, of which
//! `IN_FLIGHT` (default 64, the scheduler's default concurrency) are expired and due. The
//! server starts with its scheduler on and claims them; the token endpoint (wiremock on
//! 127.0.0.1) holds every answer, so all `IN_FLIGHT` are mid-refresh, leased, when the server
//! is killed with SIGKILL. The endpoint then answers at once, and a new server is started on
//! the same file. From the moment it is spawned, four clients poll it every 2 ms:
//!
//! - baseline: `GET /readyz` until 200 (the process is up and its database answers);
//! - baseline: the access token of a connection that needs no refresh;
//! - the access token of one connection that was mid-refresh at the kill, until it is the
//!   refreshed one;
//! - the same for all `IN_FLIGHT` of them.
//!
//! The binary is found next to this example (`target/release/tokenwarden`) or at
//! `TOKENWARDEN_BIN`. With `TOKENWARDEN_BASELINE_BIN` set to another build (an older
//! version, say), every round runs the same scenario with it first, side by side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::sqlite::SqlitePool;
use time::OffsetDateTime;
use tokenwarden::crypto::Field;
use tokenwarden::{ConnectionKey, KeyRing};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "bench-api-key-0123456789";
const TOKEN: &str = "ya29.a0AfB_byC-benchmark-access-token-of-a-realistic-length-0123456789abcdef";
const POLL: Duration = Duration::from_millis(2);
const GIVE_UP: Duration = Duration::from_secs(120);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let in_flight: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let rounds: usize = std::env::var("BENCH_ROUNDS").map_or(Ok(3), |r| r.parse())?;
    let mut binaries = Vec::new();
    if let Ok(baseline) = std::env::var("TOKENWARDEN_BASELINE_BIN") {
        binaries.push(("baseline", PathBuf::from(baseline)));
    }
    binaries.push(("tokenwarden", binary()?));
    let dir = tempfile::tempdir()?;
    let key = KeyRing::generate_key_base64();
    let keys = Arc::new(KeyRing::from_base64("k1", [("k1", key.as_str())])?);
    // One database per binary, its schema made by that binary (versions may differ).
    let mut templates = Vec::new();
    for (name, binary) in &binaries {
        let template = dir.path().join(format!("{name}-template.db"));
        let started = Instant::now();
        generate(
            binary,
            dir.path(),
            &template,
            &key,
            &keys,
            connections,
            in_flight,
        )
        .await?;
        println!(
            "# {name}: {} ; {connections} connections ({in_flight} due) generated in {:.1} s",
            binary.display(),
            started.elapsed().as_secs_f64(),
        );
        templates.push(template);
    }

    let mut results: Vec<Vec<Round>> = binaries.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, (name, binary)) in binaries.iter().enumerate() {
            let result = run_round(binary, dir.path(), &templates[i], &key, in_flight).await?;
            println!(
                "round {round} {name}: leases left by the killed server {}; from spawn: \
                 /readyz 200 {:.3} s, fresh token {:.3} s, first refreshed token {:.3} s, \
                 all {in_flight} refreshed {:.3} s",
                result.leased_at_kill,
                result.ready.as_secs_f64(),
                result.fresh.as_secs_f64(),
                result.first_refreshed.as_secs_f64(),
                result.all_refreshed.as_secs_f64()
            );
            results[i].push(result);
        }
    }
    for (i, (name, _)) in binaries.iter().enumerate() {
        let median = |f: fn(&Round) -> Duration| {
            let mut values: Vec<Duration> = results[i].iter().map(f).collect();
            values.sort();
            values[values.len() / 2].as_secs_f64()
        };
        println!(
            "median of {rounds} {name}: /readyz 200 {:.3} s, fresh token {:.3} s, first \
             refreshed token {:.3} s, all {in_flight} refreshed {:.3} s",
            median(|r| r.ready),
            median(|r| r.fresh),
            median(|r| r.first_refreshed),
            median(|r| r.all_refreshed)
        );
    }
    Ok(())
}

struct Round {
    leased_at_kill: i64,
    ready: Duration,
    fresh: Duration,
    first_refreshed: Duration,
    all_refreshed: Duration,
}

async fn run_round(
    binary: &Path,
    dir: &Path,
    template: &Path,
    key: &str,
    in_flight: usize,
) -> Result<Round> {
    let db = dir.join("restart.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(template, &db)?;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "at-lost", "expires_in": 3600}))
                .set_delay(Duration::from_secs(3600)),
        )
        .mount(&provider)
        .await;
    let port = free_port()?;
    let config = write_config(dir, &db, key, port, &format!("{}/token", provider.uri()))?;

    // The server that dies: it claims the due connections and waits on the provider.
    let mut first = spawn(binary, &config, dir, "first")?;
    let deadline = Instant::now() + GIVE_UP;
    while provider.received_requests().await.map_or(0, |r| r.len()) < in_flight {
        if Instant::now() > deadline {
            return Err("the first server never refreshed the due connections".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill()?;
    first.wait()?;
    let leased_at_kill = leases(&db).await?;

    // The provider recovers; a new server starts on the same file.
    provider.reset().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-new",
            "refresh_token": "rt-new",
            "token_type": "Bearer",
            "expires_in": 3600,
        })))
        .mount(&provider)
        .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let spawned = Instant::now();
    let mut second = spawn(binary, &config, dir, "second")?;
    let token_url =
        |i: usize| format!("{base}/v1/users/user-{i:07}/connections/bench/acct/access-token");
    let ready = tokio::spawn(until(http.clone(), format!("{base}/readyz"), None));
    let fresh = tokio::spawn(until(
        http.clone(),
        token_url(in_flight + 1000),
        Some(TOKEN),
    ));
    let refreshed: Vec<_> = (0..in_flight)
        .map(|i| tokio::spawn(until(http.clone(), token_url(i), Some("at-new"))))
        .collect();
    let ready = ready.await?? - spawned;
    let fresh = fresh.await?? - spawned;
    let mut times = Vec::with_capacity(in_flight);
    for task in refreshed {
        times.push(task.await?? - spawned);
    }
    second.kill()?;
    second.wait()?;
    Ok(Round {
        leased_at_kill,
        ready,
        fresh,
        first_refreshed: times.iter().copied().min().unwrap_or_default(),
        all_refreshed: times.iter().copied().max().unwrap_or_default(),
    })
}

/// Polls `url` until it answers 200 (with `token` as its access token, when given); when.
async fn until(http: reqwest::Client, url: String, token: Option<&'static str>) -> Result<Instant> {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        if let Ok(response) = http.get(&url).bearer_auth(API_KEY).send().await
            && response.status().is_success()
        {
            let done = Instant::now();
            let Some(want) = token else {
                return Ok(done);
            };
            let body: Value = response.json().await?;
            if body["access_token"] == want {
                return Ok(done);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{url} never answered").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A database whose schema `binary` made (through `connections list`), holding
/// `connections` rows sealed with `keys`, like `bench_generate`'s; the first `due` expired
/// and due now, the rest valid for 30 days.
async fn generate(
    binary: &Path,
    dir: &Path,
    db: &Path,
    key: &str,
    keys: &Arc<KeyRing>,
    connections: usize,
    due: usize,
) -> Result<()> {
    let config = write_config(dir, db, key, 9, "http://127.0.0.1:9/token")?;
    let mut command = Command::new(binary);
    command
        .args(["connections", "list", "--config"])
        .arg(&config)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKENWARDEN_") {
            command.env_remove(name);
        }
    }
    if !command.status()?.success() {
        return Err(format!("{} could not create the database", binary.display()).into());
    }
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut done = 0;
    while done < connections {
        let end = (done + 20_000).min(connections);
        let mut tx = pool.begin().await?;
        for i in done..end {
            let user = format!("user-{i:07}");
            let ckey = ConnectionKey::parse(&user, "bench", "acct")?;
            let access = keys.seal(TOKEN.as_bytes(), &ckey, Field::AccessToken);
            let refresh = keys.seal(format!("rt-{i}").as_bytes(), &ckey, Field::RefreshToken);
            let (expires, next) = if i < due {
                (now - 60, now - 60)
            } else {
                (now + 30 * 86_400, now + 29 * 86_400)
            };
            sqlx::query(
                "INSERT INTO connections (user_id, provider, account_id, access_token, \
                 access_key_id, refresh_token, refresh_key_id, token_type, expires_at, issued_at, \
                 scopes, metadata, status, created_at, updated_at, version, next_refresh_at) \
                 VALUES (?, 'bench', 'acct', ?, 'k1', ?, 'k1', 'Bearer', ?, ?, '[]', 'null', \
                 'active', ?, ?, 1, ?)",
            )
            .bind(&user)
            .bind(access)
            .bind(refresh)
            .bind(expires)
            .bind(now - 3600)
            .bind(now)
            .bind(now)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        done = end;
    }
    pool.close().await;
    Ok(())
}

/// Rows leased in the file (read beside the server, without migrating anything).
async fn leases(db: &Path) -> Result<i64> {
    let pool = SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM connections WHERE lease_owner IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n)
}

fn write_config(dir: &Path, db: &Path, key: &str, port: u16, token_url: &str) -> Result<PathBuf> {
    let text = format!(
        r#"
listen = "127.0.0.1:{port}"
database_url = "sqlite://{db}"

[encryption]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[auth]
api_keys = ["{API_KEY}"]

[refresh]
max_retries = 0

[scheduler]
enabled = true

[server]
shutdown_timeout_seconds = 0

[providers.bench]
kind = "oauth2"
client_id = "bench"
client_secret = "bench-secret"
token_url = "{token_url}"
"#,
        db = db.display()
    );
    let path = dir.join("restart.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn spawn(binary: &Path, config: &Path, dir: &Path, name: &str) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut command = Command::new(binary);
    command
        .args(["serve", "--config"])
        .arg(config)
        .current_dir(dir)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    // Only the configuration file configures it.
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKENWARDEN_") {
            command.env_remove(name);
        }
    }
    Ok(command.env("RUST_LOG", "warn").spawn()?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("TOKENWARDEN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory")?;
    Ok(release.join("tokenwarden"))
}
