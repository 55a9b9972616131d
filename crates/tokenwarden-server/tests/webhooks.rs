//! Webhooks through the real server (issue 12): a change made through the API reaches a
//! receiver within 2 s, signed so that an independent Standard Webhooks implementation (the
//! npm `standardwebhooks` package) accepts it; the delivery log, the test event and the retry
//! route answer as documented.

mod common;

use std::time::{Duration, Instant};

use common::{API_KEY, spawn_with};
use serde_json::{Value, json};
use tokenwarden::webhooks::WebhookSecret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn endpoint_section(name: &str, receiver: &MockServer, secret: &WebhookSecret) -> String {
    format!(
        "\n[webhooks.endpoints.{name}]\nurl = \"{}/hooks\"\nsecret = \"{}\"\ntimeout_ms = 2000\n",
        receiver.uri(),
        secret.expose_secret()
    )
}

/// Runs every received request through `interop/webhooks/verify.mjs` (npm standardwebhooks).
fn verify_with_npm(secret: &WebhookSecret, requests: &[wiremock::Request]) -> Vec<String> {
    let messages: Vec<Value> = requests
        .iter()
        .map(|request| {
            let headers: serde_json::Map<String, Value> = request
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().expect("ascii"))))
                .collect();
            json!({
                "secret": secret.expose_secret(),
                "headers": headers,
                "body": String::from_utf8(request.body.clone()).expect("utf-8"),
            })
        })
        .collect();
    tokenwarden_testkit::interop::standardwebhooks_verdicts(&messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_webhooks_server), ignore = "needs npm ci in interop/webhooks")]
async fn a_change_reaches_the_receiver_within_two_seconds_signed_for_any_library() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let secret = WebhookSecret::generate();
    let app = spawn_with(&endpoint_section("app", &receiver, &secret)).await;

    let started = Instant::now();
    let created = app
        .import(
            "u1",
            "acct",
            json!({"access_token": "at-never-sent", "expires_in": 3600}),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let items =
        common::wait_for_deliveries(&app, "status=delivered", 1, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(items[0]["type"], "connection.created");
    assert_eq!(items[0]["endpoint"], "app");
    assert_eq!(items[0]["attempts"], 1);

    // The test event, to this endpoint only.
    let test = app
        .client
        .post(app.url("/v1/webhooks/endpoints/app/test"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("test");
    assert_eq!(test.status().as_u16(), 202);
    let test: Value = test.json().await.expect("json");
    // Delivered, not only listed: the receiver has it once its answer is recorded.
    let items = common::wait_for_deliveries(
        &app,
        "type=webhook.test&status=delivered",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(items[0]["event_id"], test["event_id"]);

    let requests = receiver.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let body = String::from_utf8_lossy(&request.body);
        assert!(!body.contains("at-never-sent"), "a token in {body}");
    }
    let verdicts = verify_with_npm(&secret, &requests);
    assert_eq!(verdicts, ["ok", "ok"], "npm standardwebhooks verdicts");
    // Another secret does not verify them.
    let other = verify_with_npm(&WebhookSecret::generate(), &requests[..1]);
    assert!(other[0].starts_with("fail"), "{other:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_delivery_routes_answer_as_documented() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let secret = WebhookSecret::generate();
    let app = spawn_with(&endpoint_section("app", &receiver, &secret)).await;
    let c = &app.client;

    let unknown = c
        .post(app.url("/v1/webhooks/endpoints/nope/test"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("test");
    assert_eq!(
        common::error_of(unknown, 404).await["code"],
        "WEBHOOK_ENDPOINT_NOT_FOUND"
    );
    let missing = c
        .post(app.url("/v1/webhooks/deliveries/dlv_0000000000000_00000000/retry"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("retry");
    assert_eq!(
        common::error_of(missing, 404).await["code"],
        "WEBHOOK_DELIVERY_NOT_FOUND"
    );
    for bad in [
        "status=late",
        "type=connection.eaten",
        "limit=0",
        "cursor=xyz",
        "colour=red",
    ] {
        let answer = app
            .get(&format!("/v1/webhooks/deliveries?{bad}"))
            .send()
            .await
            .expect("list");
        assert_eq!(
            common::error_of(answer, 400).await["code"],
            "INVALID_REQUEST",
            "{bad}"
        );
    }
    app.import("u1", "a", json!({"access_token": "at"})).await;
    let items =
        common::wait_for_deliveries(&app, "status=delivered", 1, Duration::from_secs(5)).await;
    let id = items[0]["id"].as_str().expect("id");
    let not_failed = c
        .post(app.url(&format!("/v1/webhooks/deliveries/{id}/retry")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("retry");
    assert_eq!(
        common::error_of(not_failed, 409).await["code"],
        "WEBHOOK_DELIVERY_NOT_FAILED"
    );

    // A failed delivery (its retries spent) is sent again on request, with its event id.
    app.sql("UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL")
        .await;
    let retried = c
        .post(app.url(&format!("/v1/webhooks/deliveries/{id}/retry")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("retry");
    assert_eq!(retried.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.received_requests().await.expect("recorded").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the retried delivery was not sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = receiver.received_requests().await.expect("recorded");
    assert_eq!(
        requests[0].headers["webhook-id"],
        requests[1].headers["webhook-id"]
    );
    app.stop().await;
}
