//! Standard Webhooks signatures: the `whsec_` secret, signing, and verifying.
//!
//! A signature is `v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed with the
//! decoded secret; during a rotation an endpoint has several secrets and the
//! `webhook-signature` header carries one signature per secret, space-separated, so a
//! consumer holding either secret accepts the message. Any Standard Webhooks library
//! verifies what [`sign`] makes (`interop/webhooks` checks it with the npm one).
//!
//! Signing is HMAC from the `hmac` and `sha2` crates rather than the `standardwebhooks` crate:
//! that crate keeps the key in memory that is never wiped, signs only UTF-8 bodies and checks
//! timestamps against the system clock (see the workspace `Cargo.toml`).
//!
//! This module owns the only copy of a webhook key in the library. It does not send anything
//! and does not decide what is signed: the delivery code passes the exact body it sends.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Header carrying the event id, the same on every attempt.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's time, in unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the signatures, space-separated.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far a timestamp may be from the verifier's clock, either way, in seconds: five
/// minutes, as in the Standard Webhooks libraries.
pub const TIMESTAMP_TOLERANCE_SECONDS: i64 = 5 * 60;

/// The prefix of a serialized secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes accepted: the specification's minimum (192 bits).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most key bytes accepted: the specification's maximum (512 bits).
pub const MAX_SECRET_BYTES: usize = 64;
/// Key bytes in a secret made by [`WebhookSecret::generate`].
pub const GENERATED_SECRET_BYTES: usize = 32;

/// The version tag of an HMAC-SHA256 signature.
const SIGNATURE_VERSION: &str = "v1";

/// A webhook signing secret, `whsec_` + standard base64 of 24 to 64 random bytes.
///
/// `Debug` and `Display` redact it, there is no `Serialize`, and its bytes (the text and the
/// decoded key) are wiped when the last clone drops. The one accessor is
/// [`WebhookSecret::expose_secret`].
#[derive(Clone)]
pub struct WebhookSecret(Arc<SecretBytes>);

#[derive(Zeroize, ZeroizeOnDrop)]
struct SecretBytes {
    text: String,
    key: Vec<u8>,
}

