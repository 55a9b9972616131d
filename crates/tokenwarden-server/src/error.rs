//! The API's error responses: every library [`ErrorCode`] and the server's own codes mapped to
//! an HTTP status and SPEC.md's error body. Nothing here may carry a secret: messages come from
//! the library (which guarantees that) or from the server's own validation.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokenwarden::{Error, ErrorCode, FailureClass};
use utoipa::ToSchema;

/// The server-only code for authentication failures.
pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
/// The proxy could not reach the provider's API (connection refused, DNS, TLS, reset): 502.
pub const UPSTREAM_UNREACHABLE: &str = "UPSTREAM_UNREACHABLE";
/// The provider's API did not answer within `upstream.request_timeout_ms` (or connect within
/// `upstream.connect_timeout_ms`): 504.
pub const UPSTREAM_TIMEOUT: &str = "UPSTREAM_TIMEOUT";

/// The codes only the server answers with.
pub const SERVER_CODES: [&str; 3] = [UNAUTHORIZED, UPSTREAM_UNREACHABLE, UPSTREAM_TIMEOUT];

/// An error as the API returns it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    reconnect: bool,
    retry_after: Option<Duration>,
    details: serde_json::Map<String, serde_json::Value>,
    /// True for errors raised by the server itself; the library counts its own errors in
    /// `tokenwarden_errors_total`, so those must not be counted twice.
    count_here: bool,
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// The error object of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Stable code: one of [`all_codes`]. Branch on it, never on `message`.
    #[schema(schema_with = error_code_schema)]
    pub code: String,
    pub message: String,
    /// True only when the user must reconnect the account.
    pub reconnect: bool,
    /// Seconds to wait before trying again, when known.
    pub retry_after_s: Option<u64>,
    /// Context: account_id, provider, attempts, duration_ms, failure, provider_error, field.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Every code the API answers with: the library's and the server's own.
pub fn all_codes() -> impl Iterator<Item = &'static str> {
    ErrorCode::ALL
        .iter()
        .map(|code| code.as_str())
        .chain(SERVER_CODES)
}

