//! Webhooks (issue 12): what the durable outbox costs scheduled refreshes, and how fast one
//! delivery worker empties it, on SQLite by default or on PostgreSQL.
//!
//! ```text
//! cargo run --release -p tokenwarden --example bench_webhooks -- [N] [DATABASE_URL]
//! ```
//!
//! **1. Outbox cost.** N connections (default 2000) are imported and refreshed by the
//! scheduler against a minimal token endpoint on 127.0.0.1 (as in `bench_scheduler`), in
//! rounds with the store's outbox off and on (`Store::set_outbox`, same store, same rows).
//! `BENCH_ROUNDS` (default 3) pairs, alternating which side goes first; every round makes all
//! connections due and starts after a checkpoint. Two variants:
//!
//! * (a) successful refreshes: no event is raised; with the outbox on, the batch write also
//!   reads the rows as they were, inside its transaction;
//! * (b) failing refreshes: the endpoint answers HTTP 500 (transient; no retries, breaker
//!   off), so every refresh is a connection's first failure and, with the outbox on, writes a
//!   `connection.refresh_failing` event in the same transaction. The connections are imported
//!   again (outbox off) before each round so each round's failures are first failures.
//!
//! Prints refreshes/s for each side and the median of the per-pair ratios on/off (target:
//! ≥ 0.90, at most 10% added).
//!
//! **2. Delivery throughput.** In a store of its own, 10,000 connections (`BENCH_EVENTS`)
//! each fail once for good (`invalid_grant`, HTTP 400) under the scheduler: 10,000
//! `connection.needs_reconnect` events. One `Webhooks` worker then delivers them to a local
//! receiver (a minimal HTTP/1.1 server answering `200` with no body) until the store records
//! all of them delivered. Prints deliveries/s from the first dispatch to the last delivery
//! recorded (the store's own times) and checks that the receiver saw exactly 10,000 distinct
//! `webhook-id`s.

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/scheduler.rs"]
mod scheduler;
use cpu::timed;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokenwarden::clock::SystemClock;
use tokenwarden::provider::{self, HttpClient, HttpSettings, Provider};
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::{PgStore, SqliteStore, Store};
use tokenwarden::webhooks::delivery::RetrySchedule;
use tokenwarden::webhooks::worker::{WebhookConfig, Webhooks};
use tokenwarden::webhooks::{EndpointConfig, EventType, WebhookSecret};
use tokenwarden::{
    AccessToken, BreakerConfig, ConnectionKey, ImportRequest, KeyRing, RefreshConfig, RefreshToken,
    SchedulerConfig, Warden,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the local server answers.
const TOKEN_OK: u8 = 0;
const TOKEN_500: u8 = 1;
const TOKEN_INVALID_GRANT: u8 = 2;
const RECEIVER_OK: u8 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Off unless asked for (`RUST_LOG=warn` shows, say, batches that fell back to single rows).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let url = args.next();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .map_or(Ok(3), |r| r.parse())?;
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .map_or(Ok(10_000), |r| r.parse())?;
    let keys = Arc::new(KeyRing::from_base64(
        "k1",
        [("k1", KeyRing::generate_key_base64().as_str())],
    )?);
    let backend = Backend {
        url,
        dir: dir.path().to_owned(),
        keys,
    };
    println!("backend: {}", backend.name());

    let token = LocalServer::start(TOKEN_OK)?;
    let config: provider::ProviderConfig = toml::from_str(&format!(
        "kind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"http://{}/token\"",
        token.addr
    ))?;
    let provider = provider::build(
        "bench".parse()?,
        &config,
        HttpClient::new(HttpSettings::default())?,
    )?;

    // ---- 1. The outbox's cost on scheduled refreshes ----
    let (store, raw) = backend.open("outbox").await?;
    let warden = bench_warden(&store, &provider, None)?;
    eprintln!("importing {n} connections");
    import_all(&warden, n).await?;

    let mut summary = Vec::new();
    for (variant, mode) in [
        ("(a) successful refreshes, no event", TOKEN_OK),
        (
            "(b) failing refreshes (HTTP 500), one refresh_failing event each",
            TOKEN_500,
        ),
    ] {
        println!("## {variant}: {n} connections, {rounds} pairs of rounds");
        token.mode.store(mode, Ordering::Relaxed);
        let mut ratios = Vec::new();
        for pair in 1..=rounds {
            // Alternate which side goes first, so neither always follows the other.
            let order = if pair % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            let mut rate = [0.0_f64; 2];
            for on in order {
                if mode == TOKEN_500 {
                    // First failures again: fresh rows (no failures), written without events.
                    store.set_outbox(false);
                    import_all(&warden, n).await?;
                }
                raw.make_all_due().await;
                raw.retire_events().await;
                raw.settle().await;
                store.set_outbox(on);
                let events_before = raw.count_events().await;
                let upstream_before = token.requests();
                let (elapsed, cpu) = timed(scheduler_round(&warden, &store, &token, n)).await;
                let upstream = token.requests() - upstream_before;
                let written = raw.count_events().await - events_before;
                assert_eq!(upstream, n as u64, "one upstream refresh per connection");
                let expected = if on && mode == TOKEN_500 { n as u64 } else { 0 };
                assert_eq!(written, expected, "events written in the round");
                let r = n as f64 / elapsed.as_secs_f64();
                rate[usize::from(on)] = r;
                println!(
                    "pair {pair}, outbox {:>3}: {r:.0} refreshes/s ({upstream} upstream calls, \
                     {written} events written); CPU per refresh {}",
                    if on { "on" } else { "off" },
                    cpu.per(n),
                );
            }
            let ratio = rate[1] / rate[0];
            println!(
                "pair {pair}: off {:.0}/s, on {:.0}/s, ratio on/off {ratio:.2}",
                rate[0], rate[1]
            );
            ratios.push(ratio);
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        let line = format!(
            "{variant}: median ratio on/off {median:.2} (target ≥ 0.90: {})",
            if median >= 0.90 { "met" } else { "NOT met" }
        );
        println!("{line}");
        summary.push(line);
    }
    store.set_outbox(false);

    // ---- 2. Delivery throughput ----
    println!("## delivery: {events} connection.needs_reconnect events, one worker");
    let (store, raw2) = backend.open("hooks").await?;
    let receiver = LocalServer::start(RECEIVER_OK)?;
    let endpoint = EndpointConfig::new(
        "bench",
        url::Url::parse(&format!("http://{}/hooks", receiver.addr))?,
        vec![WebhookSecret::generate()],
        EventType::ALL.into_iter().collect::<BTreeSet<_>>(),
        Duration::from_secs(10),
    )?;
    let webhooks_config = WebhookConfig {
        endpoints: vec![endpoint],
        schedule: RetrySchedule::default(),
        keep: tokenwarden::webhooks::worker::DEFAULT_KEEP,
    };
    let webhooks = Webhooks::new(
        store.clone(),
        webhooks_config,
        Arc::new(SystemClock),
        "bench-worker",
    )?;
    let warden = bench_warden(&store, &provider, Some(&webhooks))?;
    // `Webhooks::new` turned the outbox on; the imports are set-up and raise no event.
    eprintln!("importing {events} connections");
    store.set_outbox(false);
    import_all(&warden, events).await?;
    store.set_outbox(true);
    token.mode.store(TOKEN_INVALID_GRANT, Ordering::Relaxed);
    raw2.make_all_due().await;
    let upstream_before = token.requests();
    let (elapsed, _) = timed(scheduler_round(&warden, &store, &token, events)).await;
    assert_eq!(token.requests() - upstream_before, events as u64);
    let written = raw2.count_events().await;
    assert_eq!(written, events as u64, "one needs_reconnect event each");
    println!(
        "{events} refreshes refused with invalid_grant in {:.2} s: {written} events written",
        elapsed.as_secs_f64()
    );
    raw2.settle().await;

    let (elapsed, cpu) = timed(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = {
            let webhooks = webhooks.clone();
            tokio::spawn(async move {
                webhooks
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            })
        };
        // The receiver's counter first (free), then the store, which records each answer
        // after the receiver has sent it.
        while receiver.requests() < events as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while raw2.delivered().await < events as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(());
        worker.await.expect("worker");
    })
    .await;
    let (first_dispatch, last_delivered) = raw2.delivery_span().await;
    let span = Duration::from_millis(u64::try_from(last_delivered - first_dispatch).unwrap_or(0));
    let distinct = receiver.distinct_ids();
    let received = receiver.requests();
    println!(
        "delivered {} of {events}: {:.0} deliveries/s from the first dispatch to the last \
         delivery recorded ({:.2} s); {:.0}/s wall time from the worker's start ({:.2} s); \
         CPU per delivery {}",
        raw2.delivered().await,
        events as f64 / span.as_secs_f64(),
        span.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu.per(events),
    );
    println!(
        "receiver: {received} requests, {distinct} distinct webhook-ids ({})",
        if distinct == events && received == events as u64 {
            "exactly one each: ok"
        } else {
            "MISMATCH"
        }
    );
    for line in summary {
        println!("{line}");
    }
    backend.drop_schemas().await?;
    assert_eq!(distinct, events, "distinct webhook-ids");
    assert_eq!(received, events as u64, "requests received");
    Ok(())
}

