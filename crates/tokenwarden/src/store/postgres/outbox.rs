//! The webhook outbox on PostgreSQL: inserting events inside a connection write's
//! transaction, and the statements behind the store's delivery methods
//! (`migrations/postgres/0005`).
//!
//! Several instances share the tables. Dispatching locks the events it takes with
//! `FOR UPDATE SKIP LOCKED`, so two dispatchers never take one event and never wait on each
//! other; claiming does the same to deliveries, re-checking the lease on the newest row of
//! any it locks (a delivery another instance claimed since this statement's snapshot is not
//! claimed again). Finishing is one conditional `UPDATE` on the lease holder. Row mapping is
//! `rows`'.

use std::collections::BTreeSet;

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;

use super::super::rows::{
    CONNECTION_EVENTS_SQL, DELIVERY_COLUMNS, FinishDeliveryValues, NewDelivery, PURGE_EVENTS_SQL,
    claimed_delivery_from_row, db_error, delivery_from_row, event_type, fan_out, get,
    stored_event_from_row,
};
use crate::connection::ConnectionKey;
use crate::store::{StoreError, effective_limit};
use crate::webhooks::EventType;
use crate::webhooks::outbox::{
    ClaimedDelivery, DeliveryOutcome, DeliveryView, NewEvent, StoredEvent, unix_ms,
};

/// Inserts `events` on `db` (the caller's transaction) in one statement, `seq` following
/// their order. A duplicate id fails on its UNIQUE constraint.
pub(super) async fn insert_events(
    db: &mut PgConnection,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut only = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    let mut users = Vec::with_capacity(events.len());
    let mut providers = Vec::with_capacity(events.len());
    let mut accounts = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.id.as_str());
        kinds.push(event.kind.as_str());
        bodies.push(event.body.as_str());
        only.push(event.only_endpoint.as_deref());
        created.push(unix_ms(event.created_at));
        let key = event.connection.as_ref();
        users.push(key.map(|k| k.user_id.as_str()));
        providers.push(key.map(|k| k.provider.as_str()));
        accounts.push(key.map(|k| k.account_id.as_str()));
    }
    sqlx::query(
        "INSERT INTO webhook_events (id, type, body, only_endpoint, created_at, user_id, \
         provider, account_id) \
         SELECT id, type, body, only_endpoint, created_at, user_id, provider, account_id \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
                     $7::text[], $8::text[]) \
              WITH ORDINALITY AS e(id, type, body, only_endpoint, created_at, user_id, \
                                   provider, account_id, n) \
         ORDER BY n",
    )
    .bind(ids)
    .bind(kinds)
    .bind(bodies)
    .bind(only)
    .bind(created)
    .bind(users)
    .bind(providers)
    .bind(accounts)
    .execute(&mut *db)
    .await
    .map_err(db_error("insert events"))?;
    Ok(())
}

/// [`Store::dispatch_events`](crate::store::Store::dispatch_events) on `db` (a
/// transaction): lock the oldest undispatched events nobody else holds, fan them out, mark
/// them. A concurrent dispatcher skips what this one locked, and an event dispatched and
/// committed since this statement's snapshot is re-checked on its newest row and left.
pub(super) async fn dispatch(
    db: &mut PgConnection,
    endpoints: &[(String, BTreeSet<EventType>)],
    now: OffsetDateTime,
    limit: u32,
) -> Result<u64, StoreError> {
    let events = sqlx::query(
        "SELECT seq, id, type, only_endpoint FROM webhook_events \
         WHERE dispatched_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::from(limit.max(1)))
    .fetch_all(&mut *db)
    .await
    .map_err(db_error("dispatch events"))?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut seqs = Vec::with_capacity(events.len());
    let mut deliveries = Vec::new();
    for row in &events {
        seqs.push(get::<_, i64>(row, "seq")?);
        let id: String = get(row, "id")?;
        let kind = event_type(&get::<_, String>(row, "type")?)?;
        let only: Option<String> = get(row, "only_endpoint")?;
        fan_out(&id, kind, only.as_deref(), endpoints, &mut deliveries);
    }
    let now = unix_ms(now);
    insert_deliveries(db, deliveries, now).await?;
    sqlx::query("UPDATE webhook_events SET dispatched_at = $1 WHERE seq = ANY($2::int8[])")
        .bind(now)
        .bind(seqs)
        .execute(&mut *db)
        .await
        .map_err(db_error("dispatch events"))?;
    Ok(events.len() as u64)
}

/// Creates `deliveries`, pending and due at `now` (unix ms), in one statement; one that
/// exists for its event and endpoint is left alone.
async fn insert_deliveries(
    db: &mut PgConnection,
    deliveries: Vec<NewDelivery>,
    now: i64,
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(deliveries.len());
    let mut event_ids = Vec::with_capacity(deliveries.len());
    let mut endpoints = Vec::with_capacity(deliveries.len());
    let mut kinds = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        ids.push(d.id);
        event_ids.push(d.event_id);
        endpoints.push(d.endpoint);
        kinds.push(d.kind);
    }
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint, type, status, attempts, \
             next_attempt_at, created_at, updated_at) \
         SELECT id, event_id, endpoint, type, 'pending', 0, $5, $5, $5 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
              AS d(id, event_id, endpoint, type) \
         ON CONFLICT (event_id, endpoint) DO NOTHING",
    )
    .bind(ids)
    .bind(event_ids)
    .bind(endpoints)
    .bind(kinds)
    .bind(now)
    .execute(&mut *db)
    .await
    .map_err(db_error("dispatch events"))?;
    Ok(())
}

