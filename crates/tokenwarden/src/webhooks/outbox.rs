//! The durable webhook outbox, as far as it is not SQL: which connection changes raise which
//! events, what an event's body says, and the types of the store's outbox and delivery
//! methods (see [`Store`](crate::store::Store)).
//!
//! The outbox has two tables in every backend. `webhook_events` holds each event once, written
//! by the store in the same transaction as the change that raised it, so a crash between the
//! change and its delivery loses nothing. Dispatching ([`Store::dispatch_events`]) turns an event
//! into one `webhook_deliveries` row per endpoint that receives it; a delivery is then claimed
//! under a lease by one instance ([`Store::claim_deliveries`]), attempted, and finished
//! ([`Store::finish_delivery`]) as delivered, to be retried, or failed.
//!
//! An event's `timestamp` is when its change happened: the written row's `updated_at` for a
//! put or an update (the library's clock, as the refresh recorded it), the `now` given to
//! `finish_connect_session`, the store's wall clock for a delete (which carries no time),
//! and what the caller gives for [`NewEvent`]s it writes itself.
//!
//! Each event also keeps the user's connection it is about ([`NewEvent::connection`]), so a
//! connection's recent events can be listed from the same table
//! ([`Store::recent_connection_events`]), whether or not they were delivered.
//!
//! This module decides nothing about sending: no HTTP, no backoff, no signing (see `signing`).
//! It reads no clock except for the time part of a delivery id.
//!
//! [`Store::dispatch_events`]: crate::store::Store::dispatch_events
//! [`Store::claim_deliveries`]: crate::store::Store::claim_deliveries
//! [`Store::finish_delivery`]: crate::store::Store::finish_delivery
//! [`Store::recent_connection_events`]: crate::store::Store::recent_connection_events

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::connect::session::{Finish, SessionError};
use crate::connection::{
    AccountId, ConnectionKey, ConnectionMeta, ConnectionStatus, ProviderName, UserId,
};
use crate::store::StoreError;
use crate::webhooks::EventType;

/// The kind of write a connection change is, for [`connection_events`]: a put (an import or
/// a connect flow, which create or replace), an update (a refresh's outcome, compare-and-swap)
/// or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Put,
    Update,
    Delete,
}

/// The events a write to one connection raises, given the row as it was before the write
/// (`old`, `None` when there was none) and as written (`new`, `None` when deleted). Every
/// backend calls this inside the write's transaction.
///
/// * Created (`old` none, `new` some): `connection.created`.
/// * Replaced by a put: `connection.reconnected` only when the put heals a connection that
///   needed it (it was `needs_reconnect` or had failures, and is now active without
///   failures); a put over a healthy connection raises nothing.
/// * Updated (a refresh's outcome):
///   - active → `needs_reconnect`: `connection.needs_reconnect` (and nothing else);
///   - no failures → failures, still active: `connection.refresh_failing`, once per episode
///     (the next failures find `old` already failing and raise nothing);
///   - failures → none, active: `connection.recovered`;
///   - anything else (a reschedule, a success without failures before it): nothing.
/// * Deleted: `connection.deleted`.
///
/// Application-token rows ([`ConnectionKey::is_app`](crate::connection::ConnectionKey::is_app))
/// raise nothing: no user connected them.
pub fn connection_events(
    old: Option<&ConnectionMeta>,
    new: Option<&ConnectionMeta>,
    write: Write,
) -> Vec<EventType> {
    let Some(key) = new.or(old).map(|meta| &meta.key) else {
        return Vec::new();
    };
    if key.is_app() {
        return Vec::new();
    }
    let event = match (write, old, new) {
        (Write::Put, None, Some(_)) => Some(EventType::ConnectionCreated),
        (Write::Put, Some(old), Some(new)) => {
            let needed =
                old.status == ConnectionStatus::NeedsReconnect || old.consecutive_failures > 0;
            let healed = new.status == ConnectionStatus::Active && new.consecutive_failures == 0;
            (needed && healed).then_some(EventType::ConnectionReconnected)
        }
        (Write::Update, Some(old), Some(new)) => update_event(Prior::of(old), new),
        (Write::Delete, Some(_), None) => Some(EventType::ConnectionDeleted),
        _ => None,
    };
    event.into_iter().collect()
}

