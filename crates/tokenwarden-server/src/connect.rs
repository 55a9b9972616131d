//! The connect flow's HTTP face: `POST /v1/connect/sessions` and
//! `GET /v1/connect/sessions/{id}` for the application (API key), and `GET /connect/{token}`
//! and `GET /connect/callback` for the user's browser (no key: the link's token, the
//! `state` and the flow cookie are the credentials). The flow itself is the library's
//! `tokenwarden::connect`; this module turns its answers into redirects, cookies and small
//! pages.
//!
//! Every browser answer is `Cache-Control: no-store` and `Referrer-Policy: no-referrer`
//! (the provider must not see the link's token in a `Referer`, nor a page the callback
//! URL's code), and pages load nothing from anywhere.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokenwarden::connect::{
    BrowserAnswer, CallbackParams, ConnectSession, NewSession, PublicStatus,
};
use tokenwarden::{AccountId, Error, ErrorCode, ProviderName, UserId};
use utoipa::ToSchema;

use crate::api::{Body, json_object_from_bytes, read_body};
use crate::app::App;
use crate::config::redact_quoted;
use crate::error::{ApiError, ErrorBody, status_for};
use crate::views::{ConnectionView, rfc3339};

/// `POST /v1/connect/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionBody {
    /// The application's user.
    pub user_id: String,
    /// A configured provider with the authorization-code grant.
    pub provider: String,
    /// Where the browser goes at the end: one of `[connect] return_urls`, with any query.
    pub return_url: String,
    /// The account to connect or, when it names an existing connection, to reconnect.
    /// Needed when the provider does not say which account signed in.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Scopes to ask for instead of the provider's configured ones.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// A new session and its single-use link.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedSessionView {
    pub id: String,
    /// `{public_url}/connect/{token}`: send the user's browser here. Single use; a secret.
    pub connect_url: String,
    /// RFC 3339.
    pub expires_at: String,
    /// True when `account_id` names an existing connection.
    pub reconnect: bool,
}

/// Why a session failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionErrorView {
    pub code: String,
    pub message: String,
}

/// A connect session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectSessionView {
    pub id: String,
    pub user_id: String,
    pub provider: String,
    /// The account named at creation, else (once completed) the one that signed in.
    pub account_id: Option<String>,
    /// `pending`, `completed`, `failed` or `expired`.
    #[schema(schema_with = session_status_schema)]
    pub status: String,
    pub reconnect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<SessionErrorView>,
    /// The connection, once completed (and while it exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionView>,
    pub created_at: String,
    pub expires_at: String,
}

fn session_status_schema() -> utoipa::openapi::schema::Object {
    crate::views::string_enum(
        [
            PublicStatus::Pending,
            PublicStatus::Completed,
            PublicStatus::Failed,
            PublicStatus::Expired,
        ]
        .map(PublicStatus::as_str),
        "`pending` until the user finishes, then `completed` or `failed`; `expired` when the \
         session ran out first",
    )
}

