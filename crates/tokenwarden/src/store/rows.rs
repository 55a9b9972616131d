//! Row mapping shared by the SQL backends: sealing and opening a connection's secrets,
//! converting its metadata to and from column values (times as unix seconds, scopes and
//! metadata as JSON text), the webhook outbox's rows (times as unix milliseconds), and the
//! small result-shaping helpers. SQLite and PostgreSQL keep
//! only their SQL and their binding code; everything here is backend-independent, so the two
//! cannot drift apart in how they store a connection.

use std::collections::BTreeSet;

use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};
use time::OffsetDateTime;

use super::{Claimed, KeyUsage, ListPage, ListQuery, StoreError, encode_cursor};
use crate::connect::session::{
    ClaimOutcome, ConnectSession, Finish, OpenOutcome, SessionError, SessionState,
};
use crate::connection::{
    AccountId, Connection, ConnectionKey, ConnectionMeta, ConnectionStatus, LastError,
    ProviderName, Tokens, UserId,
};
use crate::crypto::{Field, KeyRing, envelope_key_id};
use crate::secret::{AccessToken, RefreshToken};
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryQuery, DeliveryStatus, DeliveryView, NewEvent, Prior,
    StoredEvent, WebhookQueueStats, from_unix_ms, new_delivery_id, unix_ms, update_events,
};

/// Ciphertexts and their key ids, ready to bind.
#[derive(Clone)]
pub(crate) struct SealedTokens {
    pub access: Vec<u8>,
    pub access_key_id: String,
    pub refresh: Option<Vec<u8>>,
    pub refresh_key_id: Option<String>,
}

/// Seals a connection's secrets under the active key, bound to its key.
pub(crate) fn seal_tokens(keys: &KeyRing, key: &ConnectionKey, tokens: &Tokens) -> SealedTokens {
    let key_id = |envelope: &[u8]| {
        envelope_key_id(envelope)
            .unwrap_or(keys.active_key_id().as_str())
            .to_owned()
    };
    let access = keys.seal(
        tokens.access_token.expose_secret().as_bytes(),
        key,
        Field::AccessToken,
    );
    let access_key_id = key_id(&access);
    let (refresh, refresh_key_id) = tokens
        .refresh_token
        .as_ref()
        .map(|token| {
            let sealed = keys.seal(token.expose_secret().as_bytes(), key, Field::RefreshToken);
            let id = key_id(&sealed);
            (sealed, id)
        })
        .unzip();
    SealedTokens {
        access,
        access_key_id,
        refresh,
        refresh_key_id,
    }
}

/// Opens the `access_token` and `refresh_token` columns of a row.
pub(crate) fn open_tokens<R>(
    keys: &KeyRing,
    key: &ConnectionKey,
    row: &R,
) -> Result<Tokens, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let access: Vec<u8> = get(row, "access_token")?;
    let refresh: Option<Vec<u8>> = get(row, "refresh_token")?;
    let access = keys
        .open_string(&access, key, Field::AccessToken)
        .map_err(|_| StoreError::Decrypt)?;
    let refresh = refresh
        .map(|sealed| keys.open_string(&sealed, key, Field::RefreshToken))
        .transpose()
        .map_err(|_| StoreError::Decrypt)?;
    Ok(Tokens {
        access_token: AccessToken::new(access),
        refresh_token: refresh.map(RefreshToken::new),
    })
}

/// The metadata columns every read selects, for [`meta_from_row`] (the same in both
/// backends).
pub(crate) const META_COLUMNS: &str = "user_id, provider, account_id, token_type, \
     refresh_token IS NOT NULL AS has_refresh_token, expires_at, refresh_expires_at, issued_at, \
     scopes, metadata, status, last_refreshed_at, consecutive_failures, last_error_code, \
     last_error_message, last_error_at, created_at, updated_at, next_refresh_at, version, \
     last_error_provider";

