//! End-to-end tests of the provider adapters against local fake token endpoints (wiremock on
//! 127.0.0.1): the exact request each provider receives, each provider's error formats
//! through `provider::build` + `Provider::refresh`, timeouts, body caps, redirects, metrics
//! and the absence of secrets from errors and logs.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use base64::Engine;
use time::OffsetDateTime;
use tokenwarden::clock::ManualClock;
use tokenwarden::provider::{
    self, FailureKind, HttpClient, HttpSettings, NotRefreshable, Provider, ProviderConfig,
    RefreshFailure,
};
use tokenwarden::{
    AccessToken, Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, FailureClass,
    RefreshToken, Tokens,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const AT: &str = "at-OLD-secret-0001";
const RT: &str = "rt-OLD-secret-0002";
const CLIENT_SECRET: &str = "cs-secret-0003";

// ---------------------------------------------------------------------------------------
// Helpers

fn config(toml_text: &str) -> ProviderConfig {
    toml::from_str(toml_text).expect("provider config")
}

fn http(settings: HttpSettings) -> HttpClient {
    HttpClient::new(settings).expect("http client")
}

fn build(name: &str, toml_text: &str) -> Arc<dyn Provider> {
    build_with(name, toml_text, HttpSettings::default())
}

fn build_with(name: &str, toml_text: &str, settings: HttpSettings) -> Arc<dyn Provider> {
    provider::build(
        name.parse().expect("name"),
        &config(toml_text),
        http(settings),
    )
    .expect("provider builds")
}

fn build_err(name: &str, toml_text: &str) -> provider::ProviderConfigError {
    provider::build(
        name.parse().expect("name"),
        &config(toml_text),
        http(Default::default()),
    )
    .expect_err("config must be refused")
}

/// A connection at `provider` with the given tokens, expiring in `expires_in` from now.
fn connection(
    provider: &str,
    access: &str,
    refresh: Option<&str>,
    expires_in: Option<time::Duration>,
) -> Connection {
    let now = OffsetDateTime::now_utc();
    Connection {
        meta: ConnectionMeta {
            key: ConnectionKey::parse("user-1", provider, "acct-1").expect("key"),
            token_type: "bearer".to_owned(),
            has_refresh_token: refresh.is_some(),
            expires_at: expires_in.map(|d| now + d),
            refresh_expires_at: None,
            issued_at: Some(now),
            scopes: Vec::new(),
            metadata: serde_json::Value::Null,
            status: ConnectionStatus::Active,
            last_refreshed_at: None,
            consecutive_failures: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            next_refresh_at: None,
            version: 1,
        },
        tokens: Tokens {
            access_token: AccessToken::new(access),
            refresh_token: refresh.map(RefreshToken::new),
        },
    }
}

fn conn(provider: &str) -> Connection {
    connection(provider, AT, Some(RT), Some(time::Duration::minutes(2)))
}

fn form(request: &Request) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect()
}

fn expected_form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

async fn only_request(server: &MockServer) -> Request {
    let mut requests = server.received_requests().await.expect("recording on");
    assert_eq!(requests.len(), 1, "exactly one upstream attempt");
    requests.remove(0)
}

