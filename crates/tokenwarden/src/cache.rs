//! The in-memory token cache and change following.
//!
//! The cache holds decrypted grants so a fresh token is answered without a store read: one
//! monotonic clock read decides a hit. An entry is trusted for `refresh.cache_ttl` at most,
//! and fresh only until its token enters the refresh threshold. It is bounded by
//! `refresh.cache_max_entries`.
//!
//! Change following applies the store's change reports (PostgreSQL notifications; other
//! instances' writes) to the cache and the scheduler: a connection written elsewhere is
//! forgotten, since its cached token may be dead (some providers revoke the old access token
//! on refresh), and the scheduler looks at its schedule again. A read that raced a reported
//! write is not cached (see [`Reported`]).
//!
//! It owns no persistence and decides nothing about refreshing: the warden asks it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::connection::{Connection, ConnectionKey, ConnectionStatus, effective_threshold};
use crate::store::Change;
use crate::warden::{AccessTokenGrant, Inner};

/// How long a reported version keeps older reads out of the cache, at least: far longer
/// than a read takes to come back from the store.
const REPORTED_KEEP: Duration = Duration::from_secs(10);

/// Decrypted grants by connection, with the versions other writers reported.
#[derive(Debug)]
pub(crate) struct TokenCache {
    entries: RwLock<HashMap<ConnectionKey, CachedToken>>,
    /// The newest versions the store reported for recently changed connections: a read
    /// older than that is not cached.
    reported: std::sync::Mutex<Reported>,
    ttl: Duration,
    max_entries: usize,
}

#[derive(Debug, Clone)]
struct CachedToken {
    grant: AccessTokenGrant,
    /// The stored version the grant was read from or written as.
    version: i64,
    /// On the monotonic clock: the earlier of "trusted for `cache_ttl`" and "the token
    /// enters its refresh threshold". One clock read decides a cache hit.
    fresh_until: Instant,
    /// Until when the entry reflects the store (`cache_ttl`), fresh or not. While the
    /// provider's breaker is open, answers come from it without reading the store.
    trusted_until: Instant,
}

impl TokenCache {
    /// A cache trusting entries for `ttl` (zero disables it), holding at most `max_entries`.
    pub(crate) fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            entries: RwLock::default(),
            reported: std::sync::Mutex::default(),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    /// The cached grant while it is fresh (the fast path).
    pub(crate) fn fresh(&self, key: &ConnectionKey) -> Option<AccessTokenGrant> {
        self.until(key, |e| e.fresh_until)
    }

    /// The cached grant while it still reflects the store, fresh or not.
    pub(crate) fn trusted(&self, key: &ConnectionKey) -> Option<AccessTokenGrant> {
        self.until(key, |e| e.trusted_until)
    }

    fn until(
        &self,
        key: &ConnectionKey,
        deadline: fn(&CachedToken) -> Instant,
    ) -> Option<AccessTokenGrant> {
        // Read before taking the lock, so the lock is held for the lookup alone.
        let now = Instant::now();
        let entries = self.read();
        let entry = entries.get(key)?;
        // A clone shares the token's bytes (`secret`): a hit does not allocate.
        (now < deadline(entry)).then(|| entry.grant.clone())
    }

