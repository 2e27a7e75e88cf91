-- What a task needs to be run again when its node stopped mid-call and its tool is idempotent
-- (the Kernel's rule for a step in doubt): the call's arguments (JSON, cleared once it ended),
-- whether the tool said the call is idempotent, and how many times it was started.
ALTER TABLE mcp_tasks ADD COLUMN arguments TEXT NOT NULL DEFAULT '';
ALTER TABLE mcp_tasks ADD COLUMN idempotent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE mcp_tasks ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1;
