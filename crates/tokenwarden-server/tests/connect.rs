//! The connect flow end to end: the real server (SQLite) over HTTP, with the test as the
//! user's browser (redirects not followed, cookies carried by hand) and wiremock as the
//! providers. The fake token endpoints check what real ones check: the grant type, a code
//! they issued (once), the redirect URI, the PKCE verifier against the challenge the
//! authorization URL carried (or its absence where the provider has no PKCE), and the
//! client authentication the provider wants.
//!
//! Every failure case also checks that no connection was stored and that the failure is
//! explained: the session is `failed` with the right code, and the browser went back to the
//! application with `status=failed&error=CODE` or got a page with the right status and code.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{API_KEY, CLIENT_SECRET, TestApp, capture_logs, spawn_connect};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const RETURN_URL: &str = "https://app.example.com/connected";
const FAKE_AUTHORIZE: &str = "https://auth.fake.example/oauth/authorize";
const CONNECT_SECTION: &str =
    "\n[connect]\nreturn_urls = [\"https://app.example.com/connected\"]\n";
const TIKTOK_SECRET: &str = "tiktok-client-secret-SECRET-77";
const REDDIT_SECRET: &str = "reddit-client-secret-SECRET-88";
const REDDIT_UA: &str = "web:tokenwarden-tests:1.0 (by /u/tokenwarden)";
const INSTAGRAM_SECRET: &str = "instagram-app-secret-SECRET-99";

// ---------------------------------------------------------------------------------------
// Starting the app

/// `[providers.fake]` (generic oauth2) with an authorization URL and scopes, plus
/// `[connect]` and `sections`.
async fn spawn(sections: &str) -> TestApp {
    spawn_connect(
        "",
        &format!(
            "authorization_url = \"{FAKE_AUTHORIZE}\"\nscopes = [\"read\", \"write\"]\n\
             {CONNECT_SECTION}{sections}"
        ),
    )
    .await
}

fn tiktok_section(upstream: &MockServer) -> String {
    format!(
        "\n[providers.tiktok]\ncatalog = \"tiktok\"\nclient_id = \"tiktok-client-key\"\n\
         client_secret = \"{TIKTOK_SECRET}\"\ntoken_url = \"{}/v2/oauth/token/\"\n",
        upstream.uri()
    )
}

fn reddit_section(upstream: &MockServer) -> String {
    format!(
        "\n[providers.reddit]\nkind = \"reddit\"\nclient_id = \"reddit-client-id\"\n\
         client_secret = \"{REDDIT_SECRET}\"\nuser_agent = \"{REDDIT_UA}\"\n\
         token_url = \"{u}/api/v1/access_token\"\nuserinfo_url = \"{u}/api/v1/me\"\n",
        u = upstream.uri()
    )
}

fn instagram_section(upstream: &MockServer) -> String {
    format!(
        "\n[providers.instagram]\nkind = \"instagram\"\nclient_id = \"instagram-app-id\"\n\
         client_secret = \"{INSTAGRAM_SECRET}\"\ntoken_url = \"{u}/oauth/access_token\"\n\
         exchange_url = \"{u}/access_token\"\nuserinfo_url = \"{u}/me?fields=user_id,username\"\n",
        u = upstream.uri()
    )
}

// ---------------------------------------------------------------------------------------
// What the test saw: every page body and every URL the browser was sent back to, so the
// secrets test can check none of them carries a secret.

fn seen() -> &'static Mutex<Vec<String>> {
    static SEEN: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

fn remember(text: String) {
    seen().lock().expect("lock").push(text);
}

// ---------------------------------------------------------------------------------------
// A fake token endpoint that checks what a real one checks

/// How the provider wants the client to authenticate at its token endpoint.
#[derive(Clone)]
enum ClientAuth {
    /// In the form: `{id_param}={id}&client_secret={secret}`, no Authorization header.
    Post {
        id_param: &'static str,
        id: &'static str,
        secret: &'static str,
    },
    /// HTTP Basic, and no client secret in the form.
    Basic {
        id: &'static str,
        secret: &'static str,
    },
}

struct Issued {
    /// The PKCE challenge of the authorization request the code answers; `None` for a
    /// provider without PKCE (then a verifier must not be sent).
    challenge: Option<String>,
    answer: (u16, Value),
}

struct TokenState {
    redirect_uri: String,
    client: ClientAuth,
    user_agent: Option<&'static str>,
    /// Codes issued and not yet redeemed.
    codes: HashMap<String, Issued>,
    /// What a `refresh_token` grant gets.
    refresh_answer: (u16, Value),
    /// Code exchanges received (valid or not).
    exchanges: usize,
    verifiers: Vec<String>,
    problems: Vec<String>,
}

#[derive(Clone)]
struct TokenEndpoint(Arc<Mutex<TokenState>>);

impl TokenEndpoint {
    /// Mounts the endpoint at `POST {server}{at}`.
    async fn mount(server: &MockServer, at: &str, app: &TestApp, client: ClientAuth) -> Self {
        let endpoint = Self(Arc::new(Mutex::new(TokenState {
            redirect_uri: app.url("/connect/callback"),
            client,
            user_agent: None,
            codes: HashMap::new(),
            refresh_answer: (400, json!({"error": "invalid_grant"})),
            exchanges: 0,
            verifiers: Vec::new(),
            problems: Vec::new(),
        })));
        Mock::given(method("POST"))
            .and(path(at))
            .respond_with(endpoint.clone())
            .mount(server)
            .await;
        endpoint
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.0.lock().expect("lock")
    }

    fn require_user_agent(&self, ua: &'static str) {
        self.state().user_agent = Some(ua);
    }

    /// The provider sends the browser back with `code` after the authorization request
    /// `opened`; redeeming it gets `answer` (status 200).
    fn issue(&self, code: &str, opened: &Opened, answer: Value) {
        self.issue_with(code, opened, (200, answer));
    }

    fn issue_with(&self, code: &str, opened: &Opened, answer: (u16, Value)) {
        let challenge = opened.params.get("code_challenge").cloned();
        self.state()
            .codes
            .insert(code.to_owned(), Issued { challenge, answer });
    }

    fn exchanges(&self) -> usize {
        self.state().exchanges
    }

    fn verifiers(&self) -> Vec<String> {
        self.state().verifiers.clone()
    }

    /// Asserts every request was one a real provider would have accepted.
    fn assert_no_problem(&self) {
        let problems = self.state().problems.clone();
        assert!(
            problems.is_empty(),
            "the token endpoint refused: {problems:#?}"
        );
    }
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn form(body: &[u8]) -> (BTreeMap<String, String>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut repeated = Vec::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            repeated.push(k.into_owned());
        }
    }
    (out, repeated)
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

