//! Persistence: the [`Store`] trait every backend implements, and its shared types.
//!
//! A store persists connections with their secrets sealed by the [`KeyRing`] it was built
//! with (see `crypto`); callers hand it and get back plaintext [`Connection`]s. Writes that
//! follow a refresh are compare-and-swap on [`ConnectionMeta::version`], so a refresh never
//! overwrites an import or delete that happened while it ran. Every backend passes the
//! conformance suite in the `tokenwarden-testkit` crate (run by each backend's tests).
//!
//! Refresh leases (see [`Store::try_lease`]) are tied to their owner's liveness where the
//! backend can tell: a lease whose owner is gone is free at once, not when it expires. On
//! SQLite one serving instance holds the database ([`Role::Instance`]) and frees at open
//! the leases its dead predecessors left; on PostgreSQL every process holds an advisory lock
//! while it lives and a lease whose owner's lock is gone may be taken (see `postgres`). The
//! expiry stays the fallback wherever liveness is unknown.
//!
//! Stores also keep the durable webhook outbox (see [`crate::webhooks::outbox`]): with the
//! outbox switched on ([`Store::set_outbox`]), the writes that change a connection or end a
//! connect session in failure write the events they raise in the same transaction, and the
//! delivery methods ([`Store::dispatch_events`] to [`Store::webhook_queue_stats`]) turn events
//! into deliveries that one instance at a time attempts. Outbox times are kept to the
//! millisecond (connections keep whole seconds).
//!
//! [`KeyRing`]: crate::crypto::KeyRing

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use crate::connect::session::{ClaimOutcome, ConnectSession, Finish, FlowStart, OpenOutcome};
use crate::connection::{
    Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, ProviderName, UserId,
};
use crate::crypto::KeyRing;
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryPage, DeliveryQuery, DeliveryView, NewEvent, Prior,
    StoredEvent, WebhookQueueStats,
};

// The test kit's fixtures and fault-injecting store, compiled into the library's own unit
// tests only (they cannot use the test kit crate, whose `Store` is another build's trait).
#[cfg(test)]
#[allow(dead_code, reason = "the unit tests use part of the test kit")]
#[path = "../../../tokenwarden-testkit/src/failing_writes.rs"]
pub(crate) mod failing_writes;
#[cfg(test)]
#[allow(dead_code, reason = "the unit tests use part of the test kit")]
#[path = "../../../tokenwarden-testkit/src/fixtures.rs"]
pub(crate) mod fixtures;
mod liveness;
pub mod memory;
pub mod postgres;
mod rows;
pub mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Opens the store `database_url` names as a [`Role::Tool`], bringing its schema up to
/// date: SQLite for `sqlite:` URLs (see [`SqliteStore::connect`]), PostgreSQL for
/// `postgres://` and `postgresql://` (see [`PgStore::connect`]). Anything else is an error
/// that does not repeat the URL, which may hold a password. A process that serves (takes
/// refresh leases and runs the scheduler for good) opens with [`connect_as`] and
/// [`Role::Instance`].
pub async fn connect(database_url: &str, keys: Arc<KeyRing>) -> Result<Arc<dyn Store>, StoreError> {
    connect_as(database_url, keys, Role::Tool).await
}

/// [`connect`], saying what the opening process is to the database. On PostgreSQL the role
/// changes nothing (any number of instances and tools share it); on SQLite a
/// [`Role::Instance`] open fails with [`StoreError::InUse`] while another instance holds the
/// file, and frees the refresh leases that earlier instances left behind.
pub async fn connect_as(
    database_url: &str,
    keys: Arc<KeyRing>,
    role: Role,
) -> Result<Arc<dyn Store>, StoreError> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(
            SqliteStore::connect_as(database_url, keys, role).await?,
        ))
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(database_url, keys).await?))
    } else {
        Err(StoreError::Database(
            "database_url must start with sqlite:, postgres:// or postgresql://".to_owned(),
        ))
    }
}

/// What the process opening a store is to its database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// A serving instance (`tokenwarden serve`, or an application embedding the library):
    /// it takes refresh leases and runs the scheduler. SQLite has at most one at a time per
    /// database file; opening a second fails at once.
    Instance,
    /// A tool opened beside the instance (the CLI's `connections list`, `import`,
    /// `keys rotate`, …): it works while an instance runs and never frees leases it does not
    /// own. The default.
    #[default]
    Tool,
}

