-- Nightshift schema (SQLite). Keep in step with migrations/postgres: same tables, same columns.
-- Instants are unix milliseconds (BIGINT) so that both backends share one code path.

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    spec        BLOB NOT NULL,          -- prost-encoded nightshift.v1.AgentSpec (normalized)
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    lock_seq    BIGINT NOT NULL DEFAULT 0  -- bumped to take the agent's row/write lock
);

CREATE TABLE agent_versions (
    agent_id    TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    spec        BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (agent_id, version)
);

CREATE TABLE agent_labels (
    agent_id    TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (agent_id, key)
);
CREATE INDEX agent_labels_key_value ON agent_labels (key, value);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    agent_id         TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    agent_version    BIGINT NOT NULL,
    status           TEXT NOT NULL,
    trigger_kind     TEXT NOT NULL,
    scheduled_for    BIGINT,
    query_override   TEXT,
    attempt          BIGINT NOT NULL DEFAULT 0,
    retries          BIGINT NOT NULL DEFAULT 0,
    worker_id        TEXT,
    lease_expires_at BIGINT,
    not_before       BIGINT,
    deferred         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    result           TEXT,
    error            TEXT,
    reason           TEXT,
    input_tokens     BIGINT NOT NULL DEFAULT 0,
    output_tokens    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_agent_created ON runs (agent_id, created_at DESC, id DESC);
CREATE INDEX runs_agent_status ON runs (agent_id, status);
CREATE INDEX runs_created ON runs (created_at DESC, id DESC);

CREATE TABLE run_steps (
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    payload     BLOB NOT NULL,          -- prost-encoded nightshift.v1.RunStep
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
