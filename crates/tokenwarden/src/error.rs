//! The library's error type. Its stable question is its [`ErrorCode`]: callers branch on the
//! code, never on the message. Messages never contain a secret.

use std::fmt;
use std::time::Duration;

/// Stable error codes: the seed's six plus the service's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No such connection for this user.
    AccountNotFound,
    /// A refresh is needed but no refresh token is stored (`reconnect: true`).
    NoRefreshToken,
    /// The refresh failed after all retries (transient or configuration failure), or the
    /// provider's circuit breaker is open.
    TokenRefreshError,
    /// The token expired and the refresh failed permanently (`reconnect: true`).
    TokenExpired,
    /// No access token is stored.
    NoAccessToken,
    /// Anything else while getting a token (database, decryption, ...).
    GetTokenError,
    /// Malformed input.
    InvalidRequest,
    /// The provider is not configured.
    UnknownProvider,
    /// The provider does not allow refreshing this token yet (Instagram: not before it is
    /// 24 hours old). Nothing failed; `retry_after` says when it will.
    RefreshTooEarly,
    /// No connect session has this id (or link).
    ConnectSessionNotFound,
    /// The connect session expired, or its single-use link was already used.
    ConnectSessionExpired,
    /// The callback's `state` is missing, unknown, already used, or came from another
    /// browser than the one that opened the link.
    ConnectStateInvalid,
    /// The user declined at the provider.
    AccessDenied,
    /// The provider answered the authorization request with an error other than
    /// `access_denied`, or without a code.
    AuthorizationFailed,
    /// The provider refused or failed the code exchange, or its `id_token` did not validate.
    CodeExchangeFailed,
    /// The authorization response's `iss` is not the provider's issuer (RFC 9207), or is
    /// missing where the provider says it sends one.
    IssuerMismatch,
    /// A reconnect signed in to a different provider account than the connection's.
    AccountMismatch,
    /// No webhook delivery has this id.
    WebhookDeliveryNotFound,
    /// No webhook endpoint has this name.
    WebhookEndpointNotFound,
    /// Only a failed delivery can be sent again by hand (a pending one is still being
    /// retried; a delivered one arrived).
    WebhookDeliveryNotFailed,
}

impl ErrorCode {
    /// Every code, for metrics that must be exported from the start.
    pub const ALL: [ErrorCode; 20] = [
        Self::AccountNotFound,
        Self::NoRefreshToken,
        Self::TokenRefreshError,
        Self::TokenExpired,
        Self::NoAccessToken,
        Self::GetTokenError,
        Self::InvalidRequest,
        Self::UnknownProvider,
        Self::RefreshTooEarly,
        Self::ConnectSessionNotFound,
        Self::ConnectSessionExpired,
        Self::ConnectStateInvalid,
        Self::AccessDenied,
        Self::AuthorizationFailed,
        Self::CodeExchangeFailed,
        Self::IssuerMismatch,
        Self::AccountMismatch,
        Self::WebhookDeliveryNotFound,
        Self::WebhookEndpointNotFound,
        Self::WebhookDeliveryNotFailed,
    ];

    /// The wire form, e.g. `TOKEN_EXPIRED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccountNotFound => "ACCOUNT_NOT_FOUND",
            Self::NoRefreshToken => "NO_REFRESH_TOKEN",
            Self::TokenRefreshError => "TOKEN_REFRESH_ERROR",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::NoAccessToken => "NO_ACCESS_TOKEN",
            Self::GetTokenError => "GET_TOKEN_ERROR",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::UnknownProvider => "UNKNOWN_PROVIDER",
            Self::RefreshTooEarly => "REFRESH_TOO_EARLY",
            Self::ConnectSessionNotFound => "CONNECT_SESSION_NOT_FOUND",
            Self::ConnectSessionExpired => "CONNECT_SESSION_EXPIRED",
            Self::ConnectStateInvalid => "CONNECT_STATE_INVALID",
            Self::AccessDenied => "ACCESS_DENIED",
            Self::AuthorizationFailed => "AUTHORIZATION_FAILED",
            Self::CodeExchangeFailed => "CODE_EXCHANGE_FAILED",
            Self::IssuerMismatch => "ISSUER_MISMATCH",
            Self::AccountMismatch => "ACCOUNT_MISMATCH",
            Self::WebhookDeliveryNotFound => "WEBHOOK_DELIVERY_NOT_FOUND",
            Self::WebhookEndpointNotFound => "WEBHOOK_ENDPOINT_NOT_FOUND",
            Self::WebhookDeliveryNotFailed => "WEBHOOK_DELIVERY_NOT_FAILED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a refresh failure is classified. This decides retries, the breaker and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// The user must reconnect (`invalid_grant`, Meta code 190, revoked, expired token that
    /// cannot be refreshed). Not retried; marks the connection `needs_reconnect`.
    Permanent,
    /// An operator problem (`invalid_client`, `unauthorized_client`, bad request shape). Not
    /// retried; never marks users for reconnect.
    Configuration,
    /// Worth retrying: connect/read errors, timeouts, 408, 429, 5xx,
    /// `temporarily_unavailable`, `server_error`, unparseable answers.
    Transient,
    /// The provider's circuit breaker is open; the provider was not called.
    CircuitOpen,
}

