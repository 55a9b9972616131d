//! [`Warden`]: the paved-path API. It ties the store, the providers, the retry policy, the
//! circuit breakers and single flight together: `get_access_token` and `refresh_token` live
//! here. It owns no persistence (see `store`) and no HTTP (see `provider`).
//!
//! Reading a token takes a fast path (an in-memory cache of decrypted tokens, trusted for
//! `cache_ttl`) and otherwise reads the store. A token inside the refresh threshold but
//! still comfortably valid is returned at once while a refresh runs in the background; a
//! token that has expired (or is about to) waits for the refresh. Every refresh of one
//! connection, whatever triggered it, runs through one single-flight slot and commits its
//! result to the store before anyone sees the new token.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::clock::{Clock, SystemClock};
use crate::commit::GroupCommit;
use crate::connection::{
    Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, LastError, ProviderName, Tokens,
    effective_threshold, should_refresh,
};
use crate::error::{ConfigError, Error, ErrorCode, ErrorMeta, FailureClass};
use crate::metrics as m;
use crate::provider::{
    FailureKind, NotRefreshable, Provider, ProviderInfo, RefreshFailure, TokenResponse,
};
use crate::refresh::breaker::{Breaker, Health};
use crate::refresh::flight::Flights;
use crate::refresh::policy::{RetryPolicy, jitter_unit};
use crate::refresh::{BreakerConfig, BreakerState, RefreshConfig, RefreshOptions};
use crate::scheduler::{
    RateLimiters, SchedulerConfig, Wakeup, plan_after_failure, plan_after_success,
};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{Change, Claimed, ListPage, ListQuery, PutOutcome, Store, StoreError};

/// A token closer to expiry than this (or than half the effective threshold, if smaller) is
/// not handed out while a refresh runs: the caller waits for the refresh instead.
const BLOCKING_WINDOW: Duration = Duration::from_secs(60);

/// After a failed refresh of a still-valid token, on-demand refreshes of that connection
/// pause for `min(FAILURE_COOLDOWN_MAX, 1 s · 2^failures)` so a failing provider is not
/// called on every request.
const FAILURE_COOLDOWN_MAX: Duration = Duration::from_secs(60);

/// How often the scheduler refreshes its queue-size gauges.
const QUEUE_STATS_EVERY: Duration = Duration::from_secs(5);

/// How long a stopping scheduler waits for the refreshes it started.
const SCHEDULER_DRAIN: Duration = Duration::from_secs(10);

/// How long the scheduler waits before looking again at due work it could not claim.
const IDLE_RECHECK: Duration = Duration::from_millis(250);

/// Longest a caller waits for another instance's refresh before answering
/// `TOKEN_REFRESH_ERROR` with a retry-after hint.
const MAX_WAIT_FOR_OTHER: Duration = Duration::from_secs(30);

/// The most connection writes one group commit carries. Large enough that a full scheduler
/// batch finishing together shares a few commits; small enough that one transaction holds
/// SQLite's write lock only briefly.
const COMMIT_BATCH: usize = 64;

/// Waits before retrying the commit of a refresh's result after a database error: a blip
/// (failover, a dropped connection) should not cost a grant the provider already rotated.
/// About 2 s in all, well inside the renewed lease.
const COMMIT_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
];

/// How often a caller waiting for another instance's refresh looks at the database.
const LEASE_POLL: Duration = Duration::from_millis(50);

/// A usable access token.
#[derive(Debug, Clone)]
pub struct AccessTokenGrant {
    pub access_token: AccessToken,
    /// Shared, so handing out a cached grant allocates only for the token itself.
    pub token_type: Arc<str>,
    pub expires_at: Option<OffsetDateTime>,
}

/// Tokens an application holds, to import as a connection.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    /// When the access token expires (may be in the past: an expired token to refresh).
    pub expires_at: Option<OffsetDateTime>,
    pub refresh_expires_at: Option<OffsetDateTime>,
    /// When the access token was issued, if known (the import time when the application
    /// gave `expires_in`). Lets short-lived tokens get a proportionate refresh threshold.
    pub issued_at: Option<OffsetDateTime>,
    pub token_type: Option<String>,
    pub scopes: Vec<String>,
    pub metadata: serde_json::Value,
}

/// Builds a [`Warden`].
#[derive(Debug)]
pub struct WardenBuilder {
    store: Arc<dyn Store>,
    providers: Vec<Arc<dyn Provider>>,
    refresh: RefreshConfig,
    breaker: BreakerConfig,
    scheduler: SchedulerConfig,
    clock: Arc<dyn Clock>,
    instance_id: Option<String>,
}

impl WardenBuilder {
    /// Adds a provider.
    #[must_use]
    pub fn provider(mut self, provider: Arc<dyn Provider>) -> Self {
        self.providers.push(provider);
        self
    }

    /// Adds providers.
    #[must_use]
    pub fn providers(mut self, providers: impl IntoIterator<Item = Arc<dyn Provider>>) -> Self {
        self.providers.extend(providers);
        self
    }

    /// Refresh settings. By default, [`RefreshConfig::default`].
    #[must_use]
    pub fn refresh_config(mut self, config: RefreshConfig) -> Self {
        self.refresh = config;
        self
    }

