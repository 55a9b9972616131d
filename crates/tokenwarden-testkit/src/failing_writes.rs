//! [`FailingWrites`], a fault-injecting [`Store`] wrapper for tests of what happens around a
//! store's compare-and-swap writes. It owns no store of its own.
//!
//! Compiled twice, like `fixtures.rs`: in the test kit and in the library's own unit tests
//! (the group commit's), so it names the library's items only by `crate::` paths.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use time::OffsetDateTime;

use crate::connect::session::{ClaimOutcome, ConnectSession, Finish, FlowStart, OpenOutcome};
use crate::connection::{Connection, ConnectionKey, ConnectionMeta, ConnectionStatus};
use crate::store::{
    Change, Claimed, KeyUsage, ListPage, ListQuery, PutOutcome, QueueStats, ResealBatch, Store,
    StoreError,
};
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryPage, DeliveryQuery, DeliveryView, NewEvent, Prior,
    StoredEvent, WebhookQueueStats,
};

/// A store wrapper for tests of what happens around a store's compare-and-swap writes
/// ([`Store::update`], [`Store::update_batch`], [`Store::update_batch_from`]); everything
/// else passes to `inner`. It logs every write, can fail the next `n` with a database error
/// (as a failover or a dropped connection would), can refuse every batch, and can hold the
/// next write, or the next read's answer, until the test releases it.
#[derive(Debug)]
pub struct FailingWrites<S> {
    pub inner: S,
    failures_left: std::sync::atomic::AtomicU32,
    failed: std::sync::atomic::AtomicU32,
    refuse_batches: std::sync::atomic::AtomicBool,
    hold_next: std::sync::atomic::AtomicBool,
    hold_next_read: std::sync::atomic::AtomicBool,
    holding: std::sync::atomic::AtomicU32,
    held: tokio::sync::Semaphore,
    /// `("update", 1)` or `("batch", rows)` per write, in arrival order.
    writes: std::sync::Mutex<Vec<(&'static str, usize)>>,
}

impl<S: Store> FailingWrites<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            failures_left: std::sync::atomic::AtomicU32::new(0),
            failed: std::sync::atomic::AtomicU32::new(0),
            refuse_batches: std::sync::atomic::AtomicBool::new(false),
            hold_next: std::sync::atomic::AtomicBool::new(false),
            hold_next_read: std::sync::atomic::AtomicBool::new(false),
            holding: std::sync::atomic::AtomicU32::new(0),
            held: tokio::sync::Semaphore::new(0),
            writes: std::sync::Mutex::default(),
        }
    }

    /// The next `n` writes fail.
    pub fn fail_next_writes(&self, n: u32) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// Every [`Store::update_batch`] fails (single updates still work).
    pub fn refuse_batches(&self) {
        self.refuse_batches.store(true, Ordering::SeqCst);
    }

    /// The next write waits, once logged, until [`FailingWrites::release_held`].
    pub fn hold_next_write(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }

    /// The next [`Store::get`] reads, then holds its answer until
    /// [`FailingWrites::release_held`] (a read that comes back late, after later writes).
    pub fn hold_next_read(&self) {
        self.hold_next_read.store(true, Ordering::SeqCst);
    }

    /// Lets the held write or read go on.
    pub fn release_held(&self) {
        self.held.add_permits(1);
    }

    /// Whether a write or read is being held now.
    pub fn is_holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst) > 0
    }

    async fn hold(&self) {
        self.holding.fetch_add(1, Ordering::SeqCst);
        self.held.acquire().await.expect("never closed").forget();
        self.holding.fetch_sub(1, Ordering::SeqCst);
    }

    /// Writes failed so far.
    pub fn failed(&self) -> u32 {
        self.failed.load(Ordering::SeqCst)
    }

    /// The writes so far: `("update", 1)` or `("batch", rows)`, in arrival order.
    pub fn writes(&self) -> Vec<(&'static str, usize)> {
        self.writes.lock().expect("write log").clone()
    }

    /// Logs a write, holds it if asked, and says whether it is to fail.
    async fn arrive(&self, kind: &'static str, rows: usize) -> bool {
        self.writes.lock().expect("write log").push((kind, rows));
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.hold().await;
        }
        let took = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        took
    }
}

fn injected() -> StoreError {
    StoreError::Database("update: connection reset (injected by the test)".to_owned())
}

