//! The HTTP API's request parsing, through the same functions the handlers call:
//! `parse_import_body` (PUT .../{account_id}), `parse_refresh_body` (POST .../refresh) and
//! axum's query extractor followed by `parse_list_query` (GET /v1/connections).
//!
//! Checks, beyond "no panic, no hang":
//! - import: Ok only with a non-empty access token, at most 1000 scopes, an object as
//!   metadata, a valid token type; an error (message or Debug) never shows any part of any
//!   string value of the body, since values may be tokens.
//! - refresh: accepted overrides are within their limits and keep initial ≤ max delay; an
//!   error never shows a string value of the body.
//! - list: an accepted query has a limit of 1-1000, a non-empty cursor of at most 1024 bytes
//!   and only configured providers.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::extract::Query;
use axum::http::Uri;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenwarden::ProviderName;
use tokenwarden::refresh::policy::RetryPolicy;
use tokenwarden_fuzz::{JsonObject, any_time, shows_secret, t0};
use tokenwarden_server::api::{parse_import_body, parse_list_query, parse_refresh_body};
use tokenwarden_server::config::{MAX_DELAY_MS_LIMIT, MAX_RETRIES_LIMIT};
use tokenwarden_server::error::ApiError;

#[derive(Debug, Arbitrary)]
enum Op {
    ImportRaw {
        body: Vec<u8>,
        now: Option<i64>,
    },
    Import {
        body: JsonObject,
        now: Option<i64>,
    },
    RefreshRaw {
        body: Vec<u8>,
    },
    Refresh {
        body: JsonObject,
        base: Option<(u16, u16)>,
    },
    List {
        query: String,
    },
}

/// Providers the list check treats as configured.
const CONFIGURED: [&str; 3] = ["reddit", "tiktok", "google-work"];

fuzz_target!(|op: Op| match op {
    Op::ImportRaw { body, now } => {
        let _ = parse_import_body(&body, now.map_or_else(t0, any_time));
    }
    Op::Import { body, now } => {
        let bytes = serde_json::to_vec(&Value::Object(body.0)).expect("serializes");
        match parse_import_body(&bytes, now.map_or_else(t0, any_time)) {
            Ok(request) => {
                assert!(!request.access_token.is_empty());
                assert!(request.scopes.len() <= 1000);
                assert!(request.metadata.is_object());
                if let Some(t) = &request.token_type {
                    assert!(!t.is_empty() && t.len() <= 64);
                }
            }
            Err(error) => no_secret(&error),
        }
    }
    Op::RefreshRaw { body } => {
        let _ = parse_refresh_body(&body, &RetryPolicy::default());
    }
    Op::Refresh { body, base } => {
        let base = match base {
            None => RetryPolicy::default(),
            Some((initial, max)) => RetryPolicy {
                max_retries: 3,
                initial_delay: Duration::from_millis(u64::from(initial)),
                max_delay: Duration::from_millis(u64::from(max)),
            },
        };
        let bytes = serde_json::to_vec(&Value::Object(body.0)).expect("serializes");
        match parse_refresh_body(&bytes, &base) {
            Ok(options) => {
                assert!(options.max_retries.is_none_or(|n| n <= MAX_RETRIES_LIMIT));
                let limit = Duration::from_millis(MAX_DELAY_MS_LIMIT);
                for d in [options.initial_delay, options.max_delay]
                    .into_iter()
                    .flatten()
                {
                    assert!(!d.is_zero() && d <= limit, "{d:?}");
                }
                let initial = options.initial_delay.unwrap_or(base.initial_delay);
                let max = options.max_delay.unwrap_or(base.max_delay);
                assert!(initial <= max, "initial {initial:?} > max {max:?}");
            }
            Err(error) => no_secret(&error),
        }
    }
    Op::List { query } => {
        // As axum's `Query` extractor sees it: a URI first (invalid ones never get here).
        let Ok(uri) = format!("/v1/connections?{query}").parse::<Uri>() else {
            return;
        };
        let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(&uri) else {
            return;
        };
        let configured = |name: &ProviderName| CONFIGURED.contains(&name.as_str());
        if let Ok(list) = parse_list_query(params, configured) {
            assert!((1..=1000).contains(&list.limit), "limit {}", list.limit);
            if let Some(cursor) = &list.cursor {
                assert!(!cursor.is_empty() && cursor.len() <= 1024);
            }
            if let Some(provider) = &list.provider {
                assert!(configured(provider));
            }
        }
    }
});

fn no_secret(error: &ApiError) {
    let shown = format!("{} {error:?}", error.message());
    assert!(
        !shows_secret(&shown),
        "a body value reached the error: {shown}"
    );
}
