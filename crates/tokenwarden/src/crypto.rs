//! Encryption at rest: the only module that touches key material.
//!
//! Every secret field is sealed on its own with AES-256-GCM. The envelope is
//!
//! ```text
//! alg (1 byte) ‖ key-id length (1 byte) ‖ key id ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! and the associated data binds it to the algorithm, the key id, the field and the
//! connection key, so a ciphertext copied into another row or another column fails to open.
//! A [`KeyRing`] holds one active key (used for new ciphertexts) and any number of older keys
//! (used only to open). Opening errors are deliberately opaque. This module knows nothing of
//! databases; stores call [`KeyRing::seal`] and [`KeyRing::open`].

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use crate::connection::ConnectionKey;

/// Algorithm byte for AES-256-GCM with a 96-bit random nonce.
const ALG_AES256_GCM: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"tokenwarden/secret/v1";

/// Which secret field a ciphertext belongs to (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    AccessToken,
    RefreshToken,
    /// A connect session's PKCE verifier and nonce (bound to the session id).
    ConnectFlow,
}

impl Field {
    fn tag(self) -> u8 {
        match self {
            Self::AccessToken => 1,
            Self::RefreshToken => 2,
            Self::ConnectFlow => 3,
        }
    }
}

/// A key identifier: 1–32 characters of `A-Z a-z 0-9 _ - .`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(value: &str) -> Result<Self, KeyError> {
        let ok = !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(KeyError::BadKeyId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Problems building a key ring. They name the key id, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key id must be 1-32 characters of A-Z, a-z, 0-9, '_', '-' or '.'")]
    BadKeyId,
    #[error("key {0} is not valid base64 of exactly 32 bytes")]
    BadKey(String),
    #[error("the active key {0} is not among the configured keys")]
    MissingActiveKey(String),
}

/// A ciphertext could not be opened. Carries no detail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored secret could not be decrypted")]
pub struct DecryptError;

/// The encryption keys: one active for sealing, all of them for opening.
pub struct KeyRing {
    active: KeyId,
    ciphers: HashMap<KeyId, Aes256Gcm>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&str> = self.ciphers.keys().map(KeyId::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("key_ids", &ids)
            .finish()
    }
}

impl KeyRing {
    /// Builds a key ring from `(key id, base64 of 32 bytes)` pairs.
    pub fn from_base64<'a>(
        active: &str,
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, KeyError> {
        let active = KeyId::parse(active)?;
        let mut ciphers = HashMap::new();
        for (id, encoded) in keys {
            let id = KeyId::parse(id)?;
            let bytes = Zeroizing::new(
                BASE64
                    .decode(encoded.trim())
                    .map_err(|_| KeyError::BadKey(id.0.clone()))?,
            );
            let cipher =
                Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::BadKey(id.0.clone()))?;
            ciphers.insert(id, cipher);
        }
        if !ciphers.contains_key(&active) {
            return Err(KeyError::MissingActiveKey(active.0));
        }
        Ok(Self { active, ciphers })
    }

    /// A new random key, base64-encoded, for configuration files.
    pub fn generate_key_base64() -> String {
        let mut key = Key::<Aes256Gcm>::generate();
        let encoded = BASE64.encode(key.as_slice());
        zeroize::Zeroize::zeroize(key.as_mut_slice());
        encoded
    }

    /// The key id new ciphertexts are sealed with.
    pub fn active_key_id(&self) -> &KeyId {
        &self.active
    }

    /// The configured key ids.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.ciphers.keys()
    }

    /// Seals `plaintext` under the active key, bound to `key` and `field`.
    pub fn seal(&self, plaintext: &[u8], key: &ConnectionKey, field: Field) -> Vec<u8> {
        let cipher = &self.ciphers[&self.active];
        let kid = self.active.0.as_bytes();
        let nonce = Nonce::generate();
        let aad = associated_data(kid, key, field);
        // Encrypting into a Vec cannot fail for messages under GCM's 64 GiB limit.
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM encryption of a token cannot fail"));
        let mut out = Vec::with_capacity(2 + kid.len() + NONCE_LEN + sealed.len());
        out.push(ALG_AES256_GCM);
        out.push(u8::try_from(kid.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(kid);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens an envelope sealed for `key` and `field`.
    pub fn open(
        &self,
        envelope: &[u8],
        key: &ConnectionKey,
        field: Field,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let parts = Envelope::parse(envelope).ok_or(DecryptError)?;
        let kid = std::str::from_utf8(parts.kid).map_err(|_| DecryptError)?;
        let cipher = self
            .ciphers
            .get(&KeyId(kid.to_owned()))
            .ok_or(DecryptError)?;
        let nonce = Nonce::try_from(parts.nonce).map_err(|_| DecryptError)?;
        let aad = associated_data(parts.kid, key, field);
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: parts.body,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| DecryptError)
    }

    /// Opens a UTF-8 secret.
    pub fn open_string(
        &self,
        envelope: &[u8],
        key: &ConnectionKey,
        field: Field,
    ) -> Result<String, DecryptError> {
        let bytes = self.open(envelope, key, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecryptError)
    }

    /// True when `envelope` is not sealed under the active key (a key rotation candidate).
    pub fn needs_reseal(&self, envelope: &[u8]) -> bool {
        envelope_key_id(envelope) != Some(self.active.as_str())
    }
}

/// The key id an envelope was sealed with, if it is well formed. Not secret.
pub fn envelope_key_id(envelope: &[u8]) -> Option<&str> {
    Envelope::parse(envelope).and_then(|e| std::str::from_utf8(e.kid).ok())
}

struct Envelope<'a> {
    kid: &'a [u8],
    nonce: &'a [u8],
    body: &'a [u8],
}

