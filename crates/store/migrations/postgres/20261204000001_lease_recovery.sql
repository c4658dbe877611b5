-- Lease recovery. Keep in step with the other dialect's migration of the same name.

-- How many times the run lost its worker (lease expired) and was resumed; bounded by
-- nightshift_core::lifecycle::MAX_LOST_LEASES.
ALTER TABLE runs ADD COLUMN lost_leases BIGINT NOT NULL DEFAULT 0;

-- The recovery sweep lists running runs by lease expiry.
CREATE INDEX runs_running_lease ON runs (lease_expires_at) WHERE status = 'running';
