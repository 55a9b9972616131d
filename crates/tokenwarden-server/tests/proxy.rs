//! The proxy (`/v1/proxy/{user_id}/{provider}/{account_id}/{path…}`, SPEC.md "Proxy")
//! against local fakes: a provider API (wiremock, which records every request it gets), the
//! provider's token endpoint, and a second listener that nothing may reach.

mod common;

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Frame;

use common::{API_KEY, CLIENT_SECRET, TestApp, capture_logs, error_of, spawn_with};
use serde_json::{Value, json};
use wiremock::matchers::{header, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const OLD_TOKEN: &str = "at-OLD-proxy-secret-0001";
const NEW_TOKEN: &str = "at-NEW-proxy-secret-0002";
const REFRESH_TOKEN: &str = "rt-proxy-secret-0003";
const NEW_REFRESH_TOKEN: &str = "rt-NEW-proxy-secret-0004";
const IG_TOKEN: &str = "IG-proxy-secret-0005";

/// The app with provider `fake`'s API at `{api}/api`; `more` goes on inside
/// `[providers.fake]` (start it with a section header to add sections).
async fn spawn_proxy(api: &MockServer, more: &str) -> TestApp {
    spawn_with(&format!("api_base_url = \"{}/api\"\n{more}", api.uri())).await
}

async fn import(app: &TestApp, user: &str, account: &str, token: &str) {
    let response = app
        .import(
            user,
            account,
            json!({"access_token": token, "refresh_token": REFRESH_TOKEN, "expires_in": 3600}),
        )
        .await;
    assert_eq!(response.status(), 201);
}

/// Imports `token` for user `u1`'s connection `account` of `provider` (any configured one).
async fn import_of(app: &TestApp, provider: &str, account: &str, token: &str, expires_in: u64) {
    let imported = app
        .client
        .put(app.url(&format!("/v1/users/u1/connections/{provider}/{account}")))
        .bearer_auth(API_KEY)
        .json(&json!({"access_token": token, "expires_in": expires_in}))
        .send()
        .await
        .expect("import");
    assert_eq!(imported.status(), 201);
}

fn proxied(app: &TestApp, user: &str, account: &str, rest: &str) -> String {
    app.url(&format!("/v1/proxy/{user}/fake/{account}/{rest}"))
}

/// A client that hands redirects back instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn header_of<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Requests the token endpoint got.
async fn token_requests(app: &TestApp) -> usize {
    app.provider
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/token")
        .count()
}

/// The API answers 200 to the new token and 401 to anything else.
async fn api_accepting_only_the_new_token(api: &MockServer) {
    Mock::given(header(
        "authorization",
        format!("Bearer {NEW_TOKEN}").as_str(),
    ))
    .respond_with(ResponseTemplate::new(200).set_body_string("accepted"))
    .mount(api)
    .await;
    Mock::given(path_regex("^/api/"))
        .respond_with(ResponseTemplate::new(401).set_body_string("token refused"))
        .with_priority(10)
        .mount(api)
        .await;
}

#[tokio::test]
async fn every_method_forwards_its_body_and_headers_and_not_the_forbidden_ones() {
    let api = MockServer::start().await;
    Mock::given(path("/api/items/42"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_string("created")
                .insert_header("x-upstream", "yes")
                .insert_header("connection", "x-upstream-hop")
                .insert_header("x-upstream-hop", "1")
                .insert_header("keep-alive", "timeout=5")
                .insert_header("proxy-authenticate", "Basic")
                // An API cannot pass its answer off as tokenwarden's own.
                .insert_header("tokenwarden-error", "TOKEN_EXPIRED"),
        )
        .mount(&api)
        .await;
    let app = spawn_proxy(&api, "").await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    for name in methods {
        let method = reqwest::Method::from_bytes(name.as_bytes()).expect("method");
        let mut request = client()
            .request(method, proxied(&app, "u1", "a1", "items/42?x=1&y=%2F"))
            .bearer_auth(API_KEY)
            .header("x-app", "kept")
            .header("accept", "application/json")
            .header("cookie", "tw-session=1")
            .header("tokenwarden-debug", "1")
            .header("connection", "x-client-hop")
            .header("x-client-hop", "1")
            .header("proxy-authorization", "Basic eA==");
        if name != "GET" && name != "DELETE" {
            request = request
                .header("content-type", "text/plain")
                .body(format!("payload of {name}"));
        }
        let response = request.send().await.expect("proxied");
        assert_eq!(response.status(), 201, "{name}");
        let headers = response.headers();
        assert_eq!(headers["x-upstream"], "yes", "{name}");
        for gone in [
            "x-upstream-hop",
            "keep-alive",
            "proxy-authenticate",
            "tokenwarden-refreshed",
            "tokenwarden-error",
        ] {
            assert!(!headers.contains_key(gone), "{name}: {gone} came back");
        }
        assert_eq!(response.text().await.expect("body"), "created");
    }
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received.len(), methods.len());
    for (request, name) in received.iter().zip(methods) {
        assert_eq!(request.method.as_str(), name);
        assert_eq!(request.url.path(), "/api/items/42", "{name}");
        assert_eq!(request.url.query(), Some("x=1&y=%2F"), "{name}");
        assert_eq!(
            header_of(request, "authorization"),
            Some(format!("Bearer {OLD_TOKEN}").as_str()),
            "{name}: the connection's token, not the API key"
        );
        assert_eq!(header_of(request, "x-app"), Some("kept"), "{name}");
        assert_eq!(header_of(request, "accept"), Some("application/json"));
        for gone in [
            "cookie",
            "tokenwarden-debug",
            "x-client-hop",
            "proxy-authorization",
        ] {
            assert!(
                header_of(request, gone).is_none(),
                "{name}: {gone} went upstream"
            );
        }
        assert_ne!(
            header_of(request, "host"),
            Some(app.addr.to_string().as_str()),
            "{name}: the upstream's own Host"
        );
        let expected_body = match name {
            "GET" | "DELETE" => String::new(),
            _ => format!("payload of {name}"),
        };
        assert_eq!(
            String::from_utf8_lossy(&request.body),
            expected_body,
            "{name}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_5_mb_body_streams_both_ways_past_server_max_body_bytes() {
    const SIZE: usize = 5 * 1024 * 1024;
    let upload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let download: Vec<u8> = (0..SIZE).map(|i| (i % 241) as u8).collect();
    let api = MockServer::start().await;
    Mock::given(path("/api/files"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(download.clone()))
        .mount(&api)
        .await;
    let app = spawn_proxy(&api, "").await;
    import(&app, "u1", "a1", OLD_TOKEN).await;

    // The same body on a route with the limit (server.max_body_bytes = 4096 in the tests).
    let limited = client()
        .put(app.conn("u1", "a1"))
        .bearer_auth(API_KEY)
        .body(upload.clone())
        .send()
        .await
        .expect("import");
    assert_eq!(
        limited.status(),
        413,
        "the body is over server.max_body_bytes"
    );

    let response = client()
        .post(proxied(&app, "u1", "a1", "files"))
        .bearer_auth(API_KEY)
        .body(upload.clone())
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    assert_eq!(body.len(), SIZE);
    assert!(body[..] == download[..], "the download arrived whole");
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received.len(), 1);
    assert!(received[0].body == upload, "the upload arrived whole");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_call_sent_again() {
    let api = MockServer::start().await;
    api_accepting_only_the_new_token(&api).await;
    let app = spawn_proxy(&api, "").await;
    app.provider_ok(NEW_TOKEN, NEW_REFRESH_TOKEN).await;
    // Revoked upstream, but far from expiry: only the API's 401 can tell.
    import(&app, "u1", "a1", OLD_TOKEN).await;

    let response = client()
        .post(proxied(&app, "u1", "a1", "things"))
        .bearer_auth(API_KEY)
        .body("small body")
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["tokenwarden-refreshed"], "1");
    assert_eq!(response.text().await.expect("body"), "accepted");
    assert_eq!(token_requests(&app).await, 1);
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received.len(), 2, "the refused attempt and the second one");
    assert_eq!(received[1].body, b"small body", "the body was sent again");

    // The next call has the new token from the start.
    let response = client()
        .get(proxied(&app, "u1", "a1", "things"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("tokenwarden-refreshed"));
    assert_eq!(token_requests(&app).await, 1);
    app.stop().await;
}

/// An API for the concurrent-401 test: the new token is accepted at once; the old one is
/// refused with 401, at once for `/api/early/…` and, for `/api/late/…`, only once the test
/// opens the gate. It records the token of every call and counts the late calls it holds.
struct GatedApi {
    addr: std::net::SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
    held: tokio::sync::watch::Receiver<usize>,
    tokens: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

async fn gated_api() -> GatedApi {
    use axum::http::StatusCode;
    let (open, gate) = tokio::sync::watch::channel(false);
    let (held_tx, held) = tokio::sync::watch::channel(0usize);
    let tokens: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
    let seen = tokens.clone();
    let held_tx = std::sync::Arc::new(held_tx);
    let handler = move |request: axum::extract::Request| {
        let (mut gate, seen, held_tx) = (gate.clone(), seen.clone(), held_tx.clone());
        async move {
            let token = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.lock().expect("lock").push(token.clone());
            if token == format!("Bearer {NEW_TOKEN}") {
                return (StatusCode::OK, "accepted");
            }
            if request.uri().path().starts_with("/api/late/") {
                held_tx.send_modify(|n| *n += 1);
                gate.wait_for(|open| *open).await.expect("gate");
            }
            (StatusCode::UNAUTHORIZED, "token refused")
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(handler))
            .await
            .expect("serve");
    });
    GatedApi {
        addr,
        open,
        held,
        tokens,
    }
}

#[tokio::test]
async fn twenty_concurrent_401s_cause_exactly_one_refresh() {
    // Ten calls whose 401 comes back late: after the refresh the other ten caused has
    // finished (the API holds them until then).
    let mut api = gated_api().await;
    let app = spawn_with(&format!("api_base_url = \"http://{}/api\"\n", api.addr)).await;
    app.provider_ok(NEW_TOKEN, NEW_REFRESH_TOKEN).await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let call = |rest: String| {
        let url = proxied(&app, "u1", "a1", &rest);
        async move {
            client()
                .post(url)
                .bearer_auth(API_KEY)
                .body(rest)
                .send()
                .await
                .expect("proxied")
        }
    };
    let late = spawn_all((0..10).map(|i| call(format!("late/{i}"))));
    // The API holds all ten late calls (each went out with the old token).
    api.held.wait_for(|n| *n == 10).await.expect("held");
    let early = spawn_all((0..10).map(|i| call(format!("early/{i}"))));
    for response in join_all(early).await {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["tokenwarden-refreshed"], "1");
    }
    assert_eq!(
        token_requests(&app).await,
        1,
        "the early ten shared one refresh"
    );
    api.open.send(true).expect("open the gate");
    for response in join_all(late).await {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["tokenwarden-refreshed"], "1");
    }
    assert_eq!(
        token_requests(&app).await,
        1,
        "401s that arrived after the refresh took the token it stored"
    );
    let tokens = api.tokens.lock().expect("lock").clone();
    let refused = tokens
        .iter()
        .filter(|t| **t == format!("Bearer {OLD_TOKEN}"))
        .count();
    assert_eq!(refused, 20, "every call was refused once");
    assert_eq!(tokens.len(), 40);
    app.stop().await;
}

/// Runs each future as a task of its own.
fn spawn_all<F>(futures: impl Iterator<Item = F>) -> Vec<tokio::task::JoinHandle<F::Output>>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures.map(tokio::spawn).collect()
}

