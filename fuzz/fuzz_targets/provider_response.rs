//! The four providers' token-endpoint parsers on arbitrary `(status, headers, body, now)`.
//!
//! Checks, beyond "no panic, no hang":
//! - Ok only for a 2xx status; the access token is non-empty and at most 16 KiB; every
//!   lifetime is > 0 and at most ten years; a returned access token is the body's.
//! - Err: a retry hint only on a transient failure; the error and description copied from
//!   the provider stay within their length limits; neither Display nor Debug shows any part
//!   of the body's `access_token` or `refresh_token`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokenwarden::FailureClass;
use tokenwarden::provider::{
    FailureKind, MAX_DESCRIPTION_CHARS, MAX_ERROR_CHARS, MAX_LIFETIME, MAX_TOKEN_BYTES,
    RefreshFailure, TokenResponse, instagram, oauth2, reddit, tiktok,
};
use tokenwarden_fuzz::{JsonObject, Secret, any_time, plain, shows_secret, t0};

#[derive(Debug, Arbitrary)]
enum Provider {
    OAuth2,
    TikTok,
    Reddit,
    Instagram,
}

#[derive(Debug, Arbitrary)]
enum Header {
    RetryAfter,
    RateLimitReset,
    ContentType,
    /// A name the parsers ignore.
    Other,
}

#[derive(Debug, Arbitrary)]
enum Body {
    /// Bytes as they came: serde_json's tokenizer and the not-JSON paths.
    Raw(Vec<u8>),
    /// An object with the parsers' field names, and secret tokens that must not leak.
    Json {
        fields: JsonObject,
        access_token: Option<Secret>,
        refresh_token: Option<Secret>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    provider: Provider,
    status: u16,
    headers: Vec<(Header, String)>,
    body: Body,
    /// `None`: the tests' fixed time; otherwise any time `time` can represent.
    now: Option<i64>,
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = match name {
            Header::RetryAfter => HeaderName::from_static("retry-after"),
            Header::RateLimitReset => HeaderName::from_static("x-ratelimit-reset"),
            Header::ContentType => HeaderName::from_static("content-type"),
            Header::Other => HeaderName::from_static("x-business-use-case-usage"),
        };
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(name, value);
        }
    }
    let mut secrets = Vec::new();
    let body = match input.body {
        Body::Raw(bytes) => bytes,
        Body::Json {
            fields,
            access_token,
            refresh_token,
        } => {
            let mut map = fields.0;
            if let Some(secret) = access_token {
                map.insert("access_token".to_owned(), Value::String(secret.0));
            }
            if let Some(secret) = refresh_token {
                map.insert("refresh_token".to_owned(), Value::String(secret.0));
            }
            // Secret-shaped strings stay only as the two tokens: other fields (an
            // `error_description` is the provider's own text) may be echoed by design.
            let map = only_token_secrets(map, &mut secrets);
            serde_json::to_vec(&Value::Object(map)).expect("a JSON value serializes")
        }
    };
    let now = input.now.map_or_else(t0, any_time);
    let parse = match input.provider {
        Provider::OAuth2 => oauth2::parse_response,
        Provider::TikTok => tiktok::parse_response,
        Provider::Reddit => reddit::parse_response,
        Provider::Instagram => instagram::parse_response,
    };
    match parse(input.status, &headers, &body, now) {
        Ok(ok) => check_ok(input.status, &ok, &secrets),
        Err(failure) => check_err(&failure, &secrets),
    }
});

/// Removes MARK from every string except a string `access_token` or `refresh_token`, which
/// go into `secrets`: a MARK in a failure can then only have come from a token.
fn only_token_secrets(
    map: serde_json::Map<String, Value>,
    secrets: &mut Vec<String>,
) -> serde_json::Map<String, Value> {
    fn clean(value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(plain(s)),
            Value::Array(items) => Value::Array(items.into_iter().map(clean).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (plain(k), clean(v))).collect())
            }
            other => other,
        }
    }
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) if k == "access_token" || k == "refresh_token" => {
                if shows_secret(&s) {
                    secrets.push(s.clone());
                }
                (k, Value::String(s))
            }
            v => (plain(k), clean(v)),
        })
        .collect()
}

fn check_ok(status: u16, ok: &TokenResponse, secrets: &[String]) {
    assert!((200..300).contains(&status), "success on status {status}");
    let token = ok.access_token.expose_secret();
    assert!(!token.is_empty(), "empty access token accepted");
    assert!(
        token.len() <= MAX_TOKEN_BYTES,
        "oversized access token accepted"
    );
    if let Some(refresh) = &ok.refresh_token {
        assert!(!refresh.is_empty() && refresh.expose_secret().len() <= MAX_TOKEN_BYTES);
    }
    for lifetime in [ok.expires_in, ok.refresh_expires_in].into_iter().flatten() {
        assert!(!lifetime.is_zero(), "zero lifetime accepted");
        assert!(
            lifetime <= MAX_LIFETIME,
            "lifetime over ten years: {lifetime:?}"
        );
    }
    if shows_secret(token) {
        assert!(secrets.iter().any(|s| s == token), "access token altered");
    }
}

fn check_err(failure: &RefreshFailure, secrets: &[String]) {
    if failure.retry_after.is_some() {
        assert_eq!(
            failure.class,
            FailureClass::Transient,
            "hint on a non-transient failure"
        );
    }
    if let FailureKind::Rejected {
        error, description, ..
    } = &failure.kind
    {
        assert!(error.chars().count() <= MAX_ERROR_CHARS, "error too long");
        let len = description.as_ref().map_or(0, |d| d.chars().count());
        assert!(len <= MAX_DESCRIPTION_CHARS, "description too long");
    }
    if !secrets.is_empty() {
        let shown = format!("{failure} {failure:?}");
        assert!(
            !shows_secret(&shown),
            "a token reached the failure: {shown}"
        );
    }
}