fn json(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

/// Asserts that no secret appears in what a failure shows.
fn assert_no_secret(failure: &RefreshFailure) {
    let shown = format!("{failure} {failure:?}");
    for secret in [AT, RT, CLIENT_SECRET] {
        assert!(!shown.contains(secret), "secret leaked: {shown}");
    }
}

fn rejected(failure: &RefreshFailure) -> (u16, &str) {
    match &failure.kind {
        FailureKind::Rejected { status, error, .. } => (*status, error.as_str()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Generic OAuth 2.0

fn oauth2_config(server: &MockServer, extra: &str) -> String {
    format!(
        r#"kind = "oauth2"
client_id = "my-client"
client_secret = "{CLIENT_SECRET}"
token_url = "{}/oauth/token"
{extra}"#,
        server.uri()
    )
}

#[tokio::test]
async fn oauth2_client_secret_post_request_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(json(
            200,
            r#"{"access_token":"at-new","token_type":"Bearer","expires_in":3599,"scope":"a b"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let provider = build(
        "google",
        &oauth2_config(&server, r#"user_agent = "tw-test/1""#),
    );

    let answer = provider.refresh(&conn("google")).await.expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "at-new");
    assert!(
        answer.refresh_token.is_none(),
        "absent refresh token means keep the old one"
    );
    assert_eq!(answer.expires_in, Some(Duration::from_secs(3599)));
    assert_eq!(answer.scopes, Some(vec!["a".to_owned(), "b".to_owned()]));

    let request = only_request(&server).await;
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.url.query(), None);
    assert_eq!(
        header(&request, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(header(&request, "accept"), Some("application/json"));
    assert_eq!(header(&request, "user-agent"), Some("tw-test/1"));
    assert_eq!(header(&request, "authorization"), None);
    assert_eq!(
        form(&request),
        expected_form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", RT),
            ("client_id", "my-client"),
            ("client_secret", CLIENT_SECRET),
        ])
    );
}

#[tokio::test]
async fn oauth2_client_secret_basic_encodes_credentials() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(json(
            200,
            r#"{"access_token":"at-new","refresh_token":"rt-new"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let toml_text = format!(
        r#"kind = "oauth2"
client_id = "my client"
client_secret = "s:e/c+ret"
auth_method = "client_secret_basic"
token_url = "{}/oauth/token""#,
        server.uri()
    );
    let provider = build("generic", &toml_text);
    let answer = provider.refresh(&conn("generic")).await.expect("refresh");
    assert_eq!(
        answer.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-new")
    );

    let request = only_request(&server).await;
    // RFC 6749 §2.3.1: each part form-urlencoded, then Basic.
    assert_eq!(
        header(&request, "authorization"),
        Some(basic("my+client", "s%3Ae%2Fc%2Bret").as_str())
    );
    assert_eq!(
        form(&request),
        expected_form(&[("grant_type", "refresh_token"), ("refresh_token", RT)])
    );
}

#[tokio::test]
async fn oauth2_error_formats_end_to_end() {
    let cases: [(u16, &str, FailureClass); 6] = [
        (
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            FailureClass::Permanent,
        ),
        (
            401,
            r#"{"error":"invalid_client"}"#,
            FailureClass::Configuration,
        ),
        (
            400,
            r#"{"error":"unauthorized_client"}"#,
            FailureClass::Configuration,
        ),
        (
            503,
            r#"{"error":"temporarily_unavailable"}"#,
            FailureClass::Transient,
        ),
        (
            500,
            "<html>Internal Server Error</html>",
            FailureClass::Transient,
        ),
        (200, r#"{"error":"server_error"}"#, FailureClass::Transient),
    ];
    for (status, body, class) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(json(status, body))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build("generic", &oauth2_config(&server, ""));
        let failure = provider.refresh(&conn("generic")).await.expect_err(body);
        assert_eq!(failure.class, class, "{status} {body}");
        assert_eq!(failure.http_status(), Some(status));
        assert_no_secret(&failure);
    }
}

#[tokio::test]
async fn error_descriptions_echoing_secrets_are_scrubbed() {
    let server = MockServer::start().await;
    let body = format!(
        r#"{{"error":"invalid_grant","error_description":"refresh token {RT} unknown for secret {CLIENT_SECRET}"}}"#
    );
    Mock::given(method("POST"))
        .respond_with(json(400, &body))
        .mount(&server)
        .await;
    let provider = build("generic", &oauth2_config(&server, ""));
    let failure = provider
        .refresh(&conn("generic"))
        .await
        .expect_err("refused");
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_no_secret(&failure);
    assert!(failure.to_string().contains("[REDACTED]"), "{failure}");
}

/// Issue 9, finding 6: with the refresh token `t`, the answer's `invalid_grant` became
/// `invalid_gran[REDACTED]` and was classified `configuration`. One- to three-character
/// tokens (each a substring of `invalid_grant`) must leave the code and its class alone.
#[tokio::test]
async fn issue_9_short_refresh_token_keeps_invalid_grant_permanent() {
    for refresh in ["t", "nt", "ant"] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(json(
                400,
                &format!(
                    r#"{{"error":"invalid_grant","error_description":"refresh token {refresh} was revoked"}}"#
                ),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let provider = build("generic", &oauth2_config(&server, ""));
        let conn = connection(
            "generic",
            AT,
            Some(refresh),
            Some(time::Duration::minutes(2)),
        );
        let failure = provider.refresh(&conn).await.expect_err("revoked");
        assert_eq!(
            failure.class,
            FailureClass::Permanent,
            "refresh token {refresh}"
        );
        assert_eq!(failure.provider_error(), Some("invalid_grant"));
        assert_eq!(rejected(&failure), (400, "invalid_grant"));
        // Too short to search for safely: the description is dropped, not shown.
        assert!(
            matches!(
                &failure.kind,
                FailureKind::Rejected {
                    description: None,
                    ..
                }
            ),
            "{failure:?}"
        );
        assert_no_secret(&failure);
    }
}

#[tokio::test]
async fn oauth2_retry_after_is_returned() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "17"))
        .mount(&server)
        .await;
    let provider = build("generic", &oauth2_config(&server, ""));
    let failure = provider.refresh(&conn("generic")).await.expect_err("429");
    assert_eq!(failure.class, FailureClass::Transient);
    assert_eq!(failure.retry_after, Some(Duration::from_secs(17)));
}

#[tokio::test]
async fn oauth2_revoke_rfc7009() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&server)
        .await;
    let extra = format!(r#"revoke_url = "{}/oauth/revoke""#, server.uri());
    let provider = build("generic", &oauth2_config(&server, &extra));
    provider.revoke(&conn("generic")).await.expect("revoked");
    let no_rt = connection("generic", AT, None, None);
    provider.revoke(&no_rt).await.expect("revoked");

    let requests = server.received_requests().await.expect("recording");
    assert_eq!(
        form(&requests[0]),
        expected_form(&[
            ("token", RT),
            ("token_type_hint", "refresh_token"),
            ("client_id", "my-client"),
            ("client_secret", CLIENT_SECRET),
        ])
    );
    assert_eq!(
        form(&requests[1]).get("token").map(String::as_str),
        Some(AT)
    );
    assert_eq!(
        form(&requests[1])
            .get("token_type_hint")
            .map(String::as_str),
        Some("access_token")
    );
}

