-- Memory records. Keep migrations/sqlite and migrations/postgres in step: same tables, same
-- columns. Instants are unix milliseconds and flags are 0/1 BIGINTs so both backends share
-- one code path through sqlx `Any`. The history table is `_nightshift_memory_migrations`, so this
-- schema can live in the same database as nightshift-store's.

CREATE TABLE memory_records (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    session     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    content     TEXT NOT NULL,
    metadata    TEXT NOT NULL,          -- JSON object of string values (the filterable copy is memory_metadata)
    run_id      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    summary     BIGINT NOT NULL DEFAULT 0,
    archived    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX memory_records_recent ON memory_records (agent_id, session, kind, created_at, id);
CREATE INDEX memory_records_kind ON memory_records (kind);
CREATE INDEX memory_records_expires ON memory_records (expires_at);

CREATE TABLE memory_metadata (
    record_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (record_id, key)
);
CREATE INDEX memory_metadata_key_value ON memory_metadata (key, value);
