-- Which connection an event is about: the PostgreSQL twin of migrations/sqlite/0007. One
-- connection's recent events (the dashboard's history) are then an index walk instead of a
-- scan of every body.
--
-- Set for the events whose `data` names a user's connection: every `connection.*` event and
-- a `connect_session.failed` of a session that named its account (a reconnect). NULL for the
-- others. Events written before this migration get them from their bodies, which say the same.
ALTER TABLE webhook_events
    ADD COLUMN user_id    TEXT COLLATE "C",
    ADD COLUMN provider   TEXT COLLATE "C",
    ADD COLUMN account_id TEXT COLLATE "C";

UPDATE webhook_events
SET user_id    = body::jsonb #>> '{data,user_id}',
    provider   = body::jsonb #>> '{data,provider}',
    account_id = body::jsonb #>> '{data,account_id}'
WHERE (type LIKE 'connection.%' OR type = 'connect_session.failed')
  AND jsonb_typeof(body::jsonb #> '{data,user_id}') = 'string'
  AND jsonb_typeof(body::jsonb #> '{data,provider}') = 'string'
  AND jsonb_typeof(body::jsonb #> '{data,account_id}') = 'string';

-- Newest first per connection; events about no connection stay out of the index.
CREATE INDEX webhook_events_by_connection ON webhook_events (user_id, provider, account_id, seq)
    WHERE account_id IS NOT NULL;