/// [`Store::claim_deliveries`](crate::store::Store::claim_deliveries)'s one statement.
/// `caps` is each listed endpoint's capacity; `due` takes, for each endpoint, its earliest
/// due and claimable deliveries up to its cap (an index walk on `webhook_deliveries_due`,
/// however long its backlog), locking them and skipping rows another claimer holds, then the
/// earliest `$2` of all of those. A row locked after waiting is re-checked against the
/// lateral query's own conditions on its newest version (READ COMMITTED re-evaluates a
/// locking query's WHERE), so a delivery another instance claimed and committed meanwhile
/// drops out. RETURNING has no order, hence the outer ORDER BY.
const CLAIM_SQL: &str = "\
    WITH caps AS ( \
        SELECT * FROM UNNEST($5::text[], $6::bigint[]) AS c(endpoint, cap) \
    ), due AS ( \
        SELECT p.id, p.next_attempt_at FROM caps AS c CROSS JOIN LATERAL ( \
            SELECT w.id, w.next_attempt_at FROM webhook_deliveries AS w \
            WHERE w.endpoint = c.endpoint AND w.status = 'pending' \
              AND w.next_attempt_at <= $1 \
              AND (w.lease_owner IS NULL OR w.lease_until <= $1) \
            ORDER BY w.next_attempt_at, w.id \
            LIMIT c.cap \
            FOR UPDATE SKIP LOCKED \
        ) AS p \
        ORDER BY p.next_attempt_at, p.id \
        LIMIT $2 \
    ), claimed AS ( \
        UPDATE webhook_deliveries AS w SET lease_owner = $3, lease_until = $4 \
        FROM due WHERE w.id = due.id \
        RETURNING w.id, w.event_id, w.endpoint, w.type, w.attempts, w.first_attempt_at, \
                  w.next_attempt_at \
    ) \
    SELECT c.id, c.event_id, c.endpoint, c.type, c.attempts, c.first_attempt_at, e.body \
    FROM claimed AS c JOIN webhook_events AS e ON e.id = c.event_id \
    ORDER BY c.next_attempt_at, c.id";

/// [`Store::claim_deliveries`](crate::store::Store::claim_deliveries).
pub(super) async fn claim(
    db: &mut PgConnection,
    now: OffsetDateTime,
    owner: &str,
    lease_until: OffsetDateTime,
    limit: u32,
    capacity: &[(String, u32)],
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let (endpoints, caps): (Vec<String>, Vec<i64>) = capacity
        .iter()
        .filter(|(_, cap)| *cap > 0)
        .map(|(endpoint, cap)| (endpoint.clone(), i64::from(*cap)))
        .unzip();
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(CLAIM_SQL)
        .bind(unix_ms(now))
        .bind(i64::from(limit.max(1)))
        .bind(owner.to_owned())
        .bind(unix_ms(lease_until))
        .bind(endpoints)
        .bind(caps)
        .fetch_all(&mut *db)
        .await
        .map_err(db_error("claim deliveries"))?;
    rows.iter().map(claimed_delivery_from_row).collect()
}

/// [`Store::finish_delivery`](crate::store::Store::finish_delivery): one conditional write.
/// A claim by another instance that committed first makes it match nothing (PostgreSQL
/// re-checks `lease_owner` on the newest row after waiting for the row lock).
pub(super) async fn finish(
    db: &mut PgConnection,
    id: &str,
    owner: &str,
    outcome: &DeliveryOutcome,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let values = FinishDeliveryValues::new(outcome);
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, next_attempt_at = $2, last_status = $3, \
         last_error = $4, attempts = attempts + 1, \
         first_attempt_at = COALESCE(first_attempt_at, $5), updated_at = $5, \
         lease_owner = NULL, lease_until = NULL \
         WHERE id = $6 AND status = 'pending' AND lease_owner = $7",
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
    db: &mut PgConnection,
    id: &str,
    now: OffsetDateTime,
) -> Result<Option<DeliveryView>, StoreError> {
    let sql = format!(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, \
         updated_at = $1, lease_owner = NULL, lease_until = NULL \
         WHERE id = $2 AND status = 'failed' RETURNING {DELIVERY_COLUMNS}"
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

/// [`Store::purge_webhook_events`](crate::store::Store::purge_webhook_events) in one
/// statement. Deliveries go with their event (ON DELETE CASCADE). Undispatched events, the
/// only ones dispatchers lock, are never taken.
pub(super) async fn purge(
    db: &mut PgConnection,
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
    db: &mut PgConnection,
    id: &str,
) -> Result<Option<DeliveryView>, StoreError> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
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
    db: &mut PgConnection,
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
