//! The provider catalog: what tokenwarden knows about real providers, as data.
//!
//! Each provider is one reviewed TOML file in `crates/tokenwarden/catalog/` (its schema is
//! that directory's README), compiled into the binary by `build.rs`, so a catalog provider
//! needs no network at start. [`entries`] parses them once; [`CatalogEntry::check`] holds the
//! rules every entry must follow (required keys, URL shapes, a `docs` link for every fact),
//! which the catalog test applies to each file.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::FailureClass;
use crate::provider::AuthMethod;

/// `(id, TOML text)` of every catalog file, sorted by id.
const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/catalog.rs"));

/// Which engine refreshes a catalog provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The generic RFC 6749 engine, quirks as data.
    #[default]
    Oauth2,
    /// Instagram's own refresh (no refresh token, `ig_refresh_token`).
    Instagram,
}

/// PKCE (RFC 7636) support at the authorization server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pkce {
    Required,
    Supported,
    Unsupported,
}

/// How token requests encode their parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// A JSON object (Atlassian, Notion).
    Json,
}

/// How a token answer gives `expires_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiresIn {
    Number,
    String,
    /// Never sent: the token's lifetime is unknown to the client.
    Absent,
}

/// Which token a revocation request sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeToken {
    /// The refresh token when there is one (ends the grant at most servers), with RFC 7009's
    /// `token_type_hint`.
    #[default]
    RefreshToken,
    /// The access token alone, without a hint (TikTok).
    AccessToken,
}

/// A provider's own `error` values, classified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorVocabulary {
    /// The user must reconnect.
    #[serde(default)]
    pub permanent: Vec<String>,
    /// An operator problem (credentials, app settings).
    #[serde(default)]
    pub configuration: Vec<String>,
    /// Retry later.
    #[serde(default)]
    pub transient: Vec<String>,
}

impl ErrorVocabulary {
    /// Every value with its class.
    pub fn classes(&self) -> impl Iterator<Item = (&str, FailureClass)> {
        self.permanent
            .iter()
            .map(|e| (e.as_str(), FailureClass::Permanent))
            .chain(
                self.configuration
                    .iter()
                    .map(|e| (e.as_str(), FailureClass::Configuration)),
            )
            .chain(
                self.transient
                    .iter()
                    .map(|e| (e.as_str(), FailureClass::Transient)),
            )
    }
}

/// One catalog provider, as its file says. Field meanings: the catalog README.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    #[serde(default)]
    pub kind: Engine,
    pub authorization_url: String,
    pub token_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base_url: Option<String>,
    /// The query parameter the API takes the access token in, when not the
    /// `Authorization: Bearer` header (Instagram Graph: `access_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub url_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<AuthMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_optional: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_request: Option<BodyFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkce: Option<Pkce>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_separator: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorization_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub token_params: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_lifetime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<ExpiresIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_rotates: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_lifetime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_idle_expiry: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_with_http_200: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_reset_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_token: Option<RevokeToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorVocabulary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// The source of each fact, keyed by the fact's key.
    pub docs: BTreeMap<String, String>,
}

/// A catalog entry that breaks the catalog's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("catalog/{id}.toml: {key}: {problem}")]
pub struct CatalogError {
    pub id: String,
    pub key: String,
    pub problem: String,
}

/// Every catalog entry, sorted by id. Parsed once.
///
/// # Panics
/// If a compiled-in file does not parse, which the catalog test rules out before release.
pub fn entries() -> &'static [(&'static str, CatalogEntry)] {
    static PARSED: OnceLock<Vec<(&'static str, CatalogEntry)>> = OnceLock::new();
    PARSED.get_or_init(|| {
        FILES
            .iter()
            .map(|&(id, text)| match parse(id, text) {
                Ok(entry) => (id, entry),
                Err(e) => panic!("{e}"),
            })
            .collect()
    })
}

/// The catalog entry `id`, if there is one.
pub fn get(id: &str) -> Option<&'static CatalogEntry> {
    entries()
        .binary_search_by(|(candidate, _)| (*candidate).cmp(id))
        .ok()
        .map(|i| &entries()[i].1)
}

/// The ids of every entry, for error messages.
pub fn ids() -> impl Iterator<Item = &'static str> {
    entries().iter().map(|(id, _)| *id)
}

/// Every compiled-in file, unparsed, for the catalog test.
pub fn files() -> &'static [(&'static str, &'static str)] {
    FILES
}

