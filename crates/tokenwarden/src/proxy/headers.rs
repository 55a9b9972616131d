//! Which headers cross the proxy.
//!
//! Upstream, the client's request headers go as they are, except: the hop-by-hop ones
//! (RFC 9110 §7.6.1: `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`, and `Proxy-*`), which belong to the client's connection to
//! tokenwarden; `Host` (the upstream's is set from the URL); `Authorization` (the client's
//! holds its tokenwarden API key, and the provider's token takes its place); `Cookie` (the
//! client's cookies are tokenwarden's, not the provider's); `Tokenwarden-*` (ours);
//! `Content-Length` (the body's own length is sent, so it cannot disagree with it); and
//! `Expect` (tokenwarden answers `100-continue` itself when it reads the body).
//!
//! Back to the client, the upstream's response headers go as they are, except the hop-by-hop
//! ones and `Tokenwarden-*`: those are tokenwarden's to set (`Tokenwarden-Refreshed`, and
//! `Tokenwarden-Error` on its own answers), so an API cannot pass its answer off as
//! tokenwarden's. Both filters work in place on the map they are given: no header is copied.

use reqwest::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, EXPECT, HOST, HeaderMap, HeaderName,
    HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// The response header that says the call was sent again with a refreshed token.
pub const REFRESHED: &str = "tokenwarden-refreshed";

/// Removes from the client's `headers` every header that must not go upstream.
pub fn strip_request(headers: &mut HeaderMap) {
    strip(headers, |name| {
        hop_by_hop(name)
            || [HOST, AUTHORIZATION, COOKIE, CONTENT_LENGTH, EXPECT].contains(name)
            || name.as_str().starts_with(OURS)
    });
}

/// Removes from the upstream's `headers` every header that must not go back to the client.
pub fn strip_response(headers: &mut HeaderMap) {
    strip(headers, |name| {
        hop_by_hop(name) || name.as_str().starts_with(OURS)
    });
    // tokenwarden's request id is the one the client and the access log share; the API's
    // own id stays available under another name.
    let ids: Vec<HeaderValue> = headers.get_all(&X_REQUEST_ID).iter().cloned().collect();
    if !ids.is_empty() {
        headers.remove(&X_REQUEST_ID);
        for id in ids {
            headers.append(X_UPSTREAM_REQUEST_ID, id);
        }
    }
}

/// The prefix of tokenwarden's own headers.
const OURS: &str = "tokenwarden-";
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Where the API's own `X-Request-Id` comes back.
pub const X_UPSTREAM_REQUEST_ID: &str = "x-upstream-request-id";

/// Whether every hop removes `name` (RFC 9110 §7.6.1), besides the headers `Connection`
/// names.
fn hop_by_hop(name: &HeaderName) -> bool {
    [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE].contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// Removes the headers `drop` picks and those `Connection` names (hop-by-hop too, RFC 9110
/// §7.6.1). One pass over the names: a map with nothing to remove is only read.
fn strip(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let mut gone: Vec<HeaderName> = headers.keys().filter(|n| drop(n)).cloned().collect();
    gone.extend(
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
    );
    for name in gone {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn forbidden_request_headers_are_removed_and_the_rest_kept() {
        let mut headers = map(&[
            ("host", "tokenwarden.local"),
            ("authorization", "Bearer api-key"),
            ("cookie", "session=1"),
            ("connection", "keep-alive, X-Hop, x-other-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("x-other-hop", "2"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("tokenwarden-anything", "x"),
            ("Tokenwarden-Refreshed", "1"),
            ("content-length", "12"),
            ("expect", "100-continue"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("x-custom", "a"),
            ("x-custom", "b"),
            ("if-none-match", "\"v1\""),
            ("user-agent", "app/1.0"),
        ]);
        strip_request(&mut headers);
        assert_eq!(
            names(&headers),
            [
                "accept",
                "content-type",
                "if-none-match",
                "user-agent",
                "x-custom"
            ]
        );
        let custom: Vec<_> = headers.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a", "b"], "repeated headers keep every value");
    }

    #[test]
    fn hop_by_hop_response_headers_are_removed_and_the_rest_kept() {
        let mut headers = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("set-cookie", "a=1"),
            ("x-ratelimit-remaining", "99"),
            ("location", "https://example.com/next"),
            ("tokenwarden-error", "TOKEN_EXPIRED"),
            ("Tokenwarden-Refreshed", "1"),
            ("x-request-id", "api-42"),
        ]);
        strip_response(&mut headers);
        assert_eq!(
            names(&headers),
            [
                "content-length",
                "content-type",
                "location",
                "set-cookie",
                "x-ratelimit-remaining",
                "x-upstream-request-id"
            ]
        );
        assert_eq!(headers["x-upstream-request-id"], "api-42");
    }
}
