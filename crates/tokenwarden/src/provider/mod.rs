//! Providers: how to refresh a token at one OAuth authorization server.
//!
//! This module owns the [`Provider`] trait, the refresh answer ([`TokenResponse`]) and the
//! classified failure ([`RefreshFailure`]), plus provider configuration and construction.
//! Submodules: `catalog` (what we know about real providers, as data), `discovery`
//! (OpenID Connect / RFC 8414 metadata), `settings` (config + catalog + discovery resolved
//! into one provider's settings), `oauth2` (the one generic engine, which runs every catalog
//! provider, TikTok and Reddit included, with their quirks as data), `instagram` (its own
//! refresh), `response` (parsing answers) and `http` (the outbound client with its timeouts
//! and body cap). Retries, backoff and the circuit breaker are not here: see `refresh`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::connection::{Connection, ProviderName};
use crate::error::FailureClass;
use crate::secret::{AccessToken, ClientSecret, RefreshToken};

pub mod catalog;
pub(crate) mod common;
#[cfg(test)]
mod dialects_test;
pub mod discovery;
pub mod http;
pub mod instagram;
pub mod oauth2;
pub(crate) mod response;
pub mod settings;
#[cfg(test)]
mod test_support;

pub use discovery::{DiscoveryError, ServerMetadata};
pub use http::{HttpClient, HttpSettings};
pub use instagram::InstagramProvider;
pub use oauth2::OAuth2Provider;
pub use response::{
    MAX_DESCRIPTION_CHARS, MAX_ERROR_CHARS, MAX_LIFETIME, MAX_TOKEN_BYTES,
    MIN_REDACTABLE_SECRET_CHARS, WITHHELD_ERROR,
};
pub use settings::ProviderSettings;

/// A successful refresh answer, parsed.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    /// A rotated refresh token, when the provider returned one. When `None` the old one is
    /// kept (RFC 6749 §6).
    pub refresh_token: Option<RefreshToken>,
    pub token_type: Option<String>,
    /// Lifetime of the new access token.
    pub expires_in: Option<Duration>,
    /// Remaining lifetime of the refresh token, when the provider says.
    pub refresh_expires_in: Option<Duration>,
    /// Granted scopes, when the answer lists them.
    pub scopes: Option<Vec<String>>,
}

/// What went wrong in one refresh attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshFailure {
    pub class: FailureClass,
    pub kind: FailureKind,
    /// The provider's `Retry-After` (or rate-limit reset) hint, uncapped.
    pub retry_after: Option<Duration>,
}

/// The three things a refresher must tell apart, plus "not refreshable".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The provider answered and refused. `error` is its OAuth `error` value (or Meta's
    /// `code`), `description` its sanitized description.
    Rejected {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// No usable answer: connect/read error or timeout.
    Transport { message: String, timeout: bool },
    /// An answer that could not be understood.
    Unparseable { status: u16, message: String },
    /// The connection cannot be refreshed as it is (no refresh token, expired Instagram token).
    NotRefreshable(NotRefreshable),
}

/// Why a connection cannot be refreshed without calling the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRefreshable {
    /// No refresh token is stored and the provider needs one.
    NoRefreshToken,
    /// The token has expired and this provider cannot refresh an expired token (Instagram).
    Expired,
    /// The token is too young to be refreshed yet (Instagram: 24 h).
    TooYoung { ready_at: OffsetDateTime },
}

impl RefreshFailure {
    pub fn new(class: FailureClass, kind: FailureKind) -> Self {
        Self {
            class,
            kind,
            retry_after: None,
        }
    }

    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// A transport failure (always transient).
    pub fn transport(message: impl Into<String>, timeout: bool) -> Self {
        Self::new(
            FailureClass::Transient,
            FailureKind::Transport {
                message: message.into(),
                timeout,
            },
        )
    }

    /// A connection that cannot be refreshed as it is, found without calling the provider.
    ///
    /// No refresh token and an expired Instagram token are permanent: only the user can fix
    /// them. A too-young Instagram token is classed as configuration, not transient: retrying
    /// within seconds cannot help and must not count against the provider's circuit breaker,
    /// and the user has nothing to do (the current token is still valid).
    pub fn not_refreshable(reason: NotRefreshable) -> Self {
        let class = match reason {
            NotRefreshable::NoRefreshToken | NotRefreshable::Expired => FailureClass::Permanent,
            NotRefreshable::TooYoung { .. } => FailureClass::Configuration,
        };
        Self::new(class, FailureKind::NotRefreshable(reason))
    }

    /// An unparseable answer (always transient).
    pub fn unparseable(status: u16, message: impl Into<String>) -> Self {
        Self::new(
            FailureClass::Transient,
            FailureKind::Unparseable {
                status,
                message: message.into(),
            },
        )
    }

