//! The PostgreSQL store: [`PgStore`], for one instance or several sharing one database.
//!
//! This module owns the PostgreSQL schema (`migrations/postgres/`, the same migrations as
//! SQLite's, in PostgreSQL types), the mapping between rows and [`Connection`]s, and the pool
//! settings. What makes several instances safe lives in its SQL: compare-and-swap writes are
//! single `UPDATE … WHERE version = … RETURNING` statements, a lease is taken by one
//! conditional `UPDATE` (PostgreSQL re-checks the condition on the newest row after waiting
//! for a concurrent writer, so exactly one of several instances wins), and `claim_due` locks
//! its candidates with `FOR UPDATE SKIP LOCKED`, so instances claiming at once split the due
//! work without overlap and without waiting on each other.
//!
//! The webhook outbox (see `outbox`) works the same way: with the outbox on, a connection
//! write locks and reads the row as it was (`SELECT … FOR UPDATE`, or the row `DELETE …
//! RETURNING` removed) and inserts its events in the same transaction; dispatchers and
//! claimers lock events and deliveries with `FOR UPDATE SKIP LOCKED`. With the outbox off the
//! writes are the single statements described above, but for a delete: it first takes its
//! key's advisory lock in its transaction (migration 0009), so an insert of the key waiting
//! for it starts the new row above the deleted row's version.
//!
//! A lease is tied to its owner's liveness (see `liveness`): every store that leases holds
//! an advisory lock while its process lives, and a lease whose registered owner's lock is
//! gone is free at once. Only a contested lease pays for that check: the uncontested
//! `try_lease` is the same single `UPDATE` as before.
//!
//! It seals and opens secrets only through the [`KeyRing`] it was built with; it never sees
//! key material. It does not decide when to refresh or talk to providers. Neither the
//! `database_url` (it may hold a password) nor any bound value ever appears in its errors or
//! its `Debug`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, Postgres, QueryBuilder, SqlSafeStr};
use time::OffsetDateTime;

use super::liveness::{LIVE_CTE, Liveness, owner_gone};
use super::rows::{
    FinishValues, META_COLUMNS, RowValues, SESSION_COLUMNS, SessionValues, WRITE_COLUMNS,
    batch_written, claim_refused, claimed_from_row, corrupt, db_error, delivery_from_row,
    delivery_list_query, distinct_keys, flow_key_id, from_unix, get, key_from_row,
    key_usage as key_usage_from, list_query, meta_from_row, open_refused, open_tokens, page,
    priors_apply, push_after, seal_tokens, session_from_row, status_counts, unix, webhook_stats,
    webhook_stats_sql, written_meta,
};
use super::{
    Change, Claimed, KeyUsage, ListPage, ListQuery, PutOutcome, QueueStats, ResealBatch, Store,
    StoreError, decode_cursor, open_flow, seal_flow,
};
use crate::connect::session::{ClaimOutcome, ConnectSession, Finish, FlowStart, OpenOutcome};
use crate::connection::{Connection, ConnectionKey, ConnectionMeta, ConnectionStatus};
use crate::crypto::KeyRing;
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryPage, DeliveryQuery, DeliveryView, NewEvent, Prior,
    Requires, StoredEvent, WebhookQueueStats, Write, connection_change_events,
    decode_delivery_cursor, delivery_page, session_failed_event, unix_ms, update_candidate,
    update_events,
};

pub mod nodelay;
mod outbox;

/// Connections per pool. Every instance has its own pool, plus one connection of its own
/// that holds its lease liveness lock once it leases, so a deployment of N instances uses up
/// to N × 11 of the server's `max_connections` (100 by default).
pub const POOL_SIZE: u32 = 10;
/// How long connecting (or waiting for a pooled connection) may take before it fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL migrations, embedded so the binary needs no migration files at run time.
/// Same versions and names as SQLite's (`migrations/sqlite/`); a conformance suite keeps
/// their behaviour the same.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "connections",
        include_str!("../../migrations/postgres/0001_connections.sql"),
    ),
    (
        2,
        "change_notifications",
        include_str!("../../migrations/postgres/0002_change_notifications.sql"),
    ),
    (
        3,
        "lease_owners",
        include_str!("../../migrations/postgres/0003_lease_owners.sql"),
    ),
    (
        4,
        "connect_sessions",
        include_str!("../../migrations/postgres/0004_connect_sessions.sql"),
    ),
    (
        5,
        "webhook_outbox",
        include_str!("../../migrations/postgres/0005_webhook_outbox.sql"),
    ),
    (
        6,
        "last_error_provider",
        include_str!("../../migrations/postgres/0006_last_error_provider.sql"),
    ),
    (
        7,
        "event_connections",
        include_str!("../../migrations/postgres/0007_event_connections.sql"),
    ),
    (
        8,
        "webhook_events_by_age",
        include_str!("../../migrations/postgres/0008_webhook_events_by_age.sql"),
    ),
    (
        9,
        "key_locks",
        include_str!("../../migrations/postgres/0009_key_locks.sql"),
    ),
];

const BAD_URL: &str = "database_url must be a postgres:// or postgresql:// URL";
const BAD_SCHEMA: &str = "schema name must match [a-z_][a-z0-9_]{0,62}";

/// How often `put` retries when a concurrent delete or insert of the same key slips between
/// its insert and its replace. Each retry needs another writer to win a race in a window of
/// one statement, so this is never reached in practice.
const PUT_ATTEMPTS: usize = 5;

/// The channel `migrations/postgres/0002` notifies on; the payload names the schema.
const CHANGES_CHANNEL: &str = "tokenwarden_changes";
/// Pause before listening again after the listener's connection failed, doubling per failure
/// in a row up to [`LISTEN_RETRY_MAX`] (a database outage logs a line per attempt).
const LISTEN_RETRY: Duration = Duration::from_secs(1);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);
/// Changes buffered per subscriber before it is told it fell behind ([`Change::All`]).
const CHANGES_BUFFER: usize = 4096;

