//! Fixtures shared by every store test: a fixed test key ring, a base time and a connection
//! with every field set.
//!
//! This file is compiled twice: as a module of the test kit, and (`#[cfg(test)]` only) into
//! the library's own unit tests, which cannot use the test kit as a crate (its `Store` would
//! be another build's trait). So it names the library's items only by `crate::` paths, which
//! resolve in both: natively in the library, through the test kit's root imports here.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use time::OffsetDateTime;

use crate::connection::{Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, Tokens};
use crate::crypto::KeyRing;
use crate::secret::{AccessToken, RefreshToken};

/// A key ring with the fixed test keys `k1` and `k2` (only those in `ids`), `active` sealing.
pub fn test_keys(active: &str, ids: &[&str]) -> Arc<KeyRing> {
    let encoded: Vec<(&str, String)> = ids
        .iter()
        .map(|&id| {
            let byte = match id {
                "k1" => 0x11,
                "k2" => 0x22,
                other => panic!("no test key {other}"),
            };
            (id, STANDARD.encode([byte; 32]))
        })
        .collect();
    let ring = KeyRing::from_base64(active, encoded.iter().map(|(id, k)| (*id, k.as_str())))
        .expect("test key ring");
    Arc::new(ring)
}

/// A base time (2026-05-28) plus `seconds`.
pub fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_780_000_000 + seconds).expect("valid time")
}

/// A connection with every optional field set; its secrets name its key.
pub fn sample_connection(user: &str, provider: &str, account: &str) -> Connection {
    let key = ConnectionKey::parse(user, provider, account).expect("valid test key");
    Connection {
        meta: ConnectionMeta {
            key,
            token_type: "Bearer".into(),
            has_refresh_token: true,
            expires_at: Some(at(3600)),
            refresh_expires_at: Some(at(30 * 86_400)),
            issued_at: Some(at(0)),
            scopes: vec!["read".into(), "write".into(), "user.info.basic".into()],
            metadata: json!({"display_name": "Zoë ✓", "n": 7, "nested": {"list": [1, null, "x"]}}),
            status: ConnectionStatus::Active,
            last_refreshed_at: Some(at(0)),
            consecutive_failures: 0,
            last_error: None,
            created_at: at(0),
            updated_at: at(0),
            next_refresh_at: Some(at(3000)),
            version: 0,
        },
        tokens: Tokens {
            access_token: AccessToken::new(format!("access-{user}-{provider}-{account}-ü")),
            refresh_token: Some(RefreshToken::new(format!(
                "refresh-{user}-{provider}-{account}"
            ))),
        },
    }
}

/// Six events as they were stored before migration 7 (no connection columns), for the
/// migration's backfill tests on both backends: three about `u ü/reddit/a 1` (indexes 0, 4,
/// 5), one about another account, one provider event, and a connect-session failure that
/// names no account. [`EVENTS_OF_A1_NEWEST_FIRST`] are the indexes the migrated store lists
/// for `u ü/reddit/a 1`.
pub fn events_before_migration_7() -> [crate::webhooks::outbox::NewEvent; 6] {
    use crate::webhooks::EventType;
    use crate::webhooks::outbox::NewEvent;
    let ids = json!({"user_id": "u ü", "provider": "reddit", "account_id": "a 1"});
    let mut other = ids.clone();
    other["account_id"] = json!("a 2");
    [
        NewEvent::new(EventType::ConnectionCreated, at(1), ids.clone()),
        NewEvent::new(EventType::ConnectionCreated, at(2), other),
        NewEvent::new(
            EventType::ProviderCircuitOpened,
            at(3),
            json!({"provider": "reddit"}),
        ),
        NewEvent::new(
            EventType::ConnectSessionFailed,
            at(4),
            json!({"session_id": "cs_1", "user_id": "u ü", "provider": "reddit"}),
        ),
        NewEvent::new(EventType::ConnectSessionFailed, at(5), ids.clone()),
        NewEvent::new(EventType::ConnectionNeedsReconnect, at(6), ids),
    ]
}

/// See [`events_before_migration_7`].
pub const EVENTS_OF_A1_NEWEST_FIRST: [usize; 3] = [5, 4, 0];
