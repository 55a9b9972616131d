//! A webhook survives `kill -9` (issue 12): the event is written in the same transaction as
//! the change, so a server killed right after the change (its receiver not even listening
//! yet) delivers it after a restart, under the same event id.

#[path = "common/binary.rs"]
mod binary;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenwarden::webhooks::WebhookSecret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "crash-test-api-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_written_before_a_kill_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The receiver's port, with nothing listening on it yet.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let secret = WebhookSecret::generate();
    let config = dir.path().join("tokenwarden.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
database_url = "sqlite://{db}"

[encryption]
active_key = "k1"
keys = {{ k1 = "{key}" }}

[auth]
api_keys = ["{API_KEY}"]

[scheduler]
enabled = false

[providers.fake]
kind = "oauth2"
client_id = "id"
client_secret = "secret"
token_url = "http://127.0.0.1:9/token"

[webhooks.endpoints.app]
url = "http://127.0.0.1:{port}/hooks"
secret = "{secret}"
timeout_ms = 1000
"#,
            db = dir.path().join("tw.db").display(),
            key = tokenwarden::KeyRing::generate_key_base64(),
            secret = secret.expose_secret(),
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8").to_owned();
    let args = ["serve", "--config", config.as_str()];

    let mut first = binary::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    let created = client
        .put(format!(
            "http://{}/v1/users/u1/connections/fake/acct",
            first.addr
        ))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": "at", "expires_in": 3600}))
        .send()
        .await
        .expect("import");
    assert_eq!(created.status().as_u16(), 201);
    // Killed at once: whatever the delivery loop did, the receiver got nothing.
    first.child.kill().expect("kill -9");
    first.child.wait().expect("reaped");

    let receiver = MockServer::builder()
        .listener(std::net::TcpListener::bind(("127.0.0.1", port)).expect("receiver port"))
        .start()
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let second = binary::start(dir.path(), &args, &[]);
    // A retry is due within 5 s of a failed attempt (or at once if none was made).
    let deadline = Instant::now() + Duration::from_secs(15);
    while receiver
        .received_requests()
        .await
        .expect("recorded")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the event was not delivered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = receiver.received_requests().await.expect("recorded");
    assert_eq!(requests.len(), 1, "delivered once");
    let body: Value = serde_json::from_slice(&requests[0].body).expect("json");
    assert_eq!(body["type"], "connection.created");
    assert_eq!(body["data"]["account_id"], "acct");
    assert_eq!(
        requests[0].headers["webhook-id"],
        body["id"].as_str().expect("id")
    );
    let log: Value = client
        .get(format!("http://{}/v1/webhooks/deliveries", second.addr))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(log["items"][0]["status"], "delivered", "{log}");
    second.stop();
}