impl wiremock::Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut s = self.state();
        let (f, repeated) = form(&request.body);
        let get = |k: &str| f.get(k).map(String::as_str);
        if get("grant_type") == Some("refresh_token") {
            let (status, body) = s.refresh_answer.clone();
            return ResponseTemplate::new(status).set_body_json(body);
        }
        s.exchanges += 1;
        let mut problems = Vec::new();
        if !repeated.is_empty() {
            problems.push(format!("repeated parameters {repeated:?}"));
        }
        if header(request, "content-type") != Some("application/x-www-form-urlencoded") {
            problems.push(format!(
                "content type {:?}",
                header(request, "content-type")
            ));
        }
        if get("grant_type") != Some("authorization_code") {
            problems.push(format!("grant_type {:?}", get("grant_type")));
        }
        if get("redirect_uri") != Some(s.redirect_uri.as_str()) {
            problems.push(format!(
                "redirect_uri {:?}, not {}",
                get("redirect_uri"),
                s.redirect_uri
            ));
        }
        let verifier = get("code_verifier");
        if let Some(v) = verifier {
            s.verifiers.push(v.to_owned());
        }
        // A code is good once (RFC 6749 §4.1.2), and only with its verifier (RFC 7636 §4.6).
        let issued = get("code").and_then(|code| s.codes.remove(code));
        let answer = match issued {
            None => {
                problems.push("a code that was not issued, or was already used".to_owned());
                None
            }
            Some(issued) => {
                match (&issued.challenge, verifier) {
                    (Some(challenge), Some(v)) => {
                        let shaped = (43..=128).contains(&v.len())
                            && v.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                        if !shaped {
                            problems.push("code_verifier is not RFC 7636 shaped".to_owned());
                        }
                        if &s256(v) != challenge {
                            problems.push(
                                "code_verifier does not hash to the code_challenge".to_owned(),
                            );
                        }
                    }
                    (Some(_), None) => problems.push("no code_verifier".to_owned()),
                    (None, Some(_)) => {
                        problems.push("a code_verifier without a code_challenge".to_owned());
                    }
                    (None, None) => {}
                }
                Some(issued.answer)
            }
        };
        let authorization = header(request, "authorization");
        match s.client.clone() {
            ClientAuth::Post {
                id_param,
                id,
                secret,
            } => {
                if get(id_param) != Some(id) {
                    problems.push(format!("{id_param} {:?}", get(id_param)));
                }
                if get("client_secret") != Some(secret) {
                    problems.push("client_secret missing or wrong".to_owned());
                }
                if authorization.is_some() {
                    problems.push("an Authorization header besides the form".to_owned());
                }
            }
            ClientAuth::Basic { id, secret } => {
                let expected = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
                if authorization != Some(expected.as_str()) {
                    problems.push("Basic authentication missing or wrong".to_owned());
                }
                if f.contains_key("client_secret") {
                    problems.push("client_secret in the form as well".to_owned());
                }
            }
        }
        if let Some(ua) = s.user_agent
            && header(request, "user-agent") != Some(ua)
        {
            problems.push(format!("User-Agent {:?}", header(request, "user-agent")));
        }
        match answer {
            Some((status, body)) if problems.is_empty() => {
                ResponseTemplate::new(status).set_body_json(body)
            }
            _ => {
                s.problems.extend(problems);
                ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"}))
            }
        }
    }
}

/// A GET endpoint that wants `Bearer {token}` (and the User-Agent, when given) and answers
/// `answer`; counts its calls and records what it refused.
async fn mount_bearer_get(
    server: &MockServer,
    at: &str,
    token: &'static str,
    user_agent: Option<&'static str>,
    answer: Value,
) -> Arc<Mutex<Vec<String>>> {
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = problems.clone();
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(move |request: &Request| {
            let mut problems = Vec::new();
            if header(request, "authorization") != Some(format!("Bearer {token}").as_str()) {
                problems.push("no Bearer token, or another one".to_owned());
            }
            if let Some(ua) = user_agent
                && header(request, "user-agent") != Some(ua)
            {
                problems.push(format!("User-Agent {:?}", header(request, "user-agent")));
            }
            if problems.is_empty() {
                ResponseTemplate::new(200).set_body_json(answer.clone())
            } else {
                seen.lock().expect("lock").extend(problems);
                ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_token"}))
            }
        })
        .mount(server)
        .await;
    problems
}

// ---------------------------------------------------------------------------------------
// The browser

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

struct Created {
    id: String,
    connect_url: String,
    reconnect: bool,
}

async fn post_session(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/connect/sessions"))
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .expect("request")
}

/// Creates a session (asserting 201).
async fn create(app: &TestApp, body: Value) -> Created {
    let response = post_session(app, &body).await;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{answer}");
    let connect_url = answer["connect_url"]
        .as_str()
        .expect("connect_url")
        .to_owned();
    assert!(
        connect_url.starts_with(&app.url("/connect/")),
        "{connect_url} is under public_url"
    );
    Created {
        id: answer["id"].as_str().expect("id").to_owned(),
        connect_url,
        reconnect: answer["reconnect"].as_bool().expect("reconnect"),
    }
}

async fn session(app: &TestApp, id: &str) -> Value {
    let response = app
        .get(&format!("/v1/connect/sessions/{id}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("json")
}

/// What opening a link gave the browser.
struct Opened {
    /// The authorization request's parameters (each appears once).
    params: BTreeMap<String, String>,
    state: String,
    cookie: (String, String),
}

/// Opens `connect_url` as a browser: asserts a 302 to `authorization_url` with the flow's
/// parameters, and the flow cookie.
async fn open(app: &TestApp, connect_url: &str, authorization_url: &str) -> Opened {
    let response = browser().get(connect_url).send().await.expect("open");
    assert_eq!(response.status().as_u16(), 302, "opening the link");
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    let location = Url::parse(
        response.headers()[LOCATION]
            .to_str()
            .expect("ascii location"),
    )
    .expect("absolute location");
    assert_eq!(
        &location[..url::Position::AfterPath],
        authorization_url,
        "sent to the provider's authorization endpoint"
    );
    let mut params = BTreeMap::new();
    for (k, v) in location.query_pairs() {
        assert!(
            params.insert(k.to_string(), v.into_owned()).is_none(),
            "{k} repeated in {location}"
        );
    }
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["redirect_uri"], app.url("/connect/callback"));
    let state = params["state"].clone();
    assert!(state.len() >= 43, "state has 256 bits");

    let cookies: Vec<&str> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii cookie"))
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let mut parts = cookies[0].split(';').map(str::trim);
    let (name, value) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .expect("name=value");
    let hex = name.strip_prefix("tw_connect_").expect("tw_connect_ name");
    assert!(
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{name}"
    );
    assert!(value.len() >= 43, "the cookie value is a fresh secret");
    let attributes: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    for wanted in ["httponly", "samesite=lax", "path=/connect", "max-age=900"] {
        assert!(
            attributes.iter().any(|a| a == wanted),
            "Set-Cookie lacks {wanted}: {}",
            cookies[0]
        );
    }
    assert!(
        !attributes.iter().any(|a| a == "secure"),
        "not Secure over http"
    );
    Opened {
        params,
        state,
        cookie: (name.to_owned(), value.to_owned()),
    }
}

/// The browser arrives at the callback with `query`, sending `cookie` if any.
async fn callback(
    app: &TestApp,
    query: &[(&str, &str)],
    cookie: Option<&(String, String)>,
) -> reqwest::Response {
    let url = Url::parse_with_params(&app.url("/connect/callback"), query).expect("url");
    let mut request = browser().get(url);
    if let Some((name, value)) = cookie {
        request = request.header(COOKIE, format!("{name}={value}"));
    }
    request.send().await.expect("callback")
}

/// The provider's normal answer: back with the code and the state, in the same browser.
async fn come_back(app: &TestApp, opened: &Opened, code: &str) -> reqwest::Response {
    callback(
        app,
        &[("code", code), ("state", &opened.state)],
        Some(&opened.cookie),
    )
    .await
}

/// Asserts a 302 back to the application's return URL (its own query kept) and returns the
/// query.
fn back_to_app(response: &reqwest::Response) -> BTreeMap<String, String> {
    assert_eq!(
        response.status().as_u16(),
        302,
        "back to the application: {:?}",
        response.headers()
    );
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let location = response.headers()[LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned();
    remember(location.clone());
    let url = Url::parse(&location).expect("absolute");
    assert_eq!(&url[..url::Position::AfterPath], RETURN_URL, "{location}");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Asserts the callback cleared the flow cookie.
fn assert_cookie_cleared(response: &reqwest::Response, opened: &Opened) {
    let set = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        set.starts_with(&format!("{}=;", opened.cookie.0)) && set.contains("Max-Age=0"),
        "the flow cookie is cleared: {set:?}"
    );
}

fn completed(id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("session_id".to_owned(), id.to_owned()),
        ("status".to_owned(), "completed".to_owned()),
    ])
}

