//! The retry loop: calls a provider's token endpoint until it answers, a failure is not worth
//! retrying, the retries run out, or the provider's circuit breaker opens. Between attempts it
//! waits the policy's jittered backoff or the provider's `Retry-After` (capped). Every attempt
//! passes the provider's rate limiter and its breaker, and is bounded by
//! `refresh.attempt_timeout`.
//!
//! It reads and writes nothing: what the outcome means for the connection is `run`'s and
//! `record`'s business.

use std::time::Duration;

use crate::connection::Connection;
use crate::error::FailureClass;
use crate::provider::{FailureKind, Provider, RefreshFailure, TokenResponse};
use crate::refresh::breaker::{Breaker, Health};
use crate::refresh::errors::duration_ms;
use crate::refresh::policy::{RetryPolicy, jitter_unit};
use crate::scheduler::RateLimiters;

/// What the loop needs besides the connection.
pub(crate) struct Attempts<'a> {
    pub provider: &'a dyn Provider,
    pub breaker: &'a Breaker,
    pub limiters: &'a RateLimiters,
    pub policy: RetryPolicy,
    /// Upper bound on one attempt.
    pub attempt_timeout: Duration,
    /// Ceiling on a provider's `Retry-After`.
    pub max_retry_after: Duration,
}

impl Attempts<'_> {
    /// Calls the provider, retrying transient failures with backoff. Returns the outcome and
    /// the number of upstream attempts made (0 when the breaker refused the first one).
    pub(crate) async fn run(
        &self,
        conn: &Connection,
    ) -> (Result<TokenResponse, RefreshFailure>, u32) {
        let key = conn.key();
        let policy = self.policy;
        let mut attempts = 0u32;
        loop {
            self.limiters.acquire(key.provider.as_str()).await;
            let permit = match self.breaker.try_acquire() {
                Ok(permit) => permit,
                Err(retry_after) => {
                    let failure = RefreshFailure::new(
                        FailureClass::CircuitOpen,
                        FailureKind::Transport {
                            message: "circuit breaker open".into(),
                            timeout: false,
                        },
                    )
                    .with_retry_after(Some(retry_after));
                    return (Err(failure), attempts);
                }
            };
            attempts += 1;
            if attempts > 1 {
                tracing::info!(provider = %key.provider, account_id = %key.account_id,
                    attempt = attempts, max_retries = policy.max_retries, "retrying token refresh");
            }
            let attempt = tokio::time::timeout(self.attempt_timeout, self.provider.refresh(conn));
            let result = attempt.await.unwrap_or_else(|_| {
                Err(RefreshFailure::transport(
                    "attempt exceeded refresh.attempt_timeout",
                    true,
                ))
            });
            match result {
                Ok(response) => {
                    permit.record(Health::Up);
                    return (Ok(response), attempts);
                }
                Err(failure) => {
                    let transient = failure.class == FailureClass::Transient;
                    permit.record(if transient { Health::Down } else { Health::Up });
                    if !transient || attempts > policy.max_retries {
                        return (Err(failure), attempts);
                    }
                    let delay = policy.next_delay(
                        attempts - 1,
                        failure.retry_after,
                        self.max_retry_after,
                        jitter_unit(),
                    );
                    tracing::info!(provider = %key.provider, account_id = %key.account_id,
                        attempt = attempts, delay_ms = duration_ms(delay),
                        source = if failure.retry_after.is_some() { "retry_after" } else { "backoff" },
                        error = %failure, "refresh attempt failed; backing off");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
