//! API-key authentication for the `/v1` routes.
//!
//! Configured keys are kept only as SHA-256 digests (plain keys are hashed at start). A
//! presented key is hashed and compared against every digest with `subtle`, without stopping
//! at the first match, so timing reveals neither which key matched nor how much of it.
//! Keys are high-entropy random strings, so a fast hash is enough (no password KDF).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of a hashed key in `auth.api_keys`.
pub const SHA256_PREFIX: &str = "sha256:";
/// Shortest plain key accepted in configuration.
pub const MIN_PLAIN_KEY_LEN: usize = 16;

/// The accepted API keys, as digests.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .finish()
    }
}

impl ApiKeys {
    /// Builds the set from configured entries (plain or `sha256:<hex>`).
    pub fn from_config<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let digests = entries
            .into_iter()
            .map(parse_configured_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { digests })
    }

    /// Checks an `Authorization` header value: exactly `Bearer <key>`.
    pub fn check_header(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1); anything else must match exactly,
        // so "Bearer  key" or a trailing space is a different key and fails.
        let Some((scheme, key)) = header.split_at_checked(7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") || key.is_empty() {
            return false;
        }
        self.check_key(key)
    }

    /// True when `key` is one of the configured keys. Constant time in the key's content.
    pub fn check_key(&self, key: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let mut ok = subtle::Choice::from(0);
        for digest in &self.digests {
            ok |= digest.ct_eq(&presented);
        }
        ok.into()
    }
}

/// Parses one `auth.api_keys` entry into its digest. The error never contains the entry.
pub fn parse_configured_key(entry: &str) -> Result<[u8; 32], String> {
    if let Some(digest) = entry.strip_prefix(SHA256_PREFIX) {
        let mut out = [0u8; 32];
        return hex::decode_to_slice(digest, &mut out)
            .map(|()| out)
            .map_err(|_| "sha256: must be followed by 64 hexadecimal digits".to_owned());
    }
    if entry.chars().count() < MIN_PLAIN_KEY_LEN {
        return Err(format!(
            "a plain key must be at least {MIN_PLAIN_KEY_LEN} characters"
        ));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a plain key must not contain whitespace or control characters".to_owned());
    }
    Ok(Sha256::digest(entry.as_bytes()).into())
}

/// `sha256:<hex>` for a key, the form to put in configuration instead of the key itself.
pub fn hash_for_config(key: &str) -> String {
    format!(
        "{SHA256_PREFIX}{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// A new random API key: `tw_` and 64 hex digits (256 bits).
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("tw_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_match() {
        let key = generate_key();
        let keys = ApiKeys::from_config([hash_for_config(&key).as_str(), "plain-key-0123456789"])
            .expect("valid");
        assert!(keys.check_key(key.as_bytes()));
        assert!(keys.check_key(b"plain-key-0123456789"));
        assert!(!keys.check_key(b"plain-key-012345678"));
        assert!(keys.check_header(Some(format!("Bearer {key}").as_bytes())));
        assert!(keys.check_header(Some(format!("bearer {key}").as_bytes())));
        assert!(!keys.check_header(Some(format!("Bearer  {key}").as_bytes())));
        assert!(!keys.check_header(Some(format!("Bearer {key} ").as_bytes())));
        assert!(!keys.check_header(Some(format!("Basic {key}").as_bytes())));
        assert!(!keys.check_header(Some(key.as_bytes())));
        assert!(!keys.check_header(Some(b"Bearer ")));
        assert!(!keys.check_header(None));
    }

    #[test]
    fn bad_entries_are_rejected_without_echo() {
        assert!(parse_configured_key("short").is_err());
        let err = parse_configured_key("sha256:zz").expect_err("bad hex");
        assert!(!err.contains("zz"));
        assert!(parse_configured_key(&hash_for_config("x")).is_ok());
    }

    /// Only hexadecimal digits: the hand-written decoder (`u8::from_str_radix` on pairs)
    /// took `+f` for 0x0f, so 64 characters that are not a digest were accepted.
    #[test]
    fn hashed_entries_are_exactly_64_hex_digits() {
        let abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hash_for_config("abc"), abc);
        let digest = parse_configured_key(abc).expect("lowercase");
        assert_eq!(
            parse_configured_key(&abc.to_uppercase().replace("SHA256", "sha256")),
            Ok(digest)
        );
        for bad in [
            format!("sha256:{}", "+f".repeat(32)),
            format!("sha256:{}", "f".repeat(63)),
            format!("sha256:{}", "f".repeat(65)),
            format!("sha256:{}é", "f".repeat(62)),
        ] {
            assert!(parse_configured_key(&bad).is_err(), "{bad}");
        }
        let key = generate_key();
        let digits = key.strip_prefix("tw_").expect("prefix");
        assert_eq!(digits.len(), 64);
        assert!(
            digits
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