fn failed(id: &str, code: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("session_id".to_owned(), id.to_owned()),
        ("status".to_owned(), "failed".to_owned()),
        ("error".to_owned(), code.to_owned()),
    ])
}

/// Asserts a page with `status` showing `code`; returns its body.
async fn page(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "page status");
    let headers = response.headers().clone();
    assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    assert_eq!(headers["content-security-policy"], "default-src 'none'");
    assert!(headers.get(LOCATION).is_none());
    let body = response.text().await.expect("body");
    remember(body.clone());
    assert!(
        body.contains(&format!("<code>{code}</code>")),
        "the page shows {code}:\n{body}"
    );
    body
}

/// The session is `failed` with `code`, names no connection, and says why.
async fn assert_session_failed(app: &TestApp, id: &str, code: &str) {
    let s = session(app, id).await;
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(s["error"]["code"], code, "{s}");
    assert!(
        s["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(s["connection"].is_null(), "{s}");
}

/// `user`'s connections at `provider`.
async fn connections(app: &TestApp, user: &str, provider: &str) -> Vec<Value> {
    let response = app
        .get(&format!(
            "/v1/connections?user_id={user}&provider={provider}"
        ))
        .send()
        .await
        .expect("list");
    assert_eq!(response.status().as_u16(), 200);
    let list: Value = response.json().await.expect("json");
    list["items"].as_array().expect("items").clone()
}

fn connection_path(user: &str, provider: &str, account: &str) -> String {
    format!("/v1/users/{user}/connections/{provider}/{account}")
}

async fn connection(app: &TestApp, user: &str, provider: &str, account: &str) -> Value {
    let response = app
        .get(&connection_path(user, provider, account))
        .send()
        .await
        .expect("get");
    assert_eq!(
        response.status().as_u16(),
        200,
        "{user}/{provider}/{account}"
    );
    response.json().await.expect("json")
}

async fn connection_status(app: &TestApp, user: &str, provider: &str, account: &str) -> u16 {
    app.get(&connection_path(user, provider, account))
        .send()
        .await
        .expect("get")
        .status()
        .as_u16()
}

async fn access_token(app: &TestApp, user: &str, provider: &str, account: &str) -> Value {
    let response = app
        .get(&format!(
            "{}/access-token",
            connection_path(user, provider, account)
        ))
        .send()
        .await
        .expect("access token");
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.expect("json")
}

/// Seconds from now until the RFC 3339 `at`.
fn seconds_until(at: &Value) -> i64 {
    let at = time::OffsetDateTime::parse(
        at.as_str().expect("a date"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    (at - time::OffsetDateTime::now_utc()).whole_seconds()
}

fn fake_answer(access: &str, refresh: &str) -> Value {
    json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": refresh,
        "scope": "read write",
    })
}

async fn fake_endpoint(app: &TestApp) -> TokenEndpoint {
    TokenEndpoint::mount(
        &app.provider,
        "/token",
        app,
        ClientAuth::Post {
            id_param: "client_id",
            id: "client-id-1",
            secret: CLIENT_SECRET,
        },
    )
    .await
}

/// A session for `fake`, account `account`, of `user`.
async fn fake_session(app: &TestApp, user: &str, account: &str) -> Created {
    create(
        app,
        json!({"user_id": user, "provider": "fake", "account_id": account,
               "return_url": RETURN_URL}),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// 1. The generic provider

#[tokio::test]
async fn generic_provider_happy_path() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = create(
        &app,
        json!({"user_id": "u1", "provider": "fake", "account_id": "acct-1",
               "return_url": format!("{RETURN_URL}?tab=fake&x=1")}),
    )
    .await;
    assert!(!created.reconnect);
    let pending = session(&app, &created.id).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["account_id"], "acct-1");

    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    let p = &opened.params;
    assert_eq!(p["client_id"], "client-id-1");
    assert_eq!(p["scope"], "read write");
    assert_eq!(p["code_challenge_method"], "S256");
    assert_eq!(p["code_challenge"].len(), 43);
    assert!(!p.contains_key("nonce"), "no nonce without openid");
    assert_eq!(
        session(&app, &created.id).await["status"],
        "pending",
        "opened is still pending to the application"
    );

    endpoint.issue(
        "code-fake-1",
        &opened,
        fake_answer("fake-access-1", "fake-refresh-1"),
    );
    let response = come_back(&app, &opened, "code-fake-1").await;
    endpoint.assert_no_problem();
    let mut query = back_to_app(&response);
    assert_cookie_cleared(&response, &opened);
    assert_eq!(
        query.remove("tab").as_deref(),
        Some("fake"),
        "own query kept"
    );
    assert_eq!(query.remove("x").as_deref(), Some("1"));
    assert_eq!(query, completed(&created.id));
    assert_eq!(endpoint.exchanges(), 1);

    let conn = connection(&app, "u1", "fake", "acct-1").await;
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["has_refresh_token"], true);
    assert_eq!(conn["scopes"], json!(["read", "write"]));
    let token = access_token(&app, "u1", "fake", "acct-1").await;
    assert_eq!(token["access_token"], "fake-access-1");
    let left = seconds_until(&token["expires_at"]);
    assert!((3500..=3600).contains(&left), "expires in ~1 h: {left}");

    let done = session(&app, &created.id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["account_id"], "acct-1");
    assert!(done["error"].is_null());
    assert_eq!(done["connection"]["account_id"], "acct-1");
    assert_eq!(done["connection"]["status"], "active");
    app.stop().await;
}

#[tokio::test]
async fn generic_provider_needs_an_account_id() {
    let app = spawn("").await;
    let response = post_session(
        &app,
        &json!({"user_id": "u1", "provider": "fake", "return_url": RETURN_URL}),
    )
    .await;
    let error = common::error_of(response, 400).await;
    assert_eq!(error["code"], "INVALID_REQUEST");
    assert_eq!(error["details"]["field"], "account_id", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("account_id")),
        "{error}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2-4. Catalog providers

#[tokio::test]
async fn tiktok_happy_path() {
    let upstream = MockServer::start().await;
    let app = spawn(&tiktok_section(&upstream)).await;
    let endpoint = TokenEndpoint::mount(
        &upstream,
        "/v2/oauth/token/",
        &app,
        ClientAuth::Post {
            id_param: "client_key",
            id: "tiktok-client-key",
            secret: TIKTOK_SECRET,
        },
    )
    .await;
    let created = create(
        &app,
        json!({"user_id": "u2", "provider": "tiktok", "return_url": RETURN_URL}),
    )
    .await;
    let opened = open(
        &app,
        &created.connect_url,
        "https://www.tiktok.com/v2/auth/authorize/",
    )
    .await;
    let p = &opened.params;
    assert_eq!(p["client_key"], "tiktok-client-key");
    assert!(!p.contains_key("client_id"), "TikTok calls it client_key");
    assert_eq!(p["scope"], "user.info.basic");
    assert_eq!(p["code_challenge_method"], "S256");

    endpoint.issue(
        "code-tiktok-1",
        &opened,
        json!({
            "access_token": "act.tiktok-access-1",
            "expires_in": 86400,
            "open_id": "tiktok-open-id-1",
            "refresh_token": "rft.tiktok-refresh-1",
            "refresh_expires_in": 31536000,
            "scope": "user.info.basic",
            "token_type": "Bearer",
        }),
    );
    let response = come_back(&app, &opened, "code-tiktok-1").await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));

    let conn = connection(&app, "u2", "tiktok", "tiktok-open-id-1").await;
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["scopes"], json!(["user.info.basic"]));
    let refresh_left = seconds_until(&conn["refresh_expires_at"]);
    assert!(refresh_left > 364 * 86_400, "{refresh_left}");
    let token = access_token(&app, "u2", "tiktok", "tiktok-open-id-1").await;
    assert_eq!(token["access_token"], "act.tiktok-access-1");
    let done = session(&app, &created.id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["account_id"], "tiktok-open-id-1");
    assert_eq!(done["connection"]["account_id"], "tiktok-open-id-1");
    app.stop().await;
}

