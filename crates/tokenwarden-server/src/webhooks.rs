//! The webhooks' HTTP API: the delivery log (`GET /v1/webhooks/deliveries`), sending a failed
//! delivery again (`POST /v1/webhooks/deliveries/{id}/retry`), a test event for one
//! endpoint (`POST /v1/webhooks/endpoints/{name}/test`), and one connection's recent events
//! as the outbox keeps them (`GET /v1/users/{user_id}/connections/{provider}/{account_id}/events`).
//! Delivery itself is the library's `tokenwarden::webhooks::worker`, run by `app::run`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Serialize;
use tokenwarden::webhooks::EventType;
use tokenwarden::webhooks::outbox::{
    DeliveryQuery, DeliveryStatus, DeliveryView, decode_delivery_cursor,
};
use tokenwarden::{Error, ErrorCode};
use utoipa::{IntoParams, ToSchema};

use crate::api::{ConnPath, ConnectionPath, connection_key, parse_limit, unknown_parameter};
use crate::app::App;
use crate::config::redact_quoted;
use crate::error::{ApiError, ErrorBody};
use crate::views::rfc3339;

/// Longest cursor accepted (a delivery id, base64url).
const MAX_CURSOR_LEN: usize = 128;
/// Events listed for one connection when the query gives no `limit`.
const DEFAULT_EVENTS_LIMIT: u32 = 50;

/// A delivery: one event to one endpoint. Never the body.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryItem {
    /// `dlv_…`
    pub id: String,
    /// The event's id: the `webhook-id` header of every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    #[schema(schema_with = event_type_schema)]
    pub kind: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(schema_with = delivery_status_schema)]
    pub status: String,
    pub attempts: u32,
    /// The last attempt's HTTP status, when it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt did not deliver.
    pub last_error: Option<String>,
    /// RFC 3339; set while pending.
    pub next_attempt_at: Option<String>,
    pub created_at: String,
}

pub(crate) fn event_type_schema() -> utoipa::openapi::schema::Object {
    crate::views::string_enum(
        EventType::ALL
            .iter()
            .map(|t| t.as_str())
            .chain([EventType::WebhookTest.as_str()]),
        "the event's type",
    )
}

pub(crate) fn delivery_status_schema() -> utoipa::openapi::schema::Object {
    crate::views::string_enum(
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
        ]
        .map(DeliveryStatus::as_str),
        "`pending` (due at `next_attempt_at`), `delivered`, or `failed` (given up)",
    )
}

/// One page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryItem>,
    pub next_cursor: Option<String>,
}

/// A queued test event.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestEventView {
    /// The `webhook.test` event's id (`webhook-id`).
    pub event_id: String,
}