/// Store failures. A database error is never reported as "not found".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The connection does not exist (for writes that need it to).
    #[error("connection not found")]
    NotFound,
    /// The connection changed since it was read (version mismatch).
    #[error("connection was modified concurrently")]
    Conflict,
    /// A stored secret could not be decrypted (missing key, tampering).
    #[error("stored secret could not be decrypted")]
    Decrypt,
    /// A list cursor that this store did not produce.
    #[error("invalid cursor")]
    BadCursor,
    /// The database failed. The message never contains a secret.
    #[error("database error: {0}")]
    Database(String),
    /// Another serving instance holds this SQLite database (see [`Role::Instance`]).
    #[error(
        "{} is already served by another tokenwarden instance{}, which holds {}; SQLite \
         serves one instance per database: stop that one first, or use PostgreSQL to run \
         several",
        .database.display(),
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        .lock_file.display()
    )]
    InUse {
        /// The database file.
        database: std::path::PathBuf,
        /// The lock file beside it that the running instance holds.
        lock_file: std::path::PathBuf,
        /// The process id the running instance wrote into the lock file, when readable.
        holder: Option<u32>,
    },
}

/// Whether a put created a connection or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

/// Filters and paging for [`Store::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub provider: Option<ProviderName>,
    pub user_id: Option<UserId>,
    pub status: Option<ConnectionStatus>,
    /// Page size; stores clamp it to 1..=1000.
    pub limit: u32,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One page of connections, ordered by key.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<ConnectionMeta>,
    /// Set when more items may follow.
    pub next_cursor: Option<String>,
}

/// How many ciphertexts use each key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub key_id: String,
    pub ciphertexts: u64,
}

