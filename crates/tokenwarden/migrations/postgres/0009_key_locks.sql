-- A connection deleted and imported again at the same moment. A new row's version starts
-- above every deleted version (store_state, 0001), so a refresh that read the deleted row can
-- never write over the new one. INSERT used to read max_deleted_version in its own statement
-- snapshot: when it met the row of a delete not yet committed, it waited for that delete and
-- then inserted with the maximum as it was before it, so the new row could take a version
-- the deleted one had had.
--
-- Now the delete and the insert of one key take the same transaction-scoped advisory lock,
-- the delete before it touches the row (PgStore::delete), the insert while computing its
-- version, here. This function is VOLATILE, so its SELECT takes a snapshot of its own after
-- the lock: it sees the delete's store_state update once that delete has committed.
-- Different keys that hash alike only wait for each other.
CREATE FUNCTION connection_key_lock(u TEXT, p TEXT, a TEXT) RETURNS void
LANGUAGE sql VOLATILE
AS $$
    -- Class 0x74776b79 ('twky'); the lease owners' locks use 0x74776c76 ('twlv').
    SELECT pg_advisory_xact_lock(1953983353, hashtext(u || chr(31) || p || chr(31) || a));
$$;

CREATE FUNCTION connection_insert_version(u TEXT, p TEXT, a TEXT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    first_version BIGINT;
BEGIN
    PERFORM connection_key_lock(u, p, a);
    SELECT max_deleted_version + 1 INTO first_version FROM store_state WHERE id = 1;
    RETURN first_version;
END;
$$;
