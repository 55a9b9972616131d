//! Crash fault test: `kill -9` the real binary at random moments while the scheduler and
//! client tasks refresh many connections against a provider that rotates refresh tokens and
//! revokes the whole family when an old one is presented again (RFC 9700 reuse detection).
//!
//! The warden commits a refresh's result (SQLite WAL, `synchronous=FULL`) before anyone sees
//! the new token, so a crash can only lose the refreshes caught between the provider's answer
//! and that commit. This test checks exactly that, from both sides:
//!
//! - after every kill, with the server down, it reads the database directly and compares
//!   each stored refresh token with the provider's current generation: equal (committed), one
//!   behind (an answer caught in flight: "orphaned"), anything else is a bug;
//! - after the last restart it classifies every connection as healthy, cleanly
//!   `needs_reconnect`, or broken, and traces every lost connection back to an orphaned
//!   generation issued before the kill of the process that received it.
//!
//! Leases last 60 s, far longer than the test: a restarted server must free the leases the
//! killed one left (issue 9, finding 7). After every restart the test checks that none of
//! them is left, and the final checks refresh every connection at once through the last
//! server, including those its predecessor was refreshing when it was killed.
//!
//! Randomness is seeded (`TOKENWARDEN_TEST_CRASH_SEED` overrides the seed) and every wait is
//! bounded, so the test is repeatable in CI.

#[path = "common/binary.rs"]
mod binary;
#[path = "common/rotating.rs"]
mod rotating;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rotating::{Provider, Rng, account, mix, start_provider, wait_provider_quiet};
use serde_json::{Value, json};
use tokenwarden::store::SqliteStore;
use tokenwarden::{ConnectionKey, ConnectionStatus, KeyRing};

/// Connections refreshed throughout the test.
const CONNECTIONS: usize = 50;
/// `kill -9` rounds.
const KILLS: usize = 12;
/// Client tasks forcing refreshes (one request at a time each).
const CLIENTS: usize = 4;
/// `scheduler.concurrency` in the test's configuration: it bounds how many refreshes can be
/// in flight at a kill, and so how many answers a kill may lose.
const SCHEDULER_CONCURRENCY: usize = 16;
/// Access token lifetime the fake provider grants: short, so the scheduler keeps refreshing
/// (with `lead_seconds = 1`, every connection is refreshed about every 2 s).
const TOKEN_LIFETIME_S: u64 = 3;
const API_KEY: &str = "crash-test-api-key-0123456789";
const DEFAULT_SEED: u64 = 0x7a11_c0de_5eed_0001;

// ---------------------------------------------------------------------------------------
// The server under test.

fn write_config(dir: &Path, db: &Path, key: &str, token_url: &str) -> PathBuf {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
database_url = "sqlite://{db}"

[encryption]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[auth]
api_keys = ["{API_KEY}"]

[refresh]
threshold_seconds = 1
# No retries: every refresh is one upstream call. Leases outlast the test: a restarted
# server frees the killed one's leases when it opens the database, or nothing refreshes them.
max_retries = 0
lease_seconds = 60
initial_delay_ms = 1
max_delay_ms = 5

[breaker]
# invalid_grant is not a provider outage; keep the breaker out of the way regardless.
failure_threshold = 10000

[scheduler]
enabled = true
lead_seconds = 1
initial_retry_delay_seconds = 1
max_retry_delay_seconds = 1
concurrency = {SCHEDULER_CONCURRENCY}

[server]
shutdown_timeout_seconds = 0

[providers.fake]
kind = "oauth2"
client_id = "crash-client"
client_secret = "crash-client-secret"
token_url = "{token_url}"
"#,
        db = db.display()
    );
    let path = dir.join("tokenwarden.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn start_server(dir: &Path, config: &Path, scheduler: bool) -> binary::Running {
    let dir = dir.to_owned();
    let config = config.to_str().expect("utf-8 path").to_owned();
    let running = tokio::task::spawn_blocking(move || {
        let scheduler = if scheduler { "true" } else { "false" };
        binary::start(
            &dir,
            &["serve", "--config", &config],
            &[
                ("RUST_LOG", "warn,tokenwarden_server=info"),
                ("TOKENWARDEN_SCHEDULER__ENABLED", scheduler),
            ],
        )
    })
    .await
    .expect("start task");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .get(format!("http://{}/healthz", running.addr))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return running;
        }
        assert!(Instant::now() < deadline, "server never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn conn_url(base: &str, i: usize) -> String {
    format!("{base}/v1/users/user-{i}/connections/fake/{}", account(i))
}

