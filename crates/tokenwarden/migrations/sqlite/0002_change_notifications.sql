-- PostgreSQL's 0002 adds a trigger that notifies other instances of connection changes.
-- SQLite serves one instance, which already knows what it wrote: nothing to do here. The
-- migration exists so both backends keep the same migration history.
SELECT 1;
