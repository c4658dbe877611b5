-- The cost ledger: one row per checkpointed LLM call (written with its step, so exactly once),
-- with the tokens the provider reported and its cost in micro-USD at the manager's price table
-- (NULL when no price is configured for the model). Keep in step with the other dialect.
CREATE TABLE llm_calls (
    run_id        TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    attempt       BIGINT NOT NULL,
    agent_id      TEXT NOT NULL,
    model         TEXT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL,
    cost_micros   BIGINT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX llm_calls_agent_created ON llm_calls (agent_id, created_at);
CREATE INDEX llm_calls_created ON llm_calls (created_at);
