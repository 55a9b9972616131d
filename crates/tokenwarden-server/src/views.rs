//! JSON shapes of the API: request bodies and response views.
//!
//! Views are built from the library's secret-free types ([`ConnectionMeta`], provider info),
//! so a token cannot reach one by accident; the access-token response is the one deliberate
//! exception. Request bodies deserialize secrets straight into the library's secret types.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokenwarden::provider::ProviderInfo;
use tokenwarden::{AccessToken, BreakerState, ConnectionMeta, RefreshToken};
use utoipa::ToSchema;
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, SchemaType, Type};

use crate::config::{MAX_DELAY_MS_LIMIT, MAX_RETRIES_LIMIT};

/// Longest accepted `expires_in` / `refresh_expires_in`: ten years, far beyond any provider.
pub const MAX_EXPIRES_IN_S: u64 = 10 * 366 * 86_400;
/// Most scopes one connection may carry.
pub const MAX_SCOPES: usize = 1000;

/// RFC 3339 in UTC, or an empty string for the rare time that cannot be formatted.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.checked_to_offset(time::UtcOffset::UTC)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn opt_rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.map(rfc3339)
}

/// A connection, without secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub user_id: String,
    pub provider: String,
    pub account_id: String,
    /// `active` or `needs_reconnect` (a refresh failed for good: the user must reconnect).
    #[schema(schema_with = connection_status_schema)]
    pub status: String,
    pub token_type: String,
    /// RFC 3339; null when the provider gave no expiry.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub refresh_expires_at: Option<String>,
    pub has_refresh_token: bool,
    #[schema(format = DateTime)]
    pub last_refreshed_at: Option<String>,
    pub consecutive_failures: u32,
    pub last_error: Option<LastErrorView>,
    pub scopes: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// The last refresh failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastErrorView {
    pub code: String,
    pub message: String,
    /// The provider's own OAuth `error` value (`invalid_grant`, …), when it gave one.
    pub provider_error: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&ConnectionMeta> for ConnectionView {
    fn from(m: &ConnectionMeta) -> Self {
        Self {
            user_id: m.key.user_id.to_string(),
            provider: m.key.provider.to_string(),
            account_id: m.key.account_id.to_string(),
            status: m.status.as_str().to_owned(),
            token_type: m.token_type.clone(),
            expires_at: opt_rfc3339(m.expires_at),
            refresh_expires_at: opt_rfc3339(m.refresh_expires_at),
            has_refresh_token: m.has_refresh_token,
            last_refreshed_at: opt_rfc3339(m.last_refreshed_at),
            consecutive_failures: m.consecutive_failures,
            last_error: m.last_error.as_ref().map(|e| LastErrorView {
                code: e.code.clone(),
                message: e.message.clone(),
                provider_error: e.provider_error.clone(),
                at: rfc3339(e.at),
            }),
            scopes: m.scopes.clone(),
            metadata: m.metadata.clone(),
            created_at: rfc3339(m.created_at),
            updated_at: rfc3339(m.updated_at),
        }
    }
}

