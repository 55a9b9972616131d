//! Retry policy and backoff math.
//!
//! The n-th retry (n from 0) waits d = min(max_delay, initial_delay·2ⁿ), jittered uniformly
//! within [d/2, d]: the seed's 1 s → 2 s → 4 s shape, without callers retrying in lockstep. A
//! provider's `Retry-After` replaces the computed delay, capped by a ceiling.

use std::time::Duration;

use crate::error::ConfigError;

/// How often and how patiently to retry transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Default 3 (so at most 4 attempts).
    pub max_retries: u32,
    /// Delay before the first retry. Default 1 s.
    pub initial_delay: Duration,
    /// Cap on any computed delay. Default 10 s.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The most retries a policy may ask for.
    pub const MAX_RETRIES: u32 = 100;

    /// Checks the policy: delays of at least 1 ms, `initial_delay ≤ max_delay`, at most
    /// [`RetryPolicy::MAX_RETRIES`] retries.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis(1);
        ConfigError::check_count(
            "refresh.retry.max_retries",
            self.max_retries,
            0,
            Self::MAX_RETRIES,
        )?;
        ConfigError::check_duration("refresh.retry.initial_delay", self.initial_delay, ms)?;
        ConfigError::check_duration("refresh.retry.max_delay", self.max_delay, ms)?;
        if self.initial_delay > self.max_delay {
            return Err(ConfigError::new(
                "refresh.retry.initial_delay",
                "must be at most refresh.retry.max_delay",
            ));
        }
        Ok(())
    }

    /// The un-jittered delay before retry `n` (0-based): min(max_delay, initial·2ⁿ).
    pub fn base_delay(&self, n: u32) -> Duration {
        let factor = 2u32.checked_pow(n).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// The delay before retry `n`, jittered within [d/2, d] using `unit` ∈ [0, 1].
    pub fn jittered_delay(&self, n: u32, unit: f64) -> Duration {
        let d = self.base_delay(n);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            1.0
        };
        d / 2 + (d / 2).mul_f64(unit)
    }

    /// The delay before retry `n`: the provider's hint (capped by `max_retry_after`) when it
    /// gave one, the jittered backoff otherwise.
    pub fn next_delay(
        &self,
        n: u32,
        retry_after: Option<Duration>,
        max_retry_after: Duration,
        unit: f64,
    ) -> Duration {
        match retry_after {
            Some(hint) => hint.min(max_retry_after),
            None => self.jittered_delay(n, unit),
        }
    }
}

/// A uniform random number in [0, 1] for jitter.
pub(crate) fn jitter_unit() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_shape() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay(0), Duration::from_secs(1));
        assert_eq!(p.base_delay(1), Duration::from_secs(2));
        assert_eq!(p.base_delay(2), Duration::from_secs(4));
        assert_eq!(p.base_delay(3), Duration::from_secs(8));
        assert_eq!(p.base_delay(4), Duration::from_secs(10));
        assert_eq!(p.base_delay(60), Duration::from_secs(10));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        // Seed property 2: backoff delays are correct and within bounds.
        #[test]
        fn backoff_within_bounds(initial_ms in 1u64..5_000, max_ms in 1u64..60_000,
                                 n in 0u32..40, unit in 0.0f64..=1.0) {
            let p = RetryPolicy { max_retries: 3, initial_delay: Duration::from_millis(initial_ms),
                                  max_delay: Duration::from_millis(max_ms) };
            let d = p.base_delay(n);
            let expected = (u128::from(initial_ms) << n.min(100)).min(u128::from(max_ms));
            prop_assert_eq!(d.as_millis(), expected);
            let j = p.jittered_delay(n, unit);
            prop_assert!(j >= d / 2 && j <= d, "{j:?} not in [{:?}, {d:?}]", d / 2);
            if n > 0 {
                prop_assert!(p.base_delay(n) >= p.base_delay(n - 1), "monotone");
            }
        }

        #[test]
        fn retry_after_replaces_and_is_capped(hint_s in 0u64..100_000, cap_s in 1u64..600,
                                              n in 0u32..10, unit in 0.0f64..=1.0) {
            let p = RetryPolicy::default();
            let hint = Duration::from_secs(hint_s);
            let cap = Duration::from_secs(cap_s);
            let d = p.next_delay(n, Some(hint), cap, unit);
            prop_assert_eq!(d, hint.min(cap));
            prop_assert_eq!(p.next_delay(n, None, cap, unit), p.jittered_delay(n, unit));
        }
    }
}
