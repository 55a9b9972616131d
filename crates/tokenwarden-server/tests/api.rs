//! Every v1 route's happy path, over HTTP against the real app.

mod common;

use common::{API_KEY, error_of, expired_import, spawn, spawn_with};
use serde_json::{Value, json};

#[tokio::test]
async fn import_view_token_refresh_delete_round_trip() {
    let app = spawn().await;

    let created = app
        .import(
            "user-1",
            "acct-1",
            json!({
                "access_token": "access-1-secret",
                "refresh_token": "refresh-1-secret",
                "expires_in": 3600,
                "scopes": ["read", "write"],
                "metadata": {"handle": "@someone"},
            }),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let view: Value = created.json().await.expect("view");
    assert_eq!(view["user_id"], "user-1");
    assert_eq!(view["provider"], "fake");
    assert_eq!(view["account_id"], "acct-1");
    assert_eq!(view["status"], "active");
    assert_eq!(view["has_refresh_token"], true);
    assert_eq!(view["scopes"], json!(["read", "write"]));
    assert_eq!(view["metadata"], json!({"handle": "@someone"}));
    assert!(view["expires_at"].is_string());
    let text = view.to_string();
    assert!(!text.contains("access-1-secret") && !text.contains("refresh-1-secret"));

    // Replacing answers 200.
    let replaced = app
        .import(
            "user-1",
            "acct-1",
            json!({"access_token": "access-2-secret", "expires_in": 3600}),
        )
        .await;
    assert_eq!(replaced.status().as_u16(), 200);

    let shown: Value = app
        .get_json("/v1/users/user-1/connections/fake/acct-1")
        .await;
    assert_eq!(shown["has_refresh_token"], false);
    for field in [
        "created_at",
        "updated_at",
        "token_type",
        "consecutive_failures",
        "last_error",
    ] {
        assert!(shown.get(field).is_some(), "view lacks {field}");
    }

    let token = app.access_token("user-1", "acct-1").await;
    assert_eq!(token.status().as_u16(), 200);
    assert_eq!(token.headers()["cache-control"], "no-store");
    let token: Value = token.json().await.expect("json");
    assert_eq!(token["access_token"], "access-2-secret");
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["expires_at"].is_string());

    let deleted = app
        .client
        .delete(app.conn("user-1", "acct-1"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status().as_u16(), 204);
    let again = app
        .client
        .delete(app.conn("user-1", "acct-1"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("delete");
    let error = error_of(again, 404).await;
    assert_eq!(error["code"], "ACCOUNT_NOT_FOUND");
    app.stop().await;
}

#[tokio::test]
async fn expired_token_is_refreshed_on_demand_and_rotation_is_kept() {
    let app = spawn().await;
    app.provider_ok("new-access-secret", "new-refresh-secret")
        .await;
    assert_eq!(
        app.import("u", "a", expired_import())
            .await
            .status()
            .as_u16(),
        201
    );

    let token: Value = app.access_token("u", "a").await.json().await.expect("json");
    assert_eq!(token["access_token"], "new-access-secret");
    let view: Value = app.get_json("/v1/users/u/connections/fake/a").await;
    assert!(view["last_refreshed_at"].is_string());
    assert_eq!(view["status"], "active");
    app.stop().await;
}

#[tokio::test]
async fn forced_refresh_accepts_optional_overrides() {
    let app = spawn().await;
    app.provider_ok("forced-access", "forced-refresh").await;
    app.import("u", "a", expired_import()).await;

    let without_body = app.refresh("u", "a", None).await;
    assert_eq!(without_body.status().as_u16(), 200);
    let view: Value = without_body.json().await.expect("json");
    assert_eq!(view["status"], "active");
    assert!(view["last_refreshed_at"].is_string());

    let with_body = app
        .refresh(
            "u",
            "a",
            Some(json!({"max_retries": 0, "initial_delay_ms": 1, "max_delay_ms": 2})),
        )
        .await;
    assert_eq!(with_body.status().as_u16(), 200);
    let requests = app.provider.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 2, "one upstream call per forced refresh");
    app.stop().await;
}

#[tokio::test]
async fn list_filters_and_paginates() {
    let app = spawn().await;
    for i in 0..5 {
        let user = if i % 2 == 0 { "even" } else { "odd" };
        let status = app
            .import(
                user,
                &format!("acct-{i}"),
                json!({"access_token": format!("t{i}"), "expires_in": 3600}),
            )
            .await
            .status();
        assert_eq!(status.as_u16(), 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = "/v1/connections?limit=2".to_owned();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app.get_json(&url).await;
        pages += 1;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["account_id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    seen.sort();
    assert_eq!(seen, ["acct-0", "acct-1", "acct-2", "acct-3", "acct-4"]);
    assert!(pages >= 3);

    let odd: Value = app
        .get_json("/v1/connections?user_id=odd&provider=fake&status=active")
        .await;
    assert_eq!(odd["items"].as_array().expect("items").len(), 2);
    let none: Value = app.get_json("/v1/connections?status=needs_reconnect").await;
    assert_eq!(none["items"], json!([]));
    assert_eq!(none["next_cursor"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn providers_show_breaker_state_and_no_secret() {
    let app = spawn().await;
    let response = app.get("/v1/providers").send().await.expect("providers");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    assert!(!text.contains(common::CLIENT_SECRET));
    let body: Value = serde_json::from_str(&text).expect("json");
    let fake = &body["providers"][0];
    assert_eq!(fake["name"], "fake");
    assert_eq!(fake["kind"], "oauth2");
    assert_eq!(fake["breaker"]["state"], "closed");
    app.stop().await;
}

#[tokio::test]
async fn providers_show_where_their_settings_came_from() {
    let app = spawn_with(
        r#"
[providers.gh]
catalog = "github"
client_id = "gh-client"
client_secret = "gh-secret-value-0001"

[providers.contoso]
catalog = "microsoft"
client_id = "ms-client"
client_secret = "ms-secret-value-0002"
url_params = { tenant = "contoso.onmicrosoft.com" }
"#,
    )
    .await;
    let text = app
        .get("/v1/providers")
        .send()
        .await
        .expect("providers")
        .text()
        .await
        .expect("text");
    assert!(!text.contains("gh-secret-value-0001") && !text.contains("ms-secret"));
    let body: Value = serde_json::from_str(&text).expect("json");
    let by_name = |name: &str| {
        body["providers"]
            .as_array()
            .expect("list")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed: {body}"))
    };
    let fake = by_name("fake");
    assert_eq!(fake["source"], "config");
    assert_eq!(fake["catalog"], Value::Null);
    assert_eq!(fake["grant"], "authorization_code");
    let gh = by_name("gh");
    assert_eq!(gh["source"], "catalog");
    assert_eq!(gh["catalog"], "github");
    assert_eq!(gh["display_name"], "GitHub");
    assert_eq!(gh["kind"], "oauth2");
    assert_eq!(
        gh["token_url"],
        "https://github.com/login/oauth/access_token"
    );
    assert!(
        gh["authorization_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://github.com/"))
    );
    let ms = by_name("contoso");
    assert_eq!(
        ms["token_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    app.stop().await;
}

#[tokio::test]
async fn operational_routes_need_no_key() {
    let app = spawn().await;
    let health: Value = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("h")
        .json()
        .await
        .expect("j");
    assert_eq!(health["status"], "ok");
    let ready = app.client.get(app.url("/readyz")).send().await.expect("r");
    assert_eq!(ready.status().as_u16(), 200);
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("m");
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("t")
            .contains("tokenwarden_circuit_open")
    );
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("o")
        .json()
        .await
        .expect("j");
    assert!(doc["paths"]["/v1/connections"].is_object());
    assert!(
        doc["paths"]["/v1/users/{user_id}/connections/{provider}/{account_id}/access-token"]
            .is_object()
    );
    let response = app
        .client
        .get(app.url("/x-request-id-check"))
        .send()
        .await
        .expect("any");
    assert!(response.headers().contains_key("x-request-id"));
    app.stop().await;
}

#[tokio::test]
async fn the_scheduler_refreshes_due_connections_without_a_request() {
    let app = common::spawn_with_scheduler().await;
    app.provider_ok("scheduled-access", "scheduled-refresh")
        .await;
    assert_eq!(
        app.import("u", "due", expired_import())
            .await
            .status()
            .as_u16(),
        201
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let calls = app
            .provider
            .received_requests()
            .await
            .expect("recorded")
            .len();
        if calls >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never refreshed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let view: Value = app.get_json("/v1/users/u/connections/fake/due").await;
        if view["last_refreshed_at"].is_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "refresh not committed: {view}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let app = spawn().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "slow", "expires_in": 3600}))
                .set_delay(std::time::Duration::from_millis(400)),
        )
        .mount(&app.provider)
        .await;
    app.import("u", "a", expired_import()).await;
    let client = app.client.clone();
    let url = format!("{}/refresh", app.conn("u", "a"));
    let in_flight = tokio::spawn(async move { client.post(url).bearer_auth(API_KEY).send().await });
    // Let the request reach the provider, then ask the server to stop.
    while app
        .provider
        .received_requests()
        .await
        .expect("recorded")
        .is_empty()
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let base = app.base.clone();
    app.stop().await;
    let response = in_flight
        .await
        .expect("task")
        .expect("the in-flight request completes");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "no longer listening"
    );
}

/// `[providers.app]`: a client-credentials provider whose token endpoint is `server`'s.
fn app_provider_toml(server: &wiremock::MockServer) -> String {
    format!(
        "\n[providers.app]\nkind = \"oauth2\"\ngrant = \"client_credentials\"\n\
         client_id = \"app-client\"\nclient_secret = \"app-secret-0123456789\"\n\
         token_url = \"{}/token\"\n",
        server.uri()
    )
}

#[tokio::test]
async fn application_token_route_end_to_end_and_imports_refused() {
    use wiremock::matchers::{body_string_contains, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "app-token-secret-1",
            "token_type": "Bearer",
            "expires_in": 3600,
        })))
        .expect(1)
        .mount(&upstream)
        .await;
    let app = common::spawn_with(&app_provider_toml(&upstream)).await;

    for _ in 0..3 {
        let response = app
            .get("/v1/apps/app/access-token")
            .send()
            .await
            .expect("get");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["access_token"], "app-token-secret-1");
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_at"].is_string(), "{body}");
        assert_eq!(body.as_object().expect("object").len(), 3, "{body}");
    }
    // Stored once under the reserved key, visible (without the token) like any connection.
    let view: Value = app.get_json("/v1/users/_app/connections/app/_app").await;
    assert_eq!(view["status"], "active");
    assert!(!view.to_string().contains("app-token-secret-1"));

    // The same API key auth as every /v1 route.
    let anonymous = app
        .client
        .get(app.url("/v1/apps/app/access-token"))
        .send()
        .await
        .expect("get");
    error_of(anonymous, 401).await;
    // A provider for user connections has no application token; an unknown one is unknown.
    let error = error_of(
        app.get("/v1/apps/fake/access-token")
            .send()
            .await
            .expect("get"),
        400,
    )
    .await;
    assert_eq!(error["code"], "INVALID_REQUEST");
    assert_eq!(error["details"]["provider"], "fake");
    let error = error_of(
        app.get("/v1/apps/nope/access-token")
            .send()
            .await
            .expect("get"),
        400,
    )
    .await;
    assert_eq!(error["code"], "UNKNOWN_PROVIDER");

    // An application provider has no user connections: importing one is refused.
    let refused = app
        .client
        .put(app.url("/v1/users/u/connections/app/a"))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "user-token", "expires_in": 3600}))
        .send()
        .await
        .expect("put");
    let error = error_of(refused, 400).await;
    assert_eq!(error["code"], "INVALID_REQUEST");
    assert_eq!(error["details"]["field"], "provider");
    assert!(error["message"].as_str().expect("message").contains("app"));
    assert_eq!(
        upstream.received_requests().await.expect("recorded").len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn application_token_failures_map_like_user_tokens() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&upstream)
        .await;
    let app = common::spawn_with(&app_provider_toml(&upstream)).await;
    let error = error_of(
        app.get("/v1/apps/app/access-token")
            .send()
            .await
            .expect("get"),
        502,
    )
    .await;
    assert_eq!(error["code"], "TOKEN_REFRESH_ERROR");
    assert_eq!(error["reconnect"], false);
    assert_eq!(error["details"]["failure"], "configuration");
    assert_eq!(error["details"]["provider_error"], "invalid_client");
    app.stop().await;
}
