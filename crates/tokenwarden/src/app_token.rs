//! Application tokens: one access token per provider with the client-credentials grant
//! (RFC 6749 §4.4), for calls made as the application rather than as a user.
//!
//! An application token is an ordinary connection stored under the reserved key
//! `(_app, provider, _app)` ([`ConnectionKey::app`]), so it gets everything a user token has:
//! the in-memory cache, sealed storage shared by every instance, the refresh lease, single
//! flight, retries, the breaker and the scheduler. What differs is how it starts and how it
//! fails:
//!
//! - The first request finds no row. It creates an empty one with the store's atomic
//!   [`Store::insert_if_absent`] (never a get-then-put), expired from the start, and then
//!   takes the ordinary refresh path: the row's lease keeps the first token request single
//!   flight across instances exactly as for a refresh.
//! - There is no user to reconnect: a failure the provider says is permanent is an operator
//!   problem (`refresh::run` classes it as configuration) and the row never becomes
//!   `needs_reconnect` (`refresh::record`).
//!
//! The cache hit is `Warden::access_token`'s, on the reserved key; this module is the rest.
//!
//! [`Store::insert_if_absent`]: crate::store::Store::insert_if_absent

use std::sync::Arc;

use crate::connection::{
    Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, Tokens, effective_threshold,
    should_refresh,
};
use crate::error::{Error, ErrorCode};
use crate::metrics as m;
use crate::refresh::errors;
use crate::secret::AccessToken;
use crate::warden::{AccessTokenGrant, BLOCKING_WINDOW, Inner, Trigger};

/// How often a request starts over when the application token's row disappears under it (a
/// concurrent delete) before it gives up.
const ROW_ATTEMPTS: usize = 3;

