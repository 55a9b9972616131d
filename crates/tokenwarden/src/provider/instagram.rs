//! The Instagram (Instagram API with Instagram Login) adapter. There is no refresh token and no
//! client credential: the long-lived access token itself is refreshed with
//! `GET /refresh_access_token?grant_type=ig_refresh_token&access_token=…`, and only when it is
//! at least 24 hours old and not yet expired. The token's age is inferred from its expiry and
//! the 60-day lifetime, because imported tokens come without an issue time. The request URL
//! carries the token, so it is never logged or put into an error; Meta's error `message` can
//! echo the token, so only its numeric code, type and subcode are kept.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use time::OffsetDateTime;
use url::Url;

use crate::connection::{Connection, ProviderName};
use crate::provider::common::{config_error, display_url, send_recorded};
use crate::provider::oauth2::provider_get;
use crate::provider::response::{Dialect, parse_token_response};
use crate::provider::{
    HttpClient, NotRefreshable, Provider, ProviderConfigError, ProviderInfo, ProviderSettings,
    RefreshFailure, TokenResponse,
};

/// Instagram's refresh endpoint.
pub const DEFAULT_REFRESH_URL: &str = "https://graph.instagram.com/refresh_access_token";
/// Instagram's code-exchange endpoint (short-lived tokens), used by the connect flow.
pub const DEFAULT_TOKEN_URL: &str = "https://api.instagram.com/oauth/access_token";
/// Instagram's short-lived to long-lived exchange endpoint.
pub const DEFAULT_EXCHANGE_URL: &str = "https://graph.instagram.com/access_token";
/// A long-lived token's lifetime, from which an imported token's issue time is inferred.
pub const LONG_LIVED_LIFETIME: Duration = Duration::from_secs(60 * 24 * 3600);
/// How old a token must be before Instagram refreshes it.
pub const MIN_AGE: Duration = Duration::from_secs(24 * 3600);

const DIALECT: Dialect = Dialect {
    scope_separator: ',',
    reset_header: None,
    refresh_tokens: false,
    errors: Vec::new(),
    token_path: None,
};

/// Parses an Instagram refresh answer (`{access_token, token_type, expires_in}` or a Meta
/// Graph error envelope).
pub fn parse_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<TokenResponse, RefreshFailure> {
    parse_token_response(&DIALECT, status, headers, body, now, &[])
}

/// When a token expiring at `expires_at` becomes refreshable: 24 h after its inferred issue
/// time (`expires_at` − 60 days).
pub fn ready_at(expires_at: OffsetDateTime) -> OffsetDateTime {
    expires_at - LONG_LIVED_LIFETIME + MIN_AGE
}

/// The Instagram provider.
#[derive(Debug)]
pub struct InstagramProvider {
    settings: ProviderSettings,
    http: HttpClient,
    refresh_url: Url,
    /// The `ig_exchange_token` endpoint, for the connect flow.
    exchange_url: Url,
}

impl InstagramProvider {
    /// A provider from resolved settings, which hold its endpoints (`refresh_url` and
    /// `exchange_url` default to Meta's). Client credentials, if configured, are not sent on
    /// refreshes: that endpoint takes none.
    pub fn new(settings: ProviderSettings, http: HttpClient) -> Result<Self, ProviderConfigError> {
        let missing = |key| config_error(&settings.name, key, "required for kind instagram");
        let refresh_url = settings
            .refresh_url
            .clone()
            .ok_or_else(|| missing("refresh_url"))?;
        let exchange_url = settings
            .exchange_url
            .clone()
            .ok_or_else(|| missing("exchange_url"))?;
        Ok(Self {
            settings,
            http,
            refresh_url,
            exchange_url,
        })
    }

    /// The `ig_exchange_token` endpoint.
    pub fn exchange_url(&self) -> &Url {
        &self.exchange_url
    }
}

#[async_trait]
impl Provider for InstagramProvider {
    fn name(&self) -> &ProviderName {
        &self.settings.name
    }

