//! A provider outage under load: 100 callers keep asking for 100 expiring connections while
//! the provider answers 503 for 30 s, then recovers. Run twice in one process: with the
//! circuit breaker (tokenwarden's defaults) and, as the baseline, with it disabled (the
//! seed's design: every request retries on its own).
//!
//! ```text
//! cargo run --release -p tokenwarden --example bench_outage -- [OUTAGE_SECONDS]
//! ```
//!
//! Reports upstream calls per caller during the outage, the p99 latency of answers given
//! while the breaker was open, and the time from the provider's return until every caller
//! holds a fresh token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, HttpSettings};
use tokenwarden::store::SqliteStore;
use tokenwarden::{
    AccessToken, BreakerConfig, ConnectionKey, ImportRequest, KeyRing, RefreshToken, Warden,
};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const CALLERS: usize = 100;

struct Sample {
    at: Duration,
    latency: Duration,
    fresh: bool,
    circuit_open: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let outage: u64 = std::env::args().nth(1).map_or(Ok(30), |a| a.parse())?;
    let outage = Duration::from_secs(outage);
    for (label, breaker) in [
        ("tokenwarden (breaker on)", BreakerConfig::default()),
        (
            "baseline (breaker off)",
            BreakerConfig {
                failure_threshold: u32::MAX,
                ..BreakerConfig::default()
            },
        ),
    ] {
        run(label, breaker, outage).await?;
    }
    Ok(())
}

async fn run(
    label: &str,
    breaker: BreakerConfig,
    outage: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let keys = Arc::new(KeyRing::from_base64(
        "k1",
        [("k1", KeyRing::generate_key_base64().as_str())],
    )?);
    let store = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}/o.db", dir.path().display()), keys).await?,
    );
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
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
        .breaker_config(breaker)
        .build()
        .expect("valid warden settings");

    // Tokens with an hour's lifetime that expire a third of the way into the outage: inside
    // the refresh threshold from the start.
    let now = OffsetDateTime::now_utc();
    let mut keys_ = Vec::new();
    for i in 0..CALLERS {
        let key = ConnectionKey::parse(&format!("user-{i}"), "p", "acct")?;
        warden
            .import(
                key.clone(),
                ImportRequest {
                    access_token: AccessToken::new("at-old"),
                    refresh_token: Some(RefreshToken::new("rt")),
                    expires_at: Some(now + outage / 3),
                    refresh_expires_at: None,
                    issued_at: Some(now + outage / 3 - time::Duration::hours(1)),
                    token_type: None,
                    scopes: vec![],
                    metadata: serde_json::Value::Null,
                },
            )
            .await?;
        keys_.push(key);
    }

    let start = Instant::now();
    let end = outage * 2;
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys_ {
        let warden = warden.clone();
        tasks.spawn(async move {
            let mut samples = Vec::new();
            while start.elapsed() < end {
                let t = Instant::now();
                let result = warden.access_token(&key).await;
                samples.push(Sample {
                    at: start.elapsed(),
                    latency: t.elapsed(),
                    fresh: result
                        .as_ref()
                        .is_ok_and(|g| g.access_token.expose_secret() == "at-new"),
                    circuit_open: result
                        .as_ref()
                        .is_err_and(tokenwarden::Error::is_circuit_open),
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        });
    }
    tokio::time::sleep(outage).await;
    let during = server.received_requests().await.map_or(0, |r| r.len());
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-new", "token_type": "Bearer", "expires_in": 3600
        })))
        .mount(&server)
        .await;
    let mut samples = Vec::new();
    let mut recovered = Duration::ZERO;
    let mut all_recovered = true;
    while let Some(result) = tasks.join_next().await {
        let mine = result?;
        match mine.iter().find(|s| s.fresh && s.at >= outage) {
            Some(first) => recovered = recovered.max(first.at - outage),
            None => all_recovered = false,
        }
        samples.extend(mine);
    }
    let requests_during = samples.iter().filter(|s| s.at < outage).count();
    let mut open: Vec<Duration> = samples
        .iter()
        .filter(|s| s.circuit_open)
        .map(|s| s.latency)
        .collect();
    open.sort_unstable();
    let p99 = open
        .get((open.len() * 99 / 100).min(open.len().saturating_sub(1)))
        .copied();
    println!("== {label}");
    println!("caller requests during outage: {requests_during}");
    println!("upstream calls during outage: {during}");
    println!(
        "upstream calls per caller: {:.2}",
        during as f64 / CALLERS as f64
    );
    println!(
        "upstream calls per caller request: {:.3}",
        during as f64 / requests_during.max(1) as f64
    );
    match p99 {
        Some(p) => println!(
            "open-breaker answers: {}, p99 latency: {:.3} ms",
            open.len(),
            p.as_secs_f64() * 1e3
        ),
        None => println!("open-breaker answers: 0"),
    }
    if all_recovered {
        println!(
            "time to recover (all callers fresh after provider returned): {:.2} s",
            recovered.as_secs_f64()
        );
    } else {
        println!(
            "time to recover: not all callers recovered within {} s",
            outage.as_secs()
        );
    }
    Ok(())
}
