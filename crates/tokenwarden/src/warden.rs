//! [`Warden`]: the paved-path API. It ties the store, the providers, the retry policy, the
//! circuit breakers and single flight together: `get_access_token` and `refresh_token` live
//! here. It owns no persistence (see `store`) and no HTTP (see `provider`).

use std::sync::Arc;

use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock};
use crate::connection::{ConnectionKey, ConnectionMeta, ProviderName};
use crate::error::Error;
use crate::provider::{Provider, ProviderInfo};
use crate::refresh::{BreakerConfig, BreakerState, RefreshConfig, RefreshOptions};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{ListPage, ListQuery, PutOutcome, Store};

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
        todo!("engine")
    }
}

/// The token broker.
#[derive(Debug, Clone)]
pub struct Warden {
    inner: Arc<()>,
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
        let _ = (user_id, provider, account_id, &self.inner);
        todo!()
    }

    /// [`Warden::get_access_token`] for a parsed key.
    pub async fn access_token(&self, key: &ConnectionKey) -> Result<AccessTokenGrant, Error> {
        let _ = key;
        todo!()
    }

    /// Forces a refresh (joining one already in flight) and returns the updated connection.
    pub async fn refresh_token(
        &self,
        key: &ConnectionKey,
        options: RefreshOptions,
    ) -> Result<ConnectionMeta, Error> {
        let _ = (key, options);
        todo!()
    }

    /// Creates or replaces a connection from tokens the application holds.
    pub async fn import(
        &self,
        key: ConnectionKey,
        request: ImportRequest,
    ) -> Result<(ConnectionMeta, PutOutcome), Error> {
        let _ = (key, request);
        todo!()
    }

    /// A connection's metadata (no secrets).
    pub async fn connection(&self, key: &ConnectionKey) -> Result<ConnectionMeta, Error> {
        let _ = key;
        todo!()
    }

    /// Deletes a connection, revoking it upstream where the provider supports it (best
    /// effort). False when there was none.
    pub async fn delete(&self, key: &ConnectionKey) -> Result<bool, Error> {
        let _ = key;
        todo!()
    }

    /// Lists connections.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage, Error> {
        let _ = query;
        todo!()
    }

    /// The configured providers, sorted by name.
    pub fn providers(&self) -> Vec<ProviderInfo> {
        todo!()
    }

    /// The provider called `name`, if configured.
    pub fn provider(&self, name: &ProviderName) -> Option<&Arc<dyn Provider>> {
        let _ = name;
        todo!()
    }

    /// A provider's breaker state, if the provider is configured.
    pub fn breaker_state(&self, provider: &ProviderName) -> Option<BreakerState> {
        let _ = provider;
        todo!()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        todo!()
    }

    /// Updates the `connections{status}` gauge from the store.
    pub async fn update_connection_gauges(&self) -> Result<(), Error> {
        todo!()
    }
}
