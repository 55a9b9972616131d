//! Webhooks: the events tokenwarden announces, the endpoints that receive them, and the
//! Standard Webhooks signature that lets an endpoint check a message came from us.
//!
//! Event names ([`event`]); secrets, signing and verifying ([`signing`]); an endpoint's
//! validated settings ([`EndpointConfig`]); the durable outbox's rules and types ([`outbox`]:
//! which change raises which event, the body, and what the store's delivery methods take and
//! return; the tables themselves are the store's, written in the same transaction as the
//! change); one signed attempt and the retry schedule ([`delivery`]); and the delivery loop
//! that fans events out, claims deliveries and records each answer ([`worker`]).

pub mod delivery;
pub mod event;
pub mod outbox;
pub mod signing;
pub mod worker;

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

use crate::error::ConfigError;

pub use event::EventType;
pub use signing::{SecretError, VerifyError, WebhookSecret, headers, sign, verify};

/// Longest endpoint name, in characters.
pub const MAX_ENDPOINT_NAME_LEN: usize = 64;

/// One endpoint's settings: where events go, the secrets they are signed with, which events
/// it receives, and how long one attempt may take. Build it with [`EndpointConfig::new`],
/// which checks every field.
#[derive(Clone)]
pub struct EndpointConfig {
    /// The endpoint's name (`a-z 0-9 _ -`, 1-64), as in `[webhooks.endpoints.NAME]`.
    pub name: String,
    /// Where events are POSTed: https, or http to a loopback host.
    pub url: Url,
    /// Every message is signed with each of these, in order (several during a rotation).
    pub secrets: Vec<WebhookSecret>,
    /// The events this endpoint receives; by default [`EventType::ALL`].
    pub events: BTreeSet<EventType>,
    /// Upper bound on one delivery attempt.
    pub timeout: Duration,
}

impl EndpointConfig {
    /// Checks and assembles an endpoint. Errors name the field (`endpoint.name`,
    /// `endpoint.url`, `endpoint.secrets`, `endpoint.events`, `endpoint.timeout`), never a
    /// value: a URL may carry a token in its query.
    pub fn new(
        name: impl Into<String>,
        url: Url,
        secrets: Vec<WebhookSecret>,
        events: BTreeSet<EventType>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        check_endpoint_name(&name).map_err(|problem| ConfigError::new("endpoint.name", problem))?;
        check_endpoint_url(&url).map_err(|problem| ConfigError::new("endpoint.url", problem))?;
        if secrets.is_empty() {
            return Err(ConfigError::new(
                "endpoint.secrets",
                "at least one secret is required",
            ));
        }
        if events.is_empty() {
            return Err(ConfigError::new(
                "endpoint.events",
                "at least one event is required (leave it out for all events)",
            ));
        }
        if events.contains(&EventType::WebhookTest) {
            return Err(ConfigError::new(
                "endpoint.events",
                "webhook.test is sent only by the test route and cannot be subscribed to",
            ));
        }
        ConfigError::check_duration("endpoint.timeout", timeout, Duration::from_millis(1))?;
        Ok(Self {
            name,
            url,
            secrets,
            events,
            timeout,
        })
    }

    /// Whether this endpoint receives `event`. [`EventType::WebhookTest`] is never
    /// subscribed: the test route addresses an endpoint by name instead.
    pub fn subscribes_to(&self, event: EventType) -> bool {
        self.events.contains(&event)
    }
}

/// The URL without its query and user info, which may hold credentials.
impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        if shown.query().is_some() {
            shown.set_query(Some("<redacted>"));
        }
        // Cannot fail for an http(s) URL with a host, which `new` guarantees.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("url", &shown.as_str())
            .field("secrets", &self.secrets)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Endpoint names follow provider names: 1-64 characters of `a-z 0-9 _ -`, so they fit a
/// metric label and an environment variable.
pub fn check_endpoint_name(name: &str) -> Result<(), &'static str> {
    let ok = (1..=MAX_ENDPOINT_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("endpoint names must be 1-64 characters of a-z, 0-9, '_' or '-'")
    }
}

