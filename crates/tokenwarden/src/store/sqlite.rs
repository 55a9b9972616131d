//! The embedded SQLite store: [`SqliteStore`], its `database_url` forms and its migrations.
//!
//! This module owns the SQLite schema (`migrations/sqlite/`), the mapping between rows and
//! [`Connection`]s, and the connection pool settings that make a refresh durable before its
//! token is handed out (WAL journal, `synchronous=FULL`). It seals and opens secrets only
//! through the [`KeyRing`] it was built with; it never sees key material. It does not decide
//! when to refresh or talk to providers.
//!
//! SQLite serves one instance per database file. A store opened as [`Role::Instance`] holds
//! an exclusive lock on `<database>-instance.lock` for as long as it lives (the operating
//! system drops it when the process ends, kill -9 included), so a second instance fails at
//! once with [`StoreError::InUse`]. Holding it, the instance knows every other instance is
//! gone, and frees their refresh leases before anything else: a restart after a crash
//! refreshes at once instead of waiting out the dead process's leases. Tools
//! ([`Role::Tool`], the CLI) open the file beside the instance and keep their leases to
//! themselves (see `migrations/sqlite/0003`).
//!
//! With the webhook outbox on (see `outbox`), the writes that raise events read the row as
//! it was inside their `BEGIN IMMEDIATE` transaction and insert the events in it, except
//! batched refresh writes, which are told how the rows were (`Store::update_batch_from`) and
//! open a transaction only when they raise an event; with it off they are the statements
//! they always were.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions as _, QueryBuilder, SqlSafeStr, Sqlite};
use time::OffsetDateTime;

use super::rows::{
    FinishValues, META_COLUMNS, RowValues, SESSION_COLUMNS, SessionValues, WRITE_COLUMNS,
    claim_refused, claimed_from_row, corrupt, db_error, delivery_from_row, delivery_list_query,
    distinct_keys, events_from_prior, flow_key_id, from_unix, get, key_from_row,
    key_usage as key_usage_from, list_query, meta_from_row, open_refused, open_tokens, page,
    prior_from_row, priors_apply, push_after, seal_tokens, session_from_row, status_counts, unix,
    webhook_stats, webhook_stats_sql, written_meta,
};
use super::{
    Claimed, KeyUsage, ListPage, ListQuery, PutOutcome, QueueStats, ResealBatch, Role, Store,
    StoreError, decode_cursor, open_flow, seal_flow,
};
use crate::connect::session::{ClaimOutcome, ConnectSession, Finish, FlowStart, OpenOutcome};
use crate::connection::{Connection, ConnectionKey, ConnectionMeta, ConnectionStatus};
use crate::crypto::KeyRing;
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryPage, DeliveryQuery, DeliveryView, NewEvent, Prior,
    StoredEvent, WebhookQueueStats, Write, connection_change_events, decode_delivery_cursor,
    delivery_page, session_failed_event, unix_ms, update_events,
};

mod outbox;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in a file database's read pool (writes have a connection of their own:
/// `Writer::Own`). WAL readers never block, so reads proceed beside the write.
const FILE_POOL_SIZE: u32 = 4;

async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    migrator()
        .run(pool)
        .await
        .map_err(|e| StoreError::Database(format!("migrate: {e}")))
}

/// The SQLite migrations, embedded so the binary needs no migration files at run time.
/// PostgreSQL keeps its own folder with the same file names.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "connections",
        include_str!("../../migrations/sqlite/0001_connections.sql"),
    ),
    (
        2,
        "change_notifications",
        include_str!("../../migrations/sqlite/0002_change_notifications.sql"),
    ),
    (
        3,
        "lease_owners",
        include_str!("../../migrations/sqlite/0003_lease_owners.sql"),
    ),
    (
        4,
        "connect_sessions",
        include_str!("../../migrations/sqlite/0004_connect_sessions.sql"),
    ),
    (
        5,
        "webhook_outbox",
        include_str!("../../migrations/sqlite/0005_webhook_outbox.sql"),
    ),
    (
        6,
        "last_error_provider",
        include_str!("../../migrations/sqlite/0006_last_error_provider.sql"),
    ),
    (
        7,
        "event_connections",
        include_str!("../../migrations/sqlite/0007_event_connections.sql"),
    ),
    (
        8,
        "webhook_events_by_age",
        include_str!("../../migrations/sqlite/0008_webhook_events_by_age.sql"),
    ),
    (
        9,
        "key_locks",
        include_str!("../../migrations/sqlite/0009_key_locks.sql"),
    ),
];

const BAD_URL: &str = "database_url must be sqlite://RELATIVE_PATH, sqlite:///ABSOLUTE_PATH \
                       or sqlite::memory:";

/// The embedded SQLite store.
pub struct SqliteStore {
    pool: SqlitePool,
    keys: Arc<KeyRing>,
    /// Where every write runs, one at a time ([`SqliteStore::writing`]).
    writer: Writer,
    /// Set when this store is the database's serving instance.
    instance: Option<Instance>,
    /// This handle's [`Store::set_outbox`] switch.
    outbox_on: AtomicBool,
}

/// Where a store's writes run. SQLite has one writer at a time; writers that collide inside
/// SQLite wait in its busy handler, which sleeps in steps of milliseconds. Queueing them here
/// instead hands the lock over at once, and leaves the pool's connections to readers.
enum Writer {
    /// A file: one connection of its own, outside the pool, for the store's life (`None` once
    /// closed). SQLite drops a connection's whole page cache when it sees that another
    /// connection wrote, so writes spread over the read pool re-read every page they touched
    /// from the file; and a pool pings each connection it takes back (a round trip to the
    /// connection's thread), which a one-connection pool would put in front of every next
    /// write (BENCHMARKS.md, "Webhooks", session 9).
    Own(tokio::sync::Mutex<Option<SqliteConnection>>),
    /// In memory (one connection in all), or over a pool handed to
    /// [`SqliteStore::from_pool`]: a connection from the pool, one write at a time.
    Pool {
        lock: tokio::sync::Mutex<()>,
        pool: SqlitePool,
    },
}

/// The write lock, held, with the connection to write on.
enum Writing<'a> {
    Own(tokio::sync::MappedMutexGuard<'a, SqliteConnection>),
    Pool {
        _held: tokio::sync::MutexGuard<'a, ()>,
        conn: PoolConnection<Sqlite>,
    },
}

