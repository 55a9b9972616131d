//! The connect flow's expiry, driven with a clock the test controls (the server has none):
//! a link opened, or a callback arriving, after the session's `expires_at` sends the browser
//! back to the application with `CONNECT_SESSION_EXPIRED`, records the session as expired,
//! never calls the token endpoint, and stores no connection. One second earlier the same
//! steps complete, so these tests fail if expiry is not checked (or checked a step late).
//! Each test runs on the memory store and on SQLite (whose conditional UPDATEs compare the
//! times themselves).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;
use tokenwarden::clock::{Clock, ManualClock};
use tokenwarden::connect::{
    BrowserAnswer, CallbackParams, ConnectConfig, Connector, NewSession, PublicStatus, SessionState,
};
use tokenwarden::provider::{self, HttpClient, HttpSettings, ProviderConfig};
use tokenwarden::store::{MemoryStore, SqliteStore, Store};
use tokenwarden::{ConnectionKey, KeyRing, Warden};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Far from the machine's clock: a check against wall time could not pass by accident.
const T0: OffsetDateTime = datetime!(2031-03-04 09:00 UTC);
const TTL: Duration = Duration::from_secs(900);
const RETURN_URL: &str = "https://app.example.com/done";

struct Flow {
    connector: Connector,
    clock: ManualClock,
    store: Arc<dyn Store>,
    provider: MockServer,
}

fn key_ring() -> Arc<KeyRing> {
    let key = KeyRing::generate_key_base64();
    Arc::new(KeyRing::from_base64("k1", [("k1", key.as_str())]).expect("key ring"))
}

/// A flow on each store.
async fn flows() -> Vec<(&'static str, Flow)> {
    let sqlite = SqliteStore::connect("sqlite::memory:", key_ring())
        .await
        .expect("sqlite");
    vec![
        ("memory", flow(Arc::new(MemoryStore::new(key_ring()))).await),
        ("sqlite", flow(Arc::new(sqlite)).await),
    ]
}

async fn flow(store: Arc<dyn Store>) -> Flow {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "expiry-access-token",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "expiry-refresh-token",
        })))
        .mount(&provider)
        .await;
    let clock = ManualClock::new(T0);
    let http = HttpClient::new(HttpSettings::default())
        .expect("http client")
        .with_clock(Arc::new(clock.clone()));
    let config: ProviderConfig = toml::from_str(&format!(
        r#"
kind = "oauth2"
client_id = "client-1"
client_secret = "secret-1"
authorization_url = "https://auth.example.com/authorize"
token_url = "{}/token"
"#,
        provider.uri()
    ))
    .expect("provider config");
    let fake = provider::build("fake".parse().expect("name"), &config, http).expect("provider");
    let warden = Warden::builder(store.clone())
        .provider(fake)
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("warden");
    let connector = Connector::new(
        warden,
        ConnectConfig {
            public_url: Url::parse("https://tw.example.com").expect("url"),
            session_ttl: TTL,
            return_urls: vec![Url::parse(RETURN_URL).expect("url")],
        },
    );
    Flow {
        connector,
        clock,
        store,
        provider,
    }
}

impl Flow {
    /// A new session for user `u`, account `acct`: its id and its link's token.
    async fn create(&self) -> (String, String) {
        let created = self
            .connector
            .create_session(NewSession {
                user_id: "u".parse().expect("user"),
                provider: "fake".parse().expect("provider"),
                account_id: Some("acct".parse().expect("account")),
                return_url: RETURN_URL.to_owned(),
                scopes: None,
            })
            .await
            .expect("session created");
        let token = created
            .connect_url
            .rsplit('/')
            .next()
            .expect("token")
            .to_owned();
        assert!(
            created
                .connect_url
                .starts_with("https://tw.example.com/connect/")
        );
        (created.session.id, token)
    }

    /// Opens the link as a browser: the `state` sent to the provider and the cookie's value.
    async fn open(&self, token: &str) -> (String, String) {
        match self.connector.open(token).await {
            BrowserAnswer::ToProvider { location, cookie } => {
                let state = location
                    .query_pairs()
                    .find(|(k, _)| k == "state")
                    .map(|(_, v)| v.into_owned())
                    .expect("state on the authorization URL");
                (state, cookie.value)
            }
            other => panic!("expected a redirect to the provider, got {other:?}"),
        }
    }

    async fn callback(&self, state: &str, cookie: &str) -> BrowserAnswer {
        self.connector
            .callback(
                CallbackParams {
                    state: Some(state.to_owned()),
                    code: Some("expiry-code".to_owned()),
                    ..CallbackParams::default()
                },
                Some(cookie),
            )
            .await
    }

    async fn token_requests(&self) -> usize {
        self.provider
            .received_requests()
            .await
            .map_or(0, |r| r.len())
    }

    async fn connection_stored(&self) -> bool {
        let key = ConnectionKey::parse("u", "fake", "acct").expect("key");
        self.store.get(&key).await.expect("store read").is_some()
    }
}