async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_body_too_large_to_replay_gets_the_upstreams_401_back() {
    let api = MockServer::start().await;
    api_accepting_only_the_new_token(&api).await;
    let app = spawn_proxy(&api, "\n[proxy]\nmax_replay_bytes = 1024\n").await;
    app.provider_ok(NEW_TOKEN, NEW_REFRESH_TOKEN).await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let response = client()
        .post(proxied(&app, "u1", "a1", "upload"))
        .bearer_auth(API_KEY)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 401, "the API's own answer");
    assert!(!response.headers().contains_key("tokenwarden-refreshed"));
    assert_eq!(response.text().await.expect("body"), "token refused");
    assert_eq!(api.received_requests().await.expect("recorded").len(), 1);
    assert_eq!(token_requests(&app).await, 1, "refreshed for the next call");

    // Within the limit, a call refused the same way is sent again with the new token.
    let replaced = app
        .import(
            "u1",
            "a1",
            json!({"access_token": OLD_TOKEN, "refresh_token": REFRESH_TOKEN, "expires_in": 3600}),
        )
        .await;
    assert_eq!(replaced.status(), 200);
    let response = client()
        .post(proxied(&app, "u1", "a1", "upload"))
        .bearer_auth(API_KEY)
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["tokenwarden-refreshed"], "1");
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(
        received.len(),
        3,
        "the large call once, the small one twice"
    );
    assert_eq!(received[2].body.len(), 1024, "the same body sent again");
    app.stop().await;
}

