//! One refresh of one connection, start to finish. Every refresh, whatever started it (a
//! token request, a forced refresh, the scheduler), takes this path:
//!
//! 1. [`Inner::join_refresh`]: joins the connection's refresh in flight in this process, or
//!    starts one as a task of its own (`flight`), so a caller that goes away never cancels a
//!    refresh the provider has already answered;
//! 2. `Inner::refresh_exclusively` (`lease`): across instances, only the lease holder goes on;
//! 3. [`Inner::refresh_and_record`]: reads the row again under the lease, skips work someone
//!    else already did, runs the retry loop (`retry`), and records the outcome durably
//!    (`record`) before anyone sees the new token.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::time::Instant;

use crate::connection::{Connection, ConnectionKey, ConnectionStatus, should_refresh};
use crate::error::{Error, ErrorCode, ErrorMeta, FailureClass};
use crate::metrics as m;
use crate::provider::Grant;
use crate::refresh::errors::{self, duration_ms};
use crate::refresh::policy::RetryPolicy;
use crate::refresh::record::Next;
use crate::refresh::retry::Attempts;
use crate::warden::{Inner, ProviderEntry, RefreshOutcome, Trigger};

impl Inner {
    /// Joins the refresh of `key` in flight in this process, or starts one.
    pub(crate) async fn join_refresh(
        self: &Arc<Self>,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
        claimed: Option<Connection>,
    ) -> RefreshOutcome {
        let this = Arc::clone(self);
        let task_key = key.clone();
        let (out, _joined) = self
            .flights
            .run(key.clone(), move || async move {
                this.refresh_exclusively(&task_key, trigger, policy, claimed)
                    .await
            })
            .await;
        out.unwrap_or_else(|| {
            Err(Error::new(
                ErrorCode::GetTokenError,
                "refresh task failed unexpectedly",
            ))
        })
    }

    /// The refresh proper, with this instance holding the connection's lease. Returns only
    /// once the outcome is durable.
    pub(crate) async fn refresh_and_record(
        &self,
        entry: &ProviderEntry,
        key: &ConnectionKey,
        trigger: Trigger,
        policy: RetryPolicy,
        released: &AtomicBool,
        claimed: Option<Connection>,
    ) -> RefreshOutcome {
        // Read under the lease: another refresh may have finished since the caller looked.
        // A scheduled refresh has the row its claim read while taking the lease.
        let conn = match claimed {
            Some(conn) => conn,
            None => self.load(key).await?,
        };
        let now = self.clock.now();
        if self.already_done(&conn, trigger, now) {
            return Ok(Arc::new(conn));
        }
        // An application token is obtained with the client's own credentials: nothing
        // about the stored row (no refresh token, say) can stop that.
        let application = entry.provider.grant() == Grant::ClientCredentials;
        if !application && let Err(reason) = entry.provider.check_refreshable(&conn, now) {
            return self.not_refreshable(conn, reason, trigger, now).await;
        }

        let provider_label = key.provider.to_string();
        tracing::info!(provider = %key.provider, account_id = %key.account_id,
            trigger = trigger.as_str(), max_retries = policy.max_retries, "token refresh started");
        let started = Instant::now();
        let attempts = Attempts {
            provider: entry.provider.as_ref(),
            breaker: &entry.breaker,
            limiters: &self.limiters,
            policy,
            attempt_timeout: self.refresh.attempt_timeout,
            max_retry_after: self.refresh.max_retry_after,
        };
        let (mut result, attempts) = attempts.run(&conn).await;
        if application
            && let Err(failure) = &mut result
            && failure.class == FailureClass::Permanent
        {
            // No user can reconnect an application: whatever the provider refused for good
            // (`invalid_grant`, `access_denied`, …) is for the operator to fix.
            failure.class = FailureClass::Configuration;
        }
        let duration = started.elapsed();
        metrics::histogram!(m::REFRESH_DURATION_SECONDS, "provider" => provider_label.clone())
            .record(duration.as_secs_f64());
        metrics::histogram!(m::REFRESH_ATTEMPTS, "provider" => provider_label.clone())
            .record(f64::from(attempts));

        let meta = ErrorMeta {
            provider: Some(provider_label.clone()),
            account_id: Some(key.account_id.to_string()),
            attempts,
            duration: Some(duration),
            failure: None,
            provider_error: None,
        };
        match result {
            Ok(response) => {
                let committed = self.commit_success(conn, response, released).await;
                let outcome = if committed.is_ok() {
                    "success"
                } else {
                    "commit_failed"
                };
                metrics::counter!(m::REFRESH_TOTAL, "provider" => provider_label, "outcome" => outcome)
                    .increment(1);
                match committed {
                    Ok(fresh) => {
                        tracing::info!(provider = %key.provider, account_id = %key.account_id,
                            attempts, duration_ms = duration_ms(duration), "token refresh completed");
                        Ok(fresh)
                    }
                    Err(error) => Err(error.with_meta(meta)),
                }
            }
            Err(failure) => {
                metrics::counter!(m::REFRESH_TOTAL, "provider" => provider_label,
                    "outcome" => failure.class.as_str())
                .increment(1);
                let mut error = errors::from_failure(&failure, meta, self.refresh.max_retry_after);
                // Whatever asked (a token request or a forced refresh), a grant refused for
                // good on a token that has expired is `TOKEN_EXPIRED`.
                if conn.meta.expires_at.is_some_and(|at| at <= now) {
                    error = errors::expired(error);
                }
                tracing::warn!(provider = %key.provider, account_id = %key.account_id,
                    attempts, duration_ms = duration_ms(duration), class = failure.class.as_str(),
                    code = %error.code(), error = %failure, "token refresh failed");
                if failure.class == FailureClass::CircuitOpen && attempts == 0 {
                    // Not an attempt: the provider was not called. Scheduled work is deferred.
                    if trigger == Trigger::Scheduled {
                        let wait = failure
                            .retry_after
                            .unwrap_or(self.scheduler.initial_retry_delay);
                        self.reschedule(key, now + wait).await;
                    }
                } else {
                    let next = if failure.class == FailureClass::Permanent {
                        Next::Reconnect
                    } else {
                        Next::Backoff
                    };
                    self.record_failure(conn, &error, next).await;
                }
                Err(error)
            }
        }
    }

    /// Whether the work `trigger` asked for is no longer needed: an on-demand refresh of a
    /// token someone else refreshed meanwhile, a scheduled one that is no longer due.
    fn already_done(&self, conn: &Connection, trigger: Trigger, now: time::OffsetDateTime) -> bool {
        let meta = &conn.meta;
        match trigger {
            Trigger::OnDemand => {
                meta.status == ConnectionStatus::Active
                    && !should_refresh(
                        meta.expires_at,
                        meta.lifetime(),
                        self.refresh.threshold,
                        now,
                    )
            }
            Trigger::Scheduled => {
                meta.status != ConnectionStatus::Active
                    || meta.next_refresh_at.is_none_or(|at| at > now)
            }
            Trigger::Forced => false,
            Trigger::Rejected(digest) => {
                !digest.matches(&conn.tokens.access_token)
                    || crate::refresh::rejected::refreshed_recently(conn, now)
            }
        }
    }
}
