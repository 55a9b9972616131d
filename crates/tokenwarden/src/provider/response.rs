//! Parsing of token-endpoint answers, shared by every adapter.
//!
//! This module owns the rules that turn `(status, headers, body)` into a [`TokenResponse`] or
//! a classified [`RefreshFailure`]: the body is read even on HTTP 200 and an `error` in it wins
//! over the status; every field is type-checked; lifetimes are bounded. A refusal is
//! classified on the provider's structured answer (its `error` value, Meta's `code`, the
//! status) exactly as sent; only the free text copied into a failure (descriptions, error
//! values we do not know) goes through [`Redactor`], so redaction can never change a
//! decision. It is pure (no I/O, no clock: `now` is a parameter), so it can be fuzzed. The
//! per-provider differences (scope separator, rate-limit reset header, whether a refresh
//! token can come back) are a [`Dialect`].

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::FailureClass;
use crate::provider::{FailureKind, RefreshFailure, TokenResponse};
use crate::refresh::classify::{
    classify_meta_code, classify_oauth_error, classify_status, known_oauth_error,
    parse_reset_header, parse_retry_after,
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
/// Shortest secret that free text is searched for. When a request carried a shorter one,
/// free text from the answer is dropped instead: see [`Redactor`].
pub const MIN_REDACTABLE_SECRET_CHARS: usize = 8;
/// The `error` shown for a value that could not be shown safely (see [`Redactor`]).
pub const WITHHELD_ERROR: &str = "[REDACTED]";

/// How one provider's answers differ from RFC 6749's (built from its catalog entry).
#[derive(Debug, Clone)]
pub(crate) struct Dialect {
    /// Separator of the `scope` string: `' '` (RFC 6749) or `','` (TikTok).
    pub scope_separator: char,
    /// A header giving seconds until a rate-limit window resets, read on 429.
    pub reset_header: Option<String>,
    /// False when the provider has no refresh token (Instagram): any returned is ignored.
    pub refresh_tokens: bool,
    /// The provider's own `error` values with their classes, consulted before RFC 6749's.
    pub errors: Vec<(String, FailureClass)>,
    /// Where the token sits when not at the top of the answer (Slack: `authed_user`).
    pub token_path: Option<String>,
}

impl Dialect {
    pub(crate) const RFC6749: Dialect = Dialect {
        scope_separator: ' ',
        reset_header: None,
        refresh_tokens: true,
        errors: Vec::new(),
        token_path: None,
    };

    /// The class of a value this provider or RFC 6749 defines, or `None`.
    fn known_error(&self, error: &str) -> Option<FailureClass> {
        self.errors
            .iter()
            .find(|(value, _)| value == error)
            .map(|&(_, class)| class)
            .or_else(|| known_oauth_error(error))
    }

    /// Classifies an `error` value: the provider's and RFC 6749's vocabulary, else the status.
    fn classify(&self, error: &str, status: u16) -> FailureClass {
        self.known_error(error)
            .unwrap_or_else(|| classify_oauth_error(error, status))
    }
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
    let redactor = Redactor::new(secrets);

    // An error in the body wins over the status: Reddit and TikTok send errors with 200.
    if let Some(refusal) = object.and_then(|map| find_error(dialect, map, status, &redactor)) {
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
        Some(map) => parse_success(dialect, status, nested_token(dialect, map)),
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
        .is_some_and(|map| find_error(dialect, map, status, &Redactor::new(secrets)).is_some());
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
///
/// Every decision (class, rate limited) is taken on the values as sent; `redactor` only
/// touches what is kept for display.
fn find_error(
    dialect: &Dialect,
    map: &Map<String, Value>,
    status: u16,
    redactor: &Redactor,
) -> Option<Refusal> {
    match map.get("error") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {
            old_instagram_error(map, status, redactor)
        }
        Some(Value::String(error)) if error.trim().is_empty() => None,
        Some(Value::String(error)) => Some(code_refusal(
            dialect,
            error.trim(),
            map.get("error_description"),
            status,
            redactor,
        )),
        Some(Value::Number(code)) => {
            let error = code.to_string();
            Some(Refusal {
                class: dialect.classify(&error, status),
                rate_limited: false,
                error,
                description: None,
            })
        }
        Some(Value::Object(inner)) => object_error(dialect, inner, status, redactor),
        Some(_) => Some(Refusal {
            class: classify_status(status),
            error: "unrecognised_error".to_owned(),
            description: None,
            rate_limited: false,
        }),
    }
}

/// A refusal with a string error code (RFC 6749's `error`, TikTok v2's `code`) and an
/// optional free-text description.
fn code_refusal(
    dialect: &Dialect,
    error: &str,
    description: Option<&Value>,
    status: u16,
    redactor: &Redactor,
) -> Refusal {
    Refusal {
        class: dialect.classify(error, status),
        rate_limited: is_rate_limit_error(error),
        error: shown_error(dialect, error, redactor),
        description: description
            .and_then(Value::as_str)
            .and_then(|d| redactor.free_text(d, MAX_DESCRIPTION_CHARS)),
    }
}

/// The error value as a failure shows it. A value we know is public vocabulary and is kept
/// verbatim: it says nothing about a secret that the classification does not already say,
/// and `provider_error` must name what was decided on. Any other value is free text.
fn shown_error(dialect: &Dialect, error: &str, redactor: &Redactor) -> String {
    if dialect.known_error(error).is_some() || is_rate_limit_error(error) {
        return error.to_owned();
    }
    match redactor.free_text(error, MAX_ERROR_CHARS) {
        Some(shown) => shown,
        None if redactor.drops_free_text() => WITHHELD_ERROR.to_owned(),
        // Nothing printable was left.
        None => "unrecognised_error".to_owned(),
    }
}

/// `error` as an object: Meta (numeric `code`) or TikTok API v2 (string `code`).
fn object_error(
    dialect: &Dialect,
    inner: &Map<String, Value>,
    status: u16,
    redactor: &Redactor,
) -> Option<Refusal> {
    if let Some(code) = inner.get("code").and_then(as_i64) {
        return Some(meta_refusal(
            code,
            inner.get("type"),
            inner.get("error_subcode"),
            status,
            redactor,
        ));
    }
    match inner.get("code") {
        Some(Value::String(code)) => {
            let code = code.trim();
            // TikTok API v2 wraps successes as `{"error":{"code":"ok"}}`.
            if code.is_empty() || code.eq_ignore_ascii_case("ok") {
                return None;
            }
            Some(code_refusal(
                dialect,
                code,
                inner.get("message"),
                status,
                redactor,
            ))
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
fn old_instagram_error(
    map: &Map<String, Value>,
    status: u16,
    redactor: &Redactor,
) -> Option<Refusal> {
    map.get("error_type")?.as_str()?;
    let code = map
        .get("code")
        .and_then(as_i64)
        .unwrap_or(i64::from(status));
    Some(meta_refusal(
        code,
        map.get("error_type"),
        None,
        status,
        redactor,
    ))
}

/// A Meta Graph refusal. Meta's free-text `message` can echo the access token, so only the
/// numeric code, the `type` and the subcode are kept. The `type` is kept only as sent: an
/// identifier (`OAuthException`) of at most 64 characters in which no secret occurs.
fn meta_refusal(
    code: i64,
    kind: Option<&Value>,
    subcode: Option<&Value>,
    status: u16,
    redactor: &Redactor,
) -> Refusal {
    let kind = kind.and_then(Value::as_str).filter(|t| {
        t.len() <= 64
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && redactor.is_clean(t)
    });
    let subcode = subcode.and_then(as_i64);
    let description = match (kind.filter(|k| !k.is_empty()), subcode) {
        (Some(kind), Some(sub)) => Some(format!("{kind}, subcode {sub}")),
        (Some(kind), None) => Some(kind.to_owned()),
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

/// The object holding the token: the answer itself, or (when the dialect says where, and the
/// top level has no `access_token`) the object at the dialect's `token_path`.
fn nested_token<'a>(dialect: &Dialect, map: &'a Map<String, Value>) -> &'a Map<String, Value> {
    if map.contains_key("access_token") {
        return map;
    }
    let Some(path) = &dialect.token_path else {
        return map;
    };
    let mut at = map;
    for part in path.split('.') {
        match at.get(part).and_then(Value::as_object) {
            Some(inner) => at = inner,
            None => return map,
        }
    }
    at
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
            .as_deref()
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
    let access_token = match field(map, "access_token") {
        Some(Value::String(t)) if t.is_empty() => return Err(bad("access_token is empty")),
        Some(Value::String(t)) if t.len() > MAX_TOKEN_BYTES => {
            return Err(bad("access_token is too long"));
        }
        Some(Value::String(t)) => AccessToken::new(t.as_str()),
        None | Some(Value::Null) => return Err(bad("access_token is missing")),
        Some(_) => return Err(bad("access_token is not a string")),
    };
    let refresh_token = if dialect.refresh_tokens {
        match field(map, "refresh_token") {
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
    let token_type = field(map, "token_type")
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

/// A field of a success answer under its RFC 6749 name or, when the answer has no such key,
/// its camelCase spelling (`accessToken`, `expiresIn`): HubSpot documents its dated 2026-03
/// token endpoint's answer that way. Reading both costs nothing when the RFC name is there,
/// and a refresh the provider committed is not thrown away over a spelling.
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if let Some(value) = map.get(key) {
        return Some(value);
    }
    let mut camel = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    map.get(&camel)
}

/// A lifetime in seconds, as a JSON number or a numeric string; `> 0` and at most ten years.
fn lifetime(map: &Map<String, Value>, key: &str) -> Result<Option<Duration>, String> {
    let secs = match field(map, key) {
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

/// Makes a provider's free text safe to keep in a failure, given the secrets the request
/// carried (its tokens, the client secret).
///
/// The rule: a secret of at least [`MIN_REDACTABLE_SECRET_CHARS`] characters is replaced
/// wherever it (or its URL-encoded form) occurs; when any secret is shorter, free text is
/// dropped altogether. A short value cannot be told apart from ordinary text: replacing
/// every `t` mangles the message into something misleading, and matching whole words only
/// would still echo `t` in `token=t`. Real tokens and client secrets are far longer than
/// eight characters, so dropping costs a description only for connections that hold toy
/// values, and it can never leak one. Nothing decided (class, retry, reconnect) reads text
/// that went through here.
///
/// Control characters are removed from the text (and from the secrets) before searching, so
/// removing them can never join the pieces of a secret back together.
pub(crate) struct Redactor {
    /// What to search for, longest first; `None` when free text is dropped.
    patterns: Option<Vec<String>>,
}

impl Redactor {
    pub(crate) fn new(secrets: &[&str]) -> Self {
        let mut patterns = Vec::new();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            let secret = without_controls(secret);
            if secret.chars().count() < MIN_REDACTABLE_SECRET_CHARS {
                return Self { patterns: None };
            }
            let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
            if encoded != secret {
                patterns.push(encoded);
            }
            patterns.push(secret);
        }
        // Longest first: a secret inside a longer one must not break the longer one's match
        // and leave its ends behind.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Self {
            patterns: Some(patterns),
        }
    }

    /// True when a secret is too short to search for, so free text is not kept at all.
    pub(crate) fn drops_free_text(&self) -> bool {
        self.patterns.is_none()
    }

    /// True when `text` can be kept exactly as it is: free text is kept and no secret occurs
    /// in it. For text without control characters.
    pub(crate) fn is_clean(&self, text: &str) -> bool {
        self.patterns
            .as_ref()
            .is_some_and(|patterns| !patterns.iter().any(|p| text.contains(p.as_str())))
    }

    /// `text` without control characters, with every secret replaced, truncated to
    /// `max_chars` and trimmed; `None` when nothing is left or free text is dropped.
    /// Replacing comes before truncation so a cut can never leave half a secret behind.
    pub(crate) fn free_text(&self, text: &str, max_chars: usize) -> Option<String> {
        let patterns = self.patterns.as_ref()?;
        let mut text = without_controls(text);
        for pattern in patterns {
            if text.contains(pattern.as_str()) {
                text = text.replace(pattern.as_str(), "[REDACTED]");
            }
        }
        let text: String = text.chars().take(max_chars).collect();
        Some(text.trim().to_owned()).filter(|t| !t.is_empty())
    }
}

fn without_controls(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::{any_headers, any_status, json_like_body, rejected, t0};
    use proptest::prelude::*;

    #[test]
    fn free_text_replaces_secrets_before_truncating() {
        let secret = "s3cr3t/+=";
        let text = format!("{}{secret} and {}", "x".repeat(195), "s3cr3t%2F%2B%3D");
        let out = Redactor::new(&[secret])
            .free_text(&text, 200)
            .expect("kept");
        assert!(!out.contains("s3cr3t"), "{out}");
        assert_eq!(out.chars().count(), 200);
        let none = Redactor::new(&[""]);
        assert_eq!(none.free_text("a\u{0}b\r\nc", 10).as_deref(), Some("abc"));
        assert_eq!(none.free_text(" \n ", 10), None);
    }

    /// Removing a control character must not reassemble a secret that the search missed.
    #[test]
    fn control_characters_cannot_hide_a_secret() {
        let secret = "rt-0123456789";
        let redactor = Redactor::new(&[secret]);
        let out = redactor
            .free_text("bad rt-01234\u{0}56789 and rt-\u{7}0123456789", 200)
            .expect("kept");
        assert_eq!(out, "bad [REDACTED] and [REDACTED]");
        let with_control = Redactor::new(&["rt-01234\n56789"]);
        let out = with_control
            .free_text("bad rt-0123456789", 200)
            .expect("kept");
        assert_eq!(out, "bad [REDACTED]");
    }

    #[test]
    fn a_secret_inside_a_longer_one_leaves_nothing_behind() {
        let short = "abcdefgh";
        let long = "XYZ-abcdefgh-UVW";
        let out = Redactor::new(&[short, long])
            .free_text(&format!("got {long}"), 200)
            .expect("kept");
        assert_eq!(out, "got [REDACTED]");
    }

    /// Issue 9, finding 6: a secret shorter than the threshold drops free text instead of
    /// being searched for, so `t` neither mangles the text nor is echoed in it.
    #[test]
    fn issue_9_short_secrets_drop_free_text() {
        for secret in ["t", "rt", "abc", "1234567"] {
            let redactor = Redactor::new(&["a-long-enough-access-token", secret]);
            assert!(redactor.drops_free_text(), "{secret}");
            assert_eq!(redactor.free_text("token is not valid", 200), None);
            assert!(!redactor.is_clean("OAuthException"));
        }
        let redactor = Redactor::new(&["12345678"]);
        assert!(!redactor.drops_free_text());
        assert_eq!(
            redactor
                .free_text("token 12345678 is not valid", 200)
                .as_deref(),
            Some("token [REDACTED] is not valid")
        );
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

    fn refuse(body: &serde_json::Value, status: u16, secrets: &[&str]) -> RefreshFailure {
        let body = serde_json::to_vec(body).expect("json");
        parse_token_response(
            &Dialect::RFC6749,
            status,
            &HeaderMap::new(),
            &body,
            t0(),
            secrets,
        )
        .expect_err("an error value always fails")
    }

    /// Issue 9, finding 6: with the refresh token `t`, `invalid_grant` was redacted to
    /// `invalid_gran[REDACTED]` before it was classified, and the revoked grant came out as
    /// a configuration problem.
    #[test]
    fn issue_9_short_refresh_token_keeps_invalid_grant_permanent() {
        let access = "at-long-enough-0001";
        for refresh in ["t", "nt", "ant", "gr", "_"] {
            let body = serde_json::json!({
                "error": "invalid_grant",
                "error_description": format!("refresh token {refresh} was revoked"),
            });
            let failure = refuse(&body, 400, &[access, refresh]);
            assert_eq!(failure.class, FailureClass::Permanent, "{refresh}");
            assert_eq!(failure.provider_error(), Some("invalid_grant"), "{refresh}");
            // Too short to search for: the description is dropped, not mangled or echoed.
            assert_eq!(rejected(&failure).2, None, "{refresh}");
        }
        // The same for the other shapes a code comes in.
        let tiktok = serde_json::json!({"error": {"code": "invalid_client", "message": "no"}});
        let failure = refuse(&tiktok, 200, &["c"]);
        assert_eq!(failure.class, FailureClass::Configuration);
        assert_eq!(failure.provider_error(), Some("invalid_client"));
        let limited = serde_json::json!({"error": "rate_limit_exceeded"});
        let failure = refuse(&limited, 200, &["e"]);
        assert_eq!(failure.class, FailureClass::Transient);
        assert_eq!(failure.provider_error(), Some("rate_limit_exceeded"));
    }

    /// An error value nobody knows is free text: with a short secret it is withheld, while
    /// its class still comes from the status.
    #[test]
    fn issue_9_unknown_error_values_are_free_text() {
        let body = serde_json::json!({"error": "token_t_unknown"});
        let failure = refuse(&body, 503, &["t"]);
        assert_eq!(failure.class, FailureClass::Transient);
        assert_eq!(failure.provider_error(), Some(WITHHELD_ERROR));
        let long = "rt-0123456789";
        let body = serde_json::json!({"error": format!("unknown_{long}")});
        let failure = refuse(&body, 400, &[long]);
        assert_eq!(failure.class, FailureClass::Configuration);
        assert_eq!(failure.provider_error(), Some("unknown_[REDACTED]"));
    }

    #[test]
    fn long_secrets_in_descriptions_are_still_redacted() {
        let refresh = "rt-0123456789-abcdef";
        let body = serde_json::json!({
            "error": "invalid_grant",
            "error_description": format!("refresh token {refresh} was revoked"),
        });
        let failure = refuse(&body, 400, &["at-0123456789", refresh]);
        assert_eq!(failure.class, FailureClass::Permanent);
        assert_eq!(
            rejected(&failure).2.as_deref(),
            Some("refresh token [REDACTED] was revoked")
        );
    }

    /// A Meta `type` that carries a secret is dropped, not shown.
    #[test]
    fn meta_type_carrying_a_secret_is_dropped() {
        let token = "IGQWtoken0123456789";
        let body = serde_json::json!({"error": {"code": 190, "type": format!("x{token}"), "error_subcode": 463}});
        let failure = refuse(&body, 400, &[token]);
        assert_eq!(failure.class, FailureClass::Permanent);
        assert_eq!(rejected(&failure).2.as_deref(), Some("subcode 463"));
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
            // A code from the public list is shown verbatim (see `shown_error`).
            prop_assume!(known_oauth_error(text.trim()).is_none());
            let body = serde_json::json!({ "error": "invalid_grant", field: text });
            let body = serde_json::to_vec(&body).expect("json");
            let result = parse_token_response(
                &Dialect::RFC6749, status, &HeaderMap::new(), &body, t0(), &[secret.as_str()],
            );
            let failure = result.expect_err("an error value always fails");
            let shown = format!("{failure} {failure:?}");
            prop_assert!(!shown.contains(&secret), "{}", shown);
        }

        /// Issue 9, finding 6: whatever the secrets of the request, a standard error code is
        /// classified, hinted and reported exactly as without them.
        #[test]
        fn issue_9_secrets_never_change_classification(
            secret in prop_oneof!["[ -~]{1,3}", "[ -~]{1,40}", "[a-z_]{1,12}", "\\PC{1,10}"],
            code in proptest::sample::select(
                crate::refresh::classify::OAUTH_ERRORS.iter().map(|(c, _)| *c).collect::<Vec<_>>()
            ),
            meta_code in proptest::sample::select(vec![1i64, 2, 4, 10, 17, 100, 102, 190, 200, 613]),
            shape in 0u8..3,
            status in any_status(),
            h in any_headers(),
            before in "[ -~]{0,20}",
            echo in any::<bool>(),
        ) {
            let text = if echo { format!("{before}{secret}") } else { before };
            let body = match shape {
                0 => serde_json::json!({"error": code, "error_description": text}),
                1 => serde_json::json!({"error": {"code": code, "message": text}}),
                _ => serde_json::json!({"error": {"code": meta_code, "type": text, "message": text}}),
            };
            let body = serde_json::to_vec(&body).expect("json");
            let parse = |secrets: &[&str]| {
                parse_token_response(&Dialect::RFC6749, status, &h, &body, t0(), secrets)
                    .expect_err("an error value always fails")
            };
            let with = parse(&["at-long-enough-0001", secret.as_str()]);
            let without = parse(&[]);
            prop_assert_eq!(with.class, without.class);
            prop_assert_eq!(with.retry_after, without.retry_after);
            prop_assert_eq!(with.provider_error(), without.provider_error());
            prop_assert_eq!(with.http_status(), without.http_status());
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
