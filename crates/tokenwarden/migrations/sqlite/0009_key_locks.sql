-- PostgreSQL's 0009 makes a delete and an insert of the same connection take one lock, so
-- the new row's version starts above the deleted one's. SQLite has that already: every write
-- holds the database's one write lock, and the insert reads store_state inside it. Nothing to
-- change; the file keeps the two backends' migrations in step.
SELECT 1;
