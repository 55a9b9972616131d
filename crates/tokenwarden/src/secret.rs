//! Secret newtypes: access tokens, refresh tokens and client secrets.
//!
//! They redact `Debug`, implement no `Serialize` and no `Display`, and zeroize their bytes on
//! drop. The one accessor is `expose_secret()`, so every place a secret is read can be found
//! with grep. This module does not encrypt anything: that is `crypto`'s job.

use std::fmt;

use subtle::ConstantTimeEq;
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

            /// Equality in time that depends only on the lengths (`subtle`), for comparing a
            /// stored and a presented secret.
            pub fn ct_eq(&self, other: &Self) -> bool {
                self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
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
    fn secrets_zeroize_on_drop() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<AccessToken>();
        zeroized_on_drop::<RefreshToken>();
        zeroized_on_drop::<ClientSecret>();
    }

    #[test]
    fn ct_eq_matches_eq() {
        let eq = |a: &str, b: &str| RefreshToken::new(a).ct_eq(&RefreshToken::new(b));
        assert!(eq("abc", "abc"));
        assert!(eq("", ""));
        assert!(!eq("abc", "abd"));
        assert!(!eq("abc", "abcd"));
        assert!(!eq("abcd", "abc"));
        assert!(AccessToken::new("x").ct_eq(&AccessToken::new("x")));
        assert!(!ClientSecret::new("x").ct_eq(&ClientSecret::new("y")));
    }
}
