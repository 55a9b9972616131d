//! The webhook outbox on SQLite: inserting events inside a connection write's transaction,
//! and the statements behind the store's delivery methods (`migrations/sqlite/0005`).
//!
//! Every function here runs on a connection the caller chose: the writes inside the
//! caller's `BEGIN IMMEDIATE` transaction and under the store's write lock, so one instance
//! (or a tool beside it) never sees half a dispatch or claim. SQLite has one writer at a
//! time; that alone keeps two claimers or dispatchers apart. Row mapping is `rows`'.

use std::collections::BTreeSet;

use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite, SqliteConnection};
use time::OffsetDateTime;

use super::super::rows::{
    CONNECTION_EVENTS_SQL, DELIVERY_COLUMNS, FinishDeliveryValues, NewDelivery, PURGE_EVENTS_SQL,
    claimed_delivery_from_row, db_error, delivery_from_row, event_type, fan_out,
    stored_event_from_row,
};
use crate::connection::ConnectionKey;
use crate::store::{StoreError, effective_limit};
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryView, NewEvent, StoredEvent, unix_ms,
};

/// Rows per multi-row `INSERT` (8 variables each): well under SQLite's 32766 bound variables.
const INSERT_CHUNK: usize = 1000;

/// Inserts `events` on `db` (the caller's transaction), in order. A duplicate id fails on
/// its UNIQUE constraint.
pub(super) async fn insert_events(
    db: &mut SqliteConnection,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    for chunk in events.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO webhook_events (id, type, body, only_endpoint, created_at, user_id, \
             provider, account_id) ",
        );
        qb.push_values(chunk, |mut row, event| {
            let key = event.connection.as_ref();
            row.push_bind(event.id.clone())
                .push_bind(event.kind.as_str())
                .push_bind(event.body.clone())
                .push_bind(event.only_endpoint.clone())
                .push_bind(unix_ms(event.created_at))
                .push_bind(key.map(|k| k.user_id.as_str().to_owned()))
                .push_bind(key.map(|k| k.provider.as_str().to_owned()))
                .push_bind(key.map(|k| k.account_id.as_str().to_owned()));
        });
        qb.build()
            .execute(&mut *db)
            .await
            .map_err(db_error("insert events"))?;
    }
    Ok(())
}

/// [`Store::dispatch_events`](crate::store::Store::dispatch_events) on `db` (a transaction).
pub(super) async fn dispatch(
    db: &mut SqliteConnection,
    endpoints: &[(String, BTreeSet<EventType>)],
    now: OffsetDateTime,
    limit: u32,
) -> Result<u64, StoreError> {
    let events: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT seq, id, type, only_endpoint FROM webhook_events \
         WHERE dispatched_at IS NULL ORDER BY seq LIMIT ?",
    )
    .bind(i64::from(limit.max(1)))
    .fetch_all(&mut *db)
    .await
    .map_err(db_error("dispatch events"))?;
    let Some(&(last, ..)) = events.last() else {
        return Ok(0);
    };
    let mut deliveries = Vec::new();
    for (_, id, kind, only) in &events {
        fan_out(
            id,
            event_type(kind)?,
            only.as_deref(),
            endpoints,
            &mut deliveries,
        );
    }
    let now = unix_ms(now);
    insert_deliveries(db, &deliveries, now).await?;
    // The events read above are exactly the undispatched ones up to `last`: nothing else
    // writes while this transaction holds the write lock.
    sqlx::query(
        "UPDATE webhook_events SET dispatched_at = ? WHERE dispatched_at IS NULL AND seq <= ?",
    )
    .bind(now)
    .bind(last)
    .execute(&mut *db)
    .await
    .map_err(db_error("dispatch events"))?;
    Ok(events.len() as u64)
}

/// Creates `deliveries`, pending and due at `now` (unix ms); one that exists for its event
/// and endpoint is left alone.
async fn insert_deliveries(
    db: &mut SqliteConnection,
    deliveries: &[NewDelivery],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in deliveries.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO webhook_deliveries (id, event_id, endpoint, type, status, attempts, \
             next_attempt_at, created_at, updated_at) ",
        );
        qb.push_values(chunk, |mut row, d| {
            row.push_bind(d.id.clone())
                .push_bind(d.event_id.clone())
                .push_bind(d.endpoint.clone())
                .push_bind(d.kind)
                .push("'pending', 0")
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
        });
        qb.push(" ON CONFLICT (event_id, endpoint) DO NOTHING");
        qb.build()
            .execute(&mut *db)
            .await
            .map_err(db_error("dispatch events"))?;
    }
    Ok(())
}

