//! Parsing of token-endpoint answers, shared by every adapter.
//!
//! This module owns the rules that turn `(status, headers, body)` into a [`TokenResponse`] or
//! a classified [`RefreshFailure`]: the body is read even on HTTP 200 and an `error` in it wins
//! over the status; every field is type-checked; lifetimes are bounded; descriptions copied
//! into failures are scrubbed of secrets and truncated. It is pure (no I/O, no clock), so it
//! can be fuzzed. The per-provider differences (scope separator, rate-limit reset header,
//! whether a refresh token can come back) are a [`Dialect`].

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::FailureClass;
use crate::provider::{FailureKind, RefreshFailure, TokenResponse};
use crate::refresh::classify::{
    classify_meta_code, classify_oauth_error, classify_status, parse_reset_header,
    parse_retry_after,
};
use crate::secret::{AccessToken, RefreshToken};

/// Longest access or refresh token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest lifetime accepted for `expires_in` / `refresh_expires_in`: ten years.
pub const MAX_LIFETIME: Duration = Duration::from_secs((10 * 365 + 3) * 24 * 3600);
/// Longest provider description copied into a failure, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest provider error value copied into a failure, in characters.
pub const MAX_ERROR_CHARS: usize = 100;

/// How one provider's answers differ from RFC 6749's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// Separator of the `scope` string: `' '` (RFC 6749) or `','` (TikTok).
    pub scope_separator: char,
    /// A header giving seconds until a rate-limit window resets, read on 429.
    pub reset_header: Option<&'static str>,
    /// False when the provider has no refresh token (Instagram): any returned is ignored.
    pub refresh_tokens: bool,
}

impl Dialect {
    pub(crate) const RFC6749: Dialect = Dialect {
        scope_separator: ' ',
        reset_header: None,
        refresh_tokens: true,
    };
}

/// Parses one answer. `secrets` are strings that must never be copied into a failure (the
/// tokens and client secret that were sent); pass `&[]` when there are none to scrub.
pub(crate) fn parse_token_response(
    dialect: &Dialect,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
    secrets: &[&str],
) -> Result<TokenResponse, RefreshFailure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let object = json.as_ref().and_then(Value::as_object);

    // An error in the body wins over the status: Reddit and TikTok send errors with 200.
    if let Some(refusal) = object.and_then(|map| find_error(map, status, secrets)) {
        let rate_limited = refusal.rate_limited || status == 429;
        let hint = retry_hint(dialect, refusal.class, rate_limited, headers, now);
        let kind = FailureKind::Rejected {
            status,
            error: refusal.error,
            description: refusal.description,
        };
        return Err(RefreshFailure::new(refusal.class, kind).with_retry_after(hint));
    }

    if !(200..300).contains(&status) {
        // No error value we recognise: the status decides (5xx/408/429 transient, the rest
        // is an operator problem such as a wrong URL, a redirect or bad credentials).
        let class = classify_status(status);
        let hint = retry_hint(dialect, class, status == 429, headers, now);
        let kind = FailureKind::Rejected {
            status,
            error: format!("http_{status}"),
            description: None,
        };
        return Err(RefreshFailure::new(class, kind).with_retry_after(hint));
    }

    match object {
        Some(map) => parse_success(dialect, status, map),
        None if json.is_some() => Err(RefreshFailure::unparseable(
            status,
            "answer is not a JSON object",
        )),
        None => Err(RefreshFailure::unparseable(status, "answer is not JSON")),
    }
}

/// Parses a revocation answer (RFC 7009 §2.2): any 2xx is success, unless the body carries
/// an error (Reddit and TikTok answer errors with 200). The body of a success is ignored.
pub(crate) fn parse_revoke_response(
    dialect: &Dialect,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
    secrets: &[&str],
) -> Result<(), RefreshFailure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let has_error = json
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|map| find_error(map, status, secrets).is_some());
    if (200..300).contains(&status) && !has_error {
        return Ok(());
    }
    // Same classification as a refresh; a non-2xx or an error body never parses as success.
    parse_token_response(dialect, status, headers, body, now, secrets).map(|_| ())
}

/// A refusal found in an answer body.
struct Refusal {
    class: FailureClass,
    error: String,
    description: Option<String>,
    /// The body itself says "rate limited", whatever the status.
    rate_limited: bool,
}

