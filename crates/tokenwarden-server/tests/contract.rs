//! The OpenAPI document is the contract clients are generated from (issue 9, findings 1 and 2):
//! it must be structurally valid OpenAPI 3.1, and it must agree with the server both ways.
//!
//! `scripts/api-contract` checks the same with outside tools (openapi-spec-validator and a
//! Schemathesis run); these tests catch the structural faults with `cargo test` alone: a
//! response without a description, a `/v1` operation without 401, a status, header or
//! content type the server sends that the document does not list, a constraint that differs
//! from the server's validation.

mod common;

use std::collections::BTreeSet;

use common::{API_KEY, expired_import, spawn, spawn_with};
use serde_json::{Value, json};

const CONN: &str = "/v1/users/{user_id}/connections/{provider}/{account_id}";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

async fn document(app: &common::TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("openapi.json");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("json")
}

/// Every operation of the document as (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    out
}

/// Every `$ref` in `value`, wherever it is.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    out.push(value.as_str().expect("$ref is a string").to_owned());
                } else {
                    refs(value, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The structural faults an OpenAPI 3.1 validator and Schemathesis found in version 1, and
/// their neighbours: each message says which operation and what.
fn structural_faults(doc: &Value) -> Vec<String> {
    let mut faults = Vec::new();
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1."))
    {
        faults.push(format!("openapi is {}, not 3.1.x", doc["openapi"]));
    }
    let documented = operations(doc).len();
    if documented < 12 {
        faults.push(format!(
            "{documented} operations documented, 12 routes served"
        ));
    }
    let mut all_refs = Vec::new();
    refs(doc, &mut all_refs);
    for reference in all_refs {
        let pointer = reference.trim_start_matches('#');
        if !reference.starts_with("#/") || doc.pointer(pointer).is_none() {
            faults.push(format!("$ref {reference} does not resolve"));
        }
    }
    for (path, method, operation) in operations(doc) {
        let op = format!("{} {path}", method.to_uppercase());
        let responses = operation["responses"].as_object();
        let Some(responses) = responses.filter(|r| !r.is_empty()) else {
            faults.push(format!("{op}: no responses"));
            continue;
        };
        for (status, response) in responses {
            if response["description"]
                .as_str()
                .is_none_or(|d| d.trim().is_empty())
            {
                faults.push(format!("{op} {status}: no description"));
            }
            if status != "204" && response["content"].as_object().is_none_or(|c| c.is_empty()) {
                faults.push(format!("{op} {status}: no content type"));
            }
            if status != "204" && status.starts_with(['4', '5']) && path.starts_with("/v1/") {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                if schema != "#/components/schemas/ErrorBody" {
                    faults.push(format!("{op} {status}: not the JSON error body"));
                }
            }
            for (name, header) in response["headers"].as_object().into_iter().flatten() {
                if header["schema"].is_null() || header["description"].is_null() {
                    faults.push(format!("{op} {status}: header {name} lacks a schema"));
                }
            }
        }
        let has = |status: &str| responses.contains_key(status);
        if path.starts_with("/v1/") {
            if operation["security"].as_array().is_none_or(Vec::is_empty) {
                faults.push(format!("{op}: no security requirement"));
            }
            if !has("401") {
                faults.push(format!("{op}: 401 not documented"));
            } else if responses["401"]["headers"]["WWW-Authenticate"].is_null() {
                faults.push(format!("{op}: 401 without WWW-Authenticate"));
            }
        }
        // Path parameters: declared, required, and a malformed one is a 400.
        let declared: BTreeSet<String> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                if p["required"] != true {
                    faults.push(format!("{op}: path parameter {} not required", p["name"]));
                }
                p["name"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        if declared != in_template {
            faults.push(format!(
                "{op}: path parameters {declared:?} ≠ {in_template:?}"
            ));
        }
        if !in_template.is_empty() && !has("400") {
            faults.push(format!("{op}: 400 not documented for malformed ids"));
        }
        if path.starts_with(CONN) && method != "put" && !has("404") {
            faults.push(format!("{op}: 404 ACCOUNT_NOT_FOUND not documented"));
        }
        if !operation["requestBody"].is_null() {
            for status in ["400", "413"] {
                if !has(status) {
                    faults.push(format!("{op}: {status} not documented for its body"));
                }
            }
        }
        // The routes that refresh: every failure a refresh can end in, with Retry-After. An
        // application token has no user, so nothing of it ends in a 409 (no reconnect, no
        // missing refresh token).
        if path.ends_with("/access-token") || path.ends_with("/refresh") {
            let conflicts = path.starts_with(CONN);
            for status in ["409", "500", "502", "503"] {
                if status == "409" && !conflicts {
                    if has(status) {
                        faults.push(format!("{op}: 409 documented, which it never answers"));
                    }
                    continue;
                }
                if !has(status) {
                    faults.push(format!("{op}: {status} not documented"));
                } else if status != "500" && responses[status]["headers"]["Retry-After"].is_null() {
                    faults.push(format!("{op}: {status} without a Retry-After header"));
                }
            }
        }
    }
    faults
}

#[tokio::test]
async fn issue_9_openapi_document_has_no_structural_fault() {
    let app = spawn().await;
    let doc = document(&app).await;
    let faults = structural_faults(&doc);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
    app.stop().await;
}

#[test]
fn the_structural_check_catches_the_faults_of_version_1() {
    // The walker itself: a response without a description and a /v1 operation without 401
    // (both in version 1's document) are reported.
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {
            "/v1/providers": {"get": {
                "security": [{"api_key": []}],
                "responses": {"200": {"content": {"application/json": {}}}},
            }},
            "/healthz": {"get": {"responses": {"200": {"description": "up",
                "content": {"application/json": {}}}}}},
            "/a": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/b": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/c": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/d": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/e": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/f": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/g": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/h": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
            "/i": {"get": {"responses": {"200": {"description": "x",
                "content": {"application/json": {}}}}}},
        },
    });
    let faults = structural_faults(&doc);
    assert!(
        faults.iter().any(|f| f.contains("200: no description")),
        "{faults:?}"
    );
    assert!(
        faults.iter().any(|f| f.contains("401 not documented")),
        "{faults:?}"
    );
}

/// The schema of parameter `name` of an operation.
fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

#[tokio::test]
async fn issue_9_openapi_constraints_are_the_servers() {
    let app = spawn_with("\n[providers.instagram]\nkind = \"instagram\"\n").await;
    let doc = document(&app).await;

    // `limit`: the server takes 1-1000.
    let limit = &parameter(&doc, "/v1/connections", "get", "limit")["schema"];
    assert_eq!(limit["minimum"], 1, "{limit}");
    assert_eq!(limit["maximum"], 1000, "{limit}");

    // `provider`: the configured names, in the path and in the filter.
    for (path, method) in [
        (CONN, "get"),
        (CONN, "put"),
        (CONN, "delete"),
        ("/v1/connections", "get"),
    ] {
        let schema = &parameter(&doc, path, method, "provider")["schema"];
        assert_eq!(schema["enum"], json!(["fake", "instagram"]), "{path}");
    }

    // Ids: the library's limits, as far as JSON Schema can say them.
    let id = &parameter(&doc, CONN, "get", "user_id")["schema"];
    assert_eq!(id["minLength"], 1);
    assert_eq!(id["maxLength"], tokenwarden::connection::MAX_ID_LEN);
    assert!(id["pattern"].as_str().expect("pattern").contains('/'));

    // The refresh body: optional, an object, never null.
    let body = &doc["paths"][format!("{CONN}/refresh")]["post"]["requestBody"];
    assert_eq!(body["required"], false, "{body}");
    let schema = &body["content"]["application/json"]["schema"];
    assert_eq!(
        schema["$ref"], "#/components/schemas/RefreshBody",
        "{schema}"
    );
    let refresh = &doc["components"]["schemas"]["RefreshBody"];
    assert_eq!(refresh["type"], "object");
    assert_eq!(refresh["additionalProperties"], false);
    assert_eq!(refresh["properties"]["max_retries"]["maximum"], 10);
    assert_eq!(refresh["properties"]["initial_delay_ms"]["minimum"], 1);
    assert_eq!(refresh["properties"]["max_delay_ms"]["maximum"], 60_000);

    // The import body: what `import_request` checks.
    let import = &doc["components"]["schemas"]["ImportBody"];
    assert_eq!(import["additionalProperties"], false);
    assert_eq!(import["properties"]["access_token"]["minLength"], 1);
    assert_eq!(import["properties"]["expires_at"]["format"], "date-time");
    assert_eq!(
        import["properties"]["expires_in"]["maximum"],
        10 * 366 * 86_400
    );
    assert_eq!(import["properties"]["scopes"]["maxItems"], 1000);
    assert!(import["anyOf"].is_array(), "expires_in or expires_at");

    // Every error code the server can answer, REFRESH_TOO_EARLY among them.
    let codes = &doc["components"]["schemas"]["ErrorObject"]["properties"]["code"]["enum"];
    let documented: BTreeSet<&str> = codes
        .as_array()
        .expect("code enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let known: BTreeSet<&str> = tokenwarden_server::error::all_codes().collect();
    assert_eq!(documented, known);
    assert!(documented.contains("REFRESH_TOO_EARLY"));
    app.stop().await;
}

/// Asserts that the document lists what `response` is for `method` on the route `template`:
/// its status, its content type, and the headers that only some answers carry.
async fn assert_documented(
    doc: &Value,
    method: &str,
    template: &str,
    response: reqwest::Response,
) -> u16 {
    let status = response.status().as_u16();
    let documented = &doc["paths"][template][method]["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{method} {template} answered {status}, which the document does not list"
    );
    for header in ["retry-after", "www-authenticate", "cache-control"] {
        if response.headers().contains_key(header) {
            let listed = documented["headers"]
                .as_object()
                .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(header)));
            assert!(
                listed,
                "{method} {template} {status}: {header} not documented"
            );
        }
    }
    if let Some(content_type) = response.headers().get("content-type") {
        let media = content_type.to_str().expect("ascii");
        let media = media.split(';').next().unwrap_or_default().trim();
        assert!(
            documented["content"][media].is_object(),
            "{method} {template} {status}: {media} not documented"
        );
    } else {
        assert!(
            documented["content"].is_null(),
            "{method} {template} {status}"
        );
    }
    status
}

