//! Every error code with its HTTP status, and hostile or malformed input.

mod common;

use common::{API_KEY, error_of, expired_import, spawn};
use serde_json::json;

#[tokio::test]
async fn account_not_found_is_404() {
    let app = spawn().await;
    let error = error_of(
        app.get("/v1/users/u/connections/fake/missing")
            .send()
            .await
            .expect("get"),
        404,
    )
    .await;
    assert_eq!(error["code"], "ACCOUNT_NOT_FOUND");
    assert_eq!(error["reconnect"], false);
    let error = error_of(app.access_token("u", "missing").await, 404).await;
    assert_eq!(error["code"], "ACCOUNT_NOT_FOUND");
    let error = error_of(app.refresh("u", "missing", None).await, 404).await;
    assert_eq!(error["code"], "ACCOUNT_NOT_FOUND");
    app.stop().await;
}

#[tokio::test]
async fn no_refresh_token_is_409_with_reconnect() {
    let app = spawn().await;
    app.import(
        "u",
        "a",
        json!({"access_token": "only-access", "expires_in": 3600}),
    )
    .await;
    let error = error_of(app.refresh("u", "a", None).await, 409).await;
    assert_eq!(error["code"], "NO_REFRESH_TOKEN");
    assert_eq!(error["reconnect"], true);
    assert!(
        app.provider
            .received_requests()
            .await
            .expect("rec")
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_grant_on_expired_token_is_token_expired_409_and_needs_reconnect() {
    let app = spawn().await;
    app.provider_error(400, "invalid_grant").await;
    app.import("u", "a", expired_import()).await;
    let error = error_of(app.access_token("u", "a").await, 409).await;
    assert_eq!(error["code"], "TOKEN_EXPIRED");
    assert_eq!(error["reconnect"], true);
    assert_eq!(error["details"]["account_id"], "a");
    let text = error.to_string();
    assert!(
        !text.contains("old-access-token-secret") && !text.contains("old-refresh-token-secret")
    );
    // Not retried: one upstream call.
    assert_eq!(
        app.provider.received_requests().await.expect("rec").len(),
        1
    );
    let view: serde_json::Value = app.get_json("/v1/users/u/connections/fake/a").await;
    assert_eq!(view["status"], "needs_reconnect");
    assert_eq!(view["last_error"]["code"], "TOKEN_EXPIRED");
    assert_eq!(view["last_error"]["provider_error"], "invalid_grant");
    app.stop().await;
}

#[tokio::test]
async fn transient_failures_are_502_then_503_with_retry_after_when_the_breaker_opens() {
    let app = spawn().await;
    app.provider_error(500, "server_error").await;
    app.import("u", "a", expired_import()).await;

    // max_retries = 2: three attempts, all failing, which reaches failure_threshold = 3.
    let error = error_of(app.refresh("u", "a", None).await, 502).await;
    assert_eq!(error["code"], "TOKEN_REFRESH_ERROR");
    assert_eq!(error["reconnect"], false);
    assert_eq!(error["details"]["attempts"], 3);
    assert!(error["details"]["duration_ms"].is_u64());
    assert_eq!(
        app.provider.received_requests().await.expect("rec").len(),
        3
    );

    let response = app.access_token("u", "a").await;
    assert_eq!(response.status().as_u16(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry_after));
    let error = error_of(response, 503).await;
    assert_eq!(error["code"], "TOKEN_REFRESH_ERROR");
    assert!(error["retry_after_s"].as_u64().is_some_and(|s| s >= 1));
    // The breaker kept the provider from being called again.
    assert_eq!(
        app.provider.received_requests().await.expect("rec").len(),
        3
    );

    let providers: serde_json::Value = app.get_json("/v1/providers").await;
    assert_eq!(providers["providers"][0]["breaker"]["state"], "open");
    app.stop().await;
}

#[tokio::test]
async fn unknown_provider_is_400() {
    let app = spawn().await;
    for path in [
        "/v1/users/u/connections/nope/a",
        "/v1/users/u/connections/NotAName/a",
        "/v1/users/u/connections/nope/a/access-token",
        "/v1/connections?provider=nope",
    ] {
        let error = error_of(app.get(path).send().await.expect("get"), 400).await;
        assert_eq!(error["code"], "UNKNOWN_PROVIDER", "{path}");
    }
    let response = app
        .client
        .put(app.url("/v1/users/u/connections/nope/a"))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(response, 400).await["code"], "UNKNOWN_PROVIDER");
    app.stop().await;
}

/// Sends a raw PUT body to the import route.
async fn put_raw(app: &common::TestApp, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .put(app.conn("u", "a"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("put")
}

#[tokio::test]
async fn malformed_bodies_are_invalid_request_naming_the_field() {
    let app = spawn().await;
    let cases: &[(&str, &str)] = &[
        ("{", "body"),
        ("", "body"),
        ("[]", "body"),
        (r#"{"refresh_token": "r"}"#, "access_token"),
        (r#"{"access_token": ""}"#, "access_token"),
        (r#"{"access_token": 42}"#, "access_token"),
        (
            r#"{"access_token": "a", "expires_in": "soon-secret"}"#,
            "expires_in",
        ),
        (r#"{"access_token": "a", "expires_in": -5}"#, "expires_in"),
        (
            r#"{"access_token": "a", "expires_at": "yesterday"}"#,
            "expires_at",
        ),
        (
            r#"{"access_token": "a", "expires_in": 60, "expires_at": "2030-01-01T00:00:00Z"}"#,
            "expires_at",
        ),
        (r#"{"access_token": "a", "scopes": "read"}"#, "scopes"),
        (r#"{"access_token": "a", "metadata": [1, 2]}"#, "metadata"),
        (r#"{"access_token": "a", "expires": 60}"#, "expires"),
        (r#"{"access_token": "a"} trailing"#, "body"),
    ];
    for (body, field) in cases {
        let error = error_of(put_raw(&app, *body).await, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{body}");
        let message = error["message"].as_str().expect("message");
        assert!(
            message.contains(field),
            "{body}: message {message:?} should name {field}"
        );
        assert!(!message.contains("soon-secret"), "{message}");
    }
    app.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = spawn().await;
    let big = format!(r#"{{"access_token": "{}"}}"#, "x".repeat(10_000));
    let error = error_of(put_raw(&app, big).await, 413).await;
    assert_eq!(error["code"], "INVALID_REQUEST");
    app.stop().await;
}

#[tokio::test]
async fn bad_ids_and_query_parameters_are_400() {
    let app = spawn().await;
    let long = "x".repeat(256);
    for path in [
        format!("/v1/users/{long}/connections/fake/a"),
        format!("/v1/users/u/connections/fake/{long}"),
        "/v1/users/u%0A/connections/fake/a".to_owned(),
        "/v1/users/u%2Fv/connections/fake/a".to_owned(),
        "/v1/users/u/connections/fake/a%00".to_owned(),
        "/v1/connections?limit=0".to_owned(),
        "/v1/connections?limit=1001".to_owned(),
        "/v1/connections?limit=ten".to_owned(),
        "/v1/connections?status=sleeping".to_owned(),
        "/v1/connections?cursor=not-a-cursor".to_owned(),
        "/v1/connections?colour=blue".to_owned(),
    ] {
        let response = app.get(&path).send().await.expect("get");
        let error = error_of(response, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn refresh_overrides_are_bounded() {
    let app = spawn().await;
    app.import("u", "a", expired_import()).await;
    for (body, field) in [
        (json!({"max_retries": 11}), "max_retries"),
        (json!({"max_retries": -1}), "max_retries"),
        (json!({"initial_delay_ms": 0}), "initial_delay_ms"),
        (json!({"max_delay_ms": 60_001}), "max_delay_ms"),
        (json!({"max_retries": 1.5}), "max_retries"),
        (json!({"max_retries": 1e12}), "max_retries"),
        (json!({"max_retries": "3"}), "max_retries"),
        (json!({"retries": 3}), "retries"),
    ] {
        let error = error_of(app.refresh("u", "a", Some(body.clone())).await, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{body}");
        assert!(
            error["message"].as_str().expect("m").contains(field),
            "{body}: {error}"
        );
    }
    assert!(
        app.provider
            .received_requests()
            .await
            .expect("rec")
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn no_access_token_is_unreachable_through_the_api() {
    // NO_ACCESS_TOKEN (409) needs a stored connection without an access token; the API refuses
    // to create one, so the closest a client gets is INVALID_REQUEST at import. The status
    // mapping itself is covered by the unit test `every_code_has_its_status`.
    let app = spawn().await;
    let error = error_of(app.import("u", "a", json!({"access_token": ""})).await, 400).await;
    assert_eq!(error["code"], "INVALID_REQUEST");
    app.stop().await;
}

/// Sends a raw POST body to the refresh route.
async fn refresh_raw(app: &common::TestApp, body: &'static str) -> reqwest::Response {
    app.client
        .post(format!("{}/refresh", app.conn("u", "a")))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn issue_9_refresh_body_must_be_an_object_not_an_array() {
    let app = spawn().await;
    app.provider_ok("new-access", "new-refresh").await;
    app.import("u", "a", expired_import()).await;
    // `[100]` was read by position as max_retries, and `[]` refreshed with no overrides.
    for body in ["[100]", "[]", "[0, 1, 2]", "null", "3", "\"x\"", "true"] {
        let error = error_of(refresh_raw(&app, body).await, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{body}");
        assert_eq!(error["details"]["field"], "body", "{body}: {error}");
        let message = error["message"].as_str().expect("message");
        assert!(message.contains("JSON object"), "{body}: {message}");
    }
    assert!(
        app.provider
            .received_requests()
            .await
            .expect("rec")
            .is_empty(),
        "no refresh for a refused body"
    );
    // An object, an empty body and whitespace are accepted.
    for body in ["{}", "", " \n"] {
        let response = refresh_raw(&app, body).await;
        assert_eq!(response.status().as_u16(), 200, "{body:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn issue_9_import_body_must_be_an_object_not_an_array() {
    let app = spawn().await;
    for body in [r#"["tok"]"#, r#"["tok", "refresh", 3600]"#, "null"] {
        let error = error_of(put_raw(&app, body).await, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{body}");
        assert_eq!(error["details"]["field"], "body", "{body}: {error}");
    }
    let missing = error_of(
        app.get("/v1/users/u/connections/fake/a")
            .send()
            .await
            .expect("get"),
        404,
    )
    .await;
    assert_eq!(missing["code"], "ACCOUNT_NOT_FOUND", "nothing was imported");
    app.stop().await;
}

#[tokio::test]
async fn issue_9_what_the_document_allows_is_accepted() {
    // Found by Schemathesis: JSON Schema's `integer` includes `2.0`, and the document cannot
    // say "initial_delay_ms ≤ max_delay_ms", so neither may be refused.
    let app = spawn().await;
    app.provider_ok("new-access", "new-refresh").await;
    let imported = app
        .import(
            "u",
            "a",
            json!({"access_token": "a", "refresh_token": "r", "expires_in": 3600.0,
                   "refresh_expires_in": 1e4}),
        )
        .await;
    assert_eq!(imported.status().as_u16(), 201);
    for body in [
        json!({"max_retries": 2.0, "initial_delay_ms": 1.0, "max_delay_ms": 5e0}),
        json!({"initial_delay_ms": 500, "max_delay_ms": 1}),
        json!({"max_retries": null, "initial_delay_ms": null, "max_delay_ms": null}),
    ] {
        let response = app.refresh("u", "a", Some(body.clone())).await;
        assert_eq!(response.status().as_u16(), 200, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn issue_9_any_rfc3339_expiry_is_stored_within_range() {
    // An expiry whose UTC form has no RFC 3339 spelling (year 10000, or before year 0) used
    // to panic the handler while formatting the view.
    let app = spawn().await;
    for (given, stored) in [
        ("9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59Z"),
        ("0000-01-01T00:00:00+01:00", "1970-01-01T00:00:00Z"),
        ("1969-07-20T20:17:40Z", "1970-01-01T00:00:00Z"),
        ("2020-01-01t00:00:00.5z", "2020-01-01T00:00:00Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59Z"),
    ] {
        let response = app
            .import("u", "a", json!({"access_token": "a", "expires_at": given}))
            .await;
        assert!(response.status().is_success(), "{given}");
        let view: serde_json::Value = response.json().await.expect("json");
        assert_eq!(view["expires_at"], stored, "{given}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_this_server_did_not_issue_is_400_naming_the_cursor() {
    let app = spawn().await;
    for cursor in ["0", "bm90LWpzb24", "eyJ1c2VyX2lkIjoiIn0"] {
        let error = error_of(
            app.get(&format!("/v1/connections?cursor={cursor}"))
                .send()
                .await
                .expect("get"),
            400,
        )
        .await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{cursor}");
        assert_eq!(error["details"]["field"], "cursor", "{cursor}");
    }
    app.stop().await;
}

/// The app with an `instagram` provider whose refresh endpoint is `refresh_url`.
async fn spawn_with_instagram(refresh_url: &str) -> common::TestApp {
    common::spawn_with(&format!(
        "\n[providers.instagram]\nkind = \"instagram\"\nrefresh_url = \"{refresh_url}\"\n"
    ))
    .await
}

#[tokio::test]
async fn issue_9_forced_refresh_of_a_young_instagram_token_is_409_refresh_too_early() {
    let instagram = wiremock::MockServer::start().await;
    let app = spawn_with_instagram(&format!("{}/refresh_access_token", instagram.uri())).await;
    // A long-lived token issued now: 60 days to go, refreshable only after 24 hours.
    let imported = app
        .client
        .put(app.url("/v1/users/u/connections/instagram/ig-1"))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "IGQVJ-young-secret", "expires_in": 60 * 86_400}))
        .send()
        .await
        .expect("put");
    assert_eq!(imported.status().as_u16(), 201);

    let response = app
        .client
        .post(app.url("/v1/users/u/connections/instagram/ig-1/refresh"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 409, "a 4xx: nothing failed");
    let header: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let error = error_of(response, 409).await;
    assert_eq!(error["code"], "REFRESH_TOO_EARLY");
    assert_eq!(error["reconnect"], false);
    let retry_after_s = error["retry_after_s"].as_u64().expect("retry_after_s");
    assert_eq!(header, retry_after_s, "header and body agree");
    // Refreshable 24 h after issue, which was moments ago.
    assert!(
        (86_400 - 120..=86_400).contains(&retry_after_s),
        "{retry_after_s}"
    );
    assert!(!error.to_string().contains("IGQVJ-young-secret"));
    assert!(
        instagram
            .received_requests()
            .await
            .expect("recorded")
            .is_empty(),
        "the provider is not called"
    );
    let view: serde_json::Value = app.get_json("/v1/users/u/connections/instagram/ig-1").await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["consecutive_failures"], 0, "not counted as a failure");
    app.stop().await;
}

#[tokio::test]
async fn issue_9_forced_refresh_of_an_expired_revoked_grant_is_409_token_expired() {
    let app = spawn().await;
    app.provider_error(400, "invalid_grant").await;
    app.import("u", "a", expired_import()).await;

    let error = error_of(app.refresh("u", "a", None).await, 409).await;
    assert_eq!(error["code"], "TOKEN_EXPIRED", "{error}");
    assert_eq!(error["reconnect"], true);
    assert_eq!(error["details"]["provider_error"], "invalid_grant");
    // The token route agrees, without calling the provider again.
    let error = error_of(app.access_token("u", "a").await, 409).await;
    assert_eq!(error["code"], "TOKEN_EXPIRED", "{error}");
    assert_eq!(error["reconnect"], true);
    assert_eq!(
        app.provider.received_requests().await.expect("rec").len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn forced_refresh_of_a_revoked_grant_still_valid_is_409_with_reconnect() {
    let app = spawn().await;
    app.provider_error(400, "invalid_grant").await;
    app.import(
        "u",
        "a",
        json!({"access_token": "still-valid", "refresh_token": "revoked", "expires_in": 3600}),
    )
    .await;
    let error = error_of(app.refresh("u", "a", None).await, 409).await;
    assert_eq!(error["code"], "TOKEN_REFRESH_ERROR", "{error}");
    assert_eq!(error["details"]["failure"], "permanent");
    assert_eq!(error["reconnect"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_provider_whose_discovery_fails_stops_the_start_naming_key_and_url() {
    // A server that answers every discovery request with 503.
    let issuer = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .mount(&issuer)
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "\n[providers.corp]\nissuer = \"{}/realms/main\"\nclient_id = \"c\"\nclient_secret = \"corp-secret-0001\"\n",
        issuer.uri()
    );
    let text = common::config_toml(&dir, "http://127.0.0.1:9/token", &extra);
    let config =
        tokenwarden_server::config::from_table(text.parse().expect("toml")).expect("config");
    config.validate().expect("valid");
    let error =
        tokenwarden_server::App::build(config, tokenwarden_server::telemetry::metrics_handle())
            .await
            .expect_err("discovery failure stops the start")
            .to_string();
    assert!(error.starts_with("providers.corp.issuer"), "{error}");
    assert!(
        error.contains(&format!(
            "{}/realms/main/.well-known/openid-configuration",
            issuer.uri()
        )),
        "{error}"
    );
    assert!(error.contains("HTTP 503"), "{error}");
    assert!(!error.contains("corp-secret-0001"), "{error}");
}
