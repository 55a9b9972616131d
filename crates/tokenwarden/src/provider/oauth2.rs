//! The generic OAuth 2.0 engine, which runs every provider but Instagram: the refresh-token
//! grant (RFC 6749 §6) or the client-credentials grant (§4.4) at the token endpoint, client
//! authentication by `client_secret_post`, `client_secret_basic` (§2.3.1) or none, a form or
//! JSON body, and RFC 7009 revocation. What differs between providers is data in
//! [`ProviderSettings`] (from the catalog): TikTok's `client_key` parameter and
//! access-token revocation, Reddit's Basic authentication and required User-Agent, scope
//! separators, rate-limit reset headers, JSON token requests (Atlassian, Notion) and each
//! provider's own error values.

use async_trait::async_trait;
use reqwest::RequestBuilder;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, USER_AGENT};
use time::OffsetDateTime;
use url::Url;

use crate::connection::{Connection, ProviderName};
use crate::provider::catalog::{BodyFormat, RevokeToken};
use crate::provider::common::{
    connection_secrets, display_url, required_refresh_token, revocation_token, send_recorded,
};
use crate::provider::response::{Dialect, parse_revoke_response, parse_token_response};
use crate::provider::{
    AuthMethod, Grant, HttpClient, NotRefreshable, Provider, ProviderInfo, ProviderSettings,
    RefreshFailure, TokenResponse,
};
use crate::secret::ClientSecret;

/// Parses an RFC 6749 token-endpoint answer (§5.1 success, §5.2 error).
pub fn parse_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<TokenResponse, RefreshFailure> {
    parse_token_response(&Dialect::RFC6749, status, headers, body, now, &[])
}

/// A provider on the generic engine.
#[derive(Debug)]
pub struct OAuth2Provider {
    settings: ProviderSettings,
    http: HttpClient,
}

impl OAuth2Provider {
    /// A provider from resolved settings (see [`ProviderSettings::resolve`], which checked
    /// them).
    pub fn new(settings: ProviderSettings, http: HttpClient) -> Self {
        Self { settings, http }
    }

    /// The settings this provider runs on.
    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// A POST to `url` with the common headers, client authentication and `params` in the
    /// configured encoding (see [`token_post`]).
    fn post<'a>(&'a self, url: &Url, params: Vec<(&'a str, &'a str)>) -> RequestBuilder {
        token_post(&self.settings, &self.http, url, params)
    }

    /// The token request's parameters besides client authentication.
    fn grant_params<'a>(
        &'a self,
        conn: &'a Connection,
        scope: &'a str,
    ) -> Result<Vec<(&'a str, &'a str)>, RefreshFailure> {
        let s = &self.settings;
        let params = match s.grant {
            Grant::AuthorizationCode => {
                let refresh_token =
                    required_refresh_token(conn).map_err(RefreshFailure::not_refreshable)?;
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.expose_secret()),
                ]
            }
            Grant::ClientCredentials => {
                let mut params = vec![("grant_type", "client_credentials")];
                if !scope.is_empty() {
                    params.push(("scope", scope));
                }
                if let Some(audience) = &s.audience {
                    params.push(("audience", audience));
                }
                if let Some(resource) = &s.resource {
                    params.push(("resource", resource));
                }
                // Extra token parameters belong to grants that obtain a token, not to
                // refreshes (Shopify's `expiring=1` asks for an expiring token on exchange).
                params.extend(s.token_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                params
            }
        };
        Ok(params)
    }
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A GET to `url` with the common headers (JSON accepted, the provider's User-Agent):
/// Instagram's refresh and exchange, user-info requests.
pub(crate) fn provider_get(s: &ProviderSettings, http: &HttpClient, url: Url) -> RequestBuilder {
    let request = http
        .client()
        .get(url)
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    match &s.user_agent {
        Some(ua) => request.header(USER_AGENT, ua.clone()),
        None => request,
    }
}

/// A POST to `url` with the common headers (JSON accepted, the provider's User-Agent),
/// client authentication as the settings say, and `params` in the configured encoding; the
/// credentials join `params` when they travel in the body. Refreshes, revocations and the
/// connect flow's code exchange all use it.
pub(crate) fn token_post<'a>(
    s: &'a ProviderSettings,
    http: &HttpClient,
    url: &Url,
    mut params: Vec<(&'a str, &'a str)>,
) -> RequestBuilder {
    let mut request = http
        .client()
        .post(url.clone())
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(ua) = &s.user_agent {
        request = request.header(USER_AGENT, ua.clone());
    }
    let client_id = s.client_id.as_deref().unwrap_or_default();
    let secret = s.client_secret.as_ref().map(ClientSecret::expose_secret);
    match s.auth_method {
        AuthMethod::ClientSecretPost => {
            params.insert(0, (s.client_id_param.as_str(), client_id));
            if let Some(secret) = secret {
                params.insert(1, ("client_secret", secret));
            }
        }
        AuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
            let id = form_encode(client_id);
            let secret = form_encode(secret.unwrap_or_default());
            request = request.basic_auth(id, Some(secret));
        }
        AuthMethod::None => params.insert(0, (s.client_id_param.as_str(), client_id)),
    }
    match s.token_request {
        BodyFormat::Form => request.form(&params),
        BodyFormat::Json => {
            let object: serde_json::Map<String, serde_json::Value> = params
                .into_iter()
                .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                .collect();
            request.json(&object)
        }
    }
}