/// An endpoint URL: http(s) with a host and no user info or fragment; plain http only to a
/// loopback host (`localhost`, 127.0.0.0/8, `::1`), because the body and its signature would
/// otherwise cross the network readable.
pub fn check_endpoint_url(url: &Url) -> Result<(), &'static str> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL");
    }
    let Some(host) = url.host() else {
        return Err("must have a host");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not have user info");
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment");
    }
    if url.scheme() == "http" && !is_loopback(&host) {
        return Err("must be https (plain http is allowed only to localhost or a loopback IP)");
    }
    Ok(())
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(domain) => domain.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    fn endpoint(u: &str) -> Result<EndpointConfig, ConfigError> {
        EndpointConfig::new(
            "ops",
            url(u),
            vec![WebhookSecret::generate()],
            EventType::ALL.into_iter().collect(),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn urls_need_https_except_to_loopback() {
        for ok in [
            "https://hooks.example.com/tw",
            "https://hooks.example.com:8443/tw?token=abc",
            "http://127.0.0.1:9000/hook",
            "http://127.8.9.10/hook",
            "http://localhost:3000/",
            "http://LOCALHOST/",
            "http://[::1]:8080/x",
        ] {
            endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("http://hooks.example.com/tw", "must be https"),
            ("http://10.0.0.1/tw", "must be https"),
            ("http://localhost.example.com/", "must be https"),
            ("ftp://hooks.example.com/", "http or https"),
            ("https://user:pw@hooks.example.com/", "user info"),
            ("https://user@hooks.example.com/", "user info"),
            ("https://hooks.example.com/#x", "fragment"),
            ("unix:/run/hook.sock", "http or https"),
        ] {
            let err = endpoint(bad).expect_err(bad);
            assert_eq!(err.field, "endpoint.url", "{bad}");
            assert!(err.problem.contains(why), "{bad}: {err}");
            assert!(!err.to_string().contains("example"), "{err}");
        }
    }

    #[test]
    fn names_follow_provider_names() {
        for ok in ["ops", "a", "slack-alerts_2", &"x".repeat(64)] {
            check_endpoint_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "Ops", "a.b", "a b", "ops!", "é", &"x".repeat(65)] {
            assert!(check_endpoint_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_and_events_must_not_be_empty_and_test_is_not_subscribable() {
        let make = |secrets: Vec<WebhookSecret>, events: &[EventType]| {
            EndpointConfig::new(
                "ops",
                url("https://example.com/"),
                secrets,
                events.iter().copied().collect(),
                Duration::from_secs(1),
            )
        };
        let one = || vec![WebhookSecret::generate()];
        assert_eq!(
            make(Vec::new(), &EventType::ALL)
                .expect_err("no secret")
                .field,
            "endpoint.secrets"
        );
        assert_eq!(
            make(one(), &[]).expect_err("no event").field,
            "endpoint.events"
        );
        let err = make(one(), &[EventType::WebhookTest]).expect_err("test event");
        assert!(err.problem.contains("webhook.test"), "{err}");
        let e = make(one(), &[EventType::ConnectionNeedsReconnect]).expect("valid");
        assert!(e.subscribes_to(EventType::ConnectionNeedsReconnect));
        assert!(!e.subscribes_to(EventType::ConnectionCreated));
        assert!(!e.subscribes_to(EventType::WebhookTest));
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let err = EndpointConfig::new(
            "ops",
            url("https://example.com/"),
            vec![WebhookSecret::generate()],
            EventType::ALL.into_iter().collect(),
            Duration::ZERO,
        )
        .expect_err("zero");
        assert_eq!(err.field, "endpoint.timeout");
    }

    #[test]
    fn debug_hides_secrets_and_the_query() {
        let secret = WebhookSecret::generate();
        let e = EndpointConfig::new(
            "ops",
            url("https://hooks.example.com/tw?token=s3cr3t-query"),
            vec![secret.clone()],
            EventType::ALL.into_iter().collect(),
            Duration::from_secs(1),
        )
        .expect("valid");
        let shown = format!("{e:?}");
        assert!(!shown.contains("s3cr3t-query"), "{shown}");
        assert!(!shown.contains(secret.expose_secret()), "{shown}");
        assert!(shown.contains("hooks.example.com/tw"), "{shown}");
    }
}