/// A connection store.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The connection with decrypted secrets, or `None`.
    async fn get(&self, key: &ConnectionKey) -> Result<Option<Connection>, StoreError>;

    /// Creates or replaces a connection (an import). On replace, `created_at` is kept and
    /// everything else comes from `conn`; the stored version moves past the old one. Returns
    /// the stored connection's metadata. With the outbox on, writes `connection.created` or
    /// `connection.reconnected` in the same transaction, as
    /// [`connection_events`](crate::webhooks::outbox::connection_events) says for a
    /// [`Write::Put`](crate::webhooks::outbox::Write::Put) over the row as it was.
    async fn put(&self, conn: &Connection) -> Result<(ConnectionMeta, PutOutcome), StoreError>;

    /// Creates `conn` only if no connection has its key, atomically: of several callers
    /// (in any number of processes) inserting the same key at once, exactly one gets
    /// `Some` with the stored metadata; the others get `None` and the existing row is left
    /// untouched. Never replaces. Used to create an application token's row once, so its
    /// lease can keep the first token request single flight across instances. With the
    /// outbox on, a created row raises what a put creating it would (nothing for an
    /// application token's row).
    async fn insert_if_absent(
        &self,
        conn: &Connection,
    ) -> Result<Option<ConnectionMeta>, StoreError>;

    /// Writes `conn` if the stored version still equals `conn.meta.version`, and returns the
    /// stored metadata with the new version. `Conflict` when it changed, `NotFound` when it
    /// was deleted. Durable (committed) when it returns. With the outbox on, the events the
    /// write raises (`connection.refresh_failing`, `.needs_reconnect`, `.recovered`: see
    /// [`connection_events`](crate::webhooks::outbox::connection_events), from the row as it
    /// was under the same transaction) are committed with it; a write that fails its
    /// compare-and-swap writes no event.
    async fn update(&self, conn: &Connection) -> Result<ConnectionMeta, StoreError>;

    /// [`Store::update`] for several connections at once, in one durable commit where the
    /// backend has transactions (group commit: one fsync for the batch instead of one per
    /// row). Each connection gets its own answer, in order: a `Conflict` or `NotFound` for one
    /// does not stop the others. The outer error means nothing of the batch was written.
    /// The same key may appear twice; the writes then apply in order (each one's events are
    /// computed against the row the write before it left). With the outbox on, the events
    /// of the batch's successful writes are in the same commit.
    async fn update_batch(
        &self,
        conns: &[Connection],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(conns.len());
        for conn in conns {
            out.push(self.update(conn).await);
        }
        Ok(out)
    }

    /// [`Store::update_batch`] from a writer that read each row at the version it expects
    /// (`conns[i].meta.version`) and says how it was then: `was[i]`, its status and failure
    /// count, all the outbox's event rules read (the refresh loop knows them: it holds the
    /// row it refreshed). A row is written only at that version, so when it is written its
    /// old state is `was[i]`, and a backend can decide the events without reading the old
    /// rows: a batch that raises none is the same statement as with the outbox off. The
    /// default ignores `was`, as do the backends when it is not one entry per connection or
    /// a key repeats (those batches read the rows, as `update_batch` does).
    async fn update_batch_from(
        &self,
        conns: &[Connection],
        was: &[Prior],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let _ = was;
        self.update_batch(conns).await
    }

    /// Deletes a connection; false when there was none. With the outbox on, a delete that
    /// found one writes `connection.deleted` (with the row's last version) with it.
    async fn delete(&self, key: &ConnectionKey) -> Result<bool, StoreError>;

    /// Lists connection metadata (no secrets, no decryption), ordered by key.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError>;

    /// Connections per status.
    async fn count_by_status(&self) -> Result<Vec<(ConnectionStatus, u64)>, StoreError>;

    /// Ciphertexts per key id.
    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Takes the refresh lease on one connection for `owner` until `until`, if it is free,
    /// expired, already `owner`'s, or held by an owner the backend knows to be gone (a dead
    /// process: see the module docs). Atomic: of several instances asking at once, one
    /// wins. A successful [`Store::update`] releases it.
    async fn try_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Extends `owner`'s lease to `until`, only if `owner` still holds it (expired or not):
    /// never takes a free lease, so a renewal racing the write that ended the refresh (and
    /// released the lease) cannot take it again. False when `owner` does not hold it.
    async fn renew_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Releases `owner`'s lease (a no-op when someone else holds it).
    async fn release_lease(&self, key: &ConnectionKey, owner: &str) -> Result<(), StoreError>;

    /// Claims up to `limit` active connections whose `next_refresh_at` is due at `now` and
    /// whose lease is free, expired or held by an owner known to be gone (rows `owner`
    /// itself holds are not claimed again),
    /// leasing them to `owner` until `until`; earliest first. Each comes back as written by
    /// the claim, read under the lease it took, so the refresh needs no second read.
    /// Several instances claiming at once never get the same connection.
    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// The earliest time an active, scheduled connection becomes claimable: its
    /// `next_refresh_at`, or its lease's expiry when that is later (unless the lease's owner
    /// is known to be gone). `None` when nothing is scheduled.
    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Sizes of the refresh schedule, for metrics.
    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError>;

    /// Changes other processes make to connections, for invalidating what this process
    /// caches: `None` when the backend cannot report them (it serves one process, or has no
    /// notification channel), and then cached tokens are trusted for `refresh.cache_ttl`
    /// only. Reports may come for this process's own writes too (compare versions), may be
    /// late by the notification's delivery time, and are replaced by [`Change::All`] when
    /// some may have been lost.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Stores a new connect session (state `pending`) with the SHA-256 (hex) of its link's
    /// token. Ids and token hashes are unique.
    async fn insert_connect_session(
        &self,
        session: &ConnectSession,
        token_hash: &str,
    ) -> Result<(), StoreError>;

    /// A connect session by id.
    async fn connect_session(&self, id: &str) -> Result<Option<ConnectSession>, StoreError>;

    /// Opens the session whose link token hashes to `token_hash`, atomically: only a
    /// `pending` session unexpired at `now` is opened (state `opened`, `opened_at = now`,
    /// `flow` written with its secrets sealed); any other answer changes nothing. Of two
    /// browsers opening one link at once, exactly one gets [`OpenOutcome::Opened`].
    async fn open_connect_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        flow: &FlowStart,
    ) -> Result<OpenOutcome, StoreError>;

    /// Claims the callback for the session whose `state` hashes to `state_hash`,
    /// atomically: only an `opened` session, unexpired at `now`, whose browser hash equals
    /// `browser_hash`, becomes `exchanging` and hands out its (opened) flow secrets; any other
    /// answer changes nothing. When several conditions fail the answer is the first of
    /// unknown, used, other browser, expired. Of two callbacks with one state, exactly one
    /// gets [`ClaimOutcome::Claimed`].
    async fn claim_connect_callback(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Ends an unfinished session (`pending`, `opened` or `exchanging`) as `finish` says,
    /// at `now`, and erases its flow secrets. False when it was already finished (or does
    /// not exist): nothing changed. With the outbox on, a session that ends
    /// [`Finish::Failed`] or [`Finish::Expired`] writes `connect_session.failed` (data from
    /// [`connect_session_failed_data`](crate::webhooks::outbox::connect_session_failed_data),
    /// timestamp `now`) in the same transaction; a completed one writes nothing here (its
    /// connection's put raised `connection.created` or `.reconnected`).
    async fn finish_connect_session(
        &self,
        id: &str,
        finish: &Finish,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Deletes connect sessions that expired before `before` (finished or not); returns how
    /// many.
    async fn purge_connect_sessions(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Key rotation, one batch: re-seals under the key ring's active key the secrets of up to
    /// `limit` connections that use another key, in key order after `after`. Online: the
    /// write is compare-and-swap on the old ciphertext and leaves `version` alone, so it
    /// never overwrites (or disturbs) a concurrent refresh. Rows whose secrets cannot be
    /// opened are counted in `failed` and left untouched. Resumable: run again from
    /// `last` (or from the start) until `last` is `None`.
    async fn reseal_batch(
        &self,
        after: Option<&ConnectionKey>,
        limit: u32,
    ) -> Result<ResealBatch, StoreError>;

    /// Turns writing webhook events with connection changes on or off, for this handle
    /// (each store handle has its own switch; a second process over the same database
    /// decides for itself). Off by default: with no endpoint configured nothing is written
    /// and the writes cost what they did before the outbox existed (no extra read, no
    /// transaction they did not have). Governs the events the store derives itself (the
    /// writes above); [`Store::insert_events`] writes whatever it is given.
    fn set_outbox(&self, enabled: bool);

    /// Writes events that no row change raises (`provider.circuit_opened` and `_closed`,
    /// `webhook.test`), in one transaction, whatever [`Store::set_outbox`] says: callers
    /// raise them only when endpoints are configured. An id already stored is a
    /// [`StoreError::Database`] and nothing of the call is written.
    async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError>;

    /// Dispatches up to `limit` undispatched events, oldest first (in the order they were
    /// written), in one transaction: each gets one `pending` delivery, due at `now`, per
    /// endpoint of `endpoints` (name, subscribed events) that subscribes to its type, or,
    /// for an event written for one endpoint only, one for that endpoint if it is among
    /// `endpoints` whatever it subscribes to; and is marked dispatched, also when no endpoint
    /// takes it (it is then never delivered, not even to an endpoint configured later).
    /// Returns how many events it dispatched (0: nothing is waiting). Of several dispatchers
    /// at once (in any number of processes), each event is dispatched by exactly one; a
    /// delivery exists at most once per event and endpoint.
    async fn dispatch_events(
        &self,
        endpoints: &[(String, BTreeSet<EventType>)],
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Claims up to `limit` pending deliveries due at `now` (`next_attempt_at <= now`) whose
    /// lease is free or expired at `now` (deliveries `owner` holds unexpired are not claimed
    /// again), earliest due first (then by id), leasing them to `owner` until `lease_until`.
    /// Only deliveries to the endpoints listed in `capacity` are claimed, at most the number
    /// given for each: the caller lists the endpoints it can send to now with their free
    /// attempt slots, so a busy, paused or dead endpoint's backlog is never claimed (and never
    /// waits out a lease). Several claimers at once never get the same delivery. The answer
    /// is in claim order and carries what an attempt needs, the event's exact body included.
    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        owner: &str,
        lease_until: OffsetDateTime,
        limit: u32,
        capacity: &[(String, u32)],
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records the end of one attempt at delivery `id`, only if it is `pending` and `owner`
    /// still holds its lease (expired or not, as long as nobody claimed it since); false, and
    /// nothing changed, otherwise (or when `id` is unknown). It adds one to `attempts`, sets
    /// `first_attempt_at` to `now` if unset, `updated_at` to `now`, `last_status` to the
    /// outcome's status, `last_error` to its error (`None` when delivered), releases the
    /// lease, and: [`DeliveryOutcome::Delivered`] → `delivered`;
    /// [`DeliveryOutcome::Retry`] → stays `pending`, due at its `at`;
    /// [`DeliveryOutcome::Failed`] → `failed`. `next_attempt_at` is `None` unless pending.
    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Lists deliveries matching every filter given, newest first (by id, descending), a
    /// page of [`DeliveryQuery::effective_limit`] at a time; `next_cursor` (base64url of the
    /// page's last id) is set when more may follow. A cursor this store did not make is
    /// [`StoreError::BadCursor`].
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError>;

    /// Sends a `failed` delivery again: it becomes `pending`, due at `now`, lease free,
    /// `updated_at = now`; attempts, `first_attempt_at` and the last status and error are
    /// kept. Returns the delivery as it is after the call: unchanged when it was not
    /// `failed` (the caller decides what that means), `None` when `id` is unknown.
    async fn retry_delivery(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryView>, StoreError>;

    /// One delivery by id.
    async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError>;

    /// The newest events about the user's connection `key` (those written with
    /// [`NewEvent::connection`] set to it), newest first in the order they were written, at
    /// most `limit` of them (clamped to 1..=[`MAX_LIST_LIMIT`]; 0 means
    /// [`DEFAULT_LIST_LIMIT`]). Only events written while the outbox was on exist; a
    /// connection deleted and created again lists the events of both. Dispatch and delivery
    /// change nothing here.
    async fn recent_connection_events(
        &self,
        key: &ConnectionKey,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Sizes of the webhook queue at `now`, for metrics.
    async fn webhook_queue_stats(
        &self,
        now: OffsetDateTime,
    ) -> Result<WebhookQueueStats, StoreError>;

    /// Deletes up to `limit` events that are done with, oldest first (by time written, then order), with their
    /// deliveries: dispatched, written before `before`, and with no delivery still pending
    /// or changed at or after `before` (a failed delivery retried by hand lately stays).
    /// Returns how many events it deleted (fewer than `limit`: nothing more is old enough).
    async fn purge_webhook_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError>;
}

/// A change to stored connections, from [`Store::changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A connection was written (created, replaced or refreshed: its new `version`) or
    /// deleted (`None`).
    Connection {
        key: ConnectionKey,
        version: Option<i64>,
        /// Its next scheduled refresh: `None` when deleted, not active or not scheduled.
        next_refresh_at: Option<OffsetDateTime>,
    },
    /// Changes may have been missed (the listener reconnected or fell behind): anything
    /// cached may be stale.
    All,
}

/// A connection [`Store::claim_due`] leased to the claimer.
#[derive(Debug)]
pub struct Claimed {
    pub key: ConnectionKey,
    /// The row as claimed (lease included), or why it could not be read (its secrets did
    /// not open, say); a refresh then reports that the usual way.
    pub connection: Result<Connection, StoreError>,
}

/// The result of one [`Store::reseal_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealBatch {
    /// Connections looked at (all of them used a non-active key).
    pub scanned: u64,
    /// Connections whose secrets are now sealed under the active key.
    pub resealed: u64,
    /// Connections whose secrets could not be opened (their key is not configured).
    pub failed: u64,
    /// Where the next batch starts; `None` when this was the last.
    pub last: Option<ConnectionKey>,
}

/// Sizes of the refresh schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Active connections with a scheduled refresh.
    pub scheduled: u64,
    /// Of those, due now.
    pub due_now: u64,
    /// Of the scheduled, ones retrying after a failure (`consecutive_failures > 0`).
    pub retrying: u64,
}

/// Totals of a whole key rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealSummary {
    pub resealed: u64,
    pub failed: u64,
    pub batches: u64,
}

/// Re-seals every secret under the active key, batch by batch, calling `progress` after each
/// batch (for a progress bar). Safe to interrupt and run again: it only touches what is not
/// yet under the active key.
pub async fn reseal_all(
    store: &dyn Store,
    batch_size: u32,
    mut progress: impl FnMut(&ResealBatch),
) -> Result<ResealSummary, StoreError> {
    let mut summary = ResealSummary::default();
    let mut after: Option<ConnectionKey> = None;
    loop {
        let batch = store.reseal_batch(after.as_ref(), batch_size).await?;
        summary.resealed += batch.resealed;
        summary.failed += batch.failed;
        summary.batches += 1;
        progress(&batch);
        match batch.last {
            Some(last) => after = Some(last),
            None => return Ok(summary),
        }
    }
}

/// Seals a connect session's flow secrets, bound to the session (see
/// [`ConnectSession::seal_key`]).
pub(crate) fn seal_flow(
    keys: &KeyRing,
    session: &ConnectSession,
    secrets: &crate::connect::session::FlowSecrets,
) -> Result<Vec<u8>, StoreError> {
    let key = session
        .seal_key()
        .map_err(|e| StoreError::Database(format!("connect session id: {e}")))?;
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(secrets).map_err(|e| StoreError::Database(e.to_string()))?,
    );
    Ok(keys.seal(&json, &key, crate::crypto::Field::ConnectFlow))
}

