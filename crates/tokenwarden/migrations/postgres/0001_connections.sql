-- Connections and their sealed secrets: the PostgreSQL twin of migrations/sqlite/0001.
-- Same tables, columns, constraints and indexes; only the types are PostgreSQL's. Times are
-- BIGINT unix seconds (UTC), as in SQLite, so both backends share one row mapping.
--
-- Every text key column is COLLATE "C": ORDER BY and the keyset comparison in list() then
-- follow the byte order of UTF-8, the same order as Rust's `String`/`ConnectionKey` and
-- SQLite's BINARY collation, whatever the database's default locale is. Scopes and metadata
-- stay TEXT holding JSON (not JSONB) so they round-trip byte for byte, as in SQLite.
CREATE TABLE connections (
    user_id              TEXT COLLATE "C" NOT NULL,
    provider             TEXT COLLATE "C" NOT NULL,
    account_id           TEXT COLLATE "C" NOT NULL,

    -- Envelopes from KeyRing::seal; the key id beside each makes key_usage and an online
    -- rotation ("reseal everything not under the active key") plain indexed queries.
    access_token         BYTEA  NOT NULL,
    access_key_id        TEXT COLLATE "C" NOT NULL,
    refresh_token        BYTEA,
    refresh_key_id       TEXT COLLATE "C",

    token_type           TEXT   NOT NULL,
    expires_at           BIGINT,
    refresh_expires_at   BIGINT,
    issued_at            BIGINT,                         -- unknown for some imports
    scopes               TEXT   NOT NULL DEFAULT '[]',   -- JSON array of strings
    metadata             TEXT   NOT NULL DEFAULT 'null', -- any JSON value

    status               TEXT   NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'needs_reconnect')),
    last_refreshed_at    BIGINT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_error_code      TEXT,
    last_error_message   TEXT,
    last_error_at        BIGINT,

    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    -- Compare-and-swap counter. A re-created row starts above every deleted version (see
    -- store_state), so a write prepared before a delete can never match the new row.
    version              BIGINT NOT NULL CHECK (version > 0),

    -- The proactive refresh scheduler's and retry queue's next run, and the refresh lease
    -- (owner instance and expiry) that keeps two instances from refreshing one connection.
    next_refresh_at      BIGINT,
    refresh_attempt      BIGINT NOT NULL DEFAULT 0,
    lease_owner          TEXT,
    lease_until          BIGINT,

    PRIMARY KEY (user_id, provider, account_id),
    -- A refresh token and its key id come together; so do an error code and its time.
    CHECK ((refresh_token IS NULL) = (refresh_key_id IS NULL)),
    CHECK ((last_error_code IS NULL) = (last_error_at IS NULL))
);

CREATE INDEX connections_by_provider ON connections (provider, user_id, account_id);
CREATE INDEX connections_by_status ON connections (status, user_id, provider, account_id);
CREATE INDEX connections_by_access_key ON connections (access_key_id);
CREATE INDEX connections_by_refresh_key ON connections (refresh_key_id)
    WHERE refresh_key_id IS NOT NULL;
CREATE INDEX connections_next_refresh ON connections (next_refresh_at)
    WHERE next_refresh_at IS NOT NULL AND status = 'active';

-- One row of store-wide state. max_deleted_version is the highest version any deleted
-- connection had; new rows start above it.
CREATE TABLE store_state (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    max_deleted_version BIGINT NOT NULL
);
INSERT INTO store_state (id, max_deleted_version) VALUES (1, 0);

-- A trigger rather than code in delete(), so any future bulk delete keeps the guarantee.
-- The UPDATE takes store_state's row lock, so concurrent deletes serialize here and the
-- maximum is never lost. `SET search_path FROM CURRENT` pins the function to the schema it
-- was created in, so it updates this store_state whatever search_path the deleting session
-- has.
CREATE FUNCTION connections_track_deleted_version() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE store_state
       SET max_deleted_version = GREATEST(max_deleted_version, OLD.version)
     WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER connections_track_deleted_version AFTER DELETE ON connections
FOR EACH ROW EXECUTE FUNCTION connections_track_deleted_version();
