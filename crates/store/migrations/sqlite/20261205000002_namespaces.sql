-- no-transaction
-- Namespaces: agents belong to one, and names are unique per namespace instead of globally;
-- API keys hold the namespaces they act in ('*' = all, what keys made before this had).
-- Keep in step with the other dialect.
--
-- SQLite cannot drop the UNIQUE constraint on agents.name, so the table is rebuilt (SQLite's
-- documented procedure). Foreign keys must be off while the old table is dropped, or the drop
-- would cascade into runs, versions and labels; that pragma has no effect inside a
-- transaction, hence `no-transaction` above and an explicit transaction below.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE agents_rebuilt (
    id          TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL DEFAULT 'default',
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    spec        BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    lock_seq    BIGINT NOT NULL DEFAULT 0
);
INSERT INTO agents_rebuilt (id, name, version, state, spec, created_at, updated_at, lock_seq)
    SELECT id, name, version, state, spec, created_at, updated_at, lock_seq FROM agents;
DROP TABLE agents;
ALTER TABLE agents_rebuilt RENAME TO agents;
CREATE UNIQUE INDEX agents_namespace_name ON agents (namespace, name);
CREATE INDEX agents_updated ON agents (updated_at);
ALTER TABLE api_keys ADD COLUMN namespaces TEXT NOT NULL DEFAULT '*';
COMMIT;
PRAGMA foreign_keys = ON;