impl Writing<'_> {
    /// The connection to write on.
    fn conn(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Own(conn) => conn,
            Self::Pool { conn, .. } => conn,
        }
    }

    /// A write transaction (`BEGIN IMMEDIATE`: the write lock up front, so a read in it is
    /// never made stale by another writer before this one writes).
    async fn begin(
        &mut self,
        op: &'static str,
    ) -> Result<sqlx::Transaction<'_, Sqlite>, StoreError> {
        sqlx::Connection::begin_with(self.conn(), "BEGIN IMMEDIATE")
            .await
            .map_err(db_error(op))
    }
}

/// What a [`Role::Instance`] store holds.
struct Instance {
    /// `<database>-instance.lock`, exclusively locked while this store lives.
    _lock: File,
    /// Owners registered in `lease_owners` by this store, so that the next instance frees
    /// their leases.
    registered: Mutex<HashSet<String>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's own Debug would print its connect options (the file path); the key ring
        // prints key ids only.
        f.debug_struct("SqliteStore")
            .field("pool_size", &self.pool.size())
            .field("instance", &self.instance.is_some())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent directory) the database at `database_url`
    /// and brings its schema up to date.
    ///
    /// Accepted forms: `sqlite://relative/path.db` (relative to the current directory, resolved
    /// once here), `sqlite:///abs/path.db` and `sqlite::memory:` (a private database that lives
    /// as long as this store; its pool has exactly one connection so every query sees it).
    /// Files use the WAL journal with `synchronous=FULL`, so a committed write survives a
    /// crash or power loss; foreign keys are on and a writer waits up to 5 s for the lock.
    ///
    /// Opens as a [`Role::Tool`]: beside a running instance, without freeing any lease.
    pub async fn connect(database_url: &str, keys: Arc<KeyRing>) -> Result<Self, StoreError> {
        Self::connect_as(database_url, keys, Role::Tool).await
    }

    /// [`SqliteStore::connect`] in the given role. As [`Role::Instance`] on a file, it first
    /// takes the exclusive lock on `<database>-instance.lock` (failing at once with
    /// [`StoreError::InUse`] when another instance holds it), and after migrating frees every
    /// lease that earlier instances registered: they are all gone. In memory the role changes
    /// nothing.
    pub async fn connect_as(
        database_url: &str,
        keys: Arc<KeyRing>,
        role: Role,
    ) -> Result<Self, StoreError> {
        let location = SqliteLocation::parse(database_url)?;
        let mut instance_lock = None;
        // For a file, the writer is a connection of its own (`Writer::Own`).
        let (options, pool_options, own_writer) = match location {
            SqliteLocation::Memory => {
                let options = SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(db_error("connect"))?;
                // The database vanishes with its last connection: keep exactly one, forever.
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
                (options, pool, false)
            }
            SqliteLocation::File(path) => {
                let path = absolute(&path)?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::Database(format!("cannot create the database directory: {e}"))
                    })?;
                }
                if role == Role::Instance {
                    instance_lock = lock_instance(&path)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    // 32 MiB of page cache per connection (SQLite's default is 2 MiB), taken
                    // only as the database grows: with the webhook outbox's tables and
                    // indexes beside the connections, 2 MiB made every batch write miss
                    // (BENCHMARKS.md, "Webhooks").
                    .pragma("cache_size", "-32768");
                (
                    options,
                    SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE),
                    true,
                )
            }
        };
        let options = options.foreign_keys(true).busy_timeout(BUSY_TIMEOUT);
        let pool = pool_options
            .connect_with(options.clone())
            .await
            .map_err(db_error("connect"))?;
        migrate(&pool).await?;
        let writer = if own_writer {
            let conn = options.connect().await.map_err(db_error("connect"))?;
            Writer::Own(tokio::sync::Mutex::new(Some(conn)))
        } else {
            Writer::Pool {
                lock: tokio::sync::Mutex::new(()),
                pool: pool.clone(),
            }
        };
        let mut store = Self::new(pool, writer, keys);
        if let Some(lock) = instance_lock {
            let mut write = store.writing("free leases").await?;
            let freed = free_gone_instances_leases(&mut write).await?;
            drop(write);
            if freed > 0 {
                tracing::info!(
                    freed,
                    "freed the refresh leases a previous instance left behind"
                );
            }
            store.instance = Some(Instance {
                _lock: lock,
                registered: Mutex::default(),
            });
        }
        Ok(store)
    }

    /// A store over an existing pool (for example one shared with another store that holds a
    /// different key ring, as key rotation tests do). Runs the migrations. Its writes take
    /// whichever of the pool's connections is free.
    pub async fn from_pool(pool: SqlitePool, keys: Arc<KeyRing>) -> Result<Self, StoreError> {
        migrate(&pool).await?;
        let writer = Writer::Pool {
            lock: tokio::sync::Mutex::new(()),
            pool: pool.clone(),
        };
        Ok(Self::new(pool, writer, keys))
    }

    fn new(pool: SqlitePool, writer: Writer, keys: Arc<KeyRing>) -> Self {
        Self {
            pool,
            writer,
            keys,
            instance: None,
            outbox_on: AtomicBool::new(false),
        }
    }

    /// As the serving instance, records `owner` in `lease_owners` before its first lease, so
    /// the next instance to open the file frees that lease if this process dies holding it.
    /// Once per owner; a tool records nothing.
    async fn register(&self, owner: &str) -> Result<(), StoreError> {
        let Some(instance) = &self.instance else {
            return Ok(());
        };
        if lock(&instance.registered).contains(owner) {
            return Ok(());
        }
        let mut write = self.writing("register lease owner").await?;
        sqlx::query(
            "INSERT OR IGNORE INTO lease_owners (owner, lock_key, registered_at) \
             VALUES (?, NULL, ?)",
        )
        .bind(owner.to_owned())
        .bind(unix(OffsetDateTime::now_utc()))
        .execute(write.conn())
        .await
        .map_err(db_error("register lease owner"))?;
        lock(&instance.registered).insert(owner.to_owned());
        Ok(())
    }

    fn outbox_on(&self) -> bool {
        self.outbox_on.load(Ordering::Relaxed)
    }

    /// Takes the write lock, with the connection every write runs on.
    async fn writing(&self, op: &'static str) -> Result<Writing<'_>, StoreError> {
        match &self.writer {
            Writer::Own(conn) => {
                tokio::sync::MutexGuard::try_map(conn.lock().await, Option::as_mut)
                    .map(Writing::Own)
                    .map_err(|_| StoreError::Database(format!("{op}: the store is closed")))
            }
            Writer::Pool { lock, pool } => {
                let held = lock.lock().await;
                let conn = pool.acquire().await.map_err(db_error(op))?;
                Ok(Writing::Pool { _held: held, conn })
            }
        }
    }

    /// Runs `f` on the connection every write of this store runs on, holding the write lock
    /// (for backend-specific tests). `f` must leave no transaction open (every later write
    /// would run inside it) and must not call this store (its writes would wait for `f`).
    #[doc(hidden)]
    pub async fn with_writer<T>(
        &self,
        f: impl AsyncFnOnce(&mut SqliteConnection) -> T,
    ) -> Result<T, StoreError> {
        let mut write = self.writing("writer").await?;
        Ok(f(write.conn()).await)
    }

    /// The read pool, for backend-specific tests. A write through it bypasses the store's
    /// write lock and its writer connection.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// [`Store::update_batch`] for distinct keys: one `UPDATE … FROM (VALUES …)` statement, so
    /// one round trip to the connection's thread and one commit, joined on key and expected
    /// version. With the outbox on, `was` (the rows' prior states, see
    /// [`Store::update_batch_from`]) decides the events beforehand: none, the same statement;
    /// some, the statement and their `INSERT` in one `BEGIN IMMEDIATE` transaction. Without
    /// it the old rows are read first ([`SqliteStore::update_distinct_with_events`]).
    async fn update_distinct(
        &self,
        conns: &[Connection],
        was: Option<&[Prior]>,
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let mut out: Vec<Option<Result<ConnectionMeta, StoreError>>> =
            (0..conns.len()).map(|_| None).collect();
        let mut qb = QueryBuilder::<Sqlite>::new(BATCH_PREFIX.as_str());
        let mut rows = 0;
        let mut index = std::collections::HashMap::with_capacity(conns.len());
        for (i, conn) in conns.iter().enumerate() {
            let values = match RowValues::seal(&self.keys, conn) {
                Ok(values) => values,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            if rows > 0 {
                qb.push(", ");
            }
            rows += 1;
            push_batch_row(&mut qb, values, conn);
            index.insert(conn.key().clone(), i);
        }
        qb.push(BATCH_SUFFIX.as_str());
        if rows == 0 {
            return Ok(out.into_iter().flatten().collect());
        }
        // The events each row raises if written, when the caller said how the rows were;
        // else, with the outbox on, the old rows must be read first.
        let mut raised = match (self.outbox_on(), was) {
            (false, _) => Vec::new(),
            (true, Some(was)) => {
                let mut raised = events_from_prior(conns, was)?;
                // A row that could not be sealed is not written: nothing to raise.
                for (row_events, result) in raised.iter_mut().zip(&out) {
                    if result.is_some() {
                        row_events.clear();
                    }
                }
                raised
            }
            (true, None) => {
                return self
                    .update_distinct_with_events(conns, qb, index, out)
                    .await;
            }
        };
        // The write lock and its connection, until the batch is committed.
        {
            let mut write = self.writing("update").await?;
            let (returned, tx) = if raised.iter().all(Vec::is_empty) {
                let returned = qb.build().fetch_all(write.conn()).await;
                (returned.map_err(db_error("update"))?, None)
            } else {
                let mut tx = write.begin("update").await?;
                let returned = qb.build().fetch_all(&mut *tx).await;
                (returned.map_err(db_error("update"))?, Some(tx))
            };
            let mut events = Vec::new();
            for row in &returned {
                let key = key_from_row(row)?;
                let i = *index.get(&key).ok_or_else(|| corrupt("batch key"))?;
                out[i] = Some(written_meta(
                    &conns[i],
                    get(row, "created_at")?,
                    get(row, "version")?,
                ));
                if let Some(row_events) = raised.get_mut(i) {
                    events.append(row_events);
                }
            }
            if let Some(mut tx) = tx {
                outbox::insert_events(&mut tx, &events).await?;
                tx.commit().await.map_err(db_error("update"))?;
            }
        }
        let mut results = Vec::with_capacity(conns.len());
        for (i, result) in out.into_iter().enumerate() {
            results.push(match result {
                Some(result) => result,
                None => Err(self.missed_write(conns[i].key()).await),
            });
        }
        Ok(results)
    }

    /// The rest of [`SqliteStore::update_distinct`] with the outbox on: in one transaction,
    /// what the rows' status and failure count were (one read of those two columns: all the
    /// event rules look at), the batch statement, and the events of the rows it wrote. A row
    /// it did not write is `NotFound` when the read did not find it, else `Conflict`.
    async fn update_distinct_with_events(
        &self,
        conns: &[Connection],
        mut qb: QueryBuilder<Sqlite>,
        index: std::collections::HashMap<ConnectionKey, usize>,
        mut out: Vec<Option<Result<ConnectionMeta, StoreError>>>,
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let mut write = self.writing("update").await?;
        let mut tx = write.begin("update").await?;
        let old = read_states(&mut tx, index.keys()).await?;
        let returned = qb
            .build()
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error("update"))?;
        let mut events = Vec::new();
        for row in &returned {
            let key = key_from_row(row)?;
            let i = *index.get(&key).ok_or_else(|| corrupt("batch key"))?;
            let meta = written_meta(&conns[i], get(row, "created_at")?, get(row, "version")?)?;
            // A row written was read.
            if let Some(&prior) = old.get(&key) {
                events.extend(update_events(prior, &meta));
            }
            out[i] = Some(Ok(meta));
        }
        outbox::insert_events(&mut tx, &events).await?;
        tx.commit().await.map_err(db_error("update"))?;
        Ok(out
            .into_iter()
            .zip(conns)
            .map(|(result, conn)| {
                result.unwrap_or_else(|| {
                    Err(if old.contains_key(conn.key()) {
                        StoreError::Conflict
                    } else {
                        StoreError::NotFound
                    })
                })
            })
            .collect())
    }

    /// [`Store::update_batch`] with a key written more than once: one transaction, one
    /// statement per row in the order given, so later writes see earlier ones.
    async fn update_in_order(
        &self,
        conns: &[Connection],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        // Seal before taking the write lock, so the lock is held for the writes alone.
        let values: Vec<_> = conns
            .iter()
            .map(|c| RowValues::seal(&self.keys, c))
            .collect();
        let mut write = self.writing("update").await?;
        let mut tx = write.begin("update").await?;
        let outbox = self.outbox_on();
        let mut out = Vec::with_capacity(conns.len());
        for (conn, values) in conns.iter().zip(values) {
            let result = match values {
                Ok(values) if outbox => update_with_events(&mut tx, conn, values).await,
                Ok(values) => update_row(&mut tx, conn, values).await,
                Err(e) => Err(e),
            };
            // A database failure leaves the transaction in doubt: none of the batch counts.
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
    async fn missed_write(&self, key: &ConnectionKey) -> StoreError {
        match self.pool.acquire().await {
            Ok(mut db) => missed_write(&mut db, key).await,
            Err(e) => db_error("update")(e),
        }
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

    /// Closes the writer and the pool, waiting for connections to finish (graceful
    /// shutdown). A write after this fails.
    pub async fn close(&self) {
        if let Writer::Own(conn) = &self.writer
            && let Some(conn) = conn.lock().await.take()
            && let Err(e) = sqlx::Connection::close(conn).await
        {
            tracing::warn!(error = %e, "closing the SQLite writer connection failed");
        }
        self.pool.close().await;
    }
}

/// The migrations [`SqliteStore`] runs on connect.
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

/// Where a `database_url` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    /// `sqlite::memory:`
    Memory,
    /// A file; relative paths are relative to the current directory.
    File(PathBuf),
}

impl SqliteLocation {
    /// Parses `sqlite://relative/path`, `sqlite:///absolute/path` or `sqlite::memory:`.
    ///
    /// The path is taken literally (no percent-decoding); `?` and `#` are rejected so that a
    /// URL written for another tool's query options fails loudly instead of naming a file.
    /// The error never repeats the URL, which for a mistyped PostgreSQL URL could hold a
    /// password.
    pub fn parse(database_url: &str) -> Result<Self, StoreError> {
        if database_url == "sqlite::memory:" {
            return Ok(Self::Memory);
        }
        let bad = || StoreError::Database(BAD_URL.to_owned());
        let path = database_url.strip_prefix("sqlite://").ok_or_else(bad)?;
        if path.is_empty() || path.ends_with('/') || path.contains(['?', '#', '\0']) {
            return Err(bad());
        }
        Ok(Self::File(PathBuf::from(path)))
    }
}

/// The file a serving instance locks beside its database: `<database>-instance.lock`.
pub fn instance_lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-instance.lock");
    PathBuf::from(name)
}

/// Takes the exclusive lock that makes this process the database's one instance, and writes
/// its pid into the file for the message the next one gets. Never waits. `None` on a file
/// system without locks: the instance then runs as before this lock existed (a second one is
/// not refused, and leases left by a dead one expire), with a warning.
fn lock_instance(database: &Path) -> Result<Option<File>, StoreError> {
    let path = instance_lock_path(database);
    let cannot =
        |e: std::io::Error| StoreError::Database(format!("cannot lock {}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(StoreError::InUse {
                database: database.to_owned(),
                lock_file: path,
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(lock_file = %path.display(), error = %e,
                "this file system has no file locks: a second instance on this database \
                 would not be refused, and a dead instance's refresh leases will expire \
                 instead of being freed at start");
            return Ok(None);
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(cannot(e)),
    }
    file.set_len(0).map_err(cannot)?;
    writeln!(file, "{}", std::process::id()).map_err(cannot)?;
    Ok(Some(file))
}

/// Frees the leases of every owner an earlier instance registered, and forgets them: this
/// process holds the instance lock, so those instances are gone. One transaction.
async fn free_gone_instances_leases(write: &mut Writing<'_>) -> Result<u64, StoreError> {
    let mut tx = write.begin("free leases").await?;
    let freed = sqlx::query(
        "UPDATE connections SET lease_owner = NULL, lease_until = NULL \
         WHERE lease_owner IN (SELECT owner FROM lease_owners)",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_error("free leases"))?
    .rows_affected();
    sqlx::query("DELETE FROM lease_owners")
        .execute(&mut *tx)
        .await
        .map_err(db_error("free leases"))?;
    tx.commit().await.map_err(db_error("free leases"))?;
    Ok(freed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn absolute(path: &Path) -> Result<PathBuf, StoreError> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| StoreError::Database(format!("cannot resolve the current directory: {e}")))?;
    Ok(cwd.join(path))
}

/// The columns a put or update writes, in the order [`bind_values`] binds them.
/// `created_at` and `version` are each statement's own business.
const WRITE_SET: &str = "access_token = ?, access_key_id = ?, refresh_token = ?, \
     refresh_key_id = ?, token_type = ?, expires_at = ?, refresh_expires_at = ?, issued_at = ?, \
     scopes = ?, metadata = ?, status = ?, last_refreshed_at = ?, consecutive_failures = ?, \
     last_error_code = ?, last_error_message = ?, last_error_at = ?, updated_at = ?, \
     next_refresh_at = ?, last_error_provider = ?";

/// Creates a row. Its version starts above every deleted version (see `store_state` in the
/// migration), so an update prepared against a deleted incarnation of this key can never
/// match the new one.
const INSERT_SQL: &str = "INSERT INTO connections (access_token, access_key_id, refresh_token, \
     refresh_key_id, token_type, expires_at, refresh_expires_at, issued_at, scopes, metadata, \
     status, last_refreshed_at, consecutive_failures, last_error_code, last_error_message, \
     last_error_at, updated_at, next_refresh_at, last_error_provider, user_id, provider, \
     account_id, created_at, version) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, \
     (SELECT max_deleted_version + 1 FROM store_state WHERE id = 1)) \
     RETURNING created_at, version";

/// [`INSERT_SQL`] that does nothing (and returns no row) when the key exists.
static INSERT_IF_ABSENT_SQL: LazyLock<String> = LazyLock::new(|| {
    INSERT_SQL.replace(
        " RETURNING",
        " ON CONFLICT (user_id, provider, account_id) DO NOTHING RETURNING",
    )
});

const KEY_MATCH: &str = "user_id = ? AND provider = ? AND account_id = ?";

/// Binds the values in [`WRITE_SET`] order.
fn bind_values<'q>(values: RowValues, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
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

/// [`SqliteStore::update_distinct`]'s statement up to its rows: a `VALUES` list named `v`
/// whose columns are the written ones prefixed `new_`, then the key and expected version.
static BATCH_PREFIX: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = WRITE_COLUMNS.iter().map(|c| format!("new_{c}")).collect();
    format!(
        "WITH v({}, key_user_id, key_provider, key_account_id, expected_version) AS (VALUES ",
        columns.join(", ")
    )
});

