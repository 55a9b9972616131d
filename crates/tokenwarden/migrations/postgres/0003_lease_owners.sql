-- Who may hold refresh leases, and how to tell that they are gone: the PostgreSQL twin of
-- migrations/sqlite/0003 (same table, same columns).
--
-- Every process that takes leases registers each owner id it uses here, with `lock_key`: the
-- second key of the session-level advisory lock (class 1953983606, "twlv") that the process
-- holds on a connection of its own for as long as it lives. PostgreSQL drops that lock the
-- moment the session ends (kill -9, crash, lost network), so a lease whose owner is
-- registered here and whose lock nobody holds belongs to a dead process: another instance
-- takes it at once instead of waiting for `lease_until`. An owner that is not registered
-- (an older version, or a lease written by hand) keeps the old rule: its lease is free when
-- it expires.
--
-- A dead owner's row is harmless (it only makes its leases free sooner); rows of dead owners
-- that hold no lease any more are deleted when an instance starts.
CREATE TABLE lease_owners (
    owner         TEXT COLLATE "C" PRIMARY KEY,
    lock_key      BIGINT CHECK (lock_key >= 0 AND lock_key <= 2147483647),
    registered_at BIGINT NOT NULL
);
