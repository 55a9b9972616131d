-- Which connection an event is about, so one connection's recent events (the dashboard's
-- history, GET /v1/users/{u}/connections/{p}/{a}/events) are an index walk instead of a scan
-- of every body. Same columns and index as migrations/postgres/0007.
--
-- Set for the events whose `data` names a user's connection: every `connection.*` event and
-- a `connect_session.failed` of a session that named its account (a reconnect). NULL for the
-- others (provider events, `webhook.test`, a session that named no account). Events written
-- before this migration get them from their bodies, which say the same.
ALTER TABLE webhook_events ADD COLUMN user_id TEXT;
ALTER TABLE webhook_events ADD COLUMN provider TEXT;
ALTER TABLE webhook_events ADD COLUMN account_id TEXT;

UPDATE webhook_events
SET user_id    = json_extract(body, '$.data.user_id'),
    provider   = json_extract(body, '$.data.provider'),
    account_id = json_extract(body, '$.data.account_id')
WHERE (type LIKE 'connection.%' OR type = 'connect_session.failed')
  AND json_type(body, '$.data.user_id') = 'text'
  AND json_type(body, '$.data.provider') = 'text'
  AND json_type(body, '$.data.account_id') = 'text';

-- Newest first per connection; events about no connection stay out of the index.
CREATE INDEX webhook_events_by_connection ON webhook_events (user_id, provider, account_id, seq)
    WHERE account_id IS NOT NULL;
