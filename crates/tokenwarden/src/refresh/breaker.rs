//! A circuit breaker per provider.
//!
//! Count-based, because token endpoints see little traffic: `failure_threshold` consecutive
//! transient failures open it; while open, callers fail fast (also those in the middle of
//! their retries) with a retry-after hint; after `open_for` one probe is let through, and
//! its success closes it again. Only transient failures count: an `invalid_grant` proves the
//! provider is up. Time is `tokio::time`, so tests drive it with a paused clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::CIRCUIT_OPEN;

/// Breaker settings (the `[breaker]` configuration section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How long it stays open before one probe. Default 10 s.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

impl BreakerConfig {
    /// Checks the settings: at least one failure to open, open for at least 1 ms and at
    /// most [`crate::error::MAX_SETTING_DURATION`] (so `now + open_for` cannot overflow).
    pub fn validate(&self) -> Result<(), crate::error::ConfigError> {
        use crate::error::ConfigError;
        ConfigError::check_count(
            "breaker.failure_threshold",
            self.failure_threshold,
            1,
            u32::MAX,
        )?;
        ConfigError::check_duration("breaker.open_for", self.open_for, Duration::from_millis(1))
    }
}

/// An observable snapshot of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        retry_after: Duration,
    },
    /// One probe is in flight; everyone else fails fast.
    HalfOpen,
}

impl BreakerState {
    pub fn is_open(&self) -> bool {
        !matches!(self, Self::Closed { .. })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker for one provider.
#[derive(Debug)]
pub struct Breaker {
    provider: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Told when the breaker opens or closes (the webhooks' provider events).
    changes: Option<tokio::sync::mpsc::UnboundedSender<CircuitChange>>,
}

/// A breaker opened (`open`) or closed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitChange {
    pub provider: String,
    pub open: bool,
}

/// Permission to call the provider. Report the outcome with [`Permit::record`]; a permit
/// dropped without a report (a cancelled probe) lets the next caller probe at once.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

/// What one upstream attempt showed about the provider's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The provider answered (success, or a refusal such as `invalid_grant`).
    Up,
    /// A transient failure: timeout, connection error, 5xx, 429, garbage.
    Down,
}

impl Breaker {
    pub fn new(provider: impl Into<String>, config: BreakerConfig) -> Self {
        let provider = provider.into();
        metrics::gauge!(CIRCUIT_OPEN, "provider" => provider.clone()).set(0.0);
        Self {
            provider,
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            changes: None,
        }
    }

    /// Reports every open and close to `changes`.
    #[must_use]
    pub fn reporting_to(
        mut self,
        changes: Option<tokio::sync::mpsc::UnboundedSender<CircuitChange>>,
    ) -> Self {
        self.changes = changes;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to call the provider; `Err(retry_after)` while open.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Duration> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            Inner::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else {
                    *inner = Inner::HalfOpen;
                    tracing::info!(provider = %self.provider, "circuit breaker half-open: probing");
                    Ok(Permit {
                        breaker: self,
                        probe: true,
                        done: false,
                    })
                }
            }
            Inner::HalfOpen => Err(Duration::from_secs(1).min(self.config.open_for)),
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            Inner::Open { until } => BreakerState::Open {
                retry_after: until.saturating_duration_since(Instant::now()),
            },
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }

    fn record(&self, health: Health, probe: bool) {
        let mut inner = self.lock();
        let before_open = !matches!(*inner, Inner::Closed { .. });
        *inner = match (health, *inner) {
            (Health::Up, _) => Inner::Closed { failures: 0 },
            (Health::Down, Inner::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                if failures >= self.config.failure_threshold {
                    Inner::Open {
                        until: Instant::now() + self.config.open_for,
                    }
                } else {
                    Inner::Closed { failures }
                }
            }
            (Health::Down, Inner::HalfOpen) if probe => Inner::Open {
                until: Instant::now() + self.config.open_for,
            },
            // A non-probe attempt that started before the breaker opened: already open.
            (Health::Down, state) => state,
        };
        let after_open = !matches!(*inner, Inner::Closed { .. });
        drop(inner);
        if before_open != after_open {
            if after_open {
                tracing::warn!(provider = %self.provider, open_for_s = self.config.open_for.as_secs_f64(),
                    "circuit breaker opened");
            } else {
                tracing::info!(provider = %self.provider, "circuit breaker closed");
            }
            metrics::gauge!(CIRCUIT_OPEN, "provider" => self.provider.clone()).set(if after_open {
                1.0
            } else {
                0.0
            });
            if let Some(changes) = &self.changes {
                // A receiver that is gone (webhooks stopped) wants nothing more.
                let _ = changes.send(CircuitChange {
                    provider: self.provider.clone(),
                    open: after_open,
                });
            }
        }
    }
}

impl Permit<'_> {
    /// Reports what the attempt showed.
    pub fn record(mut self, health: Health) {
        self.done = true;
        self.breaker.record(health, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.done {
            let mut inner = self.breaker.lock();
            if matches!(*inner, Inner::HalfOpen) {
                *inner = Inner::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "p",
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(10),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn reports_each_open_and_close_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let b = breaker().reporting_to(Some(tx));
        for _ in 0..3 {
            b.try_acquire().expect("closed").record(Health::Down);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        // A failed probe reopens it: still open, nothing new to report.
        b.try_acquire().expect("probe").record(Health::Down);
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().expect("probe").record(Health::Up);
        b.try_acquire().expect("closed").record(Health::Up);
        let mut seen = Vec::new();
        while let Ok(change) = rx.try_recv() {
            seen.push(change.open);
        }
        assert_eq!(seen, [true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_with_one_probe() {
        let b = breaker();
        for _ in 0..2 {
            b.try_acquire().expect("closed").record(Health::Down);
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        b.try_acquire().expect("closed").record(Health::Down);
        let retry = b.try_acquire().expect_err("open");
        assert_eq!(retry, Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            b.try_acquire().expect_err("still open"),
            Duration::from_secs(6)
        );

        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.try_acquire().expect("probe allowed");
        assert!(b.try_acquire().is_err(), "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.record(Health::Up);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = breaker();
        for _ in 0..3 {
            b.try_acquire().expect("closed").record(Health::Down);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        b.try_acquire().expect("probe").record(Health::Down);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                retry_after: Duration::from_secs(10)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_do_not_count_and_reset() {
        let b = breaker();
        b.try_acquire().expect("closed").record(Health::Down);
        b.try_acquire().expect("closed").record(Health::Down);
        b.try_acquire().expect("closed").record(Health::Up);
        b.try_acquire().expect("closed").record(Health::Down);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_lets_next_caller_probe() {
        let b = breaker();
        for _ in 0..3 {
            b.try_acquire().expect("closed").record(Health::Down);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(b.try_acquire().expect("probe"));
        assert!(b.try_acquire().is_ok(), "a new probe is allowed");
    }
}
