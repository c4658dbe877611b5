-- Scheduler progress and replica coordination. Keep in step with migrations/postgres.

-- Progress of each agent's schedule: the newest tick handled (fired or counted as missed).
-- A missing row means "never fired": the scheduler anchors at the agent's creation/resume time.
CREATE TABLE schedule_state (
    agent_id      TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    last_tick     BIGINT NOT NULL,
    fired         BIGINT NOT NULL DEFAULT 0,
    missed        BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL
);

-- Live scheduler replicas (heartbeats), used to compute each replica's fair share of shards.
CREATE TABLE scheduler_members (
    member_id     TEXT PRIMARY KEY,
    heartbeat_at  BIGINT NOT NULL
);

-- Shard leases: a replica fires the schedules of the shards it holds a live lease on.
CREATE TABLE scheduler_shards (
    shard             BIGINT PRIMARY KEY,
    owner             TEXT,
    lease_expires_at  BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX agents_updated ON agents (updated_at);

-- Outbox flag: set once the run request reached the queue. Queued runs still unpublished after
-- a while (their publisher died between commit and publish) are published again.
ALTER TABLE runs ADD COLUMN published BIGINT NOT NULL DEFAULT 0;
CREATE INDEX runs_unpublished ON runs (created_at) WHERE published = 0 AND status = 'queued';