    /// Circuit breaker settings. By default, [`BreakerConfig::default`].
    #[must_use]
    pub fn breaker_config(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Scheduler settings. By default, [`SchedulerConfig::default`].
    #[must_use]
    pub fn scheduler_config(mut self, config: SchedulerConfig) -> Self {
        self.scheduler = config;
        self
    }

    /// This instance's id, which owns its refresh leases in a shared database. By default a
    /// new random id per warden.
    #[must_use]
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// The wall clock. By default, the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the warden after checking every setting.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first setting that cannot work.
    pub fn build(self) -> Result<Warden, ConfigError> {
        self.refresh.validate()?;
        self.breaker.validate()?;
        self.scheduler.validate()?;
        let mut limiters = RateLimiters::default();
        for p in &self.providers {
            if let Some(rate) = p.info().rate_limit_per_second {
                limiters.insert(p.name().as_str(), rate);
            }
        }
        let providers = self
            .providers
            .into_iter()
            .map(|p| {
                let name = p.name().clone();
                let breaker = Breaker::new(name.as_str(), self.breaker);
                (
                    name,
                    ProviderEntry {
                        provider: p,
                        breaker,
                    },
                )
            })
            .collect();
        let changes = self.store.changes();
        let warden = Warden {
            inner: Arc::new(Inner {
                commits: GroupCommit::new(Arc::clone(&self.store), COMMIT_BATCH),
                store: self.store,
                providers,
                refresh: self.refresh,
                scheduler: self.scheduler,
                clock: self.clock,
                flights: Arc::default(),
                cache: RwLock::default(),
                instance_id: self
                    .instance_id
                    .unwrap_or_else(|| format!("tw-{:016x}", rand::random::<u64>())),
                wakeup: Wakeup::default(),
                scheduler_sleeps_until: AtomicI64::new(AWAKE),
                changed: tokio::sync::Notify::new(),
                reported: std::sync::Mutex::default(),
                limiters,
            }),
        };
        if let (Some(changes), Ok(runtime)) = (changes, tokio::runtime::Handle::try_current()) {
            runtime.spawn(follow_changes(Arc::downgrade(&warden.inner), changes));
        }
        Ok(warden)
    }
}

/// Applies the store's change reports to a warden's cache until the warden or the store
/// goes away: a connection written elsewhere is forgotten (its cached token may be dead:
/// some providers revoke the old access token on refresh) and the scheduler looks at its
/// schedule again (an import on another instance may be due sooner).
async fn follow_changes(
    inner: std::sync::Weak<Inner>,
    mut changes: tokio::sync::broadcast::Receiver<Change>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = changes.recv().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.changed.notify_waiters();
        match change {
            Ok(Change::Connection {
                key,
                version,
                next_refresh_at,
            }) => {
                inner.note_reported(&key, version);
                inner.forget_unless_version(&key, version);
                let sleeps_until = inner.scheduler_sleeps_until.load(Ordering::Relaxed);
                if wakes_scheduler(next_refresh_at, sleeps_until) {
                    inner.wakeup.notify_one();
                }
            }
            Ok(Change::All) | Err(RecvError::Lagged(_)) => {
                inner.cache_write().clear();
                inner.wakeup.notify_one();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// How long a reported version keeps older reads out of the cache, at least: far longer
/// than a read takes to come back from the store.
const REPORTED_KEEP: Duration = Duration::from_secs(10);

/// The newest version reported per connection (`i64::MAX` for a deletion) over the last
/// one to two [`REPORTED_KEEP`]s, in two generations so that forgetting old reports costs
/// nothing per report.
#[derive(Debug, Default)]
struct Reported {
    current: HashMap<ConnectionKey, i64>,
    previous: HashMap<ConnectionKey, i64>,
    since: Option<Instant>,
}

impl Reported {
    fn note(&mut self, key: &ConnectionKey, version: i64, now: Instant) {
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= REPORTED_KEEP {
            self.previous = std::mem::take(&mut self.current);
            self.since = Some(now);
        }
        let newest = self.current.entry(key.clone()).or_insert(version);
        *newest = (*newest).max(version);
    }

    fn newest(&self, key: &ConnectionKey) -> Option<i64> {
        let current = self.current.get(key).copied();
        let previous = self.previous.get(key).copied();
        current.max(previous)
    }
}

/// `scheduler_sleeps_until` while the scheduler loop is not sleeping: it will look at the
/// schedule anyway, so no change needs to wake it.
const AWAKE: i64 = i64::MIN;

/// Whether a connection now due at `next_refresh_at` should wake a scheduler that sleeps
/// until `sleeps_until` (unix seconds, or [`AWAKE`]). Refreshes elsewhere move the schedule
/// later and wake nobody; an import due now wakes everyone sleeping past it.
fn wakes_scheduler(next_refresh_at: Option<OffsetDateTime>, sleeps_until: i64) -> bool {
    next_refresh_at.is_some_and(|at| at.unix_timestamp() < sleeps_until)
}

#[derive(Debug)]
struct ProviderEntry {
    provider: Arc<dyn Provider>,
    breaker: Breaker,
}

#[derive(Debug, Clone)]
struct CachedToken {
    grant: AccessTokenGrant,
    /// The stored version the grant was read from or written as.
    version: i64,
    /// On the monotonic clock: the earlier of "trusted for `cache_ttl`" and "the token
    /// enters its refresh threshold". One clock read decides a cache hit.
    fresh_until: Instant,
    /// Until when the entry reflects the store (`cache_ttl`), fresh or not. While the
    /// provider's breaker is open, answers come from it without reading the store.
    trusted_until: Instant,
}

type RefreshOutcome = Result<Arc<Connection>, Error>;

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    /// Every compare-and-swap write of a connection goes through here, so refreshes that
    /// finish together share one durable commit.
    commits: Arc<GroupCommit>,
    providers: BTreeMap<ProviderName, ProviderEntry>,
    refresh: RefreshConfig,
    scheduler: SchedulerConfig,
    clock: Arc<dyn Clock>,
    flights: Arc<Flights<ConnectionKey, RefreshOutcome>>,
    cache: RwLock<HashMap<ConnectionKey, CachedToken>>,
    /// Owner id of this instance's database leases.
    instance_id: String,
    /// Wakes the scheduler loop when the schedule changes.
    wakeup: Wakeup,
    /// Until when the scheduler loop sleeps (unix seconds), or [`AWAKE`].
    scheduler_sleeps_until: AtomicI64,
    /// Signalled on every change the store reports (callers waiting for another
    /// instance's refresh look again at once).
    changed: tokio::sync::Notify,
    /// The newest versions the store reported for recently changed connections: a read
    /// older than that is not cached.
    reported: std::sync::Mutex<Reported>,
    limiters: RateLimiters,
}

/// What started a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A caller found the token inside the threshold; skip if someone already refreshed.
    OnDemand,
    /// An explicit request: refresh whatever the expiry.
    Forced,
    /// The scheduler claimed it; skip if it is no longer due.
    Scheduled,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Forced => "forced",
            Self::Scheduled => "scheduled",
        }
    }
}

/// The token broker. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Warden {
    inner: Arc<Inner>,
}

impl Warden {
    /// Starts building a warden over `store`.
    pub fn builder(store: Arc<dyn Store>) -> WardenBuilder {
        WardenBuilder {
            store,
            providers: Vec::new(),
            refresh: RefreshConfig::default(),
            breaker: BreakerConfig::default(),
            scheduler: SchedulerConfig::default(),
            clock: Arc::new(SystemClock),
            instance_id: None,
        }
    }

    /// A valid access token for a user's connection, refreshed first when needed.
    pub async fn get_access_token(
        &self,
        user_id: &str,
        provider: &str,
        account_id: &str,
    ) -> Result<AccessTokenGrant, Error> {
        let key = ConnectionKey::parse(user_id, provider, account_id)
            .map_err(|e| count_error(Error::new(ErrorCode::InvalidRequest, e.to_string())))?;
        self.access_token(&key).await
    }

