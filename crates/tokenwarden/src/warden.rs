//! [`Warden`]: the paved-path API and its builder. A token request starts here: the cache
//! answers a fresh token (`cache`); otherwise the store is read and, when the token is inside
//! its refresh threshold, a refresh runs (`refresh::run`, then `refresh::lease`,
//! `refresh::retry`, `refresh::record`). A token still comfortably valid is returned at once
//! while its refresh runs in the background; a token that has expired (or is about to) waits
//! for it. The scheduler loop (`scheduler::runner`) refreshes ahead of expiry through the
//! same path.
//!
//! The warden owns every task it starts (refreshes, background refreshes, group commits,
//! change following) and drains them in [`Warden::shutdown`]. It owns no persistence (see
//! `store`) and no HTTP (see `provider`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{TokenCache, follow_changes};
use crate::clock::{Clock, SystemClock};
use crate::commit::GroupCommit;
use crate::connection::{
    Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, ProviderName, Tokens,
    effective_threshold, should_refresh,
};
use crate::error::{ConfigError, Error, ErrorCode};
use crate::metrics as m;
use crate::provider::{Grant, Provider, ProviderInfo};
use crate::refresh::breaker::Breaker;
use crate::refresh::errors::{self, counted};
use crate::refresh::flight::Flights;
use crate::refresh::policy::jitter_unit;
use crate::refresh::{BreakerConfig, BreakerState, RefreshConfig, RefreshOptions};
use crate::scheduler::{RateLimiters, SchedulerConfig, Wakeup, plan_after_success};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{ListPage, ListQuery, PutOutcome, Store, StoreError};

/// A token closer to expiry than this (or than half the effective threshold, if smaller) is
/// not handed out while a refresh runs: the caller waits for the refresh instead.
pub(crate) const BLOCKING_WINDOW: Duration = Duration::from_secs(60);

/// After a failed refresh of a still-valid token, on-demand refreshes of that connection
/// pause for `min(FAILURE_COOLDOWN_MAX, 1 s · 2^failures)` so a failing provider is not
/// called on every request.
const FAILURE_COOLDOWN_MAX: Duration = Duration::from_secs(60);

/// The most connection writes one group commit carries. Large enough that a full scheduler
/// batch finishing together shares a few commits; small enough that one transaction holds
/// SQLite's write lock only briefly.
const COMMIT_BATCH: usize = 64;

/// A usable access token.
#[derive(Debug, Clone)]
pub struct AccessTokenGrant {
    pub access_token: AccessToken,
    /// Shared, so handing out a cached grant allocates only for the token itself.
    pub token_type: Arc<str>,
    pub expires_at: Option<OffsetDateTime>,
}

impl AccessTokenGrant {
    pub(crate) fn of(conn: &Connection) -> Self {
        Self {
            access_token: conn.tokens.access_token.clone(),
            token_type: Arc::from(conn.meta.token_type.as_str()),
            expires_at: conn.meta.expires_at,
        }
    }
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

/// A fresh instance id (`tw-` and 16 hex digits): what a warden built without
/// [`WardenBuilder::instance_id`] names itself in leases. Make one first to give the same id
/// to something that must exist before the warden (the webhook worker's leases).
pub fn new_instance_id() -> String {
    format!("tw-{:016x}", rand::random::<u64>())
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
    circuit_changes: Option<tokio::sync::mpsc::UnboundedSender<crate::refresh::CircuitChange>>,
}

impl WardenBuilder {
    /// Reports every provider breaker's opening and closing to `changes` (webhooks).
    #[must_use]
    pub fn circuit_changes(
        mut self,
        changes: tokio::sync::mpsc::UnboundedSender<crate::refresh::CircuitChange>,
    ) -> Self {
        self.circuit_changes = Some(changes);
        self
    }

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

