//! The proxy's rules, with no HTTP server and no client of their own: an application calls a
//! provider's API through tokenwarden, which puts the connection's token where the provider
//! wants it. The server (`tokenwarden-server`'s `proxy.rs`) receives the call, sends it with
//! its own HTTP client, and uses these parts to decide what it may send and return:
//!
//! - `target`: the URL a proxied path and query resolve to under the provider's
//!   `api_base_url`, refusing every path that would leave it (dot segments in any encoding,
//!   backslashes, a scheme, a leading `//`, an `@` authority, control characters);
//! - `headers`: which request headers go upstream (none that are hop-by-hop, `Host`,
//!   `Authorization`, `Cookie`, `Tokenwarden-*` or `Proxy-*`) and which response headers
//!   come back (none that are hop-by-hop);
//! - [`TokenPlacement`]: an `Authorization: Bearer` header, or a query parameter where the
//!   catalog says so (Instagram Graph: `api_token_param = "access_token"`);
//! - `replay`: how much of a request body is kept so the request can be sent again after an
//!   upstream 401 and a refresh ([`crate::Warden::refresh_rejected`]).

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use url::Url;

use crate::provider::ProviderSettings;
use crate::secret::AccessToken;

pub mod headers;
pub mod idle;
pub mod replay;
pub mod target;

pub use replay::{Collected, Prefixed, collect_for_replay};
pub use target::{TargetError, resolve};

/// Default `proxy.max_replay_bytes`: request bodies up to 1 MiB can be sent again.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 1024 * 1024;

/// Where a provider's API takes the access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1), the default.
    BearerHeader,
    /// A query parameter of this name (RFC 6750 §2.3); Instagram Graph's `access_token`.
    QueryParameter(String),
}

/// A provider's API as the proxy reaches it: its base URL and where the token goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBase {
    base: Url,
    /// The base's path with one trailing `/`: every target's path starts with it.
    prefix: String,
    token: TokenPlacement,
}

impl ApiBase {
    /// The API of a provider, if it has an `api_base_url`.
    pub fn of(settings: &ProviderSettings) -> Option<Self> {
        let token = match &settings.api_token_param {
            Some(name) => TokenPlacement::QueryParameter(name.clone()),
            None => TokenPlacement::BearerHeader,
        };
        settings
            .api_base_url
            .as_ref()
            .map(|base| Self::new(base.clone(), token))
    }

    /// An API at `base` (its query and fragment are not used) taking the token as `token`
    /// says.
    pub fn new(mut base: Url, token: TokenPlacement) -> Self {
        base.set_query(None);
        base.set_fragment(None);
        let mut prefix = base.path().to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self {
            base,
            prefix,
            token,
        }
    }

    /// The base URL (no query, no fragment).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Where the token goes.
    pub fn token_placement(&self) -> &TokenPlacement {
        &self.token
    }

    /// The upstream URL of `raw_path` (the part after `/v1/proxy/{user}/{provider}/{account}/`,
    /// still percent-encoded as the client sent it) and `raw_query`. See [`resolve`].
    ///
    /// # Errors
    /// A [`TargetError`] saying why the path may not be sent.
    pub fn target(&self, raw_path: &str, raw_query: Option<&str>) -> Result<Url, TargetError> {
        let drop_param = match &self.token {
            TokenPlacement::QueryParameter(name) => Some(name.as_str()),
            TokenPlacement::BearerHeader => None,
        };
        target::resolve_under(&self.base, &self.prefix, raw_path, raw_query, drop_param)
    }

    /// Puts `token` into the request: the `Authorization` header, or the query parameter
    /// (appended to `url`, whose query [`ApiBase::target`] already cleared of any parameter
    /// of that name). The header value is marked sensitive, so no `Debug` of the headers
    /// shows it.
    ///
    /// # Errors
    /// When the token cannot be a header value (a control character in it).
    pub fn place_token(
        &self,
        token: &AccessToken,
        url: &mut Url,
        headers: &mut HeaderMap,
    ) -> Result<(), InvalidToken> {
        match &self.token {
            TokenPlacement::BearerHeader => {
                let secret = token.expose_secret();
                let mut value = String::with_capacity(7 + secret.len());
                value.push_str("Bearer ");
                value.push_str(secret);
                let mut value = HeaderValue::try_from(value).map_err(|_| InvalidToken)?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            TokenPlacement::QueryParameter(name) => {
                url.query_pairs_mut()
                    .append_pair(name, token.expose_secret());
            }
        }
        Ok(())
    }
}

/// The stored access token cannot be sent as a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stored access token cannot be sent in an HTTP header")]
pub struct InvalidToken;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_header_is_sensitive_and_the_query_parameter_is_appended() {
        let token = AccessToken::new("tok-SECRET");
        let header_api = ApiBase::new(
            Url::parse("https://api.example.com/v2").expect("url"),
            TokenPlacement::BearerHeader,
        );
        let mut url = header_api.target("me", Some("a=1")).expect("target");
        let mut headers = HeaderMap::new();
        header_api
            .place_token(&token, &mut url, &mut headers)
            .expect("placed");
        assert_eq!(headers[AUTHORIZATION], "Bearer tok-SECRET");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert!(!format!("{headers:?}").contains("tok-SECRET"));
        assert_eq!(url.as_str(), "https://api.example.com/v2/me?a=1");

        let query_api = ApiBase::new(
            Url::parse("https://graph.example.com").expect("url"),
            TokenPlacement::QueryParameter("access_token".to_owned()),
        );
        let mut url = query_api
            .target("me", Some("fields=id&access_token=client-supplied"))
            .expect("target");
        let mut headers = HeaderMap::new();
        query_api
            .place_token(&token, &mut url, &mut headers)
            .expect("placed");
        assert!(headers.is_empty());
        assert_eq!(
            url.as_str(),
            "https://graph.example.com/me?fields=id&access_token=tok-SECRET"
        );
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        let api = ApiBase::new(
            Url::parse("https://api.example.com").expect("url"),
            TokenPlacement::BearerHeader,
        );
        let mut url = api.target("x", None).expect("target");
        let mut headers = HeaderMap::new();
        let bad = AccessToken::new("line\nbreak");
        assert_eq!(
            api.place_token(&bad, &mut url, &mut headers),
            Err(InvalidToken)
        );
    }
}
