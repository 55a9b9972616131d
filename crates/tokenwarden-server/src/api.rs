//! The HTTP API v1 (SPEC.md's table), the unauthenticated operational routes, and the OpenAPI
//! document generated from these handlers.
//!
//! Handlers only translate: they validate input into the library's types, call
//! [`tokenwarden::Warden`], and turn the result into a view or an [`ApiError`]. Every
//! extractor is taken as a `Result` so that no client input reaches axum's default
//! plain-text rejections: all errors share the JSON error body.
//!
//! The document is the contract a client is generated from, so it says exactly what the
//! handlers do: every status each route can answer, every header it sets, and every
//! constraint its validation enforces (as far as JSON Schema can say it). [`openapi`] finishes
//! it at run time with what only the configuration knows, such as the provider names.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokenwarden::refresh::RetryPolicy;
use tokenwarden::store::ListQuery;
use tokenwarden::{
    AccessTokenGrant, AccountId, ConnectionKey, ConnectionStatus, ImportRequest, ProviderName,
    RefreshOptions, UserId,
};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::{IntoParams, OpenApi};

use crate::app::App;
use crate::config::{MAX_DELAY_MS_LIMIT, MAX_RETRIES_LIMIT, redact_quoted};
use crate::error::{ApiError, ErrorBody};
use crate::views::{
    AccessTokenView, ConnectionList, ConnectionView, Health, ImportBody, MAX_EXPIRES_IN_S,
    MAX_SCOPES, ProviderList, ProviderView, RefreshBody, rfc3339,
};

/// Default page size of `GET /v1/connections`.
const DEFAULT_LIST_LIMIT: u32 = 100;
const MAX_LIST_LIMIT: u32 = 1000;
/// Longest `cursor` accepted before decoding it.
const MAX_CURSOR_LEN: usize = 1024;
/// Ids: what [`tokenwarden::UserId::parse`] accepts, as far as a regular expression can say
/// it (no control character, no `/`). The byte limit is only approximated by `maxLength`,
/// which counts characters.
const ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F/]+$";
/// What [`tokenwarden::ProviderName::parse`] accepts.
const PROVIDER_PATTERN: &str = "^[a-z0-9_-]{1,64}$";
/// The earliest and latest expiry stored: every time in between formats as RFC 3339 in UTC.
const EARLIEST_EXPIRY: OffsetDateTime = time::macros::datetime!(1970-01-01 00:00 UTC);
const LATEST_EXPIRY: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

pub(crate) type ConnPath = Result<Path<(String, String, String)>, PathRejection>;
pub(crate) type Body = Result<Bytes, BytesRejection>;

/// Rejects requests without a configured API key.
pub async fn require_api_key(State(app): State<App>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if app.api_keys().check_header(header) {
        next.run(request).await
    } else {
        let proxied = request.uri().path().starts_with(crate::proxy::PATH_PREFIX);
        let mut response = ApiError::unauthorized().into_response();
        // RFC 6750 §3: tell the client which scheme is expected.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        if proxied {
            // On the proxy route tokenwarden's own answers are marked, so they are not
            // taken for the API's 401.
            response.headers_mut().insert(
                crate::proxy::TOKENWARDEN_ERROR,
                HeaderValue::from_static(crate::error::UNAUTHORIZED),
            );
        }
        response
    }
}

/// Validates the path into a key of a configured provider.
pub(crate) fn connection_key(app: &App, path: ConnPath) -> Result<ConnectionKey, ApiError> {
    let Path((user_id, provider, account_id)) =
        path.map_err(|e| ApiError::invalid("path", redact_quoted(&e.body_text())))?;
    key_of(app, user_id, &provider, account_id)
}

/// Validates decoded ids into a key of a configured provider.
pub(crate) fn key_of(
    app: &App,
    user_id: String,
    provider: &str,
    account_id: String,
) -> Result<ConnectionKey, ApiError> {
    let user_id = UserId::parse(user_id).map_err(|e| ApiError::invalid_message(e.to_string()))?;
    let account_id =
        AccountId::parse(account_id).map_err(|e| ApiError::invalid_message(e.to_string()))?;
    let provider = configured_provider(app, provider)?;
    Ok(ConnectionKey::new(user_id, provider, account_id))
}

/// A provider name that is configured; any other name (valid or not) is UNKNOWN_PROVIDER.
fn configured_provider(app: &App, provider: &str) -> Result<ProviderName, ApiError> {
    known_provider(provider, |name| app.warden().provider(name).is_some())
}

fn known_provider(
    provider: &str,
    is_configured: impl Fn(&ProviderName) -> bool,
) -> Result<ProviderName, ApiError> {
    ProviderName::parse(provider)
        .ok()
        .filter(|name| is_configured(name))
        .ok_or_else(|| ApiError::unknown_provider(provider))
}

pub(crate) fn read_body(app: &App, body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(app.max_body_bytes())
        } else {
            ApiError::invalid("body", "could not be read")
        }
    })
}

/// Deserializes a request body that must be a JSON object. serde's derived structs also
/// accept an array read by position (`[100]` as `max_retries`), which no client means.
pub(crate) fn json_object_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    json_from_bytes(bytes)
}

fn json_from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // "?" is serde_path_to_error's "somewhere unknown" (syntax errors, EOF).
        let field = if matches!(path.as_str(), "" | "." | "?") {
            "body".to_owned()
        } else {
            path
        };
        ApiError::invalid(&field, redact_quoted(&e.inner().to_string()))
    })?;
    de.end()
        .map_err(|e| ApiError::invalid("body", redact_quoted(&e.to_string())))?;
    Ok(value)
}

/// Keeps the connection gauge current after a write; a failure only delays it.
async fn refresh_gauges(app: &App) {
    if let Err(error) = app.warden().update_connection_gauges().await {
        tracing::warn!(error = %error, "could not update the connections gauge");
    }
}

