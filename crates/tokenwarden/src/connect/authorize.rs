//! The authorization request (RFC 6749 §4.1.1): the URL the browser is sent to, with
//! `state`, the PKCE challenge (RFC 7636), the OpenID `nonce` and the provider's extra
//! parameters, or, where the provider's metadata requires it, the same parameters pushed
//! first (PAR, RFC 9126) and only `client_id` and `request_uri` in the URL.

use serde_json::Value;
use url::Url;

use crate::connect::secrets::s256_challenge;
use crate::provider::catalog::Pkce;
use crate::provider::common::send_recorded;
use crate::provider::oauth2::token_post;
use crate::provider::{HttpClient, ProviderSettings};

/// Parameters the flow sets itself; the provider's extras never replace them.
const OWN_PARAMS: [&str; 9] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "request_uri",
];

/// Whether the flow uses PKCE with this provider: always, unless the catalog says the
/// provider cannot (servers ignore parameters they do not know, RFC 6749 §3.1).
pub(crate) fn uses_pkce(settings: &ProviderSettings) -> bool {
    settings.pkce != Some(Pkce::Unsupported)
}

/// Whether the provider speaks OpenID Connect here (then it gets a `nonce`).
pub(crate) fn is_openid(scopes: &[String]) -> bool {
    scopes.iter().any(|s| s == "openid")
}

/// Where the provider wants pushed requests, when its metadata requires them.
pub(crate) fn par_endpoint(settings: &ProviderSettings) -> Option<Url> {
    let metadata = settings.metadata.as_ref()?;
    if !metadata.require_pushed_authorization_requests {
        return None;
    }
    Url::parse(metadata.pushed_authorization_request_endpoint.as_deref()?).ok()
}

/// The authorization request's parameters, in order.
pub(crate) fn parameters(
    settings: &ProviderSettings,
    redirect_uri: &str,
    scopes: &[String],
    state: &str,
    verifier: Option<&str>,
    nonce: Option<&str>,
) -> Vec<(String, String)> {
    let client_id = settings.client_id.clone().unwrap_or_default();
    let mut params = vec![
        ("response_type".to_owned(), "code".to_owned()),
        (settings.client_id_param.clone(), client_id),
        ("redirect_uri".to_owned(), redirect_uri.to_owned()),
    ];
    if !scopes.is_empty() {
        let separator = settings.scope_separator.to_string();
        params.push(("scope".to_owned(), scopes.join(&separator)));
    }
    params.push(("state".to_owned(), state.to_owned()));
    if let Some(verifier) = verifier {
        params.push(("code_challenge".to_owned(), s256_challenge(verifier)));
        params.push(("code_challenge_method".to_owned(), "S256".to_owned()));
    }
    if let Some(nonce) = nonce {
        params.push(("nonce".to_owned(), nonce.to_owned()));
    }
    for (key, value) in &settings.authorization_params {
        if !OWN_PARAMS.contains(&key.as_str()) && key != &settings.client_id_param {
            params.push((key.clone(), value.clone()));
        }
    }
    params
}

/// The URL with `params` appended to the authorization endpoint's own query.
pub(crate) fn url(authorization_url: &Url, params: &[(String, String)]) -> Url {
    let mut url = authorization_url.clone();
    url.query_pairs_mut().extend_pairs(params);
    url
}

/// Pushes `params` to the PAR endpoint (client authenticated as at the token endpoint) and
/// returns the authorization URL that refers to them. The error has no secret in it.
pub(crate) async fn pushed(
    settings: &ProviderSettings,
    http: &HttpClient,
    authorization_url: &Url,
    par_url: &Url,
    params: &[(String, String)],
) -> Result<Url, String> {
    // client_id travels as client authentication does, not twice.
    let body: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != &settings.client_id_param)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = token_post(settings, http, par_url, body);
    let raw = send_recorded(http, &settings.name, "par", request)
        .await
        .map_err(|e| format!("the pushed authorization request failed: {e}"))?;
    if !(200..300).contains(&raw.status) {
        return Err(format!(
            "the pushed authorization request was refused (HTTP {})",
            raw.status
        ));
    }
    let request_uri = serde_json::from_slice::<Value>(&raw.body)
        .ok()
        .and_then(|v| v.get("request_uri")?.as_str().map(str::to_owned))
        .ok_or_else(|| "the pushed authorization answer has no request_uri".to_owned())?;
    let client_id = settings.client_id.clone().unwrap_or_default();
    Ok(url(
        authorization_url,
        &[
            (settings.client_id_param.clone(), client_id),
            ("request_uri".to_owned(), request_uri),
        ],
    ))
}
