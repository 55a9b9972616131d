//! Recording a refresh's outcome durably: a success is merged into the connection and
//! committed (compare-and-swap, through group commit, retried over database blips, since the
//! provider has already rotated the grant and this commit is its only copy); a failure is
//! counted, kept as `last_error`, and turned into the next step of the schedule (backoff,
//! reconnect, or a fixed time). Nothing here calls a provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use crate::connection::{Connection, ConnectionKey, ConnectionStatus, LastError};
use crate::error::{Error, ErrorCode, FailureClass};
use crate::metrics as m;
use crate::provider::{NotRefreshable, TokenResponse};
use crate::refresh::errors::{self, duration_ms};
use crate::refresh::policy::jitter_unit;
use crate::scheduler::{plan_after_failure, plan_after_success};
use crate::store::StoreError;
use crate::warden::{Inner, RefreshOutcome, Trigger};
use crate::webhooks::outbox::Prior;

/// Waits before retrying the commit of a refresh's result after a database error: a blip
/// (failover, a dropped connection) should not cost a grant the provider already rotated.
/// About 2 s in all, well inside the renewed lease.
const COMMIT_RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
];

/// What a failure does to the schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Next {
    /// The user must reconnect: stop scheduling.
    Reconnect,
    /// Retry with the queue's exponential backoff.
    Backoff,
    /// Look again at this time.
    At(OffsetDateTime),
}

impl Inner {
    /// Merges `response` into `conn` and commits it. A concurrent import or delete wins over
    /// this refresh; a database error is retried a few times (the lease is still ours and
    /// renewed). Sets `released` once the commit has released the lease.
    pub(crate) async fn commit_success(
        &self,
        mut conn: Connection,
        response: TokenResponse,
        released: &AtomicBool,
    ) -> RefreshOutcome {
        let now = self.clock.now();
        let used_refresh_token = conn.tokens.refresh_token.clone();
        // The row as read, at the version the write expects: what its events are decided on.
        let mut was = Prior::of(&conn.meta);
        apply_response(&mut conn, response, now);
        conn.meta.next_refresh_at = plan_after_success(
            &conn.meta,
            &self.scheduler,
            self.refresh.threshold,
            now,
            jitter_unit(),
        );
        let mut conflicts = 0;
        let mut failed_writes = 0;
        while conflicts < 3 {
            match self.commits.update(&conn, was).await {
                Ok(meta) => {
                    // `update` released the lease in the same statement.
                    released.store(true, Ordering::Relaxed);
                    conn.meta = meta;
                    self.remember(&conn);
                    return Ok(Arc::new(conn));
                }
                Err(StoreError::Conflict) => {
                    let current = self.load(conn.key()).await?;
                    let same_grant = match (&current.tokens.refresh_token, &used_refresh_token) {
                        (Some(a), Some(b)) => a.ct_eq(b),
                        (None, None) => {
                            current.tokens.access_token.ct_eq(&conn.tokens.access_token)
                                || current.meta.expires_at == conn.meta.expires_at
                        }
                        _ => false,
                    };
                    if !same_grant {
                        tracing::warn!(provider = %conn.key().provider,
                            account_id = %conn.key().account_id,
                            "connection was replaced during refresh; keeping the replacement");
                        self.cache.forget(conn.key());
                        return Ok(Arc::new(current));
                    }
                    conn.meta.version = current.meta.version;
                    was = Prior::of(&current.meta);
                    conflicts += 1;
                }
                Err(StoreError::Database(message)) if failed_writes < COMMIT_RETRY_DELAYS.len() => {
                    let wait = COMMIT_RETRY_DELAYS[failed_writes];
                    failed_writes += 1;
                    tracing::warn!(provider = %conn.key().provider,
                        account_id = %conn.key().account_id, error = %message,
                        retry_in_ms = duration_ms(wait),
                        "could not store the refreshed tokens; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!(provider = %conn.key().provider,
                        account_id = %conn.key().account_id, error = %e,
                        "the refreshed tokens could not be stored; a rotated grant is lost");
                    return Err(errors::from_store(e, conn.key()));
                }
            }
        }
        Err(Error::new(
            ErrorCode::GetTokenError,
            "connection kept changing during refresh",
        ))
    }

    /// Moves a connection's scheduled refresh to `at` without counting a failure.
    pub(crate) async fn reschedule(&self, key: &ConnectionKey, at: OffsetDateTime) {
        let Ok(mut conn) = self.load(key).await else {
            return;
        };
        let was = Prior::of(&conn.meta);
        conn.meta.next_refresh_at = Some(at);
        if let Err(e) = self.commits.update(&conn, was).await
            && !matches!(e, StoreError::Conflict | StoreError::NotFound)
        {
            tracing::warn!(provider = %key.provider, account_id = %key.account_id, error = %e,
                "could not reschedule the refresh");
        }
    }

