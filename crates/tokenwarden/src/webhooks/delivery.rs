//! One delivery attempt and what follows it: the signed POST (Standard Webhooks headers, the
//! endpoint's timeout, redirects not followed), its classification (2xx delivered; anything
//! else, or no answer, retried), and the retry schedule (first after about 5 s, doubling,
//! jittered within [d/2, d], capped at 1 h; `Retry-After` honoured up to a ceiling; failed
//! once `retry_for` has passed since the first attempt). Nothing here touches the store.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use time::OffsetDateTime;

use crate::refresh::classify::parse_retry_after;
use crate::webhooks::{EndpointConfig, headers, sign};

/// The retry schedule's settings (`[webhooks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The first retry's delay before jitter (about 5 s).
    pub first_delay: Duration,
    /// The longest delay between two attempts (1 h).
    pub max_delay: Duration,
    /// How long after the first attempt a delivery keeps being retried (24 h).
    pub retry_for: Duration,
    /// Ceiling on an endpoint's `Retry-After` (600 s).
    pub max_retry_after: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            retry_for: Duration::from_secs(86_400),
            max_retry_after: Duration::from_secs(600),
        }
    }
}

/// What comes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(OffsetDateTime),
    /// `retry_for` has passed: the delivery is `failed`.
    GiveUp,
}

impl RetrySchedule {
    /// The delay before retry `n` (1 = the first retry) before jitter: `first_delay · 2ⁿ⁻¹`,
    /// at most `max_delay`.
    pub fn base_delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(31));
        self.first_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// After `attempts` failed attempts (this one included), the first made at
    /// `first_attempt_at`: when to try again. `jitter` in [0, 1) picks the delay within
    /// [d/2, d]; an endpoint's `retry_after` (capped) replaces it when longer.
    pub fn after_failure(
        &self,
        attempts: u32,
        first_attempt_at: OffsetDateTime,
        now: OffsetDateTime,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Next {
        let base = self.base_delay(attempts.max(1));
        let jittered = base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        let delay = match retry_after {
            Some(hint) => jittered.max(hint.min(self.max_retry_after)),
            None => jittered,
        };
        let at = now + delay;
        let deadline = first_attempt_at + self.retry_for;
        if at > deadline {
            Next::GiveUp
        } else {
            Next::RetryAt(at)
        }
    }
}

/// The answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Anything else: a non-2xx status (with the endpoint's `Retry-After`, on any status),
    /// a timeout or a connection error. `error` says which, without the URL's query.
    Failed {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
}

/// A client for deliveries: no redirects followed (a 3xx is a failed attempt: the endpoint's
/// URL is the configured one), no cookies, no proxy surprises beyond the environment's.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()
}

/// POSTs `body` (the event's JSON) to the endpoint, signed for this attempt at `now`.
pub async fn attempt(
    client: &reqwest::Client,
    endpoint: &EndpointConfig,
    event_id: &str,
    body: &[u8],
    now: OffsetDateTime,
) -> Attempt {
    let timestamp = now.unix_timestamp();
    let signature = sign(&endpoint.secrets, event_id, timestamp, body);
    let mut request = client
        .post(endpoint.url.clone())
        .timeout(endpoint.timeout)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("tokenwarden-webhooks"))
        .body(body.to_vec());
    for (name, value) in headers(event_id, timestamp, &signature) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            if response.status().is_success() {
                return Attempt::Delivered { status };
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now));
            Attempt::Failed {
                status: Some(status),
                retry_after,
                error: format!("HTTP {status}"),
            }
        }
        Err(e) if e.is_timeout() => Attempt::Failed {
            status: None,
            retry_after: None,
            error: format!("no answer within {} ms", endpoint.timeout.as_millis()),
        },
        Err(e) if e.is_connect() => Attempt::Failed {
            status: None,
            retry_after: None,
            error: "could not connect".to_owned(),
        },
        Err(_) => Attempt::Failed {
            status: None,
            retry_after: None,
            error: "the request failed before an answer".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    #[test]
    fn delays_double_from_five_seconds_up_to_an_hour() {
        let s = RetrySchedule::default();
        let secs: Vec<u64> = (1..=12).map(|n| s.base_delay(n).as_secs()).collect();
        assert_eq!(
            secs,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(s.base_delay(1000), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_half_and_whole_delay() {
        let s = RetrySchedule::default();
        let at = |jitter| match s.after_failure(3, t0(), t0(), None, jitter) {
            Next::RetryAt(at) => at - t0(),
            Next::GiveUp => panic!("within retry_for"),
        };
        assert_eq!(at(0.0), time::Duration::seconds(10));
        assert_eq!(at(0.5), time::Duration::seconds(15));
        let top = at(0.999_999);
        assert!(
            top < time::Duration::seconds(20) && top > time::Duration::milliseconds(19_990),
            "{top}"
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_ceiling() {
        let s = RetrySchedule::default();
        let wait = |hint: u64| match s.after_failure(
            1,
            t0(),
            t0(),
            Some(Duration::from_secs(hint)),
            0.0,
        ) {
            Next::RetryAt(at) => (at - t0()).whole_seconds(),
            Next::GiveUp => -1,
        };
        assert_eq!(wait(120), 120);
        assert_eq!(wait(1), 2, "a shorter hint does not shorten the backoff");
        assert_eq!(wait(86_400), 600, "capped at max_retry_after");
    }

    #[test]
    fn gives_up_after_retry_for() {
        let s = RetrySchedule {
            retry_for: Duration::from_secs(60),
            ..RetrySchedule::default()
        };
        let first = t0();
        assert!(matches!(
            s.after_failure(2, first, first + time::Duration::seconds(40), None, 0.0),
            Next::RetryAt(_)
        ));
        assert_eq!(
            s.after_failure(3, first, first + time::Duration::seconds(50), None, 1.0),
            Next::GiveUp
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = t0();
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        let date = httpdate::fmt_http_date(std::time::SystemTime::from(
            now + time::Duration::seconds(90),
        ));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
