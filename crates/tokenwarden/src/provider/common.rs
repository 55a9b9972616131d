//! Plumbing shared by the adapters: configuration checks that name the key at fault, the one
//! recorded HTTP attempt (metrics and a secret-free log line), and the failure for a
//! connection that cannot be refreshed.

use reqwest::header::HeaderValue;
use url::Url;

use crate::connection::{Connection, ProviderName};
use crate::provider::http::RawResponse;
use crate::provider::{
    FailureKind, HttpClient, NotRefreshable, ProviderConfigError, RefreshFailure,
};
use crate::secret::{ClientSecret, RefreshToken};

/// Builds a configuration error for `providers.{name}.{key}`.
pub(crate) fn config_error(
    name: &ProviderName,
    key: &'static str,
    message: impl Into<String>,
) -> ProviderConfigError {
    ProviderConfigError {
        provider: name.to_string(),
        key,
        message: message.into(),
    }
}

/// Parses an endpoint URL: absolute, `http` or `https`, with a host. The value is not echoed
/// in the error, since a URL can carry credentials.
pub(crate) fn endpoint_url(
    name: &ProviderName,
    key: &'static str,
    value: &str,
) -> Result<Url, ProviderConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| config_error(name, key, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(name, key, "must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(name, key, "must name a host"));
    }
    // reqwest would turn user info into its own Basic header, and Debug would show it.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(name, key, "must not contain credentials"));
    }
    Ok(url)
}

/// A non-empty configured string, trimmed.
pub(crate) fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Checks that a configured `user_agent` can be sent as a header.
pub(crate) fn user_agent(
    name: &ProviderName,
    value: Option<&str>,
) -> Result<Option<HeaderValue>, ProviderConfigError> {
    non_empty(value)
        .map(|ua| {
            HeaderValue::from_str(&ua).map_err(|_| {
                config_error(
                    name,
                    "user_agent",
                    "must be printable ASCII without line breaks",
                )
            })
        })
        .transpose()
}

/// A URL as shown to operators: no user info, no query, no fragment.
pub(crate) fn display_url(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// The stored refresh token, if there is a usable one.
pub(crate) fn refresh_token_of(conn: &Connection) -> Option<&RefreshToken> {
    conn.tokens.refresh_token.as_ref().filter(|t| !t.is_empty())
}

/// The stored refresh token, for the adapters that refresh with one.
pub(crate) fn required_refresh_token(conn: &Connection) -> Result<&RefreshToken, NotRefreshable> {
    refresh_token_of(conn).ok_or(NotRefreshable::NoRefreshToken)
}

/// RFC 7009's `token` and `token_type_hint`: the refresh token (revoking the grant at most
/// servers), or the access token when there is none.
pub(crate) fn revocation_token(conn: &Connection) -> (&str, &'static str) {
    match refresh_token_of(conn) {
        Some(rt) => (rt.expose_secret(), "refresh_token"),
        None => (conn.tokens.access_token.expose_secret(), "access_token"),
    }
}

/// Every secret a request about `conn` may carry, for scrubbing provider answers: its tokens
/// and the client secret.
pub(crate) fn connection_secrets<'a>(
    conn: &'a Connection,
    client_secret: Option<&'a ClientSecret>,
) -> Vec<&'a str> {
    let mut secrets = vec![conn.tokens.access_token.expose_secret()];
    secrets.extend(
        conn.tokens
            .refresh_token
            .as_ref()
            .map(RefreshToken::expose_secret),
    );
    secrets.extend(client_secret.map(ClientSecret::expose_secret));
    secrets
}

/// Sends one request, records `upstream_requests_total{provider,status}` once, and logs the
/// outcome without the URL (Instagram's carries the token) or the body.
pub(crate) async fn send_recorded(
    http: &HttpClient,
    provider: &ProviderName,
    operation: &'static str,
    request: reqwest::RequestBuilder,
) -> Result<RawResponse, RefreshFailure> {
    let started = std::time::Instant::now();
    let result = http.send(request).await;
    let label = match &result {
        Ok(raw) => raw.status.to_string(),
        Err(RefreshFailure {
            kind: FailureKind::Transport { timeout: true, .. },
            ..
        }) => "timeout".to_owned(),
        Err(RefreshFailure {
            kind: FailureKind::Unparseable { status, .. },
            ..
        }) => status.to_string(),
        Err(_) => "error".to_owned(),
    };
    crate::metrics::upstream_request(provider.as_str(), &label);
    tracing::debug!(
        provider = provider.as_str(),
        operation,
        status = label.as_str(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token endpoint answered"
    );
    result
}
