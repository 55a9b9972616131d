//! The connection: one user's authorized account at one provider (the seed's "Integration").
//!
//! This module owns identifiers, the connection record and its status, and the pure rule that
//! decides when a token needs a refresh. It does not persist anything (see `store`) or talk to
//! providers (see `provider`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::secret::{AccessToken, RefreshToken};

/// Longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {MAX_ID_LEN} bytes")]
    TooLong { field: &'static str },
    #[error("{field} contains a character that is not allowed (control characters and '/')")]
    BadChar { field: &'static str },
    #[error("{field} must be 1-64 characters of a-z, 0-9, '_' or '-'")]
    BadProviderName { field: &'static str },
}

fn check_id(field: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { field });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { field });
    }
    if value.chars().any(|c| c.is_control() || c == '/') {
        return Err(IdError::BadChar { field });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $field:literal, $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let check: fn(&'static str, &str) -> Result<(), IdError> = $check;
                check($field, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// The application's identifier for one of its users.
    UserId,
    "user_id",
    check_id
);
id_type!(
    /// The account at the provider (a user may connect several).
    AccountId,
    "account_id",
    check_id
);
id_type!(
    /// A configured provider's name (the section name in the configuration).
    ProviderName,
    "provider",
    |field, value| {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok { Ok(()) } else { Err(IdError::BadProviderName { field }) }
    }
);

/// A connection's identity: `(user_id, provider, account_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnectionKey {
    pub user_id: UserId,
    pub provider: ProviderName,
    pub account_id: AccountId,
}

/// The user id and the account id of an application token's connection: a provider with the
/// client-credentials grant keeps its one token under `(_app, provider, _app)`.
pub const APP_ID: &str = "_app";

impl ConnectionKey {
    /// The reserved key under which `provider`'s application token (client-credentials
    /// grant) is stored: user `_app`, account `_app` ([`APP_ID`]).
    pub fn app(provider: ProviderName) -> Self {
        Self {
            user_id: UserId(APP_ID.to_owned()),
            provider,
            account_id: AccountId(APP_ID.to_owned()),
        }
    }

    /// Whether this is the reserved key of an application token (see [`ConnectionKey::app`]).
    pub fn is_app(&self) -> bool {
        self.user_id.as_str() == APP_ID && self.account_id.as_str() == APP_ID
    }

    /// Builds a key from its three parts.
    pub fn new(user_id: UserId, provider: ProviderName, account_id: AccountId) -> Self {
        Self {
            user_id,
            provider,
            account_id,
        }
    }

    /// Validates three strings into a key.
    pub fn parse(user_id: &str, provider: &str, account_id: &str) -> Result<Self, IdError> {
        Ok(Self {
            user_id: UserId::parse(user_id)?,
            provider: ProviderName::parse(provider)?,
            account_id: AccountId::parse(account_id)?,
        })
    }
}

impl fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.user_id, self.provider, self.account_id)
    }
}

/// Whether a connection can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Tokens are usable or refreshable.
    Active,
    /// A refresh failed permanently (revoked, `invalid_grant`, expired without a refresh
    /// token): the user must reconnect. Nothing is deleted.
    NeedsReconnect,
}

impl ConnectionStatus {
    /// The stable string form used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReconnect => "needs_reconnect",
        }
    }

    /// Parses the stable string form.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "active" => Some(Self::Active),
            "needs_reconnect" => Some(Self::NeedsReconnect),
            _ => None,
        }
    }
}

/// The last refresh failure, kept for operators. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// The library's error code (`TOKEN_REFRESH_ERROR`, `TOKEN_EXPIRED`, ...).
    pub code: String,
    /// A sanitized description, e.g. the provider's OAuth `error` value.
    pub message: String,
    /// The provider's own OAuth `error` value (`invalid_grant`, …), when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Everything about a connection except its secrets. Listing and views use this, so a