#[tokio::test]
async fn reddit_happy_path() {
    let upstream = MockServer::start().await;
    let app = spawn(&reddit_section(&upstream)).await;
    let endpoint = TokenEndpoint::mount(
        &upstream,
        "/api/v1/access_token",
        &app,
        ClientAuth::Basic {
            id: "reddit-client-id",
            secret: REDDIT_SECRET,
        },
    )
    .await;
    endpoint.require_user_agent(REDDIT_UA);
    let me = mount_bearer_get(
        &upstream,
        "/api/v1/me",
        "reddit-access-1",
        Some(REDDIT_UA),
        json!({"name": "some_user", "id": "t2_x", "icon_img": ""}),
    )
    .await;
    let created = create(
        &app,
        json!({"user_id": "u3", "provider": "reddit", "return_url": RETURN_URL}),
    )
    .await;
    let opened = open(
        &app,
        &created.connect_url,
        "https://www.reddit.com/api/v1/authorize",
    )
    .await;
    let p = &opened.params;
    assert_eq!(p["client_id"], "reddit-client-id");
    assert_eq!(p["duration"], "permanent");
    assert_eq!(p["scope"], "identity");
    assert!(
        !p.contains_key("code_challenge") && !p.contains_key("code_challenge_method"),
        "Reddit has no PKCE: {p:?}"
    );

    endpoint.issue(
        "code-reddit-1",
        &opened,
        json!({
            "access_token": "reddit-access-1",
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": "reddit-refresh-1",
            "scope": "identity",
        }),
    );
    let response = come_back(&app, &opened, "code-reddit-1").await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));
    assert!(me.lock().expect("lock").is_empty(), "{me:?}");
    assert_eq!(
        upstream
            .received_requests()
            .await
            .expect("recorded")
            .iter()
            .filter(|r| r.url.path() == "/api/v1/me")
            .count(),
        1
    );

    // The account id is the user name (it never changes), not the t2_ id.
    let conn = connection(&app, "u3", "reddit", "some_user").await;
    assert_eq!(conn["status"], "active");
    assert_eq!(conn["has_refresh_token"], true);
    assert_eq!(connection_status(&app, "u3", "reddit", "t2_x").await, 404);
    let token = access_token(&app, "u3", "reddit", "some_user").await;
    assert_eq!(token["access_token"], "reddit-access-1");
    assert_eq!(session(&app, &created.id).await["account_id"], "some_user");
    app.stop().await;
}

#[tokio::test]
async fn instagram_happy_path_stores_the_long_lived_token() {
    let upstream = MockServer::start().await;
    let app = spawn(&instagram_section(&upstream)).await;
    let endpoint = TokenEndpoint::mount(
        &upstream,
        "/oauth/access_token",
        &app,
        ClientAuth::Post {
            id_param: "client_id",
            id: "instagram-app-id",
            secret: INSTAGRAM_SECRET,
        },
    )
    .await;
    let exchange_problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = exchange_problems.clone();
    Mock::given(method("GET"))
        .and(path("/access_token"))
        .respond_with(move |request: &Request| {
            let q: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
            let wanted = BTreeMap::from([
                ("grant_type".to_owned(), "ig_exchange_token".to_owned()),
                ("client_secret".to_owned(), INSTAGRAM_SECRET.to_owned()),
                ("access_token".to_owned(), "IG-short-lived-1".to_owned()),
            ]);
            if q == wanted {
                ResponseTemplate::new(200).set_body_json(json!({
                    "access_token": "IG-long-lived-1",
                    "token_type": "bearer",
                    "expires_in": 5183944,
                }))
            } else {
                recorded
                    .lock()
                    .expect("lock")
                    .push(format!("exchange query {:?}", q.keys()));
                ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "bad"}}))
            }
        })
        .mount(&upstream)
        .await;
    let me = mount_bearer_get(
        &upstream,
        "/me",
        "IG-long-lived-1",
        None,
        json!({"user_id": "17841400000000001", "username": "someone"}),
    )
    .await;
    let created = create(
        &app,
        json!({"user_id": "u4", "provider": "instagram", "return_url": RETURN_URL}),
    )
    .await;
    let opened = open(
        &app,
        &created.connect_url,
        "https://www.instagram.com/oauth/authorize",
    )
    .await;
    assert_eq!(opened.params["client_id"], "instagram-app-id");
    assert_eq!(opened.params["scope"], "instagram_business_basic");

    endpoint.issue(
        "code-instagram-1",
        &opened,
        json!({"data": [{
            "access_token": "IG-short-lived-1",
            "user_id": "17841400000000001",
            "permissions": "instagram_business_basic",
        }]}),
    );
    let response = come_back(&app, &opened, "code-instagram-1").await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));
    assert!(
        exchange_problems.lock().expect("lock").is_empty(),
        "{exchange_problems:?}"
    );
    assert!(me.lock().expect("lock").is_empty(), "{me:?}");

    let token = access_token(&app, "u4", "instagram", "17841400000000001").await;
    assert_eq!(
        token["access_token"], "IG-long-lived-1",
        "the long-lived one"
    );
    let left = seconds_until(&token["expires_at"]);
    assert!(
        (5_183_944 - 120..=5_183_944).contains(&left),
        "expires in ~60 days: {left}"
    );
    let done = session(&app, &created.id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["account_id"], "17841400000000001");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// 5. What goes wrong

