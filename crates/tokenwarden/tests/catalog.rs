//! The provider catalog: every entry loads and follows the catalog's rules, and every entry
//! makes a working provider from nothing but `catalog = "<id>"` and client credentials (plus
//! the values the provider itself demands: its URL placeholders, Reddit's User-Agent).

use std::collections::BTreeSet;

use tokenwarden::provider::catalog::{self, Engine};
use tokenwarden::provider::{
    self, Grant, HttpClient, ProviderConfig, ProviderKind, ProviderSource,
};
use tokenwarden::secret::ClientSecret;

/// Enough entries to be worth having: the issue asks for at least 50.
const MIN_ENTRIES: usize = 50;

#[test]
fn every_entry_loads_and_follows_the_rules() {
    let files = catalog::files();
    assert!(
        files.len() >= MIN_ENTRIES,
        "only {} catalog entries",
        files.len()
    );
    let mut problems = Vec::new();
    for (id, text) in files {
        let id_ok = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            problems.push(format!("{id}: ids are lowercase letters, digits and '-'"));
        }
        if let Err(e) = catalog::parse(id, text) {
            problems.push(e.to_string());
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // `entries()` agrees with the files, sorted, so `get` can search it.
    let ids: Vec<&str> = catalog::ids().collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), files.len());
}

/// The providers the issue names must be there.
#[test]
fn the_most_used_providers_are_present() {
    let ids: BTreeSet<&str> = catalog::ids().collect();
    for id in [
        "google",
        "microsoft",
        "github",
        "gitlab",
        "bitbucket",
        "slack",
        "discord",
        "notion",
        "atlassian",
        "salesforce",
        "hubspot",
        "zoom",
        "dropbox",
        "box",
        "linkedin",
        "x",
        "spotify",
        "twitch",
        "shopify",
        "stripe-connect",
        "xero",
        "quickbooks",
        "asana",
        "linear",
        "docusign",
        "intercom",
        "zendesk",
        "pinterest",
        "snapchat",
        "youtube",
        "facebook",
        "instagram",
        "tiktok",
        "reddit",
        "yahoo",
        "amazon",
        "okta",
        "auth0",
        "keycloak",
    ] {
        assert!(ids.contains(id), "catalog has no {id}");
    }
}

/// A configuration with only what an operator must give for `id`.
fn minimal_config(id: &str) -> ProviderConfig {
    let entry = catalog::get(id).expect("entry");
    let url_params = entry
        .url_params
        .iter()
        .filter(|(_, default)| default.is_empty())
        .map(|(name, _)| (name.clone(), format!("{name}-value")))
        .collect();
    ProviderConfig {
        catalog: Some(id.to_owned()),
        client_id: Some("client-id".to_owned()),
        client_secret: Some(ClientSecret::new("client-secret-value")),
        url_params,
        user_agent: entry
            .user_agent_required
            .unwrap_or(false)
            .then(|| "test:tokenwarden:1.0 (by /u/tester)".to_owned()),
        ..ProviderConfig::default()
    }
}

#[test]
fn catalog_alone_makes_a_working_provider_for_every_entry() {
    let http = HttpClient::new(Default::default()).expect("client");
    for (id, entry) in catalog::entries() {
        let name = if id.len() <= 64 { *id } else { "x" };
        let built = provider::build(
            name.parse().expect("provider name"),
            &minimal_config(id),
            http.clone(),
        )
        .unwrap_or_else(|e| panic!("{id}: {e}"));
        let info = built.info();
        assert_eq!(info.source, ProviderSource::Catalog, "{id}");
        assert_eq!(info.catalog.as_deref(), Some(*id), "{id}");
        assert_eq!(info.display_name.as_deref(), Some(entry.name.as_str()));
        assert_eq!(info.grant, Grant::AuthorizationCode);
        let expected_kind = match entry.kind {
            Engine::Instagram => ProviderKind::Instagram,
            Engine::Oauth2 => ProviderKind::Oauth2,
        };
        assert_eq!(info.kind, expected_kind, "{id}");
        // Every URL is filled in: no placeholder is left, and each is https.
        let urls = [
            Some(&info.token_url),
            info.authorization_url.as_ref(),
            info.revoke_url.as_ref(),
            info.userinfo_url.as_ref(),
            info.api_base_url.as_ref(),
        ];
        assert!(info.authorization_url.is_some(), "{id}");
        for url in urls.into_iter().flatten() {
            assert!(url.starts_with("https://"), "{id}: {url}");
            assert!(!url.contains('{') && !url.contains("%7B"), "{id}: {url}");
        }
    }
}