    /// [`Warden::get_access_token`] for a parsed key.
    pub async fn access_token(&self, key: &ConnectionKey) -> Result<AccessTokenGrant, Error> {
        let inner = &self.inner;
        if let Some(grant) = inner.cached(key) {
            metrics::counter!(m::TOKEN_REQUESTS_TOTAL, "outcome" => "fresh").increment(1);
            return Ok(grant);
        }
        let result = self.access_token_slow(key).await;
        let outcome = match &result {
            Ok((_, outcome)) => *outcome,
            Err(_) => "error",
        };
        metrics::counter!(m::TOKEN_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
        result.map(|(grant, _)| grant).map_err(count_error)
    }

    async fn access_token_slow(
        &self,
        key: &ConnectionKey,
    ) -> Result<(AccessTokenGrant, &'static str), Error> {
        let inner = &self.inner;
        // While the provider is down, answer from memory: a still-valid token, or the
        // breaker's error. No store read, so these answers stay fast under load.
        if let Some(open) = inner.open_breaker(key)
            && let Some(grant) = inner.trusted(key)
        {
            let now = inner.clock.now();
            return match grant.expires_at {
                Some(at) if at <= now => Err(open),
                _ => Ok((grant, "degraded")),
            };
        }
        let conn = inner.load(key).await?;
        inner.remember(&conn);
        let now = inner.clock.now();
        let meta = &conn.meta;
        let expired = meta.expires_at.is_some_and(|at| at <= now);
        if conn.tokens.access_token.is_empty() {
            return Err(not_found_like(
                ErrorCode::NoAccessToken,
                "no access token stored",
                key,
            ));
        }
        if meta.status == ConnectionStatus::NeedsReconnect {
            // Refreshing again would only repeat the permanent failure; a still-valid token is
            // served until it expires.
            if expired {
                return Err(reconnect_error(&conn));
            }
            return Ok((grant_of(&conn), "degraded"));
        }
        let threshold = inner.refresh.threshold;
        if !should_refresh(meta.expires_at, meta.lifetime(), threshold, now) {
            return Ok((grant_of(&conn), "fresh"));
        }

        let remaining = meta.expires_at.map(|at| at - now);
        let blocking = BLOCKING_WINDOW.min(effective_threshold(meta.lifetime(), threshold) / 2);
        let must_wait = remaining.is_none_or(|r| r <= blocking);
        tracing::info!(
            provider = %key.provider, account_id = %key.account_id,
            expires_in_s = remaining.map(|r| r.whole_seconds()),
            threshold_s = threshold.as_secs(), wait = must_wait,
            "token needs refresh"
        );
        metrics::counter!(m::AUTO_REFRESH_TOTAL, "provider" => key.provider.to_string(),
            "trigger" => "on_demand")
        .increment(1);

        if !must_wait {
            // Still comfortably valid: hand it out now, refresh in the background, unless a
            // recent failure asks us to hold off.
            if !in_failure_cooldown(meta, now) {
                let this = self.clone();
                let key = key.clone();
                let policy = inner.refresh.retry;
                // Not fire-and-forget: the refresh itself runs in (and is owned by) its
                // single-flight slot; this task only starts it.
                tokio::spawn(async move {
                    let _ = this
                        .refresh_shared(&key, Trigger::OnDemand, policy, None)
                        .await;
                });
            }
            return Ok((grant_of(&conn), "fresh"));
        }

        // While the provider's breaker is open, answer at once: no single-flight slot, no
        // task, no lease.
        let outcome = match inner.open_breaker(key) {
            Some(open) => Err(open),
            None => {
                self.refresh_shared(key, Trigger::OnDemand, inner.refresh.retry, None)
                    .await
            }
        };
        match outcome {
            Ok(fresh) => Ok((grant_of(&fresh), "refreshed")),
            Err(error) => {
                // Graceful degradation: a token that has not expired is still usable.
                let now = inner.clock.now();
                if conn.meta.expires_at.is_some_and(|at| at > now) {
                    tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                        code = %error.code(), "refresh failed; serving the still-valid token");
                    return Ok((grant_of(&conn), "degraded"));
                }
                Err(expired_error(error))
            }
        }
    }

    /// Forces a refresh (joining one already in flight) and returns the updated connection.
    pub async fn refresh_token(
        &self,
        key: &ConnectionKey,
        options: RefreshOptions,
    ) -> Result<ConnectionMeta, Error> {
        let policy = options.apply(&self.inner.refresh.retry);
        policy
            .validate()
            .map_err(|e| count_error(Error::new(ErrorCode::InvalidRequest, e.to_string())))?;
        self.refresh_shared(key, Trigger::Forced, policy, None)
            .await
            .map(|conn| conn.meta.clone())
            .map_err(count_error)
    }

    async fn refresh_shared(
        &self,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
        claimed: Option<Connection>,
    ) -> RefreshOutcome {
        let this = self.clone();
        let task_key = key.clone();
        let (out, _joined) = self
            .inner
            .flights
            .run(key.clone(), move || async move {
                this.inner
                    .refresh_now(&task_key, trigger, policy, claimed)
                    .await
            })
            .await;
        out.unwrap_or_else(|| {
            Err(Error::new(
                ErrorCode::GetTokenError,
                "refresh task failed unexpectedly",
            ))
        })
    }

    /// Creates or replaces a connection from tokens the application holds.
    pub async fn import(
        &self,
        key: ConnectionKey,
        request: ImportRequest,
    ) -> Result<(ConnectionMeta, PutOutcome), Error> {
        let inner = &self.inner;
        if !inner.providers.contains_key(&key.provider) {
            return Err(count_error(unknown_provider(&key.provider)));
        }
        if request.access_token.is_empty() {
            return Err(count_error(Error::new(
                ErrorCode::InvalidRequest,
                "access_token must not be empty",
            )));
        }
        let now = inner.clock.now();
        let conn = Connection {
            meta: ConnectionMeta {
                key: key.clone(),
                token_type: request.token_type.unwrap_or_else(|| "Bearer".to_owned()),
                has_refresh_token: request.refresh_token.is_some(),
                expires_at: request.expires_at,
                refresh_expires_at: request.refresh_expires_at,
                issued_at: request.issued_at,
                scopes: request.scopes,
                metadata: request.metadata,
                status: ConnectionStatus::Active,
                last_refreshed_at: None,
                consecutive_failures: 0,
                last_error: None,
                created_at: now,
                updated_at: now,
                next_refresh_at: None,
                version: 0,
            },
            tokens: Tokens {
                access_token: request.access_token,
                refresh_token: request.refresh_token,
            },
        };
        let mut conn = conn;
        conn.meta.next_refresh_at = plan_after_success(
            &conn.meta,
            &inner.scheduler,
            inner.refresh.threshold,
            now,
            jitter_unit(),
        );
        let result = inner
            .store
            .put(&conn)
            .await
            .map_err(|e| count_error(store_error(e, &key)));
        inner.forget(&key);
        inner.wakeup.notify_one();
        result
    }

    /// A connection's metadata (no secrets).
    pub async fn connection(&self, key: &ConnectionKey) -> Result<ConnectionMeta, Error> {
        self.inner
            .load(key)
            .await
            .map(|c| c.meta)
            .map_err(count_error)
    }

