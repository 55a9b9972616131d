//! Error classification: permanent (the user must reconnect), configuration (an operator
//! problem) or transient (retry). Adapters call these after extracting the provider's error
//! value; the retry loop and breaker act on the result.

use std::time::Duration;

use time::OffsetDateTime;

use crate::error::FailureClass;

/// Classifies a standard OAuth 2.0 `error` value (RFC 6749 §5.2, plus common extensions).
///
/// Unknown values fall back to the HTTP status: 5xx, 408 and 429 are transient, anything else
/// is treated as a configuration problem, because marking users for reconnect on an error we
/// do not understand would throw away grants that may still be good.
///
/// `error` must be the value exactly as the provider sent it (trimmed), never a redacted
/// copy: redaction is for text that is shown, and must not change what is decided here.
pub fn classify_oauth_error(error: &str, status: u16) -> FailureClass {
    known_oauth_error(error).unwrap_or_else(|| classify_status(status))
}

/// The class of an `error` value this module knows, or `None` for any other value.
pub fn known_oauth_error(error: &str) -> Option<FailureClass> {
    OAUTH_ERRORS
        .iter()
        .find(|(code, _)| *code == error)
        .map(|&(_, class)| class)
}

/// Every `error` value classified without looking at the status. They are public vocabulary:
/// a failure may show one verbatim, whatever the secrets of the request were.
pub const OAUTH_ERRORS: &[(&str, FailureClass)] = &[
    ("invalid_grant", FailureClass::Permanent),
    ("access_denied", FailureClass::Permanent),
    ("interaction_required", FailureClass::Permanent),
    ("consent_required", FailureClass::Permanent),
    ("login_required", FailureClass::Permanent),
    ("bad_refresh_token", FailureClass::Permanent),
    ("invalid_refresh_token", FailureClass::Permanent),
    ("token_revoked", FailureClass::Permanent),
    ("account_inactive", FailureClass::Permanent),
    ("invalid_client", FailureClass::Configuration),
    ("unauthorized_client", FailureClass::Configuration),
    ("invalid_request", FailureClass::Configuration),
    ("unsupported_grant_type", FailureClass::Configuration),
    ("invalid_scope", FailureClass::Configuration),
    ("incorrect_client_credentials", FailureClass::Configuration),
    ("invalid_client_id", FailureClass::Configuration),
    ("bad_client_secret", FailureClass::Configuration),
    ("temporarily_unavailable", FailureClass::Transient),
    ("server_error", FailureClass::Transient),
    ("rate_limit_exceeded", FailureClass::Transient),
    ("slow_down", FailureClass::Transient),
    ("internal_error", FailureClass::Transient),
];

/// Classifies an HTTP status that came without a recognisable error value.
pub fn classify_status(status: u16) -> FailureClass {
    match status {
        408 | 425 | 429 | 500..=599 => FailureClass::Transient,
        // A success status with an unknown error body: unclear, so do not punish the user.
        _ => FailureClass::Configuration,
    }
}

/// Classifies a Meta Graph API error `code` (Instagram, Facebook).
pub fn classify_meta_code(code: i64, status: u16) -> FailureClass {
    match code {
        // 190: invalid/expired/revoked token (any subcode); 102: session; 10, 200-299:
        // permission missing.
        190 | 102 | 10 | 200..=299 => FailureClass::Permanent,
        // 1, 2: temporary; 4, 17, 32, 613: throttling.
        1 | 2 | 4 | 17 | 32 | 613 => FailureClass::Transient,
        _ => classify_status(status),
    }
}

/// Reads a `Retry-After` value: delta seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at = OffsetDateTime::from(at);
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// Reads a rate-limit reset header given as seconds until reset (Reddit's
/// `X-Ratelimit-Reset`, TikTok's `x-ratelimit-reset`). Values that look like a Unix
/// timestamp (after 2001) are taken as absolute.
pub fn parse_reset_header(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    if secs > 1_000_000_000.0 {
        // Clamped like the relative form: a far-future "timestamp" must not overflow
        // `Duration` (found by the providers' fuzz tests).
        let delta = secs - now.unix_timestamp() as f64;
        return Some(Duration::from_secs_f64(delta.clamp(0.0, 1e9)));
    }
    Some(Duration::from_secs_f64(secs.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn oauth_errors() {
        assert_eq!(
            classify_oauth_error("invalid_grant", 400),
            FailureClass::Permanent
        );
        assert_eq!(
            classify_oauth_error("invalid_grant", 403),
            FailureClass::Permanent
        );
        assert_eq!(
            classify_oauth_error("invalid_client", 401),
            FailureClass::Configuration
        );
        assert_eq!(
            classify_oauth_error("unauthorized_client", 400),
            FailureClass::Configuration
        );
        assert_eq!(
            classify_oauth_error("temporarily_unavailable", 400),
            FailureClass::Transient
        );
        assert_eq!(
            classify_oauth_error("server_error", 200),
            FailureClass::Transient
        );
        assert_eq!(
            classify_oauth_error("mystery", 503),
            FailureClass::Transient
        );
        assert_eq!(
            classify_oauth_error("mystery", 400),
            FailureClass::Configuration
        );
    }

    #[test]
    fn meta_codes() {
        assert_eq!(classify_meta_code(190, 400), FailureClass::Permanent);
        assert_eq!(classify_meta_code(2, 500), FailureClass::Transient);
        assert_eq!(classify_meta_code(4, 400), FailureClass::Transient);
        assert_eq!(classify_meta_code(100, 400), FailureClass::Configuration);
    }

    #[test]
    fn retry_after_forms() {
        let now = datetime!(2026-11-26 12:00 UTC);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_reset_header("12.5", now),
            Some(Duration::from_secs_f64(12.5))
        );
        assert_eq!(parse_reset_header("-1", now), None);
        let abs = (now.unix_timestamp() + 20).to_string();
        assert_eq!(parse_reset_header(&abs, now), Some(Duration::from_secs(20)));
        assert_eq!(
            parse_reset_header("1e25", now),
            Some(Duration::from_secs(1_000_000_000))
        );
        assert_eq!(
            parse_reset_header("1e308", now),
            Some(Duration::from_secs(1_000_000_000))
        );
        assert_eq!(parse_reset_header("inf", now), None);
    }
}