/// The PostgreSQL store.
///
/// Several processes can share one database. Writes that change a connection's tokens are
/// announced by a trigger (`NOTIFY tokenwarden_changes`); [`Store::changes`] listens on one
/// of the pool's connections (kept for as long as the store lives) and reports those about
/// this store's schema.
pub struct PgStore {
    pool: PgPool,
    keys: Arc<KeyRing>,
    schema: Option<String>,
    /// The schema the tables live in (`current_schema()` after migrating): notifications
    /// about other schemas are not ours.
    home: String,
    changes: tokio::sync::broadcast::Sender<Change>,
    /// The LISTEN task, started by the first [`Store::changes`] call and stopped on drop.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This process's liveness lock, taken at the first lease.
    liveness: Liveness,
    /// This handle's [`Store::set_outbox`] switch.
    outbox_on: AtomicBool,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let task = self
            .listener
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
        self.liveness.abort();
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's own Debug prints its connect options, password included.
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool.size())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `database_url` (`postgres://user:password@host:port/db?…`, also
    /// `postgresql://`) and brings the schema up to date, creating the tables in the first
    /// schema of the role's default `search_path` (normally `public`).
    ///
    /// The pool holds up to [`POOL_SIZE`] connections and gives up connecting after
    /// [`CONNECT_TIMEOUT`]. Sessions run with `synchronous_commit = on`, so a write is on
    /// disk when it returns even if the server's default says otherwise.
    pub async fn connect(database_url: &str, keys: Arc<KeyRing>) -> Result<Self, StoreError> {
        let options = connect_options(database_url)?;
        let pool = open_pool(options).await?;
        Self::from_pool(pool, keys).await
    }

    /// Like [`PgStore::connect`], but everything lives in `schema`, which is created if it
    /// is missing: every pooled connection's `search_path` is set to it. Several stores (or
    /// test databases) can so share one database without seeing each other's data.
    ///
    /// `schema` must match `[a-z_][a-z0-9_]{0,62}` (an unquoted PostgreSQL identifier).
    pub async fn connect_in_schema(
        database_url: &str,
        schema: &str,
        keys: Arc<KeyRing>,
    ) -> Result<Self, StoreError> {
        if !is_valid_schema_name(schema) {
            return Err(StoreError::Database(BAD_SCHEMA.to_owned()));
        }
        let options = connect_options(database_url)?;
        create_schema(&options, schema).await?;
        let pool = open_pool(options.options([("search_path", schema)])).await?;
        let mut store = Self::from_pool(pool, keys).await?;
        store.schema = Some(schema.to_owned());
        Ok(store)
    }

    /// A store over an existing pool (for example one shared with another store that holds a
    /// different key ring). Runs the migrations in the pool's `search_path`.
    pub async fn from_pool(pool: PgPool, keys: Arc<KeyRing>) -> Result<Self, StoreError> {
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migrate: {e}")))?;
        let home: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await
            .map_err(db_error("connect"))?;
        Ok(Self {
            keys,
            schema: None,
            home,
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
            listener: std::sync::Mutex::default(),
            liveness: Liveness::new(pool.clone()),
            pool,
            outbox_on: AtomicBool::new(false),
        })
    }

    /// The connect session (and its browser hash) that `sql`, one of the `SESSION_BY_*`
    /// statements, finds for `value`.
    async fn session_by(
        &self,
        sql: &'static str,
        value: &str,
    ) -> Result<Option<(ConnectSession, Option<String>)>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(value.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("read connect session"))?;
        row.map(|row| Ok((session_from_row(&row)?, get(&row, "browser_hash")?)))
            .transpose()
    }

    /// [`Store::put`] with the outbox on: the same insert-then-replace, each round one
    /// transaction that also reads (and locks) the row it replaces and inserts the events
    /// of the write.
    async fn put_with_events(
        &self,
        conn: &Connection,
        values: RowValues,
    ) -> Result<(ConnectionMeta, PutOutcome), StoreError> {
        let key = conn.key();
        for _ in 0..PUT_ATTEMPTS {
            let mut tx = self.pool.begin().await.map_err(db_error("put"))?;
            let insert = bind_values(
                values.clone(),
                sqlx::query(AssertSqlSafe(INSERT_SQL.as_str())),
            );
            let row = bind_key(insert, key)
                .bind(unix(conn.meta.created_at))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error("put"))?;
            let (old, meta, outcome) = if let Some(row) = row {
                let meta = written_meta(conn, get(&row, "created_at")?, get(&row, "version")?)?;
                (None, meta, PutOutcome::Created)
            } else {
                // Deleted since the insert found it: insert again, in a new transaction.
                let Some(old) = read_meta_for_update(&mut tx, key).await? else {
                    continue;
                };
                let replace = bind_values(
                    values.clone(),
                    sqlx::query(AssertSqlSafe(REPLACE_SQL.as_str())),
                );
                let row = bind_key(replace, key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("put"))?;
                let meta = written_meta(conn, get(&row, "created_at")?, get(&row, "version")?)?;
                (Some(old), meta, PutOutcome::Replaced)
            };
            let events =
                connection_change_events(old.as_ref(), Some(&meta), Write::Put, meta.updated_at);
            outbox::insert_events(&mut tx, &events).await?;
            tx.commit().await.map_err(db_error("put"))?;
            return Ok((meta, outcome));
        }
        Err(StoreError::Database(
            "put: the connection kept being deleted and re-created concurrently".to_owned(),
        ))
    }

    fn outbox_on(&self) -> bool {
        self.outbox_on.load(Ordering::Relaxed)
    }

    /// The connection pool, for backend-specific tests and maintenance.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to finish (graceful shutdown), and releases
    /// this process's liveness lock: the leases it still holds are then free to other
    /// instances at once.
    pub async fn close(&self) {
        self.liveness.stop().await;
        self.pool.close().await;
    }

    /// [`Store::update_batch`] for distinct keys: one statement (one round trip, one
    /// commit) that joins the rows, passed as arrays, on key and expected version. Rows are
    /// passed in key order, so two batches sharing keys lock them in the same order.
    ///
    /// With the outbox on it is still one statement, autocommitted: each row's one possible
    /// event is built beforehand ([`EventCandidates`]). Given the rows' prior states (`was`,
    /// see [`Store::update_batch_from`]) only the events they raise are, and the statement
    /// inserts those of the rows it writes ([`UPDATE_BATCH_FROM_SQL`]), or is
    /// [`UPDATE_BATCH_SQL`] itself when there are none; otherwise it inserts those whose old
    /// row, as it reads it, meets their condition ([`UPDATE_BATCH_WITH_EVENTS_SQL`]). A
    /// transaction around a read, the write and the events' insert would cost three more
    /// round trips per batch.
    async fn update_distinct(
        &self,
        conns: &[Connection],
        was: Option<&[Prior]>,
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let mut order: Vec<usize> = (0..conns.len()).collect();
        order.sort_by(|&a, &b| conns[a].key().cmp(conns[b].key()));
        let mut out: Vec<Option<Result<ConnectionMeta, StoreError>>> =
            (0..conns.len()).map(|_| None).collect();
        let mut columns = BatchColumns::default();
        for &i in &order {
            match RowValues::seal(&self.keys, &conns[i]) {
                Ok(values) => columns.push(i, &conns[i], values),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        // Nothing to send when no row could be sealed.
        let rows = if columns.idx.is_empty() {
            Vec::new()
        } else if self.outbox_on()
            && let events = EventCandidates::of(conns, &columns.idx, was)?
            && !(was.is_some() && events.idx.is_empty())
        {
            let sql = if was.is_some() {
                &UPDATE_BATCH_FROM_SQL
            } else {
                &UPDATE_BATCH_WITH_EVENTS_SQL
            };
            events
                .bind(columns.bind(sqlx::query(AssertSqlSafe(sql.as_str()))))
                .fetch_all(&self.pool)
                .await
                .map_err(db_error("update"))?
        } else {
            columns
                .bind(sqlx::query(UPDATE_BATCH_SQL))
                .fetch_all(&self.pool)
                .await
                .map_err(db_error("update"))?
        };
        for row in &rows {
            let idx: i32 = get(row, "idx")?;
            let i = usize::try_from(idx).map_err(|_| corrupt("batch index"))?;
            let conn = conns.get(i).ok_or_else(|| corrupt("batch index"))?;
            out[i] = Some(written_meta(
                conn,
                get(row, "created_at")?,
                get(row, "version")?,
            ));
        }
        let mut results = Vec::with_capacity(conns.len());
        for (i, result) in out.into_iter().enumerate() {
            results.push(match result {
                Some(result) => result,
                None => Err(self.missed_write(conns[i].key(), "update").await),
            });
        }
        Ok(results)
    }

    /// [`Store::update_batch`] with a key written more than once: one transaction, one
    /// statement per row in the order given, so later writes see earlier ones.
    async fn update_in_order(
        &self,
        conns: &[Connection],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let values: Vec<_> = conns
            .iter()
            .map(|c| RowValues::seal(&self.keys, c))
            .collect();
        let mut tx = self.pool.begin().await.map_err(db_error("update"))?;
        let outbox = self.outbox_on();
        let mut out = Vec::with_capacity(conns.len());
        for (conn, values) in conns.iter().zip(values) {
            let result = match values {
                Ok(v) if outbox => update_with_events(&mut tx, conn, v).await,
                Ok(v) => update_row(&mut tx, conn, v).await,
                Err(e) => Err(e),
            };
            // A failed statement aborts the transaction: none of the batch counts.
            if let Err(e @ StoreError::Database(_)) = result {
                return Err(e);
            }
            out.push(result);
        }
        tx.commit().await.map_err(db_error("update"))?;
        Ok(out)
    }

    /// `Conflict` if the connection exists, else `NotFound`: what a write that matched no
    /// row means.
    async fn missed_write(&self, key: &ConnectionKey, op: &'static str) -> StoreError {
        match self.pool.acquire().await {
            Ok(mut db) => missed_write(&mut db, key, op).await,
            Err(e) => db_error(op)(e),
        }
    }
}

/// [`PgStore::missed_write`] on a given connection (or transaction).
async fn missed_write(db: &mut PgConnection, key: &ConnectionKey, op: &'static str) -> StoreError {
    match bind_key(sqlx::query(EXISTS_SQL), key)
        .fetch_optional(&mut *db)
        .await
    {
        Ok(Some(_)) => StoreError::Conflict,
        Ok(None) => StoreError::NotFound,
        Err(e) => db_error(op)(e),
    }
}

/// One compare-and-swap write of `conn` (see [`Store::update`]) on `db`. One statement, so
/// the version check and the write are atomic: a concurrent writer of the same row makes
/// this one wait, then re-check `version` on its result. It releases the lease.
async fn update_row(
    db: &mut PgConnection,
    conn: &Connection,
    values: RowValues,
) -> Result<ConnectionMeta, StoreError> {
    let key = conn.key();
    let query = bind_values(values, sqlx::query(AssertSqlSafe(UPDATE_SQL.as_str())));
    let row = bind_key(query, key)
        .bind(conn.meta.version)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_error("update"))?;
    match row {
        Some(row) => written_meta(conn, get(&row, "created_at")?, get(&row, "version")?),
        None => Err(missed_write(db, key, "update").await),
    }
}

/// The connection's metadata, its row locked until the transaction `db` ends: the row as
/// the write that follows will find it.
async fn read_meta_for_update(
    db: &mut PgConnection,
    key: &ConnectionKey,
) -> Result<Option<ConnectionMeta>, StoreError> {
    let row = bind_key(
        sqlx::query(AssertSqlSafe(META_FOR_UPDATE_SQL.as_str())),
        key,
    )
    .fetch_optional(&mut *db)
    .await
    .map_err(db_error("read connection"))?;
    row.as_ref().map(meta_from_row).transpose()
}