/// What a refresh's outcome raises (see [`connection_events`]).
fn update_event(old: Prior, new: &ConnectionMeta) -> Option<EventType> {
    update_rule(new)
        .filter(|(_, requires)| requires.holds(old))
        .map(|(kind, _)| kind)
}

/// The one event a refresh's write of `new` can raise, and what the row must have been for
/// it to be raised. Decided by `new` alone, so a batch write can build the event before it
/// knows the old rows and let the database keep it only where the old row meets the
/// condition ([`Requires::SQL`]).
fn update_rule(new: &ConnectionMeta) -> Option<(EventType, Requires)> {
    let active = new.status == ConnectionStatus::Active;
    if new.status == ConnectionStatus::NeedsReconnect {
        Some((EventType::ConnectionNeedsReconnect, Requires::WasActive))
    } else if active && new.consecutive_failures > 0 {
        Some((EventType::ConnectionRefreshFailing, Requires::NoFailures))
    } else if active {
        Some((EventType::ConnectionRecovered, Requires::HadFailures))
    } else {
        None
    }
}

/// What a row must have been before a refresh's write for the write's event to be raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requires {
    /// It was `active` (→ `needs_reconnect`).
    WasActive,
    /// It had no failures (→ `refresh_failing`).
    NoFailures,
    /// It had failures (→ `recovered`).
    HadFailures,
}

impl Requires {
    /// Whether the row as it was meets the condition.
    pub(crate) fn holds(self, old: Prior) -> bool {
        match self {
            Self::WasActive => old.status == ConnectionStatus::Active,
            Self::NoFailures => old.consecutive_failures == 0,
            Self::HadFailures => old.consecutive_failures > 0,
        }
    }

    /// The condition's name, as a batch statement receives it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::WasActive => "was_active",
            Self::NoFailures => "no_failures",
            Self::HadFailures => "had_failures",
        }
    }

    /// [`Requires::holds`] in SQL, for a candidate's condition `requires` (its
    /// [`Requires::as_str`]) and the old row's `status` and `failures`.
    pub(crate) const SQL: &str = "(requires = 'was_active' AND status = 'active') \
        OR (requires = 'no_failures' AND failures = 0) \
        OR (requires = 'had_failures' AND failures > 0)";
}

/// All of a row, as it was before a refresh wrote it, that the refresh rules read: its
/// status and failure count (a batch write reads only these, or is given them:
/// [`Store::update_batch_from`](crate::store::Store::update_batch_from)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prior {
    pub status: ConnectionStatus,
    pub consecutive_failures: u32,
}

impl Prior {
    /// The prior state of a row whose metadata, as read, is `meta`.
    pub fn of(meta: &ConnectionMeta) -> Self {
        Self {
            status: meta.status,
            consecutive_failures: meta.consecutive_failures,
        }
    }
}

/// The event a refresh's write of `new` raises if the row as it was meets the condition
/// returned with it; `new` is the row as written (its new version). See [`update_rule`].
pub(crate) fn update_candidate(new: &ConnectionMeta) -> Option<(NewEvent, Requires)> {
    if new.key.is_app() {
        return None;
    }
    let (kind, requires) = update_rule(new)?;
    Some((refresh_event(kind, new), requires))
}

/// The event `kind` about a refresh's write of `new`, at the row's `updated_at`.
fn refresh_event(kind: EventType, new: &ConnectionMeta) -> NewEvent {
    NewEvent::new(kind, new.updated_at, connection_data(new)).about(new.key.clone())
}

