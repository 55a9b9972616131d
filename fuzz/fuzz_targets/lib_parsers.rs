//! The library's small parsers: `Retry-After` and rate-limit reset headers, sealed-secret
//! envelopes, and connection identifiers.
//!
//! Checks, beyond "no panic, no hang":
//! - `parse_retry_after`: a plain integer is taken as that many seconds.
//! - `parse_reset_header`: never more than 1e9 seconds.
//! - `KeyRing::open` on arbitrary bytes with a fixed ring: always Err (forging an AES-GCM tag
//!   by chance does not happen); `envelope_key_id`/`needs_reseal` never panic.
//! - seal then open round-trips any plaintext, and flipping any one byte of the envelope, or
//!   opening it for another connection or field, fails.
//! - `ConnectionKey::parse`: Ok exactly for valid parts; an accepted key displays as
//!   `user/provider/account` and survives a JSON round trip.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tokenwarden::crypto::{Field, envelope_key_id};
use tokenwarden::refresh::classify::{parse_reset_header, parse_retry_after};
use tokenwarden::{ConnectionKey, KeyRing};
use tokenwarden_fuzz::{any_time, t0};

#[derive(Debug, Arbitrary)]
enum Op {
    RetryAfter {
        value: String,
        now: Option<i64>,
    },
    ResetHeader {
        value: String,
        now: Option<i64>,
    },
    Open {
        envelope: Vec<u8>,
        refresh: bool,
    },
    RoundTrip {
        plaintext: Vec<u8>,
        flip: usize,
        bit: u8,
    },
    ConnectionKey {
        user: String,
        provider: String,
        account: String,
    },
}

/// Two fixed keys: "k1" active, "old.key-2" for opening only.
fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        KeyRing::from_base64(
            "k1",
            [
                ("k1", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
                ("old.key-2", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="),
            ],
        )
        .expect("fixed keys are valid")
    })
}

fn key() -> ConnectionKey {
    ConnectionKey::parse("user-1", "reddit", "account-9").expect("valid key")
}

fuzz_target!(|op: Op| match op {
    Op::RetryAfter { value, now } => {
        let now = now.map_or_else(t0, any_time);
        let parsed = parse_retry_after(&value, now);
        if let Ok(secs) = value.trim().parse::<u64>() {
            assert_eq!(parsed, Some(Duration::from_secs(secs)));
        }
    }
    Op::ResetHeader { value, now } => {
        let now = now.map_or_else(t0, any_time);
        if let Some(wait) = parse_reset_header(&value, now) {
            assert!(wait <= Duration::from_secs(1_000_000_000), "{wait:?}");
        }
    }
    Op::Open { envelope, refresh } => {
        let field = if refresh {
            Field::RefreshToken
        } else {
            Field::AccessToken
        };
        let ring = ring();
        assert!(
            ring.open(&envelope, &key(), field).is_err(),
            "forged envelope opened"
        );
        assert!(ring.open_string(&envelope, &key(), field).is_err());
        let _ = envelope_key_id(&envelope);
        let _ = ring.needs_reseal(&envelope);
    }
    Op::RoundTrip {
        plaintext,
        flip,
        bit,
    } => {
        let ring = ring();
        let k = key();
        let sealed = ring.seal(&plaintext, &k, Field::RefreshToken);
        let opened = ring
            .open(&sealed, &k, Field::RefreshToken)
            .expect("own envelope opens");
        assert_eq!(opened.as_slice(), plaintext.as_slice());
        assert_eq!(envelope_key_id(&sealed), Some("k1"));
        assert!(!ring.needs_reseal(&sealed));
        assert!(
            ring.open(&sealed, &k, Field::AccessToken).is_err(),
            "field not bound"
        );
        let other = ConnectionKey::parse("user-1", "reddit", "account-10").expect("valid");
        assert!(
            ring.open(&sealed, &other, Field::RefreshToken).is_err(),
            "key not bound"
        );
        let mut tampered = sealed.clone();
        let at = flip % tampered.len();
        tampered[at] ^= bit.max(1);
        assert!(
            ring.open(&tampered, &k, Field::RefreshToken).is_err(),
            "tampered envelope opened (byte {at})"
        );
        tampered.truncate(at);
        assert!(
            ring.open(&tampered, &k, Field::RefreshToken).is_err(),
            "truncated opened"
        );
    }
    Op::ConnectionKey {
        user,
        provider,
        account,
    } => {
        let valid_id = |s: &str| {
            !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_control() || c == '/')
        };
        let valid_provider = !provider.is_empty()
            && provider.len() <= 64
            && provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let expected = valid_id(&user) && valid_provider && valid_id(&account);
        match ConnectionKey::parse(&user, &provider, &account) {
            Ok(parsed) => {
                assert!(
                    expected,
                    "invalid parts accepted: {user:?} {provider:?} {account:?}"
                );
                assert_eq!(parsed.to_string(), format!("{user}/{provider}/{account}"));
                let json = serde_json::to_string(&parsed).expect("serializes");
                let back: ConnectionKey = serde_json::from_str(&json).expect("round trip");
                assert_eq!(back, parsed);
            }
            Err(error) => {
                assert!(!expected, "valid parts rejected: {error}");
            }
        }
    }
});
