//! Metrics and logs: every SPEC metric name is exported, and no secret reaches the logs.

#[path = "common/binary.rs"]
mod binary;
mod common;

use common::{API_KEY, CLIENT_SECRET, expired_import, spawn};
use serde_json::json;

#[tokio::test]
async fn metrics_has_every_spec_name_after_a_refresh() {
    let app = spawn().await;
    app.provider_ok("metrics-access", "metrics-refresh").await;
    app.import("u", "a", expired_import()).await;
    assert_eq!(app.access_token("u", "a").await.status().as_u16(), 200);
    assert_eq!(app.refresh("u", "a", None).await.status().as_u16(), 200);
    // A cache hit: counted through the handle the warden registered at build.
    assert_eq!(app.access_token("u", "a").await.status().as_u16(), 200);
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    for name in tokenwarden::metrics::ALL {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(
        text.contains("tokenwarden_circuit_open{provider=\"fake\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("tokenwarden_refresh_duration_seconds_bucket"),
        "histogram, not summary"
    );
    assert!(text.contains("tokenwarden_connections{status=\"active\"}"));
    assert!(
        text.contains("tokenwarden_token_requests_total{outcome=\"fresh\"}"),
        "cache hits are counted:\n{text}"
    );
    // The refreshes' commits went through the group committer.
    assert!(
        text.contains("tokenwarden_commit_rows_bucket{le=\"1\"}"),
        "commit size histogram:\n{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn debug_logs_contain_no_secret() {
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "rotated-access-SECRET-1",
            "refresh_token": "rotated-refresh-SECRET-2",
            "token_type": "Bearer",
            "expires_in": 3600,
        })))
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::config_toml(&dir, &format!("{}/token", provider.uri()), "");
    let path = dir.path().join("tokenwarden.toml");
    std::fs::write(&path, &config).expect("write config");
    let encryption_key = config
        .lines()
        .find_map(|l| l.strip_prefix("keys = { k1 = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("key in config")
        .to_owned();

    let running = binary::start(
        dir.path(),
        &[
            "serve",
            "--config",
            path.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "debug")],
    );
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let conn = format!("{base}/v1/users/u/connections/fake/a");
    let imported = client
        .put(&conn)
        .bearer_auth(API_KEY)
        .json(&json!({
            "access_token": "imported-access-SECRET-3",
            "refresh_token": "imported-refresh-SECRET-4",
            "expires_at": "2020-01-01T00:00:00Z",
        }))
        .send()
        .await
        .expect("import");
    assert_eq!(imported.status().as_u16(), 201);
    let token = client
        .get(format!("{conn}/access-token"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("t");
    assert_eq!(token.status().as_u16(), 200);
    let refreshed = client
        .post(format!("{conn}/refresh"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("r");
    assert_eq!(refreshed.status().as_u16(), 200);
    let denied = client
        .get(format!("{base}/v1/providers"))
        .bearer_auth("wrong-SECRET-5")
        .send()
        .await
        .expect("d");
    assert_eq!(denied.status().as_u16(), 401);

    let logs = running.stop();
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug logging was on");
    assert!(logs.contains("request_id"), "requests carry an id");
    for secret in [
        "rotated-access-SECRET-1",
        "rotated-refresh-SECRET-2",
        "imported-access-SECRET-3",
        "imported-refresh-SECRET-4",
        "wrong-SECRET-5",
        API_KEY,
        CLIENT_SECRET,
        encryption_key.as_str(),
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}
