//! Every catalog provider on the generic engine, refreshed against a local fake that answers
//! the way that provider does: the request carries what the entry says (client
//! authentication, body encoding, client id parameter, User-Agent) and nothing it should not
//! (no token parameters on a refresh), the answer parses (lifetimes as numbers, strings or
//! absent), and the provider's own error values classify as the entry declares. Then the odd
//! answers one by one: Slack's `ok: false` with HTTP 200 and its nested user token, Notion's
//! JSON request and answer without `expires_in`, GitHub's error with HTTP 200.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use time::OffsetDateTime;
use tokenwarden::provider::catalog::{self, BodyFormat, Engine, ExpiresIn};
use tokenwarden::provider::{self, AuthMethod, HttpClient, Provider, ProviderConfig};
use tokenwarden::secret::ClientSecret;
use tokenwarden::{
    AccessToken, Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, FailureClass,
    RefreshToken, Tokens,
};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const CLIENT_ID: &str = "client-id-0001";
const CLIENT_SECRET: &str = "client-secret-0002";
const RT: &str = "rt-old-secret-0003";
const UA: &str = "test:tokenwarden:1.0 (by /u/tester)";

fn connection(provider: &str) -> Connection {
    let now = OffsetDateTime::now_utc();
    Connection {
        meta: ConnectionMeta {
            key: ConnectionKey::parse("user-1", provider, "acct-1").expect("key"),
            token_type: "bearer".to_owned(),
            has_refresh_token: true,
            expires_at: Some(now + time::Duration::minutes(1)),
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
            access_token: AccessToken::new("at-old-secret-0004"),
            refresh_token: Some(RefreshToken::new(RT)),
        },
    }
}

