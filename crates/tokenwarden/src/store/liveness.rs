//! Lease owners' liveness on PostgreSQL: the advisory lock a [`PgStore`] holds for as long
//! as its process lives, and the registry (`lease_owners`, migration 0003) that ties the
//! owner ids it leases under to that lock.
//!
//! A store starts its keeper the first time it is asked for a lease (`try_lease` or
//! `claim_due`), so tools that only read never open the extra connection. The keeper holds
//! `pg_advisory_lock(LOCK_CLASS, key)` on a connection of its own, outside the pool, and
//! registers every owner id the store leases under with `key` before the first lease is
//! written. PostgreSQL releases the lock the moment that session ends: kill -9, a crash, a
//! lost network. A registered owner whose lock nobody holds is therefore gone, and its leases
//! may be taken at once (the SQL that decides that lives in `postgres`, built from
//! [`LIVE_CTE`] and [`owner_gone`]).
//!
//! When the keeper's connection drops while the process still runs (a database restart, a
//! failover, a proxy cutting idle sessions), the keeper takes the lock again on a new
//! connection at once, then with backoff, and re-registers every owner. Until it holds the
//! lock, new leases wait for it (up to [`WAIT`]), and the leases this process already holds
//! look free to other instances: one of them may take one over and refresh too. Nothing is
//! lost then either: both results are written by compare-and-swap on the row's version, so
//! exactly one of the two commits, and the warden keeps the stored grant when its own write
//! loses. Leases are renewed through the pool, which does not depend on this connection.
//!
//! This module does not decide who may take a lease, and it never touches `connections`.
//!
//! [`PgStore`]: super::PgStore

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{AssertSqlSafe, Postgres};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::StoreError;
use super::rows::{db_error, unix};

/// The first key of every lease liveness lock: "twlv". The second is the store's own key,
/// in `0..=i32::MAX` so that `pg_locks.objid` shows the same number.
pub(crate) const LOCK_CLASS: i32 = 0x7477_6c76;

/// The lock keys of live lease owners: every advisory lock of class [`LOCK_CLASS`] held (or
/// waited for) in this database. A `WITH` item; `MATERIALIZED` so `pg_locks` is read at
/// most once per statement, and only when a lease is contested.
pub(crate) static LIVE_CTE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "live AS MATERIALIZED ( \
             SELECT objid::bigint AS lock_key FROM pg_locks \
             WHERE locktype = 'advisory' AND classid = {LOCK_CLASS} AND objsubid = 2 \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )
});

/// Whether the lease owner in `column` is registered and its lock is not held: it is gone.
/// An owner that never registered (an older version) is never gone: its lease expires.
/// Needs [`LIVE_CTE`] in the statement's `WITH`.
pub(crate) fn owner_gone(column: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM lease_owners AS o WHERE o.owner = {column} \
                 AND o.lock_key NOT IN (SELECT lock_key FROM live))"
    )
}

/// The first pause before the keeper reconnects after a failed attempt, doubling per
/// failure in a row up to [`RETRY_MAX`]. The first reconnect after a loss is immediate.
const RETRY: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a lease request waits for the keeper to hold its lock before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// Keys tried in a row when the lock is taken (by another process with the same random
/// key, or by this process's own old session that the server has not noticed is dead).
const KEY_ATTEMPTS: usize = 8;
/// What the keeper listens on: nothing is ever sent; waiting for a notification is how it
/// learns at once that its connection is gone.
const CHANNEL: &str = "tokenwarden_liveness";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not holding the lock: not started, connecting, or reconnecting.
    Down,
    /// Holding the lock under this key, with every known owner registered under it.
    Alive(i64),
    /// The store closed.
    Stopped,
}

/// One store's liveness lock and the owners registered under it.
pub(crate) struct Liveness {
    shared: Arc<Shared>,
    keeper: Mutex<Option<Keeper>>,
}

