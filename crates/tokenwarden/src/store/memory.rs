//! An in-memory [`Store`], for embedding in tests and for trying the library out. It keeps
//! secrets sealed like the persistent backends do, so it exercises the same key ring paths,
//! but nothing survives the process. Its webhook outbox follows the SQL backends' tables
//! (times kept to the millisecond); a connection write and its events change under the same
//! locks, so no reader sees one without the other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::connect::session::{
    ClaimOutcome, ConnectSession, Finish, FlowStart, OpenOutcome, SessionState,
};
use crate::connection::{Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, Tokens};
use crate::crypto::{Field, KeyRing, envelope_key_id};
use crate::secret::{AccessToken, RefreshToken};
use crate::store::{
    Change, Claimed, KeyUsage, ListPage, ListQuery, PutOutcome, QueueStats, ResealBatch, Store,
    StoreError, decode_cursor, open_flow, seal_flow,
};
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryPage, DeliveryQuery, DeliveryStatus, DeliveryView,
    NewEvent, StoredEvent, WebhookQueueStats, Write, connection_change_events,
    decode_delivery_cursor, delivery_page, new_delivery_id, session_failed_event, truncate_ms,
};
use time::OffsetDateTime;

#[derive(Debug, Clone)]
struct Row {
    meta: ConnectionMeta,
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    lease: Option<(String, OffsetDateTime)>,
}

impl Row {
    fn lease_free_for(&self, owner: &str, now: OffsetDateTime) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|(o, until)| o == owner || *until <= now)
    }
}

/// A stored connect session with its hashes and sealed flow secrets.
#[derive(Debug, Clone)]
struct SessionRow {
    session: ConnectSession,
    token_hash: String,
    state_hash: Option<String>,
    browser_hash: Option<String>,
    flow: Option<Vec<u8>>,
}

/// Change reports buffered per subscriber before it is told it fell behind.
const CHANGES_BUFFER: usize = 4096;

/// The webhook outbox: `webhook_events` and `webhook_deliveries` of the SQL backends.
#[derive(Debug, Default)]
struct Outbox {
    /// The next event's `seq` (the dispatch order).
    next_seq: u64,
    events: BTreeMap<u64, EventRow>,
    /// Event id → `seq`.
    event_seqs: HashMap<String, u64>,
    undispatched: BTreeSet<u64>,
    /// By id, which sorts by creation.
    deliveries: BTreeMap<String, DeliveryRow>,
    /// `(event_id, endpoint)` of every delivery: one per event and endpoint.
    delivered_to: HashSet<(String, String)>,
}

#[derive(Debug)]
struct EventRow {
    id: String,
    kind: EventType,
    body: String,
    only_endpoint: Option<String>,
    created_at: OffsetDateTime,
    connection: Option<ConnectionKey>,
}

#[derive(Debug, Clone)]
struct DeliveryRow {
    view: DeliveryView,
    lease: Option<(String, OffsetDateTime)>,
}

impl Outbox {
    /// Appends events whose ids are known to be new (fresh random ids).
    fn push(&mut self, events: Vec<NewEvent>) {
        for event in events {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.event_seqs.insert(event.id.clone(), seq);
            self.undispatched.insert(seq);
            self.events.insert(
                seq,
                EventRow {
                    id: event.id,
                    kind: event.kind,
                    body: event.body,
                    only_endpoint: event.only_endpoint,
                    created_at: truncate_ms(event.created_at),
                    connection: event.connection,
                },
            );
        }
    }

    fn body(&self, event_id: &str) -> Option<&str> {
        let seq = self.event_seqs.get(event_id)?;
        self.events.get(seq).map(|e| e.body.as_str())
    }

