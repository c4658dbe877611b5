-- Replays (ReplayRun): the run a replay re-runs (no foreign key: deleting the original leaves the
-- link pointing at nothing), and how it runs (a protobuf ReplaySpec: model, tool mode, the
-- original's recorded tool calls). Keep in step with the other dialect.
ALTER TABLE runs ADD COLUMN replay_of TEXT;
ALTER TABLE runs ADD COLUMN replay BLOB;
