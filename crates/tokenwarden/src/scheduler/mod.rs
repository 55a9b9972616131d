//! Proactive refresh and the persistent retry queue.
//!
//! Every connection carries a `next_refresh_at` in the store. This module decides it (the
//! pure `plan_*` functions, called on every write); `runner` runs the loop that claims due
//! connections and refreshes them through the same single-flight path as on-demand
//! refreshes; `rate_limit` spaces each provider's calls. The loop sleeps until the earliest due time or until notified of a change,
//! bounded by `max_idle` so changes made by other instances are seen. Claims lease the rows in
//! the database, so several instances share the work without overlap. A failed scheduled
//! refresh is rescheduled with backoff; because the schedule lives in the database, a restart
//! (even `kill -9`) loses nothing.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::connection::{ConnectionMeta, ConnectionStatus, effective_threshold};
use crate::error::ConfigError;

mod rate_limit;
mod runner;

pub use rate_limit::RateLimiter;
pub(crate) use rate_limit::RateLimiters;
pub(crate) use runner::{AWAKE, wakes_scheduler};

/// Scheduler settings (the `[scheduler]` configuration section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Run the background loop. Default true.
    pub enabled: bool,
    /// Refresh this long before expiry (more for long-lived tokens: a tenth of the lifetime;
    /// less for short-lived ones: at most half the lifetime). Default 600 s.
    pub lead: Duration,
    /// Ceiling of the retry queue's backoff. Default 600 s.
    pub max_retry_delay: Duration,
    /// First delay of the retry queue's backoff (doubling per consecutive failure). Default 5 s.
    pub initial_retry_delay: Duration,
    /// Keep-alive refresh interval for tokens without expiry that have a refresh token, so
    /// idle refresh tokens do not lapse (Google: 6 months unused). Default 30 days.
    pub keepalive: Duration,
    /// Connections claimed per round. Default 100.
    pub batch_size: u32,
    /// Refreshes run at once by the loop. Default 64: real token endpoints answer in
    /// 100-500 ms, so this is what bounds scheduled throughput (64 at 300 ms is about 210
    /// refreshes a second); each provider's `rate_limit_per_second` still caps its own rate.
    pub concurrency: usize,
    /// Longest sleep between rounds, so work scheduled by other instances is noticed.
    /// Default 30 s.
    pub max_idle: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lead: Duration::from_secs(600),
            max_retry_delay: Duration::from_secs(600),
            initial_retry_delay: Duration::from_secs(5),
            keepalive: Duration::from_secs(30 * 86_400),
            batch_size: 100,
            concurrency: 64,
            max_idle: Duration::from_secs(30),
        }
    }
}

impl SchedulerConfig {
    /// Checks the settings: a zero batch or concurrency would claim nothing and spin on the
    /// database, a zero idle time would poll it without pause, and a huge duration would
    /// overflow the schedule's arithmetic.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = Duration::from_millis(1);
        ConfigError::check_duration("scheduler.lead", self.lead, Duration::ZERO)?;
        ConfigError::check_duration(
            "scheduler.initial_retry_delay",
            self.initial_retry_delay,
            ms,
        )?;
        ConfigError::check_duration("scheduler.max_retry_delay", self.max_retry_delay, ms)?;
        // An initial delay above the ceiling is allowed: every delay is capped by it.
        ConfigError::check_duration(
            "scheduler.keepalive",
            self.keepalive,
            Duration::from_secs(1),
        )?;
        ConfigError::check_count("scheduler.batch_size", self.batch_size, 1, 100_000)?;
        ConfigError::check_count("scheduler.concurrency", self.concurrency, 1, 100_000)?;
        ConfigError::check_duration(
            "scheduler.max_idle",
            self.max_idle,
            Duration::from_millis(10),
        )
    }
}

/// How long before expiry a token should be refreshed proactively.
pub fn lead_time(lifetime: Option<Duration>, lead: Duration, threshold: Duration) -> Duration {
    let on_demand = effective_threshold(lifetime, threshold);
    let lead = match lifetime {
        Some(lifetime) => lead.max(lifetime / 10).min(lifetime / 2),
        None => lead,
    };
    // Never later than the on-demand threshold: callers should not have to wait.
    lead.max(on_demand)
}

/// When to refresh a connection that is healthy (after an import or a successful refresh).
/// `unit` ∈ [0, 1] spreads connections that expire together over a fifth of the lead.
pub fn plan_after_success(
    meta: &ConnectionMeta,
    config: &SchedulerConfig,
    threshold: Duration,
    now: OffsetDateTime,
    unit: f64,
) -> Option<OffsetDateTime> {
    if meta.status != ConnectionStatus::Active {
        return None;
    }
    let jitter = |lead: Duration| lead.mul_f64(0.2 * unit.clamp(0.0, 1.0));
    let mut due = match meta.expires_at {
        Some(expires_at) => {
            let lead = lead_time(meta.lifetime(), config.lead, threshold);
            Some(expires_at - lead - jitter(lead))
        }
        None if meta.has_refresh_token => {
            let base = meta
                .last_refreshed_at
                .or(meta.issued_at)
                .unwrap_or(meta.created_at);
            Some(base + config.keepalive - jitter(config.keepalive / 10))
        }
        None => None,
    };
    // A refresh token with a known expiry must be used before it lapses.
    if let (Some(rt_expiry), true) = (meta.refresh_expires_at, meta.has_refresh_token) {
        let lead = config.lead.max(threshold);
        let before = rt_expiry - lead - jitter(lead);
        due = Some(due.map_or(before, |d| d.min(before)));
    }
    due.map(|d| d.max(now))
}