    /// [`Store::purge_webhook_events`].
    fn purge(&mut self, before: OffsetDateTime, limit: u32) -> u64 {
        let busy: HashSet<&str> = self
            .deliveries
            .values()
            .filter(|d| d.view.status == DeliveryStatus::Pending || d.view.updated_at >= before)
            .map(|d| d.view.event_id.as_str())
            .collect();
        let mut old: Vec<(OffsetDateTime, u64, String)> = self
            .events
            .iter()
            .filter(|(seq, e)| {
                !self.undispatched.contains(seq)
                    && e.created_at < before
                    && !busy.contains(e.id.as_str())
            })
            .map(|(seq, e)| (e.created_at, *seq, e.id.clone()))
            .collect();
        // Oldest first, as the SQL backends' index walks them.
        old.sort_unstable();
        old.truncate(limit as usize);
        let done: Vec<(u64, String)> = old.into_iter().map(|(_, seq, id)| (seq, id)).collect();
        let ids: HashSet<&str> = done.iter().map(|(_, id)| id.as_str()).collect();
        self.deliveries
            .retain(|_, d| !ids.contains(d.view.event_id.as_str()));
        self.delivered_to
            .retain(|(event_id, _)| !ids.contains(event_id.as_str()));
        for (seq, id) in &done {
            self.events.remove(seq);
            self.event_seqs.remove(id);
        }
        done.len() as u64
    }
}

/// A store that lives in memory.
pub struct MemoryStore {
    keys: Arc<KeyRing>,
    rows: Arc<Mutex<BTreeMap<ConnectionKey, Row>>>,
    sessions: Arc<Mutex<BTreeMap<String, SessionRow>>>,
    /// The highest version any deleted connection had; new rows start above it, so a write
    /// prepared against a deleted incarnation can never match a re-created one.
    max_deleted_version: Arc<AtomicI64>,
    /// Change reports, shared by every handle on the same data (as instances on one
    /// database would be).
    changes: tokio::sync::broadcast::Sender<Change>,
    /// The webhook outbox, shared by every handle. Taken after `rows` or `sessions` when a
    /// write holds one of them, never before.
    outbox: Arc<Mutex<Outbox>>,
    /// This handle's [`Store::set_outbox`] switch.
    outbox_on: AtomicBool,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the rows: ciphertexts, lease owners and provider error messages have no place
        // in a debug print.
        f.debug_struct("MemoryStore")
            .field("connections", &self.rows().len())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new(keys: Arc<KeyRing>) -> Self {
        Self {
            keys,
            rows: Arc::default(),
            sessions: Arc::default(),
            max_deleted_version: Arc::default(),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
            outbox: Arc::default(),
            outbox_on: AtomicBool::new(false),
        }
    }

