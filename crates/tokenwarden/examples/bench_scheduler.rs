//! Scheduled refresh throughput against a fast local fake provider, next to the raw rate of
//! durable single-row commits on the same database, measured side by side in one run.
//!
//! ```text
//! cargo run --release -p tokenwarden --example bench_scheduler -- [N] [DATABASE_URL]
//! ```
//!
//! N connections (default 2000) are imported. Each round (`BENCH_ROUNDS`, default 3) makes
//! them all due, and the scheduler refreshes them all: claim, lease, HTTP refresh against a
//! minimal token endpoint on 127.0.0.1, durable commit. The baseline then commits N
//! single-row UPDATEs (each changing the row) on the same table through the same pool, one
//! statement per commit, once with one writer and once with the scheduler's concurrency;
//! the faster is the database's rate. Each phase starts after a checkpoint. Prints each
//! round and the median ratio (target: ≥ 0.5). `BENCH_CONCURRENCY` overrides the
//! scheduler's default concurrency (used by both the scheduler and the parallel baseline).

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/scheduler.rs"]
mod scheduler;
use cpu::timed;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, HttpSettings};
use tokenwarden::store::{PgStore, SqliteStore, Store};
use tokenwarden::{
    AccessToken, ConnectionKey, ImportRequest, KeyRing, RefreshToken, SchedulerConfig, Warden,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let url = args
        .next()
        .unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let keys = Arc::new(KeyRing::from_base64(
        "k1",
        [("k1", KeyRing::generate_key_base64().as_str())],
    )?);
    // The baseline commits through the same pool, with the same settings, as the store.
    let (store, raw): (Arc<dyn Store>, Raw) = if url.starts_with("postgres") {
        let schema = format!("tw_bench_{}", std::process::id());
        let pg = Arc::new(PgStore::connect_in_schema(&url, &schema, keys).await?);
        (pg.clone(), Raw::Pg(pg.pool().clone()))
    } else {
        let sqlite = Arc::new(SqliteStore::connect(&url, keys).await?);
        (sqlite.clone(), Raw::Sqlite(sqlite.pool().clone()))
    };

    let server = FastTokenEndpoint::start()?;
    let config: provider::ProviderConfig = toml::from_str(&format!(
        "kind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"http://{}/token\"",
        server.addr
    ))?;
    let provider = provider::build(
        "bench".parse()?,
        &config,
        HttpClient::new(HttpSettings::default())?,
    )?;
    let mut scheduler = SchedulerConfig::default();
    if let Ok(c) = std::env::var("BENCH_CONCURRENCY") {
        scheduler.concurrency = c.parse()?;
    }
    let concurrency = scheduler.concurrency;
    let warden = Warden::builder(store.clone())
        .provider(Arc::clone(&provider))
        .scheduler_config(scheduler)
        .build()
        .expect("valid warden settings");

    eprintln!(
        "importing {n} due connections into {}",
        url.split(':').next().unwrap_or("?")
    );
    for i in 0..n {
        let key = ConnectionKey::parse(&format!("user-{i:07}"), "bench", "acct")?;
        warden
            .import(
                key,
                ImportRequest {
                    access_token: AccessToken::new("at-old"),
                    refresh_token: Some(RefreshToken::new("rt-old")),
                    expires_at: Some(OffsetDateTime::now_utc() + time::Duration::seconds(60)),
                    refresh_expires_at: None,
                    issued_at: None,
                    token_type: None,
                    scopes: vec![],
                    metadata: serde_json::Value::Null,
                },
            )
            .await?;
    }

    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .map_or(Ok(3), |r| r.parse())?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        // Every connection due again (not timed), and the WAL emptied, so each phase starts
        // from the same state.
        raw.make_all_due().await;
        raw.settle().await;
        let before = server.requests();
        let (scheduled, scheduled_cpu) = timed(scheduler::run_until_refreshed(
            &warden,
            &store,
            || server.requests(),
            before + n as u64,
        ))
        .await;
        let upstream = server.requests() - before;
        assert_eq!(upstream, n as u64, "one upstream refresh per connection");

        // Baselines: raw durable single-row commits (one UPDATE per commit) on the same rows,
        // same pool and pragmas. One writer at a time, and the scheduler's concurrency; the
        // faster of the two is the database's rate.
        raw.settle().await;
        let (serial, serial_cpu) = timed(raw.touch_all(n, 1)).await;
        raw.settle().await;
        let (parallel, parallel_cpu) = timed(raw.touch_all(n, concurrency)).await;

        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let (base, base_cpu) = if rate(serial) >= rate(parallel) {
            (serial, serial_cpu)
        } else {
            (parallel, parallel_cpu)
        };
        let ratio = rate(scheduled) / rate(base);
        println!(
            "round {round}: scheduled {:.0}/s ({upstream} upstream calls), commits {:.0}/s \
             with 1 writer and {:.0}/s with {concurrency}, ratio {ratio:.2}; CPU per \
             refresh {}, per commit {}",
            rate(scheduled),
            rate(serial),
            rate(parallel),
            scheduled_cpu.per(n),
            base_cpu.per(n),
        );
        results.push(ratio);
    }
    results.sort_by(f64::total_cmp);
    println!(
        "connections: {n}, rounds: {rounds}, median ratio: {:.2} (target ≥ 0.5)",
        results[results.len() / 2]
    );

    // The provider alone: the same refresh calls, same concurrency, no database.
    let sample = store
        .get(&ConnectionKey::parse("user-0000000", "bench", "acct")?)
        .await?
        .ok_or("sample connection missing")?;
    let sample = Arc::new(sample);
    let (http_only, _) = timed(async {
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = n.div_ceil(concurrency);
        for t in 0..concurrency {
            let (provider, sample) = (Arc::clone(&provider), Arc::clone(&sample));
            tasks.spawn(async move {
                for _ in (t * per_task)..((t + 1) * per_task).min(n) {
                    provider.refresh(&sample).await.expect("refresh");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("provider task");
        }
    })
    .await;
    println!(
        "provider calls alone (no database): {:.0}/s",
        n as f64 / http_only.as_secs_f64()
    );
    if let Raw::Pg(pool) = &raw {
        let schema = format!("tw_bench_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The same database, used without the store: one UPDATE per commit.
#[derive(Clone)]
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Raw {
    /// `n` single-row commits, one connection's row each, from `writers` tasks at once.
    async fn touch_all(&self, n: usize, writers: usize) {
        let mut tasks = tokio::task::JoinSet::new();
        let per_task = n.div_ceil(writers);
        for t in 0..writers {
            let raw = self.clone();
            tasks.spawn(async move {
                for i in (t * per_task)..((t + 1) * per_task).min(n) {
                    raw.touch(&format!("user-{i:07}")).await;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("commit task");
        }
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

    /// Writes back what earlier phases left behind (SQLite: checkpoint and empty the WAL;
    /// PostgreSQL: a checkpoint), so no phase pays for the one before it.
    async fn settle(&self) {
        match self {
            Self::Sqlite(pool) => sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await
                .map(drop),
            Self::Pg(pool) => sqlx::query("CHECKPOINT").execute(pool).await.map(drop),
        }
        .expect("settle");
    }

    /// One durable single-row commit. The value always changes: SQLite skips the write,
    /// and with it the fsync, of an UPDATE that stores what is already there, which would
    /// make a baseline of "set updated_at = now" mostly free within one second.
    async fn touch(&self, user: &str) {
        match self {
            Self::Sqlite(pool) => sqlx::query(
                "UPDATE connections SET updated_at = updated_at + 1 \
                 WHERE user_id = ? AND provider = 'bench' AND account_id = 'acct'",
            )
            .bind(user)
            .execute(pool)
            .await
            .map(drop),
            Self::Pg(pool) => sqlx::query(
                "UPDATE connections SET updated_at = updated_at + 1 \
                 WHERE user_id = $1 AND provider = 'bench' AND account_id = 'acct'",
            )
            .bind(user)
            .execute(pool)
            .await
            .map(drop),
        }
        .expect("commit");
    }
}

/// A token endpoint that does as little as an HTTP/1.1 server can: it answers every request
/// with the same token response, on keep-alive connections, from a thread and runtime of its
/// own, and counts requests. The point is to measure the broker, not a mock server.
struct FastTokenEndpoint {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
}

impl FastTokenEndpoint {
    fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
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
                    tokio::spawn(serve(stream, Arc::clone(&counter)));
                }
            });
        });
        Ok(Self { addr, requests })
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn serve(mut stream: tokio::net::TcpStream, counter: Arc<AtomicU64>) {
    const BODY: &str = r#"{"access_token":"at-refreshed","token_type":"Bearer","expires_in":3600}"#;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // One request: headers up to the blank line, then content-length bytes of body.
        let complete = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let body_len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + body_len {
                    break Some(end + 4 + body_len);
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(used) = complete else { return };
        buf.drain(..used);
        counter.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
