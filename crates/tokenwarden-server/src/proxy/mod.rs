//! `GET|POST|PUT|PATCH|DELETE /v1/proxy/{user_id}/{provider}/{account_id}/{path…}`: an
//! application's call to a provider's API, sent on with the connection's token (SPEC.md,
//! "Proxy").
//!
//! The rules are the library's (`tokenwarden::proxy`): the target URL under the provider's
//! `api_base_url`, the headers that cross, where the token goes, the replay buffer. This
//! module sends the call on a connection of the API's own pool (`upstream.rs`: HTTP/1.1, no
//! redirects followed, the `[upstream]` connect timeout, bodies streamed both ways) and
//! answers:
//!
//! - with the upstream's answer: status, headers less the hop-by-hop ones, body as it comes;
//! - after an upstream 401, with the answer to a second attempt made with the token
//!   [`Warden::refresh_rejected`] returns (one refresh however many calls were refused), plus
//!   `Tokenwarden-Refreshed: 1`, when the request body could be kept
//!   (`proxy.max_replay_bytes`); otherwise with the upstream's 401 (the token has been
//!   refreshed by then, so the application's own retry uses the new one);
//! - with the access-token route's errors when no token can be had, and 502
//!   `UPSTREAM_UNREACHABLE` / 504 `UPSTREAM_TIMEOUT` when the API cannot be reached.
//!
//! The upstream URL is never logged or put in an error: with Instagram it holds the token.
//! `server.max_body_bytes` does not apply: the handler takes the raw body, which no limit
//! wraps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub mod upstream;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokenwarden::proxy::idle::Idle;
use tokenwarden::proxy::{ApiBase, Collected, collect_for_replay, headers};
use tokenwarden::{AccessToken, ConnectionKey, ProviderName, Warden};
use tokio::sync::watch;
use upstream::{Failure, Outbound, Upstream, UpstreamError};

use crate::api;
use crate::app::App;
use crate::config::Config;
use crate::error::ApiError;

static REFRESHED: HeaderName = HeaderName::from_static(headers::REFRESHED);
const ALLOWED: &str = "GET, POST, PUT, PATCH, DELETE";
/// The methods the route forwards (and the OpenAPI document lists).
pub const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The proxy's state: per provider with an `api_base_url`, that API and its connections.
pub struct Proxy {
    apis: BTreeMap<ProviderName, Api>,
    max_replay_bytes: usize,
    response_timeout: Duration,
}

/// One provider's API, with its metric handles registered once.
struct Api {
    base: ApiBase,
    upstream: Upstream,
    /// `proxy_requests_total{provider, status_class}` for 1xx … 5xx.
    answers: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

impl Proxy {
    /// The proxy for `warden`'s providers, with `config`'s `[upstream]` timeouts and
    /// `[proxy]` settings.
    ///
    /// # Errors
    /// When the TLS client cannot be set up, or an `api_base_url` is not http(s).
    pub fn new(config: &Config, warden: &Warden) -> Result<Self, UpstreamError> {
        let response_timeout = Duration::from_millis(config.upstream.request_timeout_ms);
        let connect_timeout = Duration::from_millis(config.upstream.connect_timeout_ms);
        // No timer on the whole call: a long upload that keeps flowing must not be cut off.
        // The wait for the answer starts once the body is sent (`Outgoing::send`), and both
        // bodies time out only when idle (`Idle`).
        let tls = upstream::tls_client()?;
        let mut apis = BTreeMap::new();
        for info in warden.providers() {
            let Ok(name) = ProviderName::parse(info.name.as_str()) else {
                continue;
            };
            let Some(base) = warden.provider(&name).and_then(|p| p.api()) else {
                continue;
            };
            let label = name.to_string();
            let answers = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
                metrics::counter!(tokenwarden::metrics::PROXY_REQUESTS_TOTAL,
                    "provider" => label.clone(), "status_class" => class)
            });
            let duration = metrics::histogram!(tokenwarden::metrics::PROXY_DURATION_SECONDS,
                "provider" => label);
            let upstream = Upstream::new(base.base(), &tls, connect_timeout)?;
            apis.insert(
                name,
                Api {
                    base,
                    upstream,
                    answers,
                    duration,
                },
            );
        }
        let outbound_proxy = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
            .into_iter()
            .chain(["ALL_PROXY", "all_proxy"])
            .find(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if let Some(variable) = outbound_proxy
            && !apis.is_empty()
        {
            tracing::warn!(
                variable,
                "the proxy route connects to providers' APIs directly: outbound HTTP proxies \
                 from the environment are used for token requests only"
            );
        }
        Ok(Self {
            apis,
            max_replay_bytes: config.proxy.max_replay_bytes,
            response_timeout,
        })
    }
}