#[utoipa::path(
    put,
    path = "/v1/users/{user_id}/connections/{provider}/{account_id}",
    tag = "connections",
    params(ConnectionPath),
    request_body(content = ImportBody, description = "tokens the application holds"),
    responses(
        (status = 200, description = "replaced an existing connection", body = ConnectionView),
        (status = 201, description = "created", body = ConnectionView),
        (status = 400, description = "INVALID_REQUEST (a malformed id or body; the message and \
            `details.field` name the field) or UNKNOWN_PROVIDER", body = ErrorBody),
        (status = 413, description = "INVALID_REQUEST: the body is larger than \
            `server.max_body_bytes`", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed (the detail is in \
            the server log)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Creates or replaces a connection from tokens the application holds.
pub async fn put_connection(
    State(app): State<App>,
    path: ConnPath,
    body: Body,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    let key = connection_key(&app, path)?;
    refuse_application_provider(&app, &key.provider)?;
    let bytes = read_body(&app, body)?;
    let request = parse_import_body(&bytes, OffsetDateTime::now_utc())?;
    let (meta, outcome) = app.warden().import(key, request).await?;
    refresh_gauges(&app).await;
    let status = match outcome {
        tokenwarden::store::PutOutcome::Created => StatusCode::CREATED,
        tokenwarden::store::PutOutcome::Replaced => StatusCode::OK,
    };
    Ok((status, Json(ConnectionView::from(&meta))))
}

/// An application provider (client-credentials grant) has no user connections: its one
/// token is obtained by tokenwarden, never imported. The library refuses too; this answer
/// also names the field.
fn refuse_application_provider(app: &App, provider: &ProviderName) -> Result<(), ApiError> {
    let grant = app.warden().provider(provider).map(|p| p.grant());
    if grant == Some(tokenwarden::provider::Grant::ClientCredentials) {
        return Err(ApiError::invalid(
            "provider",
            format!(
                "{provider} uses the client_credentials grant: it has no user connections to \
                 import; ask GET /v1/apps/{provider}/access-token for its application token"
            ),
        ));
    }
    Ok(())
}

/// Parses and validates the body of `PUT .../{account_id}`: exactly what the handler runs, and
/// public so the fuzz targets exercise the production code. Values are never echoed in
/// errors (they may be tokens).
pub fn parse_import_body(bytes: &[u8], now: OffsetDateTime) -> Result<ImportRequest, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "a JSON object is required"));
    }
    parse_import(bytes, now)
}

/// Parses and validates an import document (the CLI's `connections import` uses this too).
pub fn parse_import(bytes: &[u8], now: OffsetDateTime) -> Result<ImportRequest, ApiError> {
    import_request(json_object_from_bytes(bytes)?, now)
}

/// Validates an import body into the library's request.
pub fn import_request(body: ImportBody, now: OffsetDateTime) -> Result<ImportRequest, ApiError> {
    if body.access_token.is_empty() {
        return Err(ApiError::invalid("access_token", "must not be empty"));
    }
    if body
        .refresh_token
        .as_ref()
        .is_some_and(tokenwarden::RefreshToken::is_empty)
    {
        return Err(ApiError::invalid(
            "refresh_token",
            "must not be empty when given",
        ));
    }
    let issued_at = body.expires_in.map(|_| now);
    let expires_at = match (body.expires_in, body.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_at",
                "give expires_in or expires_at, not both",
            ));
        }
        (Some(secs), None) => Some(after(now, "expires_in", secs)?),
        (None, Some(at)) => Some(
            OffsetDateTime::parse(&at, &Rfc3339)
                .map_err(|_| ApiError::invalid("expires_at", "must be an RFC 3339 date-time"))?
                .clamp(EARLIEST_EXPIRY, LATEST_EXPIRY),
        ),
        (None, None) => None,
    };
    let refresh_expires_at = body
        .refresh_expires_in
        .map(|secs| after(now, "refresh_expires_in", secs))
        .transpose()?;
    if let Some(token_type) = &body.token_type
        && (token_type.is_empty()
            || token_type.len() > 64
            || !token_type.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(ApiError::invalid(
            "token_type",
            "must be 1-64 printable characters",
        ));
    }
    let scopes = body.scopes.unwrap_or_default();
    if scopes.len() > MAX_SCOPES {
        return Err(ApiError::invalid(
            "scopes",
            format!("at most {MAX_SCOPES} scopes"),
        ));
    }
    let metadata = match body.metadata {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(serde_json::Map::new()),
        Some(value @ serde_json::Value::Object(_)) => value,
        Some(_) => return Err(ApiError::invalid("metadata", "must be a JSON object")),
    };
    Ok(ImportRequest {
        access_token: body.access_token,
        refresh_token: body.refresh_token,
        expires_at,
        refresh_expires_at,
        issued_at,
        token_type: body.token_type,
        scopes,
        metadata,
    })
}

fn after(now: OffsetDateTime, field: &str, secs: u64) -> Result<OffsetDateTime, ApiError> {
    if secs > MAX_EXPIRES_IN_S {
        return Err(ApiError::invalid(
            field,
            format!("must be ≤ {MAX_EXPIRES_IN_S} seconds"),
        ));
    }
    let secs = i64::try_from(secs).map_err(|_| ApiError::invalid(field, "too large"))?;
    now.checked_add(time::Duration::seconds(secs))
        .ok_or_else(|| ApiError::invalid(field, "too large"))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/connections/{provider}/{account_id}",
    tag = "connections",
    params(ConnectionPath),
    responses(
        (status = 200, description = "the connection, without secrets", body = ConnectionView),
        (status = 400, description = "INVALID_REQUEST (a malformed id) or UNKNOWN_PROVIDER",
            body = ErrorBody),
        (status = 404, description = "ACCOUNT_NOT_FOUND", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed (the detail is in \
            the server log)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// A connection's view (no secrets).
pub async fn get_connection(
    State(app): State<App>,
    path: ConnPath,
) -> Result<Json<ConnectionView>, ApiError> {
    let key = connection_key(&app, path)?;
    let meta = app.warden().connection(&key).await?;
    Ok(Json(ConnectionView::from(&meta)))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/connections/{provider}/{account_id}/access-token",
    tag = "connections",
    params(ConnectionPath),
    responses(
        (status = 200, description = "a valid access token, refreshed first when needed",
            body = AccessTokenView,
            headers(("Cache-Control" = String, description = "`no-store`: a token must not be \
                cached"))),
        (status = 400, description = "INVALID_REQUEST (a malformed id) or UNKNOWN_PROVIDER",
            body = ErrorBody),
        (status = 404, description = "ACCOUNT_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "NO_REFRESH_TOKEN, TOKEN_EXPIRED or NO_ACCESS_TOKEN \
            (`reconnect: true` when the user must reconnect), REFRESH_TOO_EARLY (the provider \
            does not allow a refresh yet), or TOKEN_REFRESH_ERROR with `details.failure` \
            `permanent` (the provider refused the grant for good; `reconnect: true`)",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait; sent whenever \
                `retry_after_s` is set"))),
        (status = 500, description = "GET_TOKEN_ERROR: the database or decryption failed (the \
            detail is in the server log)", body = ErrorBody),
        (status = 502, description = "TOKEN_REFRESH_ERROR: the refresh failed after every \
            retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait; sent whenever \
                `retry_after_s` is set"))),
        (status = 503, description = "TOKEN_REFRESH_ERROR while the provider's circuit breaker \
            is open", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the breaker lets a \
                probe through"))),
    ),
    security(("api_key" = []))
)]
/// A valid access token, refreshed first when needed.
pub async fn get_access_token(
    State(app): State<App>,
    path: ConnPath,
) -> Result<Response, ApiError> {
    let key = connection_key(&app, path)?;
    let grant = app.warden().access_token(&key).await?;
    access_token_response(&grant)
}