    /// Deletes a connection, revoking it upstream where the provider supports it (best
    /// effort). False when there was none.
    pub async fn delete(&self, key: &ConnectionKey) -> Result<bool, Error> {
        let inner = &self.inner;
        let existing = inner.store.get(key).await;
        if let (Ok(Some(conn)), Some(entry)) = (&existing, inner.providers.get(&key.provider))
            && let Err(failure) = entry.provider.revoke(conn).await
        {
            tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                error = %failure, "upstream revocation failed; deleting anyway");
        }
        let deleted = inner
            .store
            .delete(key)
            .await
            .map_err(|e| count_error(store_error(e, key)));
        inner.forget(key);
        deleted
    }

    /// Lists connections.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, Error> {
        self.inner.store.list(query).await.map_err(|e| {
            count_error(match e {
                StoreError::BadCursor => {
                    Error::new(ErrorCode::InvalidRequest, "cursor is not valid")
                }
                other => Error::new(ErrorCode::GetTokenError, "listing connections failed")
                    .with_source(other),
            })
        })
    }

    /// The configured providers, sorted by name.
    pub fn providers(&self) -> Vec<ProviderInfo> {
        self.inner
            .providers
            .values()
            .map(|e| e.provider.info())
            .collect()
    }

    /// The provider called `name`, if configured.
    pub fn provider(&self, name: &ProviderName) -> Option<&Arc<dyn Provider>> {
        self.inner.providers.get(name).map(|e| &e.provider)
    }

    /// A provider's breaker state, if the provider is configured.
    pub fn breaker_state(&self, provider: &ProviderName) -> Option<BreakerState> {
        self.inner
            .providers
            .get(provider)
            .map(|e| e.breaker.state())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The refresh settings in force.
    pub fn refresh_config(&self) -> &RefreshConfig {
        &self.inner.refresh
    }

    /// Runs the proactive refresh scheduler until `shutdown` completes: claims due
    /// connections in batches and refreshes them through the same path as on-demand
    /// refreshes, at most `scheduler.concurrency` at a time. Sleeps until the next due time,
    /// a change, or `scheduler.max_idle`. Errors are logged and backed off; it never returns
    /// early.
    pub async fn run_scheduler(&self, shutdown: impl std::future::Future<Output = ()>) {
        let inner = &self.inner;
        let config = &inner.scheduler;
        let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        let claim_low_water = u32::try_from(config.concurrency / 4)
            .unwrap_or(u32::MAX)
            .max(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stats_at: Option<Instant> = None;
        tracing::info!(instance = %inner.instance_id, "refresh scheduler started");
        loop {
            while tasks.try_join_next().is_some() {}
            let now = inner.clock.now();
            if stats_at.is_none_or(|at| at.elapsed() >= QUEUE_STATS_EVERY) {
                stats_at = Some(Instant::now());
                self.update_queue_gauges(now).await;
            }
            // Claim only what can start now: a claimed row is leased, and a lease held by a
            // row waiting for a permit would block other instances (and, after a crash, this
            // one) for nothing.
            // While refreshes run, wait until a quarter of the permits are free before
            // claiming again: every claim is a durable commit, and claiming one row each
            // time a refresh finishes would double the commits per refresh.
            let free = u32::try_from(permits.available_permits()).unwrap_or(u32::MAX);
            if free == 0 || (!tasks.is_empty() && free < claim_low_water) {
                tokio::select! {
                    Some(_) = tasks.join_next() => continue,
                    () = &mut shutdown => break,
                }
            }
            let limit = config.batch_size.min(free);
            let lease_until = now + inner.refresh.lease_ttl;
            let claimed = match inner
                .store
                .claim_due(now, limit, &inner.instance_id, lease_until)
                .await
            {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::error!(error = %e, "scheduler could not claim due connections");
                    tokio::select! {
                        () = tokio::time::sleep(config.max_idle.min(Duration::from_secs(5))) => continue,
                        () = &mut shutdown => break,
                    }
                }
            };
            let full_batch = claimed.len() >= limit as usize;
            for claim in claimed {
                let permit = tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => p,
                    () = &mut shutdown => { tasks.shutdown().await; return; }
                };
                let Ok(permit) = permit else { break };
                let this = self.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    this.scheduled_refresh(claim).await;
                });
            }
            if full_batch {
                continue;
            }
            let next = inner.store.next_due().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "scheduler could not read the next due time");
                None
            });
            let sleep_for = next.map_or(config.max_idle, |at| {
                Duration::try_from(at - inner.clock.now())
                    .unwrap_or(Duration::ZERO)
                    .min(config.max_idle)
            });
            // Due work that we could not claim is being refreshed (by us or another
            // instance): wait for a refresh to finish instead of polling.
            let sleep_for = if sleep_for.is_zero() {
                IDLE_RECHECK
            } else {
                sleep_for
            };
            let wake_at = inner.clock.now() + sleep_for;
            inner
                .scheduler_sleeps_until
                .store(wake_at.unix_timestamp(), Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(sleep_for) => {}
                () = inner.wakeup.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
            inner.scheduler_sleeps_until.store(AWAKE, Ordering::Relaxed);
        }
        // Let refreshes in flight finish (they may hold rotated tokens to commit, and their
        // leases would otherwise block the connection until they lapse), within a bound.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SCHEDULER_DRAIN, drain).await.is_err() {
            tracing::warn!("scheduled refreshes still running at shutdown were abandoned");
        }
        tasks.shutdown().await;
        tracing::info!("refresh scheduler stopped");
    }

    async fn scheduled_refresh(&self, claim: Claimed) {
        let key = &claim.key;
        // A row the claim could not read is read again by the refresh, which reports why.
        let claimed = claim.connection.ok();
        metrics::counter!(m::AUTO_REFRESH_TOTAL, "provider" => key.provider.to_string(),
            "trigger" => "scheduled")
        .increment(1);
        let policy = self.inner.refresh.retry;
        if let Err(e) = self
            .refresh_shared(key, Trigger::Scheduled, policy, claimed)
            .await
        {
            if e.code() == ErrorCode::UnknownProvider {
                // The provider was removed from the configuration: look again much later.
                let at = self.inner.clock.now() + self.inner.scheduler.max_retry_delay;
                self.inner.reschedule(key, at).await;
            }
            tracing::debug!(provider = %key.provider, account_id = %key.account_id,
                code = %e.code(), "scheduled refresh did not complete");
        }
    }

    async fn update_queue_gauges(&self, now: OffsetDateTime) {
        match self.inner.store.queue_stats(now).await {
            Ok(stats) => {
                #[allow(clippy::cast_precision_loss)]
                for (state, n) in [
                    ("scheduled", stats.scheduled),
                    ("due", stats.due_now),
                    ("retrying", stats.retrying),
                ] {
                    metrics::gauge!(m::REFRESH_QUEUE, "state" => state).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read refresh queue sizes"),
        }
    }

    /// Tokens currently held in the in-memory cache.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache_read().len()
    }

    /// This instance's lease owner id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Updates the `connections{status}` gauge from the store.
    pub async fn update_connection_gauges(&self) -> Result<(), Error> {
        let counts = self.inner.store.count_by_status().await.map_err(|e| {
            Error::new(ErrorCode::GetTokenError, "counting connections failed").with_source(e)
        })?;
        for status in [ConnectionStatus::Active, ConnectionStatus::NeedsReconnect] {
            let n = counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(m::CONNECTIONS, "status" => status.as_str()).set(n as f64);
        }
        Ok(())
    }
}