/// Opens what [`seal_flow`] sealed for `session`.
pub(crate) fn open_flow(
    keys: &KeyRing,
    session: &ConnectSession,
    sealed: &[u8],
) -> Result<crate::connect::session::FlowSecrets, StoreError> {
    let key = session.seal_key().map_err(|_| StoreError::Decrypt)?;
    let json = keys
        .open(sealed, &key, crate::crypto::Field::ConnectFlow)
        .map_err(|_| StoreError::Decrypt)?;
    serde_json::from_slice(&json).map_err(|_| StoreError::Decrypt)
}

/// Page size used when [`ListQuery::limit`] is 0.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// A list's page size as stores use it: `limit` clamped to 1..=[`MAX_LIST_LIMIT`], where 0
/// means [`DEFAULT_LIST_LIMIT`].
pub(crate) fn effective_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    }
}
/// Largest page size a store returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

impl ListQuery {
    /// The page size stores use: `limit` clamped to 1..=1000, where 0 means
    /// [`DEFAULT_LIST_LIMIT`].
    pub fn effective_limit(&self) -> u32 {
        effective_limit(self.limit)
    }
}

/// Encodes the keyset cursor that follows `last`: base64url (no padding) of the key's JSON.
///
/// Every backend uses this format, so a cursor stays valid if an operator moves from SQLite
/// to PostgreSQL between two pages. Ids are not secret, so the cursor is not encrypted.
pub fn encode_cursor(last: &ConnectionKey) -> String {
    // Serializing three validated strings cannot fail.
    let json = serde_json::to_vec(last).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a cursor made by [`encode_cursor`]; anything else is [`StoreError::BadCursor`].
pub fn decode_cursor(cursor: &str) -> Result<ConnectionKey, StoreError> {
    let json = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    serde_json::from_slice(&json).map_err(|_| StoreError::BadCursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let key = ConnectionKey::parse("üser 1", "tiktok", "acc/ount".replace('/', "-").as_str())
            .expect("valid key");
        assert_eq!(decode_cursor(&encode_cursor(&key)).expect("decodes"), key);
        for bad in ["", "!!!", "bm90IGpzb24", "eyJ1c2VyX2lkIjoiIn0"] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn connect_refuses_unknown_schemes_without_echoing_the_url() {
        let keys = fixtures::test_keys("k1", &["k1"]);
        for url in [
            "mysql://tw:hunter2@db/tw",
            "",
            "Postgres://tw:hunter2@db/tw",
        ] {
            let err = connect(url, keys.clone()).await.expect_err(url);
            assert!(matches!(err, StoreError::Database(_)), "{err:?}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let store = connect("sqlite::memory:", keys).await.expect("sqlite");
        store.ping().await.expect("ping");
    }

    #[test]
    fn limit_is_clamped() {
        let q = |limit| ListQuery {
            limit,
            ..ListQuery::default()
        };
        assert_eq!(q(0).effective_limit(), DEFAULT_LIST_LIMIT);
        assert_eq!(q(1).effective_limit(), 1);
        assert_eq!(q(5000).effective_limit(), MAX_LIST_LIMIT);
    }
}