#[utoipa::path(
    get,
    path = "/v1/apps/{provider}/access-token",
    tag = "apps",
    params(AppPath),
    responses(
        (status = 200, description = "the provider's application token (client-credentials \
            grant), obtained first when needed", body = AccessTokenView,
            headers(("Cache-Control" = String, description = "`no-store`: a token must not be \
                cached"))),
        (status = 400, description = "UNKNOWN_PROVIDER, or INVALID_REQUEST when the provider's \
            grant is not `client_credentials` (`details.provider` names it)", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database or decryption failed (the \
            detail is in the server log)", body = ErrorBody),
        (status = 502, description = "TOKEN_REFRESH_ERROR: no token could be obtained after \
            every retry; `details.failure` is `configuration` when the provider refused the \
            client (`invalid_client`: an operator problem, never a reconnect)",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait; sent whenever \
                `retry_after_s` is set"))),
        (status = 503, description = "TOKEN_REFRESH_ERROR while the provider's circuit breaker \
            is open", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the breaker lets a \
                probe through"))),
    ),
    security(("api_key" = []))
)]
/// The application token of a client-credentials provider, obtained first when needed.
pub async fn get_app_access_token(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(provider) =
        path.map_err(|e| ApiError::invalid("path", redact_quoted(&e.body_text())))?;
    let provider = configured_provider(&app, &provider)?;
    let grant = app.warden().app_token(&provider).await?;
    access_token_response(&grant)
}

/// The access-token answer: the JSON view, `Cache-Control: no-store`. Shared with the fast
/// path (`fast_path.rs`), so both answer byte for byte alike.
pub(crate) fn access_token_response(grant: &AccessTokenGrant) -> Result<Response, ApiError> {
    let view = AccessTokenView {
        access_token: grant.access_token.expose_secret(),
        token_type: &grant.token_type,
        expires_at: grant.expires_at.map(rfc3339),
    };
    // Serialized once into a buffer of the right size: `Json` starts at 128 bytes and grows,
    // which cost a reallocation and a copy of the token on every request.
    let capacity = 96 + view.access_token.len() + view.token_type.len();
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, &view).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = Response::new(axum::body::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A token must not land in a shared or browser cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/v1/users/{user_id}/connections/{provider}/{account_id}/refresh",
    tag = "connections",
    params(ConnectionPath),
    request_body(content = RefreshBody, description = "optional retry overrides: a JSON object, \
        or no body at all"),
    responses(
        (status = 200, description = "refreshed; the updated connection", body = ConnectionView),
        (status = 400, description = "INVALID_REQUEST (a malformed id or body; the message and \
            `details.field` name the field) or UNKNOWN_PROVIDER", body = ErrorBody),
        (status = 404, description = "ACCOUNT_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "NO_REFRESH_TOKEN or TOKEN_EXPIRED (`reconnect: true`), \
            TOKEN_REFRESH_ERROR with `details.failure` `permanent` (the provider refused a \
            still-valid grant for good; `reconnect: true`), or REFRESH_TOO_EARLY (the provider \
            does not allow refreshing this token yet: Instagram's first 24 hours)",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait; sent whenever \
                `retry_after_s` is set"))),
        (status = 413, description = "INVALID_REQUEST: the body is larger than \
            `server.max_body_bytes`", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database or decryption failed (the \
            detail is in the server log)", body = ErrorBody),
        (status = 502, description = "TOKEN_REFRESH_ERROR: the refresh failed after every \
            retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds to wait; sent whenever \
                `retry_after_s` is set"))),
        (status = 503, description = "TOKEN_REFRESH_ERROR while the provider's circuit breaker \
            is open", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds until the breaker lets a \
                probe through"))),
    ),
    security(("api_key" = []))
)]
/// Forces a refresh and returns the updated connection.
pub async fn refresh_connection(
    State(app): State<App>,
    path: ConnPath,
    body: Body,
) -> Result<Json<ConnectionView>, ApiError> {
    let key = connection_key(&app, path)?;
    let bytes = read_body(&app, body)?;
    let options = parse_refresh_body(&bytes, &app.refresh_policy())?;
    let result = app.warden().refresh_token(&key, options).await;
    refresh_gauges(&app).await;
    Ok(Json(ConnectionView::from(&result?)))
}

/// Parses and validates the optional body of `POST .../refresh` against the configured
/// default policy `base`: an empty body means no overrides. Public for the fuzz targets.
pub fn parse_refresh_body(bytes: &[u8], base: &RetryPolicy) -> Result<RefreshOptions, ApiError> {
    let body: RefreshBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RefreshBody::default()
    } else {
        json_object_from_bytes(bytes)?
    };
    refresh_options(base, &body)
}

fn refresh_options(base: &RetryPolicy, body: &RefreshBody) -> Result<RefreshOptions, ApiError> {
    if let Some(n) = body.max_retries
        && n > MAX_RETRIES_LIMIT
    {
        return Err(ApiError::invalid(
            "max_retries",
            format!("must be ≤ {MAX_RETRIES_LIMIT}"),
        ));
    }
    for (field, value) in [
        ("initial_delay_ms", body.initial_delay_ms),
        ("max_delay_ms", body.max_delay_ms),
    ] {
        if let Some(ms) = value
            && !(1..=MAX_DELAY_MS_LIMIT).contains(&ms)
        {
            return Err(ApiError::invalid(
                field,
                format!("must be 1-{MAX_DELAY_MS_LIMIT}"),
            ));
        }
    }
    let max = body.max_delay_ms.map(Duration::from_millis);
    let mut initial = body.initial_delay_ms.map(Duration::from_millis);
    // The n-th delay is min(max_delay, initial·2ⁿ): an initial delay above the maximum (given,
    // or the configured one under a smaller given maximum) means every retry waits the
    // maximum. Saying so beats refusing a body that no schema can tell apart from a good one.
    let effective_max = max.unwrap_or(base.max_delay);
    if initial.unwrap_or(base.initial_delay) > effective_max {
        initial = Some(effective_max);
    }
    Ok(RefreshOptions {
        max_retries: body.max_retries,
        initial_delay: initial,
        max_delay: max,
    })
}

#[utoipa::path(
    delete,
    path = "/v1/users/{user_id}/connections/{provider}/{account_id}",
    tag = "connections",
    params(ConnectionPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "INVALID_REQUEST (a malformed id) or UNKNOWN_PROVIDER",
            body = ErrorBody),
        (status = 404, description = "ACCOUNT_NOT_FOUND", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed (the detail is in \
            the server log)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Deletes a connection (revoking it upstream where the provider supports it).
pub async fn delete_connection(
    State(app): State<App>,
    path: ConnPath,
) -> Result<StatusCode, ApiError> {
    let key = connection_key(&app, path)?;
    let deleted = app.warden().delete(&key).await?;
    if !deleted {
        return Err(ApiError::not_found(key.account_id.as_str()));
    }
    refresh_gauges(&app).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/connections",
    tag = "connections",
    params(ListParams),
    responses(
        (status = 200, description = "one page of connections", body = ConnectionList),
        (status = 400, description = "INVALID_REQUEST (a malformed or unknown parameter; the \
            message and `details.field` name it) or UNKNOWN_PROVIDER", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed (the detail is in \
            the server log)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Lists connections, paginated.
pub async fn list_connections(
    State(app): State<App>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ConnectionList>, ApiError> {
    let Query(params) =
        query.map_err(|e| ApiError::invalid("query", redact_quoted(&e.body_text())))?;
    let list = parse_list_query(params, |name| app.warden().provider(name).is_some())?;
    let page = app.warden().list(&list).await?;
    Ok(Json(ConnectionList {
        items: page.items.iter().map(ConnectionView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A list's `limit`: an integer 1-1000 (the list routes share it).
pub(crate) fn parse_limit(value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
        .ok_or_else(|| ApiError::invalid("limit", format!("must be an integer 1-{MAX_LIST_LIMIT}")))
}

/// A query parameter a route does not take, named (without control characters, at most 64
/// of them: it is client input) with the ones it does take.
pub(crate) fn unknown_parameter(name: &str, known: &str) -> ApiError {
    let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    ApiError::invalid("query", format!("unknown parameter `{shown}` ({known})"))
}

/// Validates the decoded query of `GET /v1/connections` into a [`ListQuery`];
/// `is_configured` says which provider names exist. Public for the fuzz targets.
pub fn parse_list_query(
    params: HashMap<String, String>,
    is_configured: impl Fn(&ProviderName) -> bool,
) -> Result<ListQuery, ApiError> {
    let mut list = ListQuery {
        limit: DEFAULT_LIST_LIMIT,
        ..ListQuery::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "provider" => list.provider = Some(known_provider(&value, &is_configured)?),
            "user_id" => {
                list.user_id = Some(
                    UserId::parse(value).map_err(|e| ApiError::invalid_message(e.to_string()))?,
                );
            }
            "status" => {
                list.status = Some(ConnectionStatus::parse(&value).ok_or_else(|| {
                    ApiError::invalid("status", "must be active or needs_reconnect")
                })?);
            }
            "limit" => list.limit = parse_limit(&value)?,
            "cursor" => {
                if value.len() > MAX_CURSOR_LEN
                    || tokenwarden::store::decode_cursor(&value).is_err()
                {
                    return Err(ApiError::invalid(
                        "cursor",
                        "is not a next_cursor from this server",
                    ));
                }
                list.cursor = Some(value);
            }
            other => {
                return Err(unknown_parameter(
                    other,
                    "provider, user_id, status, limit, cursor",
                ));
            }
        }
    }
    Ok(list)
}

#[utoipa::path(
    get,
    path = "/v1/providers",
    tag = "providers",
    responses(
        (status = 200, description = "the configured providers, sorted by name", body = ProviderList),
    ),
    security(("api_key" = []))
)]
/// Configured providers (no secrets) with their circuit breaker state.
pub async fn list_providers(State(app): State<App>) -> Json<ProviderList> {
    let providers = app
        .warden()
        .providers()
        .into_iter()
        .map(|info| {
            let state = ProviderName::parse(info.name.as_str())
                .ok()
                .and_then(|n| app.warden().breaker_state(&n));
            ProviderView::new(info, state)
        })
        .collect();
    Json(ProviderList { providers })
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process is up", body = Health)))]
/// Liveness: the process answers.
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "the database answers", body = Health),
        (status = 503, description = "the database does not answer", body = Health),
    ))]
/// Readiness: the database answers.
pub async fn readyz(State(app): State<App>) -> (StatusCode, Json<Health>) {
    match app.warden().store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".to_owned(),
            }),
        ),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable".to_owned(),
                }),
            )
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain")))]
/// Prometheus metrics.
pub async fn metrics(State(app): State<App>) -> Response {
    let body = app.metrics().render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "this document (OpenAPI 3.1)",
        body = Object, content_type = "application/json")))]