/// Catalog provider `id` with only what an operator must give, its token endpoint pointed
/// at `server`.
fn build(id: &str, server: &MockServer) -> Arc<dyn Provider> {
    let entry = catalog::get(id).expect("entry");
    let config = ProviderConfig {
        catalog: Some(id.to_owned()),
        client_id: Some(CLIENT_ID.to_owned()),
        client_secret: Some(ClientSecret::new(CLIENT_SECRET)),
        token_url: Some(format!("{}/token", server.uri())),
        refresh_url: entry
            .refresh_url
            .as_ref()
            .map(|_| format!("{}/refresh", server.uri())),
        url_params: entry
            .url_params
            .iter()
            .filter(|(_, default)| default.is_empty())
            .map(|(name, _)| (name.clone(), "tenant-1".to_owned()))
            .collect(),
        user_agent: entry
            .user_agent_required
            .unwrap_or(false)
            .then(|| UA.to_owned()),
        ..ProviderConfig::default()
    };
    provider::build(
        "p".parse().expect("name"),
        &config,
        HttpClient::new(Default::default()).expect("client"),
    )
    .unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's parameters, whichever encoding it used.
fn params(request: &Request, format: BodyFormat) -> BTreeMap<String, String> {
    match format {
        BodyFormat::Form => url::form_urlencoded::parse(&request.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        BodyFormat::Json => {
            let value: serde_json::Value = serde_json::from_slice(&request.body).expect("json");
            value
                .as_object()
                .expect("object")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
                .collect()
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// The success answer `id`'s documentation describes, in the shape its entry declares.
fn success_body(expires: Option<ExpiresIn>) -> String {
    let lifetime = match expires {
        Some(ExpiresIn::Absent) => String::new(),
        Some(ExpiresIn::String) => r#","expires_in":"3600""#.to_owned(),
        Some(ExpiresIn::Number) | None => r#","expires_in":3600"#.to_owned(),
    };
    format!(
        r#"{{"access_token":"at-new","token_type":"bearer","refresh_token":"rt-new"{lifetime}}}"#
    )
}

#[tokio::test]
async fn every_generic_catalog_provider_refreshes_as_its_entry_says() {
    let mut checked = 0;
    for (id, entry) in catalog::entries() {
        if entry.kind != Engine::Oauth2 {
            continue;
        }
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "application/json")
                    .set_body_string(success_body(entry.expires_in)),
            )
            .mount(&server)
            .await;
        let provider = build(id, &server);
        let answer = provider
            .refresh(&connection("p"))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(answer.access_token.expose_secret(), "at-new", "{id}");
        assert_eq!(
            answer
                .refresh_token
                .as_ref()
                .map(RefreshToken::expose_secret),
            Some("rt-new"),
            "{id}"
        );
        let expected_lifetime = match entry.expires_in {
            Some(ExpiresIn::Absent) => None,
            _ => Some(Duration::from_secs(3600)),
        };
        assert_eq!(answer.expires_in, expected_lifetime, "{id}");

        let requests = server.received_requests().await.expect("recorded");
        assert_eq!(requests.len(), 1, "{id}");
        let request = &requests[0];
        let format = entry.token_request.unwrap_or_default();
        let expected_type = match format {
            BodyFormat::Form => "application/x-www-form-urlencoded",
            BodyFormat::Json => "application/json",
        };
        assert_eq!(header(request, "content-type"), Some(expected_type), "{id}");
        let got = params(request, format);
        assert_eq!(
            got.get("grant_type").map(String::as_str),
            Some("refresh_token"),
            "{id}"
        );
        assert_eq!(
            got.get("refresh_token").map(String::as_str),
            Some(RT),
            "{id}"
        );
        let id_param = entry.client_id_param.as_deref().unwrap_or("client_id");
        match entry.auth_method.unwrap_or_default() {
            AuthMethod::ClientSecretBasic => {
                assert_eq!(
                    header(request, "authorization"),
                    Some(basic(CLIENT_ID, CLIENT_SECRET).as_str()),
                    "{id}"
                );
                assert!(
                    !got.contains_key("client_secret"),
                    "{id}: secret sent twice"
                );
            }
            AuthMethod::ClientSecretPost => {
                assert_eq!(header(request, "authorization"), None, "{id}");
                assert_eq!(
                    got.get(id_param).map(String::as_str),
                    Some(CLIENT_ID),
                    "{id}"
                );
                assert_eq!(
                    got.get("client_secret").map(String::as_str),
                    Some(CLIENT_SECRET),
                    "{id}"
                );
            }
            AuthMethod::None => {
                assert_eq!(
                    got.get(id_param).map(String::as_str),
                    Some(CLIENT_ID),
                    "{id}"
                );
                assert!(!got.contains_key("client_secret"), "{id}");
            }
        }
        // A refresh sends nothing else: no code-exchange parameters, no scope.
        let allowed = ["grant_type", "refresh_token", id_param, "client_secret"];
        let extra: Vec<&String> = got
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        assert!(extra.is_empty(), "{id}: unexpected parameters {extra:?}");
        if entry.user_agent_required == Some(true) {
            assert_eq!(header(request, "user-agent"), Some(UA), "{id}");
        }
        assert_eq!(header(request, "accept"), Some("application/json"), "{id}");
        checked += 1;
    }
    assert!(checked >= 45, "only {checked} generic providers checked");
}

#[tokio::test]
async fn each_providers_own_error_values_classify_as_declared() {
    let mut checked = 0;
    for (id, entry) in catalog::entries() {
        let Some(errors) = &entry.errors else {
            continue;
        };
        if entry.kind != Engine::Oauth2 {
            continue;
        }
        for (value, class) in errors.classes() {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(400).set_body_string(
                    serde_json::json!({"error": value, "error_description": "nope"}).to_string(),
                ))
                .mount(&server)
                .await;
            let failure = build(id, &server)
                .refresh(&connection("p"))
                .await
                .expect_err(value);
            assert_eq!(failure.class, class, "{id}: {value}");
            // A value the entry declares is public vocabulary: shown as sent.
            assert_eq!(failure.provider_error(), Some(value), "{id}");
            checked += 1;
        }
    }
    assert!(checked > 0, "no catalog entry declares error values");
}

async fn answer_once(id: &str, status: u16, body: &str) -> (Arc<dyn Provider>, MockServer) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(status)
                .insert_header("content-type", "application/json")
                .set_body_string(body.to_owned()),
        )
        .mount(&server)
        .await;
    (build(id, &server), server)
}