/// Parses and checks one catalog file.
pub fn parse(id: &str, text: &str) -> Result<CatalogEntry, CatalogError> {
    let error = |key: &str, problem: String| CatalogError {
        id: id.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let entry: CatalogEntry = toml::from_str(text).map_err(|e| {
        error(
            "(file)",
            e.to_string().lines().next().unwrap_or("").to_owned(),
        )
    })?;
    entry
        .check()
        .map_err(|(key, problem): (String, String)| error(key.as_str(), problem))?;
    Ok(entry)
}

impl CatalogEntry {
    /// The catalog's rules: a name; URLs that are absolute `https` (with `{placeholder}`s
    /// declared in `url_params`); a one-character scope separator; `account_id` in one of its
    /// three forms; and a `docs` link (an `https` URL) for every fact set, and for nothing
    /// else. Returns the key at fault and the problem.
    pub fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, problem: &str| Err((key.to_owned(), problem.to_owned()));
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty");
        }
        for (key, url) in self.urls() {
            if let Err(problem) = self.check_url(url) {
                return Err((key.to_owned(), problem));
            }
        }
        if let Some(sep) = &self.scope_separator
            && sep.chars().count() != 1
        {
            return bad("scope_separator", "must be exactly one character");
        }
        if let Some(source) = &self.account_id
            && AccountIdSource::parse(source).is_none()
        {
            return bad(
                "account_id",
                "must be `id_token:<claim>`, `token:<path>` or `userinfo:<path>`",
            );
        }
        if self
            .account_id
            .as_deref()
            .is_some_and(|s| s.starts_with("userinfo:"))
            && self.userinfo_url.is_none()
        {
            return bad("account_id", "`userinfo:` needs `userinfo_url`");
        }
        if let Some(header) = &self.rate_limit_reset_header
            && reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err()
        {
            return bad("rate_limit_reset_header", "not a header name");
        }
        if let Some(param) = &self.client_id_param
            && param.trim().is_empty()
        {
            return bad("client_id_param", "must not be empty");
        }
        if let Some(param) = &self.api_token_param {
            if self.api_base_url.is_none() {
                return bad("api_token_param", "needs `api_base_url`");
            }
            if !is_query_name(param) {
                return bad(
                    "api_token_param",
                    "must be a query parameter name (letters, digits, '_', '-', '.')",
                );
            }
        }
        let facts = self.fact_keys();
        for key in &facts {
            match self.docs.get(*key) {
                None => return Err(((*key).to_owned(), "has no `docs` link".to_owned())),
                Some(link) => {
                    let ok = Url::parse(link)
                        .is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some());
                    if !ok {
                        return Err((format!("docs.{key}"), "must be an https URL".to_owned()));
                    }
                }
            }
        }
        if let Some(extra) = self.docs.keys().find(|k| !facts.contains(&k.as_str())) {
            return Err((
                format!("docs.{extra}"),
                "documents a key that is not set".to_owned(),
            ));
        }
        Ok(())
    }

    /// The entry's endpoint URLs, by key.
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        let mut urls = vec![
            ("authorization_url", self.authorization_url.as_str()),
            ("token_url", self.token_url.as_str()),
        ];
        let optional = [
            ("refresh_url", &self.refresh_url),
            ("revoke_url", &self.revoke_url),
            ("userinfo_url", &self.userinfo_url),
            ("api_base_url", &self.api_base_url),
            ("issuer", &self.issuer),
        ];
        urls.extend(
            optional
                .into_iter()
                .filter_map(|(key, url)| url.as_deref().map(|u| (key, u))),
        );
        urls
    }

    fn check_url(&self, template: &str) -> Result<(), String> {
        let filled = fill_placeholders(template, |name| {
            self.url_params
                .contains_key(name)
                .then_some("placeholder-value")
        })
        .map_err(|name| format!("uses {{{name}}}, which `url_params` does not declare"))?;
        let url = Url::parse(&filled).map_err(|e| format!("not a URL ({e})"))?;
        if url.scheme() != "https" {
            return Err("must be https".to_owned());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host".to_owned());
        }
        Ok(())
    }

    /// The keys this entry sets that are facts (everything but `name`, `kind`, `notes` and
    /// `docs`).
    pub fn fact_keys(&self) -> Vec<&'static str> {
        let mut keys = vec!["authorization_url", "token_url"];
        let set = [
            ("refresh_url", self.refresh_url.is_some()),
            ("revoke_url", self.revoke_url.is_some()),
            ("userinfo_url", self.userinfo_url.is_some()),
            ("api_base_url", self.api_base_url.is_some()),
            ("api_token_param", self.api_token_param.is_some()),
            ("issuer", self.issuer.is_some()),
            ("url_params", !self.url_params.is_empty()),
            ("auth_method", self.auth_method.is_some()),
            (
                "client_secret_optional",
                self.client_secret_optional.is_some(),
            ),
            ("token_request", self.token_request.is_some()),
            ("client_id_param", self.client_id_param.is_some()),
            ("pkce", self.pkce.is_some()),
            ("scopes", !self.scopes.is_empty()),
            ("scope_separator", self.scope_separator.is_some()),
            (
                "authorization_params",
                !self.authorization_params.is_empty(),
            ),
            ("token_params", !self.token_params.is_empty()),
            ("account_id", self.account_id.is_some()),
            ("user_agent_required", self.user_agent_required.is_some()),
            (
                "access_token_lifetime",
                self.access_token_lifetime.is_some(),
            ),
            ("expires_in", self.expires_in.is_some()),
            ("refresh_token", self.refresh_token.is_some()),
            (
                "refresh_token_rotates",
                self.refresh_token_rotates.is_some(),
            ),
            (
                "refresh_token_lifetime",
                self.refresh_token_lifetime.is_some(),
            ),
            (
                "refresh_token_idle_expiry",
                self.refresh_token_idle_expiry.is_some(),
            ),
            ("token_path", self.token_path.is_some()),
            ("errors_with_http_200", self.errors_with_http_200.is_some()),
            (
                "rate_limit_reset_header",
                self.rate_limit_reset_header.is_some(),
            ),
            ("revoke_token", self.revoke_token.is_some()),
            ("errors", self.errors.is_some()),
            ("client_credentials", self.client_credentials.is_some()),
        ];
        keys.extend(set.into_iter().filter(|(_, on)| *on).map(|(k, _)| k));
        keys
    }
}

