//! The access-token fast path answers exactly what the full stack (router, layers, handler)
//! would, and only the requests it may: a fresh cached token for a valid key. Everything
//! else is handed to the full stack untouched.

#[path = "common/binary.rs"]
mod binary;
mod common;

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, Response, header};
use serde_json::json;
use tokenwarden::{AccessToken, ConnectionKey, ImportRequest, RefreshToken};
use tokenwarden_server::{App, config};
use tower::ServiceExt;

use common::API_KEY;

async fn app(dir: &tempfile::TempDir) -> App {
    let text = common::config_toml(dir, "http://127.0.0.1:9/token", "");
    let config = config::from_table(text.parse().expect("toml")).expect("config");
    config.validate().expect("valid");
    App::build(config, tokenwarden_server::telemetry::metrics_handle())
        .await
        .expect("app")
}

async fn import(app: &App, user: &str, expires_in_s: i64) -> ConnectionKey {
    let key = ConnectionKey::parse(user, "fake", "acct").expect("key");
    let now = time::OffsetDateTime::now_utc();
    app.warden()
        .import(
            key.clone(),
            ImportRequest {
                access_token: AccessToken::new(format!("at-{user}-0123456789")),
                refresh_token: Some(RefreshToken::new("rt-0123456789")),
                expires_at: Some(now + time::Duration::seconds(expires_in_s)),
                refresh_expires_at: None,
                // Issued an hour ago, so a short remaining life means "due for refresh".
                issued_at: Some(now - time::Duration::hours(1)),
                token_type: None,
                scopes: vec![],
                metadata: json!(null),
            },
        )
        .await
        .expect("import");
    key
}

fn get(path: &str, key: Option<&str>, request_id: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri(path);
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if let Some(id) = request_id {
        builder = builder.header("x-request-id", id);
    }
    builder.body(Body::empty()).expect("request")
}

/// Status, headers and body. `content-length` is left out: hyper writes it on the wire from
/// the body's exact size for both, and the router merely sets it earlier.
async fn parts(response: Response<Body>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| *k != header::CONTENT_LENGTH)
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
        .collect();
    headers.sort();
    let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, headers, body.to_vec())
}

const PATH: &str = "/v1/users/u1/connections/fake/acct/access-token";

#[tokio::test]
async fn a_fresh_token_is_answered_as_the_full_stack_answers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(&dir).await;
    let key = import(&app, "u1", 3600).await;
    // Not cached yet: the full stack reads the store (and caches the token).
    let mut fast = app.service();
    let cold = fast.try_answer(get(PATH, Some(API_KEY), Some("rid-1")));
    assert!(
        cold.is_err(),
        "a token not in memory goes to the full stack"
    );
    app.warden()
        .access_token(&key)
        .await
        .expect("warm the cache");

    let from_fast = fast
        .try_answer(get(PATH, Some(API_KEY), Some("rid-1")))
        .expect("a fresh cached token is answered by the fast path");
    let from_router = app
        .router()
        .oneshot(get(PATH, Some(API_KEY), Some("rid-1")))
        .await
        .expect("infallible");
    let (fast_parts, router_parts) = (parts(from_fast).await, parts(from_router).await);
    assert_eq!(fast_parts, router_parts);
    assert_eq!(fast_parts.0, 200);
    assert!(
        fast_parts
            .1
            .contains(&("x-request-id".to_owned(), "rid-1".to_owned())),
        "{:?}",
        fast_parts.1
    );
    assert!(
        fast_parts
            .1
            .contains(&("cache-control".to_owned(), "no-store".to_owned()))
    );
    let body: serde_json::Value = serde_json::from_slice(&fast_parts.2).expect("json");
    assert_eq!(body["access_token"], "at-u1-0123456789");

    // Without an id, one is made, in the full stack's form.
    let response = fast
        .try_answer(get(PATH, Some(API_KEY), None))
        .expect("fresh");
    let id = response.headers()["x-request-id"].to_str().expect("ascii");
    let (prefix, counter) = id.split_once('-').expect("prefix-counter");
    assert_eq!(prefix.len(), 8, "{id}");
    assert!(u64::from_str_radix(counter, 16).is_ok(), "{id}");
}