/// The query of `GET /v1/webhooks/deliveries`. Only describes it for the document.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct DeliveryParams {
    /// `pending`, `delivered` or `failed`.
    status: Option<String>,
    /// An event type, e.g. `connection.needs_reconnect`.
    #[param(rename = "type")]
    kind: Option<String>,
    /// An endpoint's name.
    endpoint: Option<String>,
    /// Page size, 1-1000 (default 100).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn item(view: &DeliveryView) -> DeliveryItem {
    DeliveryItem {
        id: view.id.clone(),
        event_id: view.event_id.clone(),
        kind: view.kind.as_str().to_owned(),
        endpoint: view.endpoint.clone(),
        status: view.status.as_str().to_owned(),
        attempts: view.attempts,
        last_status: view.last_status,
        last_error: view.last_error.clone(),
        next_attempt_at: view.next_attempt_at.map(rfc3339),
        created_at: rfc3339(view.created_at),
    }
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    tag = "webhooks",
    params(DeliveryParams),
    responses(
        (status = 200, description = "one page of deliveries, newest first", body = DeliveryList),
        (status = 400, description = "INVALID_REQUEST: a malformed or unknown parameter (the \
            message and `details.field` name it)", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Lists webhook deliveries, filtered and paginated.
pub async fn list_deliveries(
    State(app): State<App>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let Query(params) =
        query.map_err(|e| ApiError::invalid("query", redact_quoted(&e.body_text())))?;
    let query = parse_delivery_query(params)?;
    let page = app
        .warden()
        .store()
        .list_deliveries(&query)
        .await
        .map_err(|e| store_failure("listing deliveries failed", &e))?;
    Ok(Json(DeliveryList {
        items: page.items.iter().map(item).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Validates the query of `GET /v1/webhooks/deliveries`.
pub fn parse_delivery_query(params: HashMap<String, String>) -> Result<DeliveryQuery, ApiError> {
    let mut query = DeliveryQuery::default();
    for (name, value) in params {
        match name.as_str() {
            "status" => {
                query.status = Some(DeliveryStatus::parse(&value).ok_or_else(|| {
                    ApiError::invalid("status", "must be pending, delivered or failed")
                })?);
            }
            "type" => {
                query.kind = Some(
                    EventType::parse(&value)
                        .ok_or_else(|| ApiError::invalid("type", "is not an event type"))?,
                );
            }
            "endpoint" => {
                if value.is_empty() || value.chars().count() > 64 {
                    return Err(ApiError::invalid("endpoint", "must be 1-64 characters"));
                }
                query.endpoint = Some(value);
            }
            "limit" => query.limit = parse_limit(&value)?,
            "cursor" => {
                if value.len() > MAX_CURSOR_LEN || decode_delivery_cursor(&value).is_err() {
                    return Err(ApiError::invalid(
                        "cursor",
                        "is not a next_cursor from this server",
                    ));
                }
                query.cursor = Some(value);
            }
            other => {
                return Err(unknown_parameter(
                    other,
                    "status, type, endpoint, limit, cursor",
                ));
            }
        }
    }
    Ok(query)
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/deliveries/{id}/retry",
    tag = "webhooks",
    params(("id" = String, Path, description = "the delivery's id (`dlv_…`)")),
    responses(
        (status = 202, description = "queued: it is sent again now, with the same event id",
            body = DeliveryItem),
        (status = 400, description = "INVALID_REQUEST: the id is not UTF-8", body = ErrorBody),
        (status = 404, description = "WEBHOOK_DELIVERY_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "WEBHOOK_DELIVERY_NOT_FAILED: only a failed delivery can \
            be sent again", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Sends a failed delivery again now.
pub async fn retry_delivery(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<DeliveryItem>), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid("id", redact_quoted(&e.body_text())))?;
    let not_found = || {
        ApiError::from(Error::new(
            ErrorCode::WebhookDeliveryNotFound,
            "no webhook delivery has this id",
        ))
    };
    if !tokenwarden::webhooks::outbox::is_delivery_id(&id) {
        return Err(not_found());
    }
    let store = app.warden().store();
    let now = app.warden().now();
    let view = store
        .retry_delivery(&id, now)
        .await
        .map_err(|e| store_failure("retrying failed", &e))?
        .ok_or_else(not_found)?;
    if view.status != DeliveryStatus::Pending {
        return Err(ApiError::from(Error::new(
            ErrorCode::WebhookDeliveryNotFailed,
            format!(
                "delivery {id} is {}: only a failed delivery can be sent again",
                view.status
            ),
        )));
    }
    app.webhooks().wake();
    Ok((StatusCode::ACCEPTED, Json(item(&view))))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/endpoints/{name}/test",
    tag = "webhooks",
    params(("name" = String, Path, description = "a configured endpoint's name")),
    responses(
        (status = 202, description = "a `webhook.test` event is queued for this endpoint",
            body = TestEventView),
        (status = 400, description = "INVALID_REQUEST: the name is not UTF-8", body = ErrorBody),
        (status = 404, description = "WEBHOOK_ENDPOINT_NOT_FOUND", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Sends a `webhook.test` event to one endpoint.
pub async fn test_endpoint(
    State(app): State<App>,
    name: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<TestEventView>), ApiError> {
    let Path(name) = name.map_err(|e| ApiError::invalid("name", redact_quoted(&e.body_text())))?;
    match app.webhooks().send_test(&name).await {
        Ok(Some(event_id)) => Ok((StatusCode::ACCEPTED, Json(TestEventView { event_id }))),
        Ok(None) => Err(ApiError::from(Error::new(
            ErrorCode::WebhookEndpointNotFound,
            "no webhook endpoint has this name",
        ))),
        Err(e) => Err(store_failure("queueing the test event failed", &e)),
    }
}

/// One event about a connection, as its webhook body says it. Never a token: bodies carry
/// none.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionEventView {
    /// `evt_…`: the `webhook-id` of its deliveries.
    pub id: String,
    /// `connection.created`, `connection.refresh_failing`, `connection.needs_reconnect`,
    /// `connection.recovered`, `connection.reconnected`, `connection.deleted`, or
    /// `connect_session.failed` (a reconnect session for this connection failed).
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339: when the change happened.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The body's `data`: `user_id`, `provider`, `account_id`, `status`, `version` and, while
    /// failing, `error` (`code`, `message`, `provider_error`); a session failure's
    /// `session_id` and `error`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A connection's recent events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionEventList {
    pub items: Vec<ConnectionEventView>,
    /// Whether this server records events now: only with webhook endpoints configured.
    /// While false, changes leave no event, and `items` holds only those recorded before.
    pub recording: bool,
}

/// The query of the events route. Only describes it for the document.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct EventParams {
    #[param(schema_with = events_limit_schema)]
    limit: Option<u32>,
}

fn events_limit_schema() -> utoipa::openapi::schema::Object {
    crate::api::list_limit_schema(DEFAULT_EVENTS_LIMIT, "how many of the newest events")
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/connections/{provider}/{account_id}/events",
    tag = "connections",
    params(ConnectionPath, EventParams),
    responses(
        (status = 200, description = "the connection's newest events (webhook events, kept \
            when webhook endpoints are configured), newest first", body = ConnectionEventList),
        (status = 400, description = "INVALID_REQUEST (a malformed id, or a malformed or \
            unknown parameter; the message and `details.field` name it) or UNKNOWN_PROVIDER",
            body = ErrorBody),
        (status = 404, description = "ACCOUNT_NOT_FOUND", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed (the detail is in \
            the server log)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// A connection's recent events (the webhook events it raised), newest first.
pub async fn connection_events(
    State(app): State<App>,
    path: ConnPath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ConnectionEventList>, ApiError> {
    let key = connection_key(&app, path)?;
    let Query(params) =
        query.map_err(|e| ApiError::invalid("query", redact_quoted(&e.body_text())))?;
    let limit = parse_events_query(params)?;
    // A connection that does not exist is a 404, even where events of a deleted one remain.
    app.warden().connection(&key).await?;
    let events = app
        .warden()
        .store()
        .recent_connection_events(&key, limit)
        .await
        .map_err(|e| store_failure("reading connection events failed", &e))?;
    let items = events
        .into_iter()
        .map(|event| {
            let mut body: serde_json::Value = serde_json::from_str(&event.body).map_err(|e| {
                tracing::error!(event_id = %event.id, error = %e, "a stored event is not JSON");
                ApiError::internal("a stored event could not be read")
            })?;
            // The body's own timestamp, as the webhook carried it (the row's is in ms).
            let timestamp = match body["timestamp"].take() {
                serde_json::Value::String(at) => at,
                _ => rfc3339(event.created_at),
            };
            Ok(ConnectionEventView {
                id: event.id,
                kind: event.kind.as_str().to_owned(),
                timestamp,
                data: body["data"].take(),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(ConnectionEventList {
        items,
        recording: app.webhooks().enabled(),
    }))
}

/// Validates the query of the events route: `limit` only.
pub fn parse_events_query(params: HashMap<String, String>) -> Result<u32, ApiError> {
    let mut limit = DEFAULT_EVENTS_LIMIT;
    for (name, value) in params {
        match name.as_str() {
            "limit" => limit = parse_limit(&value)?,
            other => return Err(unknown_parameter(other, "limit")),
        }
    }
    Ok(limit)
}

/// A database failure: logged once with its detail, answered as a 500 saying only `what`
/// ("listing deliveries failed").
fn store_failure(what: &str, error: &tokenwarden::store::StoreError) -> ApiError {
    tracing::error!(error = %error, "{what}");
    ApiError::internal(what)
}