/// The OpenAPI document of this server: [`openapi`] for its configured providers.
pub async fn openapi_json(State(app): State<App>) -> Response {
    let providers = app.warden().providers();
    let applications: Vec<String> = providers
        .iter()
        .filter(|info| info.grant == tokenwarden::provider::Grant::ClientCredentials)
        .map(|info| info.name.clone())
        .collect();
    let names: Vec<String> = providers.into_iter().map(|info| info.name).collect();
    let connectable = app.connector().connectable_providers();
    let context = DocContext {
        providers: &names,
        applications: &applications,
        connectable: connectable
            .iter()
            .map(|(name, _)| name.to_string())
            .collect(),
        account_id_required: connectable.iter().any(|(_, says)| !says),
        return_urls: app
            .connector()
            .config()
            .return_urls
            .iter()
            .map(|url| {
                let mut url = url.clone();
                url.set_query(None);
                url.to_string()
            })
            .collect(),
        webhook_endpoints: app.webhooks().endpoint_names(),
        proxied: app.proxy().providers(),
    };
    // Built per request: a few hundred microseconds, and always what the server runs with.
    Json(openapi_for(&context)).into_response()
}

/// Any other path: a JSON 404 instead of an empty body.
pub async fn fallback(request: Request) -> Response {
    let path: String = request.uri().path().chars().take(200).collect();
    let mut response =
        ApiError::invalid_message(format!("no route for {} {path}", request.method()))
            .into_response();
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// The path of one connection. Only describes it for the document: [`connection_key`]
/// validates what the router extracted. utoipa takes a `schema_with` parameter's description
/// and requiredness from nowhere, so the schemas carry the descriptions and [`finish`] marks
/// path parameters required.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct ConnectionPath {
    #[param(schema_with = id_schema)]
    user_id: String,
    #[param(schema_with = provider_schema)]
    provider: String,
    #[param(schema_with = id_schema)]
    account_id: String,
}