/// ciphertext that cannot be opened never hides the rest of the record.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionMeta {
    pub key: ConnectionKey,
    pub token_type: String,
    pub has_refresh_token: bool,
    /// When the access token expires; `None` when the provider gave no expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// When the refresh token expires, when the provider says (`refresh_expires_in`).
    pub refresh_expires_at: Option<OffsetDateTime>,
    /// When the current access token was issued, if known: the refresh time, or the import
    /// time when the application gave `expires_in`. Unknown for an import with only
    /// `expires_at`, whose lifetime we cannot tell.
    pub issued_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    pub metadata: serde_json::Value,
    pub status: ConnectionStatus,
    pub last_refreshed_at: Option<OffsetDateTime>,
    /// Refresh failures since the last success.
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// When the scheduler should next refresh this connection (proactive refresh, keep-alive
    /// or a queued retry); `None` when nothing is scheduled.
    pub next_refresh_at: Option<OffsetDateTime>,
    /// Incremented by every write; stores use it for compare-and-swap updates.
    pub version: i64,
}

impl ConnectionMeta {
    /// The access token's whole lifetime, when it has an expiry after its issue time.
    pub fn lifetime(&self) -> Option<Duration> {
        let lifetime = self.expires_at? - self.issued_at?;
        Duration::try_from(lifetime).ok().filter(|d| !d.is_zero())
    }
}

/// A connection's secrets.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
}

/// A connection with its decrypted secrets.
#[derive(Debug, Clone)]
pub struct Connection {
    pub meta: ConnectionMeta,
    pub tokens: Tokens,
}

impl Connection {
    /// The connection's key.
    pub fn key(&self) -> &ConnectionKey {
        &self.meta.key
    }
}

/// True when a token expiring at `expires_at` should be refreshed at `now`.
///
/// The threshold is `threshold` (5 minutes by default), except for a token whose whole
/// lifetime (`lifetime`, when known) is shorter than twice the threshold: then it shrinks to
/// half the lifetime, so a short-lived token is not refreshed on every request. A token
/// without expiry never needs a refresh by this rule.
pub fn should_refresh(
    expires_at: Option<OffsetDateTime>,
    lifetime: Option<Duration>,
    threshold: Duration,
    now: OffsetDateTime,
) -> bool {
    let Some(expires_at) = expires_at else {
        return false;
    };
    let threshold = effective_threshold(lifetime, threshold);
    expires_at - now <= threshold
}

/// The threshold after shrinking it for short-lived tokens.
pub fn effective_threshold(lifetime: Option<Duration>, threshold: Duration) -> Duration {
    match lifetime {
        Some(lifetime) if lifetime < threshold * 2 => lifetime / 2,
        _ => threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn ids_reject_bad_input() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a/b").is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse("x".repeat(256)).is_err());
        assert!(UserId::parse("user@example.com").is_ok());
        assert!(ProviderName::parse("TikTok").is_err());
        assert!(ProviderName::parse("tiktok").is_ok());
    }

    #[test]
    fn no_expiry_never_refreshes() {
        let now = datetime!(2026-01-01 0:00 UTC);
        assert!(!should_refresh(None, None, Duration::from_secs(300), now));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        // Seed property 4: the 5-minute threshold.
        #[test]
        fn five_minute_threshold(remaining in -10_000i64..10_000) {
            let now = datetime!(2026-01-01 0:00 UTC);
            let expires = now + time::Duration::seconds(remaining);
            let refresh = should_refresh(Some(expires), None, Duration::from_secs(300), now);
            prop_assert_eq!(refresh, remaining <= 300);
        }

        #[test]
        fn short_lived_tokens_use_half_their_lifetime(
            lifetime_s in 1u64..1200, remaining in -2000i64..2000
        ) {
            let now = datetime!(2026-01-01 0:00 UTC);
            let expires = now + time::Duration::seconds(remaining);
            let lifetime = Duration::from_secs(lifetime_s);
            let refresh = should_refresh(Some(expires), Some(lifetime), Duration::from_secs(300), now);
            let threshold = if lifetime_s < 600 { lifetime_s as f64 / 2.0 } else { 300.0 };
            prop_assert_eq!(refresh, (remaining as f64) <= threshold);
        }
    }
}