/// [`update_row`] with the outbox on, inside the transaction `db`: locks and reads the row
/// as it was, writes, and inserts the events the write raises. A missing row is `NotFound`
/// and a stale version `Conflict`, and then nothing is written.
async fn update_with_events(
    db: &mut PgConnection,
    conn: &Connection,
    values: RowValues,
) -> Result<ConnectionMeta, StoreError> {
    let old = read_meta_for_update(db, conn.key())
        .await?
        .ok_or(StoreError::NotFound)?;
    if old.version != conn.meta.version {
        return Err(StoreError::Conflict);
    }
    let meta = update_row(db, conn, values).await?;
    let events = connection_change_events(Some(&old), Some(&meta), Write::Update, meta.updated_at);
    outbox::insert_events(db, &events).await?;
    Ok(meta)
}

/// The events of deleting the row a `DELETE … RETURNING` gave back. A row whose metadata
/// no longer reads (corrupt) is still deleted, without its event: refusing would leave the
/// operator no way to remove it.
fn deleted_events(key: &ConnectionKey, row: &sqlx::postgres::PgRow) -> Vec<NewEvent> {
    match meta_from_row(row) {
        Ok(old) => {
            connection_change_events(Some(&old), None, Write::Delete, OffsetDateTime::now_utc())
        }
        Err(e) => {
            tracing::warn!(provider = %key.provider, account_id = %key.account_id, error = %e,
                "deleted a connection whose row did not read; no connection.deleted event");
            Vec::new()
        }
    }
}

/// Forwards the change notifications about `home` to `changes`, for as long as the store
/// lives: LISTEN on a connection of its own, reconnecting after a failure. After every
/// (re)connect, once LISTEN is in place, it sends [`Change::All`]: what happened while nobody
/// listened is unknown, and from then on nothing is missed.
async fn listen(pool: PgPool, home: String, changes: tokio::sync::broadcast::Sender<Change>) {
    let mut pause = LISTEN_RETRY;
    'connect: loop {
        if pool.is_closed() {
            return;
        }
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(_) if pool.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %db_error("listen")(e), retry_in_s = pause.as_secs(),
                    "cannot listen for connection changes; cached tokens expire by cache_ttl");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LISTEN_RETRY_MAX);
                continue;
            }
        };
        pause = LISTEN_RETRY;
        let _ = changes.send(Change::All);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some(change) = parse_change(notification.payload(), &home) {
                        let _ = changes.send(change);
                    }
                }
                // The connection dropped. Listen again on a new one at once; the outer loop
                // reports `Change::All` once LISTEN is in place. Reporting it now, before,
                // would let a subscriber re-read and then miss a write made in between.
                Ok(None) => continue 'connect,
                // The store is shutting down.
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(error = %db_error("listen")(e),
                        "lost the connection-change listener; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// A notification payload from `migrations/postgres/0002`, if it is about `home` and well
/// formed.
fn parse_change(payload: &str, home: &str) -> Option<Change> {
    #[derive(serde::Deserialize)]
    struct Payload {
        s: String,
        u: String,
        p: String,
        a: String,
        v: Option<i64>,
        #[serde(default)]
        n: Option<i64>,
    }
    let payload: Payload = serde_json::from_str(payload).ok()?;
    if payload.s != home {
        return None;
    }
    let key = ConnectionKey::parse(&payload.u, &payload.p, &payload.a).ok()?;
    Some(Change::Connection {
        key,
        version: payload.v,
        next_refresh_at: payload.n.and_then(|n| from_unix(n).ok()),
    })
}

/// The migrations [`PgStore`] runs on connect.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Whether `name` is a schema name [`PgStore::connect_in_schema`] accepts:
/// `[a-z_][a-z0-9_]{0,62}`, which needs no quoting anywhere.
pub fn is_valid_schema_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses a `postgres://` URL. The error is fixed text: the URL may hold a password.
fn connect_options(database_url: &str) -> Result<PgConnectOptions, StoreError> {
    let bad = || StoreError::Database(BAD_URL.to_owned());
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(bad());
    }
    let options = PgConnectOptions::from_str(database_url).map_err(|_| bad())?;
    // `?application_name=…` in the URL (or PGAPPNAME) names an instance in
    // pg_stat_activity; otherwise every session says "tokenwarden".
    let options = if options.get_application_name().is_some() {
        options
    } else {
        options.application_name("tokenwarden")
    };
    Ok(options
        // The store promises that a write is durable when it returns; a server (or role)
        // default of `off` would silently break that, so each session asks for it. Its
        // statements rely on READ COMMITTED (a statement sees what committed before it; a
        // VOLATILE function's query after a lock wait sees what committed during it:
        // migration 0009), whatever the server's default.
        .options([
            ("synchronous_commit", "on"),
            ("default_transaction_isolation", "read committed"),
        ]))
}

async fn open_pool(options: PgConnectOptions) -> Result<PgPool, StoreError> {
    // One plain connection first: the pool retries a failing connect until its timeout and
    // then says only "pool timed out", where the operator needs the reason (refused, no
    // such host, authentication failed, no such database). Errors never show the password.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| StoreError::Database("connect: timed out".to_owned()))?
        .map_err(db_error("connect"))?;
    let _ = probe.close().await;
    pool_options(&options)
        .max_connections(POOL_SIZE)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db_error("connect"))
}

/// A pool's options for connections made with `options`: over TCP, each new connection's
/// socket gets `TCP_NODELAY` (see `nodelay`).
pub(super) fn pool_options(options: &PgConnectOptions) -> PgPoolOptions {
    let over_tcp = options.get_socket().is_none() && !options.get_host().starts_with('/');
    let pool = PgPoolOptions::new();
    if !over_tcp {
        return pool;
    }
    let port = options.get_port();
    pool.after_connect(move |_, _| {
        Box::pin(async move {
            // It reads the process's descriptor table: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || nodelay::after_connect(port)).await;
            Ok(())
        })
    })
}

/// `CREATE SCHEMA IF NOT EXISTS`, on a connection of its own (the pool's connections
/// already point their `search_path` at the schema).
async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .map_err(|_| StoreError::Database("connect: timed out".to_owned()))?
        .map_err(db_error("connect"))?;
    // The name was validated as a plain identifier; quoting also keeps keywords working.
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    let created = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
    let _ = conn.close().await;
    match created {
        Ok(_) => Ok(()),
        // Two stores creating the same schema at once: IF NOT EXISTS is not atomic, and the
        // loser sees a duplicate; the schema exists either way.
        Err(e) if is_duplicate(&e) => Ok(()),
        Err(e) => Err(db_error("create schema")(e)),
    }
}

fn is_duplicate(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "23505" || code == "42P06")
}

/// `user_id = $20 AND …`: the key as bound after the written columns.
static WRITE_KEY_MATCH: LazyLock<String> = LazyLock::new(|| {
    let n = WRITE_COLUMNS.len();
    format!(
        "user_id = ${} AND provider = ${} AND account_id = ${}",
        n + 1,
        n + 2,
        n + 3
    )
});

/// The written columns bound as `$1..=$19` (by [`bind_values`]); `created_at` and `version`
/// are each statement's own business, and the key follows as `$20..=$22`.
static WRITE_SET: LazyLock<String> = LazyLock::new(|| {
    WRITE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
});

/// [`PgStore::update_distinct`]: the compare-and-swap update of many rows in one
/// statement. The arrays are bound in [`BatchColumns::bind`]'s order; `idx` says which input
/// row each returned row answers.
const UPDATE_BATCH_SQL: &str = "\
    UPDATE connections AS c SET \
        access_token = v.access_token, access_key_id = v.access_key_id, \
        refresh_token = v.refresh_token, refresh_key_id = v.refresh_key_id, \
        token_type = v.token_type, expires_at = v.expires_at, \
        refresh_expires_at = v.refresh_expires_at, issued_at = v.issued_at, \
        scopes = v.scopes, metadata = v.metadata, status = v.status, \
        last_refreshed_at = v.last_refreshed_at, \
        consecutive_failures = v.consecutive_failures, \
        last_error_code = v.last_error_code, last_error_message = v.last_error_message, \
        last_error_at = v.last_error_at, updated_at = v.updated_at, \
        next_refresh_at = v.next_refresh_at, last_error_provider = v.last_error_provider, \
        version = c.version + 1, lease_owner = NULL, lease_until = NULL \
    FROM UNNEST($1::bytea[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::int8[], \
                $7::int8[], $8::int8[], $9::text[], $10::text[], $11::text[], $12::int8[], \
                $13::int8[], $14::text[], $15::text[], $16::int8[], $17::int8[], $18::int8[], \
                $19::text[], $20::text[], $21::text[], $22::text[], $23::int8[], \
                $24::int4[]) \
      AS v(access_token, access_key_id, refresh_token, refresh_key_id, token_type, \
           expires_at, refresh_expires_at, issued_at, scopes, metadata, status, \
           last_refreshed_at, consecutive_failures, last_error_code, last_error_message, \
           last_error_at, updated_at, next_refresh_at, last_error_provider, user_id, \
           provider, account_id, \
           expected_version, idx) \
    WHERE c.user_id = v.user_id AND c.provider = v.provider \
      AND c.account_id = v.account_id AND c.version = v.expected_version \
    RETURNING v.idx, c.created_at, c.version";