impl FailureClass {
    /// The stable string form (`permanent`, `configuration`, `transient`, `circuit_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Configuration => "configuration",
            Self::Transient => "transient",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// Context attached to an error (the seed's error metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorMeta {
    pub provider: Option<String>,
    pub account_id: Option<String>,
    /// Upstream attempts made, when a refresh ran.
    pub attempts: u32,
    /// Time spent, when a refresh ran.
    pub duration: Option<Duration>,
    /// The classification of the refresh failure behind this error, if any.
    pub failure: Option<FailureClass>,
    /// The provider's OAuth `error` value (or equivalent), if it gave one. Not a secret.
    pub provider_error: Option<String>,
}

type SharedError = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The library's error. Boxed, so `Result<T, Error>` stays one pointer wide on the fast path.
#[derive(Clone)]
pub struct Error(Box<Inner>);

#[derive(Clone)]
struct Inner {
    code: ErrorCode,
    message: String,
    reconnect: bool,
    retry_after: Option<Duration>,
    meta: ErrorMeta,
    source: Option<SharedError>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        f.debug_struct("Error")
            .field("code", &e.code)
            .field("message", &e.message)
            .field("reconnect", &e.reconnect)
            .field("retry_after", &e.retry_after)
            .field("meta", &e.meta)
            .field("source", &e.source.as_ref().map(ToString::to_string))
            .finish()
    }
}

impl Error {
    /// A new error; `reconnect` defaults to what the code implies.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let reconnect = matches!(code, ErrorCode::NoRefreshToken | ErrorCode::TokenExpired);
        Self(Box::new(Inner {
            code,
            message: message.into(),
            reconnect,
            retry_after: None,
            meta: ErrorMeta::default(),
            source: None,
        }))
    }

    /// Sets whether the user must reconnect.
    #[must_use]
    pub fn with_reconnect(mut self, reconnect: bool) -> Self {
        self.0.reconnect = reconnect;
        self
    }

    /// Sets a retry-after hint.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.0.retry_after = retry_after;
        self
    }

    /// Replaces the metadata.
    #[must_use]
    pub fn with_meta(mut self, meta: ErrorMeta) -> Self {
        self.0.meta = meta;
        self
    }

    /// Attaches an underlying cause. Its `Display` must not contain a secret.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(std::sync::Arc::new(source));
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// True when only the user can fix this, by reconnecting the account.
    pub fn reconnect(&self) -> bool {
        self.0.reconnect
    }

    /// When to try again, if known (breaker open, provider's Retry-After).
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    pub fn meta(&self) -> &ErrorMeta {
        &self.0.meta
    }

    /// True when the provider's circuit breaker refused the call.
    pub fn is_circuit_open(&self) -> bool {
        self.0.meta.failure == Some(FailureClass::CircuitOpen)
    }

    /// The provider's failure behind this error (its `source`), when a refresh attempt
    /// produced it: match on its `kind` (refused with an OAuth error, transport, unparseable
    /// answer) instead of on the message.
    pub fn provider_failure(&self) -> Option<&crate::provider::RefreshFailure> {
        self.0.source.as_deref()?.downcast_ref()
    }
}

/// A library setting that cannot work (a zero batch size, a zero lease, a duration so long
/// that adding it to a time overflows). Returned by [`crate::WardenBuilder::build`]; names the
/// setting by its field path, never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The setting, e.g. `scheduler.batch_size`.
    pub field: &'static str,
    /// What is wrong with it, e.g. `must be at least 1`.
    pub problem: String,
}

/// The longest duration any setting may have: about ten years. Longer values are surely
/// mistakes, and adding them to a timestamp must never overflow.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }

    /// Checks `min ≤ value ≤ MAX_SETTING_DURATION`.
    pub(crate) fn check_duration(
        field: &'static str,
        value: Duration,
        min: Duration,
    ) -> Result<(), Self> {
        if value < min {
            return Err(Self::new(field, format!("must be at least {min:?}")));
        }
        if value > MAX_SETTING_DURATION {
            return Err(Self::new(
                field,
                format!("must be at most {}s", MAX_SETTING_DURATION.as_secs()),
            ));
        }
        Ok(())
    }

    /// Checks `min ≤ value ≤ max`.
    pub(crate) fn check_count<T: PartialOrd + fmt::Display>(
        field: &'static str,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), Self> {
        if value < min {
            return Err(Self::new(field, format!("must be at least {min}")));
        }
        if value > max {
            return Err(Self::new(field, format!("must be at most {max}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_defaults_follow_code() {
        assert!(Error::new(ErrorCode::TokenExpired, "x").reconnect());
        assert!(Error::new(ErrorCode::NoRefreshToken, "x").reconnect());
        assert!(!Error::new(ErrorCode::TokenRefreshError, "x").reconnect());
        assert_eq!(ErrorCode::GetTokenError.to_string(), "GET_TOKEN_ERROR");
    }
}
