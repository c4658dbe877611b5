-- Governance: a person's say on a tool call a run waits for (run status 'awaiting_approval').
-- One row per (run, call); bound to the call by call_hash. Keep in step with the other dialect.
CREATE TABLE approvals (
    id                      TEXT PRIMARY KEY,
    run_id                  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    agent_id                TEXT NOT NULL,
    call_id                 TEXT NOT NULL,
    tool_name               TEXT NOT NULL,
    arguments_json          TEXT NOT NULL,
    call_hash               TEXT NOT NULL,
    effect                  TEXT NOT NULL,
    status                  TEXT NOT NULL,
    on_timeout              TEXT NOT NULL,
    requested_at            BIGINT NOT NULL,
    expires_at              BIGINT NOT NULL,
    decided_at              BIGINT,
    decided_by              TEXT,
    reason                  TEXT,
    approved_arguments_json TEXT,
    UNIQUE (run_id, call_id)
);
CREATE INDEX approvals_status_expires ON approvals (status, expires_at);
CREATE INDEX approvals_requested ON approvals (requested_at DESC, id DESC);