    /// Shows the refresh endpoint as `token_url`: it is where this provider's tokens are
    /// renewed.
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            token_url: display_url(&self.refresh_url),
            ..self.settings.info()
        }
    }

    fn connect_client(&self) -> Option<(&ProviderSettings, &HttpClient)> {
        Some((&self.settings, &self.http))
    }

    fn check_refreshable(
        &self,
        conn: &Connection,
        now: OffsetDateTime,
    ) -> Result<(), NotRefreshable> {
        // Without an expiry the age cannot be inferred; let Instagram decide.
        let Some(expires_at) = conn.meta.expires_at else {
            return Ok(());
        };
        if expires_at <= now {
            return Err(NotRefreshable::Expired);
        }
        let ready_at = ready_at(expires_at);
        if now < ready_at {
            return Err(NotRefreshable::TooYoung { ready_at });
        }
        Ok(())
    }

    async fn refresh(&self, conn: &Connection) -> Result<TokenResponse, RefreshFailure> {
        // A call that Instagram is known to refuse would only cost rate limit.
        self.check_refreshable(conn, self.http.now())
            .map_err(RefreshFailure::not_refreshable)?;
        let token = conn.tokens.access_token.expose_secret();
        let mut url = self.refresh_url.clone();
        url.query_pairs_mut()
            .append_pair("grant_type", "ig_refresh_token")
            .append_pair("access_token", token);
        let request = provider_get(&self.settings, &self.http, url);
        let raw = send_recorded(&self.http, &self.settings.name, "refresh", request).await?;
        parse_token_response(
            &DIALECT,
            raw.status,
            &raw.headers,
            &raw.body,
            self.http.now(),
            &[token],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;
    use crate::provider::test_support::{any_headers, any_status, json_like_body, rejected, t0};
    use proptest::prelude::*;

    fn parse(status: u16, body: &str) -> Result<TokenResponse, RefreshFailure> {
        parse_response(status, &HeaderMap::new(), body.as_bytes(), t0())
    }

    #[test]
    fn documented_success() {
        let ok = parse(
            200,
            r#"{"access_token":"IGQW-new","token_type":"bearer","expires_in":5183944}"#,
        )
        .expect("success");
        assert_eq!(ok.access_token.expose_secret(), "IGQW-new");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(5_183_944)));
        assert!(ok.refresh_token.is_none());
        // Even if one appeared, Instagram has no refresh tokens to store.
        let ok = parse(200, r#"{"access_token":"a","refresh_token":"r"}"#).expect("success");
        assert!(ok.refresh_token.is_none());
    }

    #[test]
    fn meta_errors_keep_no_free_text() {
        let body = r#"{"error":{"message":"Error validating access token: Session has expired on Tuesday. Token IGQW-SECRET","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"AbC"}}"#;
        let failure = parse(400, body).expect_err("190");
        assert_eq!(failure.class, FailureClass::Permanent);
        let (status, error, description) = rejected(&failure);
        assert_eq!((status, error.as_str()), (400, "190"));
        assert_eq!(description.as_deref(), Some("OAuthException, subcode 463"));
        let shown = format!("{failure} {failure:?}");
        assert!(!shown.contains("IGQW-SECRET"));
        assert!(!shown.contains("Session has expired"));
    }

    #[test]
    fn meta_codes_are_classified() {
        for (status, code, class) in [
            (400, "190", FailureClass::Permanent),
            (200, "190", FailureClass::Permanent),
            (400, "102", FailureClass::Permanent),
            (403, "10", FailureClass::Permanent),
            (400, "\"190\"", FailureClass::Permanent),
            (500, "1", FailureClass::Transient),
            (500, "2", FailureClass::Transient),
            (400, "4", FailureClass::Transient),
            (400, "17", FailureClass::Transient),
            (400, "613", FailureClass::Transient),
            (400, "100", FailureClass::Configuration),
            (503, "100", FailureClass::Transient),
        ] {
            let body =
                format!(r#"{{"error":{{"message":"m","type":"OAuthException","code":{code}}}}}"#);
            let failure = parse(status, &body).expect_err(code);
            assert_eq!(failure.class, class, "{status} {code}");
        }
    }

    #[test]
    fn old_instagram_error_shape() {
        let body =
            r#"{"error_type":"OAuthException","code":400,"error_message":"Invalid token IGQW"}"#;
        let failure = parse(400, body).expect_err("error");
        let (_, error, description) = rejected(&failure);
        assert_eq!(error, "400");
        assert_eq!(description.as_deref(), Some("OAuthException"));
        assert_eq!(failure.class, FailureClass::Configuration);
    }

    fn test_provider() -> InstagramProvider {
        let config: crate::provider::ProviderConfig =
            toml::from_str(r#"kind = "instagram""#).expect("config");
        let settings = ProviderSettings::resolve("instagram".parse().expect("name"), &config, None)
            .expect("settings");
        InstagramProvider::new(
            settings,
            HttpClient::new(Default::default()).expect("client"),
        )
        .expect("provider")
    }

    #[test]
    fn refreshable_window() {
        let provider = test_provider();
        let now = t0();
        let mut conn = crate::provider::test_support::connection("instagram", "IGQW", None);
        let day = time::Duration::days(1);

        conn.meta.expires_at = None;
        assert_eq!(provider.check_refreshable(&conn, now), Ok(()));

        conn.meta.expires_at = Some(now - time::Duration::seconds(1));
        assert_eq!(
            provider.check_refreshable(&conn, now),
            Err(NotRefreshable::Expired)
        );
        conn.meta.expires_at = Some(now);
        assert_eq!(
            provider.check_refreshable(&conn, now),
            Err(NotRefreshable::Expired)
        );

        // Issued an hour ago: 60 days minus an hour left.
        let expires_at = now + day * 60 - time::Duration::hours(1);
        conn.meta.expires_at = Some(expires_at);
        let ready = now + time::Duration::hours(23);
        assert_eq!(
            provider.check_refreshable(&conn, now),
            Err(NotRefreshable::TooYoung { ready_at: ready })
        );
        assert_eq!(provider.check_refreshable(&conn, ready), Ok(()));

        // Thirty days old: fine.
        conn.meta.expires_at = Some(now + day * 30);
        assert_eq!(provider.check_refreshable(&conn, now), Ok(()));
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
                prop_assert!(ok.refresh_token.is_none());
            }
        }

        #[test]
        fn check_refreshable_agrees_with_the_rule(offset_s in -100_000_000i64..100_000_000) {
            let provider = test_provider();
            let now = t0();
            let mut conn = crate::provider::test_support::connection("instagram", "IGQW", None);
            let expires_at = now + time::Duration::seconds(offset_s);
            conn.meta.expires_at = Some(expires_at);
            let remaining = offset_s;
            let verdict = provider.check_refreshable(&conn, now);
            if remaining <= 0 {
                prop_assert_eq!(verdict, Err(NotRefreshable::Expired));
            } else if remaining > (60 - 1) * 86_400 {
                let too_young =
                    matches!(verdict, Err(NotRefreshable::TooYoung { ready_at }) if ready_at > now);
                prop_assert!(too_young);
            } else {
                prop_assert_eq!(verdict, Ok(()));
            }
        }
    }
}
