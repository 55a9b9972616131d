//! One provider's settings, resolved: the configuration, over the discovered metadata, over
//! the catalog entry, over the engine's defaults. Every check that can be made without
//! network happens here, and every error names the `providers.NAME.<key>` at fault.

use std::collections::BTreeMap;

use reqwest::header::HeaderValue;
use url::Url;

use crate::connection::ProviderName;
use crate::error::FailureClass;
use crate::provider::catalog::{
    self, AccountIdSource, BodyFormat, CatalogEntry, Engine, Pkce, RevokeToken,
};
use crate::provider::common::{config_error, endpoint_url, non_empty, user_agent};
use crate::provider::discovery::{ServerMetadata, parse_issuer};
use crate::provider::instagram;
use crate::provider::response::Dialect;
use crate::provider::{
    AuthMethod, Grant, ProviderConfig, ProviderConfigError, ProviderKind, ProviderSource,
};
use crate::secret::ClientSecret;

/// Everything an engine needs to talk to one provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub name: ProviderName,
    /// The kind as configured (`tiktok` stays `tiktok`), for display.
    pub kind: ProviderKind,
    pub engine: Engine,
    pub source: ProviderSource,
    pub catalog: Option<&'static str>,
    pub display_name: Option<String>,
    pub grant: Grant,
    pub authorization_url: Option<Url>,
    pub token_url: Url,
    /// Where refreshes go when not to `token_url` (Figma; Instagram's `ig_refresh_token`).
    pub refresh_url: Option<Url>,
    /// Instagram's `ig_exchange_token` endpoint (short-lived to long-lived token).
    pub exchange_url: Option<Url>,
    pub revoke_url: Option<Url>,
    pub userinfo_url: Option<Url>,
    pub api_base_url: Option<Url>,
    /// The query parameter the API takes the access token in; `None`: an
    /// `Authorization: Bearer` header.
    pub api_token_param: Option<String>,
    pub issuer: Option<Url>,
    /// The OpenID issuer whose keys sign this provider's ID tokens: the configured `issuer`,
    /// else the catalog's (placeholders filled). The connect flow discovers its JWKS on
    /// first use.
    pub oidc_issuer: Option<Url>,
    pub client_id: Option<String>,
    pub client_secret: Option<ClientSecret>,
    pub auth_method: AuthMethod,
    /// The client id's parameter name (`client_id`; TikTok: `client_key`).
    pub client_id_param: String,
    pub token_request: BodyFormat,
    pub pkce: Option<Pkce>,
    pub scopes: Vec<String>,
    pub scope_separator: char,
    pub authorization_params: BTreeMap<String, String>,
    pub token_params: BTreeMap<String, String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub account_id: Option<AccountIdSource>,
    pub user_agent: Option<HeaderValue>,
    pub rate_limit_per_second: Option<u32>,
    pub revoke_token: RevokeToken,
    /// The discovered metadata, for the connect flow.
    pub metadata: Option<ServerMetadata>,
    pub(crate) dialect: Dialect,
}

