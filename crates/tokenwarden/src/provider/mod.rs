//! Providers: how to refresh a token at one OAuth authorization server.
//!
//! This module owns the [`Provider`] trait, the refresh answer ([`TokenResponse`]) and the
//! classified failure ([`RefreshFailure`]), plus provider configuration and construction.
//! The adapters live in submodules: `oauth2` (generic RFC 6749), `tiktok`, `reddit` and
//! `instagram`; `http` holds the outbound HTTP client with its timeouts and body cap.
//! Retries, backoff and the circuit breaker are not here: see `refresh`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::connection::{Connection, ProviderName};
use crate::error::FailureClass;
use crate::secret::{AccessToken, ClientSecret, RefreshToken};

mod common;
pub mod http;
pub mod instagram;
pub mod oauth2;
pub mod reddit;
mod response;
#[cfg(test)]
mod test_support;
pub mod tiktok;

pub use http::{HttpClient, HttpSettings};
pub use instagram::InstagramProvider;
pub use oauth2::OAuth2Provider;
pub use reddit::RedditProvider;
pub use response::{
    MAX_DESCRIPTION_CHARS, MAX_ERROR_CHARS, MAX_LIFETIME, MAX_TOKEN_BYTES,
    MIN_REDACTABLE_SECRET_CHARS, WITHHELD_ERROR,
};
pub use tiktok::TikTokProvider;

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

/// The built-in provider kinds.
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

/// How a confidential client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    ClientSecretPost,
    /// HTTP Basic with `client_id:client_secret`.
    ClientSecretBasic,
}

/// One provider's configuration (a `[providers.NAME]` section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// The client id (TikTok's `client_key`). Not needed for Instagram refreshes.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<ClientSecret>,
    /// Token endpoint; defaults to the real provider's.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Instagram's refresh endpoint; defaults to
    /// `https://graph.instagram.com/refresh_access_token`.
    #[serde(default)]
    pub refresh_url: Option<String>,
    /// RFC 7009 revocation endpoint, if the provider has one.
    #[serde(default)]
    pub revoke_url: Option<String>,
    /// `oauth2` only: `client_secret_post` (default) or `client_secret_basic`.
    #[serde(default)]
    pub auth_method: Option<AuthMethod>,
    /// Sent on every request; Reddit requires a unique one.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Upper bound on refresh calls per second to this provider (scheduler and on demand).
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

/// What the API shows about a provider. No secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderInfo {
    pub name: String,
    pub kind: ProviderKind,
    pub token_url: String,
    pub auth_method: Option<AuthMethod>,
    pub client_id: Option<String>,
    pub rate_limit_per_second: Option<u32>,
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

/// Builds a provider from its configuration. The provider sends its requests with `http`
/// and reads wall time from `http`'s clock (the system clock unless
/// [`HttpClient::with_clock`] gave it another).
pub fn build(
    name: ProviderName,
    config: &ProviderConfig,
    http: HttpClient,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    Ok(match config.kind {
        ProviderKind::Oauth2 => Arc::new(OAuth2Provider::new(name, config, http)?),
        ProviderKind::Tiktok => Arc::new(TikTokProvider::new(name, config, http)?),
        ProviderKind::Reddit => Arc::new(RedditProvider::new(name, config, http)?),
        ProviderKind::Instagram => Arc::new(InstagramProvider::new(name, config, http)?),
    })
}