/// [`connection_change_events`] of a refresh's write (`Write::Update`) of `new`, from the
/// row's prior state alone.
pub(crate) fn update_events(prior: Prior, new: &ConnectionMeta) -> Vec<NewEvent> {
    if new.key.is_app() {
        return Vec::new();
    }
    update_event(prior, new)
        .map(|kind| refresh_event(kind, new))
        .into_iter()
        .collect()
}

/// An event's body as sent: `{"id": "evt_…", "type", "timestamp" (RFC 3339), "data"}`.
pub fn event_body(id: &str, kind: EventType, timestamp: OffsetDateTime, data: Value) -> Value {
    json!({
        "id": id,
        "type": kind.as_str(),
        "timestamp": rfc3339(timestamp),
        "data": data,
    })
}

/// A connection event's `data`: `{"user_id", "provider", "account_id", "status", "version",
/// "error"?: {"code", "message", "provider_error"}}`, from the row as written (for a delete, as
/// it was last). `provider_error` is the provider's OAuth `error` value, or null.
/// `error` is the last refresh error, present while the connection needs a reconnect or has
/// failures. Never a token: `ConnectionMeta` has none.
pub fn connection_data(meta: &ConnectionMeta) -> Value {
    let mut data = json!({
        "user_id": meta.key.user_id.as_str(),
        "provider": meta.key.provider.as_str(),
        "account_id": meta.key.account_id.as_str(),
        "status": meta.status.as_str(),
        "version": meta.version,
    });
    let failing = meta.status == ConnectionStatus::NeedsReconnect || meta.consecutive_failures > 0;
    if failing && let Some(error) = &meta.last_error {
        data["error"] = json!({
            "code": error.code,
            "message": error.message,
            "provider_error": error.provider_error,
        });
    }
    data
}

/// A `connect_session.failed` event's `data`: `{"session_id", "user_id", "provider",
/// "account_id"? (the account the application named), "error": {"code", "message"}}`.
pub fn connect_session_failed_data(
    session_id: &str,
    user_id: &UserId,
    provider: &ProviderName,
    account_id: Option<&AccountId>,
    error: &SessionError,
) -> Value {
    let mut data = json!({
        "session_id": session_id,
        "user_id": user_id.as_str(),
        "provider": provider.as_str(),
        "error": {"code": error.code, "message": error.message},
    });
    if let Some(account_id) = account_id {
        data["account_id"] = json!(account_id.as_str());
    }
    data
}

/// A new event id: `evt_`, 13 hex digits of microseconds since the Unix epoch and 96 random
/// bits, base64url (33 characters). The same on every attempt to every endpoint (it is the
/// `webhook-id` header), so consumers can deduplicate. The time first makes ids written
/// together neighbours in the id index (its inserts go to the index's end instead of a random
/// page each, which after a checkpoint would each log a full page).
pub fn new_event_id() -> String {
    format!(
        "evt_{:013x}{}",
        micros_now(),
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
    )
}

/// Microseconds since the Unix epoch, now.
fn micros_now() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// A new delivery id: `dlv_`, 13 hex digits of microseconds since the Unix epoch and 8 random
/// hex digits (25 characters), so ids sort by creation. Within one process they strictly
/// increase even when the clock stands still or steps back.
pub fn new_delivery_id() -> String {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = micros_now();
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    let micros = now.max(previous + 1);
    format!("dlv_{micros:013x}{:08x}", rand::random::<u32>())
}

