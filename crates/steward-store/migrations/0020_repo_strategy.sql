-- How a repository's submissions land: `rebase` (each commit replayed onto the target) or
-- `merge` (one merge commit).
ALTER TABLE repos ADD COLUMN strategy TEXT NOT NULL DEFAULT 'rebase';
