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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::clock::{Clock, SystemClock};
use crate::connection::{
    Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, LastError, ProviderName, Tokens,
    effective_threshold, should_refresh,
};
use crate::error::{Error, ErrorCode, ErrorMeta, FailureClass};
use crate::metrics as m;
use crate::provider::{
    FailureKind, NotRefreshable, Provider, ProviderInfo, RefreshFailure, TokenResponse,
};
use crate::refresh::breaker::{Breaker, Health};
use crate::refresh::flight::Flights;
use crate::refresh::policy::{RetryPolicy, jitter_unit};
use crate::refresh::{BreakerConfig, BreakerState, RefreshConfig, RefreshOptions};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{ListPage, ListQuery, PutOutcome, Store, StoreError};

/// A token closer to expiry than this (or than half the effective threshold, if smaller) is
/// not handed out while a refresh runs: the caller waits for the refresh instead.
const BLOCKING_WINDOW: Duration = Duration::from_secs(60);

/// After a failed refresh of a still-valid token, on-demand refreshes of that connection
/// pause for `min(FAILURE_COOLDOWN_MAX, 1 s · 2^failures)` so a failing provider is not
/// called on every request.
const FAILURE_COOLDOWN_MAX: Duration = Duration::from_secs(60);

/// A usable access token.
#[derive(Debug, Clone)]
pub struct AccessTokenGrant {
    pub access_token: AccessToken,
    pub token_type: String,
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
    clock: Arc<dyn Clock>,
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

    /// The wall clock. By default, the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn build(self) -> Warden {
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
        Warden {
            inner: Arc::new(Inner {
                store: self.store,
                providers,
                refresh: self.refresh,
                clock: self.clock,
                flights: Arc::default(),
                cache: RwLock::default(),
            }),
        }
    }
}

#[derive(Debug)]
struct ProviderEntry {
    provider: Arc<dyn Provider>,
    breaker: Breaker,
}

#[derive(Debug, Clone)]
struct CachedToken {
    grant: AccessTokenGrant,
    lifetime: Option<Duration>,
    cached_at: Instant,
}

type RefreshOutcome = Result<Arc<Connection>, Error>;

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    providers: BTreeMap<ProviderName, ProviderEntry>,
    refresh: RefreshConfig,
    clock: Arc<dyn Clock>,
    flights: Arc<Flights<ConnectionKey, RefreshOutcome>>,
    cache: RwLock<HashMap<ConnectionKey, CachedToken>>,
}

