//! The in-process fast path: `Warden::access_token` on a fresh token, next to the baseline
//! of a plain `RwLock<HashMap>` lookup plus a clone of the same token string. Both run in the
//! same process and the same criterion run, so their ratio is what counts (see
//! BENCHMARKS.md).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group};
use time::OffsetDateTime;
use tokenwarden::connection::ProviderName;
use tokenwarden::provider::{
    NotRefreshable, Provider, ProviderInfo, ProviderKind, RefreshFailure, TokenResponse,
};
use tokenwarden::store::SqliteStore;
use tokenwarden::{
    AccessToken, Connection, ConnectionKey, ImportRequest, KeyRing, RefreshToken, Warden,
};

/// A provider that is never called on the fast path.
#[derive(Debug)]
struct Unused(ProviderName);

#[async_trait]
impl Provider for Unused {
    fn name(&self) -> &ProviderName {
        &self.0
    }
    fn info(&self) -> ProviderInfo {
        ProviderInfo::basic(self.0.to_string(), ProviderKind::Oauth2, String::new())
    }
    fn check_refreshable(&self, _: &Connection, _: OffsetDateTime) -> Result<(), NotRefreshable> {
        Ok(())
    }
    async fn refresh(&self, _: &Connection) -> Result<TokenResponse, RefreshFailure> {
        Err(RefreshFailure::transport(
            "not used in this benchmark",
            false,
        ))
    }
}

const TOKEN: &str = "ya29.a0AfB_byC-benchmark-access-token-of-a-realistic-length-0123456789abcdef";

/// The warden and the baseline map, each holding `TOKEN` for 1,000 connections.
struct Setup {
    rt: tokio::runtime::Runtime,
    warden: Warden,
    baseline: RwLock<HashMap<ConnectionKey, String>>,
    key: ConnectionKey,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let keys = Arc::new(
        KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])
            .expect("keys"),
    );
    let warden = rt.block_on(async {
        let store = Arc::new(SqliteStore::connect(&url, keys).await.expect("store"));
        let warden = Warden::builder(store)
            .provider(Arc::new(Unused("bench".parse().expect("name"))))
            .build()
            .expect("valid warden settings");
        for i in 0..1000 {
            let key = ConnectionKey::parse(&format!("user-{i}"), "bench", "acct").expect("key");
            let req = ImportRequest {
                access_token: AccessToken::new(TOKEN),
                refresh_token: Some(RefreshToken::new("rt")),
                expires_at: Some(OffsetDateTime::now_utc() + time::Duration::days(1)),
                refresh_expires_at: None,
                issued_at: None,
                token_type: None,
                scopes: vec![],
                metadata: serde_json::Value::Null,
            };
            warden.import(key, req).await.expect("import");
        }
        warden
    });
    let key = ConnectionKey::parse("user-500", "bench", "acct").expect("key");
    rt.block_on(warden.access_token(&key)).expect("warm");

    let mut baseline: HashMap<ConnectionKey, String> = HashMap::new();
    for i in 0..1000 {
        let k = ConnectionKey::parse(&format!("user-{i}"), "bench", "acct").expect("key");
        baseline.insert(k, TOKEN.to_owned());
    }
    Setup {
        rt,
        warden,
        baseline: RwLock::new(baseline),
        key,
        _dir: dir,
    }
}

fn bench(c: &mut Criterion) {
    let Setup {
        rt,
        warden,
        baseline,
        key,
        _dir,
    } = setup();
    let mut group = c.benchmark_group("fast_path");
    group.bench_function("baseline_rwlock_hashmap_clone", |b| {
        // Through the same async harness as the warden, so only the lookups differ.
        b.to_async(&rt).iter(|| async {
            let map = baseline.read().expect("lock");
            black_box(map.get(black_box(&key)).cloned())
        });
    });
    group.bench_function("warden_access_token", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(warden.access_token(black_box(&key)).await.expect("token"))
        });
    });
    // What the cache's freshness check costs on its own. Benches build with tokio's
    // `test-util` (a dev-dependency), whose `Instant::now` first checks whether any runtime
    // ever paused the clock; production builds call `std::time::Instant::now` directly. The
    // two side by side show what that check adds to the warden's figure.
    group.bench_function("clock_tokio_instant_now", |b| {
        b.iter(tokio::time::Instant::now);
    });
    group.bench_function("clock_std_instant_now", |b| {
        b.iter(std::time::Instant::now);
    });
    group.finish();
}

/// `FAST_PATH_PROFILE=<warden|baseline>:<n>` runs `n` lookups of one side and nothing else,
/// for an instruction count that does not depend on the machine's load. Count only the
/// lookups (not the setup, not other threads) by collecting inside [`profiled_lookups`]:
///
/// ```text
/// FAST_PATH_PROFILE=warden:100000 valgrind --tool=callgrind \
///     --toggle-collect='fast_path::profiled_lookups' target/release/deps/fast_path-…
/// ```
fn profile(spec: &str) {
    let (side, n) = spec
        .split_once(':')
        .expect("FAST_PATH_PROFILE=<warden|baseline>:<n>");
    let n: u64 = n.parse().expect("a count");
    let setup = setup();
    profiled_lookups(&setup, side == "warden", n);
}

#[inline(never)]
fn profiled_lookups(setup: &Setup, warden: bool, n: u64) {
    let Setup {
        rt,
        warden: w,
        baseline,
        key,
        ..
    } = setup;
    rt.block_on(async {
        for _ in 0..n {
            if warden {
                black_box(w.access_token(black_box(key)).await.expect("token"));
            } else {
                let map = baseline.read().expect("lock");
                black_box(map.get(black_box(key)).cloned());
            }
        }
    });
}

criterion_group!(benches, bench);

fn main() {
    match std::env::var("FAST_PATH_PROFILE") {
        Ok(spec) => profile(&spec),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