/// A query parameter name that needs no encoding: letters, digits, `_`, `-`, `.`.
pub(crate) fn is_query_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// Where a connection's account id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountIdSource {
    /// A claim of the OpenID Connect ID token (`sub`).
    IdTokenClaim(String),
    /// A field of the token answer, as a dotted path (`authed_user.id`).
    TokenField(String),
    /// A field of the user-info answer, as a dotted path.
    UserInfoField(String),
}

impl AccountIdSource {
    /// Parses `id_token:<claim>`, `token:<path>` or `userinfo:<path>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, path) = text.split_once(':')?;
        let path = path.trim();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return None;
        }
        let path = path.to_owned();
        match kind.trim() {
            "id_token" => Some(Self::IdTokenClaim(path)),
            "token" => Some(Self::TokenField(path)),
            "userinfo" => Some(Self::UserInfoField(path)),
            _ => None,
        }
    }
}

/// Replaces every `{name}` in `template` with `value(name)`; `Err(name)` for the first
/// placeholder without a value. Braces never occur in a real URL unescaped, so any `{` opens
/// a placeholder.
pub fn fill_placeholders<'a>(
    template: &str,
    value: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(after.to_owned());
        };
        let name = &after[..close];
        out.push_str(value(name).ok_or_else(|| name.to_owned())?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "Example"
authorization_url = "https://{host}/authorize"
token_url = "https://{host}/token"
url_params = { host = "" }
[docs]
authorization_url = "https://docs.example.com/a"
token_url = "https://docs.example.com/t"
url_params = "https://docs.example.com/hosts"
"#;

    #[test]
    fn a_minimal_entry_passes() {
        let entry = parse("example", MINIMAL).expect("valid");
        assert_eq!(
            entry.fact_keys(),
            ["authorization_url", "token_url", "url_params"]
        );
    }

    #[test]
    fn each_rule_is_enforced() {
        let cases = [
            // A fact without a source.
            (
                MINIMAL.replace("token_url = \"https://docs.example.com/t\"\n", ""),
                "token_url",
            ),
            // A source for a fact that is not set.
            (
                format!("{MINIMAL}pkce = \"https://docs.example.com/p\"\n"),
                "docs.pkce",
            ),
            // Not https.
            (
                MINIMAL.replace("https://{host}/token", "http://{host}/token"),
                "token_url",
            ),
            (
                MINIMAL.replace("https://docs.example.com/t", "docs.example.com/t"),
                "docs.token_url",
            ),
            // An undeclared placeholder.
            (
                MINIMAL.replace("{host}/token", "{tenant}/token"),
                "token_url",
            ),
            // Unknown keys are refused.
            (format!("colour = \"red\"\n{MINIMAL}"), "(file)"),
        ];
        for (text, key) in cases {
            let err = parse("example", &text).expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
        let bad_source = MINIMAL.replace(
            "[docs]",
            "account_id = \"cookie:sub\"\n[docs]\naccount_id = \"https://d.example.com\"",
        );
        assert_eq!(
            parse("example", &bad_source).expect_err("source").key,
            "account_id"
        );
    }

    #[test]
    fn placeholders_are_filled() {
        let filled = fill_placeholders("https://{a}.x.com/{b}/t", |n| match n {
            "a" => Some("one"),
            "b" => Some("two"),
            _ => None,
        });
        assert_eq!(filled.as_deref(), Ok("https://one.x.com/two/t"));
        assert_eq!(
            fill_placeholders("https://{a}.x.com", |_| None),
            Err("a".to_owned())
        );
    }

    #[test]
    fn account_id_sources() {
        assert_eq!(
            AccountIdSource::parse("token:authed_user.id"),
            Some(AccountIdSource::TokenField("authed_user.id".into()))
        );
        for bad in ["sub", "token:", "token:a..b", "header:x"] {
            assert_eq!(AccountIdSource::parse(bad), None, "{bad}");
        }
    }
}