impl Proxy {
    /// The providers it reaches (those with an `api_base_url`), sorted.
    pub fn providers(&self) -> Vec<String> {
        self.apis.keys().map(ToString::to_string).collect()
    }
}

impl Api {
    fn count(&self, status: StatusCode, started: Instant) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.answers[class].increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
    }
}

/// The proxy route's handler; `api::add_proxy` documents it.
pub async fn forward(State(app): State<App>, request: Request) -> Response {
    let started = Instant::now();
    if !METHODS.contains(request.method()) {
        let mut response = own_answer(ApiError::method_not_allowed(ALLOWED));
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, HeaderValue::from_static(ALLOWED));
        return response;
    }
    let (answer, api) = forward_call(&app, request).await;
    let response = answer.unwrap_or_else(own_answer);
    if let Some(api) = api {
        api.count(response.status(), started);
    }
    response
}

/// An answer of tokenwarden's own on the proxy route, marked `Tokenwarden-Error: CODE` so an
/// application tells it from the API's answers (which can have any status and body).
fn own_answer(error: ApiError) -> Response {
    let code = HeaderValue::from_static(error.code());
    let mut response = error.into_response();
    response.headers_mut().insert(TOKENWARDEN_ERROR, code);
    response
}

/// The header that marks [`own_answer`]s (and the API-key check's 401 on this route).
pub const TOKENWARDEN_ERROR: &str = "tokenwarden-error";

/// Where the proxy route's paths start.
pub const PATH_PREFIX: &str = "/v1/proxy/";

async fn forward_call(app: &App, request: Request) -> (Result<Response, ApiError>, Option<&Api>) {
    let proxy = app.proxy();
    let (ids, rest) = split_path(request.uri().path()).unwrap_or_default();
    let key = match connection_key(app, ids) {
        Ok(key) => key,
        Err(e) => return (Err(e), None),
    };
    let Some(api) = proxy.apis.get(&key.provider) else {
        let e = ApiError::invalid(
            "provider",
            format!(
                "{} has no api_base_url to proxy to (set providers.{}.api_base_url)",
                key.provider, key.provider
            ),
        );
        return (Err(e), None);
    };
    let target = match api.base.target(rest, request.uri().query()) {
        Ok(target) => target,
        Err(e) => return (Err(ApiError::invalid("path", e)), Some(api)),
    };
    (
        send(app, proxy, api, &key, target, request).await,
        Some(api),
    )
}

/// The request's raw path cut into the three ids and the rest after
/// `/v1/proxy/{user_id}/{provider}/{account_id}/`, all as the client encoded them (the
/// router's `{*path}` is decoded, so it cannot be used). The route matched, so the ids are
/// there, and they hold no raw `/`. `None` when the path is not under [`PATH_PREFIX`].
pub(crate) fn split_path(path: &str) -> Option<([&str; 3], &str)> {
    let mut rest = path.strip_prefix(PATH_PREFIX)?;
    let mut ids = [""; 3];
    for id in &mut ids {
        (*id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    }
    Some((ids, rest))
}

/// Validates the raw ids into a key of a configured provider, as every other route does
/// ([`api::key_of`]). Only the ids are decoded here: the rest of the path goes to the API as
/// the client encoded it, whatever bytes it encodes (a router's extractor would refuse
/// non-UTF-8 ones).
fn connection_key(
    app: &App,
    [user_id, provider, account_id]: [&str; 3],
) -> Result<ConnectionKey, ApiError> {
    let decode = |raw: &str, field: &'static str| {
        tokenwarden::proxy::target::percent_decode(raw)
            .map(std::borrow::Cow::into_owned)
            .ok_or_else(|| ApiError::invalid(field, "must be UTF-8 once percent-decoded"))
    };
    let user_id = decode(user_id, "user_id")?;
    let provider = decode(provider, "provider")?;
    let account_id = decode(account_id, "account_id")?;
    api::key_of(app, user_id, &provider, account_id)
}