/// The path of an application token. Only describes it for the document.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct AppPath {
    #[param(schema_with = provider_schema)]
    provider: String,
}

/// The query of `GET /v1/connections`; any other parameter is INVALID_REQUEST. Only
/// describes it for the document: [`parse_list_query`] validates it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    #[param(schema_with = provider_schema)]
    provider: Option<String>,
    #[param(schema_with = id_schema)]
    user_id: Option<String>,
    #[param(schema_with = crate::views::connection_status_schema)]
    status: Option<String>,
    #[param(schema_with = limit_schema)]
    limit: Option<u32>,
    #[param(schema_with = cursor_schema)]
    cursor: Option<String>,
}

fn id_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(tokenwarden::connection::MAX_ID_LEN))
        .pattern(Some(ID_PATTERN))
        .description(Some(
            "1-255 bytes of UTF-8 (maxLength counts characters), no control character, no `/`",
        ))
        .build()
}

/// Replaced at run time by the configured names (see [`openapi`]).
fn provider_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(PROVIDER_PATTERN))
        .description(Some(PROVIDER_DESCRIPTION))
        .build()
}

const PROVIDER_DESCRIPTION: &str =
    "a configured provider (`GET /v1/providers`); any other name is UNKNOWN_PROVIDER";

fn limit_schema() -> Object {
    list_limit_schema(DEFAULT_LIST_LIMIT, "page size")
}

/// A list's `limit` parameter: 1 to [`MAX_LIST_LIMIT`], `default` when left out.
pub(crate) fn list_limit_schema(default: u32, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int32,
        )))
        .minimum(Some(1))
        .maximum(Some(MAX_LIST_LIMIT))
        .default(Some(default.into()))
        .description(Some(description))
        .build()
}

/// A cursor is base64url without padding; whether it decodes to a position is more than a
/// schema can say, so the document only gives its alphabet and length.
fn cursor_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_CURSOR_LEN))
        .pattern(Some("^[A-Za-z0-9_-]+$"))
        .description(Some(
            "`next_cursor` of the previous page; any other value is INVALID_REQUEST",
        ))
        .build()
}

/// The OpenAPI document as served: [`ApiDoc`] finished with what only the running server
/// knows or what utoipa's attributes cannot say.
///
/// - `provider` (path and query) is an enum of the configured names, so a client sees which
///   exist; the document still lists UNKNOWN_PROVIDER (400) for the others.
/// - Path parameters are required (OpenAPI demands it; utoipa drops it with `schema_with`).
/// - Every secured operation answers 401 UNAUTHORIZED with `WWW-Authenticate: Bearer`: the
///   API-key middleware wraps every `/v1` route, so the document adds it in one place too.
/// - Every response carries `X-Request-Id`.
/// - The refresh body is optional (`required: false`) but never `null`.
/// - An import gives `expires_in` or `expires_at`, not both.
pub fn openapi(providers: &[String]) -> serde_json::Value {
    openapi_with_applications(providers, &[])
}

/// [`openapi`] for a server whose `applications` (among `providers`) have the
/// client-credentials grant: the application token route lists only those, and the import
/// (which they refuse) only the others, so that every request the document allows is one
/// the server can accept.
pub fn openapi_with_applications(
    providers: &[String],
    applications: &[String],
) -> serde_json::Value {
    openapi_for(&DocContext {
        providers,
        applications,
        connectable: Vec::new(),
        account_id_required: false,
        return_urls: Vec::new(),
        webhook_endpoints: Vec::new(),
        proxied: Vec::new(),
    })
}

/// What the served document depends on.
pub struct DocContext<'a> {
    /// Every configured provider.
    pub providers: &'a [String],
    /// The client-credentials ones.
    pub applications: &'a [String],
    /// The ones a connect session may name.
    pub connectable: Vec<String>,
    /// Some connectable provider does not say which account signed in.
    pub account_id_required: bool,
    /// `[connect] return_urls`, without their query.
    pub return_urls: Vec<String>,
    /// The configured webhook endpoints' names.
    pub webhook_endpoints: Vec<String>,
    /// The providers with an `api_base_url`, which the proxy reaches.
    pub proxied: Vec<String>,
}

