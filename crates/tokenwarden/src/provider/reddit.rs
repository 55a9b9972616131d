//! The Reddit adapter: `POST /api/v1/access_token` with HTTP Basic `client_id:client_secret`
//! (installed apps have an empty secret) and a unique User-Agent, which Reddit requires and
//! without which it throttles hard, so configuration without one is refused. Reddit sends
//! `{"error":"invalid_grant"}` with HTTP 200 and answers bad client credentials with 401.

use async_trait::async_trait;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, USER_AGENT};
use time::OffsetDateTime;
use url::Url;

use crate::connection::{Connection, ProviderName};
use crate::provider::common::{
    config_error, connection_secrets, display_url, endpoint_or_default, endpoint_url, non_empty,
    required_refresh_token, revocation_token, send_recorded, user_agent,
};
use crate::provider::response::{Dialect, parse_revoke_response, parse_token_response};
use crate::provider::{
    AuthMethod, HttpClient, Provider, ProviderConfig, ProviderConfigError, ProviderInfo,
    ProviderKind, RefreshFailure, TokenResponse,
};
use crate::secret::ClientSecret;

/// Reddit's token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://www.reddit.com/api/v1/access_token";

const DIALECT: Dialect = Dialect {
    scope_separator: ' ',
    reset_header: Some("x-ratelimit-reset"),
    refresh_tokens: true,
};

/// Parses a Reddit token-endpoint answer.
pub fn parse_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<TokenResponse, RefreshFailure> {
    parse_token_response(&DIALECT, status, headers, body, now, &[])
}

/// The Reddit provider.
#[derive(Debug)]
pub struct RedditProvider {
    name: ProviderName,
    http: HttpClient,
    token_url: Url,
    /// Reddit's `/api/v1/revoke_token`, when configured.
    revoke_url: Option<Url>,
    client_id: String,
    client_secret: Option<ClientSecret>,
    user_agent: HeaderValue,
    rate_limit_per_second: Option<u32>,
}

impl RedditProvider {
    /// `client_id` and `user_agent` are required; `client_secret` may be absent or empty
    /// (installed apps).
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
        let client_id = non_empty(config.client_id.as_deref())
            .ok_or_else(|| config_error(&name, "client_id", "required for kind reddit"))?;
        let user_agent = user_agent(&name, config.user_agent.as_deref())?.ok_or_else(|| {
            config_error(
                &name,
                "user_agent",
                "required for kind reddit: a unique `<platform>:<app id>:<version> (by /u/<user>)`",
            )
        })?;
        let revoke_url = config
            .revoke_url
            .as_deref()
            .map(|u| endpoint_url(&name, "revoke_url", u))
            .transpose()?;
        Ok(Self {
            token_url,
            revoke_url,
            client_id,
            client_secret: config.client_secret.clone(),
            user_agent,
            rate_limit_per_second: config.rate_limit_per_second,
            http,
            name,
        })
    }
}

#[async_trait]
impl Provider for RedditProvider {
    fn name(&self) -> &ProviderName {
        &self.name
    }

    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: self.name.to_string(),
            kind: ProviderKind::Reddit,
            token_url: display_url(&self.token_url),
            auth_method: Some(AuthMethod::ClientSecretBasic),
            client_id: Some(self.client_id.clone()),
            rate_limit_per_second: self.rate_limit_per_second,
        }
    }

    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure> {
        let refresh_token =
            required_refresh_token(conn).map_err(RefreshFailure::not_refreshable)?;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let request = self.post(&self.token_url).form(&form);
        let raw = send_recorded(&self.http, &self.name, "refresh", request).await?;
        let secrets = connection_secrets(conn, self.client_secret.as_ref());
        parse_token_response(
            &DIALECT,
            raw.status,
            &raw.headers,
            &raw.body,
            self.http.now(),
            &secrets,
        )
    }

    /// Revokes the refresh token (or the access token when there is none) at the configured
    /// `revoke_url`, RFC 7009 style; without one this does nothing.
    async fn revoke(&self, conn: &Connection) -> Result<(), RefreshFailure> {
        let Some(revoke_url) = &self.revoke_url else {
            return Ok(());
        };
        let (token, hint) = revocation_token(conn);
        let request = self
            .post(revoke_url)
            .form(&[("token", token), ("token_type_hint", hint)]);
        let raw = send_recorded(&self.http, &self.name, "revoke", request).await?;
        let secrets = connection_secrets(conn, self.client_secret.as_ref());
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

impl RedditProvider {
    /// A POST with Reddit's required User-Agent and HTTP Basic client authentication.
    fn post(&self, url: &Url) -> reqwest::RequestBuilder {
        let secret = self
            .client_secret
            .as_ref()
            .map_or("", ClientSecret::expose_secret);
        self.http
            .client()
            .post(url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, self.user_agent.clone())
            // Reddit (like prawcore) takes the raw id and secret, not form-encoded.
            .basic_auth(&self.client_id, Some(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;
    use crate::provider::FailureKind;
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
            r#"{"access_token":"eyJ-at","token_type":"bearer","expires_in":3600,
                "refresh_token":"rt-same","scope":"identity read submit"}"#,
        )
        .expect("success");
        assert_eq!(ok.access_token.expose_secret(), "eyJ-at");
        assert_eq!(
            ok.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rt-same")
        );
        assert_eq!(ok.token_type.as_deref(), Some("bearer"));
        assert_eq!(ok.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(ok.scopes.expect("scopes"), ["identity", "read", "submit"]);
    }

    #[test]
    fn error_with_200() {
        let failure = parse(200, r#"{"error":"invalid_grant"}"#).expect_err("error");
        assert_eq!(failure.class, FailureClass::Permanent);
        assert_eq!(rejected(&failure), (200, "invalid_grant".to_owned(), None));
        let failure = parse(200, r#"{"error":"unsupported_grant_type"}"#).expect_err("error");
        assert_eq!(failure.class, FailureClass::Configuration);
    }

    #[test]
    fn bad_client_credentials_are_configuration() {
        for body in [
            r#"{"message":"Unauthorized","error":401}"#,
            "",
            "<html>401</html>",
        ] {
            let failure = parse(401, body).expect_err("401");
            assert_eq!(failure.class, FailureClass::Configuration, "{body}");
            assert!(matches!(
                failure.kind,
                FailureKind::Rejected { status: 401, .. }
            ));
        }
    }

    #[test]
    fn rate_limited_uses_reset_header() {
        let h = headers(&[("x-ratelimit-reset", "42"), ("x-ratelimit-remaining", "0")]);
        let failure = parse_response(
            429,
            &h,
            br#"{"message":"Too Many Requests","error":429}"#,
            t0(),
        )
        .expect_err("429");
        assert_eq!(failure.class, FailureClass::Transient);
        assert_eq!(failure.retry_after, Some(Duration::from_secs(42)));
    }

    #[test]
    fn server_errors_are_transient() {
        for status in [500, 502, 503, 504] {
            let failure = parse(status, "<html>we took too long</html>").expect_err("5xx");
            assert_eq!(failure.class, FailureClass::Transient);
        }
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
            if let Err(failure) = parse_response(status, &h, &body, t0()) {
                // Only transient failures carry a retry hint.
                if failure.retry_after.is_some() {
                    prop_assert_eq!(failure.class, FailureClass::Transient);
                }
            }
        }
    }
}
