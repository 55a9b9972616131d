//! The connect flow across instances on PostgreSQL (issue 11): a session created and opened
//! on one instance is finished by another, with nothing but the database between them (the
//! PKCE verifier comes back sealed from the row), and the state stays single use across
//! instances. Needs `TOKENWARDEN_TEST_POSTGRES_URL` when built; each run has a schema of its
//! own, dropped when it passes.

use std::sync::Arc;

use serde_json::json;
use tokenwarden::connect::{BrowserAnswer, CallbackParams, ConnectConfig, Connector, NewSession};
use tokenwarden::provider::{self, HttpClient, ProviderConfig};
use tokenwarden::store::PgStore;
use tokenwarden::{AccountId, ConnectionKey, ErrorCode, KeyRing, ProviderName, UserId, Warden};
use tokenwarden_testkit::conformance::TestDb;
use tokenwarden_testkit::postgres_url;
use url::Url;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const RETURN_URL: &str = "https://app.example.com/connect/done";

async fn instance(url: &str, db: &TestDb, keys: &Arc<KeyRing>, upstream: &str) -> Connector {
    let store = PgStore::connect_in_schema(url, db.name(), Arc::clone(keys))
        .await
        .expect("connect");
    let config: ProviderConfig = toml::from_str(&format!(
        r#"kind = "oauth2"
client_id = "client-1"
client_secret = "client-secret-cross-instance"
authorization_url = "{upstream}/authorize"
token_url = "{upstream}/token""#
    ))
    .expect("provider config");
    let provider = provider::build(
        ProviderName::parse("acme").expect("name"),
        &config,
        HttpClient::new(Default::default()).expect("http"),
    )
    .expect("provider");
    let warden = Warden::builder(Arc::new(store))
        .provider(provider)
        .build()
        .expect("warden");
    Connector::new(
        warden,
        ConnectConfig {
            public_url: Url::parse("https://tw.example.com").expect("url"),
            session_ttl: std::time::Duration::from_secs(900),
            return_urls: vec![Url::parse(RETURN_URL).expect("url")],
        },
    )
}

fn param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(tw_postgres), ignore = "needs TOKENWARDEN_TEST_POSTGRES_URL")]
async fn a_flow_opened_on_one_instance_finishes_on_another() {
    let url = postgres_url();
    let db = TestDb::fresh("connect_cross");
    let keys = Arc::new(
        KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])
            .expect("keys"),
    );
    let upstream = MockServer::start().await;
    let a = instance(&url, &db, &keys, &upstream.uri()).await;
    let b = instance(&url, &db, &keys, &upstream.uri()).await;

    let created = a
        .create_session(NewSession {
            user_id: UserId::parse("user-1").expect("id"),
            provider: ProviderName::parse("acme").expect("name"),
            account_id: Some(AccountId::parse("acct-1").expect("id")),
            return_url: RETURN_URL.to_owned(),
            scopes: None,
        })
        .await
        .expect("session");
    let token = created.connect_url.rsplit('/').next().expect("token");
    let BrowserAnswer::ToProvider { location, cookie } = a.open(token).await else {
        panic!("opening the link must send the browser to the provider");
    };
    let state = param(&location, "state").expect("state");
    assert_eq!(
        param(&location, "code_challenge_method").as_deref(),
        Some("S256")
    );

    // The token endpoint grants the code only with the verifier whose S256 is the challenge
    // the browser carried: B can only send it if it came back from the database.
    let challenge = param(&location, "code_challenge").expect("challenge");
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(body_string_contains("code=the-code"))
        .and(move |request: &wiremock::Request| {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
                .into_owned()
                .collect();
            form.iter()
                .find(|(k, _)| k == "code_verifier")
                .is_some_and(|(_, v)| {
                    use base64::Engine as _;
                    use sha2::Digest as _;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(sha2::Sha256::digest(v.as_bytes()))
                        == challenge
                })
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "at-cross", "refresh_token": "rt-cross",
            "expires_in": 3600, "token_type": "Bearer",
        })))
        .expect(1)
        .mount(&upstream)
        .await;

    let params = CallbackParams {
        state: Some(state.clone()),
        code: Some("the-code".to_owned()),
        ..CallbackParams::default()
    };
    let BrowserAnswer::ToApp { location, .. } = b
        .callback(params.clone(), Some(cookie.value.as_str()))
        .await
    else {
        panic!("the callback on B must return to the app");
    };
    assert_eq!(
        param(&location, "status").as_deref(),
        Some("completed"),
        "{location}"
    );

    // Replayed on A: refused, the state was used (on B).
    let BrowserAnswer::Page(error) = a.callback(params, Some(cookie.value.as_str())).await else {
        panic!("a replay must be refused with a page");
    };
    assert_eq!(error.code(), ErrorCode::ConnectStateInvalid);

    let session = a.session(&created.session.id).await.expect("session");
    assert_eq!(session.public_status(a.now()).as_str(), "completed");
    let key = ConnectionKey::parse("user-1", "acme", "acct-1").expect("key");
    let store = PgStore::connect_in_schema(&url, db.name(), Arc::clone(&keys))
        .await
        .expect("connect");
    let conn = tokenwarden::store::Store::get(&store, &key)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(conn.tokens.access_token.expose_secret(), "at-cross");

    drop((a, b, store));
    use sqlx::Connection as _;
    let mut pg = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        db.name()
    )))
    .execute(&mut pg)
    .await
    .expect("drop schema");
}