impl Inner {
    /// The fail-fast error while `key`'s provider has its breaker open.
    fn open_breaker(&self, key: &ConnectionKey) -> Option<Error> {
        match self.providers.get(&key.provider)?.breaker.state() {
            BreakerState::Open { retry_after } if !retry_after.is_zero() => {
                Some(circuit_open_error(key, retry_after))
            }
            _ => None,
        }
    }

    /// The cached grant while it is fresh (the fast path).
    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnectionKey, CachedToken>> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnectionKey, CachedToken>> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn reported(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.reported.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, key: &ConnectionKey) -> Option<AccessTokenGrant> {
        self.cached_until(key, |e| e.fresh_until)
    }

    /// The cached grant while it still reflects the store, fresh or not.
    fn trusted(&self, key: &ConnectionKey) -> Option<AccessTokenGrant> {
        self.cached_until(key, |e| e.trusted_until)
    }

    fn cached_until(
        &self,
        key: &ConnectionKey,
        deadline: fn(&CachedToken) -> Instant,
    ) -> Option<AccessTokenGrant> {
        let cache = self.cache_read();
        let entry = cache.get(key)?;
        (Instant::now() < deadline(entry)).then(|| entry.grant.clone())
    }

    fn remember(&self, conn: &Connection) {
        if self.refresh.cache_ttl.is_zero() || conn.meta.status != ConnectionStatus::Active {
            return;
        }
        // A read that raced a write elsewhere: the newer version was reported while this
        // one travelled back from the store. Caching it would hide the new one (and a token
        // the provider may already have revoked) for `cache_ttl`.
        let newest = self.reported().newest(conn.key());
        if newest.is_some_and(|version| version > conn.meta.version) {
            return;
        }
        let ttl = self.refresh.cache_ttl;
        let mut fresh_for = ttl;
        if let Some(expires_at) = conn.meta.expires_at {
            let threshold = effective_threshold(conn.meta.lifetime(), self.refresh.threshold);
            let until_threshold = expires_at - threshold - self.clock.now();
            fresh_for = Duration::try_from(until_threshold)
                .unwrap_or(Duration::ZERO)
                .min(ttl);
        }
        let now = Instant::now();
        let entry = CachedToken {
            grant: grant_of(conn),
            version: conn.meta.version,
            fresh_until: now + fresh_for,
            trusted_until: now + ttl,
        };
        let mut cache = self.cache_write();
        let max = self.refresh.cache_max_entries;
        if cache.len() >= max && !cache.contains_key(conn.key()) {
            // Bounded memory with a million connections: drop what is no longer trusted,
            // and if that is not enough, start over (the store has everything).
            cache.retain(|_, e| e.trusted_until > now);
            if cache.len() >= max {
                cache.clear();
            }
        }
        cache.insert(conn.key().clone(), entry);
    }

    /// Records a reported change (see `reported`).
    fn note_reported(&self, key: &ConnectionKey, version: Option<i64>) {
        self.reported()
            .note(key, version.unwrap_or(i64::MAX), Instant::now());
    }

    /// Forgets `key` unless the cache already holds `version` of it (a change report for a
    /// write this instance made and cached).
    fn forget_unless_version(&self, key: &ConnectionKey, version: Option<i64>) {
        let mut cache = self.cache_write();
        if cache
            .get(key)
            .is_none_or(|entry| Some(entry.version) != version)
        {
            cache.remove(key);
        }
    }

    fn forget(&self, key: &ConnectionKey) {
        self.cache_write().remove(key);
    }

    async fn load(&self, key: &ConnectionKey) -> Result<Connection, Error> {
        match self.store.get(key).await {
            Ok(Some(conn)) => Ok(conn),
            Ok(None) => {
                self.forget(key);
                Err(not_found_like(
                    ErrorCode::AccountNotFound,
                    "no such connection for this user",
                    key,
                ))
            }
            Err(e) => Err(store_error(e, key)),
        }
    }