/// Why a string is not a webhook secret. The messages never contain the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("must start with `whsec_` (generate one with `tokenwarden webhooks secret`)")]
    MissingPrefix,
    #[error("the part after `whsec_` is not standard base64 (A-Z a-z 0-9 + /, `=` padding)")]
    NotBase64,
    #[error("decodes to {0} bytes; at least 24 are required")]
    TooShort(usize),
    #[error("decodes to {0} bytes; at most 64 are accepted")]
    TooLong(usize),
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`: standard alphabet, with or without `=` padding, 24 to 64
    /// bytes once decoded.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        // Padding is optional on input: the npm and Python libraries decode padded text, and
        // what they are given is the consumer's copy, which `generate` pads.
        let key = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        let bytes = SecretBytes {
            text: text.to_owned(),
            key,
        };
        match bytes.key.len() {
            n if n < MIN_SECRET_BYTES => Err(SecretError::TooShort(n)),
            n if n > MAX_SECRET_BYTES => Err(SecretError::TooLong(n)),
            _ => Ok(Self(Arc::new(bytes))),
        }
    }

    /// A new secret of 32 random bytes, padded base64 after `whsec_`.
    pub fn generate() -> Self {
        let mut key = rand::random::<[u8; GENERATED_SECRET_BYTES]>();
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(key));
        let bytes = SecretBytes {
            text,
            key: key.to_vec(),
        };
        key.zeroize();
        Self(Arc::new(bytes))
    }

    /// The secret as it was written (`whsec_…`). Every caller is a place it leaves its box.
    pub fn expose_secret(&self) -> &str {
        &self.0.text
    }

    fn key(&self) -> &[u8] {
        &self.0.key
    }

    /// The HMAC-SHA256 of `{id}.{timestamp}.{body}` under this secret.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        // HMAC accepts a key of any length; `parse` guarantees 24-64 bytes anyway.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.key()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, SecretError> {
        Self::parse(text)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl fmt::Display for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsec_[REDACTED]")
    }
}

/// The `webhook-signature` value for a message: `v1,<base64 MAC>` under each secret, in
/// order, space-separated. Empty when `secrets` is.
///
/// `id` must not contain `.` (the specification's rule: the signed content is split on it);
/// event ids are `evt_` + base64url, which has none. `body` is the exact bytes sent.
pub fn sign(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    debug_assert!(!id.contains('.'), "a webhook id must not contain '.'");
    secrets
        .iter()
        .map(|secret| {
            let mac = secret.mac(id, timestamp, body);
            format!("{SIGNATURE_VERSION},{}", STANDARD.encode(mac))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The three headers of a signed message, `(name, value)`: `webhook-id`,
/// `webhook-timestamp` and `webhook-signature`.
pub fn headers(id: &str, timestamp: i64, signature: &str) -> [(&'static str, String); 3] {
    [
        (HEADER_ID, id.to_owned()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, signature.to_owned()),
    ]
}

/// Why a message did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not an integer")]
    InvalidTimestamp,
    #[error("webhook-timestamp is more than 5 minutes old")]
    TimestampTooOld,
    #[error("webhook-timestamp is more than 5 minutes in the future")]
    TimestampTooNew,
    #[error("no signature matches")]
    NoMatchingSignature,
}

/// Checks a received message, as a consumer would: the three headers (names compared
/// case-insensitively; the first of each counts), a timestamp within
/// [`TIMESTAMP_TOLERANCE_SECONDS`] of `now` (unix seconds), and at least one `v1` signature
/// that matches under at least one of `secrets`. Signatures are compared in constant time.
pub fn verify<N, V>(
    secrets: &[WebhookSecret],
    headers: impl IntoIterator<Item = (N, V)>,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError>
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    let (mut id, mut timestamp, mut signature) = (None, None, None);
    for (name, value) in headers {
        let slot = match name.as_ref() {
            n if n.eq_ignore_ascii_case(HEADER_ID) => &mut id,
            n if n.eq_ignore_ascii_case(HEADER_TIMESTAMP) => &mut timestamp,
            n if n.eq_ignore_ascii_case(HEADER_SIGNATURE) => &mut signature,
            _ => continue,
        };
        slot.get_or_insert_with(|| value.as_ref().to_owned());
    }
    let id = id.ok_or(VerifyError::MissingHeader(HEADER_ID))?;
    let timestamp = timestamp.ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
    let signature = signature.ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;

    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    if now.saturating_sub(timestamp) > TIMESTAMP_TOLERANCE_SECONDS {
        return Err(VerifyError::TimestampTooOld);
    }
    if timestamp.saturating_sub(now) > TIMESTAMP_TOLERANCE_SECONDS {
        return Err(VerifyError::TimestampTooNew);
    }

    let expected: Vec<[u8; 32]> = secrets
        .iter()
        .map(|secret| secret.mac(&id, timestamp, body))
        .collect();
    let presented = signature
        .split(' ')
        .filter_map(|part| part.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, mac)| STANDARD.decode(mac).ok());
    let mut matched = false;
    for mac in presented {
        for expected in &expected {
            // Unequal lengths compare unequal without looking at the bytes.
            matched |= bool::from(mac.as_slice().ct_eq(expected.as_slice()));
        }
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const BODY: &[u8] = br#"{"id":"evt_1","type":"connection.created","data":{}}"#;

    fn secret() -> WebhookSecret {
        WebhookSecret::generate()
    }

    fn verify_now(secrets: &[WebhookSecret], id: &str, ts: i64, sig: &str, body: &[u8]) -> bool {
        verify(secrets, headers(id, ts, sig), body, NOW).is_ok()
    }

    /// Known answers from the Standard Webhooks reference libraries (the repository
    /// standard-webhooks/standard-webhooks): the JavaScript library's test "sign function
    /// works" (`libraries/javascript/src/webhook.test.ts`) and the Rust crate's `test_sign`
    /// (`standardwebhooks` 1.0.1, `src/lib.rs`). Both were also reproduced with the npm
    /// `standardwebhooks` 1.1.1 `Webhook.sign` in `interop/webhooks`. The npm package itself
    /// ships no tests and its README has no vector.
    #[test]
    fn known_answers_from_the_reference_libraries() {
        let cases = [
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                r#"{"email":"test@example.com","username":"test_user"}"#,
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            ),
        ];
        for (secret, id, ts, body, expected) in cases {
            let secret = WebhookSecret::parse(secret).expect("a 24-byte secret");
            assert_eq!(sign(&[secret], id, ts, body.as_bytes()), expected);
        }
    }

    #[test]
    fn round_trip() {
        let s = [secret()];
        let sig = sign(&s, "evt_1", NOW, BODY);
        assert!(sig.starts_with("v1,"), "{sig}");
        assert_eq!(sig.split(' ').count(), 1);
        assert_eq!(verify(&s, headers("evt_1", NOW, &sig), BODY, NOW), Ok(()));
    }

    #[test]
    fn rotation_signs_with_each_secret_and_either_verifies() {
        let (old, new) = ([secret()], [secret()]);
        let both = [old[0].clone(), new[0].clone()];
        let sig = sign(&both, "evt_2", NOW, BODY);
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2, "{sig}");
        assert_eq!(parts[0], sign(&old, "evt_2", NOW, BODY));
        assert_eq!(parts[1], sign(&new, "evt_2", NOW, BODY));
        assert!(verify_now(&old, "evt_2", NOW, &sig, BODY));
        assert!(verify_now(&new, "evt_2", NOW, &sig, BODY));
        assert!(verify_now(
            &[secret(), new[0].clone()],
            "evt_2",
            NOW,
            &sig,
            BODY
        ));
        assert!(!verify_now(&[secret()], "evt_2", NOW, &sig, BODY));
    }

    #[test]
    fn wrong_secret_tampering_and_stale_timestamps_are_rejected() {
        let s = [secret()];
        let sig = sign(&s, "evt_3", NOW, BODY);
        let reject = |secrets: &[WebhookSecret], id: &str, ts: i64, sig: &str, body: &[u8]| {
            verify(secrets, headers(id, ts, sig), body, NOW).expect_err("must not verify")
        };
        let wrong = secret();
        assert_eq!(
            reject(&[wrong], "evt_3", NOW, &sig, BODY),
            VerifyError::NoMatchingSignature
        );
        let tampered = br#"{"id":"evt_1","type":"connection.deleted","data":{}}"#;
        assert_eq!(
            reject(&s, "evt_3", NOW, &sig, tampered),
            VerifyError::NoMatchingSignature
        );
        assert_eq!(
            reject(&s, "evt_4", NOW, &sig, BODY),
            VerifyError::NoMatchingSignature,
            "the id is signed"
        );
        assert_eq!(
            reject(&s, "evt_3", NOW - 1, &sig, BODY),
            VerifyError::NoMatchingSignature,
            "the timestamp is signed"
        );

        let old = NOW - TIMESTAMP_TOLERANCE_SECONDS - 1;
        let old_sig = sign(&s, "evt_3", old, BODY);
        assert_eq!(
            reject(&s, "evt_3", old, &old_sig, BODY),
            VerifyError::TimestampTooOld
        );
        let edge = NOW - TIMESTAMP_TOLERANCE_SECONDS;
        let edge_sig = sign(&s, "evt_3", edge, BODY);
        assert!(verify_now(&s, "evt_3", edge, &edge_sig, BODY));
        let future = NOW + TIMESTAMP_TOLERANCE_SECONDS + 1;
        let future_sig = sign(&s, "evt_3", future, BODY);
        assert_eq!(
            reject(&s, "evt_3", future, &future_sig, BODY),
            VerifyError::TimestampTooNew
        );
    }

    #[test]
    fn malformed_signature_headers_are_rejected() {
        let s = [secret()];
        let sig = sign(&s, "evt_5", NOW, BODY);
        let (_, mac) = sig.split_once(',').expect("v1,mac");
        for bad in [
            String::new(),
            "v1,".to_owned(),
            sig[..8].to_owned(),
            format!("v2,{mac}"),
            format!("v1a,{mac}"),
            format!("v1,{}", &mac[..mac.len() - 4]),
            format!("v1 {mac}"),
        ] {
            assert!(!verify_now(&s, "evt_5", NOW, &bad, BODY), "{bad:?}");
        }
        // Other versions and junk around a good signature do not hurt it.
        let mixed = format!("v2,{mac} junk v1,AAAA {sig}");
        assert!(verify_now(&s, "evt_5", NOW, &mixed, BODY));
    }

    #[test]
    fn headers_are_found_by_name_case_insensitively() {
        let s = [secret()];
        let sig = sign(&s, "evt_6", NOW, BODY);
        let ts = NOW.to_string();
        let upper = [
            ("Webhook-Id", "evt_6"),
            ("WEBHOOK-TIMESTAMP", ts.as_str()),
            ("Webhook-Signature", sig.as_str()),
            ("content-type", "application/json"),
        ];
        assert_eq!(verify(&s, upper, BODY, NOW), Ok(()));
        for missing in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let partial = headers("evt_6", NOW, &sig)
                .into_iter()
                .filter(|(name, _)| *name != missing);
            assert_eq!(
                verify(&s, partial, BODY, NOW),
                Err(VerifyError::MissingHeader(missing))
            );
        }
        let bad_ts = [
            (HEADER_ID, "evt_6"),
            (HEADER_TIMESTAMP, "soon"),
            (HEADER_SIGNATURE, sig.as_str()),
        ];
        assert_eq!(
            verify(&s, bad_ts, BODY, NOW),
            Err(VerifyError::InvalidTimestamp)
        );
    }

    #[test]
    fn headers_helper_names_the_three_headers() {
        assert_eq!(
            headers("evt_7", 42, "v1,abc"),
            [
                ("webhook-id", "evt_7".to_owned()),
                ("webhook-timestamp", "42".to_owned()),
                ("webhook-signature", "v1,abc".to_owned()),
            ]
        );
    }

    #[test]
    fn bodies_are_bytes_not_text() {
        let s = [secret()];
        let body = [0xff, 0x00, 0xfe];
        let sig = sign(&s, "evt_8", NOW, &body);
        assert!(verify_now(&s, "evt_8", NOW, &sig, &body));
    }

    #[test]
    fn empty_secret_list_signs_nothing_and_verifies_nothing() {
        assert_eq!(sign(&[], "evt_9", NOW, BODY), "");
        let sig = sign(&[secret()], "evt_9", NOW, BODY);
        assert_eq!(
            verify(&[], headers("evt_9", NOW, &sig), BODY, NOW),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn generated_secrets_parse_back_and_differ() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a.expose_secret(), b.expose_secret());
        let text = a.expose_secret();
        assert!(text.starts_with("whsec_"), "{text}");
        // 32 bytes: 44 base64 characters, one `=` of padding.
        assert_eq!(text.len(), "whsec_".len() + 44);
        assert!(text.ends_with('='));
        let parsed = WebhookSecret::parse(text).expect("parses");
        assert_eq!(parsed.key(), a.key());
        assert_eq!(parsed.key().len(), GENERATED_SECRET_BYTES);
    }

    #[test]
    fn parse_accepts_missing_padding() {
        let padded = WebhookSecret::generate();
        let unpadded = padded.expose_secret().trim_end_matches('=');
        let parsed = WebhookSecret::parse(unpadded).expect("unpadded parses");
        assert_eq!(parsed.key(), padded.key());
    }

    #[test]
    fn parse_errors_say_what_is_wrong_without_the_value() {
        let b64 = |n: usize| STANDARD.encode(vec![7u8; n]);
        let cases = [
            (b64(32), SecretError::MissingPrefix),
            (format!("WHSEC_{}", b64(32)), SecretError::MissingPrefix),
            ("whsec_not base64!".to_owned(), SecretError::NotBase64),
            (format!("whsec_{}", URL_SAFE_SAMPLE), SecretError::NotBase64),
            (format!("whsec_{} ", b64(32)), SecretError::NotBase64),
            ("whsec_".to_owned(), SecretError::TooShort(0)),
            (format!("whsec_{}", b64(23)), SecretError::TooShort(23)),
            (format!("whsec_{}", b64(65)), SecretError::TooLong(65)),
        ];
        for (text, expected) in cases {
            let err = WebhookSecret::parse(&text).expect_err(&expected.to_string());
            assert_eq!(err, expected, "{text:?}");
            let message = err.to_string();
            let value = text.trim_start_matches("whsec_").trim();
            assert!(
                value.is_empty() || !message.contains(value),
                "{message} echoes the value"
            );
        }
        assert!(WebhookSecret::parse(&format!("whsec_{}", b64(24))).is_ok());
        assert!(WebhookSecret::parse(&format!("whsec_{}", b64(64))).is_ok());
    }

    /// `-` and `_` are base64url, not the standard alphabet the libraries decode.
    const URL_SAFE_SAMPLE: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-_AAAAAAAAAAA";

    #[test]
    fn debug_and_display_redact() {
        let s = WebhookSecret::generate();
        let value = s.expose_secret().trim_start_matches("whsec_").to_owned();
        for shown in [format!("{s:?}"), format!("{s}"), format!("{:?}", [&s])] {
            assert!(shown.contains("REDACTED"), "{shown}");
            assert!(!shown.contains(&value), "{shown}");
        }
    }
}
