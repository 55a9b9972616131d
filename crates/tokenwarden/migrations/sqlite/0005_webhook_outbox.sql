-- The durable webhook outbox. Same tables and columns as migrations/postgres/0005.
--
-- webhook_events holds each event once, inserted by the store in the same transaction as
-- the change that raised it (a connection write, a failed connect session), so a crash
-- between the change and its delivery loses nothing. `seq` is the dispatch order.
-- Dispatching turns an event into one webhook_deliveries row per endpoint that receives it
-- (UNIQUE (event_id, endpoint): never twice) and sets `dispatched_at`. A delivery is
-- claimed under a lease (`lease_owner` until `lease_until`) by one instance, attempted, and
-- finished: `delivered`, `failed`, or `pending` again with a later `next_attempt_at`.
--
-- Times here are INTEGER unix MILLISECONDS (UTC), unlike the connections' seconds: retry
-- delays and leases are a few seconds long, and whole seconds would shift them by up to one.
-- Bodies are TEXT holding the exact JSON that is sent and signed. Nothing here is secret:
-- bodies never carry tokens, and `last_error` is operator text without secrets.
CREATE TABLE webhook_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a purge
    id            TEXT    NOT NULL UNIQUE,            -- evt_…, the webhook-id header
    type          TEXT    NOT NULL,                   -- connection.created, …
    body          TEXT    NOT NULL,                   -- the JSON body, byte for byte
    only_endpoint TEXT,                               -- the one endpoint (webhook.test)
    created_at    INTEGER NOT NULL,
    dispatched_at INTEGER                             -- NULL until dispatched
);

-- The dispatcher reads undispatched events in seq order; dispatched ones leave the index.
CREATE INDEX webhook_events_undispatched ON webhook_events (seq)
    WHERE dispatched_at IS NULL;

CREATE TABLE webhook_deliveries (
    id               TEXT    PRIMARY KEY,            -- dlv_…, sorts by creation
    event_id         TEXT    NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint         TEXT    NOT NULL,               -- the endpoint's name
    type             TEXT    NOT NULL,               -- the event's, for filtering
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  INTEGER,                        -- set exactly while pending
    last_status      INTEGER,                        -- HTTP status of the last answer
    last_error       TEXT,
    lease_owner      TEXT,
    lease_until      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    first_attempt_at INTEGER,

    UNIQUE (event_id, endpoint),
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL)),
    CHECK ((lease_owner IS NULL) = (lease_until IS NULL))
);

-- Claiming (pending and due, earliest first) and the queue's counts per status.
CREATE INDEX webhook_deliveries_claim ON webhook_deliveries (status, next_attempt_at);
-- A claim reads each endpoint's earliest due deliveries, as many as it has free slots: an
-- index walk of a few rows, however long the endpoint's backlog.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint, next_attempt_at, id)
    WHERE status = 'pending';
-- Listing, newest first, by each filter (the primary key serves the unfiltered list).
CREATE INDEX webhook_deliveries_by_status ON webhook_deliveries (status, id);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint, id);
CREATE INDEX webhook_deliveries_by_type ON webhook_deliveries (type, id);