/// The columns a put or update writes, in [`RowValues`]' order (each backend binds them so).
pub(crate) const WRITE_COLUMNS: [&str; 19] = [
    "access_token",
    "access_key_id",
    "refresh_token",
    "refresh_key_id",
    "token_type",
    "expires_at",
    "refresh_expires_at",
    "issued_at",
    "scopes",
    "metadata",
    "status",
    "last_refreshed_at",
    "consecutive_failures",
    "last_error_code",
    "last_error_message",
    "last_error_at",
    "updated_at",
    "next_refresh_at",
    "last_error_provider",
];

/// Everything one write binds, converted to column types before the statement is built.
/// Each backend binds these in its own column order.
#[derive(Clone)]
pub(crate) struct RowValues {
    pub sealed: SealedTokens,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub refresh_expires_at: Option<i64>,
    pub issued_at: Option<i64>,
    pub scopes: String,
    pub metadata: String,
    pub status: &'static str,
    pub last_refreshed_at: Option<i64>,
    pub consecutive_failures: i64,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub last_error_at: Option<i64>,
    pub updated_at: i64,
    pub next_refresh_at: Option<i64>,
    pub last_error_provider: Option<String>,
}

impl RowValues {
    /// The values to write for `conn`, its secrets sealed under the key ring's active key.
    pub(crate) fn seal(keys: &KeyRing, conn: &Connection) -> Result<Self, StoreError> {
        Self::new(&conn.meta, seal_tokens(keys, conn.key(), &conn.tokens))
    }

    pub(crate) fn new(meta: &ConnectionMeta, sealed: SealedTokens) -> Result<Self, StoreError> {
        let json = |what: &str, value: Result<String, serde_json::Error>| {
            value.map_err(|_| StoreError::Database(format!("cannot encode {what} as JSON")))
        };
        Ok(Self {
            sealed,
            token_type: text(&meta.token_type),
            expires_at: meta.expires_at.map(unix),
            refresh_expires_at: meta.refresh_expires_at.map(unix),
            issued_at: meta.issued_at.map(unix),
            scopes: json("scopes", serde_json::to_string(&meta.scopes))?,
            metadata: json("metadata", serde_json::to_string(&meta.metadata))?,
            status: meta.status.as_str(),
            last_refreshed_at: meta.last_refreshed_at.map(unix),
            consecutive_failures: i64::from(meta.consecutive_failures),
            last_error_code: meta.last_error.as_ref().map(|e| text(&e.code)),
            last_error_message: meta.last_error.as_ref().map(|e| text(&e.message)),
            last_error_at: meta.last_error.as_ref().map(|e| unix(e.at)),
            updated_at: unix(meta.updated_at),
            next_refresh_at: meta.next_refresh_at.map(unix),
            last_error_provider: meta
                .last_error
                .as_ref()
                .and_then(|e| e.provider_error.as_deref())
                .map(text),
        })
    }
}

/// Provider-supplied free text (token type, error code and message). PostgreSQL's `TEXT`
/// cannot hold NUL; replacing it in every backend keeps them identical and keeps a stray NUL
/// in a provider's answer from failing the write that commits a refresh (and losing a
/// rotated token).
pub(crate) fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Whether [`Store::update_batch_from`](super::Store::update_batch_from)'s prior states can
/// stand in for reading the rows: one per connection, and no key written twice (a second
/// write's old row is the first's new one).
pub(crate) fn priors_apply(conns: &[Connection], was: &[Prior]) -> bool {
    !conns.is_empty() && was.len() == conns.len() && distinct_keys(conns)
}

/// For [`Store::update_batch_from`](super::Store::update_batch_from): the events each of
/// `conns` raises if written at its expected version, its old state being `was[i]`
/// ([`update_events`]), in order, one list per connection (most empty).
pub(crate) fn events_from_prior(
    conns: &[Connection],
    was: &[Prior],
) -> Result<Vec<Vec<NewEvent>>, StoreError> {
    conns
        .iter()
        .zip(was)
        .map(|(conn, &prior)| Ok(update_events(prior, &batch_written(conn)?)))
        .collect()
}

/// `conn` as a batch write leaves its row, for deciding the write's events before it is
/// made: a batch writes a row only at its expected version and makes it that version plus
/// one. `created_at` is not in an event; the caller's value stands in for the row's.
pub(crate) fn batch_written(conn: &Connection) -> Result<ConnectionMeta, StoreError> {
    written_meta(conn, unix(conn.meta.created_at), conn.meta.version + 1)
}