    /// The provider's error value, if it gave one.
    pub fn provider_error(&self) -> Option<&str> {
        match &self.kind {
            FailureKind::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The HTTP status of the answer, if there was one.
    pub fn http_status(&self) -> Option<u16> {
        match &self.kind {
            FailureKind::Rejected { status, .. } | FailureKind::Unparseable { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

impl fmt::Display for RefreshFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FailureKind::Rejected {
                status,
                error,
                description,
            } => {
                write!(f, "provider refused the refresh (HTTP {status}, {error})")?;
                if let Some(d) = description {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            FailureKind::Transport { message, .. } => write!(f, "transport error: {message}"),
            FailureKind::Unparseable { status, message } => {
                write!(f, "unparseable answer (HTTP {status}): {message}")
            }
            FailureKind::NotRefreshable(NotRefreshable::NoRefreshToken) => {
                f.write_str("no refresh token stored")
            }
            FailureKind::NotRefreshable(NotRefreshable::Expired) => {
                f.write_str("token expired and this provider cannot refresh an expired token")
            }
            FailureKind::NotRefreshable(NotRefreshable::TooYoung { ready_at }) => {
                write!(f, "token too young to refresh until {ready_at}")
            }
        }
    }
}

impl std::error::Error for RefreshFailure {}

/// The provider kinds a configuration may name. `tiktok` and `reddit` are the catalog
/// entries of the same names on the generic engine (`catalog = "tiktok"`), kept as kinds so
/// version 1 configurations keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Instagram,
    Tiktok,
    Reddit,
    Oauth2,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instagram => "instagram",
            Self::Tiktok => "tiktok",
            Self::Reddit => "reddit",
            Self::Oauth2 => "oauth2",
        }
    }
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    ClientSecretPost,
    /// HTTP Basic with `client_id:client_secret`.
    ClientSecretBasic,
    /// A public client: `client_id` in the body, no secret (PKCE protects the code).
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretPost => "client_secret_post",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::None => "none",
        }
    }
}

/// How a provider's tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// User connections: obtained by the authorization-code flow (or imported), kept alive
    /// with the refresh-token grant.
    #[default]
    AuthorizationCode,
    /// One application token per provider, obtained with the client-credentials grant
    /// (RFC 6749 §4.4) and obtained again before it expires. No user, no refresh token.
    ClientCredentials,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// Where a provider's settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderSource {
    /// A catalog entry (plus any configured overrides).
    Catalog,
    /// OpenID Connect / RFC 8414 metadata from the configured `issuer`.
    Discovery,
    /// The configuration alone.
    Config,
}

impl ProviderSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Catalog => "catalog",
            Self::Discovery => "discovery",
            Self::Config => "config",
        }
    }
}

/// One provider's configuration (a `[providers.NAME]` section). Every key but `kind`,
/// `catalog`, `issuer` and the client credentials overrides what the catalog entry or the
/// discovered metadata says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `instagram`, `tiktok`, `reddit` or `oauth2`; defaults to `oauth2` when `catalog` or
    /// `issuer` is given.
    #[serde(default)]
    pub kind: Option<ProviderKind>,
    /// A catalog id (`tokenwarden providers catalog` lists them).
    #[serde(default)]
    pub catalog: Option<String>,
    /// An OpenID Connect / RFC 8414 issuer whose metadata fills the endpoints at start.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `authorization_code` (default: user connections) or `client_credentials`.
    #[serde(default)]
    pub grant: Option<Grant>,
    /// The client id (TikTok's `client_key`). Not needed for Instagram refreshes.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<ClientSecret>,
    /// Where users consent (the connect flow).
    #[serde(default)]
    pub authorization_url: Option<String>,
    /// Token endpoint; defaults to the catalog's or the discovered one.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Where refreshes go when not to `token_url` (Figma; the catalog's default). For
    /// Instagram, its refresh endpoint (default
    /// `https://graph.instagram.com/refresh_access_token`).
    #[serde(default)]
    pub refresh_url: Option<String>,
    /// Instagram's `ig_exchange_token` endpoint (short-lived to long-lived token).
    #[serde(default)]
    pub exchange_url: Option<String>,
    /// RFC 7009 revocation endpoint, if the provider has one.
    #[serde(default)]
    pub revoke_url: Option<String>,
    /// Where the account id comes from when it needs a request (Reddit's `/api/v1/me`).
    #[serde(default)]
    pub userinfo_url: Option<String>,
    /// Base of the provider's API (the proxy).
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// The query parameter the API takes the token in; by default the catalog's, else none
    /// (an `Authorization: Bearer` header).
    #[serde(default)]
    pub api_token_param: Option<String>,
    /// Values of the catalog URLs' `{placeholders}` (`tenant`, `subdomain`, `shop`, …).
    #[serde(default)]
    pub url_params: BTreeMap<String, String>,
    /// `client_secret_post` (default), `client_secret_basic` or `none`.
    #[serde(default)]
    pub auth_method: Option<AuthMethod>,
    /// Scopes to request (the connect flow; client-credentials tokens).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Extra parameters on the authorization URL.
    #[serde(default)]
    pub authorization_params: Option<BTreeMap<String, String>>,
    /// Extra parameters on requests that obtain a token (code exchange, client credentials).
    #[serde(default)]
    pub token_params: Option<BTreeMap<String, String>>,
    /// Client credentials: the `audience` parameter some servers need (Auth0).
    #[serde(default)]
    pub audience: Option<String>,
    /// Client credentials: the RFC 8707 `resource` parameter.
    #[serde(default)]
    pub resource: Option<String>,
    /// Sent on every request; Reddit requires a unique one.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Upper bound on refresh calls per second to this provider (scheduler and on demand).
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

