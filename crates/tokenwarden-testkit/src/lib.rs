//! Test support for tokenwarden's own tests; never part of the library an embedder builds.
//!
//! It owns the store conformance suite ([`conformance`]: the checks every `Store` backend
//! runs, listed once), the fixtures store tests share ([`test_keys`], [`at`],
//! [`sample_connection`]), a fault-injecting store wrapper ([`FailingWrites`]) and how a test
//! finds the PostgreSQL server it was built to use ([`postgres_url`]). It has no backend and
//! no test of the library itself.

// `fixtures.rs` and `failing_writes.rs` are also compiled into the library's unit tests, where
// they name the library's items by `crate::` paths; these imports make the same paths resolve
// here.
use tokenwarden::{connect, connection, crypto, secret, store, webhooks};

pub mod conformance;
mod failing_writes;
mod fixtures;
pub mod interop;

pub use failing_writes::FailingWrites;
pub use fixtures::{
    EVENTS_OF_A1_NEWEST_FIRST, at, events_before_migration_7, sample_connection, test_keys,
};

/// The variable that names the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "TOKENWARDEN_TEST_POSTGRES_URL";

/// The PostgreSQL server to test against, from `TOKENWARDEN_TEST_POSTGRES_URL`.
///
/// A PostgreSQL test is built as ignored unless that variable was set when it was compiled
/// (see `build.rs` of the crate that holds it), so one that runs expects the server: without
/// the variable this panics, and the test fails instead of passing untested.
pub fn postgres_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} is not set, but this test was built with PostgreSQL enabled: \
             set it (scripts/test does) or rebuild without it to mark the test ignored"
        ),
    }
}
