//! Secret newtypes: access tokens, refresh tokens and client secrets.
//!
//! They redact `Debug`, implement no `Serialize` and no `Display`, and zeroize their bytes on
//! drop. The one accessor is `expose_secret()`, so every place a secret is read can be found
//! with grep. This module does not encrypt anything: that is `crypto`'s job.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name(String);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret itself. Every caller of this is a place the secret leaves its box.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }

            /// True for the empty string.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// Constant-time equality, for comparing a stored and a presented secret.
            pub fn ct_eq(&self, other: &Self) -> bool {
                constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self)
            }
        }
    };
}

secret_type!(
    /// An OAuth access token.
    AccessToken
);
secret_type!(
    /// An OAuth refresh token.
    RefreshToken
);
secret_type!(
    /// A provider's client secret, from configuration.
    ClientSecret
);

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let token = AccessToken::new("very-secret-value");
        let shown = format!("{token:?} {:?}", Some(RefreshToken::new("rt-secret")));
        assert!(!shown.contains("very-secret-value"));
        assert!(!shown.contains("rt-secret"));
        assert!(shown.contains("AccessToken([REDACTED])"));
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(AccessToken::new("x").ct_eq(&AccessToken::new("x")));
    }
}
