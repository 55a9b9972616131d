//! The access-token route's fast path: a token the warden holds fresh in memory is answered
//! here, in front of the router, without the boxed tower layers, the two routers and the
//! `from_fn` authentication middleware (see BENCHMARKS.md, "HTTP fast path": those cost more
//! than the rest of a cache hit).
//!
//! It only ever answers a request the full stack would answer `200` for: `GET` of exactly
//! `/v1/users/{user_id}/connections/{provider}/{account_id}/access-token` with no
//! percent-encoding, a valid API key, valid ids of a configured provider, and a token
//! [`Warden::cached_access_token`] has fresh. Everything else (a miss, a bad key, an odd
//! path, any error) goes to the full stack untouched, so every status, header and error body
//! stays the router's. What the full stack adds to a `200` is done here the same way: the
//! `X-Request-Id` (kept from the request or generated), the request span with `method`,
//! `path` and `request_id`, and the access line, in the same JSON shape.
//!
//! The proxy route (`/v1/proxy/…` with a valid API key) is taken here too, for the same
//! reason: its handler ([`crate::proxy::forward`]) runs in the request's span with the same
//! request id, access line and `response failed` error line for a 5xx as the full stack
//! would give it, without the layers. A request with a missing or wrong key goes to the full
//! stack, whose 401 the proxy route marks.
//!
//! [`Warden::cached_access_token`]: tokenwarden::Warden::cached_access_token

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, header};
use tokenwarden::{AccountId, ConnectionKey, ProviderName, UserId};
use tower::Service;
use tower_http::request_id::MakeRequestId;
use tower_http::trace::OnResponse;
use tracing::Instrument as _;

use crate::app::{App, SequentialRequestIds};
use crate::telemetry::{AccessLog, request_span};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application as one service: the fast path in front of the router.
#[derive(Clone)]
pub struct FastPath {
    app: App,
    ids: SequentialRequestIds,
    router: Router,
}

impl FastPath {
    pub fn new(app: App, router: Router, ids: SequentialRequestIds) -> Self {
        Self { app, ids, router }
    }

    /// The connection a request asks a token for, if the fast path may answer it.
    fn claim(&self, request: &Request<Body>) -> Option<ConnectionKey> {
        if request.method() != Method::GET {
            return None;
        }
        let rest = request.uri().path().strip_prefix("/v1/users/")?;
        let mut parts = rest.split('/');
        let (user, connections, provider, account, route) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || connections != "connections" || route != "access-token" {
            return None;
        }
        // Percent-encoded ids are decoded by the router's extractor: leave them to it.
        if [user, provider, account]
            .iter()
            .any(|s| s.is_empty() || s.contains('%'))
        {
            return None;
        }
        if !self.app.api_keys().check_header(authorization(request)) {
            return None;
        }
        let provider = ProviderName::parse(provider).ok()?;
        self.app.warden().provider(&provider)?;
        let user = UserId::parse(user).ok()?;
        let account = AccountId::parse(account).ok()?;
        Some(ConnectionKey::new(user, provider, account))
    }

    /// Whether the request is the proxy route's with a valid API key: the route's pattern
    /// (`/v1/proxy/{user_id}/{provider}/{account_id}/{*path}`: three non-empty ids and a
    /// non-empty rest), any method (the handler answers 405 itself).
    fn proxies(&self, request: &Request<Body>) -> bool {
        let Some((ids, rest)) = crate::proxy::split_path(request.uri().path()) else {
            return false;
        };
        let shaped = ids.iter().all(|id| !id.is_empty()) && !rest.is_empty();
        shaped && self.app.api_keys().check_header(authorization(request))
    }

    /// The request's `X-Request-Id`: kept when it came with one, else made and set on it, as
    /// the full stack's request-id layer does.
    fn request_id(&mut self, request: &mut Request<Body>) -> HeaderValue {
        if let Some(id) = request.headers().get(&X_REQUEST_ID) {
            return id.clone();
        }
        let id = self
            .ids
            .make_request_id(request)
            .map(|id| id.into_header_value());
        let id = id.unwrap_or_else(|| HeaderValue::from_static("-"));
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), id.clone());
        id
    }

    /// Answers a fresh token, or gives the request back for the full stack.
    #[expect(
        clippy::result_large_err,
        reason = "the request moves back to the caller; boxing it would allocate on every miss"
    )]
    pub fn try_answer(
        &mut self,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, Request<Body>> {
        let Some(key) = self.claim(&request) else {
            return Err(request);
        };
        let started = Instant::now();
        let Some(grant) = self.app.warden().cached_access_token(&key) else {
            return Err(request);
        };
        let request_id = self.request_id(&mut request);
        let span = request_span(&request);
        let _entered = span.enter();
        tracing::debug!("started processing request");
        let mut response = match crate::api::access_token_response(&grant) {
            Ok(response) => response,
            // Serializing a grant cannot fail; should it, the full stack answers.
            Err(_) => return Err(request),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id);
        AccessLog.on_response(&response, started.elapsed(), &span);
        Ok(response)
    }
}

fn authorization(request: &Request<Body>) -> Option<&[u8]> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

/// A proxied call, as the full stack would serve it: in the request's span, its request id on
/// the answer, the access line, and the trace layer's error line for a 5xx.
async fn proxied(
    app: App,
    mut request: Request<Body>,
    request_id: HeaderValue,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    if let Some(key) = request.headers_mut().get_mut(header::AUTHORIZATION) {
        key.set_sensitive(true);
    }
    let span = request_span(&request);
    span.in_scope(|| tracing::debug!("started processing request"));
    let mut response = crate::proxy::forward(axum::extract::State(app), request)
        .instrument(span.clone())
        .await;
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    let latency = started.elapsed();
    let _entered = span.enter();
    AccessLog.on_response(&response, latency, &span);
    if response.status().is_server_error() {
        tracing::error!(
            target: "tower_http::trace::on_failure",
            classification = %format_args!("Status code: {}", response.status()),
            latency = %format_args!("{} ms", latency.as_millis()),
            "response failed"
        );
    }
    Ok(response)
}

type BoxedFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl Service<Request<Body>> for FastPath {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if self.proxies(&request) {
            let request_id = self.request_id(&mut request);
            return Box::pin(proxied(self.app.clone(), request, request_id));
        }
        match self.try_answer(request) {
            Ok(response) => Box::pin(std::future::ready(Ok(response))),
            Err(request) => {
                let mut router = self.router.clone();
                Box::pin(async move { router.call(request).await })
            }
        }
    }
}