async fn send(
    app: &App,
    proxy: &Proxy,
    api: &Api,
    key: &ConnectionKey,
    target: url::Url,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let grant = app.warden().access_token(key).await?;
    headers::strip_request(&mut parts.headers);
    parts
        .headers
        .insert(axum::http::header::HOST, api.upstream.host_header().clone());
    // What reqwest sent when the client named no media type: most APIs answer JSON either
    // way, but some pick by `Accept`.
    parts
        .headers
        .entry(axum::http::header::ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
    let body = collect_for_replay(body, proxy.max_replay_bytes)
        .await
        .map_err(|_| ApiError::invalid("body", "could not be read"))?;
    let provider = key.provider.as_str();

    let idle = proxy.response_timeout;
    let (replay, first_body, sent) = match body {
        Collected::Complete(bytes) => {
            let replay = Some(bytes.clone());
            (replay, outgoing_body(&parts.method, bytes), None)
        }
        Collected::Streaming(rest) => {
            let (done, sent) = watch::channel(false);
            let body = Outbound::Streaming(Idle::new(rest, idle, Some(done)));
            (None, body, Some(sent))
        }
    };
    let outgoing = Outgoing {
        proxy,
        api,
        provider,
        account_id: key.account_id.as_str(),
        method: &parts.method,
        target: &target,
        headers: &parts.headers,
    };
    let first = outgoing.send(&grant.access_token, first_body, sent).await?;
    if first.status() != StatusCode::UNAUTHORIZED {
        return Ok(into_response(first, false, idle));
    }
    // The API refused the token: get another (one refresh for every call refused with it),
    // and send the call again if its body was kept.
    let refreshed = app
        .warden()
        .refresh_rejected(key, &grant.access_token)
        .await;
    let Some(bytes) = replay else {
        // Nothing to send again: the API's 401 is the answer (SPEC), whatever the refresh
        // did; the next call uses its token.
        match &refreshed {
            Ok(_) => tracing::info!(provider, account_id = %key.account_id,
                "proxied call refused with 401; token refreshed, body too large to send again"),
            Err(e) => tracing::warn!(provider, account_id = %key.account_id, error = %e,
                "proxied call refused with 401; the token could not be refreshed"),
        }
        return Ok(into_response(first, false, idle));
    };
    let Some(fresh) = refreshed? else {
        return Ok(into_response(first, false, idle));
    };
    drop(first);
    tracing::info!(provider, account_id = %key.account_id,
        "proxied call refused with 401; sending it again with the refreshed token");
    let second = outgoing
        .send(
            &fresh.access_token,
            outgoing_body(&parts.method, bytes),
            None,
        )
        .await?;
    Ok(into_response(second, true, idle))
}

/// A kept body as sent: none for an empty `GET` or `DELETE` (no `Content-Length: 0` on a
/// request that had no body), the bytes otherwise.
fn outgoing_body(method: &Method, bytes: axum::body::Bytes) -> Outbound {
    if bytes.is_empty() && (method == Method::GET || method == Method::DELETE) {
        Outbound::Kept(None)
    } else {
        Outbound::Kept(Some(bytes))
    }
}

/// One call as it goes upstream, but for its token and body.
struct Outgoing<'a> {
    proxy: &'a Proxy,
    api: &'a Api,
    provider: &'a str,
    account_id: &'a str,
    method: &'a Method,
    target: &'a url::Url,
    headers: &'a axum::http::HeaderMap,
}