/// What started a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A caller found the token inside the threshold; skip if someone already refreshed.
    OnDemand,
    /// An explicit request: refresh whatever the expiry.
    Forced,
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
            clock: Arc::new(SystemClock),
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
        let conn = inner.load(key).await?;
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
            inner.remember(&conn);
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
                    let _ = this.refresh_shared(&key, Trigger::OnDemand, policy).await;
                });
            }
            return Ok((grant_of(&conn), "fresh"));
        }

        match self
            .refresh_shared(key, Trigger::OnDemand, inner.refresh.retry)
            .await
        {
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
        self.refresh_shared(key, Trigger::Forced, policy)
            .await
            .map(|conn| conn.meta.clone())
            .map_err(count_error)
    }

    async fn refresh_shared(
        &self,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
    ) -> RefreshOutcome {
        let this = self.clone();
        let task_key = key.clone();
        let (out, _joined) = self
            .inner
            .flights
            .run(key.clone(), move || async move {
                this.inner.refresh_now(&task_key, trigger, policy).await
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
                version: 0,
            },
            tokens: Tokens {
                access_token: request.access_token,
                refresh_token: request.refresh_token,
            },
        };
        let result = inner
            .store
            .put(&conn)
            .await
            .map_err(|e| count_error(store_error(e, &key)));
        inner.forget(&key);
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
    fn cached(&self, key: &ConnectionKey) -> Option<AccessTokenGrant> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = cache.get(key)?;
        if entry.cached_at.elapsed() >= self.refresh.cache_ttl {
            return None;
        }
        let now = self.clock.now();
        if should_refresh(
            entry.grant.expires_at,
            entry.lifetime,
            self.refresh.threshold,
            now,
        ) {
            return None;
        }
        Some(entry.grant.clone())
    }

    fn remember(&self, conn: &Connection) {
        if self.refresh.cache_ttl.is_zero() || conn.meta.status != ConnectionStatus::Active {
            return;
        }
        let entry = CachedToken {
            grant: grant_of(conn),
            lifetime: conn.meta.lifetime(),
            cached_at: Instant::now(),
        };
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(conn.key().clone(), entry);
    }

    fn forget(&self, key: &ConnectionKey) {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
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

    /// One refresh of one connection, run inside its single-flight slot.
    async fn refresh_now(
        &self,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
    ) -> RefreshOutcome {
        // Re-read under the slot: another refresh may have finished since the caller looked.
        let conn = self.load(key).await?;
        let now = self.clock.now();
        if trigger == Trigger::OnDemand
            && conn.meta.status == ConnectionStatus::Active
            && !should_refresh(
                conn.meta.expires_at,
                conn.meta.lifetime(),
                self.refresh.threshold,
                now,
            )
        {
            return Ok(Arc::new(conn));
        }
        let entry = self
            .providers
            .get(&key.provider)
            .ok_or_else(|| unknown_provider(&key.provider))?;
        let provider_label = key.provider.to_string();

        if let Err(reason) = entry.provider.check_refreshable(&conn, now) {
            return self.not_refreshable(conn, reason, now).await;
        }

        tracing::info!(provider = %key.provider, account_id = %key.account_id,
            trigger = ?trigger, max_retries = policy.max_retries, "token refresh started");
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
                let committed = self.commit_success(conn, response).await;
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
                let error = failure_error(&failure, meta, self.refresh.max_retry_after);
                tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                    attempts, duration_ms = duration_ms(duration), class = failure.class.as_str(),
                    code = %error.code(), error = %failure, "token refresh failed");
                if failure.class != FailureClass::CircuitOpen || attempts > 0 {
                    self.record_failure(conn, &error, failure.class == FailureClass::Permanent)
                        .await;
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
            match entry.provider.refresh(conn).await {
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
    ) -> RefreshOutcome {
        let now = self.clock.now();
        let used_refresh_token = conn.tokens.refresh_token.clone();
        apply_response(&mut conn, response, now);
        // Compare-and-swap: a concurrent import or delete wins over this refresh.
        for _ in 0..3 {
            match self.store.update(&conn).await {
                Ok(meta) => {
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
                }
                Err(e) => return Err(store_error(e, conn.key())),
            }
        }
        Err(Error::new(
            ErrorCode::GetTokenError,
            "connection kept changing during refresh",
        ))
    }

    async fn record_failure(&self, mut conn: Connection, error: &Error, permanent: bool) {
        let now = self.clock.now();
        conn.meta.consecutive_failures = conn.meta.consecutive_failures.saturating_add(1);
        conn.meta.last_error = Some(LastError {
            code: error.code().as_str().to_owned(),
            message: error.message().to_owned(),
            at: now,
        });
        conn.meta.updated_at = now;
        if permanent {
            conn.meta.status = ConnectionStatus::NeedsReconnect;
        }
        let key = conn.key().clone();
        match self.store.update(&conn).await {
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
        now: OffsetDateTime,
    ) -> RefreshOutcome {
        let key = conn.key().clone();
        let meta = ErrorMeta {
            provider: Some(key.provider.to_string()),
            account_id: Some(key.account_id.to_string()),
            ..ErrorMeta::default()
        };
        let expired = conn.meta.expires_at.is_some_and(|at| at <= now);
        let (error, permanent) = match reason {
            NotRefreshable::NoRefreshToken => (
                Error::new(
                    ErrorCode::NoRefreshToken,
                    "refresh needed but no refresh token is stored",
                ),
                expired,
            ),
            NotRefreshable::Expired => (
                Error::new(
                    ErrorCode::TokenExpired,
                    "token expired and the provider cannot refresh it",
                ),
                true,
            ),
            NotRefreshable::TooYoung { ready_at } => {
                let wait = Duration::try_from(ready_at - now).unwrap_or(Duration::ZERO);
                return Err(Error::new(
                    ErrorCode::TokenRefreshError,
                    "token is too young to be refreshed yet",
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
        self.record_failure(conn, &error, permanent).await;
        Err(error)
    }
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
        token_type: conn.meta.token_type.clone(),
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
    .with_meta(ErrorMeta {
        provider: Some(conn.key().provider.to_string()),
        account_id: Some(conn.key().account_id.to_string()),
        failure: Some(FailureClass::Permanent),
        ..ErrorMeta::default()
    })
}

fn not_found_like(code: ErrorCode, message: &str, key: &ConnectionKey) -> Error {
    Error::new(code, message).with_meta(ErrorMeta {
        provider: Some(key.provider.to_string()),
        account_id: Some(key.account_id.to_string()),
        ..ErrorMeta::default()
    })
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