impl<'a> Envelope<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (&alg, rest) = bytes.split_first()?;
        if alg != ALG_AES256_GCM {
            return None;
        }
        let (&kid_len, rest) = rest.split_first()?;
        let kid_len = usize::from(kid_len);
        if kid_len == 0 || rest.len() < kid_len + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (kid, rest) = rest.split_at(kid_len);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        Some(Self { kid, nonce, body })
    }
}

fn associated_data(kid: &[u8], key: &ConnectionKey, field: Field) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    for part in [
        AAD_DOMAIN,
        &[ALG_AES256_GCM],
        kid,
        &[field.tag()],
        key.user_id.as_str().as_bytes(),
        key.provider.as_str().as_bytes(),
        key.account_id.as_str().as_bytes(),
    ] {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(active: &str) -> KeyRing {
        let k1 = BASE64.encode([1u8; 32]);
        let k2 = BASE64.encode([2u8; 32]);
        KeyRing::from_base64(active, [("k1", k1.as_str()), ("k2", k2.as_str())])
            .expect("valid ring")
    }

    fn key(user: &str, account: &str) -> ConnectionKey {
        ConnectionKey::parse(user, "tiktok", account).expect("valid key")
    }

    #[test]
    fn rejects_bad_configuration() {
        assert_eq!(
            KeyRing::from_base64("k1", [("k1", "c2hvcnQ=")]).err(),
            Some(KeyError::BadKey("k1".into()))
        );
        let good = KeyRing::generate_key_base64();
        assert_eq!(
            KeyRing::from_base64("k9", [("k1", good.as_str())]).err(),
            Some(KeyError::MissingActiveKey("k9".into()))
        );
        assert!(KeyRing::from_base64("bad id", [("bad id", good.as_str())]).is_err());
    }

    #[test]
    fn debug_shows_ids_only() {
        let shown = format!("{:?}", ring("k1"));
        assert!(shown.contains("k1") && shown.contains("k2"));
        assert!(!shown.contains("AQEB"), "no key bytes: {shown}");
    }

    #[test]
    fn rotation_reads_old_key_and_reseals_under_new() {
        let k = key("u", "a");
        let old = ring("k1").seal(b"secret", &k, Field::AccessToken);
        let new_ring = ring("k2");
        assert!(new_ring.needs_reseal(&old));
        assert_eq!(
            &*new_ring.open(&old, &k, Field::AccessToken).expect("opens"),
            b"secret"
        );
        let resealed = new_ring.seal(b"secret", &k, Field::AccessToken);
        assert_eq!(envelope_key_id(&resealed), Some("k2"));
        assert!(!new_ring.needs_reseal(&resealed));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn seal_open_round_trip(secret in proptest::collection::vec(any::<u8>(), 0..512),
                                user in "[a-z0-9]{1,12}", account in "[a-z0-9]{1,12}") {
            let r = ring("k1");
            let k = key(&user, &account);
            let sealed = r.seal(&secret, &k, Field::RefreshToken);
            prop_assert!(!sealed.windows(secret.len().max(4)).any(|w| w == secret.as_slice()) || secret.len() < 4);
            prop_assert_eq!(r.open(&sealed, &k, Field::RefreshToken).expect("opens").to_vec(), secret);
        }

        #[test]
        fn tampering_is_rejected(secret in "[ -~]{1,64}", flip in any::<prop::sample::Index>(),
                                 bit in 0u8..8) {
            let r = ring("k1");
            let k = key("user", "acct");
            let sealed = r.seal(secret.as_bytes(), &k, Field::AccessToken);
            // Wrong row, wrong field, wrong provider.
            prop_assert!(r.open(&sealed, &key("user2", "acct"), Field::AccessToken).is_err());
            prop_assert!(r.open(&sealed, &key("user", "acct2"), Field::AccessToken).is_err());
            prop_assert!(r.open(&sealed, &k, Field::RefreshToken).is_err());
            let other = ConnectionKey::parse("user", "reddit", "acct").expect("key");
            prop_assert!(r.open(&sealed, &other, Field::AccessToken).is_err());
            // Any flipped bit.
            let mut bad = sealed.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(r.open(&bad, &k, Field::AccessToken).is_err());
            // Truncation.
            prop_assert!(r.open(&sealed[..sealed.len() - 1], &k, Field::AccessToken).is_err());
            // Unknown key id: a ring without k1.
            let only_k2 = KeyRing::from_base64("k2", [("k2", BASE64.encode([2u8; 32]).as_str())]).expect("ring");
            prop_assert!(only_k2.open(&sealed, &k, Field::AccessToken).is_err());
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = ring("k1").open(&bytes, &key("u", "a"), Field::AccessToken);
            let _ = envelope_key_id(&bytes);
        }
    }
}