#[async_trait]
impl Provider for OAuth2Provider {
    fn name(&self) -> &ProviderName {
        &self.settings.name
    }

    fn info(&self) -> ProviderInfo {
        self.settings.info()
    }

    fn grant(&self) -> Grant {
        self.settings.grant
    }

    fn connect_client(&self) -> Option<(&ProviderSettings, &HttpClient)> {
        Some((&self.settings, &self.http))
    }

    /// A user connection needs its refresh token; an application token is obtained again
    /// with the client's own credentials, so it can always be refreshed.
    fn check_refreshable(
        &self,
        conn: &Connection,
        _now: OffsetDateTime,
    ) -> Result<(), NotRefreshable> {
        match self.settings.grant {
            Grant::AuthorizationCode => required_refresh_token(conn).map(|_| ()),
            Grant::ClientCredentials => Ok(()),
        }
    }

    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure> {
        let s = &self.settings;
        let separator = s.scope_separator.to_string();
        let scope = s.scopes.join(&separator);
        let params = self.grant_params(conn, &scope)?;
        let url = match s.grant {
            Grant::AuthorizationCode => s.refresh_url.as_ref().unwrap_or(&s.token_url),
            Grant::ClientCredentials => &s.token_url,
        };
        let request = self.post(url, params);
        let raw = send_recorded(&self.http, &s.name, "refresh", request).await?;
        let secrets = connection_secrets(conn, s.client_secret.as_ref());
        parse_token_response(
            &s.dialect,
            raw.status,
            &raw.headers,
            &raw.body,
            self.http.now(),
            &secrets,
        )
    }

    /// RFC 7009: revokes the refresh token (which revokes the grant at most servers), or the
    /// access token when there is none or the provider wants it (TikTok). Any 2xx without an
    /// error body is success, as the RFC asks servers to answer 200 even for tokens they do
    /// not know. An application token is not revoked: other instances may be using it.
    async fn revoke(&self, conn: &Connection) -> Result<(), RefreshFailure> {
        let s = &self.settings;
        let Some(revoke_url) = &s.revoke_url else {
            return Ok(());
        };
        if s.grant == Grant::ClientCredentials {
            return Ok(());
        }
        let params = match s.revoke_token {
            RevokeToken::RefreshToken => {
                let (token, hint) = revocation_token(conn);
                vec![("token", token), ("token_type_hint", hint)]
            }
            RevokeToken::AccessToken => vec![("token", conn.tokens.access_token.expose_secret())],
        };
        let request = self.post(revoke_url, params);
        let raw = send_recorded(&self.http, &s.name, "revoke", request).await?;
        let secrets = connection_secrets(conn, s.client_secret.as_ref());
        parse_revoke_response(
            &s.dialect,
            raw.status,
            &raw.headers,
            &raw.body,
            self.http.now(),
            &secrets,
        )
    }
}