/// The stored metadata after a write: the caller's fields plus what the store decided, as a
/// read would return them (times at whole seconds, free text as stored).
pub(crate) fn written_meta(
    conn: &Connection,
    created_at: i64,
    version: i64,
) -> Result<ConnectionMeta, StoreError> {
    let mut meta = conn.meta.clone();
    meta.has_refresh_token = conn.tokens.refresh_token.is_some();
    meta.created_at = from_unix(created_at)?;
    meta.version = version;
    meta.token_type = text(&meta.token_type);
    meta.updated_at = truncate(meta.updated_at)?;
    for t in [
        &mut meta.issued_at,
        &mut meta.next_refresh_at,
        &mut meta.expires_at,
        &mut meta.refresh_expires_at,
        &mut meta.last_refreshed_at,
    ] {
        *t = t.map(truncate).transpose()?;
    }
    if let Some(e) = meta.last_error.as_mut() {
        e.at = truncate(e.at)?;
        e.code = text(&e.code);
        e.message = text(&e.message);
        e.provider_error = e.provider_error.as_deref().map(text);
    }
    Ok(meta)
}

/// The key columns of a row.
pub(crate) fn key_from_row<R>(row: &R) -> Result<ConnectionKey, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ConnectionKey {
        user_id: UserId::parse(get::<R, String>(row, "user_id")?)
            .map_err(|_| corrupt("user_id"))?,
        provider: ProviderName::parse(get::<R, String>(row, "provider")?)
            .map_err(|_| corrupt("provider"))?,
        account_id: AccountId::parse(get::<R, String>(row, "account_id")?)
            .map_err(|_| corrupt("account_id"))?,
    })
}

/// Whether no key appears twice in `conns` (a batch that can be written in one statement).
pub(crate) fn distinct_keys(conns: &[Connection]) -> bool {
    let mut keys: Vec<&ConnectionKey> = conns.iter().map(Connection::key).collect();
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1])
}

/// A row claimed by `claim_due` (metadata columns and both sealed tokens). Only an unreadable
/// key fails the whole claim; anything else wrong with the row stays with that row.
pub(crate) fn claimed_from_row<R>(keys: &KeyRing, row: &R) -> Result<Claimed, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let key = key_from_row(row)?;
    let connection = meta_from_row(row).and_then(|meta| {
        let tokens = open_tokens(keys, &meta.key, row)?;
        Ok(Connection { meta, tokens })
    });
    Ok(Claimed { key, connection })
}

/// What the refresh event rules read of a row as it was: `status` and
/// `consecutive_failures`.
pub(crate) fn prior_from_row<R>(row: &R) -> Result<Prior, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Prior {
        status: parse_status(&get::<R, String>(row, "status")?)?,
        consecutive_failures: failures_from_row(row)?,
    })
}

fn parse_status(status: &str) -> Result<ConnectionStatus, StoreError> {
    ConnectionStatus::parse(status).ok_or_else(|| corrupt("status"))
}

fn failures_from_row<R>(row: &R) -> Result<u32, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    u32::try_from(get::<R, i64>(row, "consecutive_failures")?)
        .map_err(|_| corrupt("consecutive_failures"))
}

