//! Per-provider request rate limits: at most `rate_limit_per_second` token requests start in
//! any second, evenly spaced, whatever triggered them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A per-provider request rate limit: at most `per_second` calls start in any second,
/// evenly spaced. Uses tokio time, so tests can pause it.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next_free: Mutex::new(None),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self
                .next_free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Rate limiters by provider name.
#[derive(Debug, Default)]
pub(crate) struct RateLimiters(HashMap<String, RateLimiter>);

impl RateLimiters {
    pub(crate) fn insert(&mut self, provider: &str, per_second: u32) {
        self.0
            .insert(provider.to_owned(), RateLimiter::new(per_second));
    }

    pub(crate) async fn acquire(&self, provider: &str) {
        if let Some(limiter) = self.0.get(provider) {
            limiter.acquire().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_calls() {
        let limiter = Arc::new(RateLimiter::new(10));
        let start = Instant::now();
        let mut stamps = Vec::new();
        for _ in 0..25 {
            limiter.acquire().await;
            stamps.push(start.elapsed());
        }
        for w in stamps.windows(11) {
            assert!(
                w[10] - w[0] >= Duration::from_secs(1),
                "11 calls within a second: {w:?}"
            );
        }
    }
}
