//! How refresh outcomes and store failures become the library's [`Error`]: which code, whether
//! the user must reconnect, the retry-after hint and the metadata naming the connection. The
//! table of codes itself lives in `error`; this module only builds errors.

use std::time::Duration;

use crate::connection::{Connection, ConnectionKey, ProviderName};
use crate::error::{Error, ErrorCode, ErrorMeta, FailureClass};
use crate::metrics as m;
use crate::provider::RefreshFailure;
use crate::store::StoreError;

/// The fail-fast answer while a provider's circuit breaker is open.
pub(crate) fn circuit_open(key: &ConnectionKey, retry_after: Duration) -> Error {
    Error::new(
        ErrorCode::TokenRefreshError,
        "provider is failing; its circuit breaker is open",
    )
    .with_retry_after(Some(retry_after))
    .with_meta(key_meta(key, Some(FailureClass::CircuitOpen)))
}

/// A refresh that failed after its attempts: permanent failures ask for a reconnect,
/// configuration ones do not, transient ones carry the provider's retry-after (capped).
/// The [`RefreshFailure`] is the error's `source`.
pub(crate) fn from_failure(
    failure: &RefreshFailure,
    mut meta: ErrorMeta,
    max_retry_after: Duration,
) -> Error {
    meta.failure = Some(failure.class);
    meta.provider_error = failure.provider_error().map(str::to_owned);
    let retry_after = failure.retry_after.map(|d| d.min(max_retry_after));
    let (reconnect, message) = match failure.class {
        FailureClass::Permanent => (
            true,
            format!("refresh failed permanently; the user must reconnect: {failure}"),
        ),
        FailureClass::Configuration => (
            false,
            format!("refresh failed because of a provider configuration problem: {failure}"),
        ),
        FailureClass::CircuitOpen => (
            false,
            "provider is failing; its circuit breaker is open".to_owned(),
        ),
        FailureClass::Transient => (
            false,
            format!("refresh failed after {} attempts: {failure}", meta.attempts),
        ),
    };
    // The provider's failure stays reachable as the source, so an embedder can match on
    // its kind (refused, transport, unparseable) rather than on the message.
    Error::new(ErrorCode::TokenRefreshError, message)
        .with_reconnect(reconnect)
        .with_retry_after(retry_after)
        .with_meta(meta)
        .with_source(failure.clone())
}

/// A permanent failure of a token that has expired is `TOKEN_EXPIRED`; anything else is
/// returned as it is.
pub(crate) fn expired(error: Error) -> Error {
    if error.code() == ErrorCode::TokenRefreshError
        && error.meta().failure == Some(FailureClass::Permanent)
    {
        let meta = error.meta().clone();
        let expired = Error::new(
            ErrorCode::TokenExpired,
            format!(
                "token expired and could not be refreshed: {}",
                error.message()
            ),
        )
        .with_meta(meta);
        return match error.provider_failure() {
            Some(failure) => expired.with_source(failure.clone()),
            None => expired,
        };
    }
    error
}

/// The answer for an expired connection already marked `needs_reconnect`.
pub(crate) fn needs_reconnect(conn: &Connection) -> Error {
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

/// An error about one connection, without a refresh behind it.
pub(crate) fn about(code: ErrorCode, message: &str, key: &ConnectionKey) -> Error {
    Error::new(code, message).with_meta(key_meta(key, None))
}

pub(crate) fn account_not_found(key: &ConnectionKey) -> Error {
    about(
        ErrorCode::AccountNotFound,
        "no such connection for this user",
        key,
    )
}

/// Error metadata naming the connection's provider and account.
pub(crate) fn key_meta(key: &ConnectionKey, failure: Option<FailureClass>) -> ErrorMeta {
    ErrorMeta {
        provider: Some(key.provider.to_string()),
        account_id: Some(key.account_id.to_string()),
        failure,
        ..ErrorMeta::default()
    }
}

pub(crate) fn unknown_provider(name: &ProviderName) -> Error {
    Error::new(
        ErrorCode::UnknownProvider,
        format!("provider {name} is not configured"),
    )
}

/// A store failure: never "not found" (a database error is not an absent connection).
pub(crate) fn from_store(error: StoreError, key: &ConnectionKey) -> Error {
    match error {
        StoreError::NotFound => account_not_found(key),
        StoreError::Decrypt => about(
            ErrorCode::GetTokenError,
            "stored token could not be decrypted (is its key still configured?)",
            key,
        )
        .with_source(error),
        other => about(ErrorCode::GetTokenError, "the token store failed", key).with_source(other),
    }
}

/// Counts `error` in `errors_total{code}` on its way out of the public API.
pub(crate) fn counted(error: Error) -> Error {
    metrics::counter!(m::ERRORS_TOTAL, "code" => error.code().as_str()).increment(1);
    error
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