/// A warden over `store` whose failures are one attempt each and never open the breaker,
/// and whose retries are planned far enough out that nothing is due twice in one round.
fn bench_warden(
    store: &Arc<dyn Store>,
    provider: &Arc<dyn Provider>,
    webhooks: Option<&Webhooks>,
) -> Result<Warden, Box<dyn std::error::Error>> {
    let mut builder = Warden::builder(store.clone())
        .provider(Arc::clone(provider))
        .scheduler_config(SchedulerConfig {
            initial_retry_delay: Duration::from_secs(300),
            ..SchedulerConfig::default()
        })
        .refresh_config(RefreshConfig {
            retry: RetryPolicy {
                max_retries: 0,
                ..RetryPolicy::default()
            },
            ..RefreshConfig::default()
        })
        .breaker_config(BreakerConfig {
            failure_threshold: u32::MAX,
            ..BreakerConfig::default()
        });
    if let Some(webhooks) = webhooks {
        builder = builder.circuit_changes(webhooks.circuit_changes());
    }
    Ok(builder.build()?)
}

/// Imports (creates or replaces) `user-0000000` … as healthy connections, 16 at a time.
async fn import_all(warden: &Warden, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    const TASKS: usize = 16;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let warden = warden.clone();
        tasks.spawn(async move {
            for i in (t..n).step_by(TASKS) {
                let key =
                    ConnectionKey::parse(&format!("user-{i:07}"), "bench", "acct").expect("key");
                warden
                    .import(
                        key,
                        ImportRequest {
                            access_token: AccessToken::new("at-old"),
                            refresh_token: Some(RefreshToken::new("rt-old")),
                            expires_at: Some(
                                OffsetDateTime::now_utc() + time::Duration::seconds(60),
                            ),
                            refresh_expires_at: None,
                            issued_at: None,
                            token_type: None,
                            scopes: vec![],
                            metadata: serde_json::Value::Null,
                        },
                    )
                    .await
                    .expect("import");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    Ok(())
}

/// Runs the scheduler until the endpoint has seen `n` more refreshes and nothing is due.
async fn scheduler_round(warden: &Warden, store: &Arc<dyn Store>, token: &LocalServer, n: usize) {
    let until = token.requests() + n as u64;
    scheduler::run_until_refreshed(warden, store, || token.requests(), until).await;
}

/// Where the stores live: a file in a temporary directory, or a schema of its own in the
/// given PostgreSQL database (dropped at the end).
struct Backend {
    url: Option<String>,
    dir: std::path::PathBuf,
    keys: Arc<KeyRing>,
}

impl Backend {
    fn name(&self) -> &'static str {
        if self.is_pg() { "PostgreSQL" } else { "SQLite" }
    }

    fn is_pg(&self) -> bool {
        self.url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres"))
    }

    fn schema(part: &str) -> String {
        format!("tw_bench_{part}_{}", std::process::id())
    }

    async fn open(&self, part: &str) -> Result<(Arc<dyn Store>, Raw), Box<dyn std::error::Error>> {
        Ok(match &self.url {
            Some(url) if self.is_pg() => {
                let pg = Arc::new(
                    PgStore::connect_in_schema(url, &Self::schema(part), self.keys.clone()).await?,
                );
                (pg.clone(), Raw::Pg(pg.pool().clone()))
            }
            _ => {
                let url = format!("sqlite://{}/{part}.db", self.dir.display());
                let sqlite = Arc::new(SqliteStore::connect(&url, self.keys.clone()).await?);
                (sqlite.clone(), Raw::Sqlite(sqlite.pool().clone()))
            }
        })
    }

    async fn drop_schemas(&self) -> Result<(), Box<dyn std::error::Error>> {
        if let (Some(url), true) = (&self.url, self.is_pg()) {
            let pool = sqlx::PgPool::connect(url).await?;
            for part in ["outbox", "hooks"] {
                let schema = Self::schema(part);
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&pool)
                .await?;
            }
        }
        Ok(())
    }
}

/// The same database, used without the store, for what the benchmark sets up and checks.
#[derive(Clone)]
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Raw {
    async fn exec(&self, sql: &'static str) {
        match self {
            Self::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            Self::Pg(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn scalar(&self, sql: &'static str) -> i64 {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar::<_, Option<i64>>(sql)
                    .fetch_one(pool)
                    .await
            }
            Self::Pg(pool) => {
                sqlx::query_scalar::<_, Option<i64>>(sql)
                    .fetch_one(pool)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or(0)
    }

    /// Makes every connection due now (one statement, not timed).
    async fn make_all_due(&self) {
        let now = OffsetDateTime::now_utc().unix_timestamp() - 1;
        match self {
            Self::Sqlite(pool) => sqlx::query("UPDATE connections SET next_refresh_at = ?")
                .bind(now)
                .execute(pool)
                .await
                .map(drop),
            Self::Pg(pool) => sqlx::query("UPDATE connections SET next_refresh_at = $1")
                .bind(now)
                .execute(pool)
                .await
                .map(drop),
        }
        .expect("make due");
    }

    /// Marks the events of earlier rounds dispatched, as a running dispatcher would have
    /// within a second, so the undispatched set (and its index) does not grow round after
    /// round; the rows stay, as they do until purged.
    async fn retire_events(&self) {
        self.exec("UPDATE webhook_events SET dispatched_at = 0 WHERE dispatched_at IS NULL")
            .await;
    }

    /// Writes back what earlier phases left behind, so no round pays for the one before it:
    /// PostgreSQL's dead row versions from the imports and earlier rounds are vacuumed
    /// (otherwise autovacuum starts in the middle of some rounds and not others), and the
    /// log is checkpointed.
    async fn settle(&self) {
        match self {
            Self::Sqlite(_) => self.exec("PRAGMA wal_checkpoint(TRUNCATE)").await,
            Self::Pg(_) => {
                self.exec("VACUUM (ANALYZE) connections, webhook_events")
                    .await;
                self.exec("CHECKPOINT").await;
            }
        }
    }

    async fn count_events(&self) -> u64 {
        u64::try_from(self.scalar("SELECT COUNT(*) FROM webhook_events").await).unwrap_or(0)
    }

    async fn delivered(&self) -> u64 {
        u64::try_from(
            self.scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivered'")
                .await,
        )
        .unwrap_or(0)
    }

    /// The first dispatch and the last delivery recorded, unix milliseconds.
    async fn delivery_span(&self) -> (i64, i64) {
        (
            self.scalar("SELECT MIN(dispatched_at) FROM webhook_events")
                .await,
            self.scalar(
                "SELECT MAX(updated_at) FROM webhook_deliveries WHERE status = 'delivered'",
            )
            .await,
        )
    }
}

/// An HTTP/1.1 server that does as little as one can: it answers every request according to
/// its mode (a token, a 500, an `invalid_grant`, or an empty 200 for webhooks), on keep-alive
/// connections, from a thread and runtime of its own, and counts requests and the distinct
/// `webhook-id` headers it saw. The point is to measure the broker, not a mock server.
struct LocalServer {
    addr: std::net::SocketAddr,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    ids: Arc<Mutex<HashSet<String>>>,
}

#[derive(Clone)]
struct Shared {
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    ids: Arc<Mutex<HashSet<String>>>,
}

impl LocalServer {
    fn start(mode: u8) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            mode: Arc::new(AtomicU8::new(mode)),
            requests: Arc::new(AtomicU64::new(0)),
            ids: Arc::new(Mutex::new(HashSet::new())),
        };
        let server = Self {
            addr,
            mode: Arc::clone(&shared.mode),
            requests: Arc::clone(&shared.requests),
            ids: Arc::clone(&shared.ids),
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(serve(stream, shared.clone()));
                }
            });
        });
        Ok(server)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn distinct_ids(&self) -> usize {
        self.ids.lock().expect("ids").len()
    }
}

