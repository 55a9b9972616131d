//! The TikTok Login Kit v2 adapter: `POST /v2/oauth/token/` with `client_key` and
//! `client_secret` in the form body. TikTok rotates refresh tokens (the new one is returned
//! and must be saved), reports `refresh_expires_in`, separates scopes with commas, and sends
//! OAuth errors as `{"error","error_description","log_id"}` with a status that is not
//! documented, so the body's `error` is checked whatever the status, 200 included.

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, USER_AGENT};
use time::OffsetDateTime;
use url::Url;

use crate::connection::{Connection, ProviderName};
use crate::provider::common::{
    config_error, connection_secrets, display_url, endpoint_or_default, endpoint_url, non_empty,
    required_refresh_token, send_recorded, user_agent,
};
use crate::provider::response::{Dialect, parse_revoke_response, parse_token_response};
use crate::provider::{
    AuthMethod, HttpClient, Provider, ProviderConfig, ProviderConfigError, ProviderInfo,
    ProviderKind, RefreshFailure, TokenResponse,
};
use crate::secret::ClientSecret;

/// TikTok's token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://open.tiktokapis.com/v2/oauth/token/";

const DIALECT: Dialect = Dialect {
    scope_separator: ',',
    reset_header: Some("x-ratelimit-reset"),
    refresh_tokens: true,
};

/// Parses a TikTok token-endpoint answer.
pub fn parse_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<TokenResponse, RefreshFailure> {
    parse_token_response(&DIALECT, status, headers, body, now, &[])
}

/// The TikTok provider.
#[derive(Debug)]
pub struct TikTokProvider {
    name: ProviderName,
    http: HttpClient,
    token_url: Url,
    /// TikTok's `/v2/oauth/revoke/`, when configured.
    revoke_url: Option<Url>,
    client_key: String,
    client_secret: ClientSecret,
    user_agent: Option<HeaderValue>,
    rate_limit_per_second: Option<u32>,
}

impl TikTokProvider {
    /// `client_id` (TikTok's client key) and `client_secret` are required.
    pub fn new(
        name: ProviderName,
        config: &ProviderConfig,
        http: HttpClient,
    ) -> Result<Self, ProviderConfigError> {
        let token_url = endpoint_or_default(
            &name,
            "token_url",
            config.token_url.as_deref(),
            DEFAULT_TOKEN_URL,
        )?;
        let client_key = non_empty(config.client_id.as_deref())
            .ok_or_else(|| config_error(&name, "client_id", "required (TikTok's client_key)"))?;
        let client_secret = config
            .client_secret
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| config_error(&name, "client_secret", "required for kind tiktok"))?;
        let user_agent = user_agent(&name, config.user_agent.as_deref())?;
        let revoke_url = config
            .revoke_url
            .as_deref()
            .map(|u| endpoint_url(&name, "revoke_url", u))
            .transpose()?;
        Ok(Self {
            token_url,
            revoke_url,
            client_key,
            client_secret,
            user_agent,
            rate_limit_per_second: config.rate_limit_per_second,
            http,
            name,
        })
    }
}