/// The query pairs of a redirect to the application, asserting it is one.
fn to_app(answer: &BrowserAnswer, session_id: &str) -> Vec<(String, String)> {
    let BrowserAnswer::ToApp {
        location,
        session_id: id,
        ..
    } = answer
    else {
        panic!("expected a redirect to the application, got {answer:?}");
    };
    assert_eq!(id, session_id);
    assert!(
        location.as_str().starts_with(RETURN_URL),
        "{}",
        location.as_str()
    );
    location
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn pairs(session_id: &str, status: &str, error: Option<&str>) -> Vec<(String, String)> {
    let mut out = vec![
        ("session_id".to_owned(), session_id.to_owned()),
        ("status".to_owned(), status.to_owned()),
    ];
    if let Some(code) = error {
        out.push(("error".to_owned(), code.to_owned()));
    }
    out
}

#[tokio::test]
async fn a_link_opened_after_expiry_returns_to_the_app_expired() {
    for (store, f) in flows().await {
        eprintln!("store: {store}");
        let (id, token) = f.create().await;
        f.clock.advance(TTL);
        let answer = f.connector.open(&token).await;
        assert_eq!(
            to_app(&answer, &id),
            pairs(&id, "failed", Some("CONNECT_SESSION_EXPIRED"))
        );
        let session = f.connector.session(&id).await.expect("session");
        assert_eq!(session.state, SessionState::Expired);
        assert_eq!(
            session.error.as_ref().map(|e| e.code.as_str()),
            Some("CONNECT_SESSION_EXPIRED")
        );
        assert_eq!(session.public_status(f.clock.now()), PublicStatus::Expired);
        // The link stays dead: opening it again is a page, not a second trip to the provider.
        match f.connector.open(&token).await {
            BrowserAnswer::Page(e) => assert_eq!(e.code().as_str(), "CONNECT_SESSION_EXPIRED"),
            other => panic!("expected a page, got {other:?}"),
        }
        assert_eq!(f.token_requests().await, 0);
        assert!(!f.connection_stored().await);
    }
}

#[tokio::test]
async fn a_link_opened_just_before_expiry_goes_to_the_provider() {
    for (store, f) in flows().await {
        eprintln!("store: {store}");
        let (_, token) = f.create().await;
        f.clock.advance(TTL - Duration::from_secs(1));
        let (state, _) = f.open(&token).await;
        assert!(!state.is_empty());
    }
}

#[tokio::test]
async fn a_callback_after_expiry_returns_to_the_app_expired_without_exchanging_the_code() {
    for (store, f) in flows().await {
        eprintln!("store: {store}");
        let (id, token) = f.create().await;
        let (state, cookie) = f.open(&token).await;
        f.clock.advance(TTL);
        let answer = f.callback(&state, &cookie).await;
        assert_eq!(
            to_app(&answer, &id),
            pairs(&id, "failed", Some("CONNECT_SESSION_EXPIRED"))
        );
        let BrowserAnswer::ToApp { clear_cookie, .. } = &answer else {
            unreachable!("checked above")
        };
        assert!(clear_cookie.is_some(), "the flow cookie is cleared");
        let session = f.connector.session(&id).await.expect("session");
        assert_eq!(session.state, SessionState::Expired);
        assert_eq!(
            session.error.as_ref().map(|e| e.code.as_str()),
            Some("CONNECT_SESSION_EXPIRED")
        );
        assert_eq!(f.token_requests().await, 0, "the code was not exchanged");
        assert!(!f.connection_stored().await);
        // A second try with the same state finds a finished session: a page, still no exchange.
        match f.callback(&state, &cookie).await {
            BrowserAnswer::Page(e) => assert_eq!(e.code().as_str(), "CONNECT_STATE_INVALID"),
            other => panic!("expected a page, got {other:?}"),
        }
        assert_eq!(f.token_requests().await, 0);
    }
}

#[tokio::test]
async fn a_callback_just_before_expiry_completes() {
    for (store, f) in flows().await {
        eprintln!("store: {store}");
        let (id, token) = f.create().await;
        let (state, cookie) = f.open(&token).await;
        f.clock.advance(TTL - Duration::from_secs(1));
        let answer = f.callback(&state, &cookie).await;
        assert_eq!(to_app(&answer, &id), pairs(&id, "completed", None));
        assert_eq!(f.token_requests().await, 1);
        assert!(f.connection_stored().await);
        let session = f.connector.session(&id).await.expect("session");
        assert_eq!(session.state, SessionState::Completed);
        // Finished sessions do not turn "expired" when their time passes.
        f.clock.advance(TTL);
        assert_eq!(
            session.public_status(f.clock.now()),
            PublicStatus::Completed
        );
    }
}

#[tokio::test]
async fn an_unopened_session_reads_as_expired_once_its_time_has_passed() {
    for (store, f) in flows().await {
        eprintln!("store: {store}");
        let (id, _) = f.create().await;
        let session = f.connector.session(&id).await.expect("session");
        assert_eq!(session.public_status(f.clock.now()), PublicStatus::Pending);
        f.clock.advance(TTL);
        assert_eq!(session.public_status(f.clock.now()), PublicStatus::Expired);
    }
}