#[test]
fn a_required_placeholder_is_named_when_missing() {
    let (id, _) = catalog::entries()
        .iter()
        .find(|(_, e)| e.url_params.values().any(String::is_empty))
        .expect("an entry with a required placeholder");
    let mut config = minimal_config(id);
    let missing = config.url_params.keys().next().cloned().expect("param");
    config.url_params.clear();
    let err = provider::build(
        "p".parse().expect("name"),
        &config,
        HttpClient::new(Default::default()).expect("client"),
    )
    .expect_err("placeholder missing");
    assert_eq!(err.key, "url_params");
    assert!(err.message.contains(&missing), "{err}");

    // A value that would change the URL's shape is refused.
    let mut config = minimal_config(id);
    config
        .url_params
        .insert(missing.clone(), "evil.example.com/x?".to_owned());
    let err = provider::build(
        "p".parse().expect("name"),
        &config,
        HttpClient::new(Default::default()).expect("client"),
    )
    .expect_err("bad value");
    assert_eq!(err.key, "url_params");
}

#[test]
fn configured_values_override_the_catalog() {
    let mut config = minimal_config("google");
    config.token_url = Some("http://127.0.0.1:9/token".to_owned());
    config.scopes = Some(vec!["email".to_owned()]);
    let info = provider::build(
        "google".parse().expect("name"),
        &config,
        HttpClient::new(Default::default()).expect("client"),
    )
    .expect("builds")
    .info();
    assert_eq!(info.token_url, "http://127.0.0.1:9/token");
    assert_eq!(info.scopes, ["email"]);
    // What was not overridden still comes from the catalog.
    assert_eq!(
        info.authorization_url.as_deref(),
        Some("https://accounts.google.com/o/oauth2/v2/auth")
    );
}

#[test]
fn catalog_mistakes_name_the_key() {
    let http = HttpClient::new(Default::default()).expect("client");
    let build = |config: ProviderConfig| {
        provider::build("p".parse().expect("name"), &config, http.clone())
            .expect_err("refused")
            .key
    };
    let unknown = ProviderConfig {
        catalog: Some("no-such-provider".to_owned()),
        ..minimal_config("google")
    };
    assert_eq!(build(unknown), "catalog");
    let no_secret = ProviderConfig {
        client_secret: None,
        ..minimal_config("google")
    };
    assert_eq!(build(no_secret), "client_secret");
    let no_id = ProviderConfig {
        client_id: None,
        ..minimal_config("google")
    };
    assert_eq!(build(no_id), "client_id");
    let kind_clash = ProviderConfig {
        kind: Some(ProviderKind::Tiktok),
        ..minimal_config("google")
    };
    assert_eq!(build(kind_clash), "kind");
    let stray_param = ProviderConfig {
        url_params: [("tenant".to_owned(), "x".to_owned())].into(),
        ..minimal_config("google")
    };
    assert_eq!(build(stray_param), "url_params");
    let reserved = ProviderConfig {
        token_params: Some([("grant_type".to_owned(), "password".to_owned())].into()),
        ..minimal_config("google")
    };
    assert_eq!(build(reserved), "token_params");
    let no_kind = ProviderConfig {
        catalog: None,
        ..minimal_config("google")
    };
    assert_eq!(build(no_kind), "kind");
}