/// The rest of [`BATCH_PREFIX`]'s statement, after the rows. RETURNING may only name the
/// updated table, so rows are matched back by key.
static BATCH_SUFFIX: LazyLock<String> = LazyLock::new(|| {
    let set: Vec<String> = WRITE_COLUMNS
        .iter()
        .map(|c| format!("{c} = v.new_{c}"))
        .collect();
    format!(
        ") UPDATE connections SET {}, version = connections.version + 1, \
         lease_owner = NULL, lease_until = NULL \
         FROM v WHERE connections.user_id = v.key_user_id \
           AND connections.provider = v.key_provider \
           AND connections.account_id = v.key_account_id \
           AND connections.version = v.expected_version \
         RETURNING user_id, provider, account_id, created_at, version",
        set.join(", ")
    )
});

/// The statements run on every token read and every refresh, formatted once.
static GET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {META_COLUMNS}, access_token, refresh_token FROM connections WHERE {KEY_MATCH}")
});
static UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connections SET {WRITE_SET}, version = version + 1, \
         lease_owner = NULL, lease_until = NULL \
         WHERE {KEY_MATCH} AND version = ? RETURNING created_at, version"
    )
});
static EXISTS_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT 1 FROM connections WHERE {KEY_MATCH}"));

/// One row of [`BATCH_PREFIX`]'s `VALUES`: `(written values…, key…, expected version)`.
fn push_batch_row(qb: &mut QueryBuilder<Sqlite>, values: RowValues, conn: &Connection) {
    let s = values.sealed;
    let key = conn.key();
    let mut row = qb.separated(", ");
    row.push_unseparated("(");
    row.push_bind(s.access)
        .push_bind(s.access_key_id)
        .push_bind(s.refresh)
        .push_bind(s.refresh_key_id)
        .push_bind(values.token_type)
        .push_bind(values.expires_at)
        .push_bind(values.refresh_expires_at)
        .push_bind(values.issued_at)
        .push_bind(values.scopes)
        .push_bind(values.metadata)
        .push_bind(values.status)
        .push_bind(values.last_refreshed_at)
        .push_bind(values.consecutive_failures)
        .push_bind(values.last_error_code)
        .push_bind(values.last_error_message)
        .push_bind(values.last_error_at)
        .push_bind(values.updated_at)
        .push_bind(values.next_refresh_at)
        .push_bind(values.last_error_provider)
        .push_bind(key.user_id.as_str().to_owned())
        .push_bind(key.provider.as_str().to_owned())
        .push_bind(key.account_id.as_str().to_owned())
        .push_bind(conn.meta.version);
    row.push_unseparated(")");
}