fn error_code_schema() -> utoipa::openapi::schema::Object {
    crate::views::string_enum(
        all_codes(),
        "stable code; branch on it and on `reconnect`, never on `message`",
    )
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            reconnect: false,
            retry_after: None,
            details: serde_json::Map::new(),
            count_here: true,
        }
    }

    /// 400 INVALID_REQUEST about `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.as_str(),
            format!("{field}: {message}"),
        );
        e.details.insert("field".into(), field.into());
        e
    }

    /// 400 INVALID_REQUEST whose message already names the field.
    pub fn invalid_message(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest.as_str(),
            message,
        )
    }

    /// 413 INVALID_REQUEST for an oversized body.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRequest.as_str(),
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 400 UNKNOWN_PROVIDER.
    pub fn unknown_provider(provider: &str) -> Self {
        // Echo the name only when it is a plausible one; it is client input.
        let shown: String = provider
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnknownProvider.as_str(),
            format!("provider `{shown}` is not configured"),
        );
        e.details.insert("provider".into(), shown.into());
        e
    }

    /// 404 ACCOUNT_NOT_FOUND.
    pub fn not_found(account_id: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::AccountNotFound.as_str(),
            "no such connection for this user",
        );
        e.details.insert("account_id".into(), account_id.into());
        e
    }

    /// 401 UNAUTHORIZED.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            UNAUTHORIZED,
            "missing or invalid API key (send `Authorization: Bearer <key>`)",
        )
    }

    /// 502 UPSTREAM_UNREACHABLE: the proxy could not reach the provider's API. `why` is a fixed
    /// phrase, never anything of the URL (it may carry a token).
    pub fn upstream_unreachable(provider: &str, why: &'static str) -> Self {
        Self::upstream(
            StatusCode::BAD_GATEWAY,
            UPSTREAM_UNREACHABLE,
            provider,
            format!("could not reach the API of provider {provider}: {why}"),
        )
    }

    /// 504 UPSTREAM_TIMEOUT: the provider's API did not answer in time.
    pub fn upstream_timeout(provider: &str, waited: Duration) -> Self {
        Self::upstream(
            StatusCode::GATEWAY_TIMEOUT,
            UPSTREAM_TIMEOUT,
            provider,
            format!(
                "the API of provider {provider} did not answer within {} ms",
                waited.as_millis()
            ),
        )
    }

    /// 504 UPSTREAM_TIMEOUT when the proxy could not connect to the provider's API within
    /// `waited` (`upstream.connect_timeout_ms`).
    pub fn upstream_connect_timeout(provider: &str, waited: Duration) -> Self {
        Self::upstream(
            StatusCode::GATEWAY_TIMEOUT,
            UPSTREAM_TIMEOUT,
            provider,
            format!(
                "the API of provider {provider} could not be connected to within {} ms",
                waited.as_millis()
            ),
        )
    }

    /// A proxy failure about `provider`'s API: `details.provider` names it.
    fn upstream(status: StatusCode, code: &'static str, provider: &str, message: String) -> Self {
        let mut e = Self::new(status, code, message);
        e.details.insert("provider".into(), provider.into());
        e
    }

    /// 409 NO_ACCESS_TOKEN: the stored access token cannot go where the provider's API takes
    /// it (a character no HTTP header may hold); only a new token (a reconnect, or an import)
    /// fixes that.
    pub fn unusable_token(account_id: &str) -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            ErrorCode::NoAccessToken.as_str(),
            "the stored access token cannot be sent in an HTTP header; import or connect the \
             account again",
        );
        e.reconnect = true;
        e.details.insert("account_id".into(), account_id.into());
        e
    }

    /// 405 INVALID_REQUEST: a method a route does not take.
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidRequest.as_str(),
            format!("method: must be one of {allowed}"),
        )
    }

    /// 500 GET_TOKEN_ERROR for a server-side failure whose detail must not reach the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::GetTokenError.as_str(),
            message,
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The HTTP status for a library error.
pub fn status_for(error: &Error) -> StatusCode {
    match error.code() {
        ErrorCode::AccountNotFound => StatusCode::NOT_FOUND,
        ErrorCode::NoRefreshToken
        | ErrorCode::TokenExpired
        | ErrorCode::NoAccessToken
        | ErrorCode::RefreshTooEarly => StatusCode::CONFLICT,
        ErrorCode::TokenRefreshError if error.is_circuit_open() => StatusCode::SERVICE_UNAVAILABLE,
        // The provider refused the grant for good: neither it nor the broker failed, and
        // only the user can fix it (`reconnect: true`).
        ErrorCode::TokenRefreshError if error.meta().failure == Some(FailureClass::Permanent) => {
            StatusCode::CONFLICT
        }
        ErrorCode::TokenRefreshError => StatusCode::BAD_GATEWAY,
        ErrorCode::InvalidRequest
        | ErrorCode::UnknownProvider
        | ErrorCode::ConnectStateInvalid
        | ErrorCode::IssuerMismatch => StatusCode::BAD_REQUEST,
        ErrorCode::ConnectSessionNotFound
        | ErrorCode::WebhookDeliveryNotFound
        | ErrorCode::WebhookEndpointNotFound => StatusCode::NOT_FOUND,
        ErrorCode::WebhookDeliveryNotFailed => StatusCode::CONFLICT,
        ErrorCode::ConnectSessionExpired => StatusCode::GONE,
        ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
        ErrorCode::AccountMismatch => StatusCode::CONFLICT,
        ErrorCode::AuthorizationFailed | ErrorCode::CodeExchangeFailed => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = status_for(&error);
        let meta = error.meta();
        let mut details = serde_json::Map::new();
        details.insert("account_id".into(), meta.account_id.clone().into());
        details.insert("attempts".into(), meta.attempts.into());
        details.insert(
            "duration_ms".into(),
            meta.duration
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .into(),
        );
        if let Some(provider) = &meta.provider {
            details.insert("provider".into(), provider.clone().into());
        }
        if let Some(failure) = meta.failure {
            details.insert("failure".into(), failure.as_str().into());
        }
        if let Some(provider_error) = &meta.provider_error {
            details.insert("provider_error".into(), provider_error.clone().into());
        }
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Database and decryption problems: the library's message is safe but unhelpful
            // to clients and may describe internals; the log has the detail.
            tracing::error!(code = %error.code(), error = %error, "request failed");
            "internal error while handling the connection".to_owned()
        } else {
            error.message().to_owned()
        };
        Self {
            status,
            code: error.code().as_str(),
            message,
            reconnect: error.reconnect(),
            retry_after: error.retry_after(),
            details,
            count_here: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.count_here {
            metrics::counter!(tokenwarden::metrics::ERRORS_TOTAL, "code" => self.code).increment(1);
        }
        // Round up: a client that waits the advertised time must not arrive early.
        let retry_after_s = self.retry_after.map(|d| {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            secs.max(1)
        });
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code.to_owned(),
                message: self.message,
                reconnect: self.reconnect,
                retry_after_s,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        // Retry-After wherever the body has a hint: 503 while a breaker is open, 409 for a
        // refresh the provider does not allow yet.
        if let Some(secs) = retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwarden::{ErrorMeta, FailureClass};

    #[test]
    fn every_code_has_its_status() {
        let cases = [
            (ErrorCode::AccountNotFound, 404),
            (ErrorCode::NoRefreshToken, 409),
            (ErrorCode::TokenRefreshError, 502),
            (ErrorCode::TokenExpired, 409),
            (ErrorCode::NoAccessToken, 409),
            (ErrorCode::GetTokenError, 500),
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::UnknownProvider, 400),
            (ErrorCode::RefreshTooEarly, 409),
            (ErrorCode::ConnectSessionNotFound, 404),
            (ErrorCode::ConnectSessionExpired, 410),
            (ErrorCode::ConnectStateInvalid, 400),
            (ErrorCode::AccessDenied, 403),
            (ErrorCode::AuthorizationFailed, 502),
            (ErrorCode::CodeExchangeFailed, 502),
            (ErrorCode::IssuerMismatch, 400),
            (ErrorCode::AccountMismatch, 409),
            (ErrorCode::WebhookDeliveryNotFound, 404),
            (ErrorCode::WebhookEndpointNotFound, 404),
            (ErrorCode::WebhookDeliveryNotFailed, 409),
        ];
        assert_eq!(cases.len(), ErrorCode::ALL.len());
        for (code, status) in cases {
            assert_eq!(
                status_for(&Error::new(code, "x")).as_u16(),
                status,
                "{code}"
            );
        }
    }

    #[test]
    fn open_breaker_is_503_with_retry_after() {
        let meta = ErrorMeta {
            failure: Some(FailureClass::CircuitOpen),
            ..ErrorMeta::default()
        };
        let error = Error::new(ErrorCode::TokenRefreshError, "breaker open")
            .with_meta(meta)
            .with_retry_after(Some(Duration::from_millis(2500)));
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn a_refresh_too_early_is_409_with_retry_after() {
        let error = Error::new(ErrorCode::RefreshTooEarly, "not yet")
            .with_retry_after(Some(Duration::from_secs(82_800)));
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::RETRY_AFTER], "82800");
    }

    #[test]
    fn a_grant_refused_for_good_is_409_not_a_gateway_error() {
        let meta = ErrorMeta {
            failure: Some(FailureClass::Permanent),
            ..ErrorMeta::default()
        };
        let error = Error::new(ErrorCode::TokenRefreshError, "invalid_grant")
            .with_meta(meta)
            .with_reconnect(true);
        assert_eq!(status_for(&error), StatusCode::CONFLICT);
    }

    #[test]
    fn every_code_is_in_the_documented_list() {
        let codes: Vec<_> = all_codes().collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len() + SERVER_CODES.len());
        assert!(codes.contains(&"REFRESH_TOO_EARLY") && codes.contains(&UNAUTHORIZED));
        assert!(codes.contains(&UPSTREAM_UNREACHABLE) && codes.contains(&UPSTREAM_TIMEOUT));
    }
}
