//! The webhook event types: the names an endpoint subscribes to and a body's `type`.
//!
//! This module only names events. What each one carries, and when it is raised, belongs to
//! the code that raises it; nothing here sends anything.

use std::fmt;

/// An event type, as it appears in `events = [...]` and in a body's `"type"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EventType {
    /// A connection was created (import or connect flow).
    ConnectionCreated,
    /// An existing connection was connected again (connect flow).
    ConnectionReconnected,
    /// A refresh failed transiently after the last success; once per episode.
    ConnectionRefreshFailing,
    /// A refresh failed permanently: the user must reconnect.
    ConnectionNeedsReconnect,
    /// The first successful refresh after failing.
    ConnectionRecovered,
    /// A connection was deleted.
    ConnectionDeleted,
    /// A provider's circuit breaker opened.
    ProviderCircuitOpened,
    /// A provider's circuit breaker closed again.
    ProviderCircuitClosed,
    /// A connect session ended in an error.
    ConnectSessionFailed,
    /// Sent only by the endpoint test route, to the endpoint named there; no endpoint
    /// subscribes to it, so it is not in [`EventType::ALL`].
    WebhookTest,
}

impl EventType {
    /// Every event an endpoint can subscribe to, in the order of the specification: what an
    /// endpoint without `events` receives. [`EventType::WebhookTest`] is not one of them.
    pub const ALL: [EventType; 9] = [
        Self::ConnectionCreated,
        Self::ConnectionReconnected,
        Self::ConnectionRefreshFailing,
        Self::ConnectionNeedsReconnect,
        Self::ConnectionRecovered,
        Self::ConnectionDeleted,
        Self::ProviderCircuitOpened,
        Self::ProviderCircuitClosed,
        Self::ConnectSessionFailed,
    ];

    /// The wire name, e.g. `connection.needs_reconnect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "connection.created",
            Self::ConnectionReconnected => "connection.reconnected",
            Self::ConnectionRefreshFailing => "connection.refresh_failing",
            Self::ConnectionNeedsReconnect => "connection.needs_reconnect",
            Self::ConnectionRecovered => "connection.recovered",
            Self::ConnectionDeleted => "connection.deleted",
            Self::ProviderCircuitOpened => "provider.circuit_opened",
            Self::ProviderCircuitClosed => "provider.circuit_closed",
            Self::ConnectSessionFailed => "connect_session.failed",
            Self::WebhookTest => "webhook.test",
        }
    }

    /// The event with this wire name (exact, case-sensitive), `webhook.test` included; `None`
    /// for anything else. Whether it may be subscribed to is [`EventType::is_subscribable`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([Self::WebhookTest])
            .find(|event| event.as_str() == name)
    }

    /// False only for [`EventType::WebhookTest`].
    pub fn is_subscribable(self) -> bool {
        self != Self::WebhookTest
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_specification() {
        let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names,
            [
                "connection.created",
                "connection.reconnected",
                "connection.refresh_failing",
                "connection.needs_reconnect",
                "connection.recovered",
                "connection.deleted",
                "provider.circuit_opened",
                "provider.circuit_closed",
                "connect_session.failed",
            ]
        );
        for event in EventType::ALL.into_iter().chain([EventType::WebhookTest]) {
            assert_eq!(EventType::parse(event.as_str()), Some(event));
            assert_eq!(event.to_string(), event.as_str());
        }
    }

    #[test]
    fn webhook_test_parses_but_is_not_subscribable() {
        assert_eq!(
            EventType::parse("webhook.test"),
            Some(EventType::WebhookTest)
        );
        assert!(!EventType::WebhookTest.is_subscribable());
        assert!(!EventType::ALL.contains(&EventType::WebhookTest));
        assert!(EventType::ALL.iter().all(|e| e.is_subscribable()));
    }

    #[test]
    fn unknown_names_are_rejected() {
        for name in [
            "",
            "connection",
            "Connection.Created",
            "connection.created ",
            "connection.*",
        ] {
            assert_eq!(EventType::parse(name), None, "{name:?}");
        }
    }
}
