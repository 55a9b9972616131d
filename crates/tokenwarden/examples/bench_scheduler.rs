//! Scheduled refresh throughput against a fast local fake provider, next to the raw rate of
//! durable single-row commits on the same database, measured side by side in one run.
//!
//! ```text
//! cargo run --release -p tokenwarden --example bench_scheduler -- [N] [DATABASE_URL]
//! ```
//!
//! N connections (default 2000) are imported already due; the scheduler refreshes them all
//! (claim, lease, HTTP refresh against wiremock on 127.0.0.1, durable commit). The baseline
//! then commits N single-row UPDATEs on the same table, one statement per commit, with the
//! scheduler's concurrency. Prints both rates and their ratio (target: ≥ 0.5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, HttpSettings};
use tokenwarden::store::{PgStore, SqliteStore, Store};
use tokenwarden::{
    AccessToken, ConnectionKey, ImportRequest, KeyRing, RefreshToken, SchedulerConfig, Warden,
};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

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

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 3600
        })))
        .mount(&server)
        .await;
    let config: provider::ProviderConfig = toml::from_str(&format!(
        "kind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"{}/token\"",
        server.uri()
    ))?;
    let provider = provider::build(
        "bench".parse()?,
        &config,
        HttpClient::new(HttpSettings::default())?,
    )?;
    let scheduler = SchedulerConfig::default();
    let concurrency = scheduler.concurrency;
    let warden = Warden::builder(store.clone())
        .provider(provider)
        .scheduler_config(scheduler)
        .build();

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

    // Scheduled refreshes.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let runner = {
        let warden = warden.clone();
        tokio::spawn(async move {
            warden
                .run_scheduler(async {
                    let _ = stop_rx.await;
                })
                .await;
        })
    };
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stats = store.queue_stats(OffsetDateTime::now_utc()).await?;
        if stats.due_now == 0 {
            break;
        }
    }
    let scheduled = started.elapsed();
    let _ = stop_tx.send(());
    runner.await?;
    let upstream = server.received_requests().await.map_or(0, |r| r.len());

    // Baseline: raw durable single-row commits (one UPDATE per commit) on the same rows,
    // same pool and pragmas (WAL, synchronous=FULL), same concurrency.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(concurrency);
    for t in 0..concurrency {
        let raw = raw.clone();
        tasks.spawn(async move {
            for i in (t * per_task)..((t + 1) * per_task).min(n) {
                raw.touch(&format!("user-{i:07}")).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let baseline = started.elapsed();

    let sched_rate = n as f64 / scheduled.as_secs_f64();
    let base_rate = n as f64 / baseline.as_secs_f64();
    println!("connections: {n}");
    println!("upstream refresh calls: {upstream}");
    println!(
        "scheduled refreshes: {:.3} s, {sched_rate:.0}/s",
        scheduled.as_secs_f64()
    );
    println!(
        "baseline single-row commits: {:.3} s, {base_rate:.0}/s",
        baseline.as_secs_f64()
    );
    println!("ratio: {:.2}", sched_rate / base_rate);
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
    async fn touch(&self, user: &str) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        match self {
            Self::Sqlite(pool) => sqlx::query(
                "UPDATE connections SET updated_at = ? \
                 WHERE user_id = ? AND provider = 'bench' AND account_id = 'acct'",
            )
            .bind(now)
            .bind(user)
            .execute(pool)
            .await
            .map(drop),
            Self::Pg(pool) => sqlx::query(
                "UPDATE connections SET updated_at = $1 \
                 WHERE user_id = $2 AND provider = 'bench' AND account_id = 'acct'",
            )
            .bind(now)
            .bind(user)
            .execute(pool)
            .await
            .map(drop),
        }
        .expect("commit");
    }
}