/// Creates a connect session: its [`SESSION_COLUMNS`] (bound by [`bind_session`]), then
/// its token hash. No state hash, browser hash or flow yet.
static INSERT_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO connect_sessions ({}, token_hash) VALUES ({}?)",
        SESSION_COLUMNS.join(", "),
        "?, ".repeat(SESSION_COLUMNS.len())
    )
});

/// A connect session by one unique column, with its browser hash (to classify a claim).
fn session_by_sql(column: &str) -> String {
    format!(
        "SELECT {}, browser_hash FROM connect_sessions WHERE {column} = ?",
        SESSION_COLUMNS.join(", ")
    )
}
static SESSION_BY_ID_SQL: LazyLock<String> = LazyLock::new(|| session_by_sql("id"));
static SESSION_BY_TOKEN_SQL: LazyLock<String> = LazyLock::new(|| session_by_sql("token_hash"));
static SESSION_BY_STATE_SQL: LazyLock<String> = LazyLock::new(|| session_by_sql("state_hash"));

/// [`Store::open_connect_session`]'s one conditional write: only a pending, unexpired
/// session is opened. `id` pins the row whose identity sealed the flow.
static OPEN_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connect_sessions SET state = 'opened', opened_at = ?1, state_hash = ?2, \
         browser_hash = ?3, flow = ?4, flow_key_id = ?5 \
         WHERE token_hash = ?6 AND id = ?7 AND state = 'pending' AND expires_at > ?1 \
         RETURNING {}",
        SESSION_COLUMNS.join(", ")
    )
});

