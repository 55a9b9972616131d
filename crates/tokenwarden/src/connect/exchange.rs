//! The callback's calls to the provider: the code exchange (RFC 6749 §4.1.3, with the PKCE
//! verifier), Instagram's short-to-long token exchange, and the user-info request that some
//! providers need to say which account connected (Reddit's `/api/v1/me`).

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Map, Value};
use url::Url;

use crate::provider::common::send_recorded;
use crate::provider::oauth2::{provider_get, token_post};
use crate::provider::response::parse_token_response;
use crate::provider::{HttpClient, ProviderSettings, RefreshFailure, TokenResponse};
use crate::secret::ClientSecret;

/// What the token endpoint gave for a code.
pub(crate) struct Granted {
    pub tokens: TokenResponse,
    /// The answer's token object (for `token:` account ids); holds secrets, never printed.
    pub fields: Map<String, Value>,
    pub id_token: Option<String>,
}

/// Exchanges `code` at the token endpoint. The failure never carries the code, the
/// verifier or the client secret.
pub(crate) async fn exchange_code(
    settings: &ProviderSettings,
    http: &HttpClient,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> Result<Granted, RefreshFailure> {
    let mut params = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(verifier) = verifier {
        params.push(("code_verifier", verifier));
    }
    params.extend(
        settings
            .token_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let request = token_post(settings, http, &settings.token_url, params);
    let raw = send_recorded(http, &settings.name, "code_exchange", request).await?;
    let mut secrets = vec![code];
    secrets.extend(verifier);
    secrets.extend(
        settings
            .client_secret
            .as_ref()
            .map(ClientSecret::expose_secret),
    );
    let body = unwrap_data_array(&raw.body);
    let tokens = parse_token_response(
        &settings.dialect,
        raw.status,
        &raw.headers,
        &body,
        http.now(),
        &secrets,
    )?;
    let fields = token_object(&body);
    let id_token = fields
        .get("id_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok(Granted {
        tokens,
        fields,
        id_token,
    })
}

/// Instagram: trades the code's 1-hour token for the 60-day one
/// (`GET exchange_url?grant_type=ig_exchange_token&client_secret=…&access_token=…`).
pub(crate) async fn instagram_long_lived(
    settings: &ProviderSettings,
    http: &HttpClient,
    short: &str,
) -> Result<TokenResponse, RefreshFailure> {
    let Some(exchange_url) = &settings.exchange_url else {
        return Err(RefreshFailure::unparseable(0, "no exchange_url configured"));
    };
    let secret = settings
        .client_secret
        .as_ref()
        .map(ClientSecret::expose_secret)
        .unwrap_or_default();
    let mut url = exchange_url.clone();
    url.query_pairs_mut()
        .append_pair("grant_type", "ig_exchange_token")
        .append_pair("client_secret", secret)
        .append_pair("access_token", short);
    let request = provider_get(settings, http, url);
    let raw = send_recorded(http, &settings.name, "exchange", request).await?;
    parse_token_response(
        &settings.dialect,
        raw.status,
        &raw.headers,
        &raw.body,
        http.now(),
        &[short, secret],
    )
}

/// GETs the user-info endpoint with the new access token and returns its JSON object.
pub(crate) async fn userinfo(
    settings: &ProviderSettings,
    http: &HttpClient,
    url: &Url,
    access_token: &str,
) -> Result<Map<String, Value>, String> {
    let bearer = HeaderValue::from_str(&format!("Bearer {access_token}"))
        .map_err(|_| "the access token cannot travel in a header".to_owned())?;
    let request = provider_get(settings, http, url.clone()).header(AUTHORIZATION, bearer);
    let raw = send_recorded(http, &settings.name, "userinfo", request)
        .await
        .map_err(|e| format!("the user-info request failed: {e}"))?;
    if !(200..300).contains(&raw.status) {
        return Err(format!(
            "the user-info endpoint answered HTTP {}",
            raw.status
        ));
    }
    match serde_json::from_slice(&raw.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err("the user-info answer is not a JSON object".to_owned()),
    }
}

/// The value at a dotted `path` of `map` as an account id (a string or a number).
pub(crate) fn lookup(map: &Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut at = map.get(parts.next()?)?;
    for part in parts {
        at = match at {
            Value::Object(inner) => inner.get(part)?,
            // `data.0.id`: an index into an array (TikTok's and Meta's `data` lists).
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match at {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Instagram's code exchange may answer `{"data": [{access_token, user_id, permissions}]}`;
/// the token parser wants the object itself. Other answers pass unchanged.
fn unwrap_data_array(body: &[u8]) -> Vec<u8> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && !map.contains_key("access_token")
        && let Some(Value::Array(items)) = map.get("data")
        && let Some(first @ Value::Object(_)) = items.first()
    {
        return serde_json::to_vec(first).unwrap_or_else(|_| body.to_vec());
    }
    body.to_vec()
}

/// The answer as a JSON object (for `token:` account ids such as TikTok's `open_id`).
fn token_object(body: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_walks_objects_and_arrays() {
        let v = json!({"open_id": "abc", "n": 42, "data": [{"id": "x"}], "a": {"b": "c"}, "e": ""});
        let map = v.as_object().expect("object");
        assert_eq!(lookup(map, "open_id").as_deref(), Some("abc"));
        assert_eq!(lookup(map, "n").as_deref(), Some("42"));
        assert_eq!(lookup(map, "data.0.id").as_deref(), Some("x"));
        assert_eq!(lookup(map, "a.b").as_deref(), Some("c"));
        assert_eq!(lookup(map, "e"), None);
        assert_eq!(lookup(map, "missing"), None);
        assert_eq!(lookup(map, "a.b.c"), None);
    }

    #[test]
    fn instagram_data_arrays_are_unwrapped() {
        let body = br#"{"data":[{"access_token":"IG","user_id":"17","permissions":"x"}]}"#;
        let out: Value = serde_json::from_slice(&unwrap_data_array(body)).expect("json");
        assert_eq!(out["access_token"], "IG");
        let plain = br#"{"access_token":"a","data":[]}"#;
        assert_eq!(unwrap_data_array(plain), plain.to_vec());
    }
}