#[tokio::test]
async fn oauth2_revoke_without_url_is_a_no_op() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let provider = build("generic", &oauth2_config(&server, ""));
    provider
        .revoke(&conn("generic"))
        .await
        .expect("nothing to do");
}

#[test]
fn oauth2_configuration_is_checked() {
    let err = build_err(
        "google",
        r#"kind = "oauth2"
client_id = "x""#,
    );
    assert_eq!(err.key, "token_url");
    assert!(
        err.to_string().starts_with("providers.google.token_url"),
        "{err}"
    );

    let err = build_err(
        "google",
        r#"kind = "oauth2"
client_id = "x"
token_url = "ftp://example.com/token""#,
    );
    assert_eq!(err.key, "token_url");

    let err = build_err(
        "google",
        r#"kind = "oauth2"
client_id = "x"
token_url = "not a url""#,
    );
    assert_eq!(err.key, "token_url");

    let err = build_err(
        "google",
        r#"kind = "oauth2"
client_id = "x"
token_url = "https://example.com/token"
revoke_url = "file:///etc/passwd""#,
    );
    assert_eq!(err.key, "revoke_url");

    let err = build_err(
        "google",
        r#"kind = "oauth2"
token_url = "https://example.com/token""#,
    );
    assert_eq!(err.key, "client_id");

    // Credentials belong in client_id/client_secret, not in a URL that Debug would show.
    let err = build_err(
        "google",
        r#"kind = "oauth2"
client_id = "x"
token_url = "https://user:pw@example.com/token""#,
    );
    assert_eq!(err.key, "token_url");
    assert!(!err.to_string().contains("pw"), "{err}");
}

#[test]
fn info_shows_no_secrets() {
    let cfg = format!(
        r#"kind = "oauth2"
client_id = "cid"
client_secret = "{CLIENT_SECRET}"
auth_method = "client_secret_basic"
token_url = "https://auth.example.com/token?x=1"
rate_limit_per_second = 5"#
    );
    let provider = build("generic", &cfg);
    let info = provider.info();
    assert_eq!(info.name, "generic");
    assert_eq!(info.token_url, "https://auth.example.com/token");
    assert_eq!(info.client_id.as_deref(), Some("cid"));
    assert_eq!(
        info.auth_method,
        Some(provider::AuthMethod::ClientSecretBasic)
    );
    assert_eq!(info.rate_limit_per_second, Some(5));
    let shown = format!(
        "{info:?} {provider:?} {}",
        serde_json::to_string(&info).expect("json")
    );
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");

    let ig = build("instagram", r#"kind = "instagram""#).info();
    assert_eq!(
        ig.token_url,
        "https://graph.instagram.com/refresh_access_token"
    );
    assert_eq!(ig.client_id, None);
    let tt = build(
        "tiktok",
        r#"kind = "tiktok"
client_id = "ck"
client_secret = "s""#,
    )
    .info();
    assert_eq!(tt.token_url, "https://open.tiktokapis.com/v2/oauth/token/");
    let rd = build(
        "reddit",
        r#"kind = "reddit"
client_id = "ck"
user_agent = "web:x:1 (by /u/me)""#,
    )
    .info();
    assert_eq!(rd.token_url, "https://www.reddit.com/api/v1/access_token");
}

// ---------------------------------------------------------------------------------------
// No refresh token

#[tokio::test]
async fn missing_refresh_token_is_not_refreshable_and_makes_no_call() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(200, "{}"))
        .expect(0)
        .mount(&server)
        .await;
    let configs = [
        ("generic", oauth2_config(&server, "")),
        (
            "tiktok",
            format!(
                "kind = \"tiktok\"\nclient_id = \"ck\"\nclient_secret = \"s\"\ntoken_url = \"{}/t\"",
                server.uri()
            ),
        ),
        (
            "reddit",
            format!(
                "kind = \"reddit\"\nclient_id = \"ck\"\nuser_agent = \"ua\"\ntoken_url = \"{}/t\"",
                server.uri()
            ),
        ),
    ];
    for (name, cfg) in configs {
        let provider = build(name, &cfg);
        let now = OffsetDateTime::now_utc();
        for refresh in [None, Some("")] {
            let c = connection(name, AT, refresh, Some(time::Duration::minutes(1)));
            assert_eq!(
                provider.check_refreshable(&c, now),
                Err(NotRefreshable::NoRefreshToken)
            );
            let failure = provider.refresh(&c).await.expect_err("no refresh token");
            assert_eq!(
                failure.kind,
                FailureKind::NotRefreshable(NotRefreshable::NoRefreshToken)
            );
            assert_eq!(failure.class, FailureClass::Permanent);
        }
        assert_eq!(provider.check_refreshable(&conn(name), now), Ok(()));
    }
}