#[tokio::test]
async fn issue_9_every_answer_the_server_gives_is_documented() {
    let instagram = wiremock::MockServer::start().await;
    let application = wiremock::MockServer::start().await;
    let app = spawn_with(&format!(
        "\n[providers.instagram]\nkind = \"instagram\"\nrefresh_url = \"{}/refresh\"\n\
         \n[providers.app]\ngrant = \"client_credentials\"\nkind = \"oauth2\"\n\
         client_id = \"app\"\nclient_secret = \"app-secret\"\ntoken_url = \"{}/token\"\n",
        instagram.uri(),
        application.uri()
    ))
    .await;
    let doc = document(&app).await;
    let c = &app.client;
    let access = format!("{CONN}/access-token");
    let refresh = format!("{CONN}/refresh");
    let mut seen = BTreeSet::new();
    let mut check = async |method: &str, template: &str, request: reqwest::RequestBuilder| {
        let response = request.send().await.expect("request");
        let status = assert_documented(&doc, method, template, response).await;
        seen.insert((method.to_owned(), template.to_owned(), status));
    };

    // 401 on every /v1 route.
    check("put", CONN, c.put(app.conn("u", "a"))).await;
    check("get", CONN, c.get(app.conn("u", "a"))).await;
    check("delete", CONN, c.delete(app.conn("u", "a"))).await;
    check(
        "get",
        &access,
        c.get(format!("{}/access-token", app.conn("u", "a"))),
    )
    .await;
    check(
        "post",
        &refresh,
        c.post(format!("{}/refresh", app.conn("u", "a"))),
    )
    .await;
    check("get", "/v1/connections", c.get(app.url("/v1/connections"))).await;
    check("get", "/v1/providers", c.get(app.url("/v1/providers"))).await;

    // 400: a malformed id, an unknown provider, a bad body, a bad query.
    let bad = app.url("/v1/users/u%0A/connections/fake/a");
    check("put", CONN, c.put(&bad).bearer_auth(API_KEY)).await;
    check("get", CONN, c.get(&bad).bearer_auth(API_KEY)).await;
    check("delete", CONN, c.delete(&bad).bearer_auth(API_KEY)).await;
    let nope = app.url("/v1/users/u/connections/nope/a");
    check(
        "get",
        &access,
        c.get(format!("{nope}/access-token")).bearer_auth(API_KEY),
    )
    .await;
    check(
        "post",
        &refresh,
        c.post(format!("{nope}/refresh")).bearer_auth(API_KEY),
    )
    .await;
    let list = app.url("/v1/connections?limit=0");
    check("get", "/v1/connections", c.get(list).bearer_auth(API_KEY)).await;

    // 404, then 201, 200 and the views.
    check("get", CONN, app.get("/v1/users/u/connections/fake/a")).await;
    check(
        "delete",
        CONN,
        c.delete(app.conn("u", "a")).bearer_auth(API_KEY),
    )
    .await;
    check(
        "get",
        &access,
        c.get(format!("{}/access-token", app.conn("u", "a")))
            .bearer_auth(API_KEY),
    )
    .await;
    check(
        "post",
        &refresh,
        c.post(format!("{}/refresh", app.conn("u", "a")))
            .bearer_auth(API_KEY),
    )
    .await;
    let import = json!({"access_token": "at", "expires_in": 3600});
    check(
        "put",
        CONN,
        c.put(app.conn("u", "a")).bearer_auth(API_KEY).json(&import),
    )
    .await;
    check(
        "put",
        CONN,
        c.put(app.conn("u", "a")).bearer_auth(API_KEY).json(&import),
    )
    .await;
    check("get", CONN, app.get("/v1/users/u/connections/fake/a")).await;
    check(
        "get",
        &access,
        c.get(format!("{}/access-token", app.conn("u", "a")))
            .bearer_auth(API_KEY),
    )
    .await;
    check("get", "/v1/connections", app.get("/v1/connections")).await;
    check("get", "/v1/providers", app.get("/v1/providers")).await;

    // 409 NO_REFRESH_TOKEN, 413.
    check(
        "post",
        &refresh,
        c.post(format!("{}/refresh", app.conn("u", "a")))
            .bearer_auth(API_KEY),
    )
    .await;
    let big = format!(r#"{{"access_token": "{}"}}"#, "x".repeat(10_000));
    check(
        "put",
        CONN,
        c.put(app.conn("u", "big")).bearer_auth(API_KEY).body(big),
    )
    .await;
    let big = format!(r#"{{"max_retries": 1{}}}"#, " ".repeat(10_000));
    check(
        "post",
        &refresh,
        c.post(format!("{}/refresh", app.conn("u", "a")))
            .bearer_auth(API_KEY)
            .body(big),
    )
    .await;

    // 409 REFRESH_TOO_EARLY with Retry-After.
    let young = app.url("/v1/users/u/connections/instagram/ig");
    let young_import = json!({"access_token": "IGQVJ", "expires_in": 60 * 86_400});
    check(
        "put",
        CONN,
        c.put(&young).bearer_auth(API_KEY).json(&young_import),
    )
    .await;
    check(
        "post",
        &refresh,
        c.post(format!("{young}/refresh")).bearer_auth(API_KEY),
    )
    .await;

    // 502, then 503 with Retry-After once the breaker opens; 204.
    app.provider_error(500, "server_error").await;
    app.import("u", "e", expired_import()).await;
    check(
        "post",
        &refresh,
        c.post(format!("{}/refresh", app.conn("u", "e")))
            .bearer_auth(API_KEY),
    )
    .await;
    check(
        "get",
        &access,
        c.get(format!("{}/access-token", app.conn("u", "e")))
            .bearer_auth(API_KEY),
    )
    .await;
    check(
        "delete",
        CONN,
        c.delete(app.conn("u", "e")).bearer_auth(API_KEY),
    )
    .await;

    // The application token: 401, 400 (unknown, or not a client-credentials provider), 200,
    // then 502 and 503 with Retry-After once its provider fails.
    let apps = "/v1/apps/{provider}/access-token";
    // Every request the document allows is one the server can accept: the application
    // route lists the client-credentials providers only, the import all the others.
    let listed = |path: &str, method: &str| {
        parameter(&doc, path, method, "provider")["schema"]["enum"].clone()
    };
    assert_eq!(listed(apps, "get"), json!(["app"]));
    assert_eq!(listed(CONN, "put"), json!(["fake", "instagram"]));
    assert_eq!(listed(CONN, "get"), json!(["app", "fake", "instagram"]));
    let app_url = |p: &str| app.url(&format!("/v1/apps/{p}/access-token"));
    check("get", apps, c.get(app_url("app"))).await;
    check("get", apps, c.get(app_url("nope")).bearer_auth(API_KEY)).await;
    check("get", apps, c.get(app_url("fake")).bearer_auth(API_KEY)).await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "app-at", "expires_in": 3600})),
        )
        .up_to_n_times(1)
        .mount(&application)
        .await;
    check("get", apps, c.get(app_url("app")).bearer_auth(API_KEY)).await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(503).set_body_json(json!({"error": "server_error"})),
        )
        .mount(&application)
        .await;
    // Deleting the stored token makes the next request obtain one, which fails.
    let stored = app.url("/v1/users/_app/connections/app/_app");
    check("delete", CONN, c.delete(stored).bearer_auth(API_KEY)).await;
    check("get", apps, c.get(app_url("app")).bearer_auth(API_KEY)).await;
    check("get", apps, c.get(app_url("app")).bearer_auth(API_KEY)).await;

    // The operational routes.
    check("get", "/healthz", c.get(app.url("/healthz"))).await;
    check("get", "/readyz", c.get(app.url("/readyz"))).await;
    check("get", "/metrics", c.get(app.url("/metrics"))).await;
    check("get", "/openapi.json", c.get(app.url("/openapi.json"))).await;

    for expected in [
        ("post", refresh.as_str(), 409),
        ("post", refresh.as_str(), 413),
        ("post", refresh.as_str(), 502),
        ("get", access.as_str(), 503),
        ("get", apps, 200),
        ("get", apps, 401),
        ("get", apps, 400),
        ("get", apps, 502),
        ("get", apps, 503),
        ("put", CONN, 413),
        ("delete", CONN, 204),
    ] {
        let (method, template, status) = expected;
        assert!(
            seen.contains(&(method.to_owned(), template.to_owned(), status)),
            "the scenario no longer produces {status} on {method} {template}"
        );
    }
    app.stop().await;
}