    /// Counts a failed refresh on the connection, keeps `error` as its last error and plans
    /// what comes next. Tokens are left as they were.
    pub(crate) async fn record_failure(&self, mut conn: Connection, error: &Error, next: Next) {
        let now = self.clock.now();
        let was = Prior::of(&conn.meta);
        conn.meta.consecutive_failures = conn.meta.consecutive_failures.saturating_add(1);
        conn.meta.last_error = Some(LastError {
            code: error.code().as_str().to_owned(),
            message: error.message().to_owned(),
            provider_error: error.meta().provider_error.clone(),
            at: now,
        });
        conn.meta.updated_at = now;
        // An application token has no user to reconnect it: it keeps being retried.
        let application = self.is_application(conn.key());
        let meta = &mut conn.meta;
        // Transient failures keep retrying until both tokens are past expiry.
        let both_expired = !application
            && meta.expires_at.is_some_and(|at| at <= now)
            && meta.refresh_expires_at.is_some_and(|at| at <= now);
        let next = match next {
            Next::Reconnect if application => Next::Backoff,
            next => next,
        };
        match next {
            Next::Reconnect => {
                meta.status = ConnectionStatus::NeedsReconnect;
                meta.next_refresh_at = None;
            }
            Next::Backoff if both_expired => {
                meta.status = ConnectionStatus::NeedsReconnect;
                meta.next_refresh_at = None;
            }
            Next::Backoff => {
                meta.next_refresh_at = Some(plan_after_failure(
                    meta.consecutive_failures,
                    &self.scheduler,
                    now,
                    jitter_unit(),
                ));
            }
            Next::At(at) => meta.next_refresh_at = Some(at),
        }
        let key = conn.key().clone();
        match self.commits.update(&conn, was).await {
            Ok(_) | Err(StoreError::Conflict | StoreError::NotFound) => {}
            Err(e) => tracing::error!(provider = %key.provider, account_id = %key.account_id,
                error = %e, "could not record the refresh failure"),
        }
        self.cache.forget(&key);
    }

    /// The answer for a connection the provider cannot refresh now: no refresh token, an
    /// expired token that cannot be refreshed (both need a reconnect), or a token too young
    /// to be refreshed yet (not a failure: `REFRESH_TOO_EARLY` with the time it will be).
    pub(crate) async fn not_refreshable(
        &self,
        conn: Connection,
        reason: NotRefreshable,
        trigger: Trigger,
        now: OffsetDateTime,
    ) -> RefreshOutcome {
        let key = conn.key().clone();
        let meta = errors::key_meta(&key, None);
        let (error, next) = match reason {
            NotRefreshable::NoRefreshToken => (
                Error::new(
                    ErrorCode::NoRefreshToken,
                    "refresh needed but no refresh token is stored",
                ),
                // Nothing to retry; look again when it expires, to mark it for reconnect.
                match conn.meta.expires_at {
                    Some(at) if at > now => Next::At(at),
                    _ => Next::Reconnect,
                },
            ),
            NotRefreshable::Expired => (
                Error::new(
                    ErrorCode::TokenExpired,
                    "token expired and the provider cannot refresh it",
                ),
                Next::Reconnect,
            ),
            NotRefreshable::TooYoung { ready_at } => {
                let wait = Duration::try_from(ready_at - now).unwrap_or(Duration::ZERO);
                if trigger == Trigger::Scheduled {
                    self.reschedule(&key, ready_at).await;
                }
                return Err(Error::new(
                    ErrorCode::RefreshTooEarly,
                    "the provider does not allow refreshing this token yet",
                )
                .with_retry_after(Some(wait))
                .with_meta(meta));
            }
        };
        metrics::counter!(m::REFRESH_TOTAL, "provider" => key.provider.to_string(),
            "outcome" => "not_refreshable")
        .increment(1);
        let mut meta = meta;
        meta.failure = Some(FailureClass::Permanent);
        let error = error.with_meta(meta);
        tracing::warn!(provider = %key.provider, account_id = %key.account_id,
            code = %error.code(), "token cannot be refreshed");
        self.record_failure(conn, &error, next).await;
        Err(error)
    }
}

/// Merges a refresh answer into the connection (RFC 6749 §6: keep the old refresh token when
/// none comes back).
fn apply_response(conn: &mut Connection, response: TokenResponse, now: OffsetDateTime) {
    let rotated = response.refresh_token.is_some();
    conn.tokens.access_token = response.access_token;
    if let Some(rt) = response.refresh_token {
        conn.tokens.refresh_token = Some(rt);
    }
    let meta = &mut conn.meta;
    meta.has_refresh_token = conn.tokens.refresh_token.is_some();
    meta.expires_at = response.expires_in.map(|d| now + d);
    if let Some(d) = response.refresh_expires_in {
        meta.refresh_expires_at = Some(now + d);
    } else if rotated {
        meta.refresh_expires_at = None;
    }
    if let Some(token_type) = response.token_type.filter(|t| !t.is_empty()) {
        meta.token_type = token_type;
    }
    if let Some(scopes) = response.scopes {
        meta.scopes = scopes;
    }
    meta.issued_at = Some(now);
    meta.last_refreshed_at = Some(now);
    meta.updated_at = now;
    meta.consecutive_failures = 0;
    meta.last_error = None;
    meta.status = ConnectionStatus::Active;
}