impl Inner {
    /// The reserved key of `provider`'s application token, or why it has none: the provider
    /// is not configured (`UNKNOWN_PROVIDER`), or it is not a client-credentials provider
    /// (`INVALID_REQUEST`).
    pub(crate) fn app_key(&self, provider: &crate::ProviderName) -> Result<&ConnectionKey, Error> {
        let entry = self
            .providers
            .get(provider)
            .ok_or_else(|| errors::unknown_provider(provider))?;
        entry.app_key.as_ref().ok_or_else(|| {
            let meta = crate::ErrorMeta {
                provider: Some(provider.to_string()),
                ..crate::ErrorMeta::default()
            };
            Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "provider: {provider} uses the {} grant; application tokens need a \
                     provider configured with grant = \"client_credentials\"",
                    entry.provider.grant().as_str()
                ),
            )
            .with_meta(meta)
        })
    }

    /// Whether `key`'s provider hands out application tokens only (client credentials).
    pub(crate) fn is_application(&self, key: &ConnectionKey) -> bool {
        self.providers
            .get(&key.provider)
            .is_some_and(|e| e.app_key.is_some())
    }

    /// An application token when the cache had none fresh: the stored one while it is
    /// good, else a new one from the provider (creating the row first when there is none).
    /// The same decisions as a user token's (`Warden::access_token`): a token comfortably
    /// valid is returned while a background refresh runs; one about to expire waits.
    pub(crate) async fn app_token_slow(
        self: &Arc<Self>,
        key: &ConnectionKey,
    ) -> Result<(AccessTokenGrant, &'static str), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.app_token_once(key).await {
                // Deleted between our read and the refresh: create it again.
                Err(e) if e.code() == ErrorCode::AccountNotFound && attempt < ROW_ATTEMPTS => {}
                Err(e) if e.code() == ErrorCode::AccountNotFound => {
                    return Err(Error::new(
                        ErrorCode::GetTokenError,
                        "the application token kept being deleted while it was obtained",
                    )
                    .with_meta(errors::key_meta(key, None)));
                }
                other => return other,
            }
        }
    }

    async fn app_token_once(
        self: &Arc<Self>,
        key: &ConnectionKey,
    ) -> Result<(AccessTokenGrant, &'static str), Error> {
        let stored = self
            .store
            .get(key)
            .await
            .map_err(|e| errors::from_store(e, key))?;
        let conn = match stored {
            Some(conn) => conn,
            None => self.create_app_row(key).await?,
        };
        let now = self.clock.now();
        let meta = &conn.meta;
        // The empty row a first request creates holds no token; neither does an expired one.
        let usable =
            !conn.tokens.access_token.is_empty() && meta.expires_at.is_none_or(|at| at > now);
        if usable {
            self.remember(&conn);
        }
        let threshold = self.refresh.threshold;
        let needs_refresh = meta.status != ConnectionStatus::Active
            || should_refresh(meta.expires_at, meta.lifetime(), threshold, now);
        if usable && !needs_refresh {
            return Ok((AccessTokenGrant::of(&conn), "fresh"));
        }
        let remaining = meta.expires_at.map(|at| at - now);
        let blocking = BLOCKING_WINDOW.min(effective_threshold(meta.lifetime(), threshold) / 2);
        let must_wait = !usable || remaining.is_none_or(|r| r <= blocking);
        metrics::counter!(m::AUTO_REFRESH_TOTAL, "provider" => key.provider.to_string(),
            "trigger" => "on_demand")
        .increment(1);
        if !must_wait {
            self.refresh_in_background(key, meta, now);
            return Ok((AccessTokenGrant::of(&conn), "fresh"));
        }
        tracing::info!(provider = %key.provider, first = conn.tokens.access_token.is_empty(),
            "application token needs to be obtained");
        let outcome = match self.open_breaker(key) {
            Some(open) => Err(open),
            None => {
                self.join_refresh(key, Trigger::OnDemand, self.refresh.retry, None)
                    .await
            }
        };
        match outcome {
            Ok(fresh) if !fresh.tokens.access_token.is_empty() => {
                Ok((AccessTokenGrant::of(&fresh), "refreshed"))
            }
            // Another instance's refresh ended without a token and said nothing (a row
            // replaced meanwhile): nothing to hand out.
            Ok(_) => Err(Error::new(
                ErrorCode::TokenRefreshError,
                "no application token could be obtained",
            )
            .with_meta(errors::key_meta(key, None))),
            Err(error) if usable => {
                tracing::warn!(provider = %key.provider, code = %error.code(),
                    "application token refresh failed; serving the still-valid token");
                Ok((AccessTokenGrant::of(&conn), "degraded"))
            }
            Err(error) => Err(error),
        }
    }

    /// Creates the application token's row, empty and expired, unless another request (of
    /// this instance or another) already did; returns the row as it is now.
    async fn create_app_row(&self, key: &ConnectionKey) -> Result<Connection, Error> {
        let now = self.clock.now();
        let conn = Connection {
            meta: ConnectionMeta {
                key: key.clone(),
                token_type: "Bearer".to_owned(),
                has_refresh_token: false,
                // Expired from the start: the refresh that follows must not think it is done.
                expires_at: Some(time::OffsetDateTime::UNIX_EPOCH),
                refresh_expires_at: None,
                issued_at: None,
                scopes: Vec::new(),
                metadata: serde_json::Value::Object(serde_json::Map::new()),
                status: ConnectionStatus::Active,
                last_refreshed_at: None,
                consecutive_failures: 0,
                last_error: None,
                created_at: now,
                updated_at: now,
                // The request that created it obtains the token; the scheduler takes over
                // from the first success (or failure).
                next_refresh_at: None,
                version: 0,
            },
            tokens: Tokens {
                access_token: AccessToken::new(String::new()),
                refresh_token: None,
            },
        };
        match self.store.insert_if_absent(&conn).await {
            Ok(Some(meta)) => {
                tracing::info!(provider = %key.provider, "application token row created");
                Ok(Connection { meta, ..conn })
            }
            // Another request created it first: work from what it stored.
            Ok(None) => self.load(key).await,
            Err(e) => Err(errors::from_store(e, key)),
        }
    }
}
