-- Tool calls made through /mcp that outlived their request (the MCP tasks extension): each is
-- polled with tasks/get by the agent that made it, on any node.
CREATE TABLE mcp_tasks (
    id TEXT PRIMARY KEY,
    -- The agent that made the call: the only one that may read or cancel it.
    agent TEXT NOT NULL,
    tool TEXT NOT NULL,
    -- working, completed, failed or cancelled.
    status TEXT NOT NULL,
    -- JSON once it ended: {"ok": result} or {"error": message} (completed), or
    -- {"failed": message}.
    outcome TEXT NOT NULL,
    -- The node running it, and when it last said it still is.
    node TEXT NOT NULL,
    cancel_requested BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