#[tokio::test]
async fn a_return_url_not_listed_is_refused() {
    let app = spawn("").await;
    for url in [
        "https://evil.example/connected",
        "https://app.example.com/other",
        "https://app.example.com/connected#frag",
        "not a url",
    ] {
        let response = post_session(
            &app,
            &json!({"user_id": "u", "provider": "fake", "account_id": "a", "return_url": url}),
        )
        .await;
        let error = common::error_of(response, 400).await;
        assert_eq!(error["code"], "INVALID_REQUEST", "{url}");
        assert_eq!(error["details"]["field"], "return_url", "{url}: {error}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_the_first_connection_stays() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u5", "acct-5").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue("code-replay", &opened, fake_answer("replay-access", "r"));
    let first = come_back(&app, &opened, "code-replay").await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&first), completed(&created.id));
    let second = come_back(&app, &opened, "code-replay").await;
    page(second, 400, "CONNECT_STATE_INVALID").await;
    assert_eq!(
        endpoint.exchanges(),
        1,
        "the code went to the provider once"
    );
    endpoint.assert_no_problem();
    let token = access_token(&app, "u5", "fake", "acct-5").await;
    assert_eq!(token["access_token"], "replay-access");
    assert_eq!(session(&app, &created.id).await["status"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn of_two_racing_browsers_or_callbacks_exactly_one_wins() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u17", "acct-17").await;
    // Two browsers open one link at once: one goes to the provider, the other gets a page.
    let (a, b) = tokio::join!(
        browser().get(&created.connect_url).send(),
        browser().get(&created.connect_url).send(),
    );
    let mut statuses = [
        a.expect("a").status().as_u16(),
        b.expect("b").status().as_u16(),
    ];
    statuses.sort_unstable();
    assert_eq!(statuses, [302, 410]);

    // The provider's answer arrives twice at once (a double submit): one exchange.
    let created = fake_session(&app, "u17", "acct-17b").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue("code-race", &opened, fake_answer("race-access", "r"));
    let (a, b) = tokio::join!(
        come_back(&app, &opened, "code-race"),
        come_back(&app, &opened, "code-race"),
    );
    let (won, lost) = if a.status().as_u16() == 302 {
        (a, b)
    } else {
        (b, a)
    };
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&won), completed(&created.id));
    page(lost, 400, "CONNECT_STATE_INVALID").await;
    assert_eq!(endpoint.exchanges(), 1);
    assert_eq!(
        access_token(&app, "u17", "fake", "acct-17b").await["access_token"],
        "race-access"
    );
    app.stop().await;
}

#[tokio::test]
async fn declined_consent_returns_access_denied_without_a_code_exchange() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u6", "acct-6").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    let response = callback(
        &app,
        &[
            ("error", "access_denied"),
            ("error_description", "The user denied"),
            ("state", &opened.state),
        ],
        Some(&opened.cookie),
    )
    .await;
    assert_eq!(back_to_app(&response), failed(&created.id, "ACCESS_DENIED"));
    assert_cookie_cleared(&response, &opened);
    assert_eq!(endpoint.exchanges(), 0);
    assert_session_failed(&app, &created.id, "ACCESS_DENIED").await;
    assert!(connections(&app, "u6", "fake").await.is_empty());
    assert_eq!(connection_status(&app, "u6", "fake", "acct-6").await, 404);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_code_exchange_is_code_exchange_failed() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u7", "acct-7").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue_with(
        "code-refused",
        &opened,
        (
            400,
            json!({"error": "invalid_grant", "error_description": "code expired"}),
        ),
    );
    let response = come_back(&app, &opened, "code-refused").await;
    assert_eq!(
        back_to_app(&response),
        failed(&created.id, "CODE_EXCHANGE_FAILED")
    );
    endpoint.assert_no_problem();
    assert_eq!(endpoint.exchanges(), 1);
    assert_session_failed(&app, &created.id, "CODE_EXCHANGE_FAILED").await;
    assert!(connections(&app, "u7", "fake").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_callback_without_the_cookie_is_refused_and_the_right_browser_can_still_finish() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u8", "acct-8").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue("code-cookie", &opened, fake_answer("cookie-access", "r"));
    let query = [("code", "code-cookie"), ("state", opened.state.as_str())];

    page(
        callback(&app, &query, None).await,
        400,
        "CONNECT_STATE_INVALID",
    )
    .await;
    let wrong = (opened.cookie.0.clone(), "x".repeat(43));
    page(
        callback(&app, &query, Some(&wrong)).await,
        400,
        "CONNECT_STATE_INVALID",
    )
    .await;
    assert_eq!(endpoint.exchanges(), 0);
    assert_eq!(session(&app, &created.id).await["status"], "pending");
    assert!(connections(&app, "u8", "fake").await.is_empty());

    let response = callback(&app, &query, Some(&opened.cookie)).await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));
    assert_eq!(
        access_token(&app, "u8", "fake", "acct-8").await["access_token"],
        "cookie-access"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_callback_with_another_sessions_cookie_is_refused() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let a = fake_session(&app, "u9", "acct-a").await;
    let b = fake_session(&app, "u9", "acct-b").await;
    let opened_a = open(&app, &a.connect_url, FAKE_AUTHORIZE).await;
    let opened_b = open(&app, &b.connect_url, FAKE_AUTHORIZE).await;
    assert_ne!(opened_a.cookie.0, opened_b.cookie.0, "one cookie per flow");
    endpoint.issue("code-a", &opened_a, fake_answer("a-access", "r"));
    let query = [("code", "code-a"), ("state", opened_a.state.as_str())];

    // B's cookie value under A's name (a browser that opened B's link, not A's) ...
    let swapped = (opened_a.cookie.0.clone(), opened_b.cookie.1.clone());
    page(
        callback(&app, &query, Some(&swapped)).await,
        400,
        "CONNECT_STATE_INVALID",
    )
    .await;
    // ... and B's cookie as it is.
    page(
        callback(&app, &query, Some(&opened_b.cookie)).await,
        400,
        "CONNECT_STATE_INVALID",
    )
    .await;
    assert_eq!(endpoint.exchanges(), 0);
    assert!(connections(&app, "u9", "fake").await.is_empty());
    assert_eq!(session(&app, &a.id).await["status"], "pending");
    assert_eq!(session(&app, &b.id).await["status"], "pending");
    app.stop().await;
}

#[tokio::test]
async fn a_link_opened_twice_is_gone() {
    let app = spawn("").await;
    let created = fake_session(&app, "u10", "acct-10").await;
    let first = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    let again = browser()
        .get(&created.connect_url)
        .send()
        .await
        .expect("open again");
    assert!(again.headers().get(SET_COOKIE).is_none(), "no second flow");
    page(again, 410, "CONNECT_SESSION_EXPIRED").await;
    // The first browser's flow is untouched.
    assert_eq!(session(&app, &created.id).await["status"], "pending");
    assert!(!first.state.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn bad_callbacks_and_links_get_pages() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u11", "acct-11").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue("code-11", &opened, fake_answer("a11", "r11"));
    let state = opened.state.as_str();

    // The state twice (even the same value): ambiguous, treated as forged.
    let repeated = callback(
        &app,
        &[("code", "code-11"), ("state", state), ("state", state)],
        Some(&opened.cookie),
    )
    .await;
    page(repeated, 400, "CONNECT_STATE_INVALID").await;
    // A code twice.
    let repeated = callback(
        &app,
        &[("code", "code-11"), ("code", "other"), ("state", state)],
        Some(&opened.cookie),
    )
    .await;
    page(repeated, 400, "CONNECT_STATE_INVALID").await;
    // A state tokenwarden never made, one that could not be a state, and none.
    let unknown = URL_SAFE_NO_PAD.encode([7u8; 32]);
    for query in [
        vec![("code", "code-11"), ("state", unknown.as_str())],
        vec![("code", "code-11"), ("state", "<script>")],
        vec![("code", "code-11")],
    ] {
        page(
            callback(&app, &query, Some(&opened.cookie)).await,
            400,
            "CONNECT_STATE_INVALID",
        )
        .await;
    }
    assert_eq!(endpoint.exchanges(), 0);
    assert_eq!(session(&app, &created.id).await["status"], "pending");

    // Links that are not links.
    for token in [
        "garbage",
        "x".repeat(43).as_str(),
        "has%20space-but-long-enough",
    ] {
        let response = browser()
            .get(app.url(&format!("/connect/{token}")))
            .send()
            .await
            .expect("open");
        page(response, 404, "CONNECT_SESSION_NOT_FOUND").await;
    }
    // The real flow is still good after all that.
    let response = come_back(&app, &opened, "code-11").await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));
    app.stop().await;
}