/// [`Store::claim_deliveries`](crate::store::Store::claim_deliveries) on `db` (a write
/// transaction, so nobody claims meanwhile): for each listed endpoint its earliest due,
/// claimable deliveries, at most its capacity (an index walk: `webhook_deliveries_due`,
/// however long its backlog), the earliest `limit` of all those, then their events' bodies;
/// then lease what was chosen.
pub(super) async fn claim(
    db: &mut SqliteConnection,
    now: OffsetDateTime,
    owner: &str,
    lease_until: OffsetDateTime,
    limit: u32,
    capacity: &[(String, u32)],
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let mut chosen: Vec<(i64, String)> = Vec::new();
    for (endpoint, cap) in capacity.iter().filter(|(_, cap)| *cap > 0) {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT next_attempt_at, id FROM webhook_deliveries \
             WHERE endpoint = ?1 AND status = 'pending' AND next_attempt_at <= ?2 \
               AND (lease_owner IS NULL OR lease_until <= ?2) \
             ORDER BY next_attempt_at, id LIMIT ?3",
        )
        .bind(endpoint.clone())
        .bind(unix_ms(now))
        .bind(i64::from(*cap))
        .fetch_all(&mut *db)
        .await
        .map_err(db_error("claim deliveries"))?;
        chosen.extend(rows);
    }
    chosen.sort();
    chosen.truncate(limit.max(1) as usize);
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = QueryBuilder::<Sqlite>::new(
        "SELECT d.id, d.event_id, d.endpoint, d.type, d.attempts, d.first_attempt_at, e.body \
         FROM webhook_deliveries AS d JOIN webhook_events AS e ON e.id = d.event_id \
         WHERE d.id IN (",
    );
    let mut ids = qb.separated(", ");
    for (_, id) in &chosen {
        ids.push_bind(id.clone());
    }
    qb.push(")");
    let mut rows = qb
        .build()
        .fetch_all(&mut *db)
        .await
        .map_err(db_error("claim deliveries"))?;
    // In claim order: earliest due first, then by id.
    let order: std::collections::HashMap<&str, usize> = chosen
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (id.as_str(), i))
        .collect();
    rows.sort_by_key(|row| {
        sqlx::Row::try_get::<String, _>(row, "id")
            .ok()
            .and_then(|id| order.get(id.as_str()).copied())
            .unwrap_or(usize::MAX)
    });
    let claimed = rows
        .iter()
        .map(claimed_delivery_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in claimed.chunks(INSERT_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE webhook_deliveries SET lease_owner = ");
        qb.push_bind(owner.to_owned())
            .push(", lease_until = ")
            .push_bind(unix_ms(lease_until))
            .push(" WHERE id IN (");
        let mut ids = qb.separated(", ");
        for delivery in chunk {
            ids.push_bind(delivery.id.clone());
        }
        qb.push(")");
        qb.build()
            .execute(&mut *db)
            .await
            .map_err(db_error("claim deliveries"))?;
    }
    Ok(claimed)
}

/// [`Store::finish_delivery`](crate::store::Store::finish_delivery): one conditional write.
pub(super) async fn finish(
    db: &mut SqliteConnection,
    id: &str,
    owner: &str,
    outcome: &DeliveryOutcome,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let values = FinishDeliveryValues::new(outcome);
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = ?1, next_attempt_at = ?2, last_status = ?3, \
         last_error = ?4, attempts = attempts + 1, \
         first_attempt_at = COALESCE(first_attempt_at, ?5), updated_at = ?5, \
         lease_owner = NULL, lease_until = NULL \
         WHERE id = ?6 AND status = 'pending' AND lease_owner = ?7",
    )
    .bind(values.status)
    .bind(values.next_attempt_at)
    .bind(values.last_status)
    .bind(values.last_error)
    .bind(unix_ms(now))
    .bind(id.to_owned())
    .bind(owner.to_owned())
    .execute(&mut *db)
    .await
    .map_err(db_error("finish delivery"))?;
    Ok(done.rows_affected() == 1)
}

/// [`Store::retry_delivery`](crate::store::Store::retry_delivery): a failed delivery is due
/// again; either way the delivery as it now is.
pub(super) async fn retry(
    db: &mut SqliteConnection,
    id: &str,
    now: OffsetDateTime,
) -> Result<Option<DeliveryView>, StoreError> {
    let sql = format!(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?1, \
         updated_at = ?1, lease_owner = NULL, lease_until = NULL \
         WHERE id = ?2 AND status = 'failed' RETURNING {DELIVERY_COLUMNS}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(unix_ms(now))
        .bind(id.to_owned())
        .fetch_optional(&mut *db)
        .await
        .map_err(db_error("retry delivery"))?;
    match row {
        Some(row) => delivery_from_row(&row).map(Some),
        None => delivery(db, id).await,
    }
}

/// [`Store::purge_webhook_events`](crate::store::Store::purge_webhook_events) on `db` (a
/// write transaction). Deliveries go with their event (ON DELETE CASCADE).
pub(super) async fn purge(
    db: &mut SqliteConnection,
    before: OffsetDateTime,
    limit: u32,
) -> Result<u64, StoreError> {
    let done = sqlx::query(PURGE_EVENTS_SQL)
        .bind(unix_ms(before))
        .bind(i64::from(limit))
        .execute(&mut *db)
        .await
        .map_err(db_error("purge webhook events"))?;
    Ok(done.rows_affected())
}

/// One delivery by id.
pub(super) async fn delivery(
    db: &mut SqliteConnection,
    id: &str,
) -> Result<Option<DeliveryView>, StoreError> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id.to_owned())
        .fetch_optional(&mut *db)
        .await
        .map_err(db_error("read delivery"))?;
    row.as_ref().map(delivery_from_row).transpose()
}

/// [`Store::recent_connection_events`](crate::store::Store::recent_connection_events)
/// ([`CONNECTION_EVENTS_SQL`]).
pub(super) async fn connection_events(
    db: &mut SqliteConnection,
    key: &ConnectionKey,
    limit: u32,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = sqlx::query(CONNECTION_EVENTS_SQL)
        .bind(key.user_id.as_str())
        .bind(key.provider.as_str())
        .bind(key.account_id.as_str())
        .bind(i64::from(effective_limit(limit)))
        .fetch_all(&mut *db)
        .await
        .map_err(db_error("read connection events"))?;
    rows.iter().map(stored_event_from_row).collect()
}