struct Keeper {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

struct Shared {
    /// The store's pool: registrations are written through it, and the keeper's own
    /// connection is made with its options (so with its `search_path`).
    pool: PgPool,
    state: watch::Sender<State>,
    /// Owners registered under the current key. The keeper holds this lock while it
    /// changes key and re-registers, so a registration never lands under a stale key
    /// unnoticed.
    owners: tokio::sync::Mutex<HashSet<String>>,
    /// A copy of `owners` for the check every lease makes.
    known: RwLock<HashSet<String>>,
}

impl Liveness {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                state: watch::channel(State::Down).0,
                owners: tokio::sync::Mutex::default(),
                known: RwLock::default(),
            }),
            keeper: Mutex::default(),
        }
    }

    /// Makes sure this process holds its liveness lock and `owner` is registered under it,
    /// so that a lease written for `owner` now is known to be alive. Free (one read lock and
    /// one atomic read) once `owner` is registered and the lock held; otherwise starts the
    /// keeper, waits for the lock (up to [`WAIT`]) and registers `owner`.
    pub(crate) async fn ensure(&self, owner: &str) -> Result<(), StoreError> {
        if matches!(*self.shared.state.borrow(), State::Alive(_))
            && read(&self.shared.known).contains(owner)
        {
            return Ok(());
        }
        self.start();
        let mut state = self.shared.state.subscribe();
        loop {
            let waited = tokio::time::timeout(
                WAIT,
                state.wait_for(|s| matches!(s, State::Alive(_) | State::Stopped)),
            )
            .await;
            match waited.map(|s| s.map(|s| *s)) {
                Ok(Ok(State::Alive(_))) => {}
                Ok(Ok(_) | Err(_)) => {
                    return Err(StoreError::Database(
                        "lease: the store is closed".to_owned(),
                    ));
                }
                Err(_) => {
                    return Err(StoreError::Database(
                        "lease: this process cannot hold its liveness lock (the database \
                         is unreachable)"
                            .to_owned(),
                    ));
                }
            }
            let mut owners = self.shared.owners.lock().await;
            // The keeper changes state and key only while holding `owners`: read it again.
            let State::Alive(key) = *self.shared.state.borrow() else {
                continue;
            };
            if !owners.contains(owner) {
                register(&self.shared.pool, &[owner.to_owned()], key).await?;
                owners.insert(owner.to_owned());
                write(&self.shared.known).insert(owner.to_owned());
            }
            return Ok(());
        }
    }

    /// Starts the keeper unless it runs (or ran: a stopped store stays stopped).
    fn start(&self) {
        let mut keeper = lock(&self.keeper);
        if keeper.is_some() || *self.shared.state.borrow() == State::Stopped {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep(Arc::clone(&self.shared), stopped));
        *keeper = Some(Keeper { task, stop });
    }

    /// Releases the lock and closes its connection (the store is closing): from now on this
    /// process's leases are those of a gone owner.
    pub(crate) async fn stop(&self) {
        let keeper = lock(&self.keeper).take();
        self.shared.state.send_replace(State::Stopped);
        if let Some(keeper) = keeper {
            let _ = keeper.stop.send(true);
            let _ = keeper.task.await;
        }
    }

    /// [`Liveness::stop`] without waiting (the store is dropped): the connection closes when
    /// the aborted task drops it.
    pub(crate) fn abort(&self) {
        self.shared.state.send_replace(State::Stopped);
        if let Some(keeper) = lock(&self.keeper).take() {
            keeper.task.abort();
        }
    }
}

