-- Connect sessions: the PostgreSQL twin of migrations/sqlite/0004. Same table, columns,
-- constraints and indexes; only the types are PostgreSQL's. Times are BIGINT unix seconds
-- (UTC), as in 0001, so both backends share one row mapping; scopes stay TEXT holding JSON,
-- as in 0001.
--
-- Secrets are never stored as sent: the link's token and the OAuth `state` are kept as
-- SHA-256 (hex) hashes, unique so each finds one session; the PKCE verifier and OpenID nonce
-- are an envelope from KeyRing::seal (bound to the session id), erased when the session
-- finishes. Each step of the flow is one conditional UPDATE on `state` (see the store):
-- PostgreSQL re-checks the condition on the newest row after waiting for a concurrent
-- writer, so two browsers or two callbacks never both win.
CREATE TABLE connect_sessions (
    id                   TEXT COLLATE "C" PRIMARY KEY,     -- cs_…, not a secret
    token_hash           TEXT COLLATE "C" NOT NULL UNIQUE, -- SHA-256 of the link's token
    state_hash           TEXT COLLATE "C" UNIQUE,          -- SHA-256 of `state`, once opened
    browser_hash         TEXT COLLATE "C",                 -- SHA-256 of the browser's cookie

    -- The sealed flow secrets and the key id of their envelope, so key usage and a key
    -- rotation can find them like the connections' ciphertexts.
    flow                 BYTEA,
    flow_key_id          TEXT COLLATE "C",

    user_id              TEXT COLLATE "C" NOT NULL,
    provider             TEXT COLLATE "C" NOT NULL,
    account_id           TEXT COLLATE "C",                 -- when the application named one
    reconnect            BOOLEAN NOT NULL,
    return_url           TEXT   NOT NULL,
    scopes               TEXT   NOT NULL DEFAULT '[]',     -- JSON array of strings

    state                TEXT   NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'opened', 'exchanging', 'completed',
                                          'failed', 'expired')),
    error_code           TEXT,
    error_message        TEXT,
    connected_account_id TEXT COLLATE "C",                 -- once completed

    created_at           BIGINT NOT NULL,
    expires_at           BIGINT NOT NULL,
    opened_at            BIGINT,
    finished_at          BIGINT,

    -- A sealed flow and its key id come together; so do an error code and its message.
    CHECK ((flow IS NULL) = (flow_key_id IS NULL)),
    CHECK ((error_code IS NULL) = (error_message IS NULL))
);

-- The purge of expired sessions.
CREATE INDEX connect_sessions_by_expiry ON connect_sessions (expires_at);
CREATE INDEX connect_sessions_by_flow_key ON connect_sessions (flow_key_id)
    WHERE flow_key_id IS NOT NULL;