/// [`UPDATE_BATCH_SQL`] for the outbox: a sub-select reads the rows' status and failure
/// count as they were (the only fields the event rules read; no lock is needed, since the
/// `UPDATE` writes a row only at the version its caller read); the written rows' event
/// candidates (parameters after the rows', see [`EventCandidates`]) whose condition
/// ([`Requires::SQL`]) the old row meets are inserted, in the order given, by the same
/// statement.
static UPDATE_BATCH_WITH_EVENTS_SQL: LazyLock<String> =
    LazyLock::new(|| batch_with_events_sql(false));

/// [`UPDATE_BATCH_WITH_EVENTS_SQL`] when the caller gave each row's prior state: the
/// candidates are the events to raise, inserted for the rows written; nothing is read.
static UPDATE_BATCH_FROM_SQL: LazyLock<String> = LazyLock::new(|| batch_with_events_sql(true));

/// The batch `UPDATE` in a CTE that also inserts the written rows' event candidates: those
/// whose condition the old row, read by a sub-select, meets, or (`given`) all of them.
fn batch_with_events_sql(given: bool) -> String {
    let (head, tail) = UPDATE_BATCH_SQL
        .split_once(" WHERE c.user_id")
        .expect("UPDATE_BATCH_SQL has a WHERE clause");
    let tail = tail
        .strip_suffix(" RETURNING v.idx, c.created_at, c.version")
        .expect("UPDATE_BATCH_SQL ends with its RETURNING clause");
    // The key's arrays follow the written columns' (see `batch_statements_agree`), then the
    // expected versions and indexes; the candidates' arrays come after those.
    let n = WRITE_COLUMNS.len();
    let (u, p, a) = (n + 1, n + 2, n + 3);
    let e = n + 6;
    let (e_idx, e_req, e_id, e_type, e_body, e_at) = (e, e + 1, e + 2, e + 3, e + 4, e + 5);
    let e_from = format!(
        "FROM UNNEST(${e_idx}::int4[], ${e_req}::text[], ${e_id}::text[], \
                     ${e_type}::text[], ${e_body}::text[], ${e_at}::int8[]) \
              WITH ORDINALITY AS e(idx, requires, id, type, body, created_at, n)"
    );
    if given {
        return format!(
            "WITH upd AS ({head} WHERE c.user_id{tail} \
             RETURNING v.idx, c.created_at, c.version, c.user_id, c.provider, c.account_id), \
             ev AS (INSERT INTO webhook_events (id, type, body, created_at, user_id, \
                                                provider, account_id) \
                SELECT e.id, e.type, e.body, e.created_at, w.user_id, w.provider, \
                       w.account_id \
                {e_from} JOIN upd AS w ON w.idx = e.idx \
                ORDER BY e.n) \
             SELECT idx, created_at, version FROM upd"
        );
    }
    let requires = Requires::SQL;
    format!(
        "WITH upd AS ({head}, \
         (SELECT user_id, provider, account_id, status, consecutive_failures \
          FROM connections WHERE (user_id, provider, account_id) IN \
               (SELECT * FROM UNNEST(${u}::text[], ${p}::text[], ${a}::text[]))) AS o \
         WHERE c.user_id{tail} \
           AND o.user_id = c.user_id AND o.provider = c.provider \
           AND o.account_id = c.account_id \
         RETURNING v.idx, c.created_at, c.version, o.status AS old_status, \
                   o.consecutive_failures AS old_failures, \
                   c.user_id, c.provider, c.account_id), \
         ev AS (INSERT INTO webhook_events (id, type, body, created_at, user_id, provider, \
                                            account_id) \
            SELECT id, type, body, created_at, user_id, provider, account_id \
            {e_from} \
            JOIN (SELECT idx AS written, old_status AS status, old_failures AS failures, \
                         user_id, provider, account_id FROM upd) AS w ON w.written = e.idx \
            WHERE {requires} \
            ORDER BY e.n) \
         SELECT idx, created_at, version FROM upd"
    )
}

/// Each written row's one possible event ([`update_candidate`]), as arrays for
/// [`UPDATE_BATCH_WITH_EVENTS_SQL`]: the row's batch index, the condition, the event. Or,
/// given the rows' prior states, each row's event if it raises one, for
/// [`UPDATE_BATCH_FROM_SQL`] (the condition `given`, not read).
#[derive(Default)]
struct EventCandidates {
    idx: Vec<i32>,
    requires: Vec<&'static str>,
    id: Vec<String>,
    kind: Vec<&'static str>,
    body: Vec<String>,
    created_at: Vec<i64>,
}

impl EventCandidates {
    /// The candidates of `conns[i]` for each batch index `i` in `idx`, each as its row will
    /// be once written ([`batch_written`]). With the rows' prior states (`was[i]` for
    /// `conns[i]`), only the candidates whose condition it meets.
    fn of(conns: &[Connection], idx: &[i32], was: Option<&[Prior]>) -> Result<Self, StoreError> {
        let mut out = Self::default();
        for &i in idx {
            let at = usize::try_from(i).map_err(|_| corrupt("batch index"))?;
            let conn = conns.get(at).ok_or_else(|| corrupt("batch index"))?;
            let written = batch_written(conn)?;
            // Given the prior state, the events are decided here (and only those raised are
            // built); the statement reads no condition.
            let (event, requires) = match was {
                Some(was) => {
                    let prior = *was.get(at).ok_or_else(|| corrupt("batch index"))?;
                    let Some(event) = update_events(prior, &written).pop() else {
                        continue;
                    };
                    (event, "given")
                }
                None => match update_candidate(&written) {
                    Some((event, requires)) => (event, requires.as_str()),
                    None => continue,
                },
            };
            out.idx.push(i);
            out.requires.push(requires);
            out.id.push(event.id);
            out.kind.push(event.kind.as_str());
            out.body.push(event.body);
            out.created_at.push(unix_ms(event.created_at));
        }
        Ok(out)
    }

    fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.idx)
            .bind(self.requires)
            .bind(self.id)
            .bind(self.kind)
            .bind(self.body)
            .bind(self.created_at)
    }
}

/// Rows for [`UPDATE_BATCH_SQL`], one array per column.
#[derive(Default)]
struct BatchColumns {
    access: Vec<Vec<u8>>,
    access_key_id: Vec<String>,
    refresh: Vec<Option<Vec<u8>>>,
    refresh_key_id: Vec<Option<String>>,
    token_type: Vec<String>,
    expires_at: Vec<Option<i64>>,
    refresh_expires_at: Vec<Option<i64>>,
    issued_at: Vec<Option<i64>>,
    scopes: Vec<String>,
    metadata: Vec<String>,
    status: Vec<String>,
    last_refreshed_at: Vec<Option<i64>>,
    consecutive_failures: Vec<i64>,
    last_error_code: Vec<Option<String>>,
    last_error_message: Vec<Option<String>>,
    last_error_at: Vec<Option<i64>>,
    updated_at: Vec<i64>,
    next_refresh_at: Vec<Option<i64>>,
    last_error_provider: Vec<Option<String>>,
    user_id: Vec<String>,
    provider: Vec<String>,
    account_id: Vec<String>,
    expected_version: Vec<i64>,
    idx: Vec<i32>,
}

impl BatchColumns {
    fn push(&mut self, idx: usize, conn: &Connection, values: RowValues) {
        let s = values.sealed;
        self.access.push(s.access);
        self.access_key_id.push(s.access_key_id);
        self.refresh.push(s.refresh);
        self.refresh_key_id.push(s.refresh_key_id);
        self.token_type.push(values.token_type);
        self.expires_at.push(values.expires_at);
        self.refresh_expires_at.push(values.refresh_expires_at);
        self.issued_at.push(values.issued_at);
        self.scopes.push(values.scopes);
        self.metadata.push(values.metadata);
        self.status.push(values.status.to_owned());
        self.last_refreshed_at.push(values.last_refreshed_at);
        self.consecutive_failures.push(values.consecutive_failures);
        self.last_error_code.push(values.last_error_code);
        self.last_error_message.push(values.last_error_message);
        self.last_error_at.push(values.last_error_at);
        self.updated_at.push(values.updated_at);
        self.next_refresh_at.push(values.next_refresh_at);
        self.last_error_provider.push(values.last_error_provider);
        let key = conn.key();
        self.user_id.push(key.user_id.as_str().to_owned());
        self.provider.push(key.provider.as_str().to_owned());
        self.account_id.push(key.account_id.as_str().to_owned());
        self.expected_version.push(conn.meta.version);
        // Batches are far smaller than i32::MAX.
        self.idx.push(i32::try_from(idx).unwrap_or(i32::MAX));
    }

    fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.access)
            .bind(self.access_key_id)
            .bind(self.refresh)
            .bind(self.refresh_key_id)
            .bind(self.token_type)
            .bind(self.expires_at)
            .bind(self.refresh_expires_at)
            .bind(self.issued_at)
            .bind(self.scopes)
            .bind(self.metadata)
            .bind(self.status)
            .bind(self.last_refreshed_at)
            .bind(self.consecutive_failures)
            .bind(self.last_error_code)
            .bind(self.last_error_message)
            .bind(self.last_error_at)
            .bind(self.updated_at)
            .bind(self.next_refresh_at)
            .bind(self.last_error_provider)
            .bind(self.user_id)
            .bind(self.provider)
            .bind(self.account_id)
            .bind(self.expected_version)
            .bind(self.idx)
    }
}

/// [`Store::claim_due`]'s statement: lease the earliest due rows and return them whole.
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    let returned: Vec<String> = META_COLUMNS
        .split(',')
        .map(|c| format!("c.{}", c.trim()))
        .collect();
    format!(
        "WITH {}, due AS ( \
             SELECT user_id, provider, account_id FROM connections \
             WHERE status = 'active' AND next_refresh_at IS NOT NULL \
               AND next_refresh_at <= $3 \
               AND (lease_owner IS NULL OR lease_until <= $3 \
                    OR (lease_owner <> $1 AND {})) \
             ORDER BY next_refresh_at \
             LIMIT $4 \
             FOR UPDATE SKIP LOCKED \
         ), claimed AS ( \
             UPDATE connections AS c SET lease_owner = $1, lease_until = $2 \
             FROM due \
             WHERE c.user_id = due.user_id AND c.provider = due.provider \
               AND c.account_id = due.account_id \
             RETURNING {}, c.access_token, c.refresh_token \
         ) \
         SELECT * FROM claimed \
         ORDER BY next_refresh_at, user_id, provider, account_id",
        *LIVE_CTE,
        owner_gone("lease_owner"),
        returned.join(", ")
    )
});

/// [`Store::try_lease`] when the lease was not free: takes it if it has become free, or if
/// its owner is gone (see `liveness`), and says whether the row exists at all. One
/// statement; `pg_locks` is read only here, never on the uncontested path.
static TAKE_OVER_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, taken AS ( \
             UPDATE connections AS c SET lease_owner = $4, lease_until = $5 \
             WHERE c.user_id = $1 AND c.provider = $2 AND c.account_id = $3 \
               AND (c.lease_owner IS NULL OR c.lease_until <= $6 OR c.lease_owner = $4 \
                    OR {}) \
             RETURNING 1 \
         ) \
         SELECT EXISTS (SELECT 1 FROM taken) AS taken, \
                EXISTS (SELECT 1 FROM connections \
                        WHERE user_id = $1 AND provider = $2 AND account_id = $3) AS found, \
                EXISTS (SELECT 1 FROM connections AS x \
                        WHERE x.user_id = $1 AND x.provider = $2 AND x.account_id = $3 \
                          AND x.lease_owner <> $4 AND x.lease_until > $6 AND {}) AS from_gone",
        *LIVE_CTE,
        owner_gone("c.lease_owner"),
        owner_gone("x.lease_owner")
    )
});

/// [`Store::next_due`]: a lease whose owner is gone does not delay its connection.
static NEXT_DUE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {} \
         SELECT MIN(CASE WHEN lease_owner IS NOT NULL AND {} THEN next_refresh_at \
                         ELSE GREATEST(next_refresh_at, lease_until) END) \
         FROM connections WHERE status = 'active' AND next_refresh_at IS NOT NULL",
        *LIVE_CTE,
        owner_gone("lease_owner")
    )
});

/// Creates a row unless the key exists. Its version starts above every deleted version
/// (see `store_state` in the migration), so an update prepared against a deleted
/// incarnation of this key can never match the new one. `connection_insert_version`
/// (migration 0009) first takes the key's lock, which a delete holds until it commits, so a
/// delete of the key committing meanwhile is counted.
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    let n = WRITE_COLUMNS.len();
    let values: Vec<String> = (1..=n + 4).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO connections ({}, user_id, provider, account_id, created_at, version) \
         VALUES ({}, connection_insert_version(${}, ${}, ${})) \
         ON CONFLICT (user_id, provider, account_id) DO NOTHING \
         RETURNING created_at, version",
        WRITE_COLUMNS.join(", "),
        values.join(", "),
        n + 1,
        n + 2,
        n + 3
    )
});

/// Replaces an existing row (an import over it): `created_at` and the lease stay.
static REPLACE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connections SET {}, version = version + 1 WHERE {} \
         RETURNING created_at, version",
        *WRITE_SET, *WRITE_KEY_MATCH
    )
});

/// Compare-and-swap on the version, releasing the lease: the end of a refresh.
static UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connections SET {}, version = version + 1, \
         lease_owner = NULL, lease_until = NULL \
         WHERE {} AND version = ${} RETURNING created_at, version",
        *WRITE_SET,
        *WRITE_KEY_MATCH,
        WRITE_COLUMNS.len() + 4
    )
});

static GET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {META_COLUMNS}, access_token, refresh_token FROM connections \
         WHERE user_id = $1 AND provider = $2 AND account_id = $3"
    )
});

const EXISTS_SQL: &str =
    "SELECT 1 FROM connections WHERE user_id = $1 AND provider = $2 AND account_id = $3";

/// One row's metadata, locked for the rest of the transaction.
static META_FOR_UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {META_COLUMNS} FROM connections \
         WHERE user_id = $1 AND provider = $2 AND account_id = $3 FOR UPDATE"
    )
});

/// A delete that returns the row as it was, for its event.
static DELETE_RETURNING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM connections WHERE user_id = $1 AND provider = $2 AND account_id = $3 \
         RETURNING {META_COLUMNS}"
    )
});

static WEBHOOK_STATS_SQL: LazyLock<String> = LazyLock::new(|| webhook_stats_sql("$1"));

/// Binds the values in [`WRITE_COLUMNS`] order.
fn bind_values<'q>(values: RowValues, query: PgQuery<'q>) -> PgQuery<'q> {
    let s = values.sealed;
    query
        .bind(s.access)
        .bind(s.access_key_id)
        .bind(s.refresh)
        .bind(s.refresh_key_id)
        .bind(values.token_type)
        .bind(values.expires_at)
        .bind(values.refresh_expires_at)
        .bind(values.issued_at)
        .bind(values.scopes)
        .bind(values.metadata)
        .bind(values.status)
        .bind(values.last_refreshed_at)
        .bind(values.consecutive_failures)
        .bind(values.last_error_code)
        .bind(values.last_error_message)
        .bind(values.last_error_at)
        .bind(values.updated_at)
        .bind(values.next_refresh_at)
        .bind(values.last_error_provider)
}

/// Creates a connect session: its [`SESSION_COLUMNS`] as `$1..=$15` (bound by
/// [`bind_session`]), then its token hash as `$16`. No state hash, browser hash or flow yet.
static INSERT_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    let n = SESSION_COLUMNS.len();
    let values: Vec<String> = (1..=n + 1).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO connect_sessions ({}, token_hash) VALUES ({})",
        SESSION_COLUMNS.join(", "),
        values.join(", ")
    )
});

/// A connect session by one unique column (`$1`), with its browser hash (to classify a
/// claim).
fn session_by_sql(column: &str) -> String {
    format!(
        "SELECT {}, browser_hash FROM connect_sessions WHERE {column} = $1",
        SESSION_COLUMNS.join(", ")
    )
}
static SESSION_BY_ID_SQL: LazyLock<String> = LazyLock::new(|| session_by_sql("id"));
static SESSION_BY_TOKEN_SQL: LazyLock<String> = LazyLock::new(|| session_by_sql("token_hash"));
static SESSION_BY_STATE_SQL: LazyLock<String> = LazyLock::new(|| session_by_sql("state_hash"));

/// [`Store::open_connect_session`]'s one conditional write: only a pending, unexpired
/// session is opened. Of two opens at once, the second waits for the first's row lock, then
/// re-checks `state` on the committed row and matches nothing. `id` pins the row whose
/// identity sealed the flow.
static OPEN_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connect_sessions SET state = 'opened', opened_at = $1, state_hash = $2, \
         browser_hash = $3, flow = $4, flow_key_id = $5 \
         WHERE token_hash = $6 AND id = $7 AND state = 'pending' AND expires_at > $1 \
         RETURNING {}",
        SESSION_COLUMNS.join(", ")
    )
});

/// [`Store::claim_connect_callback`]'s one conditional write: only an opened, unexpired
/// session, from the browser that opened it, moves to `exchanging` (re-checked after a
/// concurrent claim's row lock, as for an open). A NULL browser hash matches nothing.
static CLAIM_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connect_sessions SET state = 'exchanging' \
         WHERE state_hash = $1 AND state = 'opened' AND browser_hash = $2 AND expires_at > $3 \
         RETURNING {}, flow",
        SESSION_COLUMNS.join(", ")
    )
});