/// The metadata columns of a row (the backends' `META_COLUMNS`).
pub(crate) fn meta_from_row<R>(row: &R) -> Result<ConnectionMeta, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let key = key_from_row(row)?;
    let status: String = get(row, "status")?;
    let scopes: String = get(row, "scopes")?;
    let metadata: String = get(row, "metadata")?;
    let last_error_code: Option<String> = get(row, "last_error_code")?;
    let last_error_message: Option<String> = get(row, "last_error_message")?;
    let last_error_at: Option<i64> = get(row, "last_error_at")?;
    let last_error_provider: Option<String> = get(row, "last_error_provider")?;
    let last_error = match (last_error_code, last_error_at) {
        (Some(code), Some(at)) => Some(LastError {
            code,
            message: last_error_message.unwrap_or_default(),
            provider_error: last_error_provider,
            at: from_unix(at)?,
        }),
        _ => None,
    };
    let time = |column: &'static str| -> Result<Option<OffsetDateTime>, StoreError> {
        get::<R, Option<i64>>(row, column)?
            .map(from_unix)
            .transpose()
    };
    Ok(ConnectionMeta {
        key,
        token_type: get(row, "token_type")?,
        has_refresh_token: get(row, "has_refresh_token")?,
        expires_at: time("expires_at")?,
        refresh_expires_at: time("refresh_expires_at")?,
        issued_at: time("issued_at")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("scopes"))?,
        metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata"))?,
        status: parse_status(&status)?,
        last_refreshed_at: time("last_refreshed_at")?,
        consecutive_failures: failures_from_row(row)?,
        last_error,
        created_at: from_unix(get(row, "created_at")?)?,
        updated_at: from_unix(get(row, "updated_at")?)?,
        next_refresh_at: time("next_refresh_at")?,
        version: get(row, "version")?,
    })
}

/// The columns of `connect_sessions` that make a [`ConnectSession`], in the order
/// [`SessionValues`] binds them; every session read selects them for [`session_from_row`].
/// The hashes and the sealed flow are each statement's own business.
pub(crate) const SESSION_COLUMNS: [&str; 15] = [
    "id",
    "user_id",
    "provider",
    "account_id",
    "reconnect",
    "return_url",
    "scopes",
    "state",
    "error_code",
    "error_message",
    "connected_account_id",
    "created_at",
    "expires_at",
    "opened_at",
    "finished_at",
];

/// A connect session as column values, in [`SESSION_COLUMNS`] order (each backend binds
/// them so).
pub(crate) struct SessionValues {
    pub id: String,
    pub user_id: String,
    pub provider: String,
    pub account_id: Option<String>,
    pub reconnect: bool,
    pub return_url: String,
    pub scopes: String,
    pub state: &'static str,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub connected_account_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub opened_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl SessionValues {
    pub(crate) fn new(session: &ConnectSession) -> Result<Self, StoreError> {
        let error = session.error.as_ref();
        Ok(Self {
            id: session.id.clone(),
            user_id: session.user_id.as_str().to_owned(),
            provider: session.provider.as_str().to_owned(),
            account_id: session.account_id.as_ref().map(|a| a.as_str().to_owned()),
            reconnect: session.reconnect,
            return_url: session.return_url.clone(),
            scopes: serde_json::to_string(&session.scopes)
                .map_err(|_| StoreError::Database("cannot encode scopes as JSON".to_owned()))?,
            state: session.state.as_str(),
            error_code: error.map(|e| text(&e.code)),
            error_message: error.map(|e| text(&e.message)),
            connected_account_id: session
                .connected_account_id
                .as_ref()
                .map(|a| a.as_str().to_owned()),
            created_at: unix(session.created_at),
            expires_at: unix(session.expires_at),
            opened_at: session.opened_at.map(unix),
            finished_at: session.finished_at.map(unix),
        })
    }
}

/// What [`Store::finish_connect_session`](super::Store::finish_connect_session) writes:
/// `state`, `error_code`, `error_message`, `connected_account_id`, `finished_at`, in that
/// order.
pub(crate) struct FinishValues {
    pub state: &'static str,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub connected_account_id: Option<String>,
    pub finished_at: i64,
}

impl FinishValues {
    pub(crate) fn new(finish: &Finish, now: OffsetDateTime) -> Self {
        Self {
            state: finish.state().as_str(),
            error_code: finish.error().map(|e| text(&e.code)),
            error_message: finish.error().map(|e| text(&e.message)),
            connected_account_id: finish.account_id().map(|a| a.as_str().to_owned()),
            finished_at: unix(now),
        }
    }
}

