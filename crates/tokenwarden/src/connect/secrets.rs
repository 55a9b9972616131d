//! The flow's random values and their hashes: link tokens, `state`, the browser cookie,
//! PKCE verifiers (RFC 7636) and OpenID nonces. All are 256 random bits from the thread's
//! CSPRNG, base64url without padding (43 characters: a valid PKCE verifier too).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// 256 random bits, base64url.
pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A session id: `cs_` and 128 random bits, base64url.
pub(crate) fn session_id() -> String {
    format!("cs_{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()))
}

/// SHA-256 of `value`, hex: what the store keeps of a link token, a `state` or a cookie.
pub(crate) fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The PKCE S256 challenge of `verifier`: base64url(SHA-256(verifier)).
pub(crate) fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The flow cookie's name for a `state`: a prefix of its hash, so several flows in one
/// browser keep separate cookies and the name reveals nothing of the state.
pub fn cookie_name(state: &str) -> String {
    format!("tw_connect_{}", &hash(state)[..16])
}

/// True for what [`random_token`] could have made (and nothing a database or a log
/// should ever be asked about): 16 to 128 base64url characters.
pub(crate) fn plausible_token(value: &str) -> bool {
    (16..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_challenge() {
        // The verifier and challenge of RFC 7636, Appendix B.
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn tokens_are_long_random_and_valid_verifiers() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        // RFC 7636 §4.1: 43-128 characters of the unreserved set.
        assert_eq!(a.len(), 43);
        assert!(plausible_token(&a));
        assert!(session_id().starts_with("cs_") && session_id().len() == 25);
        assert!(!plausible_token("short"));
        assert!(!plausible_token("has/slash-and-is-long-enough"));
    }

    #[test]
    fn cookie_names_depend_on_the_state_only_through_its_hash() {
        let state = random_token();
        let name = cookie_name(&state);
        assert!(name.starts_with("tw_connect_") && !name.contains(&state[..8]));
        assert_eq!(name, cookie_name(&state));
        assert_ne!(name, cookie_name(&random_token()));
    }
}