impl ProviderSettings {
    /// Resolves `config` (plus `metadata` when the provider has an `issuer`).
    pub fn resolve(
        name: ProviderName,
        config: &ProviderConfig,
        metadata: Option<ServerMetadata>,
    ) -> Result<Self, ProviderConfigError> {
        let err = |key: &'static str, message: String| config_error(&name, key, message);

        // Which catalog entry, if any: `catalog = "…"`, or the v1 kinds that became entries.
        let catalog_id = match (config.catalog.as_deref(), config.kind) {
            (
                Some(id),
                Some(ProviderKind::Tiktok | ProviderKind::Reddit | ProviderKind::Instagram),
            ) => {
                return Err(err(
                    "kind",
                    format!("leave `kind` out with `catalog = {id:?}` (or set it to oauth2)"),
                ));
            }
            (Some(id), _) => Some(id.trim()),
            (None, Some(ProviderKind::Tiktok)) => Some("tiktok"),
            (None, Some(ProviderKind::Reddit)) => Some("reddit"),
            (None, Some(ProviderKind::Instagram)) if catalog::get("instagram").is_some() => {
                Some("instagram")
            }
            (None, _) => None,
        };
        let (catalog_id, entry): (Option<&'static str>, Option<&'static CatalogEntry>) =
            match catalog_id {
                Some(id) => {
                    let (id, entry) = catalog::entries()
                        .iter()
                        .find(|(candidate, _)| *candidate == id)
                        .map(|(id, entry)| (*id, entry))
                        .ok_or_else(|| {
                            err(
                                "catalog",
                                "unknown catalog provider (`tokenwarden providers catalog` lists them)"
                                    .to_owned(),
                            )
                        })?;
                    (Some(id), Some(entry))
                }
                None => (None, None),
            };
        let kind = match (config.kind, entry) {
            (Some(kind), _) => kind,
            (None, Some(entry)) if entry.kind == Engine::Instagram => ProviderKind::Instagram,
            (None, _) if entry.is_some() || config.issuer.is_some() => ProviderKind::Oauth2,
            (None, _) => {
                return Err(err(
                    "kind",
                    "required unless `catalog` or `issuer` is given (instagram, tiktok, reddit or oauth2)"
                        .to_owned(),
                ));
            }
        };
        let engine = match (kind, entry) {
            (ProviderKind::Instagram, _) => Engine::Instagram,
            (_, Some(entry)) => entry.kind,
            _ => Engine::Oauth2,
        };
        let issuer = config
            .issuer
            .as_deref()
            .map(|i| parse_issuer(i).map_err(|m| err("issuer", m)))
            .transpose()?;
        if issuer.is_some() && metadata.is_none() {
            return Err(err(
                "issuer",
                "needs discovery at start (build the provider with `build_discovering`)".to_owned(),
            ));
        }
        let source = match (&metadata, entry) {
            (Some(_), _) => ProviderSource::Discovery,
            (None, Some(_)) => ProviderSource::Catalog,
            (None, None) => ProviderSource::Config,
        };

        // Placeholders in catalog URLs: configured values over the entry's defaults.
        let url_param = |param: &str| -> Option<&str> {
            config
                .url_params
                .get(param)
                .map(String::as_str)
                .or_else(|| {
                    entry
                        .and_then(|e| e.url_params.get(param))
                        .map(String::as_str)
                })
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if let Some(key) = config
            .url_params
            .keys()
            .find(|k| entry.is_none_or(|e| !e.url_params.contains_key(k.as_str())))
        {
            return Err(err(
                "url_params",
                format!("`{key}` is not a placeholder of this provider's URLs"),
            ));
        }
        if let Some((key, _)) = config.url_params.iter().find(|(_, v)| {
            !v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
        }) {
            // No '/', '?', '#' or '@': a value fills a host (with its port) or a path
            // segment; it cannot change which server or which path the URL names.
            return Err(err(
                "url_params",
                format!("`{key}` may only hold letters, digits, '-', '.', '_' and ':'"),
            ));
        }
        // An endpoint: the configured value, else the discovered one, else the catalog's.
        let endpoint = |key: &'static str,
                        configured: Option<&str>,
                        discovered: Option<&str>,
                        from_catalog: Option<&str>|
         -> Result<Option<Url>, ProviderConfigError> {
            if let Some(value) = configured {
                return endpoint_url(&name, key, value).map(Some);
            }
            if let Some(value) = discovered {
                return endpoint_url(&name, key, value).map(Some);
            }
            let Some(template) = from_catalog else {
                return Ok(None);
            };
            let filled = catalog::fill_placeholders(template, url_param).map_err(|param| {
                config_error(
                    &name,
                    "url_params",
                    format!("`{param}` is required by this catalog provider's URLs"),
                )
            })?;
            endpoint_url(&name, key, &filled).map(Some)
        };
        let meta = metadata.as_ref();
        let authorization_url = endpoint(
            "authorization_url",
            config.authorization_url.as_deref(),
            meta.and_then(|m| m.authorization_endpoint.as_deref()),
            entry.map(|e| e.authorization_url.as_str()),
        )?;
        let token_url = endpoint(
            "token_url",
            config.token_url.as_deref(),
            meta.map(|m| m.token_endpoint.as_str()),
            entry.map(|e| e.token_url.as_str()),
        )?;
        let refresh_url = endpoint(
            "refresh_url",
            config.refresh_url.as_deref(),
            None,
            entry.and_then(|e| e.refresh_url.as_deref()),
        )?;
        // Instagram refreshes and exchanges at endpoints of its own (GET, the token in the
        // query), Meta's unless configured.
        let (refresh_url, exchange_url) = match engine {
            Engine::Instagram => (
                Some(match refresh_url {
                    Some(url) => url,
                    None => endpoint_url(&name, "refresh_url", instagram::DEFAULT_REFRESH_URL)?,
                }),
                Some(endpoint_url(
                    &name,
                    "exchange_url",
                    config
                        .exchange_url
                        .as_deref()
                        .unwrap_or(instagram::DEFAULT_EXCHANGE_URL),
                )?),
            ),
            Engine::Oauth2 => (refresh_url, None),
        };
        let revoke_url = endpoint(
            "revoke_url",
            config.revoke_url.as_deref(),
            meta.and_then(|m| m.revocation_endpoint.as_deref()),
            entry.and_then(|e| e.revoke_url.as_deref()),
        )?;
        let userinfo_url = endpoint(
            "userinfo_url",
            config.userinfo_url.as_deref(),
            meta.and_then(|m| m.userinfo_endpoint.as_deref()),
            entry.and_then(|e| e.userinfo_url.as_deref()),
        )?;
        let oidc_issuer = match &issuer {
            Some(issuer) => Some(issuer.clone()),
            None => endpoint(
                "issuer",
                None,
                None,
                entry.and_then(|e| e.issuer.as_deref()),
            )?,
        };
        let api_base_url = endpoint(
            "api_base_url",
            config.api_base_url.as_deref(),
            None,
            entry.and_then(|e| e.api_base_url.as_deref()),
        )?;
        // The proxy appends the caller's path and query to it: a query or fragment of its own
        // would be dropped without a word.
        if let Some(base) = &api_base_url
            && (base.query().is_some() || base.fragment().is_some())
        {
            return Err(err(
                "api_base_url",
                "must have no query or fragment (the proxy adds the caller's query)".to_owned(),
            ));
        }
        let api_token_param = match non_empty(config.api_token_param.as_deref()) {
            Some(param) if !catalog::is_query_name(&param) => {
                return Err(err(
                    "api_token_param",
                    "must be a query parameter name (letters, digits, '_', '-', '.')".to_owned(),
                ));
            }
            Some(param) => Some(param),
            None => entry.and_then(|e| e.api_token_param.clone()),
        };
        let token_url = match (engine, token_url) {
            (_, Some(url)) => url,
            // Instagram's code exchange; it refreshes at `refresh_url`.
            (Engine::Instagram, None) => {
                endpoint_url(&name, "token_url", instagram::DEFAULT_TOKEN_URL)?
            }
            (Engine::Oauth2, None) => {
                return Err(err(
                    "token_url",
                    "required for kind oauth2 (or give `catalog` or `issuer`)".to_owned(),
                ));
            }
        };

        let grant = config.grant.unwrap_or_default();
        if grant == Grant::ClientCredentials && engine == Engine::Instagram {
            return Err(err(
                "grant",
                "Instagram has no client-credentials grant".to_owned(),
            ));
        }
        let auth_method = config
            .auth_method
            .or(entry.and_then(|e| e.auth_method))
            .unwrap_or_default();
        let client_id = non_empty(config.client_id.as_deref());
        let client_secret = config.client_secret.clone().filter(|s| !s.is_empty());
        if engine == Engine::Oauth2 {
            let kind_name = catalog_id.unwrap_or("oauth2");
            if client_id.is_none() {
                let what = if catalog_id == Some("tiktok") {
                    "required (TikTok's client_key)".to_owned()
                } else {
                    format!("required for {kind_name}")
                };
                return Err(err("client_id", what));
            }
            // A catalog provider (or an application token) needs the secret its
            // authentication method sends, unless the provider allows a public client.
            let secret_optional = entry
                .and_then(|e| e.client_secret_optional)
                .unwrap_or(entry.is_none() && grant == Grant::AuthorizationCode);
            if client_secret.is_none() && auth_method != AuthMethod::None && !secret_optional {
                return Err(err("client_secret", format!("required for {kind_name}")));
            }
        }

        let user_agent = user_agent(&name, config.user_agent.as_deref())?;
        if user_agent.is_none() && entry.and_then(|e| e.user_agent_required) == Some(true) {
            let example = if catalog_id == Some("reddit") {
                "a unique `<platform>:<app id>:<version> (by /u/<user>)`"
            } else {
                "a unique, descriptive User-Agent"
            };
            return Err(err(
                "user_agent",
                format!(
                    "required for kind {}: {example}",
                    catalog_id.unwrap_or("oauth2")
                ),
            ));
        }

        let scope_separator = entry
            .and_then(|e| e.scope_separator.as_deref())
            .and_then(|s| s.chars().next())
            .unwrap_or(' ');
        let scopes = match &config.scopes {
            Some(scopes) => {
                if let Some(bad) = scopes.iter().find(|s| {
                    s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == scope_separator)
                }) {
                    return Err(err(
                        "scopes",
                        format!("{bad:?} is not one scope (no spaces or separators)"),
                    ));
                }
                scopes.clone()
            }
            None => entry.map(|e| e.scopes.clone()).unwrap_or_default(),
        };
        let params = |configured: &Option<BTreeMap<String, String>>,
                      from_catalog: Option<&BTreeMap<String, String>>| {
            let mut all = from_catalog.cloned().unwrap_or_default();
            if let Some(configured) = configured {
                all.extend(configured.clone());
            }
            all
        };
        let authorization_params = params(
            &config.authorization_params,
            entry.map(|e| &e.authorization_params),
        );
        let token_params = params(&config.token_params, entry.map(|e| &e.token_params));
        const RESERVED: [&str; 6] = [
            "grant_type",
            "refresh_token",
            "client_id",
            "client_secret",
            "code",
            "code_verifier",
        ];
        if let Some(key) = token_params.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(err(
                "token_params",
                format!("`{key}` is set by tokenwarden, not by configuration"),
            ));
        }