    /// The wall clock. By default, the system clock. Providers read time (a `Retry-After`
    /// date, Instagram's 24-hour rule) from their [`crate::provider::HttpClient`]'s clock:
    /// give them the same one with `HttpClient::with_clock`.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the warden after checking every setting. Install the `metrics` recorder
    /// first, if any: the hottest counter is registered here, once.
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
                let breaker = Breaker::new(name.as_str(), self.breaker)
                    .reporting_to(self.circuit_changes.clone());
                // Built once, so an application token's cache hit allocates no key.
                let app_key = (p.grant() == Grant::ClientCredentials)
                    .then(|| ConnectionKey::app(name.clone()));
                (
                    name,
                    ProviderEntry {
                        provider: p,
                        breaker,
                        app_key,
                    },
                )
            })
            .collect();
        let changes = self.store.changes();
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let warden = Warden {
            inner: Arc::new(Inner {
                commits: GroupCommit::new(Arc::clone(&self.store), COMMIT_BATCH, tasks.clone()),
                store: self.store,
                providers,
                cache: TokenCache::new(self.refresh.cache_ttl, self.refresh.cache_max_entries),
                refresh: self.refresh,
                scheduler: self.scheduler,
                clock: self.clock,
                flights: Arc::new(Flights::with_tracker(tasks.clone())),
                instance_id: self.instance_id.unwrap_or_else(new_instance_id),
                wakeup: Wakeup::default(),
                scheduler_sleeps_until: AtomicI64::new(crate::scheduler::AWAKE),
                changed: tokio::sync::Notify::new(),
                limiters,
                tasks,
                stop,
                fresh_answers: metrics::counter!(m::TOKEN_REQUESTS_TOTAL, "outcome" => "fresh"),
            }),
        };
        if let (Some(changes), Ok(runtime)) = (changes, tokio::runtime::Handle::try_current()) {
            let _guard = runtime.enter();
            let inner = &warden.inner;
            inner.tasks.spawn(follow_changes(
                Arc::downgrade(inner),
                changes,
                inner.stop.clone(),
            ));
        }
        Ok(warden)
    }
}

#[derive(Debug)]
pub(crate) struct ProviderEntry {
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) breaker: Breaker,
    /// The reserved key of its application token, for a client-credentials provider.
    pub(crate) app_key: Option<ConnectionKey>,
}

pub(crate) type RefreshOutcome = Result<Arc<Connection>, Error>;

/// What the warden's clones share; the refresh and scheduler modules add their parts of its
/// behaviour (`impl Inner` blocks in `refresh::*` and `scheduler::runner`).
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    /// Every compare-and-swap write of a connection goes through here, so refreshes that
    /// finish together share one durable commit.
    pub(crate) commits: Arc<GroupCommit>,
    pub(crate) providers: BTreeMap<ProviderName, ProviderEntry>,
    pub(crate) refresh: RefreshConfig,
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) flights: Arc<Flights<ConnectionKey, RefreshOutcome>>,
    pub(crate) cache: TokenCache,
    /// Owner id of this instance's database leases.
    pub(crate) instance_id: String,
    /// Wakes the scheduler loop when the schedule changes.
    pub(crate) wakeup: Wakeup,
    /// Until when the scheduler loop sleeps (unix seconds), or `scheduler::AWAKE`.
    pub(crate) scheduler_sleeps_until: AtomicI64,
    /// Signalled on every change the store reports (callers waiting for another
    /// instance's refresh look again at once).
    pub(crate) changed: tokio::sync::Notify,
    pub(crate) limiters: RateLimiters,
    /// Every task the warden starts, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled at shutdown: stops the tasks that would otherwise run forever.
    pub(crate) stop: CancellationToken,
    /// `token_requests_total{outcome="fresh"}`, registered once: the cache-hit path should
    /// not look the series up in the recorder on every call.
    fresh_answers: metrics::Counter,
}

