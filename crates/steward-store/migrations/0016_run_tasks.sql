-- The task a run serves (a queue's task leased to one of an agent's runs), so cost reports can
-- tell what each task cost, its failed attempts included, and how it ended.
ALTER TABLE runs ADD COLUMN task_id TEXT;
