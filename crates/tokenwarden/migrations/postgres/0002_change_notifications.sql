-- Tells every listening instance which connection changed, so tokens they cache in memory
-- are dropped within milliseconds of another instance's refresh instead of after
-- refresh.cache_ttl_ms. Some providers (GitHub Apps among them) kill the old access token on
-- refresh, so a stale cached token would fail at the caller.
--
-- One channel per database; the payload names the schema, so stores in other schemas
-- ignore it. It also carries the connection's next scheduled refresh (null when deleted or
-- not active), so a sleeping scheduler wakes only for work due before it would anyway. Fired for inserts, deletes and updates that move `version` (imports and
-- refreshes), not for lease changes or key rotation (the plaintext is unchanged).
-- Delivery happens at commit, only for committed writes.
CREATE FUNCTION tokenwarden_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed RECORD;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    PERFORM pg_notify('tokenwarden_changes', json_build_object(
        's', TG_TABLE_SCHEMA,
        'u', changed.user_id,
        'p', changed.provider,
        'a', changed.account_id,
        'v', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE changed.version END,
        'n', CASE WHEN TG_OP = 'DELETE' OR changed.status <> 'active' THEN NULL
                  ELSE changed.next_refresh_at END
    )::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER connections_notify_change
    AFTER INSERT OR DELETE OR UPDATE OF version ON connections
    FOR EACH ROW EXECUTE FUNCTION tokenwarden_notify_change();