/// Ends an unfinished session and erases its flow secrets.
const FINISH_SESSION_SQL: &str = "UPDATE connect_sessions SET state = $1, error_code = $2, \
     error_message = $3, connected_account_id = $4, finished_at = $5, flow = NULL, \
     flow_key_id = NULL WHERE id = $6 AND state IN ('pending', 'opened', 'exchanging')";

/// [`FINISH_SESSION_SQL`] returning the session, for its event.
static FINISH_SESSION_RETURNING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{FINISH_SESSION_SQL} RETURNING {}",
        SESSION_COLUMNS.join(", ")
    )
});

/// Binds a session's values in [`SESSION_COLUMNS`] order.
fn bind_session<'q>(values: SessionValues, query: PgQuery<'q>) -> PgQuery<'q> {
    query
        .bind(values.id)
        .bind(values.user_id)
        .bind(values.provider)
        .bind(values.account_id)
        .bind(values.reconnect)
        .bind(values.return_url)
        .bind(values.scopes)
        .bind(values.state)
        .bind(values.error_code)
        .bind(values.error_message)
        .bind(values.connected_account_id)
        .bind(values.created_at)
        .bind(values.expires_at)
        .bind(values.opened_at)
        .bind(values.finished_at)
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn bind_key<'q>(query: PgQuery<'q>, key: &ConnectionKey) -> PgQuery<'q> {
    query
        .bind(key.user_id.as_str().to_owned())
        .bind(key.provider.as_str().to_owned())
        .bind(key.account_id.as_str().to_owned())
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, key: &ConnectionKey) -> Result<Option<Connection>, StoreError> {
        let row = bind_key(sqlx::query(AssertSqlSafe(GET_SQL.as_str())), key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("get"))?;
        let Some(row) = row else { return Ok(None) };
        let meta = meta_from_row(&row)?;
        let tokens = open_tokens(&self.keys, &meta.key, &row)?;
        Ok(Some(Connection { meta, tokens }))
    }

    async fn put(&self, conn: &Connection) -> Result<(ConnectionMeta, PutOutcome), StoreError> {
        let key = conn.key();
        let values = RowValues::seal(&self.keys, conn)?;
        if self.outbox_on() {
            return self.put_with_events(conn, values).await;
        }
        // Two single statements instead of a transaction: the insert does nothing if the key
        // exists (waiting for a concurrent insert of it to settle), then the replace bumps
        // the existing row's version. Only a delete landing between the two leaves both
        // without a row, and then the insert succeeds on the next round.
        for _ in 0..PUT_ATTEMPTS {
            let insert = bind_values(
                values.clone(),
                sqlx::query(AssertSqlSafe(INSERT_SQL.as_str())),
            );
            let row = bind_key(insert, key)
                .bind(unix(conn.meta.created_at))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("put"))?;
            if let Some(row) = row {
                let meta = written_meta(conn, get(&row, "created_at")?, get(&row, "version")?)?;
                return Ok((meta, PutOutcome::Created));
            }
            let replace = bind_values(
                values.clone(),
                sqlx::query(AssertSqlSafe(REPLACE_SQL.as_str())),
            );
            let row = bind_key(replace, key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("put"))?;
            if let Some(row) = row {
                let meta = written_meta(conn, get(&row, "created_at")?, get(&row, "version")?)?;
                return Ok((meta, PutOutcome::Replaced));
            }
        }
        Err(StoreError::Database(
            "put: the connection kept being deleted and re-created concurrently".to_owned(),
        ))
    }

    async fn insert_if_absent(
        &self,
        conn: &Connection,
    ) -> Result<Option<ConnectionMeta>, StoreError> {
        let values = RowValues::seal(&self.keys, conn)?;
        // `INSERT_SQL` does nothing when the key exists (waiting for a concurrent insert of
        // it to settle, so exactly one of several racing inserts returns a row).
        let insert = bind_values(values, sqlx::query(AssertSqlSafe(INSERT_SQL.as_str())));
        let insert = bind_key(insert, conn.key()).bind(unix(conn.meta.created_at));
        // An application token's row (what this is for) raises no event: no transaction.
        if !self.outbox_on() || conn.key().is_app() {
            let row = insert
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error("insert"))?;
            return row
                .map(|row| written_meta(conn, get(&row, "created_at")?, get(&row, "version")?))
                .transpose();
        }
        let mut tx = self.pool.begin().await.map_err(db_error("insert"))?;
        let Some(row) = insert
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("insert"))?
        else {
            return Ok(None);
        };
        let meta = written_meta(conn, get(&row, "created_at")?, get(&row, "version")?)?;
        let events = connection_change_events(None, Some(&meta), Write::Put, meta.updated_at);
        outbox::insert_events(&mut tx, &events).await?;
        tx.commit().await.map_err(db_error("insert"))?;
        Ok(Some(meta))
    }

    async fn update(&self, conn: &Connection) -> Result<ConnectionMeta, StoreError> {
        let values = RowValues::seal(&self.keys, conn)?;
        if self.outbox_on() {
            let mut tx = self.pool.begin().await.map_err(db_error("update"))?;
            let meta = update_with_events(&mut tx, conn, values).await?;
            tx.commit().await.map_err(db_error("update"))?;
            return Ok(meta);
        }
        // Autocommit: durable when it returns (synchronous_commit = on).
        let mut db = self.pool.acquire().await.map_err(db_error("update"))?;
        update_row(&mut db, conn, values).await
    }

    async fn update_batch(
        &self,
        conns: &[Connection],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        if conns.is_empty() {
            return Ok(Vec::new());
        }
        if distinct_keys(conns) {
            self.update_distinct(conns, None).await
        } else {
            self.update_in_order(conns).await
        }
    }

    async fn update_batch_from(
        &self,
        conns: &[Connection],
        was: &[Prior],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        if priors_apply(conns, was) {
            self.update_distinct(conns, Some(was)).await
        } else {
            self.update_batch(conns).await
        }
    }

    async fn delete(&self, key: &ConnectionKey) -> Result<bool, StoreError> {
        // The key's lock first, held to the commit: an insert of the key meanwhile waits for
        // it and then starts above this row's version (migration 0009).
        let mut tx = self.pool.begin().await.map_err(db_error("delete"))?;
        bind_key(sqlx::query("SELECT connection_key_lock($1, $2, $3)"), key)
            .execute(&mut *tx)
            .await
            .map_err(db_error("delete"))?;
        let deleted = bind_key(
            sqlx::query(AssertSqlSafe(DELETE_RETURNING_SQL.as_str())),
            key,
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error("delete"))?;
        let Some(row) = deleted else {
            return Ok(false);
        };
        if self.outbox_on() {
            let events = deleted_events(key, &row);
            outbox::insert_events(&mut tx, &events).await?;
        }
        tx.commit().await.map_err(db_error("delete"))?;
        Ok(true)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = query.effective_limit();
        let mut qb = list_query::<Postgres>(META_COLUMNS, query, after.as_ref(), limit);
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("list"))?;
        let items = rows
            .iter()
            .map(meta_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, limit))
    }

    async fn count_by_status(&self) -> Result<Vec<(ConnectionStatus, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM connections GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .map_err(db_error("count_by_status"))?;
        status_counts(rows)
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key_id, COUNT(*) FROM ( \
                 SELECT access_key_id AS key_id FROM connections \
                 UNION ALL \
                 SELECT refresh_key_id FROM connections WHERE refresh_key_id IS NOT NULL \
             ) AS ciphertexts GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error("key_usage"))?;
        key_usage_from(rows)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error("ping"))?;
        Ok(())
    }

    async fn try_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.liveness.ensure(owner).await?;
        // Of several instances running this at once, the first locks the row; the others
        // wait, then re-evaluate the condition on its committed result and match nothing.
        let query = sqlx::query(
            "UPDATE connections SET lease_owner = $4, lease_until = $5 \
             WHERE user_id = $1 AND provider = $2 AND account_id = $3 \
               AND (lease_owner IS NULL OR lease_until <= $6 OR lease_owner = $4)",
        );
        let done = bind_key(query, key)
            .bind(owner.to_owned())
            .bind(unix(until))
            .bind(unix(now))
            .execute(&self.pool)
            .await
            .map_err(db_error("try_lease"))?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        // Contested: another owner holds it. Take it if that owner is gone. The statement
        // re-checks the owner's registration and lock on the newest row version, so of two
        // instances taking over at once, the second sees the first (alive) and backs off.
        let row = bind_key(sqlx::query(AssertSqlSafe(TAKE_OVER_SQL.as_str())), key)
            .bind(owner.to_owned())
            .bind(unix(until))
            .bind(unix(now))
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("try_lease"))?;
        let (taken, found): (bool, bool) = (get(&row, "taken")?, get(&row, "found")?);
        if taken {
            // Otherwise the lease was released or expired between the two statements.
            if get(&row, "from_gone")? {
                tracing::info!(provider = %key.provider, account_id = %key.account_id,
                    "took over a refresh lease whose owner is gone");
            }
            return Ok(true);
        }
        if found {
            Ok(false)
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn renew_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let query = sqlx::query(
            "UPDATE connections SET lease_until = $5 \
             WHERE user_id = $1 AND provider = $2 AND account_id = $3 AND lease_owner = $4",
        );
        let done = bind_key(query, key)
            .bind(owner.to_owned())
            .bind(unix(until))
            .execute(&self.pool)
            .await
            .map_err(db_error("renew_lease"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_lease(&self, key: &ConnectionKey, owner: &str) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE connections SET lease_owner = NULL, lease_until = NULL \
             WHERE user_id = $1 AND provider = $2 AND account_id = $3 AND lease_owner = $4",
        );
        bind_key(query, key)
            .bind(owner.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db_error("release_lease"))?;
        Ok(())
    }

    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        // SKIP LOCKED: rows another claimer (or a try_lease) is writing right now are passed
        // over instead of waited for, so instances never block each other. A row that was
        // leased and committed after this statement's snapshot is re-checked against the
        // lease condition when locked, so it is never claimed twice. The inner order is the
        // partial index's alone, so a large backlog is read from the index and the scan
        // stops at the limit instead of sorting every due row. RETURNING has no order, hence
        // the outer ORDER BY. Rows leased by an owner that is gone are due like free ones.
        self.liveness.ensure(owner).await?;
        let rows = sqlx::query(CLAIM_SQL.as_str())
            .bind(owner.to_owned())
            .bind(unix(until))
            .bind(unix(now))
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("claim_due"))?;
        rows.iter()
            .map(|row| claimed_from_row(&self.keys, row))
            .collect()
    }

    async fn insert_connect_session(
        &self,
        session: &ConnectSession,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let values = SessionValues::new(session)?;
        // A duplicate id or token hash fails on its UNIQUE constraint. The driver's message
        // names the constraint; the key's value is only in the error's detail, never shown.
        bind_session(
            values,
            sqlx::query(AssertSqlSafe(INSERT_SESSION_SQL.as_str())),
        )
        .bind(token_hash.to_owned())
        .execute(&self.pool)
        .await
        .map_err(db_error("insert connect session"))?;
        Ok(())
    }

    async fn connect_session(&self, id: &str) -> Result<Option<ConnectSession>, StoreError> {
        Ok(self
            .session_by(&SESSION_BY_ID_SQL, id)
            .await?
            .map(|(session, _)| session))
    }

    async fn open_connect_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        flow: &FlowStart,
    ) -> Result<OpenOutcome, StoreError> {
        // The flow is sealed to the session's identity, so read it first; the conditional
        // UPDATE below alone decides whether this caller opens it.
        let Some((found, _)) = self.session_by(&SESSION_BY_TOKEN_SQL, token_hash).await? else {
            return Ok(OpenOutcome::Unknown);
        };
        let sealed = seal_flow(&self.keys, &found, &flow.secrets)?;
        let key_id = flow_key_id(&self.keys, &sealed);
        let row = sqlx::query(AssertSqlSafe(OPEN_SESSION_SQL.as_str()))
            .bind(unix(now))
            .bind(flow.state_hash.clone())
            .bind(flow.browser_hash.clone())
            .bind(sealed)
            .bind(key_id)
            .bind(token_hash.to_owned())
            .bind(found.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error("open connect session"))?;
        match row {
            Some(row) => Ok(OpenOutcome::Opened(session_from_row(&row)?)),
            None => {
                let found = self.session_by(&SESSION_BY_TOKEN_SQL, token_hash).await?;
                open_refused(found.map(|(session, _)| session), now)
            }
        }
    }

    async fn claim_connect_callback(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ClaimOutcome, StoreError> {
        // A transaction only so that a flow that does not open (a missing key) is not
        // burnt: the claim is rolled back and the session stays `opened`. A concurrent
        // claim waits on the row lock meanwhile, and re-checks `state` after it.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_error("claim connect callback"))?;
        let row = sqlx::query(AssertSqlSafe(CLAIM_SESSION_SQL.as_str()))
            .bind(state_hash.to_owned())
            .bind(browser_hash.map(str::to_owned))
            .bind(unix(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("claim connect callback"))?;
        let Some(row) = row else {
            drop(tx);
            let found = self.session_by(&SESSION_BY_STATE_SQL, state_hash).await?;
            return claim_refused(found, browser_hash, now);
        };
        let session = session_from_row(&row)?;
        let sealed: Option<Vec<u8>> = get(&row, "flow")?;
        let secrets = sealed
            .ok_or(StoreError::Decrypt)
            .and_then(|sealed| open_flow(&self.keys, &session, &sealed))?;
        tx.commit()
            .await
            .map_err(db_error("claim connect callback"))?;
        Ok(ClaimOutcome::Claimed(session, secrets))
    }

    async fn finish_connect_session(
        &self,
        id: &str,
        finish: &Finish,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let values = FinishValues::new(finish, now);
        if self.outbox_on() && finish.error().is_some() {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(db_error("finish connect session"))?;
            let row = sqlx::query(AssertSqlSafe(FINISH_SESSION_RETURNING_SQL.as_str()))
                .bind(values.state)
                .bind(values.error_code)
                .bind(values.error_message)
                .bind(values.connected_account_id)
                .bind(values.finished_at)
                .bind(id.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error("finish connect session"))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let session = session_from_row(&row)?;
            let event = session_failed_event(
                &session.id,
                &session.user_id,
                &session.provider,
                session.account_id.as_ref(),
                finish,
                now,
            );
            outbox::insert_events(&mut tx, event.as_slice()).await?;
            tx.commit()
                .await
                .map_err(db_error("finish connect session"))?;
            return Ok(true);
        }
        let done = sqlx::query(FINISH_SESSION_SQL)
            .bind(values.state)
            .bind(values.error_code)
            .bind(values.error_message)
            .bind(values.connected_account_id)
            .bind(values.finished_at)
            .bind(id.to_owned())
            .execute(&self.pool)
            .await
            .map_err(db_error("finish connect session"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_connect_sessions(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM connect_sessions WHERE expires_at < $1")
            .bind(unix(before))
            .execute(&self.pool)
            .await
            .map_err(db_error("purge connect sessions"))?;
        Ok(done.rows_affected())
    }

    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        // GREATEST ignores NULLs: without a lease it is next_refresh_at.
        let at: Option<i64> = sqlx::query_scalar(AssertSqlSafe(NEXT_DUE_SQL.as_str()))
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("next_due"))?;
        at.map(from_unix).transpose()
    }

    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        let (scheduled, due, retrying): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), \
                    COUNT(*) FILTER (WHERE next_refresh_at <= $1), \
                    COUNT(*) FILTER (WHERE consecutive_failures > 0) \
             FROM connections WHERE status = 'active' AND next_refresh_at IS NOT NULL",
        )
        .bind(unix(now))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("queue_stats"))?;
        let count = |n: i64| u64::try_from(n).map_err(|_| corrupt("count"));
        Ok(QueueStats {
            scheduled: count(scheduled)?,
            due_now: count(due)?,
            retrying: count(retrying)?,
        })
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let mut listener = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let receiver = self.changes.subscribe();
        if listener.is_none() {
            *listener = Some(runtime.spawn(listen(
                self.pool.clone(),
                self.home.clone(),
                self.changes.clone(),
            )));
        }
        Some(receiver)
    }

    async fn reseal_batch(
        &self,
        after: Option<&ConnectionKey>,
        limit: u32,
    ) -> Result<ResealBatch, StoreError> {
        let active = self.keys.active_key_id().as_str().to_owned();
        let limit = limit.max(1);
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT user_id, provider, account_id, access_token, refresh_token FROM connections \
             WHERE (access_key_id <> ",
        );
        qb.push_bind(active.clone())
            .push(" OR (refresh_key_id IS NOT NULL AND refresh_key_id <> ")
            .push_bind(active)
            .push("))");
        if let Some(after) = after {
            qb.push(" AND ");
            push_after(&mut qb, after);
        }
        qb.push(" ORDER BY user_id, provider, account_id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("reseal"))?;
        let mut batch = ResealBatch::default();
        for row in &rows {
            let key = key_from_row(row)?;
            batch.scanned += 1;
            let Ok(tokens) = open_tokens(&self.keys, &key, row) else {
                batch.failed += 1;
                continue;
            };
            let old_access: Vec<u8> = get(row, "access_token")?;
            let old_refresh: Option<Vec<u8>> = get(row, "refresh_token")?;
            let sealed = seal_tokens(&self.keys, &key, &tokens);
            // Compare-and-swap on the old ciphertexts; the version is left alone so a refresh
            // running meanwhile commits normally (and its write is already under the new key).
            let query = sqlx::query(
                "UPDATE connections SET access_token = $4, access_key_id = $5, \
                 refresh_token = $6, refresh_key_id = $7 \
                 WHERE user_id = $1 AND provider = $2 AND account_id = $3 \
                   AND access_token = $8 AND refresh_token IS NOT DISTINCT FROM $9",
            );
            let done = bind_key(query, &key)
                .bind(sealed.access)
                .bind(sealed.access_key_id)
                .bind(sealed.refresh)
                .bind(sealed.refresh_key_id)
                .bind(old_access)
                .bind(old_refresh)
                .execute(&self.pool)
                .await
                .map_err(db_error("reseal"))?;
            batch.resealed += done.rows_affected();
        }
        if rows.len() == limit as usize {
            batch.last = rows.last().map(key_from_row).transpose()?;
        }
        Ok(batch)
    }

    fn set_outbox(&self, enabled: bool) {
        self.outbox_on.store(enabled, Ordering::Relaxed);
    }

    async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut db = self
            .pool
            .acquire()
            .await
            .map_err(db_error("insert events"))?;
        // One statement: atomic without a transaction.
        outbox::insert_events(&mut db, events).await
    }

    async fn dispatch_events(
        &self,
        endpoints: &[(String, BTreeSet<EventType>)],
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_error("dispatch events"))?;
        let dispatched = outbox::dispatch(&mut tx, endpoints, now, limit).await?;
        tx.commit().await.map_err(db_error("dispatch events"))?;
        Ok(dispatched)
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        owner: &str,
        lease_until: OffsetDateTime,
        limit: u32,
        capacity: &[(String, u32)],
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut db = self
            .pool
            .acquire()
            .await
            .map_err(db_error("claim deliveries"))?;
        outbox::claim(&mut db, now, owner, lease_until, limit, capacity).await
    }

    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut db = self
            .pool
            .acquire()
            .await
            .map_err(db_error("finish delivery"))?;
        outbox::finish(&mut db, id, owner, outcome, now).await
    }

    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let before = query
            .cursor
            .as_deref()
            .map(decode_delivery_cursor)
            .transpose()?;
        let limit = query.effective_limit();
        let rows = delivery_list_query::<Postgres>(query, before.as_deref(), limit)
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("list deliveries"))?;
        let items = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(delivery_page(items, limit))
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryView>, StoreError> {
        let mut db = self
            .pool
            .acquire()
            .await
            .map_err(db_error("retry delivery"))?;
        outbox::retry(&mut db, id, now).await
    }

    async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        let mut db = self
            .pool
            .acquire()
            .await
            .map_err(db_error("read delivery"))?;
        outbox::delivery(&mut db, id).await
    }

    async fn recent_connection_events(
        &self,
        key: &ConnectionKey,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut db = self
            .pool
            .acquire()
            .await
            .map_err(db_error("read connection events"))?;
        outbox::connection_events(&mut db, key, limit).await
    }

    async fn webhook_queue_stats(
        &self,
        now: OffsetDateTime,
    ) -> Result<WebhookQueueStats, StoreError> {
        let counts: (i64, i64, i64, i64, i64) =
            sqlx::query_as(AssertSqlSafe(WEBHOOK_STATS_SQL.as_str()))
                .bind(unix_ms(now))
                .fetch_one(&self.pool)
                .await
                .map_err(db_error("webhook queue stats"))?;
        webhook_stats(counts)
    }

    async fn purge_webhook_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        // REPEATABLE READ: a delivery retried by hand after this statement's snapshot, when
        // the purge's cascade reaches it, fails the purge with a serialization error (retried
        // at the next look) instead of deleting the delivery the retry just queued.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(db_error("purge webhook events"))?;
        let deleted = outbox::purge(&mut tx, before, limit).await?;
        tx.commit()
            .await
            .map_err(db_error("purge webhook events"))?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["a", "_", "tw_round_trip_1f_2a_0", "x9", &"a".repeat(63)] {
            assert!(is_valid_schema_name(good), "{good}");
        }
        for bad in [
            "",
            "9a",
            "A",
            "a-b",
            "a b",
            "a\"b",
            "public; drop table x",
            "ü",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_schema_name(bad), "{bad}");
        }
    }

    #[test]
    fn bad_urls_are_errors_that_do_not_echo_them() {
        for url in [
            "",
            "sqlite::memory:",
            "mysql://tw:hunter2@db/tw",
            "postgres://tw:hunter2@[::1/tw",
            "postgres://tw:hunter2@db:notaport/tw",
        ] {
            let err = connect_options(url).expect_err(url);
            assert!(matches!(err, StoreError::Database(_)));
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert!(connect_options("postgres://tw:hunter2@db:5432/tw").is_ok());
        assert!(connect_options("postgresql://db/tw?sslmode=disable").is_ok());
    }

    #[tokio::test]
    async fn a_bad_schema_is_refused_before_connecting() {
        let keys = Arc::new(
            KeyRing::from_base64("k1", [("k1", KeyRing::generate_key_base64().as_str())])
                .expect("keys"),
        );
        let err = PgStore::connect_in_schema("postgres://nowhere.invalid/x", "Bad-Name", keys)
            .await
            .expect_err("bad schema");
        assert_eq!(err.to_string(), format!("database error: {BAD_SCHEMA}"));
    }

    /// The batch statement binds one array per written column, then the key's three, and
    /// the outbox's variant reads the key's arrays where they are.
    #[test]
    fn batch_statements_agree() {
        let n = WRITE_COLUMNS.len();
        let (_, names) = UPDATE_BATCH_SQL.split_once(" AS v(").expect("names");
        let names: Vec<&str> = names
            .split_once(')')
            .expect("closed")
            .0
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(names[..n], WRITE_COLUMNS);
        assert_eq!(names[n..n + 3], ["user_id", "provider", "account_id"]);
        for i in n + 1..=n + 3 {
            assert!(UPDATE_BATCH_SQL.contains(&format!("${i}::text[]")));
        }
        assert!(UPDATE_BATCH_WITH_EVENTS_SQL.contains(&format!(
            "UNNEST(${}::text[], ${}::text[], ${}::text[]))) AS o",
            n + 1,
            n + 2,
            n + 3
        )));
        // The expected versions and batch indexes are the last of the rows' parameters; the
        // event candidates' come next.
        assert!(UPDATE_BATCH_SQL.contains(&format!("${}::int8[], ${}::int4[])", n + 4, n + 5)));
        assert!(UPDATE_BATCH_WITH_EVENTS_SQL.contains(&format!("UNNEST(${}::int4[], ", n + 6)));
        // Given the prior states, the same parameters, the events joined on the rows written.
        assert!(UPDATE_BATCH_FROM_SQL.contains(&format!("UNNEST(${}::int4[], ", n + 6)));
        assert!(UPDATE_BATCH_FROM_SQL.contains("JOIN upd AS w ON w.idx = e.idx"));
        assert!(!UPDATE_BATCH_FROM_SQL.contains(" AS o"), "reads no old row");
    }

    #[test]
    fn statements_number_their_parameters_in_order() {
        assert!(INSERT_SQL.contains("$23, connection_insert_version($20, $21, $22))"));
        assert!(REPLACE_SQL.ends_with(
            "WHERE user_id = $20 AND provider = $21 AND account_id = $22 \
             RETURNING created_at, version"
        ));
        assert!(UPDATE_SQL.contains("AND version = $23 RETURNING"));
        assert!(WRITE_SET.starts_with("access_token = $1, ") && WRITE_SET.ends_with("= $19"));
    }

    #[test]
    fn change_payloads_are_read_for_the_home_schema_only() {
        let key = ConnectionKey::parse("u-1", "tiktok", "a \"quoted\" ü").expect("key");
        let payload = serde_json::json!({
            "s": "tw_home", "u": "u-1", "p": "tiktok", "a": "a \"quoted\" ü", "v": 7,
            "n": 1_780_000_000
        })
        .to_string();
        assert_eq!(
            parse_change(&payload, "tw_home"),
            Some(Change::Connection {
                key: key.clone(),
                version: Some(7),
                next_refresh_at: Some(from_unix(1_780_000_000).expect("time")),
            })
        );
        assert_eq!(parse_change(&payload, "public"), None, "another schema");
        let deleted =
            r#"{"s":"tw_home","u":"u-1","p":"tiktok","a":"a \"quoted\" ü","v":null,"n":null}"#;
        assert_eq!(
            parse_change(deleted, "tw_home"),
            Some(Change::Connection {
                key,
                version: None,
                next_refresh_at: None
            })
        );
        for junk in [
            "",
            "not json",
            r#"{"s":"tw_home"}"#,
            r#"{"s":"tw_home","u":"","p":"tiktok","a":"x","v":1}"#,
        ] {
            assert_eq!(parse_change(junk, "tw_home"), None, "{junk:?}");
        }
    }

    #[test]
    fn migrations_are_embedded_in_order_and_match_sqlite() {
        let versions: Vec<(i64, String)> = migrator()
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        let sqlite: Vec<(i64, String)> = crate::store::sqlite::migrator()
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        assert_eq!(versions, sqlite, "backends' migrations must not drift");
    }
}
