//! Secret newtypes: access tokens, refresh tokens and client secrets.
//!
//! They redact `Debug`, implement no `Serialize` and no `Display`, and zeroize their bytes on
//! drop. The one accessor is `expose_secret()`, so every place a secret is read can be found
//! with grep. This module does not encrypt anything: that is `crypto`'s job.
//!
//! A secret's bytes live once, behind an `Arc`: a clone shares them instead of copying them,
//! and they are wiped when the last clone drops. That is what lets the token cache hand out a
//! cached token without allocating (a copy per hit cost an allocation and a wipe of the copy;
//! see BENCHMARKS.md), and it leaves fewer copies of a secret in memory, not more.

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The shared bytes of a secret, wiped (spare capacity included) when the last handle drops.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Bytes(String);

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name(Arc<Bytes>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Arc::new(Bytes(value.into())))
            }

            /// The secret itself. Every caller of this is a place the secret leaves its box.
            pub fn expose_secret(&self) -> &str {
                &self.0.0
            }

            /// True for the empty string.
            pub fn is_empty(&self) -> bool {
                self.0.0.is_empty()
            }

            /// Equality in time that depends only on the lengths (`subtle`), for comparing a
            /// stored and a presented secret.
            pub fn ct_eq(&self, other: &Self) -> bool {
                self.expose_secret()
                    .as_bytes()
                    .ct_eq(other.expose_secret().as_bytes())
                    .into()
            }
        }

        /// Wipes the bytes now if this is their only handle; otherwise lets go of them (this
        /// value becomes empty) and the last clone to drop wipes them.
        impl Zeroize for $name {
            fn zeroize(&mut self) {
                match Arc::get_mut(&mut self.0) {
                    Some(bytes) => bytes.zeroize(),
                    None => *self = Self::new(String::new()),
                }
            }
        }

        // Dropping the last handle drops `Bytes`, which zeroizes.
        impl ZeroizeOnDrop for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::new)
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
    fn clones_share_the_bytes_and_zeroize_lets_go() {
        let token = AccessToken::new("shared-secret");
        let mut copy = token.clone();
        assert!(
            std::ptr::eq(token.expose_secret(), copy.expose_secret()),
            "a clone shares the bytes"
        );
        copy.zeroize();
        assert!(copy.is_empty(), "a zeroized handle holds nothing");
        assert_eq!(
            token.expose_secret(),
            "shared-secret",
            "other handles keep the secret"
        );
        let mut only = RefreshToken::new(String::from("only-handle"));
        only.zeroize();
        assert!(only.is_empty());
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