/// Looks for an error in the shapes providers use:
/// RFC 6749 `{"error":"invalid_grant","error_description":..}` (also TikTok, Reddit),
/// Reddit's `{"error":401,"message":..}`, Meta's `{"error":{"code":190,"type":..}}`,
/// TikTok API v2's `{"error":{"code":"rate_limit_exceeded",..}}` and the old Instagram
/// `{"error_type":..,"code":400,"error_message":..}`.
fn find_error(map: &Map<String, Value>, status: u16, secrets: &[&str]) -> Option<Refusal> {
    match map.get("error") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => old_instagram_error(map, status),
        Some(Value::String(error)) if error.trim().is_empty() => None,
        Some(Value::String(error)) => {
            let error = scrub(error.trim(), secrets, MAX_ERROR_CHARS);
            let description = map
                .get("error_description")
                .and_then(Value::as_str)
                .map(|d| scrub(d, secrets, MAX_DESCRIPTION_CHARS))
                .filter(|d| !d.is_empty());
            Some(Refusal {
                class: classify_oauth_error(&error, status),
                rate_limited: is_rate_limit_error(&error),
                error,
                description,
            })
        }
        Some(Value::Number(code)) => {
            let error = code.to_string();
            Some(Refusal {
                class: classify_oauth_error(&error, status),
                rate_limited: false,
                error,
                description: None,
            })
        }
        Some(Value::Object(inner)) => object_error(inner, status, secrets),
        Some(_) => Some(Refusal {
            class: classify_status(status),
            error: "unrecognised_error".to_owned(),
            description: None,
            rate_limited: false,
        }),
    }
}

/// `error` as an object: Meta (numeric `code`) or TikTok API v2 (string `code`).
fn object_error(inner: &Map<String, Value>, status: u16, secrets: &[&str]) -> Option<Refusal> {
    if let Some(code) = inner.get("code").and_then(as_i64) {
        return Some(meta_refusal(
            code,
            inner.get("type"),
            inner.get("error_subcode"),
            status,
        ));
    }
    match inner.get("code") {
        Some(Value::String(code)) => {
            let code = code.trim();
            // TikTok API v2 wraps successes as `{"error":{"code":"ok"}}`.
            if code.is_empty() || code.eq_ignore_ascii_case("ok") {
                return None;
            }
            let error = scrub(code, secrets, MAX_ERROR_CHARS);
            let description = inner
                .get("message")
                .and_then(Value::as_str)
                .map(|d| scrub(d, secrets, MAX_DESCRIPTION_CHARS))
                .filter(|d| !d.is_empty());
            Some(Refusal {
                class: classify_oauth_error(&error, status),
                rate_limited: is_rate_limit_error(&error),
                error,
                description,
            })
        }
        _ => Some(Refusal {
            class: classify_status(status),
            error: "unrecognised_error".to_owned(),
            description: None,
            rate_limited: false,
        }),
    }
}

/// The pre-Graph Instagram shape, which has no `error` key.
fn old_instagram_error(map: &Map<String, Value>, status: u16) -> Option<Refusal> {
    map.get("error_type")?.as_str()?;
    let code = map
        .get("code")
        .and_then(as_i64)
        .unwrap_or(i64::from(status));
    Some(meta_refusal(code, map.get("error_type"), None, status))
}

/// A Meta Graph refusal. Meta's free-text `message` can echo the access token, so only the
/// numeric code, the `type` (reduced to identifier characters) and the subcode are kept.
fn meta_refusal(code: i64, kind: Option<&Value>, subcode: Option<&Value>, status: u16) -> Refusal {
    let kind: Option<String> = kind.and_then(Value::as_str).map(|t| {
        t.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect()
    });
    let subcode = subcode.and_then(as_i64);
    let description = match (kind.filter(|k| !k.is_empty()), subcode) {
        (Some(kind), Some(sub)) => Some(format!("{kind}, subcode {sub}")),
        (Some(kind), None) => Some(kind),
        (None, Some(sub)) => Some(format!("subcode {sub}")),
        (None, None) => None,
    };
    Refusal {
        class: classify_meta_code(code, status),
        error: code.to_string(),
        description,
        rate_limited: matches!(code, 4 | 17 | 32 | 613),
    }
}