/// The document for any configuration (`tokenwarden openapi`): what the server accepts
/// whatever is configured, so clients generated from it work with every server. Where the
/// served document lists the configured names (providers, return URLs, webhook endpoints),
/// this one gives the shape every such name has; each server's `GET /openapi.json` is this
/// document narrowed to its configuration.
pub fn openapi_any_configuration() -> serde_json::Value {
    use serde_json::json;

    let mut doc = openapi(&[]);
    // With nothing configured the served document accepts no provider and no return URL
    // (`not: {}`); for any configuration they are a provider name and a URL.
    if let Some(properties) = doc.pointer_mut("/components/schemas/CreateSessionBody/properties") {
        properties["provider"] = serde_json::to_value(provider_schema()).unwrap_or_default();
        properties["provider"]["description"] = json!(
            "a configured provider with the authorization-code grant, an authorization_url and \
             a client_id; any other name is UNKNOWN_PROVIDER or INVALID_REQUEST"
        );
        properties["return_url"] = json!({
            "type": "string",
            "format": "uri",
            "description": "one of `[connect] return_urls`, with any query of the \
                application's own",
        });
    }
    doc
}

/// The document for a server configured as `context` says.
pub fn openapi_for(context: &DocContext<'_>) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    add_proxy(&mut doc);
    finish(&mut doc, context.providers, context.applications);
    finish_proxy(&mut doc, context);
    finish_connect(&mut doc, context);
    finish_webhooks(&mut doc, context);
    doc
}

/// The proxy's operations (one per method), written here rather than derived: utoipa gives
/// one operation id to every method of a handler, and the answers are mostly the
/// provider's, which no schema describes. [`finish`] then adds what every `/v1` operation
/// has (401, `X-Request-Id`, required path parameters), and [`finish_proxy`] the providers.
fn add_proxy(doc: &mut serde_json::Value) {
    use serde_json::json;

    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        })
    };
    let with_retry_after = |description: &str| {
        let mut response = error(description);
        response["headers"] = json!({"Retry-After": {
            "description": "seconds to wait; sent whenever `retry_after_s` is set",
            "schema": {"type": "integer", "minimum": 0},
        }});
        response
    };
    let id = serde_json::to_value(id_schema()).unwrap_or_default();
    let parameters = json!([
        {"name": "user_id", "in": "path", "required": true, "schema": id},
        {"name": "provider", "in": "path", "required": true,
            "schema": serde_json::to_value(provider_schema()).unwrap_or_default()},
        {"name": "account_id", "in": "path", "required": true, "schema": id},
        {"name": "path", "in": "path", "required": true,
            "description": "the API path under the provider's `api_base_url`, any number of \
                segments, encoded as the API expects it (an encoded slash stays encoded); a path \
                that would leave `api_base_url` (`.` or `..` segments in any encoding, a \
                backslash, a control character, a scheme, a leading `/`, an `@` authority) is \
                INVALID_REQUEST. The query string is forwarded as it is.",
            "schema": {"type": "string", "minLength": 1}},
    ]);
    let mut item = serde_json::Map::new();
    for method in crate::proxy::METHODS.map(|m| m.as_str().to_ascii_lowercase()) {
        let mut operation = json!({
            "tags": ["proxy"],
            "operationId": format!("proxy_{method}"),
            "summary": format!("{} a provider's API with the connection's token",
                method.to_ascii_uppercase()),
            "description": "Forwards the call to `{api_base_url}/{path}?{query}` with the \
                connection's token where the provider takes it (`Authorization: Bearer` unless \
                the catalog says otherwise). Request headers go on except hop-by-hop ones, \
                `Host`, `Authorization`, `Cookie`, `Tokenwarden-*` and `Proxy-*`; the answer's \
                status, headers (less hop-by-hop ones) and body come back as the API sent them. \
                Redirects are handed back, not followed. An upstream 401 refreshes the token \
                (one refresh for any number of calls) and sends the call once more when its body \
                is at most `proxy.max_replay_bytes`; `server.max_body_bytes` does not apply.",
            "parameters": parameters,
            "responses": {
                "default": {
                    "description": "the provider API's answer, whatever its status",
                    "headers": {"Tokenwarden-Refreshed": {
                        "description": "`1` when the API refused the first attempt (401) and \
                            this is the answer to a second one with a refreshed token",
                        "schema": {"type": "string", "enum": ["1"]},
                    }},
                    "content": {"*/*": {"schema": {}}},
                },
                "400": error("INVALID_REQUEST (a malformed id, a path that would leave the API's \
                    base URL, a provider without `api_base_url`; `details.field` names it) or \
                    UNKNOWN_PROVIDER; or the API's own 400"),
                "404": error("ACCOUNT_NOT_FOUND; or the API's own 404"),
                "409": with_retry_after("NO_REFRESH_TOKEN, TOKEN_EXPIRED or NO_ACCESS_TOKEN \
                    (`reconnect: true` when the user must reconnect), REFRESH_TOO_EARLY, or \
                    TOKEN_REFRESH_ERROR with `details.failure` `permanent`: as the access-token \
                    route answers"),
                "500": error("GET_TOKEN_ERROR: the database or decryption failed"),
                "502": with_retry_after("TOKEN_REFRESH_ERROR (the refresh failed after every \
                    retry) or UPSTREAM_UNREACHABLE (the API could not be reached)"),
                "503": with_retry_after("TOKEN_REFRESH_ERROR while the provider's circuit \
                    breaker is open"),
                "504": error("UPSTREAM_TIMEOUT: the API did not answer within \
                    `upstream.request_timeout_ms` (or could not be connected to within \
                    `upstream.connect_timeout_ms`)"),
            },
            "security": [{"api_key": []}],
        });
        if method != "get" && method != "delete" {
            operation["requestBody"] = json!({
                "required": false,
                "description": "sent on as it is, streamed",
                "content": {"application/json": {"schema": {}}},
            });
            // Listed because every operation with a body lists it; tokenwarden itself sets
            // no size limit on proxied bodies.
            operation["responses"]["413"] = error(
                "only the API's own: `server.max_body_bytes` does not apply to proxied bodies",
            );
        }
        item.insert(method, operation);
    }
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.insert(
            "/v1/proxy/{user_id}/{provider}/{account_id}/{path}".to_owned(),
            serde_json::Value::Object(item),
        );
    }
}

