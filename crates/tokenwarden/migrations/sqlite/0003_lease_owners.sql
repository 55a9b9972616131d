-- Who may hold refresh leases: the owners a serving instance (`tokenwarden serve`) used.
-- Same table and columns as migrations/postgres/0003.
--
-- SQLite serves one instance at a time (it holds an exclusive lock on a file beside the
-- database while it runs), so when an instance opens the database every owner registered
-- here belongs to a process that is gone: their leases are freed and the rows deleted
-- before anything else happens. Tools opened beside the instance (the CLI) do not register,
-- so a lease a CLI command holds is never freed under it; it expires as before.
-- `lock_key` is PostgreSQL's (an advisory lock key) and stays NULL here.
CREATE TABLE lease_owners (
    owner         TEXT    PRIMARY KEY,
    lock_key      INTEGER CHECK (lock_key >= 0 AND lock_key <= 2147483647),
    registered_at INTEGER NOT NULL
);