/// The generation in an `"at:<account>:<g>"` access token or `"<account>:<g>"` refresh token.
fn generation_of(token: &str) -> Option<u64> {
    token.rsplit_once(':')?.1.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Client tasks.

#[derive(Debug, Default)]
struct ClientStats {
    forced_ok: AtomicU64,
    forced_err: AtomicU64,
    transport_err: AtomicU64,
    tokens_seen: AtomicU64,
}

/// Forces refreshes of random connections. After a successful one it also reads the access
/// token, recording the highest generation the server has handed out per connection: the
/// server must never later forget a generation it showed. It reads the token only while the
/// token is far from the refresh threshold, so the read cannot start a background refresh
/// that outlives the request (which would break the in-flight bound below).
async fn client_task(
    id: u64,
    seed: u64,
    base: Arc<RwLock<Option<String>>>,
    running: Arc<AtomicBool>,
    seen: Arc<Vec<AtomicU64>>,
    stats: Arc<ClientStats>,
) {
    let mut rng = Rng(seed ^ mix(id + 1));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    while running.load(Ordering::SeqCst) {
        let Some(base) = base.read().expect("lock").clone() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let i = usize::try_from(rng.below(CONNECTIONS as u64)).expect("index");
        let url = conn_url(&base, i);
        let response = http
            .post(format!("{url}/refresh"))
            .bearer_auth(API_KEY)
            .json(&json!({"max_retries": 0}))
            .send()
            .await;
        let Ok(response) = response else {
            stats.transport_err.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if !response.status().is_success() {
            stats.forced_err.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.forced_ok.fetch_add(1, Ordering::Relaxed);
        let Ok(view) = response.json::<Value>().await else {
            continue;
        };
        let far_from_threshold = view["expires_at"]
            .as_str()
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_some_and(|at| at - time::OffsetDateTime::now_utc() > time::Duration::seconds(2));
        if !far_from_threshold {
            continue;
        }
        let Ok(token) = http
            .get(format!("{url}/access-token"))
            .bearer_auth(API_KEY)
            .send()
            .await
        else {
            continue;
        };
        if !token.status().is_success() {
            continue;
        }
        if let Some(g) = token
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["access_token"].as_str().and_then(generation_of))
        {
            seen[i].fetch_max(g, Ordering::SeqCst);
            stats.tokens_seen.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading the database between kills.

struct Snapshot {
    /// Stored refresh token generation and status, per connection.
    stored: Vec<(u64, ConnectionStatus)>,
    /// Rows still leased (by the dead process: nothing else runs).
    leased: i64,
    /// Their lease owners (the dead process's ids).
    dead_owners: Vec<String>,
}

async fn snapshot(db_url: &str, keys: &Arc<KeyRing>) -> Snapshot {
    let store = SqliteStore::connect(db_url, Arc::clone(keys))
        .await
        .expect("open the database between runs");
    let mut stored = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let key = ConnectionKey::parse(&format!("user-{i}"), "fake", &account(i)).expect("key");
        let conn = tokenwarden::store::Store::get(&store, &key)
            .await
            .expect("read connection")
            .unwrap_or_else(|| panic!("connection {i} vanished"));
        let generation = conn
            .tokens
            .refresh_token
            .as_ref()
            .and_then(|t| generation_of(t.expose_secret()))
            .unwrap_or_else(|| panic!("connection {i} lost its refresh token"));
        stored.push((generation, conn.meta.status));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let leased: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connections WHERE lease_until > ?")
        .bind(now)
        .fetch_one(store.pool())
        .await
        .expect("count leases");
    let dead_owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT lease_owner FROM connections WHERE lease_owner IS NOT NULL",
    )
    .fetch_all(store.pool())
    .await
    .expect("lease owners");
    store.close().await;
    Snapshot {
        stored,
        leased,
        dead_owners,
    }
}

/// Rows still leased to any of `owners` (a killed process's ids), read beside the server.
async fn leases_of(db_url: &str, keys: &Arc<KeyRing>, owners: &[String]) -> i64 {
    let store = SqliteStore::connect(db_url, Arc::clone(keys))
        .await
        .expect("open the database beside the server");
    let mut left = 0;
    for owner in owners {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connections WHERE lease_owner = ?")
            .bind(owner)
            .fetch_one(store.pool())
            .await
            .expect("count leases");
        left += n;
    }
    store.close().await;
    left
}

// ---------------------------------------------------------------------------------------
// Final classification.

#[derive(Debug)]
enum Outcome {
    Healthy,
    NeedsReconnect,
    Broken(String),
}

async fn classify(http: &reqwest::Client, base: &str, i: usize, provider: &Provider) -> Outcome {
    let url = conn_url(base, i);
    let view = match http.get(&url).bearer_auth(API_KEY).send().await {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.expect("view json"),
        Ok(r) => return Outcome::Broken(format!("view answered {}", r.status())),
        Err(e) => return Outcome::Broken(format!("view failed: {e}")),
    };
    let revoked = || provider.families()[&account(i)].reuse.is_some();
    if view["status"] == "active" {
        let response = http
            .post(format!("{url}/refresh"))
            .bearer_auth(API_KEY)
            .json(&json!({"max_retries": 0}))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Outcome::Broken(format!("forced refresh failed: {e}")),
        };
        let status = response.status();
        if status.is_success() {
            let token = http
                .get(format!("{url}/access-token"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .ok();
            let generation = match token {
                Some(t) if t.status().is_success() => t
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|b| b["access_token"].as_str().and_then(generation_of)),
                _ => None,
            };
            let families = provider.families();
            let family = &families[&account(i)];
            if family.reuse.is_none() && generation == Some(family.current) {
                return Outcome::Healthy;
            }
            return Outcome::Broken(format!(
                "refresh succeeded but the token served is generation {generation:?}, the \
                 provider's is {} (revoked: {})",
                family.current,
                family.reuse.is_some()
            ));
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        if status.is_server_error() && status.as_u16() != 502 || error["reconnect"] != true {
            return Outcome::Broken(format!(
                "forced refresh answered {status} {} (reconnect {})",
                error["code"], error["reconnect"]
            ));
        }
        // A clean permanent failure: the connection must now say so.
        let after = http.get(&url).bearer_auth(API_KEY).send().await;
        let after_status = match after {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.expect("view json"),
            _ => return Outcome::Broken("view after the failed refresh failed".to_owned()),
        };
        if after_status["status"] != "needs_reconnect" {
            return Outcome::Broken(format!(
                "refresh failed permanently but status is {}",
                after_status["status"]
            ));
        }
    } else if view["status"] != "needs_reconnect" {
        return Outcome::Broken(format!("unknown status {}", view["status"]));
    }
    if !revoked() {
        return Outcome::Broken("needs_reconnect although the provider never revoked it".into());
    }
    // Reconnect is reported cleanly on the token path (or a still-valid token is served).
    let token = http
        .get(format!("{url}/access-token"))
        .bearer_auth(API_KEY)
        .send()
        .await;
    match token {
        Ok(r) if r.status().is_success() => Outcome::NeedsReconnect,
        Ok(r) if r.status().as_u16() == 409 => {
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if body["error"]["code"] == "TOKEN_EXPIRED" && body["error"]["reconnect"] == true {
                Outcome::NeedsReconnect
            } else {
                Outcome::Broken(format!(
                    "access-token answered 409 {}",
                    body["error"]["code"]
                ))
            }
        }
        Ok(r) => Outcome::Broken(format!("access-token answered {}", r.status())),
        Err(e) => Outcome::Broken(format!("access-token failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------

struct Kill {
    at: Instant,
    /// When the next process was spawned: nothing issued before this can have reached it.
    respawned_at: Instant,
    new_orphans: usize,
    leased: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_refreshes_loses_only_answers_in_flight() {
    let started = Instant::now();
    let seed = std::env::var("TOKENWARDEN_TEST_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = Rng(seed);

    let provider = Arc::new(Provider::new(seed, CONNECTIONS, TOKEN_LIFETIME_S));
    let token_url = start_provider(Arc::clone(&provider)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.db");
    let db_url = format!("sqlite://{}", db.display());
    let key = KeyRing::generate_key_base64();
    let keys = Arc::new(KeyRing::from_base64("k1", [("k1", key.as_str())]).expect("key ring"));
    let config = write_config(dir.path(), &db, &key, &token_url);

    let mut server = start_server(dir.path(), &config, true).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let base = format!("http://{}", server.addr);
    for i in 0..CONNECTIONS {
        let response = http
            .put(conn_url(&base, i))
            .bearer_auth(API_KEY)
            .json(&json!({
                "access_token": format!("at:{}:0", account(i)),
                "refresh_token": format!("{}:0", account(i)),
                "expires_in": TOKEN_LIFETIME_S,
            }))
            .send()
            .await
            .expect("import");
        assert_eq!(response.status().as_u16(), 201, "import {i}");
    }

    let shared_base = Arc::new(RwLock::new(Some(base)));
    let running = Arc::new(AtomicBool::new(true));
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..CONNECTIONS).map(|_| AtomicU64::new(0)).collect());
    let stats = Arc::new(ClientStats::default());
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS as u64 {
        clients.spawn(client_task(
            id,
            seed,
            Arc::clone(&shared_base),
            Arc::clone(&running),
            Arc::clone(&seen),
            Arc::clone(&stats),
        ));
    }

    let mut kills: Vec<Kill> = Vec::with_capacity(KILLS);
    let mut orphaned: BTreeSet<usize> = BTreeSet::new();
    let mut anomalies: Vec<String> = Vec::new();
    let mut last = None;
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(601))).await;
        *shared_base.write().expect("lock") = None;
        let at = Instant::now();
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reap");
        if k + 1 == KILLS {
            // Requests to the dead process fail at once, so the clients stop promptly.
            running.store(false, Ordering::SeqCst);
            while clients.join_next().await.is_some() {}
        }
        wait_provider_quiet(&provider).await;

        let snap = snapshot(&db_url, &keys).await;
        let mut new_orphans = 0;
        {
            let families = provider.families();
            for (i, &(stored, status)) in snap.stored.iter().enumerate() {
                let family = &families[&account(i)];
                if family.reuse.is_none() && status == ConnectionStatus::NeedsReconnect {
                    anomalies.push(format!(
                        "kill {k}: connection {i} needs reconnecting, yet the provider never revoked it"
                    ));
                }
                let shown = seen[i].load(Ordering::SeqCst);
                if stored < shown {
                    anomalies.push(format!(
                        "kill {k}: connection {i} stores generation {stored} after handing out {shown}"
                    ));
                }
                if family.reuse.is_some() {
                    continue;
                }
                if stored == family.current {
                    continue;
                }
                if stored + 1 == family.current {
                    if orphaned.insert(i) {
                        new_orphans += 1;
                    }
                } else {
                    anomalies.push(format!(
                        "kill {k}: connection {i} stores generation {stored}, provider is at {}",
                        family.current
                    ));
                }
            }
        }
        let final_restart = k + 1 == KILLS;
        if final_restart {
            last = Some(snap.stored.clone());
        }
        let respawned_at = Instant::now();
        // The last restart runs without the scheduler so that, during the checks, only the
        // checker's own forced refreshes move the provider's generations.
        server = start_server(dir.path(), &config, !final_restart).await;
        // Serving means the killed process's leases are gone: it frees them before listening.
        let stale = leases_of(&db_url, &keys, &snap.dead_owners).await;
        if stale > 0 {
            anomalies.push(format!(
                "kill {k}: {stale} leases of the killed process survived the restart"
            ));
        }
        if !final_restart {
            *shared_base.write().expect("lock") = Some(format!("http://{}", server.addr));
        }
        kills.push(Kill {
            at,
            respawned_at,
            new_orphans,
            leased: snap.leased,
        });
    }
    let loop_done = Instant::now();
    let last = last.expect("last snapshot");

    // Upstream refreshes during the loop, and how many of them were committed.
    let (upstream, from_the_future): (u64, u32) = {
        let families = provider.families();
        (
            families.values().map(|f| f.current).sum(),
            families.values().map(|f| f.from_the_future).sum(),
        )
    };
    let committed: u64 = last.iter().map(|&(g, _)| g).sum();

    // Classify every connection against the restarted server, all at once. Those the last
    // dead process was refreshing are free again: with 60 s leases they would otherwise wait
    // until the warden gives up and count as broken.
    let base = format!("http://{}", server.addr);
    let mut checks = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let http = http.clone();
        let base = base.clone();
        let provider = Arc::clone(&provider);
        checks.spawn(async move { (i, classify(&http, &base, i, &provider).await) });
    }
    let mut outcomes = Vec::with_capacity(CONNECTIONS);
    while let Some(done) = checks.join_next().await {
        outcomes.push(done.expect("check task"));
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let healthy = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Healthy))
        .count();
    let needs_reconnect = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::NeedsReconnect))
        .count();
    let broken: Vec<String> = outcomes
        .iter()
        .filter_map(|(i, o)| match o {
            Outcome::Broken(why) => Some(format!("connection {i}: {why}")),
            _ => None,
        })
        .collect();

    // Every lost connection must trace back to exactly one generation that was issued to a
    // process killed before it could commit it, and presented stale only by a later process.
    let lost: BTreeSet<usize> = {
        let families = provider.families();
        let mut lost = BTreeSet::new();
        for i in 0..CONNECTIONS {
            let family = &families[&account(i)];
            let Some(reuse) = family.reuse else { continue };
            lost.insert(i);
            let shown = seen[i].load(Ordering::SeqCst);
            if reuse.current != reuse.presented + 1 {
                anomalies.push(format!(
                    "connection {i}: presented generation {} while the provider was at {}",
                    reuse.presented, reuse.current
                ));
                continue;
            }
            if reuse.presented < shown {
                anomalies.push(format!(
                    "connection {i}: presented generation {} after handing out {shown}",
                    reuse.presented
                ));
            }
            let (issued, _) = family.issued[usize::try_from(reuse.current - 1).expect("index")];
            let Some(kill) = kills.iter().position(|k| issued < k.respawned_at) else {
                anomalies.push(format!(
                    "connection {i}: its last generation was issued to the final process"
                ));
                continue;
            };
            if reuse.at < kills[kill].respawned_at {
                anomalies.push(format!(
                    "connection {i}: stale generation presented before the kill that lost it"
                ));
            }
        }
        lost
    };
    if lost != orphaned {
        anomalies.push(format!(
            "lost connections {lost:?} differ from those orphaned at a kill {orphaned:?}"
        ));
    }

    let orphans_total: usize = kills.iter().map(|k| k.new_orphans).sum();
    let max_orphans = kills.iter().map(|k| k.new_orphans).max().unwrap_or(0);
    let max_leased = kills.iter().map(|k| k.leased).max().unwrap_or(0);
    let bound = SCHEDULER_CONCURRENCY + CLIENTS;
    let per_kill: Vec<String> = kills
        .iter()
        .map(|k| {
            format!(
                "{}@{}ms",
                k.new_orphans,
                k.at.duration_since(started).as_millis()
            )
        })
        .collect();
    println!(
        "crash summary: seed={seed:#x} connections={CONNECTIONS} kills={} \
         upstream_refreshes={upstream} committed={committed} caught_in_flight={orphans_total} \
         lost={} needs_reconnect={needs_reconnect} healthy={healthy} broken={} \
         max_lost_per_kill={max_orphans} bound_per_kill={bound} max_stale_leases={max_leased} \
         client_forced_ok={} client_forced_err={} client_transport_err={} tokens_checked={} \
         loop_ms={} total_ms={}",
        kills.len(),
        lost.len(),
        broken.len(),
        stats.forced_ok.load(Ordering::Relaxed),
        stats.forced_err.load(Ordering::Relaxed),
        stats.transport_err.load(Ordering::Relaxed),
        stats.tokens_seen.load(Ordering::Relaxed),
        loop_done.duration_since(started).as_millis(),
        started.elapsed().as_millis(),
    );
    println!("crash per kill (new losses@time): {}", per_kill.join(" "));

    let output = server.stop();
    assert!(
        broken.is_empty(),
        "broken connections:\n{}",
        broken.join("\n")
    );
    assert!(anomalies.is_empty(), "anomalies:\n{}", anomalies.join("\n"));
    assert_eq!(
        from_the_future, 0,
        "a generation the provider never issued was presented"
    );
    // Each kill can only catch the refreshes in flight at that instant: at most one per
    // scheduler permit plus one per client request (forced refreshes hold their request).
    assert!(
        max_orphans <= bound,
        "{max_orphans} refreshes lost at one kill, more than the {bound} that can be in flight"
    );
    assert_eq!(
        upstream - committed,
        orphans_total as u64,
        "every upstream refresh is committed unless caught in flight by a kill"
    );
    assert_eq!(
        lost.len(),
        needs_reconnect,
        "every loss is a clean needs_reconnect"
    );
    assert_eq!(healthy + needs_reconnect, CONNECTIONS);
    assert!(
        upstream > CONNECTIONS as u64,
        "the loop refreshed something"
    );
    assert!(!output.contains("panicked"), "the server panicked");
}