/// A connect session from a row that has the [`SESSION_COLUMNS`].
pub(crate) fn session_from_row<R>(row: &R) -> Result<ConnectSession, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let account = |column: &'static str| -> Result<Option<AccountId>, StoreError> {
        get::<R, Option<String>>(row, column)?
            .map(|a| AccountId::parse(a).map_err(|_| corrupt(column)))
            .transpose()
    };
    let time = |column: &'static str| -> Result<Option<OffsetDateTime>, StoreError> {
        get::<R, Option<i64>>(row, column)?
            .map(from_unix)
            .transpose()
    };
    let scopes: String = get(row, "scopes")?;
    let state: String = get(row, "state")?;
    let error_code: Option<String> = get(row, "error_code")?;
    let error_message: Option<String> = get(row, "error_message")?;
    Ok(ConnectSession {
        id: get(row, "id")?,
        user_id: UserId::parse(get::<R, String>(row, "user_id")?)
            .map_err(|_| corrupt("user_id"))?,
        provider: ProviderName::parse(get::<R, String>(row, "provider")?)
            .map_err(|_| corrupt("provider"))?,
        account_id: account("account_id")?,
        reconnect: get(row, "reconnect")?,
        return_url: get(row, "return_url")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("scopes"))?,
        state: SessionState::parse(&state).ok_or_else(|| corrupt("state"))?,
        error: error_code.map(|code| SessionError {
            code,
            message: error_message.unwrap_or_default(),
        }),
        connected_account_id: account("connected_account_id")?,
        created_at: from_unix(get(row, "created_at")?)?,
        expires_at: from_unix(get(row, "expires_at")?)?,
        opened_at: time("opened_at")?,
        finished_at: time("finished_at")?,
    })
}

/// Why an open's conditional `UPDATE` matched no row, from the session as read after it
/// (by token hash): unknown, opened before (states only move forward), or expired.
pub(crate) fn open_refused(
    found: Option<ConnectSession>,
    now: OffsetDateTime,
) -> Result<OpenOutcome, StoreError> {
    Ok(match found {
        None => OpenOutcome::Unknown,
        Some(s) if s.state != SessionState::Pending => OpenOutcome::AlreadyOpened(s),
        Some(s) if s.expires_at <= now => OpenOutcome::Expired(s),
        // Pending and unexpired, yet not opened: the row was replaced under the same token
        // hash between the two statements. Not reachable with random tokens.
        Some(_) => {
            return Err(StoreError::Database(
                "open connect session: the session changed concurrently".to_owned(),
            ));
        }
    })
}

/// Why a claim's conditional `UPDATE` matched no row, from the session and its browser hash
/// as read after it (by state hash), in the trait's order: unknown, used, other browser,
/// expired.
pub(crate) fn claim_refused(
    found: Option<(ConnectSession, Option<String>)>,
    browser_hash: Option<&str>,
    now: OffsetDateTime,
) -> Result<ClaimOutcome, StoreError> {
    let Some((session, stored_browser)) = found else {
        return Ok(ClaimOutcome::Unknown);
    };
    Ok(if session.state != SessionState::Opened {
        ClaimOutcome::Used(session)
    } else if browser_hash.is_none() || stored_browser.as_deref() != browser_hash {
        ClaimOutcome::OtherBrowser(session)
    } else if session.expires_at <= now {
        ClaimOutcome::Expired(session)
    } else {
        // Every condition holds now, so it held for the UPDATE too (a state hash is written
        // together with `opened`, and states only move forward). Not reachable.
        return Err(StoreError::Database(
            "claim connect callback: the session changed concurrently".to_owned(),
        ));
    })
}

/// The key id of a sealed flow's envelope, for `flow_key_id`.
pub(crate) fn flow_key_id(keys: &KeyRing, sealed: &[u8]) -> String {
    envelope_key_id(sealed)
        .unwrap_or(keys.active_key_id().as_str())
        .to_owned()
}

/// Reads a column. Decode errors name the column, never the value.
pub(crate) fn get<R, T>(row: &R, column: &'static str) -> Result<T, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column)
        .map_err(|_| StoreError::Database(format!("cannot decode column {column}")))
}