#[utoipa::path(
    post,
    path = "/v1/connect/sessions",
    tag = "connect",
    request_body(content = CreateSessionBody, description = "who connects which provider, and \
        where the browser returns"),
    responses(
        (status = 201, description = "created: send the user's browser to `connect_url`",
            body = CreatedSessionView),
        (status = 400, description = "INVALID_REQUEST (the message and `details.field` name \
            the field: a return URL not in `[connect] return_urls`, a provider without the \
            authorization-code grant, a missing `account_id` where the provider does not say \
            which account signed in) or UNKNOWN_PROVIDER", body = ErrorBody),
        (status = 413, description = "INVALID_REQUEST: the body is larger than \
            `server.max_body_bytes`", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// Creates a connect session (a reconnect when `account_id` names an existing connection).
pub async fn create_session(
    State(app): State<App>,
    body: Body,
) -> Result<(StatusCode, Json<CreatedSessionView>), ApiError> {
    let bytes = read_body(&app, body)?;
    let body: CreateSessionBody = json_object_from_bytes(&bytes)?;
    let user_id =
        UserId::parse(body.user_id).map_err(|e| ApiError::invalid_message(e.to_string()))?;
    let account_id = body
        .account_id
        .map(AccountId::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_message(e.to_string()))?;
    let provider = ProviderName::parse(body.provider.as_str())
        .ok()
        .filter(|name| app.warden().provider(name).is_some())
        .ok_or_else(|| ApiError::unknown_provider(&body.provider))?;
    let created = app
        .connector()
        .create_session(NewSession {
            user_id,
            provider,
            account_id,
            return_url: body.return_url,
            scopes: body.scopes,
        })
        .await
        .map_err(field_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedSessionView {
            id: created.session.id.clone(),
            connect_url: created.connect_url,
            expires_at: rfc3339(created.session.expires_at),
            reconnect: created.session.reconnect,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/connect/sessions/{id}",
    tag = "connect",
    params(("id" = String, Path, description = "the session's id (`cs_…`)")),
    responses(
        (status = 200, description = "the session", body = ConnectSessionView),
        (status = 400, description = "INVALID_REQUEST: the id is not UTF-8", body = ErrorBody),
        (status = 404, description = "CONNECT_SESSION_NOT_FOUND", body = ErrorBody),
        (status = 500, description = "GET_TOKEN_ERROR: the database failed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
/// A connect session: its status, why it failed, and the connection once completed.
pub async fn get_session(
    State(app): State<App>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ConnectSessionView>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid("id", redact_quoted(&e.body_text())))?;
    let connector = app.connector();
    let session = connector.session(&id).await?;
    let status = session.public_status(connector.now());
    let connection = match (&session.connected_account_id, status) {
        (Some(account), PublicStatus::Completed) => {
            let key = tokenwarden::ConnectionKey::new(
                session.user_id.clone(),
                session.provider.clone(),
                account.clone(),
            );
            app.warden()
                .connection(&key)
                .await
                .ok()
                .map(|meta| ConnectionView::from(&meta))
        }
        _ => None,
    };
    Ok(Json(session_view(&session, status, connection)))
}

fn session_view(
    session: &ConnectSession,
    status: PublicStatus,
    connection: Option<ConnectionView>,
) -> ConnectSessionView {
    let error = match (&session.error, status) {
        (Some(e), _) => Some(SessionErrorView {
            code: e.code.clone(),
            message: e.message.clone(),
        }),
        (None, PublicStatus::Expired) => Some(SessionErrorView {
            code: ErrorCode::ConnectSessionExpired.as_str().to_owned(),
            message: "the connect session expired before the user finished".to_owned(),
        }),
        _ => None,
    };
    ConnectSessionView {
        id: session.id.clone(),
        user_id: session.user_id.to_string(),
        provider: session.provider.to_string(),
        account_id: session
            .account_id
            .as_ref()
            .or(session.connected_account_id.as_ref())
            .map(ToString::to_string),
        status: status.as_str().to_owned(),
        reconnect: session.reconnect,
        error,
        connection,
        created_at: rfc3339(session.created_at),
        expires_at: rfc3339(session.expires_at),
    }
}

/// `GET /connect/{token}`: a browser opens a connect link.
pub async fn open_link(State(app): State<App>, Path(token): Path<String>) -> Response {
    let answer = app.connector().open(&token).await;
    browser_response(&app, answer)
}

/// `GET /connect/callback`: the provider sends the browser back.
pub async fn callback(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut params = CallbackParams::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match key.as_ref() {
            "state" => &mut params.state,
            "code" => &mut params.code,
            "error" => &mut params.error,
            "iss" => &mut params.iss,
            _ => continue,
        };
        // A repeated parameter is ambiguous (RFC 6749 §3.1): treat the answer as forged.
        if slot.is_some() {
            return browser_response(
                &app,
                BrowserAnswer::Page(Error::new(
                    ErrorCode::ConnectStateInvalid,
                    "The sign-in answer repeats a parameter. Start again from the application.",
                )),
            );
        }
        *slot = Some(value.into_owned());
    }
    let cookie = params
        .state
        .as_deref()
        .map(tokenwarden::connect::cookie_name)
        .and_then(|name| cookie_value(&headers, &name));
    let answer = app.connector().callback(params, cookie.as_deref()).await;
    browser_response(&app, answer)
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

fn browser_response(app: &App, answer: BrowserAnswer) -> Response {
    let cookie_path = cookie_path(app);
    let mut response = match answer {
        BrowserAnswer::ToProvider { location, cookie } => {
            let mut set = format!(
                "{}={}; Path={cookie_path}; Max-Age={}; HttpOnly; SameSite=Lax",
                cookie.name,
                cookie.value,
                cookie.max_age.as_secs()
            );
            if cookie.secure {
                set.push_str("; Secure");
            }
            let mut response = redirect(location.as_str());
            if let Ok(value) = HeaderValue::from_str(&set) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        BrowserAnswer::ToApp {
            location,
            clear_cookie,
            ..
        } => {
            let mut response = redirect(location.as_str());
            if let Some(name) = clear_cookie {
                let clear =
                    format!("{name}=; Path={cookie_path}; Max-Age=0; HttpOnly; SameSite=Lax");
                if let Ok(value) = HeaderValue::from_str(&clear) {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                }
            }
            response
        }
        BrowserAnswer::Page(error) => page(&error),
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The flow cookie's path: the connect routes under the public URL's path.
fn cookie_path(app: &App) -> String {
    let base = app
        .connector()
        .config()
        .public_url
        .path()
        .trim_end_matches('/')
        .to_owned();
    format!("{base}/connect")
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::FOUND, [(header::LOCATION, value)]).into_response(),
        Err(_) => page(&Error::new(
            ErrorCode::GetTokenError,
            "tokenwarden could not build the redirect.",
        )),
    }
}

/// A small page saying what happened: the code and a message written by us (never a
/// token, code, state or verifier), with the code's HTTP status.
fn page(error: &Error) -> Response {
    let status = status_for(error);
    if status.is_server_error() {
        let detail = std::error::Error::source(error).map(ToString::to_string);
        tracing::error!(code = error.code().as_str(), error = %error, detail = ?detail,
            "connect page shows a failure");
    }
    let code = error.code().as_str();
    let message = html_escape(error.message());
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Connection not completed</title></head>\n<body>\
         <h1>Connection not completed</h1>\n<p>{message}</p>\n\
         <p>Error code: <code>{code}</code></p>\n</body></html>\n"
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    response
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A library error as the API answers it; an INVALID_REQUEST whose message starts with a
/// field name (`return_url: …`) also names it in `details.field`.
fn field_error(error: Error) -> ApiError {
    if error.code() == ErrorCode::InvalidRequest
        && let Some((field, message)) = error.message().split_once(": ")
        && field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return ApiError::invalid(field, message);
    }
    ApiError::from(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tw_connect_abc=xyz; tw_connect_abcd=no"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("other=2"));
        assert_eq!(
            cookie_value(&headers, "tw_connect_abc").as_deref(),
            Some("xyz")
        );
        assert_eq!(cookie_value(&headers, "other").as_deref(), Some("2"));
        assert_eq!(cookie_value(&headers, "tw_connect_ab"), None);
    }

    #[test]
    fn pages_escape_messages() {
        assert_eq!(html_escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