/// [`Store::claim_connect_callback`]'s one conditional write: only an opened, unexpired
/// session, from the browser that opened it, moves to `exchanging`. A NULL browser hash
/// matches nothing.
static CLAIM_SESSION_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE connect_sessions SET state = 'exchanging' \
         WHERE state_hash = ? AND state = 'opened' AND browser_hash = ? AND expires_at > ? \
         RETURNING {}, flow",
        SESSION_COLUMNS.join(", ")
    )
});

/// Ends an unfinished session and erases its flow secrets.
const FINISH_SESSION_SQL: &str = "UPDATE connect_sessions SET state = ?, error_code = ?, \
     error_message = ?, connected_account_id = ?, finished_at = ?, flow = NULL, \
     flow_key_id = NULL WHERE id = ? AND state IN ('pending', 'opened', 'exchanging')";

/// [`FINISH_SESSION_SQL`] returning the session, for its event.
static FINISH_SESSION_RETURNING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{FINISH_SESSION_SQL} RETURNING {}",
        SESSION_COLUMNS.join(", ")
    )
});

/// A delete that returns the row as it was, for its event.
static DELETE_RETURNING_SQL: LazyLock<String> =
    LazyLock::new(|| format!("DELETE FROM connections WHERE {KEY_MATCH} RETURNING {META_COLUMNS}"));

static META_BY_KEY_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {META_COLUMNS} FROM connections WHERE {KEY_MATCH}"));

static WEBHOOK_STATS_SQL: LazyLock<String> = LazyLock::new(|| webhook_stats_sql("?1"));

/// The connection's metadata as stored, read on `db` (inside a write transaction, the row
/// as the write will find it).
async fn read_meta(
    db: &mut sqlx::SqliteConnection,
    key: &ConnectionKey,
) -> Result<Option<ConnectionMeta>, StoreError> {
    let row = bind_key(sqlx::query(AssertSqlSafe(META_BY_KEY_SQL.as_str())), key)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_error("read connection"))?;
    row.as_ref().map(meta_from_row).transpose()
}