/// Whether `id` has the shape [`new_delivery_id`] gives (`dlv_` and 21 lowercase hex digits).
pub fn is_delivery_id(id: &str) -> bool {
    id.strip_prefix("dlv_").is_some_and(|hex| {
        hex.len() == 21
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An event to write ([`Store::insert_events`](crate::store::Store::insert_events)), with its
/// body already serialized: the exact bytes every attempt sends and signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// `evt_…` ([`new_event_id`]); unique.
    pub id: String,
    pub kind: EventType,
    /// When the event happened: its body's `timestamp`.
    pub created_at: OffsetDateTime,
    /// The body as sent, JSON ([`event_body`]).
    pub body: String,
    /// Deliver only to this endpoint (by name), whatever it subscribes to: the endpoint test
    /// route's `webhook.test`. `None`: every endpoint subscribed to `kind`.
    pub only_endpoint: Option<String>,
    /// The user's connection the event is about, kept beside it so that connection's
    /// events can be listed ([`Store::recent_connection_events`]): set for every
    /// `connection.*` event and for a `connect_session.failed` that names its account.
    ///
    /// [`Store::recent_connection_events`]: crate::store::Store::recent_connection_events
    pub connection: Option<ConnectionKey>,
}

impl NewEvent {
    /// An event with a fresh id and its body built from `data`, for every subscribed endpoint.
    pub fn new(kind: EventType, timestamp: OffsetDateTime, data: Value) -> Self {
        let id = new_event_id();
        let body = event_body(&id, kind, timestamp, data).to_string();
        Self {
            id,
            kind,
            created_at: timestamp,
            body,
            only_endpoint: None,
            connection: None,
        }
    }

    /// The same event, listed among `key`'s events.
    #[must_use]
    pub fn about(mut self, key: ConnectionKey) -> Self {
        self.connection = Some(key);
        self
    }

    /// The same event for the endpoint named `endpoint` alone.
    #[must_use]
    pub fn only_to(mut self, endpoint: impl Into<String>) -> Self {
        self.only_endpoint = Some(endpoint.into());
        self
    }
}

/// The events a connection write raises (see [`connection_events`]), ready to insert. Their
/// `timestamp` is `at`: the backends pass the written row's `updated_at`, or for a delete the
/// time of the delete.
pub(crate) fn connection_change_events(
    old: Option<&ConnectionMeta>,
    new: Option<&ConnectionMeta>,
    write: Write,
    at: OffsetDateTime,
) -> Vec<NewEvent> {
    let kinds = connection_events(old, new, write);
    if kinds.is_empty() {
        return Vec::new();
    }
    let Some(meta) = new.or(old) else {
        return Vec::new();
    };
    let data = connection_data(meta);
    kinds
        .into_iter()
        .map(|kind| NewEvent::new(kind, at, data.clone()).about(meta.key.clone()))
        .collect()
}

/// The `connect_session.failed` event for a session that `finish` ends in failure or expiry
/// (`None` for a completed one), at `now`.
pub(crate) fn session_failed_event(
    session_id: &str,
    user_id: &UserId,
    provider: &ProviderName,
    account_id: Option<&AccountId>,
    finish: &Finish,
    now: OffsetDateTime,
) -> Option<NewEvent> {
    let error = finish.error()?;
    let data = connect_session_failed_data(session_id, user_id, provider, account_id, error);
    let event = NewEvent::new(EventType::ConnectSessionFailed, now, data);
    // A session that named its account was a reconnect of that connection: the failure is
    // part of the connection's story.
    Some(match account_id {
        Some(account_id) => event.about(ConnectionKey::new(
            user_id.clone(),
            provider.clone(),
            account_id.clone(),
        )),
        None => event,
    })
}

/// An event as kept in the outbox, read back by
/// [`Store::recent_connection_events`](crate::store::Store::recent_connection_events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// `evt_…`
    pub id: String,
    pub kind: EventType,
    /// When it happened (its body's `timestamp`), to the millisecond.
    pub created_at: OffsetDateTime,
    /// The body as sent (JSON). Never a token: bodies carry none.
    pub body: String,
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet: due at `next_attempt_at`.
    Pending,
    /// An attempt got a 2xx answer.
    Delivered,
    /// Given up (the worker decided: retries exhausted, or a permanent refusal).
    Failed,
}

impl DeliveryStatus {
    /// The stable string form used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the stable string form.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery leased to the claimer by [`Store::claim_deliveries`], with what an attempt needs.
///
/// [`Store::claim_deliveries`]: crate::store::Store::claim_deliveries
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// `dlv_…`
    pub id: String,
    /// The event's id: the `webhook-id` header.
    pub event_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    pub kind: EventType,
    /// The event's body, exactly as to send and sign.
    pub body: String,
    /// Attempts finished before this one.
    pub attempts: u32,
    /// When the first attempt was finished; `None` before any.
    pub first_attempt_at: Option<OffsetDateTime>,
}

/// How an attempt ended ([`Store::finish_delivery`](crate::store::Store::finish_delivery)).
/// `error` is text for operators (a transport error, a status line): never a secret or a body
/// the endpoint could have filled with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A 2xx answer with this status.
    Delivered { status: u16 },
    /// Try again at `at`; `status` is the HTTP status when there was an answer.
    Retry {
        at: OffsetDateTime,
        status: Option<u16>,
        error: String,
    },
    /// Give up.
    Failed { status: Option<u16>, error: String },
}

