//! Authorization-server discovery: OpenID Connect Discovery 1.0 (`/.well-known/openid-
//! configuration`) and, when the issuer has none, RFC 8414 metadata (`/.well-known/oauth-
//! authorization-server`). Run once at start for a provider with an `issuer`; the endpoints
//! it finds fill what the configuration leaves out, and the rest of the metadata (PKCE
//! methods, `iss` in authorization responses, PAR, `jwks_uri`) is kept for the connect flow.
//!
//! The document is trusted only if it names the configured issuer exactly (OpenID Connect
//! Discovery §4.3, RFC 8414 §3.3): a server cannot claim another's identity. The issuer must
//! be `https`, or `http` on a loopback address (tests).

use std::net::IpAddr;

use reqwest::header::{ACCEPT, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use crate::provider::HttpClient;
use crate::provider::common::display_url;

/// What an authorization server says about itself. Only the fields tokenwarden uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerMetadata {
    /// The document's URL.
    pub document_url: String,
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub pushed_authorization_request_endpoint: Option<String>,
    pub require_pushed_authorization_requests: bool,
    pub authorization_response_iss_parameter_supported: bool,
    pub code_challenge_methods_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub scopes_supported: Vec<String>,
}

impl ServerMetadata {
    /// Whether the server supports PKCE with S256. RFC 8414 says a server that omits
    /// `code_challenge_methods_supported` may still support PKCE; this says "known to".
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    }
}

/// Discovery failed. Names the URL tried last (never with a query: there is none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("discovery failed at {url}: {problem}")]
pub struct DiscoveryError {
    pub url: String,
    pub problem: String,
}

/// The documents to try for `issuer`, in order: OpenID Connect's (path appended), then
/// RFC 8414's (well-known segment inserted before the path).
pub fn document_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut oauth = issuer.clone();
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    vec![oidc, oauth]
}