/// A body too large to send again gets the API's 401 even when the refresh fails: the
/// refresh's own error is not the answer (SPEC).
#[tokio::test]
async fn a_body_too_large_to_replay_gets_the_401_even_when_the_refresh_fails() {
    let api = MockServer::start().await;
    api_accepting_only_the_new_token(&api).await;
    let app = spawn_proxy(&api, "\n[proxy]\nmax_replay_bytes = 1024\n").await;
    app.provider_error(400, "invalid_grant").await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let response = client()
        .post(proxied(&app, "u1", "a1", "upload"))
        .bearer_auth(API_KEY)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 401, "the API's own answer");
    assert!(!response.headers().contains_key("tokenwarden-error"));
    assert_eq!(response.text().await.expect("body"), "token refused");
    assert_eq!(token_requests(&app).await, 1, "the refresh was tried");
    app.stop().await;
}

/// Sends `GET {target}` as written (reqwest would resolve dot segments first) and returns
/// the status and body.
async fn raw_get(app: &TestApp, target: &str) -> (u16, String) {
    let addr = app.addr;
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Connection: close\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("raw request")
}

#[tokio::test]
async fn path_escapes_are_refused_before_anything_is_sent() {
    let api = MockServer::start().await;
    Mock::given(path_regex("^/api/"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&api)
        .await;
    let elsewhere = MockServer::start().await;
    Mock::given(path_regex(".*"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&elsewhere)
        .await;
    let host = elsewhere.address().to_string();
    let app = spawn_proxy(&api, "").await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let escapes = [
        "../steal".to_owned(),
        "a/../../steal".to_owned(),
        "./steal".to_owned(),
        "%2e%2e/steal".to_owned(),
        "%2E%2e/%2e%2E/steal".to_owned(),
        ".%2e/steal".to_owned(),
        "%2e./steal".to_owned(),
        "%252e%252e/steal".to_owned(),
        "a/..%2F..%2Fsteal".to_owned(),
        "a/%2e%2e%2f%2e%2e%2fsteal".to_owned(),
        "a%5c..%5c..%5csteal".to_owned(),
        "a/%00/steal".to_owned(),
        "a/%0d%0aHost:%20evil/steal".to_owned(),
        format!("/{host}/steal"),
        format!("%2F%2F{host}/steal"),
        format!("http:%2F%2F{host}/steal"),
        format!("http://{host}/steal"),
        format!("user@{host}/steal"),
        format!("user%40{host}/steal"),
    ];
    for escape in &escapes {
        let (status, body) = raw_get(&app, &format!("/v1/proxy/u1/fake/a1/{escape}")).await;
        assert_eq!(status, 400, "{escape}: {body}");
        let error: Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(error["error"]["code"], "INVALID_REQUEST", "{escape}");
        assert_eq!(error["error"]["details"]["field"], "path", "{escape}");
    }
    assert!(
        elsewhere
            .received_requests()
            .await
            .expect("recorded")
            .is_empty(),
        "nothing reached the other listener"
    );
    assert!(
        api.received_requests().await.expect("recorded").is_empty(),
        "nothing was sent at all"
    );

    // An encoded slash that stays inside goes as it was written.
    let (status, _) = raw_get(&app, "/v1/proxy/u1/fake/a1/projects/group%2Fproject/issues").await;
    assert_eq!(status, 200);
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].url.path(),
        "/api/projects/group%2Fproject/issues"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_is_handed_back_not_followed() {
    let api = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(path_regex(".*"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&elsewhere)
        .await;
    let location = format!("{}/steal", elsewhere.uri());
    Mock::given(path("/api/moved"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", location.as_str()))
        .mount(&api)
        .await;
    let app = spawn_proxy(&api, "").await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let response = client()
        .get(proxied(&app, "u1", "a1", "moved"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], location.as_str());
    assert!(
        elsewhere
            .received_requests()
            .await
            .expect("recorded")
            .is_empty()
    );
    app.stop().await;
}

fn instagram(api: &MockServer) -> String {
    format!(
        "\n[providers.ig]\nkind = \"instagram\"\napi_base_url = \"{}/graph\"\n\
         refresh_url = \"{}/refresh_access_token\"\n",
        api.uri(),
        api.uri()
    )
}

#[tokio::test]
async fn instagram_takes_its_token_in_the_query() {
    let api = MockServer::start().await;
    Mock::given(path("/graph/me"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "1"})))
        .mount(&api)
        .await;
    let app = spawn_proxy(&api, &instagram(&api)).await;
    import_of(&app, "ig", "ig-1", IG_TOKEN, 5_184_000).await;
    let response = client()
        .get(app.url("/v1/proxy/u1/ig/ig-1/me?fields=id,username&access_token=not-mine"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 200);
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].url.query(),
        Some(format!("fields=id,username&access_token={IG_TOKEN}").as_str()),
        "the client's own access_token is replaced by the connection's"
    );
    assert!(header_of(&received[0], "authorization").is_none());
    app.stop().await;
}

/// An answer of tokenwarden's own on the proxy route: `status`, and the `Tokenwarden-Error`
/// header naming the same code as the body. Returns the body's `error`.
async fn own_error(response: reqwest::Response, status: u16) -> Value {
    let marked = response
        .headers()
        .get("tokenwarden-error")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let error = error_of(response, status).await;
    assert_eq!(marked.as_deref(), error["code"].as_str(), "{error}");
    error
}

#[tokio::test]
async fn unreachable_slow_and_unproxied_apis_are_answered_with_their_codes() {
    let slow = MockServer::start().await;
    Mock::given(path_regex(".*"))
        .respond_with(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(5)))
        .mount(&slow)
        .await;
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let more = format!(
        "\n[providers.closed]\nkind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         token_url = \"http://127.0.0.1:9/token\"\napi_base_url = \"http://{closed_addr}\"\n\
         \n[providers.plain]\nkind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         token_url = \"http://127.0.0.1:9/token\"\n\
         \n[upstream]\nrequest_timeout_ms = 300\n"
    );
    let app = spawn_proxy(&slow, &more).await;
    for provider in ["fake", "closed", "plain"] {
        import_of(&app, provider, "a1", OLD_TOKEN, 3600).await;
    }
    let call = |provider: &str| {
        client()
            .get(app.url(&format!("/v1/proxy/u1/{provider}/a1/x")))
            .bearer_auth(API_KEY)
            .send()
    };
    let error = own_error(call("fake").await.expect("slow"), 504).await;
    assert_eq!(error["code"], "UPSTREAM_TIMEOUT");
    let error = own_error(call("closed").await.expect("closed"), 502).await;
    assert_eq!(error["code"], "UPSTREAM_UNREACHABLE");
    let error = own_error(call("plain").await.expect("plain"), 400).await;
    assert_eq!(error["code"], "INVALID_REQUEST");
    assert_eq!(error["details"]["field"], "provider");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("api_base_url")
    );
    let error = own_error(call("nope").await.expect("unknown"), 400).await;
    assert_eq!(error["code"], "UNKNOWN_PROVIDER");
    let error = own_error(
        client()
            .get(app.url("/v1/proxy/u1/fake/missing/x"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("missing"),
        404,
    )
    .await;
    assert_eq!(error["code"], "ACCOUNT_NOT_FOUND");
    let head = client()
        .head(app.url("/v1/proxy/u1/fake/a1/x"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 405);
    assert_eq!(head.headers()["allow"], "GET, POST, PUT, PATCH, DELETE");
    assert_eq!(head.headers()["tokenwarden-error"], "INVALID_REQUEST");
    // Refused by the API-key check before the proxy's handler runs: marked all the same.
    for key in [None, Some("not-the-key")] {
        let mut request = client().get(app.url("/v1/proxy/u1/fake/a1/x"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let refused = own_error(request.send().await.expect("no key"), 401).await;
        assert_eq!(refused["code"], "UNAUTHORIZED");
    }
    // The mark is the proxy route's: other routes' answers do not carry it.
    let elsewhere = app
        .client
        .get(app.url("/v1/users/u1/connections/fake/a1/access-token"))
        .send()
        .await
        .expect("token route");
    assert_eq!(elsewhere.status(), 401);
    assert!(!elsewhere.headers().contains_key("tokenwarden-error"));

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tokenwarden_proxy_requests_total")
                && l.contains("provider=\"closed\"")
                && l.contains("status_class=\"5xx\"")),
        "{metrics}"
    );
    app.stop().await;
}

/// An API whose listener never accepts and whose accept queue is full: the kernel drops the
/// proxy's SYN, so its connect times out (rather than being refused). The 504 names the
/// connect timeout, not the wait for an answer.
#[tokio::test]
async fn a_connect_that_times_out_is_a_504_naming_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue (backlog + 1 on Linux); once full, connects hang.
    let mut queued = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
    }
    let api = MockServer::start().await;
    let more = format!(
        "\n[providers.full]\nkind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         token_url = \"http://127.0.0.1:9/token\"\napi_base_url = \"http://{addr}\"\n\
         \n[upstream]\nconnect_timeout_ms = 250\nrequest_timeout_ms = 5000\n"
    );
    let app = spawn_proxy(&api, &more).await;
    import_of(&app, "full", "a1", OLD_TOKEN, 3600).await;
    let answer = client()
        .get(app.url("/v1/proxy/u1/full/a1/x"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    let error = own_error(answer, 504).await;
    assert_eq!(error["code"], "UPSTREAM_TIMEOUT");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.contains("connect") && message.contains("250 ms"),
        "{message}"
    );
    assert_eq!(error["details"]["provider"], "full");
    drop(queued);
    drop(listener);
    app.stop().await;
}

#[tokio::test]
async fn a_token_that_cannot_be_had_is_answered_as_the_token_route_answers() {
    let api = MockServer::start().await;
    let app = spawn_proxy(&api, "").await;
    app.provider_error(400, "invalid_grant").await;
    let imported = app.import("u1", "a1", common::expired_import()).await;
    assert_eq!(imported.status(), 201);
    let answer = client()
        .get(proxied(&app, "u1", "a1", "x"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    // Marked as tokenwarden's own answer, not the API's.
    assert_eq!(answer.headers()["tokenwarden-error"], "TOKEN_EXPIRED");
    let error = error_of(answer, 409).await;
    assert_eq!(error["code"], "TOKEN_EXPIRED");
    assert_eq!(error["reconnect"], true);

    // An imported token no header can hold: the application's data, not a server failure.
    let imported = app
        .import(
            "u1",
            "a2",
            json!({"access_token": "bad\u{1}token", "expires_in": 3600}),
        )
        .await;
    assert_eq!(imported.status(), 201);
    let error = error_of(
        client()
            .get(proxied(&app, "u1", "a2", "x"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("proxied"),
        409,
    )
    .await;
    assert_eq!(error["code"], "NO_ACCESS_TOKEN");
    assert_eq!(error["reconnect"], true);
    assert!(api.received_requests().await.expect("recorded").is_empty());
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// No token in any log line

#[tokio::test]
async fn no_token_reaches_a_log_line_or_an_answer() {
    let logs = capture_logs();
    let api = MockServer::start().await;
    api_accepting_only_the_new_token(&api).await;
    Mock::given(path("/graph/me"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&api)
        .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let more = format!(
        "{}\n[providers.closed]\nkind = \"instagram\"\napi_base_url = \"http://{closed_addr}\"\n",
        instagram(&api)
    );
    let app = spawn_proxy(&api, &more).await;
    app.provider_ok(NEW_TOKEN, NEW_REFRESH_TOKEN).await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    for provider in ["ig", "closed"] {
        import_of(&app, provider, "ig-1", IG_TOKEN, 5_184_000).await;
    }
    let mut answers = Vec::new();
    let mut request_ids = Vec::new();
    for (i, url) in [
        proxied(&app, "u1", "a1", "things?q=1"),
        app.url("/v1/proxy/u1/ig/ig-1/me?fields=id"),
        app.url("/v1/proxy/u1/closed/ig-1/me?fields=id"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = client().post(url).bearer_auth(API_KEY).body("body");
        // The last brings its own request id; the others get one made.
        if i == 2 {
            request = request.header("x-request-id", "proxy-log-check-7f3a");
        }
        let response = request.send().await.expect("proxied");
        let id = response.headers().get("x-request-id").expect("request id");
        request_ids.push(id.to_str().expect("ascii").to_owned());
        let status = response.status().as_u16();
        let headers = format!("{:?}", response.headers());
        let body = response.text().await.expect("body");
        answers.push(format!("{status} {headers} {body}"));
    }
    assert!(answers[0].starts_with("200"), "{answers:?}");
    assert!(answers[1].starts_with("503"), "{answers:?}");
    assert!(answers[2].starts_with("502"), "{answers:?}");
    app.stop().await;

    let logs = String::from_utf8(logs.lock().expect("lock").clone()).expect("utf-8 logs");
    assert!(
        logs.contains("sending it again with the refreshed token"),
        "the capture works: the proxy's own lines are in it"
    );
    assert!(
        logs.contains("\"level\":\"TRACE\""),
        "TRACE lines are captured"
    );
    // Each proxied call has its request id on its answer and its access line in its span,
    // and the 502 also has the trace layer's error line, as every other route's 5xx.
    assert_eq!(request_ids[2], "proxy-log-check-7f3a");
    assert_ne!(request_ids[0], request_ids[1]);
    for (id, status) in request_ids.iter().zip([200, 503, 502]) {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("finished processing request")
                    && l.contains(&format!("\"status\":{status}"))
                    && l.contains("\"path\":\"/v1/proxy/")),
            "access line of {id}: {lines:?}"
        );
        assert_eq!(
            lines.iter().any(|l| l.contains("response failed")),
            status >= 500,
            "error line of {id}: {lines:?}"
        );
    }
    for secret in [
        OLD_TOKEN,
        NEW_TOKEN,
        REFRESH_TOKEN,
        NEW_REFRESH_TOKEN,
        IG_TOKEN,
        API_KEY,
        CLIENT_SECRET,
    ] {
        for line in logs.lines() {
            assert!(!line.contains(secret), "a log line has {secret}: {line}");
        }
        for answer in &answers {
            assert!(!answer.contains(secret), "an answer has {secret}: {answer}");
        }
    }
}

/// The path after the ids goes to the API as the client encoded it, even when it encodes
/// bytes that are not UTF-8 (a Latin-1 file name); only the ids must decode to UTF-8, and a
/// bad one is refused by name.
#[tokio::test]
async fn a_path_encoding_non_utf8_bytes_is_forwarded_as_it_is() {
    let api = MockServer::start().await;
    Mock::given(path_regex("^/api/files/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("file"))
        .mount(&api)
        .await;
    let app = spawn_proxy(&api, "").await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let response = client()
        .get(proxied(&app, "u1", "a1", "files/caf%E9.txt"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    assert_eq!(response.status(), 200);
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received[0].url.path(), "/api/files/caf%E9.txt");

    let error = error_of(
        client()
            .get(app.url("/v1/proxy/u%E9/fake/a1/files/x"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("proxied"),
        400,
    )
    .await;
    assert_eq!(error["details"]["field"], "user_id", "{error}");
    assert_eq!(api.received_requests().await.expect("recorded").len(), 1);
    app.stop().await;
}

/// An upload that keeps flowing for longer than `upstream.request_timeout_ms` goes through:
/// the wait for the answer starts once the body is sent, and the body itself times out only
/// when idle. (Before, the timer ran from the start of the call and the upload got a 504.)
#[tokio::test]
async fn a_long_upload_that_keeps_flowing_is_not_cut_off() {
    const CHUNKS: usize = 15;
    const CHUNK: usize = 1024;
    let api = MockServer::start().await;
    Mock::given(path("/api/upload"))
        .respond_with(ResponseTemplate::new(200).set_body_string("stored"))
        .mount(&api)
        .await;
    let app = spawn_proxy(
        &api,
        "\n[upstream]\nrequest_timeout_ms = 1000\n[proxy]\nmax_replay_bytes = 1024\n",
    )
    .await;
    import(&app, "u1", "a1", OLD_TOKEN).await;
    let addr = app.addr;
    // Chunked, one KiB every 150 ms: 2.25 s in all, more than twice the timeout, never idle
    // for long. Past max_replay_bytes, so it streams through.
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let head = format!(
            "POST /v1/proxy/u1/fake/a1/upload HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).expect("head");
        for _ in 0..CHUNKS {
            std::thread::sleep(std::time::Duration::from_millis(150));
            stream
                .write_all(format!("{CHUNK:x}\r\n{}\r\n", "x".repeat(CHUNK)).as_bytes())
                .expect("chunk");
        }
        stream.write_all(b"0\r\n\r\n").expect("end");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (status, answer)
    })
    .await
    .expect("upload");
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("stored"), "{body}");
    let received = api.received_requests().await.expect("recorded");
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body.len(),
        CHUNKS * CHUNK,
        "the whole body, once"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// Upstream connections: kept, and never reused when closed or abandoned

/// The app with provider `name`'s API at `http://{addr}/api` (`more` after its section) and
/// user `u1`'s connection `a1` to it.
async fn app_with_api_at(name: &str, addr: std::net::SocketAddr, more: &str) -> TestApp {
    let unused = MockServer::start().await;
    let section = format!(
        "\n[providers.{name}]\nkind = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
         token_url = \"http://127.0.0.1:9/token\"\napi_base_url = \"http://{addr}/api\"\n{more}"
    );
    let app = spawn_proxy(&unused, &section).await;
    import_of(&app, name, "a1", OLD_TOKEN, 3600).await;
    app
}

/// A body that never ends: 64 KiB chunks, as fast as they are read.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[b'x'; 65_536])))))
    }
}

/// An API that numbers the connections it accepts: `/api/close` answers with
/// `Connection: close`, `/api/endless` with a body that never ends, anything else with
/// `conn N` (the connection it came on). Returns its address.
async fn counting_api() -> std::net::SocketAddr {
    serve_numbered(|n, stream| async move {
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let path = request.uri().path();
            let mut response = hyper::Response::new(match path {
                "/api/endless" => Endless.boxed(),
                "/api/close" => Full::from("closing").boxed(),
                _ => Full::from(format!("conn {n}")).boxed(),
            });
            if path == "/api/close" {
                response
                    .headers_mut()
                    .insert("connection", "close".parse().expect("value"));
            }
            async move { Ok::<_, Infallible>(response) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// A listener on 127.0.0.1 that serves each connection it accepts with `serve`, numbered
/// from 1. Returns its address.
async fn serve_numbered<F, S>(serve: F) -> std::net::SocketAddr
where
    F: Fn(usize, tokio::net::TcpStream) -> S + Send + 'static,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(n, stream));
        }
    });
    addr
}

/// Calls are sent on kept connections; one the API closes (`Connection: close`) or one
/// whose answer the client abandoned halfway is never used again, and the next call gets
/// its whole answer on a new connection.
#[tokio::test]
async fn upstream_connections_are_kept_but_not_when_closed_or_abandoned() {
    let app = app_with_api_at("counted", counting_api().await, "").await;
    let call = |rest: &'static str| {
        let url = app.url(&format!("/v1/proxy/u1/counted/a1/{rest}"));
        async move {
            let answer = client()
                .get(url)
                .bearer_auth(API_KEY)
                .send()
                .await
                .expect("proxied");
            assert_eq!(answer.status(), 200);
            answer
        }
    };
    let text = |rest: &'static str| {
        let answer = call(rest);
        async move {
            // A connection wrongly taken back while its answer is still coming would never
            // be ready again: fail rather than hang.
            tokio::time::timeout(std::time::Duration::from_secs(10), async {
                answer.await.text().await.expect("text")
            })
            .await
            .expect("answered in time")
        }
    };
    for _ in 0..3 {
        assert_eq!(text("x").await, "conn 1");
    }
    assert_eq!(text("close").await, "closing");
    assert_eq!(text("x").await, "conn 2");
    // Half of an endless answer, then the client goes away: its connection (2) goes too.
    let mut endless = call("endless").await;
    let chunk = endless.chunk().await.expect("read").expect("a chunk");
    assert!(chunk.iter().all(|b| *b == b'x'));
    drop(endless);
    assert_eq!(text("x").await, "conn 3");
    assert_eq!(text("x").await, "conn 3");
    app.stop().await;
}

/// An API on raw TCP that numbers its connections: `POST /api/early` is answered `early N`
/// at once, before its body is read, and the body is then read for as long as it comes
/// (the connection stays open); any other request is answered `conn N`.
async fn early_answering_api() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    serve_numbered(|n, stream| async move {
        let mut stream = tokio::io::BufReader::new(stream);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let text = if head.starts_with("POST /api/early ") {
                format!("early {n}")
            } else {
                format!("conn {n}")
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if text.starts_with("early") {
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
                return;
            }
        }
    })
    .await
}

/// An API may answer before it has read a streamed upload, which then goes on. Its
/// connection is back in the pool by then but busy: the next call must not wait behind the
/// upload (it would, until its timeout), but go out on another connection.
#[tokio::test]
async fn a_call_never_waits_behind_another_calls_unfinished_upload() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let more = "\n[proxy]\nmax_replay_bytes = 16\n\n[upstream]\nrequest_timeout_ms = 3000\n";
    let app = app_with_api_at("early", early_answering_api().await, more).await;
    // An upload of 100,000 bytes (too large to keep), of which only 100 are ever sent.
    let mut upload = tokio::net::TcpStream::connect(app.url("").trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/proxy/u1/early/a1/early HTTP/1.1\r\nhost: tokenwarden\r\n\
         authorization: Bearer {API_KEY}\r\ncontent-length: 100000\r\n\r\n{}",
        "u".repeat(100)
    );
    upload.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    while !answer.ends_with(b"early 1") {
        let mut buf = [0u8; 1024];
        let read = upload.read(&mut buf).await.expect("read");
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..read]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    // The upload keeps coming, a byte every 200 ms (well inside its idle time), so
    // connection 1 stays busy with it for the rest of the test.
    let (_read, mut write) = upload.into_split();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tick.tick().await;
            if write.write_all(b"u").await.is_err() {
                return;
            }
        }
    });
    // Connection 1 is still taking the upload: this call goes on connection 2 (taking
    // connection 1 it would wait until its 3 s timeout and get a 504).
    let next = client()
        .get(app.url("/v1/proxy/u1/early/a1/x"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("proxied");
    assert_eq!(next.status(), 200);
    assert_eq!(next.text().await.expect("text"), "conn 2");
    trickle.abort();
    app.stop().await;
}
