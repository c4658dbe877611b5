-- API keys: only a SHA-256 of each secret is kept (the secrets are 256 random bits, so a fast
-- hash is enough: there is nothing to brute-force). Keep in step with the other dialect.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_by TEXT NOT NULL
);

-- The lease token of the attempt that holds a run: StartRun draws it at random, and Heartbeat,
-- Checkpoint and FinishRun must present it (the attempt number alone can be guessed).
ALTER TABLE runs ADD COLUMN lease_token TEXT;