/// Checks a configured issuer: absolute, `https` (or `http` on loopback), no user info,
/// query or fragment.
pub fn parse_issuer(issuer: &str) -> Result<Url, String> {
    let url = Url::parse(issuer.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    match url.scheme() {
        "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err("must be https (http only on a loopback address)".to_owned()),
        _ => Err("must be an https URL".to_owned()),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Fetches and checks `issuer`'s metadata. A document that is missing (404) moves on to the
/// next well-known URL; anything else wrong (no answer, not JSON, another issuer, no token
/// endpoint, an endpoint that is not `https`) stops, naming the URL.
pub async fn discover(http: &HttpClient, issuer: &str) -> Result<ServerMetadata, DiscoveryError> {
    let issuer_url = parse_issuer(issuer).map_err(|problem| DiscoveryError {
        // Shown without user info, query or fragment: a refused issuer may carry a password.
        url: Url::parse(issuer.trim()).map_or_else(
            |_| "the configured issuer".to_owned(),
            |url| display_url(&url),
        ),
        problem,
    })?;
    let urls = document_urls(&issuer_url);
    let mut missing = Vec::new();
    for url in &urls {
        let shown = display_url(url);
        let fail = |problem: String| DiscoveryError {
            url: shown.clone(),
            problem,
        };
        let request = http
            .client()
            .get(url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        let raw = http
            .send(request)
            .await
            .map_err(|failure| fail(failure.to_string()))?;
        if raw.status == 404 {
            missing.push(shown);
            continue;
        }
        if raw.status != 200 {
            return Err(fail(format!("HTTP {}", raw.status)));
        }
        let document: Value = serde_json::from_slice(&raw.body)
            .map_err(|_| fail("the answer is not JSON".to_owned()))?;
        return parse_document(&issuer_url, &shown, &document).map_err(fail);
    }
    Err(DiscoveryError {
        url: missing.join(" and "),
        problem: "no metadata document (HTTP 404)".to_owned(),
    })
}

/// Checks one metadata document against the configured issuer.
pub fn parse_document(
    issuer: &Url,
    document_url: &str,
    document: &Value,
) -> Result<ServerMetadata, String> {
    let map = document
        .as_object()
        .ok_or_else(|| "the answer is not a JSON object".to_owned())?;
    let text = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` is not a string")),
        }
    };
    let list = |key: &str| -> Result<Vec<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("`{key}` has a value that is not a string"))
                })
                .collect(),
            Some(_) => Err(format!("`{key}` is not a list")),
        }
    };
    let flag = |key: &str| -> Result<bool, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("`{key}` is not a boolean")),
        }
    };

    let claimed = text("issuer")?.ok_or_else(|| "`issuer` is missing".to_owned())?;
    if claimed.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "the document names issuer {claimed:?}, not the configured {:?}",
            issuer.as_str()
        ));
    }
    let endpoint = |key: &str| -> Result<Option<String>, String> {
        let Some(value) = text(key)? else {
            return Ok(None);
        };
        let url = Url::parse(&value).map_err(|_| format!("`{key}` is not a URL"))?;
        let secure = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url));
        if !secure || url.host_str().is_none() {
            return Err(format!("`{key}` must be https"));
        }
        Ok(Some(value))
    };
    Ok(ServerMetadata {
        document_url: document_url.to_owned(),
        issuer: claimed,
        authorization_endpoint: endpoint("authorization_endpoint")?,
        token_endpoint: endpoint("token_endpoint")?
            .ok_or_else(|| "`token_endpoint` is missing".to_owned())?,
        revocation_endpoint: endpoint("revocation_endpoint")?,
        userinfo_endpoint: endpoint("userinfo_endpoint")?,
        jwks_uri: endpoint("jwks_uri")?,
        pushed_authorization_request_endpoint: endpoint("pushed_authorization_request_endpoint")?,
        require_pushed_authorization_requests: flag("require_pushed_authorization_requests")?,
        authorization_response_iss_parameter_supported: flag(
            "authorization_response_iss_parameter_supported",
        )?,
        code_challenge_methods_supported: list("code_challenge_methods_supported")?,
        token_endpoint_auth_methods_supported: list("token_endpoint_auth_methods_supported")?,
        grant_types_supported: list("grant_types_supported")?,
        scopes_supported: list("scopes_supported")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer() -> Url {
        Url::parse("https://id.example.com/tenant-1").expect("url")
    }

    #[test]
    fn well_known_urls_follow_both_specs() {
        let urls: Vec<String> = document_urls(&issuer())
            .iter()
            .map(Url::to_string)
            .collect();
        assert_eq!(
            urls,
            [
                "https://id.example.com/tenant-1/.well-known/openid-configuration",
                "https://id.example.com/.well-known/oauth-authorization-server/tenant-1",
            ]
        );
        let root = Url::parse("https://id.example.com/").expect("url");
        assert_eq!(
            document_urls(&root)[1].as_str(),
            "https://id.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn issuers_must_be_https_or_loopback() {
        assert!(parse_issuer("https://id.example.com").is_ok());
        assert!(parse_issuer("http://127.0.0.1:9000").is_ok());
        assert!(parse_issuer("http://localhost:9000/x").is_ok());
        for bad in [
            "http://id.example.com",
            "ftp://id.example.com",
            "https://u:p@id.example.com",
            "https://id.example.com?x=1",
            "not a url",
        ] {
            assert!(parse_issuer(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_refused_issuer_is_named_without_its_credentials() {
        let http = HttpClient::new(Default::default()).expect("client");
        let err = discover(&http, "https://user:pa55word@id.example.com/x?k=v")
            .await
            .expect_err("credentials refused");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("pa55word") && !shown.contains("k=v"),
            "{shown}"
        );
        assert!(shown.contains("https://id.example.com/x"), "{shown}");
    }

    #[test]
    fn a_document_is_read_and_checked() {
        let doc = json!({
            "issuer": "https://id.example.com/tenant-1",
            "authorization_endpoint": "https://id.example.com/tenant-1/auth",
            "token_endpoint": "https://id.example.com/tenant-1/token",
            "jwks_uri": "https://id.example.com/tenant-1/jwks",
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": true,
        });
        let meta = parse_document(&issuer(), "u", &doc).expect("valid");
        assert_eq!(meta.token_endpoint, "https://id.example.com/tenant-1/token");
        assert!(meta.supports_s256());
        assert!(meta.authorization_response_iss_parameter_supported);
        assert!(!meta.require_pushed_authorization_requests);

        let mut other = doc.clone();
        other["issuer"] = json!("https://evil.example.com/tenant-1");
        let err = parse_document(&issuer(), "u", &other).expect_err("mix-up");
        assert!(err.contains("evil.example.com"), "{err}");
        let mut no_token = doc.clone();
        no_token
            .as_object_mut()
            .expect("object")
            .remove("token_endpoint");
        assert!(parse_document(&issuer(), "u", &no_token).is_err());
        let mut plain = doc.clone();
        plain["token_endpoint"] = json!("http://id.example.com/token");
        assert!(parse_document(&issuer(), "u", &plain).is_err());
        let mut wrong_type = doc;
        wrong_type["code_challenge_methods_supported"] = json!("S256");
        assert!(parse_document(&issuer(), "u", &wrong_type).is_err());
    }
}
