-- The latest runs first, whatever their agent or state (the runs list, the console's pages):
-- read from this index in order instead of sorting every run.
CREATE INDEX runs_created ON runs (created_at, id);
