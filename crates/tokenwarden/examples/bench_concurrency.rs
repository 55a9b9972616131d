//! 1,000 concurrent callers on one expired token: how many upstream refreshes happen (the
//! target is exactly one), and how long callers wait, with a token endpoint that takes
//! 100 ms to answer.
//!
//! ```text
//! cargo run --release -p tokenwarden --example bench_concurrency -- [CALLERS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, HttpSettings};
use tokenwarden::store::SqliteStore;
use tokenwarden::{AccessToken, ConnectionKey, ImportRequest, KeyRing, RefreshToken, Warden};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let callers: usize = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let keys = Arc::new(KeyRing::from_base64(
        "k1",
        [("k1", KeyRing::generate_key_base64().as_str())],
    )?);
    let store = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}/c.db", dir.path().display()), keys).await?,
    );
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({
                    "access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600
                }))
                .set_delay(Duration::from_millis(100)),
        )
        .mount(&server)
        .await;
    let config: provider::ProviderConfig = toml::from_str(&format!(
        "kind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"{}/token\"",
        server.uri()
    ))?;
    let provider = provider::build(
        "p".parse()?,
        &config,
        HttpClient::new(HttpSettings::default())?,
    )?;
    let warden = Warden::builder(store)
        .provider(provider)
        .build()
        .expect("valid warden settings");
    let key = ConnectionKey::parse("user", "p", "acct")?;
    warden
        .import(
            key.clone(),
            ImportRequest {
                access_token: AccessToken::new("at-old"),
                refresh_token: Some(RefreshToken::new("rt-old")),
                expires_at: Some(OffsetDateTime::now_utc() - time::Duration::seconds(1)),
                refresh_expires_at: None,
                issued_at: None,
                token_type: None,
                scopes: vec![],
                metadata: serde_json::Value::Null,
            },
        )
        .await?;

    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let warden = warden.clone();
        let key = key.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let t = Instant::now();
            let grant = warden.access_token(&key).await.expect("token");
            (t.elapsed(), grant.access_token.expose_secret() == "at-new")
        });
    }
    let mut waits = Vec::new();
    let mut all_new = true;
    while let Some(r) = tasks.join_next().await {
        let (wait, new) = r?;
        waits.push(wait);
        all_new &= new;
    }
    waits.sort_unstable();
    let upstream = server.received_requests().await.map_or(0, |r| r.len());
    let pct = |p: usize| waits[(waits.len() * p / 100).min(waits.len() - 1)].as_secs_f64() * 1e3;
    println!("callers: {callers}");
    println!("upstream refresh calls: {upstream} (target 1)");
    println!("all callers got the new token: {all_new}");
    println!(
        "caller wait p50 {:.1} ms, p99 {:.1} ms (provider latency 100 ms)",
        pct(50),
        pct(99)
    );
    Ok(())
}