/// `GET /v1/connections`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionList {
    pub items: Vec<ConnectionView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET .../access-token`. Borrows from the grant: the token is not copied into a string
/// that outlives the response unwiped.
#[derive(Serialize, ToSchema)]
pub struct AccessTokenView<'a> {
    pub access_token: &'a str,
    pub token_type: &'a str,
    /// RFC 3339; null when the provider gave no expiry.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// `PUT .../{account_id}`: tokens the application holds. A JSON object; `expires_in` and
/// `expires_at` are not both given (the document says so with an `anyOf`, see `api.rs`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// Non-empty.
    #[schema(value_type = String, min_length = 1)]
    pub access_token: AccessToken,
    /// Non-empty when given.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 1)]
    pub refresh_token: Option<RefreshToken>,
    /// Seconds from now, at most ten years. Not together with `expires_at`.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(schema_with = expires_in_schema)]
    pub expires_in: Option<u64>,
    /// RFC 3339; may be in the past (an expired token to refresh). Not with `expires_in`.
    /// A time before 1970 is stored as 1970-01-01T00:00:00Z (it has expired either way), one
    /// after 9999-12-31T23:59:59Z as that.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Extension: seconds until the refresh token expires, when the provider said (at most
    /// ten years).
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(schema_with = expires_in_schema)]
    pub refresh_expires_in: Option<u64>,
    /// Extension: default `Bearer`; 1-64 printable ASCII characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[!-~]+$")]
    pub token_type: Option<String>,
    /// At most 1000.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub scopes: Option<Vec<String>>,
    /// A JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `POST .../refresh`: a JSON object, every field optional; no body at all means no
/// overrides. An `initial_delay_ms` above the effective `max_delay_ms` is lowered to it
/// (every retry then waits `max_delay_ms`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// Retries after the first attempt, 0-10.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(schema_with = max_retries_schema)]
    pub max_retries: Option<u32>,
    /// Delay before the first retry, 1-60000 ms.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(schema_with = delay_ms_schema)]
    pub initial_delay_ms: Option<u64>,
    /// Longest delay between retries, 1-60000 ms.
    #[serde(default, deserialize_with = "optional_integer")]
    #[schema(schema_with = delay_ms_schema)]
    pub max_delay_ms: Option<u64>,
}

/// Reads an optional non-negative integer the way JSON Schema defines `integer`: any number
/// with a zero fractional part, so `16.0` and `1e2` are integers to a client generated from
/// the document and must be accepted as such. `null` is absent.
fn optional_integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::{Error, Unexpected};
    const EXPECTED: &str = "a non-negative integer";
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let value = if let Some(n) = number.as_u64() {
        n
    } else if let Some(n) = number.as_i64() {
        return Err(D::Error::invalid_value(Unexpected::Signed(n), &EXPECTED));
    } else {
        let f = number.as_f64().unwrap_or(f64::NAN);
        // 2^64 is the first float above u64::MAX; below it, a whole float converts exactly.
        if !(f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)) {
            return Err(D::Error::invalid_value(Unexpected::Float(f), &EXPECTED));
        }
        // Whole and in range: the conversion is exact.
        f as u64
    };
    T::try_from(value)
        .map(Some)
        .map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(value), &"a smaller integer"))
}

/// An optional integer in `min..=max` (JSON null counts as absent).
fn schema_optional_integer(min: u64, max: u64, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
        .build()
}

fn expires_in_schema() -> Object {
    schema_optional_integer(0, MAX_EXPIRES_IN_S, "seconds from now, at most ten years")
}

fn max_retries_schema() -> Object {
    schema_optional_integer(
        0,
        u64::from(MAX_RETRIES_LIMIT),
        "retries after the first attempt",
    )
}

fn delay_ms_schema() -> Object {
    schema_optional_integer(1, MAX_DELAY_MS_LIMIT, "milliseconds")
}

/// A string that is one of `values`.
pub fn string_enum<'a>(values: impl IntoIterator<Item = &'a str>, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .build()
}

pub(crate) fn connection_status_schema() -> Object {
    string_enum(
        [
            tokenwarden::ConnectionStatus::Active.as_str(),
            tokenwarden::ConnectionStatus::NeedsReconnect.as_str(),
        ],
        "`active`, or `needs_reconnect` when a refresh failed for good",
    )
}

/// A configured provider (no secrets) with its circuit breaker.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub name: String,
    /// instagram, tiktok, reddit or oauth2.
    pub kind: String,
    /// Extension: where the settings came from: `catalog`, `discovery` or `config`.
    #[schema(schema_with = source_schema)]
    pub source: String,
    /// Extension: the catalog entry the provider is built on.
    pub catalog: Option<String>,
    /// Extension: the provider's display name, from the catalog.
    pub display_name: Option<String>,
    /// Extension: `authorization_code` (user connections) or `client_credentials` (one
    /// application token: `GET /v1/apps/{provider}/access-token`).
    #[schema(schema_with = grant_schema)]
    pub grant: String,
    /// Extension: where users consent (the connect flow).
    pub authorization_url: Option<String>,
    pub token_url: String,
    /// Extension: the revocation endpoint used when a connection is deleted.
    pub revoke_url: Option<String>,
    /// Extension: the request the account id comes from, when it needs one.
    pub userinfo_url: Option<String>,
    /// Extension: the base of the provider's API.
    pub api_base_url: Option<String>,
    /// Extension: the OpenID Connect / RFC 8414 issuer the endpoints were discovered from.
    pub issuer: Option<String>,
    pub auth_method: Option<String>,
    /// Extension: the scopes requested by default.
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub rate_limit_per_second: Option<u32>,
    /// Extension: the provider's circuit breaker.
    pub breaker: BreakerView,
}

/// A circuit breaker's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    /// closed, open or half_open.
    #[schema(schema_with = breaker_state_schema)]
    pub state: String,
    /// Transient failures in a row (closed only).
    pub consecutive_failures: Option<u32>,
    /// Seconds until a probe is let through (open only).
    pub retry_after_s: Option<u64>,
}

fn source_schema() -> Object {
    string_enum(
        ["catalog", "discovery", "config"],
        "where the settings came from",
    )
}

fn grant_schema() -> Object {
    string_enum(
        ["authorization_code", "client_credentials"],
        "how the provider's tokens are obtained",
    )
}

fn breaker_state_schema() -> Object {
    string_enum(["closed", "open", "half_open"], "closed, open or half_open")
}

impl ProviderView {
    pub fn new(info: ProviderInfo, breaker: Option<BreakerState>) -> Self {
        Self {
            name: info.name,
            kind: info.kind.as_str().to_owned(),
            source: info.source.as_str().to_owned(),
            catalog: info.catalog,
            display_name: info.display_name,
            grant: info.grant.as_str().to_owned(),
            authorization_url: info.authorization_url,
            token_url: info.token_url,
            revoke_url: info.revoke_url,
            userinfo_url: info.userinfo_url,
            api_base_url: info.api_base_url,
            issuer: info.issuer,
            auth_method: info.auth_method.map(|m| m.as_str().to_owned()),
            scopes: info.scopes,
            client_id: info.client_id,
            rate_limit_per_second: info.rate_limit_per_second,
            breaker: BreakerView::from(breaker),
        }
    }
}

impl From<Option<BreakerState>> for BreakerView {
    fn from(state: Option<BreakerState>) -> Self {
        let state = state.unwrap_or(BreakerState::Closed {
            consecutive_failures: 0,
        });
        let (consecutive_failures, retry_after_s) = match state {
            BreakerState::Closed {
                consecutive_failures,
            } => (Some(consecutive_failures), None),
            BreakerState::Open { retry_after } => (
                None,
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)),
            ),
            BreakerState::HalfOpen => (None, None),
        };
        Self {
            state: state.as_str().to_owned(),
            consecutive_failures,
            retry_after_s,
        }
    }
}

/// `GET /v1/providers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderView>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    #[schema(schema_with = health_status_schema)]
    pub status: String,
}

fn health_status_schema() -> Object {
    string_enum(["ok", "unavailable"], "`ok` or `unavailable`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_without_an_rfc3339_spelling_in_utc_does_not_panic() {
        let late = time::macros::datetime!(9999-12-31 23:59:59 -01:00);
        assert_eq!(rfc3339(late), "");
        let early = time::macros::datetime!(0000-01-01 00:00 +01:00);
        assert_eq!(rfc3339(early), "");
        let fine = time::macros::datetime!(2026-11-30 12:00 +01:00);
        assert_eq!(rfc3339(fine), "2026-11-30T11:00:00Z");
    }
}