#[async_trait]
impl Provider for TikTokProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: self.name.to_string(),
            kind: ProviderKind::Tiktok,
            token_url: display_url(&self.token_url),
            auth_method: Some(AuthMethod::ClientSecretPost),
            client_id: Some(self.client_key.clone()),
            rate_limit_per_second: self.rate_limit_per_second,
        }
    }

    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure> {
        let refresh_token =
            required_refresh_token(conn).map_err(RefreshFailure::not_refreshable)?;
        let form = [
            ("client_key", self.client_key.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let raw = send_recorded(
            &self.http,
            &self.name,
            "refresh",
            self.post(&self.token_url, &form),
        )
        .await?;
        let secrets = connection_secrets(conn, Some(&self.client_secret));
        parse_token_response(
            &DIALECT,
            raw.status,
            &raw.headers,
            &raw.body,
            self.http.now(),
            &secrets,
        )
    }

    /// Revokes the access token (which ends the grant) at the configured `revoke_url`, with
    /// the client credentials in the body as TikTok wants; without one this does nothing.
    async fn revoke(&self, conn: &Connection) -> Result<(), RefreshFailure> {
        let Some(revoke_url) = &self.revoke_url else {
            return Ok(());
        };
        let form = [
            ("client_key", self.client_key.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("token", conn.tokens.access_token.expose_secret()),
        ];
        let raw = send_recorded(
            &self.http,
            &self.name,
            "revoke",
            self.post(revoke_url, &form),
        )
        .await?;
        let secrets = connection_secrets(conn, Some(&self.client_secret));
        parse_revoke_response(
            &DIALECT,
            raw.status,
            &raw.headers,
            &raw.body,
            self.http.now(),
            &secrets,
        )
    }
}

impl TikTokProvider {
    fn post(&self, url: &Url, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .client()
            .post(url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(ua) = &self.user_agent {
            request = request.header(USER_AGENT, ua.clone());
        }
        request.form(form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;
    use crate::provider::test_support::{
        any_headers, any_status, headers, json_like_body, rejected, t0,
    };
    use proptest::prelude::*;
    use std::time::Duration;

    fn parse(status: u16, body: &str) -> Result<TokenResponse, RefreshFailure> {
        parse_response(status, &HeaderMap::new(), body.as_bytes(), t0())
    }

    #[test]
    fn documented_success() {
        let ok = parse(
            200,
            r#"{"open_id":"o-1","scope":"user.info.basic,video.list","access_token":"act.1",
                "expires_in":86400,"refresh_token":"rft.2","refresh_expires_in":31536000,
                "token_type":"Bearer"}"#,
        )
        .expect("success");
        assert_eq!(ok.access_token.expose_secret(), "act.1");
        // Rotation: the new refresh token comes back.
        assert_eq!(
            ok.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rft.2")
        );
        assert_eq!(ok.expires_in, Some(Duration::from_secs(86_400)));
        assert_eq!(ok.refresh_expires_in, Some(Duration::from_secs(31_536_000)));
        assert_eq!(
            ok.scopes.expect("scopes"),
            ["user.info.basic", "video.list"]
        );
    }

    #[test]
    fn errors_on_200_win() {
        for (error, class) in [
            ("invalid_grant", FailureClass::Permanent),
            ("access_denied", FailureClass::Permanent),
            ("invalid_client", FailureClass::Configuration),
            ("unauthorized_client", FailureClass::Configuration),
            ("invalid_request", FailureClass::Configuration),
            ("server_error", FailureClass::Transient),
            ("temporarily_unavailable", FailureClass::Transient),
        ] {
            let body = format!(
                r#"{{"error":"{error}","error_description":"Refresh token is invalid or expired.","log_id":"2026112612"}}"#
            );
            let failure = parse(200, &body).expect_err(error);
            assert_eq!(failure.class, class, "{error}");
            let (status, value, description) = rejected(&failure);
            assert_eq!((status, value.as_str()), (200, error));
            assert_eq!(
                description.as_deref(),
                Some("Refresh token is invalid or expired.")
            );
        }
    }

    #[test]
    fn empty_error_field_is_not_an_error() {
        let ok = parse(
            200,
            r#"{"access_token":"a","error":"","error_description":""}"#,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn api_style_error_object() {
        let h = headers(&[("x-ratelimit-reset", "12")]);
        let body =
            br#"{"error":{"code":"rate_limit_exceeded","message":"slow down","log_id":"x"}}"#;
        let failure = parse_response(429, &h, body, t0()).expect_err("429");
        assert_eq!(failure.class, FailureClass::Transient);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(failure.provider_error(), Some("rate_limit_exceeded"));
    }

    #[test]
    fn rate_limit_reset_header() {
        let h = headers(&[("x-ratelimit-reset", "30")]);
        let failure = parse_response(429, &h, b"", t0()).expect_err("429");
        assert_eq!(failure.class, FailureClass::Transient);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));
        // Retry-After wins when both are present.
        let h = headers(&[("x-ratelimit-reset", "30"), ("retry-after", "3")]);
        let failure = parse_response(429, &h, b"", t0()).expect_err("429");
        assert_eq!(failure.retry_after, Some(Duration::from_secs(3)));
        // The reset header alone on a 500 is not a rate limit.
        let h = headers(&[("x-ratelimit-reset", "30")]);
        let failure = parse_response(500, &h, b"", t0()).expect_err("500");
        assert_eq!(failure.retry_after, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics(status in any_status(), body in proptest::collection::vec(any::<u8>(), 0..512),
                        h in any_headers()) {
            let _ = parse_response(status, &h, &body, t0());
        }

        #[test]
        fn never_panics_on_json(status in any_status(), body in json_like_body(), h in any_headers()) {
            if let Ok(ok) = parse_response(status, &h, &body, t0()) {
                prop_assert!(!ok.access_token.is_empty());
                prop_assert!((200..300).contains(&status));
            }
        }
    }
}