#[tokio::test]
async fn reconnecting_as_another_account_is_account_mismatch() {
    let upstream = MockServer::start().await;
    let app = spawn(&tiktok_section(&upstream)).await;
    let endpoint = TokenEndpoint::mount(
        &upstream,
        "/v2/oauth/token/",
        &app,
        ClientAuth::Post {
            id_param: "client_key",
            id: "tiktok-client-key",
            secret: TIKTOK_SECRET,
        },
    )
    .await;
    let imported = app
        .client
        .put(app.url(&connection_path("u12", "tiktok", "open-id-A")))
        .bearer_auth(API_KEY)
        .json(
            &json!({"access_token": "A-access", "refresh_token": "A-refresh",
                      "expires_in": 86400, "metadata": {"team": 7}}),
        )
        .send()
        .await
        .expect("import");
    assert_eq!(imported.status().as_u16(), 201);
    let created = create(
        &app,
        json!({"user_id": "u12", "provider": "tiktok", "account_id": "open-id-A",
               "return_url": RETURN_URL}),
    )
    .await;
    assert!(created.reconnect, "account_id names an existing connection");
    let opened = open(
        &app,
        &created.connect_url,
        "https://www.tiktok.com/v2/auth/authorize/",
    )
    .await;
    endpoint.issue(
        "code-other-account",
        &opened,
        json!({"access_token": "B-access", "expires_in": 86400, "open_id": "open-id-B",
               "refresh_token": "B-refresh", "refresh_expires_in": 31536000,
               "scope": "user.info.basic", "token_type": "Bearer"}),
    );
    let response = come_back(&app, &opened, "code-other-account").await;
    assert_eq!(
        back_to_app(&response),
        failed(&created.id, "ACCOUNT_MISMATCH")
    );
    endpoint.assert_no_problem();
    assert_session_failed(&app, &created.id, "ACCOUNT_MISMATCH").await;
    assert_eq!(
        access_token(&app, "u12", "tiktok", "open-id-A").await["access_token"],
        "A-access",
        "connection A unchanged"
    );
    assert_eq!(
        connection(&app, "u12", "tiktok", "open-id-A").await["metadata"],
        json!({"team": 7})
    );
    assert_eq!(
        connection_status(&app, "u12", "tiktok", "open-id-B").await,
        404
    );
    assert_eq!(connections(&app, "u12", "tiktok").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_reconnect_revives_a_needs_reconnect_connection() {
    let app = spawn("").await;
    let endpoint = fake_endpoint(&app).await;
    let imported = app
        .client
        .put(app.url(&connection_path("u13", "fake", "acct-13")))
        .bearer_auth(API_KEY)
        .json(
            &json!({"access_token": "stale-access", "refresh_token": "dead-refresh",
                      "expires_at": "2020-01-01T00:00:00Z", "metadata": {"team": 1}}),
        )
        .send()
        .await
        .expect("import");
    assert_eq!(imported.status().as_u16(), 201);
    // The refresh token is refused for good: the connection needs a reconnect.
    let refresh = app
        .client
        .post(app.url(&format!(
            "{}/refresh",
            connection_path("u13", "fake", "acct-13")
        )))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("refresh");
    let error = common::error_of(refresh, 409).await;
    assert_eq!(error["reconnect"], true, "{error}");
    let broken = connection(&app, "u13", "fake", "acct-13").await;
    assert_eq!(broken["status"], "needs_reconnect");
    assert!(
        broken["consecutive_failures"].as_u64() >= Some(1),
        "{broken}"
    );

    let created = fake_session(&app, "u13", "acct-13").await;
    assert!(created.reconnect);
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue(
        "code-reconnect",
        &opened,
        fake_answer("revived-access", "revived-refresh"),
    );
    let response = come_back(&app, &opened, "code-reconnect").await;
    endpoint.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));

    let revived = connection(&app, "u13", "fake", "acct-13").await;
    assert_eq!(revived["status"], "active", "{revived}");
    assert_eq!(revived["metadata"], json!({"team": 1}), "metadata kept");
    assert_eq!(revived["consecutive_failures"], 0);
    assert!(revived["last_error"].is_null(), "{revived}");
    assert_eq!(
        access_token(&app, "u13", "fake", "acct-13").await["access_token"],
        "revived-access"
    );
    let done = session(&app, &created.id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["reconnect"], true);
    assert_eq!(done["connection"]["status"], "active");
    app.stop().await;
}

/// A 2048-bit RSA key made for these tests only (PKCS #1, DER, base64): it signs the fake
/// issuer's id_tokens.
const TEST_RSA_KEY: &str = concat!(
    "MIIEpAIBAAKCAQEA8WyaA9M4VjYdXzl3uG6Qrbr8BZipEEuqwqyTT242Ikc7dsQnfp15k9DUOop8J2QNA8Z+hB17",
    "manS2V5fQ1tjT7J1m+STBp6zkfGMqb7o1aKzEWI5o/DehdHXwJrptV8eQLzq86Yhs0k/C72k4nLiK518TmifSUkJ",
    "NG/Oi7ODa4NxKBA9JyHkWJBR5qCKi59T3dhNPFhcsjV87aWInAJL8oxjddSZVuwj67u96BT9fjI6DL3p+DwGq8qH",
    "7WxAzTJOscNUIsYyd7zRTLsglc+IqFWdOfiTt0qgH4QbVMbmnSPQhDBD7BXCKeCWwxxPyEKmVqX2ZES5rDQyj7H4",
    "F7klpQIDAQABAoIBABlfP/pp7tBEpKaWzAmyePsBHS5bYl0njp0h9ONSolbM5KdxKvNoClhqCHvUhQLAxYthh3dL",
    "/+rgyZt1iw5xosjD6Q9GoNr/v8B1QcKvIRoenLIVgBhGHqSyrnl77lbU1cGY+Ro9GeqVJo6N0i/IQhOyW9eDsEXL",
    "6q87ltngtk2MkQfnE3np7oRsIMaD/ZP90cFOzs1wHpT5vP8KB9um0f14lAlRaD+D5Ki/p7FiLmHq/XGk8NN0XeVw",
    "w68q7fhFkxuGjHI7PeuNjeD4+nE2iNO8DkWXFYntaKv4h8DFYADDjnaqIg1vN317+J5/0/iLgNjSAbTnvn0AoBoz",
    "J0jl9fECgYEA/7gjeh5bU0NASNfMzbTh2BTQ7eCiZyNOPNJg2roNYN14W5dqL/5ejRxZ+qrCoR59+4ue4WU6Rid+",
    "ixJpAnQeWnyohm35Cx3byzYAURBrvP+BcKdUKKv7La/dxVi+yEVv+0EnBxsyBltiYMEp3aFf05pZ3Ot8LriBt0lU",
    "7aXsAxkCgYEA8bByJYNq37ggBkiT1029ZmiSzp0mOg6Hbiq6v+vbBmP8KwjKSTKiu033ktgnKSuPnpSoX42XdHB/",
    "nEsli5PEC6g/bzZ57VtZHmCp66tXC4+rfh2fJ2pHTal+1fIHTyibf2TM4s8reOBybLPbfstEFE7Nr/11jID9dzYc",
    "deqI9G0CgYAiVzckcikvgEuEvL47LbxaiUkZeN42XY5nKpVpKi0bwgIkwqu28EEAUDthJ0dl3bNrcW+Ps0llHG6o",
    "/HrvomplGnKDQwd7z7Gxk3ntaPge9G0MlNv/bkEX/JMaqnVMbc7A/hngoW1RXzpR5f7aTY6R2xuQSGtv1sVMuONX",
    "2r1cGQKBgQCJpfFMti0PH2F10q4IqGjfQ12hONVFqXKuZr2Xgq9qU1WR+N6kk6ckwAHpaxvakcmpCodebFi+4zd6",
    "fz3x4YV9EiSWpVMJwMXfzDPaWeooVnnYSOyU2S2k6IypMr/A8KKnCnS6FD1xCXuBt2miLAgo/Lyep97j168Dzxik",
    "e5/mfQKBgQD+suKLSd1atmfTPovKQv/qV9xY9pFNX45LNu/Yr2NfQQ3+0ZV1b3xke9zyOIFTBOFKVODqtqYsDUqX",
    "ZFJDlX4SJLCZQSJ/9LuzPsZtw9BDIrdlR4/1yiimONgQFAo6eskXrVbSw8VxF7ZaQJ+YiXLJA/E5qouF9hqT/84L",
    "il0HwA==",
);

