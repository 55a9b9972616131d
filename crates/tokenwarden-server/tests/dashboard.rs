//! The dashboard's server side (issue 14) over HTTP, without a browser: the `/ui` files with
//! their security headers, and the connection events route the dashboard reads
//! (`GET /v1/users/{user_id}/connections/{provider}/{account_id}/events`). The page itself
//! is driven in a real browser by `dashboard_browser.rs`.

mod common;

use std::time::Duration;

use common::{API_KEY, spawn, spawn_with};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const CSP_PARTS: [&str; 9] = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "object-src 'none'",
    // Forms never submit natively: a key can never end up in a URL.
    "form-action 'none'",
    // The browser itself refuses HTML sinks (innerHTML and the like) with strings.
    "require-trusted-types-for 'script'",
];

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} on {}", response.url()))
}

fn assert_secured(response: &reqwest::Response) {
    let csp = header(response, "content-security-policy");
    for part in CSP_PARTS {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(response, "x-content-type-options"), "nosniff");
    assert_eq!(header(response, "x-frame-options"), "DENY");
}

#[tokio::test]
async fn the_dashboard_files_are_served_without_a_key_under_a_strict_policy() {
    let app = spawn().await;
    // No redirects followed: the first answer is the one checked.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let to_slash = client.get(app.url("/ui")).send().await.expect("/ui");
    assert_eq!(to_slash.status().as_u16(), 308);
    assert_eq!(
        header(&to_slash, "location"),
        "ui/",
        "relative: works under a prefix"
    );
    assert_secured(&to_slash);

    let page = client.get(app.url("/ui/")).send().await.expect("/ui/");
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_secured(&page);
    let etag = header(&page, "etag").to_owned();
    let html = page.text().await.expect("html");
    assert!(
        html.contains("<script type=\"module\" src=\"app.js\">"),
        "{html}"
    );
    assert!(
        html.contains("role=\"status\""),
        "a live region for status messages"
    );

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("dom.js", "text/javascript; charset=utf-8"),
        ("views.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let response = client
            .get(app.url(&format!("/ui/{file}")))
            .send()
            .await
            .expect(file);
        assert_eq!(response.status().as_u16(), 200, "{file}");
        assert_eq!(header(&response, "content-type"), content_type, "{file}");
        assert_secured(&response);
        assert!(!response.text().await.expect("body").is_empty(), "{file}");
    }

    // Unchanged: a 304 with the same headers; changed (another tag): the file again.
    let again = client
        .get(app.url("/ui/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(again.status().as_u16(), 304);
    assert_secured(&again);
    let other = client
        .get(app.url("/ui/"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .expect("revalidate");
    assert_eq!(other.status().as_u16(), 200);

    for unknown in [
        "/ui/nope.js",
        "/ui/..%2Fapp.js",
        "/ui/index.htm",
        "/ui/app.js/x",
    ] {
        let response = client.get(app.url(unknown)).send().await.expect(unknown);
        assert_eq!(response.status().as_u16(), 404, "{unknown}");
        assert_secured(&response);
        let body: Value = response.json().await.expect("the API's error body");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{unknown}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_connections_events_are_listed_newest_first_without_tokens() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let secret = tokenwarden::webhooks::WebhookSecret::generate();
    let app = spawn_with(&format!(
        "\n[webhooks.endpoints.app]\nurl = \"{}/hooks\"\nsecret = \"{}\"\n",
        receiver.uri(),
        secret.expose_secret()
    ))
    .await;
    let import = json!({
        "access_token": "at-must-never-be-listed",
        "refresh_token": "rt-must-never-be-listed",
        "expires_at": "2020-01-01T00:00:00Z",
    });
    assert_eq!(
        app.import("u 1", "acct", import.clone()).await.status(),
        201
    );
    assert_eq!(app.import("u 1", "other", import).await.status(), 201);
    app.provider_error(400, "invalid_grant").await;
    let refused = app.refresh("u 1", "acct", None).await;
    assert_eq!(refused.status().as_u16(), 409);

    let events = format!("{}/events", app.conn("u%201", "acct"));
    let list: Value = app
        .client
        .get(&events)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    let types: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        ["connection.needs_reconnect", "connection.created"],
        "{list}"
    );
    assert_eq!(list["recording"], true);
    let newest = &list["items"][0];
    assert!(
        newest["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_")),
        "{newest}"
    );
    assert_eq!(newest["data"]["account_id"], "acct");
    assert_eq!(newest["data"]["status"], "needs_reconnect");
    assert!(newest["data"]["error"]["code"].is_string(), "{newest}");
    assert!(
        newest["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(!list.to_string().contains("must-never-be-listed"), "{list}");

    // The same events, delivered: delivering changes nothing in the list.
    common::wait_for_deliveries(&app, "", 3, Duration::from_secs(10)).await;
    let one: Value = app
        .client
        .get(format!("{events}?limit=1"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["items"][0], list["items"][0], "the newest");
    app.stop().await;
}

#[tokio::test]
async fn the_events_route_checks_its_key_its_connection_and_its_limit() {
    let app = spawn().await;
    assert_eq!(
        app.import("u", "a", json!({"access_token": "at"}))
            .await
            .status(),
        201
    );
    let events = format!("{}/events", app.conn("u", "a"));

    let anonymous = app.client.get(&events).send().await.expect("no key");
    assert_eq!(
        common::error_of(anonymous, 401).await["code"],
        "UNAUTHORIZED"
    );
    let wrong = app
        .client
        .get(&events)
        .bearer_auth("not-the-key")
        .send()
        .await
        .expect("wrong key");
    assert_eq!(common::error_of(wrong, 401).await["code"], "UNAUTHORIZED");

    // Without webhook endpoints nothing is recorded, and the answer says so.
    let list: Value = app
        .client
        .get(&events)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(list, json!({"items": [], "recording": false}));

    let unknown = app
        .client
        .get(format!("{}/events", app.conn("u", "missing")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("unknown");
    let error = common::error_of(unknown, 404).await;
    assert_eq!(error["code"], "ACCOUNT_NOT_FOUND");
    assert_eq!(error["details"]["account_id"], "missing");
    let provider = app
        .client
        .get(app.url("/v1/users/u/connections/nope/a/events"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("unknown provider");
    assert_eq!(
        common::error_of(provider, 400).await["code"],
        "UNKNOWN_PROVIDER"
    );

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("cursor=abc", "query"),
    ] {
        let answer = app
            .client
            .get(format!("{events}?{query}"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect(query);
        let error = common::error_of(answer, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{query}");
        assert_eq!(error["details"]["field"], field, "{query}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{field}: "))),
            "{query}: {error}"
        );
    }
    app.stop().await;
}

/// A store failure behind the events route is a 500 naming what failed, not why, and one
/// log line with the database's reason (it was logged twice, as "… failed failed" and again
/// as "request failed").
#[tokio::test]
async fn a_store_failure_on_the_events_route_is_a_500_logged_once() {
    let logs = common::capture_logs();
    let app = spawn().await;
    assert_eq!(
        app.import(
            "u1",
            "acct",
            json!({"access_token": "at", "expires_in": 3600})
        )
        .await
        .status(),
        201
    );
    // The events' table goes away under the running server.
    app.sql("DROP TABLE webhook_events").await;

    let response = app
        .client
        .get(format!("{}/events", app.conn("u1", "acct")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("events");
    let error = common::error_of(response, 500).await;
    assert_eq!(error["message"], "reading connection events failed");
    let logged = String::from_utf8(logs.lock().expect("logs").clone()).expect("utf-8");
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("reading connection events"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("webhook_events"),
        "the reason: {}",
        lines[0]
    );
    app.stop().await;
}
