//! One webhook delivery attempt against a local receiver (wiremock): the Standard Webhooks
//! headers and body a receiver checks, and how each kind of answer is classified: 2xx
//! delivered; 5xx, 429 with `Retry-After`, a redirect (never followed) and a timeout failed.

use std::collections::BTreeSet;
use std::time::Duration;

use time::OffsetDateTime;
use tokenwarden::webhooks::delivery::{Attempt, attempt, client};
use tokenwarden::webhooks::{EndpointConfig, EventType, WebhookSecret, verify};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn endpoint(url: &str, timeout: Duration, secrets: Vec<WebhookSecret>) -> EndpointConfig {
    EndpointConfig::new(
        "receiver",
        Url::parse(url).expect("url"),
        secrets,
        EventType::ALL.into_iter().collect::<BTreeSet<_>>(),
        timeout,
    )
    .expect("endpoint")
}

const BODY: &[u8] = br#"{"id":"evt_1","type":"connection.needs_reconnect","data":{"user_id":"u"}}"#;

#[tokio::test]
async fn a_2xx_is_delivered_with_headers_any_receiver_can_verify() {
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&receiver)
        .await;
    let old = WebhookSecret::generate();
    let new = WebhookSecret::generate();
    let endpoint = endpoint(
        &format!("{}/hooks", receiver.uri()),
        Duration::from_secs(5),
        vec![old.clone(), new.clone()],
    );
    let now = OffsetDateTime::now_utc();
    let answer = attempt(&client().expect("client"), &endpoint, "evt_1", BODY, now).await;
    assert_eq!(answer, Attempt::Delivered { status: 204 });

    let requests = receiver.received_requests().await.expect("recorded");
    let request = &requests[0];
    assert_eq!(request.body, BODY);
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["webhook-id"], "evt_1");
    assert_eq!(
        request.headers["webhook-timestamp"],
        now.unix_timestamp().to_string()
    );
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
        .collect();
    // During a rotation either secret verifies it; another does not.
    for secret in [&old, &new] {
        verify(
            std::slice::from_ref(secret),
            headers.clone(),
            BODY,
            now.unix_timestamp(),
        )
        .expect("verifies");
    }
    assert!(
        verify(
            &[WebhookSecret::generate()],
            headers,
            BODY,
            now.unix_timestamp()
        )
        .is_err()
    );
}

#[tokio::test]
async fn failures_are_classified_with_their_hints() {
    let receiver = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(path("/500"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&receiver)
        .await;
    Mock::given(path("/429"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount(&receiver)
        .await;
    Mock::given(path("/redirect"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/stolen", elsewhere.uri()).as_str()),
        )
        .mount(&receiver)
        .await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&receiver)
        .await;
    let client = client().expect("client");
    let now = OffsetDateTime::now_utc();
    let run = |p: &str, timeout: Duration| {
        let endpoint = endpoint(
            &format!("{}{p}", receiver.uri()),
            timeout,
            vec![WebhookSecret::generate()],
        );
        let client = client.clone();
        async move { attempt(&client, &endpoint, "evt_2", BODY, now).await }
    };
    let second = Duration::from_secs(5);

    assert!(matches!(
        run("/500", second).await,
        Attempt::Failed {
            status: Some(500),
            retry_after: None,
            ..
        }
    ));
    assert_eq!(
        run("/429", second).await,
        Attempt::Failed {
            status: Some(429),
            retry_after: Some(Duration::from_secs(7)),
            error: "HTTP 429".to_owned()
        }
    );
    assert!(matches!(
        run("/redirect", second).await,
        Attempt::Failed {
            status: Some(307),
            ..
        }
    ));
    assert!(
        elsewhere
            .received_requests()
            .await
            .expect("recorded")
            .is_empty(),
        "a redirect is never followed"
    );
    let Attempt::Failed { status, error, .. } = run("/slow", Duration::from_millis(200)).await
    else {
        panic!("a timeout is a failed attempt");
    };
    assert_eq!(status, None);
    assert!(error.contains("200 ms"), "{error}");

    // Nothing listens: a connection error.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let endpoint = endpoint(
        &format!("http://{closed}/hooks"),
        second,
        vec![WebhookSecret::generate()],
    );
    assert!(matches!(
        attempt(&client, &endpoint, "evt_3", BODY, now).await,
        Attempt::Failed { status: None, .. }
    ));
}