/// When to retry after the `failures`-th consecutive failure: exponential backoff from
/// `initial_retry_delay`, capped by `max_retry_delay`, jittered within [d/2, d].
pub fn plan_after_failure(
    failures: u32,
    config: &SchedulerConfig,
    now: OffsetDateTime,
    unit: f64,
) -> OffsetDateTime {
    let exp = failures.saturating_sub(1).min(30);
    let d = config
        .initial_retry_delay
        .checked_mul(1u32 << exp)
        .unwrap_or(Duration::MAX)
        .min(config.max_retry_delay);
    now + (d / 2 + (d / 2).mul_f64(unit.clamp(0.0, 1.0)))
}

/// Shared between the warden and its loop.
pub(crate) type Wakeup = Arc<tokio::sync::Notify>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn meta(expires_in: Option<i64>, lifetime: Option<i64>) -> ConnectionMeta {
        let now = datetime!(2026-11-26 12:00 UTC);
        ConnectionMeta {
            key: crate::ConnectionKey::parse("u", "p", "a").expect("key"),
            token_type: "Bearer".into(),
            has_refresh_token: true,
            expires_at: expires_in.map(|s| now + time::Duration::seconds(s)),
            refresh_expires_at: None,
            issued_at: lifetime
                .zip(expires_in)
                .map(|(l, e)| now + time::Duration::seconds(e - l)),
            scopes: vec![],
            metadata: serde_json::Value::Null,
            status: ConnectionStatus::Active,
            last_refreshed_at: None,
            consecutive_failures: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            next_refresh_at: None,
            version: 1,
        }
    }

    const NOW: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

    #[test]
    fn hour_token_refreshes_ten_minutes_ahead() {
        let c = SchedulerConfig::default();
        let due = plan_after_success(
            &meta(Some(3600), Some(3600)),
            &c,
            Duration::from_secs(300),
            NOW,
            0.0,
        );
        assert_eq!(due, Some(NOW + Duration::from_secs(3000)));
        let due = plan_after_success(
            &meta(Some(3600), Some(3600)),
            &c,
            Duration::from_secs(300),
            NOW,
            1.0,
        );
        assert_eq!(due, Some(NOW + Duration::from_secs(3000 - 120)));
    }

    #[test]
    fn sixty_day_token_refreshes_six_days_ahead() {
        let c = SchedulerConfig::default();
        let sixty = 60 * 86_400;
        let due = plan_after_success(
            &meta(Some(sixty), Some(sixty)),
            &c,
            Duration::from_secs(300),
            NOW,
            0.0,
        );
        assert_eq!(due, Some(NOW + Duration::from_secs(54 * 86_400)));
    }

    #[test]
    fn no_expiry_gets_keepalive_and_nothing_without_refresh_token() {
        let c = SchedulerConfig::default();
        let m = meta(None, None);
        assert_eq!(
            plan_after_success(&m, &c, Duration::from_secs(300), NOW, 0.0),
            Some(NOW + c.keepalive)
        );
        let m = ConnectionMeta {
            has_refresh_token: false,
            ..m
        };
        assert_eq!(
            plan_after_success(&m, &c, Duration::from_secs(300), NOW, 0.0),
            None
        );
    }

    #[test]
    fn retry_backoff_doubles_to_the_cap() {
        let c = SchedulerConfig::default();
        let at = |n| plan_after_failure(n, &c, NOW, 1.0) - NOW;
        assert_eq!(at(1), time::Duration::seconds(5));
        assert_eq!(at(2), time::Duration::seconds(10));
        assert_eq!(at(3), time::Duration::seconds(20));
        assert_eq!(at(20), time::Duration::seconds(600));
        assert_eq!(
            plan_after_failure(1, &c, NOW, 0.0) - NOW,
            time::Duration::milliseconds(2500)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Proactive refresh always comes before the on-demand threshold, and never in the
        /// past.
        #[test]
        fn due_before_on_demand_threshold(lifetime in 1i64..10_000_000, elapsed_frac in 0.0f64..1.0,
                                         unit in 0.0f64..=1.0) {
            let c = SchedulerConfig::default();
            let threshold = Duration::from_secs(300);
            let remaining = ((lifetime as f64) * (1.0 - elapsed_frac)).max(1.0) as i64;
            let m = meta(Some(remaining), Some(lifetime));
            let due = plan_after_success(&m, &c, threshold, NOW, unit).expect("scheduled");
            prop_assert!(due >= NOW);
            let expires = m.expires_at.expect("expiry");
            let on_demand_from = expires - effective_threshold(m.lifetime(), threshold);
            prop_assert!(due <= on_demand_from.max(NOW), "due {due} after {on_demand_from}");
        }
    }
}