/// [`Store::purge_webhook_events`](crate::store::Store::purge_webhook_events) in both
/// backends: `$1` is the cut-off (unix ms), `$2` the limit (SQLite reads `$1` as a named
/// parameter, bound in order). Deliveries go with their event (ON DELETE CASCADE).
pub(crate) const PURGE_EVENTS_SQL: &str = "DELETE FROM webhook_events WHERE seq IN ( \
     SELECT seq FROM webhook_events AS e \
     WHERE e.dispatched_at IS NOT NULL AND e.created_at < $1 \
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries AS d \
                       WHERE d.event_id = e.id \
                         AND (d.status = 'pending' OR d.updated_at >= $1)) \
     ORDER BY e.created_at, e.seq LIMIT $2)";

/// The columns of `webhook_deliveries` that make a [`DeliveryView`], for
/// [`delivery_from_row`] (the same in both backends).
pub(crate) const DELIVERY_COLUMNS: &str = "id, event_id, endpoint, type, status, attempts, \
     next_attempt_at, last_status, last_error, created_at, updated_at, first_attempt_at";

/// A delivery from a row that has the [`DELIVERY_COLUMNS`].
pub(crate) fn delivery_from_row<R>(row: &R) -> Result<DeliveryView, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = get(row, "status")?;
    let time = |column: &'static str| -> Result<Option<OffsetDateTime>, StoreError> {
        get::<R, Option<i64>>(row, column)?
            .map(from_unix_ms)
            .transpose()
    };
    Ok(DeliveryView {
        id: get(row, "id")?,
        event_id: get(row, "event_id")?,
        kind: event_type(&get::<R, String>(row, "type")?)?,
        endpoint: get(row, "endpoint")?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| corrupt("delivery status"))?,
        attempts: u32::try_from(get::<R, i32>(row, "attempts")?)
            .map_err(|_| corrupt("attempts"))?,
        last_status: get::<R, Option<i32>>(row, "last_status")?
            .map(|s| u16::try_from(s).map_err(|_| corrupt("last_status")))
            .transpose()?,
        last_error: get(row, "last_error")?,
        next_attempt_at: time("next_attempt_at")?,
        created_at: from_unix_ms(get(row, "created_at")?)?,
        updated_at: from_unix_ms(get(row, "updated_at")?)?,
        first_attempt_at: time("first_attempt_at")?,
    })
}

/// A claimed delivery from a row with `id, event_id, endpoint, type, attempts,
/// first_attempt_at` and the event's `body`.
pub(crate) fn claimed_delivery_from_row<R>(row: &R) -> Result<ClaimedDelivery, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(ClaimedDelivery {
        id: get(row, "id")?,
        event_id: get(row, "event_id")?,
        endpoint: get(row, "endpoint")?,
        kind: event_type(&get::<R, String>(row, "type")?)?,
        body: get(row, "body")?,
        attempts: u32::try_from(get::<R, i32>(row, "attempts")?)
            .map_err(|_| corrupt("attempts"))?,
        first_attempt_at: get::<R, Option<i64>>(row, "first_attempt_at")?
            .map(from_unix_ms)
            .transpose()?,
    })
}

/// [`Store::recent_connection_events`](crate::store::Store::recent_connection_events) in both
/// backends (SQLite reads `$1`… as positional parameters): a connection's events, newest
/// first, down the `webhook_events_by_connection` index, with the columns
/// [`stored_event_from_row`] reads.
pub(crate) const CONNECTION_EVENTS_SQL: &str = "SELECT id, type, created_at, body \
     FROM webhook_events WHERE user_id = $1 AND provider = $2 AND account_id = $3 \
     ORDER BY seq DESC LIMIT $4";

/// An event from a row of [`CONNECTION_EVENTS_SQL`].
pub(crate) fn stored_event_from_row<R>(row: &R) -> Result<StoredEvent, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(StoredEvent {
        id: get(row, "id")?,
        kind: event_type(&get::<R, String>(row, "type")?)?,
        created_at: from_unix_ms(get(row, "created_at")?)?,
        body: get(row, "body")?,
    })
}

/// A stored event type.
pub(crate) fn event_type(name: &str) -> Result<EventType, StoreError> {
    EventType::parse(name).ok_or_else(|| corrupt("event type"))
}