#[async_trait::async_trait]
impl<S: Store> Store for FailingWrites<S> {
    async fn get(&self, key: &ConnectionKey) -> Result<Option<Connection>, StoreError> {
        let read = self.inner.get(key).await;
        if self.hold_next_read.swap(false, Ordering::SeqCst) {
            self.hold().await;
        }
        read
    }
    async fn put(&self, conn: &Connection) -> Result<(ConnectionMeta, PutOutcome), StoreError> {
        self.inner.put(conn).await
    }
    async fn insert_if_absent(
        &self,
        conn: &Connection,
    ) -> Result<Option<ConnectionMeta>, StoreError> {
        self.inner.insert_if_absent(conn).await
    }
    async fn update(&self, conn: &Connection) -> Result<ConnectionMeta, StoreError> {
        if self.arrive("update", 1).await {
            return Err(injected());
        }
        self.inner.update(conn).await
    }
    async fn update_batch(
        &self,
        conns: &[Connection],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let fail = self.arrive("batch", conns.len()).await;
        if fail || self.refuse_batches.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.update_batch(conns).await
    }
    async fn update_batch_from(
        &self,
        conns: &[Connection],
        was: &[Prior],
    ) -> Result<Vec<Result<ConnectionMeta, StoreError>>, StoreError> {
        let fail = self.arrive("batch", conns.len()).await;
        if fail || self.refuse_batches.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.update_batch_from(conns, was).await
    }
    async fn delete(&self, key: &ConnectionKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.inner.list(query).await
    }
    async fn count_by_status(&self) -> Result<Vec<(ConnectionStatus, u64)>, StoreError> {
        self.inner.count_by_status().await
    }
    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        self.inner.key_usage().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn try_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.inner.try_lease(key, owner, now, until).await
    }
    async fn renew_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.inner.renew_lease(key, owner, until).await
    }
    async fn release_lease(&self, key: &ConnectionKey, owner: &str) -> Result<(), StoreError> {
        self.inner.release_lease(key, owner).await
    }
    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.inner.claim_due(now, limit, owner, until).await
    }
    async fn insert_connect_session(
        &self,
        session: &ConnectSession,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        self.inner.insert_connect_session(session, token_hash).await
    }
    async fn connect_session(&self, id: &str) -> Result<Option<ConnectSession>, StoreError> {
        self.inner.connect_session(id).await
    }
    async fn open_connect_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        flow: &FlowStart,
    ) -> Result<OpenOutcome, StoreError> {
        self.inner.open_connect_session(token_hash, now, flow).await
    }
    async fn claim_connect_callback(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ClaimOutcome, StoreError> {
        self.inner
            .claim_connect_callback(state_hash, browser_hash, now)
            .await
    }
    async fn finish_connect_session(
        &self,
        id: &str,
        finish: &Finish,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.inner.finish_connect_session(id, finish, now).await
    }
    async fn purge_connect_sessions(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        self.inner.purge_connect_sessions(before).await
    }
    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        self.inner.next_due().await
    }
    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        self.inner.queue_stats(now).await
    }
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        self.inner.changes()
    }
    async fn reseal_batch(
        &self,
        after: Option<&ConnectionKey>,
        limit: u32,
    ) -> Result<ResealBatch, StoreError> {
        self.inner.reseal_batch(after, limit).await
    }
    fn set_outbox(&self, enabled: bool) {
        self.inner.set_outbox(enabled);
    }
    async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        self.inner.insert_events(events).await
    }
    async fn dispatch_events(
        &self,
        endpoints: &[(String, BTreeSet<EventType>)],
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.dispatch_events(endpoints, now, limit).await
    }
    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        owner: &str,
        lease_until: OffsetDateTime,
        limit: u32,
        capacity: &[(String, u32)],
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.inner
            .claim_deliveries(now, owner, lease_until, limit, capacity)
            .await
    }
    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.inner.finish_delivery(id, owner, outcome, now).await
    }
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        self.inner.list_deliveries(query).await
    }
    async fn retry_delivery(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryView>, StoreError> {
        self.inner.retry_delivery(id, now).await
    }
    async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        self.inner.delivery(id).await
    }
    async fn recent_connection_events(
        &self,
        key: &ConnectionKey,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.recent_connection_events(key, limit).await
    }
    async fn webhook_queue_stats(
        &self,
        now: OffsetDateTime,
    ) -> Result<WebhookQueueStats, StoreError> {
        self.inner.webhook_queue_stats(now).await
    }
    async fn purge_webhook_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.purge_webhook_events(before, limit).await
    }
}
