//! Helpers for the adapters' unit tests: fixed times, header maps, and proptest strategies
//! that produce arbitrary statuses, headers and JSON-shaped bodies.

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::connection::{Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, Tokens};
use crate::provider::{FailureKind, RefreshFailure};
use crate::secret::{AccessToken, RefreshToken};

/// The tests' "now".
pub(crate) fn t0() -> OffsetDateTime {
    datetime!(2026-11-26 12:00 UTC)
}

pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

/// `(status, error, description)` of a rejection; panics on any other kind.
pub(crate) fn rejected(failure: &RefreshFailure) -> (u16, String, Option<String>) {
    match &failure.kind {
        FailureKind::Rejected {
            status,
            error,
            description,
        } => (*status, error.clone(), description.clone()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

pub(crate) fn any_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        100u16..600,
        any::<u16>(),
        Just(200u16),
        Just(429u16),
        Just(503u16)
    ]
}

pub(crate) fn any_headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        Just("retry-after"),
        Just("x-ratelimit-reset"),
        Just("content-type"),
        Just("x-business-use-case-usage"),
    ];
    let value = prop_oneof![
        "[ -~]{0,40}",
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?",
        Just("Thu, 26 Nov 2026 12:00:30 GMT".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("1e308".to_owned()),
        Just("inf".to_owned()),
    ];
    proptest::collection::vec((name, value), 0..4).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        map
    })
}

/// JSON objects using the field names the parsers look at, with values of any type.
pub(crate) fn json_like_body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,20}".prop_map(Value::String),
        "-?[0-9]{1,22}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    });
    proptest::collection::vec((key(), value), 0..8).prop_map(|kv| {
        serde_json::to_vec(&Value::Object(kv.into_iter().collect())).expect("serializable")
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("access_token"),
        Just("refresh_token"),
        Just("expires_in"),
        Just("refresh_expires_in"),
        Just("refresh_token_expires_in"),
        Just("token_type"),
        Just("scope"),
        Just("error"),
        Just("error_description"),
        Just("error_type"),
        Just("code"),
        Just("type"),
        Just("error_subcode"),
        Just("message"),
        Just("log_id"),
    ]
    .prop_map(str::to_owned)
}

/// An active connection at `provider` holding the given tokens, issued at [`t0`].
pub(crate) fn connection(provider: &str, access: &str, refresh: Option<&str>) -> Connection {
    let key = ConnectionKey::parse("user-1", provider, "account-1").expect("key");
    Connection {
        meta: ConnectionMeta {
            key,
            token_type: "bearer".to_owned(),
            has_refresh_token: refresh.is_some(),
            expires_at: Some(t0() + time::Duration::hours(1)),
            refresh_expires_at: None,
            issued_at: Some(t0()),
            scopes: Vec::new(),
            metadata: Value::Null,
            status: ConnectionStatus::Active,
            last_refreshed_at: None,
            consecutive_failures: 0,
            last_error: None,
            created_at: t0(),
            updated_at: t0(),
            next_refresh_at: None,
            version: 1,
        },
        tokens: Tokens {
            access_token: AccessToken::new(access),
            refresh_token: refresh.map(RefreshToken::new),
        },
    }
}