/// What [`Store::finish_delivery`](super::Store::finish_delivery) writes: `status`,
/// `next_attempt_at`, `last_status`, `last_error`, in that order.
pub(crate) struct FinishDeliveryValues {
    pub status: &'static str,
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

impl FinishDeliveryValues {
    pub(crate) fn new(outcome: &DeliveryOutcome) -> Self {
        let (status, next, last_status, error) = match outcome {
            DeliveryOutcome::Delivered { status } => {
                (DeliveryStatus::Delivered, None, Some(*status), None)
            }
            DeliveryOutcome::Retry { at, status, error } => {
                (DeliveryStatus::Pending, Some(*at), *status, Some(error))
            }
            DeliveryOutcome::Failed { status, error } => {
                (DeliveryStatus::Failed, None, *status, Some(error))
            }
        };
        Self {
            status: status.as_str(),
            next_attempt_at: next.map(unix_ms),
            last_status: last_status.map(i32::from),
            last_error: error.map(|e| text(e)),
        }
    }
}

/// One delivery to create, as column values: `id, event_id, endpoint, type`; the rest are a
/// new pending delivery's (due and created at the dispatch's `now`).
pub(crate) struct NewDelivery {
    pub id: String,
    pub event_id: String,
    pub endpoint: String,
    pub kind: &'static str,
}

/// The deliveries dispatching an event makes: one per endpoint of `endpoints` subscribed to
/// `kind`, or, when the event names `only_endpoint`, one for it if it is among `endpoints`.
pub(crate) fn fan_out(
    event_id: &str,
    kind: EventType,
    only_endpoint: Option<&str>,
    endpoints: &[(String, BTreeSet<EventType>)],
    into: &mut Vec<NewDelivery>,
) {
    let mut seen = BTreeSet::new();
    for (name, events) in endpoints {
        let takes = match only_endpoint {
            Some(only) => name == only,
            None => events.contains(&kind),
        };
        if takes && seen.insert(name.as_str()) {
            into.push(NewDelivery {
                id: new_delivery_id(),
                event_id: event_id.to_owned(),
                endpoint: name.clone(),
                kind: kind.as_str(),
            });
        }
    }
}

/// The list statement for deliveries: [`DELIVERY_COLUMNS`] of those matching the query's
/// filters before the cursor's id, newest first, one row past the page.
pub(crate) fn delivery_list_query<DB>(
    query: &DeliveryQuery,
    before: Option<&str>,
    limit: u32,
) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> &'static str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut qb =
        QueryBuilder::<DB>::new(format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"));
    let mut sep = " WHERE ";
    if let Some(status) = query.status {
        qb.push(sep).push("status = ").push_bind(status.as_str());
        sep = " AND ";
    }
    if let Some(kind) = query.kind {
        qb.push(sep).push("type = ").push_bind(kind.as_str());
        sep = " AND ";
    }
    if let Some(endpoint) = &query.endpoint {
        qb.push(sep).push("endpoint = ").push_bind(endpoint.clone());
        sep = " AND ";
    }
    if let Some(before) = before {
        qb.push(sep).push("id < ").push_bind(before.to_owned());
    }
    qb.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(limit) + 1);
    qb
}

/// [`Store::webhook_queue_stats`](super::Store::webhook_queue_stats)'s counts, in
/// [`WebhookQueueStats`] field order, with `now` bound once as the backend's first parameter
/// (`$1` or `?1`).
pub(crate) fn webhook_stats_sql(now: &str) -> String {
    format!(
        "SELECT \
           (SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'), \
           (SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending' \
              AND next_attempt_at <= {now} AND (lease_owner IS NULL OR lease_until <= {now})), \
           (SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'failed'), \
           (SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivered'), \
           (SELECT COUNT(*) FROM webhook_events WHERE dispatched_at IS NULL)"
    )
}

/// The five counts of [`webhook_stats_sql`] as [`WebhookQueueStats`].
pub(crate) fn webhook_stats(
    counts: (i64, i64, i64, i64, i64),
) -> Result<WebhookQueueStats, StoreError> {
    let count = |n: i64| u64::try_from(n).map_err(|_| corrupt("count"));
    Ok(WebhookQueueStats {
        pending: count(counts.0)?,
        due: count(counts.1)?,
        failed: count(counts.2)?,
        delivered: count(counts.3)?,
        undispatched: count(counts.4)?,
    })
}