/// The keeper: takes the lock, registers the owners, waits until its connection is lost or
/// the store stops, and starts over.
async fn keep(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // A pool of one connection of its own: PgListener reconnects through a pool, and this
    // one must never wait behind (or take from) the store's.
    let own = super::postgres::pool_options(shared.pool.connect_options().as_ref())
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(super::postgres::CONNECT_TIMEOUT)
        .connect_lazy_with((*shared.pool.connect_options()).clone());
    let mut key = random_key();
    let mut pause = RETRY;
    let mut pruned = false;
    loop {
        let held = tokio::select! {
            held = hold(&shared, &own, &mut key) => held,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let mut listener = match held {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis(),
                    "cannot take this instance's lease liveness lock; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
                pause = (pause * 2).min(RETRY_MAX);
                continue;
            }
        };
        pause = RETRY;
        if !pruned {
            pruned = true;
            if let Err(e) = prune(&shared.pool).await {
                tracing::warn!(error = %e, "could not forget lease owners that are gone");
            }
        }
        let lost = tokio::select! {
            lost = wait_lost(&mut listener) => lost,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        shared.state.send_replace(State::Down);
        drop(listener);
        tracing::warn!(error = %lost,
            "lost the connection holding this instance's lease liveness lock; taking it again");
    }
    shared.state.send_replace(State::Stopped);
    // Closing waits for the connection's goodbye, so the server has released the lock when
    // `Liveness::stop` returns (give or take the server processing it).
    own.close().await;
}

/// Connects, takes the lock (on a new key if this one is taken), registers every known
/// owner under it and marks the store alive.
async fn hold(shared: &Shared, own: &PgPool, key: &mut i64) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(own)
        .await
        .map_err(db_error("liveness connect"))?;
    listener.ignore_pool_close_event(true);
    listener.eager_reconnect(false);
    listener
        .listen(CHANNEL)
        .await
        .map_err(db_error("liveness connect"))?;
    let mut attempts = 0;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(i32::try_from(*key).unwrap_or(0))
            .fetch_one(&mut listener)
            .await
            .map_err(db_error("liveness lock"))?;
        if taken {
            break;
        }
        attempts += 1;
        if attempts >= KEY_ATTEMPTS {
            return Err(StoreError::Database(
                "liveness lock: every key tried is taken".to_owned(),
            ));
        }
        *key = random_key();
    }
    let owners = shared.owners.lock().await;
    if !owners.is_empty() {
        let all: Vec<String> = owners.iter().cloned().collect();
        register(&shared.pool, &all, *key).await?;
    }
    shared.state.send_replace(State::Alive(*key));
    drop(owners);
    Ok(listener)
}

/// Waits until the keeper's connection is gone; what happened.
async fn wait_lost(listener: &mut PgListener) -> String {
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => {}
            Ok(None) => return "connection closed".to_owned(),
            Err(e) => return db_error("liveness")(e).to_string(),
        }
    }
}

/// Registers `owners` under `key` (replacing whatever key they had).
async fn register(pool: &PgPool, owners: &[String], key: i64) -> Result<(), StoreError> {
    sqlx::query::<Postgres>(
        "INSERT INTO lease_owners (owner, lock_key, registered_at) \
         SELECT owner, $2, $3 FROM UNNEST($1::text[]) AS owner \
         ON CONFLICT (owner) DO UPDATE \
         SET lock_key = EXCLUDED.lock_key, registered_at = EXCLUDED.registered_at",
    )
    .bind(owners)
    .bind(key)
    .bind(unix(OffsetDateTime::now_utc()))
    .execute(pool)
    .await
    .map_err(db_error("register lease owner"))?;
    Ok(())
}

/// Forgets owners that are gone and hold no lease any more (one per process that ever
/// leased, otherwise). Whatever it deletes could only have made a lease free sooner.
async fn prune(pool: &PgPool) -> Result<(), StoreError> {
    let sql = format!(
        "WITH {} DELETE FROM lease_owners \
         WHERE lock_key NOT IN (SELECT lock_key FROM live) \
           AND owner NOT IN (SELECT lease_owner FROM connections WHERE lease_owner IS NOT NULL)",
        *LIVE_CTE
    );
    let done = sqlx::query::<Postgres>(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .map_err(db_error("prune lease owners"))?;
    if done.rows_affected() > 0 {
        tracing::debug!(
            forgotten = done.rows_affected(),
            "forgot lease owners that are gone"
        );
    }
    Ok(())
}

/// A lock key in `0..=i32::MAX`.
fn random_key() -> i64 {
    i64::from(rand::random::<u32>() >> 1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fit_the_lock_and_the_column() {
        for _ in 0..1000 {
            let key = random_key();
            assert!((0..=i64::from(i32::MAX)).contains(&key));
        }
        assert!(LIVE_CTE.contains("classid = 1953983606"));
    }
}