/// The proxy's `provider` is one with an `api_base_url` (any other is refused, with
/// UNKNOWN_PROVIDER or INVALID_REQUEST), when the server knows which.
fn finish_proxy(doc: &mut serde_json::Value, context: &DocContext<'_>) {
    if context.proxied.is_empty() {
        return;
    }
    let Some(item) = doc
        .pointer_mut("/paths/~1v1~1proxy~1{user_id}~1{provider}~1{account_id}~1{path}")
        .and_then(|p| p.as_object_mut())
    else {
        return;
    };
    for operation in item.values_mut() {
        for parameter in operation["parameters"].as_array_mut().into_iter().flatten() {
            if parameter["name"] == "provider" {
                parameter["schema"] = serde_json::json!({
                    "type": "string",
                    "enum": context.proxied,
                    "description": "a configured provider with an `api_base_url`",
                });
            }
        }
    }
}

/// The delivery log's filters as the server checks them, and the test route's endpoint names
/// as an enum of the configured ones (any other name is WEBHOOK_ENDPOINT_NOT_FOUND).
fn finish_webhooks(doc: &mut serde_json::Value, context: &DocContext<'_>) {
    use serde_json::json;

    if let Some(parameters) = doc
        .pointer_mut("/paths/~1v1~1webhooks~1deliveries/get/parameters")
        .and_then(|p| p.as_array_mut())
    {
        for parameter in parameters {
            let schema = match parameter["name"].as_str() {
                Some("status") => serde_json::to_value(crate::webhooks::delivery_status_schema())
                    .unwrap_or_default(),
                Some("type") => {
                    serde_json::to_value(crate::webhooks::event_type_schema()).unwrap_or_default()
                }
                Some("endpoint") => json!({"type": "string", "minLength": 1, "maxLength": 64}),
                Some("limit") => serde_json::to_value(limit_schema()).unwrap_or_default(),
                Some("cursor") => json!({
                    "type": "string", "minLength": 1, "maxLength": 128,
                    "pattern": "^[A-Za-z0-9_-]+$",
                    "description": "`next_cursor` of the previous page; any other value is \
                        INVALID_REQUEST",
                }),
                _ => continue,
            };
            parameter["schema"] = schema;
        }
    }
    if !context.webhook_endpoints.is_empty()
        && let Some(parameters) = doc
            .pointer_mut("/paths/~1v1~1webhooks~1endpoints~1{name}~1test/post/parameters")
            .and_then(|p| p.as_array_mut())
    {
        for parameter in parameters {
            if parameter["name"] == "name" {
                parameter["schema"] = json!({
                    "type": "string",
                    "enum": context.webhook_endpoints,
                    "description": "a configured endpoint; any other name is \
                        WEBHOOK_ENDPOINT_NOT_FOUND",
                });
            }
        }
    }
}

/// The connect session body says exactly what the server accepts: the connectable
/// providers, the listed return URLs (any query, no fragment), ids and scopes as validated;
/// and the created session links to its view.
fn finish_connect(doc: &mut serde_json::Value, context: &DocContext<'_>) {
    use serde_json::json;

    let nothing = json!({"not": {}, "description": "no value is accepted: see the configuration"});
    if let Some(body) = doc.pointer_mut("/components/schemas/CreateSessionBody") {
        body["properties"]["provider"] = if context.connectable.is_empty() {
            nothing.clone()
        } else {
            json!({
                "type": "string",
                "enum": context.connectable,
                "description": "a configured provider with the authorization-code grant, an \
                    authorization_url and a client_id",
            })
        };
        body["properties"]["return_url"] = if context.return_urls.is_empty() {
            nothing
        } else {
            let alternatives: Vec<String> = context
                .return_urls
                .iter()
                .map(|u| regex_escape(u))
                .collect();
            json!({
                "type": "string",
                "pattern": format!("^(?:{})(?:\\?[^#\\s]*)?$", alternatives.join("|")),
                "description": "one of `[connect] return_urls`, with any query of the \
                    application's own",
            })
        };
        body["properties"]["scopes"] = json!({
            "type": ["array", "null"],
            "maxItems": tokenwarden::connect::MAX_SCOPES,
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "pattern": "^[^\\s,\\u0000-\\u001f\\u007f-\\u009f]+$",
            },
        });
        if context.account_id_required {
            body["required"] = json!(["user_id", "provider", "return_url", "account_id"]);
        }
        let id = serde_json::to_value(id_schema()).unwrap_or_default();
        body["properties"]["user_id"] = id.clone();
        body["properties"]["account_id"] = if context.account_id_required {
            id
        } else {
            json!({"oneOf": [id, {"type": "null"}]})
        };
    }
    if let Some(created) = doc.pointer_mut("/paths/~1v1~1connect~1sessions/post/responses/201") {
        created["links"] = json!({"GetSession": {
            "operationId": "get_session",
            "parameters": {"id": "$response.body#/id"},
        }});
    }
}

/// `text` as a regular expression matching itself (ECMA-262 and Python agree on these).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\^$.|?*+()[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn finish(doc: &mut serde_json::Value, providers: &[String], applications: &[String]) {
    use serde_json::json;

    let error_body = json!({"$ref": "#/components/schemas/ErrorBody"});
    let request_id = json!({
        "description": "the request's id: the client's `X-Request-Id`, or one the server made",
        "schema": {"type": "string"},
    });
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for operation in paths.values_mut().filter_map(|item| item.as_object_mut()) {
            for operation in operation.values_mut() {
                let operation_id = operation["operationId"].as_str().unwrap_or("").to_owned();
                let parameters = operation
                    .get_mut("parameters")
                    .and_then(|p| p.as_array_mut());
                for parameter in parameters.into_iter().flatten() {
                    if parameter["in"] == "path" {
                        parameter["required"] = json!(true);
                    }
                    let names: Vec<&String> = match operation_id.as_str() {
                        "get_app_access_token" => applications.iter().collect(),
                        "put_connection" => providers
                            .iter()
                            .filter(|name| !applications.contains(name))
                            .collect(),
                        _ => providers.iter().collect(),
                    };
                    if parameter["name"] == "provider" && !names.is_empty() {
                        parameter["schema"] = json!({
                            "type": "string",
                            "enum": names,
                            "description": PROVIDER_DESCRIPTION,
                        });
                    }
                }
                if operation.get("security").is_some() {
                    operation["responses"]["401"] = json!({
                        "description": "UNAUTHORIZED: missing or wrong API key",
                        "headers": {"WWW-Authenticate": {
                            "description": "`Bearer`",
                            "schema": {"type": "string"},
                        }},
                        "content": {"application/json": {"schema": error_body}},
                    });
                }
                if operation["operationId"] == "refresh_connection" {
                    operation["requestBody"]["required"] = json!(false);
                }
                for response in operation["responses"]
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|r| r.values_mut())
                {
                    response["headers"]["X-Request-Id"] = request_id.clone();
                }
            }
        }
    }
    // JSON Schema has no "not both"; "expires_in absent or null, or expires_at absent or
    // null" says it without `not`, which generators handle poorly.
    if let Some(import) = doc.pointer_mut("/components/schemas/ImportBody") {
        import["anyOf"] = json!([
            {"properties": {"expires_in": {"type": "null"}}},
            {"properties": {"expires_at": {"type": "null"}}},
        ]);
    }
}

