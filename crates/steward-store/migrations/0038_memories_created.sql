-- Memories in the order they were recorded: what the embedding backlog pages through.
CREATE INDEX memories_created ON memories (created_at, id);