/// Appends `(user_id, provider, account_id) > (after)`: keyset pagination in key order. The
/// key columns compare byte-wise in both backends (SQLite's BINARY collation, PostgreSQL's
/// `COLLATE "C"`), like `ConnectionKey`'s `Ord`.
pub(crate) fn push_after<DB>(qb: &mut QueryBuilder<DB>, after: &ConnectionKey)
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    qb.push("(user_id, provider, account_id) > (")
        .push_bind(after.user_id.as_str().to_owned())
        .push(", ")
        .push_bind(after.provider.as_str().to_owned())
        .push(", ")
        .push_bind(after.account_id.as_str().to_owned())
        .push(")");
}

/// The list statement: `meta_columns` of the connections matching the query's filters after
/// `after`, in key order, one row past the page (which tells whether another page follows).
pub(crate) fn list_query<DB>(
    meta_columns: &str,
    query: &ListQuery,
    after: Option<&ConnectionKey>,
    limit: u32,
) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> &'static str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut qb = QueryBuilder::<DB>::new(format!("SELECT {meta_columns} FROM connections"));
    let mut sep = " WHERE ";
    if let Some(provider) = &query.provider {
        qb.push(sep)
            .push("provider = ")
            .push_bind(provider.as_str().to_owned());
        sep = " AND ";
    }
    if let Some(user_id) = &query.user_id {
        qb.push(sep)
            .push("user_id = ")
            .push_bind(user_id.as_str().to_owned());
        sep = " AND ";
    }
    if let Some(status) = query.status {
        qb.push(sep).push("status = ").push_bind(status.as_str());
        sep = " AND ";
    }
    if let Some(after) = after {
        qb.push(sep);
        push_after(&mut qb, after);
    }
    qb.push(" ORDER BY user_id, provider, account_id LIMIT ")
        .push_bind(i64::from(limit) + 1);
    qb
}

/// One page from `limit + 1` rows read: the extra row only says another page follows.
pub(crate) fn page(mut items: Vec<ConnectionMeta>, limit: u32) -> ListPage {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|m| encode_cursor(&m.key))
    } else {
        None
    };
    ListPage { items, next_cursor }
}

/// `(status, count)` rows as counts for every status, zero included, so a gauge built from
/// them drops to 0.
pub(crate) fn status_counts(
    rows: Vec<(String, i64)>,
) -> Result<Vec<(ConnectionStatus, u64)>, StoreError> {
    let mut counts = vec![
        (ConnectionStatus::Active, 0),
        (ConnectionStatus::NeedsReconnect, 0),
    ];
    for (status, n) in rows {
        let status = ConnectionStatus::parse(&status).ok_or_else(|| corrupt("status"))?;
        let n = u64::try_from(n).map_err(|_| corrupt("count"))?;
        if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == status) {
            entry.1 = n;
        }
    }
    Ok(counts)
}

/// `(key id, count)` rows as [`KeyUsage`].
pub(crate) fn key_usage(rows: Vec<(String, i64)>) -> Result<Vec<KeyUsage>, StoreError> {
    rows.into_iter()
        .map(|(key_id, n)| {
            let ciphertexts = u64::try_from(n).map_err(|_| corrupt("count"))?;
            Ok(KeyUsage {
                key_id,
                ciphertexts,
            })
        })
        .collect()
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Database(format!("stored {what} is invalid"))
}

/// Maps a driver error. sqlx's messages carry the database's message, never bound values or
/// the connection URL.
pub(crate) fn db_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Database(format!("{op}: {e}"))
}

pub(crate) fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

pub(crate) fn from_unix(seconds: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| corrupt("timestamp"))
}

pub(crate) fn truncate(t: OffsetDateTime) -> Result<OffsetDateTime, StoreError> {
    from_unix(unix(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_provider_text_is_replaced() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert_eq!(text("plain"), "plain");
    }
}