/// A delivery as listed (`GET /v1/webhooks/deliveries`): everything but the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub kind: EventType,
    /// The endpoint's name.
    pub endpoint: String,
    pub status: DeliveryStatus,
    /// Attempts finished.
    pub attempts: u32,
    /// The HTTP status of the last attempt, when it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt did not deliver (`None` once delivered).
    pub last_error: Option<String>,
    /// When the next attempt is due; `None` unless pending.
    pub next_attempt_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub first_attempt_at: Option<OffsetDateTime>,
}

/// Filters and paging for [`Store::list_deliveries`](crate::store::Store::list_deliveries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub status: Option<DeliveryStatus>,
    pub kind: Option<EventType>,
    /// An endpoint's name.
    pub endpoint: Option<String>,
    /// Page size; stores clamp it as [`DeliveryQuery::effective_limit`] says.
    pub limit: u32,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl DeliveryQuery {
    /// The page size stores use: `limit` clamped to 1..=1000, where 0 means
    /// [`DEFAULT_LIST_LIMIT`](crate::store::DEFAULT_LIST_LIMIT) (as for connections).
    pub fn effective_limit(&self) -> u32 {
        crate::store::effective_limit(self.limit)
    }
}

/// One page of deliveries, newest first (by id, which sorts by creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    /// Set when more items may follow.
    pub next_cursor: Option<String>,
}

/// Sizes of the webhook queue, for metrics
/// ([`Store::webhook_queue_stats`](crate::store::Store::webhook_queue_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookQueueStats {
    /// Deliveries not yet delivered or failed.
    pub pending: u64,
    /// Of those, claimable now: due, and not leased (or the lease expired).
    pub due: u64,
    pub failed: u64,
    pub delivered: u64,
    /// Events not yet dispatched into deliveries.
    pub undispatched: u64,
}

/// Encodes the keyset cursor after the delivery `last_id`: base64url (no padding) of the id.
pub fn encode_delivery_cursor(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id)
}

/// Decodes a cursor made by [`encode_delivery_cursor`]: the delivery id after which the next
/// page starts. Anything else is [`StoreError::BadCursor`].
pub fn decode_delivery_cursor(cursor: &str) -> Result<String, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let id = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
    if is_delivery_id(&id) {
        Ok(id)
    } else {
        Err(StoreError::BadCursor)
    }
}

/// One page from up to `limit + 1` deliveries read: the extra one only says another page
/// follows.
pub(crate) fn delivery_page(mut items: Vec<DeliveryView>, limit: u32) -> DeliveryPage {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|d| encode_delivery_cursor(&d.id))
    } else {
        None
    };
    DeliveryPage { items, next_cursor }
}

/// Times in the outbox tables are unix milliseconds: retry delays and leases are seconds
/// long, and whole seconds would shift them by up to one.
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The time `ms` milliseconds after the epoch.
pub(crate) fn from_unix_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| StoreError::Database("stored timestamp is invalid".to_owned()))
}

/// `t` as the outbox keeps it: to the millisecond (what every backend reads back).
pub(crate) fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    from_unix_ms(unix_ms(t)).unwrap_or(t)
}

