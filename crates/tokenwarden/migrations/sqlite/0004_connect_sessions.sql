-- Connect sessions: the hosted connect flow's state between the application creating a
-- session, the browser opening its single-use link, and the provider's callback. Times are
-- INTEGER unix seconds (UTC), as in 0001. Same table and columns as migrations/postgres/0004.
--
-- Secrets are never stored as sent: the link's token and the OAuth `state` are kept as
-- SHA-256 (hex) hashes, unique so each finds one session; the PKCE verifier and OpenID nonce
-- are an envelope from KeyRing::seal (bound to the session id), erased when the session
-- finishes. Each step of the flow is one conditional UPDATE on `state` (see the store), so
-- two browsers or two callbacks never both win.
CREATE TABLE connect_sessions (
    id                   TEXT    PRIMARY KEY,            -- cs_…, not a secret
    token_hash           TEXT    NOT NULL UNIQUE,        -- SHA-256 of the link's token
    state_hash           TEXT    UNIQUE,                 -- SHA-256 of `state`, once opened
    browser_hash         TEXT,                           -- SHA-256 of the browser's cookie

    -- The sealed flow secrets and the key id of their envelope, so key usage and a key
    -- rotation can find them like the connections' ciphertexts.
    flow                 BLOB,
    flow_key_id          TEXT,

    user_id              TEXT    NOT NULL,
    provider             TEXT    NOT NULL,
    account_id           TEXT,                           -- when the application named one
    reconnect            INTEGER NOT NULL CHECK (reconnect IN (0, 1)),
    return_url           TEXT    NOT NULL,
    scopes               TEXT    NOT NULL DEFAULT '[]',  -- JSON array of strings

    state                TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'opened', 'exchanging', 'completed',
                                          'failed', 'expired')),
    error_code           TEXT,
    error_message        TEXT,
    connected_account_id TEXT,                           -- once completed

    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    opened_at            INTEGER,
    finished_at          INTEGER,

    -- A sealed flow and its key id come together; so do an error code and its message.
    CHECK ((flow IS NULL) = (flow_key_id IS NULL)),
    CHECK ((error_code IS NULL) = (error_message IS NULL))
);

-- The purge of expired sessions.
CREATE INDEX connect_sessions_by_expiry ON connect_sessions (expires_at);
CREATE INDEX connect_sessions_by_flow_key ON connect_sessions (flow_key_id)
    WHERE flow_key_id IS NOT NULL;
