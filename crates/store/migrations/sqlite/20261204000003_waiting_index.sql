-- Buffered runs waiting behind their agent's running ones, looked up after every run end (to
-- start the next one at once) and by StartRun of agents that buffer. Empty for other agents.
-- Keep in step with the other dialect.
CREATE INDEX runs_waiting ON runs (agent_id) WHERE status = 'queued' AND deferred = 1;
