//! Bulk-generates connections in an SQLite database for the scale benchmark, sealed with a
//! given key so a `tokenwarden serve` configured with that key can serve them.
//!
//! ```text
//! TOKENWARDEN_BENCH_KEY=<base64 of 32 bytes> \
//!   cargo run --release -p tokenwarden --example bench_generate -- sqlite:///tmp/scale.db 1000000 bench
//! ```
//!
//! Users are `user-0000000` …, provider the third argument, account `acct`; tokens expire in
//! 30 days, so neither the scheduler nor the fast path refreshes anything during the run.
//! Rows go in 20,000 per transaction, with progress on stderr.

use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;
use tokenwarden::ConnectionKey;
use tokenwarden::KeyRing;
use tokenwarden::crypto::Field;
use tokenwarden::store::SqliteStore;

const TOKEN: &str = "ya29.a0AfB_byC-benchmark-access-token-of-a-realistic-length-0123456789abcdef";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: bench_generate DATABASE_URL COUNT PROVIDER")?;
    let count: usize = args.next().ok_or("missing COUNT")?.parse()?;
    let provider = args.next().unwrap_or_else(|| "bench".to_owned());
    let key = std::env::var("TOKENWARDEN_BENCH_KEY")?;
    let keys = Arc::new(KeyRing::from_base64("k1", [("k1", key.as_str())])?);
    let store = SqliteStore::connect(&url, keys.clone()).await?;
    let pool = store.pool().clone();

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let expires = now + 30 * 86_400;
    let started = Instant::now();
    let mut done = 0;
    while done < count {
        let end = (done + 20_000).min(count);
        let mut tx = pool.begin().await?;
        for i in done..end {
            let user = format!("user-{i:07}");
            let ckey = ConnectionKey::parse(&user, &provider, "acct")?;
            let access = keys.seal(TOKEN.as_bytes(), &ckey, Field::AccessToken);
            let refresh = keys.seal(format!("rt-{i}").as_bytes(), &ckey, Field::RefreshToken);
            sqlx::query(
                "INSERT INTO connections (user_id, provider, account_id, access_token, \
                 access_key_id, refresh_token, refresh_key_id, token_type, expires_at, issued_at, \
                 scopes, metadata, status, created_at, updated_at, version, next_refresh_at) \
                 VALUES (?, ?, 'acct', ?, 'k1', ?, 'k1', 'Bearer', ?, ?, '[]', 'null', 'active', \
                 ?, ?, 1, ?)",
            )
            .bind(&user)
            .bind(&provider)
            .bind(access)
            .bind(refresh)
            .bind(expires)
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(expires - 86_400)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        done = end;
        if done % 100_000 == 0 || done == count {
            eprintln!(
                "{done}/{count} connections ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.close().await;
    println!(
        "generated {count} connections in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
