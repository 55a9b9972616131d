//! Two instances on one PostgreSQL database, both delivering webhooks (issue 12): every
//! event is delivered exactly once to a healthy receiver, whichever instance wrote it and
//! whichever claims it (claims are leases taken with `FOR UPDATE SKIP LOCKED`).

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenwarden::webhooks::WebhookSecret;
use tokenwarden_server::{App, config};
use tokio::sync::oneshot;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "pg-webhooks-api-key-0123456789";
const CONNECTIONS: usize = 150;

struct Instance {
    base: String,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn instance(database_url: &str, key: &str, receiver: &MockServer, secret: &str) -> Instance {
    let text = format!(
        r#"listen = "127.0.0.1:0"
database_url = "{database_url}"

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
url = "{}/hooks"
secret = "{secret}"
"#,
        receiver.uri()
    );
    let table: toml::Table = text.parse().expect("config parses");
    let config = config::from_table(table).expect("config");
    config.validate().expect("valid");
    let app = App::build(config, tokenwarden_server::telemetry::metrics_handle())
        .await
        .expect("app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, rx) = oneshot::channel();
    let server = tokio::spawn(tokenwarden_server::run(listener, app, async move {
        let _ = rx.await;
    }));
    Instance { base, stop, server }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn two_instances_deliver_every_event_exactly_once() {
    let url = postgres::url();
    let schema = format!(
        "tw_webhooks_{:x}_{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 & 0xffff_ffff
    );
    let database_url = postgres::schema_url(&url, &schema).await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let key = tokenwarden::KeyRing::generate_key_base64();
    let secret = WebhookSecret::generate();
    let a = instance(&database_url, &key, &receiver, secret.expose_secret()).await;
    let b = instance(&database_url, &key, &receiver, secret.expose_secret()).await;

    // Changes through both instances at once.
    let client = reqwest::Client::new();
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..CONNECTIONS {
        let base = if n % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let client = client.clone();
        writes.spawn(async move {
            client
                .put(format!("{base}/v1/users/u{n}/connections/fake/acct"))
                .bearer_auth(API_KEY)
                .json(&json!({"access_token": "at", "expires_in": 3600}))
                .send()
                .await
                .expect("import")
                .status()
                .as_u16()
        });
    }
    while let Some(status) = writes.join_next().await {
        assert_eq!(status.expect("join"), 201);
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = receiver.received_requests().await.expect("recorded").len();
        if n >= CONNECTIONS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {CONNECTIONS} events delivered in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Count once nothing is pending: a delivery is marked delivered only after its send
    // returned, so then no send is in flight on either instance.
    loop {
        let pending: Value = client
            .get(format!("{}/v1/webhooks/deliveries?status=pending", a.base))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        if pending["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = receiver.received_requests().await.expect("recorded");
    let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
    let mut users = std::collections::BTreeSet::new();
    for request in &requests {
        let id = request.headers["webhook-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        *per_event.entry(id).or_default() += 1;
        let body: Value = serde_json::from_slice(&request.body).expect("json");
        users.insert(body["data"]["user_id"].as_str().expect("user").to_owned());
    }
    assert_eq!(per_event.len(), CONNECTIONS, "one event per change");
    assert!(
        per_event.values().all(|&n| n == 1),
        "an event was delivered twice: {:?}",
        per_event
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(users.len(), CONNECTIONS);

    for instance in [a, b] {
        let _ = instance.stop.send(());
        instance.server.await.expect("join").expect("served");
    }
    postgres::drop_schema(&url, &schema).await;
}
