//! The refresh machinery. Policy, with no I/O of its own: retry policy and backoff
//! (`policy`), error classification (`classify`), the per-provider circuit breaker
//! (`breaker`), single flight (`flight`). The refresh itself, in the order a refresh runs
//! through them: `run` (single-flight entry, then the refresh proper), `lease` (the
//! cross-instance lease protocol), `retry` (the retry loop), `record` (committing the
//! outcome), and `errors` (how outcomes become the library's errors). `rejected` starts a
//! refresh because an API refused the token (HTTP 401).

use std::time::Duration;

use crate::error::ConfigError;

pub mod breaker;
pub mod classify;
pub(crate) mod errors;
pub mod flight;
mod lease;
pub mod policy;
mod record;
pub(crate) mod rejected;
mod retry;
mod run;

pub use breaker::{Breaker, BreakerConfig, BreakerState, CircuitChange};
pub use policy::RetryPolicy;

/// Library-wide refresh settings (the `[refresh]` configuration section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshConfig {
    /// Refresh when the token expires within this. Default 5 minutes.
    pub threshold: Duration,
    /// Default retry policy for refreshes (3 retries, 1 s, 10 s).
    pub retry: RetryPolicy,
    /// Ceiling on a provider's `Retry-After`. Default 60 s.
    pub max_retry_after: Duration,
    /// How long a token cached in memory is trusted before the store is read again, so a
    /// change made by another process is seen within this bound. Default 5 s.
    pub cache_ttl: Duration,
    /// Most tokens kept in the in-memory cache (about 300 bytes each), so memory stays
    /// bounded with millions of connections. Default 100,000.
    pub cache_max_entries: usize,
    /// Upper bound on one upstream attempt, as a safety net over the HTTP client's own
    /// timeouts. Default 20 s.
    pub attempt_timeout: Duration,
    /// Length of the database lease a refresh holds so other instances do not refresh the
    /// same connection. The holder renews it every third of this while it works, so a
    /// crashed instance blocks a connection for at most this long. Default 15 s.
    pub lease_ttl: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            threshold: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            max_retry_after: Duration::from_secs(60),
            cache_ttl: Duration::from_secs(5),
            cache_max_entries: 100_000,
            attempt_timeout: Duration::from_secs(20),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// Per-call overrides of the retry policy (the seed's `refreshToken` options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshOptions {
    pub max_retries: Option<u32>,
    pub initial_delay: Option<Duration>,
    pub max_delay: Option<Duration>,
}

impl RefreshConfig {
    /// Checks every setting: a zero lease would spin its renewal loop, a zero timeout
    /// would fail every attempt, and a huge duration would overflow a deadline.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis(1);
        ConfigError::check_duration("refresh.threshold", self.threshold, Duration::ZERO)?;
        self.retry.validate()?;
        ConfigError::check_duration("refresh.max_retry_after", self.max_retry_after, ms)?;
        ConfigError::check_duration("refresh.cache_ttl", self.cache_ttl, Duration::ZERO)?;
        ConfigError::check_count(
            "refresh.cache_max_entries",
            self.cache_max_entries,
            1,
            usize::MAX,
        )?;
        ConfigError::check_duration("refresh.attempt_timeout", self.attempt_timeout, ms)?;
        // Renewed every third of itself: below 30 ms the renewal is a busy loop.
        ConfigError::check_duration(
            "refresh.lease_ttl",
            self.lease_ttl,
            Duration::from_millis(30),
        )?;
        Ok(())
    }

    /// How long a refresh under `policy` can take at most, plus a margin.
    pub fn worst_case(&self, policy: &RetryPolicy) -> Duration {
        let attempts = policy.max_retries.saturating_add(1);
        let longest_wait = policy.max_delay.max(self.max_retry_after);
        self.attempt_timeout.saturating_mul(attempts)
            + longest_wait.saturating_mul(policy.max_retries)
            + Duration::from_secs(5)
    }
}

impl RefreshOptions {
    /// Applies these overrides to `base`.
    pub fn apply(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries.unwrap_or(base.max_retries),
            initial_delay: self.initial_delay.unwrap_or(base.initial_delay),
            max_delay: self.max_delay.unwrap_or(base.max_delay),
        }
    }
}