#[tokio::test]
async fn slack_errors_come_with_http_200_and_ok_false() {
    for (error, class) in [
        ("invalid_refresh_token", FailureClass::Permanent),
        ("token_revoked", FailureClass::Permanent),
        ("invalid_client_id", FailureClass::Configuration),
        ("bad_client_secret", FailureClass::Configuration),
        ("internal_error", FailureClass::Transient),
    ] {
        let body = format!(r#"{{"ok":false,"error":"{error}"}}"#);
        let (provider, _server) = answer_once("slack", 200, &body).await;
        let failure = provider.refresh(&connection("p")).await.expect_err(error);
        assert_eq!(failure.class, class, "{error}");
        assert_eq!(failure.http_status(), Some(200));
    }
}

#[tokio::test]
async fn slack_user_token_nested_under_authed_user_is_found() {
    // The shape of oauth.v2.access for a user token: the bot fields at the top are absent
    // when only user scopes were asked for, and the user's token sits in `authed_user`.
    let body = r#"{"ok":true,"app_id":"A1","team":{"id":"T1","name":"Team"},
        "authed_user":{"id":"U1","scope":"chat:write,users:read","access_token":"xoxe.xoxp-new",
        "token_type":"user","refresh_token":"xoxe-1-new","expires_in":43200}}"#;
    let (provider, _server) = answer_once("slack", 200, body).await;
    let answer = provider.refresh(&connection("p")).await.expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "xoxe.xoxp-new");
    assert_eq!(
        answer
            .refresh_token
            .as_ref()
            .map(RefreshToken::expose_secret),
        Some("xoxe-1-new")
    );
    assert_eq!(answer.expires_in, Some(Duration::from_secs(43_200)));
    assert_eq!(answer.scopes.expect("scopes"), ["chat:write", "users:read"]);
}

#[tokio::test]
async fn notion_sends_json_with_basic_auth_and_its_answer_has_no_lifetime() {
    let body = r#"{"access_token":"ntn_new","token_type":"bearer","refresh_token":"nrt_new",
        "bot_id":"b1","workspace_id":"w1","workspace_name":"W","owner":{"type":"user"}}"#;
    let (provider, server) = answer_once("notion", 200, body).await;
    let answer = provider.refresh(&connection("p")).await.expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "ntn_new");
    assert_eq!(answer.expires_in, None);
    let request = &server.received_requests().await.expect("recorded")[0];
    assert_eq!(header(request, "content-type"), Some("application/json"));
    assert_eq!(
        header(request, "authorization"),
        Some(basic(CLIENT_ID, CLIENT_SECRET).as_str())
    );
    let sent: serde_json::Value = serde_json::from_slice(&request.body).expect("json");
    assert_eq!(
        sent,
        serde_json::json!({"grant_type": "refresh_token", "refresh_token": RT})
    );
}

#[tokio::test]
async fn github_refusal_with_http_200_is_permanent() {
    let body = r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired.","error_uri":"https://docs.github.com"}"#;
    let (provider, _server) = answer_once("github", 200, body).await;
    let failure = provider
        .refresh(&connection("p"))
        .await
        .expect_err("refused");
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_eq!(failure.provider_error(), Some("bad_refresh_token"));
}

#[tokio::test]
async fn lifetimes_given_as_strings_are_read() {
    let body = r#"{"access_token":"at","token_type":"Bearer","expires_in":"3599","refresh_token_expires_in":"7776000"}"#;
    let (provider, _server) = answer_once("google", 200, body).await;
    let answer = provider.refresh(&connection("p")).await.expect("refresh");
    assert_eq!(answer.expires_in, Some(Duration::from_secs(3599)));
    assert_eq!(
        answer.refresh_expires_in,
        Some(Duration::from_secs(7_776_000))
    );
}

#[tokio::test]
async fn a_separate_refresh_endpoint_gets_the_refreshes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string(r#"{"access_token":"figd_new","expires_in":7776000}"#),
        )
        .mount(&server)
        .await;
    let answer = build("figma", &server)
        .refresh(&connection("p"))
        .await
        .expect("refresh");
    assert_eq!(answer.access_token.expose_secret(), "figd_new");
    assert!(
        answer.refresh_token.is_none(),
        "the old refresh token is kept"
    );
    let requests = server.received_requests().await.expect("recorded");
    let paths: Vec<&str> = requests.iter().map(|r| r.url.path()).collect();
    assert_eq!(paths, ["/refresh"]);
}
