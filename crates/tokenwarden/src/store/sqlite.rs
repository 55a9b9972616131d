//! TODO: SQLite store.

/// The embedded SQLite store.
#[derive(Debug)]
pub struct SqliteStore;