impl ProviderSettings {
    /// What the API shows about this provider.
    pub fn info(&self) -> ProviderInfo {
        let url = |u: &Option<Url>| u.as_ref().map(display_url);
        ProviderInfo {
            name: self.name.to_string(),
            kind: self.kind,
            source: self.source,
            catalog: self.catalog.map(str::to_owned),
            display_name: self.display_name.clone(),
            grant: self.grant,
            authorization_url: url(&self.authorization_url),
            token_url: display_url(&self.token_url),
            revoke_url: url(&self.revoke_url),
            userinfo_url: url(&self.userinfo_url),
            api_base_url: url(&self.api_base_url),
            issuer: self.issuer.as_ref().map(Url::to_string),
            auth_method: (self.engine == crate::provider::catalog::Engine::Oauth2)
                .then_some(self.auth_method),
            scopes: self.scopes.clone(),
            client_id: self.client_id.clone(),
            rate_limit_per_second: self.rate_limit_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;
    use crate::provider::FailureKind;
    use crate::provider::test_support::{any_headers, any_status, headers, rejected, t0};
    use proptest::prelude::*;
    use std::time::Duration;

    fn parse(status: u16, body: &str) -> Result<TokenResponse, RefreshFailure> {
        parse_response(status, &HeaderMap::new(), body.as_bytes(), t0())
    }

    #[test]
    fn full_success() {
        let ok = parse(
            200,
            r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3599,
                "refresh_token":"rt-2","refresh_token_expires_in":"7776000",
                "scope":"openid email  profile"}"#,
        )
        .expect("success");
        assert_eq!(ok.access_token.expose_secret(), "at-1");
        assert_eq!(
            ok.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rt-2")
        );
        assert_eq!(ok.token_type.as_deref(), Some("Bearer"));
        assert_eq!(ok.expires_in, Some(Duration::from_secs(3599)));
        assert_eq!(ok.refresh_expires_in, Some(Duration::from_secs(7_776_000)));
        let scopes = ok.scopes.expect("scopes");
        assert_eq!(scopes, ["openid", "email", "profile"]);
    }

    #[test]
    fn minimal_success_keeps_old_refresh_token() {
        let ok = parse(200, r#"{"access_token":"at"}"#).expect("success");
        assert!(ok.refresh_token.is_none());
        assert!(ok.token_type.is_none());
        assert!(ok.expires_in.is_none());
        assert!(ok.scopes.is_none());
        let ok = parse(
            200,
            r#"{"access_token":"at","refresh_token":null,"expires_in":"60"}"#,
        )
        .expect("success");
        assert!(ok.refresh_token.is_none());
        assert_eq!(ok.expires_in, Some(Duration::from_secs(60)));
    }

    #[test]
    fn camel_case_answers_are_read_when_the_rfc_names_are_absent() {
        let ok = parse(
            200,
            r#"{"accessToken":"at-c","refreshToken":"rt-c","expiresIn":1800,
                "tokenType":"bearer","hubId":123}"#,
        )
        .expect("success");
        assert_eq!(ok.access_token.expose_secret(), "at-c");
        assert_eq!(
            ok.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rt-c")
        );
        assert_eq!(ok.expires_in, Some(Duration::from_secs(1800)));
        assert_eq!(ok.token_type.as_deref(), Some("bearer"));
        // The RFC name wins when both are there.
        let ok = parse(200, r#"{"access_token":"rfc","accessToken":"camel"}"#).expect("success");
        assert_eq!(ok.access_token.expose_secret(), "rfc");
        // A bad camelCase lifetime is as bad as a bad RFC one.
        assert!(parse(200, r#"{"accessToken":"a","expiresIn":"soon"}"#).is_err());
    }

    #[test]
    fn bad_success_bodies_are_unparseable() {
        let long = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(16 * 1024 + 1));
        for body in [
            "",
            "<html><body>502 Bad Gateway</body></html>",
            r#"{"access_token":"at","expires_in":36"#,
            r#"["access_token"]"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":42}"#,
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":"at","expires_in":0}"#,
            r#"{"access_token":"at","expires_in":-5}"#,
            r#"{"access_token":"at","expires_in":"soon"}"#,
            r#"{"access_token":"at","expires_in":"NaN"}"#,
            r#"{"access_token":"at","expires_in":400000000}"#,
            r#"{"access_token":"at","expires_in":true}"#,
            r#"{"access_token":"at","refresh_expires_in":0}"#,
            r#"{"access_token":"at","refresh_token":7}"#,
            long.as_str(),
        ] {
            let failure = parse(200, body).expect_err(body);
            assert_eq!(failure.class, FailureClass::Transient, "{body}");
            assert!(
                matches!(failure.kind, FailureKind::Unparseable { status: 200, .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn oauth_errors_are_classified() {
        let cases = [
            (400, "invalid_grant", FailureClass::Permanent),
            (403, "invalid_grant", FailureClass::Permanent),
            (401, "invalid_client", FailureClass::Configuration),
            (400, "unauthorized_client", FailureClass::Configuration),
            (400, "invalid_request", FailureClass::Configuration),
            (400, "server_error", FailureClass::Transient),
            (503, "temporarily_unavailable", FailureClass::Transient),
            // An error in a 200 body wins over the status.
            (200, "invalid_grant", FailureClass::Permanent),
        ];
        for (status, error, class) in cases {
            let body = format!(r#"{{"error":"{error}","error_description":"nope"}}"#);
            let failure = parse(status, &body).expect_err(error);
            assert_eq!(failure.class, class, "{status} {error}");
            assert_eq!(
                rejected(&failure),
                (status, error.to_owned(), Some("nope".to_owned()))
            );
        }
    }

    #[test]
    fn statuses_without_error_values() {
        for (status, class) in [
            (500, FailureClass::Transient),
            (502, FailureClass::Transient),
            (503, FailureClass::Transient),
            (408, FailureClass::Transient),
            (429, FailureClass::Transient),
            (401, FailureClass::Configuration),
            (404, FailureClass::Configuration),
            (302, FailureClass::Configuration),
        ] {
            for body in ["", "<html>oops</html>", "{}"] {
                let failure = parse(status, body).expect_err("failure");
                assert_eq!(failure.class, class, "{status} {body}");
                assert_eq!(failure.http_status(), Some(status));
            }
        }
    }

    #[test]
    fn retry_after_on_429_and_503() {
        let h = headers(&[("retry-after", "7")]);
        let failure = parse_response(429, &h, b"", t0()).expect_err("429");
        assert_eq!(failure.retry_after, Some(Duration::from_secs(7)));
        let h = headers(&[("retry-after", "Thu, 26 Nov 2026 12:00:30 GMT")]);
        let failure = parse_response(503, &h, br#"{"error":"temporarily_unavailable"}"#, t0())
            .expect_err("503");
        assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));
        // Not retried, so no hint.
        let failure =
            parse_response(400, &h, br#"{"error":"invalid_grant"}"#, t0()).expect_err("400");
        assert_eq!(failure.retry_after, None);
    }

    #[test]
    fn descriptions_are_truncated_and_control_free() {
        let body = format!(
            r#"{{"error":"invalid_grant","error_description":"a\n{}"}}"#,
            "x".repeat(500)
        );
        let failure = parse(400, &body).expect_err("failure");
        let (_, _, description) = rejected(&failure);
        let description = description.expect("description");
        assert_eq!(description.chars().count(), 200);
        assert!(!description.contains('\n'));
    }

    #[test]
    fn secrets_are_scrubbed_from_descriptions() {
        let body = br#"{"error":"invalid_grant","error_description":"token rt-SECRET/1 and rt-SECRET%2F1 unknown"}"#;
        let failure = parse_token_response(
            &Dialect::RFC6749,
            400,
            &HeaderMap::new(),
            body,
            t0(),
            &["rt-SECRET/1"],
        )
        .expect_err("failure");
        let shown = format!("{failure} {failure:?}");
        assert!(!shown.contains("rt-SECRET"), "{shown}");
        assert!(shown.contains("[REDACTED]"));
    }

    #[test]
    fn revoke_answers() {
        use crate::provider::response::parse_revoke_response;
        let revoke = |status: u16, body: &str| {
            let h = HeaderMap::new();
            parse_revoke_response(&Dialect::RFC6749, status, &h, body.as_bytes(), t0(), &[])
        };
        assert_eq!(revoke(200, ""), Ok(()));
        assert_eq!(revoke(204, "whatever"), Ok(()));
        assert_eq!(revoke(200, r#"{"ok":true}"#), Ok(()));
        let failure = revoke(200, r#"{"error":"invalid_client"}"#).expect_err("error body");
        assert_eq!(failure.class, FailureClass::Configuration);
        let failure = revoke(400, r#"{"error":"unsupported_token_type"}"#).expect_err("400");
        assert_eq!(failure.provider_error(), Some("unsupported_token_type"));
        let failure = revoke(503, "").expect_err("503");
        assert_eq!(failure.class, FailureClass::Transient);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics(status in any_status(), body in proptest::collection::vec(any::<u8>(), 0..512),
                        h in any_headers()) {
            let _ = parse_response(status, &h, &body, t0());
        }

        #[test]
        fn never_panics_on_json_like(status in any_status(), body in "[{}\\[\\]\":,a-z0-9_ .-]{0,200}") {
            let _ = parse_response(status, &HeaderMap::new(), body.as_bytes(), t0());
        }
    }
}