/// What the API shows about a provider. No secrets; URLs without query or user info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderInfo {
    pub name: String,
    pub kind: ProviderKind,
    pub source: ProviderSource,
    /// The catalog entry it is built on, if any.
    pub catalog: Option<String>,
    pub display_name: Option<String>,
    pub grant: Grant,
    pub authorization_url: Option<String>,
    pub token_url: String,
    pub revoke_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub api_base_url: Option<String>,
    pub issuer: Option<String>,
    pub auth_method: Option<AuthMethod>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub rate_limit_per_second: Option<u32>,
}

impl ProviderInfo {
    /// The view of a provider built from configuration alone with just a token endpoint;
    /// custom [`Provider`] implementations start from this.
    pub fn basic(
        name: impl Into<String>,
        kind: ProviderKind,
        token_url: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            kind,
            source: ProviderSource::Config,
            catalog: None,
            display_name: None,
            grant: Grant::AuthorizationCode,
            authorization_url: None,
            token_url: token_url.into(),
            revoke_url: None,
            userinfo_url: None,
            api_base_url: None,
            issuer: None,
            auth_method: None,
            scopes: Vec::new(),
            client_id: None,
            rate_limit_per_second: None,
        }
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("providers.{provider}.{key}: {message}")]
pub struct ProviderConfigError {
    pub provider: String,
    pub key: &'static str,
    pub message: String,
}

/// Refreshes tokens at one authorization server.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The configured name (the API's `{provider}`).
    fn name(&self) -> &ProviderName;

    /// What the API shows about this provider.
    fn info(&self) -> ProviderInfo;

    /// How this provider's tokens are obtained. A `client_credentials` provider has one
    /// application token and no user connections.
    fn grant(&self) -> Grant {
        Grant::AuthorizationCode
    }

    /// The settings and HTTP client the connect flow (authorization code) uses with this
    /// provider; `None` when it cannot run that flow (a provider written outside the
    /// library that does not say how).
    fn connect_client(&self) -> Option<(&ProviderSettings, &HttpClient)> {
        None
    }

    /// Where this provider's API is and where it takes the token, for the proxy; `None`
    /// without an `api_base_url`. By default, from the settings of [`Provider::connect_client`].
    fn api(&self) -> Option<crate::proxy::ApiBase> {
        self.connect_client()
            .and_then(|(settings, _)| crate::proxy::ApiBase::of(settings))
    }

    /// Checks, without calling the provider, that `conn` can be refreshed at `now`. By
    /// default: it has a refresh token.
    fn check_refreshable(
        &self,
        conn: &Connection,
        _now: OffsetDateTime,
    ) -> Result<(), NotRefreshable> {
        common::required_refresh_token(conn).map(|_| ())
    }

    /// One refresh attempt. No retries here; the caller retries transient failures.
    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure>;

    /// Revokes the connection's tokens upstream, where the provider supports it. Best effort.
    async fn revoke(&self, _conn: &Connection) -> Result<(), RefreshFailure> {
        Ok(())
    }
}

/// Builds a provider from its configuration, without network: a provider with an `issuer`
/// needs its metadata first (see [`build_discovering`]).
pub fn build(
    name: ProviderName,
    config: &ProviderConfig,
    http: HttpClient,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    build_with_metadata(name, config, None, http)
}

/// Builds a provider, fetching its issuer's metadata first when the configuration names one.
/// A discovery failure names the URL it tried and stops the build.
pub async fn build_discovering(
    name: ProviderName,
    config: &ProviderConfig,
    http: HttpClient,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let metadata = match config.issuer.as_deref() {
        Some(issuer) => Some(
            discovery::discover(&http, issuer)
                .await
                .map_err(|e| common::config_error(&name, "issuer", e.to_string()))?,
        ),
        None => None,
    };
    build_with_metadata(name, config, metadata, http)
}

/// Builds a provider from its configuration and, when it has an `issuer`, the metadata
/// [`discovery::discover`] fetched for it. The provider sends its requests with `http` and
/// reads wall time from `http`'s clock (the system clock unless [`HttpClient::with_clock`]
/// gave it another).
pub fn build_with_metadata(
    name: ProviderName,
    config: &ProviderConfig,
    metadata: Option<ServerMetadata>,
    http: HttpClient,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let settings = ProviderSettings::resolve(name, config, metadata)?;
    Ok(match settings.engine {
        catalog::Engine::Oauth2 => Arc::new(OAuth2Provider::new(settings, http)),
        catalog::Engine::Instagram => Arc::new(InstagramProvider::new(settings, http)?),
    })
}