/// The document as utoipa derives it from the handlers; [`openapi`] finishes it.
#[derive(OpenApi)]
#[openapi(
    info(title = "tokenwarden", description = "Self-hosted OAuth token broker: HTTP API v1"),
    paths(
        put_connection, get_connection, get_access_token, refresh_connection, delete_connection,
        get_app_access_token, list_connections, list_providers, healthz, readyz, metrics, openapi_json,
        crate::connect::create_session, crate::connect::get_session,
        crate::webhooks::list_deliveries, crate::webhooks::retry_delivery,
        crate::webhooks::test_endpoint, crate::webhooks::connection_events
    ),
    components(schemas(
        ConnectionView, crate::views::LastErrorView, ConnectionList, AccessTokenView, ImportBody,
        RefreshBody, ProviderView, crate::views::BreakerView, ProviderList, Health, ErrorBody,
        crate::error::ErrorObject, crate::connect::CreateSessionBody,
        crate::connect::CreatedSessionView, crate::connect::ConnectSessionView,
        crate::connect::SessionErrorView, crate::webhooks::DeliveryItem,
        crate::webhooks::DeliveryList, crate::webhooks::TestEventView,
        crate::webhooks::ConnectionEventView, crate::webhooks::ConnectionEventList
    )),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ImportBody {
        json_from_bytes(json.as_bytes()).expect("parses")
    }

    #[test]
    fn import_validation_names_fields() {
        let now = OffsetDateTime::now_utc();
        let err = import_request(body(r#"{"access_token": ""}"#), now).expect_err("empty");
        assert_eq!(err.code(), "INVALID_REQUEST");
        let err = import_request(
            body(r#"{"access_token":"a","expires_in":5,"expires_at":"2026-01-01T00:00:00Z"}"#),
            now,
        )
        .expect_err("both");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(import_request(body(r#"{"access_token":"a","metadata":[1]}"#), now).is_err());
        assert!(import_request(body(r#"{"access_token":"a","expires_at":"soon"}"#), now).is_err());
        let ok = import_request(
            body(r#"{"access_token":"a","expires_at":"2020-01-01T00:00:00Z","scopes":["x"]}"#),
            now,
        )
        .expect("past expiry is allowed");
        assert_eq!(ok.scopes, vec!["x".to_owned()]);
        assert!(ok.metadata.is_object());
    }

    #[test]
    fn wrong_types_name_the_field_without_the_value() {
        let Err(err) =
            json_from_bytes::<ImportBody>(br#"{"access_token": "tok", "expires_in": "s3cret"}"#)
        else {
            panic!("must fail");
        };
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = openapi(&["fake".to_owned()]).to_string();
        for path in [
            "/v1/connections",
            "/v1/providers",
            "/access-token",
            "/refresh",
            "/readyz",
            "/{account_id}/events",
            "/v1/proxy/{user_id}/{provider}/{account_id}/{path}",
        ] {
            assert!(doc.contains(path), "{path}");
        }
        let doc = openapi(&["fake".to_owned()]);
        let proxy = &doc["paths"]["/v1/proxy/{user_id}/{provider}/{account_id}/{path}"];
        for method in ["get", "post", "put", "patch", "delete"] {
            let operation = &proxy[method];
            assert_eq!(operation["operationId"], format!("proxy_{method}"));
            assert!(
                operation["responses"]["401"].is_object(),
                "{method}: 401 added"
            );
            assert!(operation["responses"]["504"].is_object(), "{method}: 504");
        }
    }

    #[test]
    fn an_initial_delay_above_the_maximum_is_lowered_to_it() {
        let base = RetryPolicy {
            max_retries: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        };
        for (body, initial, max) in [
            (r#"{"max_delay_ms": 5}"#, 5, 5),
            (r#"{"initial_delay_ms": 20000}"#, 10_000, 10_000),
            (
                r#"{"initial_delay_ms": 500, "max_delay_ms": 100}"#,
                100,
                100,
            ),
            (r#"{"initial_delay_ms": 50}"#, 50, 10_000),
        ] {
            let options = parse_refresh_body(body.as_bytes(), &base).expect(body);
            let policy = options.apply(&base);
            assert_eq!(
                policy.initial_delay,
                Duration::from_millis(initial),
                "{body}"
            );
            assert_eq!(policy.max_delay, Duration::from_millis(max), "{body}");
            policy.validate().expect("a policy the library accepts");
        }
    }

    #[test]
    fn integers_are_what_json_schema_calls_integers() {
        let base = RetryPolicy::default();
        let options =
            parse_refresh_body(br#"{"max_retries": 2.0, "max_delay_ms": 1e3}"#, &base).expect("ok");
        assert_eq!(options.max_retries, Some(2));
        assert_eq!(options.max_delay, Some(Duration::from_millis(1000)));
        for body in [
            r#"{"max_retries": 2.5}"#,
            r#"{"max_retries": -1}"#,
            r#"{"max_retries": 1e30}"#,
            r#"{"max_retries": 4294967296}"#,
        ] {
            let err = parse_refresh_body(body.as_bytes(), &base).expect_err(body);
            assert!(
                err.message().starts_with("max_retries: "),
                "{body}: {}",
                err.message()
            );
        }
    }
}
