-- The delivery loop deletes events older than `webhooks.keep_seconds` once nothing is
-- pending for them (Store::purge_webhook_events), oldest first: this index lets each look
-- read only the events old enough, not the whole table.
CREATE INDEX webhook_events_by_age ON webhook_events (created_at, seq)
    WHERE dispatched_at IS NOT NULL;
