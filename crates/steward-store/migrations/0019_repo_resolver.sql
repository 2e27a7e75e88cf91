-- An agent a repository's merge conflicts are routed to (none: to a human, as an incident).
ALTER TABLE repos ADD COLUMN resolver TEXT;