        let errors: Vec<(String, FailureClass)> = entry
            .and_then(|e| e.errors.as_ref())
            .map(|v| v.classes().map(|(e, c)| (e.to_owned(), c)).collect())
            .unwrap_or_default();
        let dialect = Dialect {
            scope_separator,
            reset_header: entry.and_then(|e| e.rate_limit_reset_header.clone()),
            refresh_tokens: true,
            errors,
            token_path: entry.and_then(|e| e.token_path.clone()),
        };

        Ok(Self {
            kind,
            engine,
            source,
            catalog: catalog_id,
            display_name: entry.map(|e| e.name.clone()),
            grant,
            authorization_url,
            token_url,
            refresh_url,
            exchange_url,
            revoke_url,
            userinfo_url,
            api_base_url,
            api_token_param,
            oidc_issuer,
            issuer,
            client_id,
            client_secret,
            auth_method,
            client_id_param: entry
                .and_then(|e| e.client_id_param.clone())
                .unwrap_or_else(|| "client_id".to_owned()),
            token_request: entry.and_then(|e| e.token_request).unwrap_or_default(),
            pkce: match (meta, entry.and_then(|e| e.pkce)) {
                (_, Some(pkce)) => Some(pkce),
                (Some(m), None) if m.supports_s256() => Some(Pkce::Supported),
                _ => None,
            },
            scopes,
            scope_separator,
            authorization_params,
            token_params,
            audience: non_empty(config.audience.as_deref()),
            resource: non_empty(config.resource.as_deref()),
            account_id: entry
                .and_then(|e| e.account_id.as_deref())
                .and_then(AccountIdSource::parse)
                .or_else(|| meta.map(|_| AccountIdSource::IdTokenClaim("sub".to_owned()))),
            user_agent,
            rate_limit_per_second: config.rate_limit_per_second,
            revoke_token: entry.and_then(|e| e.revoke_token).unwrap_or_default(),
            metadata,
            dialect,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderConfig;

    #[test]
    fn an_api_base_url_with_a_query_or_fragment_is_refused_by_name() {
        for base in [
            "https://api.example.com/v1?version=2",
            "https://api.example.com/v1#x",
        ] {
            let config = ProviderConfig {
                catalog: Some("gitlab".to_owned()),
                client_id: Some("client".to_owned()),
                client_secret: Some(crate::secret::ClientSecret::new("secret-value")),
                api_base_url: Some(base.to_owned()),
                ..ProviderConfig::default()
            };
            let error = ProviderSettings::resolve("gitlab".parse().expect("name"), &config, None)
                .expect_err("refused");
            let text = error.to_string();
            assert!(text.contains("api_base_url"), "{text}");
            assert!(!text.contains("version=2"), "{text}");
        }
    }
}