/// The [`Prior`] of several rows, read in one statement: those of the keys that exist.
async fn read_states(
    db: &mut sqlx::SqliteConnection,
    keys: impl Iterator<Item = &ConnectionKey>,
) -> Result<HashMap<ConnectionKey, Prior>, StoreError> {
    let keys: Vec<&ConnectionKey> = keys.collect();
    let mut found = HashMap::with_capacity(keys.len());
    // Three bound variables a key, far under SQLite's 32766.
    for chunk in keys.chunks(1000) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT user_id, provider, account_id, status, consecutive_failures \
             FROM connections WHERE (user_id, provider, account_id) IN (VALUES ",
        );
        let mut rows = qb.separated(", ");
        for key in chunk {
            rows.push("(")
                .push_bind_unseparated(key.user_id.as_str().to_owned())
                .push_unseparated(", ")
                .push_bind_unseparated(key.provider.as_str().to_owned())
                .push_unseparated(", ")
                .push_bind_unseparated(key.account_id.as_str().to_owned())
                .push_unseparated(")");
        }
        qb.push(")");
        let rows = qb
            .build()
            .fetch_all(&mut *db)
            .await
            .map_err(db_error("read connections"))?;
        for row in &rows {
            found.insert(key_from_row(row)?, prior_from_row(row)?);
        }
    }
    Ok(found)
}

/// [`update_row`] with the outbox on: reads the row as it was in the same transaction,
/// writes, and inserts the events the write raises. A missing row is `NotFound` and a
/// stale version `Conflict`, and then nothing is written.
async fn update_with_events(
    db: &mut sqlx::SqliteConnection,
    conn: &Connection,
    values: RowValues,
) -> Result<ConnectionMeta, StoreError> {
    let old = read_meta(db, conn.key())
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
fn deleted_events(key: &ConnectionKey, row: &sqlx::sqlite::SqliteRow) -> Vec<NewEvent> {
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

/// Binds a session's values in [`SESSION_COLUMNS`] order.
fn bind_session<'q>(values: SessionValues, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
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

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

fn bind_key<'q>(query: SqliteQuery<'q>, key: &ConnectionKey) -> SqliteQuery<'q> {
    query
        .bind(key.user_id.as_str().to_owned())
        .bind(key.provider.as_str().to_owned())
        .bind(key.account_id.as_str().to_owned())
}

/// One compare-and-swap write of `conn` (see [`Store::update`]) on `db`, inside or outside
/// a transaction. One statement, so the version check and the write are atomic. It ends the
/// refresh: the lease is released in the same write.
async fn update_row(
    db: &mut sqlx::SqliteConnection,
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
        None => Err(missed_write(db, key).await),
    }
}

/// Whether the connection exists.
async fn exists(db: &mut sqlx::SqliteConnection, key: &ConnectionKey) -> Result<bool, sqlx::Error> {
    let row = bind_key(sqlx::query(AssertSqlSafe(EXISTS_SQL.as_str())), key)
        .fetch_optional(&mut *db)
        .await?;
    Ok(row.is_some())
}

/// `Conflict` if the connection exists, else `NotFound`: what an update that matched no row
/// means.
async fn missed_write(db: &mut sqlx::SqliteConnection, key: &ConnectionKey) -> StoreError {
    match exists(db, key).await {
        Ok(true) => StoreError::Conflict,
        Ok(false) => StoreError::NotFound,
        Err(e) => db_error("update")(e),
    }
}

#[async_trait]
impl Store for SqliteStore {
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
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads and
        // then writes fails at once (SQLITE_BUSY, no busy wait) if another writer committed
        // in between, which would surface as spurious errors under concurrent imports.
        let mut write = self.writing("put").await?;
        let mut tx = write.begin("put").await?;
        // With the outbox on, the whole row as it was (its events depend on it); otherwise
        // only what the write needs.
        let old = if self.outbox_on() {
            Some(read_meta(&mut tx, key).await?)
        } else {
            None
        };
        let existing: Option<(i64, i64)> = match &old {
            Some(old) => old.as_ref().map(|m| (m.version, unix(m.created_at))),
            None => sqlx::query_as(
                "SELECT version, created_at FROM connections \
                 WHERE user_id = ? AND provider = ? AND account_id = ?",
            )
            .bind(key.user_id.as_str())
            .bind(key.provider.as_str())
            .bind(key.account_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("put"))?,
        };

