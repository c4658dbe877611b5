-- Namespaces: agents belong to one, and names are unique per namespace instead of globally;
-- API keys hold the namespaces they act in ('*' = all, what keys made before this had).
-- Keep in step with the other dialect.
ALTER TABLE agents ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE agents DROP CONSTRAINT agents_name_key;
CREATE UNIQUE INDEX agents_namespace_name ON agents (namespace, name);
ALTER TABLE api_keys ADD COLUMN namespaces TEXT NOT NULL DEFAULT '*';