/// What started a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A caller found the token inside the threshold; skip if someone already refreshed.
    OnDemand,
    /// An explicit request: refresh whatever the expiry.
    Forced,
    /// The scheduler claimed it; skip if it is no longer due.
    Scheduled,
    /// An API refused this token (HTTP 401); skip if the connection has another by now, or
    /// it was refreshed moments ago (`refresh::rejected`).
    Rejected(crate::refresh::rejected::TokenDigest),
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Forced => "forced",
            Self::Scheduled => "scheduled",
            Self::Rejected(_) => "rejected",
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
            circuit_changes: None,
        }
    }

    /// The time by this warden's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    /// A valid access token for a user's connection, refreshed first when needed.
    pub async fn get_access_token(
        &self,
        user_id: &str,
        provider: &str,
        account_id: &str,
    ) -> Result<AccessTokenGrant, Error> {
        let key = ConnectionKey::parse(user_id, provider, account_id)
            .map_err(|e| counted(Error::new(ErrorCode::InvalidRequest, e.to_string())))?;
        self.access_token(&key).await
    }

    /// [`Warden::get_access_token`] for a parsed key.
    pub async fn access_token(&self, key: &ConnectionKey) -> Result<AccessTokenGrant, Error> {
        if let Some(grant) = self.cached_access_token(key) {
            return Ok(grant);
        }
        // Boxed, so the future of a cache hit stays small: the slow path's state machine
        // (store read, refresh, waits) is allocated only when it runs.
        let result = Box::pin(self.access_token_slow(key)).await;
        let outcome = match &result {
            Ok((_, outcome)) => *outcome,
            Err(_) => "error",
        };
        metrics::counter!(m::TOKEN_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
        result.map(|(grant, _)| grant).map_err(counted)
    }

    /// The answer [`Warden::access_token`] would give from memory alone: a cached token that
    /// is fresh (not due for refresh), counted as a `fresh` answer; `None` when it would have
    /// to read the store, refresh or fail. No I/O, so a server can answer it without its
    /// usual machinery and hand everything else to [`Warden::access_token`].
    pub fn cached_access_token(&self, key: &ConnectionKey) -> Option<AccessTokenGrant> {
        let inner = &self.inner;
        let grant = inner.cache.fresh(key)?;
        inner.fresh_answers.increment(1);
        Some(grant)
    }

    /// The application token of a provider configured with the client-credentials grant,
    /// obtained (or obtained again) first when needed. The first request anywhere creates
    /// its row and obtains it; concurrent requests, in this instance or another over the
    /// same database, wait for that one upstream call. It is stored as the connection
    /// `(_app, provider, _app)` ([`ConnectionKey::app`]).
    ///
    /// # Errors
    /// `UNKNOWN_PROVIDER` for a provider that is not configured, `INVALID_REQUEST` for one
    /// whose grant is not `client_credentials`; otherwise what a user token's request can
    /// fail with, except that nothing asks for a reconnect: a refusal by the provider
    /// (`invalid_client`, even `invalid_grant`) is `TOKEN_REFRESH_ERROR` with failure
    /// `configuration`.
    pub async fn app_access_token(&self, provider: &str) -> Result<AccessTokenGrant, Error> {
        let name = ProviderName::parse(provider).map_err(|_| {
            counted(Error::new(
                ErrorCode::UnknownProvider,
                "provider is not configured (not a valid provider name)",
            ))
        })?;
        self.app_token(&name).await
    }

    /// [`Warden::app_access_token`] for a parsed provider name: [`Warden::access_token`] of
    /// the provider's reserved key, whose slow path is the application token's.
    pub async fn app_token(&self, provider: &ProviderName) -> Result<AccessTokenGrant, Error> {
        let key = self.inner.app_key(provider).map_err(counted)?;
        self.access_token(key).await
    }

    async fn access_token_slow(
        &self,
        key: &ConnectionKey,
    ) -> Result<(AccessTokenGrant, &'static str), Error> {
        let inner = &self.inner;
        // A client-credentials provider's one connection is its application token: asked
        // for by its key, it is served the way `app_token` serves it.
        if key.is_app() && inner.is_application(key) {
            return inner.app_token_slow(key).await;
        }
        // While the provider is down, answer from memory: a still-valid token, or the
        // breaker's error. No store read, so these answers stay fast under load.
        if let Some(open) = inner.open_breaker(key)
            && let Some(grant) = inner.cache.trusted(key)
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
            return Err(errors::about(
                ErrorCode::NoAccessToken,
                "no access token stored",
                key,
            ));
        }
        if meta.status == ConnectionStatus::NeedsReconnect {
            // Refreshing again would only repeat the permanent failure; a still-valid token is
            // served until it expires.
            if expired {
                return Err(errors::needs_reconnect(&conn));
            }
            return Ok((AccessTokenGrant::of(&conn), "degraded"));
        }
        let threshold = inner.refresh.threshold;
        if !should_refresh(meta.expires_at, meta.lifetime(), threshold, now) {
            return Ok((AccessTokenGrant::of(&conn), "fresh"));
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
            // Still comfortably valid: hand it out now, refresh in the background.
            inner.refresh_in_background(key, meta, now);
            return Ok((AccessTokenGrant::of(&conn), "fresh"));
        }

        // While the provider's breaker is open, answer at once: no single-flight slot, no
        // task, no lease.
        let outcome = match inner.open_breaker(key) {
            Some(open) => Err(open),
            None => {
                inner
                    .join_refresh(key, Trigger::OnDemand, inner.refresh.retry, None)
                    .await
            }
        };
        match outcome {
            Ok(fresh) => Ok((AccessTokenGrant::of(&fresh), "refreshed")),
            Err(error) => {
                // Graceful degradation: a token that has not expired is still usable.
                let now = inner.clock.now();
                if conn.meta.expires_at.is_some_and(|at| at > now) {
                    tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                        code = %error.code(), "refresh failed; serving the still-valid token");
                    return Ok((AccessTokenGrant::of(&conn), "degraded"));
                }
                Err(errors::expired(error))
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
        policy.validate().map_err(|e| {
            // Name the option the caller gave (`max_delay`), not the setting it overrides.
            let option = e.field.trim_start_matches("refresh.retry.");
            let message = format!("{option}: {}", e.problem);
            counted(Error::new(ErrorCode::InvalidRequest, message))
        })?;
        self.inner
            .join_refresh(key, Trigger::Forced, policy, None)
            .await
            .map(|conn| conn.meta.clone())
            .map_err(counted)
    }

    /// Call this when a provider's API refused `rejected`, an access token of `key` (HTTP
    /// 401): it returns a token to send the call again with, after refreshing only if no one
    /// else did. Any number of concurrent callers refused with one token cause one refresh
    /// (the single flight and the lease), including callers whose 401 arrives after that
    /// refresh finished: they get the token it stored.
    ///
    /// `Ok(None)` when there is no other token to try: the refused one was refreshed less than
    /// 10 s ago (an API refusing a token that new refuses it for another reason), so it is
    /// not refreshed again.
    ///
    /// # Errors
    /// As [`Warden::refresh_token`]'s: the refresh failed (`TOKEN_REFRESH_ERROR`, with
    /// `reconnect` when the provider refused the grant for good; `TOKEN_EXPIRED` when the
    /// token has expired too), the provider's breaker is open, the connection is gone.
    pub async fn refresh_rejected(
        &self,
        key: &ConnectionKey,
        rejected: &AccessToken,
    ) -> Result<Option<AccessTokenGrant>, Error> {
        // Boxed, as `access_token`'s slow path: a caller's future (a proxied call's, which
        // awaits this only after a 401) stays small instead of holding a refresh's state.
        Box::pin(self.inner.refresh_rejected(key, rejected))
            .await
            .map_err(counted)
    }

    /// Creates or replaces a connection from tokens the application holds.
    pub async fn import(
        &self,
        key: ConnectionKey,
        request: ImportRequest,
    ) -> Result<(ConnectionMeta, PutOutcome), Error> {
        let inner = &self.inner;
        let Some(entry) = inner.providers.get(&key.provider) else {
            return Err(counted(errors::unknown_provider(&key.provider)));
        };
        if entry.provider.grant() == Grant::ClientCredentials {
            return Err(counted(import_refused(&key.provider)));
        }
        if request.access_token.is_empty() {
            return Err(counted(Error::new(
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
            .map_err(|e| counted(errors::from_store(e, &key)));
        inner.cache.forget(&key);
        inner.wakeup.notify_one();
        result
    }

    /// A connection's metadata (no secrets).
    pub async fn connection(&self, key: &ConnectionKey) -> Result<ConnectionMeta, Error> {
        self.inner.load(key).await.map(|c| c.meta).map_err(counted)
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
            .map_err(|e| counted(errors::from_store(e, key)));
        inner.cache.forget(key);
        deleted
    }

    /// Lists connections.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, Error> {
        self.inner.store.list(query).await.map_err(|e| {
            counted(match e {
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
        self.inner.run_scheduler(shutdown).await;
    }

    /// Stops the warden's own background work and waits up to `within` for every task it
    /// started to finish: refreshes in flight (whose callers may have gone away, with a
    /// rotated grant still to commit), background refreshes, group commits, change
    /// following. Returns false when some were still running at the deadline. Requests
    /// made afterwards still work; call it last, after the scheduler and the server stopped.
    pub async fn shutdown(&self, within: Duration) -> bool {
        let inner = &self.inner;
        inner.stop.cancel();
        inner.tasks.close();
        let drained = tokio::time::timeout(within, inner.tasks.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                tasks = inner.tasks.len(),
                "refresh tasks still running at shutdown were abandoned"
            );
        }
        drained
    }

    /// Tokens currently held in the in-memory cache.
    pub fn cached_tokens(&self) -> usize {
        self.inner.cache.len()
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
    pub(crate) fn open_breaker(&self, key: &ConnectionKey) -> Option<Error> {
        match self.providers.get(&key.provider)?.breaker.state() {
            BreakerState::Open { retry_after } if !retry_after.is_zero() => {
                Some(errors::circuit_open(key, retry_after))
            }
            _ => None,
        }
    }

    /// Caches `conn`'s grant (see `cache`).
    /// Starts an on-demand refresh of `key` in a task the warden owns (so shutdown waits
    /// for it), unless a recent failure of `meta` asks to hold off; the caller is served the
    /// still-valid token meanwhile.
    pub(crate) fn refresh_in_background(
        self: &Arc<Self>,
        key: &ConnectionKey,
        meta: &ConnectionMeta,
        now: OffsetDateTime,
    ) {
        if in_failure_cooldown(meta, now) {
            return;
        }
        let this = Arc::clone(self);
        let key = key.clone();
        let policy = self.refresh.retry;
        self.tasks.spawn(async move {
            let _ = this
                .join_refresh(&key, Trigger::OnDemand, policy, None)
                .await;
        });
    }

    pub(crate) fn remember(&self, conn: &Connection) {
        self.cache
            .remember(conn, self.refresh.threshold, self.clock.now());
    }

    /// Reads a connection; an absent one is `ACCOUNT_NOT_FOUND` (and leaves the cache).
    pub(crate) async fn load(&self, key: &ConnectionKey) -> Result<Connection, Error> {
        match self.store.get(key).await {
            Ok(Some(conn)) => Ok(conn),
            Ok(None) => {
                self.cache.forget(key);
                Err(errors::account_not_found(key))
            }
            Err(e) => Err(errors::from_store(e, key)),
        }
    }
}

/// Why a client-credentials provider takes no import.
fn import_refused(provider: &ProviderName) -> Error {
    let meta = crate::error::ErrorMeta {
        provider: Some(provider.to_string()),
        ..crate::error::ErrorMeta::default()
    };
    Error::new(
        ErrorCode::InvalidRequest,
        format!(
            "provider: {provider} uses the client_credentials grant; it has one application \
             token, which tokenwarden obtains itself, and no user connections to import"
        ),
    )
    .with_meta(meta)
}

pub(crate) fn in_failure_cooldown(meta: &ConnectionMeta, now: OffsetDateTime) -> bool {
    let Some(last) = &meta.last_error else {
        return false;
    };
    let exp = meta.consecutive_failures.min(16);
    let cooldown = Duration::from_secs(1u64 << exp).min(FAILURE_COOLDOWN_MAX);
    now - last.at < cooldown
}