fn is_rate_limit_error(error: &str) -> bool {
    matches!(
        error,
        "rate_limit_exceeded" | "slow_down" | "too_many_requests"
    )
}

/// When to retry: `Retry-After` first, then the provider's reset header when rate limited.
/// Only transient failures get a hint; the others are not retried.
fn retry_hint(
    dialect: &Dialect,
    class: FailureClass,
    rate_limited: bool,
    headers: &HeaderMap,
    now: OffsetDateTime,
) -> Option<Duration> {
    if class != FailureClass::Transient {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(after) = header(RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(v, now)) {
        return Some(after);
    }
    // Reddit sends its reset header on every answer; it only means "wait" once limited.
    if rate_limited {
        return dialect
            .reset_header
            .and_then(header)
            .and_then(|v| parse_reset_header(v, now));
    }
    None
}

fn parse_success(
    dialect: &Dialect,
    status: u16,
    map: &Map<String, Value>,
) -> Result<TokenResponse, RefreshFailure> {
    let bad = |message: &str| RefreshFailure::unparseable(status, message);
    let access_token = match map.get("access_token") {
        Some(Value::String(t)) if t.is_empty() => return Err(bad("access_token is empty")),
        Some(Value::String(t)) if t.len() > MAX_TOKEN_BYTES => {
            return Err(bad("access_token is too long"));
        }
        Some(Value::String(t)) => AccessToken::new(t.as_str()),
        None | Some(Value::Null) => return Err(bad("access_token is missing")),
        Some(_) => return Err(bad("access_token is not a string")),
    };
    let refresh_token = if dialect.refresh_tokens {
        match map.get("refresh_token") {
            // Absent or empty: keep the old one (RFC 6749 §6).
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if t.is_empty() => None,
            Some(Value::String(t)) if t.len() > MAX_TOKEN_BYTES => {
                return Err(bad("refresh_token is too long"));
            }
            Some(Value::String(t)) => Some(RefreshToken::new(t.as_str())),
            Some(_) => return Err(bad("refresh_token is not a string")),
        }
    } else {
        None
    };
    let expires_in = lifetime(map, "expires_in").map_err(|m| bad(&m))?;
    let refresh_expires_in = match lifetime(map, "refresh_expires_in").map_err(|m| bad(&m))? {
        Some(d) => Some(d),
        // LinkedIn and Shopify spell it this way.
        None => lifetime(map, "refresh_token_expires_in").map_err(|m| bad(&m))?,
    };
    // token_type and scope are cosmetic: a wrong type there must not throw away a refresh
    // that the provider has already committed (and, when rotating, a new refresh token).
    let token_type = map
        .get("token_type")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .map(str::to_owned);
    let scopes = scopes(map.get("scope"), dialect.scope_separator);
    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type,
        expires_in,
        refresh_expires_in,
        scopes,
    })
}

/// A lifetime in seconds, as a JSON number or a numeric string; `> 0` and at most ten years.
fn lifetime(map: &Map<String, Value>, key: &str) -> Result<Option<Duration>, String> {
    let secs = match map.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let Some(secs) = secs.filter(|s| s.is_finite()) else {
        return Err(format!("{key} is not a number"));
    };
    if secs <= 0.0 || secs > MAX_LIFETIME.as_secs_f64() {
        return Err(format!("{key} is out of range"));
    }
    // A positive value below a nanosecond rounds to zero: a token that is born expired.
    let lifetime = Duration::from_secs_f64(secs);
    if lifetime.is_zero() {
        return Err(format!("{key} is out of range"));
    }
    Ok(Some(lifetime))
}