/// The connect flow's two API operations answer only what the document lists, and every
/// status it lists for them is one the server gives. The browser's routes (`/connect/{token}`
/// and `/connect/callback`) are not API calls: they are served but intentionally left out
/// of the document.
#[tokio::test]
async fn issue_9_connect_session_answers_are_documented() {
    let app = spawn_with(
        "authorization_url = \"https://auth.example.com/authorize\"\n\
         \n[connect]\nreturn_urls = [\"https://app.example.com/done\"]\n",
    )
    .await;
    let doc = document(&app).await;
    let c = &app.client;
    let sessions = "/v1/connect/sessions";
    let one = "/v1/connect/sessions/{id}";
    let mut seen = BTreeSet::new();
    let mut check = async |method: &str, template: &str, request: reqwest::RequestBuilder| {
        let response = request.send().await.expect("request");
        let status = assert_documented(&doc, method, template, response).await;
        seen.insert((method.to_owned(), template.to_owned(), status));
        status
    };
    let body = json!({"user_id": "u", "provider": "fake", "account_id": "a",
                      "return_url": "https://app.example.com/done?x=1"});

    // 401.
    check("post", sessions, c.post(app.url(sessions)).json(&body)).await;
    check(
        "get",
        one,
        c.get(app.url("/v1/connect/sessions/cs_AAAAAAAAAAAAAAAAAAAAAA")),
    )
    .await;
    // 400: a return URL not listed, a missing account id, an unknown provider, not JSON, an
    // unknown field.
    for bad in [
        json!({"user_id": "u", "provider": "fake", "account_id": "a",
               "return_url": "https://evil.example/done"}),
        json!({"user_id": "u", "provider": "fake", "return_url": "https://app.example.com/done"}),
        json!({"user_id": "u", "provider": "nope", "account_id": "a",
               "return_url": "https://app.example.com/done"}),
        json!(["not", "an", "object"]),
        json!({"user_id": "u", "provider": "fake", "account_id": "a",
               "return_url": "https://app.example.com/done", "extra": 1}),
    ] {
        let status = check(
            "post",
            sessions,
            c.post(app.url(sessions)).bearer_auth(API_KEY).json(&bad),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }
    // An id that is not UTF-8 is malformed; any other is looked up (404 below).
    let status = check("get", one, app.get("/v1/connect/sessions/cs_%FF%FE")).await;
    assert_eq!(status, 400);
    // 413.
    let big = format!(
        r#"{{"user_id": "u", "provider": "fake", "account_id": "a", "return_url": "{}"}}"#,
        "x".repeat(10_000)
    );
    check(
        "post",
        sessions,
        c.post(app.url(sessions))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    // 404 (for ids that could be one and ids that could not), 201, 200.
    for unknown in [
        "cs_AAAAAAAAAAAAAAAAAAAAAA",
        "nope",
        "cs_a%20b",
        &"a".repeat(100),
    ] {
        let status = check(
            "get",
            one,
            app.get(&format!("/v1/connect/sessions/{unknown}")),
        )
        .await;
        assert_eq!(status, 404, "{unknown}");
    }
    let created = c
        .post(app.url(sessions))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .expect("create");
    let id = {
        let view: Value = created.json().await.expect("json");
        view["id"].as_str().expect("id").to_owned()
    };
    check(
        "post",
        sessions,
        c.post(app.url(sessions)).bearer_auth(API_KEY).json(&body),
    )
    .await;
    check("get", one, app.get(&format!("/v1/connect/sessions/{id}"))).await;

    // Every documented status of both operations but 500 (a failing database) was seen.
    for (method, template) in [("post", sessions), ("get", one)] {
        let documented = doc["paths"][template][method]["responses"]
            .as_object()
            .expect("responses");
        for status in documented.keys().filter(|s| s.as_str() != "500") {
            let status: u16 = status.parse().expect("a status");
            assert!(
                seen.contains(&(method.to_owned(), template.to_owned(), status)),
                "{method} {template} documents {status}, which the scenario never produced"
            );
        }
    }

    // The browser's routes: served, and not in the document.
    for path in doc["paths"].as_object().expect("paths").keys() {
        assert!(
            !path.starts_with("/connect/"),
            "{path} is a browser route, not an API operation"
        );
    }
    let page = c
        .get(app.url("/connect/not-a-link"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 404);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    app.stop().await;
}
