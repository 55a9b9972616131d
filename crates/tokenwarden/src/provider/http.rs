//! The outbound HTTP client for token endpoints: connect and total timeouts, no redirects,
//! a cap on the response body, and the body read even on HTTP 200 (several providers send
//! errors with 200). It also carries the wall clock the adapters read answers against
//! (`Retry-After` dates, rate-limit reset timestamps, Instagram's token age), because it is
//! the one context every adapter is built with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use time::OffsetDateTime;

use crate::clock::{Clock, SystemClock};
use crate::provider::RefreshFailure;

/// Outbound HTTP settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Whole request, body included. Default 15 s.
    pub request_timeout: Duration,
    /// Larger bodies are rejected as unparseable. Default 64 KiB.
    pub max_body_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// A response read in full (up to the cap).
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as sent: on success it holds the new tokens.
    pub body: Vec<u8>,
}

/// Status and body length only: the body of a successful refresh is the new tokens, and
/// headers can carry cookies.
impl fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A shared HTTP client (cheap to clone).
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    settings: HttpSettings,
    clock: Arc<dyn Clock>,
}

impl HttpClient {
    /// A client with `settings`, reading time from the system clock.
    pub fn new(settings: HttpSettings) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            settings,
            clock: Arc::new(SystemClock),
        })
    }

    /// The same client, with providers built from it reading time from `clock`: give it the
    /// warden's clock so both agree on what "now" is. By default, the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The current wall-clock time, from this client's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The underlying client, to build requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// Sends a request and reads the whole body, up to the cap. Transport problems and an
    /// oversized body become transient [`RefreshFailure`]s; the messages never include the
    /// URL's query (Instagram puts the token there) or the body.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<RawResponse, RefreshFailure> {
        let mut response = request.send().await.map_err(transport_failure)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let cap = self.settings.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > cap as u64)
        {
            return Err(RefreshFailure::unparseable(
                status,
                format!("response body larger than {cap} bytes"),
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
            if body.len() + chunk.len() > cap {
                return Err(RefreshFailure::unparseable(
                    status,
                    format!("response body larger than {cap} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }
}

fn transport_failure(error: reqwest::Error) -> RefreshFailure {
    let timeout = error.is_timeout();
    // Strip the URL: Instagram's refresh URL carries the access token in its query.
    let error = error.without_url();
    let kind = if timeout {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    RefreshFailure::transport(format!("{kind}: {error}"), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, SET_COOKIE};

    #[test]
    fn raw_response_debug_shows_no_body_or_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            SET_COOKIE,
            HeaderValue::from_static("session=cookie-secret"),
        );
        let body = br#"{"access_token":"at-NEW-secret","refresh_token":"rt-NEW-secret"}"#;
        let raw = RawResponse {
            status: 200,
            headers,
            body: body.to_vec(),
        };
        let shown = format!("{raw:?} {raw:#?}").replace(char::is_whitespace, "");
        for secret in ["at-NEW-secret", "rt-NEW-secret", "cookie-secret"] {
            // As text, and as the list of byte values a derived Debug prints for a Vec<u8>.
            let as_bytes = secret
                .bytes()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",");
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains(&as_bytes), "{shown}");
        }
        assert!(shown.contains("status:200"), "{shown}");
        assert!(
            shown.contains(&format!("body_len:{}", body.len())),
            "{shown}"
        );
    }
}