fn scopes(value: Option<&Value>, separator: char) -> Option<Vec<String>> {
    let list: Vec<String> = match value? {
        Value::String(s) => s
            .split(|c: char| c == separator || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => return None,
    };
    (!list.is_empty()).then_some(list)
}

/// An integer given as a JSON number or a numeric string.
fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Makes provider text safe to keep: every secret (and its URL-encoded form) replaced,
/// control characters dropped, truncated to `max_chars`. Scrubbing comes before truncation
/// so a cut can never leave half a secret behind.
pub(crate) fn scrub(text: &str, secrets: &[&str], max_chars: usize) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "[REDACTED]");
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        if encoded != *secret {
            text = text.replace(&encoded, "[REDACTED]");
        }
    }
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::{any_headers, any_status, json_like_body, t0};
    use proptest::prelude::*;

    #[test]
    fn scrub_replaces_secrets_before_truncating() {
        let secret = "s3cr3t/+=";
        let text = format!("{}{secret} and {}", "x".repeat(195), "s3cr3t%2F%2B%3D");
        let out = scrub(&text, &[secret], 200);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert_eq!(out.chars().count(), 200);
        assert_eq!(scrub("a\u{0}b\r\nc", &[""], 10), "abc");
    }

    #[test]
    fn lifetime_bounds() {
        let ten_years = MAX_LIFETIME.as_secs();
        let ok = format!(r#"{{"access_token":"a","expires_in":{ten_years}}}"#);
        let too_long = format!(r#"{{"access_token":"a","expires_in":{}}}"#, ten_years + 1);
        let parse = |body: &str| {
            parse_token_response(
                &Dialect::RFC6749,
                200,
                &HeaderMap::new(),
                body.as_bytes(),
                t0(),
                &[],
            )
        };
        assert_eq!(parse(&ok).expect("ok").expires_in, Some(MAX_LIFETIME));
        assert!(parse(&too_long).is_err());
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":" 3600 "}"#)
                .expect("ok")
                .expires_in,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse(r#"{"access_token":"a","expires_in":1.5}"#)
                .expect("ok")
                .expires_in,
            Some(Duration::from_millis(1500))
        );
    }

    /// Found by the `provider_response` fuzz target: `1e-297` passed the `> 0` check and
    /// became a zero `Duration`.
    #[test]
    fn fuzz_subnanosecond_expires_in_is_rejected() {
        for value in ["7.414429461034431e-297", "1e-10", "\"0.0000000001\""] {
            let body = format!(r#"{{"access_token":"a","expires_in":{value}}}"#);
            let result = parse_token_response(
                &Dialect::RFC6749,
                200,
                &HeaderMap::new(),
                body.as_bytes(),
                t0(),
                &[],
            );
            assert!(result.is_err(), "{value} accepted");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the provider echoes, a secret that was sent never reaches a failure.
        #[test]
        fn echoed_secrets_never_reach_failures(
            secret in "[A-Za-z0-9._~+/=-]{8,40}",
            before in "[ -~]{0,300}",
            after in "[ -~]{0,50}",
            status in any_status(),
            field in prop_oneof![Just("error_description"), Just("error")],
        ) {
            let text = format!("{before}{secret}{after}");
            let body = serde_json::json!({ "error": "invalid_grant", field: text });
            let body = serde_json::to_vec(&body).expect("json");
            let result = parse_token_response(
                &Dialect::RFC6749, status, &HeaderMap::new(), &body, t0(), &[secret.as_str()],
            );
            let failure = result.expect_err("an error value always fails");
            let shown = format!("{failure} {failure:?}");
            prop_assert!(!shown.contains(&secret), "{}", shown);
        }

        /// Success only with 2xx; hints only on transient failures; bounded lifetimes.
        #[test]
        fn answers_are_consistent(status in any_status(), body in json_like_body(), h in any_headers()) {
            match parse_token_response(&Dialect::RFC6749, status, &h, &body, t0(), &[]) {
                Ok(ok) => {
                    prop_assert!((200..300).contains(&status));
                    prop_assert!(!ok.access_token.is_empty());
                    prop_assert!(ok.access_token.expose_secret().len() <= MAX_TOKEN_BYTES);
                    for d in [ok.expires_in, ok.refresh_expires_in].into_iter().flatten() {
                        prop_assert!(!d.is_zero() && d <= MAX_LIFETIME);
                    }
                }
                Err(failure) => {
                    if failure.retry_after.is_some() {
                        prop_assert_eq!(failure.class, FailureClass::Transient);
                    }
                    if let FailureKind::Rejected { error, description, .. } = &failure.kind {
                        prop_assert!(error.chars().count() <= MAX_ERROR_CHARS);
                        let len = description.as_ref().map_or(0, |d| d.chars().count());
                        prop_assert!(len <= MAX_DESCRIPTION_CHARS);
                    }
                }
            }
        }
    }
}
