//! A fake token endpoint that rotates refresh tokens and revokes the whole family when an
//! old one is presented again (RFC 9700 reuse detection), for the `kill -9` tests. Refresh
//! tokens are `"<account>:<generation>"`; it records who was issued each generation (the
//! form's `client_id`) and when.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json, Router};
use serde_json::json;

/// splitmix64: a tiny seeded generator, so a failing run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn account(i: usize) -> String {
    format!("acct-{i}")
}

// ---------------------------------------------------------------------------------------
// The fake provider.

/// One refresh token family (one connection), as the provider sees it. Refresh tokens are
/// `"<account>:<generation>"`; generation 0 is the imported one.
#[derive(Debug, Default, Clone)]
pub struct Family {
    pub current: u64,
    /// `issued[g - 1]`: when generation `g` was issued, and to which `client_id`.
    pub issued: Vec<(Instant, String)>,
    /// Set when an older generation was presented: the family is revoked from then on.
    pub reuse: Option<Reuse>,
    /// Presentations of a generation the provider never issued (would be a broker bug).
    pub from_the_future: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    pub presented: u64,
    pub current: u64,
    pub at: Instant,
}

#[derive(Debug)]
pub struct Provider {
    families: Mutex<HashMap<String, Family>>,
    in_handler: AtomicU64,
    last_request: Mutex<Instant>,
    seed: u64,
    /// `expires_in` of every access token it grants.
    lifetime_s: u64,
}

impl Provider {
    /// Families for `account(0..connections)`, each at generation 0.
    pub fn new(seed: u64, connections: usize, lifetime_s: u64) -> Self {
        let families = (0..connections)
            .map(|i| (account(i), Family::default()))
            .collect();
        Self {
            families: Mutex::new(families),
            in_handler: AtomicU64::new(0),
            last_request: Mutex::new(Instant::now()),
            seed,
            lifetime_s,
        }
    }

    pub fn families(&self) -> std::sync::MutexGuard<'_, HashMap<String, Family>> {
        self.families.lock().expect("provider lock")
    }

    /// Decides the answer and, for a valid token, rotates the family at once: the provider
    /// has committed the new generation before its answer starts travelling back, so a broker
    /// killed from here on has lost it.
    fn answer(&self, presented: Option<&String>, client: &str) -> (bool, String, u64) {
        let parsed = presented
            .and_then(|t| t.rsplit_once(':'))
            .and_then(|(a, g)| Some((a.to_owned(), g.parse::<u64>().ok()?)));
        let Some((account, generation)) = parsed else {
            return (false, String::new(), 0);
        };
        let mut families = self.families();
        let Some(family) = families.get_mut(&account) else {
            return (false, account, 0);
        };
        if family.reuse.is_some() {
            return (false, account, 0);
        }
        if generation < family.current {
            family.reuse = Some(Reuse {
                presented: generation,
                current: family.current,
                at: Instant::now(),
            });
            return (false, account, 0);
        }
        if generation > family.current {
            family.from_the_future += 1;
            return (false, account, 0);
        }
        family.current += 1;
        family.issued.push((Instant::now(), client.to_owned()));
        (true, account, family.current)
    }

    /// Per-answer latency (0-24 ms, seeded): widens the window between the provider's
    /// rotation and the broker's commit the way a real network does.
    fn delay(&self, account: &str, generation: u64) -> Duration {
        let h = account
            .bytes()
            .fold(self.seed ^ generation, |h, b| mix(h ^ u64::from(b)));
        Duration::from_millis(h % 25)
    }
}

/// Counts handlers running, including ones whose client vanished mid-answer.
struct InHandler<'a>(&'a AtomicU64);

impl Drop for InHandler<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn token_endpoint(
    State(provider): State<Arc<Provider>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    provider.in_handler.fetch_add(1, Ordering::SeqCst);
    let _guard = InHandler(&provider.in_handler);
    *provider.last_request.lock().expect("lock") = Instant::now();
    let (ok, account, generation) =
        if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
            let client = form.get("client_id").map_or("", String::as_str);
            provider.answer(form.get("refresh_token"), client)
        } else {
            (false, String::new(), 0)
        };
    if !ok {
        let body =
            json!({"error": "invalid_grant", "error_description": "refresh token is invalid"});
        return (axum::http::StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    tokio::time::sleep(provider.delay(&account, generation)).await;
    Json(json!({
        "access_token": format!("at:{account}:{generation}"),
        "refresh_token": format!("{account}:{generation}"),
        "token_type": "Bearer",
        "expires_in": provider.lifetime_s,
    }))
    .into_response()
}

pub async fn start_provider(provider: Arc<Provider>) -> String {
    let app = Router::new()
        .route("/token", axum::routing::post(token_endpoint))
        .with_state(provider);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind provider");
    let addr = listener.local_addr().expect("provider addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("provider serves");
    });
    format!("http://{addr}/token")
}

/// Waits until the provider has answered everything the dead process had sent: a request
/// already in the provider's socket buffer is still served (and rotates the family).
pub async fn wait_provider_quiet(provider: &Provider) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let quiet_for = provider.last_request.lock().expect("lock").elapsed();
        if provider.in_handler.load(Ordering::SeqCst) == 0 && quiet_for > Duration::from_millis(300)
        {
            return;
        }
        assert!(Instant::now() < deadline, "provider never went quiet");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
