//! Test support for tokenwarden's own tests; never part of the library an embedder builds.
//!
//! It owns the store conformance suite ([`conformance`]: the checks every `Store` backend
//! runs, listed once), the fixtures store tests share ([`test_keys`], [`at`],
//! [`sample_connection`]), and a fault-injecting store wrapper ([`FailingWrites`]). It has
//! no backend and no test of the library itself.

// `fixtures.rs` and `failing_writes.rs` are also compiled into the library's unit tests, where
// they name the library's items by `crate::` paths; these imports make the same paths resolve
// here.
use tokenwarden::{connection, crypto, secret, store};

pub mod conformance;
mod failing_writes;
mod fixtures;

pub use failing_writes::FailingWrites;
pub use fixtures::{at, sample_connection, test_keys};