fn response(mode: u8) -> String {
    let (status, body) = match mode {
        TOKEN_OK => (
            "200 OK",
            r#"{"access_token":"at-refreshed","token_type":"Bearer","expires_in":3600}"#,
        ),
        TOKEN_500 => ("500 Internal Server Error", ""),
        TOKEN_INVALID_GRANT => ("400 Bad Request", r#"{"error":"invalid_grant"}"#),
        _ => ("200 OK", ""),
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn serve(mut stream: tokio::net::TcpStream, shared: Shared) {
    let responses: Vec<String> = (0..=RECEIVER_OK).map(response).collect();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // One request: headers up to the blank line, then content-length bytes of body.
        let complete = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut body_len = 0;
                let mut id = None;
                for line in head.lines() {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    if name.eq_ignore_ascii_case("content-length") {
                        body_len = value.trim().parse().unwrap_or(0);
                    } else if name.eq_ignore_ascii_case("webhook-id") {
                        id = Some(value.trim().to_owned());
                    }
                }
                if buf.len() >= end + 4 + body_len {
                    break Some((end + 4 + body_len, id));
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some((used, id)) = complete else { return };
        buf.drain(..used);
        if let Some(id) = id {
            shared.ids.lock().expect("ids").insert(id);
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let mode = usize::from(shared.mode.load(Ordering::Relaxed));
        if stream
            .write_all(responses[mode.min(responses.len() - 1)].as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}