#[tokio::test]
async fn everything_else_goes_to_the_full_stack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(&dir).await;
    let fresh = import(&app, "u1", 3600).await;
    app.warden().access_token(&fresh).await.expect("cached");
    // Due for refresh: never answered from memory.
    let due = import(&app, "u2", 10).await;
    let _ = app.warden().access_token(&due).await;
    let mut fast = app.service();
    let long_id = format!(
        "/v1/users/{}/connections/fake/acct/access-token",
        "x".repeat(300)
    );
    let handed_over = [
        get(PATH, None, None),
        get(PATH, Some("wrong-key-0123456789abcdef"), None),
        get(&PATH.replace("u1", "u%31"), Some(API_KEY), None),
        get(&PATH.replace("fake", "other"), Some(API_KEY), None),
        get(&format!("{PATH}/"), Some(API_KEY), None),
        get(
            &PATH.replace("/access-token", "/access-token/x"),
            Some(API_KEY),
            None,
        ),
        get(&PATH.replace("/acct/", "//"), Some(API_KEY), None),
        get(&PATH.replace("u1", "u2"), Some(API_KEY), None),
        get(&long_id, Some(API_KEY), None),
        Request::builder()
            .method(Method::POST)
            .uri(PATH)
            .header(header::AUTHORIZATION, format!("Bearer {API_KEY}"))
            .body(Body::empty())
            .expect("request"),
    ];
    for request in handed_over {
        let shown = format!("{} {}", request.method(), request.uri());
        assert!(
            fast.try_answer(request).is_err(),
            "{shown} must go to the full stack"
        );
    }
    // And through the whole service, a handed-over request gets the full stack's answer.
    let denied = fast
        .clone()
        .oneshot(get(PATH, Some("wrong-key-0123456789abcdef"), None))
        .await
        .expect("infallible");
    assert_eq!(denied.status().as_u16(), 401);
    assert_eq!(denied.headers()[header::WWW_AUTHENTICATE], "Bearer");
}

#[tokio::test]
async fn the_access_line_is_written_for_answers_from_the_fast_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config_toml(&dir, "http://127.0.0.1:9/token", "");
    let path = dir.path().join("tokenwarden.toml");
    std::fs::write(&path, &config).expect("write config");
    let running = binary::start(
        dir.path(),
        &[
            "serve",
            "--config",
            path.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "info")],
    );
    let client = reqwest::Client::new();
    let conn = format!("http://{}/v1/users/u/connections/fake/a", running.addr);
    let imported = client
        .put(&conn)
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "at-0123456789", "expires_in": 3600}))
        .send()
        .await
        .expect("import");
    assert_eq!(imported.status().as_u16(), 201);
    // The first read fills the cache through the full stack; the next two are cache hits.
    for id in ["first", "second", "third"] {
        let response = client
            .get(format!("{conn}/access-token"))
            .bearer_auth(API_KEY)
            .header("x-request-id", id)
            .send()
            .await
            .expect("token");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["x-request-id"], id);
    }
    let logs = running.stop();
    for id in ["first", "second", "third"] {
        let line = logs
            .lines()
            .find(|l| {
                l.contains(&format!("\"request_id\":\"{id}\""))
                    && l.contains("finished processing request")
            })
            .unwrap_or_else(|| panic!("no access line for {id}:\n{logs}"));
        let line: serde_json::Value = serde_json::from_str(line).expect("json line");
        assert_eq!(line["target"], "tokenwarden_server::access");
        assert_eq!(line["fields"]["status"], 200);
        assert!(line["fields"]["latency_us"].is_u64());
        assert_eq!(line["span"]["method"], "GET");
        assert_eq!(
            line["span"]["path"],
            "/v1/users/u/connections/fake/a/access-token"
        );
    }
    assert!(!logs.contains("at-0123456789"));
}
