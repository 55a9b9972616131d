//! The TikTok and Reddit dialects, as their catalog entries configure the generic engine:
//! how their answers parse and classify. (Their requests are tested end to end in
//! `tests/providers.rs`.)

use reqwest::header::HeaderMap;
use time::OffsetDateTime;

use crate::provider::response::parse_token_response;
use crate::provider::{ProviderConfig, ProviderSettings, RefreshFailure, TokenResponse};

/// Parses an answer as the catalog provider `id` does.
fn parse_as(
    id: &str,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<TokenResponse, RefreshFailure> {
    let config = ProviderConfig {
        catalog: Some(id.to_owned()),
        client_id: Some("client".to_owned()),
        client_secret: Some(crate::secret::ClientSecret::new("secret-value")),
        user_agent: Some("test:tokenwarden:1 (by /u/test)".to_owned()),
        ..ProviderConfig::default()
    };
    let settings =
        ProviderSettings::resolve(id.parse().expect("name"), &config, None).expect("settings");
    parse_token_response(&settings.dialect, status, headers, body, now, &[])
}

/// Defines `parse_response(status, headers, body, now)` for one catalog id.
macro_rules! dialect_parser {
    ($id:literal) => {
        fn parse_response(
            status: u16,
            headers: &HeaderMap,
            body: &[u8],
            now: OffsetDateTime,
        ) -> Result<TokenResponse, RefreshFailure> {
            super::parse_as($id, status, headers, body, now)
        }
    };
}

mod tiktok {
    use super::{HeaderMap, OffsetDateTime, RefreshFailure, TokenResponse};

    dialect_parser!("tiktok");
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

mod reddit {
    use super::{HeaderMap, OffsetDateTime, RefreshFailure, TokenResponse};

    dialect_parser!("reddit");
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
