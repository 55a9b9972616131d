//! A refresh because an API refused the access token (HTTP 401): the proxy's, or any caller's
//! that calls a provider's API itself ([`crate::Warden::refresh_rejected`]).
//!
//! Many calls made with one token can be refused at once, and some of their 401s arrive after
//! the first of them already refreshed it. So the refused token is compared with the stored
//! one, before and again under the lease: when it is no longer the connection's token, the
//! current one is the answer and nothing is refreshed. Only a token that is still current is
//! refreshed, through the same single flight and lease as every refresh, so any number of
//! 401s on one connection cause one refresh, in one process and across instances.
//!
//! A token refreshed less than [`REJECTED_AGAIN_AFTER`] ago is not refreshed again: an API
//! that refuses a token that new refuses it for another reason (a missing scope, say), and
//! refreshing on each of its 401s would call the provider once per API call.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::connection::{Connection, ConnectionKey, ConnectionStatus};
use crate::error::Error;
use crate::refresh::errors;
use crate::secret::AccessToken;
use crate::warden::{AccessTokenGrant, Inner, Trigger};

/// How old a refreshed token must be before a 401 refreshes it again.
pub const REJECTED_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// A fingerprint of a refused access token (SHA-256), small enough to travel in a
/// [`Trigger`]. Compared in constant time; its `Debug` shows nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub(crate) fn of(token: &AccessToken) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(token.expose_secret().as_bytes()).into())
    }

    /// True when `token` is the token this digest was made from.
    pub(crate) fn matches(&self, token: &AccessToken) -> bool {
        use subtle::ConstantTimeEq as _;
        Self::of(token).0.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest([REDACTED])")
    }
}

impl Inner {
    /// See [`crate::Warden::refresh_rejected`].
    pub(crate) async fn refresh_rejected(
        self: &Arc<Self>,
        key: &ConnectionKey,
        rejected: &AccessToken,
    ) -> Result<Option<AccessTokenGrant>, Error> {
        let digest = TokenDigest::of(rejected);
        let conn = self.load(key).await?;
        if !digest.matches(&conn.tokens.access_token) {
            self.remember(&conn);
            return Ok(Some(AccessTokenGrant::of(&conn)));
        }
        let now = self.clock.now();
        if refreshed_recently(&conn, now) {
            return Ok(None);
        }
        if conn.meta.status == ConnectionStatus::NeedsReconnect {
            // The provider already refused this grant for good; the API has now refused its
            // token too. Only the user can fix it.
            return Err(errors::needs_reconnect(&conn));
        }
        if let Some(open) = self.open_breaker(key) {
            return Err(open);
        }
        // Twice at most: a refresh already in flight when the 401 arrived may be one that
        // had nothing to do (an on-demand refresh of a token not yet due), and its answer is
        // the refused token.
        for _ in 0..2 {
            let fresh = self
                .join_refresh(key, Trigger::Rejected(digest), self.refresh.retry, None)
                .await?;
            if !digest.matches(&fresh.tokens.access_token) {
                return Ok(Some(AccessTokenGrant::of(&fresh)));
            }
            if refreshed_recently(&fresh, self.clock.now()) {
                break;
            }
        }
        Ok(None)
    }
}

/// Whether `conn`'s token was refreshed less than [`REJECTED_AGAIN_AFTER`] before `now`.
pub(crate) fn refreshed_recently(conn: &Connection, now: OffsetDateTime) -> bool {
    conn.meta
        .last_refreshed_at
        .is_some_and(|at| now - at < REJECTED_AGAIN_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_matches_its_token_only_and_shows_nothing() {
        let token = AccessToken::new("at-SECRET-1");
        let digest = TokenDigest::of(&token);
        assert!(digest.matches(&token));
        assert!(!digest.matches(&AccessToken::new("at-SECRET-2")));
        assert_eq!(format!("{digest:?}"), "TokenDigest([REDACTED])");
    }
}