    /// Caches `conn`'s grant, read from or written to the store at `version`, unless a newer
    /// version was reported meanwhile. `threshold` is the refresh threshold; `now` the wall
    /// clock.
    pub(crate) fn remember(&self, conn: &Connection, threshold: Duration, now: OffsetDateTime) {
        if self.ttl.is_zero() || conn.meta.status != ConnectionStatus::Active {
            return;
        }
        // A read that raced a write elsewhere: the newer version was reported while this
        // one travelled back from the store. Caching it would hide the new one (and a token
        // the provider may already have revoked) for `cache_ttl`.
        let newest = self.reported().newest(conn.key());
        if newest.is_some_and(|version| version > conn.meta.version) {
            return;
        }
        let mut fresh_for = self.ttl;
        if let Some(expires_at) = conn.meta.expires_at {
            let threshold = effective_threshold(conn.meta.lifetime(), threshold);
            let until_threshold = expires_at - threshold - now;
            fresh_for = Duration::try_from(until_threshold)
                .unwrap_or(Duration::ZERO)
                .min(self.ttl);
        }
        let at = Instant::now();
        let entry = CachedToken {
            grant: AccessTokenGrant::of(conn),
            version: conn.meta.version,
            fresh_until: at + fresh_for,
            trusted_until: at + self.ttl,
        };
        let mut entries = self.write();
        if entries.len() >= self.max_entries && !entries.contains_key(conn.key()) {
            // Bounded memory with a million connections: drop what is no longer trusted,
            // and if that is not enough, start over (the store has everything).
            entries.retain(|_, e| e.trusted_until > at);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(conn.key().clone(), entry);
    }

    /// Records a reported change (`None`: a deletion).
    pub(crate) fn note_reported(&self, key: &ConnectionKey, version: Option<i64>) {
        self.reported()
            .note(key, version.unwrap_or(i64::MAX), Instant::now());
    }

    /// Forgets `key` unless the cache already holds `version` of it (a change report for a
    /// write this instance made and cached).
    pub(crate) fn forget_unless_version(&self, key: &ConnectionKey, version: Option<i64>) {
        let mut entries = self.write();
        if entries
            .get(key)
            .is_none_or(|entry| Some(entry.version) != version)
        {
            entries.remove(key);
        }
    }

    pub(crate) fn forget(&self, key: &ConnectionKey) {
        self.write().remove(key);
    }

    pub(crate) fn clear(&self) {
        self.write().clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnectionKey, CachedToken>> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnectionKey, CachedToken>> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn reported(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.reported.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies the store's change reports to a warden's cache until the warden stops, the
/// warden goes away or the store closes its reports: a connection written elsewhere is
/// forgotten and the scheduler looks at its schedule again (an import on another instance
/// may be due sooner).
pub(crate) async fn follow_changes(
    inner: std::sync::Weak<Inner>,
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = stop.cancelled() => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        inner.changed.notify_waiters();
        match change {
            Ok(Change::Connection {
                key,
                version,
                next_refresh_at,
            }) => {
                inner.cache.note_reported(&key, version);
                inner.cache.forget_unless_version(&key, version);
                let sleeps_until = inner.scheduler_sleeps_until.load(Ordering::Relaxed);
                if crate::scheduler::wakes_scheduler(next_refresh_at, sleeps_until) {
                    inner.wakeup.notify_one();
                }
            }
            Ok(Change::All) | Err(RecvError::Lagged(_)) => {
                inner.cache.clear();
                inner.wakeup.notify_one();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The newest version reported per connection (`i64::MAX` for a deletion) over the last
/// one to two [`REPORTED_KEEP`]s, in two generations so that forgetting old reports costs
/// nothing per report.
#[derive(Debug, Default)]
struct Reported {
    current: HashMap<ConnectionKey, i64>,
    previous: HashMap<ConnectionKey, i64>,
    since: Option<Instant>,
}

impl Reported {
    fn note(&mut self, key: &ConnectionKey, version: i64, now: Instant) {
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= REPORTED_KEEP {
            self.previous = std::mem::take(&mut self.current);
            self.since = Some(now);
        }
        let newest = self.current.entry(key.clone()).or_insert(version);
        *newest = (*newest).max(version);
    }

    fn newest(&self, key: &ConnectionKey) -> Option<i64> {
        let current = self.current.get(key).copied();
        let previous = self.previous.get(key).copied();
        current.max(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::{REPORTED_KEEP, Reported};
    use crate::connection::ConnectionKey;

    #[test]
    fn reported_versions_keep_the_newest_for_one_to_two_windows() {
        let key = |a: &str| ConnectionKey::parse("u", "fake", a).expect("key");
        let t0 = tokio::time::Instant::now();
        let mut reported = Reported::default();
        reported.note(&key("a"), 5, t0);
        reported.note(&key("a"), 3, t0);
        assert_eq!(reported.newest(&key("a")), Some(5), "the newest wins");
        assert_eq!(reported.newest(&key("b")), None);
        // The next window keeps the last one's reports...
        reported.note(&key("b"), 1, t0 + REPORTED_KEEP);
        assert_eq!(reported.newest(&key("a")), Some(5));
        assert_eq!(reported.newest(&key("b")), Some(1));
        // ...and the one after forgets them.
        reported.note(&key("b"), 2, t0 + REPORTED_KEEP * 2);
        assert_eq!(reported.newest(&key("a")), None);
        assert_eq!(reported.newest(&key("b")), Some(2));
    }
}