// ---------------------------------------------------------------------------------------
// TikTok

fn tiktok_config(server: &MockServer) -> String {
    format!(
        r#"kind = "tiktok"
client_id = "aw-client-key"
client_secret = "{CLIENT_SECRET}"
token_url = "{}/v2/oauth/token/""#,
        server.uri()
    )
}

#[tokio::test]
async fn tiktok_request_shape_and_rotation() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/oauth/token/"))
        .respond_with(json(
            200,
            r#"{"open_id":"o","scope":"user.info.basic,video.list","access_token":"act.new",
                "expires_in":7200,"refresh_token":"rft.new","refresh_expires_in":15552000,
                "token_type":"Bearer"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let provider = build("tiktok", &tiktok_config(&server));
    let answer = provider.refresh(&conn("tiktok")).await.expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "act.new");
    assert_eq!(
        answer.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rft.new")
    );
    assert_eq!(answer.expires_in, Some(Duration::from_secs(7200)));
    assert_eq!(
        answer.refresh_expires_in,
        Some(Duration::from_secs(15_552_000))
    );
    assert_eq!(
        answer.scopes,
        Some(vec!["user.info.basic".to_owned(), "video.list".to_owned()])
    );

    let request = only_request(&server).await;
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(
        header(&request, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(header(&request, "authorization"), None);
    assert_eq!(
        form(&request),
        expected_form(&[
            ("client_key", "aw-client-key"),
            ("client_secret", CLIENT_SECRET),
            ("grant_type", "refresh_token"),
            ("refresh_token", RT),
        ])
    );
}

#[tokio::test]
async fn tiktok_error_on_200_and_rate_limit() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(
            200,
            r#"{"error":"invalid_grant","error_description":"Refresh token is invalid or expired.","log_id":"20261126"}"#,
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            json(
                429,
                r#"{"error":"rate_limit_exceeded","error_description":"slow","log_id":"x"}"#,
            )
            .insert_header("x-ratelimit-reset", "9"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(json(
            200,
            r#"{"error":"invalid_client","error_description":"bad key"}"#,
        ))
        .mount(&server)
        .await;
    let provider = build("tiktok", &tiktok_config(&server));

    let failure = provider
        .refresh(&conn("tiktok"))
        .await
        .expect_err("invalid_grant");
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_eq!(rejected(&failure), (200, "invalid_grant"));

    let failure = provider
        .refresh(&conn("tiktok"))
        .await
        .expect_err("rate limited");
    assert_eq!(failure.class, FailureClass::Transient);
    assert_eq!(failure.retry_after, Some(Duration::from_secs(9)));

    let failure = provider
        .refresh(&conn("tiktok"))
        .await
        .expect_err("invalid_client");
    assert_eq!(failure.class, FailureClass::Configuration);
    assert_no_secret(&failure);
}

#[test]
fn tiktok_configuration_is_checked() {
    let err = build_err(
        "tiktok",
        r#"kind = "tiktok"
client_secret = "s""#,
    );
    assert_eq!(err.key, "client_id");
    let err = build_err(
        "tiktok",
        r#"kind = "tiktok"
client_id = "k""#,
    );
    assert_eq!(err.key, "client_secret");
    assert!(
        err.to_string()
            .starts_with("providers.tiktok.client_secret")
    );
}

// ---------------------------------------------------------------------------------------
// Reddit

fn reddit_config(server: &MockServer, secret: Option<&str>) -> String {
    let secret = secret
        .map(|s| format!("client_secret = \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        r#"kind = "reddit"
client_id = "reddit-app-id"
{secret}user_agent = "web:tokenwarden-test:1.0 (by /u/tester)"
token_url = "{}/api/v1/access_token""#,
        server.uri()
    )
}

#[tokio::test]
async fn reddit_request_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/access_token"))
        .respond_with(json(
            200,
            r#"{"access_token":"reddit-at","token_type":"bearer","expires_in":3600,"refresh_token":"rt-same","scope":"identity read"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let provider = build("reddit", &reddit_config(&server, Some(CLIENT_SECRET)));
    let answer = provider.refresh(&conn("reddit")).await.expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "reddit-at");
    assert_eq!(
        answer.scopes,
        Some(vec!["identity".to_owned(), "read".to_owned()])
    );

    let request = only_request(&server).await;
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(
        header(&request, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        header(&request, "user-agent"),
        Some("web:tokenwarden-test:1.0 (by /u/tester)")
    );
    assert_eq!(
        header(&request, "authorization"),
        Some(basic("reddit-app-id", CLIENT_SECRET).as_str())
    );
    assert_eq!(
        form(&request),
        expected_form(&[("grant_type", "refresh_token"), ("refresh_token", RT)])
    );
}

#[tokio::test]
async fn reddit_installed_app_sends_empty_secret() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(200, r#"{"access_token":"x"}"#))
        .mount(&server)
        .await;
    let provider = build("reddit", &reddit_config(&server, None));
    provider.refresh(&conn("reddit")).await.expect("refresh");
    let request = only_request(&server).await;
    assert_eq!(
        header(&request, "authorization"),
        Some(basic("reddit-app-id", "").as_str())
    );
}

#[tokio::test]
async fn reddit_error_formats() {
    let cases: [(u16, &str, FailureClass); 4] = [
        (200, r#"{"error":"invalid_grant"}"#, FailureClass::Permanent),
        (
            401,
            r#"{"message":"Unauthorized","error":401}"#,
            FailureClass::Configuration,
        ),
        (
            429,
            r#"{"message":"Too Many Requests","error":429}"#,
            FailureClass::Transient,
        ),
        (502, "<html>bad gateway</html>", FailureClass::Transient),
    ];
    for (status, body, class) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(json(status, body).insert_header("x-ratelimit-reset", "33"))
            .mount(&server)
            .await;
        let provider = build("reddit", &reddit_config(&server, Some(CLIENT_SECRET)));
        let failure = provider.refresh(&conn("reddit")).await.expect_err(body);
        assert_eq!(failure.class, class, "{status} {body}");
        let expected_hint = (status == 429).then(|| Duration::from_secs(33));
        assert_eq!(failure.retry_after, expected_hint, "{status}");
        assert_no_secret(&failure);
    }
}

#[test]
fn reddit_requires_a_user_agent() {
    for extra in ["", "user_agent = \"\"", "user_agent = \"   \""] {
        let err = build_err(
            "reddit",
            &format!("kind = \"reddit\"\nclient_id = \"x\"\n{extra}"),
        );
        assert_eq!(err.key, "user_agent");
        assert!(
            err.to_string().starts_with("providers.reddit.user_agent"),
            "{err}"
        );
    }
    let err = build_err(
        "reddit",
        "kind = \"reddit\"\nclient_id = \"x\"\nuser_agent = \"a\\nb\"",
    );
    assert_eq!(err.key, "user_agent");
}

// ---------------------------------------------------------------------------------------
// Instagram

fn instagram_config(server: &MockServer) -> String {
    format!(
        r#"kind = "instagram"
client_id = "should-not-be-sent"
client_secret = "{CLIENT_SECRET}"
refresh_url = "{}/refresh_access_token""#,
        server.uri()
    )
}

/// A long-lived Instagram token issued ten days ago.
fn ig_conn() -> Connection {
    connection("instagram", AT, None, Some(time::Duration::days(50)))
}

#[tokio::test]
async fn instagram_request_shape() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/refresh_access_token"))
        .respond_with(json(
            200,
            r#"{"access_token":"IGQW-new","token_type":"bearer","expires_in":5183944}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let provider = build("instagram", &instagram_config(&server));
    let answer = provider.refresh(&ig_conn()).await.expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "IGQW-new");
    assert!(answer.refresh_token.is_none());
    assert_eq!(answer.expires_in, Some(Duration::from_secs(5_183_944)));

    let request = only_request(&server).await;
    assert_eq!(request.method.as_str(), "GET");
    let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
    let expected: HashMap<String, String> =
        [("grant_type", "ig_refresh_token"), ("access_token", AT)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    assert_eq!(query, expected);
    assert!(request.body.is_empty());
    assert_eq!(header(&request, "authorization"), None);
    let everything = format!("{} {:?}", request.url, request.headers);
    assert!(!everything.contains("should-not-be-sent"));
    assert!(!everything.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn instagram_meta_errors() {
    let server = MockServer::start().await;
    let body = format!(
        r#"{{"error":{{"message":"Error validating access token: Session has expired on Tuesday. ({AT})","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"AbCd"}}}}"#
    );
    Mock::given(method("GET"))
        .respond_with(json(400, &body))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(json(
            400,
            r#"{"error":{"message":"Application request limit reached","type":"OAuthException","code":4,"fbtrace_id":"x"}}"#,
        ))
        .mount(&server)
        .await;
    let provider = build("instagram", &instagram_config(&server));

    let failure = provider.refresh(&ig_conn()).await.expect_err("190");
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_eq!(rejected(&failure), (400, "190"));
    assert_no_secret(&failure);
    assert!(!failure.to_string().contains("Session has expired"));

    let failure = provider.refresh(&ig_conn()).await.expect_err("throttled");
    assert_eq!(failure.class, FailureClass::Transient);
}

#[tokio::test]
async fn instagram_expired_or_young_tokens_are_not_sent() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json(200, "{}"))
        .expect(0)
        .mount(&server)
        .await;
    let provider = build("instagram", &instagram_config(&server));

    let expired = connection("instagram", AT, None, Some(-time::Duration::minutes(1)));
    let failure = provider.refresh(&expired).await.expect_err("expired");
    assert_eq!(
        failure.kind,
        FailureKind::NotRefreshable(NotRefreshable::Expired)
    );
    assert_eq!(failure.class, FailureClass::Permanent);

    // Issued an hour ago.
    let young = connection(
        "instagram",
        AT,
        None,
        Some(time::Duration::days(60) - time::Duration::hours(1)),
    );
    let failure = provider.refresh(&young).await.expect_err("too young");
    assert!(matches!(
        failure.kind,
        FailureKind::NotRefreshable(NotRefreshable::TooYoung { .. })
    ));
    assert_ne!(failure.class, FailureClass::Permanent);
}

#[tokio::test]
async fn instagram_without_expiry_is_refreshable() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json(200, r#"{"access_token":"x","expires_in":"5183944"}"#))
        .expect(1)
        .mount(&server)
        .await;
    let provider = build("instagram", &instagram_config(&server));
    let c = connection("instagram", AT, None, None);
    assert_eq!(
        provider.check_refreshable(&c, OffsetDateTime::now_utc()),
        Ok(())
    );
    provider.refresh(&c).await.expect("refresh");
}

#[tokio::test]
async fn instagram_transport_errors_do_not_leak_the_token() {
    // Nothing listens on this port once the listener is dropped (wiremock would reuse its
    // own servers' ports, so take one from the OS instead).
    let uri = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let cfg = format!("kind = \"instagram\"\nrefresh_url = \"{uri}/refresh_access_token\"");
    let provider = build("instagram", &cfg);
    let failure = provider
        .refresh(&ig_conn())
        .await
        .expect_err("connection refused");
    assert_eq!(failure.class, FailureClass::Transient);
    assert!(matches!(
        failure.kind,
        FailureKind::Transport { timeout: false, .. }
    ));
    assert_no_secret(&failure);
}

// ---------------------------------------------------------------------------------------
// Transport: timeouts, body cap, redirects

#[tokio::test]
async fn slow_answers_time_out_as_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(200, r#"{"access_token":"late"}"#).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let settings = HttpSettings {
        request_timeout: Duration::from_millis(200),
        ..HttpSettings::default()
    };
    let provider = build_with("generic", &oauth2_config(&server, ""), settings);
    let started = std::time::Instant::now();
    let failure = provider
        .refresh(&conn("generic"))
        .await
        .expect_err("timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(failure.class, FailureClass::Transient);
    assert!(
        matches!(failure.kind, FailureKind::Transport { timeout: true, .. }),
        "{failure:?}"
    );
    assert_no_secret(&failure);
}

#[tokio::test]
async fn oversized_bodies_are_unparseable() {
    let server = MockServer::start().await;
    let big = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(4096));
    Mock::given(method("POST"))
        .respond_with(json(200, &big))
        .mount(&server)
        .await;
    let settings = HttpSettings {
        max_body_bytes: 1024,
        ..HttpSettings::default()
    };
    let provider = build_with("tiktok", &tiktok_config(&server), settings);
    let failure = provider
        .refresh(&conn("tiktok"))
        .await
        .expect_err("too big");
    assert_eq!(failure.class, FailureClass::Transient);
    assert!(
        matches!(failure.kind, FailureKind::Unparseable { status: 200, .. }),
        "{failure:?}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/access_token"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("{}/elsewhere", server.uri())),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(json(200, r#"{"access_token":"stolen"}"#))
        .expect(0)
        .mount(&server)
        .await;
    let provider = build("reddit", &reddit_config(&server, Some(CLIENT_SECRET)));
    let failure = provider
        .refresh(&conn("reddit"))
        .await
        .expect_err("redirect");
    assert_eq!(rejected(&failure), (302, "http_302"));
    assert_eq!(failure.class, FailureClass::Configuration);
}

// ---------------------------------------------------------------------------------------
// Time: providers read the clock they are given, not the system's

/// A controlled "now" years away from the machine's, so an answer read against wall time
/// could not pass by accident.
const CLOCK_T0: OffsetDateTime = time::macros::datetime!(2031-03-04 09:00 UTC);

fn build_with_clock(name: &str, toml_text: &str, clock: &ManualClock) -> Arc<dyn Provider> {
    let http = http(HttpSettings::default()).with_clock(Arc::new(clock.clone()));
    provider::build(name.parse().expect("name"), &config(toml_text), http).expect("provider")
}

/// Issue 9: `Retry-After` as an HTTP date is read against the provider's clock.
#[tokio::test]
async fn issue_9_retry_after_date_is_relative_to_the_providers_clock() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            json(503, r#"{"error":"temporarily_unavailable"}"#)
                .insert_header("retry-after", "Tue, 04 Mar 2031 09:00:30 GMT"),
        )
        .mount(&server)
        .await;
    let clock = ManualClock::new(CLOCK_T0);
    let provider = build_with_clock("generic", &oauth2_config(&server, ""), &clock);
    let failure = provider.refresh(&conn("generic")).await.expect_err("503");
    assert_eq!(failure.class, FailureClass::Transient);
    assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));

    clock.advance(Duration::from_secs(10));
    let failure = provider.refresh(&conn("generic")).await.expect_err("503");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(20)));

    // A date already past on that clock means "now".
    clock.advance(Duration::from_secs(60));
    let failure = provider.refresh(&conn("generic")).await.expect_err("503");
    assert_eq!(failure.retry_after, Some(Duration::ZERO));
}

/// Issue 9: a rate-limit reset given as a Unix timestamp is read against the same clock.
#[tokio::test]
async fn issue_9_reset_timestamp_is_relative_to_the_providers_clock() {
    let server = MockServer::start().await;
    let reset = (CLOCK_T0 + time::Duration::seconds(45)).unix_timestamp();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("x-ratelimit-reset", reset))
        .mount(&server)
        .await;
    let clock = ManualClock::new(CLOCK_T0);
    let provider = build_with_clock(
        "reddit",
        &reddit_config(&server, Some(CLIENT_SECRET)),
        &clock,
    );
    let failure = provider.refresh(&conn("reddit")).await.expect_err("429");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(45)));
}