impl Outgoing<'_> {
    /// Sends the call. The answer is given `[upstream] request_timeout_ms` to come from the
    /// moment the body has gone out whole: at once for a kept body (`sent` is `None`), when
    /// `sent` turns true for a streamed one.
    async fn send(
        &self,
        token: &AccessToken,
        body: Outbound,
        sent: Option<watch::Receiver<bool>>,
    ) -> Result<axum::http::Response<upstream::Returning>, ApiError> {
        let mut url = self.target.clone();
        let mut headers = self.headers.clone();
        self.api
            .base
            .place_token(token, &mut url, &mut headers)
            .map_err(|_| ApiError::unusable_token(self.account_id))?;
        // Origin form: the path and query; the API's host is in `Host`.
        let uri =
            axum::http::Uri::try_from(&url[url::Position::BeforePath..url::Position::AfterQuery])
                .map_err(|_| ApiError::invalid("path", "is not a valid request target"))?;
        let mut request = axum::http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let waited = self.proxy.response_timeout;
        let call = self.api.upstream.send(request);
        tokio::pin!(call);
        let answered = match sent {
            None => None,
            Some(mut sent) => tokio::select! {
                answer = &mut call => Some(answer),
                // Also when the body is dropped unsent (the sender goes away): then only
                // the answer is left to wait for.
                _ = sent.wait_for(|sent| *sent) => None,
            },
        };
        let answer = match answered {
            Some(answer) => Ok(answer),
            None => tokio::time::timeout(waited, call).await,
        };
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => Err(self.failure(failure)),
            Err(_) => {
                tracing::warn!(
                    provider = self.provider,
                    waited_ms = waited.as_millis(),
                    "proxied call: the provider's API did not answer in time"
                );
                Err(ApiError::upstream_timeout(self.provider, waited))
            }
        }
    }

    /// The answer for a call that got no response. Never with the URL: it may hold a token.
    fn failure(&self, failure: Failure) -> ApiError {
        let why = match failure {
            Failure::ConnectTimeout(waited) => {
                tracing::warn!(
                    provider = self.provider,
                    waited_ms = waited.as_millis(),
                    "proxied call: connecting to the provider's API timed out"
                );
                return ApiError::upstream_connect_timeout(self.provider, waited);
            }
            Failure::RequestBody => {
                // The client's own body failed while streaming (it went away, say).
                tracing::info!(
                    provider = self.provider,
                    "proxied call: the request body failed"
                );
                return ApiError::invalid("body", "could not be read");
            }
            Failure::Connect(why) => why,
            Failure::NoAnswer => "no answer",
        };
        tracing::warn!(
            provider = self.provider,
            why,
            "proxied call: the provider's API could not be reached"
        );
        ApiError::upstream_unreachable(self.provider, why)
    }
}

/// The upstream's answer as the client gets it: its status, its headers less the hop-by-hop
/// ones, its body streamed as it comes.
fn into_response(
    upstream: axum::http::Response<upstream::Returning>,
    refreshed: bool,
    idle: Duration,
) -> Response {
    let (mut parts, body) = upstream.into_parts();
    headers::strip_response(&mut parts.headers);
    // Our HTTP version with the client, not the API's (an HTTP/1.0 API would otherwise turn
    // an HTTP/1.1 client's answer into 1.0, without keep-alive), and none of its extensions.
    parts.version = axum::http::Version::default();
    parts.extensions = axum::http::Extensions::new();
    if refreshed {
        parts
            .headers
            .insert(REFRESHED.clone(), HeaderValue::from_static("1"));
    }
    // A download that keeps coming is never cut off; one that stops for `idle` fails.
    Response::from_parts(parts, Body::new(Idle::new(body, idle, None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_and_the_rest_keep_their_encoding() {
        let split = |path| split_path(path).expect("under /v1/proxy/");
        assert_eq!(
            split("/v1/proxy/u%2F1/gitlab/a/projects/group%2Fproject/issues"),
            (["u%2F1", "gitlab", "a"], "projects/group%2Fproject/issues")
        );
        assert_eq!(split("/v1/proxy/u/p/a/%2e%2e/x").1, "%2e%2e/x");
        assert_eq!(split("/v1/proxy/u/p/a//evil").1, "/evil");
        assert_eq!(split("/v1/proxy/u/p/a/"), (["u", "p", "a"], ""));
        assert_eq!(split("/v1/proxy/u/p/a"), (["u", "p", "a"], ""));
        assert_eq!(split("/v1/proxy/u//a/x"), (["u", "", "a"], "x"));
        assert_eq!(split("/v1/proxy/u"), (["u", "", ""], ""));
    }
}