fn rsa_key() -> rsa::RsaPrivateKey {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    let der = STANDARD.decode(TEST_RSA_KEY).expect("base64");
    rsa::RsaPrivateKey::from_pkcs1_der(&der).expect("test key")
}

fn jwks(key: &rsa::RsaPrivateKey) -> Value {
    use rsa::traits::PublicKeyParts as _;
    json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "test-key-1",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }]})
}

/// An RS256 JWT of `claims` (RFC 7515, RSASSA-PKCS1-v1_5 with SHA-256).
fn id_token(key: &rsa::RsaPrivateKey, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "test-key-1"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // DigestInfo of SHA-256 (RFC 8017 §9.2), then the hash.
    let mut digest_info = hex::decode("3031300d060960864801650304020105000420").expect("hex");
    digest_info.extend_from_slice(&Sha256::digest(input.as_bytes()));
    let signature = key
        .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &digest_info)
        .expect("sign");
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An OpenID provider found by discovery that says it sends `iss` with every answer (RFC
/// 9207), with its key set.
async fn oidc_provider(key: &rsa::RsaPrivateKey) -> MockServer {
    let oidc = MockServer::start().await;
    let uri = oidc.uri();
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": uri,
            "authorization_endpoint": format!("{uri}/authorize"),
            "token_endpoint": format!("{uri}/token"),
            "jwks_uri": format!("{uri}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
        })))
        .mount(&oidc)
        .await;
    Mock::given(method("GET"))
        .and(path("/jwks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks(key)))
        .mount(&oidc)
        .await;
    oidc
}

#[tokio::test]
async fn the_iss_parameter_must_name_the_issuer() {
    let key = rsa_key();
    let oidc = oidc_provider(&key).await;
    let issuer = oidc.uri();
    let app = spawn(&format!(
        "\n[providers.oidc]\nissuer = \"{issuer}\"\nclient_id = \"oidc-client\"\n\
         client_secret = \"oidc-secret-SECRET\"\nscopes = [\"openid\"]\n"
    ))
    .await;
    let endpoint = TokenEndpoint::mount(
        &oidc,
        "/token",
        &app,
        ClientAuth::Post {
            id_param: "client_id",
            id: "oidc-client",
            secret: "oidc-secret-SECRET",
        },
    )
    .await;
    let authorize = format!("{issuer}/authorize");
    let almost = format!("{issuer}.evil.example");
    let cases: [(&str, Option<&str>, &str); 4] = [
        ("wrong-iss", Some("https://evil.example"), "ISSUER_MISMATCH"),
        ("no-iss", None, "ISSUER_MISMATCH"),
        ("almost-iss", Some(almost.as_str()), "ISSUER_MISMATCH"),
        // The control: the same flow with the right iss completes.
        ("right-iss", Some(issuer.as_str()), "completed"),
    ];
    for (i, (code, iss, outcome)) in cases.iter().enumerate() {
        let created = create(
            &app,
            json!({"user_id": "u14", "provider": "oidc", "return_url": RETURN_URL}),
        )
        .await;
        let opened = open(&app, &created.connect_url, &authorize).await;
        assert_eq!(opened.params["scope"], "openid");
        let nonce = opened
            .params
            .get("nonce")
            .expect("a nonce for OpenID")
            .clone();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let subject = format!("oidc-subject-{i}");
        let mut answer = fake_answer(&format!("oidc-access-{i}"), "r");
        answer["id_token"] = json!(id_token(
            &key,
            &json!({"iss": issuer, "aud": "oidc-client", "sub": subject, "nonce": nonce,
                    "iat": now, "exp": now + 300}),
        ));
        endpoint.issue(code, &opened, answer);
        let mut query = vec![("code", *code), ("state", opened.state.as_str())];
        if let Some(iss) = iss {
            query.push(("iss", iss));
        }
        let response = callback(&app, &query, Some(&opened.cookie)).await;
        let back = back_to_app(&response);
        if *outcome == "completed" {
            assert_eq!(back, completed(&created.id), "{code}");
            assert_eq!(
                access_token(&app, "u14", "oidc", &subject).await["access_token"],
                format!("oidc-access-{i}"),
                "the account id is the id_token's sub"
            );
        } else {
            assert_eq!(back, failed(&created.id, outcome), "{code}");
            assert_session_failed(&app, &created.id, outcome).await;
            assert_eq!(connection_status(&app, "u14", "oidc", &subject).await, 404);
        }
    }
    assert_eq!(
        endpoint.exchanges(),
        1,
        "only the answer from the right issuer had its code exchanged"
    );
    endpoint.assert_no_problem();
    assert_eq!(connections(&app, "u14", "oidc").await.len(), 1);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// 6. No secret in any log line, page or URL sent back to the application

#[tokio::test]
async fn no_secret_reaches_a_log_line_a_page_or_the_return_url() {
    let logs = capture_logs();
    let upstream = MockServer::start().await;
    let app = spawn(&instagram_section(&upstream)).await;
    let mut secrets: Vec<String> = vec![
        CLIENT_SECRET.to_owned(),
        INSTAGRAM_SECRET.to_owned(),
        API_KEY.to_owned(),
    ];

    // A generic happy path.
    let endpoint = fake_endpoint(&app).await;
    let created = fake_session(&app, "u15", "acct-ok").await;
    let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue(
        "code-SECRET-ok",
        &opened,
        fake_answer("access-SECRET-ok", "refresh-SECRET-ok"),
    );
    let ok = come_back(&app, &opened, "code-SECRET-ok").await;
    assert_eq!(back_to_app(&ok), completed(&created.id));
    secrets.extend([
        created
            .connect_url
            .rsplit('/')
            .next()
            .expect("token")
            .to_owned(),
        opened.state.clone(),
        opened.cookie.1.clone(),
        "code-SECRET-ok".to_owned(),
        "access-SECRET-ok".to_owned(),
        "refresh-SECRET-ok".to_owned(),
    ]);
    // Replayed.
    page(
        come_back(&app, &opened, "code-SECRET-ok").await,
        400,
        "CONNECT_STATE_INVALID",
    )
    .await;

    // Declined, refused, and without the cookie.
    for (code, account) in [
        ("code-SECRET-denied", "acct-denied"),
        ("code-SECRET-refused", "acct-refused"),
        ("code-SECRET-cookie", "acct-cookie"),
    ] {
        let created = fake_session(&app, "u15", account).await;
        let opened = open(&app, &created.connect_url, FAKE_AUTHORIZE).await;
        secrets.extend([
            created
                .connect_url
                .rsplit('/')
                .next()
                .expect("token")
                .to_owned(),
            opened.state.clone(),
            opened.cookie.1.clone(),
            code.to_owned(),
        ]);
        match account {
            "acct-denied" => {
                let response = callback(
                    &app,
                    &[("error", "access_denied"), ("state", &opened.state)],
                    Some(&opened.cookie),
                )
                .await;
                assert_eq!(back_to_app(&response), failed(&created.id, "ACCESS_DENIED"));
            }
            "acct-refused" => {
                // A provider that echoes the code back in its error.
                endpoint.issue_with(
                    code,
                    &opened,
                    (
                        400,
                        json!({"error": "invalid_grant",
                               "error_description": format!("code {code} is expired")}),
                    ),
                );
                let response = come_back(&app, &opened, code).await;
                assert_eq!(
                    back_to_app(&response),
                    failed(&created.id, "CODE_EXCHANGE_FAILED")
                );
            }
            _ => {
                let response =
                    callback(&app, &[("code", code), ("state", &opened.state)], None).await;
                page(response, 400, "CONNECT_STATE_INVALID").await;
            }
        }
    }
    // A link opened twice.
    let twice = fake_session(&app, "u15", "acct-twice").await;
    let opened_twice = open(&app, &twice.connect_url, FAKE_AUTHORIZE).await;
    secrets.extend([
        twice
            .connect_url
            .rsplit('/')
            .next()
            .expect("token")
            .to_owned(),
        opened_twice.state.clone(),
        opened_twice.cookie.1.clone(),
    ]);
    page(
        browser()
            .get(&twice.connect_url)
            .send()
            .await
            .expect("open"),
        410,
        "CONNECT_SESSION_EXPIRED",
    )
    .await;

    // Instagram: a client secret and the short-lived token in the exchange's query.
    let ig = TokenEndpoint::mount(
        &upstream,
        "/oauth/access_token",
        &app,
        ClientAuth::Post {
            id_param: "client_id",
            id: "instagram-app-id",
            secret: INSTAGRAM_SECRET,
        },
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/access_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "IG-long-SECRET", "token_type": "bearer", "expires_in": 5183944,
        })))
        .mount(&upstream)
        .await;
    mount_bearer_get(
        &upstream,
        "/me",
        "IG-long-SECRET",
        None,
        json!({"user_id": "1784", "username": "someone"}),
    )
    .await;
    let created = create(
        &app,
        json!({"user_id": "u15", "provider": "instagram", "return_url": RETURN_URL}),
    )
    .await;
    let opened = open(
        &app,
        &created.connect_url,
        "https://www.instagram.com/oauth/authorize",
    )
    .await;
    ig.issue(
        "code-SECRET-ig",
        &opened,
        json!({"access_token": "IG-short-SECRET", "user_id": 1784}),
    );
    let response = come_back(&app, &opened, "code-SECRET-ig").await;
    ig.assert_no_problem();
    assert_eq!(back_to_app(&response), completed(&created.id));
    secrets.extend([
        created
            .connect_url
            .rsplit('/')
            .next()
            .expect("token")
            .to_owned(),
        opened.state.clone(),
        opened.cookie.1.clone(),
        "code-SECRET-ig".to_owned(),
        "IG-short-SECRET".to_owned(),
        "IG-long-SECRET".to_owned(),
    ]);
    endpoint.assert_no_problem();
    let verifiers = [endpoint.verifiers(), ig.verifiers()].concat();
    assert_eq!(
        verifiers.len(),
        3,
        "ok, refused and instagram sent a verifier"
    );
    secrets.extend(verifiers);
    app.stop().await;

    let logs = String::from_utf8(logs.lock().expect("lock").clone()).expect("utf-8 logs");
    assert!(
        logs.contains("connect session completed") && logs.contains("connect session failed"),
        "the capture works: the flow's own lines are in it"
    );
    assert!(
        logs.contains("\"level\":\"TRACE\""),
        "TRACE lines are captured"
    );
    let pages = seen().lock().expect("lock").join("\n");
    assert!(pages.contains("CONNECT_STATE_INVALID") && pages.contains(RETURN_URL));
    for secret in &secrets {
        assert!(secret.len() >= 8, "{secret:?} is long enough to search for");
        for line in logs.lines() {
            assert!(
                !line.contains(secret.as_str()),
                "a log line has {secret:?}: {line}"
            );
        }
        assert!(
            !pages.contains(secret.as_str()),
            "a page or return URL has {secret:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 7. Metrics

#[tokio::test]
async fn sessions_are_counted_by_provider_and_outcome() {
    let upstream = MockServer::start().await;
    let app = spawn(&format!(
        "\n[providers.metered]\nkind = \"oauth2\"\nclient_id = \"metered-client\"\n\
         client_secret = \"metered-secret\"\nauthorization_url = \"{FAKE_AUTHORIZE}\"\n\
         token_url = \"{}/token\"\n",
        upstream.uri()
    ))
    .await;
    let endpoint = TokenEndpoint::mount(
        &upstream,
        "/token",
        &app,
        ClientAuth::Post {
            id_param: "client_id",
            id: "metered-client",
            secret: "metered-secret",
        },
    )
    .await;
    let metered = |account: &str| {
        json!({"user_id": "u16", "provider": "metered", "account_id": account,
               "return_url": RETURN_URL})
    };
    let good = create(&app, metered("good")).await;
    let opened = open(&app, &good.connect_url, FAKE_AUTHORIZE).await;
    endpoint.issue(
        "code-metered",
        &opened,
        fake_answer("m-access", "m-refresh"),
    );
    let response = come_back(&app, &opened, "code-metered").await;
    assert_eq!(back_to_app(&response), completed(&good.id));

    let declined = create(&app, metered("declined")).await;
    let opened = open(&app, &declined.connect_url, FAKE_AUTHORIZE).await;
    let response = callback(
        &app,
        &[("error", "access_denied"), ("state", &opened.state)],
        Some(&opened.cookie),
    )
    .await;
    assert_eq!(
        back_to_app(&response),
        failed(&declined.id, "ACCESS_DENIED")
    );

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // One series per (provider, outcome), whatever order the labels are written in.
    let value = |outcome: &str| -> Option<u64> {
        let want = [
            format!("outcome=\"{outcome}\""),
            "provider=\"metered\"".to_owned(),
        ];
        text.lines().find_map(|line| {
            let rest = line.strip_prefix("tokenwarden_connect_sessions_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            let mut labels: Vec<&str> = labels.split(',').collect();
            labels.sort_unstable();
            (labels == want).then(|| value.trim().parse().ok())?
        })
    };
    assert_eq!(value("created"), Some(2), "{text}");
    assert_eq!(value("completed"), Some(1), "{text}");
    assert_eq!(value("access_denied"), Some(1), "{text}");
    app.stop().await;
}