    /// Another handle on the same data, sealing and opening with `keys` (as a second
    /// process with another key configuration would see one database). Its outbox switch
    /// starts off, as a second process's would.
    #[must_use]
    pub fn sharing(&self, keys: Arc<KeyRing>) -> Self {
        Self {
            keys,
            rows: Arc::clone(&self.rows),
            sessions: Arc::clone(&self.sessions),
            max_deleted_version: Arc::clone(&self.max_deleted_version),
            changes: self.changes.clone(),
            outbox: Arc::clone(&self.outbox),
            outbox_on: AtomicBool::new(false),
        }
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    fn outbox_on(&self) -> bool {
        self.outbox_on.load(Ordering::Relaxed)
    }

    /// The events a connection write raises, when the outbox is on.
    fn change_events(
        &self,
        old: Option<&ConnectionMeta>,
        new: Option<&ConnectionMeta>,
        write: Write,
        at: OffsetDateTime,
    ) -> Vec<NewEvent> {
        if self.outbox_on() {
            connection_change_events(old, new, write, at)
        } else {
            Vec::new()
        }
    }

    /// Reports a written (`Some`) or deleted (`None`) connection to every handle.
    fn announce(&self, key: &ConnectionKey, written: Option<&ConnectionMeta>) {
        let _ = self.changes.send(Change::Connection {
            key: key.clone(),
            version: written.map(|meta| meta.version),
            next_refresh_at: written
                .filter(|meta| meta.status == ConnectionStatus::Active)
                .and_then(|meta| meta.next_refresh_at),
        });
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<ConnectionKey, Row>> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn seal(&self, conn: &Connection, meta: ConnectionMeta) -> Row {
        let key = conn.key();
        Row {
            access_token: self.keys.seal(
                conn.tokens.access_token.expose_secret().as_bytes(),
                key,
                Field::AccessToken,
            ),
            refresh_token: conn.tokens.refresh_token.as_ref().map(|rt| {
                self.keys
                    .seal(rt.expose_secret().as_bytes(), key, Field::RefreshToken)
            }),
            meta: ConnectionMeta {
                has_refresh_token: conn.tokens.refresh_token.is_some(),
                ..meta
            },
            lease: None,
        }
    }

    fn open(&self, row: &Row) -> Result<Connection, StoreError> {
        let key = &row.meta.key;
        let access = self
            .keys
            .open_string(&row.access_token, key, Field::AccessToken)
            .map_err(|_| StoreError::Decrypt)?;
        let refresh = match &row.refresh_token {
            Some(sealed) => Some(RefreshToken::new(
                self.keys
                    .open_string(sealed, key, Field::RefreshToken)
                    .map_err(|_| StoreError::Decrypt)?,
            )),
            None => None,
        };
        Ok(Connection {
            meta: row.meta.clone(),
            tokens: Tokens {
                access_token: AccessToken::new(access),
                refresh_token: refresh,
            },
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &ConnectionKey) -> Result<Option<Connection>, StoreError> {
        let row = self.rows().get(key).cloned();
        row.map(|row| self.open(&row)).transpose()
    }

    async fn put(&self, conn: &Connection) -> Result<(ConnectionMeta, PutOutcome), StoreError> {
        let mut rows = self.rows();
        let previous = rows.get(conn.key());
        let (outcome, created_at, version) = match previous {
            Some(old) => (
                PutOutcome::Replaced,
                old.meta.created_at,
                old.meta.version + 1,
            ),
            None => (
                PutOutcome::Created,
                conn.meta.created_at,
                self.max_deleted_version.load(Ordering::SeqCst) + 1,
            ),
        };
        let meta = ConnectionMeta {
            created_at,
            version,
            ..conn.meta.clone()
        };
        let row = self.seal(conn, meta);
        let meta = row.meta.clone();
        let events = self.change_events(
            previous.map(|old| &old.meta),
            Some(&meta),
            Write::Put,
            meta.updated_at,
        );
        rows.insert(conn.key().clone(), row);
        self.outbox().push(events);
        drop(rows);
        self.announce(conn.key(), Some(&meta));
        Ok((meta, outcome))
    }

    async fn insert_if_absent(
        &self,
        conn: &Connection,
    ) -> Result<Option<ConnectionMeta>, StoreError> {
        let mut rows = self.rows();
        if rows.contains_key(conn.key()) {
            return Ok(None);
        }
        let meta = ConnectionMeta {
            version: self.max_deleted_version.load(Ordering::SeqCst) + 1,
            ..conn.meta.clone()
        };
        let row = self.seal(conn, meta);
        let meta = row.meta.clone();
        let events = self.change_events(None, Some(&meta), Write::Put, meta.updated_at);
        rows.insert(conn.key().clone(), row);
        self.outbox().push(events);
        drop(rows);
        self.announce(conn.key(), Some(&meta));
        Ok(Some(meta))
    }

    async fn update(&self, conn: &Connection) -> Result<ConnectionMeta, StoreError> {
        let mut rows = self.rows();
        let current = rows.get(conn.key()).ok_or(StoreError::NotFound)?;
        if current.meta.version != conn.meta.version {
            return Err(StoreError::Conflict);
        }
        let meta = ConnectionMeta {
            created_at: current.meta.created_at,
            version: conn.meta.version + 1,
            ..conn.meta.clone()
        };
        let row = self.seal(conn, meta);
        let meta = row.meta.clone();
        let events = self.change_events(
            Some(&current.meta),
            Some(&meta),
            Write::Update,
            meta.updated_at,
        );
        rows.insert(conn.key().clone(), row);
        self.outbox().push(events);
        drop(rows);
        self.announce(conn.key(), Some(&meta));
        Ok(meta)
    }

    async fn delete(&self, key: &ConnectionKey) -> Result<bool, StoreError> {
        let mut rows = self.rows();
        let removed = rows.remove(key);
        if let Some(row) = &removed {
            let events = self.change_events(
                Some(&row.meta),
                None,
                Write::Delete,
                OffsetDateTime::now_utc(),
            );
            self.outbox().push(events);
        }
        drop(rows);
        if let Some(row) = &removed {
            self.max_deleted_version
                .fetch_max(row.meta.version, Ordering::SeqCst);
            self.announce(key, None);
        }
        Ok(removed.is_some())
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let limit = query.effective_limit();
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let rows = self.rows();
        let items: Vec<ConnectionMeta> = rows
            .iter()
            .filter(|(key, _)| after.as_ref().is_none_or(|after| *key > after))
            .map(|(_, row)| &row.meta)
            .filter(|m| query.provider.as_ref().is_none_or(|p| &m.key.provider == p))
            .filter(|m| query.user_id.as_ref().is_none_or(|u| &m.key.user_id == u))
            .filter(|m| query.status.is_none_or(|s| m.status == s))
            .take(limit as usize + 1)
            .cloned()
            .collect();
        Ok(super::rows::page(items, limit))
    }

    async fn count_by_status(&self) -> Result<Vec<(ConnectionStatus, u64)>, StoreError> {
        let rows = self.rows();
        let mut active = 0;
        let mut reconnect = 0;
        for row in rows.values() {
            match row.meta.status {
                ConnectionStatus::Active => active += 1,
                ConnectionStatus::NeedsReconnect => reconnect += 1,
            }
        }
        Ok(vec![
            (ConnectionStatus::Active, active),
            (ConnectionStatus::NeedsReconnect, reconnect),
        ])
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for row in self.rows().values() {
            for sealed in std::iter::once(&row.access_token).chain(row.refresh_token.as_ref()) {
                let id = envelope_key_id(sealed).unwrap_or("unknown").to_owned();
                *counts.entry(id).or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .map(|(key_id, ciphertexts)| KeyUsage {
                key_id,
                ciphertexts,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn try_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut rows = self.rows();
        let Some(row) = rows.get_mut(key) else {
            return Err(StoreError::NotFound);
        };
        if !row.lease_free_for(owner, now) {
            return Ok(false);
        }
        row.lease = Some((owner.to_owned(), until));
        Ok(true)
    }

    async fn renew_lease(
        &self,
        key: &ConnectionKey,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut rows = self.rows();
        let Some(row) = rows.get_mut(key) else {
            return Ok(false);
        };
        match &mut row.lease {
            Some((o, lease_until)) if o == owner => {
                *lease_until = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, key: &ConnectionKey, owner: &str) -> Result<(), StoreError> {
        if let Some(row) = self.rows().get_mut(key)
            && row.lease.as_ref().is_some_and(|(o, _)| o == owner)
        {
            row.lease = None;
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
        owner: &str,
        until: OffsetDateTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut rows = self.rows();
        let mut due: Vec<(OffsetDateTime, ConnectionKey)> = rows
            .values()
            .filter(|r| {
                // Not `lease_free_for(owner)`: a claimer must not re-claim rows it already
                // holds (they are being refreshed).
                r.meta.status == ConnectionStatus::Active
                    && r.lease.as_ref().is_none_or(|(_, until)| *until <= now)
            })
            .filter_map(|r| {
                r.meta
                    .next_refresh_at
                    .filter(|at| *at <= now)
                    .map(|at| (at, r.meta.key.clone()))
            })
            .collect();
        due.sort();
        due.truncate(limit as usize);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, key) in due {
            if let Some(row) = rows.get_mut(&key) {
                row.lease = Some((owner.to_owned(), until));
                let connection = self.open(row);
                claimed.push(Claimed { key, connection });
            }
        }
        Ok(claimed)
    }

    async fn next_due(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(self
            .rows()
            .values()
            .filter(|r| r.meta.status == ConnectionStatus::Active)
            .filter_map(|r| {
                let due = r.meta.next_refresh_at?;
                Some(r.lease.as_ref().map_or(due, |(_, until)| due.max(*until)))
            })
            .min())
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        // Reports are followed by a task, which needs a runtime.
        tokio::runtime::Handle::try_current().ok()?;
        Some(self.changes.subscribe())
    }

    async fn reseal_batch(
        &self,
        after: Option<&ConnectionKey>,
        limit: u32,
    ) -> Result<ResealBatch, StoreError> {
        let mut rows = self.rows();
        let mut batch = ResealBatch::default();
        let stale: Vec<ConnectionKey> = rows
            .iter()
            .filter(|(key, _)| after.is_none_or(|after| *key > after))
            .filter(|(_, row)| {
                self.keys.needs_reseal(&row.access_token)
                    || row
                        .refresh_token
                        .as_ref()
                        .is_some_and(|rt| self.keys.needs_reseal(rt))
            })
            .map(|(key, _)| key.clone())
            .take(limit.max(1) as usize)
            .collect();
        for key in &stale {
            let Some(row) = rows.get_mut(key) else {
                continue;
            };
            batch.scanned += 1;
            let Ok(conn) = self.open(row) else {
                batch.failed += 1;
                continue;
            };
            let resealed = self.seal(&conn, row.meta.clone());
            row.access_token = resealed.access_token;
            row.refresh_token = resealed.refresh_token;
            batch.resealed += 1;
        }
        if stale.len() == limit.max(1) as usize {
            batch.last = stale.last().cloned();
        }
        Ok(batch)
    }

    async fn insert_connect_session(
        &self,
        session: &ConnectSession,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        let mut sessions = lock(&self.sessions);
        if sessions.contains_key(&session.id)
            || sessions.values().any(|r| r.token_hash == token_hash)
        {
            return Err(StoreError::Database(
                "connect session id or token already exists".to_owned(),
            ));
        }
        sessions.insert(
            session.id.clone(),
            SessionRow {
                session: session.clone(),
                token_hash: token_hash.to_owned(),
                state_hash: None,
                browser_hash: None,
                flow: None,
            },
        );
        Ok(())
    }

    async fn connect_session(&self, id: &str) -> Result<Option<ConnectSession>, StoreError> {
        Ok(lock(&self.sessions).get(id).map(|r| r.session.clone()))
    }

    async fn open_connect_session(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        flow: &FlowStart,
    ) -> Result<OpenOutcome, StoreError> {
        let mut sessions = lock(&self.sessions);
        let Some(row) = sessions.values_mut().find(|r| r.token_hash == token_hash) else {
            return Ok(OpenOutcome::Unknown);
        };
        if row.session.state != SessionState::Pending {
            return Ok(OpenOutcome::AlreadyOpened(row.session.clone()));
        }
        if row.session.expires_at <= now {
            return Ok(OpenOutcome::Expired(row.session.clone()));
        }
        let sealed = seal_flow(&self.keys, &row.session, &flow.secrets)?;
        row.session.state = SessionState::Opened;
        row.session.opened_at = Some(now);
        row.state_hash = Some(flow.state_hash.clone());
        row.browser_hash = Some(flow.browser_hash.clone());
        row.flow = Some(sealed);
        Ok(OpenOutcome::Opened(row.session.clone()))
    }

    async fn claim_connect_callback(
        &self,
        state_hash: &str,
        browser_hash: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut sessions = lock(&self.sessions);
        let Some(row) = sessions
            .values_mut()
            .find(|r| r.state_hash.as_deref() == Some(state_hash))
        else {
            return Ok(ClaimOutcome::Unknown);
        };
        if row.session.state != SessionState::Opened {
            return Ok(ClaimOutcome::Used(row.session.clone()));
        }
        if browser_hash.is_none() || row.browser_hash.as_deref() != browser_hash {
            return Ok(ClaimOutcome::OtherBrowser(row.session.clone()));
        }
        if row.session.expires_at <= now {
            return Ok(ClaimOutcome::Expired(row.session.clone()));
        }
        let secrets = match &row.flow {
            Some(sealed) => open_flow(&self.keys, &row.session, sealed)?,
            None => return Err(StoreError::Decrypt),
        };
        row.session.state = SessionState::Exchanging;
        Ok(ClaimOutcome::Claimed(row.session.clone(), secrets))
    }

    async fn finish_connect_session(
        &self,
        id: &str,
        finish: &Finish,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut sessions = lock(&self.sessions);
        let Some(row) = sessions.get_mut(id) else {
            return Ok(false);
        };
        if row.session.state.is_finished() {
            return Ok(false);
        }
        if self.outbox_on() {
            let session = &row.session;
            let event = session_failed_event(
                &session.id,
                &session.user_id,
                &session.provider,
                session.account_id.as_ref(),
                finish,
                now,
            );
            self.outbox().push(event.into_iter().collect());
        }
        row.session.state = finish.state();
        row.session.error = finish.error().cloned();
        row.session.connected_account_id = finish.account_id().cloned();
        row.session.finished_at = Some(now);
        row.flow = None;
        Ok(true)
    }

    async fn purge_connect_sessions(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut sessions = lock(&self.sessions);
        let was = sessions.len();
        sessions.retain(|_, r| r.session.expires_at >= before);
        Ok((was - sessions.len()) as u64)
    }

    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        let mut stats = QueueStats::default();
        for row in self.rows().values() {
            let meta = &row.meta;
            if meta.status != ConnectionStatus::Active {
                continue;
            }
            if let Some(at) = meta.next_refresh_at {
                stats.scheduled += 1;
                stats.due_now += u64::from(at <= now);
                stats.retrying += u64::from(meta.consecutive_failures > 0);
            }
        }
        Ok(stats)
    }

    fn set_outbox(&self, enabled: bool) {
        self.outbox_on.store(enabled, Ordering::Relaxed);
    }

    async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut outbox = self.outbox();
        let mut ids = HashSet::new();
        if events
            .iter()
            .any(|e| outbox.event_seqs.contains_key(&e.id) || !ids.insert(e.id.as_str()))
        {
            return Err(StoreError::Database(
                "insert events: an event id already exists".to_owned(),
            ));
        }
        outbox.push(
            events
                .iter()
                .map(|e| NewEvent {
                    created_at: truncate_ms(e.created_at),
                    ..e.clone()
                })
                .collect(),
        );
        Ok(())
    }

    async fn dispatch_events(
        &self,
        endpoints: &[(String, BTreeSet<EventType>)],
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let now = truncate_ms(now);
        let mut outbox = self.outbox();
        let seqs: Vec<u64> = outbox
            .undispatched
            .iter()
            .take(limit.max(1) as usize)
            .copied()
            .collect();
        for &seq in &seqs {
            outbox.undispatched.remove(&seq);
            let Some(event) = outbox.events.get(&seq) else {
                continue;
            };
            let targets: Vec<String> = endpoints
                .iter()
                .filter(|(name, events)| match &event.only_endpoint {
                    Some(only) => name == only,
                    None => events.contains(&event.kind),
                })
                .map(|(name, _)| name.clone())
                .collect();
            let (event_id, kind) = (event.id.clone(), event.kind);
            for endpoint in targets {
                if !outbox
                    .delivered_to
                    .insert((event_id.clone(), endpoint.clone()))
                {
                    continue;
                }
                let id = new_delivery_id();
                let view = DeliveryView {
                    id: id.clone(),
                    event_id: event_id.clone(),
                    kind,
                    endpoint,
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    last_status: None,
                    last_error: None,
                    next_attempt_at: Some(now),
                    created_at: now,
                    updated_at: now,
                    first_attempt_at: None,
                };
                outbox
                    .deliveries
                    .insert(id, DeliveryRow { view, lease: None });
            }
        }
        Ok(seqs.len() as u64)
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        owner: &str,
        lease_until: OffsetDateTime,
        limit: u32,
        capacity: &[(String, u32)],
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let (now, lease_until) = (truncate_ms(now), truncate_ms(lease_until));
        let mut outbox = self.outbox();
        let mut due: Vec<(OffsetDateTime, String)> = outbox
            .deliveries
            .values()
            .filter(|d| {
                d.view.status == DeliveryStatus::Pending
                    && d.lease.as_ref().is_none_or(|(_, until)| *until <= now)
            })
            .filter_map(|d| {
                d.view
                    .next_attempt_at
                    .filter(|at| *at <= now)
                    .map(|at| (at, d.view.id.clone()))
            })
            .collect();
        due.sort();
        let mut per_endpoint: HashMap<String, u32> = HashMap::new();
        let mut claimed = Vec::new();
        for (_, id) in due {
            if claimed.len() >= limit.max(1) as usize {
                break;
            }
            let Some(row) = outbox.deliveries.get(&id) else {
                continue;
            };
            let cap = capacity
                .iter()
                .find(|(name, _)| *name == row.view.endpoint)
                .map_or(0, |(_, cap)| *cap);
            let taken = per_endpoint.entry(row.view.endpoint.clone()).or_default();
            if *taken >= cap {
                continue;
            }
            *taken += 1;
            let body = outbox
                .body(&row.view.event_id)
                .ok_or_else(|| StoreError::Database("a delivery's event is missing".into()))?
                .to_owned();
            let Some(row) = outbox.deliveries.get_mut(&id) else {
                continue;
            };
            row.lease = Some((owner.to_owned(), lease_until));
            claimed.push(ClaimedDelivery {
                id,
                event_id: row.view.event_id.clone(),
                endpoint: row.view.endpoint.clone(),
                kind: row.view.kind,
                body,
                attempts: row.view.attempts,
                first_attempt_at: row.view.first_attempt_at,
            });
        }
        Ok(claimed)
    }

    async fn finish_delivery(
        &self,
        id: &str,
        owner: &str,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let now = truncate_ms(now);
        let mut outbox = self.outbox();
        let Some(row) = outbox.deliveries.get_mut(id) else {
            return Ok(false);
        };
        if row.view.status != DeliveryStatus::Pending
            || row.lease.as_ref().is_none_or(|(o, _)| o != owner)
        {
            return Ok(false);
        }
        let view = &mut row.view;
        let (status, next, last_status, last_error) = match outcome {
            DeliveryOutcome::Delivered { status } => {
                (DeliveryStatus::Delivered, None, Some(*status), None)
            }
            DeliveryOutcome::Retry { at, status, error } => (
                DeliveryStatus::Pending,
                Some(truncate_ms(*at)),
                *status,
                Some(crate::store::rows::text(error)),
            ),
            DeliveryOutcome::Failed { status, error } => (
                DeliveryStatus::Failed,
                None,
                *status,
                Some(crate::store::rows::text(error)),
            ),
        };
        view.status = status;
        view.next_attempt_at = next;
        view.last_status = last_status;
        view.last_error = last_error;
        view.attempts = view.attempts.saturating_add(1);
        view.first_attempt_at = view.first_attempt_at.or(Some(now));
        view.updated_at = now;
        row.lease = None;
        Ok(true)
    }

    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let limit = query.effective_limit();
        let before = query
            .cursor
            .as_deref()
            .map(decode_delivery_cursor)
            .transpose()?;
        let outbox = self.outbox();
        let items: Vec<DeliveryView> = outbox
            .deliveries
            .values()
            .rev()
            .map(|d| &d.view)
            .filter(|d| before.as_ref().is_none_or(|before| d.id < *before))
            .filter(|d| query.status.is_none_or(|s| d.status == s))
            .filter(|d| query.kind.is_none_or(|k| d.kind == k))
            .filter(|d| query.endpoint.as_ref().is_none_or(|e| d.endpoint == *e))
            .take(limit as usize + 1)
            .cloned()
            .collect();
        Ok(delivery_page(items, limit))
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<DeliveryView>, StoreError> {
        let now = truncate_ms(now);
        let mut outbox = self.outbox();
        let Some(row) = outbox.deliveries.get_mut(id) else {
            return Ok(None);
        };
        if row.view.status == DeliveryStatus::Failed {
            row.view.status = DeliveryStatus::Pending;
            row.view.next_attempt_at = Some(now);
            row.view.updated_at = now;
            row.lease = None;
        }
        Ok(Some(row.view.clone()))
    }

    async fn recent_connection_events(
        &self,
        key: &ConnectionKey,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let outbox = self.outbox();
        Ok(outbox
            .events
            .values()
            .rev()
            .filter(|event| event.connection.as_ref() == Some(key))
            .take(crate::store::effective_limit(limit) as usize)
            .map(|event| StoredEvent {
                id: event.id.clone(),
                kind: event.kind,
                created_at: event.created_at,
                body: event.body.clone(),
            })
            .collect())
    }

    async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        Ok(self.outbox().deliveries.get(id).map(|d| d.view.clone()))
    }

    async fn webhook_queue_stats(
        &self,
        now: OffsetDateTime,
    ) -> Result<WebhookQueueStats, StoreError> {
        let now = truncate_ms(now);
        let outbox = self.outbox();
        let mut stats = WebhookQueueStats {
            undispatched: outbox.undispatched.len() as u64,
            ..WebhookQueueStats::default()
        };
        for d in outbox.deliveries.values() {
            match d.view.status {
                DeliveryStatus::Pending => {
                    stats.pending += 1;
                    let due = d.view.next_attempt_at.is_some_and(|at| at <= now)
                        && d.lease.as_ref().is_none_or(|(_, until)| *until <= now);
                    stats.due += u64::from(due);
                }
                DeliveryStatus::Delivered => stats.delivered += 1,
                DeliveryStatus::Failed => stats.failed += 1,
            }
        }
        Ok(stats)
    }
    async fn purge_webhook_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(self.outbox().purge(truncate_ms(before), limit))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