/// Issue 9: Instagram's "too young to refresh" is judged on the provider's clock.
#[tokio::test]
async fn issue_9_instagram_token_age_is_judged_on_the_providers_clock() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json(
            200,
            r#"{"access_token":"IGQW-new","token_type":"bearer","expires_in":5183944}"#,
        ))
        .mount(&server)
        .await;
    let clock = ManualClock::new(CLOCK_T0);
    let provider = build_with_clock("instagram", &instagram_config(&server), &clock);
    // Issued an hour before the clock's now: 60-day lifetime, refreshable after 24 h.
    let mut young = ig_conn();
    young.meta.expires_at = Some(CLOCK_T0 + time::Duration::days(60) - time::Duration::hours(1));
    let failure = provider.refresh(&young).await.expect_err("too young");
    assert!(
        matches!(
            failure.kind,
            FailureKind::NotRefreshable(NotRefreshable::TooYoung { .. })
        ),
        "{failure:?}"
    );
    clock.advance(Duration::from_secs(24 * 3600));
    provider
        .refresh(&young)
        .await
        .expect("old enough on this clock");
}

// ---------------------------------------------------------------------------------------
// Metrics: one upstream_requests_total per attempt

#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

struct CountHandle(Arc<AtomicU64>);

impl metrics::CounterFn for CountHandle {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

struct TestRecorder(Arc<Counts>);

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let cell = self
            .0
            .0
            .lock()
            .expect("lock")
            .entry(name)
            .or_default()
            .clone();
        metrics::Counter::from_arc(Arc::new(CountHandle(cell)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn counts() -> Arc<Counts> {
    static COUNTS: OnceLock<Arc<Counts>> = OnceLock::new();
    static INSTALL: Once = Once::new();
    let counts = COUNTS.get_or_init(Arc::default).clone();
    INSTALL.call_once(|| {
        metrics::set_global_recorder(TestRecorder(counts.clone())).expect("first recorder");
    });
    counts
}

fn count(counts: &Counts, provider: &str, status: &str) -> u64 {
    let name =
        format!("tokenwarden_upstream_requests_total{{provider={provider},status={status}}}");
    counts
        .0
        .lock()
        .expect("lock")
        .get(&name)
        .map_or(0, |c| c.load(Ordering::SeqCst))
}

#[tokio::test]
async fn upstream_requests_are_counted_once_per_attempt() {
    let counts = counts();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(200, r#"{"access_token":"a"}"#))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(json(200, "{}").set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let settings = HttpSettings {
        request_timeout: Duration::from_millis(200),
        ..HttpSettings::default()
    };
    let provider = build_with("metered", &oauth2_config(&server, ""), settings);
    let c = conn("metered");
    provider.refresh(&c).await.expect("ok");
    provider.refresh(&c).await.expect("ok");
    provider.refresh(&c).await.expect_err("503");
    provider.refresh(&c).await.expect_err("timeout");
    // Not attempted: not counted.
    provider
        .refresh(&connection("metered", AT, None, None))
        .await
        .expect_err("no rt");

    assert_eq!(count(&counts, "metered", "200"), 2);
    assert_eq!(count(&counts, "metered", "503"), 1);
    assert_eq!(count(&counts, "metered", "timeout"), 1);
    let total: u64 = ["200", "503", "timeout", "error"]
        .iter()
        .map(|s| count(&counts, "metered", s))
        .sum();
    assert_eq!(total, 4);
}

// ---------------------------------------------------------------------------------------
// Logs: no secret in any tracing event, at any level, from us or the HTTP stack

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process-wide capture. A thread-local subscriber (`set_default`) lost events here when
/// other tests of this binary ran in parallel (tracing caches each callsite's interest
/// globally), so the capture is the global subscriber: it also sees every other test's
/// events, which must not contain a secret either.
fn global_capture() -> Captured {
    static CAPTURE: OnceLock<Captured> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("first global subscriber");
            captured
        })
        .clone()
}

#[tokio::test]
async fn no_secret_in_any_log_line() {
    let captured = global_capture();

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json(
            400,
            &format!(r#"{{"error":{{"message":"bad {AT}","code":190}}}}"#),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(json(
            400,
            &format!(r#"{{"error":"invalid_grant","error_description":"{RT}"}}"#),
        ))
        .mount(&server)
        .await;
    let ig = build("instagram", &instagram_config(&server));
    let _ = ig.refresh(&ig_conn()).await.expect_err("190");
    for (name, cfg) in [
        ("generic", oauth2_config(&server, "")),
        ("tiktok", tiktok_config(&server)),
        ("reddit", reddit_config(&server, Some(CLIENT_SECRET))),
    ] {
        let _ = build(name, &cfg)
            .refresh(&conn(name))
            .await
            .expect_err("refused");
    }

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("token endpoint answered"),
        "our debug event is captured: {logs}"
    );
    for secret in [AT, RT, CLIENT_SECRET] {
        assert!(!logs.contains(secret), "secret in logs:\n{logs}");
    }
}

// ---------------------------------------------------------------------------------------
// Revocation at Reddit and TikTok (only when a revoke_url is configured)

#[tokio::test]
async fn reddit_revoke_shape_and_error_on_200() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/revoke_token"))
        .respond_with(ResponseTemplate::new(204))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/revoke_token"))
        .respond_with(json(200, r#"{"error":"invalid_client"}"#))
        .mount(&server)
        .await;
    let cfg = format!(
        "{}\nrevoke_url = \"{}/api/v1/revoke_token\"",
        reddit_config(&server, Some(CLIENT_SECRET)),
        server.uri()
    );
    let provider = build("reddit", &cfg);
    provider.revoke(&conn("reddit")).await.expect("revoked");
    let failure = provider
        .revoke(&conn("reddit"))
        .await
        .expect_err("error in a 200 body");
    assert_eq!(failure.class, FailureClass::Configuration);

    let requests = server.received_requests().await.expect("recording");
    let request = &requests[0];
    assert_eq!(
        header(request, "authorization"),
        Some(basic("reddit-app-id", CLIENT_SECRET).as_str())
    );
    assert_eq!(
        header(request, "user-agent"),
        Some("web:tokenwarden-test:1.0 (by /u/tester)")
    );
    assert_eq!(
        form(request),
        expected_form(&[("token", RT), ("token_type_hint", "refresh_token")])
    );
}

#[tokio::test]
async fn tiktok_revoke_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/oauth/revoke/"))
        .respond_with(json(200, "{}"))
        .expect(1)
        .mount(&server)
        .await;
    let cfg = format!(
        "{}\nrevoke_url = \"{}/v2/oauth/revoke/\"",
        tiktok_config(&server),
        server.uri()
    );
    let provider = build("tiktok", &cfg);
    provider.revoke(&conn("tiktok")).await.expect("revoked");
    let request = only_request(&server).await;
    assert_eq!(
        form(&request),
        expected_form(&[
            ("client_key", "aw-client-key"),
            ("client_secret", CLIENT_SECRET),
            ("token", AT),
        ])
    );
}
