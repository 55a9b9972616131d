//! Issue 9, finding 6, from the warden's side: a grant whose refresh token is a single
//! character and that the provider refuses with `invalid_grant` is marked
//! `needs_reconnect`. Before the fix, redacting `t` turned the answer's `invalid_grant` into
//! `invalid_gran[REDACTED]`, the refusal was classified `configuration`, and the revoked grant
//! stayed `active`. The provider is the real generic adapter, built by `provider::build`,
//! against a wiremock token endpoint.

mod common;

use common::{import, memory_store};
use time::OffsetDateTime;
use tokenwarden::provider::{self, HttpClient, ProviderConfig};
use tokenwarden::{ConnectionKey, ConnectionStatus, FailureClass, RefreshOptions, Warden};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn issue_9_one_character_refresh_token_revoked_grant_needs_reconnect() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_raw(
            br#"{"error":"invalid_grant","error_description":"token t was revoked"}"#.to_vec(),
            "application/json",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let config: ProviderConfig = toml::from_str(&format!(
        r#"kind = "oauth2"
client_id = "client-1"
client_secret = "cs-long-enough-0001"
token_url = "{}/token""#,
        server.uri()
    ))
    .expect("config");
    let http = HttpClient::new(Default::default()).expect("http client");
    let provider =
        provider::build("generic".parse().expect("name"), &config, http).expect("provider");
    let warden = Warden::builder(memory_store())
        .provider(provider)
        .build()
        .expect("valid warden settings");
    let key = ConnectionKey::parse("u1", "generic", "a1").expect("key");
    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(1);
    warden
        .import(key.clone(), import("at-1", Some("t"), Some(expires_at)))
        .await
        .expect("import");

    let err = warden
        .refresh_token(&key, RefreshOptions::default())
        .await
        .expect_err("the grant is revoked");
    assert_eq!(err.meta().failure, Some(FailureClass::Permanent), "{err:?}");
    assert_eq!(err.meta().provider_error.as_deref(), Some("invalid_grant"));
    assert!(err.reconnect(), "{err:?}");
    let meta = warden.connection(&key).await.expect("connection");
    assert_eq!(meta.status, ConnectionStatus::NeedsReconnect);
}