fn rfc3339(t: OffsetDateTime) -> String {
    // Formatting a UTC time within years 0-9999 cannot fail; the fallback is unix seconds.
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{ConnectionKey, LastError};
    use crate::store::fixtures::{at, sample_connection};

    fn meta(status: ConnectionStatus, failures: u32) -> ConnectionMeta {
        let mut meta = sample_connection("u", "tiktok", "a").meta;
        meta.status = status;
        meta.consecutive_failures = failures;
        meta.version = 7;
        if failures > 0 {
            meta.last_error = Some(LastError {
                code: "TOKEN_REFRESH_ERROR".into(),
                message: "temporarily_unavailable".into(),
                provider_error: None,
                at: at(10),
            });
        }
        meta
    }

    use ConnectionStatus::{Active, NeedsReconnect};
    use EventType as E;

    fn update(old: &ConnectionMeta, new: &ConnectionMeta) -> Vec<EventType> {
        connection_events(Some(old), Some(new), Write::Update)
    }

    #[test]
    fn a_put_of_a_new_connection_is_created() {
        let new = meta(Active, 0);
        assert_eq!(
            connection_events(None, Some(&new), Write::Put),
            [E::ConnectionCreated]
        );
        // Whatever the row says: it exists now where it did not.
        let broken = meta(NeedsReconnect, 1);
        assert_eq!(
            connection_events(None, Some(&broken), Write::Put),
            [E::ConnectionCreated]
        );
    }

    #[test]
    fn a_put_is_reconnected_only_when_it_heals() {
        let healthy = meta(Active, 0);
        for old in [
            meta(NeedsReconnect, 1),
            meta(Active, 2),
            meta(NeedsReconnect, 0),
        ] {
            assert_eq!(
                connection_events(Some(&old), Some(&healthy), Write::Put),
                [E::ConnectionReconnected],
                "{:?}/{}",
                old.status,
                old.consecutive_failures
            );
        }
        assert!(
            connection_events(Some(&healthy), Some(&healthy), Write::Put).is_empty(),
            "re-importing a healthy connection"
        );
        assert!(
            connection_events(
                Some(&meta(NeedsReconnect, 1)),
                Some(&meta(NeedsReconnect, 1)),
                Write::Put
            )
            .is_empty(),
            "a put that leaves it broken heals nothing"
        );
    }

    /// A batch write inserts a refresh's candidate event where the old row meets its
    /// condition: that must be exactly the event the rules raise from the old row, for every
    /// old and new state.
    #[test]
    fn the_candidate_kept_by_its_condition_is_the_event_raised() {
        for old_status in [Active, NeedsReconnect] {
            for old_failures in [0, 1, 3] {
                for new_status in [Active, NeedsReconnect] {
                    for new_failures in [0, 1, 4] {
                        let (old, new) = (
                            meta(old_status, old_failures),
                            meta(new_status, new_failures),
                        );
                        let raised = update_events(Prior::of(&old), &new);
                        let kept: Vec<NewEvent> = update_candidate(&new)
                            .filter(|(_, requires)| requires.holds(Prior::of(&old)))
                            .map(|(event, _)| event)
                            .into_iter()
                            .collect();
                        let what = format!(
                            "{old_status:?}/{old_failures} -> {new_status:?}/{new_failures}"
                        );
                        assert_eq!(raised.len(), kept.len(), "{what}");
                        for (r, k) in raised.iter().zip(&kept) {
                            assert_eq!(
                                (r.kind, r.created_at, &r.connection),
                                (k.kind, k.created_at, &k.connection),
                                "{what}"
                            );
                            let data = |e: &NewEvent| {
                                serde_json::from_str::<Value>(&e.body).expect("json")["data"]
                                    .clone()
                            };
                            assert_eq!(data(r), data(k), "{what}");
                        }
                    }
                }
            }
        }
        let mut app = meta(Active, 1);
        app.key = ConnectionKey::app(app.key.provider.clone());
        assert!(app.key.is_app());
        assert!(
            update_candidate(&app).is_none(),
            "application tokens raise nothing"
        );
    }

    #[test]
    fn refresh_failing_once_per_episode_not_per_attempt() {
        // Three transient failures in a row, then more: one event, at the first.
        let mut raised = Vec::new();
        let mut old = meta(Active, 0);
        for failures in 1..=5 {
            let new = meta(Active, failures);
            raised.extend(update(&old, &new));
            old = new;
        }
        assert_eq!(raised, [E::ConnectionRefreshFailing]);
    }

    #[test]
    fn a_permanent_failure_is_needs_reconnect_and_not_also_failing() {
        assert_eq!(
            update(&meta(Active, 0), &meta(NeedsReconnect, 1)),
            [E::ConnectionNeedsReconnect]
        );
        assert_eq!(
            update(&meta(Active, 3), &meta(NeedsReconnect, 4)),
            [E::ConnectionNeedsReconnect]
        );
        assert!(
            update(&meta(NeedsReconnect, 4), &meta(NeedsReconnect, 5)).is_empty(),
            "already needing a reconnect"
        );
    }

    #[test]
    fn exactly_one_recovered_after_failures() {
        let mut raised = Vec::new();
        let states = [
            meta(Active, 0),
            meta(Active, 1),
            meta(Active, 2),
            meta(Active, 0),
            meta(Active, 0),
        ];
        for pair in states.windows(2) {
            raised.extend(update(&pair[0], &pair[1]));
        }
        assert_eq!(
            raised,
            [E::ConnectionRefreshFailing, E::ConnectionRecovered]
        );
        assert_eq!(
            update(&meta(NeedsReconnect, 1), &meta(Active, 0)),
            [E::ConnectionRecovered],
            "a forced refresh that works again"
        );
    }

    #[test]
    fn reschedules_and_plain_successes_raise_nothing() {
        let old = meta(Active, 0);
        let mut rescheduled = old.clone();
        rescheduled.next_refresh_at = Some(at(9999));
        assert!(update(&old, &rescheduled).is_empty());
        let mut refreshed = old.clone();
        refreshed.last_refreshed_at = Some(at(100));
        assert!(update(&old, &refreshed).is_empty());
        let failing = meta(Active, 2);
        let mut rescheduled = failing.clone();
        rescheduled.next_refresh_at = Some(at(9999));
        assert!(update(&failing, &rescheduled).is_empty());
    }

    #[test]
    fn a_delete_is_deleted() {
        assert_eq!(
            connection_events(Some(&meta(Active, 0)), None, Write::Delete),
            [E::ConnectionDeleted]
        );
        assert!(connection_events(None, None, Write::Delete).is_empty());
    }

    #[test]
    fn application_tokens_raise_nothing() {
        let app = |status, failures| {
            let mut m = meta(status, failures);
            m.key = ConnectionKey::app(m.key.provider.clone());
            m
        };
        assert!(connection_events(None, Some(&app(Active, 0)), Write::Put).is_empty());
        assert!(update(&app(Active, 0), &app(Active, 1)).is_empty());
        assert!(update(&app(Active, 1), &app(Active, 0)).is_empty());
        assert!(update(&app(Active, 0), &app(NeedsReconnect, 1)).is_empty());
        assert!(connection_events(Some(&app(Active, 0)), None, Write::Delete).is_empty());
    }

    #[test]
    fn bodies_follow_the_specification_and_hold_no_token() {
        let conn = sample_connection("u", "tiktok", "a");
        let mut m = conn.meta.clone();
        m.status = NeedsReconnect;
        m.consecutive_failures = 1;
        m.version = 12;
        m.last_error = Some(LastError {
            code: "TOKEN_EXPIRED".into(),
            message: "invalid_grant".into(),
            provider_error: Some("invalid_grant".into()),
            at: at(5),
        });
        let body = event_body(
            "evt_x",
            E::ConnectionNeedsReconnect,
            at(5),
            connection_data(&m),
        );
        assert_eq!(
            body,
            json!({
                "id": "evt_x",
                "type": "connection.needs_reconnect",
                "timestamp": "2026-05-28T20:26:45Z",
                "data": {
                    "user_id": "u", "provider": "tiktok", "account_id": "a",
                    "status": "needs_reconnect", "version": 12,
                    "error": {"code": "TOKEN_EXPIRED", "message": "invalid_grant",
                              "provider_error": "invalid_grant"}
                }
            })
        );
        let text = body.to_string();
        assert!(!text.contains(conn.tokens.access_token.expose_secret()));
        // A recovered connection has no error to show (even if one were still stored).
        m.status = Active;
        m.consecutive_failures = 0;
        assert!(connection_data(&m).get("error").is_none());

        let failed = connect_session_failed_data(
            "cs_1",
            &m.key.user_id,
            &m.key.provider,
            None,
            &SessionError {
                code: "PROVIDER_ERROR".into(),
                message: "access_denied".into(),
            },
        );
        assert_eq!(
            failed,
            json!({"session_id": "cs_1", "user_id": "u", "provider": "tiktok",
                   "error": {"code": "PROVIDER_ERROR", "message": "access_denied"}})
        );
    }

    #[test]
    fn change_events_carry_the_new_row_or_for_a_delete_the_last() {
        let old = meta(Active, 0);
        let mut new = meta(Active, 1);
        new.version = 8;
        let events = connection_change_events(Some(&old), Some(&new), Write::Update, at(1));
        assert_eq!(events.len(), 1);
        let body: Value = serde_json::from_str(&events[0].body).expect("json");
        assert_eq!(body["id"], json!(events[0].id));
        assert_eq!(body["type"], json!("connection.refresh_failing"));
        assert_eq!(body["data"]["version"], json!(8));
        assert_eq!(events[0].created_at, at(1));
        assert_eq!(
            events[0].connection.as_ref(),
            Some(&new.key),
            "listed as its event"
        );
        let deleted = connection_change_events(Some(&new), None, Write::Delete, at(2));
        let body: Value = serde_json::from_str(&deleted[0].body).expect("json");
        assert_eq!(body["data"]["version"], json!(8), "the last version");
        assert!(connection_change_events(Some(&old), Some(&old), Write::Update, at(3)).is_empty());
    }

    #[test]
    fn ids_have_their_shapes_and_delivery_ids_sort_by_creation() {
        let e = new_event_id();
        assert!(e.starts_with("evt_") && e.len() == 33, "{e}");
        assert_ne!(e, new_event_id());
        // Time first: an id made a millisecond later sorts after.
        let hex = &e[4..17];
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{e}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(new_event_id()[..17] > e[..17]);
        let ids: Vec<String> = (0..1000).map(|_| new_delivery_id()).collect();
        assert!(ids.iter().all(|id| is_delivery_id(id)), "{}", ids[0]);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        for bad in [
            "",
            "dlv_",
            "dlv_0123456789abcdef0123G",
            "evt_0123456789abcdef01234",
        ] {
            assert!(!is_delivery_id(bad), "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = new_delivery_id();
        assert_eq!(
            decode_delivery_cursor(&encode_delivery_cursor(&id)).expect("decodes"),
            id
        );
        for bad in [
            "",
            "!!!",
            "bm90IGFuIGlk",
            &encode_delivery_cursor("dlv_short"),
        ] {
            assert!(
                matches!(decode_delivery_cursor(bad), Err(StoreError::BadCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn milliseconds_round_trip() {
        let t = at(0) + time::Duration::nanoseconds(123_456_789);
        assert_eq!(truncate_ms(t), at(0) + time::Duration::milliseconds(123));
        assert_eq!(from_unix_ms(unix_ms(t)).expect("time"), truncate_ms(t));
    }
}