        let (created_at, version, outcome) = match existing {
            Some((old_version, created_at)) => {
                let version = old_version + 1;
                let sql =
                    format!("UPDATE connections SET {WRITE_SET}, version = ? WHERE {KEY_MATCH}");
                let query = bind_values(values, sqlx::query(AssertSqlSafe(sql))).bind(version);
                bind_key(query, key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error("put"))?;
                (created_at, version, PutOutcome::Replaced)
            }
            None => {
                let query = bind_values(values, sqlx::query(INSERT_SQL));
                let row = bind_key(query, key)
                    .bind(unix(conn.meta.created_at))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_error("put"))?;
                (
                    get(&row, "created_at")?,
                    get(&row, "version")?,
                    PutOutcome::Created,
                )
            }
        };
        let meta = written_meta(conn, created_at, version)?;
        if let Some(old) = old {
            let events =
                connection_change_events(old.as_ref(), Some(&meta), Write::Put, meta.updated_at);
            outbox::insert_events(&mut tx, &events).await?;
        }
        tx.commit().await.map_err(db_error("put"))?;
        Ok((meta, outcome))
    }

    async fn insert_if_absent(
        &self,
        conn: &Connection,
    ) -> Result<Option<ConnectionMeta>, StoreError> {
        let values = RowValues::seal(&self.keys, conn)?;
        let mut write = self.writing("insert").await?;
        let query = bind_values(
            values,
            sqlx::query(AssertSqlSafe(INSERT_IF_ABSENT_SQL.as_str())),
        );
        let query = bind_key(query, conn.key()).bind(unix(conn.meta.created_at));
        // An application token's row (what this is for) raises no event: no transaction.
        if !self.outbox_on() || conn.key().is_app() {
            let row = query
                .fetch_optional(write.conn())
                .await
                .map_err(db_error("insert"))?;
            return row
                .map(|row| written_meta(conn, get(&row, "created_at")?, get(&row, "version")?))
                .transpose();
        }
        let mut tx = write.begin("insert").await?;
        let row = query
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("insert"))?;
        let Some(row) = row else {
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
        let mut write = self.writing("update").await?;
        if self.outbox_on() {
            let mut tx = write.begin("update").await?;
            let meta = update_with_events(&mut tx, conn, values).await?;
            tx.commit().await.map_err(db_error("update"))?;
            return Ok(meta);
        }
        update_row(write.conn(), conn, values).await
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
        let mut write = self.writing("delete").await?;
        if self.outbox_on() {
            let mut tx = write.begin("delete").await?;
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
            let events = deleted_events(key, &row);
            outbox::insert_events(&mut tx, &events).await?;
            tx.commit().await.map_err(db_error("delete"))?;
            return Ok(true);
        }
        let done = sqlx::query(
            "DELETE FROM connections WHERE user_id = ? AND provider = ? AND account_id = ?",
        )
        .bind(key.user_id.as_str())
        .bind(key.provider.as_str())
        .bind(key.account_id.as_str())
        .execute(write.conn())
        .await
        .map_err(db_error("delete"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = query.effective_limit();
        let mut qb = list_query::<Sqlite>(META_COLUMNS, query, after.as_ref(), limit);
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
             ) GROUP BY key_id ORDER BY key_id",
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
        self.register(owner).await?;
        let sql = format!(
            "UPDATE connections SET lease_owner = ?, lease_until = ? WHERE {KEY_MATCH} \
             AND (lease_owner IS NULL OR lease_until <= ? OR lease_owner = ?)"
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(owner.to_owned())
            .bind(unix(until));
        let mut write = self.writing("try_lease").await?;
        let db = write.conn();
        let done = bind_key(query, key)
            .bind(unix(now))
            .bind(owner.to_owned())
            .execute(&mut *db)
            .await
            .map_err(db_error("try_lease"))?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        if exists(db, key).await.map_err(db_error("try_lease"))? {
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
        let sql =
            format!("UPDATE connections SET lease_until = ? WHERE {KEY_MATCH} AND lease_owner = ?");
        let query = sqlx::query(AssertSqlSafe(sql)).bind(unix(until));
        let mut write = self.writing("renew_lease").await?;
        let done = bind_key(query, key)
            .bind(owner.to_owned())
            .execute(write.conn())
            .await
            .map_err(db_error("renew_lease"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_lease(&self, key: &ConnectionKey, owner: &str) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE connections SET lease_owner = NULL, lease_until = NULL \
             WHERE {KEY_MATCH} AND lease_owner = ?"
        );
        let mut write = self.writing("release_lease").await?;
        bind_key(sqlx::query(AssertSqlSafe(sql)), key)
            .bind(owner.to_owned())
            .execute(write.conn())
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
        // One statement: SQLite runs it under its single writer lock, so two claimers can
        // never take the same row. INDEXED BY: left to itself the planner reads every active
        // row through the status index and sorts them, which under a backlog of thousands
        // of due rows costs a millisecond per claim; the partial index is already in due
        // order and the scan stops at the limit. RETURNING has no order; the refreshes start
        // earliest first.
        let sql = format!(
            "UPDATE connections SET lease_owner = ?1, lease_until = ?2 \
             WHERE (user_id, provider, account_id) IN ( \
                 SELECT user_id, provider, account_id \
                 FROM connections INDEXED BY connections_next_refresh \
                 WHERE status = 'active' AND next_refresh_at IS NOT NULL \
                   AND next_refresh_at <= ?3 \
                   AND (lease_owner IS NULL OR lease_until <= ?3) \
                 ORDER BY next_refresh_at LIMIT ?4) \
             RETURNING {META_COLUMNS}, access_token, refresh_token"
        );
        self.register(owner).await?;
        let mut write = self.writing("claim_due").await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(owner.to_owned())
            .bind(unix(until))
            .bind(unix(now))
            .bind(i64::from(limit.max(1)))
            .fetch_all(write.conn())
            .await
            .map_err(db_error("claim_due"))?;
        let mut claimed = rows
            .iter()
            .map(|row| claimed_from_row(&self.keys, row))
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|c| {
            c.connection
                .as_ref()
                .ok()
                .and_then(|conn| conn.meta.next_refresh_at)
        });
        Ok(claimed)
    }

    async fn insert_connect_session(
        &self,
        session: &ConnectSession,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let values = SessionValues::new(session)?;
        let mut write = self.writing("insert connect session").await?;
        // A duplicate id or token hash fails on its UNIQUE constraint; SQLite's message
        // names the column, never the value.
        bind_session(
            values,
            sqlx::query(AssertSqlSafe(INSERT_SESSION_SQL.as_str())),
        )
        .bind(token_hash.to_owned())
        .execute(write.conn())
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
        let mut write = self.writing("open connect session").await?;
        let row = sqlx::query(AssertSqlSafe(OPEN_SESSION_SQL.as_str()))
            .bind(unix(now))
            .bind(flow.state_hash.clone())
            .bind(flow.browser_hash.clone())
            .bind(sealed)
            .bind(key_id)
            .bind(token_hash.to_owned())
            .bind(found.id)
            .fetch_optional(write.conn())
            .await
            .map_err(db_error("open connect session"))?;
        drop(write);
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
        let mut write = self.writing("claim connect callback").await?;
        // A transaction only so that a flow that does not open (a missing key) is not
        // burnt: the claim is rolled back and the session stays `opened`.
        let mut tx = write.begin("claim connect callback").await?;
        let row = sqlx::query(AssertSqlSafe(CLAIM_SESSION_SQL.as_str()))
            .bind(state_hash.to_owned())
            .bind(browser_hash.map(str::to_owned))
            .bind(unix(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error("claim connect callback"))?;
        let Some(row) = row else {
            drop(tx);
            drop(write);
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
        let mut write = self.writing("finish connect session").await?;
        if self.outbox_on() && finish.error().is_some() {
            let mut tx = write.begin("finish connect session").await?;
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
            .execute(write.conn())
            .await
            .map_err(db_error("finish connect session"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge_connect_sessions(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut write = self.writing("purge connect sessions").await?;
        let done = sqlx::query("DELETE FROM connect_sessions WHERE expires_at < ?")
            .bind(unix(before))
            .execute(write.conn())
            .await
            .map_err(db_error("purge connect sessions"))?;
        Ok(done.rows_affected())
    }

    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(next_refresh_at, COALESCE(lease_until, next_refresh_at))) \
             FROM connections WHERE status = 'active' AND next_refresh_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("next_due"))?;
        at.map(from_unix).transpose()
    }

    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        let (scheduled, due, retrying): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(next_refresh_at <= ?), SUM(consecutive_failures > 0) \
             FROM connections WHERE status = 'active' AND next_refresh_at IS NOT NULL",
        )
        .bind(unix(now))
        .fetch_one(&self.pool)
        .await
        .map_err(db_error("queue_stats"))?;
        let count = |n: i64| u64::try_from(n).map_err(|_| corrupt("count"));
        Ok(QueueStats {
            scheduled: count(scheduled)?,
            due_now: count(due.unwrap_or(0))?,
            retrying: count(retrying.unwrap_or(0))?,
        })
    }

    async fn reseal_batch(
        &self,
        after: Option<&ConnectionKey>,
        limit: u32,
    ) -> Result<ResealBatch, StoreError> {
        let active = self.keys.active_key_id().as_str().to_owned();
        let limit = limit.max(1);
        let mut qb = QueryBuilder::<Sqlite>::new(
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
            let sql = format!(
                "UPDATE connections SET access_token = ?, access_key_id = ?, refresh_token = ?, \
                 refresh_key_id = ? WHERE {KEY_MATCH} AND access_token = ? AND refresh_token IS ?"
            );
            let query = sqlx::query(AssertSqlSafe(sql))
                .bind(sealed.access)
                .bind(sealed.access_key_id)
                .bind(sealed.refresh)
                .bind(sealed.refresh_key_id);
            let mut write = self.writing("reseal").await?;
            let done = bind_key(query, &key)
                .bind(old_access)
                .bind(old_refresh)
                .execute(write.conn())
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
        if events.is_empty() {
            return Ok(());
        }
        let mut write = self.writing("insert events").await?;
        let mut tx = write.begin("insert events").await?;
        outbox::insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(db_error("insert events"))
    }

    async fn dispatch_events(
        &self,
        endpoints: &[(String, BTreeSet<EventType>)],
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut write = self.writing("dispatch events").await?;
        let mut tx = write.begin("dispatch events").await?;
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
        let mut write = self.writing("claim deliveries").await?;
        let mut tx = write.begin("claim deliveries").await?;
        let claimed = outbox::claim(&mut tx, now, owner, lease_until, limit, capacity).await?;
        tx.commit().await.map_err(db_error("claim deliveries"))?;
        Ok(claimed)
    }

    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut write = self.writing("finish delivery").await?;
        outbox::finish(write.conn(), id, owner, outcome, now).await
    }

    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let before = query
            .cursor
            .as_deref()
            .map(decode_delivery_cursor)
            .transpose()?;
        let limit = query.effective_limit();
        let rows = delivery_list_query::<Sqlite>(query, before.as_deref(), limit)
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
        let mut write = self.writing("retry delivery").await?;
        outbox::retry(write.conn(), id, now).await
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
        let mut write = self.writing("purge webhook events").await?;
        let mut tx = write.begin("purge webhook events").await?;
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
    fn parses_database_urls() {
        assert_eq!(
            SqliteLocation::parse("sqlite::memory:").ok(),
            Some(SqliteLocation::Memory)
        );
        assert_eq!(
            SqliteLocation::parse("sqlite://tokenwarden-data/tokenwarden.db").ok(),
            Some(SqliteLocation::File(PathBuf::from(
                "tokenwarden-data/tokenwarden.db"
            )))
        );
        assert_eq!(
            SqliteLocation::parse("sqlite:///var/lib/tw/db.sqlite").ok(),
            Some(SqliteLocation::File(PathBuf::from("/var/lib/tw/db.sqlite")))
        );
        let relative = SqliteLocation::parse("sqlite://a/b.db").expect("parses");
        let SqliteLocation::File(path) = relative else {
            panic!("not a file")
        };
        assert!(path.is_relative());
        let resolved = absolute(&path).expect("resolves");
        assert!(resolved.is_absolute() && resolved.ends_with("a/b.db"));
    }

    #[test]
    fn rejects_other_urls_without_echoing_them() {
        for url in [
            "",
            "sqlite://",
            "sqlite:",
            "sqlite:db.sqlite",
            "sqlite://dir/",
            "sqlite://x.db?mode=ro",
            "postgres://user:hunter2@localhost/db",
        ] {
            let err = SqliteLocation::parse(url).expect_err(url);
            assert!(!err.to_string().contains("hunter2"));
            assert!(matches!(err, StoreError::Database(_)));
        }
    }

    #[test]
    fn the_instance_lock_sits_beside_the_database() {
        assert_eq!(
            instance_lock_path(Path::new("/var/lib/tw/tokenwarden.db")),
            PathBuf::from("/var/lib/tw/tokenwarden.db-instance.lock")
        );
    }

    /// Events written before migration 7 get their connection from their bodies: the
    /// connection's events and a reconnect session's failure are listed, the rest are not.
    #[tokio::test]
    async fn migration_7_finds_the_connection_of_older_events() {
        use crate::connection::ConnectionKey;
        use crate::store::fixtures::test_keys;

        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("pool");
        let before_7 = Migrator::with_migrations(
            migrator()
                .iter()
                .filter(|m| m.version < 7)
                .cloned()
                .collect(),
        );
        before_7.run(&pool).await.expect("migrations 1-6");
        let events = crate::store::fixtures::events_before_migration_7();
        for event in &events {
            sqlx::query(
                "INSERT INTO webhook_events (id, type, body, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&event.id)
            .bind(event.kind.as_str())
            .bind(&event.body)
            .bind(unix_ms(event.created_at))
            .execute(&pool)
            .await
            .expect("insert as before migration 7");
        }
        let store = SqliteStore::from_pool(pool, test_keys("k1", &["k1"]))
            .await
            .expect("migration 7");
        let key = ConnectionKey::parse("u ü", "reddit", "a 1").expect("key");
        let listed: Vec<String> = store
            .recent_connection_events(&key, 10)
            .await
            .expect("events")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            listed,
            crate::store::fixtures::EVENTS_OF_A1_NEWEST_FIRST.map(|i| events[i].id.clone()),
            "newest first, the others left out"
        );
    }

    #[test]
    fn migrations_are_embedded_in_order() {
        let migrator = migrator();
        let versions: Vec<i64> = migrator.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    }
}
