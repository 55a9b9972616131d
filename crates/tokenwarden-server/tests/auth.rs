//! Every /v1 route refuses missing, wrong and near-miss API keys with 401 UNAUTHORIZED.

mod common;

use common::{API_KEY, error_of, spawn};
use reqwest::Method;

fn routes() -> Vec<(Method, &'static str)> {
    vec![
        (Method::PUT, "/v1/users/u/connections/fake/a"),
        (Method::GET, "/v1/users/u/connections/fake/a"),
        (Method::DELETE, "/v1/users/u/connections/fake/a"),
        (Method::GET, "/v1/users/u/connections/fake/a/access-token"),
        (Method::POST, "/v1/users/u/connections/fake/a/refresh"),
        (Method::GET, "/v1/connections"),
        (Method::GET, "/v1/providers"),
        // Unknown provider and bad ids must not leak past authentication either.
        (Method::GET, "/v1/users/u/connections/nope/a"),
    ]
}

fn one_char_off(key: &str) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'f' { b'e' } else { b'f' };
    String::from_utf8(bytes).expect("ascii")
}

#[tokio::test]
async fn every_v1_route_needs_the_exact_key() {
    let app = spawn().await;
    let bad_headers: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer wrong-key-entirely-0000000".to_owned()),
        Some(format!("Bearer {}", one_char_off(API_KEY))),
        Some(format!("Bearer {}", &API_KEY[..API_KEY.len() - 1])),
        Some(format!("Bearer {API_KEY}x")),
        Some(format!("Basic {API_KEY}")),
        Some(format!("Token {API_KEY}")),
        Some(API_KEY.to_owned()),
        Some(format!("Bearer  {API_KEY}")),
        Some(format!("Bearer\t{API_KEY}")),
        Some(format!("BearerX{API_KEY}")),
    ];
    for (method, path) in routes() {
        for header in &bad_headers {
            let mut request = app.client.request(method.clone(), app.url(path)).body("{}");
            if let Some(value) = header {
                request = request.header("authorization", value);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let error = error_of(response, 401).await;
            assert_eq!(
                error["code"], "UNAUTHORIZED",
                "{method} {path} with {header:?}"
            );
        }
    }
    // The right key gets through (here: to a 404 or 200, anything but 401).
    for (method, path) in routes() {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("request");
        assert_ne!(response.status().as_u16(), 401, "{method} {path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn hashed_keys_work_too() {
    let other = "second-key-abcdefghijklmnop";
    let hashed = tokenwarden_server::auth::hash_for_config(other);
    let provider = wiremock::MockServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_toml(&dir, &provider.uri(), "").replace(
        &format!("api_keys = [\"{API_KEY}\"]"),
        &format!("api_keys = [\"{hashed}\"]"),
    );
    let config =
        tokenwarden_server::config::from_table(text.parse().expect("toml")).expect("config");
    config.validate().expect("valid");
    let app =
        tokenwarden_server::App::build(config, tokenwarden_server::telemetry::metrics_handle())
            .await
            .expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(tokenwarden_server::run(
        listener,
        app,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("http://{addr}/v1/providers"))
        .bearer_auth(other)
        .send()
        .await
        .expect("req");
    assert_eq!(ok.status().as_u16(), 200);
    let bad = client
        .get(format!("http://{addr}/v1/providers"))
        .bearer_auth(&hashed)
        .send()
        .await
        .expect("req");
    assert_eq!(bad.status().as_u16(), 401, "the hash itself is not a key");
    server.abort();
}