    /// One refresh of one connection, run inside its single-flight slot. Across instances,
    /// only the holder of the connection's database lease calls the provider; the others
    /// wait for its result.
    async fn refresh_now(
        &self,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
        claimed: Option<Connection>,
    ) -> RefreshOutcome {
        let entry = self
            .providers
            .get(&key.provider)
            .ok_or_else(|| unknown_provider(&key.provider))?;
        // Fail fast while the breaker is open, before touching the database.
        if let BreakerState::Open { retry_after } = entry.breaker.state()
            && !retry_after.is_zero()
        {
            if trigger == Trigger::Scheduled {
                self.reschedule(key, self.clock.now() + retry_after).await;
            }
            return Err(circuit_open_error(key, retry_after));
        }
        let lease_ttl = self.refresh.lease_ttl;
        let deadline = Instant::now() + self.refresh.worst_case(&policy).min(MAX_WAIT_FOR_OTHER);
        let mut seen_version = None;
        loop {
            // Armed before looking, so a change reported while we look is not missed.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let now = self.clock.now();
            // A scheduled refresh starts right after its claim, which leased the row to us.
            let leased = trigger == Trigger::Scheduled
                || self
                    .store
                    .try_lease(key, &self.instance_id, now, now + lease_ttl)
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound => not_found_like(
                            ErrorCode::AccountNotFound,
                            "no such connection for this user",
                            key,
                        ),
                        other => store_error(other, key),
                    })?;
            if leased {
                // Set when the refresh's own commit released the lease, which saves a write.
                let released = AtomicBool::new(false);
                // Renew the lease while the refresh works, so it can stay short and a crashed
                // instance holds the connection for at most `lease_ttl`.
                // Renewal never takes a free lease: one racing the commit that released it
                // must not hold the connection again for a whole lease.
                let renew = async {
                    loop {
                        tokio::time::sleep(lease_ttl / 3).await;
                        let until = self.clock.now() + lease_ttl;
                        let renewed = self.store.renew_lease(key, &self.instance_id, until).await;
                        if !matches!(renewed, Ok(true)) && !released.load(Ordering::Relaxed) {
                            tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                                "could not renew the refresh lease");
                        }
                    }
                };
                let result = tokio::select! {
                    biased;
                    result = self.refresh_leased(entry, key, trigger, policy, &released, claimed) => result,
                    () = renew => unreachable!("the renewal loop never ends"),
                };
                if !released.load(Ordering::Relaxed)
                    && let Err(e) = self.store.release_lease(key, &self.instance_id).await
                {
                    tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                        error = %e, "could not release the refresh lease; it will expire");
                }
                return result;
            }
            // Another instance is refreshing: wait for its result rather than refresh twice.
            let conn = self.load(key).await?;
            match seen_version {
                None => seen_version = Some(conn.meta.version),
                Some(v) if v != conn.meta.version => return self.outcome_of_other(conn),
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorCode::TokenRefreshError,
                    "timed out waiting for another instance's refresh",
                )
                .with_retry_after(Some(Duration::from_secs(1))));
            }
            // The owner's commit is reported as a change where the store reports them;
            // polling covers the rest.
            tokio::select! {
                () = tokio::time::sleep(LEASE_POLL) => {}
                () = changed => {}
            }
        }
    }

    /// What a refresh finished by another instance means for this caller.
    fn outcome_of_other(&self, conn: Connection) -> RefreshOutcome {
        let meta = &conn.meta;
        if meta.status == ConnectionStatus::NeedsReconnect {
            let e = reconnect_error(&conn);
            if meta.expires_at.is_some_and(|at| at <= self.clock.now()) {
                return Err(e);
            }
            return Err(Error::new(ErrorCode::TokenRefreshError, e.message())
                .with_reconnect(true)
                .with_meta(e.meta().clone()));
        }
        if let Some(last) = &meta.last_error
            && meta.last_refreshed_at.is_none_or(|ok_at| last.at > ok_at)
        {
            let failure = Some(FailureClass::Transient);
            return Err(
                Error::new(ErrorCode::TokenRefreshError, last.message.clone())
                    .with_meta(key_meta(conn.key(), failure)),
            );
        }
        self.remember(&conn);
        Ok(Arc::new(conn))
    }

    /// The refresh proper, with this instance holding the connection's lease.
    async fn refresh_leased(
        &self,
        entry: &ProviderEntry,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
        released: &AtomicBool,
        claimed: Option<Connection>,
    ) -> RefreshOutcome {
        // Read under the lease: another refresh may have finished since the caller looked.
        // A scheduled refresh has the row its claim read while taking the lease.
        let conn = match claimed {
            Some(conn) => conn,
            None => self.load(key).await?,
        };
        let now = self.clock.now();
        let meta = &conn.meta;
        let skip = match trigger {
            Trigger::OnDemand => {
                meta.status == ConnectionStatus::Active
                    && !should_refresh(
                        meta.expires_at,
                        meta.lifetime(),
                        self.refresh.threshold,
                        now,
                    )
            }
            Trigger::Scheduled => {
                meta.status != ConnectionStatus::Active
                    || meta.next_refresh_at.is_none_or(|at| at > now)
            }
            Trigger::Forced => false,
        };
        if skip {
            return Ok(Arc::new(conn));
        }
        let provider_label = key.provider.to_string();

        if let Err(reason) = entry.provider.check_refreshable(&conn, now) {
            return self.not_refreshable(conn, reason, trigger, now).await;
        }

        tracing::info!(provider = %key.provider, account_id = %key.account_id,
            trigger = trigger.as_str(), max_retries = policy.max_retries, "token refresh started");
        let started = Instant::now();
        let (result, attempts) = self.call_with_retries(entry, &conn, policy).await;
        let duration = started.elapsed();
        metrics::histogram!(m::REFRESH_DURATION_SECONDS, "provider" => provider_label.clone())
            .record(duration.as_secs_f64());
        metrics::histogram!(m::REFRESH_ATTEMPTS, "provider" => provider_label.clone())
            .record(f64::from(attempts));

        let meta = ErrorMeta {
            provider: Some(provider_label.clone()),
            account_id: Some(key.account_id.to_string()),
            attempts,
            duration: Some(duration),
            failure: None,
            provider_error: None,
        };
        match result {
            Ok(response) => {
                let committed = self.commit_success(conn, response, released).await;
                let outcome = if committed.is_ok() {
                    "success"
                } else {
                    "commit_failed"
                };
                metrics::counter!(m::REFRESH_TOTAL, "provider" => provider_label, "outcome" => outcome)
                    .increment(1);
                match committed {
                    Ok(fresh) => {
                        tracing::info!(provider = %key.provider, account_id = %key.account_id,
                            attempts, duration_ms = duration_ms(duration), "token refresh completed");
                        Ok(fresh)
                    }
                    Err(error) => Err(error.with_meta(meta)),
                }
            }
            Err(failure) => {
                metrics::counter!(m::REFRESH_TOTAL, "provider" => provider_label,
                    "outcome" => failure.class.as_str())
                .increment(1);
                let mut error = failure_error(&failure, meta, self.refresh.max_retry_after);
                // Whatever asked (a token request or a forced refresh), a grant refused for
                // good on a token that has expired is `TOKEN_EXPIRED`.
                if conn.meta.expires_at.is_some_and(|at| at <= now) {
                    error = expired_error(error);
                }
                tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                    attempts, duration_ms = duration_ms(duration), class = failure.class.as_str(),
                    code = %error.code(), error = %failure, "token refresh failed");
                if failure.class == FailureClass::CircuitOpen && attempts == 0 {
                    // Not an attempt: the provider was not called. Scheduled work is deferred.
                    if trigger == Trigger::Scheduled {
                        let wait = failure
                            .retry_after
                            .unwrap_or(self.scheduler.initial_retry_delay);
                        self.reschedule(key, now + wait).await;
                    }
                } else {
                    let next = if failure.class == FailureClass::Permanent {
                        Next::Reconnect
                    } else {
                        Next::Backoff
                    };
                    self.record_failure(conn, &error, next).await;
                }
                Err(error)
            }
        }
    }

    /// Calls the provider, retrying transient failures with backoff. Returns the outcome and
    /// the number of upstream attempts made.
    async fn call_with_retries(
        &self,
        entry: &ProviderEntry,
        conn: &Connection,
        policy: RetryPolicy,
    ) -> (Result<TokenResponse, RefreshFailure>, u32) {
        let key = conn.key();
        let mut attempts = 0u32;
        loop {
            self.limiters.acquire(key.provider.as_str()).await;
            let permit = match entry.breaker.try_acquire() {
                Ok(permit) => permit,
                Err(retry_after) => {
                    let failure = RefreshFailure::new(
                        FailureClass::CircuitOpen,
                        FailureKind::Transport {
                            message: "circuit breaker open".into(),
                            timeout: false,
                        },
                    )
                    .with_retry_after(Some(retry_after));
                    return (Err(failure), attempts);
                }
            };
            attempts += 1;
            if attempts > 1 {
                tracing::info!(provider = %key.provider, account_id = %key.account_id,
                    attempt = attempts, max_retries = policy.max_retries, "retrying token refresh");
            }
            let attempt =
                tokio::time::timeout(self.refresh.attempt_timeout, entry.provider.refresh(conn));
            let result = attempt.await.unwrap_or_else(|_| {
                Err(RefreshFailure::transport(
                    "attempt exceeded refresh.attempt_timeout",
                    true,
                ))
            });
            match result {
                Ok(response) => {
                    permit.record(Health::Up);
                    return (Ok(response), attempts);
                }
                Err(failure) => {
                    let transient = failure.class == FailureClass::Transient;
                    permit.record(if transient { Health::Down } else { Health::Up });
                    if !transient || attempts > policy.max_retries {
                        return (Err(failure), attempts);
                    }
                    let delay = policy.next_delay(
                        attempts - 1,
                        failure.retry_after,
                        self.refresh.max_retry_after,
                        jitter_unit(),
                    );
                    tracing::info!(provider = %key.provider, account_id = %key.account_id,
                        attempt = attempts, delay_ms = duration_ms(delay),
                        source = if failure.retry_after.is_some() { "retry_after" } else { "backoff" },
                        error = %failure, "refresh attempt failed; backing off");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn commit_success(
        &self,
        mut conn: Connection,
        response: TokenResponse,
        released: &AtomicBool,
    ) -> RefreshOutcome {
        let now = self.clock.now();
        let used_refresh_token = conn.tokens.refresh_token.clone();
        apply_response(&mut conn, response, now);
        conn.meta.next_refresh_at = plan_after_success(
            &conn.meta,
            &self.scheduler,
            self.refresh.threshold,
            now,
            jitter_unit(),
        );
        // Compare-and-swap: a concurrent import or delete wins over this refresh. A
        // database error is retried a few times (the lease is still ours and renewed): the
        // provider has already rotated the grant, and this commit is its only copy.
        let mut conflicts = 0;
        let mut failed_writes = 0;
        while conflicts < 3 {
            match self.commits.update(&conn).await {
                Ok(meta) => {
                    // `update` released the lease in the same statement.
                    released.store(true, Ordering::Relaxed);
                    conn.meta = meta;
                    self.remember(&conn);
                    return Ok(Arc::new(conn));
                }
                Err(StoreError::Conflict) => {
                    let current = self.load(conn.key()).await?;
                    let same_grant = match (&current.tokens.refresh_token, &used_refresh_token) {
                        (Some(a), Some(b)) => a.ct_eq(b),
                        (None, None) => {
                            current.tokens.access_token.ct_eq(&conn.tokens.access_token)
                                || current.meta.expires_at == conn.meta.expires_at
                        }
                        _ => false,
                    };
                    if !same_grant {
                        tracing::warn!(provider = %conn.key().provider,
                            account_id = %conn.key().account_id,
                            "connection was replaced during refresh; keeping the replacement");
                        self.forget(conn.key());
                        return Ok(Arc::new(current));
                    }
                    conn.meta.version = current.meta.version;
                    conflicts += 1;
                }
                Err(StoreError::Database(message)) if failed_writes < COMMIT_RETRY_DELAYS.len() => {
                    let wait = COMMIT_RETRY_DELAYS[failed_writes];
                    failed_writes += 1;
                    tracing::warn!(provider = %conn.key().provider,
                        account_id = %conn.key().account_id, error = %message,
                        retry_in_ms = duration_ms(wait),
                        "could not store the refreshed tokens; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!(provider = %conn.key().provider,
                        account_id = %conn.key().account_id, error = %e,
                        "the refreshed tokens could not be stored; a rotated grant is lost");
                    return Err(store_error(e, conn.key()));
                }
            }
        }
        Err(Error::new(
            ErrorCode::GetTokenError,
            "connection kept changing during refresh",
        ))
    }

    /// Moves a connection's scheduled refresh to `at` without counting a failure.
    async fn reschedule(&self, key: &ConnectionKey, at: OffsetDateTime) {
        let Ok(mut conn) = self.load(key).await else {
            return;
        };
        conn.meta.next_refresh_at = Some(at);
        if let Err(e) = self.commits.update(&conn).await
            && !matches!(e, StoreError::Conflict | StoreError::NotFound)
        {
            tracing::warn!(provider = %key.provider, account_id = %key.account_id, error = %e,
                "could not reschedule the refresh");
        }
    }

    async fn record_failure(&self, mut conn: Connection, error: &Error, next: Next) {
        let now = self.clock.now();
        conn.meta.consecutive_failures = conn.meta.consecutive_failures.saturating_add(1);
        conn.meta.last_error = Some(LastError {
            code: error.code().as_str().to_owned(),
            message: error.message().to_owned(),
            at: now,
        });
        conn.meta.updated_at = now;
        let meta = &mut conn.meta;
        // Transient failures keep retrying until both tokens are past expiry.
        let both_expired = meta.expires_at.is_some_and(|at| at <= now)
            && meta.refresh_expires_at.is_some_and(|at| at <= now);
        match next {
            Next::Reconnect => {
                meta.status = ConnectionStatus::NeedsReconnect;
                meta.next_refresh_at = None;
            }
            Next::Backoff if both_expired => {
                meta.status = ConnectionStatus::NeedsReconnect;
                meta.next_refresh_at = None;
            }
            Next::Backoff => {
                meta.next_refresh_at = Some(plan_after_failure(
                    meta.consecutive_failures,
                    &self.scheduler,
                    now,
                    jitter_unit(),
                ));
            }
            Next::At(at) => meta.next_refresh_at = Some(at),
        }
        let key = conn.key().clone();
        match self.commits.update(&conn).await {
            Ok(_) | Err(StoreError::Conflict | StoreError::NotFound) => {}
            Err(e) => tracing::error!(provider = %key.provider, account_id = %key.account_id,
                error = %e, "could not record the refresh failure"),
        }
        self.forget(&key);
    }

    async fn not_refreshable(
        &self,
        conn: Connection,
        reason: NotRefreshable,
        trigger: Trigger,
        now: OffsetDateTime,
    ) -> RefreshOutcome {
        let key = conn.key().clone();
        let meta = key_meta(&key, None);
        let (error, next) = match reason {
            NotRefreshable::NoRefreshToken => (
                Error::new(
                    ErrorCode::NoRefreshToken,
                    "refresh needed but no refresh token is stored",
                ),
                // Nothing to retry; look again when it expires, to mark it for reconnect.
                match conn.meta.expires_at {
                    Some(at) if at > now => Next::At(at),
                    _ => Next::Reconnect,
                },
            ),
            NotRefreshable::Expired => (
                Error::new(
                    ErrorCode::TokenExpired,
                    "token expired and the provider cannot refresh it",
                ),
                Next::Reconnect,
            ),
            NotRefreshable::TooYoung { ready_at } => {
                let wait = Duration::try_from(ready_at - now).unwrap_or(Duration::ZERO);
                if trigger == Trigger::Scheduled {
                    self.reschedule(&key, ready_at).await;
                }
                return Err(Error::new(
                    ErrorCode::RefreshTooEarly,
                    "the provider does not allow refreshing this token yet",
                )
                .with_retry_after(Some(wait))
                .with_meta(meta));
            }
        };
        metrics::counter!(m::REFRESH_TOTAL, "provider" => key.provider.to_string(),
            "outcome" => "not_refreshable")
        .increment(1);
        let mut meta = meta;
        meta.failure = Some(FailureClass::Permanent);
        let error = error.with_meta(meta);
        tracing::warn!(provider = %key.provider, account_id = %key.account_id,
            code = %error.code(), "token cannot be refreshed");
        self.record_failure(conn, &error, next).await;
        Err(error)
    }
}

/// What a failure does to the schedule.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// The user must reconnect: stop scheduling.
    Reconnect,
    /// Retry with the queue's exponential backoff.
    Backoff,
    /// Look again at this time.
    At(OffsetDateTime),
}

fn circuit_open_error(key: &ConnectionKey, retry_after: Duration) -> Error {
    Error::new(
        ErrorCode::TokenRefreshError,
        "provider is failing; its circuit breaker is open",
    )
    .with_retry_after(Some(retry_after))
    .with_meta(key_meta(key, Some(FailureClass::CircuitOpen)))
}

/// Merges a refresh answer into the connection (RFC 6749 §6: keep the old refresh token when
/// none comes back).
fn apply_response(conn: &mut Connection, response: TokenResponse, now: OffsetDateTime) {
    let rotated = response.refresh_token.is_some();
    conn.tokens.access_token = response.access_token;
    if let Some(rt) = response.refresh_token {
        conn.tokens.refresh_token = Some(rt);
    }
    let meta = &mut conn.meta;
    meta.has_refresh_token = conn.tokens.refresh_token.is_some();
    meta.expires_at = response.expires_in.map(|d| now + d);
    if let Some(d) = response.refresh_expires_in {
        meta.refresh_expires_at = Some(now + d);
    } else if rotated {
        meta.refresh_expires_at = None;
    }
    if let Some(token_type) = response.token_type.filter(|t| !t.is_empty()) {
        meta.token_type = token_type;
    }
    if let Some(scopes) = response.scopes {
        meta.scopes = scopes;
    }
    meta.issued_at = Some(now);
    meta.last_refreshed_at = Some(now);
    meta.updated_at = now;
    meta.consecutive_failures = 0;
    meta.last_error = None;
    meta.status = ConnectionStatus::Active;
}

fn grant_of(conn: &Connection) -> AccessTokenGrant {
    AccessTokenGrant {
        access_token: conn.tokens.access_token.clone(),
        token_type: Arc::from(conn.meta.token_type.as_str()),
        expires_at: conn.meta.expires_at,
    }
}

fn in_failure_cooldown(meta: &ConnectionMeta, now: OffsetDateTime) -> bool {
    let Some(last) = &meta.last_error else {
        return false;
    };
    let exp = meta.consecutive_failures.min(16);
    let cooldown = Duration::from_secs(1u64 << exp).min(FAILURE_COOLDOWN_MAX);
    now - last.at < cooldown
}

fn failure_error(
    failure: &RefreshFailure,
    mut meta: ErrorMeta,
    max_retry_after: Duration,
) -> Error {
    meta.failure = Some(failure.class);
    meta.provider_error = failure.provider_error().map(str::to_owned);
    let retry_after = failure.retry_after.map(|d| d.min(max_retry_after));
    let (code, reconnect, message) = match failure.class {
        FailureClass::Permanent => (
            ErrorCode::TokenRefreshError,
            true,
            format!("refresh failed permanently; the user must reconnect: {failure}"),
        ),
        FailureClass::Configuration => (
            ErrorCode::TokenRefreshError,
            false,
            format!("refresh failed because of a provider configuration problem: {failure}"),
        ),
        FailureClass::CircuitOpen => (
            ErrorCode::TokenRefreshError,
            false,
            "provider is failing; its circuit breaker is open".to_owned(),
        ),
        FailureClass::Transient => (
            ErrorCode::TokenRefreshError,
            false,
            format!("refresh failed after {} attempts: {failure}", meta.attempts),
        ),
    };
    Error::new(code, message)
        .with_reconnect(reconnect)
        .with_retry_after(retry_after)
        .with_meta(meta)
}

/// On the token path, a permanent failure of an expired token is `TOKEN_EXPIRED`.
fn expired_error(error: Error) -> Error {
    if error.code() == ErrorCode::TokenRefreshError
        && error.meta().failure == Some(FailureClass::Permanent)
    {
        let meta = error.meta().clone();
        return Error::new(
            ErrorCode::TokenExpired,
            format!(
                "token expired and could not be refreshed: {}",
                error.message()
            ),
        )
        .with_meta(meta);
    }
    error
}

fn reconnect_error(conn: &Connection) -> Error {
    let reason = conn
        .meta
        .last_error
        .as_ref()
        .map_or("", |e| e.message.as_str());
    Error::new(
        ErrorCode::TokenExpired,
        format!("token expired and the connection needs to be reconnected ({reason})"),
    )
    .with_meta(key_meta(conn.key(), Some(FailureClass::Permanent)))
}

fn not_found_like(code: ErrorCode, message: &str, key: &ConnectionKey) -> Error {
    Error::new(code, message).with_meta(key_meta(key, None))
}

/// Error metadata naming the connection's provider and account.
fn key_meta(key: &ConnectionKey, failure: Option<FailureClass>) -> ErrorMeta {
    ErrorMeta {
        provider: Some(key.provider.to_string()),
        account_id: Some(key.account_id.to_string()),
        failure,
        ..ErrorMeta::default()
    }
}

fn unknown_provider(name: &ProviderName) -> Error {
    Error::new(
        ErrorCode::UnknownProvider,
        format!("provider {name} is not configured"),
    )
}

fn store_error(error: StoreError, key: &ConnectionKey) -> Error {
    let message = match error {
        StoreError::Decrypt => "stored token could not be decrypted (is its key still configured?)",
        _ => "the token store failed",
    };
    not_found_like(ErrorCode::GetTokenError, message, key).with_source(error)
}

fn count_error(error: Error) -> Error {
    metrics::counter!(m::ERRORS_TOTAL, "code" => error.code().as_str()).increment(1);
    error
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{AWAKE, REPORTED_KEEP, Reported, wakes_scheduler};
    use crate::connection::ConnectionKey;

    #[test]
    fn reported_versions_keep_the_newest_for_one_to_two_windows() {
        let key = |a: &str| ConnectionKey::parse("u", "fake", a).expect("key");
        let t0 = tokio::time::Instant::now();
        let mut reported = Reported::default();
        reported.note(&key("a"), 5, t0);
        reported.note(&key("a"), 3, t0);
        assert_eq!(reported.newest(&key("a")), Some(5), "the newest wins");
        assert_eq!(reported.newest(&key("b")), None);
        // The next window keeps the last one's reports...
        reported.note(&key("b"), 1, t0 + REPORTED_KEEP);
        assert_eq!(reported.newest(&key("a")), Some(5));
        assert_eq!(reported.newest(&key("b")), Some(1));
        // ...and the one after forgets them.
        reported.note(&key("b"), 2, t0 + REPORTED_KEEP * 2);
        assert_eq!(reported.newest(&key("a")), None);
        assert_eq!(reported.newest(&key("b")), Some(2));
    }

    #[test]
    fn only_work_due_before_the_planned_wake_up_wakes_a_sleeping_scheduler() {
        let at = |s: i64| Some(time::OffsetDateTime::from_unix_timestamp(s).expect("time"));
        // Sleeping until 1000: an import due at 990 wakes it; a refresh that moved the next
        // run to 4600 does not, nor does a deletion (no next run).
        assert!(wakes_scheduler(at(990), 1000));
        assert!(!wakes_scheduler(at(4600), 1000));
        assert!(!wakes_scheduler(at(1000), 1000));
        assert!(!wakes_scheduler(None, 1000));
        // Awake: it looks at the schedule anyway.
        assert!(!wakes_scheduler(at(0), AWAKE));
    }
}
